#!/usr/bin/env python3
"""How long `vtep doctor` takes on a converged node, against reading the same state with
iproute2, measured in the same run.

    sudo python bench/doctor_bench.py [--peers 100,1000] [--repeat 5]

What it does (root; one network namespace it creates, vtb<pid>-doctor, removed in
`finally`): the namespace of kernel_converge_bench (an underlay device holding
10.0.0.1/8 and a plan of N+1 nodes), converged by `vtep run --kernel --once`; then, R
times, `vtep doctor` as an operator runs it (a process: interpreter start, plan,
netlink reads, the diff, the host checks, the text report), against the reference:
what an operator types to look at the same state, `ip -d -j link show`, `ip -j neigh
show dev vxlan0`, `bridge -j fdb show dev vxlan0`, `ip -j route show dev vxlan0`,
`sysctl net.ipv4.ip_forward` and `nft -j list ruleset`, one process each. Prints best
and median and the ratio doctor / reference. Exit 1 if doctor does not find the node
healthy (the converged state must give no error).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_converge_bench import plan_text, setup, sh  # noqa: E402  (the same namespace)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = (["ip", "-d", "-j", "link", "show"], ["ip", "-j", "neigh", "show", "dev", "vxlan0"],
             ["bridge", "-j", "fdb", "show", "dev", "vxlan0"],
             ["ip", "-j", "route", "show", "dev", "vxlan0"],
             ["sysctl", "net.ipv4.ip_forward"], ["nft", "-j", "list", "ruleset"])


def timed(argv, ns) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(["ip", "netns", "exec", ns] + argv, capture_output=True, text=True,
                       timeout=300)
    return time.perf_counter() - t, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="100,1000")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (it builds a network namespace)", file=sys.stderr)
        return 1
    vtep = [sys.executable, "-m", "vtep.cli"]
    ns = f"vtb{os.getpid()}-doctor"
    rows = []
    try:
        setup(ns)
        with tempfile.TemporaryDirectory() as d:
            for n in (int(x) for x in a.peers.split(",")):
                plan = os.path.join(d, f"plan{n}.toml")
                with open(plan, "w") as f:
                    f.write(plan_text(n))
                sh(["ip", "link", "del", "vxlan0"], ns, check=False)
                sh(vtep + ["run", "--kernel", "--once", "--config", plan, "--node", "n0",
                           "--state-dir", d], ns)
                doc, ref = [], []
                for _ in range(a.repeat):
                    dt, r = timed(vtep + ["doctor", "--config", plan, "--node", "n0",
                                          "--state-dir", d], ns)
                    if r.returncode != 1 or "agent.not-running" not in r.stdout or \
                            r.stdout.count("ERROR") != 1:
                        # healthy but for the agent: --once leaves none running
                        print(f"{n} peers: doctor did not find the converged node healthy "
                              f"(but for its agent):\n{r.stdout}{r.stderr}", file=sys.stderr)
                        return 1
                    doc.append(dt)
                    t = time.perf_counter()
                    for argv in REFERENCE:
                        subprocess.run(["ip", "netns", "exec", ns] + argv,
                                       capture_output=True, timeout=60)
                    ref.append(time.perf_counter() - t)
                rows.append((n, doc, ref))
    finally:
        sh(["ip", "netns", "delete", ns], check=False)
    print(f"vtep doctor on a converged node (no agent, no probe), best / median of "
          f"{a.repeat}, ms")
    print(f"{'peers':>6} {'vtep doctor':>20} {'iproute2 reads (reference)':>28} {'ratio':>8}")
    for n, doc, ref in rows:
        print(f"{n:>6} {min(doc)*1e3:9.0f} / {statistics.median(doc)*1e3:7.0f}"
              f" {min(ref)*1e3:15.0f} / {statistics.median(ref)*1e3:7.0f}"
              f" {statistics.median(doc) / statistics.median(ref):7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
