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

Allocations live in `<state-dir>/pods-<node>.json`, written atomically (a
temporary file renamed over the old one) under an flock, so concurrent adds
never hand out one address twice and a restart keeps every pod's address.

Node-side changes go through pyroute2 (ensure-style: EEXIST is success);
pod-side changes through `nsenter --net=PATH ip ...`, which accepts any
namespace path a container runtime hands over (`--netns PATH`).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from . import host, plan as planlib, state as statelib
from .errors import HostMismatch, UsageError, VtepError

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
    """The node's pod allocations: {name: {ip, veth, netns, created_netns}}."""

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
        return {p["ip"]: name for name, p in self.pods.items()}


def allocate(node: planlib.Node, taken: dict[str, str], want: str | None, pod: str) -> str:
    """The requested address, validated, or the lowest free one of the node subnet."""
    subnet = node.subnet
    if want is not None:
        try:
            ip = ipaddress.ip_address(want)
        except ValueError:
            raise AddressError(f"--ip {want!r} is not an IPv4 address")
        if ip not in subnet:
            raise AddressError(f"--ip {ip} is outside node {node.name}'s subnet {subnet}")
        if ip == node.vtep_ip:
            raise AddressError(f"--ip {ip} is node {node.name}'s VTEP address")
        if ip == node.gateway:
            raise AddressError(f"--ip {ip} is node {node.name}'s bridge gateway")
        if ip == subnet.broadcast_address:
            raise AddressError(f"--ip {ip} is the broadcast address of {subnet}")
        other = taken.get(str(ip))
        if other is not None and other != pod:
            raise AddressError(f"--ip {ip} is already taken by pod {other!r}")
        return str(ip)
    for ip in subnet.hosts():  # hosts() skips the network (VTEP) and broadcast addresses
        if ip != node.gateway and str(ip) not in taken:
            return str(ip)
    raise SubnetExhausted(f"node {node.name!r}: subnet {subnet} is exhausted "
                          f"({len(taken)} pods; free one with `vtep pod del`)")


def veth_name(pod: str) -> str:
    """The host end's name: stable per pod, within IFNAMSIZ (15)."""
    return "veth" + hashlib.sha256(pod.encode()).hexdigest()[:8]


# --- node side (this namespace), through pyroute2 ------------------------------------------

def _ipr():
    from pyroute2 import IPRoute
    return IPRoute()


def _ok_if_exists(fn, *a, **kw):
    from pyroute2 import NetlinkError
    try:
        fn(*a, **kw)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def ensure_bridge(ipr, name: str, node: planlib.Node) -> int:
    """br0 holding the gateway with the subnet prefix, up. Idempotent; returns its index."""
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        _ok_if_exists(ipr.link, "add", ifname=name, kind="bridge")
        idx = ipr.link_lookup(ifname=name)
    else:
        kind = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
        kind = kind.get_attr("IFLA_INFO_KIND") if kind else None
        if kind != "bridge":
            raise UsageError(f"--bridge {name}: a device of that name exists and is not a bridge "
                             f"({kind or 'no kind'})")
    idx = idx[0]
    _ok_if_exists(ipr.addr, "add", index=idx, address=str(node.gateway),
                  prefixlen=node.subnet.prefixlen)
    ipr.link("set", index=idx, state="up")
    return idx


def ensure_veth(ipr, veth: str, ns_path: str, bridge_idx: int, mtu: int,
                ifname: str = POD_IF) -> None:
    """The pair: `veth` here on the bridge, `ifname` created directly in the pod namespace.
    An `ifname` already in the pod that is not the other end of `veth` is refused (EEXIST
    from the kernel, raised): it belongs to someone else."""
    idx = ipr.link_lookup(ifname=veth)
    if idx and not _pod_has_if(ns_path, ifname):  # half a pair (the pod side vanished)
        ipr.link("del", index=idx[0])
        idx = []
    if not idx:
        fd = os.open(ns_path, os.O_RDONLY)
        try:
            ipr.link("add", ifname=veth, kind="veth", mtu=mtu,
                     peer={"ifname": ifname, "net_ns_fd": fd, "mtu": mtu})
        finally:
            os.close(fd)
        idx = ipr.link_lookup(ifname=veth)
    ipr.link("set", index=idx[0], master=bridge_idx, state="up", mtu=mtu)


def remove_veth(veth: str) -> bool:
    from pyroute2 import NetlinkError
    with _ipr() as ipr:
        idx = ipr.link_lookup(ifname=veth)
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])  # the pod's eth0 goes with it
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
    return True


# --- pod side, through nsenter (works for any namespace path) -------------------------------

def _in_pod(ns_path: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    full = ["nsenter", f"--net={ns_path}"] + argv
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise PodError("nsenter: command not found (util-linux)")
    if check and r.returncode:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise PodError(f"in {ns_path}: {' '.join(argv)}: {err[-1] if err else f'exit {r.returncode}'}")
    return r


def _pod_has_if(ns_path: str, ifname: str = POD_IF) -> bool:
    return _in_pod(ns_path, ["ip", "link", "show", ifname], check=False).returncode == 0


def pod_link(ns_path: str, ifname: str = POD_IF) -> dict | None:
    """What `ifname` in the pod is now: mac, mtu, up, its IPv4 addresses (CIDR) and the
    gateways of its default routes; None when the pod has no such interface."""
    r = _in_pod(ns_path, ["ip", "-j", "address", "show", "dev", ifname], check=False)
    if r.returncode:
        return None
    try:
        link = json.loads(r.stdout)[0]
        routes = json.loads(_in_pod(ns_path, ["ip", "-j", "-4", "route", "show", "default",
                                              "dev", ifname]).stdout or "[]")
    except (ValueError, IndexError) as e:
        raise PodError(f"in {ns_path}: unreadable `ip -j` output ({e})")
    return {"mac": link.get("address", ""), "mtu": link.get("mtu"),
            "up": "UP" in link.get("flags", ()),
            "addresses": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", ())
                          if a.get("family") == "inet"],
            "default_via": [x.get("gateway") for x in routes]}


def configure_pod(ns_path: str, ip: str, node: planlib.Node, ifname: str = POD_IF,
                  mtu: int | None = None) -> None:
    """lo up; `ifname` holds exactly `ip`/prefix, has `mtu`, is up; default route via the
    gateway. Each step is a no-op when already so: a repeated add repairs drift."""
    cidr = f"{ip}/{node.subnet.prefixlen}"
    _in_pod(ns_path, ["ip", "link", "set", "lo", "up"])
    have = _in_pod(ns_path, ["ip", "-4", "-o", "address", "show", "dev", ifname]).stdout.split()
    addrs = [have[i + 1] for i, w in enumerate(have[:-1]) if w == "inet"]
    for a in addrs:
        if a != cidr:  # a stale address of an earlier allocation
            _in_pod(ns_path, ["ip", "address", "del", a, "dev", ifname])
    if cidr not in addrs:
        _in_pod(ns_path, ["ip", "address", "add", cidr, "dev", ifname])
    _in_pod(ns_path, ["ip", "link", "set", ifname] + (["mtu", str(mtu)] if mtu else []) + ["up"])
    _in_pod(ns_path, ["ip", "route", "replace", "default", "via", str(node.gateway),
                      "dev", ifname])


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
    return statelib.overlay_mtu(plan, underlay_mtu)


def add(args) -> dict:
    """Attach pod args.name; returns its record. Idempotent; rolls back on failure."""
    host.require_net_admin("vtep pod add")
    _check_name(args.name)
    plan, node = _context(args)
    mtu = _overlay_mtu(plan, node)
    store = PodStore(args.state_dir, node.name)
    with store.locked():
        rec = store.pods.get(args.name)
        if rec and args.ip and allocate(node, {}, args.ip, args.name) != rec["ip"]:
            raise AddressError(f"pod {args.name!r} already has {rec['ip']} (not {args.ip}); "
                               "`vtep pod del` it first")
        if rec and args.netns and os.path.abspath(args.netns) != rec["netns"]:
            raise UsageError(f"pod {args.name!r} is already attached to {rec['netns']}")
        ip = rec["ip"] if rec else allocate(node, store.taken(), args.ip, args.name)
        if args.netns:
            ns_path = os.path.abspath(args.netns)  # not realpath: /proc/PID/ns/net is a
            # magic link whose target ("net:[...]") is no path
            why = netns_problem(ns_path)
            if why:
                raise UsageError(f"--netns {args.netns}: {why}")
            created = bool(rec and rec.get("created_netns"))
        else:
            ns_path = f"{NETNS_DIR}/{args.name}"
            created = bool(rec and rec.get("created_netns"))
            if not os.path.exists(ns_path):
                _create_netns(args.name)
                created = True
        rec = {"ip": ip, "gateway": str(node.gateway), "veth": veth_name(args.name),
               "netns": ns_path, "created_netns": created, "bridge": args.bridge}
        fresh = args.name not in store.pods
        try:
            with _ipr() as ipr:
                bridge = ensure_bridge(ipr, args.bridge, node)
                ensure_veth(ipr, rec["veth"], ns_path, bridge, mtu)
            configure_pod(ns_path, ip, node, mtu=mtu)
        except BaseException as e:
            if fresh:  # nothing half-configured: undo what this call made
                remove_veth(rec["veth"])
                if created:
                    _delete_netns(args.name)
            if isinstance(e, VtepError):
                raise
            if isinstance(e, Exception):
                raise PodError(f"pod {args.name}: {e}") from None
            raise
        store.pods[args.name] = rec
        store.save()
    return rec


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
    print(f"pod {args.name}: {rec['ip']} via {rec['gateway']} on {rec['bridge']} "
          f"({rec['veth']} <-> {POD_IF} in {rec['netns']})")
    return 0


def del_command(args) -> int:
    rec = delete(args)
    if rec is None:
        print(f"pod {args.name}: not attached; nothing to do", file=sys.stderr)
    else:
        print(f"pod {args.name}: removed ({rec['ip']} freed"
              + (f", namespace {args.name} deleted)" if rec.get("created_netns") else ")"))
    return 0

