"""vxinspect's decoder through its public API (make_decoder -> decode_batch over records
in one buffer), its results compared with what scapy reads from the same bytes: the
flows (outer source and destination, packets, bytes on the wire, largest inner L3
packet), the VNIs of the outermost layer, and the check ids fired on each packet.

The decoder runs with its safety net off, so a header read past a record's end raises
here instead of being counted as `truncated`. Frames are built with scapy (tests/craft.py)
or by hand with struct; checksums for hand-built frames come from the RFC 1071 sum below,
written for these tests.
"""
from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

import craft as C
from vtep.lab.seed import SEED_PLAN
from vtep.plan import load as load_plan
from vxinspect import Options
from vxinspect.decode import make_decoder
from vxinspect.report import Tally

ETHERNET, RAW, SLL, IPV4, IPV6, SLL2 = 1, 101, 113, 228, 229, 276  # tcpdump.org LINKTYPE_*


def decode(frames, lt=ETHERNET, opts=None, origs=None, junk=b"\xee" * 7):
    """Decode `frames` as one batch, each record between junk bytes that must not be read.
    Returns (VXLAN packets, tally)."""
    tally = Tally()
    decode_batch = make_decoder(opts or Options(), tally, safety_net=False)
    buf = bytearray(junk)
    records = []
    for k, f in enumerate(frames):
        f = bytes(f)
        lt_k = lt[k] if isinstance(lt, (list, tuple)) else lt
        records.append((len(buf), len(buf) + len(f), origs[k] if origs else len(f), lt_k))
        buf += f + junk
    return decode_batch(buf, records, 0), tally


def fired(tally) -> dict:
    """{check id: [packet numbers]} of every check that fired."""
    return {cid: h[1] for cid, h in tally.hits.items() if h[0]}


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def ones_sum(data: bytes) -> int:
    """RFC 1071: the 16-bit ones' complement sum of `data` (odd length padded with a zero)."""
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


# ---- flows and VNIs, as scapy reads them --------------------------------------------------

def scapy_flows(frames, origs):
    """{(outer src, outer dst): [packets, bytes on the wire, largest inner IP packet]}."""
    out = {}
    for f, orig in zip(frames, origs):
        p = Ether(bytes(f))
        outer = p[IPv6] if IPv6 in p and (IP not in p or p.getlayer(IPv6) is p.payload) \
            else p[IP]
        inner = Ether(bytes(p[UDP].payload)[8:])
        size = len(inner[IP]) if inner.type == 0x0800 else \
            len(inner[IPv6]) if inner.type == 0x86DD else 0
        key = (packed(outer.src), packed(outer.dst))
        fl = out.setdefault(key, [0, 0, 0])
        fl[0] += 1
        fl[1] += orig
        fl[2] = max(fl[2], size)
    return out


def test_flows_count_packets_wire_bytes_and_the_largest_inner_packet():
    frames = [C.vxlan(C.inner_icmp()),
              C.vxlan(C.inner_ipv4_of_len(700)),
              C.vxlan(C.inner_tcp(), src=C.UNDER_SRC2),
              C.vxlan(C.inner_arp(), dst=C.UNDER_SRC2),
              C.vxlan(C.inner_ipv6_of_len(400), outer6=True),
              C.vxlan(C.inner_icmp6(), outer6=True),
              C.vxlan(C.inner_ipv4_of_len(300))]
    origs = [len(bytes(f)) for f in frames]
    origs[1] += 1000                  # a longer original: the bytes count what was on the wire
    vx, tally = decode(frames, origs=origs)
    assert vx == len(frames)
    flows = {k: v[:3] for k, v in tally.flows.items()}
    assert flows == scapy_flows(frames, origs)
    assert flows[(packed(C.UNDER_SRC), packed(C.UNDER_DST))][2] == 700     # by hand as well
    assert flows[(packed(C.UNDER_SRC), packed(C.UNDER_SRC2))][2] == 0      # ARP: no L3 packet
    assert tally.vnis == {10: len(frames)}


def test_vnis_count_the_outermost_layer_only():
    frames = [C.nested(2, [7, 8]), C.nested(3, [7, 9, 9]), C.vxlan(C.inner_icmp(), vni=0xFFFFFF)]
    vx, tally = decode(frames, opts=Options(vnis=frozenset({7, 8, 9, 0xFFFFFF})))
    assert vx == 3 and tally.vnis == {7: 2, 0xFFFFFF: 1} and fired(tally) == {}
    vx, tally = decode(frames, opts=Options(vnis=frozenset({7})))
    assert fired(tally) == {"vni-mismatch": [1, 2, 3]}


# ---- one tally whatever the link layer ----------------------------------------------------

def _mixed_frames():
    return [C.vxlan(C.inner_icmp()), C.vxlan(C.inner_tcp(), vni=11),
            C.vxlan(C.inner_udp6(), outer6=True), C.outer_udp_other(),
            C.with_wrong_checksum(C.vxlan(C.inner_icmp(), outer6=True), UDP),
            C.vxlan(C.inner_arp(), df=False)]


MIXED_FIRED = {"vni-mismatch": [2], "udp-checksum": [5], "df-clear": [6]}


def _tally_view(vx, tally):
    return vx, fired(tally), tally.vnis, {k: v[:3] for k, v in tally.flows.items()}


@pytest.mark.parametrize("layer", ["vlan", "qinq", "sll", "sll2", "raw", "raw-by-version"])
def test_every_link_layer_gives_the_ethernet_tally(layer):
    frames = [bytes(f) for f in _mixed_frames()]
    origs = [len(f) for f in frames]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (5, MIXED_FIRED)
    want = _tally_view(vx, tally)
    lt = ETHERNET
    if layer == "vlan":
        other = [f[:12] + b"\x81\x00\x00\x64" + f[12:] for f in frames]
    elif layer == "qinq":
        other = [f[:12] + b"\x88\xa8\x00\xc8\x81\x00\x00\x64" + f[12:] for f in frames]
    elif layer == "sll":
        other, lt = [C.sll(f) for f in frames], SLL
    elif layer == "sll2":
        other, lt = [C.sll2(f) for f in frames], SLL2
    elif layer == "raw":
        other, lt = [f[14:] for f in frames], RAW
    else:
        other = [f[14:] for f in frames]
        lt = [IPV6 if f[12:14] == b"\x86\xdd" else IPV4 for f in frames]
    # bytes on the wire are counted at the capture's own layer: compare the rest
    got = _tally_view(*decode(other, lt=lt, origs=[len(f) for f in other]))
    assert got[:3] == want[:3]
    assert {k: (v[0], v[2]) for k, v in got[3].items()} == \
        {k: (v[0], v[2]) for k, v in want[3].items()}
    assert origs


def test_raw_ip_link_types_hold_only_their_own_version():
    v4, v6 = bytes(C.vxlan(C.inner_icmp()))[14:], bytes(C.vxlan(C.inner_icmp(), outer6=True))[14:]
    assert decode([v4, v6], lt=[IPV4, IPV6])[0] == 2
    vx, tally = decode([v6, v4], lt=[IPV4, IPV6])
    assert vx == 0 and fired(tally) == {} and tally.flows == {}
    assert decode([v4, v6], lt=RAW)[0] == 2
    # a version nibble that is neither 4 nor 6 is no IP packet at all
    assert decode([b"\x55" + v4[1:], b"\x05" + v6[1:]], lt=RAW)[0] == 0


@pytest.mark.parametrize("lt,size", [(ETHERNET, 13), (SLL, 15), (SLL2, 19), (RAW, 0),
                                     (IPV4, 0), (IPV6, 0)])
def test_records_shorter_than_their_link_header_are_other_traffic(lt, size):
    eth = bytes(C.vxlan(C.inner_icmp(), outer6=lt == IPV6))
    frame = {ETHERNET: eth, SLL: C.sll(eth), SLL2: C.sll2(eth)}.get(lt, eth[14:])
    vx, tally = decode([frame[:size], frame[:size + 1]], lt=lt)
    assert vx == 0 and fired(tally) == {}
    # and the batch goes on after them
    vx, tally = decode([frame[:size], frame[:size + 1], frame], lt=lt)
    assert vx == 1 and fired(tally) == {} and tally.vnis == {10: 1}


def test_outer_vlan_tags_end_where_the_record_ends():
    # a tag whose type field is itself a VLAN TPID, and the record ends after it
    f = bytes(C.vxlan(C.inner_icmp()))
    tags = f[:12] + b"\x81\x00\x00\x64\x81\x00"
    vx, tally = decode([tags, tags + b"\x00\x65"], lt=ETHERNET)
    assert vx == 0 and fired(tally) == {}
    # the last record of the buffer: nothing after it to read by mistake
    for rec in (tags, tags + b"\x00\x65", f[:12] + b"\x81\x00"):
        vx, tally = decode([rec], junk=b"")
        assert vx == 0 and fired(tally) == {}


@pytest.mark.parametrize("cut", [41, 42, 43, 49, 50])
def test_outer_headers_cut_by_the_record_are_other_traffic_or_truncated(cut):
    # Ethernet 14 + IPv4 20 + UDP 8 = 42: shorter, no UDP port to go by (other traffic);
    # from there on a VXLAN port and a header cut short: truncated
    f = bytes(C.vxlan(C.inner_icmp()))
    vx, tally = decode([f[:cut]], origs=[len(f)])
    if cut < 42:
        assert (vx, fired(tally)) == (0, {})
    else:
        assert (vx, fired(tally)) == (1, {"truncated": [1]})


# ---- the outer UDP checksum reuses the inner L4 sum: every parity -------------------------

def _inner(kind, payload: bytes, bad_l4: bool):
    if kind == "udp":
        p = C.inner_eth() / IP(src=C.INNER_SRC, dst=C.INNER_DST) / UDP(sport=7, dport=9) / payload
    elif kind == "tcp":
        p = C.inner_eth() / IP(src=C.INNER_SRC, dst=C.INNER_DST) / TCP(sport=7, dport=9) / payload
    elif kind == "icmp":
        p = C.inner_eth() / IP(src=C.INNER_SRC, dst=C.INNER_DST) / ICMP(id=3, seq=4) / payload
    elif kind == "icmp6":
        p = C.inner_eth() / IPv6(src=C.INNER6_SRC, dst=C.INNER6_DST) / \
            ICMPv6EchoRequest(id=3, data=payload)
    else:
        p = C.inner_eth() / IPv6(src=C.INNER6_SRC, dst=C.INNER6_DST) / UDP(sport=7, dport=9) / \
            payload
    if bad_l4:
        layer = {"udp": UDP, "tcp": TCP, "icmp": ICMP, "icmp6": ICMPv6EchoRequest,
                 "udp6": UDP}[kind]
        p = C.with_wrong_checksum(p, layer)
    return bytes(p)


@pytest.mark.parametrize("outer6", [False, True], ids=["outer4", "outer6"])
@pytest.mark.parametrize("kind", ["udp", "tcp", "icmp", "icmp6", "udp6"])
def test_outer_udp_checksum_for_every_parity_of_inner_packet_and_padding(kind, outer6):
    """RFC 768/1071: the outer checksum covers the inner packet and any padding after it.
    Inner L4 lengths of both parities and 0-3 bytes of padding after the inner packet
    (odd and even) put the reused inner sum at every alignment."""
    frames, want = [], {}
    for k in range(4):                 # payload bytes: both parities of the L4 length
        for pad in range(4):           # bytes after the inner IP packet, inside the UDP datagram
            for fault in ("none", "outer", "inner"):
                inner = _inner(kind, bytes(range(0x41, 0x41 + k)), fault == "inner") + \
                    b"\xa5" * pad
                f = C.vxlan(inner, outer6=outer6)
                if fault == "outer":
                    f = C.with_wrong_checksum(f, UDP)
                frames.append(bytes(f))
                if fault != "none":
                    want.setdefault("udp-checksum" if fault == "outer" else "inner-l4-checksum",
                                    []).append(len(frames))
    got = {}
    for no, f in enumerate(frames, 1):
        vx, tally = decode([f])
        assert vx == 1
        for cid in fired(tally):
            got.setdefault(cid, []).append(no)
    assert got == want


def test_outer_udp_checksum_of_nested_vxlan_at_every_parity():
    for k in range(4):
        inner = C.nested(2, inner=_inner("udp", b"z" * k, False))
        bad = C.with_wrong_checksum(C.nested(2, inner=_inner("udp", b"z" * k, False)), UDP)
        vx, tally = decode([inner, bad])
        assert (vx, fired(tally)) == (2, {"udp-checksum": [2]}), k


def test_checksums_off_fires_no_checksum_check_and_still_finds_nested_vxlan():
    frames = [C.with_wrong_checksum(C.vxlan(C.inner_icmp()), IP),
              C.with_wrong_checksum(C.vxlan(C.inner_tcp()), UDP),
              C.vxlan(C.with_wrong_checksum(C.inner_tcp(), IP)),
              C.vxlan(C.with_wrong_checksum(C.inner_udp(), UDP)),
              C.nested(2, [10, 12])]
    vx, tally = decode(frames, opts=Options(checksums=False))
    assert vx == 5 and fired(tally) == {"vni-mismatch": [5]}
    vx, tally = decode(frames)
    assert fired(tally) == {"ip-checksum": [1], "udp-checksum": [2], "inner-ip-checksum": [3],
                            "inner-l4-checksum": [4], "vni-mismatch": [5]}


# The decoder reads a common inner IPv4 packet inline (decode.py) and every other one in
# inner.Inner.ip4: nested VXLAN takes the second for its inner layer, whatever the outer
# one is. `via` puts the same inner frame on each path; they must agree on every case.
VIA = {"inline": lambda frame: C.vxlan(frame),
       "slow path": lambda frame: C.nested(2, inner=frame)}


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("proto,need", [(6, 20), (17, 8), (1, 4), (58, 4), (2, 4)])
def test_inner_l4_header_shorter_than_its_minimum_is_truncated(proto, need, checksums, via):
    """An inner IPv4 packet whose length field agrees with the bytes, but holds fewer L4
    bytes than the protocol's header (TCP 20, UDP 8, ICMP/IGMP/ICMPv6 4)."""
    def frame(n):
        l4 = b"\x00" * n
        if proto == 17 and n >= 8:
            l4 = struct.pack("!HHHH", 0, 0, n, 0) + l4[8:]    # a UDP length that agrees
        ip = IP(src=C.INNER_SRC, dst=C.INNER_DST, proto=proto) / Raw(l4)
        return VIA[via](C.inner_eth() / IP(bytes(ip)))
    vx, tally = decode([frame(need), frame(need - 1)], opts=Options(checksums=checksums))
    assert vx == 2
    got = fired(tally)
    got.pop("inner-l4-checksum", None)       # the zero bytes are no valid checksum
    assert got == {"truncated": [2]}


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("payload", [b"", b"\x00"])
def test_inner_ipv4_other_protocol_is_not_checked(payload, checksums, via):
    ip = IP(src=C.INNER_SRC, dst=C.INNER_DST, proto=47) / Raw(payload)   # GRE
    vx, tally = decode([VIA[via](C.inner_eth() / IP(bytes(ip)))],
                       opts=Options(checksums=checksums))
    assert (vx, fired(tally)) == (1, {})


@pytest.mark.parametrize("via", VIA)
def test_inner_checksums_name_their_packet(via):
    good = VIA[via](C.inner_icmp())
    bad_ip = VIA[via](C.with_wrong_checksum(C.inner_icmp(), IP))
    bad_icmp = VIA[via](C.with_wrong_checksum(C.inner_icmp(), ICMP))
    vx, tally = decode([good, bad_ip, good, bad_icmp])
    assert (vx, fired(tally)) == (4, {"inner-ip-checksum": [2], "inner-l4-checksum": [4]})


def test_inner_tcp6_header_without_payload_is_whole_and_its_checksum_is_checked():
    """ICMPv6 and TCP inside IPv6 go to the slow path: a TCP segment that is exactly its
    20-byte header is whole; one byte less is truncated; a wrong checksum names its packet."""
    seg = C.inner_tcp6()
    assert len(seg[TCP]) == 20
    short = C.inner_eth() / IPv6(bytes(seg[IPv6])[:-1])
    short[IPv6].plen = 19
    frames = [C.vxlan(seg), C.vxlan(C.with_wrong_checksum(seg, TCP)), C.vxlan(short)]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (3, {"inner-l4-checksum": [2], "truncated": [3]})


def test_inner_fragments_are_not_checked_past_their_ip_header():
    big = C.inner_eth() / IP(src=C.INNER_SRC, dst=C.INNER_DST, id=5) / UDP(sport=1, dport=2) / \
        (b"q" * 400)
    first, second = fragment(big, 200)[:2]
    # a wrong L4 checksum in a fragment cannot be seen: only the whole datagram has it
    frames = [C.vxlan(C.with_wrong_checksum(Ether(bytes(first)), UDP)), C.vxlan(second)]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (2, {})


# ---- lengths from the frame: BIG TCP and jumbograms ---------------------------------------

def _ipv4(src, dst, proto, payload: bytes, tot_len=None, flags=0x4000) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload) if tot_len is None else tot_len,
                      1, flags, 64, proto, 0, packed(src), packed(dst))
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def _udp4(src, dst, sport, dport, payload: bytes, length=None) -> bytes:
    n = 8 + len(payload)
    ulen = n if length is None else length
    # the pseudo-header's length as 32 bits (RFC 8200 8.1; Linux sums it so for BIG TCP too)
    pseudo = packed(src) + packed(dst) + struct.pack("!xBI", 17, n)
    hdr = struct.pack("!HHHH", sport, dport, ulen, 0)
    cs = checksum(pseudo + hdr + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, ulen, cs) + payload


ETH = bytes.fromhex("020000000002" "020000000001")  # destination, source MAC


def _big_tcp_frame(inner_payload: int) -> bytes:
    """Linux BIG TCP over VXLAN: inner and outer IPv4 tot_len 0, outer UDP length 0
    (more than 65535 bytes); every length comes from the frame."""
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 0x50, 0x10, 65535, 0, 0) + b"t" * inner_payload
    pseudo = packed(C.INNER_SRC) + packed(C.INNER_DST) + struct.pack("!xBI", 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    inner = ETH + b"\x08\x00" + _ipv4(C.INNER_SRC, C.INNER_DST, 6, tcp, tot_len=0)
    vx = C.vxlan_header(10) + inner
    udp = _udp4(C.UNDER_SRC, C.UNDER_DST, 51234, 4789, vx, length=0)
    return ETH + b"\x08\x00" + _ipv4(C.UNDER_SRC, C.UNDER_DST, 17, udp, tot_len=0)


def test_big_tcp_lengths_come_from_the_frame():
    f = _big_tcp_frame(70000)
    inner_len = len(f) - 14 - 20 - 8 - 8 - 14
    vx, tally = decode([f], opts=Options(underlay_mtu=200000, mtu=200000))
    assert (vx, fired(tally)) == (1, {})
    assert tally.flows[(packed(C.UNDER_SRC), packed(C.UNDER_DST))][:3] == [1, len(f), inner_len]
    vx, tally = decode([f])           # 1500 / 1450 bytes: both far too big
    assert fired(tally) == {"outer-too-big": [1], "inner-too-big": [1]}


def test_big_tcp_with_a_wrong_checksum_is_found():
    f = bytearray(_big_tcp_frame(70000))
    f[-1] ^= 0x01                      # one payload bit: inner TCP and outer UDP sums both change
    vx, tally = decode([bytes(f)], opts=Options(underlay_mtu=200000, mtu=200000))
    assert fired(tally) == {"udp-checksum": [1], "inner-l4-checksum": [1]}


def test_ipv6_jumbogram_length_comes_from_the_frame():
    """RFC 2675: payload length 0 and UDP length 0; the outer UDP checksum still covers
    the whole datagram, with its real length in the pseudo-header."""
    inner = bytes(C.inner_ipv4_of_len(1000)) + b"p" * 65000    # padded past 64 KiB
    payload = C.vxlan_header(10) + inner
    n = 8 + len(payload)
    src, dst = packed(C.UNDER6_SRC), packed(C.UNDER6_DST)
    pseudo = src + dst + struct.pack("!IxxxB", n, 17)
    cs = checksum(pseudo + struct.pack("!HHHH", 51234, 4789, 0, 0) + payload)
    udp = struct.pack("!HHHH", 51234, 4789, 0, cs) + payload
    f = ETH + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, 0, 17, 64) + src + dst + udp
    vx, tally = decode([f], opts=Options(underlay_mtu=200000, mtu=200000))
    assert (vx, fired(tally)) == (1, {})
    assert tally.flows[(src, dst)][:3] == [1, len(f), 1000]
    bad = bytearray(f)
    bad[-1] ^= 0x10
    vx, tally = decode([bytes(bad)], opts=Options(underlay_mtu=200000, mtu=200000))
    assert fired(tally) == {"udp-checksum": [1]}


# ---- outer IPv4 header forms --------------------------------------------------------------

@pytest.mark.parametrize("options", [4, 8, 40])      # 40: the largest, IHL 15
def test_outer_ipv4_options_move_the_udp_header(options):
    inner = bytes(C.inner_icmp())
    f = Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / \
        IP(src=C.UNDER_SRC, dst=C.UNDER_DST, flags="DF", options=b"\x01" * options) / \
        UDP(sport=51234, dport=4789) / Raw(C.vxlan_header(12) + inner)
    vx, tally = decode([f, C.with_wrong_checksum(f, IP), C.with_wrong_checksum(f, UDP)],
                       opts=Options(vnis=frozenset({12})))
    assert vx == 3 and tally.vnis == {12: 3}
    assert fired(tally) == {"ip-checksum": [2], "udp-checksum": [3]}
    assert Ether(bytes(f))[IP].ihl == 5 + options // 4
    # the same options, the UDP header behind them names another port: not VXLAN
    other = Ether(bytes(f))
    other[UDP].dport = 4790
    assert decode([other])[0] == 0


@pytest.mark.parametrize("vhl", [0x44, 0x40, 0x35, 0x56, 0x65, 0x66, 0x5F, 0x50])
def test_outer_header_that_is_no_ipv4_header_is_other_traffic(vhl):
    # IHL below 5 words, or a version other than 4 (RFC 791): not an IPv4 datagram, as
    # Linux's ip_rcv drops it. Version 6 with IHL 5 was read as IPv4 before issue 16.
    f = bytearray(bytes(C.vxlan(C.inner_icmp())))
    f[14] = vhl
    f[16:18] = struct.pack("!H", 4789)    # read as a UDP header at IHL 0, this is port 4789
    vx, tally = decode([bytes(f)])
    assert (vx, fired(tally)) == (0, {})


def test_outer_ipv4_not_udp_is_other_traffic():
    assert decode([C.outer_icmp_other(), C.outer_arp_other(), C.outer_udp_other()])[0] == 0


# ---- fragments ----------------------------------------------------------------------------

def _fragments(ident=0x2222, src=C.UNDER_SRC):
    big = C.vxlan_of_outer_len(1600, df=False, ip_id=ident, src=src)
    return fragment(big, 1000)


def test_later_fragments_follow_their_first_and_count_in_its_flow():
    first, last = _fragments()
    stray = Ether(bytes(last))
    stray[IP].id = 0x3333
    frames = [first, last, last, stray]
    vx, tally = decode(frames, opts=Options(mtu=9000, underlay_mtu=9000))
    # the last fragment ends the datagram: a copy of it (and a stray) belongs to none
    assert vx == 2
    assert fired(tally) == {"outer-fragment": [1, 2], "df-clear": [1, 2]}
    key = (packed(C.UNDER_SRC), packed(C.UNDER_DST))
    assert tally.flows[key][:2] == [2, len(bytes(first)) + len(bytes(last))]


def test_later_fragment_of_a_flow_seen_only_in_fragments():
    # the first fragment opens the flow; a middle one (MF set) keeps the datagram open
    big = C.vxlan_of_outer_len(2600, df=False, ip_id=0x4444)
    f1, f2, f3 = fragment(big, 1000)
    vx, tally = decode([f1, f2, f2, f3], opts=Options(mtu=9000, underlay_mtu=9000))
    assert vx == 4 and tally.flows[(packed(C.UNDER_SRC), packed(C.UNDER_DST))][0] == 4


@pytest.mark.parametrize("others,kept", [(4095, True), (4096, False)])
def test_fragment_memory_is_bounded_and_forgets_the_oldest(others, kept):
    """At most 4096 datagrams await their later fragments; the 4097th evicts the oldest."""
    first, last = _fragments(ident=1)
    first, last = bytes(first), bytes(last)
    frames = [first]
    for ident in range(2, 2 + others):   # other first fragments: the same bytes, other ids
        frames.append(first[:18] + struct.pack("!H", ident) + first[20:])
    frames.append(last)
    vx, tally = decode(frames, opts=Options(mtu=9000, underlay_mtu=9000, checksums=False))
    assert vx == others + 1 + kept


def test_ipv6_middle_fragments_keep_the_datagram_open():
    """Three IPv6 fragments of one VXLAN datagram: the middle one (M set) must not end it."""
    big = Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / IPv6(src=C.UNDER6_SRC, dst=C.UNDER6_DST) / \
        IPv6ExtHdrFragment(id=0x98) / UDP(sport=51234, dport=4789) / \
        Raw(C.vxlan_header(10) + bytes(C.inner_ipv4_of_len(1400)))
    frags = fragment6(big, 600)
    assert len(frags) == 3
    vx, tally = decode(frags, opts=Options(mtu=9000))
    assert vx == 3
    assert fired(tally)["outer-fragment"] == [1, 2, 3]


def test_ipv4_record_cut_before_its_udp_header_is_other_traffic_on_any_port():
    """An IPv4 header with protocol UDP and nothing after it: no port to compare, so not
    VXLAN whatever ports are asked for (port 1 included)."""
    f = bytes(Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC)
              / IP(src=C.UNDER_SRC, dst=C.UNDER_DST, proto=17, len=28))
    for lt, rec in ((ETHERNET, f), (IPV4, f[14:])):
        vx, tally = decode([rec], lt=lt, opts=Options(ports=frozenset({1, 4789})))
        assert (vx, fired(tally)) == (0, {}), lt


def test_ipv6_later_fragment_without_its_first_is_other_traffic():
    big = Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / IPv6(src=C.UNDER6_SRC, dst=C.UNDER6_DST) / \
        IPv6ExtHdrFragment(id=0x99) / UDP(sport=51234, dport=4789) / \
        Raw(C.vxlan_header(10) + bytes(C.inner_ipv4_of_len(1000)))
    first, last = fragment6(big, 600)
    vx, tally = decode([last, first, last, last], opts=Options(mtu=9000))
    assert vx == 2
    assert fired(tally)["outer-fragment"] == [2, 3]
    assert "df-clear" not in fired(tally)          # IPv6 has no DF bit


def test_first_fragment_too_big_by_its_udp_length():
    first, last = _fragments()
    # the datagram is 1600 bytes; its first fragment 1020
    vx, tally = decode([first, last], opts=Options(underlay_mtu=1599, mtu=9000))
    assert fired(tally)["outer-too-big"] == [1]
    vx, tally = decode([first, last], opts=Options(underlay_mtu=1600, mtu=9000))
    assert "outer-too-big" not in fired(tally)


# ---- inner frames -------------------------------------------------------------------------

def test_multicast_inner_source_macs_never_move():
    frames = [C.vxlan(C.inner_icmp(src_mac="03:00:00:00:00:01"), src=C.UNDER_SRC),
              C.vxlan(C.inner_icmp(src_mac="03:00:00:00:00:01"), src=C.UNDER_SRC2),
              C.vxlan(C.inner_icmp(src_mac="02:00:00:00:00:01"), src=C.UNDER_SRC),
              C.vxlan(C.inner_icmp(src_mac="02:00:00:00:00:01"), src=C.UNDER_SRC2),
              C.vxlan(C.inner_icmp(src_mac="02:00:00:00:00:01"), src=C.UNDER_SRC2),
              C.vxlan(C.inner_icmp(src_mac="02:00:00:00:00:01"), src=C.UNDER_SRC)]
    vx, tally = decode(frames)
    assert fired(tally) == {"mac-move": [4, 6]}


def test_short_inner_frames_still_move_macs_and_name_their_type():
    # inner frames shorter than Ethernet + IPv4 headers take the decoder's other road
    short = Ether(src="02:00:00:00:00:07", dst="02:00:00:00:00:08", type=0x88B5) / (b"x" * 4)
    arp = bytes(Ether(src="02:00:00:00:00:09", dst="ff:ff:ff:ff:ff:ff") / ARP())[:14 + 8]
    frames = [C.vxlan(short, src=C.UNDER_SRC), C.vxlan(short, src=C.UNDER_SRC2),
              C.vxlan(arp), C.vxlan(bytes(short)[:13]), C.vxlan(b"")]
    vx, tally = decode(frames)
    assert vx == 5
    assert fired(tally) == {"unknown-inner-type": [1, 2], "mac-move": [2], "truncated": [3, 4, 5]}


def test_inner_vlan_tags_end_where_the_frame_ends():
    inner = bytes(C.inner_eth(vlans=(100, 200), qinq=True) / IP(src=C.INNER_SRC, dst=C.INNER_DST)
                  / ICMP())
    vx, tally = decode([C.vxlan(inner[:14 + 4 + 3]), C.vxlan(inner)])
    assert fired(tally) == {"inner-vlan": [1, 2], "truncated": [1]}


def test_inner_ipv4_header_cut_or_lying_about_its_length():
    good = bytes(C.inner_icmp())
    ihl_big = bytearray(good)
    ihl_big[14] = 0x4F                            # 60-byte header, past the packet's end
    cut = good[:14 + 19]                          # 19 of the 20 header bytes
    lying = bytearray(good)
    lying[16:18] = struct.pack("!H", 19)          # total length below the header's 20
    frames = [C.vxlan(good), C.vxlan(bytes(ihl_big)), C.vxlan(cut), C.vxlan(bytes(lying))]
    vx, tally = decode(frames)
    assert vx == 4
    assert fired(tally)["truncated"] == [2, 3, 4]


def test_inner_ipv6_header_cut_and_plen_zero():
    good = bytes(C.inner_udp6())
    cut = good[:14 + 39]
    jumbo = bytearray(good)
    jumbo[18:20] = b"\0\0"                        # payload length 0: taken from the frame
    vx, tally = decode([C.vxlan(cut), C.vxlan(bytes(jumbo)), C.vxlan(good)])
    assert vx == 3 and fired(tally) == {"truncated": [1]}
    key = (packed(C.UNDER_SRC), packed(C.UNDER_DST))
    assert tally.flows[key][2] == len(good) - 14


def test_inner_ipv6_fragment_and_routing_headers_stop_the_l4_check():
    frag = C.inner_eth() / IPv6(src=C.INNER6_SRC, dst=C.INNER6_DST) / \
        IPv6ExtHdrFragment(m=1, id=3) / UDP(sport=1, dport=2) / b"frag"
    routed = C.inner_ipv6_ext([C.routing("fd00:3::1")])
    frames = [C.vxlan(C.with_wrong_checksum(Ether(bytes(frag)), UDP)),
              C.vxlan(C.with_wrong_checksum(Ether(bytes(routed)), UDP)),
              C.vxlan(C.with_wrong_checksum(C.inner_udp6(), UDP))]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (3, {"inner-l4-checksum": [3]})


@pytest.mark.parametrize("outer6,limit", [(False, 1450), (True, 1430)])
def test_inner_mtu_follows_the_outer_ip_version(outer6, limit):
    """The default overlay MTU is the underlay's minus 50 (IPv4) or 70 (IPv6) bytes."""
    frames = [C.vxlan(C.inner_ipv6_of_len(limit), outer6=outer6),
              C.vxlan(C.inner_ipv6_of_len(limit + 1), outer6=outer6),
              C.vxlan(C.inner_ipv4_of_len(limit), outer6=outer6),
              C.vxlan(C.inner_ipv4_of_len(limit + 1), outer6=outer6)]
    vx, tally = decode(frames, opts=Options(underlay_mtu=9000, mtu=None))
    assert fired(tally) == {}
    vx, tally = decode(frames, opts=Options(underlay_mtu=1500))
    assert fired(tally) == {"inner-too-big": [2, 4], "outer-too-big": [2, 4]}


def test_legacy_port_and_other_ports():
    frames = [C.vxlan(C.inner_icmp(), dport=8472), C.vxlan(C.inner_icmp(), dport=4789),
              C.vxlan(C.inner_icmp(), dport=4790)]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (2, {"legacy-port": [1]})
    vx, tally = decode(frames, opts=Options(ports=frozenset({4790})))
    assert (vx, fired(tally)) == (1, {})


# ---- snap-length cuts: a header cut is truncated, a payload cut is not -------------------

def _inner_l4(version, proto):
    ip = IP(src=C.INNER_SRC, dst=C.INNER_DST) if version == 4 else \
        IPv6(src=C.INNER6_SRC, dst=C.INNER6_DST)
    l4 = {6: TCP(sport=1, dport=2), 17: UDP(sport=1, dport=2), 1: ICMP(),
          58: ICMPv6EchoRequest()}[proto]
    return bytes(C.inner_eth() / ip / l4 / (b"d" * 64))


@pytest.mark.parametrize("version,proto,l4_min", [(4, 6, 20), (4, 17, 8), (4, 1, 4),
                                                   (6, 6, 20), (6, 17, 8), (6, 58, 4)])
@pytest.mark.parametrize("outer6", [False, True], ids=["outer4", "outer6"])
def test_snap_length_cut_fires_truncated_only_inside_a_header(version, proto, l4_min, outer6):
    """tcpdump -s N: the record holds the first N bytes, the original length says how long
    the frame was. Cut inside the inner L4 header: truncated; anywhere after it: not."""
    f = bytes(C.vxlan(_inner_l4(version, proto), outer6=outer6))
    l4_at = (14 + (40 if outer6 else 20) + 8 + 8) + 14 + (20 if version == 4 else 40)
    cuts = [l4_at + l4_min - 1, l4_at + l4_min, l4_at + l4_min + 1, len(f) - 1]
    vx, tally = decode([f[:n] for n in cuts], origs=[len(f)] * len(cuts))
    assert vx == len(cuts)
    assert fired(tally) == {"truncated": [1]}


@pytest.mark.parametrize("outer6", [False, True], ids=["outer4", "outer6"])
def test_snap_length_cut_inside_the_inner_ip_header_is_truncated(outer6):
    f = bytes(C.vxlan(_inner_l4(6, 17), outer6=outer6))
    l3_at = 14 + (40 if outer6 else 20) + 8 + 8 + 14
    cuts = [l3_at + 39, l3_at + 40 + 8]
    vx, tally = decode([f[:n] for n in cuts], origs=[len(f)] * 2)
    assert (vx, fired(tally)) == (2, {"truncated": [1]})


# ---- inner ARP and inner jumbograms -------------------------------------------------------

@pytest.mark.parametrize("hlen,plen", [(6, 4), (8, 16), (0, 0)])
def test_inner_arp_is_whole_exactly_when_its_addresses_fit(hlen, plen):
    # RFC 826: 8 fixed bytes, then sender and target hardware and protocol addresses
    arp = struct.pack("!HHBBH", 1, 0x0800, hlen, plen, 1) + b"\x11" * (2 * (hlen + plen))
    eth = bytes.fromhex("ffffffffffff" "020000000009" "0806")
    vx, tally = decode([C.vxlan(eth + arp), C.vxlan(eth + arp[:-1]), C.vxlan(eth + arp[:7])])
    assert (vx, fired(tally)) == (3, {"truncated": [2, 3]})


def test_inner_udp_jumbogram_takes_its_length_from_the_ipv6_packet():
    """RFC 2675: inside an IPv6 jumbogram (payload length 0) a UDP length of 0 means the
    datagram runs to the end of the packet; its checksum still covers all of it."""
    src, dst = packed(C.INNER6_SRC), packed(C.INNER6_DST)
    payload = b"j" * 66000
    n = 8 + len(payload)
    cs = checksum(src + dst + struct.pack("!IxxxB", n, 17) +
                  struct.pack("!HHHH", 1, 2, 0, 0) + payload)
    udp = struct.pack("!HHHH", 1, 2, 0, cs) + payload
    inner = bytes.fromhex("020000000008" "020000000007" "86dd") + \
        struct.pack("!IHBB", 6 << 28, 0, 17, 64) + src + dst + udp
    opts = Options(underlay_mtu=200000, mtu=200000)
    outer = _udp4(C.UNDER_SRC, C.UNDER_DST, 51234, 4789, C.vxlan_header(10) + inner, length=0)
    f = ETH + b"\x08\x00" + _ipv4(C.UNDER_SRC, C.UNDER_DST, 17, outer, tot_len=0)
    vx, tally = decode([f], opts=opts)
    assert (vx, fired(tally)) == (1, {})
    assert tally.flows[(packed(C.UNDER_SRC), packed(C.UNDER_DST))][2] == 40 + n
    bad = bytearray(f)
    bad[-1] ^= 0x02
    vx, tally = decode([bytes(bad)], opts=opts)
    assert fired(tally) == {"inner-l4-checksum": [1], "udp-checksum": [1]}


# ---- outer IPv6 header chains -------------------------------------------------------------

def test_outer_ipv6_zero_checksum_is_reported_even_behind_a_routing_header():
    routed = C.vxlan_ipv6_ext([C.routing("fd00:3::1")], C.inner_icmp(), udp_chksum=0)
    plain = C.vxlan(C.inner_icmp(), outer6=True, udp_chksum=0)
    vx, tally = decode([routed, plain])
    assert (vx, fired(tally)) == (2, {"udp-zero-checksum-ipv6": [1, 2]})


def test_outer_ipv6_chain_cut_by_the_record_or_not_udp_is_other_traffic():
    f = bytes(C.vxlan_ipv6_ext([C.hop_by_hop(), C.dest_opts()], C.inner_icmp()))
    icmp6 = bytes(Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) /
                  IPv6(src=C.UNDER6_SRC, dst=C.UNDER6_DST) / ICMPv6EchoRequest())
    # 14 + 40 + 16 + 24: the UDP header starts at 94; cut inside it, and inside the chain
    vx, tally = decode([f[:94 + 7], f[:60], icmp6, f], origs=[len(f), len(f), len(icmp6), len(f)])
    assert vx == 1 and fired(tally) == {}
    assert decode([f[:94 + 8]], origs=[len(f)])[0] == 1
    # cut inside the chain as the buffer's last record: nothing after it to read by mistake
    for cut in (55, 60, 94 - 1, 94 + 7):
        vx, tally = decode([f[:cut]], origs=[len(f)], junk=b"")
        assert (vx, fired(tally)) == (0, {}), cut


def test_outer_ipv6_atomic_fragment_is_no_fragment():
    # RFC 8021: a Fragment header with offset 0 and M clear holds the whole datagram
    atomic = C.ipv6_first_fragment_whole(C.inner_icmp(), m=0)
    first = C.ipv6_first_fragment_whole(C.inner_icmp(), m=1, frag_id=0x78)
    vx, tally = decode([atomic, first])
    assert (vx, fired(tally)) == (2, {"outer-fragment": [2]})


# ---- inner UDP lengths and nested VXLAN held to its bytes ----------------------------------

def test_inner_udp_length_must_match_its_ip_packet():
    def with_udp_len(n):
        p = C.inner_udp()
        p[UDP].len = len(p[UDP]) + n
        return C.vxlan(p)
    frames = [with_udp_len(0), with_udp_len(1), with_udp_len(-1), C.vxlan(C.inner_udp())]
    zero = C.inner_udp()
    zero[UDP].len = 0                  # 0 means "from the IP layer" only past 65535 bytes
    frames.append(C.vxlan(zero))
    vx, tally = decode(frames, opts=Options(checksums=False))
    assert (vx, fired(tally)) == (5, {"truncated": [2, 3, 5]})


def _inner_ipv6_udp_of(n: int, plen=None) -> bytes:
    """An inner IPv6/UDP packet whose UDP datagram is n bytes, its UDP length field 0."""
    src, dst = packed(C.INNER6_SRC), packed(C.INNER6_DST)
    payload = b"u" * (n - 8)
    cs = checksum(src + dst + struct.pack("!IxxxB", n, 17) + struct.pack("!HHHH", 1, 2, 0, 0)
                  + payload)
    return bytes.fromhex("020000000008" "020000000007" "86dd") + \
        struct.pack("!IHBB", 6 << 28, n if plen is None else plen, 17, 64) + src + dst + \
        struct.pack("!HHHH", 1, 2, 0, cs) + payload


def _big_outer(inner: bytes) -> bytes:
    outer = _udp4(C.UNDER_SRC, C.UNDER_DST, 51234, 4789, C.vxlan_header(10) + inner, length=0)
    return ETH + b"\x08\x00" + _ipv4(C.UNDER_SRC, C.UNDER_DST, 17, outer, tot_len=0)


def test_inner_udp_length_zero_is_a_jumbogram_only_past_65535_bytes():
    # 65535 bytes fit the UDP length field, so 0 there is wrong; 65536 do not (RFC 2675)
    frames = [_big_outer(_inner_ipv6_udp_of(65535)), _big_outer(_inner_ipv6_udp_of(65536, plen=0))]
    vx, tally = decode(frames, opts=Options(underlay_mtu=200000, mtu=200000))
    assert (vx, fired(tally)) == (2, {"truncated": [1]})


def test_nested_vxlan_is_held_to_its_own_lengths():
    inner = C.inner_icmp()
    inner[IP].len = len(inner[IP]) + 4
    long_ip = C.nested(2, inner=Ether(bytes(inner)))
    vx, tally = decode([C.nested(2), long_ip])
    assert (vx, fired(tally)) == (2, {"truncated": [2]})


def _tunnel_in_tunnel(inner, tunnel_src="10.2.0.1", dport=4789, vni=10):
    """VXLAN whose inner frame is itself IPv4/UDP/VXLAN from `tunnel_src` to `dport`."""
    level2 = Ether(src="02:00:00:00:02:01", dst="02:00:00:00:02:02") / \
        IP(src=tunnel_src, dst="10.2.0.2", flags="DF") / UDP(sport=50002, dport=dport) / \
        Raw(C.vxlan_header(vni) + bytes(inner))
    return C.vxlan(level2)


def test_nested_macs_move_behind_the_inner_tunnels_source():
    host = C.inner_icmp(src_mac="02:42:ac:02:00:77")
    frames = [_tunnel_in_tunnel(host, "10.2.0.1"), _tunnel_in_tunnel(host, "10.2.0.1"),
              _tunnel_in_tunnel(host, "10.2.0.9")]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (3, {"mac-move": [3]})


def test_nested_vxlan_to_the_legacy_port_is_named():
    vx, tally = decode([_tunnel_in_tunnel(C.inner_icmp(), dport=8472),
                        _tunnel_in_tunnel(C.inner_icmp(), dport=4789)])
    assert (vx, fired(tally)) == (2, {"legacy-port": [1]})


def _inner6(nh: int, payload: bytes, plen=None) -> bytes:
    """Inner Ethernet + IPv6 header (next header `nh`) + payload, built by hand."""
    return bytes.fromhex("020000000008" "020000000007" "86dd") + \
        struct.pack("!IHBB", 6 << 28, len(payload) if plen is None else plen, nh, 64) + \
        packed(C.INNER6_SRC) + packed(C.INNER6_DST) + payload


def test_inner_ipv6_header_alone_or_with_one_8_byte_extension_is_whole():
    hbh8 = bytes([59, 0, 1, 4, 0, 0, 0, 0])     # Hop-by-Hop, 8 bytes (PadN), then no next header
    frames = [C.vxlan(_inner6(59, b"")), C.vxlan(_inner6(0, hbh8)), C.vxlan(_inner6(60, hbh8))]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (3, {})
    assert tally.flows[(packed(C.UNDER_SRC), packed(C.UNDER_DST))][2] == 48


@pytest.mark.parametrize("nh", [0, 43, 60])
def test_inner_ipv6_extension_header_cut_by_the_payload_length_is_truncated(nh):
    # 4 bytes of payload: too few for any extension header (8 at least, RFC 8200 section 4)
    frames = [C.vxlan(_inner6(nh, b"\x3b\x00\x00\x00")), C.vxlan(_inner6(59, b""))]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (2, {"truncated": [1]})


def test_a_cut_inner_ipv6_header_counts_no_inner_packet():
    vx, tally = decode([C.vxlan(_inner6(59, b"")[:14 + 39])])
    assert fired(tally) == {"truncated": [1]}
    assert tally.flows[(packed(C.UNDER_SRC), packed(C.UNDER_DST))][:3] == [1, 14 + 20 + 8 + 8 + 53, 0]


def _tunnel_in_ipv6_tunnel(inner, tunnel_src="fd42:2::1"):
    level2 = Ether(src="02:00:00:00:06:01", dst="02:00:00:00:06:02") / \
        IPv6(src=tunnel_src, dst="fd42:2::2") / UDP(sport=50006, dport=4789) / \
        Raw(C.vxlan_header(10) + bytes(inner))
    return C.vxlan(level2)


def test_vxlan_nested_in_inner_ipv6_moves_macs_and_is_held_to_its_lengths():
    host = C.inner_icmp(src_mac="02:42:ac:02:00:78")
    lying = C.inner_icmp(src_mac="02:42:ac:02:00:79")
    lying[IP].len = len(lying[IP]) + 4
    frames = [_tunnel_in_ipv6_tunnel(host), _tunnel_in_ipv6_tunnel(host, "fd42:2::9"),
              _tunnel_in_ipv6_tunnel(Ether(bytes(lying)))]
    vx, tally = decode(frames)
    assert (vx, fired(tally)) == (3, {"mac-move": [2], "truncated": [3]})


# ---- the VXLAN header and a cut inner Ethernet header -------------------------------------

def _largest_inner(tally):
    return tally.flows[(packed(C.UNDER_SRC), packed(C.UNDER_DST))][2]


def test_vxlan_header_alone_still_counts_its_vni():
    f = C.vxlan(b"", vni=11)                     # 8 header bytes, no inner frame
    vx, tally = decode([f])
    assert (vx, tally.vnis) == (1, {11: 1})
    assert fired(tally) == {"vni-mismatch": [1], "truncated": [1]}
    assert _largest_inner(tally) == 0


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_vxlan_header_cut_counts_no_vni_and_no_inner_packet(cut):
    f = bytes(C.vxlan(C.inner_icmp()))
    at = 14 + 20 + 8
    vx, tally = decode([f[:at + cut]], origs=[len(f)])
    assert (vx, fired(tally), tally.vnis) == (1, {"truncated": [1]}, {})
    assert _largest_inner(tally) == 0


def test_i_flag_clear_with_a_reserved_bit_set_is_both_faults():
    vx, tally = decode([C.vxlan(C.inner_icmp(), flags=0x00, res1=1),
                        C.vxlan(C.inner_icmp(), flags=0x08, res1=1)])
    assert fired(tally) == {"vxlan-flags": [1], "vxlan-reserved": [1, 2]}


def test_inner_ethernet_header_alone_or_cut():
    eth = bytes.fromhex("020000000008" "020000000007" "88b5")
    vx, tally = decode([C.vxlan(eth)])
    assert fired(tally) == {"unknown-inner-type": [1]}
    assert _largest_inner(tally) == 0
    vx, tally = decode([C.vxlan(eth[:13])])
    assert fired(tally) == {"truncated": [1]}
    assert _largest_inner(tally) == 0


# ---- inner IPv4 header forms --------------------------------------------------------------

def _inner4_header_only(vlans=()) -> bytes:
    """Inner Ethernet (+ tags) and a bare 20-byte IPv4 header, protocol 253 (RFC 3692)."""
    ip = IP(src=C.INNER_SRC, dst=C.INNER_DST, proto=253)
    assert len(ip) == 20
    return bytes(C.inner_eth(vlans=vlans) / ip)


def test_inner_ipv4_header_alone_is_whole():
    for vlans, want in (((), {}), ((100,), {"inner-vlan": [1]})):
        vx, tally = decode([C.vxlan(_inner4_header_only(vlans))])
        assert (vx, fired(tally)) == (1, want), vlans
        assert _largest_inner(tally) == 20


def test_inner_vlan_tag_ending_the_frame_names_the_type_after_it():
    eth = bytes.fromhex("020000000008" "020000000007" "8100" "0064" "88b5")
    vx, tally = decode([C.vxlan(eth)])
    assert fired(tally) == {"inner-vlan": [1], "unknown-inner-type": [1]}


@pytest.mark.parametrize("cut,what", [(14 + 3, "tag"), (14 + 4 + 19, "ipv4")])
def test_inner_frame_cut_after_a_vlan_tag_counts_no_inner_packet(cut, what):
    vx, tally = decode([C.vxlan(_inner4_header_only((100,))[:cut])])
    assert fired(tally) == {"inner-vlan": [1], "truncated": [1]}, what
    assert _largest_inner(tally) == 0


def test_inner_ipv4_header_shorter_than_20_bytes_is_truncated():
    bad = bytearray(bytes(C.inner_icmp()))
    bad[14] = 0x44                                # IHL 4 words: 16 bytes (RFC 791: at least 5)
    vx, tally = decode([C.vxlan(bytes(bad))])
    assert fired(tally)["truncated"] == [1]
    assert _largest_inner(tally) == 0


def test_snap_length_cut_inside_inner_ipv4_options():
    inner = bytes(C.inner_eth() / IP(src=C.INNER_SRC, dst=C.INNER_DST, options=b"\x01" * 40) /
                  ICMP() / (b"o" * 32))
    f = bytes(C.vxlan(inner))
    cut = 14 + 20 + 8 + 8 + 14 + 30                # inside the 40 bytes of options
    vx, tally = decode([f[:cut], f], origs=[len(f), len(f)], junk=b"\xff" * 64)
    assert (vx, fired(tally)) == (2, {"truncated": [1]})


def test_inner_protocol_without_a_known_header_is_whole_at_its_ip_header():
    # protocol 253 has no minimum header vxinspect knows: 0 bytes of it are enough,
    # with or without checksums, whole or cut by the snap length right after the IP header
    whole = C.vxlan(_inner4_header_only())
    ip = IP(src=C.INNER_SRC, dst=C.INNER_DST, proto=253) / (b"e" * 30)
    longer = bytes(C.vxlan(C.inner_eth() / IP(bytes(ip))))
    cut = longer[:len(longer) - 30]
    for checksums in (True, False):
        vx, tally = decode([whole, cut], origs=[len(bytes(whole)), len(longer)],
                           opts=Options(checksums=checksums))
        assert (vx, fired(tally)) == (2, {}), checksums


def test_raw_ip_whose_source_address_looks_like_an_ethertype():
    # bytes 12-13 of a raw IPv4 packet are its source's first two bytes: 8.0.x.x reads as
    # 0x0800 there, which must not make the record look like Ethernet
    f = bytes(C.vxlan(C.inner_icmp(), src="8.0.1.1", vni=12))[14:]
    vx, tally = decode([f], lt=RAW, opts=Options(vnis=frozenset({12})))
    assert (vx, fired(tally), tally.vnis) == (1, {}, {12: 1})
    assert list(tally.flows) == [(packed("8.0.1.1"), packed(C.UNDER_DST))]


def test_records_back_to_back_from_the_start_of_the_buffer():
    frames = [C.vxlan(C.inner_icmp(), vni=10), C.vxlan(C.inner_tcp(), vni=11, src=C.UNDER_SRC2),
              C.vxlan(C.inner_udp(), vni=12, outer6=True)]
    vx, tally = decode(frames, junk=b"", opts=Options(vnis=frozenset({10, 11, 12})))
    assert (vx, fired(tally), tally.vnis) == (3, {}, {10: 1, 11: 1, 12: 1})
    assert set(tally.flows) == {(packed(C.UNDER_SRC), packed(C.UNDER_DST)),
                                (packed(C.UNDER_SRC2), packed(C.UNDER_DST)),
                                (packed(C.UNDER6_SRC), packed(C.UNDER6_DST))}


def test_an_original_length_below_the_captured_one_is_no_cut():
    # some writers leave orig_len 0; the record is still whole
    f = bytes(C.vxlan(C.inner_icmp()))
    vx, tally = decode([f, f], origs=[0, len(f) - 1])
    assert (vx, fired(tally)) == (2, {})


def test_an_outer_length_past_the_original_frame_is_truncated_even_when_cut():
    # the record holds the headers (92 bytes, up to the inner ICMP header); the original
    # length says where the frame ended, but the IPv4 and UDP lengths claim 4 bytes more
    p = C.vxlan(C.inner_icmp())
    liar = bytes(C.vxlan(C.inner_icmp(), ip_len=len(p[IP]) + 4, udp_len=len(p[UDP]) + 4))
    honest = bytes(p)
    vx, tally = decode([honest[:92], liar[:92]], origs=[len(honest), len(honest)])
    assert fired(tally) == {"truncated": [2]}


def test_outer_ipv4_options_and_a_udp_header_ending_the_record():
    inner = bytes(C.inner_icmp())
    f = bytes(Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) /
              IP(src=C.UNDER_SRC, dst=C.UNDER_DST, flags="DF", options=b"\x01" * 8) /
              UDP(sport=51234, dport=4789) / Raw(C.vxlan_header(10) + inner))
    u = 14 + 28
    # the whole frame, the UDP header ending the record (VXLAN, its header cut), one byte
    # short of it (no port to go by); the last is the buffer's last record
    vx, tally = decode([f, f[:u + 8], f[:u + 7]], origs=[len(f)] * 3, junk=b"")
    assert (vx, fired(tally)) == (2, {"truncated": [2]})
    vx, tally = decode([f[:u + 7], f], origs=[len(f)] * 2)      # and the batch goes on
    assert (vx, fired(tally)) == (1, {})


def test_ip_and_udp_headers_alone_to_the_vxlan_port():
    f = bytes(C.vxlan(C.inner_icmp()))[14:14 + 28]      # raw IPv4 + UDP, nothing more
    vx, tally = decode([f], lt=RAW, origs=[100])
    assert (vx, fired(tally)) == (1, {"truncated": [1]})


@pytest.mark.parametrize("payload", [4, 0])
def test_tiny_last_fragment_follows_its_first(payload):
    big = C.vxlan_of_outer_len(1504, df=False, ip_id=0x5151)
    first, last = fragment(big, 1480)
    assert len(last[IP].payload) == 4
    tiny = Ether(bytes(last))
    tiny[IP].remove_payload()
    tiny = tiny / Raw(bytes(last[IP].payload)[:payload])
    tiny[IP].len = None
    tiny[IP].chksum = None
    tiny = bytes(tiny)
    assert len(tiny) == 14 + 20 + payload
    vx, tally = decode([first, tiny], opts=Options(mtu=9000, underlay_mtu=9000))
    assert vx == 2 and fired(tally)["outer-fragment"] == [1, 2]


def _ipv6_fragments(ident, size=1000, fragsize=400):
    big = Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / IPv6(src=C.UNDER6_SRC, dst=C.UNDER6_DST) / \
        IPv6ExtHdrFragment(id=ident) / UDP(sport=51234, dport=4789) / \
        Raw(C.vxlan_header(10) + bytes(C.inner_ipv4_of_len(size)))
    return [bytes(f) for f in fragment6(big, fragsize)]


def test_ipv6_fragments_are_told_apart_by_their_whole_32_bit_id():
    a = _ipv6_fragments(0x01000077)
    b = _ipv6_fragments(0x02000077)
    assert len(a) == len(b) >= 3                 # first, middle ones (M set), last
    frames = [f for pair in zip(a, b) for f in pair]
    vx, tally = decode(frames, opts=Options(mtu=9000))
    assert vx == len(frames)
    assert fired(tally)["outer-fragment"] == list(range(1, len(frames) + 1))
    assert tally.flows[(packed(C.UNDER6_SRC), packed(C.UNDER6_DST))][:2] == \
        [len(frames), sum(len(f) for f in frames)]


def test_ipv6_later_fragment_with_no_data_follows_its_first():
    a = _ipv6_fragments(0x0303)
    last = bytearray(a[-1][:14 + 40 + 8])         # the IPv6 and Fragment headers only
    last[18:20] = struct.pack("!H", 8)
    vx, tally = decode(a[:-1] + [bytes(last)], opts=Options(mtu=9000))
    assert vx == len(a)


# ---- outer lengths that lie, and where in the buffer a record sits --------------------------

def test_an_outer_ip_length_past_the_frame_still_decodes_the_inner_packet():
    p = C.vxlan(C.inner_ipv4_of_len(300))
    liar = C.vxlan(C.inner_ipv4_of_len(300), ip_len=len(p[IP]) + 4)
    vx, tally = decode([liar])
    assert fired(tally) == {"truncated": [1]}
    assert _largest_inner(tally) == 300


def test_outer_udp_length_zero_below_64_kib_is_truncated_wherever_the_record_sits():
    p = C.vxlan(C.inner_icmp())
    zero = bytearray(bytes(p))
    zero[14 + 20 + 4:14 + 20 + 6] = b"\0\0"       # UDP length 0 in a short datagram
    zero[14 + 20 + 6:14 + 20 + 8] = b"\0\0"       # (no checksum: only the length is at fault)
    for junk in (b"\xee" * 7, b"\xee" * 70000):   # a record far into a large buffer, too
        vx, tally = decode([bytes(zero)], junk=junk)
        assert (vx, fired(tally)) == (1, {"truncated": [1]}), len(junk)


@pytest.mark.parametrize("size,truncated", [(65535, True), (65536, False)])
def test_outer_udp_length_zero_means_from_ip_only_past_65535(size, truncated):
    # UDP datagram of `size` bytes behind an IPv4 tot_len 0 (BIG TCP); RFC 2675 keeps the
    # 0 for lengths the 16-bit field cannot hold
    inner = bytes(C.inner_ipv4_of_len(1000))
    inner += b"p" * (size - 8 - 8 - len(inner))
    f = _big_outer(inner)
    assert len(f) - 14 - 20 == size
    vx, tally = decode([f], opts=Options(underlay_mtu=200000, mtu=200000))
    assert fired(tally) == ({"truncated": [1]} if truncated else {})


def test_big_outer_datagram_with_a_wrong_udp_length_is_truncated():
    f = bytearray(_big_outer(bytes(C.inner_ipv4_of_len(1000)) + b"p" * 70000))
    f[14 + 20 + 4:14 + 20 + 6] = struct.pack("!H", 1234)
    vx, tally = decode([bytes(f)], opts=Options(underlay_mtu=200000, mtu=200000, checksums=False))
    assert fired(tally) == {"truncated": [1]}


@pytest.mark.parametrize("delta,inner_judged", [(+4, True), (-4, False)])
def test_outer_udp_length_that_disagrees_is_truncated(delta, inner_judged):
    # the outer checksum covers what the UDP length says: with the length wrong it is not
    # judged. The inner ICMP checksum (wrong here) is judged when the inner packet lies
    # inside both the IP packet and the datagram: a UDP length 4 short cuts it off.
    p = C.vxlan(C.with_wrong_checksum(C.inner_icmp(), ICMP))
    vx, tally = decode([C.vxlan(C.with_wrong_checksum(C.inner_icmp(), ICMP),
                                udp_len=len(p[UDP]) + delta)])
    want = {"truncated": [1]}
    if inner_judged:
        want["inner-l4-checksum"] = [1]
    assert fired(tally) == want


@pytest.mark.parametrize("udp_len,vnis", [(7, {10: 1}), (8, {}), (0, {10: 1})])
def test_outer_udp_length_below_a_vxlan_header(udp_len, vnis):
    # below 8 the length is no length at all and the IP packet says where the datagram
    # ends; 8 is an empty datagram, and the VXLAN header after it belongs to none
    vx, tally = decode([C.vxlan(C.inner_icmp(), udp_len=udp_len)])
    assert (vx, fired(tally), tally.vnis) == (1, {"truncated": [1]}, vnis)


def test_padded_first_fragment_holding_only_the_udp_header():
    big = C.vxlan_of_outer_len(600, df=False, ip_id=0x6161)
    frags = fragment(big, 8)
    first = bytes(frags[0])
    assert len(first) == 14 + 20 + 8
    padded = first + b"\0" * (60 - len(first))     # Ethernet minimum frame
    vx, tally = decode([padded] + [bytes(f) for f in frags[1:]], opts=Options(mtu=9000))
    assert vx == len(frags)


def test_inner_length_from_the_frame_only_when_the_outer_lengths_hold():
    # outer IPv4 total length 4 past the frame (UDP length right): the datagram is not
    # whole, so an inner tot_len 0 is not taken as BIG TCP (the inner packet is 1460 bytes)
    ip = IP(src=C.INNER_SRC, dst=C.INNER_DST, proto=253) / (b"b" * 1440)
    inner = bytearray(bytes(C.inner_eth() / ip))
    inner[16:18] = b"\0\0"
    inner[24:26] = b"\0\0"
    inner[24:26] = struct.pack("!H", checksum(bytes(inner[14:34])))
    p = C.vxlan(bytes(inner))
    liar = C.vxlan(bytes(inner), ip_len=len(p[IP]) + 4)
    vx, tally = decode([liar])
    assert fired(tally) == {"truncated": [1], "outer-too-big": [1]}
    vx, tally = decode([p])
    assert fired(tally) == {"inner-too-big": [1], "outer-too-big": [1]}


# ---- --plan on records cut right after the fields it reads ----------------------------------

def test_plan_reads_the_inner_mac_and_vni_up_to_the_last_byte_there_is(tmp_path):
    path = tmp_path / "seed.toml"
    path.write_text(SEED_PLAN)
    plan = load_plan(path)
    n1, n2 = plan.node("network-1"), plan.node("network-2")

    def frame(inner_dst_mac, vni):
        return bytes(C.vxlan(C.inner_icmp(dst=inner_dst_mac), vni=vni, src=str(n1.underlay_ip),
                             dst=str(n2.underlay_ip)))
    u = 14 + 20                                  # the outer UDP header
    good, wrong_mac, wrong_vni = (frame(n2.vtep_mac, 10), frame(n1.vtep_mac, 10),
                                  frame(n2.vtep_mac, 11))
    opts = Options(plan=plan, vnis=frozenset({10, 11}))
    # cut after the inner destination MAC (8 + 8 + 6 bytes): the fdb is consulted
    vx, tally = decode([good[:u + 22], wrong_mac[:u + 22]], opts=opts, origs=[len(good)] * 2)
    assert fired(tally)["plan-mismatch"] == [2]
    # cut after the VXLAN header (8 + 8 bytes): only the VNI can be held against the plan
    vx, tally = decode([good[:u + 16], wrong_vni[:u + 16]], opts=opts, origs=[len(good)] * 2)
    assert fired(tally)["plan-mismatch"] == [2]


def test_a_fragment_s_udp_checksum_is_never_judged():
    # MF set: more of the datagram follows, so its checksum cannot be held against these
    # bytes, even when the UDP length happens to end inside them
    p = C.vxlan(C.inner_icmp(), df=False)
    p[IP].flags = "MF"
    bad = C.with_wrong_checksum(p, UDP)
    vx, tally = decode([bad])
    assert fired(tally) == {"outer-fragment": [1], "df-clear": [1]}


# ---- the fast path takes the common packet ------------------------------------------------
#
# The fast path and the slow helpers (outer.Outer, inner.Inner) must give the same
# answers, so no count or check tells which one decoded a packet. A fast path narrowed
# by one comparison would still be right, and several times slower: these tests count
# the calls into the slow helpers instead.

class _Calls:
    def __init__(self):
        self.outer = self.layer = self.l4 = 0


@pytest.fixture
def slow_calls(monkeypatch):
    """Counts of calls into the slow paths while the test decodes."""
    import vxinspect.decode as dec
    calls = _Calls()

    class CountingOuter(dec.Outer):
        def parse(self, *a):
            calls.outer += 1
            return super().parse(*a)

    class CountingInner(dec.Inner):
        def layer(self, *a):
            calls.layer += 1
            return super().layer(*a)

        def l4(self, *a):
            calls.l4 += 1
            return super().l4(*a)

    monkeypatch.setattr(dec, "Outer", CountingOuter)
    monkeypatch.setattr(dec, "Inner", CountingInner)
    return calls


def _inner_ip4_header_only():
    """An inner IPv4 packet that is its 20-byte header and nothing else (protocol 253,
    RFC 3692's experimental number: no L4 header to check)."""
    return C.inner_eth() / IP(src=C.INNER_SRC, dst=C.INNER_DST, proto=253, flags="DF")


# ICMP, TCP and IGMP checksums are checked inline; any other protocol's L4 (there is
# none here) is looked at by Inner.l4, once per packet.
@pytest.mark.parametrize("name, inner, l4_calls", [
    ("icmp", C.inner_icmp(), 0),
    ("tcp", C.inner_tcp(), 0),
    ("igmp", C.inner_eth() / IP(src=C.INNER_SRC, dst="224.0.0.1", proto=2, flags="DF")
     / Raw(bytes.fromhex("1164ee9b00000000")), 0),   # IGMPv2 query (RFC 2236), checksum by hand
    ("ip header only", _inner_ip4_header_only(), 3),
])
def test_common_packets_never_reach_the_slow_paths(slow_calls, name, inner, l4_calls):
    frames = [C.vxlan(inner), C.vxlan(inner, dport=C.LEGACY_PORT), C.vxlan(inner, vni=42)]
    vx, tally = decode(frames, opts=Options(ports=frozenset({4789, 8472})))
    assert vx == 3
    assert tally.vnis == {10: 2, 42: 1}         # decoded, by whichever path
    assert fired(tally) == {"legacy-port": [2], "vni-mismatch": [3]}
    assert (slow_calls.outer, slow_calls.layer, slow_calls.l4) == (0, 0, l4_calls), name


def test_the_fast_path_reads_a_record_that_ends_with_its_headers(slow_calls):
    """A record exactly as long as the headers the fast path unpacks (outer Ethernet, IPv4,
    UDP: 42 bytes) is read inline; so is a VXLAN layer that ends with its inner IPv4
    header (VXLAN 8, Ethernet 14, IPv4 20: 42 bytes)."""
    bare = Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / IP(src=C.UNDER_SRC, dst=C.UNDER_DST,
                                                            flags="DF") / UDP(dport=4789)
    assert len(bare) == 42
    vx, tally = decode([bare])
    assert (vx, fired(tally)) == (1, {"truncated": [1]})   # UDP to 4789 without a VXLAN header
    assert slow_calls.outer == 0
    f = C.vxlan(_inner_ip4_header_only())
    assert len(f) == 42 + 42
    vx, tally = decode([f])
    assert (vx, fired(tally)) == (1, {})
    assert (slow_calls.outer, slow_calls.layer) == (0, 1)   # the bare datagram's only


def test_inner_udp_goes_to_the_slow_path_that_finds_nested_vxlan(slow_calls):
    vx, tally = decode([C.vxlan(C.inner_udp()), C.nested(2)])
    assert (vx, fired(tally)) == (2, {})
    # inner UDP once in each packet, and the nested layer's own ICMP
    assert (slow_calls.outer, slow_calls.l4) == (0, 3)


# ---- lengths the fast path holds against the frame -----------------------------------------

def test_a_padded_first_fragment_is_not_read_past_its_ip_packet():
    """An outer first fragment that carries only the UDP header, padded to Ethernet's 60
    bytes: the padding is no VXLAN header, and the datagram's length (its UDP length)
    says the rest comes in later fragments."""
    ip = IP(src=C.UNDER_SRC, dst=C.UNDER_DST, flags="MF", id=0x3131, proto=17)
    f = Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / ip / UDP(sport=1, dport=4789, len=108,
                                                               chksum=0)
    f = bytes(f)
    assert len(f) == 42
    vx, tally = decode([f + b"\0" * 18])
    assert vx == 1
    # as without the padding: a fragment (DF clear), its VXLAN header in a later one
    assert fired(tally) == fired(decode([f])[1]) == {
        "df-clear": [1], "outer-fragment": [1], "truncated": [1]}


def test_an_ip_length_past_the_frame_still_reads_the_vxlan_header_it_has():
    """The outer IPv4 total length promises 100 bytes more than the frame holds (and the
    capture says the wire had no more): truncated, and the VXLAN header that is there
    still counts its VNI."""
    good = C.vxlan(C.inner_icmp(), vni=42)
    n = len(good[IP])
    f = C.vxlan(C.inner_icmp(), vni=42, ip_len=n + 100)
    vx, tally = decode([f])
    assert tally.vnis == {42: 1}
    assert fired(tally).keys() == {"truncated", "vni-mismatch"}


def test_an_ip_length_shorter_than_its_udp_header_still_reads_the_vxlan_header_it_has():
    """The outer IPv4 total length says 24 bytes (less than IPv4 and UDP headers), but
    the frame holds the whole datagram: truncated, and the VXLAN header that is there
    still counts its VNI, as when the length is too long."""
    f = C.vxlan(C.inner_icmp(), vni=42, ip_len=24)
    vx, tally = decode([f], opts=Options(checksums=False))
    assert tally.vnis == {42: 1}
    assert fired(tally).keys() == {"truncated", "vni-mismatch"}


@pytest.mark.parametrize("offset", [0, 70000])
def test_udp_length_zero_is_truncated_below_64_kib(offset):
    """RFC 768: a UDP length below 8 is wrong; RFC 2675's length 0 means "more than
    65535 bytes" and only then. Where the packet sits in the capture buffer does not
    matter (the buffer holds many records: offsets above 64 KiB are common)."""
    f = C.vxlan(C.inner_icmp(), udp_len=0)
    vx, tally = decode([f], junk=b"\xee" * (offset or 7))
    assert "truncated" in fired(tally)
    assert tally.vnis == {10: 1}


@pytest.mark.parametrize("datagram, jumbo", [(65535, False), (65536, True)])
def test_ipv6_udp_length_zero_means_jumbo_only_above_65535(datagram, jumbo):
    """RFC 2675 section 4: UDP length 0 only for a datagram longer than 65535 bytes."""
    payload = C.vxlan_header(10) + bytes(C.inner_ipv4_of_len(1000))
    payload += b"p" * (datagram - 8 - len(payload))
    src, dst = packed(C.UNDER6_SRC), packed(C.UNDER6_DST)
    udp = struct.pack("!HHHH", 51234, 4789, 0, 0) + payload     # checksum 0: not checked
    assert len(udp) == datagram
    f = ETH + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, 0, 17, 64) + src + dst + udp
    vx, tally = decode([f], opts=Options(underlay_mtu=200000, mtu=200000))
    assert vx == 1
    got = fired(tally)
    got.pop("udp-zero-checksum-ipv6")
    assert got == ({} if jumbo else {"truncated": [1]})


def _rewrap6(pkt):
    """The same VXLAN packet (VNI 10) over an outer IPv6 header: its first layer then
    takes the slow path."""
    return C.vxlan(bytes(pkt)[14 + 20 + 8 + 8:], outer6=True)


@pytest.mark.parametrize("outer6", [False, True])
@pytest.mark.parametrize("depth", [2, 3])
def test_nested_vxlan_macs_are_behind_the_inner_source_address(outer6, depth):
    """A MAC seen inside nested VXLAN is behind the tunnel that carried it: the IPv4
    source address (4 bytes) of the packet around it, as the outermost MAC is behind the
    outer one. The innermost MAC's second byte is odd: only the first byte's lowest bit
    says multicast (IEEE 802 I/G)."""
    inner_mac = "02:01:ac:02:00:62"
    pkt = C.nested(depth, inner=C.inner_icmp(src_mac=inner_mac))
    vx, tally = decode([_rewrap6(pkt) if outer6 else pkt])
    assert tally.macs[(10, bytes.fromhex(inner_mac.replace(":", "")))] == \
        packed(f"10.{depth}.0.1")
    outer_src = C.UNDER6_SRC if outer6 else C.UNDER_SRC
    assert tally.macs[(10, bytes.fromhex("020000000201"))] == packed(outer_src)


@pytest.mark.parametrize("outer6", [False, True])
@pytest.mark.parametrize("depth", [2, 3])
def test_nested_inner_ipv4_length_past_its_datagram_is_truncated(outer6, depth):
    """Nested VXLAN whose innermost IPv4 header claims 100 bytes more than its datagram
    carries, though every outer length agrees: the capture is whole, so that is a lie."""
    lie = C.inner_icmp()
    lie[IP].len = len(lie[IP]) + 100
    pkt = C.nested(depth, inner=Ether(bytes(lie)))
    vx, tally = decode([_rewrap6(pkt) if outer6 else pkt], opts=Options(checksums=False))
    assert (vx, fired(tally)) == (1, {"truncated": [1]})
