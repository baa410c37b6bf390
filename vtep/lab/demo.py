"""`vtep lab demo`: prove the CNI connectivity rules on the seed lab, as the seed does.

In both directions (network-1 -> network-2, then back): node -> remote VTEP ping,
node -> remote pod ping, pod -> remote pod ping, and an HTTP request pod -> remote pod
:8000/echo whose answer must name the calling pod's own address as the client (the
overlay routes, it does not NAT). Meanwhile the router captures its network-1 side
(every VXLAN packet between the nodes crosses it, both directions); vxinspect then
checks the capture against the plan. Each step prints PASS/FAIL with what it did;
the exit status is 1 when any failed, and the last line names them.

The checks are the same in every --mode (kernel, userspace, mixed) and over either
--underlay (ipv4, ipv6: the IPv6 twin of the seed, overlay MTU 1500 - 70 = 1430): the
pods cannot tell which data path or underlay family carries them, and the router's
capture must pass the same vxinspect --plan. After the checks, the counters of each userspace VTEP are shown
(`vtep status`).

With --dual-stack the plan has the IPv6 overlay too (seed.OVERLAY6, a /64 per node) and
every check of a pair runs once per overlay family, IPv4 first: the IPv6 ones are named
"... (IPv6)" and go to the node's IPv6 VTEP address and the pods' IPv6 addresses (ping
-6; HTTP to [address]:8000, where the echo server must see the client pod's own IPv6
address). The one capture holds both families, and vxinspect --plan holds the inner
addresses of both to the plan (each in the subnet of the node that sent or receives it).

With --nodes N the checks run for every ordered pair of nodes, and the router
captures every link (`-i any -Q in`: each packet once, as it enters the router).
With --store etcd the nodes start with only the etcd URL and their names and
register themselves; after the checks the demo kills one agent with SIGKILL and
checks that every other node drops it within its lease's TTL + 1 s, then restarts
it and checks that it gets its subnet back and is reached again.

When the lab was not up, demo brings it up in --mode and takes it down afterwards
(unless --keep); on a lab that is already up it only checks, and leaves it as it was
(a --mode other than the lab's is refused rather than silently ignored).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import netns, plan as planlib
from ..errors import LabError, UsageError
from . import lab as lablib, seed
from .topology import end_process

CAPTURE_IF = seed.SEED.node(seed.NODES[0]).router_if   # the router's network-1 side
CAPTURE_COUNT = 20000      # bounds: packets ...
CAPTURE_SECONDS = 120      # ... and time (tcpdump -G/-W 1 exits after one period)
PING = ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1"]
# per overlay family: its version, the Node attribute of a node's VTEP address, the key
# of a pod's address in Lab.pods, and what the family's check names end with
FAMILIES = ((4, "vtep_ip", "ip", ""), (6, "vtep_ip6", "ip6", " (IPv6)"))


class Demo:
    def __init__(self, lab: lablib.Lab, plan):
        self.lab = lab
        self.plan = plan
        self.failed: list[str] = []

    def step(self, name: str, ok: bool, detail: str) -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)
        return ok

    def ping(self, name: str, ns: str, dst: str) -> None:
        argv = PING[:1] + ["-6"] + PING[1:] if ":" in dst else PING
        r = netns.sh(argv + [dst], ns=ns, check=False, timeout=15)
        got = next((ln.split(",")[1].strip() for ln in r.stdout.splitlines()
                    if "packets transmitted" in ln), "no output")
        self.step(name, r.returncode == 0, f"ping -c 3 {dst} in {ns}: {got}")

    def http(self, name: str, ns: str, src_ip: str, dst_ip: str) -> None:
        host = f"[{dst_ip}]" if ":" in dst_ip else dst_ip   # RFC 3986 section 3.2.2
        url = f"http://{host}:{lablib.ECHO_PORT}/echo"
        r = netns.sh([sys.executable, "-m", "vtep.lab.echo", "get", url, "--body",
                      f"hello from {src_ip}"], ns=ns, check=False, timeout=20)
        if r.returncode:
            self.step(name, False, f"POST {url} in {ns}: {r.stderr.strip() or 'failed'}")
            return
        try:
            seen = json.loads(r.stdout)["client"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            self.step(name, False, f"POST {url} in {ns}: not an echo answer: {r.stdout[:80]!r}")
            return
        self.step(name, seen == src_ip, f"POST {url} in {ns}: echo saw client {seen} "
                  + ("(the pod's own address: no NAT)" if seen == src_ip
                     else f"(expected the pod's own {src_ip}: NAT or a wrong path)"))

    def families(self) -> list[tuple]:
        """The FAMILIES entries of the plan's overlays, IPv4 first."""
        return [f for f in FAMILIES
                if (self.plan.overlay, self.plan.overlay6)[f[0] == 6] is not None]

    def connectivity(self) -> None:
        """Every ordered pair of nodes, each overlay family of the plan (IPv4 first)."""
        families = self.families()
        for a, b in [(a, b) for a in self.lab.nodes for b in self.lab.nodes if a != b]:
            remote = self.plan.node(b)
            pod_a, pod_b = self.lab.pods[a], self.lab.pods[b]
            node_ns = self.lab.node_ns(a)
            for version, vtep_attr, key, tag in families:
                self.ping(f"{a} -> {b} VTEP{tag}", node_ns, str(getattr(remote, vtep_attr)))
                src, dst = pod_a.get(key), pod_b.get(key)
                if dst is None or src is None:   # the plan has the family, a pod has not
                    for what in (f"{a} -> {b}'s pod{tag}", f"{a}'s pod -> {b}'s pod{tag}",
                                 f"{a}'s pod -> {b}'s pod http{tag}"):
                        self.step(what, False, f"no IPv{version} address on the pod of "
                                  f"{a if src is None else b} (`vtep pod add` gave none)")
                    continue
                self.ping(f"{a} -> {b}'s pod{tag}", node_ns, dst)
                self.ping(f"{a}'s pod -> {b}'s pod{tag}", pod_a["ns"], dst)
                self.http(f"{a}'s pod -> {b}'s pod http{tag}", pod_a["ns"], src, dst)

    def inspect(self, capture: str) -> None:
        argv = [sys.executable, "-m", "vxinspect", "--plan", str(self.lab.plan_path), "--json",
                capture]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        shown = "vxinspect --plan PLAN --json CAPTURE"
        try:
            rep = json.loads(r.stdout)
        except ValueError:
            self.step("vxinspect", False, f"{shown}: exit {r.returncode}: "
                      f"{r.stderr.strip() or 'no JSON'}")
            return
        fired = {cid: c for cid, c in rep.get("checks", {}).items() if c.get("count")}
        vnis = ", ".join(f"{k} ({v})" for k, v in rep.get("vnis", {}).items()) or "none"
        checks = ", ".join(f"{cid} [{c['severity']}] x{c['count']}"
                           for cid, c in sorted(fired.items())) or "none"
        print(f"      capture: {rep.get('packets', 0)} packets, {rep.get('vxlan_packets', 0)} "
              f"VXLAN, VNIs {vnis}; checks fired: {checks}", flush=True)
        ok = r.returncode == 0 and rep.get("ok") and rep.get("vxlan_packets", 0) > 0
        why = ("" if ok else "no VXLAN packets captured" if not rep.get("vxlan_packets")
               else "error checks fired: " + ", ".join(
                   cid for cid, c in sorted(fired.items()) if c["severity"] == "error"))
        self.step("vxinspect --plan", bool(ok),
                  f"{shown} on the router's capture: " + ("OK" if ok else why))


def start_capture(lab: lablib.Lab, path: str) -> subprocess.Popen:
    """tcpdump on the router, bounded by count and time; returns once it is capturing.
    Two nodes: the network-1 side sees everything; more: every link, each packet once."""
    if len(lab.nodes) == 2:
        return tcpdump(lab.node_ns(seed.SEED.router), CAPTURE_IF, path)
    return tcpdump(lab.node_ns(seed.SEED.router), "any", path, inbound=True)


def tcpdump(ns: str, iface: str, path, *, count: int = CAPTURE_COUNT,
            seconds: int = CAPTURE_SECONDS, snaplen: int | None = None,
            inbound: bool = False) -> subprocess.Popen:
    """tcpdump on `iface` in namespace `ns`, bounded by packet count and time; returns once
    it is capturing. End it with topology.end_process (by PID)."""
    # --immediate-mode: otherwise what arrived in the last buffer timeout (up to a second)
    # is still in the capture ring when tcpdump is stopped, and missing from the file
    argv = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root",
            "-c", str(count), "-G", str(seconds), "-W", "1", "-w", str(path)]
    if snaplen:
        argv[1:1] = ["-s", str(snaplen)]
    if inbound:
        argv[1:1] = ["-Q", "in"]
    p = netns.popen(argv, ns=ns, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    seen = b""
    while b"listening on" not in seen:
        left = deadline - time.monotonic()
        if p.poll() is not None or left <= 0:
            end_process(p)
            raise LabError(f"tcpdump on {ns}:{iface} did not start: "
                           f"{seen.decode(errors='replace').strip() or 'timed out'}")
        if select.select([p.stderr], [], [], left)[0]:
            seen += p.stderr.read1(4096)
    return p


def counters(lab: lablib.Lab) -> None:
    """One line per userspace VTEP: its counters from the status file it republishes."""
    from ..userspace import format_counters
    for name in lab.nodes:
        if lablib.node_mode(lab.mode, name) != "userspace":
            continue
        r = netns.sh([sys.executable, "-m", "vtep.cli", "status", "--json", "--state-dir",
                      str(lab.dir / name)], ns=lab.node_ns(name), check=False, timeout=15)
        try:
            c = next(d for d in json.loads(r.stdout) if d.get("node") == name)["counters"]
            line = format_counters(c)
        except (ValueError, StopIteration, KeyError, TypeError):
            line = f"no counters ({(r.stderr or r.stdout).strip()[:80] or 'no status file'})"
        print(f"      {name} (userspace) counters: {line}", flush=True)


def vtep_address(lab: lablib.Lab, name: str, family: str = "-4") -> str | None:
    """The node's VTEP address on vxlan0 in `family` ("-4", "-6"), or None."""
    out = netns.sh(["ip", "-j", family, "addr", "show", "dev", "vxlan0", "scope", "global"],
                   ns=lab.node_ns(name), check=False).stdout
    # (iproute2 leaves an empty {} in addr_info for each address a filter drops)
    addrs = [a for a in json.loads(out)[0]["addr_info"] if "local" in a] if out.strip() else []
    return addrs[0]["local"] if addrs else None


def failover(demo: Demo, lab: lablib.Lab) -> None:
    """--store etcd: SIGKILL the last node's agent; every other node drops it (its route
    per overlay family) within the lease's TTL + 1 s; restarted, it gets its subnets back
    and is reached again (in each family)."""
    victim, others = lab.nodes[-1], lab.nodes[:-1]
    node = demo.plan.node(victim)
    subnets = [str(s) for s in node.subnets]
    shown = " and ".join(subnets)
    routes = "routes" if len(subnets) > 1 else "route"
    rec = lab.process(f"vtep run {victim}")
    os.kill(rec["pid"], signal.SIGKILL)
    killed = time.monotonic()
    limit = lablib.LAB_TTL + 1
    left = set(others)
    while left and time.monotonic() - killed < limit + 10:
        left = {o for o in left if set(subnets) & lablib.vxlan_routes(lab, o)}
        time.sleep(0.05)
    took = time.monotonic() - killed
    demo.step(f"{victim} killed (SIGKILL)", not left and took <= limit,
              f"every other node dropped its {routes} to {shown} after {took:.1f} s "
              f"(lease TTL {lablib.LAB_TTL} s + 1 s allowed)" if not left else
              f"{', '.join(sorted(left))} still route {shown} after {took:.1f} s")
    lab.processes.remove(rec)
    lab.save()
    lablib.start_agent(lab, victim)
    try:
        lablib.wait_converged(lab, demo.plan, victim)
        want = [(fam, str(ip)) for fam, ip in (("-4", node.vtep_ip), ("-6", node.vtep_ip6))
                if ip is not None]
        got = [vtep_address(lab, victim, fam) for fam, _ in want]
        ok = got == [ip for _, ip in want]
        demo.step(f"{victim} restarted", ok,
                  f"registered again with VTEP address {' and '.join(got)} "
                  f"(subnet {shown} kept)" if ok else
                  f"came back with VTEP address {' and '.join(map(str, got))}, not "
                  f"{' and '.join(ip for _, ip in want)}")
    except LabError as e:
        demo.step(f"{victim} restarted", False, str(e))
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(not set(subnets) <= lablib.vxlan_routes(lab, o)
                                              for o in others):
        time.sleep(0.05)
    for _, _, _, tag in demo.families():
        ip = node.vtep_ip6 if tag else node.vtep_ip
        demo.ping(f"{others[0]} -> {victim} VTEP again{tag}", lab.node_ns(others[0]), str(ip))


def run(lab: lablib.Lab, mode: str | None = None, underlay: str | None = None,
        capture_path: str | None = None, keep: bool = False, store: str | None = None,
        nodes: int | None = None, dual_stack: bool = False) -> int:
    """`vtep lab demo`: mode/underlay None: the lab's if it is up, else kernel/ipv4;
    capture_path: keep the router's capture there; keep: leave a lab it brought up;
    store/nodes: where the cluster lives and how many nodes (a new lab only);
    dual_stack: a new lab with IPv6 pods too (a lab that is up: must be one; without it
    a dual-stack lab that is up is checked in both families all the same)."""
    was_up = lab.exists
    if was_up:
        lab.load()
        if mode and mode != lab.mode:
            raise UsageError(f"lab {lab.prefix} is up in mode {lab.mode}, not --mode "
                             f"{mode}: `vtep lab down --prefix {lab.prefix}` first")
        if underlay and underlay != lab.underlay:
            raise UsageError(f"lab {lab.prefix} is up with an {lab.underlay} underlay, not "
                             f"--underlay {underlay}: `vtep lab down --prefix {lab.prefix}` "
                             "first")
        if (store and store != ("etcd" if lab.etcd else "plan")) or \
                (nodes and nodes != len(lab.nodes)):
            raise UsageError(f"lab {lab.prefix} is up with {len(lab.nodes)} nodes, the "
                             f"cluster in {'etcd' if lab.etcd else 'the plan'}: `vtep lab "
                             f"down --prefix {lab.prefix}` first")
        if dual_stack and not lab.dual_stack:
            raise UsageError(f"lab {lab.prefix} is up with an IPv4 overlay only, not "
                             f"--dual-stack: `vtep lab down --prefix {lab.prefix}` first")
        what = lablib.describe_mode(lab.mode, lab.underlay, lab.nodes,
                                    dual_stack=lab.dual_stack)
        print(f"lab {lab.prefix}: already up ({what}); checking it (it stays up)")
    else:
        lablib.up(lab, mode or "kernel", underlay=underlay or "ipv4", store=store or "plan",
                  nodes=nodes or 2, dual_stack=dual_stack)
        print(f"lab {lab.prefix}: " + lablib.describe_mode(lab.mode, lab.underlay, lab.nodes,
                                                          dual_stack=lab.dual_stack))
    capture = str(Path(capture_path).resolve()) if capture_path else str(lab.dir / "demo.pcap")
    try:
        plan = planlib.load(lab.plan_path)
        demo = Demo(lab, plan)
        tcpdump = start_capture(lab, capture)
        try:
            demo.connectivity()
        finally:
            time.sleep(0.2)  # the last replies reach the capture
            end_process(tcpdump)
        demo.inspect(capture)
        counters(lab)
        if lab.etcd and not was_up:   # kills an agent: only in a lab of its own
            failover(demo, lab)
        if capture_path:
            print(f"      capture kept: {capture}")
    finally:
        if not was_up and not keep:
            gone = lablib.teardown(lab)
            print(f"lab {lab.prefix}: down (removed {len(gone)} namespaces and processes)")
        elif not was_up:
            print(f"lab {lab.prefix}: kept up (--keep; capture {capture}); "
                  f"`vtep lab down --prefix {lab.prefix}`")
    if demo.failed:
        print(f"vtep: demo failed: {len(demo.failed)} check(s): {'; '.join(demo.failed)}",
              file=sys.stderr)
        return 1
    print("demo: all checks passed")
    return 0
