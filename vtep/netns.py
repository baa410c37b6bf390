"""Network namespace primitives for the lab and the tests (iproute2 underneath).

Every namespace made here carries a caller-chosen prefix, so that a sweep can
remove exactly what a crashed run left behind and nothing else. Commands run
inside a namespace with `ip netns exec`; nothing here touches the root
namespace except creating and deleting the namespaces themselves.
"""
from __future__ import annotations

import os
import subprocess

from .errors import LabError


def sh(cmd: list[str], ns: str | None = None, *, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` (inside namespace `ns` if given); raise LabError naming it on failure."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(full)}: timed out after {timeout:g}s")
    except FileNotFoundError:
        raise LabError(f"{cmd[0]}: command not found (run bootstrap.sh)")
    if check and r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise LabError(f"{' '.join(full)}: exit {r.returncode}: {err[-1] if err else ''}")
    return r


def popen(cmd: list[str], ns: str | None = None, **kw) -> subprocess.Popen:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.Popen(full, **kw)


def list_namespaces() -> list[str]:
    r = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def add(name: str) -> None:
    sh(["ip", "netns", "add", name])
    sh(["ip", "link", "set", "lo", "up"], ns=name)


def delete(name: str) -> None:
    """Remove a namespace; its processes must have been ended by their owner first."""
    sh(["ip", "netns", "delete", name], check=False)


def sweep(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with `prefix` (a leftover of ours)."""
    if not prefix:
        raise ValueError("refusing to sweep with an empty prefix")
    gone = [n for n in list_namespaces() if n.startswith(prefix)]
    for n in gone:
        delete(n)
    return gone


def sweep_stale(base: str) -> list[str]:
    """Delete namespaces named `base`<pid>-... whose run (that pid) is gone.

    Runs that are still alive keep theirs, so two test runs never collide.
    """
    gone = []
    for n in list_namespaces():
        pid = n[len(base):].split("-", 1)[0]
        if n.startswith(base) and pid.isdigit() and not alive(int(pid)):
            delete(n)
            gone.append(n)
    return gone


def alive(pid: int) -> bool:
    """True while a process with this pid exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_prefix(base: str) -> str:
    """A per-run prefix: `base` plus this process's PID."""
    return f"{base}{os.getpid()}-"
