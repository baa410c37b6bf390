"""The per-packet decoder: link layer -> outer IP -> UDP -> VXLAN -> inner frame.

This is the hot loop of vxinspect. It uses struct and integer arithmetic only
(no scapy, no objects per packet), binds everything it needs as closure
locals, and records a fired check with `hit`, which counts each check at most
once per packet.

Truncation model: `end` is the end of the captured bytes of a region;
`complete` says whether the region also holds every byte the headers promise
(not cut by the snap length, not an outer fragment). Headers that run past
`end` fire `truncated`; length fields and checksums are only held against the
bytes when the region is complete.

With --plan (plancheck) the outermost VXLAN layer is also held against the
cluster plan; without one that costs a single falsy test per VXLAN packet.
"""
from __future__ import annotations

import struct

from vtep import wire

from .capture import (LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
                      LINKTYPE_LINUX_SLL2)
from .checks import FIRST_PACKETS, MAX_NESTING
from .plancheck import U32, VNI_DMAC, plan_tables

U16 = struct.Struct("!H").unpack_from
IP4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
IP6 = struct.Struct("!HHBB16s16s").unpack_from  # ver/class, payload len after first 2 bytes
UDP = struct.Struct("!HHHH").unpack_from
VXH = wire.HEADER.unpack_from
# Several headers in one call, for the usual layouts (one unpack is ~100 ns).
ETH_SRC_TYPE = struct.Struct("!6x6sH").unpack_from
VX_ETH_IP4 = struct.Struct("!II6x6sHBBHHHBBH4s4s").unpack_from
ETH_IP4_UDP = struct.Struct("!12xHBBHHHBBH4s4sHHHH").unpack_from
IP4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH").unpack_from

ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
IPV6_SKIPPABLE = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
IPV6_FRAGMENT = 44
L4_HEADER = {6: 20, 17: 8, 1: 4, 2: 4, 58: 4}  # minimum header bytes by IP protocol
MAX_FRAGMENT_KEYS = 4096  # bounded memory for matching outer fragments
M = 0xFFFF


def _w(n: int) -> int:
    """Weight of a region that is followed by n bytes, modulo 0xFFFF (2**8 or 1)."""
    return 256 if n & 1 else 1



def make_decoder(opts, tally, safety_net: bool = True):
    """Return decode_batch(buf, records, first_number - 1) -> VXLAN packets in the batch.

    With safety_net (the default), a struct.error or IndexError that a bound check
    missed counts as `truncated` and the batch goes on; without it the exception
    escapes, which is how the fuzz tests (tests/test_fuzz.py) see a missed bound.
    The choice costs nothing per packet: an except clause's tuple is only looked at
    when something was raised, and () matches nothing.
    """
    net = (struct.error, IndexError) if safety_net else ()
    ports = opts.ports
    vnis_ok = opts.vnis
    check_cs = opts.checksums
    umtu = opts.underlay_mtu
    mtu4 = opts.mtu if opts.mtu is not None else wire.overlay_mtu(umtu)  # IPv4 underlay
    mtu6 = opts.mtu if opts.mtu is not None else wire.overlay_mtu(umtu, ipv6=True)
    legacy_port = wire.VXLAN_PORT_LINUX_LEGACY
    hits = tally.hits
    vni_counts = tally.vnis
    flows = tally.flows
    macs = tally.macs
    frags = tally.frags
    fb = int.from_bytes  # big-endian: the default since Python 3.11 (requires-python)
    # The last L4 region summed ([a, b), residue): the outer UDP checksum covers
    # it again and reuses the sum instead of reading the bytes twice.
    last = [0, 0, 0]

    def hit(cid, no):
        h = hits[cid]
        if h[2] != no:
            h[2] = no
            h[0] += 1
            if h[0] <= FIRST_PACKETS:
                h[1].append(no)

    # --plan (see plancheck): the plan's nodes, fdb, VNI and port, or nodes=None so
    # that without a plan the loop pays one falsy test per VXLAN packet.
    plan_nodes, plan_fdb, plan_vni, plan_port = plan_tables(opts.plan)

    def region(buf, a, b):
        r = fb(buf[a:b]) % M
        last[0] = a
        last[1] = b
        last[2] = r
        return r

    def l4_ok(buf, a, b, pseudo):
        """True when the L4 region [a, b) plus `pseudo` verifies."""
        r = region(buf, a, b)
        if (b - a) & 1:
            r <<= 8
        return (r + pseudo) % M == 0

    def inner_l4(buf, proto, a, b, src, addrs, no, depth, ipv6, complete):
        """Inner TCP/UDP/ICMP: checksum, and VXLAN nested in UDP.

        `addrs` is the sum of the pseudo-header's addresses (0 without checksums).
        """
        n = b - a
        if proto == 17:
            if n < 8:
                hit("truncated", no)
                return
            _, dp, ulen, ucs = UDP(buf, a)
            if ulen != n and not (ulen == 0 and n > 0xFFFF):
                hit("truncated", no)
                return
            if check_cs and ucs and not l4_ok(buf, a, b, addrs + 17 + n):
                hit("inner-l4-checksum", no)
            if dp in ports:
                vxlan(buf, a + 8, b, complete, no, depth + 1, src, ipv6, dp)
        elif proto == 6:
            if n < 20:
                hit("truncated", no)
            elif check_cs and not l4_ok(buf, a, b, addrs + 6 + n):
                hit("inner-l4-checksum", no)
        elif proto == 58:
            if n < 4:
                hit("truncated", no)
            elif check_cs and not l4_ok(buf, a, b, addrs + 58 + n):
                hit("inner-l4-checksum", no)
        elif proto == 1 or proto == 2:  # ICMP, IGMP: no pseudo-header
            if n < 4:
                hit("truncated", no)
            elif check_cs and not l4_ok(buf, a, b, 0):
                hit("inner-l4-checksum", no)

    def inner_ip6(buf, q, end, complete, no, depth, mtu):
        if q + 40 > end:
            hit("truncated", no)
            return 0
        _, plen, nh, _, src, dst = IP6(buf, q + 2)
        if plen == 0 and complete:
            plen = end - q - 40  # jumbogram / BIG TCP: length from the frame
        tlen = 40 + plen
        if tlen > mtu:
            hit("inner-too-big", no)
        l3end = q + tlen
        if l3end > end:
            if complete or (nh in L4_HEADER and q + 40 + L4_HEADER[nh] > end):
                hit("truncated", no)
            return tlen
        a = q + 40
        while nh in IPV6_SKIPPABLE:
            if a + 8 > l3end:
                hit("truncated", no)
                return tlen
            if nh == 43:
                return tlen  # routing header: the pseudo-header's destination is elsewhere
            nh = buf[a]
            a += (buf[a + 1] + 1) << 3
        if nh == IPV6_FRAGMENT:
            return tlen
        if a > l3end:  # the last extension header's length runs past the payload length
            hit("truncated", no)
            return tlen
        inner_l4(buf, nh, a, l3end, src, fb(buf[q + 8:q + 40]) if check_cs else 0,
                 no, depth, True, complete)
        return tlen

    def vxlan(buf, v, end, complete, no, depth, osrc, ipv6, dport):
        """The VXLAN header at v and the inner frame it carries; returns the inner L3 length."""
        if depth > MAX_NESTING:
            hit("nesting-too-deep", no)
            return 0
        if v + 42 <= end:  # the usual case: header, inner Ethernet and IPv4 in one call
            w0, w1, smac, et, vhl, _, tlen, _, frag, _, proto, _, src, _ = VX_ETH_IP4(buf, v)
        elif v + 8 <= end:
            w0, w1 = VXH(buf, v)
            smac = None
        else:
            hit("truncated", no)
            return 0
        if w0 != 0x08000000 or w1 & 0xFF:
            if not w0 & 0x08000000:
                hit("vxlan-flags", no)
            if w0 & 0xF7FFFFFF or w1 & 0xFF:
                hit("vxlan-reserved", no)
        vni = w1 >> 8
        if depth == 1:
            vni_counts[vni] = vni_counts.get(vni, 0) + 1
        if vni not in vnis_ok:
            hit("vni-mismatch", no)
        if dport == legacy_port:
            hit("legacy-port", no)
        # The inner Ethernet frame.
        e = v + 8
        if smac is None:
            if e + 14 > end:
                hit("truncated", no)
                return 0
            smac, et = ETH_SRC_TYPE(buf, e)
            vhl = -1
        if not smac[0] & 1:  # a unicast source MAC: which VTEP is it behind?
            key = (vni, smac)
            if macs.get(key) != osrc:
                if key in macs:
                    hit("mac-move", no)
                macs[key] = osrc
        q = e + 14
        if et in VLAN_TPIDS:
            vhl = -1
            hit("inner-vlan", no)
            while et in VLAN_TPIDS:
                if q + 4 > end:
                    hit("truncated", no)
                    return 0
                (et,) = U16(buf, q + 2)
                q += 4
        mtu = mtu6 if ipv6 else mtu4
        if et == ETH_IPV4:
            if vhl < 0:
                if q + 20 > end:
                    hit("truncated", no)
                    return 0
                vhl, _, tlen, _, frag, _, proto, _, src, _ = IP4(buf, q)
            ihl = (vhl & 15) << 2
            if ihl < 20 or q + ihl > end:
                hit("truncated", no)
                return 0
            if tlen == 0 and complete:
                tlen = end - q  # Linux BIG TCP: tot_len 0 above 64 KiB, length from the frame
            if tlen > mtu:
                hit("inner-too-big", no)
            if check_cs and fb(buf[q:q + ihl]) % M:
                hit("inner-ip-checksum", no)
            l3end = q + tlen
            if tlen < ihl or (complete and l3end > end):
                hit("truncated", no)
            elif frag & 0x3FFF:
                pass  # an inner fragment: no whole L4 segment to check
            elif l3end <= end:
                if check_cs or proto == 17:
                    inner_l4(buf, proto, q + ihl, l3end, src,
                             fb(buf[q + 12:q + 20]) if check_cs else 0,
                             no, depth, False, complete)
                elif l3end - q - ihl < L4_HEADER.get(proto, 0):
                    hit("truncated", no)
            elif q + ihl + L4_HEADER.get(proto, 0) > end:
                hit("truncated", no)  # the snap length cut into the L4 header
            return tlen
        if et == ETH_IPV6:
            return inner_ip6(buf, q, end, complete, no, depth, mtu)
        if et == ETH_ARP:
            if q + 8 > end or q + 8 + 2 * (buf[q + 4] + buf[q + 5]) > end:
                hit("truncated", no)
            return 0
        hit("unknown-inner-type", no)
        return 0

    def decode_batch(buf, records, no):
        """Decode a batch of (start, end, orig_len, linktype) records numbered from no + 1.

        Returns how many were VXLAN.
        """
        vx = 0
        for p, end, orig, lt in records:
            no += 1
            try:
                if lt == LINKTYPE_ETHERNET and p + 42 <= end:
                    # The usual case: Ethernet, IPv4 and UDP headers in one call.
                    (et, vhl, _, tlen, ident, frag, _, proto, _, src, dst,
                     sp, dp, ulen, ucs) = ETH_IP4_UDP(buf, p)
                    q = p + 14
                else:
                    et = 0
                if et == ETH_IPV4:
                    pass
                elif lt == LINKTYPE_ETHERNET:
                    vhl = -1
                    if p + 14 > end:
                        continue
                    (et,) = U16(buf, p + 12)
                    q = p + 14
                    while et in VLAN_TPIDS and q + 4 <= end:
                        (et,) = U16(buf, q + 2)
                        q += 4
                elif lt == LINKTYPE_LINUX_SLL2:
                    vhl = -1
                    if p + 20 > end:
                        continue
                    (et,) = U16(buf, p)
                    q = p + 20
                elif lt == LINKTYPE_LINUX_SLL:
                    vhl = -1
                    if p + 16 > end:
                        continue
                    (et,) = U16(buf, p + 14)
                    q = p + 16
                else:  # raw IP: the version nibble says which
                    vhl = -1
                    if p >= end:
                        continue
                    ver = buf[p] >> 4
                    et = ETH_IPV4 if ver == 4 and lt != LINKTYPE_IPV6 else (
                        ETH_IPV6 if ver == 6 and lt != LINKTYPE_IPV4 else 0)
                    q = p
                missing = orig - (end - p)  # bytes cut by the snap length
                complete = missing <= 0
                wire_l3 = end - q if complete else end - q + missing
                if et == ETH_IPV4:
                    if vhl >= 0:
                        pass  # already unpacked with the Ethernet header
                    elif q + 28 <= end:
                        (vhl, _, tlen, ident, frag, _, proto, _, src, dst,
                         sp, dp, ulen, ucs) = IP4_UDP(buf, q)
                    elif q + 20 <= end:
                        vhl, _, tlen, ident, frag, _, proto, _, src, dst = IP4(buf, q)
                        dp = -1
                    else:
                        continue
                    if proto != 17 or not 0x45 <= vhl <= 0x4F:  # RFC 791: version 4, IHL >= 5
                        continue
                    if frag & 0x1FFF:  # a later fragment: VXLAN only if its first fragment was
                        if later_fragment((src, dst, ident), frag & 0x2000, no, src, dst, orig):
                            vx += 1
                        continue
                    ihl = (vhl & 15) << 2
                    u = q + ihl
                    if ihl != 20:  # IP options: the UDP header is further on
                        if u + 8 > end:
                            continue
                        sp, dp, ulen, ucs = UDP(buf, u)
                    if dp not in ports:
                        continue
                    ipv6 = False
                    if tlen == 0:
                        tlen = wire_l3  # Linux BIG TCP: tot_len 0 above 64 KiB, length from the frame
                    fragment = frag & 0x2000
                    if fragment:
                        fragment = (src, dst, ident)
                    if not frag & 0x4000:
                        hit("df-clear", no)
                    if check_cs and fb(buf[q:q + ihl]) % M:
                        hit("ip-checksum", no)
                elif et == ETH_IPV6:
                    if q + 40 > end:
                        continue
                    _, plen, nh, _, src, dst = IP6(buf, q + 2)
                    u = q + 40
                    fragment = later = None
                    routed = False
                    while nh != 17 and u + 8 <= end:
                        if nh in IPV6_SKIPPABLE:
                            if nh == 43 and buf[u + 3]:
                                routed = True  # segments left: dst is not the final destination
                            nh = buf[u]
                            u += (buf[u + 1] + 1) << 3
                        elif nh == IPV6_FRAGMENT:
                            nh = buf[u]
                            (fo,) = U16(buf, u + 2)
                            key = (src, dst, bytes(buf[u + 4:u + 8]))
                            u += 8
                            if fo & 0xFFF8:  # a later fragment
                                later = fo & 1
                                break
                            if fo & 1:
                                fragment = key
                        else:
                            break
                    if later is not None:
                        if later_fragment(key, later, no, src, dst, orig):
                            vx += 1
                        continue
                    if nh != 17 or u + 8 > end:
                        continue
                    sp, dp, ulen, ucs = UDP(buf, u)
                    if dp not in ports:
                        continue
                    ipv6 = True
                    if not ucs:
                        hit("udp-zero-checksum-ipv6", no)
                    elif routed:
                        # RFC 8200 section 8.1: the pseudo-header holds the final destination,
                        # which a routing header with segments left keeps elsewhere (and where
                        # depends on its type): the checksum is not verified
                        ucs = 0
                    if plen == 0:
                        plen = wire_l3 - 40  # jumbogram / BIG TCP: length from the frame
                    tlen = 40 + plen
                else:
                    continue
                # VXLAN from here on: the outer UDP datagram at u.
                if fragment:
                    # RFC 7348 section 4.3: VTEPs must not fragment. The UDP length of
                    # the first fragment tells how long the whole datagram was.
                    hit("outer-fragment", no)
                    if len(frags) >= MAX_FRAGMENT_KEYS:
                        del frags[next(iter(frags))]
                    frags[fragment] = True
                    if u - q + ulen > umtu:
                        hit("outer-too-big", no)
                    complete = False
                elif tlen > umtu:
                    hit("outer-too-big", no)
                l3end = q + tlen
                if tlen > wire_l3 or l3end < u + 8:
                    hit("truncated", no)
                    complete = False
                    l3end = q + wire_l3
                if ulen == 0 and l3end - u > 0xFFFF:
                    ulen = l3end - u  # jumbogram (RFC 2675) / GSO: length from the IP layer
                ue = u + ulen
                if not fragment and (ulen < 8 or ue != l3end):
                    hit("truncated", no)
                    complete = False
                    if ue > l3end or ulen < 8:
                        ue = l3end
                last[0] = -1  # nothing summed yet for this packet
                stop = ue if ue < end else end
                if l3end < stop:
                    stop = l3end
                inner = vxlan(buf, u + 8, stop, complete and ue <= stop, no, 1, src, ipv6, dp)
                if check_cs and ucs and complete and ue <= end:
                    pseudo = fb(src) + fb(dst) + 17 + ulen
                    a, b, r = last
                    if u + 8 <= a and b <= ue:
                        # RFC 1071 sums commute: reuse the inner L4 sum, weighting each
                        # part by the parity of the bytes that follow it.
                        tail = ue - b
                        s = (fb(buf[u:a]) * _w(tail + b - a) + r * _w(tail)
                             + fb(buf[b:ue]))
                    else:
                        s = fb(buf[u:ue])
                    if ulen & 1:
                        s <<= 8
                    if (s + pseudo) % M:
                        hit("udp-checksum", no)
                key = (src, dst)
                f = flows.get(key)
                if f is None:
                    # [packets, bytes, largest inner L3, both ends are plan nodes]
                    flows[key] = f = [0, 0, 0, plan_nodes is not None
                                      and src in plan_nodes and dst in plan_nodes]
                if plan_nodes:  # the outermost layer only: nested VXLAN is no plan's traffic
                    if u + 22 <= stop:
                        w1, dmac = VNI_DMAC(buf, u + 8)
                        # f[3]: both ends are nodes. A MAC that is no VTEP MAC (broadcast,
                        # multicast, a pod behind a bridge) names no node in the fdb (get
                        # returns dst): any node will do.
                        if (not f[3] or plan_fdb.get(dmac, dst) != dst or dp != plan_port
                                or w1 >> 8 != plan_vni):
                            hit("plan-mismatch", no)
                    elif (not f[3] or dp != plan_port  # the header is cut: truncated fired
                          or (u + 16 <= stop and U32(buf, u + 12)[0] >> 8 != plan_vni)):
                        hit("plan-mismatch", no)
                f[0] += 1
                f[1] += orig
                if inner > f[2]:
                    f[2] = inner
                vx += 1
            except net:
                # A bound the checks above missed: the bytes ran out under a
                # header. Count it as truncated and go on with the next packet.
                hit("truncated", no)
        return vx

    def later_fragment(key, more, no, src, dst, orig):
        """A non-first outer fragment: VXLAN when its first fragment was."""
        if key not in frags:
            return False
        if not more:
            del frags[key]
        hit("outer-fragment", no)
        if type(key[2]) is int:  # IPv4 (its ident is an int): DF is clear on any fragment
            hit("df-clear", no)
        f = flows.get((src, dst))
        if f is not None:
            f[0] += 1
            f[1] += orig
        return True

    return decode_batch
