"""`vtep cluster init|show|remove|export`: the cluster's membership in etcd, read and
written by hand (vtep.etcd.membership does the work; this turns the command line into
its arguments and its results into lines).

Dual stack (issue 15): init writes the plan's overlay6 with --subnet6-len (a /64 per
node unless given) and reserves each [[nodes]] entry's subnet6 too; show adds a
SUBNET6 column when the cluster has an IPv6 overlay (and leaves SUBNET out of an
IPv6-only one); export writes overlay6 and each member's subnet6.

Exit status as vtep's: 2 a bad plan, option or node name (or no cluster at the
prefix: run init), 4 never here, 7 etcd unreachable or refusing (vtep.etcd.EXIT_STORE).
"""
from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path

from . import plan as planmod
from .errors import PlanError
from .etcd import Client, TLSFiles
from .etcd.membership import NoCluster, init_cluster, read_cluster, remove_node
from .etcd.model import DEFAULT_SUBNET6_LEN, Layout, export_toml, plan_from_data

COLUMNS = ("NAME", "SUBNET", "SUBNET6", "UNDERLAY-IP", "VTEP-MAC", "MODE", "STATUS")


def _connect(args) -> tuple[Client, Layout]:
    layout = Layout(args.etcd_prefix)
    tls = TLSFiles(args.etcd_cacert, args.etcd_cert, args.etcd_key)
    return Client(args.etcd, tls=tls), layout


def _where(client: Client, layout: Layout) -> str:
    return f"etcd {','.join(e.url for e in client.endpoints)}{layout.prefix}"


def _load_plan(path: str) -> planmod.Plan:
    """The plan file, where a [cluster] table alone is enough: vtep.plan.load's reading
    and errors, then plan_from_data's rules when it only lacked [[nodes]]."""
    try:
        return planmod.load(path)
    except PlanError as e:
        if not any(p.endswith("at least one [[nodes]] entry is needed") for p in e.problems):
            raise
    return plan_from_data(tomllib.loads(Path(path).read_text()), str(path))


def init(args) -> int:
    plan = _load_plan(args.config)
    for w in plan.warnings:
        print(f"vtep: warning: {w}", file=sys.stderr)
    client, layout = _connect(args)
    with client:
        # --subnet6-len: read with a default, as a parser without the option has none
        for line in init_cluster(client, layout, plan, args.subnet_len, force=args.force,
                                 subnet6_len=getattr(args, "subnet6_len", None)
                                 or DEFAULT_SUBNET6_LEN):
            print(line)
    return 0


def _records(client, layout):
    recs, rev = read_cluster(client, layout)
    for p in recs.problems:
        print(f"vtep: warning: {p} (skipped)", file=sys.stderr)
    if recs.config is None:
        if any(p.key == layout.config for p in recs.problems):
            raise next(p for p in recs.problems if p.key == layout.config)
        raise NoCluster(layout)
    return recs, rev


def _since(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _text(net) -> str | None:
    return None if net is None else str(net)


def rows(recs) -> list[dict]:
    """One row per node: its live membership, else its reservations (one of each
    family; sorted by name). subnet6 is null for a node holding none."""
    out = {}
    for m in recs.members.values():
        out[m.name] = {"name": m.name, "subnet": _text(m.subnet),
                       "subnet6": _text(m.subnet6),
                       "underlay_ip": str(m.underlay_ip), "vtep_mac": m.vtep_mac,
                       "mode": m.mode, "mtu": m.mtu, "version": m.version,
                       "status": "alive", "since": m.since}
    for r in sorted(recs.reservations.values(),
                    key=lambda r: (r.subnet.version, planmod._span(r.subnet))):
        name = r.node or f"(unreadable {r.subnet})"
        if name in out:
            if out[name]["status"] == "reserved" and r.node:
                fld = "subnet" if r.subnet.version == 4 else "subnet6"
                out[name][fld] = out[name][fld] or str(r.subnet)
            continue
        v4, v6 = (str(r.subnet), None) if r.subnet.version == 4 else (None, str(r.subnet))
        out[name] = {"name": name, "subnet": v4, "subnet6": v6, "underlay_ip": None,
                     # as the plan derives it: from the IPv4 subnet when there is one
                     "vtep_mac": planmod.derive_mac(r.node, r.subnet) if r.node else None,
                     "mode": None, "mtu": None, "version": None, "status": "reserved",
                     "since": None, "lease": bool(r.lease)}
    return [out[k] for k in sorted(out)]


def show(args) -> int:
    client, layout = _connect(args)
    with client:
        recs, rev = _records(client, layout)
    table = rows(recs)
    if args.json:
        print(json.dumps({"prefix": layout.prefix, "revision": rev,
                          "config": recs.config.to_dict(), "nodes": table}, indent=2))
        return 0
    # SUBNET6 when the cluster has (or its records hold) IPv6 subnets; SUBNET unless it
    # is IPv6-only: a v4-only cluster's table is as it was before issue 15
    shown = [c for c in COLUMNS
             if c == "SUBNET" and (recs.config.overlay is not None
                                   or any(r["subnet"] for r in table))
             or c == "SUBNET6" and (recs.config.overlay6 is not None
                                    or any(r["subnet6"] for r in table))
             or c not in ("SUBNET", "SUBNET6")]
    lines = [tuple(shown)]
    for r in table:
        status = f"alive since {_since(r['since'])}" if r["status"] == "alive" else \
            "reserved" + ("" if r["lease"] else " (by init)")
        cells = {"NAME": r["name"], "SUBNET": r["subnet"] or "-",
                 "SUBNET6": r["subnet6"] or "-", "UNDERLAY-IP": r["underlay_ip"] or "-",
                 "VTEP-MAC": r["vtep_mac"] or "-", "MODE": r["mode"] or "-",
                 "STATUS": status}
        lines.append(tuple(cells[c] for c in shown))
    widths = [max(len(line[i]) for line in lines) for i in range(len(shown))]
    for line in lines:
        print("   ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0


def remove(args) -> int:
    client, layout = _connect(args)
    with client:
        for line in remove_node(client, layout, args.node_name):
            print(line)
    return 0


def export(args) -> int:
    client, layout = _connect(args)
    with client:
        recs, rev = _records(client, layout)
        where = f"{_where(client, layout)} at revision {rev}"
    sys.stdout.write(export_toml(recs.config, recs.members, recs.reservations.values(),
                                 where))
    return 0
