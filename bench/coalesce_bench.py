#!/usr/bin/env python3
"""What coalescing received TCP segments costs per batch (vtep.coalesce, issue 11).

    .venv/bin/python bench/coalesce_bench.py [--batches 2000] [--repeat 5]

No root, no network: a receive buffer is filled once as UDP GRO leaves it (45
datagrams of one sender, each an 8-byte VXLAN header and a 1,464-byte inner frame:
IPv4, TCP with timestamps, 1,398 payload bytes), and Coalescer.plan is timed on it,
against the simplest plan there is: one write per frame, i.e. building each frame's
iov. The first frame's headers plan edits in place are restored between calls,
outside the timing. Other cases: the same over IPv6; three flows interleaved (15
segments each, so no two of a flow are at an equal stride); one corrupted segment
in the middle (the plan runs twice). Each figure is the best of --repeat runs of
--batches calls: µs per batch, µs per frame, frames per second.

Coalescer.plan_runs is timed on the same buffer given as the one UDP GRO read it
is (offset, stride, 45, last length), next to plan: µs per batch and plan's time
over plan_runs'. Last, the two ways of building a merged write's iov from 44
payloads at a stride are timed alone: a memoryview per payload (plan's way), or
one numpy copy into a contiguous buffer and one memoryview (plan_runs' way).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

import numpy as np  # noqa: E402

from vtep import vnet  # noqa: E402
from vtep.coalesce import Coalescer  # noqa: E402

SEGMENTS = 45
MSS = 1398
TS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]


def segment(seq: int, v6: bool, sport: int) -> bytes:
    l3 = IPv6(src="fd42:2::2", dst="fd42:2:1::3") if v6 else IP(
        src="172.2.0.2", dst="172.2.1.3", flags="DF", id=seq & 0xFFFF)
    return bytes(Ether(src="02:42:ac:02:00:02", dst="02:42:ac:02:01:03") / l3
                 / TCP(sport=sport, dport=5201, seq=seq, ack=1, flags="A", options=TS)
                 / bytes((seq + k) % 251 for k in range(MSS)))


def batch(v6=False, flows=1, corrupt=False) -> tuple[bytearray, list[tuple[int, int]]]:
    per = SEGMENTS // flows
    segs = [[segment(1000 + k * MSS, v6, 40000 + f) for k in range(per)] for f in range(flows)]
    frames = [segs[f][k] for k in range(per) for f in range(flows)]
    if corrupt:
        bad = bytearray(frames[len(frames) // 2])
        bad[-1] ^= 1
        frames[len(frames) // 2] = bytes(bad)
    buf = bytearray()
    spans = []
    for f in frames:
        buf += b"\x08" + bytes(7)   # the VXLAN header before each inner frame
        spans.append((len(buf), len(f)))
        buf += f
    return buf, spans


def reference(buf, frames):
    """One TAP write per frame: what plan replaces."""
    view = memoryview(buf)
    zero = vnet.ZERO
    return [([zero, view[o:o + n]], 1) for o, n in frames]


def as_read(frames) -> list[tuple[int, int, int, int]]:
    """The batch as the one UDP GRO read it is: (offset, stride, count, last length)."""
    stride = frames[1][0] - frames[0][0]
    return [(frames[0][0], stride, len(frames), frames[-1][1])]


def iov_ways(batches: int, repeat: int) -> tuple[float, float]:
    """µs to reference 44 payloads of 1,398 bytes at a 1,480-byte stride: one memoryview
    each, or one numpy copy into a contiguous buffer (and one memoryview of it)."""
    stride, k, start = 1480, SEGMENTS - 1, 8 + 1480 + 82
    buf = bytearray(SEGMENTS * stride + 64)
    view = memoryview(buf)
    arena = bytearray(len(buf))
    aview = memoryview(arena)

    def slices():
        return [view[o:o + MSS] for o in range(start, start + k * stride, stride)]

    def copy():
        np.ndarray((k, MSS), np.uint8, arena)[...] = np.ndarray(
            (k, MSS), np.uint8, buf, start, (stride, 1))
        return [aview[:k * MSS]]

    clock = time.perf_counter
    out = []
    for fn in (slices, copy):
        best = float("inf")
        for _ in range(repeat):
            t0 = clock()
            for _ in range(batches):
                fn()
            best = min(best, (clock() - t0) / batches)
        out.append(best * 1e6)
    return out[0], out[1]


def timed(fn, buf, frames, batches: int) -> float:
    """Seconds per call, restoring the buffer (plan edits first frames) between calls."""
    pristine = bytes(buf)
    total = 0.0
    clock = time.perf_counter
    for _ in range(batches):
        t0 = clock()
        writes = fn(buf, frames)
        total += clock() - t0
        del writes
        buf[:] = pristine
    return total / batches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    if a.batches < 1 or a.repeat < 1:
        ap.error("--batches and --repeat must be at least 1")
    cases = [("IPv4, one flow", dict()), ("IPv6, one flow", dict(v6=True)),
             ("IPv4, 3 flows interleaved", dict(flows=3)),
             ("IPv4, one corrupted segment", dict(corrupt=True))]
    coalescer = Coalescer()
    print(f"{SEGMENTS} segments of {MSS} payload bytes per batch; best of {a.repeat} x "
          f"{a.batches} batches")
    print(f"{'case':30} {'writes':>6} {'us/batch':>9} {'us/frame':>9} {'frames/s':>10} "
          f"{'reference us/batch':>19} {'plan_runs us/batch':>19} {'ratio':>6}")
    for name, kw in cases:
        buf, frames = batch(**kw)
        runs = as_read(frames)
        writes = len(coalescer.plan(bytearray(buf), frames))
        assert len(coalescer.plan_runs(bytearray(buf), runs)) == writes
        plan = min(timed(coalescer.plan, buf, frames, a.batches) for _ in range(a.repeat))
        ref = min(timed(reference, buf, frames, a.batches) for _ in range(a.repeat))
        fast = min(timed(coalescer.plan_runs, buf, runs, a.batches) for _ in range(a.repeat))
        n = len(frames)
        print(f"{name:30} {writes:>6} {plan * 1e6:>9.1f} {plan * 1e6 / n:>9.2f} "
              f"{n / plan:>10,.0f} {ref * 1e6:>19.1f} {fast * 1e6:>19.1f} {plan / fast:>6.2f}")
    slices, copy = iov_ways(a.batches, a.repeat)
    print(f"iov of {SEGMENTS - 1} payloads: a memoryview each {slices:.2f} us, "
          f"one numpy copy {copy:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
