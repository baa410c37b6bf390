"""The kernel data path's pure parts, without root: the entry diff, the device
comparison, the MTU rule, the netlink codec, port and status-file helpers."""
import os
import socket
import subprocess
import sys
from argparse import Namespace

import pytest

from vtep import daemon, kernel, netlink, plan as planlib, state
from vtep.errors import PermissionDenied, PlanError
from vtep.netlink import FdbEntry, NeighEntry, Op, Realised, RouteEntry

PLAN = {
    "cluster": {"vni": 10, "port": 4789, "overlay": "10.244.0.0/16"},
    "nodes": [
        {"name": "a", "underlay_ip": "192.168.1.138", "subnet": "10.244.0.0/24"},
        {"name": "b", "underlay_ip": "192.168.2.142", "subnet": "10.244.1.0/24"},
        {"name": "c", "underlay_ip": "192.168.3.33", "subnet": "10.244.2.0/24"},
    ],
}
PERM = netlink.NUD_PERMANENT


@pytest.fixture
def plan():
    return planlib.parse(PLAN, "plan.toml")


@pytest.fixture
def want(plan):
    return state.desired(plan, "a", underlay_dev="eth0", underlay_mtu=1500)


def realised_from(want):
    """Exactly the desired entries, as the kernel reports them."""
    return Realised(
        {p.neighbour.ip: NeighEntry(p.neighbour.ip, p.neighbour.mac, PERM) for p in want.peers},
        tuple(FdbEntry(p.fdb.mac, p.fdb.dst, PERM | 0x40) for p in want.peers),
        {(p.route.dst, 0, 0): RouteEntry(p.route.dst, p.route.via, True, 0, 0, 3, 0, 1)
         for p in want.peers})


EMPTY = Realised({}, (), {})


# --- diff -------------------------------------------------------------------------------------

def test_from_nothing_each_peer_gets_neigh_fdb_route_in_that_order(want):
    changes = kernel.diff(want, EMPTY)
    kinds = [(c.ops[0].kind, c.ops[0].action) for c in changes]
    assert kinds == [("neigh", "set"), ("fdb", "set"), ("route", "set")] * 2
    b = want.peers[0]
    assert changes[0].text == f"added neigh 10.244.1.0 lladdr {b.neighbour.mac} on vxlan0 (peer b)"
    assert changes[1].text == f"added fdb {b.fdb.mac} dst 192.168.2.142 on vxlan0 (peer b)"
    assert changes[2].text == "added route 10.244.1.0/24 via 10.244.1.0 onlink on vxlan0 (peer b)"
    assert changes[2].ops == (Op("route", "set", "10.244.1.0/24", "10.244.1.0"),)


def test_converged_state_needs_nothing(want):
    assert kernel.diff(want, realised_from(want)) == []


def test_a_peer_gone_from_the_plan_loses_all_three_entries_first(plan, want):
    have = realised_from(want)
    fewer = state.desired(planlib.parse({**PLAN, "nodes": PLAN["nodes"][:2]}), "a",
                          underlay_dev="eth0", underlay_mtu=1500)
    changes = kernel.diff(fewer, have)
    c = want.peers[1]
    assert [(x.ops[0].kind, x.ops[0].action, x.ops[0].key) for x in changes] == [
        ("route", "del", "10.244.2.0/24"), ("fdb", "del", c.fdb.mac), ("neigh", "del", "10.244.2.0")]
    assert changes[0].text == ("removed route 10.244.2.0/24 via 10.244.2.0 from vxlan0 "
                               "(not in the plan)")


def test_changed_entries_are_replaced(want):
    b = want.peers[0]
    have = realised_from(want)
    have.neighbours[b.neighbour.ip] = NeighEntry(b.neighbour.ip, "02:00:00:00:00:01", PERM)
    have.routes[(b.route.dst, 0, 0)] = RouteEntry(b.route.dst, "10.244.1.9", True, 0, 0, 3, 0, 1)
    fdb = list(have.fdb)
    fdb[0] = FdbEntry(b.fdb.mac, "192.168.9.9", PERM)
    changes = kernel.diff(want, Realised(have.neighbours, tuple(fdb), have.routes))
    texts = [c.text for c in changes]
    assert texts == [
        f"changed neigh 10.244.1.0 lladdr {b.neighbour.mac} permanent on vxlan0 "
        "(was 02:00:00:00:00:01) (peer b)",
        f"changed fdb {b.fdb.mac} dst 192.168.2.142 on vxlan0 (was dst 192.168.9.9) (peer b)",
        "changed route 10.244.1.0/24 via 10.244.1.0 onlink on vxlan0 (was via 10.244.1.9 onlink) "
        "(peer b)"]
    # the stale remote is deleted (naming it exactly), then the planned one set
    assert changes[1].ops == (Op("fdb", "del", b.fdb.mac, "192.168.9.9", fdb=fdb[0]),
                              Op("fdb", "set", b.fdb.mac, "192.168.2.142"))


def test_non_permanent_or_overridden_entries_are_made_as_planned(want):
    b = want.peers[0]
    have = realised_from(want)
    have.neighbours[b.neighbour.ip] = NeighEntry(b.neighbour.ip, b.neighbour.mac, 0x02)
    fdb = list(have.fdb)
    fdb[0] = FdbEntry(b.fdb.mac, b.fdb.dst, PERM, port=8472)
    changes = kernel.diff(want, Realised(have.neighbours, tuple(fdb), have.routes))
    assert [c.ops for c in changes] == [(Op("neigh", "set", b.neighbour.ip, b.neighbour.mac),),
                                        (Op("fdb", "set", b.fdb.mac, b.fdb.dst),)]
    assert "not permanent" in changes[0].text


def test_what_is_not_ours_to_remove(want):
    have = realised_from(want)
    # a kernel route (from an address) and a non-permanent neighbour are the kernel's
    have.routes[("10.9.0.0/24", 0, 0)] = RouteEntry("10.9.0.0/24", None, False, 0, 0,
                                                    netlink.RTPROT_KERNEL, 253, 1)
    have.neighbours["10.9.0.7"] = NeighEntry("10.9.0.7", None, 0x20)
    assert kernel.diff(want, have) == []
    # ...but a second route to a peer subnet with a metric is not in the plan
    have.routes[("10.244.1.0/24", 0, 100)] = RouteEntry("10.244.1.0/24", "10.244.1.0", True, 100,
                                                        0, 3, 0, 1)
    (c,) = kernel.diff(want, have)
    assert c.ops == (Op("route", "del", "10.244.1.0/24", "10.244.1.0", 100, 0),)
    assert "metric 100" in c.text


# --- the device -------------------------------------------------------------------------------

def facts(**over):
    f = {"kind": "vxlan", "vni": 10, "local": "192.168.1.138", "port": 4789, "link": 2,
         "learning": False, "external": False, "group": None, "mtu": 1450, "up": True,
         "df": 0}
    return {**f, **over}


def test_device_differences(want):
    dev = want.device
    f = facts(mac=dev.mac)
    assert kernel.device_diffs(dev, f, 2, {}) == ([], {})
    bad, _ = kernel.device_diffs(dev, facts(mac=dev.mac, vni=42, learning=True, port=8472,
                                            link=7, local="10.0.0.1"), 2, {7: "eth1"})
    assert bad == ["vni: 10 vs 42", "local: 192.168.1.138 vs 10.0.0.1", "port: 4789 vs 8472",
                   "dev: eth0 vs eth1", "learning: off vs on"]
    assert kernel.device_diffs(dev, {"kind": "bridge"}, 2, {})[0] == ["kind: vxlan vs bridge"]
    # a TAP (the userspace path's device) is no vxlan device but takes MTU/MAC repairs
    bad, repairs = kernel.device_diffs(dev, {"kind": "tun", "mtu": 1400, "mac": dev.mac}, 2, {})
    assert bad == ["kind: vxlan vs tun"] and repairs == {"mtu": dev.mtu}
    bad, repairs = kernel.device_diffs(dev, facts(mac="02:00:00:00:00:09", mtu=1500, df=1), 2,
                                       {}, df="unset")
    assert bad == [] and repairs == {"mtu": 1450, "mac": dev.mac, "df": "unset"}


def test_incompatible_message_reads_plan_vs_existing():
    e = kernel.Incompatible("vxlan0", ["vni: 10 vs 42"])
    assert str(e) == ("vxlan0 exists with incompatible settings: vni: 10 vs 42 "
                      "(plan vs existing; --replace recreates it)")
    assert e.exit_code == 5
    assert "not removing it" in str(kernel.NotOurs("vxlan0", ["vni: 10 vs 42"]))


def test_mtu_must_fit_the_underlay(plan):
    node = plan.node("a")
    kernel.check_mtu(plan, node, "eth0", 1500)
    big = planlib.parse({**PLAN, "cluster": {**PLAN["cluster"], "mtu": 1480}}, "plan.toml")
    with pytest.raises(PlanError, match=r"plan.toml: cluster.mtu: 1480 .* node 'a' carries "
                                        r"\(eth0 MTU 1500 - 50 bytes of VXLAN encapsulation "
                                        r"= 1450\)"):
        kernel.check_mtu(big, node, "eth0", 1500)
    with pytest.raises(PlanError, match=r"cluster.mtu: the default .* = 550\) is below 576"):
        kernel.check_mtu(plan, node, "eth0", 600)


# --- the netlink codec ------------------------------------------------------------------------

def payload(data):
    ((typ, flags, seq, a, end),) = list(netlink._messages(data, len(data)))
    return typ, flags, seq, a, end


def test_encode_decode_round_trip():
    data = netlink.encode(Op("neigh", "set", "10.244.1.0", "5a:0c:71:86:59:11"), 7, 42)
    typ, flags, seq, a, end = payload(data)
    assert (typ, seq) == (netlink.RTM_NEWNEIGH, 42)
    assert flags & netlink.NLM_F_REPLACE and flags & netlink.NLM_F_CREATE
    assert netlink.decode_neigh(data, a, end, 7) == (
        socket.AF_INET, NeighEntry("10.244.1.0", "5a:0c:71:86:59:11", PERM))
    assert netlink.decode_neigh(data, a, end, 8) == (socket.AF_INET, None)   # another device

    data = netlink.encode(Op("fdb", "set", "5a:0c:71:86:59:11", "192.168.2.142"), 7, 43)
    _, _, _, a, end = payload(data)
    assert netlink.decode_neigh(data, a, end) == (
        netlink.AF_BRIDGE, FdbEntry("5a:0c:71:86:59:11", "192.168.2.142", PERM))
    stale = FdbEntry("5a:0c:71:86:59:11", "192.168.9.9", PERM, port=8472, vni=11)
    data = netlink.encode(Op("fdb", "del", stale.mac, stale.dst, fdb=stale), 7, 44)
    typ, _, _, a, end = payload(data)
    assert typ == netlink.RTM_DELNEIGH
    assert netlink.decode_neigh(data, a, end)[1] == stale   # the delete names the exact remote

    data = netlink.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 45)
    _, _, _, a, end = payload(data)
    oif, table, r = netlink.decode_route(data, a, end)
    assert (oif, table) == (7, netlink.RT_TABLE_MAIN)
    assert (r.dst, r.gateway, r.onlink, r.proto, r.type) == (
        "10.244.1.0/24", "10.244.1.0", True, netlink.RTPROT_BOOT, netlink.RTN_UNICAST)


def test_notifications_name_the_drift_and_skip_echoes():
    add = netlink.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 1)
    typ, _, _, a, end = payload(add)
    assert netlink._event(add, typ, a, end, {7}, None) == (True, "route 10.244.1.0/24 changed")
    assert netlink._event(add, typ, a, end, {7}, lambda e: True) == (True, None)
    assert netlink._event(add, typ, a, end, {8}, None) == (False, None)
    gone = netlink.encode(Op("neigh", "del", "10.244.1.0"), 7, 2)
    typ, _, _, a, end = payload(gone)
    assert netlink._event(gone, typ, a, end, {7}, lambda e: True) == (
        True, "neigh 10.244.1.0 deleted")


# --- host helpers -----------------------------------------------------------------------------

def test_udp_sockets_finds_a_bound_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert f"127.0.0.1:{port}" in kernel.udp_sockets(port, False)
    finally:
        s.close()
    assert f"127.0.0.1:{port}" not in kernel.udp_sockets(port, False)


def test_status_file_owner(tmp_path):
    st = daemon.StatusFile(str(tmp_path), "network-1", "vxlan0")
    assert st.path == str(tmp_path / "vxlan0.network-1.json")
    assert st.live_owner() is None
    here = daemon._netns_inode()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        st.write({"pid": child.pid, "netns": here})
        assert st.live_owner() == child.pid
        st.write({"pid": child.pid, "netns": here + 1})   # another namespace's run
        assert st.live_owner() is None
    finally:
        child.kill()
        child.wait()
    st.write({"pid": child.pid, "netns": here})
    assert st.live_owner() is None          # dead: a crash's leftover
    st.write({"pid": os.getpid(), "netns": here})
    assert st.live_owner() is None          # ourselves
    st.remove()
    st.remove()                             # idempotent
    assert not os.path.exists(st.path)


def test_without_net_admin_nothing_is_touched(monkeypatch, plan):
    monkeypatch.setattr(kernel.host, "has_net_admin", lambda: False)
    args = Namespace(config="plan.toml", node="a", device="vxlan0", once=True, keep=False,
                     replace=False, df=None, interval=10.0, state_dir="/nonexistent")
    with pytest.raises(PermissionDenied, match="vtep run --kernel needs root or CAP_NET_ADMIN"):
        kernel.run(args, plan)
    with pytest.raises(PermissionDenied, match="vtep down needs root"):
        kernel.down(args, plan)
