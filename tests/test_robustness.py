"""Malformed packets never crash or stall vxinspect, and batching never changes a verdict."""
import random

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from pcapwrite import write_pcap
from vxinspect import Options, inspect_file
from vxinspect import capture
from vxinspect.decode import make_decoder
from vxinspect.report import Tally


def decode_without_net(frames, opts, linktype=1):
    """Decode each frame in a buffer of its own with the decoder's safety net off: a read
    past the frame's end raises instead of counting as `truncated`, and fails the test.
    Returns {check: count}."""
    tally = Tally()
    decode_batch = make_decoder(opts, tally, safety_net=False)
    for no, f in enumerate(frames):
        decode_batch(f, [(0, len(f), len(f), linktype)], no)
    return {c: h[0] for c, h in tally.hits.items()}


def _frames():
    def vx(inner, outer=None):
        outer = outer or IP(src="192.168.1.138", dst="192.168.2.142", flags="DF")
        return bytes(Ether() / outer / UDP(sport=40000, dport=4789) /
                     VXLAN(flags=0x08, vni=10) / inner)
    inner_eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    return [
        vx(inner_eth / IP(src="172.2.0.2", dst="172.2.1.2") / TCP() / (b"a" * 300)),
        vx(inner_eth / IP(src="172.2.0.2", dst="172.2.1.2") / ICMP() / (b"b" * 57)),
        vx(inner_eth / IPv6(src="fd00::2", dst="fd00::3") / UDP() / (b"c" * 33)),
        vx(inner_eth / ARP()),
        vx(inner_eth / Dot1Q(vlan=5) / IP() / UDP(dport=4789) / VXLAN(flags=0x08, vni=10) /
           inner_eth / IP() / ICMP()),
        vx(inner_eth / IP() / ICMP(), outer=IPv6(src="fd00::1", dst="fd00::2")),
    ]


def test_mutated_and_cut_frames_never_raise(tmp_path):
    rnd = random.Random(7348)
    good = _frames()
    frames = []
    for _ in range(3000):
        f = bytearray(rnd.choice(good))
        for _ in range(rnd.randrange(1, 6)):
            f[rnd.randrange(len(f))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            f = f[:rnd.randrange(len(f) + 1)]
        frames.append(bytes(f))
    frames += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(80))) for _ in range(500)]
    path = write_pcap(tmp_path / "fuzz.pcap", frames)
    for cs in (True, False):
        r = inspect_file(path, Options(checksums=cs))
        assert r.error is None
        assert r.packets == len(frames)
        assert 0 < r.vxlan_packets < len(frames)
        assert r.checks["truncated"]["count"] > 0
        # the same frames without the safety net: nothing raises, and the verdicts are
        # the same, so the net caught nothing in the file either
        assert decode_without_net(frames, Options(checksums=cs)) == \
            {c: v["count"] for c, v in r.checks.items()}


def test_batch_boundaries_do_not_change_the_result(tmp_path, monkeypatch):
    # Records straddle chunk boundaries when the chunk is tiny: the reader must
    # carry them over, and cross-packet state (mac-move) must survive batches.
    frames = _frames() * 50
    path = write_pcap(tmp_path / "b.pcap", frames)
    whole = inspect_file(path).to_dict()
    monkeypatch.setattr(capture, "CHUNK", 97)
    small = inspect_file(path).to_dict()
    assert whole == small
    assert whole["packets"] == len(frames)


def test_records_larger_than_a_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "CHUNK", 64)
    big = bytes(Ether() / IP(src="192.168.1.138", dst="192.168.2.142", flags="DF") /
                UDP(dport=4789) / VXLAN(flags=0x08, vni=10) / Ether() / IP() / ICMP() /
                (b"z" * 1500))
    r = inspect_file(write_pcap(tmp_path / "big.pcap", [big] * 3))
    assert (r.packets, r.vxlan_packets) == (3, 3)
    assert r.checks["outer-too-big"]["count"] == 3
