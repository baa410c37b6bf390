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
