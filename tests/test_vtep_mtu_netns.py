"""`vtep mtu`: probes each peer's underlay path and recommends the overlay MTU.

The seed topology with the router's link towards network-2 at MTU 1400 (both
ends: a link has one MTU), as in the MTU suite's case 7.
"""
import subprocess
import sys

import pytest

from vtep.lab.lab import SEED_PLAN
from vtep.lab.topology import seed

pytestmark = [pytest.mark.netns, pytest.mark.mtu]
VTEP = [sys.executable, "-m", "vtep.cli"]


@pytest.fixture
def narrow(tmp_path, netns_prefix):
    plan = tmp_path / "plan.toml"
    plan.write_text(SEED_PLAN)
    with seed(netns_prefix + "mtu-") as t:
        t["router"].cmd(["ip", "link", "set", "eth2", "mtu", "1400"])
        t["network-2"].cmd(["ip", "link", "set", "eth0", "mtu", "1400"])
        yield t, plan


def vtep_mtu(node, plan, *extra):
    return node.cmd(VTEP + ["mtu", "--config", str(plan), "--node", node.name, *extra],
                    check=False, timeout=60)


def test_finds_1400_and_recommends_1350_naming_the_peer(narrow):
    t, plan = narrow
    r = vtep_mtu(t["network-1"], plan)
    assert r.returncode == 1, r.stderr
    assert "peer network-2 (192.168.2.142): path MTU 1400, overlay MTU 1350" in r.stdout
    assert "overlay MTU that fits every peer: 1350" in r.stdout
    assert "does not fit the path to network-2" in r.stderr
    # from network-2 its own device is already 1400: the default overlay MTU fits
    r = vtep_mtu(t["network-2"], plan)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "path MTU 1400, overlay MTU 1350" in r.stdout


def test_black_hole_still_found_by_binary_search(narrow):
    t, plan = narrow
    # the router's ICMP errors are dropped: over-size probes simply vanish
    t["router"].cmd(["nft", "add table inet vtep_test; add chain inet vtep_test out "
                     "{ type filter hook output priority 0; }; add rule inet vtep_test out "
                     "icmp type destination-unreachable drop"])
    r = vtep_mtu(t["network-1"], plan, "--timeout", "0.2")
    assert r.returncode == 1
    assert "path MTU 1400, overlay MTU 1350" in r.stdout and "binary search" in r.stdout


def test_configured_mtu_that_fits_exits_0(narrow, tmp_path):
    t, plan = narrow
    fitted = tmp_path / "fitted.toml"
    fitted.write_text(SEED_PLAN.replace('overlay = "172.2.0.0/16"',
                                        'overlay = "172.2.0.0/16"\nmtu = 1350'))
    r = vtep_mtu(t["network-1"], fitted)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "configured overlay MTU 1350 (cluster.mtu)" in r.stdout


def test_unreachable_peer_is_a_clear_error(netns_prefix, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(SEED_PLAN)
    with seed(netns_prefix + "mtu2-") as t:
        t["router"].cmd(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        r = vtep_mtu(t["network-1"], plan, "--timeout", "0.1")
        assert r.returncode == 1
        assert "peer network-2 (192.168.2.142): no 576-byte probe" in r.stderr
        assert "Traceback" not in r.stderr


def test_run_mtu_auto_sets_the_device_mtu(narrow):
    t, plan = narrow
    n1 = t["network-1"]
    r = n1.cmd(VTEP + ["run", "--kernel", "--once", "--mtu", "auto", "--config", str(plan),
                       "--node", "network-1", "--state-dir", str(plan.parent / "st")],
               check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--mtu auto: overlay MTU 1350" in r.stderr
    link = n1.cmd(["ip", "-j", "link", "show", "vxlan0"]).stdout
    assert '"mtu":1350' in link.replace(" ", "")
    n1.cmd(VTEP + ["down", "--config", str(plan), "--node", "network-1", "--state-dir",
                   str(plan.parent / "st")])
