"""Scapy helpers that build VXLAN test frames for tests/test_checks.py.

Everything here is independent of vxinspect. VXLAN headers are built as raw
bytes (never scapy's VXLAN layer, whose defaults are GPE-style), and inner
frames are embedded as raw bytes after the VXLAN header so that scapy computes
the outer UDP checksum over exactly the bytes on the wire.

Checksums are always computed by scapy; a "wrong" checksum is derived from the
correct one so it is guaranteed wrong (and never 0 / 0xffff).
"""
from __future__ import annotations

import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, PadN)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

VXLAN_PORT = 4789
LEGACY_PORT = 8472

# Underlay (veth-like), IPv4 and IPv6.
UNDER_SRC = "192.168.1.138"
UNDER_SRC2 = "192.168.1.139"
UNDER_DST = "192.168.2.142"
UNDER6_SRC = "fd00:1::138"
UNDER6_DST = "fd00:2::142"
OUTER_SMAC = "02:00:c0:a8:01:8a"
OUTER_DMAC = "02:00:c0:a8:02:8e"

# Overlay.
INNER_SRC = "172.2.0.2"
INNER_DST = "172.2.1.3"
INNER6_SRC = "fd42:2::2"
INNER6_DST = "fd42:2:1::3"
INNER_SMAC = "02:42:ac:02:00:02"
INNER_DMAC = "02:42:ac:02:01:03"
INNER6_SMAC = "02:42:ac:02:06:02"
"""Default inner source MAC behind the IPv6 underlay: `vxlan(..., outer6=True)` swaps
INNER_SMAC for it so that mixed IPv4/IPv6-underlay captures never look like a mac-move."""

ETHERTYPE_8021Q = 0x8100
ETHERTYPE_8021AD = 0x88A8


def vxlan_header(vni: int = 10, flags: int = 0x08, res1: int = 0, res2: int = 0) -> bytes:
    """RFC 7348 header; res1 is the 24 bits after the flags byte, res2 the last byte."""
    return struct.pack("!II", (flags << 24) | res1, (vni << 8) | res2)


def _wrong(good: int) -> int:
    for delta in (0x0101, 0x0202, 0x0404):
        w = good ^ delta
        if w not in (0, 0xFFFF):
            return w
    raise AssertionError("unreachable")


def with_wrong_checksum(pkt: Packet, layer) -> Packet:
    """A copy of pkt whose first `layer` has a wrong checksum (everything else recomputed)."""
    built = pkt.__class__(bytes(pkt))
    obj = built[layer]
    field = "chksum" if any(f.name == "chksum" for f in obj.fields_desc) else "cksum"
    good = getattr(obj, field)
    q = pkt.copy()
    setattr(q[layer], field, _wrong(good))
    return q


def checksum_of(pkt: Packet, layer) -> int:
    obj = pkt.__class__(bytes(pkt))[layer]
    field = "chksum" if any(f.name == "chksum" for f in obj.fields_desc) else "cksum"
    return getattr(obj, field)


# ---------------------------------------------------------------- inner frames

def inner_eth(ethertype=None, src=INNER_SMAC, dst=INNER_DMAC, vlans=(), qinq=False) -> Packet:
    """Inner Ethernet header, optionally with VLAN tags (the first one 802.1ad if qinq).

    `ethertype` (if given) is set on the last header, i.e. the type after all tags.
    """
    layers = [Ether(src=src, dst=dst)]
    for i, vid in enumerate(vlans):
        layers.append(Dot1AD(vlan=vid) if (i == 0 and qinq) else Dot1Q(vlan=vid))
    if ethertype is not None:
        layers[-1].type = ethertype
    hdr = layers[0]
    for layer in layers[1:]:
        hdr = hdr / layer
    return hdr


def inner_icmp(src_mac=INNER_SMAC, payload=b"ping-payload-0123456789", **eth) -> Packet:
    return inner_eth(src=src_mac, **eth) / IP(src=INNER_SRC, dst=INNER_DST, flags="DF") / \
        ICMP(type=8, id=0x4242, seq=1) / Raw(payload)


def inner_tcp(**eth) -> Packet:
    return inner_eth(**eth) / IP(src=INNER_SRC, dst=INNER_DST, flags="DF") / \
        TCP(sport=40000, dport=80, flags="PA", seq=1000, ack=2000) / Raw(b"GET / HTTP/1.1\r\n\r\n")


def inner_udp(chksum=None, **eth) -> Packet:
    u = UDP(sport=40001, dport=53)
    if chksum is not None:
        u.chksum = chksum
    return inner_eth(**eth) / IP(src=INNER_SRC, dst=INNER_DST, flags="DF") / u / Raw(b"\x12\x34dns-query")


def inner_arp(**eth) -> Packet:
    return inner_eth(dst="ff:ff:ff:ff:ff:ff", **{k: v for k, v in eth.items() if k != "dst"}) / \
        ARP(op=1, hwsrc=INNER_SMAC, psrc=INNER_SRC, pdst=INNER_DST)


def inner_icmp6(**eth) -> Packet:
    return inner_eth(**eth) / IPv6(src=INNER6_SRC, dst=INNER6_DST) / \
        ICMPv6EchoRequest(id=7, seq=1, data=b"ping6-payload")


def inner_tcp6(**eth) -> Packet:
    return inner_eth(**eth) / IPv6(src=INNER6_SRC, dst=INNER6_DST) / \
        TCP(sport=40002, dport=443, flags="S", seq=1)


def inner_udp6(**eth) -> Packet:
    return inner_eth(**eth) / IPv6(src=INNER6_SRC, dst=INNER6_DST) / \
        UDP(sport=40003, dport=53) / Raw(b"\x56\x78dns6")


def inner_ipv4_of_len(total_len: int, **eth) -> Packet:
    """Inner Ethernet/IPv4/ICMP whose IPv4 total length is exactly total_len."""
    assert total_len >= 28
    p = inner_eth(**eth) / IP(src=INNER_SRC, dst=INNER_DST, flags="DF") / \
        ICMP(type=8, id=1, seq=1) / Raw(b"x" * (total_len - 28))
    assert len(p[IP]) == total_len
    return p


def inner_ipv6_of_len(total_len: int, **eth) -> Packet:
    """Inner Ethernet/IPv6/UDP whose length (40 + payload length) is exactly total_len."""
    assert total_len >= 48
    p = inner_eth(**eth) / IPv6(src=INNER6_SRC, dst=INNER6_DST) / \
        UDP(sport=1, dport=2) / Raw(b"y" * (total_len - 48))
    assert len(p[IPv6]) == total_len
    return p


# ---------------------------------------------------------------- IPv6 extension headers
#
# Lengths are chosen so that every header is longer than 8 bytes (Hdr Ext Len > 0): a
# decoder that gets the length rule ((Hdr Ext Len + 1) * 8, RFC 8200 section 4) wrong in
# any way lands somewhere else.

def hop_by_hop(pad: int = 12) -> Packet:
    """Hop-by-Hop Options, 2 + 2 + pad bytes (16 by default: Hdr Ext Len 1)."""
    return IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * pad)])


def dest_opts(pad: int = 20) -> Packet:
    """Destination Options, 2 + 2 + pad bytes (24 by default: Hdr Ext Len 2)."""
    return IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * pad)])


def routing(*addresses: str, segleft: int | None = None) -> Packet:
    """Type 0 Routing header (8 + 16 per address); segments left defaults to all."""
    return IPv6ExtHdrRouting(addresses=list(addresses),
                             segleft=len(addresses) if segleft is None else segleft)


def atomic_fragment(frag_id: int = 0x55) -> Packet:
    """A Fragment header with offset 0 and M clear: the whole packet (RFC 8021)."""
    return IPv6ExtHdrFragment(m=0, offset=0, id=frag_id)


def _chain(ip: Packet, exts) -> Packet:
    for e in exts:
        ip = ip / e.copy()
    return ip


def inner_ipv6_ext(exts, l4=None, **eth) -> Packet:
    """Inner Ethernet/IPv6/<exts>/L4 (UDP to port 53 with a payload by default)."""
    if l4 is None:
        l4 = UDP(sport=40004, dport=53) / Raw(b"\x9a\xbcext-query")
    return inner_eth(**eth) / _chain(IPv6(src=INNER6_SRC, dst=INNER6_DST), exts) / l4


def vxlan_ipv6_ext(exts, inner, vni: int = 10, udp_chksum: int | None = None) -> Packet:
    """IPv6 outer with extension headers `exts` before UDP/VXLAN/`inner`."""
    udp = UDP(sport=51234, dport=VXLAN_PORT)
    if udp_chksum is not None:
        udp.chksum = udp_chksum
    return Ether(src=OUTER_SMAC, dst=OUTER_DMAC) / \
        _chain(IPv6(src=UNDER6_SRC, dst=UNDER6_DST, hlim=64), exts) / udp / \
        Raw(vxlan_header(vni) + _v6_host(bytes(inner)))


# ---------------------------------------------------------------- outer frames

def _mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def _v6_host(inner_b: bytes) -> bytes:
    if inner_b[6:12] == _mac(INNER_SMAC):
        inner_b = inner_b[:6] + _mac(INNER6_SMAC) + inner_b[12:]
    return inner_b


def vxlan(inner, vni: int = 10, *, flags: int = 0x08, res1: int = 0, res2: int = 0,
          header: bytes | None = None, outer6: bool = False, dport: int = VXLAN_PORT,
          sport: int = 51234, df: bool = True, src: str | None = None, dst: str | None = None,
          udp_chksum: int | None = None, ip_len: int | None = None, udp_len: int | None = None,
          plen: int | None = None, outer_vlans=(), outer_qinq: bool = False,
          ip_id: int = 0x1234, smac: str = OUTER_SMAC) -> Packet:
    """Outer Ethernet/IP/UDP/VXLAN around `inner` (a scapy frame or bytes)."""
    inner_b = bytes(inner)
    if outer6:
        inner_b = _v6_host(inner_b)
    hdr = header if header is not None else vxlan_header(vni, flags, res1, res2)
    eth = Ether(src=smac, dst=OUTER_DMAC)
    l2 = eth
    for i, vid in enumerate(outer_vlans):
        l2 = l2 / (Dot1AD(vlan=vid) if (i == 0 and outer_qinq) else Dot1Q(vlan=vid))
    if outer6:
        ip = IPv6(src=src or UNDER6_SRC, dst=dst or UNDER6_DST, hlim=64)
        if plen is not None:
            ip.plen = plen
    else:
        ip = IP(src=src or UNDER_SRC, dst=dst or UNDER_DST, ttl=64, id=ip_id,
                flags="DF" if df else 0)
        if ip_len is not None:
            ip.len = ip_len
    udp = UDP(sport=sport, dport=dport)
    if udp_chksum is not None:
        udp.chksum = udp_chksum
    if udp_len is not None:
        udp.len = udp_len
    return l2 / ip / udp / Raw(hdr + inner_b)


def vxlan_of_outer_len(outer_len: int, outer6: bool = False, **kw) -> Packet:
    """VXLAN packet whose outer IP packet is exactly outer_len bytes (inner IPv4/ICMP)."""
    inner_len = outer_len - (70 if outer6 else 50)
    p = vxlan(inner_ipv4_of_len(inner_len), outer6=outer6, **kw)
    assert len(p[IPv6 if outer6 else IP]) == outer_len
    return p


def nested(depth: int, vnis=None, inner=None) -> Packet:
    """VXLAN nested `depth` deep: `depth` VXLAN headers. vnis[0] is the outermost."""
    vnis = list(vnis) if vnis is not None else [10] * depth
    assert len(vnis) == depth
    # innermost host MAC depends on depth: it sits behind a depth-specific tunnel IP
    cur = inner if inner is not None else inner_icmp(src_mac="02:42:ac:02:00:%02x" % (0x60 + depth))
    for level in range(depth, 1, -1):  # wrap levels depth..2 as inner Ethernet frames
        cur = Ether(src="02:00:00:00:%02x:01" % level, dst="02:00:00:00:%02x:02" % level) / \
            IP(src="10.%d.0.1" % level, dst="10.%d.0.2" % level, flags="DF") / \
            UDP(sport=50000 + level, dport=VXLAN_PORT) / Raw(vxlan_header(vnis[level - 1]) + bytes(cur))
    return vxlan(cur, vni=vnis[0])


def outer_udp_other(dport=53, payload=b"\x00\x01other", df=True) -> Packet:
    return Ether(src=OUTER_SMAC, dst=OUTER_DMAC) / \
        IP(src=UNDER_SRC, dst=UNDER_DST, flags="DF" if df else 0) / UDP(sport=5353, dport=dport) / Raw(payload)


def outer_icmp_other() -> Packet:
    return Ether(src=OUTER_SMAC, dst=OUTER_DMAC) / IP(src=UNDER_SRC, dst=UNDER_DST, flags="DF") / \
        ICMP(type=8, id=9, seq=9) / Raw(b"underlay ping")


def outer_arp_other() -> Packet:
    return Ether(src=OUTER_SMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=OUTER_SMAC, psrc=UNDER_SRC,
                                                               pdst="192.168.1.1")


def ipv6_first_fragment_whole(inner, vni=10, m=1, offset=0, frag_id=0x77) -> Packet:
    """IPv6 outer with a Fragment header (M/offset as given) carrying a whole UDP/VXLAN datagram."""
    return Ether(src=OUTER_SMAC, dst=OUTER_DMAC) / IPv6(src=UNDER6_SRC, dst=UNDER6_DST) / \
        IPv6ExtHdrFragment(m=m, offset=offset, id=frag_id) / \
        UDP(sport=51234, dport=VXLAN_PORT) / Raw(vxlan_header(vni) + _v6_host(bytes(inner)))


# ---------------------------------------------------------------- link-layer re-wrapping

def strip_ether(frame: bytes) -> bytes:
    return bytes(frame)[14:]


def sll(frame: bytes) -> bytes:
    """Linux cooked v1 header (LINKTYPE_LINUX_SLL) in place of the Ethernet header."""
    f = bytes(frame)
    proto = f[12:14]
    return struct.pack("!HHH", 0, 1, 6) + f[6:12] + b"\0\0" + proto + f[14:]


def sll2(frame: bytes) -> bytes:
    """Linux cooked v2 header (LINKTYPE_LINUX_SLL2) in place of the Ethernet header."""
    f = bytes(frame)
    proto = f[12:14]
    return proto + b"\0\0" + struct.pack("!IHBB", 2, 1, 0, 6) + f[6:12] + b"\0\0" + f[14:]
