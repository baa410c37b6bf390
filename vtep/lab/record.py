"""What a lab made, recorded so that `vtep lab down` removes exactly that and nothing else.

One lab, one record: <base>/lab-<prefix>/state.json (base /run/vtep for `vtep lab up`, a
temporary directory for a test or a benchmark). The builder (lab.py) writes every
namespace into it before or the moment it exists and every process the moment it is
spawned, so a failing step, or a crashed `up`, is undone by the same teardown() that
`down` runs. Processes are ended by PID, after checking that the PID still belongs to the
process we started (its start time in /proc/PID/stat): a recycled PID is someone else's.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .. import netns
from ..errors import LabError, UsageError
from .topology import Topology

LAB_BASE = "/run/vtep"
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
POD = "pod1"
STOP_GRACE = 5.0


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix or ""):
        raise UsageError(f"--prefix {prefix!r}: use 1-32 letters, digits, '.', '_' or '-'")
    return prefix


class Lab:
    """One lab's record: <base>/lab-<prefix>/state.json, saved after every change."""

    def __init__(self, prefix: str, base: str | os.PathLike = LAB_BASE):
        self.prefix = check_prefix(prefix)
        self.dir = Path(base) / f"lab-{prefix}"
        self.state_path = self.dir / "state.json"
        self.plan_path = self.dir / "plan.toml"
        self.namespaces: list[str] = []
        self.processes: list[dict] = []
        self.pods: dict[str, dict] = {}  # node -> {"ns", "ip", "ip6"} (None: no such family)
        self.mode = "kernel"
        self.underlay = "ipv4"
        self.nodes: list[str] = ["network-1", "network-2"]   # the seed's, unless --nodes
        self.etcd: str | None = None   # --store etcd: the URL the agents register with
        self.dual_stack = False   # --dual-stack: the plan has overlay6, the pods IPv6 too
        # In memory only, for the process that built the lab (a test, a benchmark): its
        # nodes' cmd() and popen(); teardown() ends what was started through it.
        self.topology: Topology | None = None

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
        self.nodes = list(d.get("nodes", self.nodes))
        self.etcd = d.get("etcd")
        self.dual_stack = bool(d.get("dual_stack", False))
        return self

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"prefix": self.prefix, "mode": self.mode,
                                   "underlay": self.underlay, "nodes": self.nodes,
                                   "etcd": self.etcd, "dual_stack": self.dual_stack,
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

    def process(self, what: str) -> dict:
        """The record of the running process named `what` (e.g. "vtep run network-1")."""
        try:
            return next(p for p in self.processes if p["what"] == what)
        except StopIteration:
            raise LabError(f"lab {self.prefix}: no process {what!r}") from None

    def stop(self, rec: dict) -> None:
        """End one recorded process (by PID) and drop it from the record."""
        stop_process(rec)
        self.processes.remove(rec)
        self.save()


def teardown(lab: Lab) -> list[str]:
    """End recorded processes (by PID), delete recorded namespaces, remove the lab dir.

    Idempotent: what is already gone is skipped. Returns what it removed."""
    done = []
    for rec in reversed(lab.processes):
        if stop_process(rec):
            done.append(f"{rec['what']} (pid {rec['pid']})")
    lab.processes = []
    if lab.topology is not None:   # what the builder's caller started through its nodes
        lab.topology.end_processes()
        lab.topology = None
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
    if not alive(rec):
        return False
    pid = rec["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(rec):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + grace
            time.sleep(0.05)
    except ProcessLookupError:
        pass
    return True


def alive(rec: dict) -> bool:
    """The recorded process still runs (same PID, same start time)."""
    try:  # reap it if it is our own child (demo runs up and down in one process)
        os.waitpid(rec["pid"], os.WNOHANG)
    except ChildProcessError:
        pass
    now = _starttime(rec["pid"])
    return now is not None and now == rec.get("start")


def tail(log: str, n: int = 3) -> str:
    """The last `n` lines of a log, on one line (for an error message)."""
    try:
        lines = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # fields after the parenthesised command name; starttime is field 22
            rest = f.read().rsplit(")", 1)[1].split()
        return None if rest[0] == "Z" else rest[19]
    except (OSError, IndexError):
        return None
