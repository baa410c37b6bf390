"""Batched RFC 1071 sums: the decoder's checksums, summed a slice at a time with numpy.

How data flows: while decode.make_decoder's loop walks a batch it does not sum
checksummed bytes itself; it queues each verification here, as flat ints in the
three lists of `Pending` (see its docstring), with the pseudo-header already
folded into a small constant. The slow paths (outer.Outer, inner.Inner) still
sum their rare packets on the spot, but their failures go through the same
queue (`Pending.fail`). After each slice of a batch (`Pending.submit`) every
queued byte range is summed at once (`range_sums`: the span of the batch buffer
the slice covers, as big-endian 16-bit words widened to uint64, one
np.add.reduceat), and the failing verifications are kept; at the end of the
batch (`Pending.flush`) they fire through Tally.hit in packet order. The report
is therefore exactly the one a per-packet sum gives: same checks, same packets,
same order, same counts.

Why: `int.from_bytes(...) % 0xFFFF` costs ~3 us for a 1400-byte segment, most
of it the bignum modulo, and the loop paid it twice or three times per packet;
reduceat sums the same words for a fraction of that, and one list.extend per
verification is what the loop pays instead. (A summing thread beside the loop
was measured and lost: the GIL hands over too rarely for it to overlap.)
"""
from __future__ import annotations

import numpy as np

M = 0xFFFF
# The checks this module fires; a queued entry names one by its index here.
CHECK_IDS = ("ip-checksum", "inner-ip-checksum", "inner-l4-checksum", "udp-checksum")
IP_CS, INNER_IP_CS, INNER_L4_CS, UDP_CS = range(4)
CODE = {cid: i for i, cid in enumerate(CHECK_IDS)}
SIMPLE, COMBINED, UDPN = 5, 7, 7  # ints per entry of each queue (see Pending)
IPV4_HLEN = 20  # the common layer's inner IPv4 header, just before its L4 segment


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
    # Only the span the ranges cover (from an even offset, to one byte past the
    # last end: the byte after an odd end is read), zero-padded past the buffer.
    empty = y == x
    if empty.all():
        return np.zeros(len(x), dtype=np.uint64)
    lo = int(x[~empty].min()) & ~1
    x = np.where(empty, lo, x)  # an empty range anywhere (a slow path's failure: 0, 0)
    y = np.where(empty, lo, y)  # sums to 0 at lo
    need = (int(y.max()) + 2 - lo) & ~1
    b = np.frombuffer(buf, dtype=np.uint8, count=len(buf))[lo:lo + need]
    if len(b) < need:
        b = np.concatenate((b, np.zeros(need - len(b), dtype=np.uint8)))
    x = x - lo
    y = y - lo
    # The span as big-endian words, widened once to uint64 (reduceat on the narrow
    # type re-casts per range, which costs more), with one zero word after the last:
    # reduceat wants every index inside the array. Byte j then weighs 256 when j
    # is even, 1 when odd. A range [x, y) is summed over the words that cover it,
    # minus the byte before x (x odd) and the byte after y (y odd); a range that
    # starts at an odd offset wants the opposite weights, which is the same sum
    # times 256 (256 * 256 == 1 mod 0xFFFF).
    words = np.empty(need // 2 + 1, dtype=np.uint64)
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
    """One decoder's queues of checksum verifications, summed a slice at a time.

    Three queues of flat ints (one list.extend per entry is the cheapest way to
    queue from the decoder's loop):
      simple:   check, packet, start, end, constant -- one header or L4 segment; a
                slow path's failure is an entry that cannot verify (constant 1)
      combined: packet, u, a, b, ue, L4 constant, UDP constant -- the common layer:
                inner IPv4 header [a - 20, a), L4 segment [a, b) and, when u >= 0,
                the outer UDP datagram [u, ue) = [u, a - 20) + those two + [b, ue)
      udp:      packet, u, a, b, ue, weight of [b, ue), constant -- an outer UDP
                datagram [u, ue) around a segment [a, b) the slow path summed (its
                residue is in the constant), or a == b == ue
    Every check fires in ascending packet order, as when each packet was summed on
    its own: failures from the three queues are merged by packet number.
    """

    def __init__(self, hit):
        self.hit = hit
        self.simple: list[int] = []
        self.combined: list[int] = []
        self.udp: list[int] = []
        self.done: list = []  # per summed slice: its failures, [(packet, check id)]

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

    def submit(self, buf) -> None:
        """Sum what is queued so far against `buf`; keep the failures for flush."""
        simple, combined, udp = self.simple, self.combined, self.udp
        if not simple and not combined and not udp:
            return
        # The decoder holds bound extend()s of these lists: emptied in place.
        self.done.append(failures(buf, simple, combined, udp))
        simple.clear()
        combined.clear()
        udp.clear()

    def flush(self, buf) -> None:
        """Sum the rest of the batch's queue against `buf` (the batch just decoded) and
        fire the failures of the whole batch in packet order."""
        self.submit(buf)
        done, self.done = self.done, []
        hit = self.hit
        for part in done:
            for no, cid in part:
                hit(cid, no)


def failures(buf, simple: list, combined: list, udp: list) -> list:
    """[(packet number, check id)] of the queued verifications that fail, by packet."""
    s = np.array(simple, dtype=np.int64).reshape(-1, SIMPLE)
    c = np.array(combined, dtype=np.int64).reshape(-1, COMBINED)
    d = np.array(udp, dtype=np.int64).reshape(-1, UDPN)
    ns, nc, nd = len(s), len(c), len(d)
    ca, cb, cu = c[:, 2], c[:, 3], c[:, 1]
    cu_ok = cu >= 0
    cu0 = np.where(cu_ok, cu, ca)  # no UDP check: an empty head
    # All ranges at once: simple; combined inner header, L4, UDP head [u, u + 30)
    # and rest [b, ue); udp [u, a) and [b, ue).
    starts = np.concatenate((s[:, 2], ca - IPV4_HLEN, ca, cu0, cb, d[:, 1], d[:, 3]))
    ends = np.concatenate((s[:, 3], ca, cb, np.where(cu_ok, ca - IPV4_HLEN, ca),
                           c[:, 4], d[:, 2], d[:, 4]))
    sums = range_sums(buf, starts, ends)
    k = 0
    out = []
    m = np.uint64(M)

    def take(n):
        nonlocal k
        k += n
        return sums[k - n:k]

    total = take(ns) + s[:, 4].astype(np.uint64)
    for i in np.flatnonzero(total % m).tolist():
        out.append((int(s[i, 1]), CHECK_IDS[s[i, 0]]))
    if nc:
        hdr, l4, head, rest = take(nc), take(nc), take(nc), take(nc)
        cno = c[:, 0].tolist()
        for i in np.flatnonzero(hdr).tolist():
            out.append((cno[i], "inner-ip-checksum"))
        for i in np.flatnonzero((l4 + c[:, 5].astype(np.uint64)) % m).tolist():
            out.append((cno[i], "inner-l4-checksum"))
        # the header and the L4 segment start at even distances from u (30, 50)
        wb = np.where((cb - cu0) & 1, 256, 1).astype(np.uint64)
        total = head + hdr + l4 + rest * wb + c[:, 6].astype(np.uint64)
        for i in np.flatnonzero(cu_ok & (total % m != 0)).tolist():
            out.append((cno[i], "udp-checksum"))
    if nd:
        head, rest = take(nd), take(nd)
        total = head + rest * d[:, 5].astype(np.uint64) + d[:, 6].astype(np.uint64)
        for i in np.flatnonzero(total % m).tolist():
            out.append((int(d[i, 0]), "udp-checksum"))
    out.sort(key=_packet)  # stable: one packet's checks keep their order
    return out


def _packet(failure):
    return failure[0]
