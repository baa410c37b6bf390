"""The kernel path's device backend: the Linux vxlan device (`vtep run --kernel`).

The reconciler (vtep.reconcile) asks ensure() for the device of each pass's
desired state: it creates the device (nolearning, the plan's VNI, port and
local address, bound to the underlay device), repairs what the kernel changes
in place (MTU, MAC, DF, alias, address, up) and refuses, naming each field, a
device whose identity differs from the plan's unless --replace may recreate it.
The kernel forwards; this backend has no fds to poll and no counters. Its
per-peer entries (neighbours, fdb, routes) are the reconciler's, through
vtep.netlink. `vtep down` (down()) removes a device a `--keep`, `--once` or
crashed run left.
"""
from __future__ import annotations

import errno
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import host, netlink, nlmsg, owner, state, wire
from .errors import HostMismatch, Incompatible, VtepError
from .linkfacts import DF, DF_NAMES, NotOurs, device_diffs, facts, identity_diffs, \
    require_made_by_vtep
from .links import Links
from .status import StatusFile

log = logging.getLogger("vtep")


def bound_index(want: state.Device, under: host.Underlay) -> int | None:
    """The lower device to bind the vxlan device to, or None: unbound.

    The kernel caps a vxlan device bound to a lower device at that device's MTU
    minus the overhead. A forced `--mtu` above it (a deliberate misconfiguration)
    gets an unbound device: it keeps the MTU, and with `df unset` the kernel
    fragments the outer packets, which is what the operator asked to see."""
    overhead = wire.overhead(":" in want.local)
    return None if want.mtu > under.mtu - overhead else under.index


class VxlanLink:
    """The vxlan device of one node (a state.Device), created and kept as planned."""

    mode = "kernel"
    kernel_fdb = True   # the fdb (inner MAC -> peer underlay IP) is the kernel's

    def __init__(self, links: Links, node: str, df: str | None = None):
        self.links, self.node, self.df = links, node, df
        self.ifindex: int | None = None

    # the event loop's view: the kernel forwards, nothing to poll or count
    def io(self) -> dict:
        return {}

    def counters(self) -> dict:
        return {}

    def lost(self) -> None:
        pass

    def close(self) -> None:
        pass

    def ensure(self, want: state.NodeState, under: host.Underlay, first: bool,
               replace: bool) -> tuple[int, bool]:
        """The device's ifindex, creating, repairing or (replace) recreating it.
        Returns (ifindex, created)."""
        dev, links = want.device, self.links
        link_index = bound_index(dev, under)
        msg = links.get(dev.name)
        created = False
        if msg is not None:
            have = facts(msg)
            bad, repairs = device_diffs(dev, have, link_index, {}, self.df)
            if bad:
                bad, repairs = device_diffs(dev, have, link_index, links.names(), self.df)
                # the very device this run made or adopted, changed in place, is drift to
                # repair; one found at start (or made by someone since) needs --replace
                ours = not first and have.index == self.ifindex
                if not ours:   # --replace would not help with a device vtep did not make
                    require_made_by_vtep(dev.name, have, bad)
                if not (replace or ours):
                    raise Incompatible(dev.name, bad)
                links.delete(have.index, dev.name)
                links.note(f"deleted {dev.name} to recreate it ({', '.join(bad)}; "
                           "plan vs existing)")
                msg = None
        if msg is None:
            why = self.port_conflict(dev)
            if why:
                raise HostMismatch(why)
            self._create(dev, link_index)
            created = True
            msg = links.get(dev.name)
            if msg is None:
                raise netlink.NetlinkRefused(f"{dev.name} vanished right after its creation")
            have = facts(msg)
            repairs = {}
        idx = have.index
        try:
            links.ipv6(dev, created)   # before the addresses and before up
            links.mark(dev.name, idx, have.alias, self.node, self.mode, adopted=not created)
            links.repair(dev, have, repairs)
            if "df" in repairs:
                links.call(f"setting df on {dev.name}", links.ipr.link, "set", index=idx,
                           kind="vxlan", vxlan_df=DF[self.df])
                links.note(f"changed {dev.name} df {self.df} (was "
                           f"{DF_NAMES.get(have.df, '?')})")
            links.addresses(dev, idx)
            if not have.up:
                if not created and first:
                    why = self.port_conflict(dev)
                    if why:
                        raise HostMismatch(why)
                try:
                    links.ipr.link("set", index=idx, state="up")
                except NetlinkError as e:
                    if e.code == errno.EADDRINUSE:
                        raise HostMismatch(f"UDP port {dev.port} is already in use on this "
                                           f"host: {dev.name} cannot bind it")
                    raise netlink.NetlinkRefused(f"setting {dev.name} up: {e.args[1]}")
                if not created:
                    links.note(f"set {dev.name} up (it was down)")
        except VtepError:
            if created:   # nothing left half-configured
                links.delete(idx, dev.name)
            raise
        self.ifindex = idx
        return idx, created

    def port_conflict(self, want: state.Device) -> str | None:
        """Why the device could not bind its UDP port, or None. The kernel shares one
        socket among vxlan devices on a port and demultiplexes by VNI (RFC 7348 s5), so
        only the same VNI, or a socket that is not a vxlan device's, is a conflict."""
        others = [f for f in map(facts, self.links.dump())
                  if f.kind == "vxlan" and f.name != want.name and f.port == want.port]
        for f in others:
            if f.vni == want.vni:
                return (f"UDP port {want.port} with VNI {want.vni} is already served by vxlan "
                        f"device {f.name} on this host")
        if not any(f.up for f in others):
            held = host.udp_sockets(want.port, ":" in want.local)
            if held:
                return (f"UDP port {want.port} is already in use on this host (a socket is "
                        f"bound to {held[0]}): another VTEP or program holds it")
        return None

    def _create(self, want: state.Device, link_index: int | None) -> None:
        kw = dict(ifname=want.name, kind="vxlan", vxlan_id=want.vni,
                  vxlan_port=want.port,       # explicit: the kernel's default is 8472
                  vxlan_learning=0,           # peers are programmed, never learnt
                  mtu=want.mtu, address=want.mac)
        if link_index is not None:
            kw["vxlan_link"] = link_index
        if ":" in want.local:
            kw["vxlan_local6"] = want.local   # checksummed: the kernel's IPv6 default
        else:
            kw["vxlan_local"] = want.local
            # explicit either way: the plan decides, not the kernel's default (plan.py,
            # UDP_CHECKSUM_DEFAULT); the kernel cannot change it later (changelink
            # refuses), so it is part of what device_diffs compares
            kw["vxlan_udp_csum"] = int(want.udp_checksum)
        if self.df:
            kw["vxlan_df"] = DF[self.df]
        self.links.call(f"creating {want.name}", self.links.ipr.link, "add", **kw)
        self.links.note(f"created {want.name}: vxlan id {want.vni} local {want.local} dstport "
                        f"{want.port} nolearning{state.csum_option(want)} dev {want.underlay_dev} mtu "
                        f"{want.mtu} address {want.mac}{' df ' + self.df if self.df else ''}")

    def remove(self, name: str, peers: int) -> bool:
        """Delete our device (the kernel drops its neighbour, fdb and route entries with
        it); never one that is no longer the device this run made."""
        msg = self.links.get(name)
        if msg is None:
            log.info(f"{name} is already gone")
            return False
        if self.ifindex and msg["index"] != self.ifindex:
            log.info(f"{name} is no longer the device this run made; leaving it")
            return False
        self.links.delete(msg["index"], name)
        log.info(f"removed {name}; its {peers} peers' neighbour, fdb, flood and route "
                 "entries went with it")
        return True


def down(plan, node, device: str, state_dir: str) -> int:
    """Remove the device a `--keep`, `--once` or crashed run left; idempotent."""
    status = StatusFile(state_dir, node.name, device)
    # the lock, not the status file: it is seen whatever --state-dir the agent was given
    owner.refuse_if_managed(device, "removing it")
    with IPRoute(groups=0) as ipr:
        try:
            msg = ipr.link("get", ifname=device)[0]
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise netlink.NetlinkRefused(f"reading {device}: {e.args[1]}")
            status.remove()
            log.info(f"{device} does not exist here: nothing to remove")
            return 0
        have = facts(msg)
        bad = identity_diffs(plan.vni, plan.port, str(node.underlay_ip), have)
        if bad:
            raise NotOurs(device, bad)
        require_made_by_vtep(device, have)
        rt = netlink.Rtnl()
        try:
            r = rt.read(have.index, (socket.AF_INET, socket.AF_INET6))   # to count
        finally:
            rt.close()
        try:
            ipr.link("del", index=have.index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise netlink.NetlinkRefused(f"deleting {device}: {e.args[1]}")
        status.remove()
        flood = sum(e.mac == state.FLOOD_MAC for e in r.fdb)
        # the kernel's own entries are not ours: IPv6's prefix route for our /128, and the
        # NOARP neighbour entries of the multicast groups IPv6 sends to (ff02::16)
        routes = sum(e.proto != nlmsg.RTPROT_KERNEL for e in r.routes.values())
        neigh = sum(bool(e.state & nlmsg.NUD_PERMANENT) for e in r.neighbours.values())
        log.info(f"removed {device} (vni {have.vni}) and with it {neigh} "
                 f"neighbour, {len(r.fdb) - flood} fdb, {flood} flood and {routes} "
                 "route entries")
    return 0
