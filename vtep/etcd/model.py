"""vtep's records in etcd: the keys under a prefix, the JSON they hold, and the Plan
built from them. Pure: bytes and dicts in, frozen data out; no I/O.

The keys (prefix default /vtep), keyed by node NAME (never by underlay IP, so a node
whose address changes stays the same node, unlike flannel-io/flannel#760):

  {prefix}/config                     ClusterConfig: the plan's [cluster] + subnet_len
  {prefix}/nodes/{name}               Member, on the node's short lease (20 s): the
                                      node is alive exactly while the key exists
  {prefix}/subnets/{address}-{len}    Reservation {"node": name}, on the node's long
                                      lease (24 h, renewed while it lives), or on no
                                      lease when `vtep cluster init` reserved it for a
                                      plan's [[nodes]] entry

Values are UTF-8 JSON objects. Readers ignore fields they do not know (an agent of a
later version may add some); a missing or mistyped field is a BadRecord naming the
key. Whatever the plan file's rules are, records built into a Plan pass them all:
to_plan() goes through vtep.plan.parse.
"""
from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass

from .. import plan as planmod
from ..errors import PlanError, UsageError
from ..inet import IP_MAXPACKET, MIN_MTU

DEFAULT_PREFIX = "/vtep"
MODES = ("kernel", "userspace")
SUBNET_LEN_MAX = 30          # the plan's smallest node subnet: VTEP address, gateway, pods
DEFAULT_SUBNET_LEN = 24      # flannel's SubnetLen default

class BadRecord(PlanError):
    """A value under the prefix is not the record its key calls for; `key` names it."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"etcd {key}: {problem}")


class NoFreeSubnet(PlanError):
    """Every /subnet_len of the overlay is taken."""


class LayoutError(UsageError):
    """A prefix that cannot hold vtep's keys."""


def _text(key) -> str:
    if isinstance(key, str):
        return key
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord(bytes(key).decode("utf-8", "replace"), "the key is not UTF-8") from None


@dataclass(frozen=True)
class Layout:
    """Where each record lives under `prefix` ("/vtep": no trailing slash)."""
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self):
        p = self.prefix
        if not isinstance(p, str) or not p.startswith("/") or p.endswith("/"):
            raise LayoutError(f"etcd prefix {p!r}: must start with '/' and not end with "
                              "one (e.g. /vtep)")
        if any(c.isspace() or not c.isprintable() for c in p):
            raise LayoutError(f"etcd prefix {p!r}: no spaces or control characters")

    @property
    def root(self) -> str:
        """Every key of this cluster starts with it ("/vtep/", so /vtep2 is not ours)."""
        return self.prefix + "/"

    @property
    def config(self) -> str:
        return self.prefix + "/config"

    @property
    def nodes(self) -> str:
        return self.prefix + "/nodes/"

    def node(self, name: str) -> str:
        return self.nodes + name

    @property
    def subnets(self) -> str:
        return self.prefix + "/subnets/"

    def subnet(self, net: ipaddress.IPv4Network) -> str:
        # '-', not '/': the key stays one path segment (flannel writes 10.5.34.0-24 too)
        return f"{self.subnets}{net.network_address}-{net.prefixlen}"

    def name_of(self, key) -> str | None:
        """The node a membership key is about; None for a key that is not one."""
        key = _text(key)
        if not key.startswith(self.nodes):
            return None
        name = key[len(self.nodes):]
        problems = []
        planmod._node_name(name, "node name", lambda where, msg: problems.append(msg))
        if problems:
            raise BadRecord(key, problems[0])
        return name

    def net_of(self, key) -> ipaddress.IPv4Network | None:
        """The subnet a reservation key is about; None for a key that is not one."""
        key = _text(key)
        if not key.startswith(self.subnets):
            return None
        text = key[len(self.subnets):]
        addr, dash, length = text.rpartition("-")
        try:
            if not dash or not length.isdigit():
                raise ValueError
            net = ipaddress.IPv4Network(f"{addr}/{length}")
        except ValueError:
            raise BadRecord(key, f"{text!r} is not a subnet written ADDRESS-PREFIXLEN "
                            "(e.g. 172.2.1.0-24)") from None
        if self.subnet(net) != key:      # one spelling per subnet: no 172.2.01.0-24
            raise BadRecord(key, f"{text!r} is not a subnet written ADDRESS-PREFIXLEN "
                            "(e.g. 172.2.1.0-24)")
        return net


def _object(data, key: str) -> dict:
    try:
        d = json.loads(bytes(data).decode("utf-8") if not isinstance(data, str) else data)
    except UnicodeDecodeError as e:
        raise BadRecord(key, f"not UTF-8 (byte {e.start})") from None
    except ValueError as e:
        raise BadRecord(key, f"not JSON ({e})") from None
    if not isinstance(d, dict):
        raise BadRecord(key, f"not a JSON object but {type(d).__name__}")
    return d


def _field(d: dict, name: str, key: str, kinds, what: str):
    if name not in d:
        raise BadRecord(key, f"{name}: missing")
    v = d[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise BadRecord(key, f"{name}: {planmod._short(v)} is not {what}")
    return v


def _dumps(d: dict) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


# --- the cluster config -------------------------------------------------------------------

def _cluster_plan(table: dict, where: str) -> planmod.Plan:
    """The [cluster] table checked by vtep.plan's own rules, as a Plan without nodes."""
    return planmod.parse({"cluster": table}, where, require_nodes=False)


def plan_from_data(data: dict, where: str) -> planmod.Plan:
    """A plan file's TOML data as a Plan, where (unlike a plan file for `vtep run`) a
    plan of only its [cluster] table is allowed: what `vtep cluster init` reads."""
    return planmod.parse(data, where, require_nodes=False)


@dataclass(frozen=True)
class ClusterConfig:
    vni: int
    port: int
    overlay: ipaddress.IPv4Network
    mtu: int | None
    udp_checksum: bool
    subnet_len: int

    FIELDS = ("vni", "port", "overlay", "mtu", "udp_checksum", "subnet_len")

    @classmethod
    def from_plan(cls, plan: planmod.Plan, subnet_len: int = DEFAULT_SUBNET_LEN,
                  where: str | None = None) -> "ClusterConfig":
        where = plan.path if where is None else where
        ov = plan.overlay
        if isinstance(subnet_len, bool) or not isinstance(subnet_len, int):
            raise PlanError(f"{where}: subnet_len: {planmod._short(subnet_len)} is not a "
                            "whole number")
        if not ov.prefixlen <= subnet_len <= SUBNET_LEN_MAX:
            raise PlanError(f"{where}: subnet_len: {subnet_len} is outside "
                            f"{ov.prefixlen}..{SUBNET_LEN_MAX} (each node's subnet lies "
                            f"inside the overlay {ov} and is /{SUBNET_LEN_MAX} or larger)")
        return cls(plan.vni, plan.port, ov, plan.mtu, plan.udp_checksum, subnet_len)

    def table(self) -> dict:
        """The plan's [cluster] table (mtu left out when unset, as a plan file does)."""
        t = {"vni": self.vni, "port": self.port, "overlay": str(self.overlay),
             "udp_checksum": self.udp_checksum}
        if self.mtu is not None:
            t["mtu"] = self.mtu
        return t

    def to_dict(self) -> dict:
        return {"vni": self.vni, "port": self.port, "overlay": str(self.overlay),
                "mtu": self.mtu, "udp_checksum": self.udp_checksum,
                "subnet_len": self.subnet_len}

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data, key: str = "config") -> "ClusterConfig":
        d = _object(data, key)
        for name in cls.FIELDS:
            if name not in d:
                raise BadRecord(key, f"{name}: missing")
        table = {k: d[k] for k in ("vni", "port", "overlay", "udp_checksum")}
        if d["mtu"] is not None:
            table["mtu"] = d["mtu"]
        if not isinstance(d["overlay"], str):   # the plan would accept str() of anything
            raise BadRecord(key, f"overlay: {planmod._short(d['overlay'])} is not a string")
        try:
            return cls.from_plan(_cluster_plan(table, f"etcd {key}"), d["subnet_len"])
        except BadRecord:
            raise
        except PlanError as e:
            raise BadRecord(key, "; ".join(p.removeprefix(f"etcd {key}: ")
                                           for p in e.problems)) from None

    def diff(self, other: "ClusterConfig") -> list[str]:
        """'vni: 10 vs 42' for each field that differs, self's value first."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {show_value(a[k])} vs {show_value(b[k])}" for k in self.FIELDS if a[k] != b[k]]


def show_value(v) -> str:
    return json.dumps(v) if v is None or isinstance(v, bool) else str(v)


# --- members and reservations ---------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """A live node as its agent registered it."""
    name: str
    underlay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    vtep_mac: str
    subnet: ipaddress.IPv4Network
    mode: str
    mtu: int | None
    version: str
    since: float                 # unix seconds of the registration

    def to_dict(self) -> dict:
        return {"underlay_ip": str(self.underlay_ip), "vtep_mac": self.vtep_mac,
                "subnet": str(self.subnet), "mode": self.mode, "mtu": self.mtu,
                "version": self.version, "since": self.since}

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, name: str, data, key: str | None = None) -> "Member":
        key = key if key is not None else name
        d = _object(data, key)
        try:
            ip = ipaddress.ip_address(_field(d, "underlay_ip", key, str, "a string"))
        except ValueError:
            raise BadRecord(key, f"underlay_ip: {planmod._short(d['underlay_ip'])} is not "
                            "an IP address") from None
        mac = _field(d, "vtep_mac", key, str, "a string").lower()
        if not planmod.MAC_RE.match(mac) or int(mac[:2], 16) & 1:
            raise BadRecord(key, f"vtep_mac: {planmod._short(d['vtep_mac'])} is not a "
                            "unicast MAC address")
        try:
            subnet = ipaddress.IPv4Network(_field(d, "subnet", key, str, "a string"))
        except ValueError:
            raise BadRecord(key, f"subnet: {planmod._short(d['subnet'])} is not an IPv4 "
                            "network") from None
        mode = _field(d, "mode", key, str, "a string")
        if mode not in MODES:
            raise BadRecord(key, f"mode: {planmod._short(mode)} is not one of "
                            f"{', '.join(MODES)}")
        mtu = _field(d, "mtu", key, (int, type(None)), "a whole number or null")
        if mtu is not None and not MIN_MTU <= mtu <= IP_MAXPACKET:
            raise BadRecord(key, f"mtu: {mtu} is outside {MIN_MTU}..{IP_MAXPACKET}")
        version = _field(d, "version", key, str, "a string")
        since = _field(d, "since", key, (int, float), "a number of seconds")
        if not math.isfinite(since):
            raise BadRecord(key, f"since: {since} is not a time")
        return cls(name, ip, mac, subnet, mode, mtu, version, float(since))


@dataclass(frozen=True)
class Reservation:
    """A subnet held for a node: on its long lease, or on none (`lease` 0) when
    `vtep cluster init` reserved it."""
    subnet: ipaddress.IPv4Network
    node: str
    lease: int = 0

    def to_json(self) -> bytes:
        return _dumps({"node": self.node})

    @classmethod
    def from_json(cls, subnet, data, key: str, lease: int = 0) -> "Reservation":
        node = _field(_object(data, key), "node", key, str, "a string")
        problems = []
        planmod._node_name(node, "node", lambda where, msg: problems.append(msg))
        if problems:
            raise BadRecord(key, f"node: {problems[0]}")
        return cls(subnet, node, lease)


@dataclass(frozen=True)
class Records:
    """Every record under a prefix, read from one range: what parsed, and a BadRecord
    per key that did not (its str() is one line naming the key). The key still counts:
    a reservation whose value is unreadable keeps its subnet taken."""
    config: ClusterConfig | None
    members: dict            # name -> Member
    reservations: dict       # IPv4Network -> Reservation (node "" when unreadable)
    problems: tuple          # BadRecord, one per key that did not parse
    config_mod_revision: int = 0


def read_records(layout: Layout, kvs) -> Records:
    """KeyValues (anything with key, value, lease, mod_revision) -> Records."""
    config, members, reservations, problems, config_rev = None, {}, {}, [], 0
    for kv in kvs:
        try:
            key = _text(kv.key)
            if key == layout.config:
                config, config_rev = ClusterConfig.from_json(kv.value, key), kv.mod_revision
                continue
            name = layout.name_of(key)
            if name is not None:
                members[name] = Member.from_json(name, kv.value, key)
                continue
            net = layout.net_of(key)
            if net is not None:
                try:
                    reservations[net] = Reservation.from_json(net, kv.value, key, kv.lease)
                except BadRecord:
                    reservations[net] = Reservation(net, "", kv.lease)
                    raise
        except BadRecord as e:
            problems.append(e)
    return Records(config, members, reservations, tuple(problems), config_rev)


# --- the Plan, free subnets, export ---------------------------------------------------------

def to_plan(config: ClusterConfig, members, where: str) -> planmod.Plan:
    """The live members as a Plan, through vtep.plan.parse so every plan rule holds
    (a PlanError names `where`, e.g. "etcd http://10.0.0.1:2379/vtep"). No member
    gives a Plan without nodes."""
    ms = sorted(members.values() if isinstance(members, dict) else members,
                key=lambda m: m.name)
    if not ms:
        return _cluster_plan(config.table(), where)
    return planmod.parse({"cluster": config.table(), "nodes": [
        {"name": m.name, "underlay_ip": str(m.underlay_ip), "subnet": str(m.subnet),
         "vtep_mac": m.vtep_mac} for m in ms]}, where)


def free_subnet(config: ClusterConfig, taken, previous=None) -> ipaddress.IPv4Network:
    """`previous` when it lies in the overlay and overlaps nothing taken; else the lowest
    /subnet_len of the overlay that overlaps nothing taken (networks of any size)."""
    ov = config.overlay
    lo, hi = planmod._span(ov)
    spans = sorted(planmod._span(n) for n in taken if n.overlaps(ov))
    if previous is not None and planmod._within(previous, ov):
        a, b = planmod._span(previous)
        if not any(f <= b and a <= l for f, l in spans):
            return previous
    size = 1 << (32 - config.subnet_len)
    cand = lo
    # CIDR blocks nest or are disjoint; sorted by first address, a candidate is free
    # once the next taken block starts after it: one sweep.
    for first, last in spans:
        if last < cand:
            continue
        if first > cand + size - 1:
            break
        cand = (last + 1 + size - 1) // size * size
    if cand + size - 1 <= hi:
        return ipaddress.IPv4Network((cand, config.subnet_len))
    raise NoFreeSubnet(f"overlay {ov} has no free /{config.subnet_len} left "
                       f"({len(spans)} taken)")


def _toml_str(s: str) -> str:
    return json.dumps(s)   # ASCII JSON strings are TOML basic strings


def export_toml(config: ClusterConfig, members, reserved=(), where: str = "") -> str:
    """A plan file of the live members (vtep plan, vxinspect --plan read it). Reserved
    subnets without a live member are listed as comments: with no underlay IP they
    cannot be [[nodes]]."""
    ms = sorted(members.values() if isinstance(members, dict) else members,
                key=lambda m: m.name)
    out = [f"# vtep cluster export{' of ' + where if where else ''}",
           f"# subnet_len = {config.subnet_len} (vtep cluster init --subnet-len)", "",
           "[cluster]"]
    for k, v in config.table().items():
        out.append(f"{k} = {_toml_str(v) if isinstance(v, str) else show_value(v)}")
    for m in ms:
        out += ["", "[[nodes]]", f"name = {_toml_str(m.name)}",
                f"underlay_ip = {_toml_str(str(m.underlay_ip))}",
                f"subnet = {_toml_str(str(m.subnet))}",
                f"vtep_mac = {_toml_str(m.vtep_mac)}"]
    live = {m.name for m in ms}
    rest = sorted((r for r in reserved if r.node not in live),
                  key=lambda r: planmod._span(r.subnet))
    if rest:
        out += ["", "# reserved, not alive:"]
        out += [f"#   {r.subnet} for {r.node or '(unreadable)'}" for r in rest]
    return "\n".join(out) + "\n"
