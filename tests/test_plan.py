"""The cluster plan: parsing, derived values, validation messages, `vtep plan`."""
import ipaddress
import subprocess
import sys

import pytest

from vtep import plan as planlib
from vtep.lab.lab import SEED_PLAN
from vtep import state
from vtep.errors import PlanError

SEED = SEED_PLAN.split("\n", 1)[1]  # without its comment line


def write(tmp_path, text, name="plan.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(PlanError) as e:
        planlib.load(path)
    for line in e.value.problems:
        assert line.startswith(f"{path}: "), line  # every message names the file
    return e.value.problems


def test_seed_plan_derived_values(tmp_path):
    p = planlib.load(write(tmp_path, SEED))
    n1, n2 = p.nodes
    assert (p.vni, p.port, str(p.overlay), p.mtu) == (10, 4789, "172.2.0.0/16", None)
    assert str(n1.vtep_ip) == "172.2.0.0" and str(n1.gateway) == "172.2.0.1"
    assert str(n2.vtep_ip) == "172.2.1.0" and str(n2.gateway) == "172.2.1.1"
    assert [n.name for n in p.peers("network-1")] == ["network-2"]
    assert p.overhead == 50


def test_defaults_for_vni_and_port(tmp_path):
    text = SEED.replace("vni = 10\n", "").replace("port = 4789\n", "")
    p = planlib.load(write(tmp_path, text))
    assert (p.vni, p.port) == (10, 4789)


def test_derived_macs_are_stable_unicast_local_and_unique(tmp_path):
    a = planlib.load(write(tmp_path, SEED))
    b = planlib.load(write(tmp_path, SEED, "again.toml"))
    assert [n.vtep_mac for n in a.nodes] == [n.vtep_mac for n in b.nodes]  # stable across loads
    macs = {n.vtep_mac for n in a.nodes}
    assert len(macs) == 2
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01, mac  # locally administered, unicast
    # derived from the node, not from its position in the file
    swapped = SEED.split("[[nodes]]")
    c = planlib.load(write(tmp_path, swapped[0] + "[[nodes]]" + swapped[2] + "[[nodes]]" +
                           swapped[1], "swapped.toml"))
    assert c.node("network-1").vtep_mac == a.node("network-1").vtep_mac


def test_explicit_mac_is_kept_and_normalised(tmp_path):
    text = SEED.replace('subnet = "172.2.0.0/24"',
                        'subnet = "172.2.0.0/24"\nvtep_mac = "0A:58:AC:02:00:00"')
    assert planlib.load(write(tmp_path, text)).node("network-1").vtep_mac == "0a:58:ac:02:00:00"


def test_public_overlay_warns_private_does_not(tmp_path):
    p = planlib.load(write(tmp_path, SEED))
    assert len(p.warnings) == 1 and "172.2.0.0/16 is not private address space" in p.warnings[0]
    private = SEED.replace("172.2.", "10.2.")
    assert planlib.load(write(tmp_path, private, "private.toml")).warnings == ()
    cgnat = SEED.replace("172.2.", "100.64.")
    assert planlib.load(write(tmp_path, cgnat, "cgnat.toml")).warnings == ()


@pytest.mark.parametrize("edit,where,message", [
    (("vni = 10", "vni = 0"), "cluster.vni", "0 is outside 1..16777215"),
    (("vni = 10", "vni = 16777216"), "cluster.vni", "16777216 is outside 1..16777215"),
    (("vni = 10", 'vni = "ten"'), "cluster.vni", "'ten' is not a whole number"),
    (("port = 4789", "port = 70000"), "cluster.port", "70000 is outside 1..65535"),
    (("port = 4789", "port = 4789\nmtu = 500"), "cluster.mtu", "500 is outside 576.."),
    (("port = 4789", "port = 4789\nvnii = 3"), "cluster.vnii", "unknown field"),
    (('overlay = "172.2.0.0/16"\n', ""), "cluster.overlay", "missing"),
    (('overlay = "172.2.0.0/16"', 'overlay = "172.2.0.1/16"'), "cluster.overlay",
     "is not a network"),
    (('name = "network-2"', 'name = "network-1"'), "node 'network-1': name",
     "network-1 is already used by node 'network-1'"),
    (('underlay_ip = "192.168.2.142"', 'underlay_ip = "192.168.1.138"'),
     "node 'network-2': underlay_ip", "192.168.1.138 is already used by node 'network-1'"),
    (('underlay_ip = "192.168.2.142"', 'underlay_ip = "192.168.2.300"'),
     "node 'network-2': underlay_ip", "is not an IP address"),
    (('subnet = "172.2.1.0/24"', 'subnet = "172.3.1.0/24"'), "node 'network-2': subnet",
     "172.3.1.0/24 is outside the overlay 172.2.0.0/16"),
    (('subnet = "172.2.1.0/24"', 'subnet = "172.2.0.128/25"'), "node 'network-2': subnet",
     "172.2.0.128/25 overlaps 172.2.0.0/24 of node 'network-1'"),
    (('subnet = "172.2.1.0/24"', 'subnet = "172.2.1.0/31"'), "node 'network-2': subnet",
     "too small"),
    (('subnet = "172.2.1.0/24"', 'subnet = "172.2.1.0/24"\nvtep_mac = "01:00:5e:00:00:01"'),
     "node 'network-2': vtep_mac", "multicast"),
    (('subnet = "172.2.1.0/24"', 'subnet = "172.2.1.0/24"\nvtep_mac = "nope"'),
     "node 'network-2': vtep_mac", "is not a MAC address"),
    (('subnet = "172.2.1.0/24"', 'subnet = "172.2.1.0/24"\nunderlay_dev = "a-very-long-device"'),
     "node 'network-2': underlay_dev", "is not a valid interface name"),
    (('underlay_ip = "192.168.2.142"', 'underlay_ip = "fd00::2"'), "nodes",
     "mixes IPv4 and IPv6"),
    (('name = "network-2"\n', ""), "nodes[1].name", "missing or empty"),
])
def test_validation_names_file_node_and_field(tmp_path, edit, where, message):
    old, new = edit
    assert old in SEED
    found = problems(tmp_path, SEED.replace(old, new, 1))
    assert any(f": {where}: " in p and message in p for p in found), found


def test_duplicate_mac_is_rejected(tmp_path):
    mac = planlib.derive_mac("network-1", "172.2.0.0/24")
    text = SEED.replace('subnet = "172.2.1.0/24"', f'subnet = "172.2.1.0/24"\nvtep_mac = "{mac}"')
    found = problems(tmp_path, text)
    assert any("node 'network-2': vtep_mac" in p and f"{mac} is already used by node "
               "'network-1'" in p for p in found), found


def test_every_problem_is_reported_at_once(tmp_path):
    text = SEED.replace("vni = 10", "vni = 0").replace("port = 4789", "port = 0")
    found = problems(tmp_path, text)
    assert len(found) == 2


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(PlanError, match="no such file"):
        planlib.load(tmp_path / "missing.toml")
    with pytest.raises(PlanError, match="not valid TOML"):
        planlib.load(write(tmp_path, "[cluster\n"))
    assert problems(tmp_path, "") and any("[[nodes]]" in p for p in problems(tmp_path, ""))


def test_unknown_node_and_local_node_selection(tmp_path):
    p = planlib.load(write(tmp_path, SEED))
    with pytest.raises(PlanError, match="no node named 'network-9'"):
        p.node("network-9")
    assert p.node_for_local(["127.0.0.1", "192.168.2.142"]).name == "network-2"
    with pytest.raises(PlanError, match="no node's underlay_ip"):
        p.node_for_local(["127.0.0.1"])
    with pytest.raises(PlanError, match="several nodes"):
        p.node_for_local(["192.168.1.138", "192.168.2.142"])


def test_desired_state_and_iproute2_commands(tmp_path):
    p = planlib.load(write(tmp_path, SEED))
    s = state.desired(p, "network-1", underlay_dev="eth0", underlay_mtu=1500)
    mac2 = p.node("network-2").vtep_mac
    assert s.device.mtu == 1450 and s.device.address == "172.2.0.0"
    assert state.iproute2(s) == [
        f"ip link add vxlan0 address {p.node('network-1').vtep_mac} mtu 1450 type vxlan id 10 "
        "local 192.168.1.138 dstport 4789 nolearning dev eth0",
        "ip address add 172.2.0.0/32 dev vxlan0",
        "ip link set vxlan0 up",
        f"ip neigh add 172.2.1.0 lladdr {mac2} dev vxlan0 nud permanent",
        f"bridge fdb add {mac2} dev vxlan0 dst 192.168.2.142 self permanent",
        "ip route add 172.2.1.0/24 via 172.2.1.0 dev vxlan0 onlink",
    ]
    assert state.desired(p, "network-1", underlay_dev="eth0", underlay_mtu=9000).device.mtu == 8950


def test_ipv6_underlay_overhead(tmp_path):
    text = SEED.replace('"192.168.1.138"', '"fd00:1::138"').replace('"192.168.2.142"',
                                                                     '"fd00:2::142"')
    p = planlib.load(write(tmp_path, text))
    assert p.overhead == 70
    assert state.desired(p, "network-2", underlay_dev="eth0", underlay_mtu=1500).device.mtu == 1430


def run_vtep(*args):
    return subprocess.run([sys.executable, "-m", "vtep.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_vtep_plan_command_prints_the_seed_commands(tmp_path):
    path = write(tmp_path, SEED)
    r = run_vtep("plan", "--config", str(path), "--node", "network-2")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if not l.startswith("#")]
    assert lines[0].startswith("ip link add vxlan0 address ")
    assert "type vxlan id 10 local 192.168.2.142 dstport 4789 nolearning dev" in lines[0]
    assert lines[-1] == "ip route add 172.2.0.0/24 via 172.2.0.0 dev vxlan0 onlink"
    assert "not private address space" in r.stderr  # the warning, on stderr


def test_vtep_plan_errors_are_one_line_each_with_exit_2(tmp_path):
    path = write(tmp_path, SEED.replace("vni = 10", "vni = 0"))
    r = run_vtep("plan", "--config", str(path), "--node", "network-1")
    assert r.returncode == 2
    assert r.stderr.strip() == f"vtep: {path}: cluster.vni: 0 is outside 1..16777215"
    r = run_vtep("plan", "--config", str(write(tmp_path, SEED, "ok.toml")), "--node", "nope")
    assert r.returncode == 2 and "no node named 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_vtep("plan")
    assert r.returncode == 2 and r.stderr.startswith("vtep: ") and "--config" in r.stderr


def test_ipaddress_semantics_the_plan_relies_on():
    # "first address of the subnet" is the network address, as flannel assigns it
    assert str(ipaddress.ip_network("172.2.5.0/24").network_address) == "172.2.5.0"
