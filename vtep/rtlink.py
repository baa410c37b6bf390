"""Links, addresses and default routes over rtnetlink, in this network namespace or in a
pod's, with the standard library alone.

Why not pyroute2 here: importing it costs ~80 ms (its package imports every family it
knows), and `vtep-cni` is a process a container runtime starts for every ADD, CHECK
and DEL; why not `nsenter ... ip`: a process per step. An RtLink is one NETLINK_ROUTE
socket. Opened with `netns=PATH`, the socket is created inside that namespace
(setns(2) around socket(2): a socket stays in the namespace it was created in), so the
pod side of an attachment is configured from the node's process, as the reference
CNI plugins do it.

Requests are built with struct (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h);
a kernel refusal raises RtError, an OSError carrying the errno and the step, so a
caller maps EEXIST, ENODEV and the rest to what they mean for its entry.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import sys
from typing import NamedTuple

# linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
DUMP_TRIES = 5
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
# linux/if_link.h, linux/if_addr.h, linux/veth.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 10, 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02      # linux/if_addr.h: usable at once, no duplicate address detection
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000

HDR = struct.Struct("=IHHII")          # nlmsghdr
IFINFO = struct.Struct("=BxHiII")      # ifinfomsg
IFADDR = struct.Struct("=BBBBI")       # ifaddrmsg
RTMSG = struct.Struct("=BBBBBBBBI")    # rtmsg
RTA = struct.Struct("=HH")


class RtError(OSError):
    """The kernel refused a request: errno, and which step it was."""


class Link(NamedTuple):
    index: int
    name: str
    mtu: int
    up: bool
    master: int          # 0: no master
    mac: str
    kind: str | None     # IFLA_INFO_KIND: "veth", "bridge", ...; None for a plain device


def _attr(kind: int, data: bytes) -> bytes:
    pad = -(RTA.size + len(data)) % 4
    return RTA.pack(RTA.size + len(data), kind) + data + b"\0" * pad


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=I", v))


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + RTA.size <= end:
        length, kind = RTA.unpack_from(buf, off)
        if length < RTA.size:
            break
        out[kind & 0x3FFF] = buf[off + RTA.size:off + length]   # without NLA_F_NESTED
        off += (length + 3) & ~3
    return out


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


_libc = None


def setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise RtError(e, f"setns: {os.strerror(e)}")


def _go_home(fd: int) -> None:
    """Back to the namespace we came from, or end the process: anything it did next
    (sockets, routes, the next attachment) would happen in the pod's namespace."""
    try:
        setns(fd)
    except RtError as e:
        sys.stderr.write(f"vtep: cannot return to this node's network namespace "
                         f"({e.strerror}): stopping\n")
        os._exit(70)


def in_netns(netns: str | None, fn):
    """fn() called with this thread in the network namespace `netns` (here when None),
    then back home. What it opens (a netlink socket, a /proc/sys/net file) stays bound to
    that namespace whatever the thread does next."""
    if netns is None:
        return fn()
    # setns(2) moves the calling thread only: thread-self, not self (the main thread)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        there = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(there)
            try:
                return fn()
            finally:
                _go_home(home)
        finally:
            os.close(there)
    finally:
        os.close(home)


class RtLink:
    def __init__(self, netns: str | None = None):
        self.seq = 0
        self.interrupted = False
        self.netns = netns   # where the socket lives (None: here), for write_sysctl
        self.sock = in_netns(netns, self._open)

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          socket.NETLINK_ROUTE)
        s.bind((0, 0))
        return s

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RtLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one request ------------------------------------------------------------------------

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send one request; the (type, payload) of each answer message until its ACK or
        the end of its dump. An NLMSG_ERROR with an errno raises RtError naming `what`."""
        if flags & NLM_F_DUMP == NLM_F_DUMP:
            for _ in range(DUMP_TRIES):
                out = self._once(kind, flags, body, what)
                if not self.interrupted:
                    return out
            raise RtError(errno.EAGAIN, f"{what}: the kernel's tables kept changing during "
                                        f"{DUMP_TRIES} dumps")
        return self._once(kind, flags, body, what)

    def _once(self, kind: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        self.seq += 1
        seq = self.seq
        self.interrupted = False
        self.sock.send(HDR.pack(HDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
        out = []
        while True:
            data = self.sock.recv(1 << 17)
            off = 0
            while off + HDR.size <= len(data):
                length, mtype, mflags, mseq, _ = HDR.unpack_from(data, off)
                if length < HDR.size:
                    raise RtError(errno.EPROTO, f"{what}: a malformed netlink answer")
                payload = data[off + HDR.size:off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue   # an answer to an earlier request we gave up on
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise RtError(code, f"{what}: {os.strerror(code)}")
                    return out   # the ACK
                if mflags & NLM_F_DUMP_INTR:   # the table changed during the dump: redo it
                    self.interrupted = True
                if mtype == NLMSG_DONE:
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code > 0:
                        raise RtError(code, f"{what}: {os.strerror(code)}")
                    return out
                out.append((mtype, payload))
                if not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return out

    # --- links ------------------------------------------------------------------------------

    @staticmethod
    def _link(payload: bytes) -> Link:
        _, _, index, flags, _ = IFINFO.unpack_from(payload)
        a = _attrs(payload, IFINFO.size, len(payload))
        kind = None
        if IFLA_LINKINFO in a:
            info = a[IFLA_LINKINFO]
            kind = _cstr(_attrs(info, 0, len(info)).get(IFLA_INFO_KIND, b"")) or None
        mac = ":".join(f"{b:02x}" for b in a.get(IFLA_ADDRESS, b""))
        return Link(index, _cstr(a.get(IFLA_IFNAME, b"")),
                    struct.unpack("=I", a[IFLA_MTU])[0] if IFLA_MTU in a else 0,
                    bool(flags & IFF_UP),
                    struct.unpack("=I", a[IFLA_MASTER])[0] if IFLA_MASTER in a else 0,
                    mac, kind)

    def link(self, name: str) -> Link | None:
        """The device called `name`, or None."""
        try:
            got = self._request(RTM_GETLINK, 0, IFINFO.pack(0, 0, 0, 0, 0) +
                                _str(IFLA_IFNAME, name), f"reading {name}")
        except RtError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        link = self._link(got[0][1]) if got else None
        # the kernel also finds a device by an alternative name (5.5+): not this one
        return link if link is not None and link.name == name else None

    def links(self) -> list[Link]:
        got = self._request(RTM_GETLINK, NLM_F_DUMP, IFINFO.pack(0, 0, 0, 0, 0), "listing links")
        return [self._link(p) for t, p in got if t == RTM_NEWLINK]

    def add_bridge(self, name: str, mac: str | None = None) -> None:
        mac_attr = _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))) if mac else b""
        self._request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                      IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) + mac_attr +
                      _attr(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "bridge")),
                      f"creating bridge {name}")

    def add_veth(self, name: str, mtu: int, peer: str, peer_netns_fd: int) -> None:
        """A veth pair: `name` here, `peer` created directly in the namespace of the fd."""
        peer_msg = (IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, peer) +
                    _u32(IFLA_NET_NS_FD, peer_netns_fd) + _u32(IFLA_MTU, mtu))
        info = _str(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA,
                                                    _attr(VETH_INFO_PEER, peer_msg))
        self._request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                      IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) +
                      _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO, info),
                      f"creating veth {name} (peer {peer})")

    def set_link(self, link: Link, *, up: bool | None = None, mtu: int | None = None,
                 master: int | None = None) -> None:
        """Change what is asked; master=0 takes the device off its bridge."""
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = IFINFO.pack(0, 0, link.index, flags, change)
        if mtu is not None:
            body += _u32(IFLA_MTU, mtu)
        if master is not None:
            body += _u32(IFLA_MASTER, master)
        self._request(RTM_NEWLINK, NLM_F_ACK, body, f"setting up {link.name}")

    def del_link(self, link: Link) -> None:
        self._request(RTM_DELLINK, NLM_F_ACK, IFINFO.pack(0, 0, link.index, 0, 0),
                      f"deleting {link.name}")

    # --- addresses --------------------------------------------------------------------------

    def addresses(self, index: int | None = None) -> list[tuple[str, int, int]]:
        """(address, prefix length, device index) of every IPv4 and IPv6 address, or of
        one device's."""
        got = self._request(RTM_GETADDR, NLM_F_DUMP, IFADDR.pack(0, 0, 0, 0, 0),
                            "listing addresses")
        out = []
        for t, p in got:
            if t != RTM_NEWADDR:
                continue
            family, plen, _, _, idx = IFADDR.unpack_from(p)
            if index is not None and idx != index:
                continue
            a = _attrs(p, IFADDR.size, len(p))
            # IFA_LOCAL is this end on a point-to-point link (IFA_ADDRESS the peer), in
            # both families, as iproute2 reads it
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw:
                out.append((str(ipaddress.ip_address(raw)), plen, idx))
        return out

    def _addr(self, kind: int, flags: int, index: int, ip: str, plen: int, what: str,
              ifa_flags: int = 0) -> None:
        raw = ipaddress.ip_address(ip).packed
        fam = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        self._request(kind, NLM_F_ACK | flags, IFADDR.pack(fam, plen, ifa_flags, 0, index) +
                      _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw), what)

    def add_address(self, index: int, ip: str, plen: int, nodad: bool = False) -> None:
        """Idempotent: an address already there is success. nodad (IPv6): the address is
        usable at once instead of tentative for about a second (`ip -6 address add ...
        nodad`); an IPv6 address already there keeps the flags it was added with."""
        try:
            self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, ip, plen,
                       f"adding {ip}/{plen}", IFA_F_NODAD if nodad else 0)
        except RtError as e:
            if e.errno != errno.EEXIST:
                raise

    def del_address(self, index: int, ip: str, plen: int) -> None:
        self._addr(RTM_DELADDR, 0, index, ip, plen, f"removing {ip}/{plen}")

    # --- routes through a gateway ---------------------------------------------------------

    def gateway_routes(self, index: int | None = None,
                       family: int = socket.AF_INET) -> list[tuple[str, str, int]]:
        """(destination CIDR, gateway, device index) of the main table's routes through a
        gateway (through one device), of `family`: AF_INET (IPv4, the default), AF_INET6,
        or AF_UNSPEC for both."""
        got = self._request(RTM_GETROUTE, NLM_F_DUMP, RTMSG.pack(family, 0, 0, 0, 0,
                                                                   0, 0, 0, 0),
                            "listing routes")
        out = []
        for t, p in got:
            if t != RTM_NEWROUTE:
                continue
            fam, dst_len, _, _, table, _, _, _, _ = RTMSG.unpack_from(p)
            if fam not in (socket.AF_INET, socket.AF_INET6) or \
                    family not in (socket.AF_UNSPEC, fam):
                continue
            a = _attrs(p, RTMSG.size, len(p))
            if RTA_TABLE in a:
                table = struct.unpack("=I", a[RTA_TABLE])[0]
            if table != RT_TABLE_MAIN or RTA_GATEWAY not in a:
                continue
            oif = struct.unpack("=I", a.get(RTA_OIF, b"\0" * 4))[0]
            if index is not None and oif != index:
                continue
            size = 4 if fam == socket.AF_INET else 16
            dst = ipaddress.ip_address(a.get(RTA_DST, b"\0" * size))
            out.append((f"{dst}/{dst_len}", str(ipaddress.ip_address(a[RTA_GATEWAY])), oif))
        return out

    def replace_route(self, dst: str, gateway: str, index: int) -> None:
        """`ip route replace DST via GATEWAY dev INDEX` (DST a CIDR of either family,
        0.0.0.0/0 or ::/0 the default; GATEWAY of the same family)."""
        net = ipaddress.ip_network(dst)
        fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
        body = RTMSG.pack(fam, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                          RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        gw = ipaddress.ip_address(gateway)
        if gw.version != net.version:
            raise ValueError(f"route {dst} via {gateway}: the gateway is of another family")
        self._request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                      body + _attr(RTA_GATEWAY, gw.packed) +
                      _u32(RTA_OIF, index), f"route {dst} via {gateway}")


def write_sysctl(path: str, value: str, netns: str | None = None) -> bool:
    """Make /proc/sys/`path` of the network namespace `netns` (this one when None) say
    `value`; True when it had to be written. Read first, so that a /proc/sys mounted
    read-only (a containerised agent) is no failure when the value is right already.
    /proc/sys/net belongs to the namespace of the thread that opens the file, so the
    thread enters the namespace around the opens (as RtLink does around socket());
    reading and writing go through the fds, wherever the thread is by then."""
    full = f"/proc/sys/{path}"

    def opened():
        rd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
        try:
            wr = os.open(full, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            wr = e
        return rd, wr

    rd, wr = in_netns(netns, opened)
    try:
        if os.read(rd, 64).decode().strip() == value:
            return False
        if isinstance(wr, OSError):
            raise wr
        os.write(wr, value.encode())
        return True
    finally:
        os.close(rd)
        if not isinstance(wr, OSError):
            os.close(wr)
