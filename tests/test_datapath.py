"""The userspace data path's loops, driven through injected I/O (no root needed)."""

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from vtep import datapath
from fakeio import FakeIO

PEER_A, PEER_B = "192.168.2.142", "192.168.3.7"
MAC_A, MAC_B = "5a:0c:71:86:59:11", "6e:11:22:33:44:55"
ME = "06:b3:31:77:ab:d9"


def make(io, **kw):
    fdb = {bytes.fromhex(MAC_A.replace(":", "")): PEER_A,
           bytes.fromhex(MAC_B.replace(":", "")): PEER_B}
    return datapath.Datapath(vni=10, port=4789, fdb=fdb, peers=[PEER_A, PEER_B],
                             tap_readv=io.tap_readv, tap_write=io.tap_write, sendto=io.sendto,
                             recvfrom_into=io.recvfrom_into, **kw)


def icmp_frame(dst_mac=MAC_A, size=56):
    return bytes(Ether(src=ME, dst=dst_mac) / IP(src="172.2.0.0", dst="172.2.1.0") /
                 ICMP(id=7) / (b"x" * size))


def test_unicast_encapsulation_matches_scapy_byte_for_byte():
    io = FakeIO()
    dp = make(io)
    frame = icmp_frame()
    io.tap_in.append(frame)
    assert dp.tx_batch() == 1
    (data, addr), = io.sent
    assert addr == (PEER_A, 4789)
    sport = int.from_bytes(data[0:2], "big")
    ref = bytes(UDP(sport=sport, dport=4789, chksum=0) / VXLAN(flags=0x08, vni=10) / Ether(frame))
    assert data == ref
    assert data[8:16] == bytes([0x08, 0, 0, 0, 0, 0, 10, 0])  # I flag, VNI 10 (RFC 7348 s5)
    assert 32768 <= sport <= 60999
    # bytes count the VXLAN payload (header + frame), as the receiving side counts them
    assert dp.counters.tx[:2] == [1, len(data) - 8]
    assert dp.counters.peers[PEER_A][:2] == [1, len(data) - 8]


def test_tx_and_rx_count_the_same_bytes_for_the_same_datagram():
    a, b = FakeIO(), FakeIO()
    sender, receiver = make(a), make(b)
    a.tap_in.append(icmp_frame())
    sender.tx_batch()
    (data, _), = a.sent
    b.udp_in.append((data[8:], PEER_A))  # what the peer's UDP socket hands over
    receiver.rx_batch()
    assert sender.counters.tx == receiver.counters.rx


def test_fragments_of_one_datagram_keep_one_source_port():
    io = FakeIO()
    dp = make(io)
    big = IP(src="172.2.0.5", dst="172.2.1.9", id=77) / UDP(sport=5000, dport=53) / (b"q" * 3000)
    from scapy.layers.inet import fragment
    for frag in fragment(big, fragsize=1400):
        io.tap_in.append(bytes(Ether(src=ME, dst=MAC_A) / frag))
    dp.tx_batch()
    ports = {int.from_bytes(d[0:2], "big") for d, _ in io.sent}
    assert len(io.sent) == 3 and len(ports) == 1


def test_broadcast_is_replicated_to_every_peer_unknown_unicast_dropped():
    io = FakeIO()
    dp = make(io)
    io.tap_in.append(bytes(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="172.2.1.0")))
    io.tap_in.append(icmp_frame(dst_mac="02:99:99:99:99:99"))
    assert dp.tx_batch() == 2
    assert sorted(a for _, a in io.sent) == [(PEER_A, 4789), (PEER_B, 4789)]
    assert dp.counters.tx_drops["unknown-unicast"] == 1


@pytest.mark.parametrize("dst", [
    "33:33:00:00:00:01",   # IPv6 all-nodes (RFC 2464 section 7: 33:33 + low 32 bits)
    "33:33:ff:00:00:02",   # IPv6 solicited-node: neighbour discovery over the overlay
    "01:00:5e:00:00:fb",   # IPv4 224.0.0.251 (RFC 1112 section 6.4: 01:00:5e + low 23 bits)
    "01:80:c2:00:00:0e",   # any other group address (the I/G bit) floods too
])
def test_multicast_is_replicated_to_every_peer(dst):
    # head-end replication, as the kernel does with its all-zero fdb entries: a multicast
    # frame is not unknown unicast, and not only ff:ff:ff:ff:ff:ff floods
    io = FakeIO()
    dp = make(io)
    frame = bytes(Ether(src=ME, dst=dst) / IP(src="172.2.0.2", dst="224.0.0.251") /
                  UDP(sport=5353, dport=5353) / b"mdns")
    io.tap_in.append(frame)
    assert dp.tx_batch() == 1
    assert sorted(a for _, a in io.sent) == [(PEER_A, 4789), (PEER_B, 4789)]
    assert all(d[16:] == frame for d, _ in io.sent)
    assert dp.counters.tx_drops["unknown-unicast"] == 0 and dp.counters.tx[0] == 2


def test_unicast_never_floods():
    # the I/G bit is the lowest bit of the first byte; 02:... (locally administered) and
    # 5a:... are unicast: a unicast MAC the fdb knows goes to its peer only
    io = FakeIO()
    dp = make(io)
    io.tap_in.append(icmp_frame(dst_mac=MAC_B))
    dp.tx_batch()
    assert [a for _, a in io.sent] == [(PEER_B, 4789)]


def test_source_port_follows_the_flow():
    io = FakeIO()
    dp = make(io)

    def tcp(sport, payload):
        return bytes(Ether(src=ME, dst=MAC_A) / IP(src="172.2.0.5", dst="172.2.1.9") /
                     TCP(sport=sport, dport=80) / payload)
    for payload in (b"a", b"bb", b"ccc"):
        io.tap_in.append(tcp(1111, payload))
    for s in range(2000, 2032):
        io.tap_in.append(tcp(s, b"z"))
    dp.tx_batch(budget=100)
    ports = [int.from_bytes(d[0:2], "big") for d, _ in io.sent]
    assert len(set(ports[:3])) == 1  # one flow keeps one port
    assert len(set(ports[3:])) > 20  # different flows spread


def test_too_big_is_dropped_and_counted_not_split_or_retried():
    io = FakeIO()
    dp = make(io)
    io.fail_send = OSError(90, "Message too long")
    frame = icmp_frame(size=1400)
    io.tap_in.append(frame)
    dp.tx_batch()
    assert dp.counters.tx_drops["too-big"] == 1 and dp.counters.tx == [0, 0, 0]
    # one attempt with the whole datagram; no smaller pieces and no second try
    assert [len(d) for d, _ in io.tried] == [16 + len(frame)]
    assert io.sent == []


# Literal values from <linux/in.h> and <linux/in6.h>: the socket option and the mode
# that sets DF on every packet and never fragments locally (EMSGSIZE instead).
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2


@pytest.mark.netns  # the send socket is raw: root (CAP_NET_RAW) only, as netns tests run
@pytest.mark.parametrize("local", ["127.0.0.1", "::1"])
def test_send_socket_never_fragments(local):
    """RFC 7348 section 4.3: a VTEP must not fragment. The userspace data path's send
    socket has path MTU discovery in `do` mode: DF on every datagram, and a datagram
    larger than the path is refused with EMSGSIZE (the too-big drop above), never split.
    Sockets on loopback only, bound to an ephemeral port; nothing is sent."""
    import socket

    from vtep import userspace
    rx, tx = userspace.open_sockets(local, 0)
    try:
        if ":" in local:
            got = tx.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER)
            assert got == IPV6_PMTUDISC_DO
        else:
            assert tx.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DO
        assert tx.type == socket.SOCK_RAW and rx.type & socket.SOCK_DGRAM
    finally:
        rx.close()
        tx.close()


def vx(inner, vni=10, flags=0x08, res1=0, res2=0):
    return (((flags << 24) | res1).to_bytes(4, "big") + ((vni << 8) | res2).to_bytes(4, "big")
            + inner)


@pytest.mark.parametrize("data,src,reason", [
    (b"\x08\0\0", PEER_A, "short"),
    (vx(icmp_frame(), flags=0x00), PEER_A, "flags"),
    (vx(icmp_frame(), res1=1), PEER_A, "reserved"),
    (vx(icmp_frame(), res2=1), PEER_A, "reserved"),
    (vx(icmp_frame(), flags=0x0C), PEER_A, "reserved"),
    (vx(icmp_frame(), vni=42), PEER_A, "vni"),
    (vx(b"\0" * 13), PEER_A, "runt"),
    (vx(icmp_frame()), "10.9.9.9", "source"),
])
def test_receive_drops_bad_input_by_reason(data, src, reason):
    io = FakeIO()
    dp = make(io)
    io.udp_in.append((data, src))
    io.udp_in.append((vx(icmp_frame()), PEER_B))  # and the loop carries on
    assert dp.rx_batch() == 2
    assert dp.counters.rx_drops[reason] == 1
    assert sum(dp.counters.rx_drops.values()) == 1
    assert io.tap_out == [icmp_frame()]
    assert dp.counters.peers[PEER_B][2:4] == [1, len(vx(icmp_frame()))]


def test_accept_any_source():
    io = FakeIO()
    dp = make(io, accept_any_source=True)
    io.udp_in.append((vx(icmp_frame()), "10.9.9.9"))
    dp.rx_batch()
    assert io.tap_out and dp.counters.rx_drops["source"] == 0


def test_batch_budget_and_empty_reads():
    io = FakeIO()
    dp = make(io)
    for _ in range(10):
        io.tap_in.append(icmp_frame())
    assert dp.tx_batch(budget=4) == 4
    assert dp.tx_batch(budget=100) == 6
    assert dp.tx_batch() == 0 and dp.rx_batch() == 0


def test_fdb_swap_keeps_counters_of_remaining_peers():
    io = FakeIO()
    dp = make(io)
    io.tap_in.append(icmp_frame())
    dp.tx_batch()
    dp.set_fdb({bytes.fromhex(MAC_A.replace(":", "")): PEER_A}, [PEER_A])
    assert list(dp.counters.peers) == [PEER_A] and dp.counters.peers[PEER_A][0] == 1
    io.tap_in.append(icmp_frame(dst_mac=MAC_B))
    dp.tx_batch()
    assert dp.counters.tx_drops["unknown-unicast"] == 1


def test_too_big_answers_the_inner_sender_with_icmp_frag_needed():
    io = FakeIO()
    peer_vtep = bytes([172, 2, 1, 0])
    dp = make(io, path_mtu=lambda peer: 1400, vtep_ips={PEER_A: peer_vtep})
    io.fail_send = OSError(90, "Message too long")
    frame = bytes(Ether(src=ME, dst=MAC_A) / IP(src="172.2.0.2", dst="172.2.1.2", flags="DF") /
                  TCP(sport=40000, dport=80) / (b"d" * 1400))
    io.tap_in.append(frame)
    dp.tx_batch()
    (err,), = [io.tap_out]
    pkt = Ether(err)
    assert (pkt.src, pkt.dst) == (MAC_A, ME)
    assert (pkt[IP].src, pkt[IP].dst) == ("172.2.1.0", "172.2.0.2")
    icmp = pkt[ICMP]
    assert (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, 1350)
    # checksums as scapy computes them, and the quoted original header
    ref = pkt.copy()
    del ref[IP].chksum
    del ref[ICMP].chksum
    assert bytes(ref) == err
    assert bytes(icmp.payload)[:20] == frame[14:34]
    assert dp.counters.icmp_too_big == 1 and dp.counters.tx_drops["too-big"] == 1


def test_too_big_without_df_or_path_mtu_sends_nothing():
    io = FakeIO()
    dp = make(io, path_mtu=lambda peer: 1400, vtep_ips={PEER_A: bytes(4)})
    io.fail_send = OSError(90, "Message too long")
    io.tap_in.append(bytes(Ether(src=ME, dst=MAC_A) / IP(src="172.2.0.2", dst="172.2.1.2") /
                           UDP() / (b"d" * 1400)))  # DF clear: may be fragmented
    dp.tx_batch()
    assert io.tap_out == [] and dp.counters.tx_drops["too-big"] == 1
    dp2 = make(io)  # no path_mtu hook at all
    io.tap_in.append(icmp_frame(size=1400))
    dp2.tx_batch()
    assert io.tap_out == []


def v6_frame(size=1400, src="fd00:172:2::2"):
    from scapy.layers.inet6 import IPv6
    return bytes(Ether(src=ME, dst=MAC_A) / IPv6(src=src, dst="fd00:172:2:1::2") /
                 UDP(sport=1, dport=2) / (b"v" * size))


@pytest.mark.parametrize("overhead,reported", [(50, 1350), (70, 1330)])
def test_too_big_answers_an_ipv6_sender_with_packet_too_big_from_the_node(overhead, reported):
    # an inner IPv6 packet that does not fit the path: RFC 4443 3.2 packet too big, from
    # the node's own IPv6 VTEP address (vtep.icmp: what the node's stack accepts), to the
    # sender, back through the TAP; checksum and every field as scapy builds them
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
    io = FakeIO(too_big_above=1000)
    dp = make(io, path_mtu=lambda peer: 1400, overhead=overhead,
              vtep_ips={PEER_A: bytes([172, 2, 1, 0])},
              vtep_ip6=bytes.fromhex("fd000172000200000000000000000000"))
    frame = v6_frame()
    io.tap_in.append(frame)
    dp.tx_batch()
    (err,) = io.tap_out
    want = bytes(Ether(src=MAC_A, dst=ME) /
                 IPv6(tc=0, fl=0, hlim=64, src="fd00:172:2::", dst="fd00:172:2::2") /
                 ICMPv6PacketTooBig(mtu=reported) / frame[14:14 + 1232])
    assert err == want
    pkt = Ether(err)
    ref = pkt.copy()
    del ref[ICMPv6PacketTooBig].cksum
    assert bytes(ref) == err
    assert len(err) - 14 == 1280  # fits the IPv6 minimum MTU (RFC 4443 2.4(c))
    assert dp.counters.icmp_too_big == 1 and dp.counters.tx_drops["too-big"] == 1
    assert io.sent == []


def test_no_ipv6_error_without_an_ipv6_vtep_address_or_to_a_multicast_source():
    io = FakeIO(too_big_above=1000)
    dp = make(io, path_mtu=lambda peer: 1400, vtep_ips={PEER_A: bytes([172, 2, 1, 0])})
    io.tap_in.append(v6_frame())   # no IPv6 overlay: nothing to send the error from
    dp.tx_batch()
    dp.vtep_ip6 = bytes.fromhex("fd000172000200000000000000000000")
    io.tap_in.append(v6_frame(src="ff02::1"))   # RFC 4443 2.4(e)
    dp.tx_batch()
    assert io.tap_out == [] and dp.counters.icmp_too_big == 0
    assert dp.counters.tx_drops["too-big"] == 2


# ---------------------------------------------------------------- counters and drops, exactly

def test_status_counters_after_known_traffic():
    """The counters `vtep status --json` shows, after traffic whose sizes are known: every
    number below is a frame length from scapy plus the 8-byte VXLAN header (RFC 7348)."""
    io = FakeIO()
    dp = make(io)
    small, big = icmp_frame(size=10), icmp_frame(dst_mac=MAC_A, size=300)
    arp = bytes(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="172.2.1.0"))
    io.tap_in.extend([small, big, arp, b"\0" * 13, icmp_frame(dst_mac="02:99:99:99:99:99")])
    io.udp_in.extend([(vx(small), PEER_B), (vx(small, vni=42), PEER_B), (vx(big), PEER_B)])
    dp.tx_batch()
    dp.rx_batch()
    tx_a = 8 + len(small) + 8 + len(big) + 8 + len(arp)
    rx_b = 8 + len(small) + 8 + len(big)
    assert dp.counters.to_dict() == {
        # without offloads a frame is a datagram: the flooded ARP counts once per peer
        "tx": {"packets": 4, "bytes": tx_a + 8 + len(arp), "frames": 4},
        "rx": {"packets": 2, "bytes": rx_b, "frames": 2},
        "tx_drops": {"unknown-unicast": 1, "too-big": 0, "send-error": 0, "runt": 1,
                     "bad-offload": 0},
        "icmp_too_big": 0,
        "rx_drops": {"short": 0, "flags": 0, "reserved": 0, "vni": 1, "runt": 0,
                     "source": 0, "tap-write": 0},
        "peers": {PEER_A: {"tx_packets": 3, "tx_bytes": tx_a, "tx_frames": 3,
                           "rx_packets": 0, "rx_bytes": 0},
                  PEER_B: {"tx_packets": 1, "tx_bytes": 8 + len(arp), "tx_frames": 1,
                           "rx_packets": 2, "rx_bytes": rx_b}},
    }


def test_status_lists_only_peers_that_saw_traffic():
    # a peer with received traffic only, one with sent traffic only, one with none
    io = FakeIO()
    dp = make(io)
    dp.set_fdb({bytes.fromhex(MAC_A.replace(":", "")): PEER_A}, [PEER_A, PEER_B, "10.0.0.9"])
    io.tap_in.append(icmp_frame())
    io.udp_in.append((vx(icmp_frame()), PEER_B))
    dp.tx_batch()
    dp.rx_batch()
    peers = dp.counters.to_dict()["peers"]
    assert sorted(peers) == [PEER_A, PEER_B]
    assert peers[PEER_A]["tx_packets"] == 1 and peers[PEER_A]["rx_packets"] == 0
    assert peers[PEER_B]["rx_packets"] == 1 and peers[PEER_B]["tx_packets"] == 0


def test_a_status_snapshot_does_not_move_with_later_drops():
    io = FakeIO()
    dp = make(io)
    io.tap_in.append(b"\0" * 5)
    io.udp_in.append((b"\x08", PEER_A))
    dp.tx_batch()
    dp.rx_batch()
    snapshot = dp.counters.to_dict()
    io.tap_in.append(b"\0" * 5)
    io.udp_in.append((b"\x08", PEER_A))
    dp.tx_batch()
    dp.rx_batch()
    assert snapshot["tx_drops"]["runt"] == 1 and snapshot["rx_drops"]["short"] == 1
    assert dp.counters.to_dict()["tx_drops"]["runt"] == 2


def test_every_bad_frame_is_counted_and_the_loop_goes_on():
    io = FakeIO()
    dp = make(io)
    good_a, good_b = icmp_frame(MAC_A), icmp_frame(MAC_B)
    unknown = icmp_frame(dst_mac="02:99:99:99:99:99")
    io.tap_in.extend([b"", good_a, b"\xff" * 13, unknown, good_b, unknown, b"\x01" * 7])
    assert dp.tx_batch() == 7
    assert [(d[16:], a) for d, a in io.sent] == [(good_a, (PEER_A, 4789)),
                                                  (good_b, (PEER_B, 4789))]
    assert dp.counters.tx_drops == {"unknown-unicast": 2, "too-big": 0, "send-error": 0,
                                    "runt": 3, "bad-offload": 0}
    assert dp.counters.tx[:2] == [2, 16 + len(good_a) - 8 + 16 + len(good_b) - 8]


def test_a_peer_that_cannot_be_reached_does_not_stop_the_others():
    """A broadcast to two peers where sending to one fails (ENOBUFS, then EMSGSIZE): the
    other still gets it; each failure is counted by reason, once per peer and frame."""
    import errno as E
    io = FakeIO()
    failure = OSError(E.ENOBUFS, "No buffer space available")

    def sendto(view, addr):
        if addr[0] == PEER_A:
            raise failure
        return io.sendto(view, addr)
    dp = datapath.Datapath(vni=10, port=4789, fdb={}, peers=[PEER_A, PEER_B],
                           tap_readv=io.tap_readv, tap_write=io.tap_write, sendto=sendto,
                           recvfrom_into=io.recvfrom_into)
    arp = bytes(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="172.2.1.0"))
    io.tap_in.extend([arp, arp])
    dp.tx_batch()
    assert [a for _, a in io.sent] == [(PEER_B, 4789)] * 2
    assert dp.counters.tx_drops["send-error"] == 2 and dp.counters.tx_drops["too-big"] == 0
    assert dp.counters.tx == [2, 2 * (8 + len(arp)), 2]
    assert dp.counters.peers == {PEER_A: [0, 0, 0, 0, 0],
                                 PEER_B: [2, 2 * (8 + len(arp)), 0, 0, 2]}
    failure = OSError(E.EMSGSIZE, "Message too long")
    io.tap_in.extend([arp, arp, arp])
    dp.tx_batch()
    assert dp.counters.tx_drops["send-error"] == 2 and dp.counters.tx_drops["too-big"] == 3
    assert dp.counters.tx[:2] == [5, 5 * (8 + len(arp))]


def test_the_tap_going_away_is_reported_and_what_was_sent_is_counted():
    import errno as E

    from vtep.errors import DeviceLost
    io = FakeIO(tap_in=[icmp_frame(), icmp_frame()])

    def readv(buffers):
        if not io.tap_in:   # `ip link del` under a running VTEP: EBADFD from then on
            raise OSError(E.EBADFD, "File descriptor in bad state")
        return io.tap_readv(buffers)
    dp = datapath.Datapath(vni=10, port=4789, fdb={bytes.fromhex(MAC_A.replace(":", "")): PEER_A},
                           peers=[PEER_A], tap_readv=readv, tap_write=io.tap_write,
                           sendto=io.sendto, recvfrom_into=io.recvfrom_into)
    with pytest.raises(DeviceLost, match=r"^reading the TAP device: File descriptor in bad "
                                         r"state$"):
        dp.tx_batch()
    assert len(io.sent) == 2 and dp.counters.tx[:2] == [2, 2 * (8 + len(icmp_frame()))]


def test_receive_counts_a_failed_tap_write_and_goes_on():
    io = FakeIO()
    writes = []

    def write(view):   # the first two writes fail
        if len(writes) < 2:
            writes.append("failed")
            raise OSError(5, "Input/output error")
        return io.tap_write(view)
    dp = datapath.Datapath(vni=10, port=4789, fdb={}, peers=[PEER_A], tap_readv=io.tap_readv,
                           tap_write=write, sendto=io.sendto, recvfrom_into=io.recvfrom_into)
    frame = icmp_frame()
    io.udp_in.extend([(vx(frame), PEER_A)] * 3)
    assert dp.rx_batch() == 3
    assert io.tap_out == [frame]
    assert dp.counters.rx_drops["tap-write"] == 2
    assert dp.counters.rx == [1, len(vx(frame)), 1]
    assert dp.counters.peers[PEER_A] == [0, 0, 1, len(vx(frame)), 0]


def test_receive_from_an_unlisted_source_counts_no_peer():
    io = FakeIO()
    dp = make(io, accept_any_source=True)
    io.udp_in.extend([(vx(icmp_frame()), "10.9.9.9")] * 2)
    assert dp.rx_batch(budget=1) == 1 and dp.rx_batch(budget=5) == 1
    assert dp.counters.rx == [2, 2 * len(vx(icmp_frame())), 2]
    assert "10.9.9.9" not in dp.counters.peers
    assert dp.counters.peers[PEER_A] == dp.counters.peers[PEER_B] == [0, 0, 0, 0, 0]


# ------------------------------------------------- ICMP too-big through the data path

def df_frame(size=1400):
    return bytes(Ether(src=ME, dst=MAC_A) / IP(src="172.2.0.2", dst="172.2.1.2", flags="DF") /
                 TCP(sport=40000, dport=80) / (b"d" * size))


@pytest.mark.parametrize("overhead,reported", [(50, 1350), (70, 1330)])
def test_too_big_reports_the_path_mtu_less_the_tunnel_overhead(overhead, reported):
    # RFC 7348 section 4.3 / the kernel's vxlan: the inner MTU is the underlay path MTU less
    # outer IPv4 (20) or IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14)
    io = FakeIO(too_big_above=1000)
    asked = []
    dp = make(io, path_mtu=lambda peer: asked.append(peer) or 1400, overhead=overhead,
              vtep_ips={PEER_A: bytes([172, 2, 1, 0])})
    io.tap_in.extend([df_frame(), df_frame()])
    dp.tx_batch()
    assert asked == [PEER_A, PEER_A]
    assert [Ether(e)[ICMP].nexthopmtu for e in io.tap_out] == [reported, reported]
    assert dp.counters.icmp_too_big == 2 and dp.counters.tx_drops["too-big"] == 2


def test_no_too_big_error_when_the_path_mtu_is_unknown_or_the_peer_has_no_vtep_address():
    io = FakeIO(too_big_above=1000)
    dp = make(io, path_mtu=lambda peer: 0, vtep_ips={PEER_A: bytes([172, 2, 1, 0])})
    io.tap_in.append(df_frame())
    dp.tx_batch()
    dp = make(io, path_mtu=lambda peer: 1400, vtep_ips={PEER_B: bytes([172, 2, 2, 0])})
    io.tap_in.append(df_frame())  # to PEER_A, whose VTEP address is not known
    dp.tx_batch()
    assert io.tap_out == [] and dp.counters.icmp_too_big == 0


def test_a_too_big_error_the_tap_refuses_is_not_counted_as_sent():
    io = FakeIO(too_big_above=1000)

    def refuse(view):
        raise OSError(5, "Input/output error")
    io.tap_write = refuse
    dp = make(io, path_mtu=lambda peer: 1400, vtep_ips={PEER_A: bytes([172, 2, 1, 0])})
    io.tap_in.extend([df_frame(), icmp_frame()])
    assert dp.tx_batch() == 2
    assert dp.counters.icmp_too_big == 0 and dp.counters.tx_drops["too-big"] == 1
    assert [d[16:] for d, _ in io.sent] == [icmp_frame()]  # and the loop went on


def test_the_too_big_error_quotes_this_frame_not_what_the_buffer_held_before():
    # a short DF frame after a long one: the error quotes the 200-byte packet whole (RFC 1812
    # 4.3.2.3 quotes up to 548 bytes), never bytes of the earlier frame past its end
    io = FakeIO(too_big_above=150)
    dp = make(io, path_mtu=lambda peer: 150 + 20, vtep_ips={PEER_A: bytes([172, 2, 1, 0])})
    short = df_frame(size=200 - 40)
    assert len(short) - 14 == 200
    io.tap_in.extend([df_frame(size=1400), short])
    dp.tx_batch()
    first, err = io.tap_out
    expected = bytes(Ether(src=MAC_A, dst=ME) /
                     IP(tos=0xC0, id=0, flags=0, ttl=64, proto=1, src="172.2.1.0",
                        dst="172.2.0.2") /
                     ICMP(type=3, code=4, nexthopmtu=170 - 50) / short[14:])
    assert err == expected


def test_a_peer_added_by_a_reload_starts_from_zero():
    io = FakeIO()
    dp = make(io)
    io.tap_in.append(icmp_frame(MAC_A))
    dp.tx_batch()
    mac_c = bytes.fromhex("0ac0ffee0001")
    dp.set_fdb({mac_c: "10.0.0.3"}, [PEER_A, "10.0.0.3"])
    assert dp.counters.peers == {PEER_A: [1, 8 + len(icmp_frame()), 0, 0, 1],
                                 "10.0.0.3": [0, 0, 0, 0, 0]}
    io.tap_in.append(icmp_frame("0a:c0:ff:ee:00:01"))
    dp.tx_batch()
    assert io.sent[-1][1] == ("10.0.0.3", 4789)
    assert dp.counters.to_dict()["peers"]["10.0.0.3"] == {
        "tx_packets": 1, "tx_bytes": 8 + len(icmp_frame()), "tx_frames": 1, "rx_packets": 0,
        "rx_bytes": 0}


def test_raw_send_sockets_get_port_zero_in_the_address():
    # userspace.py sends through raw sockets, whose address port must be 0 (an AF_INET6
    # raw socket reads it as the protocol); the UDP header still carries 4789
    io = FakeIO()
    dp = make(io, addr_port=0)
    io.tap_in.append(icmp_frame())
    dp.tx_batch()
    dp.set_fdb({bytes.fromhex(MAC_B.replace(":", "")): PEER_B}, [PEER_B])
    io.tap_in.append(icmp_frame(MAC_B))
    dp.tx_batch()
    assert [a for _, a in io.sent] == [(PEER_A, 0), (PEER_B, 0)]
    assert all(d[2:4] == (4789).to_bytes(2, "big") for d, _ in io.sent)


def test_one_batch_moves_at_most_64_frames_each_way_by_default():
    # the kernel's NAPI weight (NAPI_POLL_WEIGHT, 64): one direction cannot starve the other
    io = FakeIO()
    dp = make(io)
    io.tap_in.extend([icmp_frame()] * 70)
    io.udp_in.extend([(vx(icmp_frame()), PEER_A)] * 70)
    assert dp.tx_batch() == 64 and dp.rx_batch() == 64
    assert dp.tx_batch() == 6 and dp.rx_batch() == 6


# --- the outer UDP checksum (the plan's udp_checksum, issue 17) -------------------------------

LOCAL = "192.168.1.138"


@pytest.mark.parametrize("size", [56, 57, 1, 1422])   # even and odd datagram lengths
def test_the_udp_checksum_is_the_one_scapy_computes_for_each_peer(size):
    """The same frame flooded to two peers: each datagram's checksum covers its own
    pseudo-header (RFC 768: source and destination address, protocol, length)."""
    import socket
    io = FakeIO()
    dp = make(io, checksum_src=socket.inet_aton(LOCAL))
    frame = icmp_frame(dst_mac="ff:ff:ff:ff:ff:ff", size=size)
    io.tap_in.append(frame)
    dp.tx_batch()
    assert len(io.sent) == 2
    for data, (peer, _) in io.sent:
        sport = int.from_bytes(data[0:2], "big")
        ref = IP(src=LOCAL, dst=peer) / UDP(sport=sport, dport=4789) / VXLAN(flags=0x08, vni=10) \
            / Ether(frame)
        assert data == bytes(IP(bytes(ref))[UDP]), peer    # scapy fills the checksum
        assert data[6:8] != b"\0\0"


def test_a_checksum_that_sums_to_zero_is_sent_as_ffff():
    """RFC 768: a computed checksum of 0 is sent as all ones (0 means none). Find a frame
    whose checksum is 0 by adjusting two payload bytes, then check what goes out."""
    import socket
    io = FakeIO()
    dp = make(io, checksum_src=socket.inet_aton(LOCAL))
    base = bytearray(icmp_frame(size=60))
    io.tap_in.append(bytes(base))
    dp.tx_batch()
    (data, _), = io.sent
    c = int.from_bytes(data[6:8], "big")
    # adding c to the sum (ones' complement) turns the checksum into 0 (0xFFFF on the wire)
    word = int.from_bytes(base[-2:], "big")
    s = word + c
    s = (s & 0xFFFF) + (s >> 16)
    base[-2:] = s.to_bytes(2, "big")
    io.sent.clear()
    io.tap_in.append(bytes(base))
    dp.tx_batch()
    (data, (peer, _)), = io.sent
    assert data[6:8] == b"\xff\xff"
    ref = IP(src=LOCAL, dst=peer) / UDP(sport=int.from_bytes(data[0:2], "big"), dport=4789) \
        / VXLAN(flags=0x08, vni=10) / Ether(bytes(base))
    assert bytes(IP(bytes(ref))[UDP])[6:8] == b"\xff\xff"      # scapy agrees


def test_without_a_checksum_source_the_checksum_is_zero():
    io = FakeIO()
    dp = make(io)
    io.tap_in.append(icmp_frame())
    dp.tx_batch()
    (data, _), = io.sent
    assert data[6:8] == b"\0\0"
