"""The long-running side of `vtep run --kernel`: signals, the event loop, the status file.

One thread, one select(): netlink notifications and signals (through
signal.set_wakeup_fd) wake it, and a timer runs the periodic full resync.
A notification about our device or its underlay schedules a pass a few
milliseconds later, so that a burst (a flushed table, our own batch) costs one
pass; the pass re-reads everything, so what a notification says does not
matter, only that something concerning us changed. A lost notification
(ENOBUFS) also schedules a pass, and the periodic resync catches the rest.

The status file, <state_dir>/<device>.<node>.json, says who manages the
device (pid, network namespace) and how the last pass went, for `vtep down`
(which refuses while the owner lives) and a later `vtep status`. It also
counts the passes, names what scheduled the last one (`last_cause`), and
times the last one that changed something
(`last_repair`): when the daemon noticed what that pass repaired (the wake-up
that read the notification, signal or finished job which scheduled it; the
pass's own start for a periodic resync) and when the pass ended, in seconds
of CLOCK_MONOTONIC, the clock every process on the host shares. So the repair
latency is measured by the agent itself, not by whoever polls the device.
"""
from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time

from . import netlink
from .reprobe import Reprobe
from .errors import DeviceLost, VtepError

log = logging.getLogger("vtep")

DEFAULT_STATE_DIR = "/run/vtep"
DEBOUNCE = 0.02   # s: gather a burst of notifications into one pass
RETRY = 1.0       # s: after a failed pass (underlay gone, device taken), try again this soon


def _netns_inode(pid="self") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StatusFile:
    def __init__(self, state_dir: str, node: str, device: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", node)
        self.path = os.path.join(state_dir or DEFAULT_STATE_DIR, f"{device}.{safe}.json")
        self.warned = False

    def read(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write(self, data: dict) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)   # readers never see half a file
        except OSError as e:
            if not self.warned:   # the data path does not depend on it: say so once
                log.warning(f"cannot write the status file {self.path}: {e.strerror}")
                self.warned = True

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning(f"cannot remove the status file {self.path}: {e.strerror}")


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


class _Job:
    """One function at a time run in a thread (a plan read on SIGHUP, a path MTU probe),
    so that however long it takes the loop keeps forwarding meanwhile; the thread wakes
    select() through a socketpair when the result (or the exception) is ready.

    A job that computes (`cpu`: parsing and validating a huge plan) lowers the
    interpreter's thread switch interval from 5 ms to SWITCH while it runs: the loop,
    returning from each system call, waits at most that long for the GIL the job holds,
    so traffic slows down while it runs but never stops.
    """

    SWITCH = 0.0002

    def __init__(self, fn, cpu: bool = False):
        self.fn, self.cpu = fn, cpu
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.thread: threading.Thread | None = None
        self.result = None
        self.again = False
        self.interval = sys.getswitchinterval()

    def fileno(self) -> int:
        return self.r.fileno()

    @property
    def busy(self) -> bool:
        return self.thread is not None

    def start(self) -> None:
        if self.thread is not None:   # asked again while running: run once more afterwards
            self.again = True
            return
        if self.cpu:
            self.interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self.interval, self.SWITCH))
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            self.result = (self.fn(), None)
        except Exception as e:   # handed to the loop: a VtepError is logged, a bug raised
            self.result = (None, e)
        finally:
            self.w.send(b"!")

    def take(self):
        """(result, None) or (None, exception) of the finished run; starts the next run
        when it was asked for meanwhile (a SIGHUP: the file may have changed since)."""
        try:
            while self.r.recv(64):
                pass
        except BlockingIOError:
            pass
        self.thread.join()
        self.thread = None
        if self.cpu:
            sys.setswitchinterval(self.interval)
        result, self.result = self.result, None
        if self.again:
            self.again = False
            self.start()
        return result

    def close(self) -> None:
        if self.thread is not None and self.cpu:   # (daemon threads never hold the exit up)
            sys.setswitchinterval(self.interval)
        self.r.close()
        self.w.close()


def serve(vt, args) -> int:
    """Converge, then keep converged until SIGTERM/SIGINT; SIGHUP re-reads the plan."""
    interval = float(args.interval)   # (the CLI allows 0.1 s to a day, finite)
    # (a second agent on the device was refused before: run() holds the owner.Claim)
    status = StatusFile(getattr(args, "state_dir", None), vt.node.name, vt.device)
    sigs = _Signals()          # before the first pass: a SIGTERM then still cleans up
    events = netlink.Events()  # before the first pass: no drift goes unseen
    reader = _Job(vt.read_plan, cpu=True)
    auto = getattr(args, "mtu_auto", None)   # `--mtu auto`: what probing found at start
    reprobe = Reprobe(vt, auto.unreachable) if auto is not None else None
    prober = _Job(reprobe.work) if reprobe is not None else None
    try:
        return _loop(vt, args, interval, status, sigs, events, reader, reprobe, prober)
    finally:
        for job in (reader, prober):
            if job is not None:
                job.close()
        events.close()
        sigs.close()


STATUS_EVERY = 1.0   # s: how often a data path with counters republishes them


def _lose_device(vt, e: DeviceLost) -> None:
    """Drift like any other: the next pass recreates the device. Until then its fds are
    not polled (a dead TAP fd is always readable)."""
    log.info(f"{vt.device}: {e}; recreating it")
    vt.device_lost()


def _forward(vt, lost: list) -> None:
    """Move what waits on the data path's fds, without waiting: a long pass calls this
    between its netlink round trips (Rtnl.idle), so that reading 40,000 entries at
    20,000 peers does not stop the userspace VTEP's traffic for a second."""
    io = vt.io()
    if not io:
        return
    ready, _, _ = select.select(list(io), [], [], 0)
    for fd in ready:
        try:
            io[fd]()
        except DeviceLost as e:
            _lose_device(vt, e)
            lost.append(str(e))
            return


def _loop(vt, args, interval, status, sigs, events, reader, reprobe, prober) -> int:
    """The control loop. A realiser with a data path of its own (the userspace VTEP)
    offers `io()`, {fd: handler} polled in the same select(), and `counters()`, which
    the status file republishes every STATUS_EVERY seconds."""
    from .kernel import _summary
    info = {"pid": os.getpid(), "mode": getattr(vt, "mode", "kernel"), "node": vt.node.name,
            "device": vt.device,
            "plan": os.path.abspath(args.config), "netns": _netns_inode(),
            "started": _now(), "changes": 0, "last_change": None, "error": None,
            "passes": 0, "last_repair": None, "last_cause": "start"}

    counters = getattr(vt, "counters", None)

    def publish(resync: bool):
        info.update(ifindex=vt.ifindex, peers=[p.name for p in vt.want.peers] if vt.want else [],
                    last_pass=_now())
        if counters:
            info["counters"] = counters()
        if resync:
            info["last_resync"] = info["last_pass"]
        status.write(info)

    lost: list[str] = []   # devices the data path lost during a pass (see _forward)
    if counters:
        vt.rtnl.idle = events.idle = lambda: _forward(vt, lost)
    lines = vt.converge(first=True, replace=args.replace)
    _summary(vt, lines)
    info["changes"] += len(lines)
    info["passes"] += 1
    publish(True)
    next_resync = time.monotonic() + interval
    due, reasons, last_error = None, [], None
    # when the loop first learnt of what the next pass repairs (see the module docstring)
    noticed: float | None = None
    echo = vt.echo()
    next_status = time.monotonic() + STATUS_EVERY
    # The data path's {fd: handler} and the fd list change only when a pass recreates the
    # TAP device or the data path, so they are rebuilt after each pass, not every wake-up
    # (under load a wake-up happens every few frames). Plain ints: select() then calls
    # no fileno() methods.
    ev_fd, sig_fd, plan_fd = events.fileno(), sigs.r.fileno(), reader.fileno()
    probe_fd = prober.fileno() if prober is not None else None
    base = [ev_fd, sig_fd, plan_fd] + ([probe_fd] if probe_fd is not None else [])
    io = vt.io() if counters else {}
    fds = base + list(io)
    while True:
        now = time.monotonic()
        wake = next_resync if due is None else min(next_resync, due)
        if counters:
            wake = min(wake, next_status)
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, wake - now))
        except InterruptedError:
            ready = []
        woke = time.monotonic()
        for fd in ready:
            handler = io.get(fd)
            if handler is not None:
                try:
                    handler()
                except DeviceLost as e:
                    _lose_device(vt, e)
                    io = {}
                    fds = base
                    reasons.append("device lost")
                    due = time.monotonic()
                    noticed = woke if noticed is None else noticed
                    break
        if counters and time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_EVERY
            publish(False)
        if sig_fd in ready:
            sigs.drain()
        while sigs.pending:
            sig = sigs.pending.pop(0)
            if sig == signal.SIGHUP:
                log.info(f"SIGHUP: re-reading {args.config}")
                reader.start()
                continue
            name = signal.Signals(sig).name
            if args.keep:
                log.info(f"{name}: leaving {vt.device} and its entries in place (--keep); "
                         "`vtep down` removes them")
            else:
                log.info(f"{name}: removing what this run made")
                vt.teardown()
            status.remove()
            return 0
        if plan_fd in ready and reader.busy:
            plan, err = reader.take()
            if err is not None and not isinstance(err, VtepError):
                raise err   # a bug in reading plans: the CLI reports it
            if vt.reload(plan, err):
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
            relevant, why = events.drain(vt.watched(), echo, {vt.ifindex})
            if relevant:   # also cuts a failed pass's retry short: the cause may be gone
                reasons += why
                soon = time.monotonic() + DEBOUNCE
                due = soon if due is None else min(due, soon)
                noticed = woke if noticed is None else noticed
        now = time.monotonic()
        full = now >= next_resync
        if not (full or (due is not None and now >= due)):
            continue
        started = time.monotonic()
        try:
            lines = vt.converge()
            echo = vt.echo()
        except VtepError as e:
            msg = str(e)
            if msg != last_error:
                log.error(f"cannot converge {vt.device}: {msg}; retrying on the next change, "
                          f"at most {RETRY:g} s from now")
                last_error = info["error"] = msg
            due = time.monotonic() + RETRY
            noticed = started if noticed is None else noticed   # repaired by a retry
        else:
            if last_error:
                log.info(f"{vt.device} converges again")
                last_error = info["error"] = None
            cause = (", ".join(dict.fromkeys(reasons)) if reasons
                     else "periodic resync" if full else "a netlink notification")
            info["last_cause"] = cause   # of every pass, also one that found nothing to do
            if lines:
                log.info(f"{vt.device}: {len(lines)} change{'s' if len(lines) != 1 else ''} "
                         f"after: {cause}")
                info["changes"] += len(lines)
                info["last_change"] = _now()
                info["last_repair"] = {"noticed": started if noticed is None else noticed,
                                       "ended": time.monotonic(), "changes": len(lines),
                                       "cause": cause}
            due, reasons, noticed = None, [], None
        info["passes"] += 1
        if lost:   # the TAP went away while the pass ran: another pass recreates it
            reasons, due = reasons + ["device lost"], time.monotonic()
            noticed = time.monotonic() if noticed is None else noticed
            lost.clear()
        if counters:   # the pass may have recreated the TAP device or the data path
            io = vt.io()
            fds = base + list(io)
        if full:
            next_resync = time.monotonic() + interval
            if reprobe is not None and reprobe.wanted() and not prober.busy:
                prober.start()   # off the loop: a silent peer costs seconds of waiting
        publish(full)
