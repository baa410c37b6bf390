#!/usr/bin/env python3
"""Benchmark vxinspect against tshark on a synthetic, clean VXLAN capture.

    python bench/vxinspect_bench.py [--packets N] [--repeat R] [--workdir DIR] [--keep]
                                    [--seed S] [--strict]

What it does, in one run on one file:

1. Builds ~64 distinct template frames with scapy (an overlay mix between VTEPs
   192.168.1.138 <-> 192.168.2.142, DF set, UDP dport 4789, real outer UDP
   checksums, RFC 7348 header flags 0x08 / VNI 10; inner TCP data segments,
   TCP ACKs, ICMP echo of several sizes, UDP; plus a few IPv6-outer frames),
   self-checks every checksum in them, then writes N pcap records with struct
   (no scapy per packet), varying the timestamps.
2. Times (best and median of R runs, after one untimed verification run each):
     vxinspect FILE --json                  (all checks)
     vxinspect FILE --json --no-checksums
     tshark -r FILE -Y vxlan -T fields -e vxlan.vni   (stdout to /dev/null)
   on two mixes of the same size: "mixed" (all the templates, by weight) and
   "repeat" (flows that repeat: one TCP connection's data segments and ACKs, a
   bulk transfer, the traffic tshark reads fastest), each with its ratio to tshark.
   The verification runs check vxinspect's JSON (packets == vxlan_packets == N,
   vnis == {"10": N}, ok, no check fired at all) and tshark's line count == N.
3. Peak RSS of each child is taken from os.wait4()'s rusage (ru_maxrss of that
   child only).  The memory-flatness check compares vxinspect (all checks) on N
   packets with a 5*N-packet capture (base capped at MEM_BASE_CAP packets).
4. Prints a table and the targets with PASS/MISS.  Exit status: 1 if a tool
   fails or a count/verification is wrong; with --strict also 1 on a missed
   target; 0 otherwise.

Targets (rates from the MEDIAN time of the R runs; the mixed mix unless named):
    vxinspect (all checks)       >= 350,000 packets/s
    vxinspect (all checks)       >= 10x tshark's packets/s
    vxinspect --no-checksums     >= 300,000 packets/s
    peak RSS at 5N               <= 1.2x peak RSS at N
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_PACKETS = 5_000_000
MEM_BASE_CAP = 1_000_000      # the 5x memory file is at most 5 * this many packets
MEM_FACTOR = 5

TARGET_TSHARK_RATIO = 10.0
TARGET_ALL_PPS = 350_000
# The "repeat" mix: one TCP connection of the IPv4 underlay (its ports), data and ACKs.
REPEAT_PORTS = {40000, 443}
TARGET_NOCSUM_PPS = 300_000
TARGET_MEM_RATIO = 1.2

VNI = 10
VTEP_A = "192.168.1.138"
VTEP_B = "192.168.2.142"
VTEP6_C = "fd00:1::138"
VTEP6_D = "fd00:2::142"


class BenchError(Exception):
    """A tool failed or a count was wrong: exit 1 regardless of --strict."""


# --------------------------------------------------------------------------- templates

def build_templates(seed: int) -> list[tuple[bytes, float, str]]:
    """Return [(frame_bytes, weight, kind)] -- ~64 distinct, checksum-correct frames."""
    # Imported here so --help works without scapy's start-up cost.
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw

    rng = random.Random(seed)
    out: list[tuple[bytes, float, str]] = []

    # Underlay: each VTEP talks to its first-hop router.
    vteps = {
        VTEP_A: ("02:00:c0:a8:01:8a", "02:00:c0:a8:01:01"),
        VTEP_B: ("02:00:c0:a8:02:8e", "02:00:c0:a8:02:01"),
        VTEP6_C: ("02:00:fd:01:01:38", "02:00:fd:01:00:01"),
        VTEP6_D: ("02:00:fd:02:01:42", "02:00:fd:02:00:01"),
    }
    # Overlay hosts, each behind exactly one VTEP (so mac-move must not fire).
    hosts_a = [(f"52:54:00:0a:00:{i:02x}", f"10.10.0.{i}") for i in (1, 2, 3, 4)]
    hosts_b = [(f"52:54:00:0b:00:{i:02x}", f"10.10.0.{100 + i}") for i in (1, 2, 3, 4)]
    hosts_c = [(f"52:54:00:0c:00:{i:02x}", f"10.20.0.{i}", f"fd10:20::{i}") for i in (1, 2)]
    hosts_d = [(f"52:54:00:0d:00:{i:02x}", f"10.20.0.{100 + i}", f"fd10:20::{100 + i}")
               for i in (1, 2)]
    ip_id = {k: rng.randrange(1, 60000) for k in vteps}

    def encap(outer_src, outer_dst, inner_frame, flow_key):
        smac, gw = vteps[outer_src]
        # Source port from the inner flow hash, as Linux does (49152..65535 here).
        sport = 49152 + (hash_flow(flow_key) % 16384)
        if ":" in outer_src:
            outer = IPv6(src=outer_src, dst=outer_dst, hlim=64, fl=hash_flow(flow_key) & 0xFFFFF)
        else:
            ip_id[outer_src] = (ip_id[outer_src] + rng.randrange(1, 400)) & 0xFFFF
            outer = IP(src=outer_src, dst=outer_dst, flags="DF", ttl=64, id=ip_id[outer_src])
        pkt = (Ether(src=smac, dst=gw) / outer / UDP(sport=sport, dport=4789)
               / VXLAN(flags=0x08, vni=VNI) / inner_frame)
        return bytes(pkt)

    def sized(l3, l4, total):
        """l3/l4/payload with the payload padded so the inner L3 packet is `total` bytes."""
        hdr = len(bytes(l3 / l4))
        return l3 / l4 / Raw(bytes(rng.getrandbits(8) for _ in range(total - hdr)))

    def add(frame, weight, kind):
        out.append((frame, weight, kind))

    tsval = rng.randrange(1 << 30)

    # --- IPv4 underlay: 4 TCP connections A-host <-> B-host, data both ways.
    for i, ((ma, ia), (mb, ib)) in enumerate(zip(hosts_a, hosts_b)):
        cport, sport = 40000 + 17 * i, (443, 22, 5201, 8080)[i]
        seq_c, seq_s = rng.randrange(1 << 32), rng.randrange(1 << 32)
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (tsval + i, tsval + 7 * i))]
        fwd = (ia, ib, cport, sport)
        rev = (ib, ia, sport, cport)
        # Data segments, mostly full-size (inner IPv4 total 1450 = overlay MTU).
        for j, total in enumerate((1450, 1450, 1450, 1450, 1450 - 8 * i - 100)):
            direction = (j + i) % 5 != 4        # mostly client->server, some server->client
            (sm, si, dm, di, sp, dp, sq, k) = ((ma, ia, mb, ib, cport, sport, seq_c, fwd) if direction
                                                else (mb, ib, ma, ia, sport, cport, seq_s, rev))
            inner = Ether(src=sm, dst=dm) / sized(
                IP(src=si, dst=di, ttl=64, id=rng.randrange(65536), flags="DF"),
                TCP(sport=sp, dport=dp, seq=(sq + 1448 * j) & 0xFFFFFFFF,
                    ack=(seq_s if direction else seq_c), flags="PA" if j == 4 else "A",
                    window=501, options=opts), total)
            osrc, odst = (VTEP_A, VTEP_B) if direction else (VTEP_B, VTEP_A)
            add(encap(osrc, odst, inner, k), 6.0, "tcp-data")
        # Pure ACKs (small), both directions.
        for j in range(4):
            direction = j != 1
            (sm, si, dm, di, sp, dp, k) = ((mb, ib, ma, ia, sport, cport, rev) if direction
                                           else (ma, ia, mb, ib, cport, sport, fwd))
            inner = Ether(src=sm, dst=dm) / IP(src=si, dst=di, ttl=64, flags="DF",
                                               id=rng.randrange(65536)) / TCP(
                sport=sp, dport=dp, seq=(seq_s if direction else seq_c),
                ack=(seq_c + 1448 * (j + 1)) & 0xFFFFFFFF, flags="A", window=501, options=opts)
            osrc, odst = (VTEP_B, VTEP_A) if direction else (VTEP_A, VTEP_B)
            add(encap(osrc, odst, inner, k), 5.0, "tcp-ack")

    # --- ARP who-has / is-at between two overlay hosts (flooded, head-end replicated).
    (ma, ia), (mb, ib) = hosts_a[0], hosts_b[3]
    add(encap(VTEP_A, VTEP_B, Ether(src=ma, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=ma, psrc=ia, pdst=ib) / Raw(b"\0" * 18), (ia, ib, "arp")), 0.1, "arp")
    add(encap(VTEP_B, VTEP_A, Ether(src=mb, dst=ma) / ARP(
        op=2, hwsrc=mb, psrc=ib, hwdst=ma, pdst=ia) / Raw(b"\0" * 18), (ia, ib, "arp")), 0.1, "arp")

    # --- ICMP echo request/reply of several sizes (ping -s 56, 512, 1000, 1422).
    for n, total in enumerate((84, 540, 1028, 1450)):
        (ma, ia), (mb, ib) = hosts_a[n % 4], hosts_b[(n + 1) % 4]
        ident = rng.randrange(65536)
        for req in (True, False):
            sm, si, dm, di = (ma, ia, mb, ib) if req else (mb, ib, ma, ia)
            icmp = ICMP(type=8 if req else 0, id=ident, seq=n + 1)
            inner = Ether(src=sm, dst=dm) / sized(IP(src=si, dst=di, ttl=64, flags="DF",
                                                     id=rng.randrange(65536)), icmp, total)
            osrc, odst = (VTEP_A, VTEP_B) if req else (VTEP_B, VTEP_A)
            add(encap(osrc, odst, inner, (ia, ib, 1, ident)), 1.0, "icmp")

    # --- UDP: a real DNS query/answer, NTP, a 1200-byte QUIC-sized datagram, and a
    #     checksum-less inner UDP (legal over IPv4).
    for n, (dport, total, csum0) in enumerate(((53, 0, False), (123, 76, False),
                                               (443, 1228, False), (5789, 300, True))):
        (ma, ia), (mb, ib) = hosts_a[(n + 2) % 4], hosts_b[n % 4]
        qid = rng.randrange(65536)
        for fwd_dir in (True, False):
            sm, si, dm, di = (ma, ia, mb, ib) if fwd_dir else (mb, ib, ma, ia)
            sp, dp = (50000 + n, dport) if fwd_dir else (dport, 50000 + n)
            l3 = IP(src=si, dst=di, ttl=64, id=rng.randrange(65536))
            if dport == 53:
                q = DNSQR(qname="db1.svc.overlay.example.", qtype="A")
                dns = (DNS(id=qid, rd=1, qd=q) if fwd_dir else
                       DNS(id=qid, qr=1, aa=1, rd=1, ra=1, qd=q,
                           an=DNSRR(rrname="db1.svc.overlay.example.", type="A", ttl=30,
                                    rdata=ib)))
                pkt = l3 / UDP(sport=sp, dport=dp) / dns
            else:
                pkt = sized(l3, UDP(sport=sp, dport=dp), total)
            if csum0:
                pkt[UDP].chksum = 0
            inner = Ether(src=sm, dst=dm) / pkt
            osrc, odst = (VTEP_A, VTEP_B) if fwd_dir else (VTEP_B, VTEP_A)
            add(encap(osrc, odst, inner, (ia, ib, 50000 + n, dport)), 1.0, "udp")

    # --- IPv6 underlay (overlay MTU 1430): TCP data + ACK, ICMPv6 echo, inner UDP.
    for n, ((mc, ic4, ic6), (md, id4, id6)) in enumerate(zip(hosts_c, hosts_d)):
        seq_c, seq_s = rng.randrange(1 << 32), rng.randrange(1 << 32)
        k = (ic4, id4, 33000 + n, 443)
        inner = Ether(src=mc, dst=md) / sized(
            IP(src=ic4, dst=id4, ttl=64, flags="DF", id=rng.randrange(65536)),
            TCP(sport=33000 + n, dport=443, seq=seq_c, ack=seq_s, flags="A", window=501), 1430)
        add(encap(VTEP6_C, VTEP6_D, inner, k), 0.5, "v6-tcp-data")
        inner = Ether(src=md, dst=mc) / IP(src=id4, dst=ic4, ttl=64, flags="DF",
                                           id=rng.randrange(65536)) / TCP(
            sport=443, dport=33000 + n, seq=seq_s, ack=(seq_c + 1390) & 0xFFFFFFFF,
            flags="A", window=501)
        add(encap(VTEP6_D, VTEP6_C, inner, k), 0.4, "v6-tcp-ack")
        for req in (True, False):
            sm, s6, dm, d6 = (mc, ic6, md, id6) if req else (md, id6, mc, ic6)
            echo = (ICMPv6EchoRequest if req else ICMPv6EchoReply)(id=0x100 + n, seq=1)
            inner = Ether(src=sm, dst=dm) / sized(IPv6(src=s6, dst=d6, hlim=64), echo,
                                                  (104, 1280)[n])
            add(encap(VTEP6_C if req else VTEP6_D, VTEP6_D if req else VTEP6_C, inner,
                      (ic6, id6, 58, n)), 0.2, "v6-icmpv6")
        inner = Ether(src=mc, dst=md) / sized(IPv6(src=ic6, dst=id6, hlim=64),
                                              UDP(sport=40000 + n, dport=5201), 240)
        add(encap(VTEP6_C, VTEP6_D, inner, (ic6, id6, 40000 + n, 5201)), 0.2, "v6-udp")
    return out


def hash_flow(key) -> int:
    """A stable (not PYTHONHASHSEED-dependent) flow hash."""
    import zlib
    return zlib.crc32(repr(key).encode())


def self_check_templates(templates) -> None:
    """Re-dissect each template, recompute every checksum with scapy, demand identical bytes;
    also check the RFC 7348 header, DF, MTUs, outer UDP checksum non-zero."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Padding

    seen = set()
    for n, (raw, _w, kind) in enumerate(templates):
        if raw in seen:
            raise BenchError(f"template {n} ({kind}) is a duplicate")
        seen.add(raw)
        pkt = Ether(raw)
        outer_udp = pkt.getlayer(UDP)
        layer = pkt
        while layer:
            for fname in ("chksum", "cksum"):
                if fname not in layer.fields:
                    continue
                if isinstance(layer, UDP) and layer is not outer_udp and layer.chksum == 0:
                    continue     # inner UDP over IPv4 without a checksum: legal, keep it
                setattr(layer, fname, None)      # have scapy recompute it (clears its cache)
            if isinstance(layer, (IP, UDP, IPv6)) and Padding not in pkt:
                # (scapy leaves trailing Ethernet padding out of a recomputed length)
                for lname in ("len", "plen"):
                    if lname in layer.fields:
                        setattr(layer, lname, None)
            layer = layer.payload
        rebuilt = bytes(pkt)
        if rebuilt != raw:
            raise BenchError(f"template {n} ({kind}): checksums/lengths not self-consistent")
        v = Ether(raw)
        outer = v[1]
        vx = v[VXLAN]
        hdr = bytes(vx)[:8]
        if hdr != bytes([0x08, 0, 0, 0, 0, 0, VNI, 0]):
            raise BenchError(f"template {n}: VXLAN header {hdr.hex()} is not RFC 7348 / VNI {VNI}")
        if v[UDP].dport != 4789 or v[UDP].chksum == 0:
            raise BenchError(f"template {n}: outer UDP dport/checksum wrong")
        inner_l3 = vx.payload.payload
        inner_len = len(bytes(inner_l3))
        if isinstance(outer, IP):
            if not outer.flags.DF or outer.len > 1500 or inner_len > 1450:
                raise BenchError(f"template {n}: DF/MTU wrong")
        elif isinstance(outer, IPv6):
            if 40 + outer.plen > 1500 or inner_len > 1430:
                raise BenchError(f"template {n}: IPv6 MTU wrong")
        else:
            raise BenchError(f"template {n}: outer is not IP")


# --------------------------------------------------------------------------- pcap writer

PCAP_HDR = struct.Struct("<IHHiIII")
REC_HDR = struct.Struct("<IIII")


def repeat_mix(templates):
    """The templates of the "repeat" mix: one TCP connection's data segments and ACKs."""
    out = []
    for frame, w, kind in templates:
        if kind in ("tcp-data", "tcp-ack"):
            # IPv4 underlay: Ethernet 14, IPv4 20, UDP 8, VXLAN 8, Ethernet 14, IPv4 20
            sport, dport = struct.unpack_from("!HH", frame, 84)
            if {sport, dport} == REPEAT_PORTS:
                out.append((frame, w, kind))
    if not out:
        raise BenchError("repeat mix: no template of the connection")
    return out


def write_capture(path: Path, templates, n: int, seed: int) -> int:
    """Write n records cycling a weighted random choice of templates; return bytes written."""
    rng = random.Random(seed)
    frames = [t[0] for t in templates]
    weights = [t[1] for t in templates]
    # Pre-pack each record body with a placeholder timestamp (only ts changes per packet).
    lens = [len(f) for f in frames]
    total = PCAP_HDR.size
    t_us = 1_700_000_000 * 1_000_000
    gaps = [rng.randrange(1, 40) for _ in range(8191)]
    chunk = 50_000
    pack = REC_HDR.pack
    with open(path, "wb", buffering=1 << 22) as fh:
        fh.write(PCAP_HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        done = 0
        while done < n:
            k = min(chunk, n - done)
            idx = rng.choices(range(len(frames)), weights, k=k)
            parts = []
            app = parts.append
            for j, t in enumerate(idx):
                t_us += gaps[(done + j) % 8191]
                ln = lens[t]
                app(pack(t_us // 1_000_000, t_us % 1_000_000, ln, ln))
                app(frames[t])
                total += 16 + ln
            fh.write(b"".join(parts))
            done += k
    return total


# --------------------------------------------------------------------------- running

def vxinspect_cmd() -> list[str]:
    """The installed console script next to this interpreter (not a pyenv shim), else -m."""
    cand = Path(sys.executable).parent / "vxinspect"
    if cand.is_file() and os.access(cand, os.X_OK):
        return [str(cand)]
    found = shutil.which("vxinspect")
    if found and "/shims/" not in found:
        return [found]
    return [sys.executable, "-m", "vxinspect"]


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run(cmd, stdout_path=None):
    """Run cmd; return (seconds, exit_code, peak_rss_kib, stderr_text).

    Peak RSS: a child forked (or vforked) from this process starts with this
    process's RSS high-water mark -- Linux carries the old mm's hiwater into
    ru_maxrss across exec -- so os.wait4()'s ru_maxrss alone would report at
    least the benchmark's own peak (~100+ MiB with scapy loaded).  So the child
    is run under GNU time (a ~2 MiB process), which reports its own child's
    ru_maxrss; without /usr/bin/time we fall back to wait4 (floored figure)."""
    out = open(stdout_path, "wb") if stdout_path else open(os.devnull, "wb")
    err = tempfile.TemporaryFile()
    rss_fd, rss_path = tempfile.mkstemp(prefix="vxbench-rss-")
    os.close(rss_fd)
    full = [GNU_TIME, "-f", "%M", "-o", rss_path, *cmd] if GNU_TIME else list(cmd)
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _pid, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        peak = ru.ru_maxrss
        if GNU_TIME:
            lines = Path(rss_path).read_text().split()
            peak = int(lines[-1]) if lines and lines[-1].isdigit() else -1
        return dt, p.returncode, peak, err.read().decode(errors="replace")
    finally:
        out.close()
        err.close()
        os.unlink(rss_path)


def verify_vxinspect(json_path: Path, n: int, label: str) -> None:
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{label}: output is not JSON ({e})")
    if isinstance(doc, list):
        doc = doc[0]
    problems = []
    if doc.get("error"):
        problems.append(f"read error {doc['error']}")
    if doc.get("packets") != n:
        problems.append(f"packets={doc.get('packets')} (want {n})")
    if doc.get("vxlan_packets") != n:
        problems.append(f"vxlan_packets={doc.get('vxlan_packets')} (want {n})")
    if doc.get("other_packets") not in (0, None):
        problems.append(f"other_packets={doc.get('other_packets')} (want 0)")
    if doc.get("vnis") != {str(VNI): n}:
        problems.append(f"vnis={doc.get('vnis')} (want {{'{VNI}': {n}}})")
    if doc.get("ok") is not True:
        problems.append(f"ok={doc.get('ok')}")
    fired = {cid: c for cid, c in (doc.get("checks") or {}).items() if c.get("count")}
    if fired:
        problems.append("checks fired on a clean capture:")
        for cid, c in sorted(fired.items()):
            problems.append(f"    {cid} ({c.get('severity')}): count={c.get('count')} "
                            f"first packets={c.get('packets')}")
    if problems:
        raise BenchError(f"{label}: vxinspect verification failed:\n  " + "\n  ".join(problems))


def count_lines(cmd) -> tuple[int, int, str]:
    """Run cmd streaming stdout, return (lines, exit_code, stderr)."""
    err = tempfile.TemporaryFile()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    lines = 0
    bad = 0
    for line in p.stdout:
        lines += 1
        if line.strip() != str(VNI).encode():
            bad += 1
    rc = p.wait()
    err.seek(0)
    msg = err.read().decode(errors="replace")
    err.close()
    if bad:
        msg += f"\n{bad} lines did not read VNI {VNI}"
    return lines, rc, msg


def fmt_mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=200_000, help="packets in the capture (default 200000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per tool (default 3)")
    ap.add_argument("--workdir", type=Path, help="where to put the captures (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the captures afterwards")
    ap.add_argument("--seed", type=int, default=7348)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args(argv)
    if not 1 <= a.packets <= MAX_PACKETS:
        ap.error(f"--packets must be 1..{MAX_PACKETS}")
    if not 1 <= a.repeat <= 20:
        ap.error("--repeat must be 1..20")
    tshark = shutil.which("tshark")
    if not tshark:
        print("vxinspect_bench: tshark not found", file=sys.stderr)
        return 1

    if a.workdir:
        a.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="vxbench-", dir=a.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix="vxbench-"))
    try:
        return bench(a, work, tshark)
    except BenchError as e:
        print(f"\nFAIL: {e}", file=sys.stderr)
        return 1
    finally:
        if a.keep:
            print(f"captures kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def time_mix(a, work: Path, mix: str, temps, vx, tshark):
    """Write mix's capture, verify the tools on it, time them: (times, rss, size)."""
    n = a.packets
    cap = work / f"vxlan-{mix}-{n}.pcap"
    t0 = time.perf_counter()
    size = write_capture(cap, temps, n, a.seed)
    print(f"capture:   {mix}: {len(temps)} templates, {n:,} packets, {size / 2**20:.1f} MiB, written in "
          f"{time.perf_counter() - t0:.2f}s -> {cap.name}")

    tools = {
        "vxinspect (all checks)": vx + [str(cap), "--json"],
        "vxinspect --no-checksums": vx + [str(cap), "--json", "--no-checksums"],
        "tshark -Y vxlan": [tshark, "-r", str(cap), "-Y", "vxlan", "-T", "fields", "-e", "vxlan.vni"],
    }
    json_out = work / "out.json"

    # Untimed verification runs (also warm the page cache).
    for name, cmd in tools.items():
        if name.startswith("vxinspect"):
            _dt, rc, _rss, err = run(cmd, json_out)
            if rc != 0:
                raise BenchError(f"{name}: exit {rc}\n{err.strip()[-2000:]}")
            verify_vxinspect(json_out, n, name)
        else:
            lines, rc, err = count_lines(cmd)
            if rc != 0 or lines != n:
                raise BenchError(f"{name}: exit {rc}, {lines} lines (want {n})\n{err.strip()[-2000:]}")
    print(f"verified:  vxinspect JSON packets == vxlan_packets == {n:,}, ok, no check fired; "
          f"tshark printed {n:,} lines of VNI {VNI}")

    times = {k: [] for k in tools}
    rss = {k: [] for k in tools}
    for r in range(a.repeat):
        for name, cmd in tools.items():
            is_vx = name.startswith("vxinspect")
            dt, rc, peak, err = run(cmd, json_out if is_vx else None)
            if rc != 0:
                raise BenchError(f"{name} (run {r + 1}): exit {rc}\n{err.strip()[-2000:]}")
            if is_vx:
                verify_vxinspect(json_out, n, f"{name} (run {r + 1})")
            times[name].append(dt)
            rss[name].append(peak)

    if not a.keep:   # a large file each: gone before the next is written
        cap.unlink()
    return times, rss, size


def bench(a, work: Path, tshark: str) -> int:
    n = a.packets
    vx = vxinspect_cmd()
    print(f"vxinspect: {' '.join(vx)}\ntshark:    {tshark}\nworkdir:   {work}")
    print("peak RSS:  " + ("GNU time %M of each child" if GNU_TIME else
                           "os.wait4 ru_maxrss (no /usr/bin/time: floored by this script's own RSS)"))

    t0 = time.perf_counter()
    templates = build_templates(a.seed)
    self_check_templates(templates)
    kinds = {}
    for _f, _w, k in templates:
        kinds[k] = kinds.get(k, 0) + 1
    print(f"templates: {len(templates)} ({', '.join(f'{k} {v}' for k, v in kinds.items())}), "
          f"built+checked in {time.perf_counter() - t0:.2f}s")

    mem_base = min(n, MEM_BASE_CAP)
    mem_big = MEM_FACTOR * mem_base
    avg = sum(len(f) * w for f, w, _ in templates) / sum(w for _, w, _ in templates)
    need = (n + mem_big) * (avg + 16) * 1.1  # one mix's capture at a time, then the 5x one
    free = shutil.disk_usage(work).free
    if need > free * 0.9:
        raise BenchError(f"need ~{need / 2**30:.1f} GiB in {work}, only {free / 2**30:.1f} GiB free")

    mixes = {"mixed": templates, "repeat": repeat_mix(templates)}
    per_mix = {}
    for mix, temps in mixes.items():
        per_mix[mix] = time_mix(a, work, mix, temps, vx, tshark)
    times, rss, size = per_mix["mixed"]
    json_out = work / "out.json"

    # Memory flatness: the mixed mix at 5x the packets.
    big = work / f"vxlan-{mem_big}.pcap"
    size_big = write_capture(big, templates, mem_big, a.seed + 1)
    mem_cmd = vx + [str(big), "--json"]
    if mem_base != n:
        base = work / f"vxlan-{mem_base}.pcap"
        write_capture(base, templates, mem_base, a.seed + 2)
        _dt, rc, peak_base, err = run(vx + [str(base), "--json"], json_out)
        if rc != 0:
            raise BenchError(f"memory base run: exit {rc}\n{err.strip()[-2000:]}")
        verify_vxinspect(json_out, mem_base, "memory base run")
        if not a.keep:
            base.unlink()
    else:
        peak_base = max(rss["vxinspect (all checks)"])
    dt_big, rc, peak_big, err = run(mem_cmd, json_out)
    if rc != 0:
        raise BenchError(f"vxinspect on {mem_big:,} packets: exit {rc}\n{err.strip()[-2000:]}")
    verify_vxinspect(json_out, mem_big, f"vxinspect on {mem_big:,} packets")
    if not a.keep:
        big.unlink()

    # ---- report
    ts_name = "tshark -Y vxlan"
    for mix, (mtimes, mrss, msize) in per_mix.items():
        med = {k: statistics.median(v) for k, v in mtimes.items()}
        best = {k: min(v) for k, v in mtimes.items()}
        print(f"\n{mix} mix: {n:,} packets, {msize / 2**20:.1f} MiB, {a.repeat} timed run(s) each; "
              f"rates from the median time, ratio = rate / tshark's rate")
        hdr = (f"{'tool':<26} {'best s':>8} {'median s':>9} {'packets/s':>12} {'x tshark':>9} "
               f"{'peak RSS':>11}")
        print(hdr)
        print("-" * len(hdr))
        for k in mtimes:
            pps = n / med[k]
            print(f"{k:<26} {best[k]:>8.3f} {med[k]:>9.3f} {pps:>12,.0f} "
                  f"{med[ts_name] / med[k]:>9.2f} {fmt_mib(max(mrss[k])):>11}")
    med = {k: statistics.median(v) for k, v in times.items()}
    rmed = {k: statistics.median(v) for k, v in per_mix["repeat"][0].items()}
    pps_vx = n / med["vxinspect (all checks)"]
    pps_nc = n / med["vxinspect --no-checksums"]
    pps_ts = n / med[ts_name]
    ratio = pps_vx / pps_ts
    mem_ratio = peak_big / peak_base
    print(f"\nmemory: vxinspect (all checks) peak RSS {fmt_mib(peak_base)} at {mem_base:,} packets, "
          f"{fmt_mib(peak_big)} at {mem_big:,} packets ({size_big / 2**20:.0f} MiB, "
          f"{dt_big:.2f}s) -> ratio {mem_ratio:.3f}")

    pps_rep = n / rmed["vxinspect (all checks)"]
    ratio_rep = pps_rep / (n / rmed[ts_name])
    results = [
        (f"vxinspect all checks >= {TARGET_ALL_PPS:,} packets/s",
         f"{pps_vx:,.0f}/s", pps_vx >= TARGET_ALL_PPS),
        (f"vxinspect all checks >= {TARGET_TSHARK_RATIO:g}x tshark rate",
         f"{ratio:.2f}x", ratio >= TARGET_TSHARK_RATIO),
        (f"repeat mix: all checks >= {TARGET_TSHARK_RATIO:g}x tshark rate",
         f"{ratio_rep:.2f}x", ratio_rep >= TARGET_TSHARK_RATIO),
        (f"vxinspect --no-checksums >= {TARGET_NOCSUM_PPS:,} packets/s",
         f"{pps_nc:,.0f}/s", pps_nc >= TARGET_NOCSUM_PPS),
        (f"peak RSS at {MEM_FACTOR}N <= {TARGET_MEM_RATIO:g}x peak at N",
         f"{mem_ratio:.3f}x", mem_ratio <= TARGET_MEM_RATIO),
    ]
    print("\ntargets:")
    for what, got, ok in results:
        print(f"  {'PASS' if ok else 'MISS'}  {what:<44} measured {got}")
    missed = [r for r in results if not r[2]]
    if missed and a.strict:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
