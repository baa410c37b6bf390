"""The `vtep plan`, `run` and `down` commands: glue between the plan and a data path."""
from __future__ import annotations

import sys

from . import host, plan as planlib, state


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
    if args.mode == "kernel":
        from . import kernel
        return kernel.run(args, _load(args))
    from . import userspace
    return userspace.run(args, _load(args))


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
        doc["running"] = bool(sf.live_owner()) or _alive(doc["pid"])
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


def _alive(pid) -> bool:
    import os
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
