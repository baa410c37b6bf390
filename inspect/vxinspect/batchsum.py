"""Batched RFC 1071 sums: the decoder's checksums, summed a batch at a time with numpy.

How data flows: while decode.make_decoder's loop walks a batch it does not sum
checksummed bytes itself; it queues each verification here (`Pending.queue`
for a header or an L4 segment, `Pending.queue_udp` for the outer UDP datagram,
which reuses a queued L4 segment's sum) with the pseudo-header already folded
into a small constant. The slow paths (outer.Outer, inner.Inner) still sum
their rare packets on the spot, but their failures go through the same queue
(`Pending.fail`), so that every checksum check reaches Tally.hit in packet
order. At the end of the batch `Pending.flush` sums every queued byte range at
once (`range_sums`: the batch buffer viewed as big-endian 16-bit words at even
and at odd offsets, one np.add.reduceat per view) and fires the checks whose
sums do not verify, in the order they were queued. The report is therefore
exactly the one a per-packet sum gives: same checks, same packets, same order.

Why: `int.from_bytes(...) % 0xFFFF` costs ~3 us for a 1400-byte segment, most
of it the bignum modulo; reduceat sums the same words in a fraction of that.
"""
from __future__ import annotations

import numpy as np

M = 0xFFFF
# The checks this module fires; a queued entry names one by its index here.
CHECK_IDS = ("ip-checksum", "inner-ip-checksum", "inner-l4-checksum", "udp-checksum")
IP_CS, INNER_IP_CS, INNER_L4_CS, UDP_CS = range(4)
CODE = {cid: i for i, cid in enumerate(CHECK_IDS)}
SIMPLE = 5  # ints per queued simple entry: check, packet, start, end, constant
UDPN = 9    # ... per UDP entry: packet, u, a, b, ue, ref, ref weight, b weight, constant


def range_sums(buf, starts, ends) -> np.ndarray:
    """The RFC 1071 sum of buf[s:e] for each (s, e), reduced mod 0xFFFF (uint64).

    Words start at s (an odd last byte is padded with a zero, as RFC 1071 says),
    so the result equals vtep.checksum.word_sum(buf[s:e]) for every range.
    """
    x = np.asarray(starts, dtype=np.int64)
    y = np.asarray(ends, dtype=np.int64)
    if not len(x):
        return np.zeros(0, dtype=np.uint64)
    y = np.maximum(x, y)
    nbytes = len(buf)
    # One view: the buffer as big-endian words at even offsets, widened once to
    # uint64 (reduceat on the narrow type re-casts per range, which costs more).
    # Byte j then weighs 256 when j is even, 1 when odd. A range [x, y) is summed
    # over the words that cover it, minus the byte before x (x odd) and the byte
    # after y (y odd); a range starting at an odd offset wants the opposite
    # weights, which is the same sum times 256 (256 * 256 == 1 mod 0xFFFF).
    b = np.frombuffer(buf, dtype=np.uint8, count=nbytes)
    if nbytes & 1:  # the byte after an odd end must exist
        b = np.concatenate((b, np.zeros(1, dtype=np.uint8)))
    # One zero word after the last: reduceat wants every index inside the array.
    words = np.empty(len(b) // 2 + 1, dtype=np.uint64)
    words[:-1] = b.view(">u2")
    words[-1] = 0
    ws = x >> 1
    we = (y + 1) >> 1
    # Ranges in descending start order: the "gaps" reduceat also sums, from one
    # range's end to the next range's start, then run backwards, and a backward
    # step costs one element, so only the ranges' own words are read.
    order = np.argsort(-ws, kind="stable")
    idx = np.empty(2 * len(x), dtype=np.int64)
    idx[0::2] = ws[order]
    idx[1::2] = we[order]
    t = np.empty(len(x), dtype=np.uint64)
    t[order] = np.add.reduceat(words, idx)[0::2]
    t[ws == we] = 0  # an empty range: reduceat gives the word at its index
    xo = (x & 1).astype(bool)
    yo = (y & 1).astype(bool) & (ws != we)
    t[xo] -= b[x[xo] - 1].astype(np.uint64) << np.uint64(8)
    t[yo] -= b[y[yo]].astype(np.uint64)
    t[xo] = (t[xo] % np.uint64(M)) << np.uint64(8)
    out = t
    out %= np.uint64(M)
    return out


class Pending:
    """One decoder's queue of checksum verifications, flushed at the end of each batch."""

    def __init__(self, hit):
        self.hit = hit
        self.simple: list[int] = []  # SIMPLE ints per entry
        self.udp: list[int] = []     # UDPN ints per entry

    def fail(self, cid: str, no: int) -> None:
        """A slow path found check `cid` failing on packet `no`: queue it in its place."""
        self.simple.extend((CODE[cid], no, 0, 0, 1))

    def routed_hit(self, hit):
        """A hit() for the slow paths: checksum checks through the queue, others direct."""
        fail = self.fail

        def routed(cid, no):
            if cid in CODE:
                fail(cid, no)
            else:
                hit(cid, no)
        return routed

    def flush(self, buf) -> None:
        """Sum what is queued against `buf` (the batch just decoded) and fire the failures."""
        simple, udp = self.simple, self.udp
        if not simple and not udp:
            return
        hit = self.hit
        # The decoder holds bound extend()s of these lists: emptied in place.
        s = np.array(simple, dtype=np.int64).reshape(-1, SIMPLE)
        d = np.array(udp, dtype=np.int64).reshape(-1, UDPN)
        simple.clear()
        udp.clear()
        k = len(s)
        starts, ends = s[:, 2], s[:, 3]
        if len(d):
            # [u, a) and [b, ue): the parts of the datagram around the reused L4
            # segment (a == b == ue when there is none: the datagram is [u, a)).
            starts = np.concatenate((starts, d[:, 1], d[:, 3]))
            ends = np.concatenate((ends, d[:, 2], d[:, 4]))
        sums = range_sums(buf, starts, ends)
        ssum = sums[:k]
        total = ssum + s[:, 4].astype(np.uint64)
        for i in np.flatnonzero(total % np.uint64(M)).tolist():
            hit(CHECK_IDS[s[i, 0]], int(s[i, 1]))
        if not len(d):
            return
        n = len(d)
        head, rest = sums[k:k + n], sums[k + n:]
        ref = d[:, 5]
        mid = ssum[np.maximum(ref, 0)] if k else np.zeros(n, dtype=np.uint64)
        mid[ref < 0] = 0
        total = (head + mid * d[:, 6].astype(np.uint64)
                 + rest * d[:, 7].astype(np.uint64) + d[:, 8].astype(np.uint64))
        for i in np.flatnonzero(total % np.uint64(M)).tolist():
            hit("udp-checksum", int(d[i, 0]))
