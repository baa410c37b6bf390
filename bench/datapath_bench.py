#!/usr/bin/env python3
"""Benchmark the userspace data path against the kernel's, in the seed topology.

    sudo python bench/datapath_bench.py [--pairings kernel-kernel,userspace-kernel,...]
                                        [--time 5] [--udp-time 3] [--udp-rate 200M]
                                        [--repeat N] [--profile DIR] [--json FILE] [--strict]
                                        [--between vteps|pods] [--ping-count N]

What it does (root; everything inside namespaces it creates, named vtb<pid>-...,
removed in `finally`; every process it starts is ended by its PID):

1. Builds the seed lab with the project's lab builder (vtep.lab.lab.build,
   LabSpec(pods=False, agents=False): the seed topology, tx checksum offload off on
   the underlay veths since the userspace path needs filled checksums, and the seed
   plan, recorded in a temporary directory; --udp-checksum off adds
   `udp_checksum = false` to its [cluster]).
2. For each pairing (network-1 <-> network-2):
     kernel-kernel          `vtep run --kernel` on both nodes,
     kernel-kernel-txcsum   the same with the veths' default offloads (tx checksum
                            offload on: the figure users compare against; the
                            userspace path needs it off, see 1.),
     userspace-kernel       `vtep run --userspace` on network-1, `--kernel` on network-2,
     userspace-userspace    `vtep run --userspace` on both,
     userspace-kernel-no-offload, userspace-userspace-no-offload
                            the same with `--no-offload`: the per-frame loops, the
                            "before" of issue 11's offloads,
   starts the two VTEPs inside the node namespaces, waits until the overlay
   answers a ping, then measures between the VTEP addresses 172.2.0.0 and 172.2.1.0
   (or, with --between pods, between a pod on each node, 172.2.0.2 and 172.2.1.2,
   attached by `vtep pod add` with its veth's default offloads and forwarded by the
   node: the traffic of a cluster):
     ping RTT               ping -c N -i 0.01 (min, median, 90th percentile of the
                            replies' times; --ping-count N, default 100),
     TCP                    iperf3, one stream, --time seconds, each direction
                            (receiver's figure; sender retransmits),
     small packets          iperf3 UDP, 64-byte payloads at --udp-rate for
                            --udp-time seconds, each direction: packets/s received, loss,
   and, for each userspace node, the data-path counters from `vtep status --json`
   (drops by reason: ~0 expected under TCP), plus the kernel's UDP receive-buffer
   errors and the TAP device's tx drops in that namespace, which the process's
   counters cannot see.
3. Prints a table, the userspace/kernel ratios, the VTEP's CPU per Gbit/s, and the
   targets of issue 11, each PASS/MISS:
     userspace<->kernel and userspace<->userspace TCP >= 3.5 Gbit/s each way and
       >= half of kernel<->kernel in the same run,
     64-byte UDP at the offered rate: >= 250 kpps received each way (userspace-kernel),
     RTT no worse than with --no-offload (when that pairing ran).
   Exit status 1 if a step fails; with --strict also on a missed target.

--profile DIR records each userspace VTEP with py-spy (pip install py-spy)
during the TCP and UDP runs of each pairing's first repetition, as collapsed stacks in
DIR/<pairing>-<tcp|udp><1to2|2to1>-<node>.folded
(flamegraph.pl or speedscope draw them; `--profile` slows the VTEP it samples).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vtep import netns  # noqa: E402
from vtep.errors import LabError  # noqa: E402
from vtep.lab import lab as lablib, record, seed  # noqa: E402
from vtep.lab.topology import end_process  # noqa: E402

TARGET_GBPS = 3.5
TARGET_KERNEL_SHARE = 0.5
TARGET_KPPS = 250
NODES = lablib.NODES
VTEP_IP = {"network-1": "172.2.0.0", "network-2": "172.2.1.0"}   # the seed plan's VTEPs
PAIRINGS = {
    "kernel-kernel": ("kernel", "kernel"),
    "kernel-kernel-txcsum": ("kernel", "kernel"),
    "userspace-kernel": ("userspace", "kernel"),    # userspace on network-1
    "userspace-userspace": ("userspace", "userspace"),
    "userspace-kernel-no-offload": ("userspace", "kernel"),
    "userspace-userspace-no-offload": ("userspace", "userspace"),
}
DEFAULT_PAIRINGS = ("kernel-kernel", "kernel-kernel-txcsum", "userspace-kernel",
                    "userspace-userspace", "userspace-kernel-no-offload",
                    "userspace-userspace-no-offload")
CONVERGE_TIMEOUT = 20.0
IPERF_PORT = 5201
DEVICE = "vxlan0"
HZ = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def end(p: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM this Popen's own PID, SIGKILL after `grace`."""
    if p is not None:
        end_process(p, grace)


class PodEnd:
    """A lab pod's namespace with the two calls Pairing makes of a topology Node."""

    def __init__(self, ns):
        self.ns = ns

    def cmd(self, argv, check=True, timeout=30):
        return netns.sh(argv, ns=self.ns, check=check, timeout=timeout)

    def popen(self, argv, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kw)


class Pairing:
    """Two `vtep run` processes, one per node namespace (lablib.start_agent, recorded in the
    lab), and what is measured between them."""

    def __init__(self, lab, name, modes, args):
        self.lab, self.topo, self.name, self.modes = lab, lab.topology, name, modes
        self.args = args
        self.procs: dict[str, dict] = {}     # node -> the lab's record of its `vtep run`
        self.result: dict = {"pairing": name, "modes": dict(zip(NODES, modes))}

    def end(self, node):
        """(where the traffic of `node` starts or ends, its address): the node itself and
        its VTEP address, or with --between pods its pod (a namespace of the lab)."""
        if self.args.between == "pods":
            pod = self.lab.pods[node]
            return PodEnd(pod["ns"]), pod["ip"]
        return self.topo[node], VTEP_IP[node]

    def ip(self, node):
        return self.end(node)[1]

    def state_dir(self, node):
        return str(self.lab.dir / node)

    def start(self):
        extra = ["--no-offload"] if self.name.endswith("-no-offload") else []
        if self.name.endswith("-txcsum"):
            self.tx_checksum("on")
        for node, mode in zip(NODES, self.modes):
            self.procs[node] = lablib.start_agent(self.lab, node, path=mode,
                                                  args=extra if mode == "userspace" else ())

    def tx_checksum(self, state: str) -> None:
        """tx checksum offload on every underlay veth end (the lab builds them with it off)."""
        for link in self.topo.links:
            for node, dev in ((link.a, link.a_if), (link.b, link.b_if)):
                node.cmd(["ethtool", "-K", dev, "tx", state], timeout=10)

    def alive(self):
        for node, rec in self.procs.items():
            if not record.alive(rec):
                raise BenchError(f"{self.name}: vtep run on {node} exited: "
                                 f"{record.tail(rec['log'])}")

    def stop(self):
        for node in self.procs:
            lablib.stop_agent(self.lab, node)
        self.procs.clear()
        if self.name.endswith("-txcsum"):
            self.tx_checksum("off")

    def wait_converged(self):
        t0 = time.monotonic()
        n1, _ = self.end("network-1")
        while True:
            self.alive()
            r = n1.cmd(["ping", "-c1", "-W1", "-I", self.ip("network-1"), self.ip("network-2")],
                       check=False, timeout=5)
            if r.returncode == 0:
                self.result["converge_s"] = round(time.monotonic() - t0, 2)
                return
            if time.monotonic() - t0 > CONVERGE_TIMEOUT:
                raise BenchError(f"{self.name}: the overlay did not answer a ping within "
                                 f"{CONVERGE_TIMEOUT:g}s")
            time.sleep(0.2)

    # -- measurements ---------------------------------------------------------------------

    def ping(self):
        """RTT over the tunnel: min, median, 90th percentile and max of each reply's time
        (an average is one slow reply away from another figure on a shared machine)."""
        r = self.end("network-1")[0].cmd(
            ["ping", "-n", "-c", str(self.args.ping_count), "-i", "0.01", "-W", "1",
             self.ip("network-2")], check=False, timeout=15 + self.args.ping_count * 0.05)
        times = sorted(float(t) for t in re.findall(r"time=([\d.]+) ms", r.stdout))
        loss = re.search(r"([\d.]+)% packet loss", r.stdout)
        if not times:
            raise BenchError(f"{self.name}: ping: {r.stdout.strip()[-200:] or r.stderr.strip()}")
        self.result["rtt_ms"] = {"min": times[0], "median": statistics.median(times),
                                 "p90": times[int(0.9 * (len(times) - 1))],
                                 "avg": statistics.fmean(times), "max": times[-1],
                                 "loss_pct": float(loss[1]) if loss else None}

    def iperf(self, src, dst, extra, seconds, profile=None):
        """One bounded iperf3 run, client (sender) in `src`, one-off server in `dst`."""
        sn, dn = self.end(src)[0], self.end(dst)[0]
        server = dn.popen(["iperf3", "-s", "-1", "-B", self.ip(dst), "-p", str(IPERF_PORT)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL)
        spies = []
        try:
            deadline = time.monotonic() + 5
            while True:  # listening yet?
                r = dn.cmd(["ss", "-Hltn", f"sport = :{IPERF_PORT}"], check=False, timeout=5)
                if r.stdout.strip():
                    break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{self.name}: iperf3 server in {dst} did not start")
                time.sleep(0.05)
            if profile:
                kind = "udp" if "-u" in extra else "tcp"
                spies = self.spy(profile, seconds, f"{kind}{src[-1]}to{dst[-1]}")
            r = sn.cmd(["iperf3", "-c", self.ip(dst), "-B", self.ip(src), "-p", str(IPERF_PORT),
                        "-t", str(seconds), "-J", "--connect-timeout", "3000", *extra],
                       check=False, timeout=seconds + 20)
            try:
                doc = json.loads(r.stdout)
            except ValueError:
                raise BenchError(f"{self.name}: iperf3 {src}->{dst}: {r.stderr.strip()[-200:]}")
            if doc.get("error"):
                raise BenchError(f"{self.name}: iperf3 {src}->{dst}: {doc['error']}")
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{self.name}: iperf3 server in {dst} did not exit after its run")
            return doc
        finally:
            end(server)
            for s in spies:
                try:   # py-spy writes its file when its -d seconds are up: let it
                    s.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
                end(s)

    def spy(self, outdir, seconds, tag):
        exe = shutil.which("py-spy")
        if not exe:
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        spies = []
        for node, mode in zip(NODES, self.modes):
            if mode == "userspace":
                out = os.path.join(outdir, f"{self.name}-{tag}-{node}.folded")
                spies.append(subprocess.Popen(
                    [exe, "record", "-r", "500", "-d", str(max(1, int(seconds))), "-f", "raw", "-o", out, "-p",
                     str(self.procs[node]["pid"])], stdout=subprocess.DEVNULL,
                    stderr=open(out + ".log", "w")))
        time.sleep(0.5)  # attached before the traffic starts
        return spies

    def cpu(self) -> dict:
        """(user, system) CPU seconds so far of each userspace VTEP process."""
        out = {}
        for node, mode in zip(NODES, self.modes):
            if mode == "userspace":
                try:
                    with open(f"/proc/{self.procs[node]['pid']}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                out[node] = (int(fields[11]) / HZ, int(fields[12]) / HZ)  # utime, stime
        return out

    def tcp(self, src, dst, profile=None):
        c0, t0 = self.cpu(), time.monotonic()
        doc = self.iperf(src, dst, [], self.args.time, profile)
        c1, wall = self.cpu(), time.monotonic() - t0
        end_ = doc["end"]
        # CPU share of each userspace VTEP over the run (100 = one core): user, system
        cpu = {n: [round(100 * (c1[n][i] - c0[n][i]) / wall) for i in (0, 1)]
               for n in c1 if n in c0}
        return {"gbps": end_["sum_received"]["bits_per_second"] / 1e9,
                "retransmits": end_["sum_sent"].get("retransmits"), "vtep_cpu": cpu}

    def udp(self, src, dst, profile=None):
        doc = self.iperf(src, dst, ["-u", "-l", "64", "-b", self.args.udp_rate],
                         self.args.udp_time, profile)
        end_ = doc["end"]
        # iperf3 3.12: end.sum is the receiver's account (from the server) for UDP
        s = end_.get("sum_received") or end_["sum"]
        sent = end_.get("sum_sent", end_["sum"])
        packets, lost = s["packets"], s["lost_packets"]
        secs = s["seconds"] or self.args.udp_time
        return {"sent_pps": sent["packets"] / (sent["seconds"] or secs),
                "rx_pps": (packets - lost) / secs, "loss_pct": 100.0 * lost / max(packets, 1)}

    # -- what the userspace process and the kernel counted --------------------------------

    def kernel_drops(self) -> dict:
        """Per node: UDP receive-buffer errors and the device's tx drops (netns-wide)."""
        out = {}
        for node in NODES:
            n = self.topo[node]
            snmp = n.cmd(["cat", "/proc/net/snmp"], timeout=5).stdout.splitlines()
            udp = [line.split()[1:] for line in snmp if line.startswith("Udp:")]
            rcvbuf = int(dict(zip(udp[0], udp[1])).get("RcvbufErrors", 0)) if len(udp) == 2 else 0
            link = json.loads(n.cmd(["ip", "-s", "-j", "link", "show", DEVICE], check=False,
                                    timeout=5).stdout or "[]")
            stats = link[0].get("stats64", {}) if link else {}
            out[node] = {"udp_rcvbuf_errors": rcvbuf,
                         "dev_tx_dropped": stats.get("tx", {}).get("dropped", 0),
                         "dev_rx_dropped": stats.get("rx", {}).get("dropped", 0)}
        return out

    def counters(self) -> dict:
        out = {}
        for node, mode in zip(NODES, self.modes):
            if mode != "userspace":
                continue
            r = self.topo[node].cmd([sys.executable, "-m", "vtep.cli", "status", "--json",
                                     "--state-dir", self.state_dir(node)], timeout=10)
            docs = [d for d in json.loads(r.stdout) if d.get("node") == node]
            c = docs[0].get("counters", {}) if docs else {}
            out[node] = {"tx_packets": c.get("tx", {}).get("packets", 0),
                         "rx_packets": c.get("rx", {}).get("packets", 0),
                         "tx_frames": c.get("tx", {}).get("frames", 0),
                         "rx_frames": c.get("rx", {}).get("frames", 0),
                         "drops": {k: v for k, v in {**c.get("tx_drops", {}),
                                                     **c.get("rx_drops", {})}.items() if v}}
        return out

    def run(self, profile=None):
        self.start()
        try:
            self.wait_converged()
            self.ping()
            k0 = self.kernel_drops()
            a, b = NODES
            self.result["tcp"] = {f"{a}->{b}": self.tcp(a, b, profile),
                                  f"{b}->{a}": self.tcp(b, a, profile)}
            time.sleep(1.2)  # the status file is republished every second
            self.result["counters_after_tcp"] = self.counters()
            k1 = self.kernel_drops()
            self.result["udp64"] = {f"{a}->{b}": self.udp(a, b, profile),
                                    f"{b}->{a}": self.udp(b, a, profile)}
            time.sleep(1.2)
            self.result["counters_end"] = self.counters()
            k2 = self.kernel_drops()
            self.result["kernel_drops_tcp"] = diff(k1, k0)
            self.result["kernel_drops_udp"] = diff(k2, k1)
            self.alive()
        finally:
            self.stop()
        return self.result


def merge(runs: list[dict]) -> dict:
    """One result from repeated runs: medians of the figures, sums of the drop counts."""
    def walk(vals, path):
        v0 = vals[0]
        if isinstance(v0, dict):
            keys = dict.fromkeys(k for v in vals if v for k in v)  # union: a drop seen once
            return {k: walk([v.get(k) for v in vals if v and k in v], path + (k,)) for k in keys}
        if isinstance(v0, list):
            return [walk([v[i] for v in vals], path) for i in range(len(v0))]
        if isinstance(v0, (int, float)) and not isinstance(v0, bool):
            nums = [v for v in vals if v is not None]
            if any(p.startswith(("counters", "kernel_drops")) for p in path[:1]):
                return sum(nums)   # drops and packet counts: the total over the runs
            return statistics.median(nums)
        return v0
    out = walk(runs, ())
    out["runs"] = len(runs)
    out["tcp_runs"] = {d: [round(r["tcp"][d]["gbps"], 3) for r in runs] for d in runs[0]["tcp"]}
    return out


def diff(after, before):
    return {n: {k: after[n][k] - before[n][k] for k in after[n]} for n in after}


# -- report ---------------------------------------------------------------------------------

def report(results: list[dict], args) -> bool:
    a, b = NODES
    dirs = (f"{a}->{b}", f"{b}->{a}")
    print()
    print(f"{'pairing':<31} {'TCP 1->2':>9} {'TCP 2->1':>9} {'retr':>9} "
          f"{'UDP64 1->2':>16} {'UDP64 2->1':>16} {'RTT min/median/p90 ms':>22}")
    for r in results:
        t = r["tcp"]
        u = r["udp64"]
        print(f"{r['pairing']:<31} "
              f"{t[dirs[0]]['gbps']:>7.3f}Gb {t[dirs[1]]['gbps']:>7.3f}Gb "
              f"{t[dirs[0]]['retransmits']:>4}/{t[dirs[1]]['retransmits']:<4} "
              f"{u[dirs[0]]['rx_pps']/1e3:>7.1f}kpps {u[dirs[0]]['loss_pct']:>4.1f}% "
              f"{u[dirs[1]]['rx_pps']/1e3:>7.1f}kpps {u[dirs[1]]['loss_pct']:>4.1f}% "
              f"{r['rtt_ms']['min']:>7.3f}/{r['rtt_ms']['median']:.3f}/{r['rtt_ms']['p90']:.3f}")
    if any(r.get("runs", 1) > 1 for r in results):
        print(f"medians of {results[0]['runs']} runs; TCP per run: " + "; ".join(
            f"{r['pairing']} " + " / ".join(",".join(map(str, v)) for v in r["tcp_runs"].values())
            for r in results))
    print("(TCP: receiver's Gbit/s, one stream, {0:g} s; retr: sender retransmits each way; "
          "UDP64: 64-byte payloads offered at {1} for {2:g} s, packets/s received and loss; "
          "network-1 is the userspace side of userspace-kernel)".format(
              args.time, args.udp_rate, args.udp_time))

    print("\nuserspace VTEP CPU during TCP (% of one core, user+system; the system part includes "
          "the receive path its sends run through, veth to veth)")
    for r in results:
        for d in dirs:
            for node, (u, sy) in r["tcp"][d].get("vtep_cpu", {}).items():
                print(f"  {r['pairing']:<31} TCP {d}: {node} {u}+{sy}%")

    base = next((r for r in results if r["pairing"] == "kernel-kernel"), None)
    if base:
        print("\nratios to kernel-kernel (throughput: higher is better; RTT: lower is better)")
        for r in results:
            if r is base:
                continue
            parts = [f"TCP {d} {r['tcp'][d]['gbps'] / base['tcp'][d]['gbps']:.2f}" for d in dirs]
            parts += [f"UDP64 {d} "
                      f"{r['udp64'][d]['rx_pps'] / max(base['udp64'][d]['rx_pps'], 1):.2f}"
                      for d in dirs]
            parts.append(f"RTT {r['rtt_ms']['median'] / base['rtt_ms']['median']:.2f}")
            print(f"  {r['pairing']:<31} " + ", ".join(parts))

    print("\nuserspace counters (vtep status --json) and kernel-side drops"
          + (f" (totals over {results[0]['runs']} runs)" if results[0].get("runs", 1) > 1 else ""))
    for r in results:
        for phase, key, kkey in (("TCP", "counters_after_tcp", "kernel_drops_tcp"),
                                 ("UDP", "counters_end", "kernel_drops_udp")):
            for node, c in r.get(key, {}).items():
                kd = r[kkey][node]
                print(f"  {r['pairing']:<31} {node} after {phase:<3}: tx {c['tx_packets']} "
                      f"datagrams in {c.get('tx_frames', 0)} TAP frames, rx {c['rx_packets']} "
                      f"in {c.get('rx_frames', 0)}, drops {c['drops'] or 'none'}; {phase} phase: "
                      f"udp rcvbuf errors {kd['udp_rcvbuf_errors']}, {DEVICE} tx dropped "
                      f"{kd['dev_tx_dropped']}")

    print("\nuserspace VTEP CPU per Gbit/s of TCP (% of one core, user+system, per Gbit/s)")
    for r in results:
        for d in dirs:
            for node, (u, sy) in r["tcp"][d].get("vtep_cpu", {}).items():
                gbps = r["tcp"][d]["gbps"]
                print(f"  {r['pairing']:<31} TCP {d}: {node} "
                      f"{(u + sy) / max(gbps, 1e-3):.0f}% per Gbit/s")
    return targets(results, dirs)


def targets(results: list[dict], dirs) -> bool:
    """Issue 11's targets, each PASS or MISS, from this run's figures."""
    by = {r["pairing"]: r for r in results}
    base = by.get("kernel-kernel")
    ok = True
    print()

    def say(name: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok = ok and good
        print(f"target: {name}: {'PASS' if good else 'MISS'} ({detail})")

    for pairing in ("userspace-kernel", "userspace-userspace"):
        r = by.get(pairing)
        if not r:
            continue
        worst = min(r["tcp"][d]["gbps"] for d in dirs)
        say(f"{pairing} TCP >= {TARGET_GBPS} Gbit/s each way", worst >= TARGET_GBPS,
            f"slower direction {worst:.3f} Gbit/s")
        if base:
            share = min(r["tcp"][d]["gbps"] / base["tcp"][d]["gbps"] for d in dirs)
            say(f"{pairing} TCP >= {TARGET_KERNEL_SHARE:.0%} of kernel-kernel",
                share >= TARGET_KERNEL_SHARE, f"worst direction {share:.2f}")
        before = by.get(pairing + "-no-offload")
        if before:
            rtt, rtt0 = r["rtt_ms"]["median"], before["rtt_ms"]["median"]
            # 10% or 0.02 ms of slack: ping's averages over 20 replies move that much
            say(f"{pairing} RTT no worse than --no-offload", rtt <= max(rtt0 * 1.1, rtt0 + 0.02),
                f"{rtt:.3f} vs {rtt0:.3f} ms")
    r = by.get("userspace-kernel")
    if r:
        worst = min(r["udp64"][d]["rx_pps"] for d in dirs) / 1e3
        say(f"userspace-kernel 64-byte UDP >= {TARGET_KPPS} kpps received each way",
            worst >= TARGET_KPPS, f"slower direction {worst:.0f} kpps")
        tcp_drops = {n: c["drops"] for n, c in r["counters_after_tcp"].items() if c["drops"]}
        if tcp_drops:
            print(f"  note: userspace drops during TCP: {tcp_drops}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairings", default=",".join(DEFAULT_PAIRINGS),
                    help=f"comma-separated, of {', '.join(PAIRINGS)}")
    ap.add_argument("--time", type=float, default=5, help="seconds per TCP run (default 5)")
    ap.add_argument("--udp-time", type=float, default=3, help="seconds per UDP run (default 3)")
    ap.add_argument("--udp-rate", default="200M",
                    help="offered UDP bit rate of the small-packet runs (default 200M)")
    ap.add_argument("--ping-count", type=int, default=100,
                    help="pings of the RTT measurement, 10 ms apart (default 100)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each pairing; the table shows medians (default 1)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy flame graphs of the userspace VTEPs")
    ap.add_argument("--udp-checksum", choices=("on", "off"), default="on",
                    help="the plan's cluster.udp_checksum (default on, the plan's default)")
    ap.add_argument("--between", choices=("vteps", "pods"), default="vteps",
                    help="measure between the nodes' VTEP addresses (default) or between a "
                         "pod on each node (its veth with the kernel's default offloads, "
                         "forwarded by the node)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 on a missed target")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("datapath_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    names = [p.strip() for p in args.pairings.split(",") if p.strip()]
    bad = [p for p in names if p not in PAIRINGS]
    if bad or not names:
        print(f"datapath_bench: --pairings: unknown {bad}; use {', '.join(PAIRINGS)}",
              file=sys.stderr)
        return 2
    if not 0 < args.time <= 60 or not 0 < args.udp_time <= 60:
        print("datapath_bench: --time/--udp-time: 0-60 s", file=sys.stderr)
        return 2
    if not 5 <= args.ping_count <= 10000:
        print("datapath_bench: --ping-count: 5-10000", file=sys.stderr)
        return 2
    if not 1 <= args.repeat <= 10:
        print("datapath_bench: --repeat: 1-10", file=sys.stderr)
        return 2
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)

    prefix = f"vtb{os.getpid()}-"
    work = tempfile.mkdtemp(prefix="vtep-dpbench-")
    # the agents run this tree's vtep, wherever the benchmark is started from
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    lab = lablib.Lab(prefix, base=work)
    results, failed, left = [], False, []
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still run `finally`
    try:
        text = seed.plan_text()
        if args.udp_checksum == "off":
            text = text.replace("[cluster]\n", "[cluster]\nudp_checksum = false\n", 1)
        lablib.build(lab, lablib.LabSpec(pods=args.between == "pods", agents=False,
                                         plan_text=text), say=lablib.silent)
        print(f"seed topology up (prefix {prefix}); plan {lab.plan_path}")
        for name in names:
            runs = []
            for i in range(args.repeat):
                print(f"{name}: ", end="", flush=True)
                r = Pairing(lab, name, PAIRINGS[name], args).run(
                    args.profile if i == 0 else None)
                runs.append(r)
                print(f"converged in {r['converge_s']}s; TCP "
                      + ", ".join(f"{d} {v['gbps']:.3f}" for d, v in r["tcp"].items())
                      + " Gbit/s", flush=True)
            results.append(merge(runs))
    except (BenchError, LabError) as e:
        print(f"\ndatapath_bench: {e}", file=sys.stderr)
        failed = True
    finally:
        lablib.teardown(lab)
        signal.signal(signal.SIGTERM, old_term)
        left = [n for n in netns.list_namespaces() if n.startswith(prefix)]
        print(f"teardown: namespaces with prefix {prefix} left: {left or 'none'}")
        shutil.rmtree(work, ignore_errors=True)
    if results:
        ok = report(results, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        if not ok and args.strict:
            failed = True
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
