"""Received TCP segments merged into TAP super-frames: the kernel's GRO, done in userspace.

Data flow: the receive loop hands `Coalescer.plan` its buffer and the (offset,
length) of each inner Ethernet frame, in arrival order. One pass over the
frames reads each header with one or two struct calls and keeps, per TCP flow
(addresses and ports), at most one open *run*: consecutive in-sequence
segments whose headers match the first's everywhere except the fields that
vary per segment (lengths, IPv4 identification and checksum, sequence number,
PSH, window, TCP checksum). Each run and each frame written alone takes a slot
in the output at its first frame's place, so a flow's data is written in the
order it came. Then the TCP checksum of every segment of a run of two or more
is verified at once with numpy (equal segments at an equal stride, as UDP GRO
returns them, are one strided 2-D view summed per row); a segment that fails
is written alone, and the pass runs again knowing it. Last, each run's first
frame is edited in place (IP length and checksum, PSH, the TCP field) and the
writes are returned: a virtio-net header (vtep.vnet) and memoryviews into the
buffer, nothing copied.

Why so strict: the TAP takes a super-frame as CHECKSUM_PARTIAL and nothing
checks its data again, so each segment is verified before it is merged; and a
write the kernel cannot take (pure ACKs merged, over 64 KiB) fails with EINVAL
and loses every segment in it. The rules are those of Linux's
inet_gro_receive/tcp_gro_receive (what a NIC's GRO would have merged).
"""
from __future__ import annotations

import struct
from itertools import islice, repeat

import numpy as np

from . import checksum, vnet
from .inet import (ETH_P_IP, ETH_P_IPV6, IP_MAXPACKET, IP_MF, IP_OFFMASK, IPPROTO_DSTOPTS,
                   IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP)

ETH_HLEN = 14
TCP_ACK = 0x10
TCP_PSH = 0x08
ACK_PSH = TCP_ACK | TCP_PSH
# A run is one writev, of at most IOV_MAX (1024) iovecs: tiny segments could need more.
# 64 is what one UDP GRO read carries at most (UDP_GRO_CNT_MAX); full-size segments
# reach 64 KiB first anyway.
MAX_SEGMENTS = 64
CSUM_OFFSET = 16          # the TCP checksum field within the TCP header (RFC 9293 3.1)
FRAGMENT = IP_MF | IP_OFFMASK

# Ethernet + IPv4 without options + TCP's first 14 bytes, split so that each field a
# later segment must repeat is one bytes object: `head` (MACs, EtherType, version/IHL,
# TOS), `mid` (flags/fragment offset, TTL, protocol), `key` (addresses and ports: the
# flow), `ackoff` (acknowledgment number, data offset byte). The rest varies.
#            head  totlen id  mid  csum key  seq ackoff flags
V4 = struct.Struct("!16sHH4sH12sI5sB")
V4_IP = struct.Struct("!16sHH4sH8s")            # IPv4 with options: the IP part...
TCP = struct.Struct("!4sI5sB")                  # ...and the TCP part, wherever it starts
# Ethernet + IPv6 + TCP's first 14 bytes: `head` takes MACs, EtherType, version, traffic
# class, flow label; `mid` next header and hop limit.
V6 = struct.Struct("!18sH2s36sI5sB")
U16 = struct.Struct("!H")
_from_bytes = int.from_bytes


class _Run:
    """An open or closed super-frame: its first frame's header facts and its members."""

    __slots__ = ("head", "mid", "ackoff", "opts", "nxt", "gso", "total", "limit", "hlen",
                 "iphl", "v6", "ipbase", "addrs", "psh", "members", "pieces")

    def __init__(self, head, mid, ackoff, opts, nxt, gso, limit, hlen, iphl, v6, ipbase,
                 addrs, i):
        self.head = head
        self.mid = mid
        self.ackoff = ackoff
        self.opts = opts       # TCP options (b"" without); IPv4 options are in `mid`
        self.nxt = nxt         # the sequence number the next segment must carry
        self.gso = gso         # the first segment's payload: every later one's, but the last
        self.total = gso       # payload bytes so far
        self.limit = limit     # payload bytes the IP length field still allows
        self.hlen = hlen       # Ethernet + IP + TCP header bytes
        self.iphl = iphl
        self.v6 = v6
        # IPv4: minus the sum of the first header's length, ID and checksum words. The
        # other words of a later header equal the first's (a valid one), so it verifies
        # when its own three words add up to the same, mod 0xFFFF (0 for IPv6)
        self.ipbase = ipbase
        self.addrs = addrs     # source and destination addresses (the pseudo-header's)
        self.psh = 0
        self.members = [i]     # frame indices, in sequence order
        # members placed by _bulk: (their first place in `members`, how many, the buffer
        # offset of the first one's payload, stride); their frames' entries are not kept
        self.pieces: list[tuple[int, int, int, int]] | None = None


class Coalescer:
    """Plans the TAP writes for one batch of received frames (see the module docstring).

    The virtio-net headers of merged writes come from a pool reused by every call: the
    caller writes all of one plan's writes before calling plan again. plan edits the
    first frame of each super-frame in place."""

    def __init__(self):
        self._hdrs: list[bytearray] = [bytearray(vnet.LEN) for _ in range(16)]
        # _block's: header masks by (TCP offset, header length); the expected bytes of
        # its masked header differences by those, the row count and the segment size
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._steps: dict[tuple[int, int, int, int, int], tuple[bytes, bytes]] = {}
        self._arena = bytearray(0)      # payloads _writes copies (see plan_runs)
        self._aview = memoryview(self._arena)

    def plan(self, buf: bytearray, frames: list[tuple[int, int]]) -> list[tuple[list, int]]:
        """frames: (offset, length) of inner Ethernet frames inside buf, in arrival order
        (already VXLAN-checked, each >= 14 bytes). Returns the TAP writes, each flow's
        frames in order: (iov for one os.writev, beginning with a 10-byte virtio-net
        header; how many received frames it carries)."""
        return self._plan(buf, frames, None, set(), set())

    def plan_runs(self, buf: bytearray,
                  runs: list[tuple[int, int, int, int]]) -> list[tuple[list, int]]:
        """runs: (offset, stride, count, last_length) for each UDP GRO read, in arrival
        order: its frame j (0 <= j < count, count >= 1) is at offset + j * stride, of
        stride - 8 bytes (the 8 is the VXLAN header before the next frame) but the last,
        of last_length bytes. Returns exactly the writes plan(buf, <those frames, in
        order>) returns, in bytes and frame counts.

        A read's full-size frames are first checked at once, as rows of a strided 2-D
        view (`_block`): when all repeat frame 0's headers but for the per-segment
        fields and follow in sequence, they are merged with a few list operations, not
        one step per frame; the rows whose checksums fail (known from the same row
        sums) are written alone and split the merge, as plan splits it. Any other read
        goes the generic way."""
        frames: list[tuple[int, int]] = []
        blocks: dict[int, tuple] = {}
        good: set[int] = set()
        bad: set[int] = set()
        extend = frames.extend
        block = self._block
        append = frames.append
        for off, stride, count, last in runs:
            i = len(frames)
            full = count - 1
            if count >= 3:
                rows = count if last == stride - 8 else full
                failed = block(buf, off, stride, rows, full)
                if failed is not None:
                    good.update(range(i, i + rows))
                    g = 0
                    if failed:
                        # rows whose checksum failed: each written alone, as plan writes
                        # them (_group and _bulk close the flow's super-frame at each)
                        failed = [i + r for r in failed]
                        bad.update(failed)
                        good.difference_update(failed)
                        while g < full and i + g in bad:
                            g += 1       # the block starts at its first good row
                        extend(zip(range(off, off + g * stride, stride), repeat(stride - 8, g)))
                        failed = tuple(j for j in failed if i + g < j < i + full)
                    if g < full:
                        # frame i + g and the last go the generic way; _bulk places the rest
                        blocks[i + g] = (full - g, stride, failed)
                        append((off + g * stride, stride - 8))
                        extend(repeat(None, full - g - 1))
                    append((off + full * stride, last))
                    continue
            if full:
                extend(zip(range(off, off + full * stride, stride), repeat(stride - 8, full)))
            append((off + full * stride, last))
        return self._plan(buf, frames, blocks, good, bad)

    def _plan(self, buf, frames, blocks: dict[int, tuple] | None, good: set[int],
              bad: set[int]) -> list[tuple[list, int]]:
        """plan, given `blocks` (a first frame index -> (k, stride, failed): the frames
        from it to the next k - 1 passed _block but those in `failed`), `good` (frames
        whose checksums verified) and `bad` (frames whose checksums failed)."""
        while True:
            slots = self._group(buf, frames, bad, blocks)
            failed = self._verify(buf, frames, slots, good)
            if not failed:
                break
            # rare: a corrupted segment. Group again without it: the segments after it
            # may start a super-frame of their own, and those are verified in turn.
            bad.update(failed)
        return self._writes(buf, frames, slots)

    # ------------------------------------------------------------------ one read at once
    def _block(self, buf, o: int, stride: int, rows: int, plain: int) -> list[int] | None:
        """Whether the `rows` frames of stride - 8 bytes at buf[o + r * stride] are one
        flow's consecutive full segments that _group would merge in a row but for those
        whose checksums fail: frame 0 may start a super-frame (TCP over IPv4 without
        options or IPv6 without extension headers, ACK alone, payload, IP length = frame
        length), every row repeats its first bytes up to the payload but for IPv4 ID and
        checksum, TCP sequence, window, checksum and urgent pointer (and PSH on rows from
        `plain` on), and sequence numbers step by the payload size. None when not;
        otherwise the rows whose IPv4 header or TCP checksum fails (usually none: []).
        A few numpy operations on strided views, none per row."""
        n = stride - 8
        if n < 54 or o + (rows - 1) * stride + n > len(buf):
            return None
        et = buf[o + 12] << 8 | buf[o + 13]
        if et == ETH_P_IP:
            if buf[o + 14] != 0x45:
                return None        # IPv4 options: the generic way
            head, tl, ipid, mid, ck, key, seq, ackoff, fl = V4.unpack_from(buf, o)
            if (mid[3] != IPPROTO_TCP or (mid[0] << 8 | mid[1]) & FRAGMENT
                    or ETH_HLEN + tl != n):
                return None
            t = 34
            addrs = key[:8]
        elif et == ETH_P_IPV6:
            if n < 74:
                return None
            head, pl, mid, key, seq, ackoff, fl = V6.unpack_from(buf, o)
            if mid[0] != IPPROTO_TCP or head[14] >> 4 != 6 or 54 + pl != n:
                return None
            t = 54
            addrs = key[:32]
        else:
            return None
        doff = ackoff[4] >> 4 << 2
        hlen = t + doff
        m = n - hlen
        if fl != TCP_ACK or doff < 20 or m <= 0:
            return None
        # the headers and sequence numbers of all rows at once: big-endian 64-bit words
        # from `shift` bytes before the frame, so that the sequence number is the high
        # half of one word; masked (the varying fields zeroed), minus row 0's, they must
        # be 0 but for that word, r * m << 32 in row r (a difference mod 2**32 in the high
        # half: the low halves are equal); and in the last row, when it is not one of
        # the first `plain`, PSH may add its bit (row 0 has none: no other row may)
        shift = 2 if t == 34 else 6
        words = self._masks.get((t, hlen))
        if words is None:
            words = self._masks[(t, hlen)] = _header_mask(t, hlen, shift)
        size = words.size * 8
        if size > n + shift or o < shift:
            return None
        want = self._steps.get((t, hlen, rows, plain, m))
        if want is None:
            if len(self._steps) >= 64:
                self._steps.clear()      # many segment sizes: keep the cache small
            want = self._steps[(t, hlen, rows, plain, m)] = _differences(
                t, shift, words.size, rows, plain, m)
        heads = np.ndarray((rows, words.size), ">u8", buf, o - shift, (stride, 8)) & words
        heads = (heads - heads[0]).tobytes()
        if heads != want[0] and heads != want[1]:
            return None
        # TCP checksums, little-endian words as in _failing: each row's sum plus the
        # (byte-swapped) pseudo-header sum must be 0 mod 0xFFFF
        tcp = n - t
        sums = np.ndarray((rows, tcp >> 1), "<u2", buf, o + t, (stride, 2)).sum(
            axis=1, dtype=np.uint32)
        if tcp & 1:
            sums += np.ndarray((rows,), np.uint8, buf, o + n - 1, (stride,))
        sums %= 0xFFFF
        want = -((_from_bytes(addrs, "big") + IPPROTO_TCP + tcp) % 0xFFFF * 256) % 0xFFFF
        tcp_ok = sums.tobytes() == _U32.pack(want) * rows
        if t == 54:
            return [] if tcp_ok else np.flatnonzero(sums != want).tolist()
        # IPv4 header checksums: each header is row 0's but for ID and checksum (the
        # words between them are row 0's too), so it verifies iff those four words sum
        # to minus the other six, mod 0xFFFF; the 8 bytes from ID to checksum as one
        # little-endian 64-bit number are congruent to 256 times their big-endian word
        # sum (2**16 == 1 mod 0xFFFF, and a byte swap is a product by 256)
        ipwant = -((_from_bytes(buf[o + 14:o + 18], "big") + _from_bytes(addrs, "big"))
                   % 0xFFFF * 256) % 0xFFFF
        ip = np.ndarray((rows,), "<u8", buf, o + 18, (stride,)) % 0xFFFF
        if ip.tobytes() == _U64.pack(ipwant) * rows:
            return [] if tcp_ok else np.flatnonzero(sums != want).tolist()
        return np.flatnonzero((sums != want) | (ip != ipwant)).tolist()

    # ------------------------------------------------------------------ grouping
    def _group(self, buf, frames, bad: set[int],
               blocks: dict[int, tuple[int, int]] | None) -> list:
        """Slots in output order: a frame index (written alone) or a _Run, placed where
        its first frame came. A frame not appended to its flow's open run closes it, so
        nothing of that flow that came later is written before it. The frames of a block
        after its first are placed by _bulk."""
        out: list = []
        emit = out.append
        runs: dict[bytes, _Run] = {}
        unpack4 = V4.unpack_from
        unpack6 = V6.unpack_from
        it = enumerate(frames)
        for i, (o, n) in it:
            et = buf[o + 12] << 8 | buf[o + 13]
            if et == ETH_P_IP:
                if n < 54:
                    emit(i)
                    continue
                if buf[o + 14] == 0x45:          # version 4, IHL 5: no options
                    head, tl, ipid, mid, ck, key, seq, ackoff, fl = unpack4(buf, o)
                    t = o + 34
                else:
                    ihl = (buf[o + 14] & 15) << 2
                    if buf[o + 14] >> 4 != 4 or ihl < 20 or n < 34 + ihl:
                        emit(i)
                        continue
                    head, tl, ipid, mid, ck, addrs = V4_IP.unpack_from(buf, o)
                    t = o + 14 + ihl
                    ports, seq, ackoff, fl = TCP.unpack_from(buf, t)
                    key = addrs + ports
                    mid += buf[o + 34:t]   # identical IP options are part of the match
                if mid[3] != IPPROTO_TCP:
                    emit(i)
                    continue
                ln = ETH_HLEN + tl
                ipw = tl + ipid + ck
            elif et == ETH_P_IPV6:
                if n < 74:
                    emit(i)
                    continue
                head, pl, mid, key, seq, ackoff, fl = unpack6(buf, o)
                if mid[0] != IPPROTO_TCP:
                    if mid[0] in _IPV6_EXTENSIONS:
                        # a TCP segment of any flow may hide behind an extension header:
                        # no super-frame open now may take a segment that comes after it
                        runs.clear()
                    emit(i)
                    continue
                ln = ETH_HLEN + 40 + pl
                ipw = 0
                t = o + 54
            else:
                emit(i)
                continue

            run = runs.get(key)
            if run is not None:
                # the fast path, one more segment of an open super-frame: the headers
                # repeat the first's (which passed every check below) but for the
                # varying fields, and these are checked here
                m = n - run.hlen
                if (seq == run.nxt and ackoff == run.ackoff and head == run.head
                        and mid == run.mid and n == ln and (fl == TCP_ACK or fl == ACK_PSH)
                        and 0 < m <= run.gso and run.total + m <= run.limit
                        and (run.ipbase + ipw) % 0xFFFF == 0
                        and (not run.opts or buf[t + 20:o + run.hlen] == run.opts)
                        and (not bad or i not in bad)):
                    members = run.members
                    members.append(i)
                    run.total += m
                    run.nxt = (seq + m) & 0xFFFFFFFF
                    # PSH ends a GRO packet; so does a short segment (gso_size cuts
                    # every segment but the last); and the writev's length
                    if fl == ACK_PSH or m < run.gso or len(members) == MAX_SEGMENTS:
                        run.psh = fl & TCP_PSH
                        del runs[key]
                    if blocks and i in blocks:
                        _skip(it, _bulk(run, runs, key, emit, frames, i, blocks[i], seq, m))
                    continue
                del runs[key]

            # this frame starts a super-frame, or is written alone
            if et == ETH_P_IP and (mid[0] << 8 | mid[1]) & FRAGMENT:
                # a later fragment has no ports: it may belong to any flow
                runs.clear()
                emit(i)
                continue
            doff = ackoff[4] >> 4 << 2
            hlen = t - o + doff
            m = n - hlen
            if ((fl != TCP_ACK and fl != ACK_PSH) or doff < 20 or m <= 0 or n != ln
                    or i in bad):
                emit(i)
                continue
            if et == ETH_P_IP:
                if checksum.word_sum(buf[o + 14:t]):
                    emit(i)      # the kernel drops it (and counts it): never merged
                    continue
                ipbase = -ipw % 0xFFFF
                addrs = key[:8]
            else:
                if head[14] >> 4 != 6:
                    emit(i)
                    continue
                ipbase = 0
                addrs = key[:32]
            if fl == ACK_PSH:
                emit(i)
                continue
            run = _Run(head, mid, ackoff, bytes(buf[t + 20:o + hlen]), (seq + m) & 0xFFFFFFFF,
                       m, IP_MAXPACKET - (hlen - ETH_HLEN), hlen, t - o - ETH_HLEN,
                       et == ETH_P_IPV6, ipbase, addrs, i)
            runs[key] = run
            emit(run)
            if blocks and i in blocks:
                _skip(it, _bulk(run, runs, key, emit, frames, i, blocks[i], seq, m))
        return out

    # ------------------------------------------------------------------ verification
    def _verify(self, buf, frames, slots: list, good: set[int]) -> list[int]:
        """Frame indices of merged segments whose TCP checksum fails (RFC 9293 3.1).

        A run's segments are all as long as its first but the last: those that lie at
        one stride (one UDP GRO read) are one piece, summed at once by `_failing`."""
        failed: list[int] = []
        checked: list[int] = []
        for run in slots:
            if type(run) is int or len(run.members) < 2:
                continue
            members = run.members
            if good:
                if good.issuperset(members):
                    continue
                members = [j for j in members if j not in good]
            skip = ETH_HLEN + run.iphl
            pseudo = _from_bytes(run.addrs, "big") + IPPROTO_TCP
            starts = [frames[j][0] + skip for j in members]
            length = frames[members[0]][1] - skip
            k = len(members)
            if frames[members[-1]][1] - skip != length:
                k -= 1           # the short last segment: a piece of its own
            a = 0
            while a < len(members):
                s0 = starts[a]
                if a == k:       # the short last one
                    rows, ln = 1, frames[members[a]][1] - skip
                    stride = 0
                else:
                    stride = starts[a + 1] - s0 if a + 1 < k else 0
                    rows = k - a
                    if stride <= 0 or starts[a:k] != list(range(s0, s0 + rows * stride, stride)):
                        rows = 1         # not one stride: the longest prefix that is
                        while a + rows < k and starts[a + rows] - starts[a + rows - 1] == stride:
                            rows += 1
                    ln = length
                for r in _failing(buf, s0, ln, rows, stride, pseudo):
                    failed.append(members[a + r])
                a += rows
            checked.extend(members)
        if failed:
            good.update(checked)
            good.difference_update(failed)
        return failed

    # ------------------------------------------------------------------ the writes
    def _writes(self, buf, frames, slots: list) -> list[tuple[list, int]]:
        """The iovs: merged runs get their first frame's headers edited in place."""
        view = memoryview(buf)
        pool = self._hdrs
        used = 0
        zero = vnet.ZERO
        put16 = U16.pack_into
        writes: list[tuple[list, int]] = []
        add = writes.append
        arena = self._arena
        if len(arena) < len(buf):
            # copies of payloads (plan_runs' blocks) never outgrow the received bytes;
            # a new arena, as earlier writes may still hold views of the old one
            arena = self._arena = bytearray(len(buf))
            self._aview = memoryview(arena)
        aview = self._aview
        cursor = 0
        for slot in slots:
            if type(slot) is int:
                o, n = frames[slot]
                add(([zero, view[o:o + n]], 1))
                continue
            members = slot.members
            o, n = frames[members[0]]
            if len(members) == 1:
                add(([zero, view[o:o + n]], 1))
                continue
            ip = o + ETH_HLEN
            iphl = slot.iphl
            hlen = slot.hlen
            t = ip + iphl
            tcplen = hlen - ETH_HLEN - iphl + slot.total
            if slot.v6:
                put16(buf, ip + 4, tcplen)             # payload length (RFC 8200 3)
                gso_type = vnet.GSO_TCPV6
            else:
                put16(buf, ip + 2, iphl + tcplen)       # total length (RFC 791 3.1)
                put16(buf, ip + 10, 0)
                put16(buf, ip + 10, checksum.checksum(buf[ip:t]))
                gso_type = vnet.GSO_TCPV4
            if slot.psh:
                buf[t + 13] |= TCP_PSH
            # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not its
            # complement; the kernel adds the segment's words to it (as tcp_v4_send_check)
            put16(buf, t + CSUM_OFFSET,
                  (_from_bytes(slot.addrs, "big") + IPPROTO_TCP + tcplen) % 0xFFFF or 0xFFFF)
            if used == len(pool):
                pool.append(bytearray(vnet.LEN))
            hdr = pool[used]
            used += 1
            vnet.HEADER.pack_into(hdr, 0, vnet.F_NEEDS_CSUM, gso_type, hlen, slot.gso,
                                  ETH_HLEN + iphl, CSUM_OFFSET)
            iov = [hdr, view[o:o + n]]
            if slot.pieces is None:
                iov += [view[o + hlen:o + n] for o, n in map(frames.__getitem__, members[1:])]
            else:
                at = 1
                gso = slot.gso
                for pos, k, start, stride in slot.pieces:
                    if pos > at:
                        iov += [view[o + hlen:o + n]
                                for o, n in map(frames.__getitem__, members[at:pos])]
                    # one copy of k payloads into the arena, one iovec: cheaper than k
                    # memoryviews (bench/coalesce_bench.py measures both)
                    size = k * gso
                    np.ndarray((k, gso), np.uint8, arena, cursor).__setitem__(
                        Ellipsis, np.ndarray((k, gso), np.uint8, buf, start, (stride, 1)))
                    iov.append(aview[cursor:cursor + size])
                    cursor += size
                    at = pos + k
                if at < len(members):
                    iov += [view[o + hlen:o + n] for o, n in map(frames.__getitem__, members[at:])]
            add((iov, len(members)))
        return writes


def _failing(buf, start: int, length: int, rows: int, stride: int, pseudo: int) -> list[int]:
    """Which of `rows` TCP segments of `length` bytes at buf[start + r * stride] fail
    their checksum, given the sum of their pseudo-header's addresses and protocol.

    Rows are read as little-endian words, which numpy sums twice as fast as big-endian
    ones: the ones'-complement sum does not care about byte order but for a swap of
    the result's bytes (RFC 1071 2(B)), which mod 0xFFFF is a multiplication by 256;
    so the pseudo-header sum is multiplied by 256 instead, and an odd last byte, the
    high byte of its big-endian word, is the low one of its little-endian word. A
    row's sum fits a uint32: 32,767 words of at most 0xFFFF."""
    pseudo += length
    if rows == 1:
        if length < 256:
            s = checksum.word_sum(buf[start:start + length])
        else:
            # numpy beats int.from_bytes from a few hundred bytes on (1.2 against 3 us
            # for 1,432): little-endian words again, so the sum is byte-swapped
            s = int(np.ndarray((length >> 1,), "<u2", buf, start).sum(dtype=np.uint32))
            if length & 1:
                s += buf[start + length - 1]
            s = s * 256 % 0xFFFF
        return [0] if (s + pseudo) % 0xFFFF else []
    sums = np.ndarray((rows, length >> 1), "<u2", buf, start, (stride, 2)).sum(
        axis=1, dtype=np.uint32)
    if length & 1:
        sums += np.ndarray((rows,), np.uint8, buf, start + length - 1, (stride,))
    sums += pseudo % 0xFFFF * 256 % 0xFFFF
    sums %= 0xFFFF
    return np.flatnonzero(sums).tolist()


def _bulk(run: _Run, runs: dict, key: bytes, emit, frames: list, i: int,
          block: tuple[int, int, tuple[int, ...]], seq: int, m: int) -> int:
    """Frames i + 1 .. i + k - 1 of a block (k, stride, failed), frame i just placed in
    `run`: the steps _group's loop would take for each, a stretch of frames at a time.
    They repeat frame i but for the sequence (each m more) and the fields that may vary,
    so each extends the flow's open run until 64 KiB or MAX_SEGMENTS close it, and then
    starts the next. A frame in `failed` (its checksum failed) is written alone and
    closes the flow's run, as in _group: the next one starts a new run. Returns k - 1,
    the frames placed. Their `frames` entries are placeholders (plan_runs does not
    build them): a run's first frame and a failed one get their own."""
    k, stride, failed = block
    j = i + 1
    end = i + k
    first = run
    o0, n = frames[i]
    nb = failed[0] if failed else end
    f = 1
    while j < end:
        if j == nb:
            frames[j] = (o0 + (j - i) * stride, n)
            runs.pop(key, None)
            emit(j)
            j += 1
            nb = failed[f] if f < len(failed) else end
            f += 1
            continue
        run = runs.get(key)
        if run is None:
            # frame j starts a super-frame, as frame i could: the same header facts
            run = _Run(first.head, first.mid, first.ackoff, first.opts,
                       (seq + (j - i + 1) * m) & 0xFFFFFFFF, m, first.limit, first.hlen,
                       first.iphl, first.v6, first.ipbase, first.addrs, j)
            frames[j] = (o0 + (j - i) * stride, n)
            runs[key] = run
            emit(run)
            j += 1
            continue
        # an open run takes frames of m bytes (its gso: a larger one closed it at frame i)
        members = run.members
        have = len(members)
        take = min(nb - j, MAX_SEGMENTS - have, (run.limit - run.total) // m)
        if take <= 0:
            del runs[key]        # 64 KiB: the next frame starts the next one
            continue
        members.extend(range(j, j + take))
        piece = (have, take, o0 + (j - i) * stride + run.hlen, stride)
        if run.pieces is None:
            run.pieces = [piece]
        else:
            run.pieces.append(piece)
        run.total += take * m
        run.nxt = (run.nxt + take * m) & 0xFFFFFFFF
        j += take
        if have + take == MAX_SEGMENTS:
            del runs[key]
    return k - 1


def _skip(it, k: int) -> None:
    """Advance the iterator k items (itertools' "consume" recipe: no Python loop)."""
    next(islice(it, k, k), None)


def _header_mask(t: int, hlen: int, shift: int) -> np.ndarray:
    """For _block: the big-endian 64-bit words covering a frame's first `hlen` bytes
    (TCP at `t`) from `shift` bytes before it, with zeros where a later segment may
    differ from the first (and outside the headers)."""
    keep = bytearray(bytes(shift) + b"\xff" * hlen)
    keep += bytes(-len(keep) % 8)
    vary = [(t + 14, 6)]                             # window, checksum, urgent pointer
    if t == 34:
        vary += [(18, 2), (24, 2)]                   # IPv4 ID and header checksum
    for at, ln in vary:
        keep[shift + at:shift + at + ln] = bytes(ln)
    return np.frombuffer(bytes(keep), ">u8").astype(np.uint64)


def _differences(t: int, shift: int, size: int, rows: int, plain: int,
                 m: int) -> tuple[bytes, bytes]:
    """For _block: the bytes of the masked header words of `rows` segments of m bytes
    minus the first's, as they must be: zero but for the sequence number's word (row
    r: r * m mod 2**32, in the high half); and the same with PSH in the last row,
    when it is not one of the first `plain` (else, no second way)."""
    d = np.zeros((rows, size), np.uint64)
    d[:, (t + 4 + shift) >> 3] = (np.arange(rows, dtype=np.uint64) * m & 0xFFFFFFFF) << 32
    plain_bytes = d.tobytes()
    if rows > plain:
        at = t + 13 + shift                          # the flags byte, in its word
        d[-1, at >> 3] += TCP_PSH << (7 - (at & 7)) * 8
        return plain_bytes, d.tobytes()
    return plain_bytes, plain_bytes


_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


# IPv6 extension headers a TCP header may follow (RFC 8200 section 4; 50/51 ESP and AH,
# RFC 4303/4302; 135 mobility, RFC 6275; 139/140 HIP and shim6, RFC 7401/5533)
_IPV6_EXTENSIONS = frozenset((IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, 50, 51,
                              IPPROTO_DSTOPTS, 135, 139, 140))
