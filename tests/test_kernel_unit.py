"""The kernel data path's pure parts, without root: the entry diff, the device
comparison, the MTU rule, the netlink codec, the reconciler's pass order, port and
status-file helpers."""
import dataclasses
import os
import socket
import struct
from argparse import Namespace
from unittest import mock

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg   # independent decoders of what we encode
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from vtep import commands, host, kernel, linkfacts, netlink, plan as planlib, state, status
from vtep.config import RunConfig
from vtep.errors import Incompatible, PermissionDenied, PlanError
from vtep.reconcile import Reconciler
from vtep.netlink import FdbEntry, NeighEntry, Op, Realised, RouteEntry

PLAN = {
    "cluster": {"vni": 10, "port": 4789, "overlay": "10.244.0.0/16"},
    "nodes": [
        {"name": "a", "underlay_ip": "192.168.1.138", "subnet": "10.244.0.0/24"},
        {"name": "b", "underlay_ip": "192.168.2.142", "subnet": "10.244.1.0/24"},
        {"name": "c", "underlay_ip": "192.168.3.33", "subnet": "10.244.2.0/24"},
    ],
}
# Literal kernel values, never the module's constants: <linux/netlink.h>, <linux/rtnetlink.h>,
# <linux/neighbour.h>, <linux/if_addr.h>; protocol 118 as the README documents it.
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
PROTO_BOOT, PROTO_STATIC, PROTO_VTEP = 3, 4, 118   # 118: the number the README documents
SCOPE_UNIVERSE, SCOPE_LINK = 0, 253
RTN_UNICAST, RT_TABLE_MAIN, RTNH_F_ONLINK = 1, 254, 4
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x100 | 0x200          # NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200   # flags of an NLMSG_ERROR
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS = 1, 2
RTM_NEWLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETROUTE = 16, 20, 21, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
NUD_REACHABLE, NUD_STALE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x02, 0x04, 0x20, 0x40, 0x80
NTF_SELF, NTF_MASTER = 0x02, 0x04
NDA_DST, NDA_LLADDR, NDA_CACHEINFO, NDA_PROBES = 1, 2, 3, 4
NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_MASTER, NDA_SRC_VNI = 6, 7, 8, 9, 11
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 4, 5, 6, 7
RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 9, 15, 30
RTNH_F_DEAD, RTNH_F_LINKDOWN = 1, 16
RT_SCOPE_NOWHERE, PROTO_KERNEL = 255, 2
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_CACHEINFO = 1, 2, 3, 6
PERM = NUD_PERMANENT
MAC = "5a:0c:71:86:59:11"


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
        {(p.route.dst, 0, 0): RouteEntry(p.route.dst, p.route.via, True, 0, 0, PROTO_VTEP, 0, 1)
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
    old = RouteEntry(b.route.dst, "10.244.1.9", True, 0, 0, PROTO_VTEP, 0, 1)
    have.routes[(b.route.dst, 0, 0)] = old
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
    # our route: the exact delete, then a create (never a replace: see below)
    assert changes[2].ops == (Op("route", "del", b.route.dst, "10.244.1.9", route=old),
                              Op("route", "set", b.route.dst, b.route.via))


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
    extra = RouteEntry("10.244.1.0/24", "10.244.1.0", True, 100, 0, PROTO_BOOT, 0, 1)
    have.routes[("10.244.1.0/24", 0, 100)] = extra
    (c,) = kernel.diff(want, have)
    assert c.ops == (Op("route", "del", "10.244.1.0/24", "10.244.1.0", route=extra),)
    assert c.text == ("removed route 10.244.1.0/24 via 10.244.1.0 proto boot metric 100 "
                      "from vxlan0 (not in the plan)")


# --- routes: ours are tagged, created exclusively, and deleted as the dump gave them ---------

def test_a_foreign_scope_link_route_on_our_device_is_deleted_as_it_is(want):
    """Defect 3: `ip route add 172.2.1.0/25 dev vxlan0` is scope link; a delete sent
    with scope universe is answered ESRCH forever."""
    have = realised_from(want)
    hand = RouteEntry("10.244.9.0/25", None, False, 0, 0, PROTO_BOOT, SCOPE_LINK, RTN_UNICAST)
    have.routes[("10.244.9.0/25", 0, 0)] = hand
    (c,) = kernel.diff(want, have)
    (op,) = c.ops
    m = rtmsg(netlink.encode(op, 7, 50))
    m.decode()
    assert m["header"]["type"] == RTM_DELROUTE
    assert not m["header"]["flags"] & (NLM_F_CREATE | NLM_F_REPLACE | NLM_F_EXCL)
    assert (m["scope"], m["proto"], m["type"], m["tos"], m["table"], m["dst_len"]) == (
        SCOPE_LINK, PROTO_BOOT, RTN_UNICAST, 0, RT_TABLE_MAIN, 25)
    assert dict(m["attrs"]) == {"RTA_DST": "10.244.9.0", "RTA_TABLE": RT_TABLE_MAIN,
                                "RTA_OIF": 7}
    assert op == Op("route", "del", "10.244.9.0/25", None, route=hand)
    # iproute2 prints this route as "10.244.9.0/25 dev vxlan0 proto boot scope link"
    assert c.text == "removed route 10.244.9.0/25 proto boot scope link from vxlan0 (not in the plan)"


def test_a_delete_repeats_gateway_metric_tos_and_protocol():
    r = RouteEntry("10.244.9.128/25", "10.244.1.0", True, 7, 0x10, PROTO_STATIC, SCOPE_UNIVERSE,
                   RTN_UNICAST)
    m = rtmsg(netlink.encode(Op("route", "del", r.dst, r.gateway, route=r), 7, 51))
    m.decode()
    assert (m["scope"], m["proto"], m["type"], m["tos"]) == (SCOPE_UNIVERSE, PROTO_STATIC,
                                                             RTN_UNICAST, 0x10)
    assert dict(m["attrs"]) == {"RTA_DST": "10.244.9.128", "RTA_TABLE": RT_TABLE_MAIN,
                                "RTA_OIF": 7, "RTA_GATEWAY": "10.244.1.0", "RTA_PRIORITY": 7}


def test_a_route_through_a_nexthop_object_is_deleted_by_its_id():
    """fib_nh_match: a route using a nexthop object matches only its id; the kernel
    refuses an oif or a gateway next to RTA_NH_ID. Bytes checked by hand (pyroute2 0.9
    does not know RTA_NH_ID, type 30)."""
    r = RouteEntry("10.244.9.0/24", "10.244.1.0", True, 0, 0, PROTO_BOOT, SCOPE_UNIVERSE,
                   RTN_UNICAST, nh_id=77)
    data = netlink.encode(Op("route", "del", r.dst, r.gateway, route=r), 7, 52)
    assert struct.unpack_from("=IHH", data) == (len(data), RTM_DELROUTE, 0x1 | 0x4)
    # rtmsg: family dst_len src_len tos table protocol scope type, flags
    assert struct.unpack_from("=8BI", data, 16) == (socket.AF_INET, 24, 0, 0, RT_TABLE_MAIN,
                                                    PROTO_BOOT, SCOPE_UNIVERSE, RTN_UNICAST, 0)
    attrs, off = [], 28
    while off < len(data):
        ln, typ = struct.unpack_from("=HH", data, off)
        attrs.append((typ, data[off + 4:off + ln]))
        off += (ln + 3) & ~3
    assert attrs == [(1, bytes([10, 244, 9, 0])), (15, struct.pack("=I", 254)),
                     (30, struct.pack("=I", 77))]


def test_a_route_we_create_is_tagged_and_exclusive():
    """Defect 2: every route was RTM_NEWROUTE with CREATE|REPLACE, which overwrites a
    route with the same key on any device (the underlay's connected route)."""
    m = rtmsg(netlink.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 53))
    m.decode()
    flags = m["header"]["flags"]
    assert m["header"]["type"] == RTM_NEWROUTE
    assert flags & NLM_F_EXCL and flags & NLM_F_CREATE and not flags & NLM_F_REPLACE
    assert (m["proto"], m["scope"], m["type"], m["table"], m["flags"], m["dst_len"]) == (
        PROTO_VTEP, SCOPE_UNIVERSE, RTN_UNICAST, RT_TABLE_MAIN, RTNH_F_ONLINK, 24)
    assert dict(m["attrs"]) == {"RTA_DST": "10.244.1.0", "RTA_OIF": 7,
                                "RTA_GATEWAY": "10.244.1.0"}


def test_no_route_message_ever_replaces(want):
    """Also a change of our own route: IPv4's NLM_F_REPLACE takes the first route with the
    key whatever its device, so a change is our route's exact delete and a create."""
    b = want.peers[0]
    have = realised_from(want)
    have.routes[(b.route.dst, 0, 0)] = RouteEntry(b.route.dst, "10.244.1.9", True, 0, 0,
                                                  PROTO_VTEP, 0, 1)
    have.routes[("10.244.7.0/24", 0, 0)] = RouteEntry("10.244.7.0/24", None, False, 0, 0,
                                                      PROTO_STATIC, SCOPE_LINK, 1)
    ops = [op for c in kernel.diff(want, have) for op in c.ops]
    ops += [op for c in kernel.diff(want, EMPTY) for op in c.ops]
    routes = [netlink.encode(op, 7, i) for i, op in enumerate(ops) if op.kind == "route"]
    assert len(routes) == 5   # stale delete; change: delete + create; two creates
    for data in routes:
        m = rtmsg(data)
        m.decode()
        assert not m["header"]["flags"] & NLM_F_REPLACE, m
        if m["header"]["type"] == RTM_NEWROUTE:
            assert m["header"]["flags"] & NLM_F_EXCL and m["proto"] == PROTO_VTEP


def test_a_planned_route_made_by_someone_else_is_re_tagged(want):
    """`ip route replace <peer subnet> via <peer vtep> dev vxlan0 onlink` (proto boot): on
    our device, with the plan's gateway, but not tagged: made ours again."""
    b = want.peers[0]
    have = realised_from(want)
    hand = RouteEntry(b.route.dst, b.route.via, True, 0, 0, PROTO_BOOT, 0, 1)
    have.routes[(b.route.dst, 0, 0)] = hand
    (c,) = kernel.diff(want, have)
    assert c.text == ("changed route 10.244.1.0/24 via 10.244.1.0 onlink on vxlan0 "
                      "(was via 10.244.1.0 onlink proto boot) (peer b)")
    assert c.ops == (Op("route", "del", b.route.dst, b.route.via, route=hand),
                     Op("route", "set", b.route.dst, b.route.via))


def test_a_route_that_lost_its_onlink_flag_is_made_onlink_again(want):
    """`ip route replace <peer subnet> via <peer vtep> dev vxlan0 proto 118` without onlink
    (possible while another route makes the gateway reachable): the same gateway, tag and
    key, but the kernel now resolves the gateway through the table instead of the tunnel."""
    b = want.peers[0]
    have = realised_from(want)
    lost = RouteEntry(b.route.dst, b.route.via, False, 0, 0, PROTO_VTEP, SCOPE_UNIVERSE,
                      RTN_UNICAST)
    have.routes[(b.route.dst, 0, 0)] = lost
    (c,) = kernel.diff(want, have)
    assert c.text == ("changed route 10.244.1.0/24 via 10.244.1.0 onlink on vxlan0 "
                      "(was via 10.244.1.0) (peer b)")
    assert c.ops == (Op("route", "del", b.route.dst, b.route.via, route=lost),
                     Op("route", "set", b.route.dst, b.route.via))


class NoBackend:
    """A device backend whose device step is skipped: the device is ifindex 7."""
    mode, kernel_fdb, df, ifindex = "kernel", True, None, 7

    def ensure(self, want, under, first, replace):
        return 7, False


class NoLinks:
    notes = []

    def note(self, line):
        self.notes.append(line)


def reconciler(plan, rtnl=None) -> Reconciler:
    return Reconciler(plan, RunConfig(mode="kernel", plan_path="plan.toml", node="a"),
                      NoBackend(), NoLinks(), rtnl)


def echo_of(want):
    rec = reconciler(planlib.parse(PLAN, "plan.toml"))
    rec.want = want
    return rec.echo()


def test_only_the_route_we_create_is_an_echo_of_ours(want):
    """The echo filter drops a notification that diff() would find nothing to do about; it
    must never drop one that diff() would change, or the drift waits for the periodic
    resync (the defect: a route through a nexthop object, or with a tos of its own, was
    taken for ours)."""
    planned = echo_of(want)
    b = want.peers[0]
    dst, via = b.route.dst, b.route.via
    # what the kernel reports for the route we create (RTM_NEWROUTE as encode_route sends it)
    ours = RouteEntry(dst, via, True, 0, 0, PROTO_VTEP, SCOPE_UNIVERSE, RTN_UNICAST)
    assert planned(ours)
    data = netlink.encode(Op("route", "set", dst, via), 7, 1)
    assert planned(netlink.decode_route(data, 16, len(data))[2])
    drifted = {
        "proto boot": dict(proto=PROTO_BOOT),
        "not onlink": dict(onlink=False),
        "nexthop object": dict(nh_id=77),
        "tos": dict(tos=0x10),
        "metric": dict(priority=100),
        "scope link": dict(scope=SCOPE_LINK),
        "blackhole": dict(type=6),
        "another gateway": dict(gateway="10.244.1.9"),
        "another prefix": dict(dst="10.244.1.0/25"),
        "multipath": dict(multipath=True),
        "another table": dict(table=100),
    }
    for what, change in drifted.items():
        e = dataclasses.replace(ours, **change)
        assert not planned(e), what
        if what not in ("tos", "metric", "another prefix"):   # a key of their own: stale
            assert kernel.diff(want, Realised({}, (), {(dst, 0, 0): e}))[2].ops[0] == Op(
                "route", "del", dst, e.gateway, route=e), what


def test_only_permanent_planned_neighbours_and_remotes_are_echoes(want):
    planned = echo_of(want)
    b = want.peers[0]
    nb, fd = b.neighbour, b.fdb
    assert planned(NeighEntry(nb.ip, nb.mac, PERM))
    assert not planned(NeighEntry(nb.ip, nb.mac, NUD_REACHABLE))
    assert not planned(NeighEntry(nb.ip, "02:00:00:00:00:01", PERM))
    assert planned(FdbEntry(fd.mac, fd.dst, PERM | NUD_NOARP))
    assert not planned(FdbEntry(fd.mac, fd.dst, NUD_REACHABLE))
    assert not planned(FdbEntry(fd.mac, fd.dst, PERM, port=8472))
    assert not planned(FdbEntry(fd.mac, "192.168.9.9", PERM))
    assert planned(netlink.AddrEntry(want.device.address, 32))
    assert not planned(netlink.AddrEntry(want.device.address, 24))


# --- the order changes reach the kernel in --------------------------------------------------

def recording_vtep(monkeypatch, want, have):
    """A reconciler whose device step is skipped and whose rtnetlink socket records what a
    pass sends (and acknowledges it); nothing on the host is touched."""
    rt = rtnl_on(FakeKernel(acks()))
    monkeypatch.setattr(rt, "read", lambda idx: have)
    monkeypatch.setattr(host, "enable_forwarding", lambda df=None: [])
    monkeypatch.setattr(host, "underlay_facts", lambda node: host.Underlay("eth0", 1500, 2))
    rec = reconciler(planlib.parse(PLAN, "plan.toml"), rt)
    rec.desired = lambda plan, node, under: want
    return rec, rt.sock


def sent_in_order(fake):
    """(message type, family, what) of every request the pass sent, decoded by pyroute2."""
    out = []
    for datagram in fake.sent:
        for typ, _f, _s, body in split(datagram):
            raw = struct.pack("=IHHII", 16 + len(body), typ, 0, 0, 0) + body
            if typ in (RTM_NEWNEIGH, RTM_DELNEIGH):
                m = ndmsg(raw)
                m.decode()
                out.append((typ, m["family"], m.get_attr("NDA_DST")))
            else:
                m = rtmsg(raw)
                m.decode()
                out.append((typ, m["family"], f"{m.get_attr('RTA_DST')}/{m['dst_len']}"))
    return out


FOUR = {**PLAN, "nodes": PLAN["nodes"][:2] + [
    {"name": "d", "underlay_ip": "192.168.4.44", "subnet": "10.244.3.0/24"}]}


def test_a_pass_sends_each_peers_neighbour_then_fdb_then_route(monkeypatch, want):
    """The kernel accepts an onlink route before its gateway's neighbour exists, and would
    then resolve the gateway by ARP across the tunnel: the order is the pass's to keep,
    whatever the list diff() returns is then done with."""
    vt, fake = recording_vtep(monkeypatch, want, EMPTY)
    vt.converge(first=True)
    assert sent_in_order(fake) == [
        (RTM_NEWNEIGH, AF_INET, "10.244.1.0"), (RTM_NEWNEIGH, AF_BRIDGE, "192.168.2.142"),
        (RTM_NEWROUTE, AF_INET, "10.244.1.0/24"),
        (RTM_NEWNEIGH, AF_INET, "10.244.2.0"), (RTM_NEWNEIGH, AF_BRIDGE, "192.168.3.33"),
        (RTM_NEWROUTE, AF_INET, "10.244.2.0/24")]


def test_a_pass_removes_a_peers_route_before_its_fdb_and_neighbour(monkeypatch, want):
    """Peer c leaves the plan and d joins it: c's route goes first (no moment with a route
    whose gateway no longer resolves as planned), then its fdb remote and neighbour; then
    d's three entries, route last."""
    four = state.desired(planlib.parse(FOUR), "a", underlay_dev="eth0", underlay_mtu=1500)
    vt, fake = recording_vtep(monkeypatch, four, realised_from(want))
    vt.converge()
    assert sent_in_order(fake) == [
        (RTM_DELROUTE, AF_INET, "10.244.2.0/24"), (RTM_DELNEIGH, AF_BRIDGE, "192.168.3.33"),
        (RTM_DELNEIGH, AF_INET, "10.244.2.0"),
        (RTM_NEWNEIGH, AF_INET, "10.244.3.0"), (RTM_NEWNEIGH, AF_BRIDGE, "192.168.4.44"),
        (RTM_NEWROUTE, AF_INET, "10.244.3.0/24")]


def test_a_route_is_named_as_iproute2_prints_it():
    # `ip route show` of a connected route, of a static one and of a blackhole
    kernel_route = RouteEntry("192.0.2.0/24", None, False, 0, 0, 2, SCOPE_LINK, RTN_UNICAST,
                              prefsrc="192.0.2.1")
    assert kernel_route.text("eth0") == "192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.1"
    static = RouteEntry("192.0.2.0/24", "192.168.1.213", False, 20, 0, PROTO_STATIC, 0, 1)
    assert static.text("eth0") == "192.0.2.0/24 via 192.168.1.213 dev eth0 proto static metric 20"
    assert RouteEntry("192.0.2.0/24", None, False, 0, 0, PROTO_BOOT, 0, 6).text() == \
        "blackhole 192.0.2.0/24 proto boot"
    assert RouteEntry("192.0.2.0/24", None, False, 0, 0, PROTO_VTEP, 0, 1).text("vxlan0") == \
        "192.0.2.0/24 dev vxlan0 proto 118"


def test_a_route_conflict_is_exit_4_one_line_per_route():
    e = kernel.RouteConflict(["route a in the way", "route b in the way"])
    assert e.exit_code == 4 and e.problems == ["route a in the way", "route b in the way"]


# --- the device -------------------------------------------------------------------------------

def facts(**over):
    f = dict(kind="vxlan", index=9, vni=10, local="192.168.1.138", port=4789, link=2,
             learning=False, external=False, group=None, mtu=1450, up=True, df=0)
    return linkfacts.LinkFacts(**{**f, **over})


def test_device_differences(want):
    dev = want.device
    diffs = linkfacts.device_diffs
    assert diffs(dev, facts(mac=dev.mac), 2, {}) == ([], {})
    bad, _ = diffs(dev, facts(mac=dev.mac, vni=42, learning=True, port=8472, link=7,
                              local="10.0.0.1"), 2, {7: "eth1"})
    assert bad == ["vni: 10 vs 42", "local: 192.168.1.138 vs 10.0.0.1", "port: 4789 vs 8472",
                   "dev: eth0 vs eth1", "learning: off vs on"]
    assert diffs(dev, linkfacts.LinkFacts("bridge", 9), 2, {})[0] == ["kind: vxlan vs bridge"]
    # a TAP (the userspace path's device) is no vxlan device but takes MTU/MAC repairs
    bad, repairs = diffs(dev, linkfacts.LinkFacts("tun", 9, mtu=1400, mac=dev.mac), 2, {})
    assert bad == ["kind: vxlan vs tun"] and repairs == {"mtu": dev.mtu}
    bad, repairs = diffs(dev, facts(mac="02:00:00:00:00:09", mtu=1500, df=1), 2, {},
                         df="unset")
    assert bad == [] and repairs == {"mtu": 1450, "mac": dev.mac, "df": "unset"}


def test_run_and_down_ask_the_same_question_of_a_device(want):
    """`vtep down` removes only the plan's device, by the same comparison `run` makes."""
    dev = want.device
    same = facts(mac=dev.mac, mtu=9000, link=None)   # drifted, but the plan's device
    assert linkfacts.identity_diffs(10, 4789, "192.168.1.138", same) == []
    other = facts(vni=42, port=8472, local="192.168.1.139")
    assert linkfacts.identity_diffs(10, 4789, "192.168.1.138", other) == [
        "vni: 10 vs 42", "local: 192.168.1.138 vs 192.168.1.139", "port: 4789 vs 8472"]
    assert linkfacts.device_diffs(dev, other, 2, {})[0][:3] == \
        linkfacts.identity_diffs(10, 4789, "192.168.1.138", other)


def test_incompatible_message_reads_plan_vs_existing():
    e = Incompatible("vxlan0", ["vni: 10 vs 42"])
    assert str(e) == ("vxlan0 exists with incompatible settings: vni: 10 vs 42 "
                      "(plan vs existing; --replace recreates it)")
    assert e.exit_code == 5
    assert "not removing it" in str(linkfacts.NotOurs("vxlan0", ["vni: 10 vs 42"]))


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


# --- the netlink codec, against the kernel's numbers ------------------------------------------
# Every expected byte below is written from the kernel's headers (values spelt out here, never
# taken from vtep.netlink): <linux/netlink.h>, <linux/rtnetlink.h>, <linux/neighbour.h>,
# <linux/if_addr.h>. A wrong constant in the module (NUD_PERMANENT, RTNH_F_ONLINK, NDA_PORT's
# byte order...) makes these fail, where an encode-then-decode round trip would not.



def nla(typ, data):
    """One attribute: u16 length (header included, padding not), u16 type, data, padded to 4."""
    return struct.pack("=HH", 4 + len(data), typ) + data + bytes(-len(data) % 4)


def nlmsg(typ, flags, seq, body, pid=0):
    return struct.pack("=IHHII", 16 + len(body), typ, flags, seq, pid) + body


def ndm(family, ifindex, state, flags=0, ntype=0):
    # struct ndmsg: u8 family, u8 pad1, u16 pad2, s32 ifindex, u16 state, u8 flags, u8 type
    return struct.pack("=BBHiHBB", family, 0, 0, ifindex, state, flags, ntype)


def rtm(family, dst_len, table, proto, scope, rtype, flags=0, tos=0):
    # struct rtmsg: family dst_len src_len tos table protocol scope type (u8 each), u32 flags
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, tos, table, proto, scope, rtype, flags)


def ifa(family, prefixlen, index, flags=0x80, scope=0):
    # struct ifaddrmsg: u8 family, prefixlen, flags, scope; u32 index
    return struct.pack("=BBBBI", family, prefixlen, flags, scope, index)


def u32(v):
    return struct.pack("=I", v)


def ip4(text):
    return socket.inet_aton(text)


def split(data):
    """(type, flags, seq, body) of each message in a datagram (a parser of the test's own)."""
    out, off = [], 0
    while off < len(data):
        ln, typ, flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        assert 16 <= ln <= len(data) - off, f"bad nlmsg_len {ln} at {off} in {data.hex()}"
        out.append((typ, flags, seq, data[off + 16:off + ln]))
        off += (ln + 3) & ~3
    return out


def test_a_neighbour_set_is_the_kernels_rtm_newneigh_byte_for_byte():
    data = netlink.encode(Op("neigh", "set", "10.244.1.0", MAC), 7, 42)
    assert data == nlmsg(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         42, ndm(AF_INET, 7, NUD_PERMANENT)
                         + nla(NDA_DST, ip4("10.244.1.0")) + nla(NDA_LLADDR, bytes.fromhex(
                             "5a0c71865911")))
    data = netlink.encode(Op("neigh", "del", "10.244.1.0"), 7, 43)
    assert data == nlmsg(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, 43,
                         ndm(AF_INET, 7, 0) + nla(NDA_DST, ip4("10.244.1.0")))


def test_an_fdb_set_is_self_permanent_on_the_bridge_family_byte_for_byte():
    """`bridge fdb replace MAC dev vxlan0 dst IP self permanent`, as iproute2 sends it."""
    data = netlink.encode(Op("fdb", "set", MAC, "192.168.2.142"), 7, 44)
    assert data == nlmsg(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         44, ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF)
                         + nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
                         + nla(NDA_DST, ip4("192.168.2.142")))


def test_an_fdb_delete_repeats_the_remotes_overrides_in_the_kernels_encoding():
    """vxlan_fdb_delete matches a remote on dst, port, vni and ifindex: a delete without
    them misses a remote that has them. NDA_PORT is big-endian (vxlan_nla_get_addr:
    nla_get_be16), NDA_VNI, NDA_IFINDEX and NDA_SRC_VNI host-order u32."""
    stale = FdbEntry(MAC, "192.168.9.9", NUD_PERMANENT, port=8472, vni=11, rifindex=3,
                     src_vni=12)
    data = netlink.encode(Op("fdb", "del", stale.mac, stale.dst, fdb=stale), 7, 45)
    assert data == nlmsg(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, 45,
                         ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF)
                         + nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
                         + nla(NDA_DST, ip4("192.168.9.9"))
                         + nla(NDA_PORT, b"\x21\x18")         # 8472
                         + nla(NDA_VNI, u32(11)) + nla(NDA_IFINDEX, u32(3))
                         + nla(NDA_SRC_VNI, u32(12)))
    # and our decoder reads the kernel's bytes back into the same remote
    ((typ, _, _, body),) = split(data)
    assert netlink.decode_neigh(body, 0, len(body)) == (AF_BRIDGE, stale)


def test_a_route_add_is_onlink_tagged_and_exclusive_byte_for_byte():
    data = netlink.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 46)
    assert data == nlmsg(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                         46, rtm(AF_INET, 24, RT_TABLE_MAIN, PROTO_VTEP, SCOPE_UNIVERSE,
                                 RTN_UNICAST, RTNH_F_ONLINK)
                         + nla(RTA_DST, ip4("10.244.1.0")) + nla(RTA_OIF, u32(7))
                         + nla(RTA_GATEWAY, ip4("10.244.1.0")))


def test_a_route_delete_without_a_dump_matches_any_scope_protocol_and_type():
    """fib_table_delete skips a field given as 0 (protocol, type) and matches any scope
    with RT_SCOPE_NOWHERE (255), as `ip route del` sends it."""
    data = netlink.encode(Op("route", "del", "10.244.1.0/24", "10.244.1.0"), 7, 47)
    assert data == nlmsg(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, 47,
                         rtm(AF_INET, 24, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0)
                         + nla(RTA_DST, ip4("10.244.1.0")) + nla(RTA_TABLE, u32(RT_TABLE_MAIN))
                         + nla(RTA_OIF, u32(7)) + nla(RTA_GATEWAY, ip4("10.244.1.0")))


def kernel_neigh(typ, family, ifindex, state, *attrs, flags=0):
    data = nlmsg(typ, 0, 0, ndm(family, ifindex, state, flags, RTN_UNICAST) + b"".join(attrs))
    return data, 16, len(data)


CACHEINFO = nla(NDA_CACHEINFO, struct.pack("=4I", 100, 200, 300, 1))


def test_kernel_neighbour_messages_decode():
    """As the kernel dumps them (neigh_fill_info): NDA_DST, NDA_LLADDR, NDA_CACHEINFO,
    NDA_PROBES."""
    mac = nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
    msg = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_PERMANENT, nla(NDA_DST, ip4("10.244.1.0")),
                       mac, CACHEINFO, nla(NDA_PROBES, u32(0)))
    assert netlink.decode_neigh(*msg, 7) == (AF_INET, NeighEntry("10.244.1.0", MAC, 0x80))
    assert netlink.decode_neigh(*msg, 8) == (AF_INET, None)    # another device's
    stale = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_STALE, nla(NDA_DST, ip4("10.244.2.0")),
                         mac, CACHEINFO)
    assert netlink.decode_neigh(*stale)[1] == NeighEntry("10.244.2.0", MAC, NUD_STALE)
    failed = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_FAILED, nla(NDA_DST, ip4("10.244.3.0")),
                          CACHEINFO)
    assert netlink.decode_neigh(*failed)[1] == NeighEntry("10.244.3.0", None, NUD_FAILED)
    v6 = kernel_neigh(RTM_NEWNEIGH, AF_INET6, 7, NUD_REACHABLE,
                      nla(NDA_DST, socket.inet_pton(socket.AF_INET6, "fe80::1")), mac)
    assert netlink.decode_neigh(*v6) == (AF_INET6, None)   # the overlay is IPv4


def test_kernel_fdb_messages_decode_with_their_overrides():
    """vxlan_fdb_info: NDA_LLADDR, NDA_DST, then NDA_PORT (big-endian), NDA_VNI, NDA_IFINDEX,
    NDA_SRC_VNI only where they differ from the device's, NDA_CACHEINFO last."""
    msg = kernel_neigh(RTM_NEWNEIGH, AF_BRIDGE, 7, NUD_PERMANENT | NUD_NOARP,
                       nla(NDA_LLADDR, bytes.fromhex("5a0c71865911")),
                       nla(NDA_DST, ip4("192.168.2.142")), nla(NDA_PORT, b"\x21\x18"),
                       nla(NDA_VNI, u32(11)), nla(NDA_IFINDEX, u32(3)),
                       nla(NDA_MASTER, u32(5)), nla(NDA_SRC_VNI, u32(12)), CACHEINFO,
                       flags=NTF_SELF)
    assert netlink.decode_neigh(*msg, 7) == (AF_BRIDGE, FdbEntry(
        MAC, "192.168.2.142", 0xC0, port=8472, vni=11, rifindex=3, src_vni=12))
    plain = kernel_neigh(RTM_NEWNEIGH, AF_BRIDGE, 7, NUD_PERMANENT,
                         nla(NDA_LLADDR, bytes.fromhex("5a0c71865911")),
                         nla(NDA_DST, ip4("192.168.2.142")), CACHEINFO, flags=NTF_SELF)
    e = netlink.decode_neigh(*plain)[1]
    assert e == FdbEntry(MAC, "192.168.2.142", 0x80) and not e.overridden
    # the device's own address in its bridge fdb (no NDA_DST): not a remote
    own = kernel_neigh(RTM_NEWNEIGH, AF_BRIDGE, 7, NUD_PERMANENT,
                       nla(NDA_LLADDR, bytes.fromhex("06b33177abd9")), nla(NDA_MASTER, u32(5)),
                       flags=NTF_SELF)
    assert netlink.decode_neigh(*own) == (AF_BRIDGE, None)
    # the same remote encoded by pyroute2 (its own attribute table) decodes alike
    m = ndmsg()
    m["family"], m["ifindex"], m["state"], m["flags"] = AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF
    m["attrs"] = [("NDA_LLADDR", MAC), ("NDA_DST", "192.168.9.9"), ("NDA_PORT", 4790),
                  ("NDA_VNI", 99), ("NDA_SRC_VNI", 98)]
    m["header"]["type"] = RTM_NEWNEIGH
    m.encode()
    assert netlink.decode_neigh(m.data, 16, len(m.data))[1] == FdbEntry(
        MAC, "192.168.9.9", 0x80, port=4790, vni=99, src_vni=98)


def kernel_route(flags, *attrs, family=AF_INET, dst_len=24, table=RT_TABLE_MAIN,
                 proto=PROTO_VTEP, scope=SCOPE_UNIVERSE, rtype=RTN_UNICAST, tos=0):
    data = nlmsg(24, 0, 0, rtm(family, dst_len, table, proto, scope, rtype, flags, tos)
                 + b"".join(attrs))
    return data, 16, len(data)


def test_kernel_route_messages_decode():
    """As fib_dump_info writes them: RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_PREFSRC, then
    the nexthop (RTA_GATEWAY, RTA_OIF; RTNH_F_* in rtm_flags), or RTA_NH_ID, or
    RTA_MULTIPATH."""
    ours = kernel_route(RTNH_F_ONLINK, nla(RTA_TABLE, u32(254)), nla(RTA_DST, ip4("10.244.1.0")),
                        nla(RTA_GATEWAY, ip4("10.244.1.0")), nla(RTA_OIF, u32(7)))
    assert netlink.decode_route(*ours) == (7, 254, RouteEntry(
        "10.244.1.0/24", "10.244.1.0", True, 0, 0, PROTO_VTEP, SCOPE_UNIVERSE, RTN_UNICAST))
    # a nexthop gone dead on a down link: flagged, but not onlink
    dead = kernel_route(RTNH_F_DEAD | RTNH_F_LINKDOWN, nla(RTA_TABLE, u32(254)),
                        nla(RTA_DST, ip4("10.244.1.0")), nla(RTA_GATEWAY, ip4("10.244.1.0")),
                        nla(RTA_OIF, u32(7)))
    assert netlink.decode_route(*dead)[2].onlink is False
    connected = kernel_route(0, nla(RTA_TABLE, u32(254)), nla(RTA_DST, ip4("192.0.2.0")),
                             nla(RTA_PREFSRC, ip4("192.0.2.1")), nla(RTA_OIF, u32(3)),
                             proto=PROTO_KERNEL, scope=SCOPE_LINK)
    assert netlink.decode_route(*connected) == (3, 254, RouteEntry(
        "192.0.2.0/24", None, False, 0, 0, PROTO_KERNEL, SCOPE_LINK, RTN_UNICAST,
        prefsrc="192.0.2.1"))
    # a table above 255: rtm_table says RT_TABLE_COMPAT (252), RTA_TABLE the real one
    metric = kernel_route(RTNH_F_ONLINK, nla(RTA_TABLE, u32(1000)), nla(RTA_DST, ip4("10.9.0.0")),
                          nla(RTA_PRIORITY, u32(100)), nla(RTA_NH_ID, u32(77)),
                          nla(RTA_GATEWAY, ip4("10.244.1.0")), nla(RTA_OIF, u32(7)),
                          table=252, proto=PROTO_BOOT, tos=0x10)
    oif, table, r = netlink.decode_route(*metric)
    assert (oif, table, r.table, r.priority, r.nh_id, r.tos, r.proto) == (
        7, 1000, 1000, 100, 77, 0x10, PROTO_BOOT)
    # multipath: struct rtnexthop (u16 len, u8 flags, u8 hops, s32 ifindex) + its attributes
    hop = struct.pack("=HBBi", 16, 0, 0, 7) + nla(RTA_GATEWAY, ip4("10.244.1.0"))
    mp = kernel_route(0, nla(RTA_TABLE, u32(254)), nla(RTA_DST, ip4("10.8.0.0")),
                      nla(RTA_MULTIPATH, hop + hop), proto=PROTO_BOOT)
    oif, _, r = netlink.decode_route(*mp)
    assert oif is None and r.multipath and r.gateway is None
    v6 = kernel_route(0, nla(RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00::")),
                      family=AF_INET6, dst_len=64)
    assert netlink.decode_route(*v6) == (None, None, None)


def test_kernel_address_messages_decode_the_local_address():
    """inet_fill_ifaddr: IFA_ADDRESS is the peer on a point-to-point address, IFA_LOCAL
    the address itself (if_addr.h), whichever comes first."""
    label, cache = nla(IFA_LABEL, b"vxlan0\0"), nla(IFA_CACHEINFO, bytes(16))
    for attrs in ((nla(IFA_ADDRESS, ip4("10.0.0.2")), nla(IFA_LOCAL, ip4("10.0.0.1"))),
                  (nla(IFA_LOCAL, ip4("10.0.0.1")), nla(IFA_ADDRESS, ip4("10.0.0.2")))):
        data = nlmsg(RTM_NEWADDR, 0, 0, ifa(AF_INET, 32, 7) + b"".join(attrs) + label + cache)
        assert netlink.decode_addr(data, 16, len(data)) == netlink.AddrEntry("10.0.0.1", 32)
    only = nlmsg(RTM_NEWADDR, 0, 0, ifa(AF_INET, 24, 7) + nla(IFA_ADDRESS, ip4("10.0.0.3")))
    assert netlink.decode_addr(only, 16, len(only)) == netlink.AddrEntry("10.0.0.3", 24)
    v6 = nlmsg(RTM_NEWADDR, 0, 0, ifa(AF_INET6, 64, 7)
               + nla(IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fe80::1")))
    assert netlink.decode_addr(v6, 16, len(v6)) is None


# --- acknowledgements and dumps, through a socket that records what is sent --------------------

def err(seq, code, request=b"", tlvs=b"", flags=NLM_F_CAPPED, req_type=24, req_len=None):
    """An NLMSG_ERROR as netlink_ack builds it: -errno, the request's header (its payload
    too when not NLM_F_CAPPED), then the extended-ack TLVs (NLM_F_ACK_TLVS)."""
    ln = req_len if req_len is not None else 16 + len(request)
    echoed = struct.pack("=IHHII", ln, req_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + request
    return nlmsg(NLMSG_ERROR, flags | (NLM_F_ACK_TLVS if tlvs else 0), seq,
                 struct.pack("=i", -code) + echoed + tlvs)


def test_errors_are_parsed_with_their_extended_ack_text():
    text = nla(NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0") + \
        nla(NLMSGERR_ATTR_OFFS, u32(36))
    capped = err(1234, 22, tlvs=text)                   # NETLINK_CAP_ACK: header only
    assert netlink._error(capped, 16, len(capped)) == (22, 1234, "Nexthop has invalid gateway")
    # without NETLINK_CAP_ACK the whole request is echoed before the TLVs
    request = netlink.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 99)[16:]
    full = err(1235, 17, request=request, tlvs=text, flags=0)
    assert netlink._error(full, 16, len(full)) == (17, 1235, "Nexthop has invalid gateway")
    # no TLVs: the echoed request's payload is not taken for them
    plain = err(1236, 17, request=nla(NLMSGERR_ATTR_MSG, b"not a message\0"), flags=0)
    assert netlink._error(plain, 16, len(plain)) == (17, 1236, "")
    ok = err(1237, 0)
    assert netlink._error(ok, 16, len(ok)) == (0, 1237, "")


class FakeKernel:
    """Stands in for the rtnetlink socket: records every datagram sent, answers each from
    `answer(datagram)` (a list of datagrams), one per recv, as netlink does."""

    def __init__(self, answer):
        self.answer, self.sent, self.queue = answer, [], []

    def send(self, data):
        data = bytes(data)
        self.sent.append(data)
        self.queue += self.answer(data)
        return len(data)

    def recv_into(self, buf):
        d = self.queue.pop(0)
        buf[:len(d)] = d
        return len(d)

    def close(self):
        pass


def acks(refuse=None):
    """An answer: one ack per request; refuse: {seq: (errno, text)} refused instead."""
    refuse = refuse or {}

    def answer(data):
        out = []
        for typ, _f, seq, body in split(data):
            code, text = refuse.get(seq, (0, ""))
            tlvs = nla(NLMSGERR_ATTR_MSG, text.encode() + b"\0") if text else b""
            out.append(err(seq, code, tlvs=tlvs, req_type=typ, req_len=16 + len(body)))
        out.insert(0, err(7, 16, tlvs=nla(NLMSGERR_ATTR_MSG, b"stray\0")))  # not a request of ours
        return out
    return answer


def rtnl_on(fake):
    rt = netlink.Rtnl()
    rt.sock.close()
    rt.sock = fake
    return rt


def test_apply_maps_each_refusal_to_its_entry():
    ops = [Op("neigh", "set", "10.244.1.0", MAC), Op("route", "set", "10.244.1.0/24", "10.244.1.0"),
           Op("route", "set", "10.244.2.0/24", "10.244.2.0")]
    rt = rtnl_on(FakeKernel(lambda d: []))
    first = rt.seq + 1
    fake = FakeKernel(acks({first + 1: (17, "")}))
    rt.sock = fake
    assert rt.apply(ops, 7) == [(ops[1], 17, "")]
    # one sendmsg for the batch, in order, each with its own sequence number
    (sent,) = fake.sent
    assert [(typ, seq) for typ, _f, seq, _b in split(sent)] == [
        (RTM_NEWNEIGH, first), (RTM_NEWROUTE, first + 1), (RTM_NEWROUTE, first + 2)]
    fake = FakeKernel(acks({first + 5: (22, "Nexthop has invalid gateway")}))
    rt.sock = fake
    assert rt.apply(ops, 7) == [(ops[2], 22, "Nexthop has invalid gateway")]


def dump_reply(seq, *entries, flags=NLM_F_MULTI):
    """A dump's answer: one datagram of entries, then NLMSG_DONE (payload: error 0)."""
    body = b"".join(nlmsg(RTM_NEWNEIGH, flags, seq, e) for e in entries)
    return [body, nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", 0))]


def neigh_body(ip, state=NUD_PERMANENT):
    return ndm(AF_INET, 7, state) + nla(NDA_DST, ip4(ip)) + nla(NDA_LLADDR, bytes.fromhex(
        "5a0c71865911"))


def test_a_dump_is_a_filtered_request_and_an_interrupted_one_is_redone():
    """NLM_F_DUMP_INTR (0x10): the table changed while the kernel walked it; what came is
    not a consistent picture, so the dump is asked for again."""
    rounds = []

    def answer(data):
        ((typ, flags, seq, body),) = split(data)
        rounds.append((typ, flags, body))
        if len(rounds) == 1:   # half a table, flagged as interrupted
            return dump_reply(seq, neigh_body("10.244.1.0"), flags=NLM_F_MULTI | NLM_F_DUMP_INTR)
        return dump_reply(seq, neigh_body("10.244.1.0"), neigh_body("10.244.2.0"))
    rt = rtnl_on(FakeKernel(answer))
    got = rt.neighbours(7)
    assert sorted(got) == ["10.244.1.0", "10.244.2.0"]
    assert len(rounds) == 2
    # RTM_GETNEIGH, a dump, AF_INET, filtered by the kernel to our device (NDA_IFINDEX,
    # honoured with NETLINK_GET_STRICT_CHK)
    typ, flags, body = rounds[0]
    assert (typ, flags) == (RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP)
    assert body[0] == AF_INET and body[12:] == nla(NDA_IFINDEX, u32(7))


def test_a_dump_interrupted_every_time_is_an_error():
    def answer(data):
        ((_t, _f, seq, _b),) = split(data)
        return dump_reply(seq, neigh_body("10.244.1.0"), flags=NLM_F_MULTI | NLM_F_DUMP_INTR)
    fake = FakeKernel(answer)
    with pytest.raises(netlink.NetlinkRefused, match="the table kept changing during the dump"):
        rtnl_on(fake).neighbours(7)
    assert len(fake.sent) == 5


def test_fdb_and_route_dumps_ask_the_kernel_for_our_device_only():
    seen = []

    def answer(data):
        ((typ, flags, seq, body),) = split(data)
        seen.append((typ, flags, body))
        return [nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", 0))]
    rt = rtnl_on(FakeKernel(answer))
    assert rt.fdb(7) == () and rt.routes(7) == {}
    (t1, f1, fdb), (t2, f2, route) = seen
    assert (t1, f1, fdb[0]) == (RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, AF_BRIDGE)
    assert fdb[12:] == nla(NDA_IFINDEX, u32(7))
    assert (t2, f2) == (RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP)
    assert route[:12] == rtm(AF_INET, 0, RT_TABLE_MAIN, 0, 0, 0)
    assert route[12:] == nla(RTA_OIF, u32(7)) + nla(RTA_TABLE, u32(RT_TABLE_MAIN))


def test_a_dump_the_kernel_refuses_names_the_reason():
    def answer(data):
        ((_t, _f, seq, _b),) = split(data)
        return [nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", -95))]   # EOPNOTSUPP
    with pytest.raises(netlink.NetlinkRefused, match="dumping neighbours: Operation not "
                                                     "supported"):
        rtnl_on(FakeKernel(answer)).neighbours(7)

    def refused(data):
        ((typ, _f, seq, body),) = split(data)
        return [err(seq, 22, tlvs=nla(NLMSGERR_ATTR_MSG, b"Invalid header for neighbor dump\0"),
                    req_type=typ, req_len=16 + len(body))]
    with pytest.raises(netlink.NetlinkRefused, match="dumping the fdb: Invalid header for "
                                                     "neighbor dump"):
        rtnl_on(FakeKernel(refused)).fdb(7)


# --- notifications ----------------------------------------------------------------------------

def events_on(*datagrams):
    """An Events whose socket holds these kernel notifications (a datagram socketpair:
    one recv, one notification datagram, as netlink)."""
    ev = netlink.Events()
    ev.sock.close()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for d in datagrams:
        b.send(d)
    b.close()
    a.setblocking(False)
    ev.sock = a
    return ev


def test_notifications_about_our_device_are_drift_and_others_are_not():
    ifinfo = struct.pack("=BxHiII", 0, 1, 7, 0x1043, 0)   # ifinfomsg: index at offset 4
    mac = nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
    ev = events_on(
        nlmsg(RTM_NEWLINK, 0, 0, ifinfo),
        nlmsg(RTM_DELNEIGH, 0, 0, ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF) + mac
              + nla(NDA_DST, ip4("192.168.2.142"))),
        nlmsg(RTM_DELADDR, 0, 0, ifa(AF_INET, 32, 7) + nla(IFA_LOCAL, ip4("10.244.0.0"))),
        # the local table's route for our address (table 255): the kernel's, not drift
        kernel_route(0, nla(RTA_TABLE, u32(255)), nla(RTA_DST, ip4("10.244.0.0")),
                     nla(RTA_OIF, u32(7)), dst_len=32, table=255, proto=PROTO_KERNEL,
                     scope=254, rtype=2)[0],
        # the underlay's ARP churn (ifindex 3 is watched for its link, not its neighbours)
        nlmsg(RTM_NEWNEIGH, 0, 0, ndm(AF_INET, 3, NUD_REACHABLE) + nla(NDA_DST, ip4(
            "192.168.1.213")) + mac))
    try:
        assert ev.drain({7, 3}, None, {7}) == (True, [
            "link changed", f"fdb {MAC} dst 192.168.2.142 deleted", "address 10.244.0.0/32 deleted"])
    finally:
        ev.close()
    ev = events_on(kernel_route(0, nla(RTA_TABLE, u32(255)), nla(RTA_DST, ip4("10.244.0.0")),
                                nla(RTA_OIF, u32(7)), dst_len=32, table=255)[0],
                   nlmsg(RTM_NEWNEIGH, 0, 0, ndm(AF_INET, 3, NUD_STALE)
                         + nla(NDA_DST, ip4("192.168.1.213")) + mac))
    try:
        assert ev.drain({7, 3}, None, {7}) == (False, [])
    finally:
        ev.close()


def test_notifications_name_the_drift_and_skip_echoes():
    add = netlink.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 1)
    ((typ, _f, _s, _b),) = split(add)
    assert netlink._event(add, typ, 16, len(add), {7}, None) == (True, "route 10.244.1.0/24 changed")
    # our own change coming back: nothing to repair, so no pass
    assert netlink._event(add, typ, 16, len(add), {7}, lambda e: True) == (False, None)
    assert netlink._event(add, typ, 16, len(add), {8}, None) == (False, None)
    gone = netlink.encode(Op("neigh", "del", "10.244.1.0"), 7, 2)
    assert netlink._event(gone, RTM_DELNEIGH, 16, len(gone), {7}, lambda e: True) == (
        True, "neigh 10.244.1.0 deleted")


# --- host helpers -----------------------------------------------------------------------------

def test_udp_sockets_finds_a_bound_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert f"127.0.0.1:{port}" in host.udp_sockets(port, False)
    finally:
        s.close()
    assert f"127.0.0.1:{port}" not in host.udp_sockets(port, False)


def test_status_file_path_write_and_remove(tmp_path):
    # (who owns the device is no longer read from here: see vtep.owner and test_owner.py)
    st = status.StatusFile(str(tmp_path), "network-1", "vxlan0")
    assert st.path == str(tmp_path / "vxlan0.network-1.json")
    st.write({"pid": os.getpid(), "netns": status.netns_inode()})
    assert st.read() == {"pid": os.getpid(), "netns": status.netns_inode()}
    st.remove()
    st.remove()                             # idempotent
    assert not os.path.exists(st.path)


def test_without_net_admin_nothing_is_touched(monkeypatch, plan):
    """The capability check comes before anything that reaches the host: the device lock,
    a netlink socket, the status file, the sysctls."""
    touched = []

    def recorder(name):
        def call(*a, **kw):
            touched.append(name)
            return mock.MagicMock()
        return call
    monkeypatch.setattr(host, "has_net_admin", lambda: False)
    monkeypatch.setattr(commands, "Links", recorder("Links"))
    monkeypatch.setattr(commands.netlink, "Rtnl", recorder("Rtnl"))
    monkeypatch.setattr(commands.netlink, "Events", recorder("Events"))
    monkeypatch.setattr(commands.owner, "Claim", recorder("owner.Claim"))
    monkeypatch.setattr(commands.owner, "refuse_if_managed", recorder("owner.refuse_if_managed"))
    monkeypatch.setattr(commands.vxlanlink, "IPRoute", recorder("IPRoute"))
    monkeypatch.setattr(host, "enable_forwarding", recorder("enable_forwarding"))
    monkeypatch.setattr(commands.daemon, "StatusFile", recorder("StatusFile"))
    monkeypatch.setattr(commands.vxlanlink, "StatusFile", recorder("StatusFile"))
    monkeypatch.setattr(commands.daemon, "serve", recorder("daemon.serve"))
    monkeypatch.setattr(commands, "_load", lambda args: plan)
    args = Namespace(config="plan.toml", node="a", device="vxlan0", once=True, keep=False,
                     replace=False, df=None, interval=10.0, state_dir="/nonexistent",
                     mtu=None, accept_any_source=False)
    for mode in ("kernel", "userspace"):
        for once in (True, False):
            args.once, args.mode = once, mode
            with pytest.raises(PermissionDenied,
                               match=f"vtep run --{mode} needs root or CAP_NET_ADMIN"):
                commands.run(args)
    with pytest.raises(PermissionDenied, match="vtep down needs root"):
        commands.down(args)
    assert touched == []
