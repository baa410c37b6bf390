"""The reconciler: one node's desired state, realised through a device backend and kept so.

A pass (converge): gather the host facts (host.underlay_facts), derive the
desired state (state.desired, pure), let the backend create or repair the
device (vxlanlink.VxlanLink or userspace.TapLink), read the realised per-peer
entries (netlink.Rtnl.read), take the difference (kernel.diff, pure) and apply
only that (Rtnl.apply, which maps each kernel refusal back to its entry); each
change is logged as one line. This is flannel's split of desired from realised
state, and Calico's periodic reconcile repairs what drifted between passes.

The reconciler is given its backend and never asks what kind it is: the
backend's `kernel_fdb` says whether fdb entries are the kernel's, and its
`df` whether the forwarding host should honour learnt path MTUs. New plans
come in through reload(), from whatever plan source the event loop polls.

Ownership: every permanent neighbour entry, fdb remote and main-table route
on our device that the plan does not name is stale and removed. A route on any
other device is never ours: ours carry protocol RTPROT_VTEP (118) and are only
ever created (NLM_F_EXCL), so a route with the same key elsewhere is reported
as a conflict that names it (kernel.RouteConflict; exit 4 for `--once`).
"""
from __future__ import annotations

import dataclasses
import errno
import logging
from typing import Protocol, runtime_checkable

from . import host, kernel, netlink, nlmsg, state
from .config import RunConfig
from .errors import VtepError
from .links import Links
from .nlmsg import NUD_PERMANENT

log = logging.getLogger("vtep")

# the kind of a per-peer change, named by its netlink operation's (kernel.Op.kind); the
# device's own changes are "device", the forwarding sysctls "sysctl"
CHANGE_KINDS = {"neigh": "neighbour", "fdb": "fdb", "route": "route"}


@runtime_checkable
class DeviceBackend(Protocol):
    """What the reconciler and the event loop need of a device: vxlanlink.VxlanLink
    (the kernel forwards) or userspace.TapLink (this process forwards)."""
    mode: str           # "kernel" or "userspace": names the path in marks and status
    kernel_fdb: bool    # whether fdb entries (inner MAC -> underlay IP) are the kernel's
    df: str | None      # the outer DF policy ("set": forwarded traffic honours path MTU)
    ifindex: int | None

    def ensure(self, want: state.NodeState, under: host.Underlay, first: bool,
               replace: bool) -> tuple[int, bool]:
        """Create or repair the device for this desired state: (ifindex, created)."""

    def io(self) -> dict:
        """{fd: handler} the event loop polls and calls when readable (empty: none)."""

    def counters(self) -> dict:
        """Traffic counters for the status file (empty: the kernel keeps them)."""

    def lost(self) -> None:
        """A handler raised DeviceLost: forget the device; the next pass recreates it."""

    def remove(self, name: str, peers: int) -> bool:
        """Remove our device at exit (SIGTERM); False when it is gone or not ours."""

    def close(self) -> None: ...


class Reconciler:
    """One node's device and per-peer entries, converged pass by pass."""

    def __init__(self, plan, config: RunConfig, backend: DeviceBackend, links: Links,
                 rtnl: netlink.Rtnl):
        self.plan = plan
        self.node = host.select_node(plan, config.node)
        self.device = config.device
        self.backend, self.links, self.rtnl = backend, links, rtnl
        # an overlay MTU that outranks the plan's (`--mtu N|auto`), kept across reloads
        self.mtu_override: int | None = config.mtu
        self.underlay_index: int | None = None
        self._derived = None   # (inputs, the desired state derived from them): desired()
        self.want: state.NodeState | None = None
        self.replace_next = False
        # routes of the plan that a route we did not make is in the way of (last pass),
        # and those already said: each distinct conflict is logged once, not every pass
        self.conflicts: list[str] = []
        self._reported: set[str] = set()
        self.report_conflicts = True   # `--once` reports them as its error instead
        # what the last pass changed, by kind ({"device": 1, "neighbour": 2, ...}; the
        # counts add up to its change lines): the metrics count them (vtep.metrics)
        self.kinds: dict[str, int] = {}

    @property
    def ifindex(self) -> int | None:
        return self.backend.ifindex

    def close(self) -> None:
        self.backend.close()
        self.links.close()
        self.rtnl.close()

    def watched(self) -> set:
        return {i for i in (self.ifindex, self.underlay_index) if i}

    def echo(self):
        """A predicate: is this added/changed entry (a notification) already as planned?"""
        if self.want is None:
            return None
        neigh = {(n.ip, n.mac) for n in self.want.neighbours}
        fdb = {(p.fdb.mac, p.fdb.dst) for p in self.want.peers}
        fdb |= {(f.mac, f.dst) for f in self.want.flood}   # the flood list, one per peer
        routes = {r.dst: r.via for r in self.want.routes}
        d = self.want.device
        addrs = {nlmsg.AddrEntry(ip, plen) for ip, plen in ((d.address, 32), (d.address6, 128))
                 if ip}

        def planned(e) -> bool:
            if isinstance(e, nlmsg.AddrEntry):
                return e in addrs
            if isinstance(e, nlmsg.NeighEntry):
                return bool(e.state & NUD_PERMANENT) and (e.ip, e.mac) in neigh
            if isinstance(e, nlmsg.FdbEntry):
                return bool(e.state & NUD_PERMANENT) and not e.overridden and (e.mac, e.dst) in fdb
            via = routes.get(e.dst)
            return via is not None and kernel.route_as_planned(e, via)
        return planned

    def desired(self, plan, node, under: host.Underlay) -> state.NodeState:
        """The desired state for these host facts (pure but for a cache)."""
        kernel.check_mtu(plan, node, under.dev, under.mtu, forced=self.mtu_override is not None)
        # The desired state is a pure function of these; at 20,000 peers deriving it costs
        # half a second, which a pass (every resync, every notification) should not pay
        # again for an unchanged plan. The plan itself is in the key: it is immutable.
        key = (plan, node.name, under.dev, under.mtu, self.device)
        if self._derived is not None and self._derived[0] == key:
            return self._derived[1]
        want = state.desired(plan, node.name, underlay_dev=under.dev, underlay_mtu=under.mtu,
                             device=self.device)
        self._derived = (key, want)
        return want

    def converge(self, first: bool = False, replace: bool = False) -> list[str]:
        """One pass: read the realised state, apply the difference, log each change.
        Returns the change lines (empty: nothing was out of place)."""
        self.links.notes = []
        self.kinds = {}
        under = host.underlay_facts(self.node)
        want = self.desired(self.plan, self.node, under)
        self.underlay_index = under.index
        idx, created = self.backend.ensure(want, under, first, replace or self.replace_next)
        self.replace_next = False
        # whatever the backend noted is the device's (its settings, address, TAP, sockets)
        device_changes = len(self.links.notes)
        try:
            have = self.rtnl.read(idx, netlink.families_of(want.device))
            changes = kernel.diff(want, have, fdb=self.backend.kernel_fdb)
            failed = self.rtnl.apply([op for c in changes for op in c.ops], idx)
            conflicts, failed = self._route_conflicts(failed, idx, want)
        except VtepError:
            self._undo(created and first, idx, want.device.name)
            raise
        # a route in the way is not a failed pass: everything else is applied, the pass
        # succeeds, the route is tried again every pass (it may have gone) and the
        # conflict is said once
        self.conflicts = list(conflicts.values())
        if self.report_conflicts:
            for line in self.conflicts:
                if line not in self._reported:
                    log.error(line)
        self._reported = set(self.conflicts)
        bad = {id(op) for op, _code, _text in failed} | set(conflicts)
        kinds = {"device": device_changes} if device_changes else {}
        for c in changes:
            if not any(id(op) in bad for op in c.ops):
                self.links.note(c.text)
                kind = CHANGE_KINDS[c.ops[0].kind]   # one Change is one entry: one kind
                kinds[kind] = kinds.get(kind, 0) + 1
        self.want = want
        if not failed:   # last, so that a pass that fails changes nothing on the host
            for line in host.enable_forwarding(self.backend.df):
                self.links.note(line)
                kinds["sysctl"] = kinds.get("sysctl", 0) + 1
        if failed:
            self._undo(created and first, idx, want.device.name)
            op, code, text = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise netlink.NetlinkRefused(f"the kernel refused to {kernel.describe(op)} on "
                                         f"{want.device.name}: "
                                         f"{nlmsg.describe_errno(code, text)}{more}")
        self.kinds = kinds
        return self.links.notes

    def _route_conflicts(self, failed: list, idx: int, want: state.NodeState):
        """Split the route creations the kernel refused with EEXIST because a route on
        another device (or a multipath one) has their key from the other failures.
        Returns ({id(op): line naming the route in the way}, the other failures)."""
        exists = {id(f[0]): f for f in failed if f[0].kind == "route" and f[0].action == "set"
                  and f[1] == errno.EEXIST}
        if not exists:
            return {}, failed
        table = self.rtnl.main_routes(kernel.route_key(f[0].key) for f in exists.values())
        peers = {r.dst: p.name for p in want.peers for r in p.routes}
        names, lines = None, {}
        for key, (op, _code, _text) in exists.items():
            others = [(oif, r) for oif, r in table.get(kernel.route_key(op.key), ()) if oif != idx]
            if not others:
                continue   # only ours now (a race with the dump): a failure, retried
            if names is None:
                names = self.links.names()
            what = " and ".join(r.text(names.get(oif, f"if{oif}") if oif else None)
                                for oif, r in others)
            lines[key] = (f"route {op.key} of peer {peers.get(op.key, '?')} not added: {what} "
                          "is in the way (not made by vtep): not replacing it")
        return lines, [f for f in failed if id(f[0]) not in lines]

    def _undo(self, really: bool, idx: int, name: str) -> None:
        """A first pass that fails leaves nothing half-configured behind."""
        if really:
            self.links.delete(idx, name)
            log.info(f"deleted {name} again: the first pass failed")

    def lower_mtu(self, mtu: int) -> None:
        """Outrank the plan's overlay MTU from now on (`--mtu auto` found a narrower path);
        the next pass applies it."""
        self.mtu_override = mtu
        self.plan = dataclasses.replace(self.plan, mtu=mtu)

    def reload(self, plan=None, error: VtepError | None = None) -> bool:
        """Adopt a new plan from the plan source. On a bad plan (`error`) keep the
        current one and say why. True when adopted (a pass is due)."""
        try:
            if error is not None:
                raise error
            if self.mtu_override is not None:
                plan = dataclasses.replace(plan, mtu=self.mtu_override)
            node = plan.node(self.node.name)
            want = self.desired(plan, node, host.underlay_facts(node))
        except VtepError as e:
            log.error(f"keeping the current plan: {e}")
            return False
        for w in plan.warnings:
            log.warning(f"warning: {w}")
        old = {p.name: p for p in self.want.peers} if self.want else {}
        new = {p.name: p for p in want.peers}
        added = [n for n in new if n not in old]
        removed = [n for n in old if n not in new]
        changed = [n for n in new if n in old and new[n] != old[n]]
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("added", added), ("removed", removed), ("changed", changed)) if names]
        log.info(f"plan {plan.path}: {len(new)} peer{'s' if len(new) != 1 else ''}; "
                 f"{'; '.join(parts) if parts else 'no peer changes'}")
        if self.want:
            a, b = want.device, self.want.device
            dev = [f"{f}: {getattr(a, f)} vs {getattr(b, f)}"
                   for f in ("vni", "local", "port", "underlay_dev")
                   if getattr(a, f) != getattr(b, f)]
            if dev:   # the device is ours: a plan that changes it means recreating it
                log.info(f"{self.device} will be recreated ({', '.join(dev)}; new plan vs old)")
                self.replace_next = True
        self.plan, self.node = plan, node
        return True

    def teardown(self) -> bool:
        """Remove our device; the kernel drops its neighbour, fdb and route entries with it."""
        return self.backend.remove(self.device, len(self.want.peers) if self.want else 0)

    def summary(self, lines: list[str]) -> None:
        n = len(self.want.peers)
        peers = f"{n} peer{'s' if n != 1 else ''}"
        if not lines:
            log.info(f"node {self.node.name}: {self.device} already converged ({peers}): "
                     "nothing changed")
        else:
            log.info(f"node {self.node.name}: {self.device} converged ({peers}; "
                     f"{len(lines)} change{'s' if len(lines) != 1 else ''})")
