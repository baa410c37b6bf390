"""`vtep run --userspace`: the userspace path's device backend, a TAP device read in
userspace (TapLink).

The node state seen from the pods is the kernel path's: a device of the same
name with the node's derived MAC, MTU and VTEP addresses (/32, /128), the same permanent
neighbour entries and onlink routes, realised and kept converged by the same
reconciler (vtep.reconcile), which is given this backend in place of the
vxlan link and leaves kernel fdb entries alone (kernel_fdb = False). The fdb
(inner MAC -> peer underlay IP) lives in the process instead, rebuilt from
each new desired state.

Data flow: pod -> TAP fd -> the transmit loop (fdb lookup, encapsulate) -> send
socket -> peer; peer -> UDP socket -> the receive loop (check, decapsulate) ->
TAP fd -> pod. The loops are vtep.offload's (a TAP with IFF_VNET_HDR and TSO,
UDP GSO sends from a pool of UDP sockets, UDP GRO reads, merged writes) unless
offloads are off (--no-offload, udp_checksum = false over IPv4, a kernel
without them: said in one log line), then vtep.datapath's, one frame a system
call. The event loop (vtep.daemon) polls the two fds that io() names in the
same select() as netlink events and signals.

Sockets: one UDP socket bound to the node's underlay IP and the plan's port
receives for both loops (and holds the port, so a kernel vxlan device on the
same port is a clear error); the per-frame loops send from a raw UDP socket,
because RFC 7348 section 5 wants the
source port to be a hash of the inner flow and a bound UDP socket has one
port. The raw socket sets DF (IP_PMTUDISC_DO): VTEPs must not fragment (RFC
7348 section 4.3); a datagram too big for the path fails with EMSGSIZE and is
counted, never fragmented. A BPF filter that accepts nothing keeps the raw
socket's receive queue empty (a raw socket would get a copy of every UDP
packet). The outer UDP checksum follows the plan's udp_checksum (on by
default, as the kernel's vxlan device): over IPv4 the data path computes it
(Datapath.tx_batch) or sends zero (RFC 7348 section 5 allows it); over IPv6
it is mandatory and the kernel fills it in.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import socket

from . import datapath, host, state, tapdev, vnet, wire
from .errors import HostMismatch, Incompatible, VtepError
from .inet import (IP_MTU, IP_MTU_DISCOVER, IP_PMTUDISC_DO, IPV6_CHECKSUM, IPV6_MTU,
                   IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
from .linkfacts import device_diffs, facts, require_made_by_vtep
from .links import Links
from .netlink import NetlinkRefused

log = logging.getLogger("vtep")

SOCKET_BUFFER = tapdev.SOCKET_BUFFER


def open_sockets(local: str, port: int) -> tuple[socket.socket, socket.socket]:
    """(receive socket bound to local:port, raw send socket with DF set)."""
    v6 = ":" in local
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    rx = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        rx.bind((local, port))
    except OSError as e:
        rx.close()
        if e.errno == errno.EADDRINUSE:
            raise HostMismatch(f"UDP port {port} on {local} is already held on this host (a "
                               "kernel vxlan device or another VTEP): stop it, or use another "
                               "port")
        if e.errno == errno.EADDRNOTAVAIL:
            raise HostMismatch(f"underlay_ip {local} is not an address of this host")
        raise VtepError(f"cannot bind UDP {local} port {port}: {e.strerror}")
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    rx.setblocking(False)
    tx = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_UDP)
    tapdev.drop_all_filter(tx)
    tx.bind((local, 0))
    if v6:
        tx.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        tx.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)  # the kernel fills UDP's checksum
    else:
        tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    return rx, tx


def fdb_of(want) -> dict[bytes, str]:
    return {bytes.fromhex(p.fdb.mac.replace(":", "")): p.fdb.dst for p in want.peers}


class TapLink:
    """The TAP device of one node and the userspace data path that serves it."""

    mode = "userspace"
    kernel_fdb = False   # the fdb lives in the process (Datapath.fdb)
    df = None            # a TAP device has no DF policy: the raw socket always sets DF

    def __init__(self, links: Links, node: str, accept_any_source: bool = False,
                 offload: bool = True):
        self.links, self.node, self.accept_any_source = links, node, accept_any_source
        self.offload = offload          # False: --no-offload, the per-frame loops
        self.vnet = False               # the open TAP has vnet headers and offloads on
        self.offload_state = None       # what the log and the status say about offloads
        self.pool: list[socket.socket] = []   # the offload loops' send sockets
        self.gso_error: str | None = None     # why the kernel gave no UDP GSO sockets
        self.gro = False                # UDP_GRO is on on the receive socket
        self.gro_for = None             # (socket, wanted) it was last set for
        self.op = None                  # the OffloadPath, when self.vnet
        self.ifindex: int | None = None
        self.tap = None
        self.rx = self.tx = None
        self.bound: tuple[str, int] | None = None   # (local, port) of the sockets
        self.mtu_socks: dict[str, socket.socket] = {}  # peer -> connected, for IP_MTU
        self.dp: datapath.Datapath | None = None
        self.dp_for = None   # (vni, port, rx socket) the data path was built for
        self.dp_peers = None  # the desired peers its fdb was built from

    def ensure(self, want: state.NodeState, under: host.Underlay, first: bool,
               replace: bool) -> tuple[int, bool]:
        """The TAP's ifindex, (re)creating it, its sockets and its data path as needed.
        Returns (ifindex, created)."""
        dev, links = want.device, self.links
        if self.rx is not None and self.bound != (dev.local, dev.port):
            # a re-read plan moved the node's underlay IP or the port: rebind (the kernel
            # path recreates its device for the same reason)
            links.note(f"rebinding UDP {dev.local} port {dev.port} (was "
                       f"{self.bound[0]} port {self.bound[1]})")
            self._close_sockets()
        msg = links.get(dev.name)
        created = False
        if msg is not None and (self.tap is None or msg["index"] != self.ifindex):
            # a device of that name that is not this process's TAP: one left by a kernel
            # run (--replace takes it), or one made by someone else since ours was
            # deleted, which is never ours to remove
            have = facts(msg)
            kind = have.kind or "none"
            diffs = [f"kind: tap (this process's) vs {kind}"]
            require_made_by_vtep(dev.name, have, diffs)   # --replace would not help
            if not replace:
                raise Incompatible(dev.name, diffs)
            links.delete(have.index, dev.name)
            links.note(f"deleted {dev.name} ({kind}) to create the TAP device")
            msg = None
        if self.rx is None:
            # the port before the TAP: when it is held (a kernel vxlan device, another VTEP)
            # the run fails with one line having created nothing (a device of ours that
            # --replace deleted above freed its port by now)
            self.rx, self.tx = open_sockets(dev.local, dev.port)
            self.bound = (dev.local, dev.port)
            if self.offload:
                try:
                    self.pool = tapdev.send_pool(dev.local)
                    self.gso_error = None
                except OSError as e:
                    self.pool = []
                    self.gso_error = f"off: no UDP GSO on this kernel ({e.strerror})"
        if self.tap is not None and self.vnet != (self._offload_refusal(dev) is None):
            # a re-read plan changed udp_checksum (or a rebind found no UDP GSO): the loops
            # change, with a new TAP (vnet headers are set when a TAP is opened). Closing
            # our TAP's last fd deletes the device there and then.
            self._close_tap()
            msg = None
        if msg is None:
            self._close_tap()
            self._open_tap(dev)
            created = True
            msg = links.get(dev.name)
            if msg is None:
                raise NetlinkRefused(f"{dev.name} vanished right after its creation")
        have = facts(msg)
        idx = have.index
        links.ipv6(dev, created)   # before the addresses and before up
        links.mark(dev.name, idx, have.alias, self.node, self.mode)
        _, repairs = device_diffs(dev, have, under.index, {}, None)
        links.repair(dev, have, repairs)
        links.addresses(dev, idx)
        if not have.up:
            links.call(f"setting {dev.name} up", links.ipr.link, "set", index=idx, state="up")
            if not created:
                links.note(f"set {dev.name} up (it was down)")
        self._serve(want)
        self.ifindex = idx
        return idx, created

    def _serve(self, want: state.NodeState) -> None:
        """The data path for this desired state, on the current TAP and sockets."""
        dev = want.device
        old = self.dp
        v6 = ":" in dev.local
        # IPv4: the data path computes the UDP checksum (a raw IPv4 socket never does);
        # IPv6: the kernel fills it (IPV6_CHECKSUM, open_sockets)
        csum_src = socket.inet_aton(dev.local) if dev.udp_checksum and not v6 else None
        if self.vnet:
            csum_src = None   # the kernel fills it: the sends are UDP sockets'
        if old is None or self.dp_for != (dev.vni, dev.port, self.rx, csum_src, self.vnet):
            # new VNI, port, sockets, checksum or loops: a new data path (the VNI is
            # written once into its transmit buffer); the counters carry over
            self.dp_for = (dev.vni, dev.port, self.rx, csum_src, self.vnet)
            self.dp = datapath.Datapath(
                vni=dev.vni, port=dev.port, fdb={}, peers=(),
                tap_readv=None, tap_write=None, sendto=self.tx.sendto,
                # the offload loops send from UDP sockets: the address holds the port
                addr_port=dev.port if self.vnet else 0,
                recvfrom_into=self.rx.recvfrom_into, accept_any_source=self.accept_any_source,
                path_mtu=self.path_mtu, overhead=wire.overhead(v6), checksum_src=csum_src)
            if old is not None:
                self.dp.counters = old.counters
            self.dp_peers = None
            self.op = None
            if self.vnet:
                from .offload import OffloadPath   # numpy: only the offload loops need it
                self.op = OffloadPath(self.dp, self.tap.fileno(), self.pool, self.rx)
        if self.dp_peers is not want.peers:
            # a new desired state (first pass, plan re-read): a new fdb. Not on every pass:
            # at 20,000 peers rebuilding it costs a quarter of a second of forwarding
            self.dp.set_fdb(fdb_of(want), [p.fdb.dst for p in want.peers])
            # path MTU discovery through the tunnel: IPv4 errors come from the peer's VTEP
            # address (an IPv6-only peer has none), IPv6 ones from this node's (vtep.icmp)
            self.dp.vtep_ips = {p.fdb.dst: socket.inet_aton(nb.ip) for p in want.peers
                                for nb in p.neighbours[:1] if ":" not in nb.ip}
            self.dp.vtep_ip6 = (socket.inet_pton(socket.AF_INET6, dev.address6)
                                if dev.address6 else None)
            self.dp.overhead = wire.overhead(":" in dev.local)
            self.dp_peers = want.peers
        self._set_gro()
        fd = self.tap.fileno()
        if self.op is not None:
            self.op.tap_fd = fd
            self.dp.tap_write = self.op.tap_write   # ICMP errors, behind a vnet header
            return
        self.dp.tap_readv = functools.partial(os.readv, fd)  # no Python frame per packet
        self.dp.tap_write = functools.partial(os.write, fd)

    def _offload_refusal(self, dev: state.Device) -> str | None:
        """Why this TAP runs the per-frame loops, or None when offloads are wanted."""
        if not self.offload:
            return "off: --no-offload"
        if not dev.udp_checksum and ":" not in dev.local:
            return "off: udp_checksum = false (UDP GSO always fills the outer checksum)"
        return self.gso_error

    def _set_gro(self) -> None:
        """UDP_GRO on the receive socket exactly when the offload loops read it: the
        per-frame loop's recvfrom_into would take a coalesced read for one datagram."""
        if self.gro_for != (self.rx, self.vnet):
            self.gro = tapdev.set_gro(self.rx, self.vnet)
            self.gro_for = (self.rx, self.vnet)

    def _open_tap(self, want: state.Device) -> None:
        import pytun   # only this backend needs it: the other commands run without it
        refusal = self._offload_refusal(want)
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI
        try:
            tap = pytun.TunTapDevice(name=want.name, flags=flags | (
                vnet.IFF_VNET_HDR if refusal is None else 0))
            if refusal is None:
                names = tapdev.set_offloads(tap.fileno())
                if names is None:
                    # a TAP without offloads: reopened without vnet headers, whose
                    # per-frame writes cost twice as much
                    tap.close()
                    refusal = "off: the TAP takes no offloads (TUNSETOFFLOAD refused)"
                    tap = pytun.TunTapDevice(name=want.name, flags=flags)
        except pytun.Error as e:
            raise NetlinkRefused(f"creating TAP device {want.name}: {e}")
        self.vnet = refusal is None
        self._set_gro()
        if self.vnet:
            state_ = (f"on: TAP {names}, UDP GSO over {len(self.pool)} source ports, "
                      + ("UDP GRO" if self.gro else "no UDP GRO (one datagram a read)"))
        else:
            state_ = refusal + "; one frame a system call"
        if state_ != self.offload_state:
            log.info(f"offloads {state_}")
            self.offload_state = state_
        tap.hwaddr = bytes.fromhex(want.mac.replace(":", ""))
        tap.mtu = want.mtu
        os.set_blocking(tap.fileno(), False)
        self.tap = tap
        self.links.note(f"created {want.name}: TAP (userspace VTEP) mtu {want.mtu} address "
                        f"{want.mac}; vxlan id {want.vni} over UDP {want.local} port {want.port}")

    def _close_tap(self) -> None:
        if self.tap is not None:
            try:
                self.tap.close()  # a non-persistent TAP goes away with its last fd
            except OSError:
                pass   # its device deleted under it: the fd is closed all the same
            self.tap = None

    def lost(self) -> None:
        """The TAP fd failed (its device was deleted): close it, so that the next pass
        opens a new TAP and restores its address, neighbours and routes."""
        self._close_tap()

    def io(self) -> dict:
        if self.dp is None or self.tap is None or self.rx is None:
            return {}
        loops = self.op or self.dp
        return {self.tap.fileno(): loops.tx_batch, self.rx.fileno(): loops.rx_batch}

    def counters(self) -> dict:
        if not self.dp:
            return {}
        return {**self.dp.counters.to_dict(), "offloads": self.offload_state}

    def remove(self, name: str, peers: int) -> bool:
        """Close our TAP: the kernel deletes it with its last fd, and its entries with it."""
        msg = self.links.get(name)
        ours = msg is not None and self.tap is not None and msg["index"] == self.ifindex
        self._close_tap()
        if ours:
            log.info(f"removed {name}; its {peers} peers' neighbour and route entries went "
                     "with it")
        return ours

    def close(self) -> None:
        if self.dp is not None:
            log.info(f"counters: {format_counters(self.dp.counters.to_dict())}")
        self._close_tap()
        self._close_sockets()

    def path_mtu(self, peer: str) -> int | None:
        """The kernel's path MTU towards `peer`: the route's, lowered by any ICMP
        "fragmentation needed" the DF-set send socket received (raw sockets update
        the path MTU: raw_err -> ipv4_sk_update_pmtu). Read with IP_MTU from a
        connected UDP socket per peer; only ever asked when a send failed."""
        s = self.mtu_socks.get(peer)
        try:
            if s is None:
                v6 = ":" in peer
                s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.connect((peer, self.bound[1] if self.bound else wire.VXLAN_PORT))
                except OSError:
                    s.close()   # kept unconnected, it would answer ENOTCONN for good
                    raise
                self.mtu_socks[peer] = s
            if s.family == socket.AF_INET6:
                return s.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
            return s.getsockopt(socket.IPPROTO_IP, IP_MTU)
        except OSError:
            return None

    def _close_sockets(self) -> None:
        for s in (self.rx, self.tx, *self.mtu_socks.values(), *self.pool):
            if s is not None:
                s.close()
        self.rx = self.tx = None
        self.pool = []
        self.mtu_socks = {}
        self.bound = None


def format_counters(c: dict) -> str:
    # per direction: both have a "runt" reason, which one merged dict would conflate
    drops = [f"{way} {k} {v}" for way in ("tx", "rx")
             for k, v in c[f"{way}_drops"].items() if v]
    icmp = f", ICMP too-big sent {c['icmp_too_big']}" if c.get("icmp_too_big") else ""

    def way(w: str) -> str:
        d = c[w]
        # with offloads a TAP frame is many datagrams: their ratio is what offloads buy
        frames = f" in {d['frames']} TAP frames" if "frames" in d else ""
        return f"{w} {d['packets']} packets {d['bytes']} bytes{frames}"
    offloads = f"; offloads {c['offloads']}" if c.get("offloads") else ""
    return (f"{way('tx')}, {way('rx')}, drops " + (", ".join(drops) or "none") + icmp
            + offloads)
