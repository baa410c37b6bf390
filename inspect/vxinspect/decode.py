"""The per-packet decoder: a fast path for the common packet, helpers for the rest.

This is the hot loop of vxinspect, in the shape of the userspace data path's
receive loop (vtep.datapath.Datapath.rx_batch, whose one comparison passes a good
datagram while rx_reason works out a drop's reason only on the drop path). Read
`decode_batch` first: per packet it goes through four stages.

1. Outer headers. One unpack reads Ethernet, IPv4 and UDP; a packet of the
   common shape (untagged Ethernet, IPv4 without options, UDP, not a fragment,
   a total length, not cut by the snap length) is checked inline. Any other
   packet goes to outer.Outer, which handles the other link types (linktypes),
   IPv4 options, IPv6 and its extension headers (ipv6ext) and fragments
   (fragments), and answers with the same values.
2. The UDP datagram's lengths, held against the IP packet's: inline for all.
3. The VXLAN layer. One unpack reads the VXLAN header, the inner Ethernet and
   IPv4 headers; the common layer (a clean header, inner IPv4 without options,
   not a fragment, whole) is checked inline, its TCP or ICMP checksum too. Any
   other layer, and inner UDP with the VXLAN nested in it, goes to inner.Inner.
4. The outer UDP checksum (reusing the inner L4 sum), the flow's counters, and
   with --plan the plan check (plancheck.PlanCheck): inline for all.

Checksums are not summed in the loop: with --checksums (the default) every
verification is queued as byte ranges and a small constant (the pseudo-header)
in batchsum.Pending, whose lists the loop extends once per verification (the
common layer's inner IPv4 header, L4 and outer UDP checksums in one entry; a
packet common from end to end is one "fast" entry of two ints, its number and
start, whose ranges and constants the summer reads back from the bytes), and
a slice of SLICE packets at a time is summed with numpy (batchsum.range_sums);
the failures fire at the end of the batch, merged in packet order, so that the
report is the one per-packet sums give. With a batchsum.Worker (a large
regular file) the batch's queues go to that process instead and its failures
fire, in the same order, as they come back. The slow paths still sum their
rare packets on the spot but report a failure through the same queue.

Everything else is struct and integer arithmetic (no scapy, no objects per
packet), bound as closure locals. A fired check is recorded with Tally.hit,
which counts each check at most once per packet. The fast path takes only
packets whose every byte it reads was captured, so that it never needs the
safety net.

Truncation model: `end` is the end of the captured bytes of a region;
`complete` says whether the region also holds every byte the headers promise
(not cut by the snap length, not an outer fragment). Headers that run past
`end` fire `truncated`; length fields and checksums are only held against the
bytes when the region is complete.
"""
from __future__ import annotations

import struct

from vtep import inet, wire

from .capture import LINKTYPE_ETHERNET
from .fragments import Fragments
from .inner import L4_HEADER, Inner
from .outer import V4_NO_OPTIONS, Outer
from .plancheck import PlanCheck

# The common packet's headers in two unpacks, only the fields the checks read (one
# unpack is ~100 ns): Ethernet, IPv4 and UDP (EtherType, version/IHL, total length,
# flags/offset, protocol, addresses, destination port, length, checksum) ...
ETH_IP4_UDP = struct.Struct("!12xHBxH2xHxB2x4s4s2xHHH")
# ... then VXLAN, Ethernet and IPv4 (the two header words, source MAC, EtherType,
# version/IHL, total length, flags/offset, protocol, both addresses as one number: the
# pseudo-header's address sum modulo 0xFFFF)
VX_ETH_IP4 = struct.Struct("!II6x6sHBxH2xHxB2xQ")
SLICE = 1024  # packets walked between two sums of the queued checksums (batchsum)
M = 0xFFFF  # ones'-complement sums (RFC 1071) are sums modulo 0xFFFF


def make_decoder(opts, tally, safety_net: bool = True, series=None, worker=None):
    """Return decode_batch(buf, records, first_number - 1) -> VXLAN packets in the batch.

    With `series` (--plot: plot.Recorder.packet), series(no, outer IP length, inner
    L3 length, vxlan) is called once for every VXLAN packet, and for every packet
    the safety net caught; without it the loop pays one falsy test per VXLAN packet.

    With safety_net (the default), a struct.error or IndexError that a bound check
    missed counts as `truncated` and the batch goes on; without it the exception
    escapes, which is how the fuzz tests (tests/test_fuzz.py) see a missed bound.
    The choice costs nothing per packet: an except clause's tuple is only looked at
    when something was raised, and () matches nothing.

    With `worker` (batchsum.Worker) the queued checksums are summed in that process;
    the driver then sets `decode_batch.pending.base` to each batch's file offset and
    calls `decode_batch.pending.drain()` before it reads the tally. `pending` is
    None without checksums.
    """
    net = (struct.error, IndexError) if safety_net else ()
    ports = opts.ports
    vnis_ok = opts.vnis
    check_cs = opts.checksums
    umtu = opts.underlay_mtu
    mtu4 = opts.mtu if opts.mtu is not None else wire.overlay_mtu(umtu, ipv6=False)
    mtu6 = opts.mtu if opts.mtu is not None else wire.overlay_mtu(umtu, ipv6=True)
    hit = tally.hit
    vni_counts = tally.vnis
    flows = tally.flows
    macs = tally.macs
    fb = int.from_bytes
    # The last L4 region the slow path summed ([a, b), residue): the outer UDP
    # checksum covers it again and reuses the sum instead of reading the bytes twice.
    last = [-1, 0, 0]
    # Checksums are queued and summed a slice of the batch at a time with numpy
    # (batchsum): the common layer's three in one entry, the others one by one.
    # The slow paths, each run only for the packets that need it; with checksums
    # their checksum failures go through the queue too, so that every check fires
    # in packet order.
    fragments = Fragments(tally)
    outer_paths = Outer(opts, tally, fragments)
    outer = outer_paths.parse
    slow_inner = Inner(opts, tally, last, mtu4, mtu6)
    if check_cs:
        from .batchsum import INNER_IP_CS, IP_CS, Pending  # numpy: only when summing

        pending = Pending(hit, worker)
        sq_extend = pending.simple.extend
        cq_extend = pending.combined.extend
        uq_extend = pending.udp.extend
        fq_extend = pending.fast.extend
        flush = pending.flush
        submit = pending.submit
        outer_paths.hit = slow_inner.hit = pending.routed_hit(hit)
    else:
        pending = None
    layer = slow_inner.layer
    inner_l4 = slow_inner.l4
    # --plan: its nodes, or None so that without a plan the loop pays one falsy test
    # per VXLAN packet.
    plan = PlanCheck(opts.plan) if opts.plan is not None else None
    check_plan = plan is not None   # --plan: one falsy test per packet without it
    # Constants as locals.
    ethernet = LINKTYPE_ETHERNET
    ipv4 = inet.ETH_P_IP
    v4_plain = V4_NO_OPTIONS
    udp, tcp, icmp, igmp = inet.IPPROTO_UDP, inet.IPPROTO_TCP, inet.IPPROTO_ICMP, \
        inet.IPPROTO_IGMP
    tcp_min, icmp_min = L4_HEADER[tcp], L4_HEADER[icmp]
    not_whole = inet.IP_MF | inet.IP_OFFMASK  # a fragment, first or later
    df = inet.IP_DF
    flags_i = wire.FLAGS_WORD_I
    vni_reserved = wire.VNI_WORD_RESERVED
    legacy_port = wire.VXLAN_PORT_LINUX_LEGACY
    outer_len = ETH_IP4_UDP.size                # 42
    ip_at = wire.ETH_HLEN                       # 14
    v4_hlen = inet.IPV4_HLEN
    udp_at = ip_at + v4_hlen                    # 34
    uhl = inet.UDP_HLEN
    inner_len = VX_ETH_IP4.size                 # 42: VXLAN 8, Ethernet 14, IPv4 20
    inner_ip_at = wire.HEADER_LEN + wire.ETH_HLEN   # 22
    inner_src_at = inner_ip_at + 12             # the inner IPv4 source address
    outer_unpack = ETH_IP4_UDP.unpack_from
    inner_unpack = VX_ETH_IP4.unpack_from

    def decode_batch(buf, records, no):
        """Decode a batch of (start, end, orig_len, linktype) records numbered from no + 1.

        Returns how many were VXLAN.
        """
        if not check_cs:
            return walk(buf, records, no, 0)
        vx = 0
        try:
            if len(records) <= SLICE:
                return walk(buf, records, no, 0)
            # In slices: the queues stay short and a slice's bytes are summed soon
            # after they were read (measured a few per cent faster than one sum
            # per 4 MiB batch).
            for i in range(0, len(records), SLICE):
                vx = walk(buf, records[i:i + SLICE], no + i, vx)
                submit(buf)
            return vx
        finally:
            flush(buf)  # the queued checksums, summed while buf still holds this batch

    def walk(buf, records, no, vx):
        combo = -1  # the common layer's L4 protocol while its combined entry waits
        plain = False  # the inline outer IPv4 header's checksum waits for step 4
        for p, end, orig, lt in records:
            no += 1
            try:
                # 1. Outer headers: the common shape inline, the rest in outer.Outer.
                if lt == ethernet and p + outer_len <= end:
                    et, vhl, tlen, frag, proto, src, dst, dp, ulen, ucs = outer_unpack(buf, p)
                else:
                    et = 0
                if (et == ipv4 and vhl == v4_plain and proto == udp and not frag & not_whole
                        and tlen and orig <= end - p):
                    if dp not in ports:
                        continue
                    q = p + ip_at
                    u = p + udp_at
                    wire_l3 = end - q
                    complete = True
                    fragment = ipv6 = False
                    if not frag & df:
                        hit("df-clear", no)
                    # its header checksum is queued in step 4: alone, or within a fast
                    # entry when the whole packet turns out common
                    plain = check_cs
                else:
                    plain = False
                    o = outer(buf, p, end, orig, lt, no)
                    if o is None:
                        continue
                    if o is True:  # a later fragment of a VXLAN datagram
                        vx += 1
                        if series is not None:
                            series(no, -1, -1, True)  # its length is the first fragment's
                        continue
                    q, u, src, dst, dp, ulen, ucs, tlen, wire_l3, complete, fragment, ipv6 = o
                # 2. The UDP datagram at u, its length against the IP packet's.
                if fragment:
                    # RFC 7348 section 4.3: VTEPs must not fragment. The UDP length of
                    # the first fragment tells how long the whole datagram was.
                    fragments.first(fragment, no)
                    if u - q + ulen > umtu:
                        hit("outer-too-big", no)
                    complete = False
                elif tlen > umtu:
                    hit("outer-too-big", no)
                l3end = q + tlen
                if tlen > wire_l3 or l3end < u + uhl:
                    hit("truncated", no)
                    complete = False
                    l3end = q + wire_l3
                if ulen == 0 and l3end - u > 0xFFFF:
                    ulen = l3end - u  # jumbogram (RFC 2675) / GSO: length from the IP layer
                ue = u + ulen
                if not fragment and (ulen < uhl or ue != l3end):
                    hit("truncated", no)
                    complete = False
                    if ue > l3end or ulen < uhl:
                        ue = l3end
                last[0] = -1  # nothing summed yet for this packet
                stop = ue if ue < end else end
                if l3end < stop:
                    stop = l3end
                # 3. The VXLAN layer: the common one inline, any other in inner.Inner.
                v = u + uhl
                if v + inner_len <= stop:
                    w0, w1, smac, iet, ivhl, itlen, ifrag, iproto, iaddrs = inner_unpack(buf, v)
                    b = v + inner_ip_at + itlen  # the inner IPv4 packet's end
                    common = (w0 == flags_i and not w1 & vni_reserved and iet == ipv4
                              and ivhl == v4_plain and itlen >= v4_hlen
                              and b <= stop and not ifrag & not_whole)
                else:
                    common = False
                if common:
                    vni = w1 >> 8
                    vni_counts[vni] = vni_counts.get(vni, 0) + 1
                    if vni not in vnis_ok:
                        hit("vni-mismatch", no)
                    if dp == legacy_port:
                        hit("legacy-port", no)
                    if not smac[0] & 1:  # a unicast source MAC: which VTEP is it behind?
                        key = (vni, smac)
                        if macs.get(key) != src:
                            if key in macs:
                                hit("mac-move", no)
                            macs[key] = src
                    inner = itlen
                    if itlen > (mtu6 if ipv6 else mtu4):
                        hit("inner-too-big", no)
                    a = v + inner_len  # the inner L4 header
                    n = b - a
                    if iproto == tcp or iproto == icmp or iproto == igmp:
                        if n < (tcp_min if iproto == tcp else icmp_min):
                            hit("truncated", no)
                            if check_cs:
                                sq_extend((INNER_IP_CS, no, v + inner_ip_at, a, 0))
                        elif check_cs:
                            # The inner IPv4 header and L4 checksums (and the outer UDP
                            # one below) go in one combined entry, queued in step 4.
                            # ICMP and IGMP have no pseudo-header.
                            combo = iproto  # the L4 constant only if step 4 needs it
                    elif check_cs or iproto == udp:
                        if check_cs:
                            sq_extend((INNER_IP_CS, no, v + inner_ip_at, a, 0))  # inner UDP may carry VXLAN: nested
                        isrc = v + inner_src_at
                        inner_l4(buf, iproto, a, b, bytes(buf[isrc:isrc + 4]),
                                 iaddrs if check_cs else 0, no, 1, False, complete and ue <= stop)
                    elif n < L4_HEADER.get(iproto, 0):
                        hit("truncated", no)
                else:
                    inner = layer(buf, v, stop, complete and ue <= stop, no, 1, src, ipv6, dp)
                # 4. The outer UDP checksum, the flow, the plan.
                if combo >= 0:
                    if plain and ucs and complete:
                        # The common packet, whole (so b <= ue <= end): its number and
                        # start say it all, the summer reads the rest from the bytes
                        # (batchsum.fast_entries) -- two ints instead of twelve.
                        fq_extend((no, p))
                    else:
                        if plain:
                            sq_extend((IP_CS, no, q, u, 0))
                        combo = (iaddrs + tcp + n) % M if combo == tcp else 0
                        if ucs and complete and b <= ue <= end:
                            cq_extend((no, u, a, b, ue, combo,
                                       (fb(src, "big") + fb(dst, "big") + udp + ulen) % M))
                        else:
                            cq_extend((no, -1, a, b, b, combo, 0))
                    combo = -1
                    plain = False
                else:
                    if plain:
                        sq_extend((IP_CS, no, q, u, 0))
                        plain = False
                    if check_cs and ucs and complete and ue <= end:
                        pseudo = fb(src, "big") + fb(dst, "big") + udp + ulen
                        a, b, r = last
                        if v <= a and b <= ue:
                            # RFC 1071 sums commute: reuse the inner L4 sum (summed by
                            # the slow path; its residue r is end-aligned), weighting
                            # each part by the parity of the bytes before it (256 when
                            # odd).
                            wa = 256 if (a - u) & 1 else 1
                            uq_extend((no, u, a, b, ue, 256 if (b - u) & 1 else 1,
                                       (pseudo + (r << 8 if (b - a) & 1 else r) * wa) % M))
                        else:
                            uq_extend((no, u, ue, ue, ue, 1, pseudo % M))
                key = (src, dst)
                f = flows.get(key)
                if f is None:
                    # [packets, bytes, largest inner L3, the plan's view of its two
                    # ends: PlanCheck.flow, falsy unless both are nodes]
                    flows[key] = f = [0, 0, 0, check_plan and plan.flow(src, dst)]
                # the outermost layer only: nested VXLAN is no plan's traffic
                if check_plan and plan.mismatch(buf, v, stop, f[3], dst, dp):
                    hit("plan-mismatch", no)
                f[0] += 1
                f[1] += orig
                if inner > f[2]:
                    f[2] = inner
                vx += 1
                if series is not None:
                    series(no, tlen, inner, True)
            except net:
                # A bound the checks above missed: the bytes ran out under a
                # header. Count it as truncated and go on with the next packet.
                hit("truncated", no)
                if plain:  # the outer header was whole: its checksum still counts
                    sq_extend((IP_CS, no, p + ip_at, p + udp_at, 0))
                    plain = False
                # (combo is never pending here: nothing between setting it and queueing
                # its entry in step 4 reads bytes)
                if series is not None:  # it may have counted a VNI before it fell
                    series(no, -1, -1, False)
        return vx

    decode_batch.pending = pending
    return decode_batch
