#!/usr/bin/env python3
"""Benchmark `vtep run --kernel` convergence against the same state typed as iproute2 batches.

    sudo python bench/kernel_converge_bench.py [--peers 255,1000] [--repeat R] [--dual-stack]
                                               [--strict]

What it does (root; everything inside one network namespace it creates,
named vtb<pid>-bench, removed in `finally`):

1. Gives the namespace an underlay device holding 10.0.0.1/8 (a dummy device,
   or a veth pair kept inside the namespace where the dummy module is
   missing), and for each N writes a plan of N+1 nodes: overlay
   100.64.0.0/10, one /24 per node, underlay 10.x.y.1, VNI 10, port 4789.
2. For each N, R times (best and median reported):
     converge from nothing   Reconciler.converge(first=True) with no device:
                             device, /32, up, then N neighbour, 2N fdb (each peer's
                             MAC and its flood entry) and N route entries (change
                             logging on, written to /dev/null);
     no-op pass              converge() again on the converged state (largest N);
     iproute2 reference      the same state as `vtep plan` prints it, run as
                             `ip -batch` (device, address, neighbours) +
                             `bridge -batch` (fdb) + `ip -batch` (routes), wall
                             time including the three process starts;
     iproute2 read reference `ip -j neigh show dev`, `bridge -j fdb show dev`,
                             `ip -j route show dev`: what an external check
                             of the no-op kind costs with the standard tools.
   After every timed run the state is verified (N of each entry) and removed.
   --dual-stack (issue 15): the plan also has overlay6 fd00:100:64::/48 and a
   /64 per node, so there are 2N neighbour and 2N route entries (an IPv6
   neighbour and route per peer next to the IPv4 ones; still 2N fdb) and the
   device holds a /128 too; the references add `ip -6` reads.
3. Prints a table, the ratios vtep/iproute2, and the targets with PASS/MISS:
     1,000 peers converged from nothing   <= 1 s
     no-op pass at 1,000 peers             <= 100 ms
   Exit status 1 if a run fails or its state is wrong; with --strict also on
   a missed target.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGET_CONVERGE_1000 = 1.0
TARGET_NOOP_1000 = 0.100
UNDERLAY = "ul0"


def plan_text(n_peers: int, dual_stack: bool = False) -> str:
    out = ['[cluster]', 'vni = 10', 'port = 4789', 'overlay = "100.64.0.0/10"']
    out += ['overlay6 = "fd00:100:64::/48"', ''] if dual_stack else ['']
    for i in range(n_peers + 1):
        out += ['[[nodes]]', f'name = "n{i}"',
                f'underlay_ip = "10.{i >> 8}.{i & 255}.1"' if i else 'underlay_ip = "10.0.0.1"',
                f'subnet = "100.{64 + (i >> 8)}.{i & 255}.0/24"']
        out += [f'subnet6 = "fd00:100:64:{i:x}::/64"', ''] if dual_stack else ['']
    return "\n".join(out)


# -- inside the namespace ---------------------------------------------------------------------

def inner(plan_path: str, repeat: int, noop: bool) -> dict:
    import logging

    import socket

    from vtep import commands, netlink, nlmsg, state
    from vtep import plan as planlib
    from vtep.config import RunConfig

    commands.setup_logging()
    sink = open(os.devnull, "w")
    for h in commands.log.handlers:
        h.setStream(sink)   # format every change line, as a real run does, but quietly
    plan = planlib.load(plan_path)
    n = len(plan.nodes) - 1
    fams = len(plan.overlays)   # a neighbour and a route per peer in each family
    families = (socket.AF_INET, socket.AF_INET6)[:fams] if plan.overlay else (socket.AF_INET6,)
    config = RunConfig(mode="kernel", plan_path=plan_path, node="n0", device="vxlan0")
    res = {"peers": n, "converge": [], "noop": [], "ip_batch": [], "ip_read": []}

    def check(vt):
        idx = vt.ifindex
        r = netlink.Rtnl().read(idx, families)
        # not the kernel's own: IPv6's prefix route for the /128, multicast NOARP entries
        counts = (sum(bool(e.state & nlmsg.NUD_PERMANENT) for e in r.neighbours.values()),
                  len(r.fdb), sum(e.proto != nlmsg.RTPROT_KERNEL for e in r.routes.values()))
        want = (fams * n, 2 * n, fams * n)   # fdb: each peer's MAC, and its flood entry
        if counts != want:
            raise SystemExit(f"wrong state after convergence: {counts}, want {want}")

    def wipe():
        subprocess.run(["ip", "link", "del", "vxlan0"], capture_output=True)

    vt = commands.reconciler(config, plan)
    try:
        wipe()
        for _ in range(repeat):
            t = time.perf_counter()
            lines = vt.converge(first=True)
            res["converge"].append(time.perf_counter() - t)
            if len(lines) < (2 + 2 * fams) * n:
                raise SystemExit(f"converge logged {len(lines)} changes, want >= "
                                 f"{(2 + 2 * fams) * n}")
            check(vt)
            if noop:
                for _ in range(max(5, repeat)):
                    t = time.perf_counter()
                    lines = vt.converge()
                    res["noop"].append(time.perf_counter() - t)
                    if lines:
                        raise SystemExit(f"no-op pass changed things: {lines[:3]}")
            wipe()
        # the reference: what `vtep plan` prints, as batches
        want = vt.want
        cmds = state.iproute2(want)
        # `ip -batch` lines take no global option: "-6" goes, the address says the family
        ips = [c[3:].removeprefix("-6 ") for c in cmds if c.startswith("ip ")]
        ip1 = [c for c in ips if not c.startswith("route ")]
        br = [c[7:] for c in cmds if c.startswith("bridge ")]
        ip2 = [c for c in ips if c.startswith("route ")]
        with tempfile.TemporaryDirectory() as d:
            files = []
            for name, lines_ in (("ip1", ip1), ("br", br), ("ip2", ip2)):
                p = os.path.join(d, name)
                with open(p, "w") as f:
                    f.write("\n".join(lines_) + "\n")
                files.append(p)
            for _ in range(repeat):
                t = time.perf_counter()
                for tool, p in (("ip", files[0]), ("bridge", files[1]), ("ip", files[2])):
                    r = subprocess.run([tool, "-batch", p], capture_output=True, text=True)
                    if r.returncode:
                        raise SystemExit(f"{tool} -batch failed: {r.stderr.strip()[:200]}")
                res["ip_batch"].append(time.perf_counter() - t)
                vt.backend.ifindex = vt.links.index_of("vxlan0")
                check(vt)
                t = time.perf_counter()
                reads = [["ip", "-j", "neigh", "show", "dev", "vxlan0"],
                         ["bridge", "-j", "fdb", "show", "dev", "vxlan0"],
                         ["ip", "-j", "route", "show", "dev", "vxlan0"]]
                if fams == 2:
                    reads += [["ip", "-6", "-j", "route", "show", "dev", "vxlan0"]]
                for cmd in reads:
                    subprocess.run(cmd, capture_output=True, check=True)
                res["ip_read"].append(time.perf_counter() - t)
                wipe()
    finally:
        wipe()
        vt.close()
        logging.shutdown()
    return res


# -- outside -----------------------------------------------------------------------------------

def sh(cmd, ns=None, check=True):
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    r = subprocess.run(full, capture_output=True, text=True)
    if check and r.returncode:
        raise SystemExit(f"{' '.join(full)}: {r.stderr.strip()}")
    return r


def setup(ns: str) -> str:
    sh(["ip", "netns", "add", ns])
    sh(["ip", "link", "set", "lo", "up"], ns)
    if sh(["ip", "link", "add", UNDERLAY, "type", "dummy"], ns, check=False).returncode:
        # no dummy module here: a veth pair whose both ends stay in the namespace
        sh(["ip", "link", "add", UNDERLAY, "type", "veth", "peer", "name", "ul1"], ns)
        sh(["ip", "link", "set", "ul1", "up"], ns)
        kind = "veth"
    else:
        kind = "dummy"
    sh(["ip", "addr", "add", "10.0.0.1/8", "dev", UNDERLAY], ns)
    sh(["ip", "link", "set", UNDERLAY, "up"], ns)
    return kind


def fmt(xs):
    return f"{min(xs) * 1000:8.1f} {statistics.median(xs) * 1000:8.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="255,1000", help="comma-separated peer counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dual-stack", action="store_true",
                    help="an IPv6 overlay too: a neighbour and a route per peer in each family")
    ap.add_argument("--strict", action="store_true", help="exit 1 on a missed target")
    ap.add_argument("--inner", nargs=3, metavar=("PLAN", "REPEAT", "NOOP"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        print(json.dumps(inner(a.inner[0], int(a.inner[1]), a.inner[2] == "1")))
        return 0
    if os.geteuid() != 0:
        print("needs root (it builds a network namespace)", file=sys.stderr)
        return 1
    counts = [int(x) for x in a.peers.split(",")]
    ns = f"vtb{os.getpid()}-bench"
    results = []
    try:
        kind = setup(ns)
        with tempfile.TemporaryDirectory() as d:
            for n in counts:
                p = os.path.join(d, f"plan{n}.toml")
                with open(p, "w") as f:
                    f.write(plan_text(n, a.dual_stack))
                r = sh([sys.executable, __file__, "--inner", p, str(a.repeat),
                        "1" if n == max(counts) else "0"], ns, check=False)
                if r.returncode:
                    print(f"{n} peers: {r.stderr.strip() or r.stdout.strip()}", file=sys.stderr)
                    return 1
                results.append(json.loads(r.stdout))
    finally:
        sh(["ip", "netns", "delete", ns], check=False)
    print(f"kernel {os.uname().release}, underlay {kind}, best/median of {a.repeat} "
          f"(no-op: of {max(5, a.repeat)}), ms{', dual-stack plans' if a.dual_stack else ''}")
    print(f"{'peers':>6} {'what':<34} {'best':>8} {'median':>8}")
    ok = True
    for r in results:
        n = r["peers"]
        print(f"{n:>6} {'vtep converge from nothing':<34} {fmt(r['converge'])}")
        print(f"{n:>6} {'ip/bridge -batch (reference)':<34} {fmt(r['ip_batch'])}")
        ratio = statistics.median(r["converge"]) / statistics.median(r["ip_batch"])
        print(f"{n:>6} {'  ratio vtep / iproute2 (median)':<34} {ratio:8.2f}x")
        if r["noop"]:
            print(f"{n:>6} {'vtep no-op pass':<34} {fmt(r['noop'])}")
            print(f"{n:>6} {'ip/bridge -j show (reference)':<34} {fmt(r['ip_read'])}")
            ratio = statistics.median(r["noop"]) / statistics.median(r["ip_read"])
            print(f"{n:>6} {'  ratio vtep / iproute2 (median)':<34} {ratio:8.2f}x")
    print("targets:")
    for r in results:
        if r["peers"] == 1000:
            c, z = statistics.median(r["converge"]), statistics.median(r["noop"])
            for label, v, lim in (("1,000 peers converged", c, TARGET_CONVERGE_1000),
                                  ("no-op pass at 1,000 peers", z, TARGET_NOOP_1000)):
                good = v <= lim
                ok &= good
                print(f"  {label:<28} {v * 1000:7.1f} ms <= {lim * 1000:.0f} ms  "
                      f"{'PASS' if good else 'MISS'}")
    return 0 if ok or not a.strict else 1


if __name__ == "__main__":
    sys.exit(main())
