#!/usr/bin/env python3
"""Does a SIGHUP with a huge plan stall the userspace data path? Pings through the tunnel.

    sudo python bench/reload_bench.py [--nodes 20000] [--seconds 8] [--mode userspace]

What it does (root; two network namespaces it creates, vtb<pid>-a and vtb<pid>-b,
joined by one veth with tx checksum offload off, removed in `finally`):

1. Writes a plan of N nodes: a (10.0.0.1) and b (10.0.0.2) on the veth, and
   N-2 more nodes whose underlay addresses exist nowhere (they only cost
   entries: a neighbour and a route each on a's device). Overlay 100.64.0.0/10,
   a /26 per node.
2. Starts `vtep run --MODE` for node a with that plan (N-1 peers) and
   `vtep run --kernel --once` for node b with a two-node plan, then pings a's
   VTEP address from b every 10 ms (`ping -D`, bounded in count) and records
   when each reply came back.
3. Reference window: SECONDS of pings with nothing else happening.
   Reload window: the same, with the plan rewritten (one far node's subnet
   moved) and a SIGHUP sent one second in; the time until the agent logs the
   pass that followed is the reload time.
4. Prints, per window, the replies, the losses and the longest gap between two
   replies, and the ratio reload/reference of the longest gaps. A stall shows as
   a gap of the reload's length; the target is no gap over 1 s whatever N.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vtep.lab.topology import Topology  # noqa: E402

VTEP = [sys.executable, "-m", "vtep.cli"]
INTERVAL = 0.01
TARGET_GAP = 1.0


def plan_text(n: int, moved: bool = False) -> str:
    """Nodes a, b and n-2 far nodes; `moved` shifts the last far node's subnet."""
    out = ['[cluster]', 'overlay = "100.64.0.0/10"', '']

    def node(name, ip, i):
        third, fourth = divmod(i, 4)   # a /26 per node: 4 to a /24
        return ['[[nodes]]', f'name = "{name}"', f'underlay_ip = "{ip}"',
                f'subnet = "100.{64 + (third >> 8)}.{third & 255}.{fourth * 64}/26"', '']
    out += node("a", "10.0.0.1", 0) + node("b", "10.0.0.2", 1)
    for i in range(2, n):
        j = n if moved and i == n - 1 else i
        out += node(f"far{i}", f"10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}", j)
    return "\n".join(out)


def window(t, seconds: float, during=None) -> dict:
    """Ping a's VTEP from b for `seconds`; `during()` runs one second in."""
    count = int(seconds / INTERVAL)
    p = t["b"].popen(["ping", "-D", "-n", "-i", str(INTERVAL), "-W", "1", "-c", str(count),
                      "100.64.0.0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     text=True)
    if during is not None:
        time.sleep(1.0)
        during()
    out, _ = p.communicate(timeout=seconds + 30)
    stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"sent": count, "replies": len(stamps), "gap": max(gaps) if gaps else float("inf")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--mode", choices=("userspace", "kernel"), default="userspace")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 3 <= a.nodes <= 60000:
        print("--nodes: 3..60000", file=sys.stderr)
        return 2
    t = Topology(f"vtb{os.getpid()}-")
    na, nb = t.add_node("a"), t.add_node("b")
    t.add_link(na, nb, "eth0", "eth0", "10.0.0.1/24", "10.0.0.2/24", tx_offload=False)
    with tempfile.TemporaryDirectory() as d, t:
        big, small = os.path.join(d, "big.toml"), os.path.join(d, "small.toml")
        with open(big, "w") as f:
            f.write(plan_text(a.nodes))
        with open(small, "w") as f:
            f.write(plan_text(2))
        log = open(os.path.join(d, "a.log"), "w+")
        t0 = time.monotonic()
        agent = na.popen(VTEP + ["run", f"--{a.mode}", "--config", big, "--node", "a",
                                 "--interval", "3600", "--state-dir", d],
                         stdout=log, stderr=subprocess.STDOUT)
        nb.cmd(VTEP + ["run", "--kernel", "--once", "--config", small, "--node", "b",
                       "--state-dir", d])

        def agent_log():
            log.flush()
            with open(log.name) as f:
                return f.read()
        while "converged (" not in agent_log():
            if agent.poll() is not None or time.monotonic() - t0 > 300:
                print(agent_log()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        start = time.monotonic() - t0
        ref = window(t, a.seconds)
        marks = {}

        def watch():   # the pass after the SIGHUP logs its changes when it is over
            while "after: plan re-read" not in agent_log():
                if time.monotonic() - marks["hup"] > 120:
                    return
                time.sleep(0.01)
            marks["done"] = time.monotonic()

        def reload():
            with open(big, "w") as f:
                f.write(plan_text(a.nodes, moved=True))
            marks["hup"] = time.monotonic()
            os.kill(agent.pid, signal.SIGHUP)
            threading.Thread(target=watch, daemon=True).start()
        hup = window(t, a.seconds, reload)
        while "done" not in marks and time.monotonic() - marks["hup"] < 120:
            time.sleep(0.1)
        done = "done" in marks
        reload_s = f"took {marks['done'] - marks['hup']:.2f} s" if done else "never logged"
        os.kill(agent.pid, signal.SIGTERM)
        agent.wait(timeout=60)
    print(f"vtep run --{a.mode}, {a.nodes} nodes ({a.nodes - 1} peers): first pass "
          f"{start:.1f} s; pings every {INTERVAL * 1000:.0f} ms through the tunnel")
    print(f"{'window':<22}{'sent':>7}{'replies':>9}{'longest gap':>14}")
    for name, w in (("reference (idle)", ref), ("SIGHUP, plan re-read", hup)):
        print(f"{name:<22}{w['sent']:>7}{w['replies']:>9}{w['gap'] * 1000:>11.0f} ms")
    ratio = hup["gap"] / ref["gap"] if ref["gap"] else float("inf")
    verdict = "PASS" if hup["gap"] <= TARGET_GAP else "MISS"
    print(f"longest gap, reload / reference: {ratio:.1f}x; target: no gap over "
          f"{TARGET_GAP:g} s: {verdict}; SIGHUP to the end of its pass: {reload_s}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
