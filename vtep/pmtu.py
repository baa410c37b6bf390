"""Path MTU probing of the underlay, for `vtep mtu` and `vtep run --mtu auto`.

An overlay MTU that the underlay path cannot carry is the classic VXLAN black
hole: the VTEP must not fragment (RFC 7348 section 4.3), so a too-big frame
is either fragmented anyway (the kernel's default `df unset`) or dropped. This
module finds, per peer, the largest IP packet that reaches the peer's underlay
address unfragmented: ICMP echo requests with DF set, binary search between
576 (RFC 791's minimum) and the underlay device's MTU.

IP_PMTUDISC_PROBE sets DF but ignores the path MTU the kernel has cached, so
each probe measures the path as it is now. A probe "fits" when its echo reply
comes back; it is "too big" on EMSGSIZE, on an ICMP "fragmentation needed" /
"packet too big" naming our probe (whose MTU narrows the search at once), or
when nothing comes back at all (a path whose ICMP errors are filtered: the
black hole itself). Every probe is bounded by a timeout and a retry count.

A peer that not even a 576-byte probe reaches (no route to it, an ICMP
"destination unreachable" naming our probe, or silence) is Unreachable; probe_each
goes on with the other peers, so that one peer that is down does not hide the
path MTU of the rest (`vtep run --mtu auto` starts with the reachable ones).

The same holds over an IPv6 underlay (ICMPv6 echo, "packet too big"): IPv6 routers
never fragment (RFC 8200 section 5), so the packet-too-big a router sends is the
path's answer, and IPV6_PMTUDISC_PROBE sends each probe unfragmented at its size.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from .checksum import checksum
from .errors import HostMismatch, VtepError
from .inet import ICMP6_ECHO, ICMP6_ECHOREPLY, ICMP6_TOO_BIG, ICMP6_UNREACH, ICMP_ECHO, \
    ICMP_ECHOREPLY, ICMP_FRAG_NEEDED, ICMP_HLEN, ICMP_UNREACH, IP_MTU_DISCOVER, \
    IP_PMTUDISC_PROBE, IPV4_HLEN, IPV6_HLEN, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE, MIN_MTU

# sendto errors that say the peer cannot be reached at all (no route, neighbour failed)
NO_ROUTE = (errno.ENETUNREACH, errno.EHOSTUNREACH)


@dataclass(frozen=True)
class PathMtu:
    peer: str
    address: str
    mtu: int            # largest IP packet that arrives unfragmented
    probes: int
    learned: bool       # an ICMP error told us the bottleneck's MTU
    hop: str | None = None   # who told: the router (or host) at the bottleneck


class Unreachable(VtepError):
    """Not even a 576-byte probe reaches the peer."""

    exit_code = 1

    def __init__(self, peer: str, address: str, why: str):
        self.peer, self.address, self.why = peer, address, why
        super().__init__(f"peer {peer} ({address}): {why}")


class Prober:
    def __init__(self, local: str, *, timeout: float = 0.4, tries: int = 2):
        self.v6 = ":" in local
        fam = socket.AF_INET6 if self.v6 else socket.AF_INET
        proto = socket.IPPROTO_ICMPV6 if self.v6 else socket.IPPROTO_ICMP
        try:
            self.sock = socket.socket(fam, socket.SOCK_RAW, proto)
        except PermissionError:
            from .errors import PermissionDenied
            raise PermissionDenied("probing the path MTU needs root or CAP_NET_RAW")
        try:
            self.sock.bind((local, 0))
        except OSError as e:
            self.sock.close()
            raise HostMismatch(f"underlay_ip {local} is not an address of this host "
                               f"({e.strerror})")
        if self.v6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
        else:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        self.timeout = timeout
        self.tries = tries
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.hop: str | None = None   # the source of the last too-big error
        self.hlen = IPV6_HLEN if self.v6 else IPV4_HLEN
        self.refused: str | None = None   # why the last probe could not reach its peer

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def probe(self, dst: str, size: int) -> tuple[bool, int | None]:
        """Send one IP packet of `size` bytes with DF; (fits, MTU an ICMP error named)."""
        self.seq = (self.seq + 1) & 0xFFFF
        payload = bytes(size - self.hlen - ICMP_HLEN)
        kind = ICMP6_ECHO if self.v6 else ICMP_ECHO
        head = struct.pack("!BBHHH", kind, 0, 0, self.ident, self.seq)
        # ICMPv6's checksum covers a pseudo-header: the kernel fills it for raw ICMPv6
        csum = 0 if self.v6 else checksum(head + payload)
        msg = struct.pack("!BBHHH", kind, 0, csum, self.ident, self.seq) + payload
        self.refused = None
        try:
            self.sock.sendto(msg, (dst, 0))
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                return False, None  # larger than our own device's MTU
            if e.errno in NO_ROUTE:
                self.refused = e.strerror
                return False, None
            raise VtepError(f"probing {dst}: {e.strerror}")
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return False, None
            data, src = self.sock.recvfrom(65535)
            verdict = self._match(data, src[0], dst)
            if verdict is not None:
                return verdict

    def _match(self, data: bytes, src: str, dst: str):
        """(True, None) for our echo reply, (False, mtu) for an error about our probe."""
        off = 0 if self.v6 else (data[0] & 15) * 4  # raw IPv4 sockets see the IP header
        if len(data) < off + 8:
            return None
        kind, code = data[off], data[off + 1]
        reply = ICMP6_ECHOREPLY if self.v6 else ICMP_ECHOREPLY
        if kind == reply and src == dst:
            ident, seq = struct.unpack_from("!HH", data, off + 4)
            return (True, None) if (ident, seq) == (self.ident, self.seq) else None
        too_big = (kind == ICMP6_TOO_BIG) if self.v6 else (
            kind == ICMP_UNREACH and code == ICMP_FRAG_NEEDED)
        unreach = not too_big and kind == (ICMP6_UNREACH if self.v6 else ICMP_UNREACH)
        if not (too_big or unreach):
            return None
        mtu = struct.unpack_from("!I" if self.v6 else "!2xH", data, off + 4)[0]
        inner = off + 8  # the start of our own probe, quoted
        ihl = IPV6_HLEN if self.v6 else (data[inner] & 15) * 4 if len(data) > inner else 0
        if len(data) < inner + ihl + 8:
            return None
        ident, seq = struct.unpack_from("!HH", data, inner + ihl + 4)
        if (ident, seq) != (self.ident, self.seq):
            return None
        if unreach:  # a router (or the peer) says our probe cannot be delivered at all
            self.refused = f"{src} answered destination unreachable (code {code})"
            return False, None
        self.hop = src
        return False, (mtu or None)

    def path_mtu(self, name: str, dst: str, ceiling: int) -> PathMtu:
        """Binary search for the largest size that fits, between 576 and `ceiling`."""
        self.hop = None
        mtu, probes, learned = search(lambda size: self.probe(dst, size), ceiling, self.tries)
        if mtu is None:
            raise Unreachable(name, dst, f"no {MIN_MTU}-byte probe with DF came back in "
                              f"{self.tries} tries: " + (self.refused or "the underlay path "
                                                         "is down or drops ICMP echo"))
        return PathMtu(name, dst, mtu, probes, learned, self.hop if learned else None)


def search(probe, ceiling: int, tries: int) -> tuple[int | None, int, bool]:
    """The largest packet size in MIN_MTU..ceiling that `probe(size) -> (fits, named MTU)`
    says fits: (size or None when not even MIN_MTU does, probes sent, whether an ICMP
    error named the bottleneck's MTU).

    Each size is tried up to `tries` times (a lost reply is not a verdict), except that an
    ICMP error naming an MTU is one at once. The ceiling is probed right after the floor:
    on most paths it fits, in two probes. An MTU an ICMP error names is probed next, as
    named (the bottleneck said so: three probes in all); only silence (a black hole, or a
    named MTU that does not fit either) leaves a binary search to do.
    Pure: the socket is behind `probe`, so tests drive it with a fake path.
    """
    probes = 0
    learned = False
    lo, hi = MIN_MTU, max(ceiling, MIN_MTU)

    def fits(size: int) -> bool:
        nonlocal probes, hi, learned
        for _ in range(tries):
            probes += 1
            ok, mtu = probe(size)
            if ok:
                return True
            if mtu:  # the bottleneck said how big it is: no need to search above
                learned = True
                hi = min(hi, max(mtu, MIN_MTU))
                return False
        return False

    if not fits(lo):
        return None, probes, learned
    size = hi  # the ceiling first
    while not fits(size):
        if hi == size:  # not narrowed by an ICMP error: this size itself is too big
            hi = size - 1
            break
        if hi <= lo:  # named at or below the floor, which fits
            return lo, probes, learned
        size = hi  # an ICMP error named a smaller MTU: try it as named
    else:
        return size, probes, learned
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = min(hi, mid - 1)
    return lo, probes, learned


def probe_each(local: str, peers, ceiling: int, **kw) -> tuple[list[PathMtu], list[Unreachable]]:
    """Path MTU to every peer (name, underlay ip), one after another: the peers that
    answered, and one Unreachable per peer that did not (the others are still probed)."""
    found, lost = [], []
    with Prober(local, **kw) as p:
        for name, ip in peers:
            try:
                found.append(p.path_mtu(name, ip, ceiling))
            except Unreachable as e:
                lost.append(e)
    return found, lost


def probe_peers(local: str, peers, ceiling: int, **kw) -> list[PathMtu]:
    """Path MTU to every peer; raises the first peer's Unreachable (all must answer)."""
    found, lost = probe_each(local, peers, ceiling, **kw)
    if lost:
        raise lost[0]
    return found
