"""vtep.coalesce: received TCP segments merged into TAP super-frames (GRO in userspace).

The reference is scapy: segments are built by scapy (checksums and all), placed in a
buffer as UDP GRO leaves them (each behind an 8-byte VXLAN header), and every write
plan() returns is checked by `check_writes` against scapy's parse of the bytes:
the virtio-net header, the IP length and IPv4 header checksum, the TCP field
(the pseudo-header sum computed here by hand, and the whole super-frame's checksum
once completed as the kernel completes CHECKSUM_PARTIAL), and re-segmentation by
gso_size giving back each original segment's sequence number and payload, per flow,
in the order sent, each exactly once. Each non-merge rule has a case that a too
eager coalescer fails.
"""
from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR, in4_chksum
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, in6_chksum
from scapy.layers.l2 import Ether
from scapy.utils import checksum as scapy_checksum

from vtep import vnet
from vtep.coalesce import MAX_SEGMENTS, Coalescer

MAC_A, MAC_B, MAC_C = "02:42:ac:02:00:02", "02:42:ac:02:01:03", "02:42:ac:02:09:09"
TS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
V4 = dict(src="172.2.0.2", dst="172.2.1.3")
V6 = dict(src="fd42:2::2", dst="fd42:2:1::3")


def seg(seq, size, *, v6=False, flags="A", ack=777, sport=40000, dport=5201, options=TS,
        payload=None, eth=None, ip=None, tcp=None, ext=None):
    """One TCP segment as scapy builds it: IPv4 with DF (or IPv6), timestamps."""
    data = payload if payload is not None else bytes((seq + k) % 251 for k in range(size))
    l2 = Ether(**(eth or dict(src=MAC_A, dst=MAC_B)))
    if v6:
        l3 = IPv6(**{**V6, "hlim": 64, **(ip or {})})
        if ext is not None:
            l3 = l3 / ext
    else:
        l3 = IP(**{**V4, "flags": "DF", "ttl": 64, "id": seq & 0xFFFF, **(ip or {})})
    l4 = TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack, flags=flags,
             window=502, options=options, **(tcp or {}))
    return bytes(l2 / l3 / l4 / data)


def stream(sizes, seq=1_000_000, **kw):
    out = []
    for size in sizes:
        out.append(seg(seq, size, **kw))
        seq += size
    return out


def place(frames, gaps=None, start=8):
    """A receive buffer as offload.rx_batch fills it: each frame after a VXLAN header."""
    buf = bytearray(start)
    spans = []
    for k, f in enumerate(frames):
        gap = gaps[k] if gaps else 8
        if gap:
            buf += b"\x08" + bytes(gap - 1)
        spans.append((len(buf), len(f)))
        buf += f
    buf += bytes(64)
    return buf, spans


def corrupt(frame: bytes, at: int = -1) -> bytes:
    """The same frame with one bit flipped at `at` (its TCP checksum now fails)."""
    b = bytearray(frame)
    b[at] ^= 0x01
    return bytes(b)


def fold(s: int) -> int:
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_sum(p, tcp_len: int) -> int:
    """The folded pseudo-header sum (RFC 793 3.1 / RFC 8200 8.1), by hand."""
    if IP in p:
        words = socket.inet_aton(p[IP].src) + socket.inet_aton(p[IP].dst) + struct.pack(
            "!HH", 6, tcp_len)
    else:
        words = (socket.inet_pton(socket.AF_INET6, p[IPv6].src)
                 + socket.inet_pton(socket.AF_INET6, p[IPv6].dst) + struct.pack("!IxxxB", tcp_len, 6))
    return fold(sum(struct.unpack(f"!{len(words) // 2}H", words)))


def complete(data: bytes, start: int, offset: int) -> bytes:
    """What the kernel does to CHECKSUM_PARTIAL: complement of the sum from csum_start
    (the field holding the pseudo-header sum) written into the field."""
    part = data[start:] + b"\0" * (len(data[start:]) & 1)
    c = 0xFFFF - fold(sum(struct.unpack(f"!{len(part) // 2}H", part)))
    return data[:start + offset] + struct.pack("!H", c) + data[start + offset + 2:]


def flow_of(p):
    if TCP not in p:
        return ("other",)
    ip = p[IP] if IP in p else p[IPv6]
    return (ip.src, ip.dst, p[TCP].sport, p[TCP].dport)


def units(frame: bytes):
    """What a frame carries for its flow: (seq, flags without PSH, payload)."""
    p = Ether(frame)
    if TCP not in p:
        return flow_of(p), [("frame", frame)]
    t = p[TCP]
    return flow_of(p), [(t.seq, int(t.flags), bytes(t.payload))]


def check_merged(iov, count):
    """Every property of one merged write, from scapy's parse; returns its units."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = vnet.HEADER.unpack(bytes(iov[0]))
    data = b"".join(bytes(x) for x in iov[1:])
    p = Ether(data)
    assert flags == vnet.F_NEEDS_CSUM and csum_offset == 16
    if IP in p:
        ip = p[IP]
        assert gso_type == vnet.GSO_TCPV4
        assert ip.len == len(data) - 14
        assert csum_start == 14 + ip.ihl * 4
        assert scapy_checksum(bytes(ip)[:ip.ihl * 4]) == 0, "IPv4 header checksum"
        assert not ip.flags.MF and ip.frag == 0
    else:
        ip = p[IPv6]
        assert gso_type == vnet.GSO_TCPV6 and ip.nh == 6
        assert ip.plen == len(data) - 54 and csum_start == 54
    assert len(data) - 14 <= 65535, "over 64 KiB: EINVAL"
    t = p[TCP]
    assert hdr_len == csum_start + t.dataofs * 4
    tcp_len = len(data) - csum_start
    assert t.chksum == pseudo_sum(p, tcp_len), "the folded pseudo-header sum, not complemented"
    full = complete(data, csum_start, csum_offset)
    q = Ether(full)
    chk = in4_chksum if IP in q else in6_chksum
    assert chk(6, q[IP] if IP in q else q[IPv6], bytes(q[TCP])) == 0, "completed checksum"
    payload = bytes(t.payload)
    chunks = [payload[k:k + gso_size] for k in range(0, len(payload), gso_size)]
    assert len(chunks) == count >= 2
    assert all(len(c) == gso_size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= gso_size
    fl = int(t.flags)
    assert fl & ~0x08 == 0x10
    # PSH, when set, belongs to the last segment only (the one re-segmentation gives it)
    out = [((t.seq + k * gso_size) & 0xFFFFFFFF, 0x10, c) for k, c in enumerate(chunks)]
    out[-1] = (out[-1][0], fl, out[-1][2])
    return flow_of(p), out


def check_writes(writes, sent: list[bytes], buf=None):
    """Each flow's units, read from the writes in order, are the units sent, in order,
    each once; frame counts add up. Returns the per-write (merged?, count) list."""
    got: dict = {}
    shape = []
    merged = []
    for iov, count in writes:
        if bytes(iov[0]) == vnet.ZERO:
            assert count == 1 and len(iov) == 2
            flow, u = units(bytes(iov[1]))
            shape.append(1)
        else:
            flow, u = check_merged(iov, count)
            shape.append(count)
            merged.extend((flow, seq, data) for seq, _, data in u)
        if buf is not None:
            assert all(isinstance(x, memoryview) and x.obj is buf for x in iov[1:]), "zero copy"
        got.setdefault(flow, []).extend(u)
    want: dict = {}
    for f in sent:
        flow, u = units(f)
        want.setdefault(flow, []).extend(u)
    assert got == want
    assert sum(c for _, c in writes) == len(sent)
    check_writes.merged = merged
    return shape


def run(frames, gaps=None, coalescer=None):
    buf, spans = place(frames, gaps)
    writes = (coalescer or Coalescer()).plan(buf, spans)
    return check_writes(writes, frames, buf), writes


# ---------------------------------------------------------------- merging


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_gro_batch_is_one_super_frame(v6):
    frames = stream([1398] * 45, v6=v6)
    shape, writes = run(frames)
    assert shape == [45]
    (iov, _), = writes
    iph = 40 if v6 else 20
    assert vnet.HEADER.unpack(bytes(iov[0])) == (
        vnet.F_NEEDS_CSUM, vnet.GSO_TCPV6 if v6 else vnet.GSO_TCPV4, 14 + iph + 32, 1398,
        14 + iph, 16)
    # the first frame whole, then each later segment's payload only
    assert len(iov) == 46 and len(iov[1]) == 14 + iph + 32 + 1398
    assert all(len(x) == 1398 for x in iov[2:])


def test_headers_are_edited_in_place_in_the_first_frame():
    frames = stream([1000] * 3)
    buf, spans = place(frames)
    (iov, _), = Coalescer().plan(buf, spans)
    o, n = spans[0]
    p = Ether(bytes(buf[o:o + n]))
    assert p[IP].len == 20 + 32 + 3000
    assert bytes(iov[1]) == bytes(buf[o:o + n])
    # later frames are untouched: only their payloads are referenced
    o2, n2 = spans[1]
    assert bytes(buf[o2:o2 + n2]) == frames[1]


def test_psh_on_the_last_merged_segment_is_kept_and_ends_the_super_frame():
    frames = stream([1000] * 5)
    frames[2] = Ether(frames[2])
    frames[2][TCP].flags = "PA"
    del frames[2][TCP].chksum
    frames[2] = bytes(frames[2])
    shape, writes = run(frames)
    assert shape == [3, 2]
    assert Ether(b"".join(map(bytes, writes[0][0][1:])))[TCP].flags == "PA"
    assert Ether(b"".join(map(bytes, writes[1][0][1:])))[TCP].flags == "A"


def test_a_shorter_segment_ends_the_super_frame():
    assert run(stream([1000, 1000, 400, 1000, 1000]))[0] == [3, 2]


def test_a_larger_segment_never_follows_a_smaller_one():
    # gso_size is the first's payload: a bigger one after it could not be re-cut
    assert run(stream([400, 1000, 1000]))[0] == [1, 2]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_ip_packet_stays_within_64k(v6):
    shape, writes = run(stream([1398] * 50, v6=v6))
    assert shape == [46, 4]   # 47 segments would be 65,706 payload bytes


@pytest.mark.parametrize("last, shape", [(13095, [5]), (13096, [4, 1])])
def test_the_64k_limit_is_exact(last, shape):
    # no TCP options: 20 + 20 header bytes; 4 x 13,100 + 13,095 = 65,495 = 65,535 - 40
    assert run(stream([13100] * 4 + [last], options=[]))[0] == shape


def test_at_most_max_segments_per_write():
    assert run(stream([10] * 100))[0] == [MAX_SEGMENTS, 100 - MAX_SEGMENTS]


def test_sequence_numbers_wrap():
    assert run(stream([1000] * 4, seq=2**32 - 1500))[0] == [4]


def test_identical_ipv4_options_merge():
    opts = dict(options=[IPOption_NOP(), IPOption_RR(routers=["1.2.3.4"])])
    assert run(stream([700] * 4, ip=opts))[0] == [4]


# ---------------------------------------------------------------- what is never merged


def rebuild(frame: bytes, layer, **fields) -> bytes:
    """The frame with fields changed, checksums recomputed by scapy."""
    p = Ether(frame)
    for k, v in fields.items():
        setattr(p[layer], k, v)
    if IP in p:
        del p[IP].chksum
        del p[IP].len
        del p[IP].ihl
    del p[TCP].chksum
    del p[TCP].dataofs
    return bytes(p)


def from_third(mutate):
    def apply(frames):
        return frames[:2] + [mutate(f) for f in frames[2:]]
    return apply


def only_third(mutate):
    def apply(frames):
        return frames[:2] + [mutate(frames[2])] + frames[3:]
    return apply


def pure_ack_third(frames):
    nxt = Ether(frames[2])[TCP].seq
    return frames[:2] + [seg(nxt, 0)] + stream([1000, 1000], seq=nxt)


def padded(f):
    return f + bytes(6)   # an Ethernet trailer after the IP packet


def bad_ip_checksum(f):
    b = bytearray(f)
    b[24] ^= 0x10         # the IPv4 header checksum's first byte
    return bytes(b)


def ip_options(value):
    return lambda f: rebuild(f, IP, options=[IPOption_NOP(), IPOption_RR(routers=[value])])


FLAG_CASES = {name: only_third(lambda f, fl=fl: rebuild(f, TCP, flags=fl))
              for name, fl in [("cwr", "AC"), ("ece", "AE"), ("syn", "SA"), ("fin", "FA"),
                               ("rst", "RA"), ("urg", "AU"), ("no-ack", "")]}

V4_CASES = {
    **FLAG_CASES,
    "pure-ack": pure_ack_third,
    "other-ack-number": from_third(lambda f: rebuild(f, TCP, ack=778)),
    "other-tcp-options": from_third(
        lambda f: rebuild(f, TCP, options=[("NOP", None), ("NOP", None), ("Timestamp", (123457, 654321))])),
    "other-tcp-header-length": from_third(lambda f: rebuild(f, TCP, options=[])),
    "other-tos": from_third(lambda f: rebuild(f, IP, tos=0x10)),
    "ecn-ce": from_third(lambda f: rebuild(f, IP, tos=0x03)),
    "other-ttl": from_third(lambda f: rebuild(f, IP, ttl=63)),
    "no-df": from_third(lambda f: rebuild(f, IP, flags=0)),
    "ip-options": from_third(ip_options("1.2.3.4")),
    "other-ip-options": lambda fr: [ip_options("1.2.3.4")(f) for f in fr[:2]]
    + [ip_options("1.2.3.5")(f) for f in fr[2:]],
    "more-fragments": only_third(lambda f: rebuild(f, IP, flags="MF")),
    "fragment-offset": only_third(lambda f: rebuild(f, IP, frag=100)),
    "bad-ip-checksum": only_third(bad_ip_checksum),
    "bad-tcp-checksum": only_third(corrupt),
    "bad-tcp-checksum-in-header": only_third(lambda f: corrupt(f, 14 + 20 + 14)),  # window
    "gap-in-sequence": from_third(lambda f: rebuild(f, TCP, seq=Ether(f)[TCP].seq + 1000)),
    "other-dst-mac": from_third(lambda f: rebuild(f, Ether, dst=MAC_C)),
    "other-src-mac": from_third(lambda f: rebuild(f, Ether, src=MAC_C)),
    "padded-frame": only_third(padded),
}
# what each case must give for five 1000-byte segments changed from the third on (or the
# third only): never one write of five
EXPECT = {"other-ack-number": [2, 3], "other-tcp-options": [2, 3],
          "other-tcp-header-length": [2, 3], "other-tos": [2, 3], "ecn-ce": [2, 3],
          "other-ttl": [2, 3], "no-df": [2, 3], "ip-options": [2, 3], "other-ip-options": [2, 3],
          "gap-in-sequence": [2, 3], "other-dst-mac": [2, 3], "other-src-mac": [2, 3]}


@pytest.mark.parametrize("case", sorted(V4_CASES))
def test_ipv4_non_merge_rules(case):
    frames = V4_CASES[case](stream([1000] * 5))
    shape, _ = run(frames)
    assert shape == EXPECT.get(case, [2, 1, 2])


def test_fin_with_payload_goes_alone_after_the_flows_data():
    frames = stream([1000] * 3)
    nxt = Ether(frames[-1])[TCP].seq + 1000
    frames.append(seg(nxt, 500, flags="FA"))
    assert run(frames)[0] == [3, 1]


@pytest.mark.parametrize("pad", [bytes(6), b"\xff\xf9" + bytes(4)], ids=["zeros", "cancelling"])
def test_a_padded_shorter_segment_is_written_alone(pad):
    # its padding would pass for payload, and fit within gso_size; the second padding's
    # words cancel the 6 bytes it adds to the pseudo-header: the checksum cannot tell
    frames = stream([1000, 1000, 500])
    assert run(frames[:2] + [frames[2] + pad])[0] == [2, 1]


def test_headers_with_the_same_bad_ip_checksum_are_not_merged():
    # a broken sender: every IPv4 checksum zero, one IP ID (legal with DF): the headers
    # differ only in ways that cancel out, so each must be verified, the first too
    frames = []
    for f in stream([1000] * 5, ip=dict(id=7)):
        b = bytearray(f)
        b[24:26] = b"\0\0"
        frames.append(bytes(b))
    assert run(frames)[0] == [1] * 5


def test_a_later_fragment_closes_every_open_super_frame():
    # it has no ports: it may be part of any flow's segment, so no flow's later data may
    # be written before it
    frames = stream([1000] * 4)
    frag = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(**V4, proto=6, frag=185, flags="DF")
                 / bytes(range(200)))
    shape, writes = run(frames[:2] + [frag] + frames[2:])
    assert shape == [2, 1, 2]


def test_an_ipv6_extension_header_closes_every_open_super_frame():
    # the segment behind it may be one of an open flow's: here a copy of the next one,
    # which a later in-sequence segment must not overtake
    frames = stream([1000] * 4, v6=True)
    hidden = seg(Ether(frames[2])[TCP].seq, 1000, v6=True, ext=IPv6ExtHdrHopByHop())
    assert run(frames[:2] + [hidden] + frames[2:])[0] == [2, 1, 2]


def test_pure_acks_are_never_merged():
    assert run([seg(5000, 0) for _ in range(5)])[0] == [1] * 5


@pytest.mark.parametrize("where, shape", [(0, [1, 4]), (1, [1, 1, 3]), (3, [3, 1, 1]),
                                          (4, [4, 1])])
def test_a_corrupted_segment_is_written_alone_wherever_it_is(where, shape):
    frames = stream([1000] * 5)
    frames[where] = corrupt(frames[where], 14 + 20 + 32 + 500)
    assert run(frames)[0] == shape


@pytest.mark.parametrize("gaps", ["equal", "uneven", "odd"])
@pytest.mark.parametrize("size", [1000, 999])
def test_checksums_are_verified_at_any_stride_and_odd_lengths(gaps, size):
    # the last byte of an odd-length segment is the odd word's only byte
    rng = random.Random(size)
    gap = {"equal": None, "uneven": [rng.choice((8, 10, 24)) for _ in range(8)],
           "odd": [9] * 8}[gaps]
    for where in range(8):
        frames = stream([size] * 8)
        frames[where] = corrupt(frames[where])
        shape, _ = run(frames, gap)
        assert sum(shape) == 8 and 1 in shape and max(shape) < 8, (where, shape)
        assert len(shape) == (2 if where in (0, 7) else 3)


@pytest.mark.parametrize("case", ["other-traffic-class", "other-flow-label", "other-hop-limit"])
def test_ipv6_non_merge_rules(case):
    field, value = {"other-traffic-class": ("tc", 0x20), "other-flow-label": ("fl", 7),
                    "other-hop-limit": ("hlim", 63)}[case]
    frames = stream([1000] * 5, v6=True)
    frames = frames[:2] + [rebuild(f, IPv6, **{field: value}) for f in frames[2:]]
    assert run(frames)[0] == [2, 3]


def test_ipv6_extension_headers_are_never_merged():
    frames = stream([1000] * 4, v6=True, ext=IPv6ExtHdrHopByHop())
    assert run(frames)[0] == [1] * 4


def test_ipv6_corrupted_segment():
    frames = stream([1000] * 5, v6=True)
    frames[2] = corrupt(frames[2])
    assert run(frames)[0] == [2, 1, 2]


# ---------------------------------------------------------------- flows and order


def test_interleaved_flows_merge_each_in_its_own_order():
    a = stream([1000] * 3, sport=1111)
    b = stream([800] * 3, sport=2222, v6=True)
    frames = [x for pair in zip(a, b) for x in pair]
    shape, writes = run(frames)
    assert shape == [3, 3]
    # two different super-frames: two header buffers (one shared would hold the last one)
    assert writes[0][0][0] is not writes[1][0][0]


def test_a_flows_unmerged_frame_never_overtakes_its_earlier_data():
    a = stream([1000] * 5, sport=1111)
    b = stream([1000] * 4, sport=2222)
    nxt = Ether(a[1])[TCP].seq + 1000
    fin = seg(nxt, 0, flags="FA", sport=1111)
    a2 = stream([1000] * 2, seq=nxt + 1, sport=1111)
    udp = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(**V4) / UDP(sport=1, dport=2) / (b"x" * 30))
    frames = [a[0], b[0], a[1], b[1], fin, udp, b[2], a2[0], b[3], a2[1]]
    shape, writes = run(frames)
    # A's first two, B's four, A's FIN, the UDP frame, A's next two
    assert shape == [2, 4, 1, 1, 2]


def test_the_reverse_directions_acks_do_not_break_a_super_frame():
    data = stream([1000] * 4)
    acks = [seg(777, 0, sport=5201, dport=40000, eth=dict(src=MAC_B, dst=MAC_A),
                ip=dict(src=V4["dst"], dst=V4["src"])) for _ in range(4)]
    frames = [x for pair in zip(data, acks) for x in pair]
    assert run(frames)[0] == [4, 1, 1, 1, 1]


def test_non_ip_and_short_frames_are_written_alone():
    arp = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / (b"\0" * 28))
    runt = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800) / (b"\x45" * 20))
    assert run([arp, runt] + stream([1000] * 2))[0] == [1, 1, 2]


def test_a_coalescer_is_reused_across_batches():
    c = Coalescer()
    for k, sizes in enumerate([[1000] * 3, [700] * 5, [1398] * 45]):
        frames = [x for pair in zip(stream(sizes, sport=1), stream(sizes, sport=2, v6=k == 1))
                  for x in pair]
        assert run(frames, coalescer=c)[0] == [len(sizes)] * 2


# ---------------------------------------------------------------- property


@st.composite
def batches(draw):
    nflows = draw(st.integers(1, 3))
    flows = []
    for f in range(nflows):
        v6 = draw(st.booleans())
        seq = draw(st.integers(0, 2**32 - 1))
        mss = draw(st.sampled_from([1, 7, 536, 1398, 1448, 8948]))
        segs = []
        for _ in range(draw(st.integers(1, 14))):
            kind = draw(st.sampled_from(["full"] * 6 + ["short", "psh", "ack", "fin", "bad",
                                                        "bad-last-byte", "gap", "newack"]))
            size = {"full": mss, "short": draw(st.integers(1, mss)), "ack": 0}.get(kind, mss)
            flags = {"psh": "PA", "fin": "FA"}.get(kind, "A")
            if kind == "gap":
                seq += 100
            ack = 900 if kind == "newack" else 777
            frame = seg(seq, size, v6=v6, flags=flags, ack=ack, sport=1000 + f)
            if kind == "bad" and size:
                frame = corrupt(frame, -1 - draw(st.integers(0, size - 1)))
            if kind == "bad-last-byte":
                frame = corrupt(frame)
            segs.append(frame)
            seq = (seq + size + (kind == "fin")) & 0xFFFFFFFF
        flows.append(segs)
    order = draw(st.permutations([f for f, segs in enumerate(flows) for _ in segs]))
    pos = [0] * nflows
    frames = []
    for f in order:
        frames.append(flows[f][pos[f]])
        pos[f] += 1
    if draw(st.booleans()):
        frames.insert(draw(st.integers(0, len(frames))),
                      bytes(Ether(src=MAC_A, dst=MAC_B) / IP(**V4) / UDP() / (b"u" * 9)))
    gaps = draw(st.lists(st.sampled_from([0, 8, 9]), min_size=len(frames), max_size=len(frames)))
    return frames, gaps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_any_batch_delivers_each_flows_bytes_once_in_order(batch):
    frames, gaps = batch
    buf, spans = place(frames, gaps)
    writes = Coalescer().plan(buf, spans)
    # check_writes: per flow the (seq, flags, payload) read back in write order equal
    # those sent; counts add up; every merged write valid and within 64 KiB
    check_writes(writes, frames, buf)
    # every segment inside a super-frame had a valid checksum when it came (scapy's)
    valid = set()
    for f in frames:
        p = Ether(f)
        if TCP in p:
            ip = p[IP] if IP in p else p[IPv6]
            if (in4_chksum if IP in p else in6_chksum)(6, ip, bytes(p[TCP])) == 0:
                valid.add((flow_of(p), p[TCP].seq, bytes(p[TCP].payload)))
    assert all(u in valid for u in check_writes.merged)


# ---------------------------------------------------------------- plan_runs: UDP GRO reads


def gro(reads, start=8):
    """A receive buffer as offload.rx_batch fills it from UDP GRO reads: each read's
    datagrams back to back (VXLAN header + frame, all as long as the first but the last),
    each read starting even. Returns the buffer, the runs and the frames expanded."""
    buf = bytearray(start)
    runs, spans = [], []
    for frames in reads:
        stride = len(frames[0]) + 8
        assert all(len(f) == len(frames[0]) for f in frames[:-1])
        assert len(frames[-1]) <= len(frames[0])
        runs.append((len(buf) + 8, stride, len(frames), len(frames[-1])))
        for f in frames:
            buf += b"\x08" + bytes(7)
            spans.append((len(buf), len(f)))
            buf += f
        buf += bytes(len(buf) & 1)
    buf += bytes(64)
    return buf, runs, spans


def run_gro(reads, coalescer=None):
    """plan_runs on the reads, checked with scapy (check_writes) and against plan() on
    the same frames expanded, in a copy of the buffer: the same bytes, write by write,
    and the same frame counts. Returns the shape and the writes."""
    buf, runs, spans = gro(reads)
    twin = bytearray(buf)
    writes = (coalescer or Coalescer()).plan_runs(buf, runs)
    got = [(b"".join(bytes(x) for x in iov), count) for iov, count in writes]
    want = [(b"".join(bytes(x) for x in iov), count)
            for iov, count in Coalescer().plan(twin, spans)]
    assert got == want
    shape = check_writes(writes, [f for frames in reads for f in frames])
    return shape, writes


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("options", ["ts", "none"])
@pytest.mark.parametrize("last", [1398, 700, 1])
def test_plan_runs_one_read_is_one_super_frame_in_few_iovecs(v6, options, last):
    opts = TS if options == "ts" else []
    frames = stream([1398] * 44 + [last], v6=v6, options=opts)
    shape, writes = run_gro([frames])
    assert shape == [45]
    (iov, _), = writes
    # the fast path: the headers, the first frame, the copied payloads, the last one's
    assert len(iov) <= 4


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_plan_runs_psh_on_the_last_segment(v6):
    frames = stream([1398] * 10, v6=v6)
    frames[-1] = rebuild(frames[-1], TCP, flags="PA")
    shape, writes = run_gro([frames])
    assert shape == [10]
    assert Ether(b"".join(map(bytes, writes[0][0][1:])))[TCP].flags == "PA"


@pytest.mark.parametrize("count, shape", [(64, [64]), (65, [64, 1]), (130, [64, 64, 2])])
def test_plan_runs_at_most_max_segments(count, shape):
    assert run_gro([stream([500] * count)])[0] == shape


@pytest.mark.parametrize("last, shape", [(13095, [5]), (13096, [4, 1])])
def test_plan_runs_64k_limit_is_exact(last, shape):
    assert run_gro([stream([13100] * 4 + [last], options=[])])[0] == shape


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_plan_runs_a_flow_over_several_reads_splits_at_64k(v6):
    frames = stream([1398] * 135, v6=v6)
    shape, _ = run_gro([frames[:45], frames[45:90], frames[90:]])
    assert shape == [46, 46, 43]


def test_plan_runs_odd_segment_size_and_sequence_wrap():
    assert run_gro([stream([999] * 20, seq=2**32 - 5000)])[0] == [20]


@pytest.mark.parametrize("where", [0, 1, 2, 20, 43, 44])
@pytest.mark.parametrize("at", ["payload", "last-byte", "ip-checksum", "window"])
def test_plan_runs_one_bad_checksum_anywhere(where, at):
    frames = stream([1398] * 45)
    frames[where] = {"payload": lambda f: corrupt(f, 14 + 20 + 32 + 700),
                     "last-byte": corrupt, "ip-checksum": bad_ip_checksum,
                     "window": lambda f: corrupt(f, 14 + 20 + 14)}[at](frames[where])
    shape, _ = run_gro([frames])
    assert sum(shape) == 45 and 1 in shape and max(shape) < 45


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_plan_runs_a_read_mixing_two_flows(v6):
    a = stream([1398] * 20, sport=1111, v6=v6)
    b = stream([1398] * 20, sport=2222, v6=v6)
    assert run_gro([[x for pair in zip(a, b) for x in pair]])[0] == [20, 20]
    # B between two stretches of A does not close A's super-frame
    assert run_gro([a[:10] + b[:10] + a[10:]])[0] == [20, 10]


@pytest.mark.parametrize("kind", ["fin", "syn", "pure-ack", "psh", "rst", "cwr", "ethertype",
                                  "dst-mac"])
def test_plan_runs_a_control_segment_inside_a_read(kind):
    frames = stream([1000] * 12)
    if kind == "ethertype":
        # the same bytes but not IPv4 (an experimental EtherType): written alone
        frames[6] = frames[6][:12] + b"\x88\xb5" + frames[6][14:]
    elif kind == "dst-mac":
        frames[6] = rebuild(frames[6], Ether, dst=MAC_C)
    elif kind == "pure-ack":
        # a frame as long as the others, padded, so the read keeps its shape
        frames[6] = seg(Ether(frames[6])[TCP].seq, 0) + bytes(1000)
    else:
        fl = {"fin": "FA", "syn": "SA", "psh": "PA", "rst": "RA", "cwr": "AC"}[kind]
        frames[6] = rebuild(frames[6], TCP, flags=fl)
    shape, _ = run_gro([frames])
    assert sum(shape) == 12 and len(shape) >= 2


def test_plan_runs_a_sequence_gap_inside_a_read():
    frames = stream([1000] * 6) + stream([1000] * 6, seq=1_000_000 + 7000)
    assert run_gro([frames])[0] == [6, 6]


def test_plan_runs_a_changed_header_inside_a_read():
    frames = stream([1000] * 12)
    frames = frames[:5] + [rebuild(f, IP, ttl=63) for f in frames[5:]]
    assert run_gro([frames])[0] == [5, 7]


def test_plan_runs_reads_interleaving_flows():
    a = stream([1398] * 60, sport=1111)
    b = stream([1000] * 30, sport=2222, v6=True)
    acks = [seg(777, 0, sport=5201, dport=40000) for _ in range(3)]
    reads = [a[:20], b[:15], [acks[0]], a[20:40], b[15:], acks[1:], a[40:]]
    shape, _ = run_gro(reads)
    assert shape == [46, 30, 1, 1, 1, 14]


def test_plan_runs_single_datagram_reads():
    frames = stream([1000] * 6)
    assert run_gro([[f] for f in frames])[0] == [6]


def test_plan_runs_reuses_its_coalescer():
    c = Coalescer()
    for k in range(3):
        assert run_gro([stream([1398] * 45, v6=k == 1)], coalescer=c)[0] == [45]


def spy_blocks(coalescer):
    """Record what the coalescer's _block answers for each read (None: the generic way)."""
    seen = []
    block = coalescer._block

    def spy(*a):
        seen.append(block(*a))
        return seen[-1]
    coalescer._block = spy
    return seen


def checksum_fails(frame: bytes) -> bool:
    """Whether scapy finds the IPv4 header or TCP checksum of a frame wrong."""
    p = Ether(frame)
    if IP in p and scapy_checksum(bytes(p[IP])[:p[IP].ihl * 4]) != 0:
        return True
    ip = p[IP] if IP in p else p[IPv6]
    return (in4_chksum if IP in p else in6_chksum)(6, ip, bytes(p[TCP])) != 0


def damage(frame: bytes, how: str) -> bytes:
    return {"payload": lambda f: corrupt(f, -200), "last-byte": corrupt,
            "window": lambda f: corrupt(f, (34 if IP in Ether(f) else 54) + 14),
            "ip-id": lambda f: corrupt(f, 19), "ip-checksum": bad_ip_checksum}[how](frame)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("where", range(12))
def test_plan_runs_a_bad_row_anywhere_stays_in_the_fast_path(v6, where):
    # every row of a 12-frame read (the last full-size too) in turn: the read is still
    # one block, _block names exactly the bad row (scapy says which), and the writes are
    # plan()'s (run_gro): the bad frame alone, the good ones merged around it
    frames = stream([1000] * 12, v6=v6)
    frames[where] = damage(frames[where], "payload")
    c = Coalescer()
    seen = spy_blocks(c)
    shape, writes = run_gro([frames], coalescer=c)
    assert seen == [[r for r, f in enumerate(frames) if checksum_fails(f)]] == [[where]]
    assert shape == [s for s in (where, 1, 11 - where) if s]


@pytest.mark.parametrize("how", ["last-byte", "window", "ip-id", "ip-checksum"])
@pytest.mark.parametrize("bad", [(0,), (0, 1), (3, 4), (2, 9), (1, 5, 8), (10,), (9, 10),
                                 tuple(range(11))])
def test_plan_runs_bad_rows_in_any_pattern(bad, how):
    # several bad rows, adjacent, at the start, the end, every one of them; a short last
    # frame after them. A changed IPv4 ID fails the header checksum as one flipped in
    # the checksum itself does; a changed window fails the TCP one
    frames = stream([1000] * 11 + [300])
    for r in bad:
        frames[r] = damage(frames[r], how)
    c = Coalescer()
    seen = spy_blocks(c)
    shape, _ = run_gro([frames], coalescer=c)
    assert seen == [[r for r, f in enumerate(frames[:11]) if checksum_fails(f)]] == [list(bad)]
    assert sum(shape) == 12 and shape.count(1) >= len(bad)


@pytest.mark.parametrize("where", [0, 44, 45, 46, 63, 64, 65, 90])
def test_plan_runs_a_bad_row_next_to_the_64k_and_segment_limits(where):
    # bad rows where a super-frame closes anyway (64 KiB after 46 segments of 1,398; 64
    # segments of 500): the next one starts after the bad row, as plan() starts it
    for size, count in ((1398, 100), (500, 130)):
        frames = stream([size] * count)
        frames[where] = corrupt(frames[where])
        shape, _ = run_gro([frames])
        assert sum(shape) == count and 1 in shape


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_plan_runs_a_bad_row_at_a_reads_start_ends_the_previous_reads_super_frame(v6):
    # the flow's super-frame from the read before is open: a bad first row closes it
    frames = stream([1398] * 30, v6=v6)
    frames[10] = corrupt(frames[10])
    frames[11] = corrupt(frames[11], -7)
    assert run_gro([frames[:10], frames[10:]])[0] == [10, 1, 1, 18]


def test_plan_runs_a_corrupted_sequence_number_goes_the_generic_way():
    # the sequence does not step by m at the bad row: not a block, plan()'s writes anyway
    frames = stream([1000] * 12)
    frames[5] = corrupt(frames[5], 14 + 20 + 7)
    c = Coalescer()
    seen = spy_blocks(c)
    assert run_gro([frames], coalescer=c)[0] == [5, 1, 6]
    assert seen == [None]


@st.composite
def bad_reads(draw):
    """One flow's reads (each of equal-length frames but maybe a short last) with bad
    rows anywhere: the reads plan_runs merges in its fast path around the bad rows."""
    v6 = draw(st.booleans())
    mss = draw(st.sampled_from([7, 536, 1398, 9000]))
    seq = draw(st.integers(0, 2**32 - 1))
    reads = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 70))
        sizes = [mss] * n
        if draw(st.booleans()):
            sizes[-1] = draw(st.integers(1, mss))
        frames = stream(sizes, seq=seq, v6=v6)
        seq = (seq + sum(sizes)) & 0xFFFFFFFF
        for r in draw(st.sets(st.integers(0, n - 1), max_size=4)):
            how = draw(st.sampled_from(["last-byte", "window"] if v6 else
                                       ["last-byte", "window", "ip-id", "ip-checksum"]))
            frames[r] = damage(frames[r], how)
        reads.append(frames)
    return reads


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_reads())
def test_plan_runs_equals_plan_with_bad_rows_anywhere(reads):
    run_gro(reads)


@st.composite
def gro_reads(draw):
    """Reads of random flows as UDP GRO returns them: equal-length frames (the last may
    be shorter), with corruptions, control flags, gaps, other flows mixed in."""
    nflows = draw(st.integers(1, 3))
    state = [dict(seq=draw(st.integers(0, 2**32 - 1)), v6=draw(st.booleans()),
                  mss=draw(st.sampled_from([7, 536, 1398, 1448]))) for _ in range(nflows)]
    reads = []
    for _ in range(draw(st.integers(1, 5))):
        f = draw(st.integers(0, nflows - 1))
        mss = state[f]["mss"]
        frames = []
        for k in range(draw(st.integers(1, 24))):
            g = f if draw(st.integers(0, 9)) else draw(st.integers(0, nflows - 1))
            fs = state[g]
            kind = draw(st.sampled_from(["full"] * 12 + ["bad", "psh", "fin", "ack", "gap",
                                                         "newack", "badip"]))
            if kind == "gap":
                fs["seq"] = (fs["seq"] + 100) & 0xFFFFFFFF
            flags = {"psh": "PA", "fin": "FA"}.get(kind, "A")
            size = 0 if kind == "ack" else fs["mss"]
            frame = seg(fs["seq"], size, v6=fs["v6"], flags=flags, sport=1000 + g,
                        ack=900 if kind == "newack" else 777)
            if kind == "bad":
                frame = corrupt(frame, -1 - draw(st.integers(0, max(size - 1, 0))))
            if kind == "badip" and not fs["v6"]:
                frame = bad_ip_checksum(frame)
            fs["seq"] = (fs["seq"] + size + (kind == "fin")) & 0xFFFFFFFF
            frames.append(frame)
        # a read's frames are all as long as its first (pad or drop those that are not)
        n = len(frames[0])
        frames = [f + bytes(n - len(f)) if len(f) < n else f for f in frames if len(f) <= n]
        if draw(st.booleans()):
            # a short last one: the next segment of the read's flow
            fs = state[f]
            size = draw(st.integers(1, mss))
            frames.append(seg(fs["seq"], size, v6=fs["v6"], sport=1000 + f))
            fs["seq"] = (fs["seq"] + size) & 0xFFFFFFFF
            if len(frames[-1]) > n:
                frames.pop()
        reads.append(frames)
    return reads


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gro_reads())
def test_plan_runs_equals_plan_on_any_reads(reads):
    # run_gro: the same bytes and counts as plan() on the frames expanded, and every
    # write passes the scapy checker (each flow's data once, in order, valid, <= 64 KiB)
    run_gro(reads)
    valid = set()
    for frames in reads:
        for f in frames:
            p = Ether(f)
            if TCP in p:
                ip = p[IP] if IP in p else p[IPv6]
                if (in4_chksum if IP in p else in6_chksum)(6, ip, bytes(p[TCP])) == 0:
                    valid.add((flow_of(p), p[TCP].seq, bytes(p[TCP].payload)))
    assert all(u in valid for u in check_writes.merged)
