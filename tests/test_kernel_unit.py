"""The kernel data path's pure parts, without root: the entry diff, the device
comparison, the MTU rule, the order a pass sends its changes in (through the
reconciler), port and status-file helpers. (The netlink codec, Rtnl and Events:
tests/test_netlink_unit.py.)"""
import dataclasses
import os
import socket
import struct
from argparse import Namespace
from unittest import mock

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg   # independent decoders of what we encode
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from vtep import commands, host, kernel, linkfacts, nlmsg, plan as planlib, state, status
from vtep.config import RunConfig
from vtep.errors import Incompatible, PermissionDenied, PlanError
from vtep.reconcile import Reconciler
from vtep.nlmsg import FdbEntry, NeighEntry, Op, Realised, RouteEntry

# literal kernel values (never the module's constants) and a recording rtnetlink socket
from nlkernel import (AF_BRIDGE, AF_INET, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
                      NUD_NOARP, NUD_PERMANENT, NUD_REACHABLE, PROTO_BOOT, PROTO_STATIC,
                      PROTO_VTEP, RT_TABLE_MAIN, RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWNEIGH,
                      RTM_NEWROUTE, RTN_UNICAST, RTNH_F_ONLINK, SCOPE_LINK, SCOPE_UNIVERSE,
                      FakeKernel, acks, rtnl_on, split)

PLAN = {
    "cluster": {"vni": 10, "port": 4789, "overlay": "10.244.0.0/16"},
    "nodes": [
        {"name": "a", "underlay_ip": "192.168.1.138", "subnet": "10.244.0.0/24"},
        {"name": "b", "underlay_ip": "192.168.2.142", "subnet": "10.244.1.0/24"},
        {"name": "c", "underlay_ip": "192.168.3.33", "subnet": "10.244.2.0/24"},
    ],
}
PERM = NUD_PERMANENT
ZEROS = "00:00:00:00:00:00"   # the vxlan driver's default (flood) destination MAC


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
        tuple(FdbEntry(p.fdb.mac, p.fdb.dst, PERM | 0x40) for p in want.peers)
        + tuple(FdbEntry(ZEROS, p.fdb.dst, PERM | 0x40) for p in want.peers),
        {(p.route.dst, 0, 0): RouteEntry(p.route.dst, p.route.via, True, 0, 0, PROTO_VTEP, 0, 1)
         for p in want.peers})


EMPTY = Realised({}, (), {})


# --- diff -------------------------------------------------------------------------------------

def test_from_nothing_each_peer_gets_neigh_fdb_route_in_that_order(want):
    changes = kernel.diff(want, EMPTY)
    kinds = [(c.ops[0].kind, c.ops[0].action) for c in changes]
    assert kinds == [("neigh", "set"), ("fdb", "set"), ("fdb", "append"), ("route", "set")] * 2
    b = want.peers[0]
    assert changes[0].text == f"added neigh 10.244.1.0 lladdr {b.neighbour.mac} on vxlan0 (peer b)"
    assert changes[1].text == f"added fdb {b.fdb.mac} dst 192.168.2.142 on vxlan0 (peer b)"
    assert changes[2].text == "added flood entry dst 192.168.2.142 on vxlan0 (peer b)"
    assert changes[2].ops == (Op("fdb", "append", ZEROS, "192.168.2.142"),)
    assert changes[3].text == "added route 10.244.1.0/24 via 10.244.1.0 onlink on vxlan0 (peer b)"
    assert changes[3].ops == (Op("route", "set", "10.244.1.0/24", "10.244.1.0"),)


def test_converged_state_needs_nothing(want):
    assert kernel.diff(want, realised_from(want)) == []


def test_a_peer_gone_from_the_plan_loses_all_three_entries_first(plan, want):
    have = realised_from(want)
    fewer = state.desired(planlib.parse({**PLAN, "nodes": PLAN["nodes"][:2]}), "a",
                          underlay_dev="eth0", underlay_mtu=1500)
    changes = kernel.diff(fewer, have)
    c = want.peers[1]
    assert [(x.ops[0].kind, x.ops[0].action, x.ops[0].key) for x in changes] == [
        ("route", "del", "10.244.2.0/24"), ("fdb", "del", c.fdb.mac), ("fdb", "del", ZEROS),
        ("neigh", "del", "10.244.2.0")]
    assert changes[2].ops[0].value == "192.168.3.33"      # only that peer's flood entry
    assert changes[2].text == "removed flood entry dst 192.168.3.33 from vxlan0 (not in the plan)"
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


def test_a_flood_entry_is_kept_per_peer_and_made_permanent_when_it_is_not(want):
    b, c = want.peers
    have = realised_from(want)
    fdb = [e for e in have.fdb if not (e.mac == ZEROS and e.dst == c.fdb.dst)]
    fdb.append(FdbEntry(ZEROS, "192.168.9.9", PERM))          # a peer that left
    fdb = [FdbEntry(ZEROS, b.fdb.dst, 0x02) if e.mac == ZEROS and e.dst == b.fdb.dst else e
           for e in fdb]                                       # b's: not permanent
    changes = kernel.diff(want, Realised(have.neighbours, tuple(fdb), have.routes))
    assert [c.text for c in changes] == [
        "removed flood entry dst 192.168.9.9 from vxlan0 (not in the plan)",
        "changed flood entry dst 192.168.2.142 on vxlan0 (made permanent with the device's "
        "port and VNI) (peer b)",
        "added flood entry dst 192.168.3.33 on vxlan0 (peer c)"]
    assert changes[1].ops == (Op("fdb", "del", ZEROS, b.fdb.dst, fdb=FdbEntry(ZEROS, b.fdb.dst,
                                                                              0x02)),
                              Op("fdb", "append", ZEROS, b.fdb.dst))
    # the unicast entries beside them are left alone: each MAC is its own entry
    assert all(op.key == ZEROS for ch in changes for op in ch.ops)


def test_without_a_kernel_fdb_no_flood_entry_is_made(want):
    """The userspace path floods in the process: its TAP has no fdb to program."""
    assert all(op.kind != "fdb" for ch in kernel.diff(want, EMPTY, fdb=False) for op in ch.ops)


def test_what_is_not_ours_to_remove(want):
    have = realised_from(want)
    # a kernel route (from an address) and a non-permanent neighbour are the kernel's
    have.routes[("10.9.0.0/24", 0, 0)] = RouteEntry("10.9.0.0/24", None, False, 0, 0,
                                                    nlmsg.RTPROT_KERNEL, 253, 1)
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
    m = rtmsg(nlmsg.encode(op, 7, 50))
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
    m = rtmsg(nlmsg.encode(Op("route", "del", r.dst, r.gateway, route=r), 7, 51))
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
    data = nlmsg.encode(Op("route", "del", r.dst, r.gateway, route=r), 7, 52)
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
    m = rtmsg(nlmsg.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 53))
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
    routes = [nlmsg.encode(op, 7, i) for i, op in enumerate(ops) if op.kind == "route"]
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


def test_the_flood_entries_we_append_are_an_echo_of_ours(want):
    planned = echo_of(want)
    for p in want.peers:
        assert planned(FdbEntry(ZEROS, p.fdb.dst, PERM | 0x40))
    assert not planned(FdbEntry(ZEROS, "192.168.9.9", PERM))         # no peer there
    assert not planned(FdbEntry(ZEROS, want.peers[0].fdb.dst, 0x02))  # not permanent


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
    data = nlmsg.encode(Op("route", "set", dst, via), 7, 1)
    assert planned(nlmsg.decode_route(data, 16, len(data))[2])
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
            assert kernel.diff(want, Realised({}, (), {(dst, 0, 0): e}))[3].ops[0] == Op(
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
    assert planned(nlmsg.AddrEntry(want.device.address, 32))
    assert not planned(nlmsg.AddrEntry(want.device.address, 24))


# --- the order changes reach the kernel in --------------------------------------------------

def recording_vtep(monkeypatch, want, have):
    """A reconciler whose device step is skipped and whose rtnetlink socket records what a
    pass sends (and acknowledges it); nothing on the host is touched."""
    rt = rtnl_on(FakeKernel(acks()))
    monkeypatch.setattr(rt, "read", lambda idx, families: have)
    monkeypatch.setattr(host, "enable_forwarding", lambda df=None: [])
    monkeypatch.setattr(host, "underlay_facts", lambda node: host.Underlay("eth0", 1500, 2))
    rec = reconciler(planlib.parse(PLAN, "plan.toml"), rt)
    rec.desired = lambda plan, node, under: want
    return rec, rt.sock


def sent_in_order(fake):
    """(message type, family, what) of every request the pass sent, decoded by pyroute2.
    What: a neighbour's IP; an fdb entry's "MAC dst", and "append" when it is appended
    (NLM_F_APPEND: the all-zeros flood list); a route's destination."""
    out = []
    for datagram in fake.sent:
        for typ, flags, _s, body in split(datagram):
            raw = struct.pack("=IHHII", 16 + len(body), typ, 0, 0, 0) + body
            if typ in (RTM_NEWNEIGH, RTM_DELNEIGH):
                m = ndmsg(raw)
                m.decode()
                what = m.get_attr("NDA_DST")
                if m["family"] == AF_BRIDGE:
                    what = f"{m.get_attr('NDA_LLADDR')} {what}"
                    if flags & NLM_F_APPEND:
                        what += " append"
                out.append((typ, m["family"], what))
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
    b, c = want.peers
    assert sent_in_order(fake) == [
        (RTM_NEWNEIGH, AF_INET, "10.244.1.0"),
        (RTM_NEWNEIGH, AF_BRIDGE, f"{b.fdb.mac} 192.168.2.142"),
        (RTM_NEWNEIGH, AF_BRIDGE, f"{ZEROS} 192.168.2.142 append"),
        (RTM_NEWROUTE, AF_INET, "10.244.1.0/24"),
        (RTM_NEWNEIGH, AF_INET, "10.244.2.0"),
        (RTM_NEWNEIGH, AF_BRIDGE, f"{c.fdb.mac} 192.168.3.33"),
        (RTM_NEWNEIGH, AF_BRIDGE, f"{ZEROS} 192.168.3.33 append"),
        (RTM_NEWROUTE, AF_INET, "10.244.2.0/24")]


def test_a_pass_removes_a_peers_route_before_its_fdb_and_neighbour(monkeypatch, want):
    """Peer c leaves the plan and d joins it: c's route goes first (no moment with a route
    whose gateway no longer resolves as planned), then its fdb remote and neighbour; then
    d's three entries, route last."""
    four = state.desired(planlib.parse(FOUR), "a", underlay_dev="eth0", underlay_mtu=1500)
    vt, fake = recording_vtep(monkeypatch, four, realised_from(want))
    vt.converge()
    c, d = want.peers[1], four.peers[1]
    assert sent_in_order(fake) == [
        (RTM_DELROUTE, AF_INET, "10.244.2.0/24"),
        (RTM_DELNEIGH, AF_BRIDGE, f"{c.fdb.mac} 192.168.3.33"),
        (RTM_DELNEIGH, AF_BRIDGE, f"{ZEROS} 192.168.3.33"),
        (RTM_DELNEIGH, AF_INET, "10.244.2.0"),
        (RTM_NEWNEIGH, AF_INET, "10.244.3.0"),
        (RTM_NEWNEIGH, AF_BRIDGE, f"{d.fdb.mac} 192.168.4.44"),
        (RTM_NEWNEIGH, AF_BRIDGE, f"{ZEROS} 192.168.4.44 append"),
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


class _Attrs:
    """A netlink message as pyroute2 presents it: get_attr(name), and msg[field]."""
    def __init__(self, attrs, **fields):
        self.attrs, self.fields = attrs, fields

    def __getitem__(self, field):
        return self.fields[field]

    def get_attr(self, name):
        return self.attrs.get(name)


def _vxlan_msg(**data):
    info = _Attrs({"IFLA_INFO_KIND": "vxlan", "IFLA_INFO_DATA": _Attrs(data)})
    return _Attrs({"IFLA_LINKINFO": info, "IFLA_IFNAME": "vxlan0"}, index=9, flags=1)


@pytest.mark.parametrize("data, csum", [
    ({"IFLA_VXLAN_LOCAL": "192.168.1.138", "IFLA_VXLAN_UDP_CSUM": 1}, True),
    ({"IFLA_VXLAN_LOCAL": "192.168.1.138", "IFLA_VXLAN_UDP_CSUM": 0}, False),
    # the kernel reports both families' flags; over IPv6 the one that applies is
    # "zero checksum on transmit", inverted
    ({"IFLA_VXLAN_LOCAL6": "fd00:1::8a", "IFLA_VXLAN_UDP_CSUM": 0,
      "IFLA_VXLAN_UDP_ZERO_CSUM6_TX": 0}, True),
    ({"IFLA_VXLAN_LOCAL6": "fd00:1::8a", "IFLA_VXLAN_UDP_CSUM": 1,
      "IFLA_VXLAN_UDP_ZERO_CSUM6_TX": 1}, False),
    ({"IFLA_VXLAN_LOCAL": "192.168.1.138"}, None),     # not reported: nothing to compare
])
def test_the_devices_udp_checksum_is_read_for_its_address_family(data, csum):
    assert linkfacts.facts(_vxlan_msg(**data)).udp_csum is csum


def test_the_udp_checksum_setting_is_part_of_the_device(want):
    """The kernel cannot change udpcsum on a live device (changelink: EOPNOTSUPP), so a
    device that differs is incompatible, named as flannel names a field."""
    dev = want.device
    assert dev.udp_checksum is True                       # the plan's default
    diffs = linkfacts.device_diffs
    assert diffs(dev, facts(mac=dev.mac, udp_csum=True), 2, {}) == ([], {})
    assert diffs(dev, facts(mac=dev.mac, udp_csum=False), 2, {})[0] == [
        "udp_checksum: true vs false"]
    off = dataclasses.replace(dev, udp_checksum=False)
    assert diffs(off, facts(mac=dev.mac, udp_csum=True), 2, {})[0] == [
        "udp_checksum: false vs true"]


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
    import vtep.etcd.join
    monkeypatch.setattr(vtep.etcd.join, "join", recorder("etcd join"))
    args = Namespace(config="plan.toml", node="a", device="vxlan0", once=True, keep=False,
                     replace=False, df=None, interval=10.0, state_dir="/nonexistent",
                     mtu=None, accept_any_source=False, etcd=None, etcd_prefix="/vtep",
                     etcd_cacert=None, etcd_cert=None, etcd_key=None, name=None,
                     underlay_ip=None, ttl=20, offload=True)
    for mode in ("kernel", "userspace"):
        for once in (True, False):
            args.once, args.mode = once, mode
            with pytest.raises(PermissionDenied,
                               match=f"vtep run --{mode} needs root or CAP_NET_ADMIN"):
                commands.run(args)
    with pytest.raises(PermissionDenied, match="vtep down needs root"):
        commands.down(args)
    # with --etcd, nor is the node registered in the cluster
    args.config, args.etcd, args.once = None, "http://127.0.0.1:1", False
    with pytest.raises(PermissionDenied, match="vtep run --userspace needs root"):
        commands.run(args)
    assert touched == []


# --- a dual-stack overlay: a neighbour and a route per family, one fdb entry ---------------------

DUAL = {"cluster": {**PLAN["cluster"], "overlay6": "fd00:244::/48"},
        "nodes": [{**n, "subnet6": f"fd00:244:0:{i}::/64"} for i, n in enumerate(PLAN["nodes"])]}


def dual_want():
    return state.desired(planlib.parse(DUAL, "plan.toml"), "a", underlay_dev="eth0",
                         underlay_mtu=1500)


def test_a_dual_stack_peer_gets_both_neighbours_one_fdb_entry_and_both_routes():
    changes = kernel.diff(dual_want(), EMPTY)
    texts = [c.text for c in changes[:6]]
    b = dual_want().peers[0]
    assert texts == [
        f"added neigh 10.244.1.0 lladdr {b.fdb.mac} on vxlan0 (peer b)",
        f"added neigh fd00:244:0:1:: lladdr {b.fdb.mac} on vxlan0 (peer b)",
        f"added fdb {b.fdb.mac} dst 192.168.2.142 on vxlan0 (peer b)",
        "added flood entry dst 192.168.2.142 on vxlan0 (peer b)",
        "added route 10.244.1.0/24 via 10.244.1.0 onlink on vxlan0 (peer b)",
        "added route fd00:244:0:1::/64 via fd00:244:0:1:: onlink on vxlan0 (peer b)"]
    assert len(changes) == 12


def test_an_ipv6_route_as_we_made_it_has_metric_1024_and_is_left_alone():
    """The kernel gives an IPv6 route added without a metric 1024 (IP6_RT_PRIO_USER): that
    is the planned route, not a stale one beside a missing one."""
    want = dual_want()
    have = kernel.diff(want, EMPTY)
    neigh = {op.key: NeighEntry(op.key, op.value, PERM) for c in have for op in c.ops
             if op.kind == "neigh"}
    fdb = tuple(FdbEntry(op.key, op.value, PERM) for c in have for op in c.ops
                if op.kind == "fdb")
    routes = {}
    for c in have:
        for op in c.ops:
            if op.kind == "route":
                metric = 1024 if ":" in op.key else 0
                routes[(op.key, 0, metric)] = RouteEntry(op.key, op.value, True, metric, 0,
                                                         PROTO_VTEP, 0, 1)
    assert kernel.diff(want, Realised(neigh, fdb, routes)) == []
    # an IPv6 route with metric 0 is not ours (a kernel never makes one: IPv6 treats 0 as
    # 1024); one with our key but a wrong gateway is changed, by delete then create
    k = ("fd00:244:0:1::/64", 0, 1024)
    routes[k] = dataclasses.replace(routes[k], gateway="fd00:244:0:1::99")
    (c,) = kernel.diff(want, Realised(neigh, fdb, routes))
    assert c.text == ("changed route fd00:244:0:1::/64 via fd00:244:0:1:: onlink on vxlan0 "
                      "(was via fd00:244:0:1::99 onlink) (peer b)")
    assert [(op.action, op.key) for op in c.ops] == [("del", "fd00:244:0:1::/64"),
                                                     ("set", "fd00:244:0:1::/64")]


def test_an_ipv6_neighbour_left_by_a_peer_that_left_is_removed():
    want = dual_want()
    stale = NeighEntry("fd00:244:0:9::", "aa:bb:cc:dd:ee:ff", PERM)
    changes = kernel.diff(want, Realised({stale.ip: stale}, (), {}))
    assert changes[0].text == ("removed neigh fd00:244:0:9:: lladdr aa:bb:cc:dd:ee:ff from "
                               "vxlan0 (not in the plan)")
