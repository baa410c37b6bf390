"""The seed cluster, written once: two nodes on two underlay subnets joined by a router.

Data flows one way. SEED (below) is pure data; two generators read it:

    SEED --plan_text(underlay, mtu)--> the TOML plan `vtep run` reads (SEED_PLAN, SEED_PLAN6)
         --topology(prefix, ...)-----> a Topology: namespaces, veths, addresses, routes

so the plan and the namespaces it describes cannot drift apart. Everything else that
needs the seed's addresses (the lab builder in lab.py, the tests, the benchmarks, the
sample generators) asks SEED or these two. A newcomer starts at SEED.

    network-1                         router                          network-2
    eth0 192.168.1.138/24 ---- eth1 192.168.1.213/24
                               eth2 192.168.2.216/24 ---- eth0 192.168.2.142/24
    pods 172.2.0.0/24        (forwarding on)               pods 172.2.1.0/24

underlay="ipv6" is the seed's twin: the same links with unique local addresses (RFC
4193) fd00:1::8a/64 -- fd00:1::1/64, fd00:2::1/64 -- fd00:2::8e/64; the overlay stays
what it is (its MTU is 1500 - 70 = 1430 there: the IPv6 outer header is 20 bytes longer).
dual_stack (plan_text) adds the IPv6 overlay OVERLAY6 to either underlay.

Every veth end has a fixed MAC, 02:00 followed by the four bytes of its IPv4 address
(locally administered, unicast: IEEE 802 U/L bit set, I/G bit clear), the same in both
families since they are the same links: captures of the lab look the same on every run.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .. import wire
from ..errors import UsageError
from .topology import Topology

UNDERLAYS = ("ipv4", "ipv6")
# The dual-stack lab's IPv6 overlay (unique local, RFC 4193), spelt to echo 172.2.0.0/16
OVERLAY6 = "fd00:172:2::/48"


@dataclass(frozen=True)
class Side:
    """One node's link to the router in one address family (addresses with prefix)."""
    node: str
    router: str


@dataclass(frozen=True)
class SeedNode:
    name: str
    subnet: str                 # its pod subnet (the plan's nodes.subnet)
    router_if: str              # the router's device on this node's link
    ipv4: Side
    ipv6: Side

    @property
    def subnet6(self) -> str:
        """Its IPv6 pod subnet in a dual-stack lab (the plan's nodes.subnet6): the /64 of
        OVERLAY6 numbered like the IPv4 /24, 172.2.1.0/24 -> fd00:172:2:1::/64."""
        third = ipaddress.IPv4Network(self.subnet).network_address.packed[2]
        return str(ipaddress.IPv6Network(OVERLAY6).network_address + (third << 64)) + "/64"

    def side(self, underlay: str = "ipv4") -> Side:
        return getattr(self, check_underlay(underlay))


@dataclass(frozen=True)
class Seed:
    vni: int
    port: int
    overlay: str
    router: str                 # the router's node name
    underlay_dev: str           # each node's device towards the router
    underlay_mtu: int           # what a veth starts with (the lab sets no other by default)
    nodes: tuple[SeedNode, ...]

    def node(self, name: str) -> SeedNode:
        return next(n for n in self.nodes if n.name == name)


SEED = Seed(
    vni=10, port=wire.VXLAN_PORT, overlay="172.2.0.0/16", router="router", underlay_dev="eth0",
    underlay_mtu=1500,
    nodes=(
        SeedNode("network-1", "172.2.0.0/24", "eth1",
                 ipv4=Side("192.168.1.138/24", "192.168.1.213/24"),
                 ipv6=Side("fd00:1::8a/64", "fd00:1::1/64")),
        SeedNode("network-2", "172.2.1.0/24", "eth2",
                 ipv4=Side("192.168.2.142/24", "192.168.2.216/24"),
                 ipv6=Side("fd00:2::8e/64", "fd00:2::1/64")),
    ))
NODES = tuple(n.name for n in SEED.nodes)      # ("network-1", "network-2")
MAX_NODES = 32   # lab nodes: a router port and a /24 of the underlay each


def cluster(n: int = 2) -> Seed:
    """The seed with `n` nodes: network-1 and network-2 as SEED has them, then node i
    (3..n) on its own underlay subnet 192.168.i.0/24 (node .2, router .1; fd00:i::2 and
    ::1 in the IPv6 twin) behind the router's eth<i>, owning pod subnet 172.2.<i-1>.0/24."""
    if not 2 <= n <= MAX_NODES:
        raise UsageError(f"--nodes {n}: use 2 to {MAX_NODES}")
    extra = tuple(SeedNode(f"network-{i}", f"172.2.{i - 1}.0/24", f"eth{i}",
                           ipv4=Side(f"192.168.{i}.2/24", f"192.168.{i}.1/24"),
                           ipv6=Side(f"fd00:{i:x}::2/64", f"fd00:{i:x}::1/64"))
                  for i in range(3, n + 1))
    return SEED if not extra else Seed(**{**SEED.__dict__, "nodes": SEED.nodes + extra})


def check_underlay(underlay: str) -> str:
    if underlay not in UNDERLAYS:
        raise UsageError(f"--underlay {underlay}: use one of {', '.join(UNDERLAYS)}")
    return underlay


def address(cidr: str) -> str:
    """"192.168.1.138/24" -> "192.168.1.138"."""
    return str(ipaddress.ip_interface(cidr).ip)


def underlay_ips(underlay: str = "ipv4", nodes: int = 2) -> dict[str, str]:
    """node -> its underlay address (no prefix) in that family."""
    return {n.name: address(n.side(underlay).node) for n in cluster(nodes).nodes}


def mac(ipv4: str) -> str:
    """The fixed MAC of a seed interface: 02:00 and the four bytes of its IPv4 address."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Interface(ipv4).ip.packed)


# --- the plan ---------------------------------------------------------------------------------

def plan_text(underlay: str = "ipv4", *, mtu: int | None = None, nodes: int = 2,
              cluster_only: bool = False, dual_stack: bool = False) -> str:
    """The seed plan: the cluster, then one [[nodes]] table per node with the underlay
    address topology() gives it in `underlay`. mtu: a cluster.mtu line (the overlay MTU
    the plan forces, instead of the one derived from the underlay). cluster_only: the
    [cluster] table alone (`vtep cluster init` takes it; the nodes register themselves).
    dual_stack: IPv6 pods too (cluster.overlay6 = OVERLAY6, a /64 of it per node)."""
    what = "two nodes on two underlay subnets" if nodes == 2 else \
        f"{nodes} nodes, each on its own underlay subnet"
    lines = [f"# The seed cluster (vtep lab): {what}, joined by a router.", "[cluster]",
             f"vni = {SEED.vni}", f"port = {SEED.port}", f'overlay = "{SEED.overlay}"']
    if dual_stack:
        lines.append(f'overlay6 = "{OVERLAY6}"')
    if mtu is not None:
        lines.append(f"mtu = {mtu}")
    if cluster_only:
        return "\n".join(lines) + "\n"
    ips = underlay_ips(underlay, nodes)
    for n in cluster(nodes).nodes:
        lines += ["", "[[nodes]]", f'name = "{n.name}"', f'underlay_ip = "{ips[n.name]}"',
                  f'subnet = "{n.subnet}"']
        if dual_stack:
            lines.append(f'subnet6 = "{n.subnet6}"')
    return "\n".join(lines) + "\n"


SEED_PLAN = plan_text()
SEED_PLAN6 = plan_text("ipv6")


# --- the namespaces ---------------------------------------------------------------------------

def topology(prefix: str, *, underlay: str = "ipv4", mtu: int | None = None,
             tx_offload: bool = False, nodes: int = 2) -> Topology:
    """The seed topology, unbuilt (use `with` or start()): the router (forwarding on) and
    the nodes, each joined to it by a veth pair, and on each node a static route to every
    other node's underlay subnet via the router. No VTEP.

    mtu: of every underlay veth (None: the veth default, SEED.underlay_mtu).
    tx_offload=False (the default) turns tx checksum offload off on every veth: a veth
    otherwise leaves the checksums of what the kernel sends unfilled (CHECKSUM_PARTIAL),
    fine between two kernel paths but wrong on the wire a userspace VTEP reads and a
    capture shows. GRO is on at each node's end, as on a real NIC: the userspace VTEP's
    UDP_GRO needs it."""
    check_underlay(underlay)
    c = cluster(nodes)
    t = Topology(prefix)
    router = t.add_node(c.router, forward=True)
    for n in c.nodes:
        side = n.side(underlay)
        t.add_link(t.add_node(n.name), router, c.underlay_dev, n.router_if, side.node,
                   side.router, mtu=mtu, tx_offload=tx_offload, a_mac=mac(n.ipv4.node),
                   b_mac=mac(n.ipv4.router), a_gro=True)
    for n in c.nodes:
        via = address(n.side(underlay).router)
        for other in c.nodes:
            if other is not n:
                net = ipaddress.ip_interface(other.side(underlay).node).network
                t.add_route(t[n.name], str(net), via)
    return t


def narrow(t: Topology, mtu: int, node: str = "network-2") -> None:
    """Set the MTU of the router's link towards `node`, both ends (a link has one MTU):
    the path between the nodes narrows at the router, which is where path MTU discovery
    has something to find (the MTU suite's case 7, `vtep mtu`)."""
    n = SEED.node(node)
    t[SEED.router].cmd(["ip", "link", "set", n.router_if, "mtu", str(mtu)])
    t[node].cmd(["ip", "link", "set", SEED.underlay_dev, "mtu", str(mtu)])
