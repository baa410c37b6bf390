#!/usr/bin/env python3
"""What one Prometheus scrape of `vtep run --metrics` costs at N peers, against the status file.

    python bench/metrics_bench.py [--peers 1000] [--rounds 50]

No root, nothing on the host: a plan of N+1 nodes is derived in memory, the
userspace path's counters (vtep.datapath.Counters) get traffic on every peer,
and the agent's metrics (vtep.metrics.Metrics with a LiveView on a stand-in
reconciler) are rendered ROUNDS times, in three ways, each timed (median):

- scrape: prometheus-client renders the exposition (what the HTTP thread does);
- over HTTP: the same through the real endpoint on 127.0.0.1 (urllib, loopback);
- reference: what the event loop already does every second with counters, the
  status file's JSON (backend counters + json.dumps), measured in the same run.

Prints the figures and the ratio scrape/reference. The scrape runs on the HTTP
thread, not in the loop; under the GIL its cost is what a scrape can take from
the data path, once per scrape interval (typically 15 s).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import time
import urllib.request
from types import SimpleNamespace

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from prometheus_client import generate_latest  # noqa: E402

from vtep import datapath, metrics, plan as planlib, state  # noqa: E402


def build(peers: int):
    nodes = []
    overlay = ipaddress.ip_network("100.64.0.0/10")
    subnets = overlay.subnets(new_prefix=26)
    for i in range(peers + 1):
        nodes.append({"name": f"n{i}", "underlay_ip": str(ipaddress.ip_address("10.0.0.1") + i),
                      "subnet": str(next(subnets))})
    plan = planlib.parse({"cluster": {"vni": 10, "overlay": str(overlay)}, "nodes": nodes},
                         "bench.toml")
    want = state.desired(plan, "n0", underlay_dev="eth0", underlay_mtu=1500)
    counters = datapath.Counters([p.fdb.dst for p in want.peers])
    for i, c in enumerate(counters.peers.values()):   # traffic on every peer
        c[:] = [100 + i, 15000 + i, 90 + i, 14000 + i, 50 + i]
    counters.tx = [sum(c[0] for c in counters.peers.values()), 0, 0]
    counters.rx = [sum(c[2] for c in counters.peers.values()), 0, 0]

    class Backend:
        mode = "userspace"

        def counters(self):
            return {**counters.to_dict(), "offloads": "on: bench"}

    rec = SimpleNamespace(want=want, backend=Backend(), device="vxlan0", node=want,
                          plan=plan)
    rec.node = SimpleNamespace(name="n0")
    m = metrics.Metrics()
    m.attach(metrics.LiveView(rec, None, None, lambda: {}))
    for _ in range(10):   # a run's worth of loop records
        m.record_pass(0.03, {"route": 1})
    return m, rec


def timed(fn, rounds: int) -> float:
    fn()   # warm
    xs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs)


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--peers", type=int, default=1000)
    a.add_argument("--rounds", type=int, default=50)
    args = a.parse_args()
    m, rec = build(args.peers)
    info = {"pid": 1, "mode": "userspace", "node": "n0", "device": "vxlan0",
            "peers": [p.name for p in rec.want.peers]}

    def status_json():
        return json.dumps({**info, "counters": rec.backend.counters()}, indent=1)

    scrape = timed(lambda: generate_latest(m.registry), args.rounds)
    reference = timed(status_json, args.rounds)
    size = len(generate_latest(m.registry))
    srv = metrics.Server(m, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{srv.httpd.server_address[1]}/metrics"

        def over_http():
            with urllib.request.urlopen(url, timeout=10) as r:
                r.read()
        http = timed(over_http, min(args.rounds, 20))
    finally:
        srv.close()
    print(f"{args.peers} peers, median of {args.rounds} rounds; exposition {size / 1024:.0f} KiB")
    print(f"  scrape (render)     {scrape * 1e3:8.2f} ms")
    print(f"  scrape over HTTP    {http * 1e3:8.2f} ms")
    print(f"  status JSON (ref.)  {reference * 1e3:8.2f} ms")
    print(f"  ratio scrape/reference {scrape / reference:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
