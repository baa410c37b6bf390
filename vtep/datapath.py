"""The userspace data path's two hot loops: TAP frame -> VXLAN/UDP, and back.

Transmit: a frame read from the TAP device lands in a preallocated buffer
right after room for the UDP and VXLAN headers; the destination MAC picks the
peer from the in-process fdb (broadcast and multicast go to every peer:
head-end replication, as the kernel does with all-zero fdb entries; unknown
unicast is dropped); the UDP source port is a hash of the inner flow (RFC 7348
section 5), and headers are written in place, so one `sendto` sends the
datagram with no concatenation. With the plan's udp_checksum (IPv4; over IPv6
the raw socket has the kernel fill it) the UDP checksum is computed here: the
datagram is summed once (RFC 1071, as one big integer: vtep.checksum) and each
peer adds its pre-summed pseudo-header (RFC 768).

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
import socket
import struct
import zlib

from . import checksum, icmp, inet, wire
from .errors import DeviceLost

# Source ports as the kernel picks them (udp_flow_src_port over the default
# ip_local_port_range 32768-60999).
SPORT_BASE = 32768
SPORT_SPAN = 60999 - 32768 + 1
UDP_HLEN = inet.UDP_HLEN
HEADROOM = UDP_HLEN + wire.HEADER_LEN  # 16: UDP + VXLAN before the frame
# the L4 protocols whose ports join the flow hash
FLOW_PROTOS = (inet.IPPROTO_TCP, inet.IPPROTO_UDP, inet.IPPROTO_SCTP)
FRAGMENT_BITS = inet.IP_MF | inet.IP_OFFMASK  # set in every IPv4 fragment, first or later
MAX_FRAME = 65535

# bad-offload: a TAP super-frame or partial checksum whose headers do not add up
# (vtep.segment refused it); only the offload loops (vtep.offload) count it
TX_DROPS = ("unknown-unicast", "too-big", "send-error", "runt", "bad-offload")
RX_DROPS = ("short", "flags", "reserved", "vni", "runt", "source", "tap-write")


class Counters:
    """Packets and bytes each way, drops by reason, per peer. Plain ints in lists:
    the loops update them with no allocation.

    Packets and bytes are the wire's: VXLAN datagrams, and their bytes from the VXLAN
    header on. Frames are the TAP's: with offloads one frame read can be a 64 KiB
    super-frame sent as dozens of datagrams, and one frame written can be dozens of
    received datagrams coalesced; without offloads a frame is a datagram (a flooded
    frame counts once per peer it went to)."""

    def __init__(self, peers):
        self.tx = [0, 0, 0]   # datagrams, bytes, frames
        self.rx = [0, 0, 0]
        self.tx_drops = dict.fromkeys(TX_DROPS, 0)
        self.icmp_too_big = 0  # errors sent back to inner senders (path MTU discovery)
        self.rx_drops = dict.fromkeys(RX_DROPS, 0)
        # tx datagrams, tx bytes, rx datagrams, rx bytes, tx frames (TAP reads sent there)
        self.peers = {ip: [0, 0, 0, 0, 0] for ip in peers}

    def to_dict(self) -> dict:
        return {
            "tx": {"packets": self.tx[0], "bytes": self.tx[1], "frames": self.tx[2]},
            "rx": {"packets": self.rx[0], "bytes": self.rx[1], "frames": self.rx[2]},
            "tx_drops": dict(self.tx_drops),
            "icmp_too_big": self.icmp_too_big,
            "rx_drops": dict(self.rx_drops),
            # peers that saw traffic: the status file is rewritten every second, and at
            # 20,000 peers a line for each would cost the data path a third of a second
            "peers": {ip: {"tx_packets": c[0], "tx_bytes": c[1], "tx_frames": c[4],
                           "rx_packets": c[2], "rx_bytes": c[3]}
                      for ip, c in self.peers.items() if c[0] or c[2]},
        }


def flow_port(frame, off: int, n: int) -> int:
    """UDP source port for the inner frame at frame[off:off+n], n >= 14 (the transmit
    loop drops anything shorter than an Ethernet header): a hash of its flow.

    IPv4/IPv6 addresses, plus TCP/UDP/SCTP ports when present; other frames
    hash their MAC addresses. One flow keeps one port; flows spread (RFC 7348
    section 5), so underlay ECMP and RSS can tell them apart.
    """
    et = frame[off + 12] << 8 | frame[off + 13]
    if et == inet.ETH_P_IP and n >= 34:
        h = zlib.crc32(frame[off + 26:off + 34])
        # ports right after the header, options or not, and only in an unfragmented
        # packet: a later fragment carries payload there, and all fragments of one
        # datagram must take one path. IHL 5 is tx_batch's inline case: crc32 over
        # the addresses, then the ports, is crc32 over the 12 bytes at once.
        l4 = off + 14 + ((frame[off + 14] & 15) << 2)
        if (frame[off + 23] in FLOW_PROTOS and off + 34 <= l4 <= off + n - 4
                and not (frame[off + 20] << 8 | frame[off + 21]) & FRAGMENT_BITS):
            h = zlib.crc32(frame[l4:l4 + 4], h)
        return SPORT_BASE + h % SPORT_SPAN
    if et == inet.ETH_P_IPV6 and n >= 54:
        a = off + 22
        b = off + 54
        if frame[off + 20] in FLOW_PROTOS and n >= 58:
            b += 4
    else:
        a, b = off, off + 12
    return SPORT_BASE + zlib.crc32(frame[a:b]) % SPORT_SPAN


class Datapath:
    """One node's userspace VTEP: the fdb, the buffers and the two loops.

    tap_readv(buffers) -> n, tap_write(view) -> n, sendto(view, addr) and
    recvfrom_into(buf) -> (n, addr) are the I/O; a non-blocking empty read
    raises BlockingIOError, which ends a batch.

    Each loop moves one frame per I/O call; what costs per frame is kept to
    the calls themselves: buffers, views and the peers' (ip, port) addresses
    are made once (addresses again by set_fdb), one struct call decodes what
    forwarding and the flow hash need, and the total counters are added up in
    locals and written back once per batch. vtep.offload's loops (TAP
    IFF_VNET_HDR with TSO, UDP GSO/GRO) keep this shape with a super-frame in
    place of the frame; these run with `--no-offload` or where offloads are
    unavailable.
    """

    def __init__(self, *, vni: int, port: int, fdb: dict[bytes, str], peers,
                 tap_readv, tap_write, sendto, recvfrom_into, accept_any_source=False,
                 path_mtu=None, overhead: int = wire.OVERHEAD_IPV4, vtep_ips=None,
                 vtep_ip6: bytes | None = None, addr_port: int | None = None, checksum_src: bytes | None = None):
        self.vni = vni
        self.port = port
        # the local IPv4 address (4 bytes) when tx_batch computes the UDP checksum; None
        # sends zero (RFC 7348 section 5) or leaves it to the kernel (IPv6's raw socket)
        self.checksum_src = checksum_src
        # the port in sendto's address: the UDP port for a UDP socket; 0 for the raw
        # sockets userspace.py sends with (an AF_INET6 raw socket reads it as the protocol)
        self.addr_port = port if addr_port is None else addr_port
        self.tap_readv = tap_readv
        self.tap_write = tap_write
        self.sendto = sendto
        self.recvfrom_into = recvfrom_into
        self.accept_any_source = accept_any_source
        # Path MTU discovery through the tunnel: path_mtu(peer ip) -> the kernel's path MTU
        # towards a peer (learnt from ICMP by the DF-set socket); vtep_ips: peer underlay
        # ip -> its VTEP address as 4 bytes, the source of the IPv4 errors we send;
        # vtep_ip6: this node's own IPv6 VTEP address as 16 bytes (None: no IPv6
        # overlay), the source of the IPv6 ones (vtep.icmp says why they differ).
        self.path_mtu = path_mtu
        self.overhead = overhead
        self.vtep_ips = dict(vtep_ips or {})
        self.vtep_ip6 = vtep_ip6
        self.counters = Counters(peers)
        self.set_fdb(fdb, peers)
        self.txbuf = bytearray(HEADROOM + MAX_FRAME)
        wire.pack_into(self.txbuf, UDP_HLEN, vni)  # written once: never changes
        self.txview = memoryview(self.txbuf)
        self.tx_into = [self.txview[HEADROOM:]]  # the frame lands after the headers
        # a UDP payload is at most 65535 - 8 bytes (IPv6's payload length less the UDP
        # header; IPv4's is smaller): MAX_FRAME holds every datagram whole
        self.rxbuf = bytearray(MAX_FRAME)
        self.rxview = memoryview(self.rxbuf)

    def set_fdb(self, fdb: dict[bytes, str], peers) -> None:
        """Swap in a new fdb (SIGHUP); counters of peers that stay are kept.

        The loops use `route` and `flood`, which hold each peer with its
        ready-made (ip, port) address: no tuple is built per frame."""
        self.fdb = dict(fdb)
        self.peer_list = tuple(peers)
        self.allowed = frozenset(self.peer_list)
        port = self.addr_port
        src = self.checksum_src
        # per peer: (ip, sendto's address, the sum of its pseudo-header's addresses and
        # protocol, 0 without a checksum); the datagram's length joins it per frame
        def pseudo(ip):
            if src is None:
                return 0
            return checksum.pseudo_header_sum(src, socket.inet_aton(ip), inet.IPPROTO_UDP, 0)
        self.route = {mac: ((ip, (ip, port), pseudo(ip)),) for mac, ip in self.fdb.items()}
        self.flood = tuple((ip, (ip, port), pseudo(ip)) for ip in self.peer_list)
        old = self.counters.peers
        self.counters.peers = {ip: old.get(ip, [0, 0, 0, 0, 0]) for ip in self.peer_list}

    def tx_batch(self, budget: int = 64) -> int:
        """Move up to `budget` frames from the TAP device to the peers; returns frames read."""
        buf = self.txbuf
        view = self.txview
        into = self.tx_into
        readv = self.tap_readv
        sendto = self.sendto
        route = self.route
        flood = self.flood
        per_peer = self.counters.peers
        drops = self.counters.tx_drops
        port = self.port
        pack_udp = UDP_HEADER.pack_into
        inner = INNER.unpack_from
        crc32 = zlib.crc32
        ipv4 = inet.ETH_P_IP
        flow_protos = FLOW_PROTOS
        fragment_bits = FRAGMENT_BITS
        csum = self.checksum_src is not None
        word_sum = checksum.word_sum
        put16 = U16.pack_into
        packets = octets = done = 0
        try:
            while done < budget:
                try:
                    n = readv(into)
                except BlockingIOError:
                    break
                except OSError as e:
                    # EBADFD: the TAP was deleted under us (`ip link del`); the fd stays
                    # readable forever, so stop here and let the agent recreate it
                    raise DeviceLost(f"reading the TAP device: {e.strerror}") from None
                done += 1
                if n < 14:
                    drops["runt"] += 1
                    continue
                # ethertype, IPv4 version/IHL and protocol are read past a short frame's
                # end (the buffer is MAX_FRAME long); they are used only when n >= 38
                dst, et, vihl, frag, proto = inner(buf, HEADROOM)
                if dst[0] & 1:  # broadcast/multicast: every peer
                    targets = flood
                else:
                    targets = route.get(dst)
                    if targets is None:
                        drops["unknown-unicast"] += 1
                        continue
                # flow_port's IPv4 TCP/UDP/SCTP case, inline: nearly every frame
                if (et == ipv4 and n >= 38 and vihl & 15 == 5 and proto in flow_protos
                        and not frag & fragment_bits):
                    sport = SPORT_BASE + crc32(buf[IPV4_FLOW:IPV4_FLOW + 12]) % SPORT_SPAN
                else:
                    sport = flow_port(buf, HEADROOM, n)
                size = HEADROOM + n
                pack_udp(buf, 0, sport, port, size, 0)
                datagram = view[:size]
                payload = size - UDP_HLEN  # counted as rx counts it: VXLAN header + frame
                if csum:
                    # summed once, reduced: the per-peer arithmetic is on small numbers
                    s = word_sum(datagram) + size   # + the pseudo-header's UDP length
                for peer, addr, pseudo in targets:
                    if csum:
                        c = (s + pseudo) % 0xFFFF
                        # a sum of 0 is 0xFFFF in ones' complement: its checksum, 0, is
                        # sent as 0xFFFF (RFC 768: zero means "no checksum")
                        put16(buf, 6, 0xFFFF - c if c else 0xFFFF)
                    try:
                        sendto(datagram, addr)
                    except OSError as e:
                        if e.errno == errno.EMSGSIZE:
                            drops["too-big"] += 1
                            self.too_big(peer, view[HEADROOM:size])
                        else:
                            drops["send-error"] += 1
                        continue
                    packets += 1
                    octets += payload
                    c = per_peer[peer]
                    c[0] += 1
                    c[1] += payload
                    c[4] += 1
        finally:
            tx = self.counters.tx
            tx[0] += packets
            tx[1] += octets
            tx[2] += packets   # one datagram a frame
        return done

    def too_big(self, peer: str, frame) -> None:
        """`frame` did not fit the path to `peer`: tell its sender (ICMP "fragmentation
        needed" / "packet too big" through the TAP, RFC 7348 4.3). For a super-frame the
        offload loop passes its first segment: what the sender would have sent without
        offloads."""
        if self.path_mtu is None:
            return
        mtu = self.path_mtu(peer)
        if not mtu:
            return
        err = icmp.too_big(frame, mtu - self.overhead, self.vtep_ips.get(peer), self.vtep_ip6)
        if err is None:
            return
        try:
            self.tap_write(err)
        except OSError:
            return
        self.counters.icmp_too_big += 1

    def rx_batch(self, budget: int = 64) -> int:
        """Move up to `budget` datagrams from the UDP socket to the TAP device."""
        buf = self.rxbuf
        view = self.rxview
        recv = self.recvfrom_into
        write = self.tap_write
        word = VXLAN_WORD.unpack_from
        # I flag, our VNI, reserved bits zero
        expect = wire.FLAGS_WORD_I << 32 | self.vni << 8
        allowed = None if self.accept_any_source else self.allowed
        per_peer = self.counters.peers
        drops = self.counters.rx_drops
        packets = octets = done = 0
        try:
            while done < budget:
                try:
                    n, addr = recv(buf)
                except BlockingIOError:
                    break
                done += 1
                # one test passes a well-formed datagram of our VNI; the rest say why not
                if n < MIN_DATAGRAM or word(buf, 0)[0] != expect:
                    drops[rx_reason(buf, n, expect)] += 1
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
                packets += 1
                octets += n
                c = per_peer.get(src)
                if c is not None:
                    c[2] += 1
                    c[3] += n
        finally:
            rx = self.counters.rx
            rx[0] += packets
            rx[1] += octets
            rx[2] += packets   # one TAP write a datagram
        return done


def rx_reason(buf, n: int, expect: int) -> str:
    """Why a datagram that failed rx_batch's one test is dropped, in the order of the checks:
    too short for a header, I flag clear, reserved bits set (RFC 7348 section 5), another
    VNI, an inner frame shorter than an Ethernet header."""
    if n < wire.HEADER_LEN:
        return "short"
    w0, w1 = wire.HEADER.unpack_from(buf, 0)
    if w0 != wire.FLAGS_WORD_I or w1 & wire.VNI_WORD_RESERVED:
        return "flags" if not w0 & wire.FLAGS_WORD_I else "reserved"
    if w1 != expect & 0xFFFFFFFF:
        return "vni"
    return "runt"


UDP_HEADER = struct.Struct("!HHHH")
U16 = struct.Struct("!H")
INNER = struct.Struct("!6s6xHB5xHxB")  # dst MAC, ethertype, IPv4 ver/IHL, flags+offset, proto
VXLAN_WORD = struct.Struct("!Q")     # the whole VXLAN header as one number
IPV4_FLOW = HEADROOM + 26            # IPv4 source, destination, L4 ports: 12 bytes
MIN_DATAGRAM = wire.HEADER_LEN + wire.ETH_HLEN
