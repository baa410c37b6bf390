"""The event loop of `vtep run`: signals, notifications, plans, the data path, the status file.

One thread, one select(). What wakes it: netlink notifications (netlink.Events),
signals (through signal.set_wakeup_fd), the plan source's fd (a new plan or a
failed read, vtep.source), the re-probe job's fd (`--mtu auto`, vtep.reprobe),
the device backend's own fds (the userspace path's TAP and UDP socket, served
by its Datapath handlers), and a timer for the periodic full resync. A
notification about our device or its underlay schedules a pass (the
reconciler's converge) a few milliseconds later, so that a burst (a flushed
table, our own batch) costs one pass; the pass re-reads everything, so what a
notification says does not matter, only that something concerning us
changed. A lost notification (ENOBUFS) also schedules a pass, and the periodic
resync catches the rest.

The status file (vtep.status) says who manages the device (pid, network
namespace) and how the last pass went, for `vtep status`. It also counts the
passes, names what scheduled the last one (`last_cause`), and times the last
one that changed something (`last_repair`): when the daemon noticed what that
pass repaired (the wake-up that read the notification, signal or finished job
which scheduled it; the pass's own start for a periodic resync) and when the
pass ended, in seconds of CLOCK_MONOTONIC, the clock every process on the host
shares. So the repair latency is measured by the agent itself, not by whoever
polls the device.

With `--metrics` (vtep.metrics) the loop also records each pass (its duration,
its changes by kind from Reconciler.kinds, and whether they repaired drift: a
pass under the same plan as the last good one) and each plan adopted or
rejected; once a pass, never per frame. A scrape reads the rest on the HTTP
server's thread.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time

from . import netlink
from .config import RunConfig
from .errors import DeviceLost, NodeRemoved, VtepError
from .jobs import Job
from .reprobe import Reprobe
from .source import PlanSource
from .status import StatusFile, netns_inode, now

log = logging.getLogger("vtep")

DEBOUNCE = 0.02   # s: gather a burst of notifications into one pass
RETRY = 1.0       # s: after a failed pass (underlay gone, device taken), try again this soon


class _Signals:
    """Record SIGHUP/SIGTERM/SIGINT and wake select() through a socketpair."""

    SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.pending: list[int] = []
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)
        self.old_fd = signal.set_wakeup_fd(self.w.fileno(), warn_on_full_buffer=False)
        self.old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

    def _handler(self, signum, _frame):
        self.pending.append(signum)

    def drain(self):
        try:
            while self.r.recv(512):
                pass
        except BlockingIOError:
            pass

    def close(self):
        for s, h in self.old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(self.old_fd)
        self.r.close()
        self.w.close()


def serve(rec, source: PlanSource, config: RunConfig, metrics=None) -> int:
    """Converge, then keep converged until SIGTERM/SIGINT; new plans come from `source`
    (SIGHUP asks it for one). `metrics` (vtep.metrics.Metrics or None) records the
    passes and reloads."""
    # (a second agent on the device was refused before: commands.run holds the owner.Claim)
    status = StatusFile(config.state_dir, rec.node.name, rec.device)
    sigs = _Signals()          # before the first pass: a SIGTERM then still cleans up
    events = netlink.Events()  # before the first pass: no drift goes unseen
    reprobe = Reprobe(rec, config.reprobe) if config.reprobe is not None else None
    prober = Job(reprobe.work) if reprobe is not None else None
    try:
        return _loop(rec, source, config, status, sigs, events, reprobe, prober, metrics)
    finally:
        if prober is not None:
            prober.close()
        events.close()
        sigs.close()


STATUS_EVERY = 1.0   # s: how often a data path with counters republishes them


def _lose_device(rec, e: DeviceLost) -> None:
    """Drift like any other: the next pass recreates the device. Until then its fds are
    not polled (a dead TAP fd is always readable)."""
    log.info(f"{rec.device}: {e}; recreating it")
    rec.backend.lost()


def _forward(rec, lost: list) -> None:
    """Move what waits on the data path's fds, without waiting: a long pass calls this
    between its netlink round trips (Rtnl.idle), so that reading 40,000 entries at
    20,000 peers does not stop the userspace VTEP's traffic for a second."""
    io = rec.backend.io()
    if not io:
        return
    ready, _, _ = select.select(list(io), [], [], 0)
    for fd in ready:
        try:
            io[fd]()
        except DeviceLost as e:
            _lose_device(rec, e)
            lost.append(str(e))
            return


def _loop(rec, source, config, status, sigs, events, reprobe, prober, metrics) -> int:
    """The control loop. A backend with a data path of its own (the userspace TAP link)
    names its fds in `io()`, {fd: handler} polled in the same select(), and has
    `counters()`, which the status file republishes every STATUS_EVERY seconds."""
    backend = rec.backend
    info = {"pid": os.getpid(), "mode": backend.mode, "node": rec.node.name,
            "device": rec.device,
            "plan": os.path.abspath(config.plan_path) if config.plan_path else source.where,
            "netns": netns_inode(),
            "started": now(), "changes": 0, "last_change": None, "error": None,
            "passes": 0, "last_repair": None, "last_cause": "start"}

    def note_store() -> None:
        store = source.status()   # a store's reachability; a plan file has none
        if store is not None:
            info["etcd"] = store

    def publish(resync: bool):
        info.update(ifindex=rec.ifindex, peers=[p.name for p in rec.want.peers]
                    if rec.want else [], last_pass=now())
        if rec.want:   # what vtep-cni reads when its config names no plan or store
            node, plan = rec.node, rec.plan
            facts = {"subnet": node.subnet, "gateway": node.gateway, "overlay": plan.overlay,
                     "subnet6": node.subnet6, "gateway6": node.gateway6,
                     "overlay6": plan.overlay6}   # a family the plan lacks: no keys
            info["network"] = {**{k: str(v) for k, v in facts.items() if v is not None},
                               "underlay_ip": str(node.underlay_ip), "mtu": rec.want.device.mtu}
        note_store()
        if counting:
            info["counters"] = backend.counters()
        if resync:
            info["last_resync"] = info["last_pass"]
        status.write(info)

    lost: list[str] = []   # devices the data path lost during a pass (see _forward)
    rec.rtnl.idle = events.idle = lambda: _forward(rec, lost)
    started = time.monotonic()
    lines = rec.converge(first=True, replace=config.replace)
    if metrics is not None:   # the first pass realises the plan: no drift
        metrics.record_pass(time.monotonic() - started, rec.kinds)
    # the plan of the last good pass: changes made under it again are drift repaired
    converged_plan = rec.plan
    rec.summary(lines)
    counting = bool(backend.counters())   # the kernel keeps its own: none here
    info["changes"] += len(lines)
    info["passes"] += 1
    publish(True)
    next_resync = time.monotonic() + config.interval
    due, reasons, last_error = None, [], None
    # when the loop first learnt of what the next pass repairs (see the module docstring)
    noticed: float | None = None
    echo = rec.echo()
    next_status = time.monotonic() + STATUS_EVERY
    # The data path's {fd: handler} and the fd list change only when a pass recreates the
    # TAP device or the data path, so they are rebuilt after each pass, not every wake-up
    # (under load a wake-up happens every few frames). Plain ints: select() then calls
    # no fileno() methods.
    ev_fd, sig_fd, plan_fd = events.fileno(), sigs.r.fileno(), source.fileno()
    probe_fd = prober.fileno() if prober is not None else None
    base = [ev_fd, sig_fd, plan_fd] + ([probe_fd] if probe_fd is not None else [])
    io = backend.io()
    fds = base + list(io)
    while True:
        now_ = time.monotonic()
        wake = next_resync if due is None else min(next_resync, due)
        if counting:
            wake = min(wake, next_status)
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, wake - now_))
        except InterruptedError:
            ready = []
        woke = time.monotonic()
        for fd in ready:
            handler = io.get(fd)
            if handler is not None:
                try:
                    handler()
                except DeviceLost as e:
                    _lose_device(rec, e)
                    io = {}
                    fds = base
                    reasons.append("device lost")
                    due = time.monotonic()
                    noticed = woke if noticed is None else noticed
                    break
        if counting and time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_EVERY
            publish(False)
        if sig_fd in ready:
            sigs.drain()
        while sigs.pending:
            sig = sigs.pending.pop(0)
            if sig == signal.SIGHUP:
                log.info(f"SIGHUP: re-reading {source.where}")
                source.refresh()
                continue
            name = signal.Signals(sig).name
            if config.keep:
                log.info(f"{name}: leaving {rec.device} and its entries in place (--keep); "
                         "`vtep down` removes them")
            else:
                log.info(f"{name}: removing what this run made")
                rec.teardown()
            status.remove()
            return 0
        if plan_fd in ready:
            got = source.take()
            if got is None:   # the source's own news (a store gone or back): say so
                note_store()
                status.write(info)
            elif isinstance(got[1], NodeRemoved):
                log.info(f"{got[1]}: removing what this run made")
                rec.teardown()
                status.remove()
                return 0
            else:
                adopted = rec.reload(*got)
                if metrics is not None:
                    metrics.record_reload(adopted)
                if adopted:
                    due, reasons = time.monotonic(), reasons + ["plan re-read"]
                    noticed = woke if noticed is None else noticed
        if probe_fd is not None and probe_fd in ready and prober.busy:
            found, err = prober.take()
            if err is not None and not isinstance(err, VtepError):
                raise err
            if reprobe.apply(found, err):
                due, reasons = time.monotonic(), reasons + ["path MTU re-probed"]
                noticed = woke if noticed is None else noticed
        if ev_fd in ready:
            relevant, why = events.drain(rec.watched(), echo, {rec.ifindex})
            if relevant:   # also cuts a failed pass's retry short: the cause may be gone
                reasons += why
                soon = time.monotonic() + DEBOUNCE
                due = soon if due is None else min(due, soon)
                noticed = woke if noticed is None else noticed
        now_ = time.monotonic()
        full = now_ >= next_resync
        if not (full or (due is not None and now_ >= due)):
            continue
        started = time.monotonic()
        try:
            lines = rec.converge()
            echo = rec.echo()
        except VtepError as e:
            if metrics is not None:
                metrics.record_pass(time.monotonic() - started, None, failed=True)
            msg = str(e)
            if msg != last_error:
                log.error(f"cannot converge {rec.device}: {msg}; retrying on the next change, "
                          f"at most {RETRY:g} s from now")
                last_error = info["error"] = msg
            due = time.monotonic() + RETRY
            noticed = started if noticed is None else noticed   # repaired by a retry
        else:
            if metrics is not None:
                # a plan adopted (or an MTU lowered) since the last good pass: its changes
                # realise the new plan; otherwise the host drifted and was repaired
                metrics.record_pass(time.monotonic() - started, rec.kinds,
                                    drift=rec.plan is converged_plan)
            converged_plan = rec.plan
            if last_error:
                log.info(f"{rec.device} converges again")
                last_error = info["error"] = None
            cause = (", ".join(dict.fromkeys(reasons)) if reasons
                     else "periodic resync" if full else "a netlink notification")
            info["last_cause"] = cause   # of every pass, also one that found nothing to do
            if lines:
                log.info(f"{rec.device}: {len(lines)} change{'s' if len(lines) != 1 else ''} "
                         f"after: {cause}")
                info["changes"] += len(lines)
                info["last_change"] = now()
                info["last_repair"] = {"noticed": started if noticed is None else noticed,
                                       "ended": time.monotonic(), "changes": len(lines),
                                       "cause": cause}
            due, reasons, noticed = None, [], None
        info["passes"] += 1
        if lost:   # the TAP went away while the pass ran: another pass recreates it
            reasons, due = reasons + ["device lost"], time.monotonic()
            noticed = time.monotonic() if noticed is None else noticed
            lost.clear()
        # the pass may have recreated the TAP device or the data path
        io = backend.io()
        fds = base + list(io)
        counting = counting or bool(backend.counters())
        if full:
            next_resync = time.monotonic() + config.interval
            if reprobe is not None and reprobe.wanted() and not prober.busy:
                prober.start()   # off the loop: a silent peer costs seconds of waiting
        publish(full)
