"""The userspace data path with offloads: 64 KiB per system call instead of 1.5 KiB.

Transmit: the TAP is opened with IFF_VNET_HDR and TSO/USO/checksum offloads
(vtep.tapdev), so one read returns a virtio-net header and up to 64 KiB of one
flow. The fdb and the flow hash pick the peers and a send socket exactly as the
per-frame loop does (Datapath.route/flood, datapath.flow_port); a super-frame
is cut into inner segments by vtep.segment, each behind its VXLAN header, and
goes to each peer in one `sendmsg` with UDP_SEGMENT: the kernel makes one
datagram per segment (outer IP, UDP and its checksum). A frame the kernel left
CHECKSUM_PARTIAL is completed first. Send sockets are plain UDP sockets
(UDP_SEGMENT does not work on raw ones), a pool of them on kernel-chosen
ports: the flow hash picks one, so one inner flow keeps one source port and
flows spread over the pool (RFC 7348 section 5). Each sets DF (RFC 7348 4.3);
a segment too big for the path fails the send and answers the inner sender
with the first segment's ICMP too-big, as a frame of that size would.

Receive: with UDP_GRO one read returns many datagrams of one sender with
their segment size; several reads fill one buffer. Each datagram passes the
checks of Datapath.rx_batch (counted by reason with datapath.rx_reason), and
vtep.coalesce merges consecutive TCP segments of one flow into super-frames,
written to the TAP with a virtio-net header in one `writev` each.

Composition: an OffloadPath is given the Datapath whose fdb, counters and path
MTU discovery it shares; set_fdb on a SIGHUP works for both loops.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import zlib

import numpy as np

from . import datapath, vnet
from .coalesce import Coalescer
from .datapath import FLOW_PROTOS, FRAGMENT_BITS, INNER, SPORT_BASE, SPORT_SPAN, VXLAN_WORD
from .errors import DeviceLost
from .inet import ETH_P_IP
from .segment import Segmenter, SegmentError, complete_checksum
from .tapdev import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, SOL_UDP, UDP_GRO, UDP_SEGMENT
from .wire import FLAGS_WORD_I, HEADER_LEN, pack_into

RX_BUFFER = 8 << 16   # received datagrams coalesced at once: 8 reads of up to 64 KiB
ANCILLARY = socket.CMSG_SPACE(4)
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")


VECTOR_MIN = 8         # datagrams in a read from which numpy checks their headers at once


def _all_headers(buf, pos: int, stride: int, count: int, expect: int) -> bool:
    """Whether the `count` VXLAN headers at pos, pos + stride, ... are all `expect`: one
    strided numpy view in place of a loop over the read's datagrams."""
    return bool((np.ndarray((count,), ">u8", buf, pos, (stride,)) == expect).all())


class OffloadPath:
    """The offload loops of one node, sharing a Datapath's fdb and counters.

    tap_fd: the TAP (IFF_VNET_HDR, offloads on); pool: the send sockets (UDP_SEGMENT);
    rx: the receive socket (UDP_GRO on, where the kernel has it: TapLink sets it)."""

    def __init__(self, dp: datapath.Datapath, tap_fd: int, pool: list[socket.socket],
                 rx: socket.socket):
        self.dp = dp
        self.tap_fd = tap_fd
        self.sends = tuple(s.sendto for s in pool)
        self.sendmsgs = tuple(s.sendmsg for s in pool)
        self.rx = rx
        self.vhdr = bytearray(vnet.LEN)
        # [VXLAN header][frame]: a plain frame is sent from here as it was read
        self.txbuf = bytearray(HEADER_LEN + datapath.MAX_FRAME)
        pack_into(self.txbuf, 0, dp.vni)
        self.txview = memoryview(self.txbuf)
        self.tx_into = [memoryview(self.vhdr), self.txview[HEADER_LEN:]]
        self.segmenter = Segmenter(bytes(self.txbuf[:HEADER_LEN]))
        self.train = bytearray(GSO_MAX_BYTES)   # small datagrams for one send (tx_batch)
        self.trainview = memoryview(self.train)
        self.rxbuf = bytearray(RX_BUFFER)
        self.rxview = memoryview(self.rxbuf)
        self.coalescer = Coalescer()
        self.cmsgs: dict[int, list] = {}   # segment size -> its UDP_SEGMENT cmsg

    def tx_batch(self, budget: int = 64) -> int:
        """Move up to `budget` frames (super-frames count one) from the TAP to the peers.

        Plain frames in a row for one peer and one send socket, of one size (the last
        may be shorter), wait in a train and go in one UDP_SEGMENT send: pure ACKs and
        small UDP flows cost one system call per train, not per frame. Anything else
        sends the train first, so the order on the wire is the order read."""
        dp = self.dp
        buf = self.txbuf
        view = self.txview
        into = self.tx_into
        hdr = self.vhdr
        fd = self.tap_fd
        readv = os.readv
        route = dp.route
        flood = dp.flood
        drops = dp.counters.tx_drops
        sends = self.sends
        pool = len(sends)
        inner = INNER.unpack_from
        vhead = vnet.HEADER.unpack_from
        crc32 = zlib.crc32
        ipv4 = ETH_P_IP
        flow_protos = FLOW_PROTOS
        fragment_bits = FRAGMENT_BITS
        train = self.train
        sent = self.sent
        done = 0
        # the train: its socket, peer, address, datagram size, datagrams, bytes, and
        # whether a shorter (hence last) datagram joined it
        t_sock = t_peer = t_addr = None
        t_size = t_count = t_len = 0
        t_short = False

        def flush():
            self.send_train(t_sock, t_addr, t_peer, t_size, t_count, t_len)

        try:
            while done < budget:
                try:
                    n = readv(fd, into) - vnet.LEN
                except BlockingIOError:
                    break
                except OSError as e:
                    # EBADFD: the TAP was deleted under us (see Datapath.tx_batch)
                    raise DeviceLost(f"reading the TAP device: {e.strerror}") from None
                done += 1
                if n < 14:
                    drops["runt"] += 1
                    continue
                dst, et, vihl, frag, proto = inner(buf, HEADER_LEN)
                if dst[0] & 1:
                    targets = flood
                else:
                    targets = route.get(dst)
                    if targets is None:
                        drops["unknown-unicast"] += 1
                        continue
                if (et == ipv4 and n >= 38 and vihl & 15 == 5 and proto in flow_protos
                        and not frag & fragment_bits):
                    sport = crc32(buf[HEADER_LEN + 26:HEADER_LEN + 38])
                else:
                    sport = datapath.flow_port(buf, HEADER_LEN, n) - SPORT_BASE
                sock = sport % SPORT_SPAN % pool
                flags, gso_type, _, gso_size, start, offset = vhead(hdr)
                if flags & vnet.F_NEEDS_CSUM and not gso_type:
                    try:
                        complete_checksum(into[1], n, start, offset)
                    except SegmentError:
                        drops["bad-offload"] += 1
                        continue
                size = HEADER_LEN + n
                if not gso_type and len(targets) == 1:
                    peer, addr, _ = targets[0]
                    if t_count and (sock != t_sock or addr != t_addr or size > t_size
                                    or t_short or t_count == GSO_MAX_SEGMENTS
                                    or t_len + size > GSO_MAX_BYTES):
                        flush()
                        t_count = 0
                    if not t_count:
                        t_sock, t_peer, t_addr, t_size, t_len, t_short = \
                            sock, peer, addr, size, 0, False
                    train[t_len:t_len + size] = view[:size]
                    t_len += size
                    t_count += 1
                    t_short = size < t_size
                    continue
                if t_count:
                    flush()
                    t_count = 0
                if gso_type:
                    try:
                        total, size, count = self.segmenter.segment(
                            gso_type, gso_size, into[1], n)
                    except SegmentError:
                        drops["bad-offload"] += 1
                        continue
                    for peer, addr, _ in targets:
                        self.send_segments(sock, total, size, count, addr, peer)
                    continue
                datagram = view[:size]
                send = sends[sock]
                for peer, addr, _ in targets:   # a flood: a copy for every peer
                    try:
                        send(datagram, addr)
                    except OSError as e:
                        self.send_failed(e, peer, view[HEADER_LEN:size])
                        continue
                    sent(peer, 1, size, 1)
        finally:
            if t_count:
                flush()
        return done

    def sent(self, peer: str, datagrams: int, octets: int, frames: int) -> None:
        """Count what one send carried, in the totals and for its peer. Called per send,
        not per frame read: a train or a super-frame is one call."""
        tx = self.dp.counters.tx
        tx[0] += datagrams
        tx[1] += octets
        tx[2] += frames
        c = self.dp.counters.peers[peer]
        c[0] += datagrams
        c[1] += octets
        c[4] += frames

    def send_train(self, sock: int, addr, peer: str, size: int, count: int,
                   length: int) -> None:
        """The train's datagrams (count frames, one datagram each) to their peer in one
        send, counted; a refusal is counted per datagram."""
        part = self.trainview[:length]
        try:
            if count == 1:
                self.sends[sock](part, addr)
            else:
                self.sendmsgs[sock]([part], self.cmsg(size), 0, addr)
        except OSError as e:
            self.send_failed(e, peer, self.trainview[HEADER_LEN:size], count)
            return
        self.sent(peer, count, length, count)

    def cmsg(self, size: int) -> list:
        """The UDP_SEGMENT control message for datagrams of `size` bytes, made once."""
        cmsg = self.cmsgs.get(size)
        if cmsg is None:
            cmsg = self.cmsgs[size] = [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
        return cmsg

    def send_segments(self, sock: int, total: int, size: int, count: int, addr,
                      peer: str) -> None:
        """The segmenter's datagrams to one peer: one UDP_SEGMENT send, or two when they
        exceed what one send carries (65,507 bytes: a 64 KiB super-frame of 1,398-byte
        segments is 68 KiB once each has its headers). The TAP's gso_max_size is left at
        its default on purpose: the kernel segments in software any forwarded GSO packet
        longer than a device's gso_max_size (gso_features_check), and a pod's 64 KiB
        super-frames are forwarded. Counted as one frame of `count` datagrams, or as
        refused."""
        out = self.segmenter.view
        cmsg = self.cmsg(size)
        step = min(GSO_MAX_BYTES // size, GSO_MAX_SEGMENTS) * size
        sendmsg = self.sendmsgs[sock]
        try:
            for off in range(0, total, step):
                part = out[off:min(off + step, total)]
                if len(part) <= size:
                    self.sends[sock](part, addr)
                else:
                    sendmsg([part], cmsg, 0, addr)
        except OSError as e:
            self.send_failed(e, peer, out[HEADER_LEN:size])
            return
        self.sent(peer, count, total, 1)

    def send_failed(self, e: OSError, peer: str, first, count: int = 1) -> None:
        """EMSGSIZE (a datagram over the path MTU, DF set) or EINVAL (a UDP_SEGMENT size
        over it: udp_send_skb checks the segment size against the path) are "too big":
        the inner sender hears of it as it would for one frame that size."""
        dp = self.dp
        drops = dp.counters.tx_drops
        if e.errno == errno.EINVAL:
            # EINVAL has other causes: too big only when the segment exceeds the path
            mtu = dp.path_mtu(peer) if dp.path_mtu else None
            if not mtu or len(first) - 14 + dp.overhead <= mtu:
                drops["send-error"] += count
                return
        elif e.errno != errno.EMSGSIZE:
            drops["send-error"] += count
            return
        drops["too-big"] += count
        dp.too_big(peer, first)

    def tap_write(self, frame) -> int:
        """One plain frame to the TAP (an ICMP error): behind an all-zero vnet header."""
        return os.writev(self.tap_fd, [vnet.ZERO, frame])

    def rx_batch(self, budget: int = 64) -> int:
        """Up to `budget` reads from the UDP socket, coalesced and written to the TAP."""
        dp = self.dp
        buf = self.rxbuf
        view = self.rxview
        recv = self.rx.recvmsg_into
        word = VXLAN_WORD.unpack_from
        expect = FLAGS_WORD_I << 32 | dp.vni << 8   # as Datapath.rx_batch
        allowed = None if dp.accept_any_source else dp.allowed
        per_peer = dp.counters.peers
        drops = dp.counters.rx_drops
        min_dgram = datapath.MIN_DATAGRAM
        runs: list[tuple[int, int, int, int]] = []   # Coalescer.plan_runs: one a read
        add = runs.append
        all_good = _all_headers
        limit = RX_BUFFER - datapath.MAX_FRAME
        packets = octets = done = pos = writes = 0
        try:
            while done < budget and pos <= limit:
                try:
                    n, anc, _, addr = recv([view[pos:pos + datapath.MAX_FRAME]], ANCILLARY)
                except BlockingIOError:
                    break
                done += 1
                if not n:
                    drops["short"] += 1   # an empty datagram: nothing to split
                    continue
                seg = n
                for level, kind, data in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        seg = _INT.unpack_from(data)[0] or n
                end = pos + n
                src = addr[0]
                if allowed is not None and src not in allowed:
                    drops["source"] += -(-n // seg)
                    continue
                count = -(-n // seg)
                last = n - (count - 1) * seg
                if last >= min_dgram and (
                        word(buf, pos)[0] == expect if count == 1
                        else all_good(buf, pos, seg, count, expect) if count >= VECTOR_MIN
                        else all(word(buf, off)[0] == expect for off in range(pos, end, seg))):
                    # the common case: every datagram of the read is well-formed VXLAN of
                    # our VNI, and the read is one run for the coalescer
                    add((pos + HEADER_LEN, seg, count, last - HEADER_LEN))
                    got, got_bytes = count, n
                else:
                    got = got_bytes = 0
                    off = pos
                    while off < end:
                        m = seg if off + seg <= end else end - off
                        if m < min_dgram or word(buf, off)[0] != expect:
                            drops[datapath.rx_reason(view[off:off + m], m, expect)] += 1
                        else:
                            add((off + HEADER_LEN, m, 1, m - HEADER_LEN))
                            got += 1
                            got_bytes += m
                        off += m
                pos = end + (end & 1)   # keep every read's start even (16-bit sums)
                packets += got
                octets += got_bytes
                c = per_peer.get(src)
                if c is not None:
                    c[2] += got
                    c[3] += got_bytes
            if len(runs) == 1 and runs[0][2] == 1:
                # one datagram (a ping, an ACK, a quiet link): nothing to merge; written
                # as the per-frame loop writes it, a plain frame behind a zero header
                off, _, _, length = runs[0]
                try:
                    os.writev(self.tap_fd, [vnet.ZERO, view[off:off + length]])
                    writes = 1
                except OSError:
                    drops["tap-write"] += 1
            elif runs:
                writev = os.writev
                fd = self.tap_fd
                for iov, count in self.coalescer.plan_runs(buf, runs):
                    try:
                        writev(fd, iov)
                    except OSError:
                        # counted received above (the checks passed); lost here
                        drops["tap-write"] += count
                        continue
                    writes += 1
        finally:
            rx = dp.counters.rx
            rx[0] += packets
            rx[1] += octets
            rx[2] += writes
        return done
