"""The VXLAN wire format (RFC 7348), written once for every data path and vxinspect.

Header layout (RFC 7348 section 5)::

    0                   1                   2                   3
    |R|R|R|R|I|R|R|R|            Reserved                           |
    |                VXLAN Network Identifier (VNI) |   Reserved    |

The two hot loops read the header as numbers, never bit by bit: the userspace
data path (vtep.datapath.Datapath.rx_batch) as one 64-bit word compared with
FLAGS_WORD_I and the VNI, vxinspect (vxinspect.decode) as the two 32-bit words
of HEADER compared with FLAGS_WORD_I and masked with VNI_WORD_RESERVED. The IP
and UDP numbers around the header live in vtep.inet.
"""
from __future__ import annotations

import struct

from .inet import IPV4_HLEN, IPV6_HLEN, UDP_HLEN

VXLAN_PORT = 4789
"""IANA-assigned destination port (RFC 7348 section 5)."""
VXLAN_PORT_LINUX_LEGACY = 8472
"""Linux's pre-IANA default; the kernel still uses it when `dstport` is not given."""
VXLAN_PORTS = frozenset((VXLAN_PORT, VXLAN_PORT_LINUX_LEGACY))

HEADER_LEN = 8
FLAG_I = 0x08
"""The I flag: the VNI is valid (RFC 7348 section 5). All other flag bits are reserved."""
FLAGS_WORD_I = FLAG_I << 24
"""0x08000000: the first 32-bit word of every well-formed header, the I flag set and the
other 7 flag bits and the 24 reserved bits after them zero (RFC 7348 section 5: reserved
fields MUST be set to zero on transmission)."""
FLAGS_WORD_RESERVED = 0xFFFFFFFF ^ FLAGS_WORD_I
"""0xF7FFFFFF: the reserved bits of the first word; any of them set is a malformed header."""
VNI_WORD_RESERVED = 0xFF
"""The second word's low byte: reserved (RFC 7348 section 5), the VNI is the 24 bits above it."""
VNI_MIN = 1
VNI_MAX = 0xFFFFFF
"""VNIs are 24 bits."""
DEFAULT_VNI = 10

ETH_HLEN = 14
"""The inner Ethernet header VXLAN carries: two MACs and an EtherType, no FCS (RFC 7348 5)."""
OVERHEAD_IPV4 = IPV4_HLEN + UDP_HLEN + HEADER_LEN + ETH_HLEN
"""50: what the tunnel adds around an inner L3 packet over an IPv4 underlay."""
OVERHEAD_IPV6 = IPV6_HLEN + UDP_HLEN + HEADER_LEN + ETH_HLEN
"""70: the same over an IPv6 underlay."""

HEADER = struct.Struct("!II")
"""The header as two 32-bit words: flags and reserved bits, then VNI and a reserved byte."""


def pack_into(buf, offset: int, vni: int, flags: int = FLAG_I) -> None:
    """Write the header into a preallocated buffer (the data paths' hot loops)."""
    HEADER.pack_into(buf, offset, flags << 24, vni << 8)


def overhead(ipv6: bool) -> int:
    return OVERHEAD_IPV6 if ipv6 else OVERHEAD_IPV4


def overlay_mtu(underlay_mtu: int, ipv6: bool = False) -> int:
    """The largest inner L3 packet that fits the underlay without fragmentation."""
    return underlay_mtu - overhead(ipv6)
