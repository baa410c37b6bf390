"""The userspace data path's two hot loops: TAP frame -> VXLAN/UDP, and back.

Transmit: a frame read from the TAP device lands in a preallocated buffer
right after room for the UDP and VXLAN headers; the destination MAC picks the
peer from the in-process fdb (broadcast and multicast go to every peer:
head-end replication, as the kernel does with all-zero fdb entries; unknown
unicast is dropped); the UDP source port is a hash of the inner flow (RFC 7348
section 5), and headers are written in place, so one `sendto` sends the
datagram with no concatenation.

Receive: a datagram lands in another preallocated buffer; only well-formed
VXLAN passes: I flag set, reserved bits zero (RFC 7348 section 5), the plan's
VNI, an inner frame of at least 14 bytes, from a node of the plan. The inner
frame is written to the TAP device from a memoryview.

Every bad packet is dropped and counted by reason, never logged: a flood of
garbage costs counters, not a log storm. The I/O callables are injected, so
the loops run the same against real sockets and TAP fds or against tests.
"""
from __future__ import annotations

import errno
import struct
import zlib

from . import wire

# Source ports as the kernel picks them (udp_flow_src_port over the default
# ip_local_port_range 32768-60999).
SPORT_BASE = 32768
SPORT_SPAN = 60999 - 32768 + 1
HEADROOM = wire.UDP_HLEN + wire.HEADER_LEN  # 16: UDP + VXLAN before the frame
MAX_FRAME = 65535

TX_DROPS = ("unknown-unicast", "too-big", "send-error", "runt")
RX_DROPS = ("short", "flags", "reserved", "vni", "runt", "source", "tap-write")


class Counters:
    """Packets and bytes each way, drops by reason, per peer. Plain ints in lists:
    the loops update them with no allocation."""

    def __init__(self, peers):
        self.tx = [0, 0]
        self.rx = [0, 0]
        self.tx_drops = dict.fromkeys(TX_DROPS, 0)
        self.rx_drops = dict.fromkeys(RX_DROPS, 0)
        self.peers = {ip: [0, 0, 0, 0] for ip in peers}  # tx pkts, tx bytes, rx pkts, rx bytes

    def to_dict(self) -> dict:
        return {
            "tx": {"packets": self.tx[0], "bytes": self.tx[1]},
            "rx": {"packets": self.rx[0], "bytes": self.rx[1]},
            "tx_drops": dict(self.tx_drops),
            "rx_drops": dict(self.rx_drops),
            "peers": {ip: {"tx_packets": c[0], "tx_bytes": c[1], "rx_packets": c[2],
                           "rx_bytes": c[3]} for ip, c in self.peers.items()},
        }


def flow_port(frame, off: int, n: int) -> int:
    """UDP source port for the inner frame at frame[off:off+n]: a hash of its flow.

    IPv4/IPv6 addresses, plus TCP/UDP/SCTP ports when present; other frames
    hash their MAC addresses. One flow keeps one port; flows spread (RFC 7348
    section 5), so underlay ECMP and RSS can tell them apart.
    """
    et = frame[off + 12] << 8 | frame[off + 13] if n >= 14 else 0
    if et == 0x0800 and n >= 34:
        ihl = (frame[off + 14] & 15) << 2
        a = off + 26
        b = off + 34
        if frame[off + 23] in (6, 17, 132) and n >= 14 + ihl + 4 and ihl == 20:
            b += 4
    elif et == 0x86DD and n >= 54:
        a = off + 22
        b = off + 54
        if frame[off + 20] in (6, 17, 132) and n >= 58:
            b += 4
    else:
        a, b = off, off + (12 if n >= 12 else n)
    return SPORT_BASE + zlib.crc32(frame[a:b]) % SPORT_SPAN


class Datapath:
    """One node's userspace VTEP: the fdb, the buffers and the two loops.

    tap_readv(buffers) -> n, tap_write(view) -> n, sendto(view, addr) and
    recvfrom_into(buf) -> (n, addr) are the I/O; a non-blocking empty read
    raises BlockingIOError, which ends a batch.
    """

    def __init__(self, *, vni: int, port: int, fdb: dict[bytes, str], peers,
                 tap_readv, tap_write, sendto, recvfrom_into, accept_any_source=False):
        self.vni = vni
        self.port = port
        self.tap_readv = tap_readv
        self.tap_write = tap_write
        self.sendto = sendto
        self.recvfrom_into = recvfrom_into
        self.accept_any_source = accept_any_source
        self.counters = Counters(peers)
        self.set_fdb(fdb, peers)
        self.txbuf = bytearray(HEADROOM + MAX_FRAME)
        wire.pack_into(self.txbuf, wire.UDP_HLEN, vni)  # written once: never changes
        self.rxbuf = bytearray(MAX_FRAME + 1)

    def set_fdb(self, fdb: dict[bytes, str], peers) -> None:
        """Swap in a new fdb (SIGHUP); counters of peers that stay are kept."""
        self.fdb = dict(fdb)
        self.peer_list = tuple(peers)
        self.allowed = frozenset(self.peer_list)
        old = self.counters.peers
        self.counters.peers = {ip: old.get(ip, [0, 0, 0, 0]) for ip in self.peer_list}

    def tx_batch(self, budget: int = 64) -> int:
        """Move up to `budget` frames from the TAP device to the peers; returns frames read."""
        buf = self.txbuf
        view = memoryview(buf)
        into = [view[HEADROOM:]]
        readv = self.tap_readv
        sendto = self.sendto
        fdb = self.fdb
        peers = self.peer_list
        per_peer = self.counters.peers
        tx = self.counters.tx
        drops = self.counters.tx_drops
        port = self.port
        pack_udp = UDP_HEADER.pack_into
        dst_mac = MAC.unpack_from
        done = 0
        while done < budget:
            try:
                n = readv(into)
            except BlockingIOError:
                break
            done += 1
            if n < 14:
                drops["runt"] += 1
                continue
            if buf[HEADROOM] & 1:  # broadcast/multicast: every peer
                targets = peers
            else:
                dst = fdb.get(dst_mac(buf, HEADROOM)[0])
                if dst is None:
                    drops["unknown-unicast"] += 1
                    continue
                targets = (dst,)
            size = HEADROOM + n
            pack_udp(buf, 0, flow_port(buf, HEADROOM, n), port, size, 0)
            datagram = view[:size]
            for peer in targets:
                try:
                    sendto(datagram, (peer, port))
                except OSError as e:
                    drops["too-big" if e.errno == errno.EMSGSIZE else "send-error"] += 1
                    continue
                tx[0] += 1
                tx[1] += size
                c = per_peer[peer]
                c[0] += 1
                c[1] += size
        return done

    def rx_batch(self, budget: int = 64) -> int:
        """Move up to `budget` datagrams from the UDP socket to the TAP device."""
        buf = self.rxbuf
        view = memoryview(buf)
        recv = self.recvfrom_into
        write = self.tap_write
        unpack = wire.HEADER.unpack_from
        expect = self.vni << 8
        allowed = None if self.accept_any_source else self.allowed
        per_peer = self.counters.peers
        rx = self.counters.rx
        drops = self.counters.rx_drops
        done = 0
        while done < budget:
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            done += 1
            if n < wire.HEADER_LEN:
                drops["short"] += 1
                continue
            w0, w1 = unpack(buf, 0)
            if w0 != 0x08000000 or w1 & 0xFF:
                drops["flags" if not w0 & 0x08000000 else "reserved"] += 1
                continue
            if w1 != expect:
                drops["vni"] += 1
                continue
            if n < wire.HEADER_LEN + wire.ETH_HLEN:
                drops["runt"] += 1
                continue
            src = addr[0]
            if allowed is not None and src not in allowed:
                drops["source"] += 1
                continue
            try:
                write(view[wire.HEADER_LEN:n])
            except OSError:
                drops["tap-write"] += 1
                continue
            rx[0] += 1
            rx[1] += n
            c = per_peer.get(src)
            if c is not None:
                c[2] += 1
                c[3] += n
        return done


UDP_HEADER = struct.Struct("!HHHH")
MAC = struct.Struct("6s")
