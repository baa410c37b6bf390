"""The kernel's per-peer entries: desired against realised, as pure data and functions.

diff() turns a node's desired state (vtep.state) and the entries the kernel
has on its device (nlmsg.Realised, read by vtep.netlink) into Changes: each
one log line and the netlink operations that make it so, in the order they
must reach the kernel. Nothing here touches the host: the reconciler
(vtep.reconcile) reads, calls diff() and applies; the tests read like
sentences about entries.

Every permanent neighbour entry, fdb remote and main-table route on our device
that the plan does not name is stale and removed, so a peer that leaves the
plan loses all three entries. A route on any other device is never ours.

Both families alike: a peer has a neighbour entry and a route per overlay
family (IPv4 and/or IPv6) and one fdb entry. The one difference is the key of a
planned route: the kernel gives an IPv6 route added without a metric the metric
1024 (nlmsg.planned_metric), an IPv4 one 0.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from . import inet, nlmsg, state
from .errors import HostMismatch, PlanError
from .nlmsg import NUD_PERMANENT, RTN_UNICAST, RTPROT_KERNEL, RTPROT_VTEP, Op
from .state import FLOOD_MAC

log = logging.getLogger("vtep")


class RouteConflict(HostMismatch):
    """Routes of the plan that a route we did not make is in the way of; everything else
    was applied. One line per route (exit 4: the host does not match the plan, and no
    flag of ours changes that: the operator removes the other route or changes the plan)."""

    def __init__(self, lines: list[str]):
        self.problems = list(lines)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Change:
    text: str                 # one log line
    ops: tuple[Op, ...]


def route_as_planned(r: nlmsg.RouteEntry, via: str) -> bool:
    """Is this realised route exactly the one we create for a peer (encode_route): the
    plan's gateway, onlink, unicast, scope universe, tagged ours, no nexthop object, tos
    0, the family's default metric (IPv4 0, IPv6 1024), main table? diff() and the
    echo filter both ask this: a route the filter
    took for ours while diff() would change it (one through a nexthop object, one that
    lost its onlink flag, one with a tos of its own) would wait for the periodic resync."""
    return (r.gateway == via and r.onlink and r.type == RTN_UNICAST
            and r.scope == nlmsg.RT_SCOPE_UNIVERSE and r.proto == RTPROT_VTEP
            and not r.nh_id and not r.multipath and r.tos == 0
            and r.priority == nlmsg.planned_metric(r.dst)
            and r.table == nlmsg.RT_TABLE_MAIN)


def diff(want: state.NodeState, have: nlmsg.Realised, fdb: bool = True) -> list[Change]:
    """The changes that turn `have` into `want`, in apply order: stale entries first
    (routes, fdb, neighbours), then per peer its neighbour, fdb entry and route, so
    that a route never precedes the entries that resolve its gateway. With
    fdb=False (the userspace path, whose fdb lives in the process) kernel fdb
    entries are neither read nor written."""
    dev = want.device.name
    removals: list[Change] = []
    per_peer: list[Change] = []
    want_ips = {n.ip for p in want.peers for n in p.neighbours}
    want_macs = {p.fdb.mac: p.fdb.dst for p in want.peers}
    want_flood = {p.fdb.dst for p in want.peers}
    want_routes = {route_key(r.dst) for p in want.peers for r in p.routes}

    for key, r in have.routes.items():
        if r.proto == RTPROT_KERNEL or key in want_routes:
            continue   # kernel routes belong to addresses; ours are checked per peer
        # the delete repeats the route as the dump gave it (scope, proto, type, ...): the
        # kernel matches on those, and a route added by hand (`ip route add X dev vxlan0`,
        # scope link) is otherwise never found (defect: an ESRCH retried forever)
        removals.append(Change(f"removed route {_route_text(r)} from {dev} (not in the plan)",
                               (Op("route", "del", r.dst, r.gateway, route=r),)))
    remotes: dict[str, list] = {}
    for e in have.fdb if fdb else ():
        remotes.setdefault(e.mac, []).append(e)
    for mac, es in remotes.items():
        if mac == FLOOD_MAC:
            # the flood list: one remote per peer, each kept or removed on its own
            for e in es:
                if e.dst not in want_flood:
                    removals.append(Change(f"removed flood entry dst {e.dst} from {dev} "
                                           "(not in the plan)",
                                           (Op("fdb", "del", mac, e.dst, fdb=e),)))
        elif mac not in want_macs:
            for e in es:
                removals.append(Change(f"removed fdb {mac} dst {e.dst} from {dev} "
                                       "(not in the plan)", (Op("fdb", "del", mac, e.dst, fdb=e),)))
    for ip, n in have.neighbours.items():
        if ip not in want_ips and n.state & NUD_PERMANENT:
            removals.append(Change(f"removed neigh {ip} lladdr {n.mac} from {dev} "
                                   "(not in the plan)", (Op("neigh", "del", ip),)))

    flood_have = {e.dst: e for e in remotes.get(FLOOD_MAC, ())}
    for p in want.peers:
        tag = f" (peer {p.name})"
        fd = p.fdb
        for nb in p.neighbours:
            per_peer.extend(_neigh_change(have.neighbours.get(nb.ip), nb, dev, tag))

        if fdb:
            es = remotes.get(fd.mac, [])
            good = [e for e in es if e.dst == fd.dst]
            stale = [e for e in es if e.dst != fd.dst]
            ops = tuple(Op("fdb", "del", fd.mac, e.dst, fdb=e) for e in stale)
            add_fdb = Op("fdb", "set", fd.mac, fd.dst)
            if not es:
                per_peer.append(Change(f"added fdb {fd.mac} dst {fd.dst} on {dev}{tag}", (add_fdb,)))
            elif not good:
                was = ", ".join(e.dst for e in stale)
                per_peer.append(Change(f"changed fdb {fd.mac} dst {fd.dst} on {dev} "
                                       f"(was dst {was}){tag}", ops + (add_fdb,)))
            else:
                g = good[0]
                fix = not g.state & NUD_PERMANENT or g.overridden
                if stale or fix:
                    what = []
                    if stale:
                        what.append("removed stale dst " + ", ".join(e.dst for e in stale))
                    if fix:
                        what.append("made permanent with the device's port and VNI")
                    per_peer.append(Change(f"changed fdb {fd.mac} dst {fd.dst} on {dev} "
                                           f"({'; '.join(what)}){tag}",
                                           ops + ((add_fdb,) if fix else ())))

        if fdb:
            per_peer.extend(_flood_change(flood_have.get(fd.dst), fd.dst, dev, tag))

        for rt in p.routes:
            r = have.routes.get(route_key(rt.dst))
            add_route = Op("route", "set", rt.dst, rt.via)
            if r is None:
                per_peer.append(Change(f"added route {rt.dst} via {rt.via} onlink on {dev}{tag}",
                                       (add_route,)))
            elif not route_as_planned(r, rt.via):
                # on our device, so ours to change; a route with the plan's gateway but another
                # protocol (`ip route replace` by hand) is re-tagged, so that the tag lists
                # exactly the routes vtep stands behind. Not NLM_F_REPLACE: IPv4 replaces the
                # first route with the key whatever its device (fib_table_insert), which could
                # be another's prepended before ours; so the exact delete, then a create, back
                # to back in one batch.
                was = f"via {r.gateway}" if r.gateway else "no gateway"
                if r.nh_id:
                    was = f"nhid {r.nh_id}"
                if r.onlink:
                    was += " onlink"
                if r.proto != RTPROT_VTEP:
                    was += f" proto {nlmsg.PROTO_NAMES.get(r.proto, r.proto)}"
                if r.scope != nlmsg.RT_SCOPE_UNIVERSE:
                    was += f" scope {nlmsg.SCOPE_NAMES.get(r.scope, r.scope)}"
                per_peer.append(Change(f"changed route {rt.dst} via {rt.via} onlink on {dev} "
                                       f"(was {was}){tag}",
                                       (Op("route", "del", r.dst, r.gateway, route=r), add_route)))
    # stale routes go before the neighbours and fdb entries they used
    order = {"route": 0, "fdb": 1, "neigh": 2}
    removals.sort(key=lambda c: order[c.ops[0].kind])
    return removals + per_peer


def route_key(dst: str) -> tuple:
    """The key (dst, tos, metric) a planned route has in Realised.routes."""
    return (dst, 0, nlmsg.planned_metric(dst))


def _neigh_change(
n: nlmsg.NeighEntry | None, nb: state.Neighbour, dev: str,
                  tag: str) -> list[Change]:
    """The change (none or one) that makes a peer's VTEP address resolve, permanently,
    to the peer's MAC (one entry per overlay family)."""
    add_neigh = Op("neigh", "set", nb.ip, nb.mac)
    if n is None:
        return [Change(f"added neigh {nb.ip} lladdr {nb.mac} on {dev}{tag}", (add_neigh,))]
    if n.mac != nb.mac or not n.state & NUD_PERMANENT:
        was = f"{n.mac or 'no lladdr'}{'' if n.state & NUD_PERMANENT else ' not permanent'}"
        return [Change(f"changed neigh {nb.ip} lladdr {nb.mac} permanent on {dev} "
                       f"(was {was}){tag}", (add_neigh,))]
    return []


def _flood_change(have: nlmsg.FdbEntry | None, dst: str, dev: str, tag: str) -> list[Change]:
    """The change (none or one) that gives the flood list its permanent entry for a
    peer. An all-zeros entry is appended, never replaced: the kernel keeps one remote
    per destination under that MAC, and NLM_F_REPLACE would not add to the list."""
    append = Op("fdb", "append", FLOOD_MAC, dst)
    if have is None:
        return [Change(f"added flood entry dst {dst} on {dev}{tag}", (append,))]
    if not have.state & NUD_PERMANENT or have.overridden:
        return [Change(f"changed flood entry dst {dst} on {dev} (made permanent with the "
                       f"device's port and VNI){tag}",
                       (Op("fdb", "del", FLOOD_MAC, dst, fdb=have), append))]
    return []


def _route_text(r: nlmsg.RouteEntry) -> str:
    """A route on our device, as `ip route` shows it without `dev` and `onlink`; its
    protocol named only when it is not ours."""
    return dataclasses.replace(r, onlink=False).text(hide_proto=RTPROT_VTEP)


def describe(op: Op) -> str:
    if op.kind == "neigh":
        return (f"add neigh {op.key} lladdr {op.value}" if op.action == "set"
                else f"delete neigh {op.key}")
    if op.kind == "fdb":
        verb = {"set": "add", "append": "append", "del": "delete"}[op.action]
        return f"{verb} fdb {op.key} dst {op.value}"
    if op.action == "set":
        return f"add route {op.key} via {op.value} onlink proto {RTPROT_VTEP}"
    return f"delete route {_route_text(op.route) if op.route else op.key}"


def check_mtu(plan, node, dev: str, underlay_mtu: int, forced: bool = False) -> None:
    """RFC 7348 s4.3: VTEPs must not fragment, so the overlay MTU must fit the underlay's.
    A forced MTU (`vtep run --mtu N`, an operator's deliberate override) only warns."""
    limit = underlay_mtu - plan.overhead
    if forced and plan.mtu is not None and plan.mtu > limit:
        log.warning(f"warning: --mtu {plan.mtu} is more than the underlay of node {node.name!r} "
                    f"carries ({dev} MTU {underlay_mtu} - {plan.overhead} = {limit}): frames "
                    "above it will be fragmented or dropped (RFC 7348 section 4.3)")
    elif plan.mtu is not None and plan.mtu > limit:
        raise PlanError(f"{plan.path}: cluster.mtu: {plan.mtu} is more than the underlay of node "
                        f"{node.name!r} carries ({dev} MTU {underlay_mtu} - {plan.overhead} bytes "
                        f"of VXLAN encapsulation = {limit})")
    if plan.mtu is None and limit < inet.MIN_MTU:
        raise PlanError(f"{plan.path}: cluster.mtu: the default for node {node.name!r} ({dev} MTU "
                        f"{underlay_mtu} - {plan.overhead} = {limit}) is below {inet.MIN_MTU}")
