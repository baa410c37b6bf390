"""A VXLAN layer and the frame it carries, in general: the decoder's slow path inside the tunnel.

decode.make_decoder reads the common outermost layer inline (a clean VXLAN
header, then Ethernet and IPv4 without options, not a fragment, whole, carrying
TCP or ICMP). Every other layer comes here: a bad header, VLAN tags, inner
IPv6 (its extension headers walked by ipv6ext), ARP, unknown EtherTypes,
truncation, inner fragments, inner UDP and, through it, nested VXLAN, which
recurses into `layer` up to checks.MAX_NESTING deep.

`last` is shared with the decoder: the last L4 region summed ([a, b) and its
residue), which the outer UDP checksum reuses instead of reading the bytes
twice.
"""
from __future__ import annotations

import struct

from vtep import wire
from vtep.inet import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IP_MF, IP_OFFMASK, IPPROTO_ICMP, \
    IPPROTO_ICMPV6, IPPROTO_IGMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, TCP_HLEN, \
    UDP_HLEN

from .checks import MAX_NESTING
from .ipv6ext import TRUNCATED, inner_to_l4
from .linktypes import VLAN_HLEN, VLAN_TPIDS

U16 = struct.Struct("!H").unpack_from
IP4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
IP6 = struct.Struct("!HHBB16s16s").unpack_from  # ver/class, payload len after first 2 bytes
UDP = struct.Struct("!HHHH").unpack_from
VXH = wire.HEADER.unpack_from
VX_ETH = struct.Struct("!II6x6sH")  # the header and the inner Ethernet header in one call
ICMP_MIN = 4  # type, code and checksum: all an ICMP/IGMP checksum needs to be read
# the shortest header of each L4 protocol whose length vxinspect holds against the packet
L4_HEADER = {IPPROTO_TCP: TCP_HLEN, IPPROTO_UDP: UDP_HLEN, IPPROTO_ICMP: ICMP_MIN,
             IPPROTO_IGMP: ICMP_MIN, IPPROTO_ICMPV6: ICMP_MIN}
ARP_FIXED = 8  # hardware and protocol types and lengths, opcode (RFC 826)
M = 0xFFFF


class Inner:
    """layer(), ip6() and l4() for one capture's options and tally."""

    def __init__(self, opts, tally, last: list, mtu4: int, mtu6: int):
        self.hit = tally.hit
        self.vni_counts = tally.vnis
        self.macs = tally.macs
        self.vnis_ok = opts.vnis
        self.ports = opts.ports
        self.check_cs = opts.checksums
        self.mtu4, self.mtu6 = mtu4, mtu6
        self.last = last

    def l4_ok(self, buf, a: int, b: int, pseudo: int) -> bool:
        """True when the L4 region [a, b) plus `pseudo` verifies; the region's sum is kept
        in `last` for the outer UDP checksum."""
        r = int.from_bytes(buf[a:b], "big") % M
        last = self.last
        last[0] = a
        last[1] = b
        last[2] = r
        if (b - a) & 1:
            r <<= 8
        return (r + pseudo) % M == 0

    def l4(self, buf, proto, a, b, src, addrs, no, depth, ipv6, complete):
        """Inner TCP/UDP/ICMP: checksum, and VXLAN nested in UDP.

        `addrs` is the sum of the pseudo-header's addresses (0 without checksums).
        """
        hit = self.hit
        check_cs = self.check_cs
        n = b - a
        if proto == IPPROTO_UDP:
            if n < UDP_HLEN:
                hit("truncated", no)
                return
            _, dp, ulen, ucs = UDP(buf, a)
            if ulen != n and not (ulen == 0 and n > 0xFFFF):
                hit("truncated", no)
                return
            if check_cs and ucs and not self.l4_ok(buf, a, b, addrs + IPPROTO_UDP + n):
                hit("inner-l4-checksum", no)
            if dp in self.ports:
                self.layer(buf, a + UDP_HLEN, b, complete, no, depth + 1, src, ipv6, dp)
        elif proto == IPPROTO_TCP or proto == IPPROTO_ICMPV6:
            if n < L4_HEADER[proto]:
                hit("truncated", no)
            elif check_cs and not self.l4_ok(buf, a, b, addrs + proto + n):
                hit("inner-l4-checksum", no)
        elif proto == IPPROTO_ICMP or proto == IPPROTO_IGMP:  # no pseudo-header
            if n < L4_HEADER[proto]:
                hit("truncated", no)
            elif check_cs and not self.l4_ok(buf, a, b, 0):
                hit("inner-l4-checksum", no)

    def ip6(self, buf, q, end, complete, no, depth, mtu):
        """The inner IPv6 packet at q; returns its length."""
        hit = self.hit
        if q + IPV6_HLEN > end:
            hit("truncated", no)
            return 0
        _, plen, nh, _, src, dst = IP6(buf, q + 2)
        if plen == 0 and complete:
            plen = end - q - IPV6_HLEN  # jumbogram / BIG TCP: length from the frame
        tlen = IPV6_HLEN + plen
        if tlen > mtu:
            hit("inner-too-big", no)
        l3end = q + tlen
        if l3end > end:
            if complete or (nh in L4_HEADER and q + IPV6_HLEN + L4_HEADER[nh] > end):
                hit("truncated", no)
            return tlen
        nh, a = inner_to_l4(buf, q + IPV6_HLEN, nh, l3end)
        if nh is None:
            return tlen
        if nh == TRUNCATED:
            hit("truncated", no)
            return tlen
        self.l4(buf, nh, a, l3end, src,
                int.from_bytes(buf[q + 8:q + IPV6_HLEN], "big") if self.check_cs else 0,
                no, depth, True, complete)
        return tlen

    def layer(self, buf, v, end, complete, no, depth, osrc, ipv6, dport):
        """The VXLAN header at v and the inner frame it carries; returns the inner L3 length.

        `end`: the end of the captured bytes of the datagram; `complete`: they hold
        every byte the headers promise; `osrc`: the source address of the packet
        around this layer (where a MAC is seen); `dport`: its UDP destination port.
        """
        hit = self.hit
        if depth > MAX_NESTING:
            hit("nesting-too-deep", no)
            return 0
        if v + VX_ETH.size <= end:
            w0, w1, smac, et = VX_ETH.unpack_from(buf, v)
        elif v + wire.HEADER_LEN <= end:
            w0, w1 = VXH(buf, v)
            smac = None
        else:
            hit("truncated", no)
            return 0
        if w0 != wire.FLAGS_WORD_I or w1 & wire.VNI_WORD_RESERVED:
            if not w0 & wire.FLAGS_WORD_I:
                hit("vxlan-flags", no)
            if w0 & wire.FLAGS_WORD_RESERVED or w1 & wire.VNI_WORD_RESERVED:
                hit("vxlan-reserved", no)
        vni = w1 >> 8
        if depth == 1:
            self.vni_counts[vni] = self.vni_counts.get(vni, 0) + 1
        if vni not in self.vnis_ok:
            hit("vni-mismatch", no)
        if dport == wire.VXLAN_PORT_LINUX_LEGACY:
            hit("legacy-port", no)
        # The inner Ethernet frame.
        if smac is None:  # cut before its end
            hit("truncated", no)
            return 0
        if not smac[0] & 1:  # a unicast source MAC: which VTEP is it behind?
            macs = self.macs
            key = (vni, smac)
            if macs.get(key) != osrc:
                if key in macs:
                    hit("mac-move", no)
                macs[key] = osrc
        q = v + VX_ETH.size
        if et in VLAN_TPIDS:
            hit("inner-vlan", no)
            while et in VLAN_TPIDS:
                if q + VLAN_HLEN > end:
                    hit("truncated", no)
                    return 0
                (et,) = U16(buf, q + 2)
                q += VLAN_HLEN
        mtu = self.mtu6 if ipv6 else self.mtu4
        if et == ETH_P_IP:
            return self.ip4(buf, q, end, complete, no, depth, mtu)
        if et == ETH_P_IPV6:
            return self.ip6(buf, q, end, complete, no, depth, mtu)
        if et == ETH_P_ARP:
            if q + ARP_FIXED > end or q + ARP_FIXED + 2 * (buf[q + 4] + buf[q + 5]) > end:
                hit("truncated", no)
            return 0
        hit("unknown-inner-type", no)
        return 0

    def ip4(self, buf, q, end, complete, no, depth, mtu):
        """The inner IPv4 packet at q; returns its length."""
        hit = self.hit
        check_cs = self.check_cs
        if q + IPV4_HLEN > end:
            hit("truncated", no)
            return 0
        vhl, _, tlen, _, frag, _, proto, _, src, _ = IP4(buf, q)
        ihl = (vhl & 15) << 2
        if ihl < IPV4_HLEN or q + ihl > end:
            hit("truncated", no)
            return 0
        if tlen == 0 and complete:
            tlen = end - q  # Linux BIG TCP: tot_len 0 above 64 KiB, length from the frame
        if tlen > mtu:
            hit("inner-too-big", no)
        if check_cs and int.from_bytes(buf[q:q + ihl], "big") % M:
            hit("inner-ip-checksum", no)
        l3end = q + tlen
        if tlen < ihl or (complete and l3end > end):
            hit("truncated", no)
        elif frag & (IP_MF | IP_OFFMASK):
            pass  # an inner fragment: no whole L4 segment to check
        elif l3end <= end:
            if check_cs or proto == IPPROTO_UDP:
                self.l4(buf, proto, q + ihl, l3end, src,
                        int.from_bytes(buf[q + 12:q + 20], "big") if check_cs else 0,
                        no, depth, False, complete)
            elif l3end - q - ihl < L4_HEADER.get(proto, 0):
                hit("truncated", no)
        elif q + ihl + L4_HEADER.get(proto, 0) > end:
            hit("truncated", no)  # the snap length cut into the L4 header
        return tlen
