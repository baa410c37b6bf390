"""Realised per-peer state of the kernel VTEP, read and written in bulk over rtnetlink.

A node at 1,000 peers holds 3,000 entries (neighbour, fdb, route). A resync
must read them all at least every few seconds and a no-op pass must stay far
below the 100 ms budget, so this module:

- dumps each table once per pass, filtered by the kernel to our device
  (NETLINK_GET_STRICT_CHK lets a dump request carry NDA_IFINDEX / RTA_OIF and
  RTA_TABLE filters, kernel >= 4.20);
- decodes only the few attributes it compares, straight from the bytes
  (pyroute2's generic decoder costs ~40 us a message, 120 ms for one pass);
- writes changes as pyroute2-encoded messages (ndmsg, rtmsg) batched many to
  one sendmsg, then reads the acknowledgements and maps every error back to
  the entry it concerns (pyroute2's nlm_request_batch drops that mapping).

The event listener shares the decoder: a raw rtnetlink socket subscribed to
the link, neighbour (which carries bridge fdb notifications too), IPv4
address and IPv4 route groups, read without blocking after select().
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink import (NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE,
                              NLM_F_REQUEST)
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .errors import VtepError

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/neighbour.h>
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_MULTI, NLM_F_DUMP_INTR = 0x2, 0x10
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
NDA_DST, NDA_LLADDR, NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_SRC_VNI = 1, 2, 6, 7, 8, 11
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
IFA_ADDRESS, IFA_LOCAL = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254
RTPROT_KERNEL, RTPROT_BOOT = 2, 3   # RTPROT_BOOT: what `ip route add` uses by default
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
AF_BRIDGE = 7

_HDR = struct.Struct("=IHHII")      # nlmsghdr
_NLA = struct.Struct("=HH")         # nlattr
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table proto scope type flags
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
BATCH = 200          # messages per sendmsg: their acks must fit the receive buffer
RCVBUF = 8 << 20


class NetlinkRefused(VtepError):
    """The kernel refused a change; the message names the entry and the reason."""

    exit_code = 1


def _ntop(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


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
    dst: str            # CIDR
    gateway: str | None
    onlink: bool
    priority: int
    tos: int
    proto: int
    scope: int
    type: int


@dataclass(frozen=True)
class Realised:
    neighbours: dict          # ip -> NeighEntry (IPv4 only: the overlay is IPv4)
    fdb: tuple                # FdbEntry, remotes only (entries with NDA_DST)
    routes: dict              # (dst, tos, priority) -> RouteEntry, main table


@dataclass(frozen=True)
class Op:
    """One netlink change. kind: neigh|fdb|route; action: set (create or replace) | del."""
    kind: str
    action: str
    key: str                  # neigh: ip; fdb: mac; route: dst CIDR
    value: str | None = None  # neigh: mac; fdb: underlay dst; route: gateway
    priority: int = 0         # route del
    tos: int = 0              # route del
    fdb: FdbEntry | None = None  # fdb del: the realised remote, overrides included


def decode_neigh(buf, off, end, ifindex=None):
    """(family, NeighEntry|FdbEntry|None) from one RTM_*NEIGH message payload."""
    family, idx, state, flags, _ = _NDMSG.unpack_from(buf, off)
    if ifindex is not None and idx != ifindex:
        return family, None
    dst = mac = port = vni = rif = svni = None
    for typ, a, b in _attrs(buf, off + _NDMSG.size, end):
        if typ == NDA_DST:
            dst = _ntop(bytes(buf[a:b]))
        elif typ == NDA_LLADDR:
            mac = bytes(buf[a:b]).hex(":")
        elif typ == NDA_PORT:
            port = _BE16.unpack_from(buf, a)[0]
        elif typ == NDA_VNI:
            vni = _U32.unpack_from(buf, a)[0]
        elif typ == NDA_IFINDEX:
            rif = _U32.unpack_from(buf, a)[0]
        elif typ == NDA_SRC_VNI:
            svni = _U32.unpack_from(buf, a)[0]
    if family == AF_BRIDGE:
        if dst is None or mac is None:   # the device's own address lists, not remotes
            return family, None
        return family, FdbEntry(mac, dst, state, port, vni, rif, svni)
    if family == socket.AF_INET and dst is not None:
        return family, NeighEntry(dst, mac, state)
    return family, None


@dataclass(frozen=True)
class AddrEntry:
    ip: str
    prefixlen: int


def decode_addr(buf, off, end) -> AddrEntry | None:
    """The IPv4 address of one RTM_*ADDR message payload (ifaddrmsg + IFA_LOCAL)."""
    family, plen = buf[off], buf[off + 1]
    if family != socket.AF_INET:
        return None
    ip = None
    for typ, a, b in _attrs(buf, off + 8, end):
        if typ in (IFA_ADDRESS, IFA_LOCAL) and (ip is None or typ == IFA_LOCAL):
            ip = socket.inet_ntop(socket.AF_INET, bytes(buf[a:b]))
    return AddrEntry(ip, plen) if ip else None


def decode_route(buf, off, end):
    """(oif, table, RouteEntry|None) from one RTM_*ROUTE message payload (IPv4)."""
    family, dlen, _, tos, table, proto, scope, typ_, flags = _RTMSG.unpack_from(buf, off)
    if family != socket.AF_INET:
        return None, None, None
    dst, gw, oif, prio = "0.0.0.0", None, None, 0
    for typ, a, b in _attrs(buf, off + _RTMSG.size, end):
        if typ == RTA_DST:
            dst = socket.inet_ntop(socket.AF_INET, bytes(buf[a:b]))
        elif typ == RTA_GATEWAY:
            gw = socket.inet_ntop(socket.AF_INET, bytes(buf[a:b]))
        elif typ == RTA_OIF:
            oif = _U32.unpack_from(buf, a)[0]
        elif typ == RTA_PRIORITY:
            prio = _U32.unpack_from(buf, a)[0]
        elif typ == RTA_TABLE:
            table = _U32.unpack_from(buf, a)[0]
    return oif, table, RouteEntry(f"{dst}/{dlen}", gw, bool(flags & RTNH_F_ONLINK), prio, tos,
                                  proto, scope, typ_)


def _messages(buf, n):
    """Yield (type, flags, seq, payload_off, end) for each netlink message in buf[:n]."""
    off = 0
    while off + 16 <= n:
        ln, typ, flags, seq, _ = _HDR.unpack_from(buf, off)
        if ln < 16:
            return
        yield typ, flags, seq, off + 16, off + ln
        off += (ln + 3) & ~3


def _error(buf, a, end):
    """(errno, seq of the request, extended-ack text) from an NLMSG_ERROR payload."""
    code = -struct.unpack_from("=i", buf, a)[0]
    seq = _HDR.unpack_from(buf, a + 4)[3]
    text = ""
    # NETLINK_CAP_ACK: only the request's header is echoed, then the TLVs
    hdr_flags = _HDR.unpack_from(buf, a - 16)[2]
    if hdr_flags & NLM_F_ACK_TLVS:
        for typ, x, y in _attrs(buf, a + 4 + 16, end):
            if typ == NLMSGERR_ATTR_MSG:
                text = bytes(buf[x:y]).rstrip(b"\0").decode(errors="replace")
    return code, seq, text


def describe_errno(code: int, text: str = "") -> str:
    return text or os.strerror(code)


class Rtnl:
    """A request socket: filtered dumps, and batched changes with per-entry errors."""

    def __init__(self):
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        except OSError as e:
            raise NetlinkRefused(f"cannot open an rtnetlink socket: {e.strerror}")
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            s.setsockopt(SOL_NETLINK, opt, 1)
        try:   # room for a whole batch of acks and large dump chunks
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((0, 0))
        self.sock = s
        self.seq = 1000
        self.buf = bytearray(1 << 20)

    def close(self):
        self.sock.close()

    def _next_seq(self):
        self.seq = self.seq + 1 if self.seq < 0x7FFFFFF0 else 1000
        return self.seq

    # -- dumps --------------------------------------------------------------------------

    def _dump(self, msg, what: str):
        """Send one dump request (a pyroute2 message); return [(type, buf, off, end)], one
        per reply message, read until NLMSG_DONE."""
        for _attempt in range(5):
            seq = self._next_seq()
            msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
            msg["header"]["sequence_number"] = seq
            msg.encode()
            self.sock.send(msg.data)
            out, interrupted = [], False
            while True:
                n = self.sock.recv_into(self.buf)
                chunk = bytes(self.buf[:n])
                done = False
                for typ, flags, rseq, a, end in _messages(chunk, n):
                    if rseq != seq:
                        continue   # a late ack of an earlier request: not ours
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True   # the table changed under the dump: redo it
                    if typ == NLMSG_DONE:   # its payload is the dump's error code
                        code = -struct.unpack_from("=i", chunk, a)[0] if end - a >= 4 else 0
                        if code > 0:
                            raise NetlinkRefused(f"dumping {what}: {os.strerror(code)}")
                        done = True
                        break
                    if typ == NLMSG_ERROR:
                        code, _, text = _error(chunk, a, end)
                        if code:
                            raise NetlinkRefused(f"dumping {what}: {describe_errno(code, text)}")
                        continue
                    out.append((typ, chunk, a, end))
                if done:
                    break
            if not interrupted:
                return out
        raise NetlinkRefused(f"dumping {what}: the table kept changing during the dump")

    def neighbours(self, ifindex: int) -> dict:
        m = ndmsg()
        m["family"] = socket.AF_INET
        m["attrs"] = [("NDA_IFINDEX", ifindex)]
        m["header"]["type"] = RTM_GETNEIGH
        out = {}
        for _typ, buf, a, end in self._dump(m, "neighbours"):
            _, e = decode_neigh(buf, a, end, ifindex)
            if e is not None:
                out[e.ip] = e
        return out

    def fdb(self, ifindex: int) -> tuple:
        m = ndmsg()
        m["family"] = AF_BRIDGE
        m["attrs"] = [("NDA_IFINDEX", ifindex)]
        m["header"]["type"] = RTM_GETNEIGH
        out = []
        for _typ, buf, a, end in self._dump(m, "the fdb"):
            _, e = decode_neigh(buf, a, end, ifindex)
            if e is not None:
                out.append(e)
        return tuple(out)

    def routes(self, ifindex: int) -> dict:
        m = rtmsg()
        m["family"] = socket.AF_INET
        m["table"] = RT_TABLE_MAIN
        m["attrs"] = [("RTA_OIF", ifindex), ("RTA_TABLE", RT_TABLE_MAIN)]
        m["header"]["type"] = RTM_GETROUTE
        out = {}
        for _typ, buf, a, end in self._dump(m, "routes"):
            oif, table, r = decode_route(buf, a, end)
            if r is not None and oif == ifindex and table == RT_TABLE_MAIN:
                out[(r.dst, r.tos, r.priority)] = r
        return out

    def read(self, ifindex: int) -> Realised:
        try:
            return Realised(self.neighbours(ifindex), self.fdb(ifindex), self.routes(ifindex))
        except OSError as e:
            raise NetlinkRefused(f"reading the entries of ifindex {ifindex}: {e.strerror or e}")

    # -- changes ------------------------------------------------------------------------

    def apply(self, ops, ifindex: int) -> list:
        """Send `ops` in order, BATCH to a sendmsg (the kernel handles them one after the
        other, in order). Returns [(op, errno, text)] for those it refused; all are tried."""
        ops = list(ops)
        failures = []
        for i in range(0, len(ops), BATCH):
            chunk = ops[i:i + BATCH]
            data = bytearray()
            by_seq = {}
            for op in chunk:
                seq = self._next_seq()
                by_seq[seq] = op
                data += encode(op, ifindex, seq)
            try:
                self.sock.send(data)
            except OSError as e:
                raise NetlinkRefused(f"sending {len(chunk)} changes: {e.strerror or e}")
            pending = set(by_seq)
            while pending:
                try:
                    n = self.sock.recv_into(self.buf)
                except OSError as e:
                    if e.errno == errno.ENOBUFS:   # acks lost: the next pass re-reads anyway
                        raise NetlinkRefused("netlink acknowledgements overflowed the socket "
                                             "buffer; the next pass re-reads the state")
                    raise NetlinkRefused(f"reading acknowledgements: {e.strerror or e}")
                for typ, _f, _seq, a, end in _messages(self.buf, n):
                    if typ != NLMSG_ERROR:
                        continue
                    code, seq, text = _error(self.buf, a, end)
                    if seq in pending:
                        pending.discard(seq)
                        if code:
                            failures.append((by_seq[seq], code, text))
        return failures


def encode(op: Op, ifindex: int, seq: int) -> bytes:
    """One request as bytes, encoded by pyroute2's message classes."""
    if op.kind == "neigh":
        m = ndmsg()
        m["family"] = socket.AF_INET
        m["ifindex"] = ifindex
        if op.action == "set":
            m["state"] = NUD_PERMANENT
            m["attrs"] = [("NDA_DST", op.key), ("NDA_LLADDR", op.value)]
        else:
            m["attrs"] = [("NDA_DST", op.key)]
        mtype = RTM_NEWNEIGH if op.action == "set" else RTM_DELNEIGH
    elif op.kind == "fdb":
        m = ndmsg()
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
        mtype = RTM_NEWNEIGH if op.action == "set" else RTM_DELNEIGH
    elif op.kind == "route":
        m = rtmsg()
        net, plen = op.key.split("/")
        m["family"] = socket.AF_INET
        m["dst_len"] = int(plen)
        m["table"] = RT_TABLE_MAIN
        m["tos"] = op.tos
        attrs = [("RTA_DST", net), ("RTA_OIF", ifindex)]
        if op.action == "set":
            m["proto"] = RTPROT_BOOT
            m["scope"] = RT_SCOPE_UNIVERSE
            m["type"] = RTN_UNICAST
            m["flags"] = RTNH_F_ONLINK   # the gateway is on the tunnel, not on a subnet of ours
            attrs.append(("RTA_GATEWAY", op.value))
        elif op.priority:
            attrs.append(("RTA_PRIORITY", op.priority))
        m["attrs"] = attrs
        mtype = RTM_NEWROUTE if op.action == "set" else RTM_DELROUTE
    else:
        raise ValueError(op.kind)
    flags = NLM_F_REQUEST | NLM_F_ACK
    if op.action == "set":
        flags |= NLM_F_CREATE | NLM_F_REPLACE   # ensure: create, or overwrite what differs
    m["header"]["type"] = mtype
    m["header"]["flags"] = flags
    m["header"]["sequence_number"] = seq
    m.encode()
    return m.data


class Events:
    """Kernel notifications for the link, neighbour/fdb, IPv4 address and route tables."""

    def __init__(self):
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        except OSError as e:
            raise NetlinkRefused(f"cannot open an rtnetlink socket: {e.strerror}")
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        s.setblocking(False)
        self.sock = s
        self.buf = bytearray(1 << 20)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def drain(self, watched, echo=None) -> tuple[bool, list[str]]:
        """Read every pending notification. Returns (relevant, reasons): relevant when one
        concerns an ifindex in `watched` (or notifications were lost: ENOBUFS). `echo(e)`
        tells an added/changed entry that already is as planned (our own change coming
        back); such entries still count as relevant but give no reason."""
        relevant, reasons = False, []
        while True:
            try:
                n = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return relevant, reasons
            except OSError as e:
                if e.errno == errno.ENOBUFS:   # the kernel dropped some: assume the worst
                    relevant = True
                    reasons.append("lost netlink notifications")
                    continue
                raise NetlinkRefused(f"reading netlink notifications: {e.strerror or e}")
            for typ, _f, _s, a, end in _messages(self.buf, n):
                hit, why = _event(self.buf, typ, a, end, watched, echo)
                relevant |= hit
                if why and why not in reasons and len(reasons) < 8:
                    reasons.append(why)


_EVENT_NAMES = {RTM_NEWLINK: "link changed", RTM_DELLINK: "link deleted"}


def _event(buf, typ, a, end, watched, echo):
    """(concerns a watched device, reason or None) for one notification."""
    if typ in (RTM_NEWLINK, RTM_DELLINK):
        if _U32.unpack_from(buf, a + 4)[0] in watched:   # ifinfomsg: index at offset 4
            return True, _EVENT_NAMES[typ]
    elif typ in (RTM_NEWADDR, RTM_DELADDR):
        if _U32.unpack_from(buf, a + 4)[0] in watched:   # ifaddrmsg: index at offset 4
            e = decode_addr(buf, a, end)
            if e is None:
                return True, None   # IPv6 link-local and the like: not ours to manage
            if typ == RTM_NEWADDR and echo is not None and echo(e):
                return True, None
            what = "added" if typ == RTM_NEWADDR else "deleted"
            return True, f"address {e.ip}/{e.prefixlen} {what}"
    elif typ in (RTM_NEWNEIGH, RTM_DELNEIGH):
        family, e = decode_neigh(buf, a, end)
        idx = _NDMSG.unpack_from(buf, a)[1]
        if idx in watched and e is not None:
            deleted = typ == RTM_DELNEIGH
            if not deleted and echo is not None and echo(e):
                return True, None
            kind = "fdb" if family == AF_BRIDGE else "neigh"
            key = f"{e.mac} dst {e.dst}" if family == AF_BRIDGE else e.ip
            return True, f"{kind} {key} {'deleted' if deleted else 'changed'}"
    elif typ in (RTM_NEWROUTE, RTM_DELROUTE):
        oif, table, r = decode_route(buf, a, end)
        if r is not None and oif in watched and table == RT_TABLE_MAIN:
            deleted = typ == RTM_DELROUTE
            if not deleted and echo is not None and echo(r):
                return True, None
            return True, f"route {r.dst} {'deleted' if deleted else 'changed'}"
    return False, None
