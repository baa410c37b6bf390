"""The cluster plan: one TOML file, the same on every node.

It names the VNI, the port, the overlay (IPv4 `overlay`, IPv6 `overlay6`, or
both for a dual-stack cluster) and, per node, the underlay IP and the overlay
subnet the node owns in each family (`subnet`, `subnet6`). Everything else is
derived, so nobody copies values between machines: the VTEP address is the
subnet's first address (/32 or /128 on the device, as flannel and Calico do),
the bridge gateway its second, and the VTEP MAC a stable hash of the node's
name and subnet (the IPv4 one when there is one: one MAC for both families,
since one device carries both).

Validation names the file, the node and the field of every problem, and costs
O(n log n) in the number of nodes: duplicates are found in dicts, overlapping
subnets by one sweep over the subnets sorted by first address, and underlay IPs
inside a subnet or the overlay by bisecting the sorted underlay addresses (a
20,000-node plan loads in about a second, half of it TOML parsing:
bench/plan_bench.py).

The rules, beyond types and ranges:
  node name    1-63 ASCII letters, digits, '-', '_' or '.', starting with a
               letter or digit (a DNS label's length; it names files and log
               lines, so no '/', spaces or control characters);
  underlay_ip  a unicast address a peer can send to: not unspecified (0.0.0.0,
               ::), multicast, the limited broadcast 255.255.255.255, loopback,
               IPv6 link-local (fe80::/10 needs a zone the plan cannot carry)
               or IPv4-mapped IPv6; IPv4 link-local (169.254/16) only warns;
  overlay      unicast space only: it may not overlap 0.0.0.0/8, loopback,
               169.254.0.0/16, multicast or 240.0.0.0/4 (so 0.0.0.0/0 is
               refused), nor contain any node's underlay_ip;
  overlay6     IPv6 unicast space only: not ::, ::1, IPv4-compatible or -mapped,
               link-local or multicast, nor containing any node's underlay_ip;
  subnet       inside the overlay, /30 or larger, overlapping no other node's
               subnet and containing no node's underlay_ip: a route for it
               would send the tunnel's own packets into the tunnel;
  subnet6      the same in overlay6, /126 or larger (a /64 is usual); each
               family's subnet is needed exactly when its overlay is set.
"""
from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from . import wire
from .errors import PlanError
from .inet import IP_MAXPACKET, MIN_MTU

IFNAMSIZ = 15
PRIVATE_V4 = tuple(ipaddress.ip_network(n) for n in
                   ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NODE_NAME_MAX = 63  # a DNS label (RFC 1035 2.3.4), as Kubernetes node names mostly are
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
NODE_NAME_RULE = (f"1-{NODE_NAME_MAX} ASCII letters, digits, '-', '_' or '.', "
                  "starting with a letter or digit")
# IPv4 space no overlay may touch: routes for it would never carry pod traffic
# (RFC 6890 special-purpose blocks that are not unicast between hosts).
NOT_OVERLAY_V4 = tuple((ipaddress.ip_network(n), why) for n, why in (
    ("0.0.0.0/8", "'this network' (RFC 1122)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and the limited broadcast (RFC 1112, RFC 919)"),
))
LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

# IPv6 space no overlay6 may touch (RFC 4291, RFC 6890): none of it is unicast between hosts
NOT_OVERLAY_V6 = tuple((ipaddress.ip_network(n), why) for n, why in (
    ("::/127", "the unspecified and loopback addresses"),
    ("::/96", "IPv4-compatible addresses, deprecated (RFC 4291 2.5.5.1)"),
    ("::ffff:0:0/96", "IPv4-mapped addresses (RFC 4291 2.5.5.2)"),
    ("fe80::/10", "link-local (RFC 4291 2.5.6)"),
    ("ff00::/8", "multicast"),
))

CLUSTER_KEYS = {"vni", "port", "overlay", "overlay6", "mtu", "udp_checksum"}
NODE_KEYS = {"name", "underlay_ip", "subnet", "subnet6", "vtep_mac", "underlay_dev"}
# The smallest node subnets: room for the VTEP address, the gateway and a pod or two
MAX_PREFIX = {4: 30, 6: 126}


@dataclass(frozen=True)
class Node:
    name: str
    underlay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    subnet: ipaddress.IPv4Network | None   # None: an IPv6-only overlay
    vtep_mac: str
    underlay_dev: str | None = None
    subnet6: ipaddress.IPv6Network | None = None   # None: an IPv4-only overlay

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address | None:
        """The subnet's first address, held by the VTEP device as a /32."""
        return None if self.subnet is None else self.subnet.network_address

    @property
    def gateway(self) -> ipaddress.IPv4Address | None:
        """The subnet's second address, held by the node's pod bridge."""
        return None if self.subnet is None else self.subnet.network_address + 1

    @property
    def vtep_ip6(self) -> ipaddress.IPv6Address | None:
        """The IPv6 subnet's first address, held by the VTEP device as a /128 (as
        flannel's flannel-v6.1 holds its lease's first address)."""
        return None if self.subnet6 is None else self.subnet6.network_address

    @property
    def gateway6(self) -> ipaddress.IPv6Address | None:
        """The IPv6 subnet's second address, held by the node's pod bridge."""
        return None if self.subnet6 is None else self.subnet6.network_address + 1

    @property
    def subnets(self) -> tuple:
        """The node's subnets, IPv4 first: one per overlay family."""
        return tuple(s for s in (self.subnet, self.subnet6) if s is not None)


@dataclass(frozen=True)
class Plan:
    path: str
    vni: int
    port: int
    overlay: ipaddress.IPv4Network | None     # None: an IPv6-only overlay
    mtu: int | None
    nodes: tuple[Node, ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # The outer UDP checksum, on by default: see UDP_CHECKSUM_WHY.
    udp_checksum: bool = True
    overlay6: ipaddress.IPv6Network | None = None   # the IPv6 overlay of a dual-stack plan

    @property
    def overlays(self) -> tuple:
        """The overlay networks, IPv4 first: one or both families."""
        return tuple(o for o in (self.overlay, self.overlay6) if o is not None)

    @property
    def ipv6_underlay(self) -> bool:
        return bool(self.nodes) and self.nodes[0].underlay_ip.version == 6

    @property
    def overhead(self) -> int:
        return wire.overhead(self.ipv6_underlay)

    @cached_property
    def _by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        n = self._by_name.get(name)
        if n is not None:
            return n
        raise PlanError(f"{self.path}: no node named {name!r} "
                        f"(the plan has {_some(n.name for n in self.nodes)})")

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


# Why the outer UDP checksum is on unless the plan turns it off (README, "The outer UDP
# checksum"). RFC 7348 section 5 allows zero over IPv4, but:
# - the kernel's vxlan driver computes it by default (a device made without udpcsum or
#   noudpcsum reports udpcsum), so on is what a hand-made device does;
# - it is the only check on the inner frame between VTEPs: Ethernet's CRC is gone at
#   the first hop, and an inner ARP or non-IP frame has no checksum of its own;
# - a receiver's UDP GRO coalesces only datagrams with a checksum (the kernel's
#   udp_gro_receive_segment flushes on a zero one), and UDP GSO on the send side
#   computes it anyway.
# Over IPv6 it cannot be off: RFC 8200 section 8.1 makes it mandatory, and the RFC 6935
# exception needs every receiver to opt in (udp6zerocsumrx).
UDP_CHECKSUM_DEFAULT = True


def overlay_mtu(plan: Plan, underlay_mtu: int) -> int:
    """The plan's MTU, or the underlay's minus the encapsulation overhead."""
    return plan.mtu if plan.mtu is not None else underlay_mtu - plan.overhead


def derive_mac(name: str, subnet) -> str:
    """A locally administered unicast MAC, stable for (name, subnet)."""
    h = bytearray(hashlib.sha256(f"vtep:{name}:{subnet}".encode()).digest()[:6])
    h[0] = (h[0] & 0xFC) | 0x02  # U/L bit set: locally administered; I/G bit clear: unicast
    return h.hex(":")


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


def parse(data: dict, path: str = "<plan>", *, require_nodes: bool = True) -> Plan:
    """The plan in `data` (a TOML document), every problem named with `path`, or
    PlanError listing them all. require_nodes=False accepts a plan of its [cluster]
    table alone (`vtep cluster init`, a cluster in etcd with no member alive)."""
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
        mtu = _int(mtu, "cluster.mtu", MIN_MTU, IP_MAXPACKET - wire.OVERHEAD_IPV6, bad)
    udp_checksum = cluster.get("udp_checksum", UDP_CHECKSUM_DEFAULT)
    if not isinstance(udp_checksum, bool):
        bad("cluster.udp_checksum", f"{_short(udp_checksum)} is not true or false")
        udp_checksum = UDP_CHECKSUM_DEFAULT
    overlay = overlay6 = None
    if "overlay" not in cluster and "overlay6" not in cluster:
        bad("cluster.overlay", "missing (the overlay network, e.g. \"10.244.0.0/16\"; "
            "overlay6 for IPv6 pods)")
    if "overlay" in cluster:
        overlay = _overlay(cluster["overlay"], "cluster.overlay", 4, bad)
        if overlay is not None and not any(overlay.subnet_of(n) for n in PRIVATE_V4):
            warnings.append(f"{path}: cluster.overlay: {overlay} is not private address space "
                            "(RFC 1918 or 100.64.0.0/10); traffic to those addresses "
                            "elsewhere on the internet will be routed into the overlay")
    if "overlay6" in cluster:
        overlay6 = _overlay(cluster["overlay6"], "cluster.overlay6", 6, bad)
    # with no overlay at all, nodes are still read as IPv4 ones (one problem, not one a node)
    wanted = {"subnet": ("overlay", overlay, "overlay6" not in cluster or "overlay" in cluster, 4),
              "subnet6": ("overlay6", overlay6, "overlay6" in cluster, 6)}

    raw_nodes = data.get("nodes")
    if raw_nodes is None and not require_nodes:
        raw_nodes = []
    if not isinstance(raw_nodes, list) or (not raw_nodes and require_nodes):
        bad("nodes", "at least one [[nodes]] entry is needed")
        raw_nodes = []
    nodes: list[Node] = []
    labels: list[str] = []  # per entry of `nodes`: how problems name that node
    seen: dict[tuple[str, object], str] = {}
    for i, raw in enumerate(raw_nodes):
        label = f"nodes[{i}]"
        if not isinstance(raw, dict):
            bad(label, "must be a table ([[nodes]])")
            continue
        name = _node_name(raw.get("name"), f"{label}.name", bad)
        if name is not None:
            label = f"node {name!r}"
        for key in raw:
            if key not in NODE_KEYS:
                bad(f"{label}: {key}", f"unknown field (known: {', '.join(sorted(NODE_KEYS))})")
        ip = None
        if "underlay_ip" not in raw:
            bad(f"{label}: underlay_ip", "missing")
        else:
            ip = _underlay_ip(raw["underlay_ip"], f"{label}: underlay_ip", bad,
                              lambda msg: warnings.append(f"{path}: {msg}"))
        got = {}
        for fld, (ofld, onet, given, version) in wanted.items():
            got[fld] = _subnet(raw, fld, label, ofld, onet, given, version, bad)
        subnet, subnet6 = got["subnet"], got["subnet6"]
        complete = all(got[f] is not None for f, w in wanted.items() if w[2])
        mac = raw.get("vtep_mac")
        if mac is not None:
            mac = str(mac).lower()
            if not MAC_RE.match(mac):
                bad(f"{label}: vtep_mac", f"{raw['vtep_mac']!r} is not a MAC address")
                mac = None
            elif int(mac[:2], 16) & 1:
                bad(f"{label}: vtep_mac", f"{mac} is a multicast address")
                mac = None
            elif not int(mac.replace(":", ""), 16):
                bad(f"{label}: vtep_mac", f"{mac} is the all-zeros address, which the "
                    "vxlan driver keeps for flooding")
                mac = None
        elif name is not None and complete and (subnet or subnet6):
            # from the IPv4 subnet when there is one: a plan that gains overlay6 keeps its MACs
            mac = derive_mac(name, subnet or subnet6)
        dev = raw.get("underlay_dev")
        if dev is not None:
            why = ifname_problem(dev)
            if why:
                bad(f"{label}: underlay_dev", f"{_short(dev)} is not a valid interface name: {why}")
        for fld, value in (("name", name), ("underlay_ip", ip), ("vtep_mac", mac)):
            if value is None:
                continue
            other = seen.get((fld, value))
            if other is not None:
                bad(f"{label}: {fld}", f"{value} is already used by {other}")
            else:
                seen[(fld, value)] = label
        if name and ip is not None and complete and (subnet or subnet6) and mac:
            nodes.append(Node(name, ip, subnet, mac, dev, subnet6))
            labels.append(label)
    for fld, (ofld, onet, given, version) in wanted.items():
        if given:
            _check_subnets(nodes, labels, fld, ofld, onet, bad)
    versions = {n.underlay_ip.version for n in nodes}
    if len(versions) > 1:
        bad("nodes", "underlay_ip mixes IPv4 and IPv6; one vxlan device has one address family")
    elif versions == {6} and not udp_checksum:
        bad("cluster.udp_checksum", "false needs an IPv4 underlay: over IPv6 the UDP checksum "
            "is mandatory (RFC 8200 section 8.1) and receivers drop zero ones unless they "
            "opted in (RFC 6935)")
    if problems:
        raise PlanError(problems)
    return Plan(path, vni, port, overlay, mtu, tuple(nodes), tuple(warnings), udp_checksum,
                overlay6)


def _overlay(value, where: str, version: int, bad):
    """An overlay network of the given family in unicast space, or None (and a problem)."""
    net = _net(value, where, bad)
    if net is None:
        return None
    if net.version != version:
        other = "cluster.overlay6" if version == 4 else "cluster.overlay"
        bad(where, f"{net} is IPv{net.version}: give it as {other} (overlay is IPv4, "
            "overlay6 IPv6; a dual-stack plan has both)")
        return None
    special = next((s for s in (NOT_OVERLAY_V4 if version == 4 else NOT_OVERLAY_V6)
                    if net.overlaps(s[0])), None)
    if special:
        example = "10.244.0.0/16" if version == 4 else "fd00:10:244::/48"
        bad(where, f"{net} overlaps {special[0]}, {special[1]}: the overlay must be unicast "
            f"address space (e.g. {example})")
        return None
    return net


def _subnet(raw: dict, fld: str, label: str, ofld: str, overlay, given: bool, version: int,
            bad):
    """A node's subnet of one family: needed when the plan has that family's overlay,
    refused when it has not; None when absent or bad (and a problem when it is bad)."""
    if fld not in raw:
        if given:
            bad(f"{label}: {fld}", "missing" if fld == "subnet" else
                f"missing (cluster.{ofld} is set: every node needs a subnet of it)")
        return None
    net = _net(raw[fld], f"{label}: {fld}", bad)
    if net is None:
        return None
    if not given:
        bad(f"{label}: {fld}", f"{net}: the plan has no cluster.{ofld}")
        return None
    if net.version != version:
        bad(f"{label}: {fld}", f"{net} is IPv{net.version}: {fld} is "
            f"{'the IPv4 subnet (IPv6 goes in subnet6)' if version == 4 else 'the IPv6 subnet'}")
        return None
    if net.prefixlen > MAX_PREFIX[version]:
        bad(f"{label}: {fld}", f"{net} is too small: it needs the VTEP address, "
            f"the gateway and pod addresses (/{MAX_PREFIX[version]} or larger)")
    if overlay is not None and not _within(net, overlay):
        bad(f"{label}: {fld}", f"{net} is outside the overlay {overlay}")
    return net


def _check_subnets(nodes: list[Node], labels: list[str], fld: str, ofld: str, overlay,
                   bad) -> None:
    """The checks across nodes for one family's subnets (`fld`, "subnet" or "subnet6"),
    O(n log n): no two subnets overlap, and neither a subnet nor the overlay holds an
    underlay IP (the route for it would pull the tunnel's own outer packets into the
    tunnel: RFC 7348 section 4 carries VXLAN over the underlay's routing, which must stay
    outside the overlay)."""
    # CIDR blocks either nest or are disjoint, so after sorting by first address a
    # block overlaps an earlier one exactly when it starts before the furthest end
    # seen so far; the holder of that end is the one to name.
    ks = [k for k, n in enumerate(nodes) if getattr(n, fld) is not None]
    spans = {k: _span(getattr(nodes[k], fld)) for k in ks}
    order = sorted(ks, key=lambda k: (spans[k][0], k))
    reach, holder = -1, -1
    for k in order:
        net = getattr(nodes[k], fld)
        first, last = spans[k]
        if first <= reach:
            other = nodes[holder]
            bad(f"{labels[k]}: {fld}",
                f"{net} overlaps {getattr(other, fld)} of node {other.name!r}")
        if last > reach:
            reach, holder = last, k

    version = 4 if fld == "subnet" else 6
    under = sorted((int(n.underlay_ip), k) for k, n in enumerate(nodes)
                   if n.underlay_ip.version == version)
    keys = [a for a, _ in under]

    def inside(span) -> tuple[int, list[str]]:
        lo = bisect.bisect_left(keys, span[0])
        hi = bisect.bisect_right(keys, span[1])
        return hi - lo, [f"{nodes[k].underlay_ip} of node {nodes[k].name!r}"
                         for _, k in under[lo:min(hi, lo + 3)]]

    if overlay is not None:
        count, shown = inside(_span(overlay))
        if count:
            bad(f"cluster.{ofld}", f"{overlay} contains the underlay_ip "
                f"{_listed(shown, count)}: the underlay must stay outside the overlay")
    for k in ks:
        count, shown = inside(spans[k])
        if count:
            bad(f"{labels[k]}: {fld}", f"{getattr(nodes[k], fld)} contains the underlay_ip "
                f"{_listed(shown, count)}: its route would carry the tunnel into itself")


def _span(net) -> tuple[int, int]:
    """First and last address of a network, as integers (cheaper than ipaddress's
    broadcast_address and subnet_of, which matters at 20,000 nodes)."""
    first = int(net.network_address)
    return first, first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


def _within(net, outer) -> bool:
    (a, b), (c, d) = _span(net), _span(outer)
    return c <= a and b <= d


def _listed(shown: list[str], count: int) -> str:
    more = f" and {count - len(shown)} more" if count > len(shown) else ""
    return ", ".join(shown) + more


def _some(names, limit: int = 10) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _short(value, limit: int = 40) -> str:
    """repr() of a hostile value, on one line and of bounded length."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _node_name(value, where, bad) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        bad(where, "missing or empty")
        return None
    if not isinstance(value, str):
        bad(where, f"{_short(value)} is not a string")
        return None
    if len(value) > NODE_NAME_MAX:
        bad(where, f"{_short(value)} is {len(value)} characters long; a node name is "
            + NODE_NAME_RULE)
        return None
    if not NODE_NAME_RE.fullmatch(value):
        bad(where, f"{_short(value)} is not a valid node name: a node name is " + NODE_NAME_RULE)
        return None
    return value


def _underlay_ip(value, where, bad, warn):
    """A unicast address peers can send VXLAN to; None (and a problem) otherwise."""
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        bad(where, f"{_short(value)} is not an IP address")
        return None
    why = None
    if ip.is_unspecified:
        why = "the unspecified address: peers cannot send to it"
    elif ip.is_multicast:
        why = "a multicast address: the plan needs each node's own unicast address"
    elif ip == LIMITED_BROADCAST:
        why = "the limited broadcast address (RFC 919): peers cannot send unicast to it"
    elif ip.is_loopback:
        why = "a loopback address: no other node can reach it"
    elif ip.version == 6 and ip.ipv4_mapped is not None:
        why = f"an IPv4-mapped IPv6 address: write {ip.ipv4_mapped}"
    elif ip.version == 6 and ip.is_link_local:
        why = ("an IPv6 link-local address: it means nothing without an interface zone "
               "(RFC 4007), which a plan shared by every node cannot carry")
    if why:
        bad(where, f"{value} is {why}")  # as written: Python may print IPv6 otherwise
        return None
    if ip.is_link_local:  # IPv4 169.254/16: fine on one link, never routed (RFC 3927)
        warn(f"{where}: {ip} is link-local (RFC 3927): only nodes on the same link "
             "can reach it")
    return ip


def ifname_problem(name) -> str | None:
    """Why `name` cannot be a Linux interface name, or None. The kernel's rule
    (dev_valid_name): 1..15 bytes (IFNAMSIZ 16 with its NUL), not "." or "..",
    no '/', ':' or whitespace; we also refuse control characters, and '%', which
    the kernel would expand into a number of its choosing when creating a device."""
    if not isinstance(name, str):
        return "not a string"
    size = len(name.encode("utf-8", "surrogateescape"))
    if not size:
        return "it is empty"
    if size > IFNAMSIZ:
        return f"{size} bytes long; the kernel allows 1-{IFNAMSIZ}"
    if name in (".", ".."):
        return "'.' and '..' are not names"
    for c in name:
        if c in "/:%" or c.isspace() or not c.isprintable():
            return f"it may not contain {c!r}"
    return None


def _int(value, where, lo, hi, bad):
    if isinstance(value, bool) or not isinstance(value, int):
        bad(where, f"{value!r} is not a whole number")
        return lo
    if not lo <= value <= hi:
        bad(where, f"{value} is outside {lo}..{hi}")
    return value


def _net(value, where, bad):
    try:
        net = ipaddress.ip_network(str(value))  # strict by default: no host bits set
    except ValueError as e:
        bad(where, f"{value!r} is not a network ({e})")
        return None
    return net
