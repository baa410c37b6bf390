"""The VXLAN UDP source port: a hash of the inner flow (RFC 7348 section 5).

RFC 7348 section 5 recommends a source port computed from the inner frame's headers, so
that underlay ECMP and RSS spread flows while one flow keeps one path. Which bytes make
a flow is written out here by hand, from the header layouts (RFC 791, RFC 8200, RFC 793/
768/4960 ports first in the L4 header, IEEE 802.3 MAC addresses):

- IPv4 TCP/UDP/SCTP, unfragmented: source and destination address, both ports (after
  the options, if any);
- IPv4 anything else, or a fragment (MF set or an offset): the two addresses only, so
  every fragment of a datagram takes one path (the later ones carry no ports);
- IPv6 TCP/UDP/SCTP right after the fixed header: addresses and ports; else addresses;
- anything else (ARP, VLAN-tagged, too short to hold its IP header): the MAC addresses,
  whatever the ethertype and the payload.

The oracle: changing any byte of the flow changes the port; changing any other byte of
the frame (TTL, ID, checksums, lengths, payload, options...) or any byte past its end
(what the buffer held before) does not. Checked both through `flow_port` at an offset in
a bigger buffer and through the transmit loop (bytes on the wire), whose common IPv4 case
is computed inline. The ports are the kernel's default ip_local_port_range, 32768-60999.
"""
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.sctp import SCTP

from fakeio import FakeIO
from vtep import datapath

ME, PEER_MAC = "06:b3:31:77:ab:d9", "5a:0c:71:86:59:11"
PEER = "192.168.2.142"
LOW, HIGH = 32768, 60999   # ip_local_port_range's default (Documentation/networking/ip-sysctl)

ETHERTYPE = {12, 13}
MACS = set(range(0, 12))
IP4_ADDRS = set(range(26, 34))        # 14 + 12: source, destination
IP6_ADDRS = set(range(22, 54))        # 14 + 8: source, destination
PORTS_AFTER_IP4 = set(range(34, 38))  # 14 + 20: source port, destination port
PORTS_AFTER_IP6 = set(range(54, 58))  # 14 + 40
# bytes that pick the kind of flow, not part of it: IPv4 version/IHL, flags and
# fragment offset, protocol; IPv6 next header
IP4_KIND = ETHERTYPE | {14, 20, 21, 23}
IP6_KIND = ETHERTYPE | {20}
# a frame hashed by its MACs: even a new ethertype (not IPv4 or IPv6) keeps its port
NOTHING = set()


def eth(dst=PEER_MAC):
    return Ether(src=ME, dst=dst)


def ip4(**kw):
    return IP(src="172.2.0.5", dst="172.2.1.9", id=999, ttl=61, tos=0x10, **kw)


def ip6(**kw):
    return IPv6(src="fd00::5", dst="fd00:1::9", fl=0x12345, hlim=61, tc=0x20, **kw)


# (name, frame, the bytes of its flow, the bytes that choose the kind of flow)
CASES = [
    ("ipv4 tcp", eth() / ip4() / TCP(sport=40000, dport=80, seq=7) / b"payload",
     IP4_ADDRS | PORTS_AFTER_IP4, IP4_KIND),
    ("ipv4 udp", eth() / ip4() / UDP(sport=5353, dport=53) / b"query",
     IP4_ADDRS | PORTS_AFTER_IP4, IP4_KIND),
    ("ipv4 sctp", eth() / ip4() / SCTP(sport=2905, dport=2906, tag=5) / b"chunk",
     IP4_ADDRS | PORTS_AFTER_IP4, IP4_KIND),
    ("ipv4 tcp df", eth() / ip4(flags="DF") / TCP(sport=1, dport=2) / b"x",
     IP4_ADDRS | PORTS_AFTER_IP4, IP4_KIND),
    # exactly an IPv4 header and the two ports: the shortest frame that has them
    ("ipv4 tcp ports only", (eth() / ip4() / TCP(sport=40000, dport=80)).build()[:38],
     IP4_ADDRS | PORTS_AFTER_IP4, IP4_KIND),
    ("ipv4 tcp cut in its ports", (eth() / ip4() / TCP(sport=40000, dport=80)).build()[:37],
     IP4_ADDRS, IP4_KIND),
    # options move the ports, they do not hide them: IHL 6 and IHL 15 (40 bytes)
    ("ipv4 tcp options", eth() / ip4(options=[IPOption_NOP()] * 4) / TCP(sport=1, dport=2),
     IP4_ADDRS | set(range(38, 42)), IP4_KIND),
    ("ipv4 udp longest options", eth() / ip4(options=[IPOption_NOP()] * 40) / UDP() / b"u",
     IP4_ADDRS | set(range(74, 78)), IP4_KIND),
    ("ipv4 options cut in the ports",
     (eth() / ip4(options=[IPOption_NOP()] * 4) / TCP()).build()[:41], IP4_ADDRS, IP4_KIND),
    # IHL below 5 is no header at all (RFC 791): no ports, wherever the IHL would put them
    ("ipv4 ihl 4", eth() / IP(src="172.2.0.5", dst="172.2.1.9", ihl=4) / UDP() / b"b",
     IP4_ADDRS, IP4_KIND),
    ("ipv4 ihl 0", eth() / IP(src="172.2.0.5", dst="172.2.1.9", ihl=0, tos=0x10) / UDP() / b"b",
     IP4_ADDRS, IP4_KIND),
    ("ipv4 icmp", eth() / ip4() / ICMP(id=7, seq=9) / b"ping", IP4_ADDRS, IP4_KIND),
    ("ipv4 first fragment", eth() / ip4(flags="MF") / UDP(sport=1, dport=2) / (b"f" * 16),
     IP4_ADDRS, IP4_KIND),
    ("ipv4 later fragment", eth() / ip4(frag=185) / (b"later" * 4), IP4_ADDRS, IP4_KIND),
    ("ipv4 smallest offset", eth() / ip4(frag=1, proto=6) / (b"later" * 4), IP4_ADDRS, IP4_KIND),
    ("ipv4 header only", eth() / ip4(proto=6), IP4_ADDRS, IP4_KIND),
    ("ipv6 tcp", eth() / ip6() / TCP(sport=40000, dport=443) / b"payload",
     IP6_ADDRS | PORTS_AFTER_IP6, IP6_KIND),
    ("ipv6 udp", eth() / ip6() / UDP(sport=5000, dport=53) / b"q",
     IP6_ADDRS | PORTS_AFTER_IP6, IP6_KIND),
    ("ipv6 sctp", eth() / ip6() / SCTP(sport=2905, dport=2906) / b"c",
     IP6_ADDRS | PORTS_AFTER_IP6, IP6_KIND),
    ("ipv6 udp ports only", (eth() / ip6() / UDP(sport=5000, dport=53)).build()[:58],
     IP6_ADDRS | PORTS_AFTER_IP6, IP6_KIND),
    ("ipv6 udp cut in its ports", (eth() / ip6() / UDP(sport=5000, dport=53)).build()[:57],
     IP6_ADDRS, IP6_KIND),
    ("ipv6 header only", (eth() / ip6(nh=59)).build()[:54], IP6_ADDRS, IP6_KIND),
    ("ipv6 icmpv6", eth() / ip6() / ICMPv6EchoRequest(id=3, seq=4), IP6_ADDRS, IP6_KIND),
    ("ipv6 hop-by-hop then udp", eth() / ip6() / IPv6ExtHdrHopByHop() / UDP() / b"h",
     IP6_ADDRS, IP6_KIND),
    ("arp", eth("ff:ff:ff:ff:ff:ff") / ARP(psrc="172.2.0.5", pdst="172.2.1.9"),
     MACS, NOTHING),
    ("vlan-tagged ipv4", eth() / Dot1Q(vlan=5) / ip4() / UDP() / b"v", MACS, NOTHING),
    ("ipv4 shorter than its header", (eth() / ip4() / UDP()).build()[:33], MACS, NOTHING),
    ("ipv6 shorter than its header", (eth() / ip6() / UDP()).build()[:53], MACS, NOTHING),
    ("ethernet header only", (eth() / ip4()).build()[:14], MACS, NOTHING),
]
CASES = [(name, bytes(frame), flow, kind) for name, frame, flow, kind in CASES]
IDS = [c[0] for c in CASES]

# What a buffer held before: a long frame of noise, for the bytes past a frame's end.
NOISE = bytes(random.Random(16).randrange(256) for _ in range(1600))


def hashed(frame, off=40, after=NOISE):
    """flow_port of `frame` lying at `off` in a buffer with other bytes around it."""
    buf = bytearray(NOISE[:off]) + frame + after
    return datapath.flow_port(buf, off, len(frame))


def sent(frame):
    """The source port the transmit loop puts on the wire for `frame`, read from the
    datagram's first two bytes, after a longer frame has filled the buffer with noise."""
    noise = b"\x02" + NOISE[1:]   # a unicast destination the fdb knows
    io = FakeIO(tap_in=[noise, frame])
    dp = datapath.Datapath(vni=10, port=4789, fdb={noise[:6]: PEER, frame[:6]: PEER},
                           peers=[PEER], tap_readv=io.tap_readv, tap_write=io.tap_write,
                           sendto=io.sendto, recvfrom_into=io.recvfrom_into)
    assert dp.tx_batch() == 2
    data, addr = io.sent[-1]
    assert data[16:] == frame and addr == (PEER, 4789)
    return struct.unpack_from("!H", data)[0]


def flipped(frame, i):
    f = bytearray(frame)
    f[i] ^= 0xA5
    return bytes(f)


@pytest.mark.parametrize("name,frame,flow,kind", CASES, ids=IDS)
def test_source_port_is_in_the_kernels_port_range(name, frame, flow, kind):
    assert LOW <= hashed(frame) <= HIGH
    assert LOW <= sent(frame) <= HIGH


@pytest.mark.parametrize("name,frame,flow,kind", CASES, ids=IDS)
def test_every_byte_of_the_flow_changes_the_source_port(name, frame, flow, kind):
    port = hashed(frame)
    assert [i for i in sorted(flow) if hashed(flipped(frame, i)) == port] == []


@pytest.mark.parametrize("name,frame,flow,kind", CASES, ids=IDS)
def test_no_other_byte_changes_the_source_port(name, frame, flow, kind):
    port = hashed(frame)
    others = set(range(len(frame))) - flow - kind
    assert [i for i in sorted(others) if hashed(flipped(frame, i)) != port] == []


@pytest.mark.parametrize("name,frame,flow,kind", CASES, ids=IDS)
def test_bytes_past_the_frame_and_its_place_in_the_buffer_do_not_matter(name, frame, flow,
                                                                        kind):
    port = hashed(frame)
    assert hashed(frame, after=bytes(1600)) == port
    assert hashed(frame, after=b"\xff" * 1600) == port
    assert hashed(frame, off=0) == hashed(frame, off=16) == port


@pytest.mark.parametrize("name,frame,flow,kind", CASES, ids=IDS)
def test_the_transmit_loop_puts_the_same_flow_on_the_wire(name, frame, flow, kind):
    # the loop computes the common IPv4 case inline: it must pick the same bytes
    port = sent(frame)
    assert port == hashed(frame)
    for i in sorted(flow):
        assert sent(flipped(frame, i)) != port, f"flow byte {i}"
    for i in sorted(set(range(6, len(frame))) - flow - kind):
        assert sent(flipped(frame, i)) == port, f"byte {i} outside the flow"


def test_flows_spread_over_the_whole_port_range():
    # 4,000 TCP flows (source ports 1024...): ports reach both ends of the range
    base = bytes(eth() / ip4() / TCP(sport=1024, dport=80))
    frames = [base[:34] + struct.pack("!H", 1024 + k) + base[36:] for k in range(4000)]
    io = FakeIO(tap_in=frames)
    dp = datapath.Datapath(vni=10, port=4789, fdb={frames[0][:6]: PEER}, peers=[PEER],
                           tap_readv=io.tap_readv, tap_write=io.tap_write,
                           sendto=io.sendto, recvfrom_into=io.recvfrom_into)
    assert dp.tx_batch(budget=len(frames)) == len(frames)
    ports = [struct.unpack_from("!H", data)[0] for data, _ in io.sent]
    assert min(ports) < LOW + 100 and max(ports) > HIGH - 100
    assert len(set(ports)) > 3500


def test_only_the_ethertype_says_ipv4_not_a_payload_that_looks_like_it():
    # every ethertype but IPv4's and IPv6's, carrying the same IPv4/TCP-shaped payload
    # (IHL 5, protocol 6, no fragment): all hashed by their MAC addresses, so all one port
    shaped = bytes(eth() / ip4() / TCP(sport=40000, dport=80))
    frames = [shaped[:12] + struct.pack("!H", et) + shaped[14:]
              for et in range(0x10000) if et not in (0x0800, 0x86DD)]
    io = FakeIO(tap_in=frames)
    dp = datapath.Datapath(vni=10, port=4789, fdb={frames[0][:6]: PEER}, peers=[PEER],
                           tap_readv=io.tap_readv, tap_write=io.tap_write,
                           sendto=io.sendto, recvfrom_into=io.recvfrom_into)
    assert dp.tx_batch(budget=len(frames)) == len(frames)
    ports = {struct.unpack_from("!H", data)[0] for data, _ in io.sent}
    assert len(io.sent) == len(frames)
    assert ports == {sent(bytes(eth() / ARP()))}  # the port of any frame between these MACs
