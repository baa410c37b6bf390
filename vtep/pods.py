"""`vtep pod add|del`: attach a network namespace to the node's bridge, as the CNI
bridge plugin with host-local IPAM does.

The connectivity rule: the pod namespace holds `eth0`, one end of a veth pair
whose other end is a port of the node bridge (default br0). The bridge holds
the gateway, the node subnet's second address, with the subnet's prefix; the
pod gets the next free address of the subnet (the first is the VTEP's, the
second the gateway's), `lo` up and a default route via the gateway. The node
then routes pod traffic into the overlay (`vtep run` installs the routes and
turns forwarding on). The pod's MTU is the overlay MTU, so that pod packets
fit the VXLAN encapsulation (RFC 7348 section 4.3: VTEPs must not fragment).

A dual-stack plan (overlay6) applies the same rule once per family, IPv4 first:
the bridge also holds gateway6/64, the pod an address of the node's subnet6 and
a default route ::/0 via gateway6, at the one overlay MTU (at least 1280, IPv6's
minimum). An IPv6-only plan gives IPv6 alone. Both IPv6 addresses are added
with nodad: they are unique by allocation, and duplicate address detection
would hold them tentative (unusable as a source, unanswered as a gateway) for
about 1.7 s after the pod's link comes up (measured, README). A pod record holds
its addresses (`ips`) and gateways, IPv4 first, `ip`/`gateway` being the first;
both families are allocated, reserved and released together, in one write.

Allocations live in `<state-dir>/pods-<node>.json`, written atomically (a
temporary file renamed over the old one) under an flock, so concurrent adds
never hand out one address twice and a restart keeps every pod's address.

`attach` makes or repairs an attachment through two vtep.rtlink sockets, one in
the node's namespace and one created inside the pod's (any namespace path a
container runtime hands over, `--netns PATH`); every step is ensure-style, so a
repeated add repairs what drifted. vtep-cni (vtep.cni) attaches containers with
the same `attach`, in the same allocation file.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from . import host, plan as planlib
from .errors import HostMismatch, UsageError, VtepError
from .inet import IPV6_MIN_MTU
from .rtlink import Link, RtError, RtLink, write_sysctl

NETNS_DIR = "/run/netns"
POD_IF = "eth0"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AddressError(UsageError):
    """--ip is outside the node subnet, reserved or taken."""


class SubnetExhausted(UsageError):
    """No free address is left in the node subnet."""


class PodError(VtepError):
    """Configuring the pod namespace failed (the pod is rolled back)."""

    exit_code = 6


# --- the allocation state file -------------------------------------------------------------

class PodStore:
    """The node's pod allocations: {name: {ip, ips, gateway, gateways, veth, netns,
    created_netns, bridge}}; `ips` lists the pod's address per family, IPv4 first, and
    `ip` is the first of them (a record older than dual stack has `ip` alone)."""

    def __init__(self, state_dir: str, node: str):
        self.dir = Path(state_dir)
        self.path = self.dir / f"pods-{node}.json"
        self.node = node
        self.pods: dict[str, dict] = {}

    @property
    def lock_path(self) -> Path:
        return self.dir / f"pods-{self.node}.lock"

    @contextmanager
    def locked(self, create: bool = True):
        """Hold the node's allocation lock; load on entry. Callers save() what they change.

        create=False (del): a node that has neither a store nor a lock file has no pods
        here, so nothing is locked or made (no directory, no lock file) and the store is
        empty; a concurrent add makes the lock before its veth, so it is not missed."""
        if not create and not (self.path.exists() or self.lock_path.exists()):
            self.pods = {}
            yield self
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.lock_path, "a")  # "a": never truncates a file another holds
        except OSError as e:
            raise UsageError(f"state dir {self.dir}: {e.strerror}")
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._load()
            yield self

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.pods = {}
            return
        except (OSError, ValueError) as e:
            raise UsageError(f"{self.path}: unreadable pod state ({e}); move it away to start over")
        self.pods = dict(data.get("pods", {}))

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump({"node": self.node, "pods": self.pods}, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: a crash leaves the old file or the new one

    def taken(self) -> dict[str, str]:
        """{address: pod} over both families (the texts never collide)."""
        return {ip: name for name, p in self.pods.items() for ip in record_ips(p)}


def record_ips(rec: dict) -> list[str]:
    """A record's addresses, IPv4 first (an older record has `ip` alone)."""
    ips = rec.get("ips")
    return list(ips) if isinstance(ips, list) else [rec["ip"]] if rec.get("ip") else []


def families(node: planlib.Node) -> list[tuple]:
    """(subnet, gateway) per overlay family of the node, IPv4 first."""
    return [(s, s.network_address + 1) for s in node.subnets]


def gateway_of(node: planlib.Node, version: int) -> str:
    return str(node.gateway if version == 4 else node.gateway6)


class Zoned(ValueError):
    """An IPv6 address with a zone ("fd00::9%eth0"), refused as a pod address."""


def address(text: str):
    """An IP address as a pod may hold it: ValueError for anything else, an IPv6 zone
    included (Python's ip_address takes "fd00::9%eth0" and keeps the zone in its text,
    which would then dodge the "already taken" comparison and reach the kernel as a
    different string than the one recorded)."""
    ip = ipaddress.ip_address(text)
    if getattr(ip, "scope_id", None) is not None:
        raise Zoned(f"{text!r} carries a zone (%{ip.scope_id}): a zone means nothing in "
                    "the overlay")
    return ip


def allocate(node: planlib.Node, taken: dict[str, str], want: str | None, pod: str,
             version: int = 4) -> str:
    """The requested address, validated, or the lowest free one of the node's subnet of
    `version` (4: subnet, 6: subnet6)."""
    subnet = node.subnet if version == 4 else node.subnet6
    if subnet is None:
        raise AddressError(f"node {node.name} has no IPv{version} subnet (the plan has no "
                           f"{'overlay' if version == 4 else 'overlay6'})")
    gateway = subnet.network_address + 1
    if want is not None:
        try:
            ip = address(want)
        except Zoned as e:
            raise AddressError(f"--ip {e}") from None
        except ValueError:
            ip = None
        if ip is None or ip.version != version:
            raise AddressError(f"--ip {want!r} is not an IPv{version} address")
        if ip not in subnet:
            raise AddressError(f"--ip {ip} is outside node {node.name}'s subnet {subnet}")
        if ip == subnet.network_address:
            raise AddressError(f"--ip {ip} is node {node.name}'s VTEP address")
        if ip == gateway:
            raise AddressError(f"--ip {ip} is node {node.name}'s bridge gateway")
        if version == 4 and ip == subnet.broadcast_address:
            raise AddressError(f"--ip {ip} is the broadcast address of {subnet}")
        other = taken.get(str(ip))
        if other is not None and other != pod:
            raise AddressError(f"--ip {ip} is already taken by pod {other!r}")
        return str(ip)
    # hosts() skips the network address (the VTEP's; in IPv6 also the subnet-router
    # anycast address, RFC 4291 2.6.1) and IPv4's broadcast; lazily, so a /64 costs
    # as many steps as it has pods
    for ip in subnet.hosts():
        if ip != gateway and str(ip) not in taken:
            return str(ip)
    raise SubnetExhausted(f"node {node.name!r}: subnet {subnet} is exhausted "
                          f"({len(taken)} addresses taken; free one with `vtep pod del`)")


def wanted(node: planlib.Node, texts) -> dict[int, str]:
    """Requested addresses ("A" or "A,B", or a list of them), at most one per family of
    the node's plan: {version: address}. Checks the form only; allocate() the rest."""
    items = [t.strip() for text in ([texts] if isinstance(texts, str) else texts or [])
             for t in text.split(",") if t.strip()]
    out: dict[int, str] = {}
    for text in items:
        try:
            ip = address(text.split("/")[0])
        except Zoned as e:
            raise AddressError(f"--ip {e}") from None
        except ValueError:
            raise AddressError(f"--ip {text!r} is not an IPv4 or IPv6 address") from None
        if out.get(ip.version, str(ip)) != str(ip):
            raise AddressError(f"--ip: two IPv{ip.version} addresses ({out[ip.version]}, "
                               f"{ip}); a pod has one per family")
        if (node.subnet if ip.version == 4 else node.subnet6) is None:
            raise AddressError(f"--ip {ip}: node {node.name} has no IPv{ip.version} subnet "
                               f"(the plan has no {'overlay' if ip.version == 4 else 'overlay6'})")
        out[ip.version] = str(ip)
    return out


def allocate_all(node: planlib.Node, taken: dict[str, str], want: dict[int, str], pod: str,
                 have=()) -> list[str]:
    """One address per family of the node, IPv4 first: the one the pod already `have`s
    when it is still inside that family's subnet, else the requested one, else the
    lowest free. Nothing is recorded here: the caller reserves all of them in one write,
    so a failure in either family leaves neither taken."""
    out = []
    for subnet, _ in families(node):
        kept = [a for a in have if ipaddress.ip_address(a) in subnet]
        out.append(kept[0] if kept else
                   allocate(node, taken, want.get(subnet.version), pod, subnet.version))
    return out


def veth_name(pod: str) -> str:
    """The host end's name: stable per pod, within IFNAMSIZ (15)."""
    return "veth" + hashlib.sha256(pod.encode()).hexdigest()[:8]


# --- the attachment: node side and pod side, through one netlink socket each ----------------

class Attached(NamedTuple):
    bridge_mac: str
    veth_mac: str
    pod: Link | None     # the pod's interface after the setup (its MAC and MTU)


DEFAULT_ROUTE = "0.0.0.0/0"
DEFAULT_ROUTE6 = "::/0"


def default_routes(node: planlib.Node) -> list[str]:
    """A first interface's routes: the default route of each family the node has."""
    return [DEFAULT_ROUTE if s.version == 4 else DEFAULT_ROUTE6 for s in node.subnets]


def check_mtu(node: planlib.Node, mtu: int) -> None:
    """An IPv6 subnet needs an MTU of 1280 (RFC 8200 section 5): the kernel turns IPv6
    off on a device whose MTU goes below that, dropping its addresses, and raising the
    MTU again brings back the link-local address only (measured, README)."""
    if node.subnet6 is not None and mtu < IPV6_MIN_MTU:
        raise UsageError(f"node {node.name}: overlay MTU {mtu} is below {IPV6_MIN_MTU}, the "
                         "least an IPv6 link carries (RFC 8200 section 5), and the plan has "
                         "overlay6; raise the MTU (cluster.mtu, the underlay's) or drop overlay6")


def attach(node: planlib.Node, ns_path: str, veth: str, ips, mtu: int,
           bridge: str = "br0", ifname: str = POD_IF, routes=None) -> Attached:
    """The connectivity rule, made or repaired: `bridge` holding the gateway of each
    family, up; the pair `veth` (here, on the bridge) <-> `ifname` (in the pod) at `mtu`;
    in the pod, lo up, exactly `ips` (one per family, each with its subnet's prefix), up,
    and `routes` (default: the default route of each family; a second interface gets
    the overlays') each via its family's gateway. Each step is a no-op when already so.
    An `ifname` in the pod that is not our pair's end is left alone and refused."""
    check_mtu(node, mtu)
    routes = default_routes(node) if routes is None else list(routes)
    with RtLink() as here, RtLink(ns_path) as pod:
        br = ensure_bridge(here, bridge, node)
        host_end = ensure_veth(here, pod, veth, ns_path, br, mtu, ifname)
        configure_pod(pod, list(ips), node, ifname, mtu, routes)
        br = here.link(bridge)   # as it is now (an older bridge follows its ports' MACs)
        # the link alone: a result names the interface's MAC and MTU, and pod_link's
        # address and route dumps would cost every ADD two more requests
        return Attached(br.mac if br else "", host_end.mac, pod.link(ifname))


def enable_ipv6(rt: RtLink, ifname: str) -> None:
    """IPv6 on `ifname` in rt's namespace, as the reference bridge plugin makes sure of:
    a runtime or a node may have turned it off (net.ipv6.conf.default.disable_ipv6=1),
    and the kernel then refuses an IPv6 address ("IPv6 is disabled on this device")."""
    try:
        sysctl(rt, f"net/ipv6/conf/{ifname}/disable_ipv6", "0")
    except PodError as e:
        if not isinstance(e.__cause__, FileNotFoundError):
            raise   # (none: no IPv6 in this kernel at all, which adding the address says)


def sysctl(rt: RtLink, path: str, value: str) -> None:
    """/proc/sys/`path` = `value` in rt's namespace; a refusal names the file."""
    try:
        write_sysctl(path, value, rt.netns)
    except OSError as e:
        where = f" in {rt.netns}" if rt.netns else ""
        raise PodError(f"net.{path[4:].replace('/', '.')}{where}: cannot set it to {value} "
                       f"({e.strerror or e})") from e


def ensure_bridge(rt: RtLink, name: str, node: planlib.Node) -> Link:
    """`name`, a bridge holding each family's gateway with its subnet's prefix, up."""
    br = rt.link(name)
    if br is None:
        try:
            # A MAC of its own: a bridge without one takes its lowest port's, so the
            # gateway's MAC would change under every pod's ARP cache as pods come and go.
            rt.add_bridge(name, planlib.derive_mac(f"{node.name}/{name}",
                                                   node.subnet or node.subnet6))
        except RtError as e:
            if e.errno != errno.EEXIST:   # made meanwhile by a concurrent add: fine
                raise
        br = rt.link(name)
    elif br.kind != "bridge":
        raise UsageError(f"--bridge {name}: a device of that name exists and is not a bridge "
                         f"({br.kind or 'no kind'})")
    for subnet, gateway in families(node):
        if subnet.version == 6:
            enable_ipv6(rt, name)
        # nodad: gateway6 is the plan's, held by this bridge alone; with DAD it stays
        # tentative (the bridge does not answer a pod's neighbour solicitation for it)
        # until a port's carrier is up and a second has passed (measured, README)
        rt.add_address(br.index, str(gateway), subnet.prefixlen, nodad=subnet.version == 6)
    if not br.up:
        rt.set_link(br, up=True)
    return br


def ensure_veth(rt: RtLink, pod: RtLink, veth: str, ns_path: str, bridge: Link, mtu: int,
                ifname: str = POD_IF) -> Link:
    """The pair: `veth` here on the bridge, `ifname` created directly in the pod."""
    host_end = rt.link(veth)
    if host_end is not None and pod.link(ifname) is None:   # half a pair: start over
        rt.del_link(host_end)
        host_end = None
    if host_end is None:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            rt.add_veth(veth, mtu, ifname, fd)
        except RtError as e:
            if e.errno == errno.EEXIST and pod.link(ifname) is not None:
                raise PodError(f"{ifname} already exists in {ns_path} and is not this "
                               "pod's (another attachment's, or the runtime's)") from None
            raise
        finally:
            os.close(fd)
        host_end = rt.link(veth)
    if host_end.master != bridge.index or not host_end.up or host_end.mtu != mtu:
        rt.set_link(host_end, up=True, mtu=mtu, master=bridge.index)
    return host_end


def remove_veth(veth: str) -> bool:
    """Delete the pair by its host end (the pod's end goes with it); False if absent."""
    with RtLink() as rt:
        link = rt.link(veth)
        if link is None:
            return False
        try:
            rt.del_link(link)
        except RtError as e:
            if e.errno != errno.ENODEV:   # gone meanwhile (its namespace was deleted)
                raise
    return True


def _ours(addr: str) -> bool:
    """An address a pod's setup manages: any IPv4 one, IPv6 ones but link-local (the
    kernel makes fe80::/64 from the MAC; the pod keeps it, as on any IPv6 link)."""
    return not ipaddress.ip_address(addr).is_link_local or ":" not in addr


def configure_pod(pod: RtLink, ips: list[str], node: planlib.Node, ifname: str = POD_IF,
                  mtu: int | None = None, routes=None) -> None:
    """lo up; `ifname` has `mtu`, is up and holds exactly `ips` (each with its family's
    prefix); `routes` each via its family's gateway. A repeated add repairs drift."""
    routes = default_routes(node) if routes is None else routes
    lo = pod.link("lo")
    if lo is not None and not lo.up:
        pod.set_link(lo, up=True)
    dev = pod.link(ifname)
    if dev is None:
        raise PodError(f"{ifname} vanished from the pod while it was set up")
    # the MTU before the addresses: below 1280 the kernel has dropped IPv6 from the device
    if not dev.up or (mtu and dev.mtu != mtu):
        pod.set_link(dev, up=True, mtu=mtu)
    plens = {s.version: s.prefixlen for s in node.subnets}
    want = {(ip, plens[ipaddress.ip_address(ip).version]) for ip in ips}
    if 6 in plens:
        enable_ipv6(pod, ifname)
        # the routes are static: a router advertisement from another pod on the bridge
        # would otherwise add a default route via that pod (accept_ra is 1 by default
        # in a namespace that does not forward)
        sysctl(pod, f"net/ipv6/conf/{ifname}/accept_ra", "0")
    for addr, alen, _ in pod.addresses(dev.index):
        if _ours(addr) and (addr, alen) not in want:   # a stale earlier allocation
            pod.del_address(dev.index, addr, alen)
    for ip, plen in sorted(want):
        pod.add_address(dev.index, ip, plen, nodad=":" in ip)
    have = pod.gateway_routes(dev.index, socket.AF_UNSPEC)
    for route in routes:
        gw = gateway_of(node, ipaddress.ip_network(route).version)
        if [g for d, g, _ in have if d == route] != [gw]:
            pod.replace_route(route, gw, dev.index)


def pod_link(pod: RtLink, ifname: str = POD_IF) -> dict | None:
    """What `ifname` in the pod is now: mac, mtu, up, its addresses (CIDR; IPv4 first,
    IPv6 link-local left out) and its routes through a gateway, both families
    ({destination CIDR: [gateways]}); None when the pod has no such interface."""
    dev = pod.link(ifname)
    if dev is None:
        return None
    routes: dict[str, list[str]] = {}
    for dst, gw, _ in pod.gateway_routes(dev.index, socket.AF_UNSPEC):
        routes.setdefault(dst, []).append(gw)
    addrs = [(a, n) for a, n, _ in pod.addresses(dev.index) if _ours(a)]
    addrs.sort(key=lambda x: ":" in x[0])
    return {"mac": dev.mac, "mtu": dev.mtu, "up": dev.up,
            "addresses": [f"{a}/{n}" for a, n in addrs], "routes": routes}


# --- namespaces -----------------------------------------------------------------------------

NS_GET_NSTYPE = 0xB703      # ioctl on a namespace fd (linux/nsfs.h): its CLONE_NEW* type
CLONE_NEWNET = 0x40000000


def netns_problem(path: str) -> str | None:
    """Why `path` cannot be a pod's network namespace: missing, not a network namespace
    (a file, a mount namespace), or this very namespace, the node's own, whose default
    route and addresses a pod's setup would overwrite. None when it can be."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return e.strerror.lower()
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            return "not a network namespace"
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
            return "this node's own network namespace, not a pod's"
    finally:
        os.close(fd)
    return None


def netns_dir_is_private() -> bool:
    """True inside `ip netns exec` (or any slave mount namespace): /run/netns is mounted
    there as a slave ("master:N") of the host's shared mount, so a namespace created here
    would be a bind mount nobody else sees, and `ip netns list` outside shows a dead entry."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == NETNS_DIR:
                    tags = fields[6:fields.index("-")]
                    return any(t.startswith("master:") for t in tags) and \
                        not any(t.startswith("shared:") for t in tags)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise UsageError(f"pod name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(at most 64, starting with a letter or digit)")


def _create_netns(name: str) -> None:
    if netns_dir_is_private():
        raise UsageError(f"cannot create namespace {name} from a private mount namespace "
                         "(`ip netns exec`?): others would not see it; run with "
                         "`nsenter --net=/run/netns/NODE`, or pass --netns PATH")
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode:
        raise PodError(f"ip netns add {name}: {r.stderr.strip()}")


def _delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


# --- the commands ---------------------------------------------------------------------------

def _context(args):
    plan = planlib.load(args.config)
    node = host.select_node(plan, args.node)
    return plan, node


def _node_of_pod(args) -> str | None:
    """The node whose allocations hold the pod: from --config/--node when given,
    else the one state file under --state-dir that names it (`vtep pod del NAME`)."""
    if args.config:
        return _context(args)[1].name
    owners = []
    for path in sorted(Path(args.state_dir).glob("pods-*.json")):
        try:
            doc = json.loads(path.read_text())
            if args.name in doc.get("pods", {}):
                owners.append(doc["node"])
        except (OSError, ValueError, AttributeError, KeyError):
            continue
    if len(owners) > 1:
        raise UsageError(f"pod {args.name} is recorded for nodes {', '.join(owners)} under "
                         f"{args.state_dir}; name the node with --config and --node")
    # not recorded anywhere: deleting is a no-op (idempotent); without a node there is no
    # store to look in (a made-up node name would leave a lock file of its own behind)
    return owners[0] if owners else args.node


def _overlay_mtu(plan, node) -> int:
    try:
        _, underlay_mtu = host.underlay(node)
    except HostMismatch as e:
        raise HostMismatch(f"{e} (run `vtep pod` on node {node.name!r}, in its namespace)")
    return planlib.overlay_mtu(plan, underlay_mtu)


def add(args) -> dict:
    """Attach pod args.name; returns its record. Idempotent; rolls back on failure."""
    host.require_net_admin("vtep pod add")
    _check_name(args.name)
    plan, node = _context(args)
    mtu = _overlay_mtu(plan, node)
    store = PodStore(args.state_dir, node.name)
    check_mtu(node, mtu)
    asked = wanted(node, args.ip)
    with store.locked():
        rec = store.pods.get(args.name)
        have = record_ips(rec) if rec else []
        for version, ip in asked.items():   # each asked address against the family's own
            allocate(node, {}, ip, args.name, version)
            mine = [a for a in have if ipaddress.ip_address(a).version == version]
            if mine and mine[0] != ip:
                raise AddressError(f"pod {args.name!r} already has {mine[0]} (not {ip}); "
                                   "`vtep pod del` it first")
        if rec and args.netns and os.path.abspath(args.netns) != rec["netns"]:
            raise UsageError(f"pod {args.name!r} is already attached to {rec['netns']}")
        ips = allocate_all(node, store.taken(), asked, args.name, have)
        make_ns = False
        if args.netns:
            ns_path = os.path.abspath(args.netns)  # not realpath: /proc/PID/ns/net is a
            # magic link whose target ("net:[...]") is no path
            why = netns_problem(ns_path)
            if why:
                raise UsageError(f"--netns {args.netns}: {why}")
        else:
            ns_path = f"{NETNS_DIR}/{args.name}"
            make_ns = not os.path.exists(ns_path)
        created = bool(rec and rec.get("created_netns")) or make_ns
        old = rec
        rec = record(node, ips, veth_name(args.name), ns_path, created, args.bridge)
        # The reservation is written before anything is made: a crash (kill -9) from here
        # on leaves a record that `vtep pod del` releases, never an address in use that
        # the file does not hold, nor a namespace nobody would delete.
        reserve(store, args.name, rec)
        try:
            if make_ns:
                _create_netns(args.name)
            attach(node, ns_path, rec["veth"], ips, mtu, args.bridge)
        except BaseException as e:
            if old is None:  # nothing half-configured: undo what this call made
                quietly(remove_veth, rec["veth"])
            if make_ns:
                _delete_netns(args.name)
            unreserve(store, args.name, old)
            if isinstance(e, VtepError):
                raise
            if isinstance(e, Exception):
                raise PodError(f"pod {args.name}: {e}") from None
            raise
    return rec


def record(node: planlib.Node, ips: list[str], veth: str, netns: str, created: bool,
           bridge: str, **extra) -> dict:
    """A pod's record: its addresses and gateways per family (IPv4 first), `ip` and
    `gateway` the first (what tools reading a single-stack record expect)."""
    gateways = [gateway_of(node, ipaddress.ip_address(ip).version) for ip in ips]
    return {"ip": ips[0], "ips": ips, "gateway": gateways[0], "gateways": gateways,
            "veth": veth, "netns": netns, "created_netns": created, "bridge": bridge,
            **extra}


def reserve(store: PodStore, key: str, rec: dict) -> None:
    store.pods[key] = rec
    try:
        store.save()
    except OSError as e:
        raise UsageError(f"{store.path}: cannot write the allocation ({e.strerror})")


def unreserve(store: PodStore, key: str, old: dict | None) -> None:
    """Put the record back as it was before a failed add (best effort: the failure
    being reported matters more than a second one)."""
    if old is None:
        store.pods.pop(key, None)
    else:
        store.pods[key] = old
    quietly(store.save)


def quietly(fn, *a) -> None:
    try:
        fn(*a)
    except (OSError, VtepError):
        pass


def delete(args) -> dict | None:
    """Detach pod args.name; returns the record it had (None if unknown). Idempotent."""
    host.require_net_admin("vtep pod del")
    _check_name(args.name)
    node = _node_of_pod(args)
    if node is None:  # recorded for no node: only a leftover veth of a crashed add to undo
        remove_veth(veth_name(args.name))
        return None
    store = PodStore(args.state_dir, node)
    with store.locked(create=False):
        rec = store.pods.get(args.name)
        remove_veth(rec["veth"] if rec else veth_name(args.name))
        if rec and rec.get("created_netns"):
            if netns_dir_is_private():
                raise UsageError(f"cannot delete namespace {args.name} from a private mount "
                                 "namespace (`ip netns exec`?); run with `nsenter --net=...`")
            _delete_netns(args.name)
        if rec:
            del store.pods[args.name]
            store.save()
    return rec


def add_command(args) -> int:
    rec = add(args)
    print(f"pod {args.name}: {', '.join(record_ips(rec))} via "
          f"{', '.join(rec.get('gateways') or [rec['gateway']])} on {rec['bridge']} "
          f"({rec['veth']} <-> {POD_IF} in {rec['netns']})")
    return 0


def del_command(args) -> int:
    rec = delete(args)
    if rec is None:
        print(f"pod {args.name}: not attached; nothing to do", file=sys.stderr)
    else:
        print(f"pod {args.name}: removed ({', '.join(record_ips(rec))} freed"
              + (f", namespace {args.name} deleted)" if rec.get("created_netns") else ")"))
    return 0

