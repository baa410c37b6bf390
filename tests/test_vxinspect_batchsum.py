"""vxinspect's batched checksums (inspect/vxinspect/batchsum.py) against per-packet sums.

The decoder queues every checksum of a batch and sums them at once with numpy; these
tests hold that against a plain RFC 1071 loop written out here, against
vtep.checksum.word_sum, and, on whole VXLAN packets, against scapy's checksums:

- range_sums of random ranges (odd starts, odd ends, empty, one byte, at the very
  end of an odd-sized buffer, all-ones data) equals the RFC 1071 sum of each range;
- on random VXLAN packets (inner TCP, UDP, ICMP, odd payload lengths, IPv4 and IPv6
  underlay), some with a wrong checksum or a flipped payload byte, the checksum checks
  that fire are exactly those whose field scapy computes differently, and they are
  the same whether a batch holds one packet or all of them (the order, the first
  packet numbers and the counts of every check, too).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from vtep.checksum import word_sum
from vxinspect.analyze import Options
from vxinspect.batchsum import range_sums
from vxinspect.capture import LINKTYPE_ETHERNET
from vxinspect.decode import SLICE, make_decoder
from vxinspect.report import Tally

CS_CHECKS = ("ip-checksum", "udp-checksum", "inner-ip-checksum", "inner-l4-checksum")


def rfc1071(data: bytes) -> int:
    """The ones'-complement sum of 16-bit big-endian words, word by word (RFC 1071)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s % 0xFFFF  # 0xFFFF and 0 are the same number in ones' complement


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(min_size=0, max_size=700), st.data())
def test_range_sums_random(buf, data):
    n = len(buf)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=30))
    ranges = [(min(a, b), max(a, b)) for a, b in pairs]
    for kind in (bytes, bytearray):
        got = range_sums(kind(buf), [a for a, _ in ranges], [b for _, b in ranges])
        assert got.dtype == np.uint64
        assert [int(x) for x in got] == [rfc1071(buf[a:b]) for a, b in ranges]
        assert [int(x) for x in got] == [word_sum(buf[a:b]) for a, b in ranges]


def test_range_sums_edges():
    for n in (0, 1, 2, 3, 7, 8, 41):
        for fill in (0x00, 0xFF, 0xA5):
            buf = bytes([fill]) * n if fill != 0xA5 else bytes(range(n))
            ranges = [(a, b) for a in range(n + 1) for b in range(a, n + 1)]
            got = range_sums(buf, [a for a, _ in ranges], [b for _, b in ranges])
            assert [int(x) for x in got] == [rfc1071(buf[a:b]) for a, b in ranges], (n, fill)
    assert len(range_sums(b"abc", [], [])) == 0
    # nested and repeated ranges (the outer UDP datagram around its inner segment)
    buf = bytes(random.Random(3).getrandbits(8) for _ in range(3001))
    ranges = [(0, 3001), (1, 3000), (1, 3001), (100, 2000), (101, 1999), (100, 2000), (3000, 3001)]
    got = range_sums(buf, [a for a, _ in ranges], [b for _, b in ranges])
    assert [int(x) for x in got] == [rfc1071(buf[a:b]) for a, b in ranges]


# ---------------------------------------------------------------- whole packets

def _packet(rng: random.Random) -> Ether:
    """A random VXLAN packet whose every checksum is right (scapy computes them)."""
    plen = rng.randrange(0, 300)  # odd lengths too
    payload = Raw(bytes(rng.getrandbits(8) for _ in range(plen)))
    inner_ip = IP(src=f"10.0.{rng.randrange(4)}.{rng.randrange(1, 250)}", dst="10.0.9.9",
                  id=rng.randrange(65536), flags="DF")
    l4 = rng.choice((TCP(sport=rng.randrange(1, 65536), dport=443, flags="PA",
                         seq=rng.randrange(1 << 32)),
                     UDP(sport=rng.randrange(1, 65536), dport=53),
                     ICMP(type=8, id=rng.randrange(65536), seq=rng.randrange(65536))))
    inner = Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02") / inner_ip / l4 / payload
    if rng.random() < 0.2:
        outer = IPv6(src="fd00::1", dst="fd00::2")
    else:
        outer = IP(src="192.168.1.1", dst="192.168.1.2", flags="DF", id=rng.randrange(65536))
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / outer
            / UDP(sport=rng.randrange(49152, 65536), dport=4789) / VXLAN(vni=10) / inner)


# where each checksum lives in a dissected packet
LAYER = {"ip-checksum": lambda p: p.getlayer(1), "udp-checksum": lambda p: p[UDP],
         "inner-ip-checksum": lambda p: p[VXLAN][IP],
         "inner-l4-checksum": lambda p: p[VXLAN][IP].payload}


def _expected(raw: bytes) -> set[str]:
    """The checksum checks a packet should fire: fields scapy computes differently."""
    want = set()
    pkt = Ether(raw)
    v4 = isinstance(pkt.getlayer(1), IP)
    for cid, where in LAYER.items():
        if cid == "ip-checksum" and not v4:
            continue
        layer = where(pkt)
        have = layer.chksum
        if cid == "udp-checksum" and have == 0 and v4:
            continue  # zero over IPv4: not checked
        if cid == "inner-l4-checksum" and isinstance(layer, UDP) and have == 0:
            continue  # inner UDP over IPv4 without a checksum
        fresh = pkt.copy()
        where(fresh).chksum = None  # scapy computes it again
        if where(Ether(bytes(fresh))).chksum != have:
            want.add(cid)
    return want


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    """Often nothing; else a wrong checksum field or a flipped payload byte."""
    b = bytearray(raw)
    r = rng.random()
    pkt = Ether(raw)
    if r < 0.4:
        return raw
    if r < 0.8:
        # a checksum field (outer IPv4 header, outer UDP, inner IPv4 header, inner L4)
        at = []
        if isinstance(pkt.getlayer(1), IP):
            at.append(14 + 10)
        ip_len = 20 if isinstance(pkt.getlayer(1), IP) else 40
        u = 14 + ip_len
        at.append(u + 6)
        ii = u + 8 + 8 + 14
        at.append(ii + 10)
        l4 = ii + 20
        inner_l4 = pkt[VXLAN][IP].payload
        at.append(l4 + {TCP: 16, UDP: 6, ICMP: 2}[type(inner_l4)])
        i = rng.choice(at)
        b[i] ^= 1 << rng.randrange(8)
    else:
        # a payload byte near the end (odd and even offsets)
        if len(b) > 100:
            i = rng.randrange(max(100, len(b) - 40), len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _decode(frames: list[bytes], per_call: int) -> dict:
    """Decode frames in batches of per_call records from one buffer: Tally.hits."""
    buf = bytearray()
    records = []
    for f in frames:
        buf += b"\xAA" * (len(records) % 3)  # odd and even record offsets
        records.append((len(buf), len(buf) + len(f), len(f), LINKTYPE_ETHERNET))
        buf += f
    tally = Tally()
    decode = make_decoder(Options(underlay_mtu=9000), tally, safety_net=False)
    for i in range(0, len(records), per_call):
        decode(buf, records[i:i + per_call], i)
    return tally.hits


def test_packets_against_scapy_and_batching():
    rng = random.Random(1071)
    frames = [_mutate(rng, bytes(_packet(rng))) for _ in range(SLICE + 300)]
    one_by_one = _decode(frames, 1)
    in_batches = _decode(frames, len(frames))
    assert one_by_one == in_batches
    # per packet against scapy
    for no, f in enumerate(frames[:400], 1):
        hits = _decode([f], 1)
        fired = {cid for cid in CS_CHECKS if hits[cid][0]}
        assert fired == _expected(f), (no, f.hex())
    assert any(in_batches[cid][0] for cid in CS_CHECKS)
    assert in_batches["udp-checksum"][0] > 10  # the first-packets list is cut at 10


def test_odd_offset_and_bytes_buffer():
    # a frame at an odd offset of a bytes buffer decodes as one alone in a bytearray
    rng = random.Random(7)
    for _ in range(20):
        f = _mutate(rng, bytes(_packet(rng)))
        t1, t2 = Tally(), Tally()
        a = make_decoder(Options(), t1)(b"\0" + f, [(1, 1 + len(f), len(f), 1)], 0)
        b = make_decoder(Options(), t2)(bytearray(f), [(0, len(f), len(f), 1)], 0)
        assert a == b == 1 and t1.hits == t2.hits


# ---------------------------------------------------------------- the worker process

def _worker_capture(path, n: int):
    """A pcap of n packets cycling 300 random (often mutated) VXLAN packets, and what
    scapy says each check should count and its first packets (FIRST_PACKETS of them)."""
    import struct

    from vxinspect.checks import FIRST_PACKETS
    rng = random.Random(4789)
    distinct = [_mutate(rng, bytes(_packet(rng))) for _ in range(300)]
    want_of = [_expected(f) for f in distinct]
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    want: dict[str, list[int]] = {cid: [] for cid in CS_CHECKS}
    counts = dict.fromkeys(CS_CHECKS, 0)
    for i in range(n):
        f = distinct[i % len(distinct)]
        out += struct.pack("<IIII", 1700000000, i, len(f), len(f)) + f
        for cid in want_of[i % len(distinct)]:
            counts[cid] += 1
            if len(want[cid]) < FIRST_PACKETS:
                want[cid].append(i + 1)
    path.write_bytes(bytes(out))
    return counts, want


def _with_worker(path, monkeypatch, kill: bool = False, started: bool = False):
    """inspect_source on a file with the checksum worker forced on (killed at once if
    `kill`: the parent must then sum every batch itself)."""
    from vxinspect import batchsum, run
    from vxinspect.stream import Source
    monkeypatch.setattr(run, "WORKER_MIN", 0)
    made = []

    class Spy(batchsum.Worker):
        def __init__(self, fd):
            super().__init__(fd)
            made.append(self)
            if started:
                self.answered = 1  # as if past numpy's import: LAG applies at once
            if kill:
                import os
                import signal
                os.kill(self.pid, signal.SIGKILL)
    monkeypatch.setattr(run, "Worker", Spy)
    src = Source.open(str(path))
    try:
        report, interrupted = run.inspect_source(src, Options(underlay_mtu=9000))
    finally:
        src.close()
    assert not interrupted and len(made) == 1
    return report, made[0]


@pytest.mark.parametrize("lag", [None, 0, 1])
def test_worker_sums_as_scapy_says(tmp_path, monkeypatch, lag):
    """Several 4 MiB batches summed in the worker: every checksum check counts exactly
    the packets scapy finds wrong, and names the same first packets. With lag 1 the
    parent sums every batch it finds the worker behind on (a busy machine) itself,
    interleaved with the worker's; with lag 0 (and the worker taken as past its start)
    the parent sums them all."""
    from vxinspect import batchsum, inspect_file
    if lag is not None:
        monkeypatch.setattr(batchsum, "LAG", lag)
    path = tmp_path / "w.pcap"
    counts, first = _worker_capture(path, 60_000)
    assert path.stat().st_size > 2 * (4 << 20)  # several batches
    report, worker = _with_worker(path, monkeypatch, started=lag == 0)
    assert worker.alive and not worker.jobs
    if lag == 0:
        assert worker.here > 0
    for cid in CS_CHECKS:
        assert report.checks[cid]["count"] == counts[cid], cid
        assert report.checks[cid]["packets"] == first[cid], cid
    assert all(counts.values())
    local = inspect_file(path, Options(underlay_mtu=9000)).to_dict()
    assert report.to_dict() == local  # and every other check, in-process or not


def test_a_dead_worker_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "w.pcap"
    counts, first = _worker_capture(path, 20_000)
    report, worker = _with_worker(path, monkeypatch, kill=True)
    assert not worker.alive
    for cid in CS_CHECKS:
        assert (report.checks[cid]["count"], report.checks[cid]["packets"]) == (
            counts[cid], first[cid]), cid
