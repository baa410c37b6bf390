"""--plan: what the outermost VXLAN layer of each packet is held against.

The plan (vtep.plan) says which hosts are VTEPs (the nodes' underlay IPs),
which VNI and UDP port they use, and, through the fdb every node holds
(vtep.state.peer_entries: peer VTEP MAC -> peer underlay IP), where a frame for
a given inner destination MAC must be sent. `PlanCheck` turns that into a
frozenset and a dict of packed bytes once; the decoder (decode.make_decoder)
calls its `mismatch` for the outermost VXLAN layer of every packet when --plan
is given. Whether both ends of a flow are nodes is decided once per flow (its
record in Tally.flows), so a planned packet costs one call, one unpack, one dict
lookup and three comparisons, and a packet without --plan one falsy test.

plan-mismatch fires on a VXLAN packet whose
- outer source is not a node's underlay IP, or
- outer destination is not a node's underlay IP, or is not the node the fdb
  names for the inner destination MAC when that MAC is a node's VTEP MAC
  (a broadcast/multicast MAC, e.g. an ARP request, or a unicast MAC that is no
  VTEP's, e.g. a pod behind a node's bridge, names no node: any node will do), or
- VNI or UDP destination port is not the plan's.
"""
from __future__ import annotations

import struct

U32 = struct.Struct("!I").unpack_from
VNI_DMAC = struct.Struct("!4xI6s").unpack_from  # VXLAN word 2 and the inner destination MAC


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class PlanCheck:
    """One plan, read for the decoder.

    nodes: frozenset of packed underlay IPs; fdb: VTEP MAC bytes -> packed
    underlay IP of its node (plan MACs are unicast: vtep.plan rejects others).
    """

    def __init__(self, plan):
        self.nodes = frozenset(n.underlay_ip.packed for n in plan.nodes)
        self.fdb = {mac_bytes(n.vtep_mac): n.underlay_ip.packed for n in plan.nodes}
        self.vni = plan.vni
        self.port = plan.port

    def mismatch(self, buf, v: int, stop: int, both: bool, dst: bytes, dport: int) -> bool:
        """Does the VXLAN layer at v (captured up to `stop`) break the plan? `both`: the
        flow's two ends are nodes; `dst`: its outer destination; `dport`: its UDP port."""
        if v + 14 <= stop:
            w1, dmac = VNI_DMAC(buf, v)
            # A MAC that is no VTEP MAC (broadcast, multicast, a pod behind a bridge)
            # names no node in the fdb (get returns dst): any node will do.
            return (not both or self.fdb.get(dmac, dst) != dst or dport != self.port
                    or w1 >> 8 != self.vni)
        # the header is cut (truncated fired): what is there is held against the plan
        return (not both or dport != self.port
                or (v + 8 <= stop and U32(buf, v + 4)[0] >> 8 != self.vni))


def node_names(plan) -> dict[bytes, str]:
    """Packed underlay IP -> node name (for the report's flows)."""
    return {n.underlay_ip.packed: n.name for n in plan.nodes}
