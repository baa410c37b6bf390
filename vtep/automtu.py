"""What `--mtu auto` finds: the overlay MTU that fits every reachable peer's underlay path.

commands.run probes at start (auto_mtu) and starts with the narrowest path
that answered; vtep.reprobe probes the peers that did not, at every periodic
resync. The probing itself (ICMP echoes with DF, a binary search) is vtep.pmtu's.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

from . import host, pmtu

AUTO_TIMEOUT = 0.4   # s per probe for `run --mtu auto` (2 tries per size)


class AutoMtu(NamedTuple):
    """What `--mtu auto` found: the overlay MTU that fits every reachable peer's path
    (None: no peer answered, or there are none; the plan's MTU applies), the peers
    that did not answer, and the peer with the narrowest path (with its path MTU)."""
    overlay_mtu: int | None
    unreachable: tuple[str, ...]
    narrowest: str | None
    path_mtu: int | None = None
    why: tuple[str, ...] = ()     # one line per unreachable peer, naming it


def auto_mtu(plan, node, underlay_mtu: int, timeout: float = AUTO_TIMEOUT,
             peers: Iterable[str] | None = None) -> AutoMtu:
    """Probe the underlay path to every peer of `node` (or only those named in `peers`)
    and return the overlay MTU that fits all the reachable ones. Never raises for a
    peer that does not answer: it is listed in `unreachable` instead. Blocking: about
    2 x timeout per unreachable peer, up to ~12 x 2 x timeout per peer behind a black
    hole (binary search); PermissionDenied/HostMismatch when this host cannot probe."""
    found, lost = probe(plan, node, underlay_mtu, timeout, peers)
    unreachable = tuple(e.peer for e in lost)
    why = tuple(str(e) for e in lost)
    if not found:
        return AutoMtu(None, unreachable, None, None, why)
    narrow = min(found, key=lambda r: r.mtu)
    return AutoMtu(narrow.mtu - plan.overhead, unreachable, narrow.peer, narrow.mtu, why)


def probe(plan, node, underlay_mtu: int, timeout: float, only=None):
    """(path MTUs of the peers that answered, pmtu.Unreachable of those that did not)."""
    host.require_net_admin("probing the path MTU")
    wanted = None if only is None else set(only)
    peers = [(n.name, str(n.underlay_ip)) for n in plan.peers(node.name)
             if wanted is None or n.name in wanted]
    return pmtu.probe_each(str(node.underlay_ip), peers, underlay_mtu, timeout=timeout)
