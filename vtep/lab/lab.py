"""`vtep lab up|down`: the seed cluster in network namespaces, recorded so that `down`
removes exactly what `up` made.

up: the seed topology (topology.seed; --underlay ipv6: its IPv6 twin, with the seed plan's
twin SEED_PLAN6), the seed plan written to the lab dir, `vtep run`
inside each node's namespace (--mode kernel: the kernel path on both nodes; userspace:
`vtep run --userspace` on both; mixed: kernel on network-1, userspace on network-2), and
on each node a pod `pod1` running the HTTP echo server on :8000. The underlay veths
have tx checksum offload off in every mode (topology.seed's default): a veth leaves the
checksums of what the kernel sends unfilled (CHECKSUM_PARTIAL), fine between two kernel
paths but wrong on the wire a userspace VTEP reads and a capture shows.

Every namespace and process is written to <lab dir>/state.json the moment it
exists, so a failing step (or a crashed `up`) is undone by the same teardown that
`down` runs. Processes are ended by PID, after checking that the PID
still belongs to the process we started (its start time in /proc/PID/stat).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import netns, plan as planlib
from ..errors import LabError, UsageError
from . import topology

LAB_BASE = "/run/vtep"
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
NODES = ("network-1", "network-2")
MODES = ("kernel", "userspace", "mixed")
POD = "pod1"
ECHO_PORT = 8000
READY_TIMEOUT = 15.0
STOP_GRACE = 5.0

SEED_PLAN = """\
# The seed cluster (vtep lab): two nodes on two underlay subnets, joined by a router.
[cluster]
vni = 10
port = 4789
overlay = "172.2.0.0/16"

[[nodes]]
name = "network-1"
underlay_ip = "192.168.1.138"
subnet = "172.2.0.0/24"

[[nodes]]
name = "network-2"
underlay_ip = "192.168.2.142"
subnet = "172.2.1.0/24"
"""


def seed_plan(underlay: str = "ipv4") -> str:
    """The seed plan for the seed topology's `underlay` family: the same cluster, with
    each node's underlay_ip the address topology.seed gives it in that family."""
    text = SEED_PLAN
    for name, (v4, _, _) in topology.SEED_UNDERLAY.items():
        addr = topology.seed_underlay(underlay)[name][0].split("/")[0]
        text = text.replace(f'"{v4.split("/")[0]}"', f'"{addr}"')
    return text


SEED_PLAN6 = seed_plan("ipv6")   # overlay MTU 1500 - 70 = 1430 (an IPv6 outer header)


def node_mode(mode: str, node: str) -> str:
    """The data path `node` runs in a lab of `mode`: mixed puts the kernel path on
    network-1 and the userspace path on network-2."""
    if mode == "mixed":
        return "kernel" if node == NODES[0] else "userspace"
    return mode


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix or ""):
        raise UsageError(f"--prefix {prefix!r}: use 1-32 letters, digits, '.', '_' or '-'")
    return prefix


class Lab:
    """One lab's record: <LAB_BASE>/lab-<prefix>/state.json, saved after every change."""

    def __init__(self, prefix: str, base: str = LAB_BASE):
        self.prefix = check_prefix(prefix)
        self.dir = Path(base) / f"lab-{prefix}"
        self.state_path = self.dir / "state.json"
        self.plan_path = self.dir / "plan.toml"
        self.namespaces: list[str] = []
        self.processes: list[dict] = []
        self.pods: dict[str, dict] = {}  # node -> {"ns", "ip"}
        self.mode = "kernel"
        self.underlay = "ipv4"

    # naming: every namespace carries the prefix
    def node_ns(self, node: str) -> str:
        return self.prefix + node

    def pod_ns(self, node: str) -> str:
        return f"{self.prefix}{node}-{POD}"

    @property
    def exists(self) -> bool:
        return self.state_path.exists()

    def load(self) -> "Lab":
        try:
            d = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as e:
            raise LabError(f"{self.state_path}: unreadable lab state ({e})")
        self.namespaces = list(d.get("namespaces", []))
        self.processes = list(d.get("processes", []))
        self.pods = dict(d.get("pods", {}))
        self.mode = d.get("mode", "kernel")
        self.underlay = d.get("underlay", "ipv4")
        return self

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"prefix": self.prefix, "mode": self.mode,
                                   "underlay": self.underlay,
                                   "plan": str(self.plan_path), "namespaces": self.namespaces,
                                   "processes": self.processes, "pods": self.pods}, indent=2))
        os.replace(tmp, self.state_path)

    def log(self, name: str):
        return open(self.dir / f"{name}.log", "ab")

    def spawn(self, what: str, ns: str, argv: list[str], logname: str) -> dict:
        """Start argv inside ns, detached from our session (it outlives `lab up`); record it."""
        with self.log(logname) as out:
            p = netns.popen(argv, ns=ns, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
        rec = {"what": what, "pid": p.pid, "start": _starttime(p.pid), "log": out.name}
        self.processes.append(rec)
        self.save()
        return rec


# --- up -------------------------------------------------------------------------------------

def up(lab: Lab, mode: str = "kernel", say=print, underlay: str = "ipv4") -> Lab:
    if mode not in MODES:
        raise UsageError(f"lab --mode {mode}: use one of {', '.join(MODES)}")
    topology.seed_underlay(underlay)  # an unknown family is a usage error, before anything
    if lab.exists:
        raise LabError(f"a lab with prefix {lab.prefix!r} is already up ({lab.dir}); "
                       f"`vtep lab down --prefix {lab.prefix}` first")
    wanted = [lab.node_ns(n) for n in ("router",) + NODES] + [lab.pod_ns(n) for n in NODES]
    clash = sorted(set(wanted) & set(netns.list_namespaces()))
    if clash:
        raise LabError(f"namespaces {', '.join(clash)} already exist (left by another lab? "
                       f"`vtep lab down --prefix {lab.prefix}` removes only what it recorded)")
    lab.mode = mode
    lab.underlay = underlay
    lab.save()  # from here on, teardown knows where to look
    try:
        _build(lab, say)
    except BaseException:
        say(f"lab {lab.prefix}: a step failed; removing what was made", file=sys.stderr)
        teardown(lab)
        raise
    return lab


def _build(lab: Lab, say) -> None:
    lab.plan_path.write_text(seed_plan(lab.underlay))
    plan = planlib.load(lab.plan_path)
    topo = topology.seed(lab.prefix, underlay=lab.underlay)
    try:
        topo.start()
    finally:  # whatever start() managed to make is ours to remove
        lab.namespaces = list(topo.namespaces)
        lab.save()
    nets = [str(ipaddress.ip_interface(a).network)
            for a, _, _ in topology.seed_underlay(lab.underlay).values()]
    say(f"lab {lab.prefix}: namespaces {', '.join(lab.namespaces)}; underlay "
        f"{nets[0]} <-> router <-> {nets[1]} (tx checksum offload off); plan "
        + str(lab.plan_path))

    for name in NODES:
        node_dir = lab.dir / name
        node_dir.mkdir(exist_ok=True)
        path = node_mode(lab.mode, name)
        argv = [sys.executable, "-m", "vtep.cli", "run", f"--{path}", "--config",
                str(lab.plan_path), "--node", name, "--state-dir", str(node_dir)]
        rec = lab.spawn(f"vtep run {name}", lab.node_ns(name), argv, f"run-{name}")
        say(f"{name}: vtep run --{path} (pid {rec['pid']}, log {rec['log']})")
    for name in NODES:
        _wait_converged(lab, plan, name)

    for name in NODES:
        ns = lab.pod_ns(name)
        lab.pods[name] = {"ns": ns, "ip": None}
        lab.namespaces.append(ns)  # recorded before it exists: teardown deletes it if present
        lab.save()
        node_path = f"{topology.NETNS_DIR}/{lab.node_ns(name)}"
        # nsenter enters only the node's network namespace; `ip netns exec` would give
        # `vtep pod add` a private mount namespace, hiding the pod namespace it creates.
        r = subprocess.run(["nsenter", f"--net={node_path}", sys.executable, "-m", "vtep.cli",
                            "pod", "add", ns, "--config", str(lab.plan_path), "--node", name,
                            "--state-dir", str(lab.dir / name)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise LabError(f"{name}: vtep pod add {ns}: {(r.stderr or r.stdout).strip()}")
        store = json.loads((lab.dir / name / f"pods-{name}.json").read_text())
        lab.pods[name]["ip"] = store["pods"][ns]["ip"]
        lab.save()
        rec = lab.spawn(f"echo {ns}", ns, [sys.executable, "-m", "vtep.lab.echo", "serve",
                                           "--port", str(ECHO_PORT)], f"echo-{name}")
        _wait_listening(lab, ns, rec)
        say(f"{name}: pod {ns} {lab.pods[name]['ip']}, echo server :{ECHO_PORT} "
            f"(pid {rec['pid']})")


def _wait_converged(lab: Lab, plan, name: str) -> None:
    """Until every peer route is on vxlan0 in the node (vtep run installs routes last; in
    userspace mode vxlan0 is the TAP device and its sockets are open by then)."""
    rec = next(p for p in lab.processes if p["what"] == f"vtep run {name}")
    path = node_mode(lab.mode, name)
    want = [str(p.subnet) for p in plan.peers(name)]
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not _alive(rec):
            raise LabError(f"{name}: vtep run --{path} exited: {_tail(rec['log'])}")
        routes = netns.sh(["ip", "-4", "route", "show", "dev", "vxlan0"], ns=lab.node_ns(name),
                          check=False).stdout
        if all(w in routes for w in want):
            return
        if time.monotonic() > deadline:
            raise LabError(f"{name}: vtep run --{path} did not converge within "
                           f"{READY_TIMEOUT:g}s (routes to {', '.join(want)} missing): "
                           f"{_tail(rec['log'])}")
        time.sleep(0.1)


def _wait_listening(lab: Lab, ns: str, rec: dict) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not _alive(rec):
            raise LabError(f"{ns}: echo server exited: {_tail(rec['log'])}")
        out = netns.sh(["ss", "-Htln", f"sport = :{ECHO_PORT}"], ns=ns, check=False).stdout
        if out.strip():
            return
        if time.monotonic() > deadline:
            raise LabError(f"{ns}: echo server not listening on :{ECHO_PORT} within "
                           f"{READY_TIMEOUT:g}s: {_tail(rec['log'])}")
        time.sleep(0.05)


# --- down -----------------------------------------------------------------------------------

def teardown(lab: Lab) -> list[str]:
    """End recorded processes (by PID), delete recorded namespaces, remove the lab dir.

    Idempotent: what is already gone is skipped. Returns what it removed."""
    done = []
    for rec in reversed(lab.processes):
        if stop_process(rec):
            done.append(f"{rec['what']} (pid {rec['pid']})")
    lab.processes = []
    present = set(netns.list_namespaces())
    for ns in reversed(lab.namespaces):
        if ns in present:
            netns.delete(ns)
            done.append(ns)
    lab.namespaces = []
    if lab.dir.name.startswith("lab-") and lab.dir.exists():
        shutil.rmtree(lab.dir, ignore_errors=True)
    return done


def stop_process(rec: dict, grace: float = STOP_GRACE) -> bool:
    """SIGTERM (vtep run then removes its state), SIGKILL after `grace`. Only if the PID
    is still the process we started: a recycled PID belongs to someone else."""
    if not _alive(rec):
        return False
    pid = rec["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(rec):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + grace
            time.sleep(0.05)
    except ProcessLookupError:
        pass
    return True


def describe_mode(mode: str, underlay: str = "ipv4") -> str:
    return (f"mode {mode}: " + ", ".join(f"{n} {node_mode(mode, n)}" for n in NODES)
            + ("" if underlay == "ipv4" else f"; {underlay} underlay"))


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # fields after the parenthesised command name; starttime is field 22
            rest = f.read().rsplit(")", 1)[1].split()
        return None if rest[0] == "Z" else rest[19]
    except (OSError, IndexError):
        return None


def _alive(rec: dict) -> bool:
    try:  # reap it if it is our own child (demo runs up and down in one process)
        os.waitpid(rec["pid"], os.WNOHANG)
    except ChildProcessError:
        pass
    now = _starttime(rec["pid"])
    return now is not None and now == rec.get("start")


def _tail(log: str, n: int = 3) -> str:
    try:
        lines = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


# --- the command ----------------------------------------------------------------------------

def command(args) -> int:
    from ..host import require_net_admin
    require_net_admin(f"vtep lab {args.action}")
    lab = Lab(args.prefix)
    if args.action == "up":
        # getattr: --underlay is an option of the `lab` subparser (vtep/cli.py)
        up(lab, args.mode or "kernel", underlay=getattr(args, "underlay", None) or "ipv4")
        print(f"lab {lab.prefix}: up ({describe_mode(lab.mode, lab.underlay)}); "
              f"`vtep lab down --prefix {lab.prefix}` removes it")
        return 0
    if args.action == "down":
        if not lab.exists:
            print(f"lab {lab.prefix}: not up; nothing to do")
            return 0
        gone = teardown(lab.load())
        print(f"lab {lab.prefix}: down" + (f" (removed {', '.join(gone)})" if gone else ""))
        return 0
    from . import demo
    return demo.run(lab, args)
