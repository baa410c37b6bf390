"""The kernel's side of rtnetlink, built by hand for the unit tests: its numbers, the
messages it sends (dump entries, notifications, acks and errors) and a socket that
answers requests the way the kernel does.

Every value here is spelt out from the kernel's headers, never taken from vtep.netlink:
<linux/netlink.h>, <linux/rtnetlink.h>, <linux/neighbour.h>, <linux/if_addr.h>,
<asm-generic/socket.h>. A wrong constant in the module (NUD_PERMANENT, RTNH_F_ONLINK,
NDA_PORT's byte order, a multicast group...) then makes a test fail, where an
encode-then-decode round trip through the module would not.

Shared by tests/test_netlink_unit.py (the codec, Rtnl and Events) and
tests/test_kernel_unit.py (the order a pass sends its changes in)."""
import socket
import struct

from vtep import netlink

# <linux/netlink.h>
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x100 | 0x200          # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200   # flags of an NLMSG_ERROR
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS = 1, 2
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
# <asm-generic/socket.h>
SO_RCVBUF, SO_RCVBUFFORCE = 8, 33
# <linux/rtnetlink.h>
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 4, 5, 6, 7
RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 9, 15, 30
RTNH_F_DEAD, RTNH_F_ONLINK, RTNH_F_LINKDOWN = 1, 4, 16
RT_TABLE_UNSPEC, RT_TABLE_COMPAT, RT_TABLE_MAIN, RT_TABLE_LOCAL = 0, 252, 254, 255
RTN_UNICAST, RTN_LOCAL, RTN_BLACKHOLE = 1, 2, 6
SCOPE_UNIVERSE, SCOPE_LINK, SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
PROTO_KERNEL, PROTO_BOOT, PROTO_STATIC = 2, 3, 4
PROTO_VTEP = 118                    # the number the README documents
# <linux/socket.h>
AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
# <linux/neighbour.h>
NUD_REACHABLE, NUD_STALE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x02, 0x04, 0x20, 0x40, 0x80
NTF_SELF, NTF_MASTER = 0x02, 0x04
NDA_DST, NDA_LLADDR, NDA_CACHEINFO, NDA_PROBES = 1, 2, 3, 4
NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_MASTER, NDA_SRC_VNI = 6, 7, 8, 9, 11
# <linux/if_addr.h>
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_CACHEINFO = 1, 2, 3, 6

MAC = "5a:0c:71:86:59:11"
MAC_BYTES = bytes.fromhex("5a0c71865911")


def nla(typ, data):
    """One attribute: u16 length (header included, padding not), u16 type, data, padded to 4."""
    return struct.pack("=HH", 4 + len(data), typ) + data + bytes(-len(data) % 4)


def message(typ, flags, seq, body, pid=0):
    """One message: struct nlmsghdr (u32 len, u16 type, u16 flags, u32 seq, u32 pid), body,
    padded to 4 as NLMSG_ALIGN does (nlmsg_len itself leaves the padding out)."""
    return struct.pack("=IHHII", 16 + len(body), typ, flags, seq, pid) + body \
        + bytes(-len(body) % 4)


def ndm(family, ifindex, state, flags=0, ntype=0):
    # struct ndmsg: u8 family, u8 pad1, u16 pad2, s32 ifindex, u16 state, u8 flags, u8 type
    return struct.pack("=BBHiHBB", family, 0, 0, ifindex, state, flags, ntype)


def rtm(family, dst_len, table, proto, scope, rtype, flags=0, tos=0):
    # struct rtmsg: family dst_len src_len tos table protocol scope type (u8 each), u32 flags
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, tos, table, proto, scope, rtype, flags)


def ifa(family, prefixlen, index, flags=0x80, scope=0):
    # struct ifaddrmsg: u8 family, prefixlen, flags, scope; u32 index
    return struct.pack("=BBBBI", family, prefixlen, flags, scope, index)


def ifinfo(index, flags=0x1043, family=0, dev_type=1):
    # struct ifinfomsg: u8 family, u8 pad, u16 type, s32 index, u32 flags, u32 change
    return struct.pack("=BxHiII", family, dev_type, index, flags, 0)


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


def err(seq, code, request=b"", tlvs=b"", flags=NLM_F_CAPPED, req_type=RTM_NEWROUTE,
        req_len=None):
    """An NLMSG_ERROR as netlink_ack builds it: -errno, the request's header (its payload
    too when not NLM_F_CAPPED), then the extended-ack TLVs (NLM_F_ACK_TLVS). code 0: an ACK."""
    ln = req_len if req_len is not None else 16 + len(request)
    echoed = struct.pack("=IHHII", ln, req_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + request
    return message(NLMSG_ERROR, flags | (NLM_F_ACK_TLVS if tlvs else 0), seq,
                 struct.pack("=i", -code) + echoed + tlvs)


def done(seq, code=0):
    """NLMSG_DONE closing a dump: its payload is the dump's error, an int (0, or -errno)."""
    return message(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", -code))


class FakeKernel:
    """Stands in for the rtnetlink socket: records every datagram sent, answers each from
    `answer(datagram)` (a list of datagrams), one per recv, as netlink does. An exception
    in the answer is raised by the recv that reaches it (ENOBUFS: the kernel dropped some);
    send_error, if set, is raised by every send."""

    def __init__(self, answer):
        self.answer, self.sent, self.queue = answer, [], []
        self.send_error = None

    def send(self, data):
        if self.send_error is not None:
            raise self.send_error
        data = bytes(data)
        self.sent.append(data)
        self.queue += self.answer(data)
        return len(data)

    def recv_into(self, buf):
        d = self.queue.pop(0)
        if isinstance(d, BaseException):
            raise d
        n = min(len(d), len(buf))   # a datagram longer than the buffer is cut (MSG_TRUNC)
        buf[:n] = d[:n]
        return n

    def close(self):
        pass


class Notifications(FakeKernel):
    """Stands in for the event socket (non-blocking, bound to the multicast groups): holds
    pending notifications (datagrams, or an exception such as ENOBUFS to raise in turn),
    then raises BlockingIOError as an empty non-blocking socket does. `read` counts the
    recv calls that returned a datagram."""

    def __init__(self, *pending):
        super().__init__(lambda data: [])
        self.queue, self.read = list(pending), 0

    def recv_into(self, buf):
        if not self.queue:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        n = super().recv_into(buf)
        self.read += 1
        return n


def acks(refuse=None):
    """An answer: one ack per request, in one datagram each, behind a stray error that is no
    request of ours; refuse: {seq: (errno, text)} refused instead."""
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
    """A vtep.netlink.Rtnl talking to `fake` instead of the kernel."""
    rt = netlink.Rtnl()
    rt.sock.close()
    rt.sock = fake
    return rt
