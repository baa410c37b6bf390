#!/usr/bin/env python3
"""Regenerate the MTU suite's sample captures (pcaps/mtu/*.pcap and plan.toml).

    sudo .venv/bin/python pcaps/mtu/make_mtu_pcaps.py [--out DIR]

Root needed: it builds the seed cluster in network namespaces named vxm<pid>-... with
the project's lab builder (vtep.lab.lab.build, through tests/mtulab.py's Cluster: the
plain lab for the plain cases, a LabSpec naming the forced plan or the narrow link for
the others), records on the router with tcpdump (bounded by
count and time), keeps the packets a sample is about (VXLAN carrying IPv4, later outer
fragments of VXLAN datagrams, the router's ICMP errors; never the IPv6 neighbour
discovery a fresh TAP device floods to its peers), checks their number, and removes
every namespace in `finally`. Traffic stays inside the lab. Then run
`python -m pytest tests/test_mtu_pcaps.py`: the bytes change on every regeneration
(timestamps, IP ids, ports), the packet counts, sizes and verdicts in README.md do not.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))   # the suite's helpers (mtulab, seedlab)

import mtulab as m  # noqa: E402
from vtep.lab.lab import LabSpec  # noqa: E402
from vtep.lab.seed import SEED_PLAN, plan_text  # noqa: E402


def wanted(p: m.Pkt) -> bool:
    return (p.vxlan and (p.inner is not None or p.offset > 0)) or p.icmp is not None


class Recorder:
    def __init__(self, out: Path, tmp: Path):
        self.out, self.tmp = out, tmp

    def record(self, c: m.Cluster, name: str, traffic, *, want: int, iface="eth1",
               snaplen=None, count=200, pick=None):
        """Capture `traffic()` on the router's `iface`; keep the packets `pick(pkts)`
        returns (default: every wanted one); there must be `want` of them."""
        raw = self.tmp / name
        with m.Capture(c, raw, iface=iface, snaplen=snaplen, count=count):
            traffic()
        header, recs = m.records(raw)
        pkts = [p for p in m.read_pcap(raw) if wanted(p)]
        chosen = pick(pkts) if pick else pkts
        if len(chosen) != want:
            raise SystemExit(f"{name}: {len(chosen)} packets, expected {want}: {chosen}")
        m.write_records(self.out / name, header, [recs[p.no - 1] for p in chosen])
        size = (self.out / name).stat().st_size
        print(f"{name}: {want} packets, {size} bytes", flush=True)


def ping(c, src, dst, *opts, count=1):
    def go():
        rc, out = m.ping(c.pod_ns(src), c.pod_ip(dst), *opts, count=count)
        print("   " + " | ".join(x for x in out.splitlines() if x and "statistics" not in x))
    return go


def tcp_handshake_and_data(c, pkts):
    """The SYN (network-1's pod), the SYN-ACK (network-2's pod), the first 4 full-size
    data segments (network-1's pod): the same selection at every regeneration."""
    a, b = c.pod_ip("network-1"), c.pod_ip("network-2")
    tcp = [p for p in pkts if p.inner and p.inner.tcp_flags is not None]
    syn = [p for p in tcp if p.inner.src == a and p.inner.tcp_flags & 0x12 == 0x02][:1]
    synack = [p for p in tcp if p.inner.src == b and p.inner.tcp_flags & 0x12 == 0x12][:1]
    data = [p for p in tcp if p.inner.src == a and p.inner.length == 1450][:4]
    return sorted(syn + synack + data, key=lambda p: p.no)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("make_mtu_pcaps: needs root (network namespaces)", file=sys.stderr)
        return 3
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "plan.toml").write_text(SEED_PLAN)
    prefix = f"vxm{os.getpid()}-"
    n1, n2 = m.NODES
    with tempfile.TemporaryDirectory(prefix="mtu-pcaps-") as tmp:
        tmp = Path(tmp)
        rec = Recorder(a.out, tmp)

        def build(kind, mode, **spec):
            if kind == "lab":     # `vtep lab up --mode MODE`
                return m.Cluster.up(f"{prefix}{mode[0]}-", LabSpec(mode=mode))
            return m.Cluster.up(f"{prefix}{kind[0]}{mode[0]}-", LabSpec(mode=mode, **spec),
                                tmp / f"{kind}-{mode}")

        for mode in ("kernel", "userspace"):          # case 2: the largest DF packet
            c = build("lab", mode)
            try:
                rec.record(c, f"{mode}-full-size.pcap",
                           ping(c, n1, n2, "-M", "do", "-s", "1422", count=2), want=4)
            finally:
                c.stop()

        c = build("lab", "mixed")                     # cases 4 and 5, both data paths
        try:
            rec.record(c, "mixed-inner-fragments.pcap", ping(c, n1, n2, "-s", "3000"), want=6)
            rec.record(c, "mixed-tcp-handshake-s128.pcap",
                       lambda: m.tcp_transfer(c, n1, n2, 200_000, 10), want=6, snaplen=128,
                       count=2000, pick=lambda pk: tcp_handshake_and_data(c, pk))
        finally:
            c.stop()

        c = build("forced", "kernel", plan_text=plan_text(mtu=1500),  # case 6
                  run_args={n: ["--mtu", "1500"] for n in m.NODES})
        try:
            for n in m.NODES:   # unbound vxlan0 at the forced 1500 (see the README)
                assert c.device_mtu(c.ns(n), "vxlan0") == 1500
            c.flush_pmtu()
            rec.record(c, "kernel-forced-1500-fragments.pcap",
                       ping(c, n1, n2, "-M", "do", "-s", "1472"), want=4)
        finally:
            c.stop()

        c = build("narrow", "kernel", narrow=1400)                  # case 7, kernel path
        try:
            rec.record(c, "narrow-kernel-router-fragments.pcap",
                       ping(c, n1, n2, "-M", "do", "-s", "1422"), want=4, iface="eth2")
            for n in m.NODES:
                c.restart_vtep(n, "--mtu", "auto")
            c.flush_pmtu()
            rec.record(c, "narrow-mtu-auto.pcap",
                       ping(c, n1, n2, "-M", "do", "-s", "1322"), want=2, iface="eth2")
        finally:
            c.stop()

        c = build("narrow", "userspace", narrow=1400)               # case 7, userspace
        try:
            rec.record(c, "narrow-userspace-frag-needed.pcap",
                       ping(c, n1, n2, "-M", "do", "-s", "1422"), want=2)
        finally:
            c.stop()
    left = [n for n in m.netns.list_namespaces() if n.startswith(prefix)]
    if left:
        print(f"make_mtu_pcaps: namespaces left behind: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
