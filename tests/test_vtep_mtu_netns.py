"""`vtep mtu`: probes each peer's underlay path and recommends the overlay MTU.

The seed topology with the router's link towards network-2 at MTU 1400 (both
ends: a link has one MTU), as in the MTU suite's case 7; over an IPv4 underlay
and over its IPv6 twin (seed.topology(underlay="ipv6"), plan SEED_PLAN6).
"""
import json
import re
import sys

import pytest

from vtep.lab import seed
from vtep.lab.seed import SEED_PLAN, SEED_PLAN6

pytestmark = [pytest.mark.netns, pytest.mark.mtu]
VTEP = [sys.executable, "-m", "vtep.cli"]


@pytest.fixture
def narrow(tmp_path, netns_prefix):
    plan = tmp_path / "plan.toml"
    plan.write_text(SEED_PLAN)
    with seed.topology(netns_prefix + "mtu-") as t:
        seed.narrow(t, 1400)   # the router's link towards network-2, both ends
        yield t, plan


# Per-probe wait for the black-hole searches: a probe that fits must have its reply back
# within it, so on a loaded machine 0.2 s would call a fitting size too big. 1 s costs
# ~2 s per too-big size (2 tries), ~6 of them per search; correctness never depends on it.
PROBE_TIMEOUT = "1.0"


def vtep_mtu(node, plan, *extra):
    return node.cmd(VTEP + ["mtu", "--config", str(plan), "--node", node.name, *extra],
                    check=False, timeout=120)


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
    r = vtep_mtu(t["network-1"], plan, "--timeout", PROBE_TIMEOUT)
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
    with seed.topology(netns_prefix + "mtu2-") as t:
        t["router"].cmd(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        # nothing ever comes back (no forwarding, no ICMP): the short wait only saves time
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


# --- peers that do not answer: `vtep mtu` shows the rest, `run --mtu auto` starts anyway ----

# The seed plan and a third node whose underlay address exists nowhere in the topology.
PLAN3 = SEED_PLAN + """
[[nodes]]
name = "network-3"
underlay_ip = "192.168.3.7"
subnet = "172.2.2.0/24"
"""


def device_mtu(node, dev="vxlan0"):
    return json.loads(node.cmd(["ip", "-j", "link", "show", dev]).stdout)[0]["mtu"]


def run_auto(node, plan, state_dir):
    return node.cmd(VTEP + ["run", "--kernel", "--once", "--mtu", "auto", "--config", str(plan),
                            "--node", node.name, "--state-dir", str(state_dir)],
                    check=False, timeout=60)


@pytest.mark.parametrize("route", ["none", "via-router"])
def test_run_mtu_auto_starts_without_an_unreachable_peer(narrow, tmp_path, route):
    """network-3 cannot be reached: with no route to it at all (sendto: ENETUNREACH), or
    routed to the router, which has none and answers ICMP net unreachable. The agent
    starts with the reachable peer's path (1400 - 50 = 1350, RFC 7348's IPv4 overhead),
    converges (all three peers' entries), exits 0 and names network-3 in a warning."""
    t, _ = narrow
    plan = tmp_path / "plan3.toml"
    plan.write_text(PLAN3)
    n1 = t["network-1"]
    if route == "via-router":
        n1.cmd(["ip", "route", "add", "192.168.3.0/24", "via", "192.168.1.213"])
    r = run_auto(n1, plan, tmp_path / "st")
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "network-3" in ln and "warning" in ln]
    assert warn and "192.168.3.7" in warn[0], r.stderr
    assert "--mtu auto: overlay MTU 1350 (narrowest path: network-2, 1400" in r.stderr
    assert device_mtu(n1) == 1350
    routes = n1.cmd(["ip", "-4", "route", "show", "dev", "vxlan0"]).stdout
    assert "172.2.1.0/24" in routes and "172.2.2.0/24" in routes, routes
    # `vtep mtu` reports both: the reachable peer's path, and network-3 by name (exit 1)
    r = vtep_mtu(n1, plan, "--timeout", PROBE_TIMEOUT)
    assert r.returncode == 1
    assert "peer network-2 (192.168.2.142): path MTU 1400, overlay MTU 1350" in r.stdout
    assert "peer network-3 (192.168.3.7): unreachable" in r.stdout
    assert "vtep: peer network-3 (192.168.3.7): no 576-byte probe" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_mtu_auto_with_no_peer_answering_uses_the_plans_mtu(netns_prefix, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(SEED_PLAN)
    with seed.topology(netns_prefix + "mtu3-") as t:
        t["router"].cmd(["sysctl", "-qw", "net.ipv4.ip_forward=0"])   # silence, no ICMP
        n1 = t["network-1"]
        r = run_auto(n1, plan, tmp_path / "st")
        assert r.returncode == 0, r.stderr
        assert "--mtu auto: no peer answered (network-2)" in r.stderr
        assert device_mtu(n1) == 1450   # the plan's: 1500 - 50


# --- over an IPv6 underlay ---------------------------------------------------------------------
# The encapsulation costs 70 bytes over IPv6: outer IPv6 header 40 (RFC 8200) + UDP 8 +
# VXLAN 8 + inner Ethernet 14 (RFC 7348), so a 1400-byte path carries an overlay MTU of
# 1330 and the 1500-byte underlay device 1430.

@pytest.fixture
def narrow6(tmp_path, netns_prefix):
    plan = tmp_path / "plan6.toml"
    plan.write_text(SEED_PLAN6)
    with seed.topology(netns_prefix + "mtu6-", underlay="ipv6") as t:
        seed.narrow(t, 1400)   # the router's link towards network-2, both ends
        yield t, plan


def test_ipv6_packet_too_big_names_1400(narrow6):
    t, plan = narrow6
    r = vtep_mtu(t["network-1"], plan)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "configured overlay MTU 1430 (eth0 MTU 1500 - 70)" in r.stdout, r.stdout
    assert re.search(r"peer network-2 \(fd00:2::8e\): path MTU 1400, overlay MTU 1330 "
                     r"\(\d+ probes, an ICMP error named it\)", r.stdout), r.stdout
    assert "overlay MTU that fits every peer: 1330" in r.stdout
    assert "does not fit the path to network-2 (fits 1330)" in r.stderr
    # from network-2 its own device is already 1400: 1400 - 70 is what it configures
    r = vtep_mtu(t["network-2"], plan)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "peer network-1 (fd00:1::8a): path MTU 1400, overlay MTU 1330" in r.stdout


def test_ipv6_black_hole_found_by_binary_search(narrow6):
    t, plan = narrow6
    # the router's packet-too-big messages are dropped: over-size probes vanish
    t["router"].cmd(["nft", "add table inet vtep_test; add chain inet vtep_test out "
                     "{ type filter hook output priority 0; }; add rule inet vtep_test out "
                     "icmpv6 type packet-too-big drop"])
    r = vtep_mtu(t["network-1"], plan, "--timeout", PROBE_TIMEOUT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"peer network-2 \(fd00:2::8e\): path MTU 1400, overlay MTU 1330 "
                     r"\(\d+ probes, binary search\)", r.stdout), r.stdout


def test_ipv6_run_mtu_auto_and_an_unreachable_peer(narrow6, tmp_path):
    t, _ = narrow6
    plan = tmp_path / "plan6-3.toml"
    plan.write_text(SEED_PLAN6 + '\n[[nodes]]\nname = "network-3"\nunderlay_ip = "fd00:3::7"'
                    '\nsubnet = "172.2.2.0/24"\n')
    n1 = t["network-1"]
    r = run_auto(n1, plan, tmp_path / "st")
    assert r.returncode == 0, r.stderr
    assert "--mtu auto: overlay MTU 1330 (narrowest path: network-2, 1400" in r.stderr
    assert any("warning" in ln and "network-3 (fd00:3::7)" in ln
               for ln in r.stderr.splitlines()), r.stderr
    assert device_mtu(n1) == 1330
