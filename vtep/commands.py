"""The `vtep plan`, `run` and `down` commands: glue between the plan and a data path."""
from __future__ import annotations

import sys
from typing import Iterable, NamedTuple

from . import host, netns, plan as planlib, state

AUTO_TIMEOUT = 0.4   # s per probe for `run --mtu auto` (2 tries per size)


def _load(args):
    plan = planlib.load(args.config)
    for w in plan.warnings:
        print(f"vtep: warning: {w}", file=sys.stderr)
    return plan


def plan(args) -> int:
    """Print the node's desired state as iproute2 commands; touches nothing."""
    p = _load(args)
    node = host.select_node(p, args.node)
    try:
        dev, mtu = host.underlay(node)
        note = f"underlay device {dev} (MTU {mtu}) found on this host"
    except Exception:  # planning for another machine: show what we can
        dev, mtu = node.underlay_dev or f"<device holding {node.underlay_ip}>", 1500
        note = (f"{node.underlay_ip} is not on this host: assuming an underlay MTU of 1500"
                + ("" if node.underlay_dev else "; the device is the one holding it"))
    s = state.desired(p, node.name, underlay_dev=dev, underlay_mtu=mtu, device=args.device)
    print(f"# node {node.name}: VTEP {s.device.address}/32, MAC {s.device.mac}, "
          f"MTU {s.device.mtu}, {len(s.peers)} peer(s); {note}")
    for cmd in state.iproute2(s):
        print(cmd)
    return 0


class AutoMtu(NamedTuple):
    """What `--mtu auto` found: the overlay MTU that fits every reachable peer's path
    (None: no peer answered, or there are none; the plan's MTU applies), the peers
    that did not answer, and the peer with the narrowest path (with its path MTU)."""
    overlay_mtu: int | None
    unreachable: tuple[str, ...]
    narrowest: str | None
    path_mtu: int | None = None
    why: tuple[str, ...] = ()     # one line per unreachable peer, naming it


def auto_mtu(plan, node, underlay_mtu: int, timeout: float = AUTO_TIMEOUT,
             peers: Iterable[str] | None = None) -> AutoMtu:
    """Probe the underlay path to every peer of `node` (or only those named in `peers`)
    and return the overlay MTU that fits all the reachable ones. Never raises for a
    peer that does not answer: it is listed in `unreachable` instead. Blocking: about
    2 x timeout per unreachable peer, up to ~12 x 2 x timeout per peer behind a black
    hole (binary search); PermissionDenied/HostMismatch when this host cannot probe."""
    found, lost = _probe(plan, node, underlay_mtu, timeout, peers)
    unreachable = tuple(e.peer for e in lost)
    why = tuple(str(e) for e in lost)
    if not found:
        return AutoMtu(None, unreachable, None, None, why)
    narrow = min(found, key=lambda r: r.mtu)
    return AutoMtu(narrow.mtu - plan.overhead, unreachable, narrow.peer, narrow.mtu, why)


def _probe(plan, node, underlay_mtu: int, timeout: float, only=None):
    """(path MTUs of the peers that answered, pmtu.Unreachable of those that did not)."""
    from . import pmtu
    host.require_net_admin("probing the path MTU")
    wanted = None if only is None else set(only)
    peers = [(n.name, str(n.underlay_ip)) for n in plan.peers(node.name)
             if wanted is None or n.name in wanted]
    return pmtu.probe_each(str(node.underlay_ip), peers, underlay_mtu, timeout=timeout)


def run(args) -> int:
    p = _load(args)
    args.mtu_override = None
    if args.mtu == "auto":
        node = host.select_node(p, args.node)
        dev, umtu = host.underlay(node)
        found = args.mtu_auto = auto_mtu(p, node, umtu, AUTO_TIMEOUT)
        args.mtu_override = found.overlay_mtu
        for line in found.why:
            print(f"vtep: warning: --mtu auto: {line}", file=sys.stderr)
        if found.overlay_mtu is not None:
            print(f"vtep: --mtu auto: overlay MTU {found.overlay_mtu} (narrowest path: "
                  f"{found.narrowest}, {found.path_mtu}"
                  + (f"; not counting unreachable {', '.join(found.unreachable)}"
                     if found.unreachable else "") + ")", file=sys.stderr)
        elif found.unreachable:
            print(f"vtep: warning: --mtu auto: no peer answered "
                  f"({', '.join(found.unreachable)}): starting with the plan's overlay MTU "
                  f"{state.overlay_mtu(p, umtu)}", file=sys.stderr)
    elif args.mtu is not None:
        args.mtu_override = args.mtu
    if args.mtu_override is not None:
        import dataclasses
        p = dataclasses.replace(p, mtu=args.mtu_override)
    if args.mode == "kernel":
        from . import kernel
        return kernel.run(args, p)
    from . import userspace
    return userspace.run(args, p)


def mtu(args) -> int:
    """Probe each peer's underlay path; print path and overlay MTUs; exit 1 if the
    configured overlay MTU does not fit some path, naming the peer, or a peer does not
    answer (the others are still probed and shown)."""
    p = _load(args)
    node = host.select_node(p, args.node)
    dev, umtu = host.underlay(node)
    results, lost = _probe(p, node, umtu, args.timeout)
    configured = state.overlay_mtu(p, umtu)
    source = "cluster.mtu" if p.mtu is not None else f"{dev} MTU {umtu} - {p.overhead}"
    print(f"node {node.name}: underlay {dev} MTU {umtu}; configured overlay MTU {configured} "
          f"({source})")
    for r in results:
        peer = p.node(r.peer)
        how = "an ICMP error named it" if r.learned else "binary search"
        print(f"  peer {r.peer} ({peer.underlay_ip}): path MTU {r.mtu}, overlay MTU "
              f"{r.mtu - p.overhead} ({r.probes} probes, {how})")
    for e in lost:
        print(f"  peer {e.peer} ({e.address}): unreachable")
    if not (results or lost):
        print("  no peers in the plan")
        return 0
    short = []
    if results:
        best = min(r.mtu for r in results) - p.overhead
        print(f"overlay MTU that fits every {'reachable ' if lost else ''}peer: {best}")
        short = [r for r in results if r.mtu - p.overhead < configured]
    if short:
        names = ", ".join(f"{r.peer} (fits {r.mtu - p.overhead})" for r in short)
        print(f"vtep: the configured overlay MTU {configured} does not fit the path to {names}; "
              f"set cluster.mtu = {best} or run with --mtu auto", file=sys.stderr)
    for e in lost:
        print(f"vtep: {e}", file=sys.stderr)
    return 1 if short or lost else 0


def down(args) -> int:
    from . import kernel
    return kernel.down(args, _load(args))


NETNS_DIR = "/run/netns"   # where `ip netns` keeps its named namespaces


def _status_files(state_dir: str):
    """(path, lab prefix or None) of every candidate status file: <state-dir>/*.json, then
    those of the labs kept under it (<state-dir>/lab-PREFIX/NODE/*.json: `vtep lab up`
    gives each node's agent a state dir of its own there, see vtep.lab.lab)."""
    import glob
    import os
    for path in sorted(glob.glob(os.path.join(glob.escape(state_dir), "*.json"))):
        yield path, None
    for lab_dir in sorted(glob.glob(os.path.join(glob.escape(state_dir), "lab-*"))):
        for path in sorted(glob.glob(os.path.join(glob.escape(lab_dir), "*", "*.json"))):
            yield path, os.path.basename(lab_dir)[len("lab-"):]


def _netns_inode(pid="self") -> int | None:
    from .daemon import _netns_inode   # one reader of /proc/PID/ns/net: the status file's
    return _netns_inode(pid)


def _netns_names() -> dict[int, str]:
    """Network namespace inode -> its name under /run/netns (`ip netns list`)."""
    import os
    names = {}
    try:
        for e in os.scandir(NETNS_DIR):
            try:
                names.setdefault(os.stat(e.path).st_ino, e.name)
            except OSError:
                continue
    except OSError:
        pass
    return names


def _running(pid, ns) -> bool:
    """The recorded pid lives, and in the network namespace the status file names (a pid
    recycled by a process elsewhere runs no agent); when its namespace cannot be read
    (not root), that it lives is all we can tell."""
    if not isinstance(pid, int) or not netns.alive(pid):
        return False
    now = _netns_inode(pid)
    return now is None or not isinstance(ns, int) or now == ns


def status(args) -> int:
    """Print every status file under --state-dir and under the labs kept there: who runs
    which device in which network namespace, whether it still runs, and its counters.

    An agent in another network namespace (a lab node's, or one started with
    `ip netns exec`) is shown with that namespace's name."""
    import json

    docs = []
    here = _netns_inode()
    names = _netns_names()
    for path, lab in _status_files(args.state_dir):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or "device" not in doc or "pid" not in doc:
            continue  # another state file (pods, lab)
        ns = doc.get("netns")
        doc["running"] = _running(doc["pid"], ns)
        doc["status_file"] = path
        doc["lab"] = lab
        doc["here"] = not isinstance(ns, int) or ns == here
        doc["netns_name"] = names.get(ns) if isinstance(ns, int) else None
        docs.append(doc)
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    if not docs:
        print(f"no vtep runs recorded under {args.state_dir}")
        return 0
    from .userspace import format_counters
    for d in docs:
        state = "running" if d["running"] else "not running (stale status file)"
        where = [f"lab {d['lab']}"] if d["lab"] else []
        if not d["here"]:
            where.append(f"netns {d['netns_name']}" if d["netns_name"]
                         else f"another network namespace (inode {d.get('netns')})")
        print(f"{d['device']}: node {d.get('node')}"
              + (f" ({', '.join(where)})" if where else "")
              + f", {d.get('mode', 'kernel')} path, pid {d['pid']} "
              f"{state}; peers {', '.join(d.get('peers') or []) or 'none'}; "
              f"last pass {d.get('last_pass')}")
        if d.get("counters"):
            print(f"  {format_counters(d['counters'])}")
            for ip, c in d["counters"].get("peers", {}).items():
                print(f"  peer {ip}: tx {c['tx_packets']} packets {c['tx_bytes']} bytes, "
                      f"rx {c['rx_packets']} packets {c['rx_bytes']} bytes")
        if d.get("error"):
            print(f"  error: {d['error']}")
    return 0
