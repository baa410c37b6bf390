"""Prometheus metrics for `vtep run --metrics [ADDR:]PORT`, with the official prometheus-client.

Data flows two ways, and neither costs the data path anything. The event loop
(vtep.daemon) records what only it sees, as it happens, in prometheus-client
Counter and Histogram objects: each pass (its duration, whether it failed), the
changes it applied by kind (Reconciler.kinds: device, neighbour, fdb, route,
sysctl), those that repaired drift (a pass under the same plan as the last
good one: something changed the host under us), plan reloads adopted and
rejected. Everything else is read when Prometheus scrapes, by StateCollector
on the HTTP server's thread, from a view of the agent (LiveView; tests give it
a fake): the plan's peers, the userspace path's counters (packets and bytes
each way per peer, drops by reason and direction, ICMP errors sent), the
learnt path MTU per peer, the store's reachability and last contact, and who
this agent is (the info metric). The loop never does work for a scrape.

Thread safety: the scrape reads what the loop mutates without a lock, because
every value read is either replaced whole (the desired state, the per-peer
counter dict: vtep.datapath.Counters.set_fdb swaps in a new one) or an int
updated in place (reading it is atomic under the GIL); the drop dicts never
change size, so copying them cannot fail. A scrape may therefore see tx of
one batch and rx of the next, never a torn number. prometheus-client's own
objects take their own short locks; the loop touches them once per pass.

Names follow Prometheus' conventions: the `vtep_` prefix, base units
(seconds, bytes), `_total` on counters (the client adds it), labels peer,
reason, direction and kind; the node's name is a label of the info metric,
joined in PromQL, not repeated on every series.
"""
from __future__ import annotations

import errno
import logging
import socket
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import start_http_server

from . import __version__
from .errors import HostMismatch
from .inet import IP_MTU, IPV6_MTU

log = logging.getLogger("vtep")

# s: a no-op pass at 1,000 peers takes ~30 ms, a pass from nothing at 1,000 peers
# ~400 ms, a reload at 20,000 peers ~2 s (README, `vtep run --kernel` and `--userspace`)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsUnavailable(HostMismatch):
    """The metrics endpoint cannot listen where asked (port taken, address not on this
    host): exit 4, before anything is touched."""


class Metrics:
    """The agent's metrics: the loop's events (record_*), the state read at scrape time
    (attach a view), one registry of their own (not the client's global one: tests and
    benchmarks make many)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.passes = Counter("vtep_passes", "Passes run (each one reads the host and "
                              "applies the difference with the plan), failed ones included",
                              registry=r)
        self.failed = Counter("vtep_pass_failures", "Passes that failed (retried within "
                              "a second)", registry=r)
        self.duration = Histogram("vtep_pass_duration_seconds", "How long a pass took",
                                  buckets=PASS_BUCKETS, registry=r)
        self.last_pass = Gauge("vtep_last_pass_timestamp_seconds",
                               "When the last pass ended (Unix time)", registry=r)
        self.changes = Counter("vtep_changes", "Changes applied to the host, by kind",
                               ["kind"], registry=r)
        self.drift = Counter("vtep_drift_repairs", "Changes that repaired drift (made "
                             "under an unchanged plan), by kind", ["kind"], registry=r)
        self.reloads = Counter("vtep_plan_reloads", "New plans adopted (SIGHUP, the store)",
                               registry=r)
        self.rejected = Counter("vtep_plan_reloads_rejected", "New plans rejected (the "
                                "running one kept)", registry=r)
        for kind in KINDS:   # every kind exported from the start, at zero
            self.changes.labels(kind)
            self.drift.labels(kind)
        self.collector = StateCollector()
        r.register(self.collector)

    def attach(self, view) -> None:
        """From now on a scrape also reads the agent's state through `view`."""
        self.collector.view = view

    def record_pass(self, seconds: float, kinds: dict[str, int] | None, drift: bool = False,
                    failed: bool = False) -> None:
        self.passes.inc()
        self.duration.observe(seconds)
        self.last_pass.set(time.time())
        if failed:
            self.failed.inc()
            return
        for kind, n in (kinds or {}).items():
            self.changes.labels(kind).inc(n)
            if drift:
                self.drift.labels(kind).inc(n)

    def record_reload(self, adopted: bool) -> None:
        (self.reloads if adopted else self.rejected).inc()


# what Reconciler.kinds names (vtep.reconcile.CHANGE_KINDS, plus the device and sysctls)
KINDS = ("device", "neighbour", "fdb", "route", "sysctl")


class StateCollector:
    """What the agent is, read at scrape time through `view` (LiveView or a fake):
    info() -> {mode, device, node, version, offloads}; peers() -> [(name, underlay IP)];
    counters() -> the backend's counters (vtep.datapath.Counters.to_dict; {} on the
    kernel path); path_mtus() -> {underlay IP: bytes}; store() -> None, or
    {"reachable": bool, "last_contact": Unix time or None}."""

    def __init__(self, view=None):
        self.view = view

    def describe(self):
        return []   # families depend on the mode: no fixed list (nothing is checked)

    def collect(self):
        v = self.view
        if v is None:
            return
        info = v.info()
        c = v.counters()
        if c:   # the userspace path says whether its offload loops run: "on: ..."
            info = {**info, "offloads": (c.get("offloads") or "").split(":", 1)[0]}
        i = InfoMetricFamily("vtep_agent", "Who this agent is", labels=sorted(info))
        i.add_metric(sorted(info), {k: str(x) for k, x in info.items()})
        yield i
        peers = v.peers()
        yield GaugeMetricFamily("vtep_peers", "Peers in the plan", value=len(peers))
        store = v.store()
        if store is not None:
            yield GaugeMetricFamily("vtep_store_up", "Whether the plan's store (etcd) "
                                    "answers (1) or not (0)", value=int(bool(store["reachable"])))
            if store.get("last_contact") is not None:
                yield GaugeMetricFamily("vtep_store_last_contact_timestamp_seconds",
                                        "When the store last answered a request (Unix time)",
                                        value=store["last_contact"])
        if not c:
            return   # the kernel path: the kernel keeps the device's counters (ip -s link)
        yield from _traffic(c, peers)
        mtus = v.path_mtus()
        g = GaugeMetricFamily("vtep_path_mtu_bytes", "Path MTU towards a peer's underlay "
                              "address as the kernel learnt it (peers a send was refused to)",
                              labels=["peer", "address"])
        names = {ip: name for name, ip in peers}
        for ip, mtu in sorted(mtus.items()):
            g.add_metric([names.get(ip, ip), ip], mtu)
        yield g


def _traffic(c: dict, peers) -> list:
    """The userspace path's counters as metric families."""
    out = []
    for name, what, key in (("vtep_packets", "VXLAN datagrams", "packets"),
                            ("vtep_bytes", "VXLAN bytes (header and inner frame)", "bytes"),
                            ("vtep_tap_frames", "TAP frames (with offloads one frame is "
                             "many datagrams)", "frames")):
        f = CounterMetricFamily(name, f"{what}, by direction", labels=["direction"])
        for d in ("tx", "rx"):
            if key in c[d]:
                f.add_metric([d], c[d][key])
        out.append(f)
    drops = CounterMetricFamily("vtep_drops", "Frames and datagrams dropped, by direction "
                                "and reason", labels=["direction", "reason"])
    for d in ("tx", "rx"):
        for reason, n in sorted(c[f"{d}_drops"].items()):
            drops.add_metric([d, reason], n)
    out.append(drops)
    icmp = CounterMetricFamily("vtep_icmp_errors_sent", "ICMP errors sent back to inner "
                               "senders (fragmentation needed, packet too big)", labels=["type"])
    icmp.add_metric(["too-big"], c.get("icmp_too_big", 0))
    out.append(icmp)
    pk = CounterMetricFamily("vtep_peer_packets", "VXLAN datagrams per peer, by direction",
                             labels=["peer", "address", "direction"])
    by = CounterMetricFamily("vtep_peer_bytes", "VXLAN bytes per peer, by direction",
                             labels=["peer", "address", "direction"])
    seen = c.get("peers", {})
    zero = {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0}
    # every peer of the plan (the status file lists only those that saw traffic), then any
    # the counters name that the plan no longer does (a reload between the two reads)
    rows = [(name, ip) for name, ip in peers] + [(ip, ip) for ip in seen
                                                 if ip not in {a for _, a in peers}]
    for name, ip in rows:
        p = seen.get(ip, zero)
        for d in ("tx", "rx"):
            pk.add_metric([name, ip, d], p[f"{d}_packets"])
            by.add_metric([name, ip, d], p[f"{d}_bytes"])
    return out + [pk, by]


class LiveView:
    """The running agent, as StateCollector reads it: the reconciler (its desired state
    and device backend), the plan source, the store's contact clock (etcd), and
    `mtu_socks`, () -> {peer: connected socket} (the userspace path's: TapLink.mtu_socks;
    None on the kernel path), given by the composition point, which knows the backend."""

    def __init__(self, rec, source, contact=None, mtu_socks=None):
        self.rec, self.source, self.contact = rec, source, contact
        self.mtu_socks = mtu_socks

    def info(self) -> dict:
        rec = self.rec
        return {"mode": rec.backend.mode, "device": rec.device, "node": rec.node.name,
                "version": __version__}

    def peers(self) -> list:
        want = self.rec.want   # replaced whole by a pass: this reference stays consistent
        return [(p.name, p.fdb.dst) for p in want.peers] if want else []

    def counters(self) -> dict:
        return self.rec.backend.counters()

    def path_mtus(self) -> dict:
        """What the kernel has learnt of the path to each peer a send was refused to (the
        peers the userspace path keeps a socket for: TapLink.path_mtu), read through a
        socket connected now. Not through the loop's own socket: a connected socket
        keeps the route it was connected with, and IP_MTU reads that route's MTU as it
        was, so once the kernel's exception expired or was flushed it would go on
        saying the old path MTU (and one connected before the exception, the route's)."""
        if self.mtu_socks is None:
            return {}
        socks = dict(self.mtu_socks())   # one copy: the loop may add or replace the dict
        out = {}
        for peer, s in socks.items():
            try:
                where = s.getpeername()   # the loop's destination: its port too (ip rule dport)
                with socket.socket(s.family, socket.SOCK_DGRAM) as now:
                    now.connect(where)
                    if s.family == socket.AF_INET6:
                        out[peer] = now.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
                    else:
                        out[peer] = now.getsockopt(socket.IPPROTO_IP, IP_MTU)
            except OSError:
                continue   # closed by the loop meanwhile, never connected, or no route now
        return out

    def store(self) -> dict | None:
        st = self.source.status() if self.source is not None else None
        if st is None:
            return None
        return {"reachable": st.get("reachable", False),
                "last_contact": self.contact.last if self.contact is not None else None}


class ContactClock:
    """When the store last answered: every request of the etcd client (renewals at least
    every TTL/3) goes through its `call`, which this wraps on the instance; the watch's
    stream is not counted (its quiet periods say nothing)."""

    def __init__(self, client):
        self.last: float | None = time.time()   # built right after a registration
        call = client.call

        def timed(*a, **kw):
            out = call(*a, **kw)
            self.last = time.time()
            return out
        client.call = timed


class Server:
    """The HTTP endpoint: prometheus-client's own server, in a thread of its own, bound
    to exactly the address asked."""

    def __init__(self, metrics: Metrics, addr: str, port: int):
        where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        self.where = where
        try:
            self.httpd, self.thread = start_http_server(port, addr, metrics.registry)
        except OSError as e:
            why = {errno.EADDRINUSE: "the port is already in use",
                   errno.EADDRNOTAVAIL: "the address is not one of this host's"}.get(
                e.errno, e.strerror or str(e))
            raise MetricsUnavailable(f"--metrics {where}: cannot listen: {why}") from None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
