#!/usr/bin/env python3
"""Benchmark vtep-cni against Debian's reference plugins (bridge + host-local), measured
in the same run on the same namespaces.

    sudo python bench/cni_bench.py [--rounds 20] [--parallel 10]

What it does (root; everything inside network namespaces it creates, named
vtb<pid>-..., removed in `finally`, as are its temporary files):

1. A node namespace holding a veth pair (the underlay, 10.0.0.1/24) and a plan
   whose node n0 owns 172.30.0.0/24; a second node n1 (10.0.0.2) makes it a cluster.
2. For each plugin, `--rounds` times with a fresh container namespace: ADD, CHECK
   (with the ADD's result as prevResult) and DEL, each a process start as a runtime
   makes it; the wall time of each (median, p90). vtep-cni with a `plan` source;
   the reference `bridge` with `host-local` IPAM (its dataDir in the temporary dir),
   isGateway, isDefaultGateway and the same MTU: the same attachment.
3. `--parallel` ADDs started at once (the runtime starts plugins concurrently), then
   as many DELs: the wall time until all are done, and whether the addresses are
   distinct.
Prints a table and the ratios vtep / reference. No target: the figures say what a
container start pays for the plugin. Exit 1 if any call fails or two ADDs got one
address.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REFERENCE = "/usr/lib/cni"
PLAN = """[cluster]
vni = 10
port = 4789
overlay = "172.30.0.0/16"

[[nodes]]
name = "n0"
underlay_ip = "10.0.0.1"
subnet = "172.30.0.0/24"

[[nodes]]
name = "n1"
underlay_ip = "10.0.0.2"
subnet = "172.30.1.0/24"
"""


def sh(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


class Bench:
    def __init__(self, prefix: str, tmp: str):
        self.prefix, self.tmp = prefix, tmp
        self.node = prefix + "node"
        self.made: list[str] = []
        self.plugin = os.path.join(os.path.dirname(sys.executable), "vtep-cni")

    def netns(self, name: str) -> str:
        ns = self.prefix + name
        r = sh(["ip", "netns", "add", ns])
        if r.returncode:
            raise SystemExit(f"ip netns add {ns}: {r.stderr.strip()}")
        self.made.append(ns)
        return f"/run/netns/{ns}"

    def setup(self) -> None:
        self.netns("node")
        for argv in (["ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
                     ["ip", "address", "add", "10.0.0.1/24", "dev", "ul0"],
                     ["ip", "link", "set", "ul0", "up"], ["ip", "link", "set", "ul1", "up"]):
            r = sh(["ip", "netns", "exec", self.node] + argv)
            if r.returncode:
                raise SystemExit(f"{' '.join(argv)}: {r.stderr.strip()}")
        with open(os.path.join(self.tmp, "plan.toml"), "w") as f:
            f.write(PLAN)

    def teardown(self) -> None:
        for ns in reversed(self.made):
            sh(["ip", "netns", "delete", ns])

    def configs(self) -> dict:
        return {
            "vtep": (self.plugin, {"cniVersion": "1.0.0", "name": "benchnet", "type": "vtep",
                                   "plan": os.path.join(self.tmp, "plan.toml"),
                                   "stateDir": os.path.join(self.tmp, "state")}),
            "reference": (os.path.join(REFERENCE, "bridge"), {
                "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "cnibr0",
                "isGateway": True, "isDefaultGateway": True, "mtu": 1450,
                "ipam": {"type": "host-local", "subnet": "172.31.0.0/24",
                         "dataDir": os.path.join(self.tmp, "host-local")}}),
        }

    def call(self, binary, conf, command, cid, path, prev=None) -> tuple[float, dict | None]:
        if prev is not None:
            conf = dict(conf, prevResult=prev)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": path,
               "CNI_IFNAME": "eth0", "CNI_PATH": REFERENCE}
        t0 = time.perf_counter()
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.node}", binary],
                           input=json.dumps(conf), env=env, capture_output=True, text=True,
                           timeout=60)
        dt = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(f"{os.path.basename(binary)} {command} {cid}: "
                               f"{(r.stdout + r.stderr).strip()[:300]}")
        return dt, (json.loads(r.stdout) if r.stdout.strip() else None)


def stats(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.9))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=10)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("cni_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not os.path.exists(os.path.join(REFERENCE, "bridge")):
        print(f"cni_bench: no reference plugins in {REFERENCE} (sh bootstrap.sh installs "
              "containernetworking-plugins)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="vtep-cni-bench-")
    b = Bench(f"vtb{os.getpid()}-", tmp)
    failed = False
    try:
        b.setup()
        rows, par = {}, {}
        for name, (binary, conf) in b.configs().items():
            times = {"ADD": [], "CHECK": [], "DEL": []}
            for i in range(a.rounds):
                path = b.netns(f"{name[0]}{i}")
                dt, result = b.call(binary, conf, "ADD", f"{name}{i}", path)
                times["ADD"].append(dt)
                times["CHECK"].append(b.call(binary, conf, "CHECK", f"{name}{i}", path,
                                             result)[0])
                times["DEL"].append(b.call(binary, conf, "DEL", f"{name}{i}", path,
                                           result)[0])
            rows[name] = {k: stats(v) for k, v in times.items()}
            paths = [b.netns(f"{name[0]}p{i}") for i in range(a.parallel)]
            got, errors = {}, []

            def add(i, binary=binary, conf=conf, name=name, paths=paths):
                try:
                    got[i] = b.call(binary, conf, "ADD", f"{name}p{i}", paths[i])[1]
                except RuntimeError as e:
                    errors.append(str(e))
            t0 = time.perf_counter()
            threads = [threading.Thread(target=add, args=(i,)) for i in range(a.parallel)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall_add = time.perf_counter() - t0
            addrs = [r["ips"][0]["address"] for r in got.values()]
            if errors or len(set(addrs)) != a.parallel:
                print(f"{name}: parallel ADDs: {errors or addrs}", file=sys.stderr)
                failed = True
            t0 = time.perf_counter()
            for i in range(a.parallel):
                b.call(binary, conf, "DEL", f"{name}p{i}", paths[i])
            par[name] = (wall_add, time.perf_counter() - t0, len(set(addrs)))
        print(f"CNI calls, {a.rounds} rounds each (a process start per call, as a runtime "
              "makes it); median / p90 in ms")
        print(f"{'':12} {'vtep-cni':>18} {'bridge+host-local':>20} {'ratio (median)':>16}")
        for op in ("ADD", "CHECK", "DEL"):
            v, r = rows["vtep"][op], rows["reference"][op]
            print(f"{op:12} {v[0]*1e3:8.1f} / {v[1]*1e3:6.1f}   {r[0]*1e3:9.1f} / {r[1]*1e3:6.1f}"
                  f"   {v[0] / r[0]:14.2f}x")
        print(f"\n{a.parallel} ADDs started at once, then {a.parallel} DELs one after another:")
        for name, (wa, wd, distinct) in par.items():
            print(f"  {name:10} ADDs done in {wa*1e3:7.0f} ms ({distinct} distinct addresses); "
                  f"DELs {wd*1e3:7.0f} ms")
        print(f"  ratio vtep / reference (parallel ADDs): {par['vtep'][0] / par['reference'][0]:.2f}x")
    except RuntimeError as e:
        print(f"cni_bench: {e}", file=sys.stderr)
        failed = True
    finally:
        b.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
