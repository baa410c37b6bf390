"""The `vtep plan`, `run`, `mtu`, `down` and `status` commands.

`run` is the one place that composes the control plane: it builds the run
configuration (config.RunConfig) from the command line, then the plan source
(source.FileSource), the device backend (vxlanlink.VxlanLink or
userspace.TapLink), the reconciler (reconcile.Reconciler) and hands them to
the event loop (daemon.serve). Nothing below this module reads argparse
objects.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import sys

from . import automtu, daemon, host, kernel, netlink, netns, owner, state, vxlanlink
from . import plan as planlib
from .config import EtcdRun, RunConfig
from .errors import HostMismatch, UsageError
from .links import Links
from .reconcile import Reconciler
from .source import FileSource
from .status import netns_inode
from .userspace import TapLink, format_counters
from .vxlanlink import VxlanLink

log = logging.getLogger("vtep")


def setup_logging() -> None:
    """One line per event on stderr, prefixed like the CLI's own messages."""
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("vtep: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


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
    except HostMismatch:  # planning for another machine: show what we can
        dev, mtu = node.underlay_dev or f"<device holding {node.underlay_ip}>", 1500
        note = (f"{node.underlay_ip} is not on this host: assuming an underlay MTU of 1500"
                + ("" if node.underlay_dev else "; the device is the one holding it"))
    s = state.desired(p, node.name, underlay_dev=dev, underlay_mtu=mtu, device=args.device)
    print(f"# node {node.name}: VTEP {' '.join(s.device.addresses)}, MAC {s.device.mac}, "
          f"MTU {s.device.mtu}, {len(s.peers)} peer(s); {note}")
    for cmd in state.iproute2(s):
        print(cmd)
    return 0


def run_config(args, mtu: int | None = None,
               reprobe: tuple[str, ...] | None = None) -> RunConfig:
    """The run configuration, from `vtep run`'s command line (and what --mtu auto found)."""
    etcd = None
    if args.etcd:
        etcd = EtcdRun(args.etcd, args.etcd_prefix, args.etcd_cacert, args.etcd_cert,
                       args.etcd_key, args.name or args.node, args.underlay_ip, args.ttl)
    return RunConfig(mode=args.mode, plan_path=args.config, node=args.node, device=args.device,
                     interval=float(args.interval), once=args.once, keep=args.keep,
                     replace=args.replace, df=args.df, state_dir=args.state_dir, mtu=mtu,
                     reprobe=reprobe, accept_any_source=args.accept_any_source, etcd=etcd,
                     offload=args.offload, metrics=getattr(args, "metrics", None))


def _check_source(args) -> None:
    """--config or --etcd, exactly one; the options of the one not given are refused."""
    if bool(args.config) == bool(args.etcd):
        raise UsageError("vtep run: give --config PLAN or --etcd URL (one of them)")
    if args.config and (args.name or args.underlay_ip):
        raise UsageError(f"--{'name' if args.name else 'underlay-ip'} goes with --etcd; "
                         "with --config the node is the plan's (--node)")
    if args.etcd and args.once:
        raise UsageError("--once does not apply to --etcd: a node in etcd lives as long "
                         "as its agent keeps its lease")


def _auto(p, name: str | None) -> automtu.AutoMtu:
    """`--mtu auto`: probe every peer's path at start and say what was found."""
    node = host.select_node(p, name)
    _dev, umtu = host.underlay(node)
    found = automtu.auto_mtu(p, node, umtu, automtu.AUTO_TIMEOUT)
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
    return found


def run(args) -> int:
    _check_source(args)
    if args.etcd:
        return run_etcd(args)
    p = _load(args)
    if args.mtu == "auto":
        found = _auto(p, args.node)
        config = run_config(args, found.overlay_mtu, found.unreachable)
    else:
        config = run_config(args, args.mtu)
    return run_with(config, p)


def run_etcd(args) -> int:
    """`vtep run --etcd`: claim the device, register, then serve the plan the cluster
    makes (the claim first: a second agent on this host must not touch the live one's
    registration)."""
    from .etcd.join import join   # the etcd client only for runs that use it
    config = run_config(args, None if args.mtu == "auto" else args.mtu)
    _prepare(config)
    with owner.Claim(config.device), _metrics(config) as metrics:
        p, source = join(config)
        try:
            config = dataclasses.replace(config, node=source.name)
            if args.mtu == "auto":
                found = _auto(p, source.name)
                config = dataclasses.replace(config, mtu=found.overlay_mtu,
                                             reprobe=found.unreachable)
            contact = None
            if metrics is not None:
                from .metrics import ContactClock
                contact = ContactClock(source.client)
            return _serve(config, p, source, metrics, contact)
        finally:
            source.close()


def reconciler(config: RunConfig, p) -> Reconciler:
    """The reconciler of a run, with the device backend its mode names."""
    links = Links()
    try:
        rtnl = netlink.Rtnl()
    except BaseException:
        links.close()
        raise
    node = host.select_node(p, config.node).name
    config = dataclasses.replace(config, node=node)   # found once: by address, maybe
    if config.mode == "kernel":
        backend = VxlanLink(links, node, config.df)
    else:
        backend = TapLink(links, node, config.accept_any_source, config.offload)
    try:
        return Reconciler(p, config, backend, links, rtnl)
    except BaseException:
        links.close()
        rtnl.close()
        raise


def _prepare(config: RunConfig) -> None:
    """What every run checks before it touches anything."""
    setup_logging()
    host.require_net_admin(f"vtep run --{config.mode}")
    if config.mode == "kernel" and not config.offload:
        raise UsageError("--no-offload applies to --userspace only: the kernel's vxlan device "
                         "has its own offloads (ethtool -k)")
    if config.mode == "userspace":
        for flag in ("once", "keep"):
            if getattr(config, flag):
                raise UsageError(f"--{flag} does not apply to --userspace: its TAP device "
                                 "lives only as long as the process that reads it")
    if config.once and config.metrics is not None:
        raise UsageError("--metrics does not apply to --once: nothing would be left to "
                         "scrape after its one pass")


@contextlib.contextmanager
def _metrics(config: RunConfig):
    """`--metrics`: the endpoint, listening before anything is touched (a port taken is
    exit 4 with nothing made), closed when the run ends; None without it."""
    if config.metrics is None:
        yield None
        return
    from . import metrics as metricslib   # prometheus-client only for runs that serve it
    m = metricslib.Metrics()
    server = metricslib.Server(m, *config.metrics)
    log.info(f"metrics: http://{server.where}/metrics")
    try:
        yield m
    finally:
        server.close()


def run_with(config: RunConfig, p) -> int:
    """The one composition point of `vtep run` from a plan file: the plan source, the
    device backend and the reconciler, built from the configuration and handed to the
    event loop (or, with --once, one pass)."""
    _prepare(config)
    # the claim before anything is touched, --once included; then the metrics endpoint
    with owner.Claim(config.device), _metrics(config) as metrics:
        return _serve(config, p, None, metrics)


def _serve(config: RunConfig, p, source, metrics=None, contact=None) -> int:
    """Under the device's claim: the reconciler, then one pass (--once) or the event loop
    fed by `source` (None: the plan file). `metrics` (vtep.metrics.Metrics) reads the
    agent's state through a LiveView; `contact`, the etcd client's ContactClock."""
    if config.mtu is not None:
        p = dataclasses.replace(p, mtu=config.mtu)
    rec = reconciler(config, p)
    try:
        if config.once:
            rec.report_conflicts = False   # said once, as this run's error
            lines = rec.converge(first=True, replace=config.replace)
            if rec.conflicts:   # the rest is applied; exit 4, one line per route
                raise kernel.RouteConflict(rec.conflicts)
            rec.summary(lines)
            return 0
        if source is None:
            source = FileSource(config.plan_path)
        try:
            if metrics is not None:
                from .metrics import LiveView
                backend = rec.backend
                socks = (lambda: backend.mtu_socks) if config.mode == "userspace" else None
                metrics.attach(LiveView(rec, source, contact, socks))
            return daemon.serve(rec, source, config, metrics)
        finally:
            source.close()
    finally:
        rec.close()


def mtu(args) -> int:
    """Probe each peer's underlay path; print path and overlay MTUs; exit 1 if the
    configured overlay MTU does not fit some path, naming the peer, or a peer does not
    answer (the others are still probed and shown)."""
    p = _load(args)
    node = host.select_node(p, args.node)
    dev, umtu = host.underlay(node)
    results, lost = automtu.probe(p, node, umtu, args.timeout)
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
    p = _load(args)
    setup_logging()
    host.require_net_admin("vtep down")
    node = host.select_node(p, args.node)
    return vxlanlink.down(p, node, args.device, args.state_dir)


NETNS_DIR = "/run/netns"   # where `ip netns` keeps its named namespaces


def _status_files(state_dir: str):
    """(path, lab prefix or None) of every candidate status file: <state-dir>/*.json, then
    those of the labs kept under it (<state-dir>/lab-PREFIX/NODE/*.json: `vtep lab up`
    gives each node's agent a state dir of its own there, see vtep.lab.lab)."""
    for path in sorted(glob.glob(os.path.join(glob.escape(state_dir), "*.json"))):
        yield path, None
    for lab_dir in sorted(glob.glob(os.path.join(glob.escape(state_dir), "lab-*"))):
        for path in sorted(glob.glob(os.path.join(glob.escape(lab_dir), "*", "*.json"))):
            yield path, os.path.basename(lab_dir)[len("lab-"):]


def _netns_names() -> dict[int, str]:
    """Network namespace inode -> its name under /run/netns (`ip netns list`)."""
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
    now = netns_inode(pid)
    return now is None or not isinstance(ns, int) or now == ns


def status(args) -> int:
    """Print every status file under --state-dir and under the labs kept there: who runs
    which device in which network namespace, whether it still runs, and its counters.

    An agent in another network namespace (a lab node's, or one started with
    `ip netns exec`) is shown with that namespace's name."""
    docs = []
    here = netns_inode()
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
                frames = f" in {c['tx_frames']} TAP frames" if "tx_frames" in c else ""
                print(f"  peer {ip}: tx {c['tx_packets']} packets {c['tx_bytes']} bytes"
                      f"{frames}, rx {c['rx_packets']} packets {c['rx_bytes']} bytes")
        if d.get("error"):
            print(f"  error: {d['error']}")
    return 0
