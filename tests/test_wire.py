"""vtep.wire and vtep.checksum against scapy, the reference packet model."""
import os
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from vtep import checksum, wire


@pytest.mark.parametrize("vni", [0, 1, 10, 4242, 0xABCDEF, wire.VNI_MAX])
def test_pack_equals_scapy(vni):
    assert wire.pack(vni) == bytes(VXLAN(flags=0x08, vni=vni))


def test_gpe_style_header_is_not_rfc7348():
    # Older scapy releases default VXLAN() to the GPE-style flags 0x0C with a
    # next-protocol byte: the reason the tests always pass flags=0x08.
    h = wire.unpack(bytes(VXLAN(flags=0x0C, NextProtocol=3, vni=10)))
    assert not h.valid and h.flags & wire.FLAG_I and h.vni == 10


def test_unpack_roundtrip_and_fields():
    raw = bytes([0x08 | 0x40, 1, 2, 3, 0x12, 0x34, 0x56, 0x78])
    h = wire.unpack(raw)
    assert (h.flags, h.reserved1, h.vni, h.reserved2) == (0x48, 0x010203, 0x123456, 0x78)
    assert not h.valid
    assert wire.unpack(wire.pack(77)) == wire.Header(0x08, 0, 77, 0)
    assert wire.unpack(wire.pack(77)).valid


def test_pack_into_preallocated_buffer():
    buf = bytearray(20)
    wire.pack_into(buf, 4, 10)
    assert bytes(buf[4:12]) == wire.pack(10) and buf[:4] == bytes(4)


def test_pack_rejects_out_of_range_vni():
    with pytest.raises(ValueError):
        wire.pack(wire.VNI_MAX + 1)


def test_overheads_match_a_real_encapsulation():
    inner = Ether() / IP(dst="172.2.1.2") / ICMP() / (b"x" * 100)
    for outer, ovh in ((IP(dst="192.168.2.142"), wire.OVERHEAD_IPV4),
                       (IPv6(dst="fd00::2"), wire.OVERHEAD_IPV6)):
        pkt = outer / UDP(dport=wire.VXLAN_PORT) / VXLAN(flags=0x08, vni=10) / inner
        assert len(bytes(pkt)) - len(bytes(inner[IP])) == ovh
    assert (wire.OVERHEAD_IPV4, wire.OVERHEAD_IPV6) == (50, 70)
    assert wire.overlay_mtu(1500) == 1450 and wire.overlay_mtu(9000) == 8950
    assert wire.overlay_mtu(1500, ipv6=True) == 1430


def test_constants():
    assert (wire.VXLAN_PORT, wire.VXLAN_PORT_LINUX_LEGACY, wire.HEADER_LEN, wire.FLAG_I) == \
        (4789, 8472, 8, 0x08)
    assert wire.VNI_MAX == 2**24 - 1


@pytest.mark.parametrize("size", [0, 1, 2, 3, 19, 20, 501, 1400, 1401])
def test_checksum_equals_scapy(size):
    rnd = random.Random(size)
    payload = bytes(rnd.randrange(256) for _ in range(size))
    ip = IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=size) / UDP(sport=1, dport=2) / payload))
    hdr = bytes(ip)[:20]
    assert checksum.verify(hdr)
    assert checksum.checksum(hdr[:10] + b"\0\0" + hdr[12:]) == ip.chksum
    udp = bytes(ip[UDP])
    pseudo = checksum.pseudo_header_sum(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
                                        17, len(udp))
    assert checksum.verify(udp, pseudo)
    assert checksum.checksum(udp[:6] + b"\0\0" + udp[8:], pseudo) == ip[UDP].chksum


def test_checksum_detects_any_single_bit_flip():
    data = bytearray(bytes(TCP(sport=1, dport=2) / os.urandom(64)))
    data[16:18] = checksum.checksum(bytes(data)).to_bytes(2, "big")
    assert checksum.verify(data)
    for bit in range(0, len(data) * 8, 7):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not checksum.verify(bad)
