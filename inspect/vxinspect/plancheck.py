"""--plan: what the outermost VXLAN layer of each packet is held against.

The plan (vtep.plan) says which hosts are VTEPs (the nodes' underlay IPs),
which VNI and UDP port they use, and, through the fdb every node holds
(vtep.state.peer_entries: peer VTEP MAC -> peer underlay IP), where a frame for
a given inner destination MAC must be sent. `plan_tables` turns that into a
frozenset and a dict of packed bytes that the decoder (decode.make_decoder)
binds as closure locals. Whether both ends of a flow are nodes is decided once
per flow (its record in Tally.flows), so a planned packet costs one unpack, one
dict lookup and three comparisons, and a packet without --plan one falsy test.

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


def plan_tables(plan):
    """(nodes, fdb, vni, port) for the decoder; (None, None, 0, 0) without a plan.

    nodes: frozenset of packed underlay IPs; fdb: VTEP MAC bytes -> packed
    underlay IP of its node (plan MACs are unicast: vtep.plan rejects others).
    """
    if plan is None:
        return None, None, 0, 0
    nodes = frozenset(n.underlay_ip.packed for n in plan.nodes)
    fdb = {mac_bytes(n.vtep_mac): n.underlay_ip.packed for n in plan.nodes}
    return nodes, fdb, plan.vni, plan.port


def node_names(plan) -> dict[bytes, str]:
    """Packed underlay IP -> node name (for the report's flows)."""
    return {n.underlay_ip.packed: n.name for n in plan.nodes}
