"""Desired per-node state, derived from the plan; no system access here.

What a node needs so that its pods reach every other node's pods (the state
flannel and Calico keep): one VXLAN device, and for every peer, in this order,
a permanent neighbour entry (peer VTEP IP -> peer VTEP MAC), a permanent fdb
entry (peer VTEP MAC -> peer underlay IP), an all-zeros fdb entry to the same
underlay IP (flooding: NodeState.flood) and an onlink route (peer subnet via
peer VTEP IP). Routes come last: without the neighbour entry the kernel would
try to resolve the gateway itself, and ARP across the tunnel is what
`nolearning` and static entries exist to avoid.

The data paths (kernel and userspace) realise this state; `vtep plan` prints
it as iproute2 commands; vxinspect --plan checks captures against its fdb.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from . import owner
from .nlmsg import RTPROT_VTEP
from .plan import Node, Plan, overlay_mtu  # noqa: F401 (state.overlay_mtu: its callers')

DEFAULT_DEVICE = "vxlan0"
FLOOD_MAC = "00:00:00:00:00:00"   # the vxlan driver's default destination(s)


@dataclass(frozen=True)
class Device:
    name: str
    vni: int
    local: str          # underlay IP of this node
    port: int           # always explicit: the kernel's default is 8472
    underlay_dev: str   # device holding `local`
    mtu: int
    mac: str
    address: str        # VTEP IP, as /32 (or /128 is never used: the overlay is IPv4)
    udp_checksum: bool = True   # the outer UDP checksum (always on over IPv6)


@dataclass(frozen=True)
class Neighbour:
    ip: str
    mac: str


@dataclass(frozen=True)
class Fdb:
    mac: str
    dst: str


@dataclass(frozen=True)
class Route:
    dst: str            # peer subnet, CIDR
    via: str            # peer VTEP IP (onlink)


@dataclass(frozen=True)
class Peer:
    name: str
    neighbour: Neighbour
    fdb: Fdb
    route: Route


@dataclass(frozen=True)
class NodeState:
    node: str
    device: Device
    peers: tuple[Peer, ...]

    @property
    def neighbours(self):
        return tuple(p.neighbour for p in self.peers)

    @property
    def fdb(self):
        return tuple(p.fdb for p in self.peers)

    @property
    def routes(self):
        return tuple(p.route for p in self.peers)

    @property
    def flood(self):
        """The all-zeros fdb entries, one per peer: where the kernel sends a frame no
        other entry names (broadcast, multicast, unknown unicast), a copy to each peer
        (head-end replication, what the userspace path does for broadcast and
        multicast). Without them the kernel drops such frames, and a peer that resolves
        ARP through the tunnel (no static neighbour: Open vSwitch, a hand-made VTEP)
        never hears from this node's pods."""
        return tuple(Fdb(FLOOD_MAC, p.fdb.dst) for p in self.peers)


def _text(ip) -> str:
    # inet_ntoa is ten times faster than ipaddress's str(); a plan of 20,000 nodes asks
    # for 80,000 of these each time it is re-read (the same text either way)
    return socket.inet_ntoa(ip.packed) if ip.version == 4 else str(ip)


def peer_entries(peer: Node) -> Peer:
    vtep_ip = _text(peer.vtep_ip)
    return Peer(peer.name,
                Neighbour(vtep_ip, peer.vtep_mac),
                Fdb(peer.vtep_mac, _text(peer.underlay_ip)),
                Route(f"{vtep_ip}/{peer.subnet.prefixlen}", vtep_ip))


def desired(plan: Plan, node_name: str, *, underlay_dev: str, underlay_mtu: int,
            device: str = DEFAULT_DEVICE) -> NodeState:
    me = plan.node(node_name)
    dev = Device(device, plan.vni, str(me.underlay_ip), plan.port, underlay_dev,
                 overlay_mtu(plan, underlay_mtu), me.vtep_mac, str(me.vtep_ip),
                 plan.udp_checksum)
    return NodeState(me.name, dev, tuple(peer_entries(p) for p in plan.peers(me.name)))


def csum_option(d: Device) -> str:
    """The device's outer UDP checksum as iproute2 spells it (" udpcsum"); nothing over
    IPv6, where it is always on and the kernel's default."""
    return "" if ":" in d.local else " udpcsum" if d.udp_checksum else " noudpcsum"


def iproute2(state: NodeState, df: str | None = None) -> list[str]:
    """The same state as the iproute2 commands an operator would type."""
    d = state.device
    df_opt = f" df {df}" if df else ""
    cmds = [
        f"ip link add {d.name} address {d.mac} mtu {d.mtu} type vxlan id {d.vni} "
        f"local {d.local} dstport {d.port} nolearning{csum_option(d)} dev {d.underlay_dev}"
        f"{df_opt}",
        # no IPv6 on the device: its own multicast would be flooded to every peer
        f"sysctl -qw net/ipv6/conf/{d.name}/disable_ipv6=1",
        f"ip link set {d.name} alias {owner.alias(state.node, 'kernel')}",
        f"ip address add {d.address}/32 dev {d.name}",
        f"ip link set {d.name} up",
    ]
    for p in state.peers:
        cmds.append(f"ip neigh add {p.neighbour.ip} lladdr {p.neighbour.mac} dev {d.name} "
                    "nud permanent")
        cmds.append(f"bridge fdb add {p.fdb.mac} dev {d.name} dst {p.fdb.dst} self permanent")
        cmds.append(f"bridge fdb append {FLOOD_MAC} dev {d.name} dst {p.fdb.dst} "
                    "self permanent")
        cmds.append(f"ip route add {p.route.dst} via {p.route.via} dev {d.name} onlink "
                    f"proto {RTPROT_VTEP}")
    return cmds
