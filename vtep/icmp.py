"""ICMP "too big" errors that a userspace VTEP sends back through its TAP device.

RFC 7348 section 4.3 forbids the VTEP to fragment; it allows it to tell the
inner sender that a frame is too big, which is how path MTU discovery keeps
working through the tunnel when the underlay path shrinks. The kernel's own
vxlan driver does the same (skb_tunnel_check_pmtu); flannel's and Calico's
userspace paths do not.

The error claims to come from the peer's VTEP address, the next hop over the
tunnel: an error from one of the node's own addresses would be dropped as a
martian by the node's stack.
"""
from __future__ import annotations

import struct

from .checksum import checksum
from .inet import ETH_P_IP, ETH_P_IPV6, ICMP6_TOO_BIG, ICMP_FRAG_NEEDED, ICMP_HLEN, \
    ICMP_UNREACH, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, IPV6_MIN_MTU, MIN_MTU

# RFC 1812 4.3.2.3: quote as much of the packet as fits a 576-byte error
QUOTE_V4 = MIN_MTU - IPV4_HLEN - ICMP_HLEN
# RFC 4443 2.4(c): as much as fits the IPv6 minimum MTU
QUOTE_V6 = IPV6_MIN_MTU - IPV6_HLEN - ICMP_HLEN
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_ETH = struct.Struct("!6s6sH")


def too_big(frame, mtu: int, via: bytes | None) -> bytes | None:
    """The Ethernet frame to write back to the TAP for `frame`, which is too big for
    a path whose inner MTU is `mtu`; None when no error is due (not IP, an IPv4
    packet without DF, which the sender allows to be fragmented, or a fragment
    whose error would not help). `via` is the IPv4 address the error comes from."""
    if len(frame) < 14 + IPV4_HLEN:
        return None
    dst_mac, src_mac, et = _ETH.unpack_from(frame, 0)
    if et == ETH_P_IP:
        if frame[14] >> 4 != 4 or not frame[20] & 0x40 or via is None:
            return None  # DF clear: the sender did not ask for path MTU discovery
        src = bytes(frame[26:30])
        quote = bytes(frame[14:14 + QUOTE_V4])
        head = struct.pack("!BBHHH", ICMP_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu)
        icmp = bytearray(head + quote)
        struct.pack_into("!H", icmp, 2, checksum(icmp))
        ip = bytearray(_IP4.pack(0x45, 0xC0, IPV4_HLEN + len(icmp), 0, 0, 64, IPPROTO_ICMP, 0,
                                 via, src))
        struct.pack_into("!H", ip, 10, checksum(ip))
        return _ETH.pack(src_mac, dst_mac, ETH_P_IP) + bytes(ip) + bytes(icmp)
    if et == ETH_P_IPV6 and len(frame) >= 14 + IPV6_HLEN:
        src = bytes(frame[22:38])
        dst = bytes(frame[38:54])
        if src[0] == 0xFF or not any(src):
            return None  # never an error to a multicast or unspecified source
        quote = bytes(frame[14:14 + QUOTE_V6])
        body = bytearray(struct.pack("!BBHI", ICMP6_TOO_BIG, 0, 0, max(mtu, IPV6_MIN_MTU))
                         + quote)
        # from the packet's own destination: the overlay has no IPv6 VTEP addresses
        pseudo = (int.from_bytes(dst, "big") + int.from_bytes(src, "big") + len(body)
                  + IPPROTO_ICMPV6)
        struct.pack_into("!H", body, 2, checksum(body, pseudo))
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), IPPROTO_ICMPV6, 64, dst, src)
        return _ETH.pack(src_mac, dst_mac, ETH_P_IPV6) + ip6 + bytes(body)
    return None
