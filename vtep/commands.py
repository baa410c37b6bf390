"""The `vtep plan`, `run` and `down` commands: glue between the plan and a data path."""
from __future__ import annotations

import sys

from . import host, netns, plan as planlib, state


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


def run(args) -> int:
    p = _load(args)
    args.mtu_override = None
    if args.mtu == "auto":
        node = host.select_node(p, args.node)
        dev, umtu = host.underlay(node)
        results = _probe(p, node, umtu, 0.4)
        args.mtu_override = min(r.mtu for r in results) - p.overhead if results else None
        if args.mtu_override is not None:
            print(f"vtep: --mtu auto: overlay MTU {args.mtu_override} (narrowest path: "
                  f"{min(results, key=lambda r: r.mtu).peer}, {min(r.mtu for r in results)})",
                  file=sys.stderr)
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


def _probe(p, node, underlay_mtu: int, timeout: float):
    from . import pmtu
    host.require_net_admin("probing the path MTU")
    peers = [(n.name, str(n.underlay_ip)) for n in p.peers(node.name)]
    return pmtu.probe_peers(str(node.underlay_ip), peers, underlay_mtu, timeout=timeout)


def mtu(args) -> int:
    """Probe each peer's underlay path; print path and overlay MTUs; exit 1 if the
    configured overlay MTU does not fit some path, naming the peer."""
    p = _load(args)
    node = host.select_node(p, args.node)
    dev, umtu = host.underlay(node)
    results = _probe(p, node, umtu, args.timeout)
    configured = state.overlay_mtu(p, umtu)
    source = "cluster.mtu" if p.mtu is not None else f"{dev} MTU {umtu} - {p.overhead}"
    print(f"node {node.name}: underlay {dev} MTU {umtu}; configured overlay MTU {configured} "
          f"({source})")
    for r in results:
        peer = p.node(r.peer)
        how = "an ICMP error named it" if r.learned else "binary search"
        print(f"  peer {r.peer} ({peer.underlay_ip}): path MTU {r.mtu}, overlay MTU "
              f"{r.mtu - p.overhead} ({r.probes} probes, {how})")
    if not results:
        print("  no peers in the plan")
        return 0
    best = min(r.mtu for r in results) - p.overhead
    print(f"overlay MTU that fits every peer: {best}")
    short = [r for r in results if r.mtu - p.overhead < configured]
    if short:
        names = ", ".join(f"{r.peer} (fits {r.mtu - p.overhead})" for r in short)
        print(f"vtep: the configured overlay MTU {configured} does not fit the path to {names}; "
              f"set cluster.mtu = {best} or run with --mtu auto", file=sys.stderr)
        return 1
    return 0


def down(args) -> int:
    from . import kernel
    return kernel.down(args, _load(args))


def status(args) -> int:
    """Print every status file under --state-dir: who runs which device, and counters."""
    import glob
    import json
    import os

    from .daemon import StatusFile
    docs = []
    for path in sorted(glob.glob(os.path.join(args.state_dir, "*.json"))):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or "device" not in doc or "pid" not in doc:
            continue  # another state file (pods, lab)
        sf = StatusFile(args.state_dir, doc.get("node", ""), doc["device"])
        doc["running"] = bool(sf.live_owner()) or (isinstance(doc["pid"], int)
                                                     and netns.alive(doc["pid"]))
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
        print(f"{d['device']}: node {d.get('node')}, {d.get('mode', 'kernel')} path, pid {d['pid']} "
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

