"""`vtep run --kernel` and `vtep down`: the Linux vxlan device, kept converged.

Desired state comes from vtep.state.desired() (pure); realised state is read
from the kernel each pass; `diff()` turns the two into changes, and only
those are applied, each logged as one line (flannel's split of desired from
realised state; Calico's periodic reconcile repairs what drifted between).

Ownership: the device named in the plan (default vxlan0) is ours. Every
permanent neighbour entry, fdb remote and main-table route on it that the
plan does not name is stale and removed, so a peer that leaves the plan loses
all three entries. Deleting the device deletes its entries with it, which is
how SIGTERM and `vtep down` clean up. A route on any other device is never
ours: our routes carry protocol RTPROT_VTEP (118) and are only ever created
(NLM_F_EXCL), so a route with the same destination elsewhere (the underlay's
connected route, another daemon's) stays, and is reported as a conflict that
names it (RouteConflict; exit 4 for `--once`).

Forwarding (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding) is turned on,
as the CNI bridge plugin does, and left on at exit: by then pods, other
overlays or the operator may rely on it, and a sysctl does not record who
set it, so turning it off could cut traffic that is not ours.

The device itself goes through pyroute2's IPRoute (one message each); the
per-peer entries go through vtep.netlink in filtered dumps and batches.
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import socket
import struct
import sys
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import host, netlink, owner, state
from . import plan as planlib
from .errors import HostMismatch, Incompatible, PermissionDenied, PlanError, VtepError
from .netlink import NUD_PERMANENT, RTN_UNICAST, RTPROT_KERNEL, RTPROT_VTEP, Op

log = logging.getLogger("vtep")

IFF_UP = 0x1
DF = {"unset": 0, "set": 1, "inherit": 2}
DF_NAMES = {v: k for k, v in DF.items()}
# CNI's bridge plugin turns these on for the same reason: the node routes between
# its pods' bridge and the overlay device.
FORWARDING = (("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
              ("/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"))


class RouteConflict(HostMismatch):
    """Routes of the plan that a route we did not make is in the way of; everything else
    was applied. One line per route (exit 4: the host does not match the plan, and no
    flag of ours changes that: the operator removes the other route or changes the plan)."""

    def __init__(self, lines: list[str]):
        self.problems = list(lines)
        super().__init__("; ".join(self.problems))


class NotOurs(Incompatible):
    """`vtep down` found a device of that name that is not the plan's: it is left alone."""

    def __init__(self, device: str, diffs: list[str], advice: str = ""):
        self.device, self.diffs = device, diffs
        VtepError.__init__(self, f"{device} is not the plan's device ({', '.join(diffs)}; "
                                 f"plan vs existing): not removing it"
                                 + (f"; {advice}" if advice else ""))


def setup_logging() -> None:
    """One line per event on stderr, prefixed like the CLI's own messages."""
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("vtep: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


# -- pure parts: device comparison and entry diff ------------------------------------------

@dataclass(frozen=True)
class Change:
    text: str                 # one log line
    ops: tuple[Op, ...]


def _ip_eq(a, b) -> bool:
    try:
        return (a is not None and b is not None
                and ipaddress.ip_address(a) == ipaddress.ip_address(b))
    except ValueError:
        return False


def device_diffs(want: state.Device, have: dict, underlay_index: int, names: dict,
                 df: str | None = None) -> tuple[list[str], dict]:
    """(incompatible, repairs) between the plan's device and an existing one.

    Incompatible settings (kind, VNI, local, port, underlay device, learning,
    external/collect-metadata mode, a default remote) need the device to be
    recreated (--replace); `repairs` maps mtu/mac/df to the plan's values for
    settings the kernel changes in place. Messages read "field: plan vs existing".
    """
    repairs = {}
    if have.get("mtu") != want.mtu:
        repairs["mtu"] = want.mtu
    if (have.get("mac") or "").lower() != want.mac:
        repairs["mac"] = want.mac
    if have.get("kind") != "vxlan":  # (the userspace path's TAP still takes the repairs)
        return [f"kind: vxlan vs {have.get('kind') or 'none'}"], repairs
    bad = []
    if have.get("vni") != want.vni:
        bad.append(f"vni: {want.vni} vs {have.get('vni')}")
    if not _ip_eq(have.get("local"), want.local):
        bad.append(f"local: {want.local} vs {have.get('local') or 'none'}")
    if have.get("port") != want.port:
        bad.append(f"port: {want.port} vs {have.get('port')}")
    if have.get("link") != underlay_index:
        planned = want.underlay_dev if underlay_index else "none"
        bad.append(f"dev: {planned} vs {names.get(have.get('link'), 'none')}")
    if have.get("learning"):
        # RFC 7348 s4.1 learning would let any sender rewrite the fdb we program statically
        bad.append("learning: off vs on")
    if have.get("external"):
        bad.append("external: off vs on")
    if have.get("group"):
        bad.append(f"remote: none vs {have['group']}")
    if df is not None and have.get("df") != DF[df]:
        repairs["df"] = df
    return bad, repairs


def route_as_planned(r: netlink.RouteEntry, via: str) -> bool:
    """Is this realised route exactly the one we create for a peer (encode_route): the
    plan's gateway, onlink, unicast, scope universe, tagged ours, no nexthop object, tos
    0, metric 0, main table? diff() and the echo filter both ask this: a route the filter
    took for ours while diff() would change it (one through a nexthop object, one that
    lost its onlink flag, one with a tos of its own) would wait for the periodic resync."""
    return (r.gateway == via and r.onlink and r.type == RTN_UNICAST
            and r.scope == netlink.RT_SCOPE_UNIVERSE and r.proto == RTPROT_VTEP
            and not r.nh_id and not r.multipath and r.tos == 0 and r.priority == 0
            and r.table == netlink.RT_TABLE_MAIN)


def diff(want: state.NodeState, have: netlink.Realised, fdb: bool = True) -> list[Change]:
    """The changes that turn `have` into `want`, in apply order: stale entries first
    (routes, fdb, neighbours), then per peer its neighbour, fdb entry and route, so
    that a route never precedes the entries that resolve its gateway. With
    fdb=False (the userspace path, whose fdb lives in the process) kernel fdb
    entries are neither read nor written."""
    dev = want.device.name
    removals: list[Change] = []
    per_peer: list[Change] = []
    want_ips = {p.neighbour.ip for p in want.peers}
    want_macs = {p.fdb.mac: p.fdb.dst for p in want.peers}
    want_routes = {(p.route.dst, 0, 0) for p in want.peers}

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
        if mac not in want_macs:
            for e in es:
                removals.append(Change(f"removed fdb {mac} dst {e.dst} from {dev} "
                                       "(not in the plan)", (Op("fdb", "del", mac, e.dst, fdb=e),)))
    for ip, n in have.neighbours.items():
        if ip not in want_ips and n.state & NUD_PERMANENT:
            removals.append(Change(f"removed neigh {ip} lladdr {n.mac} from {dev} "
                                   "(not in the plan)", (Op("neigh", "del", ip),)))

    for p in want.peers:
        tag = f" (peer {p.name})"
        nb, fd, rt = p.neighbour, p.fdb, p.route
        n = have.neighbours.get(nb.ip)
        add_neigh = Op("neigh", "set", nb.ip, nb.mac)
        if n is None:
            per_peer.append(Change(f"added neigh {nb.ip} lladdr {nb.mac} on {dev}{tag}",
                                   (add_neigh,)))
        elif n.mac != nb.mac or not n.state & NUD_PERMANENT:
            was = f"{n.mac or 'no lladdr'}{'' if n.state & NUD_PERMANENT else ' not permanent'}"
            per_peer.append(Change(f"changed neigh {nb.ip} lladdr {nb.mac} permanent on {dev} "
                                   f"(was {was}){tag}", (add_neigh,)))

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

        r = have.routes.get((rt.dst, 0, 0))
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
                was += f" proto {netlink.PROTO_NAMES.get(r.proto, r.proto)}"
            if r.scope != netlink.RT_SCOPE_UNIVERSE:
                was += f" scope {netlink.SCOPE_NAMES.get(r.scope, r.scope)}"
            per_peer.append(Change(f"changed route {rt.dst} via {rt.via} onlink on {dev} "
                                   f"(was {was}){tag}",
                                   (Op("route", "del", r.dst, r.gateway, route=r), add_route)))
    # stale routes go before the neighbours and fdb entries they used
    order = {"route": 0, "fdb": 1, "neigh": 2}
    removals.sort(key=lambda c: order[c.ops[0].kind])
    return removals + per_peer


def _route_text(r: netlink.RouteEntry) -> str:
    """A route on our device, as `ip route` shows it without `dev` and `onlink`; its
    protocol named only when it is not ours."""
    return dataclasses.replace(r, onlink=False).text(hide_proto=RTPROT_VTEP)


def describe(op: Op) -> str:
    if op.kind == "neigh":
        return (f"add neigh {op.key} lladdr {op.value}" if op.action == "set"
                else f"delete neigh {op.key}")
    if op.kind == "fdb":
        return f"{'add' if op.action == 'set' else 'delete'} fdb {op.key} dst {op.value}"
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
    if plan.mtu is None and limit < planlib.MIN_MTU:
        raise PlanError(f"{plan.path}: cluster.mtu: the default for node {node.name!r} ({dev} MTU "
                        f"{underlay_mtu} - {plan.overhead} = {limit}) is below {planlib.MIN_MTU}")


# -- host facts ----------------------------------------------------------------------------

def udp_sockets(port: int, ipv6: bool) -> list[str]:
    """Local addresses of the UDP sockets bound to `port` in this namespace."""
    path = "/proc/net/udp6" if ipv6 else "/proc/net/udp"
    out = []
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                local = line.split()[1]
                addr, p = local.rsplit(":", 1)
                if int(p, 16) != port:
                    continue
                # /proc prints each 32-bit word of the address as a host-order integer
                words = [int(addr[i:i + 8], 16) for i in range(0, len(addr), 8)]
                packed = b"".join(struct.pack("=I", w) for w in words)
                fam = socket.AF_INET6 if ipv6 else socket.AF_INET
                out.append(f"{socket.inet_ntop(fam, packed)}:{port}")
    except FileNotFoundError:
        pass
    return out


PMTU_SYSCTL = ("/proc/sys/net/ipv4/ip_forward_use_pmtu", "net.ipv4.ip_forward_use_pmtu")


def enable_forwarding(df: str | None = None) -> list[str]:
    """Turn forwarding on; returns what it changed. Left on at exit: pods and other
    overlays on this node may rely on it by then, and we cannot tell who else set it.

    With `--df set` also net.ipv4.ip_forward_use_pmtu: a forwarding host ignores the
    path MTU it learns unless told otherwise, so the MTU the tunnel learns from the
    underlay's ICMP errors would never reach the pods whose traffic it routes."""
    done = []
    wanted = FORWARDING + ((PMTU_SYSCTL,) if df == "set" else ())
    for path, name in wanted:
        try:
            with open(path) as f:
                cur = f.read().strip()
        except FileNotFoundError:
            continue   # IPv6 disabled in this kernel: nothing to forward
        if cur == "1":
            continue
        try:
            with open(path, "w") as f:
                f.write("1\n")
        except OSError as e:
            raise PermissionDenied(f"cannot turn on {name} ({path}: {e.strerror})")
        why = ("forwarded pod traffic then honours the path MTU the tunnel learns (--df set)"
               if name == PMTU_SYSCTL[1] else "this node routes between its pods' bridge and "
               "the overlay, as the CNI bridge plugin does")
        done.append(f"turned on {name} (was {cur}): {why}")
    return done


def require_made_by_vtep(name: str, have: dict, diffs=()) -> None:
    """`--replace` and `vtep down` delete only a device vtep made (its alias says so):
    never a veth, a bridge or a hand-made vxlan device that happens to have the name.
    `diffs`: how it differs from the plan besides, named in the same message."""
    if not owner.made_by_vtep(have.get("alias")):
        alias = f"alias {have['alias']!r}" if have.get("alias") else "no vtep alias"
        raise NotOurs(name, [*diffs, f"made by: vtep vs someone else (kind "
                                     f"{have.get('kind') or 'none'}, {alias})"],
                      f"remove it yourself (ip link del {name}) if it is not needed, or "
                      "choose another --device")


def _facts(msg) -> dict:
    """The settings we compare, from a pyroute2 RTM_NEWLINK message."""
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    facts = {"kind": kind, "index": msg["index"], "mtu": msg.get_attr("IFLA_MTU"),
             "mac": msg.get_attr("IFLA_ADDRESS"), "up": bool(msg["flags"] & IFF_UP),
             "name": msg.get_attr("IFLA_IFNAME"), "alias": msg.get_attr("IFLA_IFALIAS")}
    data = info.get_attr("IFLA_INFO_DATA") if info and kind == "vxlan" else None
    if data is not None:
        g = data.get_attr
        facts.update(vni=g("IFLA_VXLAN_ID"), port=g("IFLA_VXLAN_PORT"),
                     local=g("IFLA_VXLAN_LOCAL") or g("IFLA_VXLAN_LOCAL6"),
                     link=g("IFLA_VXLAN_LINK"), learning=bool(g("IFLA_VXLAN_LEARNING")),
                     external=bool(g("IFLA_VXLAN_COLLECT_METADATA")),
                     group=g("IFLA_VXLAN_GROUP") or g("IFLA_VXLAN_GROUP6"), df=g("IFLA_VXLAN_DF"))
        if facts["group"] in ("0.0.0.0", "::"):
            facts["group"] = None
    return facts


# -- the realiser ---------------------------------------------------------------------------

class KernelVtep:
    """One node's vxlan device and per-peer entries, realised through netlink."""

    def __init__(self, args, plan):
        self.args = args
        self.plan = plan
        self.node = host.select_node(plan, args.node)
        self.device = args.device
        self.df = getattr(args, "df", None)
        try:
            self.ipr = IPRoute(groups=0)
        except OSError as e:
            raise netlink.NetlinkRefused(f"cannot open a netlink socket: {e.strerror}")
        self.rtnl = netlink.Rtnl()
        self.ifindex: int | None = None
        self.underlay_index: int | None = None
        self.unbound = False
        self.pending: state.NodeState | None = None
        self._derived = None   # (inputs, the desired state derived from them): desired()
        self.want: state.NodeState | None = None
        self.replace_next = False
        self.changes: list[str] = []
        # routes of the plan that a route we did not make is in the way of (last pass),
        # and those already said: each distinct conflict is logged once, not every pass
        self.conflicts: list[str] = []
        self._reported: set[str] = set()
        self.report_conflicts = True   # `--once` reports them as its error instead
        # `vtep run --mtu N|auto`: an overlay MTU that outranks the plan's, kept across SIGHUP
        self.mtu_override: int | None = None

    def close(self):
        self.ipr.close()
        self.rtnl.close()

    def watched(self) -> set:
        return {i for i in (self.ifindex, self.underlay_index) if i}

    def echo(self):
        """A predicate: is this added/changed entry (a notification) already as planned?"""
        if self.want is None:
            return None
        neigh = {(p.neighbour.ip, p.neighbour.mac) for p in self.want.peers}
        fdb = {(p.fdb.mac, p.fdb.dst) for p in self.want.peers}
        routes = {p.route.dst: p.route.via for p in self.want.peers}
        addr = netlink.AddrEntry(self.want.device.address, 32)

        def planned(e) -> bool:
            if isinstance(e, netlink.AddrEntry):
                return e == addr
            if isinstance(e, netlink.NeighEntry):
                return bool(e.state & NUD_PERMANENT) and (e.ip, e.mac) in neigh
            if isinstance(e, netlink.FdbEntry):
                return bool(e.state & NUD_PERMANENT) and not e.overridden and (e.mac, e.dst) in fdb
            via = routes.get(e.dst)
            return via is not None and route_as_planned(e, via)
        return planned

    # pyroute2 calls: every kernel refusal becomes a one-line VtepError naming the action
    def _call(self, what: str, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except NetlinkError as e:
            raise netlink.NetlinkRefused(f"{what}: {e.args[1] if len(e.args) > 1 else e}")
        except OSError as e:
            raise netlink.NetlinkRefused(f"{what}: {e.strerror or e}")

    def _link(self, name: str = None, index: int = None):
        try:
            kw = {"index": index} if index else {"ifname": name}
            return self.ipr.link("get", **kw)[0]
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise netlink.NetlinkRefused(f"reading {name or index}: {e.args[1]}")

    def _names(self) -> dict:
        return {m["index"]: m.get_attr("IFLA_IFNAME")
                for m in self._call("listing links", self.ipr.link, "dump")}

    def desired(self, plan=None, node=None) -> state.NodeState:
        plan, node = plan or self.plan, node or self.node
        dev, mtu = host.underlay(node)
        check_mtu(plan, node, dev, mtu, forced=self.mtu_override is not None)
        idx = self.ipr.link_lookup(ifname=dev)
        if not idx:
            raise HostMismatch(f"underlay device {dev} of node {node.name!r} does not exist here")
        self.underlay_index = idx[0]
        # The desired state is a pure function of these; at 20,000 peers deriving it costs
        # half a second, which a pass (every resync, every notification) should not pay
        # again for an unchanged plan. The plan itself is in the key: it is immutable.
        key = (plan, node.name, dev, mtu, self.device)
        if self._derived is not None and self._derived[0] == key:
            want = self._derived[1]
        else:
            want = state.desired(plan, node.name, underlay_dev=dev, underlay_mtu=mtu,
                                 device=self.device)
            self._derived = (key, want)
        # The kernel caps a vxlan device bound to a lower device (`dev`) at that device's
        # MTU minus the overhead. A forced `--mtu` above it (a deliberate misconfiguration)
        # gets an unbound device: it keeps the MTU, and with `df unset` the kernel
        # fragments the outer packets, which is what the operator asked to see.
        self.unbound = want.device.mtu > mtu - plan.overhead
        return want

    @property
    def link_index(self) -> int | None:
        """The lower device the vxlan device is bound to (None: unbound, see desired())."""
        return None if self.unbound else self.underlay_index

    # -- device --------------------------------------------------------------------------

    def port_conflict(self, want: state.Device) -> str | None:
        """Why the device could not bind its UDP port, or None. The kernel shares one
        socket among vxlan devices on a port and demultiplexes by VNI (RFC 7348 s5), so
        only the same VNI, or a socket that is not a vxlan device's, is a conflict."""
        ipv6 = ":" in want.local
        others = []
        for m in self._call("listing links", self.ipr.link, "dump"):
            f = _facts(m)
            if f["kind"] == "vxlan" and f["name"] != want.name and f.get("port") == want.port:
                others.append(f)
        for f in others:
            if f.get("vni") == want.vni:
                return (f"UDP port {want.port} with VNI {want.vni} is already served by vxlan "
                        f"device {f['name']} on this host")
        if not any(f["up"] for f in others):
            held = udp_sockets(want.port, ipv6)
            if held:
                return (f"UDP port {want.port} is already in use on this host (a socket is "
                        f"bound to {held[0]}): another VTEP or program holds it")
        return None

    def _create(self, want: state.Device):
        kw = dict(ifname=want.name, kind="vxlan", vxlan_id=want.vni,
                  vxlan_port=want.port,       # explicit: the kernel's default is 8472
                  vxlan_learning=0,           # peers are programmed, never learnt
                  mtu=want.mtu, address=want.mac)
        if not self.unbound:
            kw["vxlan_link"] = self.underlay_index
        kw["vxlan_local6" if ":" in want.local else "vxlan_local"] = want.local
        if self.df:
            kw["vxlan_df"] = DF[self.df]
        self._call(f"creating {want.name}", self.ipr.link, "add", **kw)
        self._note(f"created {want.name}: vxlan id {want.vni} local {want.local} dstport "
                   f"{want.port} nolearning dev {want.underlay_dev} mtu {want.mtu} address "
                   f"{want.mac}{' df ' + self.df if self.df else ''}")

    def _delete(self, index: int, name: str):
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise netlink.NetlinkRefused(f"deleting {name}: {e.args[1]}")

    def ensure_device(self, want: state.Device, first: bool, replace: bool) -> tuple[int, bool]:
        """The device's ifindex, creating, repairing or (replace) recreating it.
        Returns (ifindex, created)."""
        msg = self._link(want.name)
        created = False
        if msg is not None:
            have = _facts(msg)
            bad, repairs = device_diffs(want, have, self.link_index, {}, self.df)
            if bad:
                names = self._names()
                bad, repairs = device_diffs(want, have, self.link_index, names, self.df)
                # the very device this run made or adopted, changed in place, is drift to
                # repair; one found at start (or made by someone since) needs --replace
                ours = not first and have["index"] == self.ifindex
                if not ours:   # --replace would not help with a device vtep did not make
                    require_made_by_vtep(want.name, have, bad)
                if not (replace or ours):
                    raise Incompatible(want.name, bad)
                self._delete(have["index"], want.name)
                self._note(f"deleted {want.name} to recreate it ({', '.join(bad)}; "
                           "plan vs existing)")
                msg = None
        if msg is None:
            why = self.port_conflict(want)
            if why:
                raise HostMismatch(why)
            self._create(want)
            created = True
            msg = self._link(want.name)
            if msg is None:
                raise netlink.NetlinkRefused(f"{want.name} vanished right after its creation")
            have = _facts(msg)
            repairs = {}
        idx = have["index"]
        try:
            self._mark(want.name, idx, have.get("alias"), adopted=not created)
            self._repair(want, idx, have, repairs)
            self._addresses(want, idx)
            if not have["up"]:
                if not created and first:
                    why = self.port_conflict(want)
                    if why:
                        raise HostMismatch(why)
                try:
                    self.ipr.link("set", index=idx, state="up")
                except NetlinkError as e:
                    if e.code == errno.EADDRINUSE:
                        raise HostMismatch(f"UDP port {want.port} is already in use on this host: "
                                           f"{want.name} cannot bind it")
                    raise netlink.NetlinkRefused(f"setting {want.name} up: {e.args[1]}")
                if not created:
                    self._note(f"set {want.name} up (it was down)")
        except VtepError:
            if created:   # nothing left half-configured
                self._delete(idx, want.name)
            raise
        self.ifindex = idx
        return idx, created

    mode = "kernel"

    def _mark(self, name: str, idx: int, alias: str | None = None, adopted: bool = False):
        """Put vtep's mark (owner.alias) on the device, so that every later invocation,
        whatever its --state-dir, knows vtep made it; repaired like any other drift."""
        mark = owner.alias(self.node.name, self.mode)
        if alias == mark:
            return
        self._call(f"setting the alias of {name}", self.ipr.link, "set", index=idx,
                   ifalias=mark)
        if adopted:
            self._note(f"marked {name} as vtep's (alias {mark!r}; was "
                       f"{repr(alias) if alias else 'none'})")

    def _repair(self, want, idx, have, repairs):
        if "mtu" in repairs:
            self._call(f"setting the MTU of {want.name}", self.ipr.link, "set", index=idx,
                       mtu=want.mtu)
            self._note(f"changed {want.name} mtu {want.mtu} (was {have['mtu']})")
        if "mac" in repairs:
            self._call(f"setting the address of {want.name}", self.ipr.link, "set", index=idx,
                       address=want.mac)
            self._note(f"changed {want.name} address {want.mac} (was {have['mac']})")
        if "df" in repairs:
            self._call(f"setting df on {want.name}", self.ipr.link, "set", index=idx,
                       kind="vxlan", vxlan_df=DF[self.df])
            self._note(f"changed {want.name} df {self.df} (was {DF_NAMES.get(have['df'], '?')})")

    def _addresses(self, want: state.Device, idx: int):
        """The VTEP address as a /32 (as flannel and Calico do: no prefix route), and no
        other IPv4 address: one would add a connected route onto the tunnel."""
        have = []
        for a in self._call(f"listing addresses of {want.name}", self.ipr.addr, "dump",
                            index=idx, family=socket.AF_INET):
            ip = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            have.append((ip, a["prefixlen"]))
        for ip, plen in have:
            if (ip, plen) != (want.address, 32):
                self._call(f"removing {ip}/{plen} from {want.name}", self.ipr.addr, "del",
                           index=idx, address=ip, prefixlen=plen)
                self._note(f"removed address {ip}/{plen} from {want.name} (not in the plan)")
        if (want.address, 32) not in have:
            self._call(f"adding {want.address}/32 to {want.name}", self.ipr.addr, "add",
                       index=idx, address=want.address, prefixlen=32)
            self._note(f"added address {want.address}/32 on {want.name}")

    # -- passes ----------------------------------------------------------------------------

    def _note(self, line: str) -> None:
        log.info(line)
        self.changes.append(line)

    def converge(self, first: bool = False, replace: bool = False) -> list[str]:
        """One pass: read the realised state, apply the difference, log each change.
        Returns the change lines (empty: nothing was out of place)."""
        self.changes = []
        want = self.pending = self.desired()  # the whole state this pass realises
        idx, created = self.ensure_device(want.device, first, replace or self.replace_next)
        self.replace_next = False
        try:
            changes = self.diff(want, self.rtnl.read(idx))
            failed = self.rtnl.apply([op for c in changes for op in c.ops], idx)
            conflicts, failed = self._route_conflicts(failed, idx, want)
        except VtepError:
            self._undo(created and first, idx, want.device.name)
            raise
        # a route in the way is not a failed pass: everything else is applied, the pass
        # succeeds, the route is tried again every pass (it may have gone) and the
        # conflict is said once
        self.conflicts = list(conflicts.values())
        if self.report_conflicts:
            for line in self.conflicts:
                if line not in self._reported:
                    log.error(line)
        self._reported = set(self.conflicts)
        bad = {id(op) for op, _code, _text in failed} | set(conflicts)
        for c in changes:
            if not any(id(op) in bad for op in c.ops):
                self._note(c.text)
        self.want = want
        if not failed:   # last, so that a pass that fails changes nothing on the host
            for line in enable_forwarding(self.df):
                self._note(line)
        if failed:
            self._undo(created and first, idx, want.device.name)
            op, code, text = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise netlink.NetlinkRefused(f"the kernel refused to {describe(op)} on "
                                         f"{want.device.name}: "
                                         f"{netlink.describe_errno(code, text)}{more}")
        return self.changes

    def diff(self, want: state.NodeState, have: netlink.Realised) -> list[Change]:
        return diff(want, have)

    def _route_conflicts(self, failed: list, idx: int, want: state.NodeState):
        """Split the route creations the kernel refused with EEXIST because a route on
        another device (or a multipath one) has their key from the other failures.
        Returns ({id(op): line naming the route in the way}, the other failures)."""
        exists = {id(f[0]): f for f in failed if f[0].kind == "route" and f[0].action == "set"
                  and f[1] == errno.EEXIST}
        if not exists:
            return {}, failed
        table = self.rtnl.main_routes((f[0].key, 0, 0) for f in exists.values())
        peers = {p.route.dst: p.name for p in want.peers}
        names, lines = None, {}
        for key, (op, _code, _text) in exists.items():
            others = [(oif, r) for oif, r in table.get((op.key, 0, 0), ()) if oif != idx]
            if not others:
                continue   # only ours now (a race with the dump): a failure, retried
            if names is None:
                names = self._names()
            what = " and ".join(r.text(names.get(oif, f"if{oif}") if oif else None)
                                for oif, r in others)
            lines[key] = (f"route {op.key} of peer {peers.get(op.key, '?')} not added: {what} "
                          "is in the way (not made by vtep): not replacing it")
        return lines, [f for f in failed if id(f[0]) not in lines]

    def _undo(self, really: bool, idx: int, name: str) -> None:
        """A first pass that fails leaves nothing half-configured behind."""
        if really:
            self._delete(idx, name)
            log.info(f"deleted {name} again: the first pass failed")

    def read_plan(self):
        """The plan file, read and validated (SIGHUP). Touches nothing else, so the daemon
        runs it in a thread while the data path keeps forwarding."""
        plan = planlib.load(self.args.config)
        if self.mtu_override is not None:
            plan = dataclasses.replace(plan, mtu=self.mtu_override)
        return plan

    def reload(self, plan=None, error: VtepError | None = None) -> bool:
        """Adopt a re-read plan (SIGHUP; read_plan() when none is given). On a bad plan
        keep the current one and say why."""
        path = self.args.config
        try:
            if error is not None:
                raise error
            if plan is None:
                plan = self.read_plan()
            node = plan.node(self.node.name)
            want = self.desired(plan, node)
        except VtepError as e:
            log.error(f"keeping the current plan: {e}")
            return False
        for w in plan.warnings:
            log.warning(f"warning: {w}")
        old = {p.name: p for p in self.want.peers} if self.want else {}
        new = {p.name: p for p in want.peers}
        added = [n for n in new if n not in old]
        removed = [n for n in old if n not in new]
        changed = [n for n in new if n in old and new[n] != old[n]]
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("added", added), ("removed", removed), ("changed", changed)) if names]
        log.info(f"plan {path}: {len(new)} peer{'s' if len(new) != 1 else ''}; "
                 f"{'; '.join(parts) if parts else 'no peer changes'}")
        if self.want:
            a, b = want.device, self.want.device
            dev = [f"{f}: {getattr(a, f)} vs {getattr(b, f)}"
                   for f in ("vni", "local", "port", "underlay_dev")
                   if getattr(a, f) != getattr(b, f)]
            if dev:   # the device is ours: a plan that changes it means recreating it
                log.info(f"{self.device} will be recreated ({', '.join(dev)}; new plan vs old)")
                self.replace_next = True
        self.plan, self.node = plan, node
        return True

    def teardown(self) -> bool:
        """Delete our device (the kernel drops its neighbour, fdb and route entries with it)."""
        msg = self._link(self.device)
        if msg is None:
            log.info(f"{self.device} is already gone")
            return False
        if self.ifindex and msg["index"] != self.ifindex:
            log.info(f"{self.device} is no longer the device this run made; leaving it")
            return False
        n = len(self.want.peers) if self.want else 0
        self._delete(msg["index"], self.device)
        log.info(f"removed {self.device}; its {n} neighbour, {n} fdb and {n} route entries "
                 "went with it")
        return True


def run(args, plan) -> int:
    setup_logging()
    host.require_net_admin("vtep run --kernel")
    from . import daemon
    with owner.Claim(args.device):   # before anything is touched, --once included
        vt = KernelVtep(args, plan)
        vt.mtu_override = getattr(args, "mtu_override", None)
        try:
            if args.once:
                vt.report_conflicts = False   # said once, as this run's error
                lines = vt.converge(first=True, replace=args.replace)
                if vt.conflicts:   # the rest is applied; exit 4, one line per route
                    raise RouteConflict(vt.conflicts)
                _summary(vt, lines)
                return 0
            return daemon.serve(vt, args)
        finally:
            vt.close()


def _summary(vt: KernelVtep, lines: list[str]) -> None:
    n = len(vt.want.peers)
    peers = f"{n} peer{'s' if n != 1 else ''}"
    if not lines:
        log.info(f"node {vt.node.name}: {vt.device} already converged ({peers}): nothing changed")
    else:
        log.info(f"node {vt.node.name}: {vt.device} converged ({peers}; "
                 f"{len(lines)} change{'s' if len(lines) != 1 else ''})")


def down(args, plan) -> int:
    """Remove the device a `--keep`, `--once` or crashed run left; idempotent."""
    setup_logging()
    host.require_net_admin("vtep down")
    from . import daemon
    node = host.select_node(plan, args.node)
    status = daemon.StatusFile(getattr(args, "state_dir", daemon.DEFAULT_STATE_DIR),
                               node.name, args.device)
    # the lock, not the status file: it is seen whatever --state-dir the agent was given
    owner.refuse_if_managed(args.device, "removing it")
    with IPRoute(groups=0) as ipr:
        try:
            msg = ipr.link("get", ifname=args.device)[0]
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise netlink.NetlinkRefused(f"reading {args.device}: {e.args[1]}")
            status.remove()
            log.info(f"{args.device} does not exist here: nothing to remove")
            return 0
        have = _facts(msg)
        bad = []
        if have["kind"] != "vxlan":
            bad.append(f"kind: vxlan vs {have['kind'] or 'none'}")
        else:
            if have["vni"] != plan.vni:
                bad.append(f"vni: {plan.vni} vs {have['vni']}")
            if have["port"] != plan.port:
                bad.append(f"port: {plan.port} vs {have['port']}")
            if not _ip_eq(have["local"], str(node.underlay_ip)):
                bad.append(f"local: {node.underlay_ip} vs {have['local'] or 'none'}")
        if bad:
            raise NotOurs(args.device, bad)
        require_made_by_vtep(args.device, have)
        rt = netlink.Rtnl()
        try:
            r = rt.read(have["index"])
        finally:
            rt.close()
        try:
            ipr.link("del", index=have["index"])
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise netlink.NetlinkRefused(f"deleting {args.device}: {e.args[1]}")
        status.remove()
        log.info(f"removed {args.device} (vni {have['vni']}) and with it {len(r.neighbours)} "
                 f"neighbour, {len(r.fdb)} fdb and {len(r.routes)} route entries")
    return 0
