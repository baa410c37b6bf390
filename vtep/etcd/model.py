"""vtep's records in etcd: the keys under a prefix, the JSON they hold, and the Plan
built from them. Pure: bytes and dicts in, frozen data out; no I/O.

The keys (prefix default /vtep), keyed by node NAME (never by underlay IP, so a node
whose address changes stays the same node, unlike flannel-io/flannel#760):

  {prefix}/config                     ClusterConfig: the plan's [cluster] + subnet_len
                                      (+ subnet6_len with an IPv6 overlay6)
  {prefix}/nodes/{name}               Member, on the node's short lease (20 s): the
                                      node is alive exactly while the key exists
  {prefix}/subnets/{address}-{len}    Reservation {"node": name}, on the node's long
                                      lease (24 h, renewed while it lives), or on no
                                      lease when `vtep cluster init` reserved it for a
                                      plan's [[nodes]] entry; one key per family a
                                      node holds (172.2.1.0-24, fd00:172:2:1::-64)

Dual stack (issue 15): the config carries overlay6 and subnet6_len next to overlay
and subnet_len (either pair may be absent, not both: an IPv6-only cluster has no
overlay), a member record carries subnet6 next to subnet. A v4-only config or member
is written byte for byte as before (the IPv6 fields are left out, not null), so an
agent of an earlier version still reads it; an IPv6-only one it refuses ("overlay:
missing"), as it cannot serve it. A config that gained overlay6 while members hold
only an IPv4 subnet is served IPv4-only (with a warning naming them) until every
live member holds a subnet6: no member is dropped, no family half-configured.

Values are UTF-8 JSON objects. Readers ignore fields they do not know (an agent of a
later version may add some); a missing or mistyped field is a BadRecord naming the
key. Whatever the plan file's rules are, records built into a Plan pass them all:
to_plan() goes through vtep.plan.parse.
"""
from __future__ import annotations

import dataclasses
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
SUBNET6_LEN_MAX = planmod.MAX_PREFIX[6]   # /126, as the plan's smallest subnet6
DEFAULT_SUBNET6_LEN = 64     # flannel's IPv6SubnetLen default: a /64 per node

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

    def subnet(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
        # '-', not '/': the key stays one path segment (flannel writes 10.5.34.0-24 too);
        # an IPv6 subnet in its compressed form (RFC 5952), fd00:172:2:1::-64
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

    def net_of(self, key) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The subnet (either family) a reservation key is about; None for a key that
        is not one."""
        key = _text(key)
        if not key.startswith(self.subnets):
            return None
        text = key[len(self.subnets):]
        addr, dash, length = text.rpartition("-")
        try:
            if not dash or not length.isdigit():
                raise ValueError
            net = ipaddress.ip_network(f"{addr}/{length}")
        except ValueError:
            raise BadRecord(key, f"{text!r} is not a subnet written ADDRESS-PREFIXLEN "
                            "(e.g. 172.2.1.0-24)") from None
        if self.subnet(net) != key:      # one spelling per subnet: no 172.2.01.0-24, no
                                         # FD00:172:2:0::-64
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
    overlay: ipaddress.IPv4Network | None       # None: an IPv6-only cluster
    mtu: int | None
    udp_checksum: bool
    subnet_len: int | None                      # None exactly when overlay is
    overlay6: ipaddress.IPv6Network | None = None
    subnet6_len: int | None = None              # None exactly when overlay6 is

    FIELDS = ("vni", "port", "overlay", "mtu", "udp_checksum", "subnet_len", "overlay6",
              "subnet6_len")
    REQUIRED = ("vni", "port", "mtu", "udp_checksum")
    # per family: (overlay field, its length field, the largest length, version)
    FAMILIES = (("overlay", "subnet_len", SUBNET_LEN_MAX, 4),
                ("overlay6", "subnet6_len", SUBNET6_LEN_MAX, 6))

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions of the overlay, 4 first: (4,), (6,) or (4, 6)."""
        return tuple(v for o, _, _, v in self.FAMILIES if getattr(self, o) is not None)

    def overlay_of(self, version: int):
        return self.overlay if version == 4 else self.overlay6

    def subnet_len_of(self, version: int) -> int | None:
        return self.subnet_len if version == 4 else self.subnet6_len

    @classmethod
    def from_plan(cls, plan: planmod.Plan, subnet_len: int = DEFAULT_SUBNET_LEN,
                  where: str | None = None,
                  subnet6_len: int = DEFAULT_SUBNET6_LEN) -> "ClusterConfig":
        """The plan's [cluster] with each node's subnet length per family; a length is
        checked only for a family the plan has (and stored as None otherwise)."""
        where = plan.path if where is None else where
        lens = {"subnet_len": subnet_len, "subnet6_len": subnet6_len}
        for ofld, lfld, most, version in cls.FAMILIES:
            ov = getattr(plan, ofld)
            if ov is None:
                lens[lfld] = None
                continue
            n = lens[lfld]
            if isinstance(n, bool) or not isinstance(n, int):
                raise PlanError(f"{where}: {lfld}: {planmod._short(n)} is not a whole number")
            if not ov.prefixlen <= n <= most:
                sub = "subnet" if version == 4 else "IPv6 subnet"
                raise PlanError(f"{where}: {lfld}: {n} is outside {ov.prefixlen}..{most} "
                                f"(each node's {sub} lies inside the {ofld} {ov} and is "
                                f"/{most} or larger)")
        return cls(plan.vni, plan.port, plan.overlay, plan.mtu, plan.udp_checksum,
                   lens["subnet_len"], plan.overlay6, lens["subnet6_len"])

    def table(self) -> dict:
        """The plan's [cluster] table (mtu and an absent family left out, as a plan
        file does)."""
        t = {"vni": self.vni, "port": self.port}
        if self.overlay is not None:
            t["overlay"] = str(self.overlay)
        if self.overlay6 is not None:
            t["overlay6"] = str(self.overlay6)
        t["udp_checksum"] = self.udp_checksum
        if self.mtu is not None:
            t["mtu"] = self.mtu
        return t

    def to_dict(self) -> dict:
        """Every field, an absent family's as null (`vtep cluster show --json`, diff)."""
        return {"vni": self.vni, "port": self.port,
                "overlay": None if self.overlay is None else str(self.overlay),
                "mtu": self.mtu, "udp_checksum": self.udp_checksum,
                "subnet_len": self.subnet_len,
                "overlay6": None if self.overlay6 is None else str(self.overlay6),
                "subnet6_len": self.subnet6_len}

    def to_json(self) -> bytes:
        # an absent family's fields are left out, not null: a v4-only config is the
        # same bytes as before issue 15, which an earlier agent reads
        d = self.to_dict()
        for ofld, lfld, _, _ in self.FAMILIES:
            if d[ofld] is None:
                del d[ofld], d[lfld]
        return _dumps(d)

    @classmethod
    def from_json(cls, data, key: str = "config") -> "ClusterConfig":
        d = _object(data, key)
        for name in cls.REQUIRED:
            if name not in d:
                raise BadRecord(key, f"{name}: missing")
        table = {k: d[k] for k in ("vni", "port", "udp_checksum")}
        if d["mtu"] is not None:
            table["mtu"] = d["mtu"]
        for ofld, lfld, _, _ in cls.FAMILIES:
            if d.get(ofld) is None:          # absent or null: not this family
                continue
            if not isinstance(d[ofld], str):   # the plan would accept str() of anything
                raise BadRecord(key, f"{ofld}: {planmod._short(d[ofld])} is not a string")
            if lfld not in d:
                raise BadRecord(key, f"{lfld}: missing ({ofld} is set)")
            table[ofld] = d[ofld]
        try:
            return cls.from_plan(_cluster_plan(table, f"etcd {key}"), d.get("subnet_len"),
                                 subnet6_len=d.get("subnet6_len"))
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
    """A live node as its agent registered it: a subnet per family of the config it
    registered under (subnet None in an IPv6-only cluster, subnet6 None in an IPv4-only
    one, or from an agent of a version before issue 15)."""
    name: str
    underlay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    vtep_mac: str
    subnet: ipaddress.IPv4Network | None
    mode: str
    mtu: int | None
    version: str
    since: float                 # unix seconds of the registration
    subnet6: ipaddress.IPv6Network | None = None

    def subnet_of(self, version: int):
        return self.subnet if version == 4 else self.subnet6

    @property
    def subnets(self) -> tuple:
        """Its subnets, IPv4 first."""
        return tuple(s for s in (self.subnet, self.subnet6) if s is not None)

    def to_dict(self) -> dict:
        # subnet6 only when held: a v4-only record is the same bytes as before issue 15
        d = {"underlay_ip": str(self.underlay_ip), "vtep_mac": self.vtep_mac,
             "subnet": None if self.subnet is None else str(self.subnet),
             "mode": self.mode, "mtu": self.mtu, "version": self.version,
             "since": self.since}
        if self.subnet6 is not None:
            d["subnet6"] = str(self.subnet6)
        return d

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
        subnet = subnet6 = None
        if d.get("subnet") is not None or "subnet6" not in d:
            try:
                subnet = ipaddress.IPv4Network(_field(d, "subnet", key, str, "a string"))
            except ValueError:
                raise BadRecord(key, f"subnet: {planmod._short(d['subnet'])} is not an "
                                "IPv4 network") from None
        if d.get("subnet6") is not None:
            try:
                subnet6 = ipaddress.IPv6Network(_field(d, "subnet6", key, str, "a string"))
            except ValueError:
                raise BadRecord(key, f"subnet6: {planmod._short(d['subnet6'])} is not an "
                                "IPv6 network") from None
        if subnet is None and subnet6 is None:
            raise BadRecord(key, "subnet and subnet6: both null (a member holds one of "
                            "either family or both)")
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
        return cls(name, ip, mac, subnet, mode, mtu, version, float(since), subnet6)


@dataclass(frozen=True)
class Reservation:
    """A subnet (either family: one reservation per family a node holds) held for a
    node: on its long lease, or on none (`lease` 0) when `vtep cluster init` reserved
    it."""
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
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
    reservations: dict       # IPv4Network|IPv6Network -> Reservation (node "" when
                             # unreadable)
    problems: tuple          # BadRecord, one per key that did not parse
    config_mod_revision: int = 0

    def held(self, name: str) -> dict:
        """The subnets reserved for node `name`, by IP version (4, 6): the lowest of a
        family should it hold several (a config whose overlay changed)."""
        out = {}
        for net in sorted(self.reservations, key=lambda n: (n.version, planmod._span(n))):
            if self.reservations[net].node == name:
                out.setdefault(net.version, net)
        return out


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
    gives a Plan without nodes.

    A family of the config that some member holds no subnet of (the config gained
    overlay6 and that agent has not claimed a subnet6 yet, or is of a version before
    issue 15) is left out of the plan, with a warning naming them: every node then
    serves the families all of them hold, the same on every node, and nobody loses
    the family it had. A subnet of a family the config does not have is ignored."""
    ms = sorted(members.values() if isinstance(members, dict) else members,
                key=lambda m: m.name)
    table, warnings = config.table(), []
    lacking = {v: [m.name for m in ms if m.subnet_of(v) is None] for v in config.families}
    if all(lacking.values()):
        raise PlanError(f"{where}: no address family every member holds a subnet of: "
                        + "; ".join(f"{planmod._some(names)} "
                                    f"{'holds' if len(names) == 1 else 'hold'} no "
                                    f"{'subnet' if v == 4 else 'subnet6'}"
                                    for v, names in lacking.items()))
    for v, names in lacking.items():
        if names:
            ofld = "overlay" if v == 4 else "overlay6"
            sub = "subnet" if v == 4 else "subnet6"
            del table[ofld]
            warnings.append(
                f"{where}: cluster.{ofld} {config.overlay_of(v)} is left out of the plan: "
                + (f"the member record of {names[0]} has no {sub}" if len(names) == 1 else
                   f"the member records of {planmod._some(names)} have no {sub}")
                + ", not compatible with the current config (an agent before dual-stack "
                f"support, or one that has not claimed its {sub} yet: it does on its next "
                "registration)")
    fams = [v for v in config.families if not lacking[v]]
    if not ms:
        return _cluster_plan(table, where)
    nodes = []
    for m in ms:
        n = {"name": m.name, "underlay_ip": str(m.underlay_ip), "vtep_mac": m.vtep_mac}
        if 4 in fams:
            n["subnet"] = str(m.subnet)
        if 6 in fams:
            n["subnet6"] = str(m.subnet6)
        nodes.append(n)
    plan = planmod.parse({"cluster": table, "nodes": nodes}, where)
    if warnings:
        plan = dataclasses.replace(plan, warnings=plan.warnings + tuple(warnings))
    return plan


def free_subnet(config: ClusterConfig, taken, previous=None, version: int = 4):
    """`previous` when it lies in the family's overlay and overlaps nothing taken; else
    the lowest /subnet_len (/subnet6_len for version 6) of the overlay that overlaps
    nothing taken (networks of any size; the other family's are ignored)."""
    ov, length = config.overlay_of(version), config.subnet_len_of(version)
    if ov is None:
        raise ValueError(f"the config has no IPv{version} overlay")
    lo, hi = planmod._span(ov)
    spans = sorted(planmod._span(n) for n in taken if n.version == version and n.overlaps(ov))
    if previous is not None and previous.version == version and planmod._within(previous, ov):
        a, b = planmod._span(previous)
        if not any(f <= b and a <= l for f, l in spans):
            return previous
    size = 1 << (ov.max_prefixlen - length)
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
        return (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)(
            (cand, length))
    raise NoFreeSubnet(f"{'overlay' if version == 4 else 'overlay6'} {ov} has no free "
                       f"/{length} left ({len(spans)} taken)")


def _toml_str(s: str) -> str:
    return json.dumps(s)   # ASCII JSON strings are TOML basic strings


def export_toml(config: ClusterConfig, members, reserved=(), where: str = "") -> str:
    """A plan file of the live members (vtep plan, vxinspect --plan read it). Reserved
    subnets without a live member are listed as comments: with no underlay IP they
    cannot be [[nodes]]."""
    ms = sorted(members.values() if isinstance(members, dict) else members,
                key=lambda m: m.name)
    out = [f"# vtep cluster export{' of ' + where if where else ''}"]
    if config.overlay is not None:
        out.append(f"# subnet_len = {config.subnet_len} (vtep cluster init --subnet-len)")
    if config.overlay6 is not None:
        out.append(f"# subnet6_len = {config.subnet6_len} "
                   "(vtep cluster init --subnet6-len)")
    # the families to_plan serves: those every live member holds a subnet of
    fams = [v for v in config.families if all(m.subnet_of(v) is not None for m in ms)]
    fams = fams or list(config.families)
    out += ["", "[cluster]"]
    for k, v in config.table().items():
        left_out = k in ("overlay", "overlay6") and (4 if k == "overlay" else 6) not in fams
        out.append(f"{'# ' if left_out else ''}"
                   f"{k} = {_toml_str(v) if isinstance(v, str) else show_value(v)}"
                   + ("   # not every member holds a subnet of it yet" if left_out else ""))
    for m in ms:
        out += ["", "[[nodes]]", f"name = {_toml_str(m.name)}",
                f"underlay_ip = {_toml_str(str(m.underlay_ip))}"]
        # a subnet of each family the config has (a member's subnet of another family
        # would not load); a member lacking one shows as the plan file would refuse it
        out += [f"{fld} = {_toml_str(str(m.subnet_of(v)))}"
                for v, fld in ((4, "subnet"), (6, "subnet6"))
                if v in fams and m.subnet_of(v) is not None]
        out.append(f"vtep_mac = {_toml_str(m.vtep_mac)}")
    live = {m.name for m in ms}
    rest = sorted((r for r in reserved if r.node not in live),
                  key=lambda r: (r.subnet.version, planmod._span(r.subnet)))
    if rest:
        out += ["", "# reserved, not alive:"]
        out += [f"#   {r.subnet} for {r.node or '(unreadable)'}" for r in rest]
    return "\n".join(out) + "\n"
