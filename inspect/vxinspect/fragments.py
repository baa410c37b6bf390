"""Outer fragments of VXLAN packets: which later fragments belong to a VXLAN datagram.

RFC 7348 section 4.3: VTEPs must not fragment, so every outer fragment of VXLAN
fires `outer-fragment`. Only the first fragment holds the UDP header that makes
a packet VXLAN; its key (outer source, destination, identification) is kept,
and a later fragment with the same key counts as VXLAN (and fires the check)
too. The table is bounded: a capture of fragments whose rest never comes costs
at most MAX_FRAGMENT_KEYS keys. Runs only for fragments (outer.Outer and the
decoder's slow path), never for the common packet.
"""
from __future__ import annotations

MAX_FRAGMENT_KEYS = 4096  # bounded memory for matching outer fragments


class Fragments:
    """The fragment table of one capture (Tally.frags), and the accounting of fragments."""

    def __init__(self, tally):
        self.frags = tally.frags
        self.flows = tally.flows
        self.hit = tally.hit

    def first(self, key: tuple, no: int) -> None:
        """Packet `no` is the first fragment of a VXLAN datagram: remember its key."""
        self.hit("outer-fragment", no)
        frags = self.frags
        if len(frags) >= MAX_FRAGMENT_KEYS:
            del frags[next(iter(frags))]  # the oldest: dicts keep insertion order
        frags[key] = True

    def later(self, key: tuple, more: int, no: int, orig: int) -> bool:
        """Packet `no` (`orig` bytes on the wire) is a non-first fragment with key
        (src, dst, identification): True when its first fragment was VXLAN. The key
        is forgotten at the last fragment (`more` clear)."""
        frags = self.frags
        if key not in frags:
            return False
        if not more:
            del frags[key]
        self.hit("outer-fragment", no)
        if type(key[2]) is int:  # IPv4 (its ident is an int): DF is clear on any fragment
            self.hit("df-clear", no)
        f = self.flows.get(key[:2])
        if f is not None:
            f[0] += 1
            f[1] += orig
        return True
