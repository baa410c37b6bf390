"""Property-based fuzzing of the two packet loops, with their safety nets off.

vxinspect's decode_batch counts a struct.error or IndexError as `truncated` and goes on:
good for users, blind for tests, which then cannot tell a decoder that raised from one
that did not. Here the decoder is built with `safety_net=False`, so any exception that a
bound check missed escapes and fails the test; the userspace data path's loops
(vtep.datapath) have no net at all and run with injected I/O.

Inputs are valid frames (tests/craft.py, built with scapy) mutated where it hurts:
length fields, IHL, next-header chains and extension-header lengths, VXLAN flags and VNI,
nested VXLAN, truncation, inserted and deleted bytes, other link types.

Properties:
- no exception escapes the decoder, whatever the mutation;
- the decoder reads nothing past a record's end: the same record decoded alone in its
  own buffer and inside a bigger buffer (junk before and after) gives the same verdicts;
- a mutation of payload bytes only (after every header) fires only the checksum checks
  that cover those bytes, exactly when the ones'-complement sum changed, and nothing at
  all without --checksums;
- the data path's receive loop delivers exactly the datagrams RFC 7348 section 5 allows,
  drops every other one for the reason written out by hand below, and never raises;
- its transmit loop sends every frame to the peers its destination MAC names, in a
  datagram that is UDP header + VXLAN header + the frame, never raises, and picks the
  same UDP source port for a frame whatever frames came before it.

Hypothesis runs derandomized with bounded example counts: the same examples on every run,
the whole file in seconds.
"""
from __future__ import annotations

import collections
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, IPOption_NOP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN  # noqa: F401  (binds UDP 4789/8472 -> VXLAN for dissection)
from scapy.packet import Raw

import craft as C

from vtep import datapath, icmp
from vxinspect import Options
from vxinspect.decode import make_decoder
from vxinspect.report import Tally
from fakeio import FakeIO

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CHECKSUM_CHECKS = {"ip-checksum", "udp-checksum", "inner-ip-checksum", "inner-l4-checksum"}

# --------------------------------------------------------------------------- the base frames

_HBH, _DST = C.hop_by_hop(), C.dest_opts()


def _ipv4_options_outer():
    inner = bytes(C.inner_icmp())
    return Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / \
        IP(src=C.UNDER_SRC, dst=C.UNDER_DST, flags="DF", options=[IPOption_NOP()] * 8) / \
        UDP(sport=51234, dport=4789) / Raw(C.vxlan_header() + inner)


# (name, frame, an inner L4 checksum covers the payload[, the checks the frame fires])
BASE_SPECS = [
    ("ipv4/icmp", C.vxlan(C.inner_icmp()), True),
    ("ipv4/tcp", C.vxlan(C.inner_tcp()), True),
    ("ipv4/udp", C.vxlan(C.inner_udp()), True),
    ("ipv4/udp-no-checksum", C.vxlan(C.inner_udp(chksum=0)), False),
    ("ipv4/arp", C.vxlan(C.inner_arp()), False),
    ("ipv4/icmp6", C.vxlan(C.inner_icmp6()), True),
    ("ipv4/tcp6", C.vxlan(C.inner_tcp6() / Raw(b"tcp6-payload")), True),
    ("ipv4/udp6", C.vxlan(C.inner_udp6()), True),
    ("ipv4/qinq", C.vxlan(C.inner_icmp(vlans=(200, 100), qinq=True)), True, {"inner-vlan"}),
    ("ipv4/legacy-port", C.vxlan(C.inner_tcp(), dport=8472), True, {"legacy-port"}),
    ("ipv4/outer-vlan", C.vxlan(C.inner_udp(), outer_vlans=(7,)), True),
    ("ipv4/ip-options", _ipv4_options_outer(), True),
    ("ipv4/nested-2", C.nested(2), True),
    ("ipv4/nested-4", C.nested(4), True),
    # too deep to decode the innermost frame, but level 4's UDP checksum still covers it
    ("ipv4/nested-5", C.nested(5), True, {"nesting-too-deep"}),
    ("ipv6/icmp", C.vxlan(C.inner_icmp(), outer6=True), True),
    ("ipv6/udp6", C.vxlan(C.inner_udp6(), outer6=True), True),
    ("ipv6-ext/tcp", C.vxlan_ipv6_ext([_HBH, _DST], C.inner_tcp()), True),
    ("ipv6-frag/icmp", C.vxlan_ipv6_ext([C.atomic_fragment()], C.inner_icmp()), True),
    ("ipv4/inner-ext-udp", C.vxlan(C.inner_ipv6_ext([_HBH, _DST])), True),
    ("ipv4/inner-ext-nested", C.vxlan(C.inner_ipv6_ext(
        [_DST], UDP(sport=9, dport=4789) /
        Raw(C.vxlan_header() + bytes(C.inner_tcp(src="02:42:ac:02:00:77"))))), True),
]

# Where the fields a decoder trusts sit, by layer: (offset in the layer, width).
FIELDS = {
    "Ether": [(12, 2)], "Dot1Q": [(2, 2)], "Dot1AD": [(2, 2)],
    "IP": [(0, 1), (2, 2), (6, 2), (9, 1)],
    "IPv6": [(0, 1), (4, 2), (6, 1)],
    "IPv6ExtHdrHopByHop": [(0, 1), (1, 1)], "IPv6ExtHdrDestOpt": [(0, 1), (1, 1)],
    "IPv6ExtHdrRouting": [(0, 1), (1, 1), (3, 1)], "IPv6ExtHdrFragment": [(0, 1), (2, 2)],
    "UDP": [(2, 2), (4, 2), (6, 2)], "TCP": [(12, 1)],
    "VXLAN": [(0, 1), (1, 3), (4, 3), (7, 1)],
    "ICMP": [(0, 1)], "ICMPv6EchoRequest": [(0, 1)], "ARP": [(4, 1), (5, 1)],
}
HEADER_LAYERS = set(FIELDS) | {"ICMPv6EchoRequest"}


class Base:
    """A valid frame, where its fields are and where its payload starts (scapy's reading)."""

    def __init__(self, name, pkt, inner_checked, fires=frozenset()):
        self.name = name
        self.fires = set(fires)
        self.frame = bytes(pkt)
        self.inner_checked = inner_checked
        self.fields = []
        self.payload = len(self.frame)
        layer = Ether(self.frame)
        while layer is not None and layer.__class__.__name__ != "NoPayload":
            kind = layer.__class__.__name__
            off = len(self.frame) - len(bytes(layer))
            if kind not in HEADER_LAYERS:
                self.payload = off
                break
            self.fields += [(off + o, w) for o, w in FIELDS[kind]]
            if kind == "ICMPv6EchoRequest":
                self.payload = off + 8
                break
            layer = layer.payload
        # the outer UDP checksum: non-zero (scapy always computes one), so it is verified
        self.outer_checked = True


BASES = [Base(*spec) for spec in BASE_SPECS]
WITH_PAYLOAD = [b for b in BASES if b.payload < len(b.frame)]


def test_base_frames_are_what_they_claim():
    # the fuzz starts from frames the decoder reads cleanly, with a payload where claimed
    assert {b.name for b in WITH_PAYLOAD} == {b.name for b in BASES} - {"ipv4/arp"}
    for b in BASES:
        fired, vx = decode_alone(b.frame)
        assert vx == 1, b.name
        assert fired == b.fires, b.name


# --------------------------------------------------------------------------- decoding

def _summary(tally, vx):
    return (vx, {c: h[0] for c, h in tally.hits.items() if h[0]}, dict(tally.vnis),
            {k: list(v) for k, v in tally.flows.items()}, dict(tally.macs), dict(tally.frags))


_DECODERS = {}


def decode(buf, p, end, orig, lt, checksums=True):
    """One record through a decoder with its safety net off, from a blank tally."""
    if checksums not in _DECODERS:
        tally = Tally()
        _DECODERS[checksums] = tally, make_decoder(Options(checksums=checksums), tally,
                                                   safety_net=False)
    tally, decode_batch = _DECODERS[checksums]
    for h in tally.hits.values():  # blank again: nothing carries over from the last record
        h[0], h[2] = 0, 0
        h[1].clear()
    for state in (tally.vnis, tally.flows, tally.macs, tally.frags):
        state.clear()
    return _summary(tally, decode_batch(buf, [(p, end, orig, lt)], 0))


def decode_alone(frame, checksums=True):
    vx, hits, *_ = decode(frame, 0, len(frame), len(frame), 1, checksums)
    return set(hits), vx


def test_the_safety_net_is_really_off():
    """A record that claims more bytes than the buffer holds (a reader's bug, not a
    packet's): the decoder reads past the buffer. With the net that is `truncated`;
    without it the exception escapes, which is what every test below relies on."""
    frame = BASES[0].frame
    short, records = frame[:50], [(0, len(frame), len(frame), 1)]
    with pytest.raises((struct.error, IndexError)):
        make_decoder(Options(), Tally(), safety_net=False)(short, records, 0)
    tally = Tally()
    assert make_decoder(Options(), tally)(short, records, 0) == 0
    assert tally.hits["truncated"][:2] == [1, [1]]


LINKTYPES = {1: bytes, 101: C.strip_ether, 113: C.sll, 276: C.sll2, 228: C.strip_ether,
             229: C.strip_ether}


@st.composite
def mutated(draw):
    """(record bytes, orig_len, linktype): a base frame with 1-4 mutations."""
    base = draw(st.sampled_from(BASES))
    f = bytearray(base.frame)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "field", "byte", "cut", "insert",
                                     "delete"]))
        if kind == "field" and base.fields:
            off, width = draw(st.sampled_from(base.fields))
            if off + width > len(f):
                continue
            old = int.from_bytes(f[off:off + width], "big")
            top = (1 << (8 * width)) - 1
            new = draw(st.one_of(st.sampled_from([0, 1, top, old ^ 1, (old + 1) & top,
                                                  (old - 1) & top, (old * 4) & top,
                                                  old >> 2]),
                                 st.integers(0, top)))
            f[off:off + width] = new.to_bytes(width, "big")
        elif kind == "byte" and f:
            f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
        elif kind == "cut":
            f = f[:draw(st.integers(0, len(f)))]
        elif kind == "insert":
            at = draw(st.integers(0, len(f)))
            f[at:at] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "delete" and f:
            at = draw(st.integers(0, len(f) - 1))
            del f[at:at + draw(st.integers(1, 24))]
    lt = draw(st.sampled_from(sorted(LINKTYPES)))
    rec = LINKTYPES[lt](bytes(f)) if len(f) >= 14 else bytes(f)
    orig = len(rec) + draw(st.sampled_from([0, 0, 0, 1, 100, 9000]))  # a snap length cut
    return rec, orig, lt


@FUZZ
@given(mutated(), st.booleans())
def test_decoder_never_raises_and_reads_nothing_past_the_record(rec, checksums):
    record, orig, lt = rec
    alone = decode(record, 0, len(record), orig, lt, checksums)
    assert alone[0] in (0, 1)
    # the same record in a capture buffer, between other bytes: must read the same
    junk = bytes(range(251, 256)) * 3
    buf = bytearray(junk + record + b"\xff" * 2048)
    assert decode(buf, len(junk), len(junk) + len(record), orig, lt, checksums) == alone
    assert decode(memoryview(bytes(buf)), len(junk), len(junk) + len(record), orig, lt,
                  checksums) == alone


def _same_in_a_capture_buffer(record, orig, lt):
    """Decode `record` alone (net off) and inside a bigger buffer: the verdicts must agree."""
    alone = decode(record, 0, len(record), orig, lt)
    buf = b"\xfb" * 5 + record + b"\xff" * 2048
    assert decode(buf, 5, 5 + len(record), orig, lt) == alone, (record.hex(), orig, lt)


def test_every_cut_of_every_base_frame():
    """Random cuts rarely land on the one byte a bound check is off by: try them all, on
    every link type, as a short record (orig_len = what is there) and as a snap-length
    cut (orig_len = the whole frame)."""
    for b in BASES:
        full = b.frame
        for cut in range(len(full) + 1):
            for lt, wrap in LINKTYPES.items():
                rec = wrap(full[:cut]) if cut >= 14 else full[:cut]
                for orig in {len(rec), len(rec) + len(full) - cut}:
                    _same_in_a_capture_buffer(rec, orig, lt)


def test_every_value_of_every_length_and_type_field():
    """Each field a decoder trusts (lengths, IHL, next headers, extension-header lengths,
    VXLAN words) set to every value that can matter: all 256 of a byte; for a 16-bit
    length, every value up to past the largest header (72) and every value within 8 of
    the right one, and the extremes; for the 24-bit VXLAN fields the boundary values."""
    for b in BASES:
        for off, width in b.fields:
            if width == 1:  # lengths and IHL up to 72, the version nibbles, the extremes
                values = {*range(72), *range(0x40, 0x50), *range(0x60, 0x70), 0x80, 0xFE,
                          0xFF, b.frame[off] ^ 0xFF}
            elif width == 2:
                right = int.from_bytes(b.frame[off:off + 2], "big")
                values = {*range(72), *range(max(right - 8, 0), right + 9), 0x7FFF, 0x8000,
                          0xFFFE, 0xFFFF}
            else:
                values = [0, 1, 10, 0x800000, (1 << 8 * width) - 1]
            f = bytearray(b.frame)
            for v in values:
                f[off:off + width] = v.to_bytes(width, "big")
                rec = bytes(f)
                _same_in_a_capture_buffer(rec, len(rec), 1)
                _same_in_a_capture_buffer(rec[:-1], len(rec), 1)  # and cut by a snap length


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(sorted(LINKTYPES)),
       st.sampled_from([0, 1, 5000]))
def test_decoder_never_raises_on_random_bytes(data, lt, extra):
    decode(data, 0, len(data), len(data) + extra, lt)
    decode(data + b"\0" * 64, 0, len(data), len(data) + extra, lt)


def ones_sum(data: bytes) -> int:
    """RFC 1071 by hand: 16-bit big-endian words (an odd byte padded with zero), with the
    carries folded back in, modulo 0xFFFF (where 0 and 0xFFFF are the same sum)."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s % 0xFFFF


@FUZZ
@given(st.data())
def test_payload_only_mutation_fires_only_checksum_checks(data):
    base = data.draw(st.sampled_from(WITH_PAYLOAD))
    f = bytearray(base.frame)
    n = len(f) - base.payload
    for _ in range(data.draw(st.integers(1, 6))):
        at = base.payload + data.draw(st.integers(0, n - 1))
        f[at] = data.draw(st.one_of(st.integers(0, 255), st.just(f[at] ^ 0x01)))
    if data.draw(st.booleans()) and n >= 2:  # swap two payload words: the same sum
        i, j = sorted(base.payload + 2 * data.draw(st.integers(0, n // 2 - 1)) for _ in "ij")
        f[i:i + 2], f[j:j + 2] = f[j:j + 2], f[i:i + 2]
    base_fired = base.fires
    fired, vx = decode_alone(bytes(f))
    assert vx == 1
    # every L4 checksum that covers the payload ends with it (no padding in these frames),
    # so it breaks exactly when the payload's ones'-complement sum changed
    changed = ones_sum(bytes(f[base.payload:])) != ones_sum(base.frame[base.payload:])
    expect = set(base_fired)
    if changed:
        expect |= {"udp-checksum"} if base.outer_checked else set()
        expect |= {"inner-l4-checksum"} if base.inner_checked else set()
    assert fired == expect, base.name
    assert decode_alone(bytes(f), checksums=False)[0] == base_fired


# --------------------------------------------------------------------------- the data path

PEER_A, PEER_B = "192.168.2.142", "192.168.3.7"
MAC_A, MAC_B = bytes.fromhex("5a0c71865911"), bytes.fromhex("6e1122334455")
ME = "06:b3:31:77:ab:d9"
VNI = 0x00ABCD
HEADER = bytes([0x08, 0, 0, 0, 0x00, 0xAB, 0xCD, 0])  # RFC 7348 section 5, VNI 0x00abcd


def make(io, **kw):
    return datapath.Datapath(vni=VNI, port=4789, fdb={MAC_A: PEER_A, MAC_B: PEER_B},
                             peers=[PEER_A, PEER_B], tap_readv=io.tap_readv,
                             tap_write=io.tap_write, sendto=io.sendto,
                             recvfrom_into=io.recvfrom_into, **kw)


def _frames():
    ip = IP(src="172.2.0.2", dst="172.2.1.2", flags="DF")
    big = IP(src="172.2.0.5", dst="172.2.1.9", id=77) / UDP(sport=5000, dport=53) / (b"q" * 2000)
    return [bytes(f) for f in [
        Ether(src=ME, dst=MAC_A) / ip / ICMP() / b"ping",
        Ether(src=ME, dst=MAC_B) / ip / TCP(sport=40000, dport=80) / b"GET /",
        Ether(src=ME, dst=MAC_A) / ip / UDP(sport=1, dport=2) / b"udp",
        Ether(src=ME, dst=MAC_A) / IP(src="172.2.0.2", dst="172.2.1.2",
                                      options=[IPOption_NOP()] * 4) / TCP() / b"opts",
        Ether(src=ME, dst=MAC_B) / IPv6(src="fd00::2", dst="fd00::9") / TCP() / b"v6",
        Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="172.2.1.0"),
        Ether(src=ME, dst="33:33:00:00:00:01") / IPv6(dst="ff02::1") / ICMPv6EchoRequest(),
        Ether(src=ME, dst="01:00:5e:00:00:fb") / IP(dst="224.0.0.251") / UDP(dport=5353),
        Ether(src=ME, dst="02:99:99:99:99:99") / ip / ICMP(),          # unknown unicast
        *(Ether(src=ME, dst=MAC_A) / f for f in fragment(big, 800)),
    ]]


TX_FRAMES = _frames()


@st.composite
def tap_frame(draw):
    f = bytearray(draw(st.sampled_from(TX_FRAMES)))
    for _ in range(draw(st.integers(0, 3))):
        if f:
            f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        f = f[:draw(st.integers(0, len(f)))]
    if draw(st.integers(0, 9)) == 0:
        f = bytearray(draw(st.binary(max_size=80)))
    return bytes(f)


def _targets(frame):
    """Where a frame goes, by hand: nowhere when shorter than an Ethernet header; every
    peer for a group address (the I/G bit, RFC 7042 / IEEE 802); the fdb's peer, if any."""
    if len(frame) < 14:
        return "runt"
    if frame[0] & 1:
        return [PEER_A, PEER_B]
    peer = {MAC_A: PEER_A, MAC_B: PEER_B}.get(frame[:6])
    return [peer] if peer else "unknown-unicast"


@FUZZ
@given(st.lists(tap_frame(), min_size=1, max_size=12))
def test_transmit_sends_each_frame_where_its_mac_says(frames):
    io = FakeIO(tap_in=frames)
    dp = make(io)
    assert dp.tx_batch(budget=100) == len(frames)
    sent = iter(io.sent)
    drops = collections.Counter()
    for frame in frames:
        where = _targets(frame)
        if isinstance(where, str):
            drops[where] += 1
            continue
        ports = set()
        for peer in where:
            data, addr = next(sent)
            assert addr == (peer, 4789)
            sport = int.from_bytes(data[:2], "big")
            assert 32768 <= sport <= 60999
            assert data == struct.pack("!HHHH", sport, 4789, 16 + len(frame), 0) + HEADER + frame
            ports.add(sport)
        assert len(ports) == 1  # one frame, one flow, one source port for every peer
        # the port depends on this frame only, not on what the buffer held before
        alone = FakeIO(tap_in=[frame])
        make(alone).tx_batch()
        assert alone.sent[0][0][:2] == data[:2]
    assert next(sent, None) is None
    assert {k: v for k, v in dp.counters.tx_drops.items() if v} == dict(drops)


@FUZZ
@given(st.lists(tap_frame(), min_size=1, max_size=8), st.sampled_from([40, 200, 1000]))
def test_transmit_too_big_never_raises(frames, limit):
    # EMSGSIZE on every datagram over `limit`: the ICMP error back to the sender is built
    # from whatever the frame holds
    io = FakeIO(tap_in=frames, too_big_above=limit)
    dp = make(io, path_mtu=lambda peer: 1400, vtep_ips={PEER_A: bytes([172, 2, 1, 0]),
                                                        PEER_B: bytes([172, 2, 2, 0])})
    dp.tx_batch(budget=100)
    assert dp.counters.icmp_too_big == len(io.tap_out)
    for err in io.tap_out:
        assert err[12:14] in (b"\x08\x00", b"\x86\xdd")  # an IPv4 or IPv6 error, nothing else


@FUZZ
@given(st.one_of(tap_frame(), st.binary(max_size=1600)), st.integers(0, 2000),
       st.sampled_from([None, b"\0" * 4]))
def test_icmp_too_big_never_raises(frame, mtu, via):
    err = icmp.too_big(memoryview(frame), mtu, via)  # the data path hands it a memoryview
    assert err is None or err[12:14] in (b"\x08\x00", b"\x86\xdd")


def test_icmp_too_big_on_every_cut_of_every_frame():
    for frame in TX_FRAMES:
        for cut in range(len(frame) + 1):
            err = icmp.too_big(memoryview(frame)[:cut], 1350, bytes([172, 2, 1, 0]))
            assert err is None or err[12:14] in (b"\x08\x00", b"\x86\xdd")


def _rx_verdict(data, src):
    """Why RFC 7348 section 5 and the data path's rules drop this datagram, or None."""
    if len(data) < 8:
        return "short"
    if not data[0] & 0x08:
        return "flags"
    if data[0] != 0x08 or data[1:4] != b"\0\0\0" or data[7]:
        return "reserved"
    if data[4:7] != HEADER[4:7]:
        return "vni"
    if len(data) < 8 + 14:
        return "runt"
    if src not in (PEER_A, PEER_B):
        return "source"
    return None


_INNER = bytes(Ether(src="5a:0c:71:86:59:11", dst=ME) / IP() / ICMP() / (b"x" * 20))


@st.composite
def datagram(draw):
    d = bytearray(HEADER + _INNER)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, 9))  # mostly the header, sometimes the inner frame
        d[at] = draw(st.one_of(st.integers(0, 255), st.just(d[at] ^ (1 << draw(st.integers(0, 7))))))
    if draw(st.booleans()):
        d = d[:draw(st.integers(0, len(d)))]
    if draw(st.integers(0, 9)) == 0:
        d = bytearray(draw(st.binary(max_size=40)))
    src = draw(st.sampled_from([PEER_A, PEER_B, "10.9.9.9"]))
    return bytes(d), src


@FUZZ
@given(st.lists(datagram(), min_size=1, max_size=12), st.booleans())
def test_receive_delivers_exactly_the_valid_datagrams(datagrams, any_source):
    io = FakeIO(udp_in=datagrams)
    dp = make(io, accept_any_source=any_source)
    assert dp.rx_batch(budget=100) == len(datagrams)
    delivered, drops = [], collections.Counter()
    for data, src in datagrams:
        why = _rx_verdict(data, PEER_A if any_source else src)
        if why:
            drops[why] += 1
        else:
            delivered.append(data[8:])
    assert io.tap_out == delivered
    assert {k: v for k, v in dp.counters.rx_drops.items() if v} == dict(drops)
    assert dp.counters.rx == [len(delivered), sum(len(d) + 8 for d in delivered), len(delivered)]
