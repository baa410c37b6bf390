"""The IPv6 extension-header walks (RFC 8200 section 4): pure functions of the bytes.

Hop-by-hop, routing and destination options headers are skipped by their length
(8-octet units, not counting the first 8); the fragment header has a fixed 8
bytes. `outer_to_udp` finds the outer UDP header of a VXLAN packet over an IPv6
underlay (outer.Outer calls it); `inner_to_l4` finds the upper-layer header of
an inner IPv6 packet whose checksum can be verified (inner.Inner calls it).
"""
from __future__ import annotations

import struct

from vtep.inet import IP6F_MORE_FRAG, IP6F_OFF_MASK, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, \
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_UDP, IPV6_EXT_UNIT

U16 = struct.Struct("!H").unpack_from
SKIPPABLE = frozenset((IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS))
TRUNCATED = -1


def _ext_len(buf, a: int) -> int:
    """The length in bytes of the hop-by-hop, routing or destination options header at a."""
    return (buf[a + 1] + 1) * IPV6_EXT_UNIT


def outer_to_udp(buf, u: int, nh: int, end: int):
    """Walk from the header of type `nh` at u towards UDP, while 8 more bytes are captured.

    Returns (nh, u, ident, later, routed): the header reached and where it starts
    (UDP when nh == 17); the 4-byte identification of the fragment header that made
    the packet a first fragment (M set, offset 0) or a later one (offset non-zero),
    else None; for a later fragment its M flag, else None; and whether a routing
    header with segments left was passed, which moves the final destination out of
    the IPv6 header.
    """
    ident = later = None
    routed = False
    while nh != IPPROTO_UDP and u + 8 <= end:
        if nh in SKIPPABLE:
            if nh == IPPROTO_ROUTING and buf[u + 3]:
                routed = True  # segments left: dst is not the final destination
            nh = buf[u]
            u += _ext_len(buf, u)
        elif nh == IPPROTO_FRAGMENT:
            nh = buf[u]
            (fo,) = U16(buf, u + 2)
            u += 8
            if fo & IP6F_OFF_MASK:  # a later fragment: no UDP header in it
                return nh, u, bytes(buf[u - 4:u]), fo & IP6F_MORE_FRAG, routed
            if fo & IP6F_MORE_FRAG:
                ident = bytes(buf[u - 4:u])
        else:
            break
    return nh, u, ident, later, routed


def inner_to_l4(buf, a: int, nh: int, l3end: int):
    """(nh, a) of the upper-layer header after the extension headers that start at a,
    in an inner packet whose payload ends at l3end.

    nh is TRUNCATED when a header runs past l3end, and None when there is no segment
    to verify: past a routing header the pseudo-header's destination is elsewhere
    (RFC 8200 section 8.1), and a fragment holds only part of one.
    """
    while nh in SKIPPABLE:
        if a + 8 > l3end:
            return TRUNCATED, a
        if nh == IPPROTO_ROUTING:
            return None, a
        nh = buf[a]
        a += _ext_len(buf, a)
    if nh == IPPROTO_FRAGMENT:
        return None, a
    if a > l3end:  # the last extension header's length runs past the payload length
        return TRUNCATED, a
    return nh, a
