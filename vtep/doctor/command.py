"""`vtep doctor`'s command: the plan and node from the command line, the facts, every
check, one report. Exit status (mapped by the CLI): 0 healthy, 1 an error finding; a
bad plan, option or node 2, not root 3, as every vtep command."""
from __future__ import annotations

import ipaddress
import sys

from .. import host, plan as planlib
from . import agent, device, hostcheck
from .facts import gather
from .finding import Finding, healthy, render


def load(args):
    """(plan, where, lost): the plan from --config or --etcd; `lost` is a Finding when
    --node names a node of the etcd cluster that has no live member record (its lease
    expired: the agent is down or cut off from the store), which is then checked
    against what the store still holds for it, its reserved subnet."""
    if args.config:
        return planlib.load(args.config), f"plan {args.config}", None
    from ..etcd import Client, TLSFiles
    from ..etcd.membership import NoCluster, read_cluster
    from ..etcd.model import Layout, to_plan
    layout = Layout(args.etcd_prefix)
    where = f"etcd {args.etcd}{layout.prefix}"
    with Client(args.etcd, tls=TLSFiles(args.etcd_cacert, args.etcd_cert,
                                        args.etcd_key)) as client:
        recs, _ = read_cluster(client, layout)
    if recs.problems:
        raise recs.problems[0]
    if recs.config is None:
        raise NoCluster(layout)
    members, lost = dict(recs.members), None
    if args.node and args.node not in members:
        ghost = _ghost(args, recs)
        if ghost is not None:
            members[args.node] = ghost
            lost = Finding("agent.not-a-member", "error",
                           f"{args.node} has no live member record in {where}: its lease "
                           f"expired; checked against its reserved subnet "
                           f"{', '.join(map(str, ghost.subnets))}",
                           "its peers have dropped it: nothing reaches its pods",
                           f"vtep run --{ghost.mode} --etcd URL --name {args.node}")
    return to_plan(recs.config, members, where), where, lost


def _ghost(args, recs):
    """The node as it was: its reserved subnet, and its underlay address from its
    device (a killed agent leaves it) or its last status file; None when neither."""
    from ..etcd.model import Member
    from ..linkfacts import facts as link_facts
    from ..links import Links
    from ..status import StatusFile
    held = recs.held(args.node)            # its reserved subnet of each family
    if not held:
        return None
    ip, mode = None, "kernel"
    links = Links()
    try:
        msg = links.get(args.device)
        if msg is not None:
            have = link_facts(msg)
            ip, mode = have.local, ("userspace" if have.kind == "tun" else "kernel")
    finally:
        links.close()
    st = StatusFile(args.state_dir, args.node, args.device).read() or {}
    ip = ip or (st.get("network") or {}).get("underlay_ip")
    if not ip:
        return None
    subnet, subnet6 = held.get(4), held.get(6)
    return Member(args.node, ipaddress.ip_address(ip),
                  planlib.derive_mac(args.node, subnet or subnet6), subnet,
                  st.get("mode", mode), None, "", 0.0, subnet6)


def doctor(args) -> int:
    from ..errors import UsageError
    if bool(args.config) == bool(args.etcd):
        raise UsageError("doctor: give --config F or --etcd URL (one of the two)")
    host.require_net_admin("vtep doctor")
    plan, where, lost = load(args)
    node = host.select_node(plan, args.node)
    f = gather(plan, node, where, args.device, args.state_dir)
    findings = ([lost] if lost else []) + agent.check(f) + device.check(f) + hostcheck.check(f)
    if args.probe:
        from . import probe
        findings += probe.check(f)
    print(render(findings, node.name, args.json))
    sys.stdout.flush()
    return 0 if healthy(findings) else 1
