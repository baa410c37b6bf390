"""vtep.segment against scapy: userspace TSO/USO gives the kernel's segments, byte for byte.

The reference never comes from the code under test. A super-frame is built by scapy
(Ethernet, IPv4 with or without options or IPv6, TCP or UDP, a payload), with what a TAP
read gives after its virtio-net header: IP lengths and header checksum valid, the L4
checksum field holding the folded pseudo-header sum over the whole L4 length (computed
here by hand, RFC 768 / RFC 8200 8.1). The expected segments are built by scapy too, one
packet per payload chunk with the fields the kernel's GSO sets (tcp_gso_segment,
__udp_gso_segment, inet_gso_segment, ipv6_gso_segment): ID + i, seq + i * gso_size, CWR
on the first segment only, FIN and PSH on the last only, lengths and checksums left to
scapy. Every segment must equal its reference after the VXLAN header, and the named cases
check the same properties again one by one (scapy parses it, its checksums verify, the
payload chunks join up), so a wrong reference cannot hide a wrong segmenter.

Failure cases: every malformed frame raises SegmentError, and nothing else, and leaves the
output buffer as it was. Hypothesis runs derandomized with bounded example counts.
"""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from vtep import vnet
from vtep.segment import (MAX_SEGMENTS, NUMPY_SUM_MIN, SegmentError, Segmenter,
                          complete_checksum, word_sum)

VX = bytes.fromhex("0800000000002a00")     # I flag, VNI 42
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
FIN, PSH, CWR = 0x01, 0x08, 0x80

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def v4(**kw) -> IP:
    return IP(src="10.1.2.3", dst="10.200.0.9", id=kw.pop("id", 4242), ttl=63, **kw)


def v6(**kw) -> IPv6:
    return IPv6(src="fd00::1", dst="fd00:1:2::99", hlim=61, **kw)


def tcp(**kw) -> TCP:
    kw.setdefault("flags", "PA")
    return TCP(sport=40000, dport=5201, seq=kw.pop("seq", 1_000_000), ack=77, window=502, **kw)


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def words(b: bytes) -> int:
    if len(b) & 1:
        b += b"\0"
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


def pseudo(l3, proto: int, length: int) -> int:
    """The pseudo-header's folded sum, by hand (RFC 768; RFC 8200 section 8.1)."""
    if isinstance(l3, IP):
        addrs = socket.inet_aton(l3.src) + socket.inet_aton(l3.dst)
    else:
        addrs = socket.inet_pton(socket.AF_INET6, l3.src) + socket.inet_pton(socket.AF_INET6,
                                                                              l3.dst)
    return fold(words(addrs) + proto + length)


def super_frame(l3, l4, payload: bytes) -> bytearray:
    """A TAP read's frame: headers as scapy builds them for the whole payload, the L4
    checksum field replaced by the pseudo-header sum over the whole L4 length, as the
    kernel leaves it in a CHECKSUM_PARTIAL (TSO/USO) skb."""
    frame = bytearray(bytes(Ether(src=SRC_MAC, dst=DST_MAC) / l3 / l4 / Raw(payload)))
    l4len = len(bytes(l4)) + len(payload)
    off = len(frame) - l4len
    proto = 6 if isinstance(l4, TCP) else 17
    struct.pack_into("!H", frame, off + (16 if proto == 6 else 6), pseudo(l3, proto, l4len))
    return frame


def reference(l3, l4, payload: bytes, gso: int) -> list[bytes]:
    """The kernel's segments, each built by scapy from its fields (VXLAN header first)."""
    chunks = [payload[i:i + gso] for i in range(0, len(payload), gso)]
    out = []
    for i, chunk in enumerate(chunks):
        ip = l3.copy()
        if isinstance(ip, IP):
            ip.id = (l3.id + i) & 0xFFFF
        seg = l4.copy()
        if isinstance(seg, TCP):
            seg.seq = (l4.seq + i * gso) % 2**32
            flags = int(seg.flags)
            if i:
                flags &= ~CWR
            if i < len(chunks) - 1:
                flags &= ~(FIN | PSH)
            seg.flags = flags
        out.append(VX + bytes(Ether(src=SRC_MAC, dst=DST_MAC) / ip / seg / Raw(chunk)))
    return out


def run(gso_type: int, gso: int, frame, seg: Segmenter | None = None):
    """segment() and the datagrams it wrote, cut where a UDP_SEGMENT send cuts them."""
    seg = seg or Segmenter(VX)
    total, size, count = seg.segment(gso_type, gso, frame, len(frame))
    grams = [bytes(seg.out[o:min(o + size, total)]) for o in range(0, total, size)]
    assert len(grams) == count
    assert all(len(g) == size for g in grams[:-1]) and 0 < len(grams[-1]) <= size
    return grams


def gso_type_of(l3, l4) -> int:
    if isinstance(l4, UDP):
        return vnet.GSO_UDP_L4
    return vnet.GSO_TCPV4 if isinstance(l3, IP) else vnet.GSO_TCPV6


def check(l3, l4, payload: bytes, gso: int, gso_type: int | None = None) -> list[bytes]:
    """Segment a super-frame and compare with scapy; returns the datagrams."""
    frame = super_frame(l3, l4, payload)
    before = bytes(frame)
    grams = run(gso_type_of(l3, l4) if gso_type is None else gso_type, gso, frame)
    assert bytes(frame) == before, "segment() wrote into its input"
    ref = reference(l3, l4, payload, gso)
    assert [len(g) for g in grams] == [len(r) for r in ref]
    for i, (g, r) in enumerate(zip(grams, ref)):
        assert g == r, f"segment {i} of {len(ref)} differs from scapy's"
    return grams


def verify(grams: list[bytes], payload: bytes, tcp_layer: bool = True) -> list:
    """The properties one by one, checked with scapy on the segments alone."""
    pkts = []
    for g in grams:
        assert g[:8] == VX
        p = Ether(g[8:])
        kind = TCP if tcp_layer else UDP
        if IP in p:
            assert p[IP].len == len(g) - 8 - 14
            iphl = p[IP].ihl * 4
        else:
            assert p[IPv6].plen == len(g) - 8 - 14 - 40
            iphl = 40
        if not tcp_layer:
            assert p[UDP].len == len(g) - 8 - 14 - iphl
        # checksums deleted and rebuilt by scapy (the L4 one under the same IP header, for
        # its pseudo-header) must come out as the segment has them
        again = p.copy()
        if IP in again:
            again[IP].chksum = None
        again[kind].chksum = None
        again = Ether(bytes(again))
        if IP in p:
            assert again[IP].chksum == p[IP].chksum
        assert again[kind].chksum == p[kind].chksum
        pkts.append(p)
    assert b"".join(bytes(p[Raw].load) for p in pkts) == payload
    return pkts


PAYLOAD = bytes((i * 131 + 7) % 256 for i in range(70_000))


# ------------------------------------------------------------------ TCP over IPv4 / IPv6

def test_exact_multiple_of_gso_size():
    grams = check(v4(flags="DF"), tcp(flags="FPA"), PAYLOAD[:3 * 1398], 1398)
    pkts = verify(grams, PAYLOAD[:3 * 1398])
    assert [len(g) for g in grams] == [8 + 14 + 20 + 20 + 1398] * 3
    assert [str(p[TCP].flags) for p in pkts] == ["A", "A", "FPA"]
    assert [p[TCP].seq for p in pkts] == [1_000_000, 1_001_398, 1_002_796]
    assert [p[IP].id for p in pkts] == [4242, 4243, 4244]


def test_short_last_segment():
    data = PAYLOAD[:3 * 1398 + 101]
    grams = check(v4(), tcp(flags="PA"), data, 1398)
    pkts = verify(grams, data)
    assert [len(p[Raw].load) for p in pkts] == [1398, 1398, 1398, 101]
    assert [str(p[TCP].flags) for p in pkts] == ["A", "A", "A", "PA"]


def test_a_64k_super_frame_with_timestamps():
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
    data = PAYLOAD[:65_000]
    grams = check(v4(flags="DF"), tcp(options=opts), data, 1398)
    verify(grams, data)
    assert len(grams) == 47 and len(grams[0]) == 8 + 14 + 20 + 32 + 1398


@pytest.mark.parametrize("size", [1, 700, 1398], ids=["one-byte", "short", "exactly-gso"])
def test_a_single_segment(size):
    data = PAYLOAD[:size]
    grams = check(v4(), tcp(flags="FPAC"), data, 1398)
    (p,) = verify(grams, data)
    assert str(p[TCP].flags) == "FPAC"     # first and last at once: every flag kept


@pytest.mark.parametrize("gso,size", [(1397, 3 * 1397), (1397, 4 * 1397 - 500), (3, 301),
                                      (1, 60)])
def test_odd_gso_size(gso, size):
    data = PAYLOAD[:size]
    verify(check(v4(), tcp(), data, gso), data)


@pytest.mark.parametrize("options", [
    [IPOption_Router_Alert()],
    [IPOption_NOP(), IPOption_RR(routers=["1.2.3.4", "5.6.7.8"])],
    [IPOption_RR(routers=["9.9.9.9"] * 9)],          # IHL 15: 40 bytes of options
], ids=["router-alert", "nop-rr", "ihl-15"])
def test_ipv4_options(options):
    data = PAYLOAD[:5000]
    grams = check(v4(options=options), tcp(), data, 1000)
    pkts = verify(grams, data)
    assert all(p[IP].options for p in pkts)


def test_ipv6():
    data = PAYLOAD[:10_000]
    grams = check(v6(tc=0x12, fl=0xBEEF), tcp(flags="FPA"), data, 1388)
    pkts = verify(grams, data)
    assert [p[IPv6].plen for p in pkts][:2] == [20 + 1388] * 2
    assert str(pkts[-1][TCP].flags) == "FPA" and str(pkts[0][TCP].flags) == "A"


def test_ipv6_odd_gso_and_odd_tail():
    data = PAYLOAD[:4001]
    verify(check(v6(), tcp(), data, 999), data)


def test_ip_id_wraps_at_65535():
    data = PAYLOAD[:5 * 100 + 1]
    pkts = verify(check(v4(id=65534), tcp(), data, 100), data)
    assert [p[IP].id for p in pkts] == [65534, 65535, 0, 1, 2, 3]


@pytest.mark.parametrize("row", [0, 2, 4, 5], ids=lambda r: f"segment-{r}")
def test_ip_header_checksum_zero_and_wrap(row):
    # The first ID chosen so that segment `row`'s header sums to exactly 0xFFFF (checksum
    # 0, as the kernel's ip_fast_csum makes it), so the folded sums of the segments around
    # it pass 0xFFFF: the checksum does not simply go down by one per segment there. Five
    # full segments (the numpy rows) and a short last one (index 5, written apart).
    data = PAYLOAD[:5 * 100 + 50]
    seg_len = 140 if row < 5 else 90
    s0 = 0xFFFF - IP(bytes(v4(id=0, len=seg_len, proto=6))).chksum  # header sum, ID 0
    id0 = (0xFFFF - s0 - row) % 0xFFFF
    pkts = verify(check(v4(id=id0), tcp(), data, 100), data)
    assert pkts[row][IP].chksum == 0
    assert [p[IP].id for p in pkts] == [(id0 + i) & 0xFFFF for i in range(6)]


@pytest.mark.parametrize("row", [1, 3], ids=["full-segment", "short-last"])
def test_tcp_checksum_zero_stays_zero(row):
    # tcp_gso_segment (and scapy) write a computed 0 as 0 for TCP, unlike UDP: segment
    # `row`'s first payload word is chosen to make its sum 0xFFFF
    data = bytearray(PAYLOAD[:3 * 100 + 50])
    data[row * 100:row * 100 + 2] = b"\0\0"
    c0 = Ether(reference(v4(), tcp(), bytes(data), 100)[row][8:])[TCP].chksum
    data[row * 100:row * 100 + 2] = struct.pack("!H", c0)
    grams = check(v4(), tcp(), bytes(data), 100)
    assert Ether(grams[row][8:])[TCP].chksum == 0


def test_sequence_number_wraps_at_2_32():
    data = PAYLOAD[:4000]
    pkts = verify(check(v4(), tcp(seq=2**32 - 1500), data, 1000), data)
    assert [p[TCP].seq for p in pkts] == [2**32 - 1500, 2**32 - 500, 500, 1500]
    # the last full segment just past the wrap
    data = PAYLOAD[:3000]
    pkts = verify(check(v4(), tcp(seq=2**32 - 1500), data, 1000), data)
    assert [p[TCP].seq for p in pkts] == [2**32 - 1500, 2**32 - 500, 500]
    # and in the short last segment (written apart from the full ones)
    data = PAYLOAD[:2100]
    pkts = verify(check(v6(), tcp(seq=2**32 - 1500), data, 1000), data)
    assert [p[TCP].seq for p in pkts] == [2**32 - 1500, 2**32 - 500, 500]


@pytest.mark.parametrize("gso_type", [vnet.GSO_TCPV4, vnet.GSO_TCPV4 | vnet.GSO_ECN])
def test_ecn_cwr_on_the_first_segment_only(gso_type):
    # tcp_gso_segment: CWR cleared after the first segment, FIN and PSH before the last;
    # ECE and URG (and the urgent pointer) stay on every segment
    data = PAYLOAD[:4 * 500 + 20]
    grams = check(v4(tos=0x02), tcp(flags="FPAUEC", urgptr=9), data, 500,
                  gso_type)
    pkts = verify(grams, data)
    assert [int(p[TCP].flags) for p in pkts] == [0xF0, 0x70, 0x70, 0x70, 0x79]
    assert {p[TCP].urgptr for p in pkts} == {9}


def test_ecn_on_ipv6():
    data = PAYLOAD[:3000]
    pkts = verify(check(v6(), tcp(flags="PAEC"), data, 1000, vnet.GSO_TCPV6 | vnet.GSO_ECN),
                  data)
    assert [str(p[TCP].flags) for p in pkts] == ["AEC", "AE", "PAE"]


def test_segment_limit():
    ok = PAYLOAD[:MAX_SEGMENTS * 10]
    assert len(check(v4(), tcp(), ok, 10)) == MAX_SEGMENTS == 128
    frame = super_frame(v4(), tcp(), PAYLOAD[:MAX_SEGMENTS * 10 + 1])
    with pytest.raises(SegmentError, match="too many segments"):
        Segmenter(VX).segment(vnet.GSO_TCPV4, 10, frame, len(frame))


def test_the_buffer_is_reused():
    # a second, smaller frame through the same Segmenter: nothing of the first leaks in
    seg = Segmenter(VX)
    big = super_frame(v4(id=1), tcp(seq=5), PAYLOAD[:20_000])
    run(vnet.GSO_TCPV4, 1000, big, seg)
    data = PAYLOAD[100:3100]
    small = super_frame(v6(), tcp(seq=9, flags="FA"), data)
    assert run(vnet.GSO_TCPV6, 999, small, seg) == reference(v6(), tcp(seq=9, flags="FA"),
                                                               data, 999)


def test_the_frame_may_be_read_only_bytes():
    data = PAYLOAD[:6000]
    frame = bytes(super_frame(v6(), UDP(), data))
    assert run(vnet.GSO_UDP_L4, 1448, frame) == reference(v6(), UDP(), data, 1448)


def test_the_frame_may_be_a_memoryview_of_a_bigger_buffer():
    data = PAYLOAD[:6000]
    frame = super_frame(v4(), tcp(), data)
    buf = bytearray(65536 + 100)
    buf[:len(frame)] = frame
    seg = Segmenter(VX)
    total, size, count = seg.segment(vnet.GSO_TCPV4, 1448, memoryview(buf), len(frame))
    grams = [bytes(seg.out[o:min(o + size, total)]) for o in range(0, total, size)]
    assert grams == reference(v4(), tcp(), data, 1448)


# ------------------------------------------------------------------ USO (UDP_L4)

@pytest.mark.parametrize("l3", [v4(flags="DF"), v6()], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("gso,size", [(1400, 4200), (1400, 5000), (1471, 5001), (1, 7)])
def test_uso(l3, gso, size):
    data = PAYLOAD[:size]
    grams = check(l3, UDP(sport=5000, dport=6000), data, gso)
    pkts = verify(grams, data, tcp_layer=False)
    assert [p[UDP].len for p in pkts] == [8 + len(p[Raw].load) for p in pkts]


def zero_udp_payload(l3, size: int) -> bytes:
    """A payload whose UDP checksum computes to 0 (so is sent as 0xFFFF): its first word
    is chosen to make the whole sum 0xFFFF; found with scapy's own checksum."""
    base = bytearray(PAYLOAD[:size])
    base[0:2] = b"\0\0"
    probe = Ether() / l3 / UDP(sport=5000, dport=6000) / Raw(bytes(base))
    c0 = Ether(bytes(probe))[UDP].chksum
    # c0 = ~S with the word at 0; adding w = ~S ... makes the sum 0xFFFF, its checksum 0
    base[0:2] = struct.pack("!H", c0 if c0 != 0xFFFF else 0)
    return bytes(base)


@pytest.mark.parametrize("l3", [v4(), v6()], ids=["ipv4", "ipv6"])
def test_uso_checksum_zero_is_sent_as_ffff(l3):
    # one full (numpy) and one short last (Python) segment whose checksums compute to 0
    chunk = zero_udp_payload(l3, 1000)
    tail = zero_udp_payload(l3, 301)
    grams = check(l3, UDP(sport=5000, dport=6000), chunk + tail, 1000)
    assert [Ether(g[8:])[UDP].chksum for g in grams] == [0xFFFF, 0xFFFF]


# ------------------------------------------------------------------ refused frames

def tcp4(size=3000, **kw) -> bytearray:
    return super_frame(v4(), tcp(**kw), PAYLOAD[:size])


def with_bytes(frame: bytearray, **at) -> bytearray:
    for off, val in at.items():
        frame[int(off[1:])] = val
    return frame


IP_OFF, TCP_OFF = 14, 34
BAD = [
    # (id, gso_type, gso_size, frame, n or None for len(frame))
    ("gso-size-0", vnet.GSO_TCPV4, 0, tcp4(), None),
    ("gso-size-negative", vnet.GSO_TCPV4, -1, tcp4(), None),
    ("gso-none", vnet.GSO_NONE, 1000, tcp4(), None),
    ("gso-ufo", vnet.GSO_UDP, 1000, super_frame(v4(), UDP(), PAYLOAD[:3000]), None),
    ("gso-unknown", 0x7F, 1000, tcp4(), None),
    ("truncated-ethernet", vnet.GSO_TCPV4, 1000, tcp4(), 10),
    ("truncated-ipv4", vnet.GSO_TCPV4, 1000, tcp4(), 30),
    ("truncated-tcp", vnet.GSO_TCPV4, 1000, tcp4(), 14 + 20 + 19),
    ("truncated-tcp-options", vnet.GSO_TCPV4, 1000,
     super_frame(v4(), tcp(options=[("MSS", 1460)]), PAYLOAD[:3000]), 14 + 20 + 23),
    ("truncated-ipv4-options", vnet.GSO_TCPV4, 1000,
     super_frame(v4(options=[IPOption_RR(routers=["1.1.1.1"] * 9)]), tcp(), PAYLOAD[:3000]),
     14 + 50),
    ("truncated-ipv6", vnet.GSO_TCPV6, 1000, super_frame(v6(), tcp(), PAYLOAD[:3000]), 53),
    ("truncated-udp", vnet.GSO_UDP_L4, 1000, super_frame(v4(), UDP(), PAYLOAD[:3000]), 41),
    ("n-beyond-buffer", vnet.GSO_TCPV4, 1000, tcp4(), 3055),
    ("n-negative", vnet.GSO_TCPV4, 1000, tcp4(), -1),
    ("tcpv4-on-ipv6", vnet.GSO_TCPV4, 1000, super_frame(v6(), tcp(), PAYLOAD[:3000]), None),
    ("tcpv6-on-ipv4", vnet.GSO_TCPV6, 1000, tcp4(), None),
    ("uso-on-arp", vnet.GSO_UDP_L4, 1000, with_bytes(tcp4(), _12=0x08, _13=0x06), None),
    ("uso-on-vlan", vnet.GSO_UDP_L4, 1000, with_bytes(tcp4(), _12=0x81, _13=0x00), None),
    ("tcpv4-on-udp", vnet.GSO_TCPV4, 1000, super_frame(v4(), UDP(), PAYLOAD[:3000]), None),
    ("uso-on-tcp", vnet.GSO_UDP_L4, 1000, tcp4(), None),
    ("tcpv6-on-udp", vnet.GSO_TCPV6, 1000, super_frame(v6(), UDP(), PAYLOAD[:3000]), None),
    ("ipv6-extension-header", vnet.GSO_TCPV6, 1000,
     super_frame(v6(nh=0), tcp(), PAYLOAD[:3000]), None),
    ("ipv4-version-6", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(), _14=0x65), None),
    ("ipv6-version-4", vnet.GSO_TCPV6, 1000,
     with_bytes(super_frame(v6(), tcp(), PAYLOAD[:3000]), _14=0x46), None),
    ("ihl-4", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(), _14=0x44), None),
    ("ihl-0", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(), _14=0x40), None),
    ("ihl-past-n", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(size=4), _14=0x4F), None),
    ("ipv4-fragment", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(), _20=0x20), None),
    ("ipv4-later-fragment", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(), _21=0x01), None),
    ("data-offset-4", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(), _46=0x40), None),
    ("data-offset-0", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(), _46=0x00), None),
    ("data-offset-past-n", vnet.GSO_TCPV4, 1000, with_bytes(tcp4(size=30), _46=0xF0), None),
    ("no-payload-tcp", vnet.GSO_TCPV4, 1000, tcp4(size=0), None),
    ("no-payload-udp", vnet.GSO_UDP_L4, 1000, super_frame(v6(), UDP(), b""), None),
    ("no-payload-cut", vnet.GSO_TCPV4, 1000, tcp4(), 54),
    ("too-many-segments", vnet.GSO_TCPV4, 1, tcp4(size=129), None),
    # one byte more than the length fields hold (the IP length read is never trusted)
    ("ipv4-length-overflow", vnet.GSO_TCPV4, 65535, tcp4(size=65535 - 40) + b"x", None),
    ("ipv6-length-overflow", vnet.GSO_UDP_L4, 65535,
     super_frame(v6(), UDP(), PAYLOAD[:65535 - 8]) + b"x", None),
]


@pytest.mark.parametrize("gso_type,gso,frame,n", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_refused_frames_raise_segment_error_and_write_nothing(gso_type, gso, frame, n):
    seg = Segmenter(VX)
    seg.out[:] = b"\xAA" * len(seg.out)
    with pytest.raises(SegmentError) as e:
        seg.segment(gso_type, gso, frame, len(frame) if n is None else n)
    assert e.value.reason and isinstance(e.value, ValueError)
    assert seg.out.count(0xAA) == len(seg.out), "a refused frame left bytes behind"


def test_the_limits_are_where_the_fields_end():
    # the largest segments the length fields hold are accepted (the overflow cases above
    # are one byte more); a single IPv4 segment of total length 65535
    frame = tcp4(size=65535 - 40)
    assert Segmenter(VX).segment(vnet.GSO_TCPV4, 65535, frame, len(frame))[2] == 1
    frame = super_frame(v6(), UDP(), PAYLOAD[:65535 - 8])
    assert Segmenter(VX).segment(vnet.GSO_UDP_L4, 65535, frame, len(frame))[2] == 1


def test_capacity_too_small():
    frame = tcp4(size=3000)
    seg = Segmenter(VX, capacity=3000 + 3 * (8 + 54) - 1)
    with pytest.raises(SegmentError, match="buffer"):
        seg.segment(vnet.GSO_TCPV4, 1000, frame, len(frame))
    seg = Segmenter(VX, capacity=3000 + 3 * (8 + 54))           # exactly enough
    assert seg.segment(vnet.GSO_TCPV4, 1000, frame, len(frame)) == (3186, 1062, 3)


def test_vxlan_header_must_be_8_bytes():
    with pytest.raises(ValueError):
        Segmenter(VX[:7])


# ------------------------------------------------------------------ complete_checksum

def partial(pkt, proto: int) -> tuple[bytearray, int, int]:
    """pkt's bytes as a TAP read with NEEDS_CSUM gives them, the L4 field holding the
    folded pseudo-header sum; and the csum_start and csum_offset of its vnet header."""
    frame = bytearray(bytes(pkt))
    l4len = len(bytes(pkt[TCP] if proto == 6 else pkt[UDP]))
    start = len(frame) - l4len
    off = 16 if proto == 6 else 6
    struct.pack_into("!H", frame, start + off,
                     pseudo(pkt[IP] if IP in pkt else pkt[IPv6], proto, l4len))
    return frame, start, off


@pytest.mark.parametrize("pkt,proto", [
    (Ether() / v4() / tcp(flags="A"), 6),                       # a pure ACK
    (Ether() / v4(options=[IPOption_Router_Alert()]) / tcp() / Raw(PAYLOAD[:1447]), 6),
    (Ether() / v6() / tcp(options=[("MSS", 1440)]) / Raw(PAYLOAD[:999]), 6),
    (Ether() / v4() / UDP(sport=1, dport=2) / Raw(PAYLOAD[:1471]), 17),
    (Ether() / v6() / UDP(sport=1, dport=2) / Raw(PAYLOAD[:3]), 17),
], ids=["tcp4-ack", "tcp4-options-odd", "tcp6", "udp4-odd", "udp6"])
def test_complete_checksum_matches_scapy(pkt, proto):
    built = Ether(bytes(pkt))
    want = (built[TCP] if proto == 6 else built[UDP]).chksum
    frame, start, off = partial(pkt, proto)
    complete_checksum(frame, len(frame), start, off)
    assert frame == bytearray(bytes(pkt))
    assert struct.unpack_from("!H", frame, start + off)[0] == want


def test_complete_checksum_in_a_memoryview_with_trailing_bytes():
    pkt = Ether() / v4() / tcp() / Raw(PAYLOAD[:100])
    frame, start, off = partial(pkt, 6)
    buf = bytearray(4096)
    buf[:len(frame)] = frame
    buf[len(frame):] = b"\xEE" * (4096 - len(frame))     # not part of the frame: not summed
    complete_checksum(memoryview(buf), len(frame), start, off)
    assert bytes(buf[:len(frame)]) == bytes(pkt)


@pytest.mark.parametrize("l3", [v4(), v6()], ids=["ipv4", "ipv6"])
def test_complete_checksum_udp_zero_is_ffff(l3):
    pkt = Ether() / l3 / UDP(sport=5000, dport=6000) / Raw(zero_udp_payload(l3, 200))
    assert Ether(bytes(pkt))[UDP].chksum == 0xFFFF       # scapy says so too
    frame, start, off = partial(pkt, 17)
    complete_checksum(frame, len(frame), start, off)
    assert frame[start + off:start + off + 2] == b"\xff\xff"


def test_complete_checksum_tcp_zero_is_ffff_like_the_kernel():
    # skb_checksum_help writes csum_fold(...) ?: CSUM_MANGLED_0 whatever the protocol;
    # 0xFFFF and 0 are the same number in ones' complement, so the segment still verifies
    pkt = Ether() / v4() / tcp()
    probe = bytearray(bytes(pkt / Raw(b"\0\0")))
    c0 = Ether(bytes(probe))[TCP].chksum                # ~S with a zero payload word
    pkt = pkt / Raw(struct.pack("!H", c0))              # makes S 0xFFFF: checksum 0
    assert Ether(bytes(pkt))[TCP].chksum == 0
    frame, start, off = partial(pkt, 6)
    complete_checksum(frame, len(frame), start, off)
    assert frame[start + off:start + off + 2] == b"\xff\xff"
    assert fold(words(bytes(frame[start:])) + pseudo(pkt[IP], 6, len(frame) - start)) == 0xFFFF


@pytest.mark.parametrize("n,start,off", [
    (100, 100, 0),      # field past the end
    (100, 99, 0),       # field half past the end
    (100, 90, 9),
    (100, -1, 6),
    (100, 10, -2),
    (200, 34, 16),      # n beyond the 100-byte buffer
])
def test_complete_checksum_offsets_that_do_not_fit(n, start, off):
    frame = bytearray(PAYLOAD[:100])
    with pytest.raises(SegmentError):
        complete_checksum(frame, n, start, off)
    assert frame == bytearray(PAYLOAD[:100])


@FUZZ
@given(st.binary(min_size=0, max_size=3000), st.data())
def test_word_sum_matches_scapy(data, draw):
    # the sum complete_checksum and the short last segment use, both ways (int.from_bytes
    # below NUMPY_SUM_MIN bytes, numpy above), at even and odd offsets and lengths
    from scapy.utils import checksum as scapy_checksum
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))
    want = (0xFFFF - scapy_checksum(data[start:end])) % 0xFFFF
    assert word_sum(bytearray(data), start, end) == want


@pytest.mark.parametrize("start", [0, 1, 34])
@pytest.mark.parametrize("length", [NUMPY_SUM_MIN - 1, NUMPY_SUM_MIN, NUMPY_SUM_MIN + 1, 1501])
def test_word_sum_on_both_sides_of_the_numpy_threshold(start, length):
    from scapy.utils import checksum as scapy_checksum
    data = PAYLOAD[:start + length]
    assert word_sum(memoryview(bytearray(data)), start, start + length) == \
        (0xFFFF - scapy_checksum(data[start:])) % 0xFFFF


# ------------------------------------------------------------------ fuzz

@st.composite
def super_frames(draw):
    ipv6 = draw(st.booleans())
    udp = draw(st.booleans())
    if ipv6:
        l3 = v6(tc=draw(st.integers(0, 255)), fl=draw(st.integers(0, 0xFFFFF)))
    else:
        opts = draw(st.sampled_from([[], [IPOption_Router_Alert()], [IPOption_NOP()],
                                     [IPOption_RR(routers=["1.2.3.4"] * 3)]]))
        l3 = v4(id=draw(st.integers(0, 0xFFFF)), tos=draw(st.integers(0, 255)),
                flags=draw(st.sampled_from(["", "DF"])), options=opts)
    if udp:
        l4 = UDP(sport=draw(st.integers(0, 0xFFFF)), dport=draw(st.integers(0, 0xFFFF)))
    else:
        opts = draw(st.sampled_from([[], [("MSS", 1460)], [("NOP", None), ("WScale", 7)],
                                     [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]]))
        l4 = tcp(seq=draw(st.integers(0, 2**32 - 1)), flags=draw(st.integers(0, 255)),
                 options=opts)
    gso = draw(st.one_of(st.integers(1, 64), st.integers(500, 1500), st.integers(1, 9000)))
    segs = draw(st.integers(1, 24))
    top = min(segs * gso, 60_000)
    size = draw(st.integers(min((segs - 1) * gso + 1, top), top))
    start = draw(st.integers(0, 1000))
    return l3, l4, PAYLOAD[start:start + size], gso


@FUZZ
@given(super_frames())
def test_fuzz_equals_scapy(case):
    l3, l4, payload, gso = case
    check(l3, l4, payload, gso)


GSO_TYPES = st.one_of(st.sampled_from([vnet.GSO_TCPV4, vnet.GSO_TCPV6, vnet.GSO_UDP_L4,
                                       vnet.GSO_TCPV4 | vnet.GSO_ECN, vnet.GSO_UDP_L4 |
                                       vnet.GSO_ECN]), st.integers(0, 255))


@FUZZ
@given(st.binary(max_size=300), GSO_TYPES, st.integers(-2, 70_000), st.data())
def test_fuzz_random_bytes_raise_only_segment_error(frame, gso_type, gso, data):
    n = data.draw(st.integers(-1, len(frame) + 1))
    try:
        Segmenter(VX, capacity=4096).segment(gso_type, gso, frame, n)
    except SegmentError:
        pass


@FUZZ
@given(super_frames(), st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)),
                                min_size=1, max_size=6), st.integers(0, 200), GSO_TYPES)
def test_fuzz_mutated_headers_raise_only_segment_error(case, edits, cut, gso_type):
    # headers garbled where they are read (lengths, versions, protocols, offsets): either
    # a SegmentError, or datagrams that add up to what segment() said it wrote
    l3, l4, payload, gso = case
    frame = super_frame(l3, l4, payload)
    for off, val in edits:
        if off < len(frame):
            frame[off] = val
    n = max(0, len(frame) - cut)
    seg = Segmenter(VX, capacity=1 << 17)
    try:
        total, size, count = seg.segment(gso_type, gso, frame, n)
    except SegmentError:
        return
    assert 0 < size and (count - 1) * size < total <= count * size <= len(seg.out)
