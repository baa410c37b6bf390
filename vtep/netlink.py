"""The rtnetlink sockets: realised per-peer state read and written in bulk, and events.

A node at 1,000 peers holds 3,000 entries (neighbour, fdb, route). A resync
must read them all at least every few seconds and a no-op pass must stay far
below the 100 ms budget, so this module:

- dumps each table once per pass, filtered by the kernel to our device
  (NETLINK_GET_STRICT_CHK lets a dump request carry NDA_IFINDEX / RTA_OIF and
  RTA_TABLE filters, kernel >= 4.20);
- decodes only the few attributes it compares, straight from the bytes
  (vtep.nlmsg, the codec; pyroute2's generic decoder costs ~40 us a message,
  120 ms for one pass);
- writes changes batched many to one sendmsg (encoded by vtep.nlmsg), then
  reads the acknowledgements and maps every error back to the entry it
  concerns (Rtnl.apply; pyroute2's nlm_request_batch drops that mapping).

Route ownership: every route we write carries our own protocol number,
RTPROT_VTEP, as routing daemons tag theirs (bird 12, zebra 11, ...), and is
created with NLM_F_EXCL, never NLM_F_REPLACE: IPv4's replace overwrites the
first route of the table with the same (destination, tos, metric) whatever its
device (fib_table_insert), so it would silently take over a connected route or
another daemon's route. The kernel answers EEXIST instead, and the caller
reports the route in the way (main_routes() names it).

Both address families: neighbours and routes are dumped once per family the
caller names. IPv4 is always read (the device cannot turn it off, so a plan
that dropped it still has stale entries to remove); IPv6 only when the plan has
an IPv6 overlay: otherwise IPv6 is off on the device (host.device_ipv6), which
flushes its IPv6 entries and refuses new ones, and a pass at 20,000 peers pays
no round trip for an empty table. IPv6 routes are created with NLM_F_EXCL too:
fib6_add_rt2node answers EEXIST for a route with the same destination and
metric on any device, as IPv4 does.

The event listener shares the decoder: a raw rtnetlink socket subscribed to
the link, neighbour (which carries bridge fdb and both families' neighbour
notifications), IPv4 and IPv6 address and IPv4 and IPv6 route groups, read
without blocking after select().
"""
from __future__ import annotations

import errno
import os
import socket
import struct

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .errors import VtepError
from .nlmsg import (AF_BRIDGE, NDMSG, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR, RTM_DELADDR, RTM_DELLINK, RTM_DELNEIGH, RTM_DELROUTE,
                    RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH,
                    RTM_NEWROUTE, RTPROT_KERNEL, RT_TABLE_MAIN, Realised, U32, decode_addr,
                    decode_neigh, decode_route, describe_errno, encode, messages, parse_error)

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400   # <linux/rtnetlink.h>
IPV4 = (socket.AF_INET,)
IDLE_EVERY = 1000    # decoded entries between two idle() calls
BATCH = 200          # messages per sendmsg: their acks must fit the receive buffer
RCVBUF = 8 << 20


class NetlinkRefused(VtepError):
    """The kernel refused a change; the message names the entry and the reason."""

    exit_code = 1


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
        # Called between netlink round trips and every IDLE_EVERY decoded entries: the
        # userspace VTEP forwards what waits on its fds there, so that a long pass (a
        # resync at 20,000 peers reads 40,000 entries) never stalls its data path.
        self.idle = None

    def close(self):
        self.sock.close()

    def _next_seq(self):
        self.seq = self.seq + 1 if self.seq < 0x7FFFFFF0 else 1000
        return self.seq

    # -- dumps --------------------------------------------------------------------------

    def _dump(self, msg, what: str):
        """Send one dump request (a pyroute2 message); return [(type, buf, off, end)], one
        per reply message, read until NLMSG_DONE."""
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        msg.encode()
        # encoded once: pyroute2 0.9 appends to msg.data on a second encode(), so a redone
        # dump would carry the old bytes behind the request; only the sequence number changes
        request = bytearray(msg.data[:msg["header"]["length"]])
        for _attempt in range(5):
            seq = self._next_seq()
            U32.pack_into(request, 8, seq)   # nlmsghdr.nlmsg_seq
            self.sock.send(request)
            out, interrupted = [], False
            while True:
                n = self.sock.recv_into(self.buf)
                if self.idle is not None:
                    self.idle()
                chunk = bytes(self.buf[:n])
                done = False
                for typ, flags, rseq, a, end in messages(chunk, n):
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
                        code, _, text = parse_error(chunk, a, end)
                        if code:
                            raise NetlinkRefused(f"dumping {what}: {describe_errno(code, text)}")
                        continue
                    out.append((typ, chunk, a, end))
                if done:
                    break
            if not interrupted:
                return out
        raise NetlinkRefused(f"dumping {what}: the table kept changing during the dump")

    def _paced(self, messages):
        """The messages, with idle() called every IDLE_EVERY of them."""
        idle = self.idle
        if idle is None:
            return messages
        return self._every(messages, idle)

    @staticmethod
    def _every(messages, idle):
        for i, m in enumerate(messages):
            if not i % IDLE_EVERY:
                idle()
            yield m

    def neighbours(self, ifindex: int, families=IPV4) -> dict:
        """The neighbour entries of the device in `families` (one dump each: a dump of
        AF_UNSPEC would walk the bridge fdb too)."""
        out = {}
        for family in families:
            m = ndmsg()
            m["family"] = family
            m["attrs"] = [("NDA_IFINDEX", ifindex)]
            m["header"]["type"] = RTM_GETNEIGH
            for _typ, buf, a, end in self._paced(self._dump(m, "neighbours")):
                fam, e = decode_neigh(buf, a, end, ifindex)
                if e is not None and fam == family:
                    out[e.ip] = e
        return out

    def fdb(self, ifindex: int) -> tuple:
        m = ndmsg()
        m["family"] = AF_BRIDGE
        m["attrs"] = [("NDA_IFINDEX", ifindex)]
        m["header"]["type"] = RTM_GETNEIGH
        out = []
        for _typ, buf, a, end in self._paced(self._dump(m, "the fdb")):
            _, e = decode_neigh(buf, a, end, ifindex)
            if e is not None:
                out.append(e)
        return tuple(out)

    def _routes(self, ifindex: int | None, families=IPV4):
        """(oif, RouteEntry) of the main table in `families`, each in the kernel's order
        (of routes with one key, the first is the one used), only those via `ifindex` if
        given. A multipath route has no single oif (None): it is never ours to change."""
        for family in families:
            m = rtmsg()
            m["family"] = family
            m["table"] = RT_TABLE_MAIN
            m["attrs"] = (([("RTA_OIF", ifindex)] if ifindex else [])
                          + [("RTA_TABLE", RT_TABLE_MAIN)])
            m["header"]["type"] = RTM_GETROUTE
            for _typ, buf, a, end in self._paced(self._dump(m, "routes")):
                oif, table, r = decode_route(buf, a, end)
                if r is not None and table == RT_TABLE_MAIN and \
                        (ifindex is None or oif == ifindex) and \
                        (":" in r.dst) == (family == socket.AF_INET6):
                    yield oif, r

    def routes(self, ifindex: int, families=IPV4) -> dict:
        out = {}
        for _oif, r in self._routes(ifindex, families):
            key = (r.dst, r.tos, r.priority)
            if key in out:   # appended behind the first: a key of its own, never planned
                n = 1
                while key + (n,) in out:
                    n += 1
                key += (n,)
            out[key] = r
        return out

    def main_routes(self, keys) -> dict:
        """{(dst, tos, priority): [(oif, RouteEntry), ...]} of the main table for `keys`,
        every device (to name a route in the way; the kernel cannot filter a dump by
        destination, so this reads the whole table: called only after an EEXIST)."""
        keys = set(keys)
        out: dict = {}
        families = sorted({socket.AF_INET6 if ":" in k[0] else socket.AF_INET for k in keys})
        try:
            for oif, r in self._routes(None, families):
                key = (r.dst, r.tos, r.priority)
                if key in keys:
                    out.setdefault(key, []).append((oif, r))
        except OSError as e:
            raise NetlinkRefused(f"reading the main routing table: {e.strerror or e}")
        return out

    def read(self, ifindex: int, families=IPV4) -> Realised:
        """The device's neighbours and routes in `families` (IPv4, and IPv6 when the plan
        has an IPv6 overlay: families_of) and its fdb."""
        try:
            return Realised(self.neighbours(ifindex, families), self.fdb(ifindex),
                            self.routes(ifindex, families))

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
                for typ, _f, _seq, a, end in messages(self.buf, n):
                    if typ != NLMSG_ERROR:
                        continue
                    code, seq, text = parse_error(self.buf, a, end)
                    if seq in pending:
                        pending.discard(seq)
                        if code:
                            failures.append((by_seq[seq], code, text))
            if self.idle is not None:
                self.idle()
        return failures


class Events:
    """Kernel notifications for the link, neighbour/fdb, address and route tables (IPv4
    and IPv6)."""

    def __init__(self):
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        except OSError as e:
            raise NetlinkRefused(f"cannot open an rtnetlink socket: {e.strerror}")
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE))
        s.setblocking(False)
        self.sock = s
        self.buf = bytearray(1 << 20)
        self.idle = None   # as Rtnl.idle

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def drain(self, watched, echo=None, neigh_watched=None) -> tuple[bool, list[str]]:
        """Read every pending notification. Returns (relevant, reasons): relevant when one
        concerns an ifindex in `watched` (or notifications were lost: ENOBUFS). `echo(e)`
        tells an entry that is as planned: an added/changed one that is (our own change
        coming back) and a deleted one that is not (our own removal of a stale entry) are
        not relevant, since a pass would find nothing to do, and a pass at 20,000 peers
        costs a second of the userspace VTEP's forwarding."""
        relevant, reasons = False, []
        idle, count = self.idle, 0
        while True:
            if idle is not None:   # a burst (our own 40,000 changes) is read in slices
                count += 1
                if not count % IDLE_EVERY:
                    idle()
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
            for typ, _f, _s, a, end in messages(self.buf, n):
                hit, why = _event(self.buf, typ, a, end, watched, echo, neigh_watched)
                relevant |= hit
                if why and why not in reasons and len(reasons) < 8:
                    reasons.append(why)


_EVENT_NAMES = {RTM_NEWLINK: "link changed", RTM_DELLINK: "link deleted"}


def _event(buf, typ, a, end, watched, echo, neigh_watched=None):
    """(concerns a watched device, reason or None) for one notification. Neighbour
    entries count only on the devices in `neigh_watched` (default `watched`): the
    underlay's ARP entries go stale and fresh all the time, and none of them is ours."""
    if typ in (RTM_NEWLINK, RTM_DELLINK):
        if U32.unpack_from(buf, a + 4)[0] in watched:   # ifinfomsg: index at offset 4
            return True, _EVENT_NAMES[typ]
    elif typ in (RTM_NEWADDR, RTM_DELADDR):
        if U32.unpack_from(buf, a + 4)[0] in watched:   # ifaddrmsg: index at offset 4
            e = decode_addr(buf, a, end)
            if e is None:
                return True, None   # another family's (none that we know of): a pass

            if typ == RTM_NEWADDR and echo is not None and echo(e):
                return False, None
            what = "added" if typ == RTM_NEWADDR else "deleted"
            return True, f"address {e.ip}/{e.prefixlen} {what}"
    elif typ in (RTM_NEWNEIGH, RTM_DELNEIGH):
        family, e = decode_neigh(buf, a, end)
        idx = NDMSG.unpack_from(buf, a)[1]
        if idx in (watched if neigh_watched is None else neigh_watched) and e is not None:
            deleted = typ == RTM_DELNEIGH
            # our own change coming back: an entry now as planned, or the removal of one
            # that is not in the plan (nothing to put back)
            if echo is not None and echo(e) != deleted:
                return False, None
            kind = "fdb" if family == AF_BRIDGE else "neigh"
            key = f"{e.mac} dst {e.dst}" if family == AF_BRIDGE else e.ip
            return True, f"{kind} {key} {'deleted' if deleted else 'changed'}"
    elif typ in (RTM_NEWROUTE, RTM_DELROUTE):
        oif, table, r = decode_route(buf, a, end)
        if r is not None and oif in watched and table == RT_TABLE_MAIN \
                and r.proto != RTPROT_KERNEL:
            # (a kernel route comes and goes with an address, whose own notification
            # counts: the /128's prefix route is in IPv6's main table; diff never
            # touches one)
            deleted = typ == RTM_DELROUTE
            if echo is not None and echo(r) != deleted:
                return False, None
            return True, f"route {r.dst} {'deleted' if deleted else 'changed'}"
    return False, None


def families_of(device) -> tuple:
    """The address families whose neighbours and routes a pass reads for this desired
    state.Device: IPv4 always, IPv6 when it has an IPv6 VTEP address."""
    return IPV4 + ((socket.AF_INET6,) if device.address6 else ())
