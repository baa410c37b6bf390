"""The userspace data path's loops, driven through injected I/O (no root needed)."""
import collections

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from vtep import datapath, wire

PEER_A, PEER_B = "192.168.2.142", "192.168.3.7"
MAC_A, MAC_B = "5a:0c:71:86:59:11", "6e:11:22:33:44:55"
ME = "06:b3:31:77:ab:d9"


class FakeIO:
    def __init__(self):
        self.tap_in = collections.deque()
        self.udp_in = collections.deque()
        self.sent = []
        self.tap_out = []
        self.fail_send = None

    def tap_readv(self, buffers):
        if not self.tap_in:
            raise BlockingIOError
        frame = self.tap_in.popleft()
        buffers[0][:len(frame)] = frame
        return len(frame)

    def tap_write(self, view):
        self.tap_out.append(bytes(view))
        return len(view)

    def sendto(self, view, addr):
        if self.fail_send:
            raise self.fail_send
        self.sent.append((bytes(view), addr))

    def recvfrom_into(self, buf):
        if not self.udp_in:
            raise BlockingIOError
        data, src = self.udp_in.popleft()
        buf[:len(data)] = data
        return len(data), (src, 4789)


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
    assert wire.unpack(data, 8).valid
    assert 32768 <= sport <= 60999
    assert dp.counters.tx == [1, len(data)] and dp.counters.peers[PEER_A][:2] == [1, len(data)]


def test_broadcast_is_replicated_to_every_peer_unknown_unicast_dropped():
    io = FakeIO()
    dp = make(io)
    io.tap_in.append(bytes(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="172.2.1.0")))
    io.tap_in.append(icmp_frame(dst_mac="02:99:99:99:99:99"))
    assert dp.tx_batch() == 2
    assert sorted(a for _, a in io.sent) == [(PEER_A, 4789), (PEER_B, 4789)]
    assert dp.counters.tx_drops["unknown-unicast"] == 1


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


def test_too_big_is_dropped_and_counted_never_fragmented():
    io = FakeIO()
    dp = make(io)
    io.fail_send = OSError(90, "Message too long")
    io.tap_in.append(icmp_frame(size=1400))
    dp.tx_batch()
    assert dp.counters.tx_drops["too-big"] == 1 and dp.counters.tx == [0, 0]


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
    assert dp.counters.peers[PEER_B][2:] == [1, len(vx(icmp_frame()))]


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
