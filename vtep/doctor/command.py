"""`vtep doctor`'s command: the plan and node from the command line, the facts, every
check, one report. Exit status (mapped by the CLI): 0 healthy, 1 an error finding; a
bad plan, option or node 2, not root 3, as every vtep command."""
from __future__ import annotations

import sys

from .. import host, plan as planlib
from . import agent, device, hostcheck
from .facts import gather
from .finding import healthy, render


def load(args):
    """(plan, where) from --config or --etcd."""
    if args.config:
        return planlib.load(args.config), f"plan {args.config}"
    from ..etcd import Client, TLSFiles
    from ..etcd.membership import current_plan
    from ..etcd.model import Layout
    layout = Layout(args.etcd_prefix)
    where = f"etcd {args.etcd}{layout.prefix}"
    with Client(args.etcd, tls=TLSFiles(args.etcd_cacert, args.etcd_cert,
                                        args.etcd_key)) as client:
        return current_plan(client, layout, where), where


def doctor(args) -> int:
    from ..errors import UsageError
    if bool(args.config) == bool(args.etcd):
        raise UsageError("doctor: give --config F or --etcd URL (one of the two)")
    host.require_net_admin("vtep doctor")
    plan, where = load(args)
    node = host.select_node(plan, args.node)
    f = gather(plan, node, where, args.device, args.state_dir)
    findings = agent.check(f) + device.check(f) + hostcheck.check(f)
    if args.probe:
        from . import probe
        findings += probe.check(f)
    print(render(findings, node.name, args.json))
    sys.stdout.flush()
    return 0 if healthy(findings) else 1
