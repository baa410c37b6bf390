"""vxinspect must read the same traffic identically from every capture container
and link layer it supports (see the contract: pcap both byte orders, us and ns;
pcapng EPB/SPB with blocks to skip and several interfaces; link types 1, 101,
113, 276; outer 802.1Q / 802.1ad tags; IPv4 or IPv6 outer).

The captures are written with tests/pcapwrite.py and scapy, never with
vxinspect's own reader.  Every variant carries the same six packets:

  1  VXLAN VNI 10  192.0.2.1 -> 192.0.2.2
  2  VXLAN VNI 10  192.0.2.2 -> 192.0.2.1
  3  VXLAN VNI 11  (fault: VNI not in the expected set {10} -> vni-mismatch)
  4  plain UDP to port 53 (not VXLAN: "other" traffic)
  5  VXLAN VNI 10
  6  VXLAN VNI 10 with a wrong, non-zero outer UDP checksum (fault: udp-checksum)

and must give exactly EXPECTED below.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from pcapwrite import (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL,
                       LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, write_pcap,
                       write_pcapng)

from vxinspect import Options, inspect_file

REPO = Path(__file__).resolve().parents[1]

# Every check id the contract defines.
CONTRACT_CHECKS = (
    "vni-mismatch", "vxlan-flags", "vxlan-reserved", "outer-fragment", "outer-too-big",
    "inner-too-big", "ip-checksum", "udp-checksum", "udp-zero-checksum-ipv6",
    "inner-ip-checksum", "inner-l4-checksum", "truncated", "inner-vlan",
    "unknown-inner-type", "legacy-port", "df-clear", "nesting-too-deep", "mac-move",
)

VTEP_MAC = ("02:00:00:00:01:01", "02:00:00:00:01:02")
VTEP_IP = {4: ("192.0.2.1", "192.0.2.2"), 6: ("2001:db8::1", "2001:db8::2")}
VM_MAC = ("02:00:00:00:00:0a", "02:00:00:00:00:0b")
VM_IP = ("10.0.0.1", "10.0.0.2")

# (direction 0: VTEP1 -> VTEP2, 1: back; vni or None for the non-VXLAN packet; bad udp csum)
PLAN = [(0, 10, False), (1, 10, False), (0, 11, False), (0, None, False),
        (1, 10, False), (0, 10, True)]


def _expected_checks(**fired):
    d = {c: (0, []) for c in CONTRACT_CHECKS}
    d.update(fired)
    return d


EXPECTED = {
    "packets": 6,
    "vxlan_packets": 5,
    "other_packets": 1,
    "vnis": {"10": 4, "11": 1},
    "checks": _expected_checks(**{"vni-mismatch": (1, [3]), "udp-checksum": (1, [6])}),
    "error": None,
}


def _outer(direction, ipver, tags):
    """Outer Ethernet (+ tags) + IP header, DF set so df-clear stays quiet."""
    smac, dmac = VTEP_MAC if direction == 0 else VTEP_MAC[::-1]
    sip, dip = VTEP_IP[ipver] if direction == 0 else VTEP_IP[ipver][::-1]
    if tags == "dot1q":
        l2 = Ether(src=smac, dst=dmac) / Dot1Q(vlan=100)
    elif tags == "qinq":
        l2 = Ether(src=smac, dst=dmac, type=0x88A8) / Dot1AD(vlan=200) / Dot1Q(vlan=100)
    else:
        l2 = Ether(src=smac, dst=dmac)
    l3 = IP(src=sip, dst=dip, flags="DF", ttl=64, id=7) if ipver == 4 else \
        IPv6(src=sip, dst=dip, hlim=64)
    return l2 / l3


def _inner(direction, seq):
    smac, dmac = VM_MAC if direction == 0 else VM_MAC[::-1]
    sip, dip = VM_IP if direction == 0 else VM_IP[::-1]
    return (Ether(src=smac, dst=dmac) / IP(src=sip, dst=dip, flags="DF") /
            ICMP(type=8 if direction == 0 else 0, id=0x77, seq=seq) / (b"vxinspect-test!!" * 2))


def _bad_udp_checksum(frame):
    p = Ether(bytes(frame))
    good = p[UDP].chksum
    assert good not in (None, 0)
    p[UDP].chksum = (good ^ 0x5A5A) or 1
    out = bytes(p)
    assert Ether(out)[UDP].chksum != good
    return out


def make_frames(ipver=4, tags=None):
    frames = []
    for i, (direction, vni, bad) in enumerate(PLAN, 1):
        outer = _outer(direction, ipver, tags)
        if vni is None:
            f = outer / UDP(sport=5353, dport=53) / (b"\x12\x34" + b"\0" * 10)
        else:
            f = outer / UDP(sport=49152 + i, dport=4789) / VXLAN(flags=0x08, vni=vni) / \
                _inner(direction, i)
        f = bytes(f)
        if bad:
            f = _bad_udp_checksum(f)
        frames.append(f)
    return frames


# ---- link-layer conversions (from untagged Ethernet frames) -------------------------------

def to_raw_ip(frame: bytes) -> bytes:
    return frame[14:]


def to_sll(frame: bytes, i: int = 0) -> bytes:
    # packet type(2) ARPHRD(2)=1 addr len(2)=6 addr(8) protocol(2)=ethertype
    ptype = 4 if i % 2 else 0          # "sent by us" / "to us"
    return struct.pack(">HHH", ptype, 1, 6) + frame[6:12] + b"\0\0" + frame[12:14] + frame[14:]


def to_sll2(frame: bytes, i: int = 0) -> bytes:
    # protocol(2) reserved(2) ifindex(4) ARPHRD(2)=1 packet type(1) addr len(1) addr(8)
    ptype = 4 if i % 2 else 0
    return (frame[12:14] + b"\0\0" + struct.pack(">IHBB", 3, 1, ptype, 6) +
            frame[6:12] + b"\0\0" + frame[14:])


# ---- the variants --------------------------------------------------------------------------

def _pcap(**kw):
    def w(tmp, frames):
        return write_pcap(tmp / "c.pcap", frames, **kw)
    return w


def _pcapng(**kw):
    def w(tmp, frames):
        return write_pcapng(tmp / "c.pcapng", frames, **kw)
    return w


def _linktype(conv, lt, container="pcap", **kw):
    def w(tmp, frames):
        conv_frames = [conv(f, i) if conv is not to_raw_ip else conv(f)
                       for i, f in enumerate(frames)]
        if container == "pcap":
            return write_pcap(tmp / "c.pcap", conv_frames, linktype=lt, **kw)
        return write_pcapng(tmp / "c.pcapng", conv_frames, interfaces=(lt,), **kw)
    return w


def _two_interfaces(big_endian):
    def w(tmp, frames):
        # interface 0 Ethernet, interface 1 raw IP; records alternate between them
        recs = [(0, f) if i % 2 == 0 else (1, to_raw_ip(f)) for i, f in enumerate(frames)]
        return write_pcapng(tmp / "c.pcapng", recs,
                            interfaces=(LINKTYPE_ETHERNET, LINKTYPE_RAW), big_endian=big_endian)
    return w


def _two_interfaces_sll2_first(tmp, frames):
    # interface 0 SLL2, interface 1 Ethernet: the link type must follow each record's
    # interface id, not the first IDB
    recs = [(0, to_sll2(f, i)) if i % 2 else (1, f) for i, f in enumerate(frames)]
    return write_pcapng(tmp / "c.pcapng", recs,
                        interfaces=(LINKTYPE_LINUX_SLL2, LINKTYPE_ETHERNET))


def _txt_name(tmp, frames):
    return write_pcap(tmp / "foo.txt", frames)


def _txt_name_pcapng(tmp, frames):
    return write_pcapng(tmp / "capture.pcap", frames, big_endian=True)   # pcapng named .pcap


# (id, ip version of the outer, outer tags, writer)
VARIANTS = [
    ("pcap-le-us", 4, None, _pcap()),
    ("pcap-be-us", 4, None, _pcap(big_endian=True)),
    ("pcap-le-ns", 4, None, _pcap(nanos=True)),
    ("pcap-be-ns", 4, None, _pcap(nanos=True, big_endian=True)),
    ("pcapng-le-epb", 4, None, _pcapng()),
    ("pcapng-be-epb", 4, None, _pcapng(big_endian=True)),
    ("pcapng-le-epb-no-extra-blocks", 4, None, _pcapng(extra_blocks=False)),
    ("pcapng-le-spb", 4, None, _pcapng(simple=True)),
    ("pcapng-be-spb", 4, None, _pcapng(simple=True, big_endian=True)),
    ("pcapng-le-eth+raw", 4, None, _two_interfaces(False)),
    ("pcapng-be-eth+raw", 4, None, _two_interfaces(True)),
    ("pcapng-sll2+eth", 4, None, _two_interfaces_sll2_first),
    ("pcap-raw-ip", 4, None, _linktype(to_raw_ip, LINKTYPE_RAW)),
    ("pcap-be-raw-ip", 4, None, _linktype(to_raw_ip, LINKTYPE_RAW, big_endian=True)),
    ("pcap-sll", 4, None, _linktype(to_sll, LINKTYPE_LINUX_SLL)),
    ("pcap-sll2", 4, None, _linktype(to_sll2, LINKTYPE_LINUX_SLL2)),
    ("pcapng-raw-ip", 4, None, _linktype(to_raw_ip, LINKTYPE_RAW, "pcapng")),
    ("pcapng-be-sll", 4, None, _linktype(to_sll, LINKTYPE_LINUX_SLL, "pcapng", big_endian=True)),
    ("pcapng-sll2", 4, None, _linktype(to_sll2, LINKTYPE_LINUX_SLL2, "pcapng")),
    ("outer-dot1q", 4, "dot1q", _pcap()),
    ("outer-qinq", 4, "qinq", _pcap()),
    ("outer-qinq-pcapng-be", 4, "qinq", _pcapng(big_endian=True)),
    ("outer-ipv6", 6, None, _pcap()),
    ("outer-ipv6-dot1q", 6, "dot1q", _pcap(nanos=True)),
    ("outer-ipv6-raw-ip", 6, None, _linktype(to_raw_ip, LINKTYPE_RAW)),
    ("outer-ipv6-sll", 6, None, _linktype(to_sll, LINKTYPE_LINUX_SLL)),
    ("outer-ipv6-sll2", 6, None, _linktype(to_sll2, LINKTYPE_LINUX_SLL2, "pcapng")),
    ("outer-ipv6-eth+raw", 6, None, _two_interfaces(False)),
    ("pcap-named-foo.txt", 4, None, _txt_name),
    ("pcapng-named-.pcap", 4, None, _txt_name_pcapng),
]


def summary(d: dict) -> dict:
    """The parts of a report document that must not depend on the container."""
    missing = [c for c in CONTRACT_CHECKS if c not in d["checks"]]
    assert not missing, f"check ids missing from the report: {missing}"
    return {
        "packets": d["packets"],
        "vxlan_packets": d["vxlan_packets"],
        "other_packets": d["other_packets"],
        "vnis": d["vnis"],
        "checks": {c: (d["checks"][c]["count"], d["checks"][c]["packets"])
                   for c in CONTRACT_CHECKS},
        "error": d["error"],
    }


def run_api(path, **opts):
    return inspect_file(str(path), Options(**opts)).to_dict()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vxinspect", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_frames_are_what_the_plan_says():
    """Guard the fixture itself (so a scapy change cannot silently void the tests)."""
    for ipver, tags in ((4, None), (6, None), (4, "qinq")):
        for f, (_, vni, bad) in zip(make_frames(ipver, tags), PLAN):
            p = Ether(f)
            if vni is None:
                assert p[UDP].dport == 53 and VXLAN not in p
                continue
            assert p[UDP].dport == 4789
            hdr = bytes(p[VXLAN])[:8]
            assert hdr == bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
            raw = Ether(f)
            raw[UDP].chksum = None
            good = Ether(bytes(raw))[UDP].chksum
            assert (p[UDP].chksum != good) == bad


@pytest.mark.parametrize("ipver,tags,writer", [v[1:] for v in VARIANTS],
                         ids=[v[0] for v in VARIANTS])
def test_same_result_in_every_format(tmp_path, ipver, tags, writer):
    path = writer(tmp_path, make_frames(ipver, tags))
    d = run_api(path)
    assert summary(d) == EXPECTED
    assert d["ok"] is False            # vni-mismatch and udp-checksum are errors
    assert d["file"].endswith(path.name)


def test_flows_do_not_depend_on_the_container(tmp_path):
    """Flow endpoints and packet counts are link-layer independent (bytes may legitimately
    be counted at a different layer, so they are not compared)."""
    frames = make_frames()

    def flows(path):
        return sorted((f["src"], f["dst"], f["packets"]) for f in run_api(path)["flows"])

    ref = flows(write_pcap(tmp_path / "eth.pcap", frames))
    assert ref, "no flows reported"
    assert sum(n for _, _, n in ref) >= 5          # every VXLAN packet belongs to a flow
    assert {(s, d) for s, d, _ in ref} >= {VTEP_IP[4], VTEP_IP[4][::-1]}
    for name, path in [
        ("be-ns", write_pcap(tmp_path / "b.pcap", frames, nanos=True, big_endian=True)),
        ("pcapng-spb", write_pcapng(tmp_path / "s.pcapng", frames, simple=True)),
        ("sll2", write_pcap(tmp_path / "l.pcap", [to_sll2(f, i) for i, f in enumerate(frames)],
                            linktype=LINKTYPE_LINUX_SLL2)),
        ("eth+raw", _two_interfaces(True)(tmp_path, frames)),
    ]:
        assert flows(path) == ref, name


@pytest.mark.parametrize("variant", ["pcapng-be-eth+raw", "pcap-sll2", "outer-qinq",
                                     "outer-ipv6", "pcap-named-foo.txt"])
def test_cli_json_matches(tmp_path, variant):
    _, ipver, tags, writer = next(v for v in VARIANTS if v[0] == variant)
    path = writer(tmp_path, make_frames(ipver, tags))
    r = run_cli(path, "--json")
    assert "Traceback" not in r.stderr + r.stdout
    assert r.returncode == 1, r.stderr            # an error-severity check fired
    assert summary(json.loads(r.stdout)) == EXPECTED


def test_cli_several_formats_in_one_call(tmp_path):
    frames = make_frames()
    a = write_pcap(tmp_path / "a.pcap", frames, big_endian=True)
    b = write_pcapng(tmp_path / "b.pcapng", frames, simple=True)
    c = write_pcap(tmp_path / "c.pcap", [to_sll(f, i) for i, f in enumerate(frames)],
                   linktype=LINKTYPE_LINUX_SLL, nanos=True)
    r = run_cli(a, b, c, "--json")
    assert r.returncode == 1, r.stderr
    docs = json.loads(r.stdout)
    assert isinstance(docs, list) and len(docs) == 3
    for doc, p in zip(docs, (a, b, c)):
        assert doc["file"].endswith(p.name)
        assert summary(doc) == EXPECTED


def test_expected_vni_set_is_honoured_in_every_layer_format(tmp_path):
    """With both VNIs expected only the checksum fault remains (sanity for EXPECTED)."""
    path = _two_interfaces(False)(tmp_path, make_frames(6))
    d = summary(run_api(path, vnis=frozenset({10, 11})))
    assert d["checks"]["vni-mismatch"] == (0, [])
    assert d["checks"]["udp-checksum"] == (1, [6])
    d = summary(run_api(path, vnis=frozenset({10, 11}), checksums=False))
    assert d["checks"]["udp-checksum"] == (0, [])
    assert d["vnis"] == EXPECTED["vnis"]


# ---- snaplen truncation -------------------------------------------------------------------

SNAP = 14 + 20 + 8 + 8 + 14 + 20 + 8     # outer Eth/IPv4/UDP, VXLAN, inner Eth/IPv4, 8 bytes


@pytest.mark.parametrize("big_endian,nanos", [(False, False), (True, True)])
def test_snaplen_truncated_capture_still_counts(tmp_path, big_endian, nanos):
    frames = make_frames()
    cut = [f[:SNAP] for f in frames]
    assert [len(f) > SNAP for f in frames] == [True, True, True, False, True, True]
    path = write_pcap(tmp_path / "snap.pcap", cut, snaplen=SNAP, big_endian=big_endian,
                      nanos=nanos, orig_lens=[len(f) for f in frames])
    d = run_api(path)
    s = summary(d)
    # caplen < origlen is a normal capture, not a read error
    assert s["error"] is None
    assert (s["packets"], s["vxlan_packets"], s["other_packets"]) == (6, 5, 1)
    assert s["vnis"] == {"10": 4, "11": 1}        # the VXLAN header is within the snaplen
    assert s["checks"]["vni-mismatch"] == (1, [3])
    # Checksums over bytes that were not captured cannot be called wrong: the correct outer
    # UDP checksums of packets 1,2,3,5 and the correct inner ICMP checksums must not be
    # flagged.  (Packet 6's outer checksum IS wrong but unverifiable; either verdict is ok.)
    assert set(s["checks"]["udp-checksum"][1]) <= {6}
    assert s["checks"]["inner-l4-checksum"] == (0, [])
    assert s["checks"]["ip-checksum"] == (0, [])
    assert s["checks"]["inner-ip-checksum"] == (0, [])


def test_cut_packets_fire_truncated(tmp_path):
    """A record shorter than its own length fields, with nothing saying it was cut by a snap
    length (caplen == origlen): the outer IPv4 total length exceeds the bytes present, so
    truncated fires on packets 1,2,3,5,6 (packet 4 is shorter than the cut)."""
    frames = make_frames()
    path = write_pcap(tmp_path / "snap.pcap", [f[:SNAP] for f in frames], snaplen=SNAP)
    s = summary(run_api(path))
    assert s["checks"]["truncated"] == (5, [1, 2, 3, 5, 6])


def test_snaplen_cut_after_the_headers_is_not_truncated(tmp_path):
    """The same cut with caplen < origlen in the record is a header-only capture (tcpdump -s):
    every header up to the inner L4 one is whole and the length fields agree with the original
    length, so truncated must NOT fire (README, "Reading rules"); cutting one byte further
    into the inner ICMP header (4 bytes) makes it fire, since a header is then cut."""
    frames = make_frames()
    path = write_pcap(tmp_path / "snap.pcap", [f[:SNAP] for f in frames], snaplen=SNAP,
                      orig_lens=[len(f) for f in frames])
    assert summary(run_api(path))["checks"]["truncated"] == (0, [])
    cut = SNAP - 8 + 3
    path = write_pcap(tmp_path / "snap3.pcap", [f[:cut] for f in frames], snaplen=cut,
                      orig_lens=[len(f) for f in frames])
    assert summary(run_api(path))["checks"]["truncated"] == (5, [1, 2, 3, 5, 6])


def test_snaplen_truncated_capture_cli(tmp_path):
    frames = make_frames()
    path = write_pcap(tmp_path / "snap.pcap", [f[:SNAP] for f in frames], snaplen=SNAP,
                      orig_lens=[len(f) for f in frames])
    r = run_cli(path, "--json")
    assert "Traceback" not in r.stderr + r.stdout
    assert r.returncode == 1, r.stderr       # packet 3's VNI 11; the file itself is readable
    d = json.loads(r.stdout)
    assert d["packets"] == 6 and d["error"] is None
