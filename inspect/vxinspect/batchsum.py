"""Batched RFC 1071 sums: the decoder's checksums, summed a slice at a time with numpy.

How data flows: while decode.make_decoder's loop walks a batch it does not sum
checksummed bytes itself; it queues each verification here, as flat ints in the
four lists of `Pending` (see its docstring), with the pseudo-header already
folded into a small constant. The slow paths (outer.Outer, inner.Inner) still
sum their rare packets on the spot, but their failures go through the same
queue (`Pending.fail`). After each slice of a batch (`Pending.submit`) every
queued byte range is summed at once (`range_sums`: the span of the batch buffer
the slice covers, as big-endian 16-bit words widened to uint64, one
np.add.reduceat), and the failing verifications are kept; at the end of the
batch (`Pending.flush`) they fire through Tally.hit in packet order. The report
is therefore exactly the one a per-packet sum gives: same checks, same packets,
same order, same counts.

With a `Worker` (run.inspect_source starts one for a regular file of at least
run.WORKER_MIN bytes) the summing moves to a forked process on the other core:
the parent sends each batch's queues and file offset, the worker pread()s the
same bytes and sends back the failures, which fire in the parent in batch
order; the parent then never imports numpy (a tenth of a second) and never
sums. Small files, stdin and live captures sum in-process as above.

Why: `int.from_bytes(...) % 0xFFFF` costs ~3 us for a 1400-byte segment, most
of it the bignum modulo, and the loop paid it twice or three times per packet;
reduceat sums the same words for a fraction of that, and one list.extend per
verification is what the loop pays instead. (A summing thread beside the loop
was measured and lost: the GIL hands over too rarely for it to overlap; a
process does overlap.)
"""
from __future__ import annotations

import os
import select
import signal
import struct
from collections import deque

M = 0xFFFF
# The checks this module fires; a queued entry names one by its index here.
CHECK_IDS = ("ip-checksum", "inner-ip-checksum", "inner-l4-checksum", "udp-checksum")
IP_CS, INNER_IP_CS, INNER_L4_CS, UDP_CS = range(4)
CODE = {cid: i for i, cid in enumerate(CHECK_IDS)}
SIMPLE, COMBINED, UDPN, FAST = 5, 7, 7, 2  # ints per entry of each queue (see Pending)
IPV4_HLEN = 20  # the common layer's inner IPv4 header, just before its L4 segment


def range_sums(buf, starts, ends) -> np.ndarray:
    """The RFC 1071 sum of buf[s:e] for each (s, e), reduced mod 0xFFFF (uint64).

    Words start at s (an odd last byte is padded with a zero, as RFC 1071 says),
    so the result equals vtep.checksum.word_sum(buf[s:e]) for every range.
    """
    import numpy as np  # here, not at the top: a parent whose worker sums never loads it

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

    Four queues of flat ints (one list.extend per entry is the cheapest way to
    queue from the decoder's loop):
      simple:   check, packet, start, end, constant -- one header or L4 segment; a
                slow path's failure is an entry that cannot verify (constant 1)
      combined: packet, u, a, b, ue, L4 constant, UDP constant -- the common layer:
                inner IPv4 header [a - 20, a), L4 segment [a, b) and, when u >= 0,
                the outer UDP datagram [u, ue) = [u, a - 20) + those two + [b, ue)
      udp:      packet, u, a, b, ue, weight of [b, ue), constant -- an outer UDP
                datagram [u, ue) around a segment [a, b) the slow path summed (its
                residue is in the constant), or a == b == ue
      fast:     packet, start -- the whole common packet (Ethernet, IPv4 without
                options, UDP with a checksum, VXLAN, Ethernet, IPv4 without options,
                TCP/ICMP/IGMP, nothing cut): its outer IPv4 header's simple entry and
                its combined entry, read back from the bytes by `fast_entries`
    Every check fires in ascending packet order, as when each packet was summed on
    its own: failures from the four queues are merged by packet number.

    With a `Worker` (a regular file, read by run.inspect_source), a batch's queues
    are not summed here: `flush` hands them to the worker process with the file
    offset of the batch buffer (`base`, set by the driver before each batch) and
    goes on; the worker's failures fire, batch after batch in order, as they come
    back, and all of them by the time `drain` returns.
    """

    def __init__(self, hit, worker: Worker | None = None):
        self.hit = hit
        self.worker = worker
        self.base = 0  # file offset of the batch buffer's first byte (with a worker)
        self.simple: list[int] = []
        self.combined: list[int] = []
        self.udp: list[int] = []
        self.fast: list[int] = []
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
        """Sum what is queued so far against `buf`; keep the failures for flush.
        With a worker nothing happens here: the whole batch goes to it in flush."""
        queues = self.simple, self.combined, self.udp, self.fast
        if not any(queues) or self.worker is not None:
            return
        self.done.append(failures(buf, *queues))
        for q in queues:  # the decoder holds bound extend()s of these lists: emptied in place
            q.clear()

    def flush(self, buf) -> None:
        """Sum the rest of the batch's queue against `buf` (the batch just decoded) and
        fire the failures of the whole batch in packet order."""
        worker = self.worker
        if worker is not None:
            queues = self.simple, self.combined, self.udp, self.fast
            if any(queues):
                worker.send(self.base, len(buf), queues, self.hit)
                for q in queues:
                    q.clear()
            return
        self.submit(buf)
        done, self.done = self.done, []
        hit = self.hit
        for part in done:
            for no, cid in part:
                hit(cid, no)

    def drain(self) -> None:
        """Every failure of what was flushed has fired (a report is about to be made)."""
        if self.worker is not None:
            self.worker.drain()


JOB = struct.Struct("<qqqqqq")  # base, bytes to read there, then the four queues' lengths
RESULT = struct.Struct("<q")  # failures that follow, as (packet, check index) int64 pairs
IN_FLIGHT = 24  # batches not yet fired: bounds both processes' memory (~64 KiB each)
LAG = 16  # the worker this many batches behind (after its first answer): sum here


def _read_exact(fd: int, n: int) -> bytes | None:
    parts = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


class Worker:
    """A forked process that sums a regular file's queued checksums while the parent
    decodes the next batch: the second core does numpy's import and most sums.

    How data flows: `send` writes one job per batch down a pipe -- the batch's file
    offset and length and its four queues as int64 arrays (array.array, no numpy
    in the parent) -- and the worker pread()s those bytes from its copy of the
    file descriptor (the page cache has them: the parent just read them), sums them
    with `sliced_failures` and writes back the failing (packet, check) pairs. Every
    batch has its place in `jobs`, oldest first, and fires only when all before it
    have fired, so failures fire in packet order, per check as without a worker.
    If the worker falls LAG batches behind (the other core is busy with something
    else), the parent sums the next batch itself, then numpy and all, and keeps its
    result in its place; so a busy machine costs at most what summing here costs.
    At most IN_FLIGHT batches are outstanding (the parent waits for the oldest
    beyond that), so memory stays flat. While writing a job the parent also takes
    in any answer (select), so neither side can block the other on a full pipe. If
    the worker dies, the parent sums the unanswered jobs itself, pread()ing the
    same bytes, and every later batch too: the report is the same.
    """

    def __init__(self, fd: int):
        self.fd = fd
        # [base, length, queues, hit, failures]: failures None while the worker has it
        self.jobs: deque = deque()
        self.answers = bytearray()
        self.alive = True
        self.answered = 0  # jobs the worker has answered (0: still importing numpy)
        self.here = 0  # batches the parent summed itself
        jr, jw = os.pipe()
        rr, rw = os.pipe()
        for f in (jr, jw, rr, rw):
            try:  # fewer, larger writes; not everywhere allowed
                import fcntl
                fcntl.fcntl(f, 1031, 1 << 20)  # F_SETPIPE_SZ
            except (ImportError, OSError):
                pass
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its results are checked in the parent
            code = 1
            try:
                os.close(jw)
                os.close(rr)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the input
                _serve(jr, rw, fd)
                code = 0
            finally:
                os._exit(code)  # no atexit, no stdio flush of the parent's buffers
        os.close(jr)
        os.close(rw)
        self.pid = pid
        self.job_w = jw
        self.ans_r = rr

    def send(self, base: int, length: int, queues, hit) -> None:
        from array import array
        queues = tuple(array("q", q) for q in queues)
        self._fire(block=False)
        waiting = sum(1 for j in self.jobs if j[4] is None)
        job = [base, length, queues, hit, None]
        if not self.alive or (self.answered and waiting >= LAG):
            job[4] = self._sum_here(job)
            self.here += 1
        else:
            data = b"".join((JOB.pack(base, length, *(len(q) for q in queues)),
                             *(q.tobytes() for q in queues)))
            try:
                self._write(data)
            except OSError:
                self.alive = False
                job[4] = self._sum_here(job)
        self.jobs.append(job)
        self._fire(block=False)
        while len(self.jobs) > IN_FLIGHT:
            self._fire(block=True, one=True)

    def drain(self) -> None:
        while self.jobs:
            self._fire(block=True, one=True)

    def close(self) -> None:
        """Answer everything, end the worker (EOF on its pipe) and reap it."""
        try:
            self.drain()
        finally:
            for f in (self.job_w, self.ans_r):
                try:
                    os.close(f)
                except OSError:
                    pass
            self.job_w = self.ans_r = -1
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass

    def _write(self, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            r, w, _ = select.select([self.ans_r], [self.job_w], [])
            if r:
                got = os.read(self.ans_r, 1 << 20)
                if not got:
                    raise BrokenPipeError()
                self.answers += got
            if w:
                mv = mv[os.write(self.job_w, mv[:1 << 16]):]

    def _sum_here(self, job) -> list:
        base, length, queues, _hit, _ = job
        return [(no, CODE[cid]) for no, cid in
                sliced_failures(os.pread(self.fd, length, base), *queues)]

    def _fire(self, block: bool, one: bool = False) -> None:
        """Fire the oldest jobs whose failures are known, in order; the worker's answers
        are read as they are needed (waited for when `block`). With `one`, one job."""
        while self.jobs:
            job = self.jobs[0]
            if job[4] is None:
                pairs = self._take_answer(block) if self.alive else None
                if pairs is None:
                    if self.alive and not block:
                        return  # not answered yet
                    self.alive = False  # it died: sum here what it held
                    pairs = self._sum_here(job)
                else:
                    self.answered += 1
                job[4] = pairs
            self.jobs.popleft()
            hit = job[3]
            for no, code in job[4]:
                hit(CHECK_IDS[code], no)
            if one:
                return

    def _take_answer(self, block: bool):
        """The next answer's pairs; None when it is not complete yet (not block), or the
        worker is gone (then alive is cleared)."""
        from array import array
        while True:
            if len(self.answers) >= RESULT.size:
                (n,) = RESULT.unpack_from(self.answers)
                need = RESULT.size + 16 * n
                if len(self.answers) >= need:
                    a = array("q", bytes(self.answers[RESULT.size:need]))
                    del self.answers[:need]
                    return list(zip(a[0::2], a[1::2]))
            if not block and not select.select([self.ans_r], [], [], 0)[0]:
                return None
            try:
                got = os.read(self.ans_r, 1 << 20)
            except OSError:
                got = b""
            if not got:
                self.alive = False
                return None
            self.answers += got


def _serve(jobs: int, answers: int, fd: int) -> None:  # pragma: no cover - in the child
    """The worker's loop: a job in, its failures out, until the parent closes the pipe."""
    import numpy as np
    while True:
        head = _read_exact(jobs, JOB.size)
        if head is None:
            return
        base, length, *sizes = JOB.unpack(head)
        body = _read_exact(jobs, 8 * sum(sizes))
        if body is None:
            return
        q = np.frombuffer(body, dtype=np.int64)
        cuts = np.cumsum([0, *sizes])
        buf = os.pread(fd, length, base)
        out = sliced_failures(buf, *(q[cuts[i]:cuts[i + 1]] for i in range(4)))
        pairs = np.array([(no, CODE[cid]) for no, cid in out], dtype=np.int64).reshape(-1, 2)
        _write_all(answers, RESULT.pack(len(pairs)) + pairs.tobytes())


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - in the child
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv):]


def sliced_failures(buf, simple, combined, udp, fast, per: int = 1024) -> list:
    """failures() of a whole batch's queues (int64 arrays), `per` packets at a time: the
    same list, with numpy's temporaries a slice's size rather than the batch's."""
    import numpy as np

    queues = [np.asarray(q, dtype=np.int64).reshape(-1, w)
              for q, w in ((simple, SIMPLE), (combined, COMBINED), (udp, UDPN), (fast, FAST))]
    numbers = [q[:, k] for q, k in zip(queues, (1, 0, 0, 0))]  # ascending in each queue
    top = max((int(n[-1]) for n in numbers if len(n)), default=0)
    low = min((int(n[0]) for n in numbers if len(n)), default=0)
    out = []
    for cut in range(low, top + 1, per):
        parts = []
        for q, n in zip(queues, numbers):
            i, j = np.searchsorted(n, (cut, cut + per))
            parts.append(q[i:j])
        # a slice's failures come sorted; slices follow one another in packet order
        out += failures(buf, *parts)
    return out


def fast_entries(buf, fast):
    """The simple and combined entries of `fast` entries (packet, start), read from the
    packets' bytes exactly as the decoder would have queued them (see Pending)."""
    import numpy as np

    f = np.asarray(fast, dtype=np.int64).reshape(-1, FAST)
    no, p = f[:, 0], f[:, 1]
    b8 = np.frombuffer(buf, dtype=np.uint8, count=len(buf))

    def word(at):  # big-endian 16-bit words at offsets `at`, as int64
        return (b8[at].astype(np.int64) << 8) | b8[at + 1]

    q, u = p + 14, p + 34  # outer IPv4 header, outer UDP header
    ulen = word(u + 4)
    # the pseudo-header: both outer addresses (at q + 12), UDP, the UDP length
    udp_c = (sum(word(q + k) for k in range(12, 20, 2)) + 17 + ulen) % M
    v = u + 8  # VXLAN, then Ethernet (14), the inner IPv4 header at v + 22
    itlen = word(v + 24)
    iproto = b8[v + 31].astype(np.int64)
    a = v + 42
    b = v + 22 + itlen
    tcp_c = (sum(word(v + k) for k in range(34, 42, 2)) + 6 + itlen - IPV4_HLEN) % M
    combo = np.where(iproto == 6, tcp_c, 0)  # ICMP and IGMP: no pseudo-header
    simple = np.stack((np.full(len(f), IP_CS), no, q, u, np.zeros(len(f), np.int64)), axis=1)
    combined = np.stack((no, u, a, b, u + ulen, combo, udp_c), axis=1)
    return simple, combined


def failures(buf, simple, combined, udp, fast=()) -> list:
    """[(packet number, check id)] of the queued verifications that fail, by packet."""
    import numpy as np

    s = np.array(simple, dtype=np.int64).reshape(-1, SIMPLE)
    c = np.array(combined, dtype=np.int64).reshape(-1, COMBINED)
    d = np.array(udp, dtype=np.int64).reshape(-1, UDPN)
    if len(fast):
        fs, fc = fast_entries(buf, fast)
        s = np.concatenate((s, fs))
        c = np.concatenate((c, fc))
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
