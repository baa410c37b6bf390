"""TSO/USO in userspace: one TAP super-frame in, VXLAN datagrams for one GSO send out.

A TAP opened with IFF_VNET_HDR and TSO/USO offloads hands over frames of up to
64 KiB (vtep.vnet: `gso_type`, `gso_size`). `Segmenter.segment` cuts such a
super-frame into the segments the kernel's own software GSO would have made
(tcp_gso_segment / __udp_gso_segment under inet_gso_segment / ipv6_gso_segment)
and writes them into one preallocated buffer, each behind the 8-byte VXLAN
header, back to back: exactly the layout a `sendmsg` with the UDP_SEGMENT cmsg
wants (every datagram the same size, the last one possibly shorter; the kernel
adds the outer IP and UDP headers). `complete_checksum` finishes a frame that
is not segmented but whose L4 checksum the kernel left partial (NEEDS_CSUM).

All full-size segments are built at once with numpy, on a 2-D view of the
buffer with one row per datagram: row 0's headers are written and patched in
Python, then broadcast to every row; the payload lands as a (rows, gso_size)
block; the per-row fields (TCP sequence, IPv4 ID) are written as big-endian
column vectors; checksums are per-row sums of a uint16 view of the payload plus
what the headers add, folded and complemented on arrays. The short last
segment, if any, is written by plain Python (struct, word_sum). Nothing
is written before the whole frame has been validated: a SegmentError never
leaves a half-written buffer that the caller might send.
"""
from __future__ import annotations

import struct

import numpy as np

from . import checksum, inet, vnet, wire

MAX_SEGMENTS = 128
"""UDP_MAX_SEGMENTS of recent kernels: one GSO send carries at most this many datagrams.
A super-frame that would need more (a 64 KiB frame with a tiny gso_size) is refused."""

ETH_HLEN = wire.ETH_HLEN
VX_LEN = wire.HEADER_LEN
L3 = ETH_HLEN                # the IP header, right after an untagged Ethernet header
IPV6_L4 = ETH_HLEN + inet.IPV6_HLEN
FRAGMENT_BITS = inet.IP_MF | inet.IP_OFFMASK
MAX_IP_LEN = 0xFFFF          # IPv4 total length, IPv6 payload length, UDP length: 16 bits

# TCP flag bits (RFC 9293 section 3.1, RFC 3168 section 6.1 for CWR)
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80
TCP_FLAGS = 13               # the flags byte: the low byte of the header's 7th 16-bit word

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
GSO_KINDS = {vnet.GSO_TCPV4: ((inet.ETH_P_IP,), inet.IPPROTO_TCP),
             vnet.GSO_TCPV6: ((inet.ETH_P_IPV6,), inet.IPPROTO_TCP),
             vnet.GSO_UDP_L4: ((inet.ETH_P_IP, inet.ETH_P_IPV6), inet.IPPROTO_UDP)}
NUMPY_SUM_MIN = 256          # bytes: see word_sum
REASON = "bad-offload"       # the transmit loop's drop counter for refused offload frames


class SegmentError(ValueError):
    """A super-frame or partial checksum that cannot be sent as it is; `reason` names the
    drop counter, the message says what was wrong."""

    reason: str

    def __init__(self, message: str, reason: str = REASON):
        super().__init__(message)
        self.reason = reason


def word_sum(buf, start: int, end: int) -> int:
    """vtep.checksum.word_sum of buf[start:end] (reduced mod 0xFFFF), with numpy above
    NUMPY_SUM_MIN bytes: one 1,466-byte frame takes 1.3 us that way against 3.0 us as one
    big integer, which stays faster for ACK-sized data (numpy's per-call cost)."""
    length = end - start
    if length < NUMPY_SUM_MIN:
        return checksum.word_sum(memoryview(buf)[start:end])
    s = int(np.frombuffer(buf, np.uint16, length >> 1, start).sum(dtype=np.uint64))
    if length & 1:
        s += buf[end - 1]        # the zero-padded last word, as a native (swapped) word
    # native words are the checksum's words byte-swapped: times 256 mod 0xFFFF swaps back
    return (s % 0xFFFF) * 256 % 0xFFFF


def _complement(s: int) -> int:
    """The checksum field for data whose ones'-complement sum is congruent to `s` mod
    0xFFFF (s of any size, or reduced as word_sum gives it): the data is never all zero
    (a header or pseudo-header is in it), so its folded sum lies in 1..0xFFFF, 0xFFFF
    and not 0 standing for a multiple of 0xFFFF; complemented, as the kernel's csum_fold
    does, that gives 0 (not 0xFFFF) for TCP and the IPv4 header."""
    return 0xFFFE - (s - 1) % 0xFFFF


def complete_checksum(frame, n: int, csum_start: int, csum_offset: int) -> None:
    """VIRTIO_NET_HDR_F_NEEDS_CSUM on a frame that is not segmented: the 16-bit field at
    csum_start+csum_offset holds the (folded, uncomplemented) pseudo-header sum; write
    the final checksum = ones'-complement of the sum of frame[csum_start:n] (field
    included). A result of 0 is written as 0xFFFF, as the kernel's skb_checksum_help
    does for every protocol (CSUM_MANGLED_0): UDP needs it (RFC 768: 0 means "no
    checksum"), and for TCP 0xFFFF is the same number in ones' complement. Raises
    SegmentError when the offsets do not fit the frame. In place."""
    field = csum_start + csum_offset
    if not (0 <= csum_start and 0 <= csum_offset and field + 2 <= n <= len(frame)):
        raise SegmentError(f"partial checksum at {csum_start}+{csum_offset} does not fit "
                           f"a {n}-byte frame")
    s = word_sum(frame, csum_start, n)
    U16.pack_into(frame, field, 0xFFFF - s if s else 0xFFFF)


def parse(gso_type: int, gso_size: int, frame, n: int) -> tuple[bool, bool, int, int]:
    """Validate a super-frame's headers from the frame itself (never the vnet header's
    hdr_len): (ipv4, tcp, l4 offset, header length). Raises SegmentError."""
    # the ECN bit is accepted with any type, as virtio_net_hdr_to_skb does; it changes
    # nothing here: tcp_gso_segment clears CWR after the first segment either way
    kind = GSO_KINDS.get(gso_type & ~vnet.GSO_ECN)
    if kind is None:
        raise SegmentError(f"gso_type {gso_type:#x} is not TCPV4, TCPV6 or UDP_L4")
    ethertypes, proto = kind
    if gso_size < 1:
        raise SegmentError(f"gso_size {gso_size}")
    if not 0 <= n <= len(frame):
        raise SegmentError(f"length {n} outside a {len(frame)}-byte buffer")
    if n < ETH_HLEN + inet.IPV4_HLEN:
        raise SegmentError(f"{n} bytes: truncated headers")
    et = frame[12] << 8 | frame[13]
    if et not in ethertypes:
        raise SegmentError(f"ethertype {et:#06x} with gso_type {gso_type:#x}")
    if et == inet.ETH_P_IP:
        vihl = frame[L3]
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < inet.IPV4_HLEN:
            raise SegmentError(f"IPv4 version/IHL byte {vihl:#04x}")
        if frame[L3 + 9] != proto:
            raise SegmentError(f"IPv4 protocol {frame[L3 + 9]}, want {proto}")
        # a fragment cannot be a GSO super-frame (its L4 header is elsewhere or partial)
        if (frame[L3 + 6] << 8 | frame[L3 + 7]) & FRAGMENT_BITS:
            raise SegmentError("IPv4 fragment")
        l4 = L3 + ihl
        ipv4 = True
    else:
        if n < IPV6_L4 or frame[L3] >> 4 != 6:
            raise SegmentError("truncated or not an IPv6 header")
        # no extension header chain is walked: the stack that builds a TSO/USO frame for
        # the TAP puts TCP/UDP right after the fixed header, so anything else is refused
        if frame[L3 + 6] != proto:
            raise SegmentError(f"IPv6 next header {frame[L3 + 6]}, want {proto}")
        l4 = IPV6_L4
        ipv4 = False
    tcp = proto == inet.IPPROTO_TCP
    if tcp:
        if l4 + inet.TCP_HLEN > n:
            raise SegmentError("truncated TCP header")
        doff = (frame[l4 + 12] >> 4) << 2
        if doff < inet.TCP_HLEN:
            raise SegmentError(f"TCP data offset {doff >> 2}")
        hlen = l4 + doff
    else:
        hlen = l4 + inet.UDP_HLEN
    if hlen >= n:
        raise SegmentError("headers do not fit, or no payload" if hlen > n else "no payload")
    return ipv4, tcp, l4, hlen


class Segmenter:
    """One preallocated output buffer and the numpy views on it; `segment` reuses both."""

    def __init__(self, vxlan_header: bytes, capacity: int = 1 << 18):
        if len(vxlan_header) != VX_LEN:
            raise ValueError(f"a VXLAN header is {VX_LEN} bytes, not {len(vxlan_header)}")
        self.vxlan_header = bytes(vxlan_header)
        self.capacity = capacity
        self.out = bytearray(capacity)
        self.view = memoryview(self.out)
        self._np = np.frombuffer(self.out, np.uint8)
        self._rows = np.arange(MAX_SEGMENTS, dtype=np.uint64)

    def segment(self, gso_type: int, gso_size: int, frame, n: int) -> tuple[int, int, int]:
        """Cut the super-frame frame[:n] (Ethernet first) into segments of gso_size payload
        bytes and write into self.out, back to back, each behind the VXLAN header.
        Returns (total bytes written, datagram size, segment count): every datagram is
        datagram-size long except possibly the last (shorter). Raises SegmentError."""
        ipv4, tcp, l4, hlen = parse(gso_type, gso_size, frame, n)
        payload = n - hlen
        full, rem = divmod(payload, gso_size)
        segs = full + (rem > 0)
        if segs > MAX_SEGMENTS:
            raise SegmentError(f"too many segments: {segs} > {MAX_SEGMENTS}")
        first = min(gso_size, payload)
        # the largest segment's length fields: IPv4 total length, else IPv6 payload length
        # (TCP and UDP lengths are smaller still)
        if hlen - (L3 if ipv4 else IPV6_L4) + first > MAX_IP_LEN:
            raise SegmentError(f"a {first}-byte segment overflows the IP length field")
        total = segs * (VX_LEN + hlen) + payload
        if total > self.capacity:
            raise SegmentError(f"{total} bytes do not fit the {self.capacity}-byte buffer")
        mv = memoryview(frame)
        if ipv4:
            pseudo = checksum.pseudo_header_sum(mv[26:30], mv[30:34], 0, 0)
            id0 = frame[L3 + 4] << 8 | frame[L3 + 5]
        else:
            pseudo = checksum.pseudo_header_sum(mv[22:38], mv[38:54], 0, 0)
            id0 = 0
        pseudo += inet.IPPROTO_TCP if tcp else inet.IPPROTO_UDP
        seq0 = int.from_bytes(mv[l4 + 4:l4 + 8], "big") if tcp else 0
        flags0 = frame[l4 + TCP_FLAGS] if tcp else 0
        if full:
            self._full_rows(mv, full, segs, gso_size, ipv4, tcp, l4, hlen, pseudo, id0,
                            seq0, flags0)
        if rem:
            self._one(mv, full, segs, gso_size, rem, ipv4, tcp, l4, hlen, pseudo, id0,
                      seq0, flags0)
        return total, VX_LEN + hlen + first, segs

    def _full_rows(self, mv, full, segs, gso, ipv4, tcp, l4, hlen, pseudo, id0, seq0,
                   flags0) -> None:
        """Rows 0..full-1: every segment that carries gso bytes of payload, at once."""
        out = self.out
        size = VX_LEN + hlen + gso
        ip = VX_LEN + L3          # offsets within a row
        t = VX_LEN + l4
        pay = VX_LEN + hlen
        l4len = hlen - l4 + gso
        # row 0's headers as every full row has them, the varying fields zeroed
        out[:VX_LEN] = self.vxlan_header
        out[VX_LEN:pay] = mv[:hlen]
        if ipv4:
            U16.pack_into(out, ip + 2, hlen - L3 + gso)   # total length
            U16.pack_into(out, ip + 4, 0)                       # ID: per row
            U16.pack_into(out, ip + 10, 0)                      # header checksum: per row
            # (sum - 1) mod 0xFFFF of the header without ID and checksum, for _complement's
            # formula on arrays (a non-negative Python int: the arrays are unsigned)
            ip_k = (checksum.word_sum(out[ip:t]) - 1) % 0xFFFF
        else:
            U16.pack_into(out, ip + 4, l4len)                   # payload length
        if tcp:
            U32.pack_into(out, t + 4, 0)                        # sequence: per row
            # tcp_gso_segment: FIN and PSH on the last segment only, CWR on the first only
            mid = flags0 & ~(TCP_FIN | TCP_PSH | TCP_CWR)
            out[t + TCP_FLAGS] = mid
            U16.pack_into(out, t + 16, 0)
        else:
            U16.pack_into(out, t + 4, l4len)                    # UDP length
            U16.pack_into(out, t + 6, 0)
        # pseudo-header (RFC 768 / RFC 8200 8.1) + the L4 header as row 0 holds it now
        l4_sum = pseudo + l4len + checksum.word_sum(out[t:pay])

        rows = self._np[:full * size].reshape(full, size)
        rows[1:, :pay] = rows[0, :pay]
        rows[:, pay:] = np.frombuffer(mv, np.uint8, full * gso, hlen).reshape(full, gso)

        # Payload sums: native (little-endian) uint16 words per row. A row's payload starts
        # at an even offset from its L4 header (TCP/UDP header lengths are even), so the
        # words are the checksum's words, byte-swapped; ones' complement sums commute with
        # the swap (RFC 1071 2(B)), and swapping a 16-bit value is multiplying it by 256
        # mod 0xFFFF. At most 32767 words of at most 0xFFFF per row: uint32 cannot overflow.
        words = np.ndarray((full, gso >> 1), np.uint16, out, pay, (size, 2))
        s = words.sum(axis=1, dtype=np.uint32)
        if gso & 1:
            # the odd last byte is the high byte of a zero-padded word: as a native word
            # (before the swap) it counts as itself
            s += rows[:, size - 1]
        s = s.astype(np.uint64)
        s <<= 8
        # Everything else is added as it comes and reduced once: _complement needs only
        # (total - 1) mod 0xFFFF (the total is > 0: the pseudo-header holds the protocol),
        # so the "- 1" rides on the constant, reduced to stay unsigned and within 64 bits
        # (an IPv6 pseudo-header sum is a 128-bit number here).
        s += (l4_sum - 1) % 0xFFFF
        idx = self._rows[:full]
        if tcp:
            seq = idx * gso
            seq += seq0
            if seq0 + (full - 1) * gso > 0xFFFFFFFF:
                seq &= 0xFFFFFFFF         # RFC 9293: sequence numbers are mod 2**32
            np.ndarray((full,), ">u4", out, t + 4, (size,))[:] = seq
            s += seq                      # hi * 65536 + lo = hi + lo (mod 0xFFFF)
            # the flag byte is a word's low byte: a change of flags adds its value
            f = flags0 & ~(TCP_FIN | TCP_PSH) if segs > 1 else flags0
            out[t + TCP_FLAGS] = f
            if f != mid:
                s[0] += f - mid
            if full == segs and full > 1:
                f = flags0 & ~TCP_CWR
                out[(full - 1) * size + t + TCP_FLAGS] = f
                if f != mid:
                    s[-1] += f - mid
            field = t + 16
        else:
            field = t + 6
        s %= 0xFFFF
        c = np.subtract(0xFFFE, s, out=s)
        if not tcp:
            c[c == 0] = 0xFFFF            # UDP: a computed 0 is sent as 0xFFFF (RFC 768)
        np.ndarray((full,), ">u2", out, field, (size,))[:] = c
        if ipv4:
            # inet_gso_segment: each segment's ID is the first one's plus its index
            ids = idx + id0
            id_col = np.ndarray((full,), ">u2", out, ip + 4, (size,))
            csum_col = np.ndarray((full,), ">u2", out, ip + 10, (size,))
            k = 0xFFFE - (ip_k + id0) % 0xFFFF
            if id0 + full - 1 <= 0xFFFF and k >= full - 1:
                # no wrap of the ID nor of the folded sum: the checksum goes down by one as
                # the ID goes up by one, from the first row's
                id_col[:] = ids
                csum_col[:] = k - idx
            else:
                ids &= 0xFFFF
                id_col[:] = ids
                ids += ip_k
                ids %= 0xFFFF
                csum_col[:] = np.subtract(0xFFFE, ids, out=ids)

    def _one(self, mv, i, segs, gso, length, ipv4, tcp, l4, hlen, pseudo, id0, seq0,
             flags0) -> None:
        """Segment i (the last, `length` payload bytes) in plain Python."""
        out = self.out
        o = i * (VX_LEN + hlen + gso)
        b = o + VX_LEN                   # the inner frame
        out[o:b] = self.vxlan_header
        out[b:b + hlen] = mv[:hlen]
        src = hlen + i * gso
        out[b + hlen:b + hlen + length] = mv[src:src + length]
        ip = b + L3
        t = b + l4
        l4len = hlen - l4 + length
        if ipv4:
            U16.pack_into(out, ip + 2, hlen - L3 + length)
            U16.pack_into(out, ip + 4, (id0 + i) & 0xFFFF)
            U16.pack_into(out, ip + 10, 0)
            U16.pack_into(out, ip + 10, _complement(checksum.word_sum(out[ip:t])))
        else:
            U16.pack_into(out, ip + 4, l4len)
        end = b + hlen + length
        if tcp:
            U32.pack_into(out, t + 4, (seq0 + i * gso) & 0xFFFFFFFF)
            out[t + TCP_FLAGS] = flags0 & ~TCP_CWR if segs > 1 else flags0
            U16.pack_into(out, t + 16, 0)
            U16.pack_into(out, t + 16,
                          _complement(word_sum(out, t, end) + pseudo + l4len))
        else:
            U16.pack_into(out, t + 4, l4len)
            U16.pack_into(out, t + 6, 0)
            c = _complement(word_sum(out, t, end) + pseudo + l4len)
            U16.pack_into(out, t + 6, c or 0xFFFF)
