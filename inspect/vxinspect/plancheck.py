"""--plan: what the outermost VXLAN layer of each packet is held against.

The plan (vtep.plan) says which hosts are VTEPs (the nodes' underlay IPs),
which VNI and UDP port they use, which pod subnets each node owns in the
overlay's families (IPv4 `subnet` in `overlay`, IPv6 `subnet6` in `overlay6`),
and, through the fdb every node holds (vtep.state.peer_entries: peer VTEP MAC
-> peer underlay IP), where a frame for a given inner destination MAC must be
sent. `PlanCheck` turns that into a frozenset, two dicts of packed bytes and
integer ranges once; the decoder (decode.make_decoder) asks `flow` once per
flow (its record in Tally.flows) which nodes its two ends are, and calls
`mismatch` for the outermost VXLAN layer of every packet when --plan is given,
handing it that answer. A planned packet costs one call, one unpack (two for
inner IPv6), one dict lookup and at most a dozen integer comparisons (measured
against the check without inner addresses: +0.14 us a packet with inner IPv4,
+0.23 us with inner IPv6); a packet without --plan one falsy test.

plan-mismatch fires on a VXLAN packet whose
- outer source is not a node's underlay IP, or
- outer destination is not a node's underlay IP, or is not the node the fdb
  names for the inner destination MAC when that MAC is a node's VTEP MAC
  (a broadcast/multicast MAC, e.g. an ARP request, or a unicast MAC that is no
  VTEP's, e.g. a pod behind a node's bridge, names no node: any node will do), or
- VNI or UDP destination port is not the plan's, or
- inner IPv4 or IPv6 packet has a source address inside an overlay (either
  family's) that is not in the subnet of the node that sent it (the outer
  source), or a destination address inside an overlay that is not in the
  subnet of the node it is sent to (the outer destination): each node routes
  only its own pods' subnet to its peers (vtep.state: one route per peer and
  family), and the overlay routes, it does not NAT, so a pod address seen on
  the wrong node's tunnel is a misrouting or a spoof. Addresses outside the
  overlays pass: external traffic a pod talks to, link-local (fe80::/10, e.g.
  neighbour discovery) and multicast are no node's.
The inner addresses are read from an untagged inner frame or one with 802.1Q/
802.1ad tags. A packet cut by the snap length is held by what is whole: the
VXLAN header and inner MAC as far as they go, the inner addresses only when
the inner IP header is whole (truncated fires on the rest).
"""
from __future__ import annotations

import struct

from vtep import inet

from .linktypes import VLAN_HLEN, VLAN_TPIDS

U32 = struct.Struct("!I").unpack_from
VNI_DMAC = struct.Struct("!4xI6s").unpack_from  # VXLAN word 2 and the inner destination MAC
# VXLAN word 2, the inner destination MAC, the inner ethertype (after the source MAC) and,
# should the frame hold IPv4, its source and destination (RFC 791: octets 12 and 16 of
# the header): one unpack for the common case
HEAD = struct.Struct("!4xI6s6xH12xII").unpack_from
HEAD_LEN = 8 + 14 + 20    # VXLAN, inner Ethernet, an IPv4 header without options
U16 = struct.Struct("!H").unpack_from
ADDRS4 = struct.Struct("!II").unpack_from        # IPv4 source and destination (RFC 791)
# IPv6 source and destination (RFC 8200: octets 8 and 24), whole or their upper halves
ADDRS6 = struct.Struct("!QQQQ").unpack_from
UPPER6 = struct.Struct("!Q8xQ").unpack_from

VXLAN_HLEN = 8            # RFC 7348 section 5
INNER_L3 = VXLAN_HLEN + 14   # the inner IP header, from the VXLAN header
V4_ADDRS = 12             # RFC 791: source address at octet 12, destination at 16
V6_ADDRS = 8              # RFC 8200: source address at octet 8, destination at 24
EMPTY = (1, 0)            # a range no address is in (a family the plan does not have)
IP4, IP6 = inet.ETH_P_IP, inet.ETH_P_IPV6    # globals: one lookup, not two
INNER6_END = INNER_L3 + inet.IPV6_HLEN
INNER6_ADDRS = INNER_L3 + V6_ADDRS


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def span(net, shift: int = 0) -> tuple[int, int]:
    """A network as (first, last) address ints (shifted right by `shift`); None -> EMPTY."""
    if net is None:
        return EMPTY
    return int(net.network_address) >> shift, int(net.broadcast_address) >> shift


class PlanCheck:
    """One plan, read for the decoder.

    fdb: VTEP MAC bytes -> packed underlay IP of its node (plan MACs are unicast: vtep.plan rejects others);
    ranges: packed underlay IP -> (first, last) of that node's IPv4 and IPv6
    subnets as ints; over4/over6: the overlays' (first, last). When every IPv6
    prefix of the plan is /64 or shorter (a /64 per node is the default) the
    upper 64 bits of an address decide where it belongs, and IPv6 ranges hold
    only those (upper6): one 64-bit number per address instead of two.
    """

    def __init__(self, plan):
        self.fdb = {mac_bytes(n.vtep_mac): n.underlay_ip.packed for n in plan.nodes}
        self.upper6 = all(net.prefixlen <= 64 for net in
                          [plan.overlay6] + [n.subnet6 for n in plan.nodes] if net is not None)
        shift = 64 if self.upper6 else 0
        self.ranges = {n.underlay_ip.packed: (span(n.subnet), span(n.subnet6, shift))
                       for n in plan.nodes}
        self.over4 = span(plan.overlay)
        self.over6 = span(plan.overlay6, shift)
        self.vni = plan.vni
        self.port = plan.port

    def flow(self, src: bytes, dst: bytes):
        """Once per flow (outer source, destination, packed): None unless both are nodes,
        else what `mismatch` takes: the overlay's first and last address, the source node's
        subnet's first and last, the destination node's first and last (IPv4), then a
        tuple of the same six for IPv6."""
        s = self.ranges.get(src)
        d = self.ranges.get(dst)
        if s is None or d is None:
            return None
        return self.over4 + s[0] + d[0] + (self.over6 + s[1] + d[1],)

    def mismatch(self, buf, v: int, stop: int, flow, dst: bytes, dport: int) -> bool:
        """Does the VXLAN layer at v (captured up to `stop`) break the plan? `flow`: what
        `flow` said of the packet's flow (falsy: an end is no node); `dst`: its outer
        destination; `dport`: its UDP port."""
        if v + HEAD_LEN <= stop:
            w1, dmac, et, s, d = HEAD(buf, v)
            # A MAC that is no VTEP MAC (broadcast, multicast, a pod behind a bridge)
            # names no node in the fdb (get returns dst): any node will do.
            if (not flow or self.fdb.get(dmac, dst) != dst or dport != self.port
                    or w1 >> 8 != self.vni):
                return True
            if et == IP4:
                lo, hi, a, b, c, e, _ = flow
            elif et == IP6 and self.upper6 and v + INNER6_END <= stop:
                s, d = UPPER6(buf, v + INNER6_ADDRS)
                lo, hi, a, b, c, e = flow[6]
            else:   # tagged, IPv6 held by all 128 bits, cut, or no IP
                return self.inner(buf, v + INNER_L3 - 2, stop, flow)
            # in the overlay but before or after the node's subnet (which lies inside it)
            return lo <= s < a or b < s <= hi or lo <= d < c or e < d <= hi
        if v + VXLAN_HLEN + 6 <= stop:   # the inner destination MAC at least
            w1, dmac = VNI_DMAC(buf, v)
            # no inner IP header fits before v + HEAD_LEN: only the outer facts to hold
            return (not flow or self.fdb.get(dmac, dst) != dst or dport != self.port
                    or w1 >> 8 != self.vni)
        # the header is cut (truncated fired): what is there is held against the plan
        return (not flow or dport != self.port
                or (v + 8 <= stop and U32(buf, v + 4)[0] >> 8 != self.vni))

    def inner(self, buf, at: int, stop: int, flow) -> bool:
        """The addresses of the inner IP packet whose ethertype (or first VLAN TPID, then
        the IP packet behind the tags) is at `at`. A header not captured to its end is
        not held (truncated fired)."""
        if at + 2 > stop:
            return False
        et = U16(buf, at)[0]
        while et in VLAN_TPIDS:
            at += VLAN_HLEN
            if at + 2 > stop:
                return False
            et = U16(buf, at)[0]
        ip = at + 2
        if et == IP6:
            if ip + inet.IPV6_HLEN > stop:
                return False
            if self.upper6:
                s, d = UPPER6(buf, ip + V6_ADDRS)
            else:
                sh, sl, dh, dl = ADDRS6(buf, ip + V6_ADDRS)
                s, d = sh << 64 | sl, dh << 64 | dl
            lo, hi, a, b, c, e = flow[6]
        elif et == IP4:
            if ip + inet.IPV4_HLEN > stop:
                return False
            s, d = ADDRS4(buf, ip + V4_ADDRS)
            lo, hi, a, b, c, e, _ = flow
        else:
            return False   # ARP and the rest carry no inner IP packet
        return lo <= s < a or b < s <= hi or lo <= d < c or e < d <= hi


def node_names(plan) -> dict[bytes, str]:
    """Packed underlay IP -> node name (for the report's flows)."""
    return {n.underlay_ip.packed: n.name for n in plan.nodes}
