"""`vtep run --mtu auto` after the start: peers that have not answered are probed again.

At start `--mtu auto` probes every peer's underlay path and takes the narrowest
of those that answered; a peer that did not (down, still booting, behind a
firewall) is left out, so that one dead node does not keep the others' pods off
the overlay (automtu.auto_mtu). Those peers, and peers a re-read plan adds, are
probed again at every periodic resync, in a thread (jobs.Job: a silent peer
costs seconds of waiting). When one answers with a narrower path, the overlay
MTU is lowered to fit it (RFC 7348 section 4.3: VTEPs must not fragment) and the
next pass applies it; a path as wide as the current MTU or wider changes
nothing. The MTU never goes back up by itself: a restart probes afresh.
"""
from __future__ import annotations

import logging

from . import automtu, host

log = logging.getLogger("vtep")


class Reprobe:
    """Which peers still owe an answer, and what to do when they give one."""

    def __init__(self, rec, unreachable):
        self.rec = rec   # the reconciler: its current plan, node and desired state
        # peers whose path is known; everything else in the plan is probed again
        self.known = {p.name for p in rec.plan.peers(rec.node.name)} - set(unreachable)
        self.asked: tuple[str, ...] = ()

    def wanted(self) -> bool:
        """Whether some peer of the current plan has not answered yet (and which: asked)."""
        peers = {p.name for p in self.rec.plan.peers(self.rec.node.name)}
        self.asked = tuple(sorted(peers - self.known))
        return bool(self.asked)

    def work(self):
        """Probe the asked peers (in a thread: it only reads immutable plan data)."""
        plan, node, asked = self.rec.plan, self.rec.node, self.asked
        _dev, underlay_mtu = host.underlay(node)
        return automtu.auto_mtu(plan, node, underlay_mtu, automtu.AUTO_TIMEOUT, peers=asked)

    def apply(self, found, error) -> bool:
        """Take a probe's result; True when the overlay MTU was lowered (a pass is due)."""
        if error is not None:   # the underlay IP gone, say: the next resync tries again
            log.warning(f"warning: --mtu auto: re-probing the path MTU: {error}")
            return False
        answered = sorted(set(self.asked) - set(found.unreachable))
        self.known.update(answered)
        if not answered or found.overlay_mtu is None:
            return False
        current = self.rec.want.device.mtu if self.rec.want else None
        who = f"{', '.join(answered)} answer{'s' if len(answered) == 1 else ''} now"
        floor = self.rec.plan.min_mtu
        if found.overlay_mtu < floor:
            # below IPv6's 1280 the kernel takes IPv6 off the device (every IPv6 address and
            # route on it would vanish), and every later pass and plan reload would be
            # refused: keep the MTU there is, and say what the path cannot carry
            log.warning(f"warning: --mtu auto: {who}; path MTU {found.path_mtu} to "
                        f"{found.narrowest} leaves an overlay MTU of {found.overlay_mtu}, below "
                        f"{floor} (IPv6's minimum link MTU, RFC 8200 section 5; the plan has "
                        f"overlay6): keeping {current}; larger frames to it are dropped")
            return False
        if current is None or found.overlay_mtu < current:
            log.info(f"--mtu auto: {who}; path MTU {found.path_mtu} to {found.narrowest}: "
                     f"lowering the overlay MTU from {current} to {found.overlay_mtu}")
            self.rec.lower_mtu(found.overlay_mtu)
            return True
        log.info(f"--mtu auto: {who}; path MTU {found.path_mtu} fits the overlay MTU "
                 f"{current}")
        return False
