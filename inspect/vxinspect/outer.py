"""The outer headers of every packet the decoder's fast path does not take.

decode.make_decoder reads the common packet (untagged Ethernet, IPv4 without
options, UDP, not a fragment, whole) inline. Anything else comes here once:
other link types and VLAN tags (linktypes), IPv4 options, a zero total length
(Linux BIG TCP), a capture cut by the snap length, IPv6 and its extension
headers (ipv6ext), and fragments (fragments). `Outer.parse` answers with the
same values the fast path computes, so the decoder goes on as one from the UDP
header.
"""
from __future__ import annotations

import struct

from vtep.inet import ETH_P_IP, ETH_P_IPV6, IP_DF, IP_MF, IP_OFFMASK, IPPROTO_UDP, IPV4_HLEN, \
    IPV6_HLEN, UDP_HLEN

from .ipv6ext import outer_to_udp
from .linktypes import network_layer

IP4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
IP4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH").unpack_from
IP6 = struct.Struct("!HHBB16s16s").unpack_from  # ver/class, payload len after first 2 bytes
UDP = struct.Struct("!HHHH").unpack_from
V4_NO_OPTIONS = 0x45  # version 4, IHL 5: less is no IPv4 header
V4_MAX_OPTIONS = 0x4F  # version 4, IHL 15: above it the version is not 4 (RFC 791)
M = 0xFFFF


class Outer:
    """parse(buf, p, end, orig, lt, no) for one capture's options, tally and fragment table."""

    def __init__(self, opts, tally, fragments):
        self.ports = opts.ports
        self.check_cs = opts.checksums
        self.hit = tally.hit
        self.fragments = fragments

    def parse(self, buf, p: int, end: int, orig: int, lt: int, no: int):
        """The outer IP and UDP headers of packet `no`, the record buf[p:end] of link type lt
        that had `orig` bytes on the wire.

        Returns None when the packet is no VXLAN (not UDP to a VXLAN port, or too short
        to tell), True when it is a later fragment of a VXLAN datagram (counted here),
        else (q, u, src, dst, dport, ulen, ucs, tlen, wire_l3, complete, fragment, ipv6):
        where the IP and UDP headers start, the outer addresses, the UDP destination
        port, length and checksum, the IP packet's length (its header's word, or the
        frame's for a zero length), the bytes from q on the wire, whether every one of
        them was captured, the key of a first fragment (else False), and IPv6 or not.
        """
        et, q = network_layer(buf, p, end, lt)
        missing = orig - (end - p)  # bytes cut by the snap length
        complete = missing <= 0
        wire_l3 = end - q if complete else end - q + missing
        if et == ETH_P_IP:
            if q + IPV4_HLEN + UDP_HLEN <= end:
                vhl, _, tlen, ident, frag, _, proto, _, src, dst, _, dp, ulen, ucs = IP4_UDP(buf, q)
            elif q + IPV4_HLEN <= end:
                vhl, _, tlen, ident, frag, _, proto, _, src, dst = IP4(buf, q)
                dp = -1
            else:
                return None
            if proto != IPPROTO_UDP or not V4_NO_OPTIONS <= vhl <= V4_MAX_OPTIONS:
                return None
            if frag & IP_OFFMASK:  # a later fragment: VXLAN only if its first fragment was
                return self.fragments.later((src, dst, ident), frag & IP_MF, no, orig) or None
            ihl = (vhl & 15) << 2
            u = q + ihl
            if ihl != IPV4_HLEN:  # IP options: the UDP header is further on
                if u + UDP_HLEN > end:
                    return None
                _, dp, ulen, ucs = UDP(buf, u)
            if dp not in self.ports:
                return None
            if tlen == 0:
                tlen = wire_l3  # Linux BIG TCP: tot_len 0 above 64 KiB, length from the frame
            fragment = (src, dst, ident) if frag & IP_MF else False
            if not frag & IP_DF:
                self.hit("df-clear", no)
            if self.check_cs and int.from_bytes(buf[q:u], "big") % M:
                self.hit("ip-checksum", no)
            return q, u, src, dst, dp, ulen, ucs, tlen, wire_l3, complete, fragment, False
        if et == ETH_P_IPV6:
            if q + IPV6_HLEN > end:
                return None
            _, plen, nh, _, src, dst = IP6(buf, q + 2)
            nh, u, ident, later, routed = outer_to_udp(buf, q + IPV6_HLEN, nh, end)
            if later is not None:
                return self.fragments.later((src, dst, ident), later, no, orig) or None
            if nh != IPPROTO_UDP or u + UDP_HLEN > end:
                return None
            _, dp, ulen, ucs = UDP(buf, u)
            if dp not in self.ports:
                return None
            if not ucs:
                self.hit("udp-zero-checksum-ipv6", no)
            elif routed:
                # RFC 8200 section 8.1: the pseudo-header holds the final destination,
                # which a routing header with segments left keeps elsewhere (and where
                # depends on its type): the checksum is not verified
                ucs = 0
            if plen == 0:
                plen = wire_l3 - IPV6_HLEN  # jumbogram / BIG TCP: length from the frame
            fragment = (src, dst, ident) if ident is not None else False
            return q, u, src, dst, dp, ulen, ucs, IPV6_HLEN + plen, wire_l3, complete, \
                fragment, True
        return None
