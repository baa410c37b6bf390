"""Many small datagrams per system call: recvmmsg(2) and sendmmsg(2) through ctypes.

Receive: `RecvBatch` owns one bytearray cut into `slots` fixed slots, one
sockaddr slot per datagram and the `struct mmsghdr` vector that points at
them, all built once. `recv(fd)` is one recvmmsg(MSG_DONTWAIT) call; the
kernel writes each datagram into its slot, the sender into its sockaddr slot
and the byte count into `msg_len`. The counts come out as one list in C
(a strided memoryview over the vector's `msg_len` column, `.tolist()`), so
the caller's per-datagram work is its own: `view[i * slot_size:...]`,
`lengths[i]` and, when it cares, `source(i)`, a dict lookup keyed by the raw
address (the text form is made once per sender).

Send: `SendBatch` owns the same vector, pre-pointed at its own slot buffer.
`add()` copies a datagram into the next slot (45 ns for 64 bytes, where
finding the address of a caller's buffer through ctypes costs 300-450), writes
its length into the slot's iovec and points `msg_name` at a sockaddr packed
once per (ip, port); `flush(fd)` hands the whole vector to sendmmsg, calling
again from where the kernel stopped. A datagram longer than a slot is copied
into a buffer of its own for that batch (the rare path: jumbo frames).
On loopback here sendmmsg saves ~250 ns of kernel time a datagram against
sendto, about what `add` costs: batching pays on receive (x1.6), not yet on
send, where the copy and the (ip, port) lookup are what is left to cut.

The vectors are plain bytearrays, written through `memoryview.cast` views
(no ctypes attribute access in the hot path); the offsets are taken from
ctypes mirrors of <bits/socket.h> and <sys/uio.h>, so they follow the ABI
rather than being hand-counted. Linux only (recvmmsg 2.6.33, sendmmsg 3.0).
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

MSG_DONTWAIT = 0x40   # <bits/socket.h>
MSG_TRUNC = 0x20      # in msg_flags: the datagram was longer than its buffer (recvmsg(2))
MAX_DESTS = 65536     # cached sockaddrs before the cache is emptied (at a flush: nothing points in)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),  # socklen_t
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


MMSG_SIZE = ctypes.sizeof(_MMsgHdr)   # 64 on x86-64 and arm64
IOV_SIZE = ctypes.sizeof(_IoVec)
PTR = ctypes.sizeof(ctypes.c_void_p)
PTR_FMT = {4: "I", 8: "Q"}[PTR]       # void * and size_t: one width on Linux ABIs
# word indices into the vector's views: msg_len and msg_flags as u32
LEN_IDX = _MMsgHdr.msg_len.offset // 4
NAMELEN_IDX = _MsgHdr.msg_namelen.offset // 4
FLAGS_IDX = _MsgHdr.msg_flags.offset // 4
STRIDE32 = MMSG_SIZE // 4
STRIDE_P = MMSG_SIZE // PTR
assert _MsgHdr.msg_name.offset == 0  # SendBatch.add writes msg_name at the slot's first word
# sockaddr_in is 16 bytes; sockaddr_in6 28 (family, port, flowinfo, address, scope id),
# kept in 32-byte slots so every address starts aligned
NAME_LEN = {False: 16, True: 28}
NAME_STRIDE = {False: 16, True: 32}

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_get_errno = ctypes.get_errno


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))   # OSError picks the subclass (BlockingIOError, ...)


def _pinned(buf: bytearray) -> tuple[object, int]:
    """A ctypes view that pins `buf` (a bytearray with an export cannot be resized) and its address."""
    c = (ctypes.c_char * len(buf)).from_buffer(buf)
    return c, ctypes.addressof(c)


class _Vector:
    """`slots` mmsghdrs, each with one iovec and one sockaddr slot, pointing at `buf`."""

    def __init__(self, slots: int, slot_size: int, ipv6: bool):
        if slots < 1 or slot_size < 1:
            raise ValueError("slots and slot_size must be positive")
        self.slots, self.slot_size, self.ipv6 = slots, slot_size, ipv6
        self.buf = bytearray(slots * slot_size)
        self.view = memoryview(self.buf)
        self.names = bytearray(slots * NAME_STRIDE[ipv6])
        self.hdrs = bytearray(slots * MMSG_SIZE)
        self.iovs = bytearray(slots * IOV_SIZE)
        self._keep = []
        addr = {}
        for name in ("buf", "names", "hdrs", "iovs"):
            c, addr[name] = _pinned(getattr(self, name))
            self._keep.append(c)
        self.hdr_addr = addr["hdrs"]
        self.buf_addr = addr["buf"]
        hdrs = (_MMsgHdr * slots).from_buffer(self.hdrs)
        iovs = (_IoVec * slots).from_buffer(self.iovs)
        for i in range(slots):
            iovs[i].iov_base = addr["buf"] + i * slot_size
            iovs[i].iov_len = slot_size
            m = hdrs[i].msg_hdr
            m.msg_name = addr["names"] + i * NAME_STRIDE[ipv6]
            m.msg_namelen = NAME_LEN[ipv6]
            m.msg_iov = addr["iovs"] + i * IOV_SIZE
            m.msg_iovlen = 1
        del hdrs, iovs  # their exports would be harmless, but the views below are all we use
        self.h32 = memoryview(self.hdrs).cast("I")
        self.hp = memoryview(self.hdrs).cast(PTR_FMT)
        self.iovp = memoryview(self.iovs).cast(PTR_FMT)   # [2i] iov_base, [2i + 1] iov_len


class RecvBatch:
    """Up to `slots` datagrams of up to `slot_size` bytes per `recv`.

    After `recv` returned `count`: datagram i (i < count) is
    `view[i * slot_size : i * slot_size + lengths[i]]`, its sender `source(i)`
    (and `source_port(i)`). A datagram longer than `slot_size` arrives cut to
    `slot_size` bytes; its index is in `truncated` (a list, empty unless some
    datagram filled its slot exactly, so a hot loop tests it once per batch).
    """

    def __init__(self, slots: int = 64, slot_size: int = 2048, ipv6: bool = False):
        v = self._vec = _Vector(slots, slot_size, ipv6)
        self.slots, self.slot_size, self.ipv6 = slots, slot_size, ipv6
        self.buf, self.view = v.buf, v.view
        self.count = 0
        self.lengths: list[int] = []
        self.truncated: list[int] = []
        self._lens = v.h32[LEN_IDX::STRIDE32]        # msg_len of every slot, a strided view
        self._flags = v.h32[FLAGS_IDX::STRIDE32]
        # recvmmsg writes back each sender's full address length, whatever room it had:
        # a socket of another family (an AF_INET6 socket in an IPv4 batch) would leave a
        # msg_namelen larger than its slot for the next call to overflow, so the used ones are
        # put back after each call (one strided copy, ~4 ns a datagram)
        self._namelens = v.h32[NAMELEN_IDX::STRIDE32]
        self._namelen_init = memoryview(
            bytearray(struct.pack(f"={slots}I", *[NAME_LEN[ipv6]] * slots))).cast("I")
        self._names = v.names
        self._stride = NAME_STRIDE[ipv6]
        self._n32 = memoryview(v.names).cast("I")    # IPv4: the address is word 4i + 1
        self._nview = memoryview(v.names)
        self._sources: dict = {}

    def recv(self, fd: int) -> int:
        """One recvmmsg(fd, MSG_DONTWAIT): the number of datagrams now in the slots, 0 when
        none was waiting (EAGAIN). Any other error raises OSError. EINTR is retried (PEP 475)."""
        while True:
            n = _recvmmsg(fd, self._vec.hdr_addr, self.slots, MSG_DONTWAIT, None)
            if n >= 0:
                break
            e = _get_errno()
            if e == errno.EAGAIN:   # == EWOULDBLOCK on Linux
                self.count = 0
                self.lengths = []
                self.truncated = []
                return 0
            if e != errno.EINTR:
                raise _oserror(e)
        self.count = n
        lengths = self.lengths = self._lens[:n].tolist()
        self._namelens[:n] = self._namelen_init[:n]
        # a cut datagram fills its slot: msg_flags is read only then (recvmsg(2): MSG_TRUNC)
        if self.slot_size in lengths:
            flags = self._flags
            self.truncated = [i for i in range(n) if flags[i] & MSG_TRUNC]
        else:
            self.truncated = []
        return n

    def length(self, i: int) -> int:
        """Bytes of datagram i in its slot (as `lengths[i]`)."""
        return self.lengths[i]

    def payload(self, i: int) -> memoryview:
        """Datagram i as a view into its slot (valid until the next recv)."""
        o = i * self.slot_size
        return self.view[o:o + self.lengths[i]]

    def source(self, i: int) -> str:
        """The sender's IP address of datagram i, as text (IPv4-mapped for IPv4 senders on a
        dual-stack IPv6 socket; the scope of a link-local sender is not part of it)."""
        if self.ipv6:
            o = i * NAME_STRIDE[True] + 8
            key = self._nview[o:o + 16].tobytes()
        else:
            key = self._n32[4 * i + 1]
        ip = self._sources.get(key)
        if ip is None:
            ip = self._learn(i, key)
        return ip

    def _learn(self, i: int, key) -> str:
        o = i * self._stride
        if self.ipv6:
            ip = socket.inet_ntop(socket.AF_INET6, bytes(self._names[o + 8:o + 24]))
        else:
            ip = socket.inet_ntop(socket.AF_INET, bytes(self._names[o + 4:o + 8]))
        if len(self._sources) >= MAX_DESTS:
            self._sources.clear()  # a scan of spoofed sources must not grow it forever
        self._sources[key] = ip
        return ip

    def source_port(self, i: int) -> int:
        o = i * self._stride
        return self._names[o + 2] << 8 | self._names[o + 3]


class SendBatch:
    """Up to `slots` datagrams queued by `add`, sent by one `flush` (sendmmsg).

    After `flush`: `failed` is the index (in the order added) of the datagram
    whose error was returned, or None; everything before it was sent, it and
    everything after it were not.
    """

    def __init__(self, slots: int = 64, ipv6: bool = False, slot_size: int = 2048):
        v = self._vec = _Vector(slots, slot_size, ipv6)
        self.slots, self.slot_size, self.ipv6 = slots, slot_size, ipv6
        self.count = 0
        self.failed: int | None = None
        self._view = v.view
        self._hp = v.hp
        self._iovp = v.iovp
        self._dests: dict[tuple[str, int], int] = {}   # (ip, port) -> address of its sockaddr
        self._dest_bufs: list = []                      # keeps those sockaddrs alive
        self._big: list[tuple[int, object]] = []        # (slot, own buffer) of oversized datagrams

    def add(self, data, length: int, ip: str, port: int) -> bool:
        """Queue data[:length] to (ip, port); False (nothing queued) when the batch is full.
        The bytes are copied: `data` may be reused as soon as this returns."""
        i = self.count
        if i == self.slots:
            return False
        try:
            sa = self._dests[ip, port]
        except KeyError:
            sa = self._dest(ip, port)
        self._hp[i * STRIDE_P] = sa   # msg_name: the first word of the slot's mmsghdr
        if length <= self.slot_size:
            o = i * self.slot_size
            # a whole buffer is copied as it is: slicing it first would cost another view
            self._view[o:o + length] = data if len(data) == length else data[:length]
            self._iovp[2 * i + 1] = length
        else:
            self._add_big(i, data, length)
        self.count = i + 1
        return True

    def _add_big(self, i: int, data, length: int) -> None:
        if len(data) < length:
            raise ValueError(f"length {length} but only {len(data)} bytes given")
        own = (ctypes.c_char * length).from_buffer_copy(memoryview(data)[:length])
        self._big.append((i, own))
        self._iovp[2 * i] = ctypes.addressof(own)
        self._iovp[2 * i + 1] = length

    def _dest(self, ip: str, port: int) -> int:
        """Pack (ip, port) as the batch's sockaddr once; its address goes in msg_name."""
        if self.ipv6:
            host, _, scope = ip.partition("%")
            if ":" not in host:
                host = "::ffff:" + host   # an IPv4 peer through a dual-stack socket
            sid = (int(scope) if scope.isdigit() else socket.if_nametoindex(scope)) if scope else 0
            raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) \
                + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", sid)
        else:
            raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) \
                + socket.inet_pton(socket.AF_INET, ip) + bytes(8)
        if len(self._dests) >= MAX_DESTS and not self.count:
            self._dests.clear()   # only when nothing queued points into the old ones
            self._dest_bufs.clear()
        buf = ctypes.create_string_buffer(raw, len(raw))
        self._dest_bufs.append(buf)
        addr = self._dests[(ip, port)] = ctypes.addressof(buf)
        return addr

    def flush(self, fd: int) -> tuple[int, OSError | None]:
        """sendmmsg everything queued: (datagrams sent, the OSError of the first that failed or
        None). The kernel stops a vector at a failure and reports only the count before it, so
        the call is repeated from there until all went or one call fails outright. The queue is
        empty afterwards either way."""
        n = self.count
        sent = 0
        err = None
        base = self._vec.hdr_addr
        while sent < n:
            r = _sendmmsg(fd, base + sent * MMSG_SIZE, n - sent, 0)
            if r < 0:
                e = _get_errno()
                if e == errno.EINTR:
                    continue
                err = _oserror(e)
                break
            sent += r
        self.failed = sent if err is not None else None
        self.count = 0
        if self._big:
            for i, _ in self._big:   # point those slots back at their own buffer
                self._iovp[2 * i] = self._vec.buf_addr + i * self.slot_size
            self._big.clear()
        if len(self._dests) >= MAX_DESTS:
            self._dests.clear()
            self._dest_bufs.clear()
        return sent, err
