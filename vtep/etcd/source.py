"""The cluster in etcd as a plan source for `vtep run --etcd` (vtep.source.PlanSource).

Data flows one way. A thread of its own holds the node's registration and the
cluster's members: it lists the prefix once (membership.snapshot: the config and
every live member at one revision), then watches the prefix from that revision
(see _run for why not + 1); each event updates the members, and a change of the set a plan is made of
(the config and each member's name, underlay IP, subnet and VTEP MAC) becomes a
new vtep.plan.Plan (model.to_plan, so every plan rule holds), handed to the
event loop through fileno()/take(), which gives it to the reconciler as a re-read
plan file would be.

What goes wrong is handled here, never by flushing the data plane:
- the watch ended (etcd restarted, the connection reset or went quiet): watch
  again from the last revision applied, so etcd replays what happened meanwhile,
  deletes included (as etcd's own clientv3 resumes a watch); that revision itself
  is replayed too, see _run for why;
- that revision was compacted (etcd-io/etcd#8668, flannel-io/flannel#2470): list
  again and diff (a delete the watch missed is still applied), then watch from
  the list's revision; a watch from a compacted revision is never retried;
- etcd is away (a call refused or unanswered): said once in the log (and in
  status(), for `vtep status`), retried with backoff; nothing is delivered
  meanwhile, so the reconciler keeps the last plan. The backoff is capped at
  TTL/3: etcd restores every lease's full TTL when it restarts (its lessor's
  promotion), so an agent that retries at least every TTL/3 renews in time and
  its peers never drop it for an outage of the store alone;
- this node's short lease expired (a partition longer than its TTL): peers have
  dropped it; it registers again and gets its subnet back (its reservation
  lives on the long lease). Its own delete, replayed by the resumed watch after
  it registered again, is no newer than that registration and ignored;
- this node was removed (`vtep cluster remove`: its key and its subnet
  reservation deleted), seen by the watch, by a list or by a renewal that found
  its lease gone: NodeRemoved is delivered and the agent tears down; it never
  registers again under another subnet;
- the config gained a family this node holds no subnet of (overlay6 set on a running
  cluster, issue 15): it claims one at once (membership.reclaim: its own leases, its
  IPv4 subnet and MAC kept); until every member has, model.to_plan serves the
  families all of them hold (with a warning), so IPv4 is never interrupted.
The short lease is renewed every TTL/3, the long one with it.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time

from ..errors import NodeRemoved, VtepError
from . import membership, model
from .errors import EtcdError, EtcdUnavailable
from .membership import RegistrationLost
from .watch import Canceled, Compacted, Event, Idle, Lost, Progress

log = logging.getLogger("vtep")

BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0   # s: retries while etcd is away


def _why(it) -> str:
    """Why a watch ended, in words."""
    if isinstance(it, Idle):
        return f"the watch went quiet for {it.seconds:g} s"
    if isinstance(it, (Lost, Canceled)):
        return it.reason
    return type(it).__name__


class EtcdSource:
    """The plan source of `vtep run --etcd`. Built after the first registration and
    snapshot (commands.run): `reg` is this node's Registration, `members` and `config`
    what the snapshot at `revision` held."""

    def __init__(self, client, layout, reg, config, members: dict, revision: int, *,
                 where: str, ttl: int, register):
        self.where = where
        self.client, self.layout, self.reg = client, layout, reg
        self.config, self.members, self.revision = config, dict(members), revision
        self.ttl = ttl
        self._register = register        # () -> Registration: this node, once more
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._stop_r, self._stop_w = os.pipe()
        self._lock = threading.Lock()
        self._out = None                 # the latest (plan, err), not yet taken
        self._made = self._key()         # what the running plan was made of
        self._relist = threading.Event()
        self._away = None                # why etcd is unreachable, while it is
        self._away_since = None          # since when (time.time()), while it is
        # retry at least every TTL/3 while etcd is away: see the module docstring
        self._backoff_max = min(BACKOFF_MAX, max(BACKOFF_MIN, ttl / 3))
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vtep-etcd", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        """This node's name in the cluster."""
        return self.reg.member.name

    # --- the event loop's side -------------------------------------------------------------

    def fileno(self) -> int:
        return self._r

    def refresh(self) -> None:
        """SIGHUP: list again (and deliver a plan if it differs)."""
        self._relist.set()
        os.write(self._stop_w, b"r")

    def status(self) -> dict:
        """For the status file (`vtep status`): whether etcd answers, and since when
        and why not while it does not. The event loop is woken (fileno() readable,
        take() returning None) whenever this changes."""
        since = (time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._away_since))
                 if self._away_since is not None else None)
        return {"store": self.where, "reachable": self._away is None,
                "unreachable_since": since, "error": self._away}

    def take(self):
        try:
            while os.read(self._r, 512):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            out, self._out = self._out, None
        return out

    def close(self, leave: bool = True) -> None:
        """Stop the thread; with leave, revoke the short lease so that peers drop this
        node now rather than in TTL seconds (its subnet stays reserved)."""
        if self._closed:
            return
        self._closed = True
        os.write(self._stop_w, b"s")
        self._thread.join(timeout=5)
        if leave:
            try:
                membership.deregister(self.client, self.layout, self.reg)
            except EtcdError as e:
                log.info(f"leaving the cluster: {e} (peers drop this node within "
                         f"{self.ttl} s instead)")
        self.client.close()
        for fd in (self._r, self._w, self._stop_r, self._stop_w):
            os.close(fd)

    # --- the thread ------------------------------------------------------------------------

    def _deliver(self, plan, err) -> None:
        with self._lock:
            self._out = (plan, err)
        os.write(self._w, b"p")

    def _key(self):
        """What a plan is made of: a change of anything else (a member's `since`, its
        MTU or mode) needs no new plan."""
        return (self.config, tuple(sorted((m.name, str(m.underlay_ip), str(m.subnet),
                                           str(m.subnet6), m.vtep_mac)
                                          for m in self.members.values())))

    def _publish(self) -> None:
        key = self._key()
        if key == self._made:
            return
        self._made = key
        try:
            plan = model.to_plan(self.config, list(self.members.values()), self.where)
        except VtepError as e:
            self._deliver(None, e)
        else:
            self._deliver(plan, None)

    def _snapshot(self) -> None:
        """List the cluster; a list without this node (its lease expired, or it was
        removed, while the watch did not run) is settled before anything is published:
        a plan without this node is no plan for it."""
        self.config, self.members, self.revision = membership.snapshot(self.client,
                                                                       self.layout)
        if self.name not in self.members:
            self._lost_self()
        self._fit()

    def _fit(self) -> None:
        """Claim a subnet of each family the config has and this node holds none of
        (the config gained overlay6 since it registered)."""
        me = self.reg.member
        missing = membership.lacking(self.config, me)
        if not missing:
            return
        what = " and ".join("a subnet" if v == 4 else "a subnet6" for v in missing)
        log.info(f"the cluster's config now has an overlay of IPv"
                 f"{' and IPv'.join(map(str, missing))}: claiming {what} for {me.name}")
        try:
            self.reg = membership.reclaim(self.client, self.layout, self.reg)
        except RegistrationLost:
            self._lost_self()
            return
        except EtcdError:
            raise                     # etcd away or refusing: _run retries, then lists
        except VtepError as e:
            # no free subnet6 (or the config unreadable meanwhile): keep what it holds;
            # the plan leaves that family out, saying why
            log.error(f"{me.name}: {e}")
            return
        self.members[me.name] = self.reg.member
        got = ", ".join(str(self.reg.member.subnet_of(v)) for v in missing)
        log.info(f"{me.name} holds {got} now")

    def _stopped(self, timeout: float, watch=None) -> bool:
        """Wait up to `timeout` s for the watch or a stop; True when asked to stop."""
        fds = [self._stop_r] + ([watch.fileno()] if watch is not None else [])
        if watch is not None and watch.pending:
            timeout = 0
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if self._stop_r in ready:
            if os.read(self._stop_r, 64).endswith(b"s"):
                return True
        return False

    def _wake(self) -> None:
        os.write(self._w, b"s")

    def _unreachable(self, e: Exception) -> None:
        if self._away is None:
            log.warning(f"{e}; keeping the data plane as it is and retrying")
            self._away_since = time.time()
            self._away = str(e)
            self._wake()
        self._away = str(e)

    def _reachable(self) -> None:
        if self._away is not None:
            log.info(f"{self.where} is reachable again")
            self._away = self._away_since = None
            self._wake()

    def _renew(self) -> None:
        try:
            self.reg.renew(self.client)
        except RegistrationLost:
            self._lost_self()

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        watch = None
        next_renew = time.monotonic() + self.ttl / 3
        while True:
            try:
                if watch is None:
                    if self._relist.is_set():
                        self._relist.clear()
                        self._snapshot()
                        self._publish()
                    # From the revision last listed or applied, itself included (its
                    # events again: applying them twice changes nothing): etcd accepts a
                    # watch from its compaction revision but keeps no delete made at that
                    # revision, so a watch from revision + 1 == the compaction revision
                    # would miss that delete unseen; from `revision`, any event not yet
                    # applied is newer than the compaction, or etcd says Compacted.
                    watch = self.client.watch(self.layout.root,
                                              start_revision=self.revision)
                    self._reachable()
                    backoff = BACKOFF_MIN
                if time.monotonic() >= next_renew:
                    self._renew()
                    next_renew = time.monotonic() + self.ttl / 3
                idle = watch.wait_timeout()
                wait = next_renew - time.monotonic()
                if self._stopped(wait if idle is None else min(wait, idle), watch):
                    break
                if self._relist.is_set():
                    watch.close()
                    watch = None
                    continue
                if self._apply(watch.take()):
                    watch.close()
                    watch = None
            except NodeRemoved as e:
                self._deliver(None, e)
                break
            except EtcdError as e:
                # EtcdUnavailable: nobody answered; any other: etcd answered but refused
                # (a restarting etcd says "not capable", "leader changed"): either way
                # say so once, keep the data plane, try again later
                self._unreachable(e)
                if watch is not None:
                    watch.close()
                    watch = None
                if self._stopped(backoff):
                    break
                backoff = min(backoff * 2, self._backoff_max)
        if watch is not None:
            watch.close()

    def _apply(self, items) -> bool:
        """Apply what the watch delivered; True when the watch is over (list again)."""
        changed = over = False
        for it in items:
            if isinstance(it, Event):
                self.revision = it.revision
                changed |= self._event(it)
            elif isinstance(it, Progress):
                self.revision = max(self.revision, it.revision)
            elif isinstance(it, (Compacted, Canceled)):
                # the history from our revision is gone (or etcd ended the watch for a
                # reason of its own): only a list tells what changed meanwhile
                if isinstance(it, Compacted):
                    log.info(f"etcd compacted its history up to revision "
                             f"{it.compact_revision}, past {self.revision}: listing "
                             "the cluster again")
                else:
                    log.info(f"{self.where}: watch canceled ({it.reason}): listing the "
                             "cluster again")
                self._relist.set()
                over = True
            else:   # Lost, Idle: watch again from self.revision
                self._unreachable(EtcdUnavailable([(self.where, _why(it))]))
                over = True
        if changed:
            self._publish()
        return over

    def _event(self, ev) -> bool:
        """One put or delete; True when it may change the plan."""
        lay, me = self.layout, self.reg.member.name
        key = ev.key.decode()
        if key == lay.config:
            if ev.type == "PUT":
                self.config = model.ClusterConfig.from_json(ev.kv.value, key)
                self._fit()
            return True
        name = lay.name_of(key)
        if name is not None:
            if ev.type == "PUT":
                self.members[name] = model.Member.from_json(name, ev.kv.value, key)
            elif name == me and ev.revision <= self.reg.revision:
                # replayed by a resumed watch: the delete of a registration we have
                # made again since (a partition longer than the TTL)
                return False
            else:
                self.members.pop(name, None)
                if name == me:
                    self._lost_self()
            return True
        return False

    def _lost_self(self) -> None:
        """Our node key (or its lease) is gone while we live: removed by an operator
        (its subnet reservation went too: NodeRemoved), or expired (a partition longer
        than the TTL): register again, with the subnet the reservation keeps."""
        me = self.reg.member
        net = me.subnets[0]          # its IPv4 subnet, or its subnet6 in an IPv6-only one
        key = self.layout.subnet(net)
        kv = self.client.get(key)
        try:
            held = kv is not None and model.Reservation.from_json(
                net, kv.value, key).node == me.name
        except model.BadRecord:
            held = False
        if not held:
            raise NodeRemoved(f"node {me.name} was removed from the cluster at {self.where}")
        log.warning(f"the registration of {me.name} expired (etcd was out of reach for "
                    f"more than its {self.ttl} s TTL): registering again")
        self.reg = self._register()
        self.members[me.name] = self.reg.member
