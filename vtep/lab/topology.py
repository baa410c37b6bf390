"""A small mininet-like model of a namespace lab: Topology, Node, Link.

Pure description until start(): add_node/add_link/add_route only record; start() makes the
namespaces, then the links, then the routes, in that order, and on any failing step
removes everything made so far; stop() ends the processes started through Node.popen (by
PID) and deletes the namespaces. The seed cluster's topology is built from this by
seed.topology(); a newcomer reads Topology.start first.

    from vtep.lab import seed
    from vtep.lab.topology import Topology

    with seed.topology("vtt123-") as t:             # built on enter, torn down on exit
        t["network-1"].cmd(["ping", "-c1", "-W1", "192.168.2.142"])
        p = t["router"].popen(["tcpdump", ...])     # ended by PID in stop()

    t = Topology("vtl-")                            # or by hand
    a, b = t.add_node("a"), t.add_node("b", forward=True)
    t.add_link(a, b, "eth0", "eth0", "10.0.0.1/24", "10.0.0.2/24", mtu=1500, tx_offload=False)
    t.add_route(a, "10.1.0.0/24", "10.0.0.2")
    t.start()   # idempotent; on a failing step everything made so far is removed
    ...
    t.stop()    # always: ends the processes it started (by PID), deletes its namespaces

API:
- Topology(prefix): add_node(name, forward=False) -> Node; add_link(a, b, a_if, b_if,
  a_addr=None, b_addr=None, mtu=None, tx_offload=True, a_mac=None, b_mac=None,
  a_gro=False) -> Link;
  add_route(node, dst, via); start() -> self; stop(); t[name] -> Node; t.nodes (dict);
  t.namespaces (created, in order).
- Node: .name (logical), .ns (real namespace = prefix + name), .path (/run/netns/<ns>),
  .cmd(argv, check=True, timeout=30) -> CompletedProcess (raises LabError when check fails),
  .popen(argv, **Popen kw) -> Popen (recorded; stop() ends it).
- Link: veth pair created directly inside the two namespaces (`ip netns exec A ip link add
  x type veth peer name y netns B`), so nothing ever exists in the root namespace.
  tx_offload=False turns tx checksum offload off on both ends: a veth otherwise leaves
  outer UDP checksums unfilled (CHECKSUM_PARTIAL), which a capture shows as bad and a
  userspace VTEP would drop. a_gro=True turns GRO on at a's end (a veth's is off, a
  real NIC's on): the userspace VTEP's UDP_GRO coalesces received datagrams only
  when the device it receives on does GRO.
"""
from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass

from .. import netns
from ..errors import LabError

NETNS_DIR = "/run/netns"
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL for a process we started
IPV6_READY = 5.0  # seconds an IPv6 link may take to carry its first ping


class Node:
    """One network namespace, named prefix + name."""

    def __init__(self, topo: "Topology", name: str, forward: bool = False):
        self.topo = topo
        self.name = name
        self.ns = topo.prefix + name
        self.forward = forward

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.ns}"

    def cmd(self, argv: list[str], *, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess:
        return netns.sh(argv, ns=self.ns, check=check, timeout=timeout, input=input)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        p = netns.popen(argv, ns=self.ns, **kw)
        self.topo.processes.append(p)
        return p

    def __repr__(self):
        return f"Node({self.name!r}, ns={self.ns!r})"


@dataclass
class Link:
    a: Node
    b: Node
    a_if: str
    b_if: str
    a_addr: str | None = None   # CIDR, e.g. "192.168.1.138/24"
    b_addr: str | None = None
    mtu: int | None = None
    tx_offload: bool = True
    a_mac: str | None = None    # None: the kernel picks a random one
    b_mac: str | None = None
    a_gro: bool = False         # GRO on at a's end, as on a real NIC (see the docstring)

    def create(self) -> None:
        a_mac = ["address", self.a_mac] if self.a_mac else []
        b_mac = ["address", self.b_mac] if self.b_mac else []
        self.a.cmd(["ip", "link", "add", self.a_if, *a_mac, "type", "veth",
                    "peer", "name", self.b_if, *b_mac, "netns", self.b.ns])
        for node, dev, addr in ((self.a, self.a_if, self.a_addr), (self.b, self.b_if, self.b_addr)):
            if self.mtu:
                node.cmd(["ip", "link", "set", dev, "mtu", str(self.mtu)])
            if not self.tx_offload:
                node.cmd(["ethtool", "-K", dev, "tx", "off"])
            if self.a_gro and node is self.a:
                node.cmd(["ethtool", "-K", dev, "gro", "on"])
            if addr:
                node.cmd(["ip", "address", "add", addr, "dev", dev])
            node.cmd(["ip", "link", "set", dev, "up"])

    def wait_ipv6(self, limit: float = IPV6_READY) -> None:
        """Until an IPv6 link carries a ping from a to b. The kernel configures IPv6 on a
        device (its multicast route, hence neighbour discovery) only when the link-watch
        work reports the carrier, up to a second after `ip link set up`; until then a
        neighbour solicitation is dropped and resent a second later (RetransTimer, RFC
        4861), so the first packets of a fresh underlay would wait or be lost."""
        if not (self.a_addr and self.b_addr and ":" in self.b_addr):
            return
        dst = self.b_addr.split("/")[0]
        deadline = time.monotonic() + limit
        while self.a.cmd(["ping", "-6", "-n", "-c", "1", "-W", "0.2", dst],
                         check=False).returncode:
            if time.monotonic() > deadline:
                raise LabError(f"{self.a.ns} {self.a_if} -> {dst}: IPv6 link not up within "
                               f"{limit:g}s")


class Topology:
    """Namespaces, veth links and static routes; built by start(), removed by stop()."""

    def __init__(self, prefix: str):
        if not prefix:
            raise LabError("a lab topology needs a non-empty namespace prefix")
        self.prefix = prefix
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []
        self.routes: list[tuple[Node, str, str]] = []
        self.namespaces: list[str] = []        # created by start(), in order
        self.processes: list[subprocess.Popen] = []
        self.started = False

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def add_node(self, name: str, *, forward: bool = False) -> Node:
        if name in self.nodes:
            raise LabError(f"node {name!r} is declared twice")
        n = self.nodes[name] = Node(self, name, forward)
        return n

    def add_link(self, a: Node, b: Node, a_if: str, b_if: str, a_addr: str | None = None,
                 b_addr: str | None = None, *, mtu: int | None = None,
                 tx_offload: bool = True, a_mac: str | None = None,
                 b_mac: str | None = None, a_gro: bool = False) -> Link:
        link = Link(a, b, a_if, b_if, a_addr, b_addr, mtu, tx_offload, a_mac, b_mac, a_gro)
        self.links.append(link)
        return link

    def add_route(self, node: Node, dst: str, via: str) -> None:
        self.routes.append((node, dst, via))

    def start(self) -> "Topology":
        if self.started:
            return self
        try:
            existing = set(netns.list_namespaces())
            for n in self.nodes.values():
                if n.ns in existing:  # another lab (or a crashed one) owns it: never adopt it
                    raise LabError(f"namespace {n.ns} already exists (another lab with prefix "
                                   f"{self.prefix!r}? `vtep lab down --prefix {self.prefix}`)")
                netns.add(n.ns)
                self.namespaces.append(n.ns)
                # No IPv6 duplicate address detection on the devices to come: every address
                # here is ours alone, and a tentative address can be neither bound nor used
                sysctls = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
                if n.forward:  # both families: the seed has an IPv4 and an IPv6 twin
                    sysctls += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
                n.cmd(["sysctl", "-qw", *sysctls])
            for link in self.links:
                link.create()
            for node, dst, via in self.routes:
                node.cmd(["ip", "route", "add", dst, "via", via])
            for link in self.links:
                link.wait_ipv6()
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def stop(self) -> None:
        """End the processes started through Node.popen (by PID), delete our namespaces.

        Deleting a namespace removes its veths, addresses and routes with it."""
        self.end_processes()
        for ns in reversed(self.namespaces):
            netns.delete(ns)
        self.namespaces.clear()
        self.started = False

    def end_processes(self) -> None:
        """End the processes started through Node.popen (by PID), newest first."""
        for p in reversed(self.processes):
            end_process(p)
        self.processes.clear()

    def __enter__(self) -> "Topology":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def end_process(p: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only this Popen's own PID."""
    if p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=grace)
    except ProcessLookupError:
        pass

