"""Where the network header starts, for every link type vxinspect reads.

The decoder's fast path (decode.make_decoder) reads untagged Ethernet itself;
everything else comes here once per packet, from outer.Outer: Ethernet with
802.1Q/802.1ad tags, Linux cooked captures (SLL, SLL2: `tcpdump -i any`) and
raw IP, whose version nibble says IPv4 or IPv6. A pure function of the bytes.
"""
from __future__ import annotations

import struct

from vtep.inet import ETH_P_IP, ETH_P_IPV6
from vtep.wire import ETH_HLEN

from .capture import LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, \
    LINKTYPE_LINUX_SLL2

U16 = struct.Struct("!H").unpack_from
# 802.1Q, 802.1ad (QinQ) and the pre-standard 0x9100 that some switches still send
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
VLAN_HLEN = 4  # TPID and TCI (IEEE 802.1Q)
SLL_HLEN, SLL2_HLEN = 16, 20  # tcpdump.org LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2


def network_layer(buf, p: int, end: int, lt: int) -> tuple[int, int]:
    """(EtherType of the network header, where it starts) in the frame buf[p:end].

    The EtherType is 0 when the frame is too short for its link header or raw IP
    holds neither version 4 nor 6 (nor the version its link type names); VLAN tags
    are skipped while they fit, and the EtherType is then the last one read.
    """
    if lt == LINKTYPE_ETHERNET:
        if p + ETH_HLEN > end:
            return 0, p
        (et,) = U16(buf, p + 12)
        q = p + ETH_HLEN
        while et in VLAN_TPIDS and q + VLAN_HLEN <= end:
            (et,) = U16(buf, q + 2)
            q += VLAN_HLEN
        return et, q
    if lt == LINKTYPE_LINUX_SLL2:  # the protocol type comes first
        if p + SLL2_HLEN > end:
            return 0, p
        return U16(buf, p)[0], p + SLL2_HLEN
    if lt == LINKTYPE_LINUX_SLL:  # the protocol type comes last
        if p + SLL_HLEN > end:
            return 0, p
        return U16(buf, p + 14)[0], p + SLL_HLEN
    # raw IP (LINKTYPE_RAW, or LINKTYPE_IPV4/IPV6, which name the version)
    if p >= end:
        return 0, p
    ver = buf[p] >> 4
    if ver == 4 and lt != LINKTYPE_IPV6:
        return ETH_P_IP, p
    if ver == 6 and lt != LINKTYPE_IPV4:
        return ETH_P_IPV6, p
    return 0, p
