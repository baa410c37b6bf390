"""The seed cluster plus a third node running Open vSwitch (the interop suite's lab).

    network-1 (vtep)   eth0 192.168.1.138/24 ---- eth1 router
    network-2 (vtep)   eth0 192.168.2.142/24 ---- eth2 router
    network-3 (OVS)    eth0 192.168.3.33/24  ---- eth3 router 192.168.3.1/24
                       pods 172.2.2.0/24: VTEP address 172.2.2.0 on OVS's br-ovl

The plan is the seed's plus network-3 (so the vtep nodes have it as a peer: its fdb
entry, neighbour and route, and the userspace path's source allowlist); network-3's
Open vSwitch is configured from the same plan (ovs_node()). The vtep nodes run the
lab's modes: kernel on both, userspace on both, or mixed (kernel on network-1,
userspace on network-2), as vtep.lab.lab.node_mode says.
"""
from __future__ import annotations

import ipaddress

from vtep import plan as planlib
from vtep.lab import seed
from vtep.lab.lab import MODES, NODES, node_mode
from vtep.lab.seed import SEED
from vtep.lab.topology import Topology

from ovspeer import OvsNode, Tunnel

OVS_NODE = "network-3"
OVS_SUBNET = "172.2.2.0/24"
OVS_IF, OVS_ADDR, OVS_ROUTER_IF, OVS_ROUTER_ADDR = "eth0", "192.168.3.33/24", "eth3", \
    "192.168.3.1/24"
VTEP_NODES = NODES                       # ("network-1", "network-2")
ROUTER_IF = {n.name: n.router_if for n in SEED.nodes} | {OVS_NODE: OVS_ROUTER_IF}

__all__ = ["MODES", "OVS_NODE", "VTEP_NODES", "node_mode", "plan_text", "topology",
           "ovs_node", "tunnel_port", "underlay_ip"]


def underlay_ip(name: str) -> str:
    if name == OVS_NODE:
        return seed.address(OVS_ADDR)
    return seed.underlay_ips()[name]


def plan_text(extra_cluster: str = "") -> str:
    """The seed plan with network-3 added (and `extra_cluster` lines in [cluster])."""
    text = seed.plan_text()
    if extra_cluster:
        text = text.replace("[cluster]\n", "[cluster]\n" + extra_cluster.rstrip() + "\n", 1)
    return text + (f'\n[[nodes]]\nname = "{OVS_NODE}"\nunderlay_ip = "{underlay_ip(OVS_NODE)}"\n'
                   f'subnet = "{OVS_SUBNET}"\n')


def topology(prefix: str) -> Topology:
    """The seed topology and network-3 on a third router link (tx checksum offload off on
    every veth, as the seed's: a veth otherwise leaves checksums unfilled)."""
    t = seed.topology(prefix)
    n3 = t.add_node(OVS_NODE)
    t.add_link(n3, t[SEED.router], OVS_IF, OVS_ROUTER_IF, OVS_ADDR, OVS_ROUTER_ADDR,
               tx_offload=False, a_mac=seed.mac(OVS_ADDR), b_mac=seed.mac(OVS_ROUTER_ADDR))
    net3 = str(ipaddress.ip_interface(OVS_ADDR).network)
    for n in SEED.nodes:
        t.add_route(t[n.name], net3, seed.address(n.ipv4.router))
    # network-3's own route goes on br-under once OVS holds its address (ovs_node)
    return t


def tunnel_port(peer: str) -> str:
    return f"vx-{peer}"


def ovs_node(plan: planlib.Plan, *, csum: bool | None = None) -> OvsNode:
    """network-3's Open vSwitch configuration, from the plan (the same facts a vtep node
    reads: VNI, port, its VTEP MAC and address, the peers' subnets and VTEP addresses)."""
    me = plan.node(OVS_NODE)
    mtu = plan.mtu or SEED.underlay_mtu - plan.overhead
    peers = plan.peers(OVS_NODE)
    return OvsNode(
        underlay_dev=OVS_IF, underlay_mac=seed.mac(OVS_ADDR), underlay_addr=OVS_ADDR,
        routes=(("192.168.0.0/16", seed.address(OVS_ROUTER_ADDR)),),
        tnl_neighbours=((seed.address(OVS_ROUTER_ADDR), seed.mac(OVS_ROUTER_ADDR)),),
        vtep_mac=me.vtep_mac, vtep_addr=str(me.vtep_ip), mtu=mtu,
        overlay_routes=tuple((str(p.subnet), str(p.vtep_ip)) for p in peers),
        tunnels=tuple(Tunnel(tunnel_port(p.name), str(p.underlay_ip), plan.vni, plan.port,
                             csum) for p in peers))
