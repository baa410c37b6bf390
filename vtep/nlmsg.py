"""rtnetlink messages: the kernel's numbers, the entries we compare, and their codec.

Pure bytes in and out, no sockets (those are vtep.netlink's). The decoders
read only the few attributes the reconciler compares, straight from the bytes
(pyroute2's generic decoder costs ~40 us a message, 120 ms for one pass at
1,000 peers): decode_neigh (neighbour and bridge fdb entries), decode_route,
decode_addr, each for both address families (the overlay may be IPv4, IPv6 or
both: one neighbour entry and one route per family and peer, told apart by the
address's text). The encoders write one change (an Op) as the kernel expects it:
neighbour and fdb messages through pyroute2's ndmsg, routes packed here, as
they carry attributes pyroute2 0.9 cannot encode (RTA_NH_ID). messages and
parse_error walk a datagram of replies and the extended-ack text of an error.

Every number comes from <linux/netlink.h>, <linux/rtnetlink.h> or
<linux/neighbour.h>; the unit tests check the bytes against those headers'
literal values, never against these names.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, \
    NLM_F_REQUEST
from pyroute2.netlink.rtnl.ndmsg import ndmsg

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/neighbour.h>
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_MULTI, NLM_F_DUMP_INTR = 0x2, 0x10
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NDA_DST, NDA_LLADDR, NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_SRC_VNI = 1, 2, 6, 7, 8, 11
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 4, 5, 6, 7
RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 9, 15, 30
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254
RTPROT_KERNEL, RTPROT_BOOT = 2, 3   # RTPROT_BOOT: what `ip route add` uses by default
# Our routes' protocol number. The kernel stores values above RTPROT_STATIC (4) without
# interpreting them, for routing daemons to tell their routes apart. 118 (0x76, "v") is in
# neither <linux/rtnetlink.h>'s RTPROT_* list (0-4, 8-18, 42, 99, 186-189, 192) nor
# iproute2's /etc/iproute2/rt_protos, nor among the numbers other overlays use (Calico 80,
# FRR's rt_protos.d 186-198); `ip route show proto 118` lists exactly vtep's routes.
RTPROT_VTEP = 118
RTN_UNICAST = 1
# IPv6 gives a route added without a metric the metric 1024 (IP6_RT_PRIO_USER,
# <net/ip6_route.h>), IPv4 none (0): the key of a planned route differs by family
IP6_RT_PRIO_USER = 1024
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
# names as iproute2 prints them (its rt_protos, rt_scopes and route types)
PROTO_NAMES = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
               9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
               15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived", 42: "babel",
               99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
TYPE_NAMES = {0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast",
              5: "multicast", 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw",
              10: "nat", 11: "xresolve"}
AF_BRIDGE = 7

_HDR = struct.Struct("=IHHII")      # nlmsghdr
_NLA = struct.Struct("=HH")         # nlattr
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table proto scope type flags
U32 = struct.Struct("=I")
_RTA_U32 = struct.Struct("=HHI")     # an nlattr holding a u32
_RTA_IP4 = struct.Struct("=HH4s")    # an nlattr holding an IPv4 address
_RTA_IP6 = struct.Struct("=HH16s")   # an nlattr holding an IPv6 address
_BE16 = struct.Struct("!H")


def _ntop(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def family_of(ip: str) -> int:
    """AF_INET6 for an IPv6 address's text (or a CIDR), else AF_INET."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def planned_metric(dst: str) -> int:
    """The metric a route we create gets from the kernel: 0 for IPv4, 1024 for IPv6."""
    return IP6_RT_PRIO_USER if ":" in dst else 0


def _ip_attr(typ: int, ip: str) -> bytes:
    if ":" in ip:
        return _RTA_IP6.pack(20, typ, socket.inet_pton(socket.AF_INET6, ip))
    return _RTA_IP4.pack(8, typ, socket.inet_aton(ip))


def _attrs(buf, off: int, end: int):
    """Yield (type, start, stop) of each attribute in buf[off:end]."""
    while off + 4 <= end:
        ln, typ = _NLA.unpack_from(buf, off)
        if ln < 4:
            return
        yield typ & 0x3FFF, off + 4, off + ln
        off += (ln + 3) & ~3


# -- realised entries (only the fields we compare) ---------------------------------------

@dataclass(frozen=True)
class NeighEntry:
    ip: str
    mac: str | None
    state: int


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str
    state: int
    # per-remote overrides (port, vni, ifindex, src vni): the kernel reports them only
    # when they differ from the device's defaults, and a delete must repeat them
    port: int | None = None
    vni: int | None = None
    rifindex: int | None = None
    src_vni: int | None = None

    @property
    def overridden(self) -> bool:
        return any(v is not None for v in (self.port, self.vni, self.rifindex, self.src_vni))


@dataclass(frozen=True)
class RouteEntry:
    """A realised route (IPv4 or IPv6): what we compare, and everything RTM_DELROUTE matches on
    (fib_table_delete: tos, priority, type, scope, protocol, then oif/gateway or the
    nexthop id), so that a delete names exactly the route the dump returned."""
    dst: str            # CIDR
    gateway: str | None
    onlink: bool
    priority: int
    tos: int
    proto: int
    scope: int
    type: int
    table: int = RT_TABLE_MAIN
    nh_id: int | None = None      # a route through a nexthop object (`ip route add .. nhid N`)
    prefsrc: str | None = None    # only to name a route (a connected route's `src`)
    multipath: bool = False       # RTA_MULTIPATH: no single oif

    def text(self, dev: str | None = None, hide_proto: int | None = None) -> str:
        """The route as `ip route show` prints it (its protocol named unless it is
        `hide_proto`, even boot, which iproute2 leaves out)."""
        parts = [] if self.type == RTN_UNICAST else [TYPE_NAMES.get(self.type, str(self.type))]
        parts.append(self.dst)
        if self.nh_id:
            parts.append(f"nhid {self.nh_id}")
        if self.tos:   # where print_route puts it: after dst and nhid, before via
            parts.append(f"tos 0x{self.tos:02x}")
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if dev:
            parts.append(f"dev {dev}")
        if self.multipath:
            parts.append("multipath")
        if self.proto != hide_proto:
            parts.append(f"proto {PROTO_NAMES.get(self.proto, self.proto)}")
        if self.scope != RT_SCOPE_UNIVERSE:
            parts.append(f"scope {SCOPE_NAMES.get(self.scope, self.scope)}")
        if self.prefsrc:
            parts.append(f"src {self.prefsrc}")
        if self.priority:
            parts.append(f"metric {self.priority}")
        if self.onlink:
            parts.append("onlink")
        return " ".join(parts)


@dataclass(frozen=True)
class Realised:
    neighbours: dict          # ip -> NeighEntry, IPv4 and IPv6
    fdb: tuple                # FdbEntry, remotes only (entries with NDA_DST)
    routes: dict              # (dst, tos, priority) -> RouteEntry, main table, both
                              # families (IPv6's planned metric: 1024); a second
                              # route with the same key (`ip route append`) under
                              # (dst, tos, priority, n): never in the plan


@dataclass(frozen=True)
class Op:
    """One netlink change. kind: neigh|fdb|route; action: set | del, or append (fdb: the
    all-zeros flood entry's list of remotes). A neighbour or fdb set creates or replaces
    (those tables are per device: only ours is touched); a route set only creates
    (NLM_F_EXCL: see the module docstring)."""
    kind: str
    action: str
    key: str                  # neigh: ip; fdb: mac; route: dst CIDR
    value: str | None = None  # neigh: mac; fdb: underlay dst; route: gateway
    fdb: FdbEntry | None = None  # fdb del: the realised remote, overrides included
    route: RouteEntry | None = None  # route del: the realised route, as the dump gave it


def decode_neigh(buf, off, end, ifindex=None):
    """(family, NeighEntry|FdbEntry|None) from one RTM_*NEIGH message payload."""
    family, idx, state, flags, _ = NDMSG.unpack_from(buf, off)
    if ifindex is not None and idx != ifindex:
        return family, None
    dst = mac = port = vni = rif = svni = None
    for typ, a, b in _attrs(buf, off + NDMSG.size, end):
        if typ == NDA_DST:
            dst = _ntop(bytes(buf[a:b]))
        elif typ == NDA_LLADDR:
            mac = bytes(buf[a:b]).hex(":")
        elif typ == NDA_PORT:
            port = _BE16.unpack_from(buf, a)[0]
        elif typ == NDA_VNI:
            vni = U32.unpack_from(buf, a)[0]
        elif typ == NDA_IFINDEX:
            rif = U32.unpack_from(buf, a)[0]
        elif typ == NDA_SRC_VNI:
            svni = U32.unpack_from(buf, a)[0]
    if family == AF_BRIDGE:
        if dst is None or mac is None:   # the device's own address lists, not remotes
            return family, None
        return family, FdbEntry(mac, dst, state, port, vni, rif, svni)
    if family in (socket.AF_INET, socket.AF_INET6) and dst is not None:
        return family, NeighEntry(dst, mac, state)
    return family, None


@dataclass(frozen=True)
class AddrEntry:
    ip: str
    prefixlen: int


def decode_addr(buf, off, end) -> AddrEntry | None:
    """The address of one RTM_*ADDR message payload (ifaddrmsg, then IFA_LOCAL, or
    IFA_ADDRESS alone: what IPv6 sends), IPv4 or IPv6."""
    family, plen = buf[off], buf[off + 1]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    ip = None
    for typ, a, b in _attrs(buf, off + 8, end):
        if typ in (IFA_ADDRESS, IFA_LOCAL) and (ip is None or typ == IFA_LOCAL):
            ip = socket.inet_ntop(family, bytes(buf[a:b]))
    return AddrEntry(ip, plen) if ip else None


def decode_route(buf, off, end):
    """(oif, table, RouteEntry|None) from one RTM_*ROUTE message payload, IPv4 or IPv6
    (an IPv6 route's RTA_PREF, RTA_CACHEINFO and RTA_EXPIRES are not compared)."""
    family, dlen, _, tos, table, proto, scope, typ_, flags = _RTMSG.unpack_from(buf, off)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None, None, None
    dst = "0.0.0.0" if family == socket.AF_INET else "::"
    gw, oif, prio, nh, src, mp = None, None, 0, None, None, False
    for typ, a, b in _attrs(buf, off + _RTMSG.size, end):
        if typ == RTA_DST:
            dst = socket.inet_ntop(family, bytes(buf[a:b]))
        elif typ == RTA_GATEWAY:
            gw = socket.inet_ntop(family, bytes(buf[a:b]))
        elif typ == RTA_OIF:
            oif = U32.unpack_from(buf, a)[0]
        elif typ == RTA_PRIORITY:
            prio = U32.unpack_from(buf, a)[0]
        elif typ == RTA_TABLE:
            table = U32.unpack_from(buf, a)[0]
        elif typ == RTA_PREFSRC:
            src = socket.inet_ntop(family, bytes(buf[a:b]))
        elif typ == RTA_NH_ID:
            nh = U32.unpack_from(buf, a)[0]
        elif typ == RTA_MULTIPATH:
            mp = True
    return oif, table, RouteEntry(f"{dst}/{dlen}", gw, bool(flags & RTNH_F_ONLINK), prio, tos,
                                  proto, scope, typ_, table, nh, src, mp)


def messages(buf, n):
    """Yield (type, flags, seq, payload_off, end) for each netlink message in buf[:n]."""
    off = 0
    while off + 16 <= n:
        ln, typ, flags, seq, _ = _HDR.unpack_from(buf, off)
        if ln < 16:
            return
        yield typ, flags, seq, off + 16, off + ln
        off += (ln + 3) & ~3


def parse_error(buf, a, end):
    """(errno, seq of the request, extended-ack text) from an NLMSG_ERROR payload."""
    code = -struct.unpack_from("=i", buf, a)[0]
    req_len, _, _, seq, _ = _HDR.unpack_from(buf, a + 4)
    text = ""
    hdr_flags = _HDR.unpack_from(buf, a - 16)[2]
    if hdr_flags & NLM_F_ACK_TLVS:
        # the TLVs follow the echoed request (netlink_ack): only its header when the
        # kernel says NLM_F_CAPPED (NETLINK_CAP_ACK, or a success), else all of it
        tlvs = a + 4 + (16 if hdr_flags & NLM_F_CAPPED else (req_len + 3) & ~3)
        for typ, x, y in _attrs(buf, tlvs, end):
            if typ == NLMSGERR_ATTR_MSG:
                text = bytes(buf[x:y]).rstrip(b"\0").decode(errors="replace")
    return code, seq, text


def describe_errno(code: int, text: str = "") -> str:
    return text or os.strerror(code)


def encode(op: Op, ifindex: int, seq: int) -> bytes:
    """One request as bytes: neighbour and fdb entries encoded by pyroute2's ndmsg,
    routes by encode_route()."""
    if op.kind == "route":
        return encode_route(op, ifindex, seq)
    m = ndmsg()
    if op.kind == "neigh":
        m["family"] = family_of(op.key)   # NDA_DST: 4 or 16 bytes, as the family says
        m["ifindex"] = ifindex
        if op.action == "set":
            m["state"] = NUD_PERMANENT
            m["attrs"] = [("NDA_DST", op.key), ("NDA_LLADDR", op.value)]
        else:
            m["attrs"] = [("NDA_DST", op.key)]
    elif op.kind == "fdb":
        m["family"] = AF_BRIDGE
        m["ifindex"] = ifindex
        m["flags"] = NTF_SELF     # the vxlan device's own fdb, not a bridge master's
        m["state"] = NUD_PERMANENT
        attrs = [("NDA_LLADDR", op.key), ("NDA_DST", op.value)]
        e = op.fdb
        if op.action == "del" and e is not None:   # name the exact remote to remove
            attrs += [(n, v) for n, v in (("NDA_PORT", e.port), ("NDA_VNI", e.vni),
                                          ("NDA_IFINDEX", e.rifindex),
                                          ("NDA_SRC_VNI", e.src_vni)) if v is not None]
        m["attrs"] = attrs
    else:
        raise ValueError(op.kind)
    flags = NLM_F_REQUEST | NLM_F_ACK
    if op.action == "set":
        # neighbour and fdb entries are keyed by device: replacing touches only ours
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    elif op.action == "append":
        # the all-zeros fdb entry holds a list of remotes: the kernel adds to it only
        # with NLM_F_APPEND (vxlan_fdb_update_existing), and refuses to replace it
        flags |= NLM_F_CREATE | NLM_F_APPEND
    m["header"]["type"] = RTM_DELNEIGH if op.action == "del" else RTM_NEWNEIGH
    m["header"]["flags"] = flags
    m["header"]["sequence_number"] = seq
    m.encode()
    return m.data


def encode_route(op: Op, ifindex: int, seq: int) -> bytes:
    """RTM_NEWROUTE (create only, tagged RTPROT_VTEP) or RTM_DELROUTE (naming the realised
    route: its table, tos, type, scope, protocol, metric and nexthop, which is what
    fib_table_delete matches on; a delete sent with scope universe misses a scope-link
    route and the kernel answers ESRCH), packed by hand. IPv6 the same with 16-byte
    addresses (ip6_route_del matches the oif, gateway, metric and, when given, the
    protocol); a created IPv6 route names no metric and gets 1024 from the kernel, as
    `ip -6 route add` does."""
    net, plen = op.key.split("/")
    family = family_of(net)
    attrs = bytearray(_ip_attr(RTA_DST, net))
    if op.action == "set":
        mtype = RTM_NEWROUTE
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        # the gateway is on the tunnel, not on a subnet of ours: onlink
        head = _RTMSG.pack(family, int(plen), 0, 0, RT_TABLE_MAIN, RTPROT_VTEP,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK)
        attrs += _RTA_U32.pack(8, RTA_OIF, ifindex)
        attrs += _ip_attr(RTA_GATEWAY, op.value)
    elif op.action == "del":
        mtype, flags = RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK
        r = op.route
        if r is None:   # no dump to repeat: any scope, protocol and type on our device
            r = RouteEntry(op.key, op.value, False, 0, 0, 0, RT_SCOPE_NOWHERE, 0)
        table = r.table if r.table < 256 else 0   # rtm_table is 8 bits; RTA_TABLE has it all
        head = _RTMSG.pack(family, int(plen), 0, r.tos, table, r.proto, r.scope,
                           r.type, 0)
        attrs += _RTA_U32.pack(8, RTA_TABLE, r.table)
        if r.nh_id:   # the kernel refuses a nexthop id together with an oif or a gateway
            attrs += _RTA_U32.pack(8, RTA_NH_ID, r.nh_id)
        else:
            attrs += _RTA_U32.pack(8, RTA_OIF, ifindex)
            if r.gateway:
                attrs += _ip_attr(RTA_GATEWAY, r.gateway)

        if r.priority:
            attrs += _RTA_U32.pack(8, RTA_PRIORITY, r.priority)
    else:
        raise ValueError(op.action)
    size = _HDR.size + len(head) + len(attrs)
    return _HDR.pack(size, mtype, flags, seq, 0) + head + attrs
