#!/usr/bin/env python3
"""Benchmark loading a large cluster plan against parsing its TOML alone.

    python bench/plan_bench.py [--nodes 1000,5000,20000] [--repeat R] [--dual-stack] [--strict]

What it does (no root, touches nothing but a temporary directory):

1. For each N writes a plan of N nodes: overlay 100.64.0.0/10, one /28 per
   node, underlay 10.x.y.1, derived MACs (the plan the validation has most to
   do for: every subnet, underlay IP and MAC is checked against all others).
   --dual-stack adds overlay6 fd00:100:64::/48 and a /64 per node: the second
   family's subnets are swept and checked too.
2. R times each (best and median reported):
     vtep plan load       vtep.plan.load(path): read, TOML, validate, build the
                          Node and Plan values;
     tomllib.loads        the same text parsed by the standard library alone:
                          the reference, measured in the same run; no loader
                          can be cheaper than its TOML parse.
3. Prints a table, the ratio load / tomllib, and the target with PASS/MISS:
     20,000 nodes loaded   <= 2 s
   (Validation used to compare every subnet with every other: 5,000 nodes took
   about 10 s and 20,000 over 120 s.) Exit status 1 with --strict on a missed
   target, or if a load does not return N nodes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGET_NODES, TARGET_LOAD = 20000, 2.0


def plan_text(n: int, dual_stack: bool = False) -> str:
    out = ['[cluster]', 'vni = 10', 'port = 4789', 'overlay = "100.64.0.0/10"']
    out += ['overlay6 = "fd00:100:64::/48"', ''] if dual_stack else ['']
    for i in range(n):
        out += ['[[nodes]]', f'name = "n{i}"', f'underlay_ip = "10.{i >> 8}.{i & 255}.1"',
                f'subnet = "100.{64 + (i >> 12)}.{(i >> 4) & 255}.{(i & 15) * 16}/28"']
        out += [f'subnet6 = "fd00:100:64:{i:x}::/64"', ''] if dual_stack else ['']
    return "\n".join(out)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def fmt(xs) -> str:
    return f"{min(xs) * 1000:9.1f} {statistics.median(xs) * 1000:9.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1000,5000,20000", help="comma-separated node counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dual-stack", action="store_true",
                    help="an IPv6 overlay too (overlay6, a /64 per node)")
    ap.add_argument("--strict", action="store_true", help="exit 1 on a missed target")
    a = ap.parse_args()
    from vtep import plan as planlib

    counts = [int(x) for x in a.nodes.split(",")]
    rows, medians = [], {}
    with tempfile.TemporaryDirectory() as d:
        for n in counts:
            text = plan_text(n, a.dual_stack)
            path = os.path.join(d, f"plan-{n}.toml")
            with open(path, "w") as f:
                f.write(text)
            got = len(planlib.load(path).nodes)  # warm up, and check it loads whole
            if got != n:
                print(f"{n} nodes: load returned {got} nodes", file=sys.stderr)
                return 1
            load = timed(lambda: planlib.load(path), a.repeat)
            toml = timed(lambda: tomllib.loads(text), a.repeat)
            medians[n] = statistics.median(load)
            rows.append((n, len(text), load, toml))

    print(f"Python {sys.version.split()[0]}, best/median of {a.repeat} runs, milliseconds"
          f"{', dual-stack plans' if a.dual_stack else ''}")
    print(f"{'nodes':>6} {'what':<30} {'best':>9} {'median':>9}")
    for n, size, load, toml in rows:
        print(f"{n:>6} {'vtep plan load':<30} {fmt(load)}")
        print(f"{n:>6} {f'tomllib.loads alone ({size // 1024} KiB)':<30} {fmt(toml)}")
        ratio = statistics.median(load) / statistics.median(toml)
        print(f"{n:>6} {'  ratio load / tomllib (median)':<30} {ratio:9.2f}x")
    print("targets:")
    missed = False
    if TARGET_NODES in medians:
        v = medians[TARGET_NODES]
        ok = v <= TARGET_LOAD
        missed |= not ok
        print(f"  {TARGET_NODES:,} nodes loaded {v * 1000:9.1f} ms <= {TARGET_LOAD * 1000:.0f} ms  "
              f"{'PASS' if ok else 'MISS'}")
    else:
        print(f"  ({TARGET_NODES:,} nodes not measured)")
    return 1 if missed and a.strict else 0


if __name__ == "__main__":
    sys.exit(main())
