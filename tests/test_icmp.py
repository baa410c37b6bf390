"""The ICMP "too big" errors a userspace VTEP writes back through its TAP (vtep.icmp).

Each expected error is built independently with scapy, every header field written out:
what RFC 792/1191 (IPv4 "fragmentation needed", with the next-hop MTU) and RFC 4443
(ICMPv6 "packet too big") say the error holds, and the values the kernel's own ICMP
sender uses (TOS 0xC0 = IPTOS_PREC_INTERNETCONTROL from <linux/ip.h>, the default TTL
and hop limit 64, traffic class and flow label 0). Checksums are scapy's.

Sources: an IPv4 error comes from the peer's VTEP address (the node's stack drops a
packet from its own address as a martian); an IPv6 one from this node's own IPv6 VTEP
address (the kernel forwards and honours such a packet: measured, see vtep.icmp).
"""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import ARP, Ether

from vtep import icmp

SENDER_MAC, PEER_MAC = "06:b3:31:77:ab:d9", "5a:0c:71:86:59:11"
SENDER, TARGET = "172.2.0.2", "172.2.1.2"
PEER_VTEP = "172.2.1.0"
VIA = bytes([172, 2, 1, 0])
SENDER6, TARGET6 = "fd00::2", "fd00:1::9"
NODE_VTEP6 = "fd00::"                   # the node's own IPv6 VTEP address: the /64's first
VIA6 = bytes.fromhex("fd00" + "00" * 14)   # NODE_VTEP6, 16 bytes

IPTOS_PREC_INTERNETCONTROL = 0xC0   # <linux/ip.h>: the TOS of the kernel's ICMP errors
DEFAULT_TTL = 64                   # net.ipv4.ip_default_ttl, net.ipv6.conf.*.hop_limit
QUOTE_V4 = 576 - 20 - 8            # RFC 1812 4.3.2.3: the error fits 576 bytes
QUOTE_V6 = 1280 - 40 - 8           # RFC 4443 2.4(c): the error fits the IPv6 minimum MTU


def v4(size, flags="DF", **ip):
    """An IPv4/TCP frame from the inner sender with `size` bytes of payload."""
    return bytes(Ether(src=SENDER_MAC, dst=PEER_MAC) /
                 IP(src=SENDER, dst=TARGET, flags=flags, id=4321, ttl=63, **ip) /
                 TCP(sport=40000, dport=80) / (b"d" * size))


def v6(size, src=SENDER6):
    return bytes(Ether(src=SENDER_MAC, dst=PEER_MAC) / IPv6(src=src, dst=TARGET6, hlim=63) /
                 UDP(sport=5000, dport=53) / (b"v" * size))


def expected_v4(frame, mtu, via=PEER_VTEP):
    """RFC 792 destination unreachable, code 4 (fragmentation needed and DF set), with
    RFC 1191's next-hop MTU, from the peer's VTEP to the sender, quoting the packet."""
    return bytes(Ether(src=PEER_MAC, dst=SENDER_MAC, type=0x0800) /
                 IP(version=4, ihl=5, tos=IPTOS_PREC_INTERNETCONTROL, id=0, flags=0, frag=0,
                    ttl=DEFAULT_TTL, proto=1, src=via, dst=SENDER) /
                 ICMP(type=3, code=4, reserved=0, nexthopmtu=mtu) / frame[14:14 + QUOTE_V4])


def expected_v6(frame, mtu, src=SENDER6, via=NODE_VTEP6):
    """RFC 4443 3.2 packet too big, from the node's IPv6 VTEP address back to the source."""
    return bytes(Ether(src=PEER_MAC, dst=SENDER_MAC, type=0x86DD) /
                 IPv6(version=6, tc=0, fl=0, nh=58, hlim=DEFAULT_TTL, src=via, dst=src) /
                 ICMPv6PacketTooBig(type=2, code=0, mtu=mtu) / frame[14:14 + QUOTE_V6])


# payload sizes: the whole packet fits the quote, exactly fits it, one byte over, far over
@pytest.mark.parametrize("size", [0, 1, QUOTE_V4 - 40, QUOTE_V4 - 39, 1400, 8900])
def test_ipv4_frag_needed_is_the_rfc_error_byte_for_byte(size):
    frame = v4(size)
    err = icmp.too_big(memoryview(frame), 1350, VIA)  # the data path hands a memoryview
    assert err == expected_v4(frame, 1350)
    # the whole IP datagram of the error: at most 576 bytes (RFC 1812 4.3.2.3)
    assert len(err) - 14 == min(576, len(frame) - 14 + 28)
    assert err[14:16] == b"\x45\xc0" and err[22] == 64 and err[23] == 1  # literal bytes


def test_ipv4_error_quotes_the_header_of_a_packet_with_no_payload():
    frame = bytes(Ether(src=SENDER_MAC, dst=PEER_MAC) /
                  IP(src=SENDER, dst=TARGET, flags="DF", proto=6))  # 34 bytes: header only
    assert len(frame) == 34
    assert icmp.too_big(frame, 1200, VIA) == expected_v4(frame, 1200)
    assert icmp.too_big(frame[:33], 1200, VIA) is None  # not even an IPv4 header


def test_ipv4_error_comes_from_the_address_it_is_given():
    frame = v4(1400)
    err = icmp.too_big(frame, 1400, bytes([10, 20, 30, 40]))
    assert err == expected_v4(frame, 1400, via="10.20.30.40")


def test_ipv4_error_carries_any_next_hop_mtu_unchanged():
    # RFC 1191: the 16-bit next-hop MTU, even below 576 or 68: no IPv6-style floor
    frame = v4(1400)
    for mtu in (0, 68, 552, 1280, 1450, 65535):
        assert icmp.too_big(frame, mtu, VIA) == expected_v4(frame, mtu), mtu


@pytest.mark.parametrize("frame,why", [
    (v4(1400, flags=0), "DF clear: the sender lets routers fragment (RFC 791)"),
    (v4(1400, flags="MF"), "MF without DF: a fragment that may be fragmented again"),
    (v4(1400, flags="evil"), "the reserved flag bit is not DF"),
    (v4(1400, flags=0, frag=256), "a later fragment (offset 2048) without DF"),
    (v4(1400)[:14] + b"\x65" + v4(1400)[15:], "ethertype IPv4 but version 6"),
    (v4(1400)[:14] + b"\x35" + v4(1400)[15:], "ethertype IPv4 but version 3"),
    (bytes(Ether(src=SENDER_MAC, dst=PEER_MAC) / ARP(pdst=TARGET)) + b"\0" * 100,
     "not IP: ARP"),
])
def test_no_ipv4_error_when_none_is_due(frame, why):
    assert icmp.too_big(frame, 1350, VIA) is None, why


def test_no_ipv4_error_without_a_vtep_address_to_send_it_from():
    assert icmp.too_big(v4(1400), 1350, None) is None


@pytest.mark.parametrize("size", [0, 1, QUOTE_V6 - 48, QUOTE_V6 - 47, 1400, 8900])
def test_ipv6_packet_too_big_is_the_rfc_error_byte_for_byte(size):
    frame = v6(size)
    err = icmp.too_big(memoryview(frame), 1350, None, VIA6)
    assert err == expected_v6(frame, 1350)
    assert len(err) - 14 == min(1280, len(frame) - 14 + 48)
    assert err[14] >> 4 == 6 and err[20] == 58 and err[21] == 64  # literal header bytes


def test_ipv6_error_for_a_bare_header_with_no_payload():
    frame = bytes(Ether(src=SENDER_MAC, dst=PEER_MAC) / IPv6(src=SENDER6, dst=TARGET6, nh=59))
    assert len(frame) == 54
    assert icmp.too_big(frame, 1400, None, VIA6) == expected_v6(frame, 1400)
    assert icmp.too_big(frame[:53], 1400, None, VIA6) is None


@pytest.mark.parametrize("mtu,reported", [(1279, 1280), (1000, 1280), (0, 1280),
                                          (1280, 1280), (1281, 1281), (9000, 9000),
                                          (2**32 - 1, 2**32 - 1)])
def test_ipv6_mtu_is_never_below_the_ipv6_minimum(mtu, reported):
    # RFC 8200 section 5: every IPv6 link carries 1280 bytes; a smaller tunnel MTU is
    # reported as 1280 (and the tunnel must fragment below it), as the kernel does;
    # RFC 4443 3.2's MTU field is 32 bits wide, and a jumbo path (RFC 2675) fills it
    frame = v6(1400)
    assert icmp.too_big(frame, mtu, None, VIA6) == expected_v6(frame, reported)


@pytest.mark.parametrize("src", ["ff02::1", "ff05::2", "::"])
def test_no_ipv6_error_to_a_multicast_or_unspecified_source(src):
    # RFC 4443 2.4(e): never an error to a packet whose source is not one node
    assert icmp.too_big(v6(1400, src=src), 1350, None, VIA6) is None


@pytest.mark.parametrize("src", ["fe80::1", "fd00::ff", "::1", "2001:db8::"])
def test_ipv6_error_to_any_unicast_source(src):
    frame = v6(1400, src=src)
    assert icmp.too_big(frame, 1350, None, VIA6) == expected_v6(frame, 1350, src=src)


def test_ipv6_error_comes_from_the_address_it_is_given():
    frame = v6(1400)
    via = "fd00:172:2:1::"
    err = icmp.too_big(frame, 1350, VIA, bytes.fromhex("fd000172000200010000000000000000"))
    assert err == expected_v6(frame, 1350, via=via)
    # scapy checks the checksum over the pseudo-header with that source (RFC 4443 2.3):
    # recomputed from scratch, it is the one sent
    pkt = Ether(err)
    ref = pkt.copy()
    del ref[ICMPv6PacketTooBig].cksum
    assert bytes(ref) == err and pkt[IPv6].src == via


def test_ipv6_checksum_is_the_hand_summed_rfc_4443_one():
    # RFC 4443 2.3 / RFC 8200 8.1, summed here by hand (not by vtep.checksum, not by scapy):
    # the ones' complement of the 16-bit ones' complement sum of the pseudo-header (source,
    # destination, upper-layer length, next header 58) and the ICMPv6 message
    frame = v6(10)
    err = icmp.too_big(frame, 1350, None, VIA6)
    body = err[54:]
    pseudo = err[22:38] + err[38:54] + len(body).to_bytes(4, "big") + bytes(3) + bytes([58])
    data = pseudo + body[:2] + b"\0\0" + body[4:]
    data += bytes(len(data) % 2)   # an odd length is padded with a zero byte
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert int.from_bytes(body[2:4], "big") == 0xFFFF - total


def test_no_ipv6_error_without_an_ipv6_vtep_address_to_send_it_from():
    # no IPv6 overlay: the IPv4 address is no source for an IPv6 error
    assert icmp.too_big(v6(1400), 1350, VIA, None) is None
