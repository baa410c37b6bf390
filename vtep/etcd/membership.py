"""Membership operations on a Client: write the cluster config, register a node (its
subnet and its membership key), renew and end that registration, remove a node, and
read the whole cluster at one revision.

Every write is a transaction that compares first (create-if-absent, or the
mod_revision we read); nothing is an unconditional put, so two agents, or an agent
and `vtep cluster`, never overwrite each other unseen.

Why two leases per node (issue 10; flannel-io/flannel#875, #1289): the membership
key rides a short lease (20 s), so a dead node disappears from every peer within
TTL + 1 s; its subnet reservation rides a long one (24 h, kept alive with the short
one), so a node that restarts, or comes back with another underlay IP, finds the
reservation naming it and gets the same subnet back, while nobody else can take it.

Dual stack (issue 15): a node claims a subnet of each family the config has, IPv4 and
IPv6 reservations under the same subnets/ prefix, in the one transaction that writes
its member record (the guard on that prefix covers both), on the same long lease;
`vtep cluster remove` deletes both. A node registered before the config gained
overlay6 claims its subnet6 when it next registers (a restart, or a registration lost
to a partition) or, while it runs, when its agent sees the new config (reclaim: on
its own leases, the IPv4 subnet and the MAC kept).
"""
from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

from .. import plan as planmod
from ..errors import HostMismatch, UsageError
from . import codec
from .codec import Lease, cmp_absent, cmp_mod, op_delete, op_put
from .errors import EtcdError, LeaseNotFound
from .model import (DEFAULT_SUBNET6_LEN, BadRecord, ClusterConfig, Layout, Member, Records,
                    Reservation, free_subnet, read_records, show_value)

DEFAULT_TTL = 20                 # the membership lease, seconds (kept alive at TTL/3)
DEFAULT_RESERVATION_TTL = 86400  # the subnet reservation's lease: 24 h, flannel's too
CLAIM_ATTEMPTS = 64              # registrations lost to others' claims before giving up


class NoCluster(UsageError):
    """No config under the prefix: `vtep cluster init` was never run there."""

    def __init__(self, layout: Layout):
        super().__init__(f"no cluster at {layout.prefix}: run vtep cluster init")


class ConfigDiffers(UsageError):
    """`vtep cluster init` over a cluster whose config is another."""

    def __init__(self, key: str, diffs: list[str]):
        self.diffs = diffs
        super().__init__(f"etcd {key} exists with another config: {', '.join(diffs)} "
                         "(plan vs etcd; --force replaces it)")


class ReservationConflict(UsageError):
    """A plan's [[nodes]] subnet is held for another node, or the node holds another."""


class NameTaken(HostMismatch):
    """A live agent holds the node's name from another underlay IP (exit 4)."""


class NoSuchNode(UsageError):
    pass


class ClaimContention(EtcdError):
    """Every attempt to claim a subnet lost to another writer (CLAIM_ATTEMPTS)."""


class RegistrationLost(EtcdError):
    """A lease of the registration expired or was revoked: register again."""


def _since(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --- reading ----------------------------------------------------------------------------------

def _read(client, layout: Layout):
    """One range of the prefix: (Records, KeyValue by key, revision)."""
    r = client.range(layout.root, prefix=True)
    by_key = {kv.key.decode("utf-8", "replace"): kv for kv in r.kvs}
    return read_records(layout, r.kvs), by_key, r.revision


def read_cluster(client, layout: Layout) -> tuple[Records, int]:
    """Every record under the prefix from one range (one revision), and that revision;
    a record that does not parse is in Records.problems, not raised."""
    recs, _, rev = _read(client, layout)
    return recs, rev


def snapshot(client, layout: Layout) -> tuple[ClusterConfig, dict, int]:
    """(config, live members by name, revision), consistent at that revision. Strict:
    a bad record raises its BadRecord (naming the key); no config raises NoCluster."""
    recs, rev = read_cluster(client, layout)
    if recs.problems:
        raise recs.problems[0]
    if recs.config is None:
        raise NoCluster(layout)
    return recs.config, recs.members, rev


def current_plan(client, layout: Layout, where: str) -> planmod.Plan:
    """The live members as a Plan now (what an agent would be serving)."""
    from .model import to_plan
    config, members, _ = snapshot(client, layout)
    return to_plan(config, members, where)


# --- cluster init --------------------------------------------------------------------------

def init_cluster(client, layout: Layout, plan: planmod.Plan, subnet_len: int,
                 force: bool = False, subnet6_len: int = DEFAULT_SUBNET6_LEN) -> list[str]:
    """Write the plan's [cluster] (plus subnet_len, and subnet6_len with an overlay6) as
    the config and reserve each [[nodes]] entry's subnets (each family's) for it on no
    lease. What it did, one line each.

    Everything is checked before the first write: another config is refused with its
    diff unless `force`; a plan subnet held for another node (or overlapping one), or
    a node that holds another subnet of that family, is refused always (`vtep cluster
    remove` first)."""
    want = ClusterConfig.from_plan(plan, subnet_len, subnet6_len=subnet6_len)
    recs, by_key, _ = _read(client, layout)
    kv = by_key.get(layout.config)
    done = []
    if kv is not None:
        try:
            have = ClusterConfig.from_json(kv.value, layout.config)
            diffs = want.diff(have)
        except BadRecord as e:
            if not force:
                raise
            have, diffs = None, [f"unreadable ({e})"]
        if diffs and not force:
            raise ConfigDiffers(layout.config, diffs)
    conflicts, todo = [], []
    for node in plan.nodes:
        held = recs.held(node.name)
        for net in node.subnets:
            mine = recs.reservations.get(net)
            if mine is not None and mine.node == node.name:
                done.append(f"{layout.subnet(net)}: already reserved for {node.name}")
                continue
            clash = next((r for r in recs.reservations.values()
                          if r.subnet.version == net.version and r.subnet.overlaps(net)),
                         None)
            if clash is not None:
                conflicts.append(f"{node.name}'s subnet {net} overlaps {clash.subnet} "
                                 f"held for {clash.node or '(unreadable record)'}")
            elif net.version in held:
                conflicts.append(f"{node.name} holds {held[net.version]}, the plan gives "
                                 f"it {net}")
            else:
                todo.append((node.name, net))
    if conflicts:
        raise ReservationConflict(f"{plan.path}: {'; '.join(conflicts)} "
                                  "(vtep cluster remove NODE frees a node's subnet)")

    if kv is None:
        r = client.create(layout.config, want.to_json())
        if not r.succeeded:
            raise ConfigDiffers(layout.config, ["written by someone else meanwhile"])
        done.insert(0, f"{layout.config}: created ({_describe(want)})")
    elif diffs:
        r = client.update(layout.config, want.to_json(), mod_revision=kv.mod_revision)
        if not r.succeeded:
            raise ConfigDiffers(layout.config, ["changed by someone else meanwhile"])
        done.insert(0, f"{layout.config}: replaced ({', '.join(diffs)})")
    else:
        done.insert(0, f"{layout.config}: unchanged")
    for name, net in todo:
        key = layout.subnet(net)
        r = client.create(key, Reservation(net, name).to_json())
        if not r.succeeded:
            raise ReservationConflict(f"{key}: reserved by someone else meanwhile")
        done.append(f"{key}: reserved for {name}")

    def outside(net) -> bool:
        ov = want.overlay_of(net.version)
        return ov is None or not net.subnet_of(ov)
    stray = sorted((r for r in recs.reservations.values() if outside(r.subnet)),
                   key=lambda r: (r.subnet.version, planmod._span(r.subnet)))
    if stray:
        done.append("warning: outside the overlay " + ", ".join(
            f"{r.subnet} ({r.node})" for r in stray) + ": vtep cluster remove NODE")
    return done


def _describe(c: ClusterConfig) -> str:
    return ", ".join(f"{k} {show_value(v)}" for k, v in c.to_dict().items()
                     if v is not None or k not in ("overlay", "subnet_len", "overlay6",
                                                   "subnet6_len"))


# --- a node's registration -----------------------------------------------------------------

@dataclass(frozen=True)
class Registration:
    member: Member
    lease_id: int           # the short lease: the membership key's
    long_lease_id: int      # the subnet reservation's
    revision: int           # the store's revision once registered
    ttl: int = DEFAULT_TTL  # as granted (etcd may grant more than asked)

    def renew(self, client) -> None:
        """Keep both leases alive (every ttl/3 s). A lease found gone raises
        RegistrationLost: the caller registers again (same name: same subnet)."""
        for lease, what in ((self.lease_id, "membership"),
                            (self.long_lease_id, "subnet reservation")):
            try:
                client.lease_keepalive(lease)
            except LeaseNotFound as e:
                raise RegistrationLost(f"node {self.member.name}: the {what} lease "
                                       f"{lease:x} expired or was revoked ({e.endpoint}): "
                                       "register again", e.endpoint) from None


def _guard_subnets(layout: Layout, revision: int) -> dict:
    """No reservation key was created or changed after `revision` (when we read them):
    a claim made from that read cannot overlap one made since, whatever their sizes."""
    return {"key": codec.b64(layout.subnets),
            "range_end": codec.b64(codec.prefix_end(layout.subnets)),
            "target": "MOD", "result": "LESS", "mod_revision": str(revision + 1)}


def register(client, layout: Layout, *, name: str, underlay_ip, mode: str, mtu: int | None,
             version: str, ttl: int = DEFAULT_TTL,
             reservation_ttl: int = DEFAULT_RESERVATION_TTL,
             previous=None) -> Registration:
    """Join the cluster as `name`: a subnet of each family the config has (a
    reservation naming it; else the `previous` subnet of that family if free, given as
    one network or several; else the lowest free), and its membership key, all written
    by one transaction so a failure leaves nothing half-done."""
    problems = []
    planmod._node_name(name, "name", lambda where, msg: problems.append(msg))
    if problems:
        raise UsageError(f"node name: {problems[0]}")
    try:
        ip = ipaddress.ip_address(str(underlay_ip))
    except ValueError:
        raise UsageError(f"underlay IP {underlay_ip!r}: not an IP address") from None
    if mode not in ("kernel", "userspace"):
        raise UsageError(f"mode {mode!r}: kernel or userspace")
    node_key = layout.node(name)
    # Check the name before granting anything: a refusal leaves no lease behind.
    _check_name(client.get(node_key), layout, name, ip)
    leases = [client.lease_grant(ttl)]
    try:
        leases.append(client.lease_grant(reservation_ttl))
        short, long = leases
        try:
            reg = _claim(client, layout, name, ip, mode, mtu, version, short, long,
                         previous)
        except EtcdError:
            # The transaction may have been applied unseen, re-attaching the node's
            # reservation to the long lease: revoking it would delete the
            # reservation. Left alone, it keeps the subnet for the next attempt.
            leases.pop()
            raise
        leases.clear()
        return reg
    finally:
        for lease in leases:      # a failed registration leaves no lease to expire
            try:
                client.lease_revoke(lease.id)
            except EtcdError:
                pass


def _claim(client, layout, name, ip, mode, mtu, version, short, long, previous):
    """_try_register until one attempt is not lost to another writer."""
    for attempt in range(CLAIM_ATTEMPTS):
        reg = _try_register(client, layout, name, ip, mode, mtu, version, short, long,
                            previous)
        if reg is not None:
            return reg
        time.sleep(random.uniform(0, min(0.2, 0.005 * (attempt + 1))))
    raise ClaimContention(f"node {name}: no subnet claimed after {CLAIM_ATTEMPTS} "
                          "attempts (each lost to another writer)")


def lacking(config: ClusterConfig, member: Member) -> tuple[int, ...]:
    """The IP versions of the config that the member holds no subnet of."""
    return tuple(v for v in config.families if member.subnet_of(v) is None)


def reclaim(client, layout: Layout, reg: Registration) -> Registration:
    """A running node's registration once more, on its own two leases: the subnets it
    holds kept (their reservations compared on their revisions), a subnet claimed for
    each family the config gained since it registered (overlay6 set on a running
    cluster), and its member record rewritten with them, in one transaction. A lease
    found gone raises RegistrationLost (register again instead)."""
    m = reg.member
    try:
        return _claim(client, layout, m.name, m.underlay_ip, m.mode, m.mtu, m.version,
                      Lease(reg.lease_id, reg.ttl), Lease(reg.long_lease_id, 0),
                      m.subnets)
    except LeaseNotFound as e:
        raise RegistrationLost(f"node {m.name}: a lease of its registration expired or "
                               f"was revoked ({e.endpoint}): register again",
                               e.endpoint) from None


def _check_name(kv, layout: Layout, name: str, ip) -> None:
    if kv is None:
        return
    try:
        other = Member.from_json(name, kv.value, layout.node(name))
    except BadRecord:
        return                    # unreadable: ours to overwrite (a CAS on its revision)
    if other.underlay_ip != ip:
        raise NameTaken(f"node {name} is alive at {other.underlay_ip} (since "
                        f"{_since(other.since)}): another agent has that name")


def _try_register(client, layout, name, ip, mode, mtu, version, short, long, previous):
    """One attempt from one read; None when another writer got in between."""
    recs, by_key, rev = _read(client, layout)
    if recs.config is None:
        if any(p.key == layout.config for p in recs.problems):
            raise next(p for p in recs.problems if p.key == layout.config)
        raise NoCluster(layout)
    config = recs.config
    node_kv = by_key.get(layout.node(name))
    _check_name(node_kv, layout, name, ip)
    prev = _by_version(previous)
    subnets, res_cmp, guard = {}, [], False
    for v in config.families:
        ov = config.overlay_of(v)
        mine = sorted((res.subnet for res in recs.reservations.values()
                       if res.node == name and res.subnet.version == v
                       and res.subnet.subnet_of(ov)),
                      key=lambda net: (net != prev.get(v), planmod._span(net)))
        if mine:
            net = mine[0]
            key = layout.subnet(net)
            res_cmp.append(cmp_mod(key, by_key[key].mod_revision))
        else:
            net = free_subnet(config, set(recs.reservations), prev.get(v), v)
            res_cmp.append(cmp_absent(layout.subnet(net)))
            guard = True
        subnets[v] = net
    if guard:
        res_cmp.append(_guard_subnets(layout, rev))
    # the MAC from the IPv4 subnet when there is one, as the plan derives it: a node
    # that gains a subnet6 keeps its MAC (one MAC, one fdb entry, both families)
    member = Member(name, ip, planmod.derive_mac(name, subnets.get(4) or subnets[6]),
                    subnets.get(4), mode, mtu, version, time.time(), subnets.get(6))
    node_cmp = (cmp_mod(layout.node(name), node_kv.mod_revision) if node_kv
                else cmp_absent(layout.node(name)))
    t = client.txn([node_cmp, *res_cmp],
                   [*(op_put(layout.subnet(net), Reservation(net, name).to_json(), long.id)
                      for net in subnets.values()),
                    op_put(layout.node(name), member.to_json(), short.id)])
    if not t.succeeded:
        return None
    return Registration(member, short.id, long.id, t.revision, short.ttl)


def _by_version(previous) -> dict:
    """`previous` (None, a network, or several) by IP version."""
    if previous is None:
        return {}
    nets = [previous] if isinstance(previous, (ipaddress.IPv4Network,
                                               ipaddress.IPv6Network)) else previous
    return {n.version: n for n in nets}


def deregister(client, layout: Layout, reg: Registration) -> None:
    """Leave: revoke the short lease, so the membership key goes now (peers drop the
    node at once); the subnet stays reserved on the long lease for a return."""
    try:
        client.lease_revoke(reg.lease_id)
    except LeaseNotFound:
        pass                      # already expired: the key is gone all the same


def remove_node(client, layout: Layout, name: str) -> list[str]:
    """Free a node's name and subnet(s) at once: one transaction deletes its membership
    key and every reservation naming it, each compared on the revision read. A live
    agent of that node sees its own key deleted (it must tear down and exit)."""
    for _ in range(CLAIM_ATTEMPTS):
        recs, by_key, _ = _read(client, layout)
        keys = [layout.node(name)] if layout.node(name) in by_key else []
        keys += [layout.subnet(res.subnet) for res in sorted(
            recs.reservations.values(),
            key=lambda res: (res.subnet.version, planmod._span(res.subnet)))
            if res.node == name]
        if not keys:
            known = sorted(set(recs.members) | {res.node for res in recs.reservations.values()
                                                if res.node})
            raise NoSuchNode(f"no node {name} at {layout.prefix} (nodes: "
                             f"{planmod._some(known) or 'none'})")
        t = client.txn([cmp_mod(k, by_key[k].mod_revision) for k in keys],
                       [op_delete(k) for k in keys])
        if t.succeeded:
            return [f"{k}: deleted" for k in keys]
    raise ClaimContention(f"node {name}: its keys kept changing; not removed")
