"""ICMP "too big" errors that a userspace VTEP sends back through its TAP device.

RFC 7348 section 4.3 forbids the VTEP to fragment; it allows it to tell the
inner sender that a frame is too big, which is how path MTU discovery keeps
working through the tunnel when the underlay path shrinks. The kernel's own
vxlan driver does the same (skb_tunnel_check_pmtu); flannel's and Calico's
userspace paths do not.

Where an error claims to come from differs by family, for one reason: what the
node's own stack accepts from the TAP. IPv4: the peer's VTEP address, the next
hop over the tunnel; a packet arriving with one of the node's own addresses as
its source is dropped as a martian. IPv6 has no such check (measured: a packet
too big from the node's own IPv6 VTEP address, written into vxlan0, is
forwarded to the pod, which lowers its path MTU), so the IPv6 error comes from
the node's own IPv6 VTEP address, as the kernel's does from a node address:
its vxlan path, refusing a pod's packet for a learnt tunnel path MTU, answers
from the node (ip6_forward -> icmp6_send, its source picked towards the pod:
the bridge's gateway, measured on 6.18). The errors say so to `ping`: "From
<node VTEP> ... Packet too big: mtu=N".
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


def too_big(frame, mtu: int, via: bytes | None, via6: bytes | None = None) -> bytes | None:
    """The Ethernet frame to write back to the TAP for `frame`, which is too big for
    a path whose inner MTU is `mtu`; None when no error is due (not IP, an IPv4
    packet without DF, which the sender allows to be fragmented, or a fragment
    whose error would not help, an IPv6 packet from a multicast or unspecified
    source) or none can be sent (no address of that family to send it from).
    `via` is the IPv4 address an IPv4 error comes from (4 bytes), `via6` the IPv6
    address an IPv6 error comes from (16 bytes): without an IPv6 overlay the
    device has IPv6 off, and no IPv6 frame reaches the TAP."""
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
        if via6 is None or src[0] == 0xFF or not any(src):
            # RFC 4443 2.4(e): never an error to a multicast or unspecified source
            return None
        quote = bytes(frame[14:14 + QUOTE_V6])
        body = bytearray(struct.pack("!BBHI", ICMP6_TOO_BIG, 0, 0, max(mtu, IPV6_MIN_MTU))
                         + quote)
        # RFC 4443 2.3: the checksum covers the pseudo-header (RFC 8200 8.1) too
        pseudo = (int.from_bytes(via6, "big") + int.from_bytes(src, "big") + len(body)
                  + IPPROTO_ICMPV6)
        struct.pack_into("!H", body, 2, checksum(body, pseudo))
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), IPPROTO_ICMPV6, 64, via6, src)
        return _ETH.pack(src_mac, dst_mac, ETH_P_IPV6) + ip6 + bytes(body)
    return None
