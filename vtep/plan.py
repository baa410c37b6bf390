"""The cluster plan: one TOML file, the same on every node.

It names the VNI, the port, the overlay and, per node, the underlay IP and
the overlay subnet the node owns. Everything else is derived, so nobody copies
values between machines: the VTEP address is the subnet's first address (/32
on the device, as flannel and Calico do), the bridge gateway its second, and
the VTEP MAC a stable hash of the node's name and subnet.

Validation names the file, the node and the field of every problem.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import wire
from .errors import PlanError

MIN_MTU = 576  # RFC 791: every IPv4 host must accept 576-byte datagrams
IFNAMSIZ = 15
PRIVATE_V4 = tuple(ipaddress.ip_network(n) for n in
                   ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

CLUSTER_KEYS = {"vni", "port", "overlay", "mtu"}
NODE_KEYS = {"name", "underlay_ip", "subnet", "vtep_mac", "underlay_dev"}


@dataclass(frozen=True)
class Node:
    name: str
    underlay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    subnet: ipaddress.IPv4Network
    vtep_mac: str
    underlay_dev: str | None = None

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address:
        """The subnet's first address, held by the VTEP device as a /32."""
        return self.subnet.network_address

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The subnet's second address, held by the node's pod bridge."""
        return self.subnet.network_address + 1


@dataclass(frozen=True)
class Plan:
    path: str
    vni: int
    port: int
    overlay: ipaddress.IPv4Network
    mtu: int | None
    nodes: tuple[Node, ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ipv6_underlay(self) -> bool:
        return bool(self.nodes) and self.nodes[0].underlay_ip.version == 6

    @property
    def overhead(self) -> int:
        return wire.overhead(self.ipv6_underlay)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise PlanError(f"{self.path}: no node named {name!r} "
                        f"(the plan has {', '.join(n.name for n in self.nodes)})")

    def peers(self, name: str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.name != name)

    def node_for_local(self, local_ips) -> Node:
        """The one node whose underlay_ip is among `local_ips` (for an omitted --node)."""
        local = {ipaddress.ip_address(str(a)) for a in local_ips}
        mine = [n for n in self.nodes if n.underlay_ip in local]
        if len(mine) == 1:
            return mine[0]
        if not mine:
            raise PlanError(f"{self.path}: no node's underlay_ip is an address of this host; "
                            "name the node with --node")
        raise PlanError(f"{self.path}: several nodes' underlay_ip are local "
                        f"({', '.join(n.name for n in mine)}); name the node with --node")


def derive_mac(name: str, subnet) -> str:
    """A locally administered unicast MAC, stable for (name, subnet)."""
    h = bytearray(hashlib.sha256(f"vtep:{name}:{subnet}".encode()).digest()[:6])
    h[0] = (h[0] & 0xFC) | 0x02  # U/L bit set: locally administered; I/G bit clear: unicast
    return ":".join(f"{b:02x}" for b in h)


def load(path) -> Plan:
    """Read and validate a plan file; raises PlanError naming every problem."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise PlanError(f"{p}: no such file")
    except OSError as e:
        raise PlanError(f"{p}: cannot read: {e.strerror}")
    except UnicodeDecodeError as e:
        raise PlanError(f"{p}: not UTF-8 text (byte {e.start})")
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{p}: not valid TOML: {e}")
    return parse(data, str(p))


def parse(data: dict, path: str = "<plan>") -> Plan:
    problems: list[str] = []
    warnings: list[str] = []

    def bad(where: str, msg: str) -> None:
        problems.append(f"{path}: {where}: {msg}")

    for key in data:
        if key not in ("cluster", "nodes"):
            bad(key, "unknown section (expected [cluster] and [[nodes]])")
    cluster = data.get("cluster", {})
    if not isinstance(cluster, dict):
        bad("cluster", "must be a table ([cluster])")
        cluster = {}
    for key in cluster:
        if key not in CLUSTER_KEYS:
            bad(f"cluster.{key}", f"unknown field (known: {', '.join(sorted(CLUSTER_KEYS))})")

    vni = _int(cluster.get("vni", wire.DEFAULT_VNI), "cluster.vni", wire.VNI_MIN, wire.VNI_MAX, bad)
    port = _int(cluster.get("port", wire.VXLAN_PORT), "cluster.port", 1, 65535, bad)
    mtu = cluster.get("mtu")
    if mtu is not None:
        mtu = _int(mtu, "cluster.mtu", MIN_MTU, 65535 - wire.OVERHEAD_IPV6, bad)
    overlay = None
    if "overlay" not in cluster:
        bad("cluster.overlay", "missing (the overlay network, e.g. \"10.244.0.0/16\")")
    else:
        overlay = _net(cluster["overlay"], "cluster.overlay", bad)
        if overlay is not None and not any(overlay.subnet_of(n) for n in PRIVATE_V4):
            warnings.append(f"{path}: cluster.overlay: {overlay} is not private address space "
                            "(RFC 1918 or 100.64.0.0/10); traffic to those addresses "
                            "elsewhere on the internet will be routed into the overlay")

    raw_nodes = data.get("nodes", [])
    if not isinstance(raw_nodes, list) or not raw_nodes:
        bad("nodes", "at least one [[nodes]] entry is needed")
        raw_nodes = []
    nodes: list[Node] = []
    seen: dict[tuple[str, object], str] = {}
    for i, raw in enumerate(raw_nodes):
        label = f"nodes[{i}]"
        if not isinstance(raw, dict):
            bad(label, "must be a table ([[nodes]])")
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            bad(f"{label}.name", "missing or empty")
            name = None
        else:
            label = f"node {name!r}"
        for key in raw:
            if key not in NODE_KEYS:
                bad(f"{label}: {key}", f"unknown field (known: {', '.join(sorted(NODE_KEYS))})")
        ip = None
        if "underlay_ip" not in raw:
            bad(f"{label}: underlay_ip", "missing")
        else:
            try:
                ip = ipaddress.ip_address(str(raw["underlay_ip"]))
            except ValueError:
                bad(f"{label}: underlay_ip", f"{raw['underlay_ip']!r} is not an IP address")
        subnet = None
        if "subnet" not in raw:
            bad(f"{label}: subnet", "missing")
        else:
            subnet = _net(raw["subnet"], f"{label}: subnet", bad)
            if subnet is not None:
                if subnet.prefixlen > 30:
                    bad(f"{label}: subnet", f"{subnet} is too small: it needs the VTEP address, "
                        "the gateway and pod addresses (/30 or larger)")
                if overlay is not None and not subnet.subnet_of(overlay):
                    bad(f"{label}: subnet", f"{subnet} is outside the overlay {overlay}")
        mac = raw.get("vtep_mac")
        if mac is not None:
            mac = str(mac).lower()
            if not MAC_RE.match(mac):
                bad(f"{label}: vtep_mac", f"{raw['vtep_mac']!r} is not a MAC address")
                mac = None
            elif int(mac[:2], 16) & 1:
                bad(f"{label}: vtep_mac", f"{mac} is a multicast address")
                mac = None
        elif name is not None and subnet is not None:
            mac = derive_mac(name, subnet)
        dev = raw.get("underlay_dev")
        if dev is not None and (not isinstance(dev, str) or not 0 < len(dev) <= IFNAMSIZ
                                or "/" in dev or " " in dev):
            bad(f"{label}: underlay_dev", f"{dev!r} is not a valid interface name")
            dev = None
        for fld, value in (("name", name), ("underlay_ip", ip), ("vtep_mac", mac)):
            if value is None:
                continue
            other = seen.get((fld, value))
            if other is not None:
                bad(f"{label}: {fld}", f"{value} is already used by {other}")
            else:
                seen[(fld, value)] = label
        if subnet is not None:
            for n in nodes:
                if n.subnet.overlaps(subnet):
                    bad(f"{label}: subnet", f"{subnet} overlaps {n.subnet} of node {n.name!r}")
        if name and ip is not None and subnet is not None and mac:
            nodes.append(Node(name, ip, subnet, mac, dev))
    versions = {n.underlay_ip.version for n in nodes}
    if len(versions) > 1:
        bad("nodes", "underlay_ip mixes IPv4 and IPv6; one vxlan device has one address family")
    if problems:
        raise PlanError(problems)
    return Plan(path, vni, port, overlay, mtu, tuple(nodes), tuple(warnings))


def _int(value, where, lo, hi, bad):
    if isinstance(value, bool) or not isinstance(value, int):
        bad(where, f"{value!r} is not a whole number")
        return lo
    if not lo <= value <= hi:
        bad(where, f"{value} is outside {lo}..{hi}")
    return value


def _net(value, where, bad):
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        bad(where, f"{value!r} is not a network ({e})")
        return None
    if net.version != 4:
        bad(where, f"{net}: the overlay is IPv4 (as in flannel's and Calico's VXLAN modes)")
        return None
    return net
