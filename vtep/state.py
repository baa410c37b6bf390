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
from .host import IPV6_OFF, IPV6_ON
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
    address: str | None   # the IPv4 VTEP address, as /32; None: an IPv6-only overlay
    udp_checksum: bool = True   # the outer UDP checksum (always on over IPv6)
    address6: str | None = None   # the IPv6 VTEP address, as /128; None: no IPv6 overlay

    @property
    def addresses(self) -> tuple[str, ...]:
        """The VTEP addresses with their prefix, IPv4 first."""
        return tuple(a for a in (self.address and f"{self.address}/32",
                                 self.address6 and f"{self.address6}/128") if a)


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
    """A peer's entries. One fdb entry carries both families: the peer's one device has
    one MAC, so its IPv4 and IPv6 VTEP addresses resolve to the same MAC and the same
    underlay destination; the neighbours and routes are one per family, IPv4 first."""
    name: str
    neighbours: tuple[Neighbour, ...]
    fdb: Fdb
    routes: tuple[Route, ...]

    @property
    def neighbour(self) -> Neighbour:
        """The first family's neighbour entry (IPv4 unless the overlay is IPv6 only)."""
        return self.neighbours[0]

    @property
    def route(self) -> Route:
        """The first family's route (IPv4 unless the overlay is IPv6 only)."""
        return self.routes[0]


@dataclass(frozen=True)
class NodeState:
    node: str
    device: Device
    peers: tuple[Peer, ...]

    @property
    def neighbours(self):
        return tuple(n for p in self.peers for n in p.neighbours)

    @property
    def fdb(self):
        return tuple(p.fdb for p in self.peers)

    @property
    def routes(self):
        return tuple(r for p in self.peers for r in p.routes)

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
    neighbours, routes = [], []
    for subnet in peer.subnets:
        vtep_ip = _text(subnet.network_address)
        neighbours.append(Neighbour(vtep_ip, peer.vtep_mac))
        routes.append(Route(f"{vtep_ip}/{subnet.prefixlen}", vtep_ip))
    return Peer(peer.name, tuple(neighbours), Fdb(peer.vtep_mac, _text(peer.underlay_ip)),
                tuple(routes))


def desired(plan: Plan, node_name: str, *, underlay_dev: str, underlay_mtu: int,
            device: str = DEFAULT_DEVICE) -> NodeState:
    me = plan.node(node_name)
    dev = Device(device, plan.vni, str(me.underlay_ip), plan.port, underlay_dev,
                 overlay_mtu(plan, underlay_mtu), me.vtep_mac,
                 me.vtep_ip and str(me.vtep_ip), plan.udp_checksum,
                 me.vtep_ip6 and str(me.vtep_ip6))
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
        *ipv6_sysctls(d),
        f"ip link set {d.name} alias {owner.alias(state.node, 'kernel')}",
    ]
    if d.address:
        cmds.append(f"ip address add {d.address}/32 dev {d.name}")
    if d.address6:
        # nodad: the address is the plan's, no other node holds it, and DAD would send
        # a neighbour solicitation to every peer and hold the address tentative meanwhile
        cmds.append(f"ip -6 address add {d.address6}/128 dev {d.name} nodad")
    cmds.append(f"ip link set {d.name} up")
    for p in state.peers:
        for nb in p.neighbours:
            cmds.append(f"ip{_family(nb.ip)} neigh add {nb.ip} lladdr {nb.mac} dev {d.name} "
                        "nud permanent")
        cmds.append(f"bridge fdb add {p.fdb.mac} dev {d.name} dst {p.fdb.dst} self permanent")
        cmds.append(f"bridge fdb append {FLOOD_MAC} dev {d.name} dst {p.fdb.dst} "
                    "self permanent")
        for rt in p.routes:
            cmds.append(f"ip{_family(rt.via)} route add {rt.dst} via {rt.via} dev {d.name} "
                        f"onlink proto {RTPROT_VTEP}")
    return cmds


def _family(ip: str) -> str:
    return " -6" if ":" in ip else ""


def ipv6_sysctls(d: Device) -> list[str]:
    """How IPv6 is set on the device before it goes up, as sysctl commands, in the order
    the agent writes them (host.IPV6_ON / IPV6_OFF, where the reasons are): without an
    IPv6 overlay it is off; with one it is on, with no link-local address and no router
    advertisements taken, and disable_ipv6=0 said last, for a host whose new devices
    start with IPv6 off (every `ip -6` line below would be refused)."""
    conf = f"net/ipv6/conf/{d.name}"
    return [f"sysctl -qw {conf}/{k}={v}" for k, v in (IPV6_ON if d.address6 else IPV6_OFF)]
