"""The lab builder: a LabSpec in, the seed cluster running in network namespaces out.

`vtep lab up`, the MTU suite, the tests, the benchmarks and the sample generators all
build their cluster here; they differ only in the LabSpec they hand over. build() runs
the steps in this order, each written into the lab's record (record.py) the moment it
exists, and on a failing step removes what the steps before it made:

    1. the plan (spec.plan_text, default the seed plan of spec.underlay; spec.dual_stack:
       with the IPv6 overlay seed.OVERLAY6 too) -> <lab dir>/plan.toml
    2. the seed topology (seed.topology: spec.underlay, spec.underlay_mtu; tx checksum
       offload off: a veth leaves the checksums of what the kernel sends unfilled, fine
       between two kernel paths but wrong on the wire a userspace VTEP reads)
    3. spec.pods: on each node a pod `pod1`, attached by `vtep pod add`; its MTU is the
       plan's overlay MTU on the underlay as it is now; in a dual-stack plan it gets an
       address of each family (recorded as the lab's pods[node] "ip" and "ip6")
    4. spec.narrow: the router's link towards network-2 narrows to that MTU (after the
       pods, which keep theirs, as the pods of a running cluster do when its underlay
       narrows; before the VTEPs, which see the narrow link)
    5. spec.agents: `vtep run` inside each node's namespace (--mode kernel: the kernel path
       on both nodes; userspace on both; mixed: kernel on network-1, userspace on
       network-2), with spec.run_args, until converged
    6. spec.pods: in each pod the HTTP echo server on :8000 (echo.py; on [::]:8000, which
       takes both families, when the pod has an IPv6 address)

A newcomer reads build() and _build(); up() is `vtep lab up` (a mode and an underlay
family), start_agent()/stop_agent() restart one node's VTEP in a built lab.
"""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .. import netns, plan as planlib
from ..errors import LabError, PlanError, UsageError
from . import seed
from .record import LAB_BASE, Lab, alive, check_prefix, tail, teardown
from .topology import NETNS_DIR

__all__ = ["LAB_BASE", "ECHO_PORT", "LAB_TTL", "MODES", "NODES", "STORES", "Lab", "LabSpec",
           "build", "check_prefix", "describe_mode", "export_plan", "node_mode", "pod_ips",
           "silent", "start_agent", "stop_agent", "teardown", "up", "vxlan_routes",
           "wait_converged"]

NODES = seed.NODES
MODES = ("kernel", "userspace", "mixed")
STORES = ("plan", "etcd")
ETCD_PORTS = (2379, 2380)   # client, peer: the router's namespace is the lab's own
LAB_TTL = 5                 # s: the agents' membership lease with --store etcd
ECHO_PORT = 8000
READY_TIMEOUT = 20.0   # s: a loaded 2-core machine may take that long to start two agents
VTEP = [sys.executable, "-m", "vtep.cli"]


@dataclass(frozen=True)
class LabSpec:
    """What to build: the seed cluster, and what a case changes of it."""
    mode: str = "kernel"                 # kernel, userspace or mixed (node_mode)
    underlay: str = "ipv4"               # the family of every underlay address
    underlay_mtu: int | None = None      # every underlay veth (None: 1500, the veth default)
    narrow: int | None = None            # the router's link towards network-2, both ends
    plan_text: str | None = None         # None: seed.plan_text(underlay)
    run_args: Mapping[str, Sequence[str]] = field(default_factory=dict)  # node -> extra args
    pods: bool = True                    # a pod with the echo server on each node
    agents: bool = True                  # `vtep run` on each node
    store: str = "plan"                  # where the cluster lives: the plan file, or etcd
    nodes: int = 2                       # network-1 .. network-N (seed.cluster)
    dual_stack: bool = False             # IPv6 pods too (the seed plan's overlay6)

    def check(self) -> "LabSpec":
        if self.mode not in MODES:
            raise UsageError(f"lab --mode {self.mode}: use one of {', '.join(MODES)}")
        seed.check_underlay(self.underlay)
        seed.cluster(self.nodes)
        if self.store not in STORES:
            raise UsageError(f"lab --store {self.store}: use one of {', '.join(STORES)}")
        if self.store == "etcd" and self.underlay != "ipv4":
            raise UsageError("lab --store etcd: the lab runs etcd over the ipv4 underlay")
        return self

    def plan(self) -> str:
        if self.plan_text is not None:
            return self.plan_text
        return seed.plan_text(self.underlay, nodes=self.nodes,
                              cluster_only=self.store == "etcd", dual_stack=self.dual_stack)


def node_mode(mode: str, node: str) -> str:
    """The data path `node` runs in a lab of `mode`: mixed puts the kernel path on
    network-1 (and every odd-numbered node) and the userspace path on network-2 (and
    every even-numbered one)."""
    if mode == "mixed":
        return "kernel" if int(node.rsplit("-", 1)[1]) % 2 else "userspace"
    return mode


def describe_mode(mode: str, underlay: str = "ipv4", nodes=NODES, store: str = "plan",
                  dual_stack: bool = False) -> str:
    return (f"mode {mode}: " + ", ".join(f"{n} {node_mode(mode, n)}" for n in nodes)
            + ("" if underlay == "ipv4" else f"; {underlay} underlay")
            + ("; dual-stack overlay (IPv4 and IPv6 pods)" if dual_stack else "")
            + ("" if store == "plan" else f"; the cluster in {store}"))


def silent(*_args, **_kw) -> None:
    """A `say` that says nothing (tests, benchmarks)."""


# --- build ----------------------------------------------------------------------------------

def up(lab: Lab, mode: str = "kernel", say=print, underlay: str = "ipv4", store: str = "plan",
       nodes: int = 2, dual_stack: bool = False) -> Lab:
    """`vtep lab up`: the seed cluster in `mode` over an `underlay` family, its membership
    in the plan file or in etcd, with `nodes` nodes; dual_stack: IPv6 pods too."""
    return build(lab, LabSpec(mode=mode, underlay=underlay, store=store, nodes=nodes,
                              dual_stack=dual_stack), say)


def build(lab: Lab, spec: LabSpec, say=print) -> Lab:
    """Build the lab `spec` describes under `lab`'s prefix; on a failing step remove what
    was made and raise. A usage error (mode, family) is raised before anything exists."""
    spec.check()
    if lab.exists:
        raise LabError(f"a lab with prefix {lab.prefix!r} is already up ({lab.dir}); "
                       f"`vtep lab down --prefix {lab.prefix}` first")
    names = [n.name for n in seed.cluster(spec.nodes).nodes]
    wanted = [lab.node_ns(n) for n in [seed.SEED.router] + names]
    wanted += [lab.pod_ns(n) for n in names] if spec.pods else []
    clash = sorted(set(wanted) & set(netns.list_namespaces()))
    if clash:
        raise LabError(f"namespaces {', '.join(clash)} already exist (left by another lab? "
                       f"`vtep lab down --prefix {lab.prefix}` removes only what it recorded)")
    lab.mode = spec.mode
    lab.underlay = spec.underlay
    lab.dual_stack = spec.dual_stack
    lab.nodes = names
    lab.save()  # from here on, teardown knows where to look
    try:
        _build(lab, spec, say)
    except BaseException:
        say(f"lab {lab.prefix}: a step failed; removing what was made", file=sys.stderr)
        teardown(lab)
        raise
    return lab


def _build(lab: Lab, spec: LabSpec, say) -> None:
    etcd = spec.store == "etcd"
    path = lab.dir / "cluster.toml" if etcd else lab.plan_path
    path.write_text(spec.plan())
    plan = None if etcd else planlib.load(lab.plan_path)
    topo = lab.topology = seed.topology(lab.prefix, underlay=spec.underlay,
                                        mtu=spec.underlay_mtu, nodes=spec.nodes)
    try:
        topo.start()
    finally:  # whatever start() managed to make is ours to remove
        lab.namespaces = list(topo.namespaces)
        lab.save()
    nets = [str(ipaddress.ip_interface(n.side(spec.underlay).node).network)
            for n in seed.cluster(spec.nodes).nodes]
    say(f"lab {lab.prefix}: namespaces {', '.join(lab.namespaces)}; underlay "
        f"{' <-> router <-> '.join(nets)} (tx checksum offload off); "
        + (f"cluster {path}" if etcd else f"plan {lab.plan_path}"))
    if etcd:
        _start_etcd(lab, path, say)

    if spec.pods and not etcd:   # with etcd, a node's subnet is known once it registered
        for name in lab.nodes:
            _add_pod(lab, name)
    if spec.narrow:
        seed.narrow(topo, spec.narrow)
    if spec.agents:
        for name in lab.nodes:
            rec = start_agent(lab, name, args=spec.run_args.get(name, ()))
            say(f"{name}: vtep run --{node_mode(lab.mode, name)} (pid {rec['pid']}, "
                f"log {rec['log']})")
        if etcd:
            plan = export_plan(lab, len(lab.nodes))
            say(f"every node registered; the cluster as a plan: {lab.plan_path}")
        for name in lab.nodes:
            wait_converged(lab, plan, name)
    if spec.pods and etcd:
        for name in lab.nodes:
            _add_pod(lab, name)
    if spec.pods:
        for name in lab.nodes:
            pod = lab.pods[name]
            ns = pod["ns"]
            # an IPv6 pod: one socket on [::] takes both families (echo.py)
            host = "::" if pod.get("ip6") else "0.0.0.0"
            rec = lab.spawn(f"echo {ns}", ns, [sys.executable, "-m", "vtep.lab.echo", "serve",
                                               "--port", str(ECHO_PORT), "--host", host],
                            f"echo-{name}")
            _wait_listening(lab, ns, rec)
            ips = ", ".join(ip for ip in (pod.get("ip"), pod.get("ip6")) if ip)
            say(f"{name}: pod {ns} {ips}, echo server "
                f"{'[::]' if pod.get('ip6') else ''}:{ECHO_PORT} (pid {rec['pid']})")


def _add_pod(lab: Lab, name: str) -> None:
    ns = lab.pod_ns(name)
    lab.pods[name] = {"ns": ns, "ip": None}
    lab.namespaces.append(ns)  # recorded before it exists: teardown deletes it if present
    lab.save()
    state_dir = lab.dir / name
    state_dir.mkdir(exist_ok=True)
    # nsenter enters only the node's network namespace; `ip netns exec` would give
    # `vtep pod add` a private mount namespace, hiding the pod namespace it creates.
    r = subprocess.run(["nsenter", f"--net={NETNS_DIR}/{lab.node_ns(name)}", *VTEP, "pod",
                        "add", ns, "--config", str(lab.plan_path), "--node", name,
                        "--state-dir", str(state_dir)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise LabError(f"{name}: vtep pod add {ns}: {(r.stderr or r.stdout).strip()}")
    rec = json.loads((state_dir / f"pods-{name}.json").read_text())["pods"][ns]
    lab.pods[name].update(pod_ips(rec))
    lab.save()


def pod_ips(rec: dict) -> dict:
    """{"ip": its IPv4 address or None, "ip6": its IPv6 address or None} from a pod's
    record in `vtep pod add`'s store: "ips" (one per family), or "ip" alone (a store
    written before dual stack)."""
    ips = rec.get("ips") or [rec["ip"]]
    by = {ipaddress.ip_address(ip).version: ip for ip in ips}
    return {"ip": by.get(4), "ip6": by.get(6)}


# --- one node's VTEP ------------------------------------------------------------------------

def start_agent(lab: Lab, name: str, path: str | None = None, args: Sequence[str] = ()) -> dict:
    """Spawn `vtep run --PATH` in the node's namespace (PATH: the lab mode's, unless given),
    with the lab's plan (or only the etcd URL and the node's name) and the node's state
    dir; recorded. Does not wait for it."""
    path = path or node_mode(lab.mode, name)
    state_dir = lab.dir / name
    state_dir.mkdir(parents=True, exist_ok=True)
    where = ["--etcd", lab.etcd, "--name", name, "--ttl", str(LAB_TTL)] if lab.etcd else \
        ["--config", str(lab.plan_path), "--node", name]
    argv = VTEP + ["run", f"--{path}", *where, "--state-dir", str(state_dir), *args]
    return lab.spawn(f"vtep run {name}", lab.node_ns(name), argv, f"run-{name}")


def stop_agent(lab: Lab, name: str) -> None:
    """SIGTERM the node's `vtep run` (it removes its device and state), by its PID."""
    lab.stop(lab.process(f"vtep run {name}"))


def wait_converged(lab: Lab, plan, name: str) -> None:
    """Until the node's agent has published its status file (with its own PID) and every
    peer route is on vxlan0 (vtep run installs routes last; in userspace mode vxlan0 is the
    TAP device and its sockets are open by then). The PID tells a restarted agent's state
    from what its predecessor may have left behind."""
    rec = lab.process(f"vtep run {name}")
    path = node_mode(lab.mode, name)
    want = [str(s) for p in plan.peers(name) for s in p.subnets]   # both families
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not alive(rec):
            raise LabError(f"{name}: vtep run --{path} exited: {tail(rec['log'])}")
        if _published(lab, name, rec["pid"]):
            routes = vxlan_routes(lab, name)
            if all(w in routes for w in want):
                return
        if time.monotonic() > deadline:
            raise LabError(f"{name}: vtep run --{path} did not converge within "
                           f"{READY_TIMEOUT:g}s (routes to {', '.join(want)} missing): "
                           f"{tail(rec['log'])}")
        time.sleep(0.1)


def vxlan_routes(lab: Lab, name: str) -> set[str]:
    """The destinations of the node's routes on vxlan0, both families (as `ip -j` spells
    them: 172.2.1.0/24, fd00:172:2:1::/64)."""
    got = set()
    for family in ("-4", "-6"):
        out = netns.sh(["ip", "-j", family, "route", "show", "dev", "vxlan0"],
                       ns=lab.node_ns(name), check=False).stdout
        try:
            got |= {r["dst"] for r in json.loads(out)} if out.strip() else set()
        except (ValueError, KeyError, TypeError):
            continue
    return got


def _published(lab: Lab, name: str, pid: int) -> bool:
    """A status file in the node's state dir names `pid` (whatever the file is called)."""
    for path in (lab.dir / name).glob("*.json"):
        try:
            if json.loads(path.read_text()).get("pid") == pid:
                return True
        except (OSError, ValueError, AttributeError):
            continue   # being rewritten, or not a status file (the pod store)
    return False


def _wait_listening(lab: Lab, ns: str, rec: dict) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not alive(rec):
            raise LabError(f"{ns}: echo server exited: {tail(rec['log'])}")
        out = netns.sh(["ss", "-Htln", f"sport = :{ECHO_PORT}"], ns=ns, check=False).stdout
        if out.strip():
            return
        if time.monotonic() > deadline:
            raise LabError(f"{ns}: echo server not listening on :{ECHO_PORT} within "
                           f"{READY_TIMEOUT:g}s: {tail(rec['log'])}")
        time.sleep(0.05)


# --- the cluster in etcd (--store etcd) -----------------------------------------------------

def _start_etcd(lab: Lab, cluster_toml, say) -> None:
    """etcd in the router's namespace on its address towards network-1 (every node routes
    there), its data in the lab dir, recorded like every process (ended by PID); then
    `vtep cluster init` from the [cluster]-only plan."""
    binary = shutil.which("etcd")
    if binary is None:
        raise LabError("etcd not found: `sh bootstrap.sh` installs Debian's etcd-server")
    host = seed.address(seed.SEED.nodes[0].ipv4.router)
    client, peer = (f"http://{host}:{port}" for port in ETCD_PORTS)
    argv = [binary, "--name", "vtep-lab", "--data-dir", str(lab.dir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"vtep-lab={peer}", "--initial-cluster-state", "new"]
    rec = lab.spawn("etcd", lab.node_ns(seed.SEED.router), argv, "etcd")
    probe = (f"import json, urllib.request; print(json.loads(urllib.request.urlopen("
             f"'{client}/health', timeout=1).read()).get('health'))")
    deadline = time.monotonic() + READY_TIMEOUT
    while netns.sh([sys.executable, "-c", probe], ns=lab.node_ns(seed.SEED.router),
                   check=False).stdout.strip() != "true":
        if not alive(rec) or time.monotonic() > deadline:
            raise LabError(f"etcd did not become healthy at {client}: {tail(rec['log'])}")
        time.sleep(0.1)
    lab.etcd = client
    lab.save()
    r = netns.sh(VTEP + ["cluster", "init", "--etcd", client, "--config", str(cluster_toml)],
                 ns=lab.node_ns(lab.nodes[0]), check=False, timeout=60)
    if r.returncode:
        raise LabError(f"vtep cluster init: {(r.stderr or r.stdout).strip()}")
    say(f"etcd {client} in {lab.node_ns(seed.SEED.router)} (pid {rec['pid']}): "
        + r.stdout.strip().splitlines()[0])


def export_plan(lab: Lab, members: int):
    """The cluster in etcd as a plan file (lab.plan_path: `vtep pod add`, the demo's
    vxinspect --plan), once `members` nodes are alive in it."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        r = netns.sh(VTEP + ["cluster", "export", "--etcd", lab.etcd],
                     ns=lab.node_ns(lab.nodes[0]), check=False, timeout=30)
        if r.returncode == 0:
            lab.plan_path.write_text(r.stdout)
            try:
                plan = planlib.load(lab.plan_path)
            except PlanError:   # no node alive yet: a plan needs one
                plan = None
            if plan is not None and len(plan.nodes) >= members:
                return plan
        if time.monotonic() > deadline:
            raise LabError(f"{members} nodes did not register in etcd within "
                           f"{READY_TIMEOUT:g}s: {(r.stderr or r.stdout).strip()[-300:]}")
        time.sleep(0.2)

