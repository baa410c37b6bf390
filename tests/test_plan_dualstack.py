"""The plan's IPv6 overlay (issue 15): overlay6 and subnet6, dual-stack and IPv6-only.

Expected values are written by hand from the rules in vtep/plan.py's docstring and
RFC 4291 (which IPv6 space is not unicast); MACs from hashlib, as the README states the
derivation.
"""
import hashlib
import ipaddress

import pytest

from vtep import plan as planlib
from vtep import state
from vtep.errors import PlanError

MAC1, MAC2 = "06:b3:31:77:ab:d9", "5a:0c:71:86:59:11"   # the seed's, from the README


def dual() -> dict:
    return {"cluster": {"overlay": "172.2.0.0/16", "overlay6": "fd00:172:2::/48"},
            "nodes": [{"name": "network-1", "underlay_ip": "192.168.1.138",
                       "subnet": "172.2.0.0/24", "subnet6": "fd00:172:2::/64"},
                      {"name": "network-2", "underlay_ip": "192.168.2.142",
                       "subnet": "172.2.1.0/24", "subnet6": "fd00:172:2:1::/64"}]}


def v6_only() -> dict:
    data = dual()
    del data["cluster"]["overlay"]
    for n in data["nodes"]:
        del n["subnet"]
    return data


def problems(data) -> list[str]:
    with pytest.raises(PlanError) as e:
        planlib.parse(data, "p.toml")
    return e.value.problems


def edit(data, node=None, **fields) -> dict:
    (data["cluster"] if node is None else data["nodes"][node]).update(fields)
    return data


def test_a_dual_stack_node_has_both_vtep_addresses_and_gateways():
    p = planlib.parse(dual(), "p.toml")
    n1, n2 = p.nodes
    assert str(p.overlay6) == "fd00:172:2::/48" and str(p.overlay) == "172.2.0.0/16"
    assert [str(o) for o in p.overlays] == ["172.2.0.0/16", "fd00:172:2::/48"]
    assert (str(n2.vtep_ip), str(n2.gateway)) == ("172.2.1.0", "172.2.1.1")
    assert (str(n2.vtep_ip6), str(n2.gateway6)) == ("fd00:172:2:1::", "fd00:172:2:1::1")
    assert [str(s) for s in n1.subnets] == ["172.2.0.0/24", "fd00:172:2::/64"]


def test_adding_an_ipv6_overlay_keeps_every_nodes_mac():
    # the MAC stays derived from the IPv4 subnet: a cluster that turns IPv6 on does not
    # re-address its devices (every fdb and neighbour entry in the cluster would change)
    p = planlib.parse(dual(), "p.toml")
    assert [n.vtep_mac for n in p.nodes] == [MAC1, MAC2]


def test_an_ipv6_only_plan_derives_its_mac_from_the_ipv6_subnet():
    p = planlib.parse(v6_only(), "p.toml")
    n1 = p.nodes[0]
    assert p.overlay is None and n1.subnet is None and n1.vtep_ip is None and n1.gateway is None
    h = bytearray(hashlib.sha256(b"vtep:network-1:fd00:172:2::/64").digest()[:6])
    h[0] = (h[0] & 0xFC) | 0x02
    assert n1.vtep_mac == h.hex(":")
    assert [str(s) for s in n1.subnets] == ["fd00:172:2::/64"]


def test_dual_stack_state_has_one_fdb_entry_and_a_neighbour_and_route_per_family():
    p = planlib.parse(dual(), "p.toml")
    s = state.desired(p, "network-1", underlay_dev="eth0", underlay_mtu=1500)
    (peer,) = s.peers
    assert [(n.ip, n.mac) for n in peer.neighbours] == [("172.2.1.0", MAC2),
                                                        ("fd00:172:2:1::", MAC2)]
    assert (peer.fdb.mac, peer.fdb.dst) == (MAC2, "192.168.2.142")
    assert [(r.dst, r.via) for r in peer.routes] == [("172.2.1.0/24", "172.2.1.0"),
                                                     ("fd00:172:2:1::/64", "fd00:172:2:1::")]
    # the one overlay MTU for both inner families
    assert s.device.mtu == 1450
    assert s.device.addresses == ("172.2.0.0/32", "fd00:172:2::/128")


def test_dual_stack_iproute2_commands():
    p = planlib.parse(dual(), "p.toml")
    s = state.desired(p, "network-1", underlay_dev="eth0", underlay_mtu=1500)
    assert state.iproute2(s) == [
        f"ip link add vxlan0 address {MAC1} mtu 1450 type vxlan id 10 "
        "local 192.168.1.138 dstport 4789 nolearning udpcsum dev eth0",
        # IPv6 stays on, but without a link-local address or router advertisements
        "sysctl -qw net/ipv6/conf/vxlan0/addr_gen_mode=1",
        "sysctl -qw net/ipv6/conf/vxlan0/accept_ra=0",
        # on, said: new devices may start with IPv6 off (default.disable_ipv6 = 1)
        "sysctl -qw net/ipv6/conf/vxlan0/disable_ipv6=0",
        "ip link set vxlan0 alias vtep:kernel:network-1",
        "ip address add 172.2.0.0/32 dev vxlan0",
        "ip -6 address add fd00:172:2::/128 dev vxlan0 nodad",
        "ip link set vxlan0 up",
        f"ip neigh add 172.2.1.0 lladdr {MAC2} dev vxlan0 nud permanent",
        f"ip -6 neigh add fd00:172:2:1:: lladdr {MAC2} dev vxlan0 nud permanent",
        f"bridge fdb add {MAC2} dev vxlan0 dst 192.168.2.142 self permanent",
        "bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 192.168.2.142 self permanent",
        "ip route add 172.2.1.0/24 via 172.2.1.0 dev vxlan0 onlink proto 118",
        "ip -6 route add fd00:172:2:1::/64 via fd00:172:2:1:: dev vxlan0 onlink proto 118",
    ]


def test_an_ipv6_only_device_has_no_ipv4_address():
    p = planlib.parse(v6_only(), "p.toml")
    s = state.desired(p, "network-1", underlay_dev="eth0", underlay_mtu=1500)
    assert s.device.address is None and s.device.addresses == ("fd00:172:2::/128",)
    cmds = state.iproute2(s)
    assert not any(c.startswith("ip address add") or c.startswith("ip neigh add")
                   or c.startswith("ip route add") for c in cmds)
    assert "ip -6 route add fd00:172:2:1::/64 via fd00:172:2:1:: dev vxlan0 onlink proto 118" \
        in cmds


def test_an_ipv6_underlay_with_an_ipv6_overlay_costs_70_bytes():
    data = edit(edit(dual(), 0, underlay_ip="fd00:1::8a"), 1, underlay_ip="fd00:2::8e")
    p = planlib.parse(data, "p.toml")
    assert state.desired(p, "network-1", underlay_dev="eth0", underlay_mtu=1500).device.mtu \
        == 1430


@pytest.mark.parametrize("data,line", [
    (edit(dual(), overlay6="172.3.0.0/16"),
     "p.toml: cluster.overlay6: 172.3.0.0/16 is IPv4: give it as cluster.overlay (overlay is "
     "IPv4, overlay6 IPv6; a dual-stack plan has both)"),
    (edit(dual(), overlay6="fd00:172:2::1/48"),
     "p.toml: cluster.overlay6: 'fd00:172:2::1/48' is not a network (fd00:172:2::1/48 has "
     "host bits set)"),
    (edit(dual(), overlay6="::/0"),
     "p.toml: cluster.overlay6: ::/0 overlaps ::/127, the unspecified and loopback addresses: "
     "the overlay must be unicast address space (e.g. fd00:10:244::/48)"),
    (edit(dual(), overlay6="fe80::/64"),
     "p.toml: cluster.overlay6: fe80::/64 overlaps fe80::/10, link-local (RFC 4291 2.5.6): "
     "the overlay must be unicast address space (e.g. fd00:10:244::/48)"),
    (edit(dual(), overlay6="ff05::/64"),
     "p.toml: cluster.overlay6: ff05::/64 overlaps ff00::/8, multicast: the overlay must be "
     "unicast address space (e.g. fd00:10:244::/48)"),
    (edit(dual(), overlay6="::ffff:0:0/96"),
     "p.toml: cluster.overlay6: ::ffff:0:0/96 overlaps ::ffff:0:0/96, IPv4-mapped addresses "
     "(RFC 4291 2.5.5.2): the overlay must be unicast address space (e.g. fd00:10:244::/48)"),
    (edit(dual(), 1, subnet6="fd00:173::/64"),
     "p.toml: node 'network-2': subnet6: fd00:173::/64 is outside the overlay fd00:172:2::/48"),
    (edit(dual(), 1, subnet6="fd00:172:2:1::/127"),
     "p.toml: node 'network-2': subnet6: fd00:172:2:1::/127 is too small: it needs the VTEP "
     "address, the gateway and pod addresses (/126 or larger)"),
    (edit(dual(), 1, subnet6="172.2.1.0/24"),
     "p.toml: node 'network-2': subnet6: 172.2.1.0/24 is IPv4: subnet6 is the IPv6 subnet"),
    (edit(dual(), 1, subnet6="fd00:172:2::/63"),
     "p.toml: node 'network-2': subnet6: fd00:172:2::/63 overlaps fd00:172:2::/64 of node "
     "'network-1'"),
    (edit(dual(), 1, subnet6="nope"),
     "p.toml: node 'network-2': subnet6: 'nope' is not a network ('nope' does not appear to "
     "be an IPv4 or IPv6 network)"),
])
def test_each_ipv6_problem_is_one_exact_line(data, line):
    assert line in problems(data), problems(data)


def test_every_node_needs_a_subnet6_once_the_plan_has_overlay6():
    data = dual()
    del data["nodes"][1]["subnet6"]
    assert problems(data) == ["p.toml: node 'network-2': subnet6: missing (cluster.overlay6 "
                              "is set: every node needs a subnet of it)"]


def test_a_subnet6_without_overlay6_is_refused_not_ignored():
    data = dual()
    del data["cluster"]["overlay6"]
    del data["nodes"][0]["subnet6"]
    assert problems(data) == ["p.toml: node 'network-2': subnet6: fd00:172:2:1::/64: the plan "
                              "has no cluster.overlay6"]


def test_an_ipv6_only_plan_refuses_an_ipv4_subnet():
    data = v6_only()
    data["nodes"][0]["subnet"] = "172.2.0.0/24"
    assert problems(data) == ["p.toml: node 'network-1': subnet: 172.2.0.0/24: the plan has "
                              "no cluster.overlay"]


def test_no_overlay_at_all_is_one_problem():
    data = dual()
    del data["cluster"]["overlay"], data["cluster"]["overlay6"]
    for n in data["nodes"]:
        del n["subnet6"]
    assert problems(data) == ['p.toml: cluster.overlay: missing (the overlay network, e.g. '
                              '"10.244.0.0/16"; overlay6 for IPv6 pods)']


def test_an_ipv6_underlay_inside_overlay6_or_a_subnet6_is_refused():
    # the route to the subnet would carry the tunnel's own packets into the tunnel
    data = edit(edit(dual(), 0, underlay_ip="fd00:172:2:1::8"), 1, underlay_ip="fd00:2::8e")
    found = problems(data)
    assert ("p.toml: cluster.overlay6: fd00:172:2::/48 contains the underlay_ip "
            "fd00:172:2:1::8 of node 'network-1': the underlay must stay outside the overlay"
            ) in found
    assert ("p.toml: node 'network-2': subnet6: fd00:172:2:1::/64 contains the underlay_ip "
            "fd00:172:2:1::8 of node 'network-1': its route would carry the tunnel into itself"
            ) in found


def test_an_ipv4_underlay_is_never_held_against_overlay6():
    # 192.168.1.138 as an integer lies inside ::c0a8:0/112; families must not mix. The
    # overlay is refused (IPv4-compatible space), the subnets are still checked.
    data = edit(dual(), overlay6="::c0a8:0/112")
    for n, s in zip(data["nodes"], ("::c0a8:0/120", "::c0a8:100/120")):
        n["subnet6"] = s
    found = problems(data)
    assert found == ["p.toml: cluster.overlay6: ::c0a8:0/112 overlaps ::/96, IPv4-compatible "
                     "addresses, deprecated (RFC 4291 2.5.5.1): the overlay must be unicast "
                     "address space (e.g. fd00:10:244::/48)"]
    assert not any("contains the underlay_ip" in line for line in found), found


def test_ipv6_subnets_are_swept_for_overlaps_like_ipv4_ones():
    # every pair compared by ipaddress agrees with the sweep, on random /64../56 blocks
    import random
    rng = random.Random(15)
    base = int(ipaddress.IPv6Address("fd00:172:2::"))
    nodes = []
    for i in range(60):
        plen = rng.choice((56, 60, 64))
        net = ipaddress.IPv6Network((base + (rng.randrange(256) << 64), plen), strict=False)
        nodes.append({"name": f"n{i}", "underlay_ip": f"192.168.{i // 250}.{i % 250 + 1}",
                      "subnet": f"10.{i}.0.0/24", "subnet6": str(net)})
    data = {"cluster": {"overlay": "10.0.0.0/8", "overlay6": "fd00:172:2::/48"}, "nodes": nodes}
    nets = [ipaddress.ip_network(n["subnet6"]) for n in nodes]
    expect = {i for i in range(len(nets)) for j in range(len(nets)) if j != i
              and nets[i].overlaps(nets[j]) and (nets[j].network_address, j)
              < (nets[i].network_address, i)}
    assert expect   # the draw has overlaps (else the test would prove nothing)
    found = problems(data)
    flagged = {int(line.split("'n")[1].split("'")[0]) for line in found if "overlaps" in line}
    assert flagged == expect


def test_an_ipv6_overlay_needs_an_mtu_of_1280():
    # RFC 8200 section 5: 1280 is IPv6's minimum link MTU; below it the kernel takes
    # IPv6 off the device, and every IPv6 address and route on it vanishes
    assert problems(edit(dual(), mtu=1279)) == [
        "p.toml: cluster.mtu: 1279 is below 1280, IPv6's minimum link MTU (RFC 8200 section 5), "
        "and the plan has overlay6"]
    assert planlib.parse(edit(dual(), mtu=1280), "p.toml").mtu == 1280
    data = dual()
    del data["cluster"]["overlay6"]
    for n in data["nodes"]:
        del n["subnet6"]
    assert planlib.parse(edit(data, mtu=1279), "p.toml").mtu == 1279   # IPv4 alone: 576


@pytest.mark.parametrize("underlay_mtu,fits", [(1330, True), (1329, False)])
def test_an_underlay_too_narrow_for_ipv6_pods_is_refused_at_run_time(underlay_mtu, fits):
    from vtep import kernel
    p = planlib.parse(dual(), "p.toml")
    node = p.node("network-1")
    if fits:   # 1330 - 50 = 1280
        kernel.check_mtu(p, node, "eth0", underlay_mtu)
        return
    with pytest.raises(PlanError) as e:
        kernel.check_mtu(p, node, "eth0", underlay_mtu)
    assert str(e.value) == (
        "p.toml: cluster.mtu: the default for node 'network-1' (eth0 MTU 1329 - 50 = 1279) is "
        "below 1280, IPv6's minimum link MTU (RFC 8200 section 5), and the plan has overlay6")


def test_a_forced_mtu_below_1280_is_refused_with_an_ipv6_overlay():
    import dataclasses
    from vtep import kernel
    p = dataclasses.replace(planlib.parse(dual(), "p.toml"), mtu=1200)
    with pytest.raises(PlanError) as e:
        kernel.check_mtu(p, p.node("network-1"), "eth0", 1500, forced=True)
    assert str(e.value) == ("--mtu 1200 is below 1280, IPv6's minimum link MTU (RFC 8200 "
                            "section 5), and the plan has overlay6")
