"""`vtep run --userspace`: the VTEP as a process, a TAP device read in userspace.

The node state seen from the pods is the kernel path's: a device of the same
name with the node's derived MAC, MTU and VTEP address /32, the same permanent
neighbour entries and onlink routes (realised and kept converged by the
kernel path's machinery, vtep.kernel.KernelVtep, minus kernel fdb entries).
The fdb (inner MAC -> peer underlay IP) lives in the process instead, and is
rebuilt from the plan on SIGHUP.

Sockets: one UDP socket bound to the node's underlay IP and the plan's port
receives (and holds the port, so a kernel vxlan device on the same port is a
clear error); a raw UDP socket sends, because RFC 7348 section 5 wants the
source port to be a hash of the inner flow and a bound UDP socket has one
port. The raw socket sets DF (IP_PMTUDISC_DO): VTEPs must not fragment (RFC
7348 section 4.3); a datagram too big for the path fails with EMSGSIZE and is
counted, never fragmented. A BPF filter that accepts nothing keeps the raw
socket's receive queue empty (a raw socket would get a copy of every UDP
packet). The outer UDP checksum is zero over IPv4, as the kernel sends it by
default (RFC 7348 section 5 allows it); over IPv6 the kernel fills it in.

The hot loops are vtep.datapath's; vtep.daemon polls their fds in the same
select() as netlink events and signals.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import socket
import struct

from . import datapath, kernel, owner
from .errors import HostMismatch, Incompatible, UsageError, VtepError
from .netlink import NetlinkRefused

log = logging.getLogger("vtep")

IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2
IPV6_CHECKSUM = 7
IP_MTU, IPV6_MTU = 14, 24
SO_ATTACH_FILTER = 26
SOCKET_BUFFER = 4 << 20


def _drop_all_filter(sock: socket.socket) -> None:
    """Attach the one-instruction classic BPF program `ret #0`: receive nothing."""
    insn = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("=HBBI", 0x06, 0, 0, 0))
    prog = struct.pack("HP", 1, ctypes.addressof(insn))  # struct sock_fprog, native layout
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


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
    _drop_all_filter(tx)
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


class UserspaceVtep(kernel.KernelVtep):
    """KernelVtep's realiser with a TAP device in place of the vxlan device."""

    mode = "userspace"

    def __init__(self, args, plan):
        super().__init__(args, plan)
        self.df = None  # a TAP device has no DF policy: the raw socket always sets DF
        self.tap = None
        self.rx = self.tx = None
        self.bound: tuple[str, int] | None = None   # (local, port) of the sockets
        self.mtu_socks: dict[str, socket.socket] = {}  # peer -> connected, for IP_MTU
        self.dp: datapath.Datapath | None = None
        self.dp_for = None   # (vni, port, rx socket) the data path was built for
        self.dp_peers = None  # the desired peers its fdb was built from
        self.accept_any_source = getattr(args, "accept_any_source", False)

    def diff(self, want, have):
        return kernel.diff(want, have, fdb=False)

    def ensure_device(self, want, first, replace):
        # `want` is the device; the in-process fdb comes from self.pending, the whole state
        # of the pass (set by KernelVtep.converge)
        if self.rx is not None and self.bound != (want.local, want.port):
            # a re-read plan moved the node's underlay IP or the port: rebind (the kernel
            # path recreates its device for the same reason)
            self._note(f"rebinding UDP {want.local} port {want.port} (was "
                       f"{self.bound[0]} port {self.bound[1]})")
            self._close_sockets()
        msg = self._link(want.name)
        created = False
        if msg is not None and (self.tap is None or msg["index"] != self.ifindex):
            # a device of that name that is not this process's TAP: one left by a kernel
            # run (--replace takes it), or one made by someone else since ours was
            # deleted, which is never ours to remove
            have = kernel._facts(msg)
            kind = have["kind"] or "none"
            diffs = [f"kind: tap (this process's) vs {kind}"]
            kernel.require_made_by_vtep(want.name, have, diffs)   # --replace would not help
            if not replace:
                raise Incompatible(want.name, diffs)
            self._delete(msg["index"], want.name)
            self._note(f"deleted {want.name} ({kind}) to create the TAP device")
            msg = None
        if self.rx is None:
            # the port before the TAP: when it is held (a kernel vxlan device, another VTEP)
            # the run fails with one line having created nothing (a device of ours that
            # --replace deleted above freed its port by now)
            self.rx, self.tx = open_sockets(want.local, want.port)
            self.bound = (want.local, want.port)
        if msg is None:
            self._close_tap()
            self._open_tap(want)
            created = True
            msg = self._link(want.name)
            if msg is None:
                raise NetlinkRefused(f"{want.name} vanished right after its creation")
        have = kernel._facts(msg)
        idx = have["index"]
        self._mark(want.name, idx, have.get("alias"))
        _, repairs = kernel.device_diffs(want, have, self.underlay_index, {}, None)
        repairs.pop("df", None)
        self._repair(want, idx, have, repairs)
        self._addresses(want, idx)
        if not have["up"]:
            self._call(f"setting {want.name} up", self.ipr.link, "set", index=idx, state="up")
            if not created:
                self._note(f"set {want.name} up (it was down)")
        old = self.dp
        if old is None or self.dp_for != (want.vni, want.port, self.rx):
            # new VNI, port or sockets: a new data path (the VNI is written once into its
            # transmit buffer); the counters carry over
            self.dp_for = (want.vni, want.port, self.rx)
            self.dp = datapath.Datapath(
                vni=want.vni, port=want.port, fdb={}, peers=(),
                tap_readv=None, tap_write=None, sendto=self.tx.sendto, addr_port=0,
                recvfrom_into=self.rx.recvfrom_into, accept_any_source=self.accept_any_source,
                path_mtu=self.path_mtu, overhead=self.plan.overhead)
            if old is not None:
                self.dp.counters = old.counters
            self.dp_peers = None
        if self.dp_peers is not self.pending.peers:
            # a new desired state (first pass, plan re-read): a new fdb. Not on every pass:
            # at 20,000 peers rebuilding it costs a quarter of a second of forwarding
            self.dp.set_fdb(fdb_of(self.pending), [p.fdb.dst for p in self.pending.peers])
            # path MTU discovery through the tunnel: errors come from the peer's VTEP address
            self.dp.vtep_ips = {p.fdb.dst: socket.inet_aton(p.neighbour.ip)
                                for p in self.pending.peers}
            self.dp.overhead = self.plan.overhead
            self.dp_peers = self.pending.peers
        fd = self.tap.fileno()
        self.dp.tap_readv = functools.partial(os.readv, fd)  # no Python frame per packet
        self.dp.tap_write = functools.partial(os.write, fd)
        self.ifindex = idx
        return idx, created

    def _open_tap(self, want) -> None:
        import pytun
        try:
            tap = pytun.TunTapDevice(name=want.name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except pytun.Error as e:
            raise NetlinkRefused(f"creating TAP device {want.name}: {e}")
        tap.hwaddr = bytes.fromhex(want.mac.replace(":", ""))
        tap.mtu = want.mtu
        os.set_blocking(tap.fileno(), False)
        self.tap = tap
        self._note(f"created {want.name}: TAP (userspace VTEP) mtu {want.mtu} address "
                   f"{want.mac}; vxlan id {want.vni} over UDP {want.local} port {want.port}")

    def _close_tap(self) -> None:
        if self.tap is not None:
            try:
                self.tap.close()  # a non-persistent TAP goes away with its last fd
            except Exception:
                pass
            self.tap = None

    def device_lost(self) -> None:
        """The TAP fd failed (its device was deleted): close it, so that the next pass
        opens a new TAP and restores its address, neighbours and routes."""
        self._close_tap()

    def io(self) -> dict:
        if self.dp is None or self.tap is None or self.rx is None:
            return {}
        return {self.tap.fileno(): self.dp.tx_batch, self.rx.fileno(): self.dp.rx_batch}

    def counters(self) -> dict:
        return self.dp.counters.to_dict() if self.dp else {}

    def teardown(self) -> bool:
        msg = self._link(self.device)
        ours = msg is not None and self.tap is not None and msg["index"] == self.ifindex
        n = len(self.want.peers) if self.want else 0
        self._close_tap()
        if ours:
            log.info(f"removed {self.device}; its {n} neighbour and {n} route entries went "
                     "with it")
        return ours

    def close(self):
        if self.dp is not None:
            log.info(f"counters: {format_counters(self.dp.counters.to_dict())}")
        self._close_tap()
        self._close_sockets()
        super().close()

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
                self.mtu_socks[peer] = s
                s.connect((peer, self.bound[1] if self.bound else 4789))
            if s.family == socket.AF_INET6:
                return s.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
            return s.getsockopt(socket.IPPROTO_IP, IP_MTU)
        except OSError:
            return None

    def _close_sockets(self) -> None:
        for s in (self.rx, self.tx, *self.mtu_socks.values()):
            if s is not None:
                s.close()
        self.rx = self.tx = None
        self.mtu_socks = {}
        self.bound = None


def format_counters(c: dict) -> str:
    # per direction: both have a "runt" reason, which one merged dict would conflate
    drops = [f"{way} {k} {v}" for way in ("tx", "rx")
             for k, v in c[f"{way}_drops"].items() if v]
    icmp = f", ICMP too-big sent {c['icmp_too_big']}" if c.get("icmp_too_big") else ""
    return (f"tx {c['tx']['packets']} packets {c['tx']['bytes']} bytes, rx {c['rx']['packets']} "
            f"packets {c['rx']['bytes']} bytes, drops " + (", ".join(drops) or "none") + icmp)


def run(args, plan) -> int:
    kernel.setup_logging()
    from . import daemon, host
    host.require_net_admin("vtep run --userspace")
    for flag in ("once", "keep"):
        if getattr(args, flag, False):
            raise UsageError(f"--{flag} does not apply to --userspace: its TAP device lives "
                             "only as long as the process that reads it")
    with owner.Claim(args.device):   # before anything is touched: one agent per device
        vt = UserspaceVtep(args, plan)
        vt.mtu_override = getattr(args, "mtu_override", None)
        try:
            return daemon.serve(vt, args)
        finally:
            vt.close()
