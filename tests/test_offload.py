"""vtep.offload's two loops with real sockets, no root: loopback UDP for the underlay
(UDP_SEGMENT works on `lo`) and a SOCK_SEQPACKET pair for the TAP (one read or write a
frame, as a TAP device; readv/writev work on it).

References: the expected segments are built by scapy (test_segment.reference, the
kernel's rules), the expected VXLAN header is written by hand (RFC 7348: 0x08, VNI),
and checksums are verified by scapy. What each test would catch is in its docstring.
"""
from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from test_segment import DST_MAC, pseudo, reference, super_frame, tcp, v4
from vtep import datapath, tapdev, vnet
from vtep.offload import OffloadPath

VNI = 42
VX = struct.pack("!II", 0x08000000, VNI << 8)   # RFC 7348 section 5, by hand
LOCAL, PEER = "127.0.0.1", "127.0.0.2"


@pytest.fixture
def rig():
    """An OffloadPath between a fake TAP and a peer
    socket on 127.0.0.2 that receives what it sends and sends to its receive socket."""
    # the loops read and write `dev`; the test plays the kernel's side of the TAP, `tap`
    tap, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((PEER, 0))
    port = peer.getsockname()[1]
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((LOCAL, 0))
    rx.setblocking(False)
    pool = tapdev.send_pool(LOCAL, 4)
    dp = datapath.Datapath(vni=VNI, port=port, fdb={mac(DST_MAC): PEER}, peers=[PEER],
                           tap_readv=None, tap_write=None, sendto=None, recvfrom_into=None,
                           addr_port=port)
    op = OffloadPath(dp, dev.fileno(), pool, rx)
    dp.tap_write = op.tap_write

    class Rig:
        pass
    r = Rig()
    r.tap, r.dev, r.peer, r.rx, r.dp, r.op = tap, dev, peer, rx, dp, op
    try:
        yield r
    finally:
        for s in (tap, dev, peer, rx, *pool):
            s.close()


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def datagrams(sock, want: int) -> list[bytes]:
    sock.settimeout(2)
    return [sock.recv(65535) for _ in range(want)]


def test_a_super_frame_leaves_as_the_kernels_segments(rig):
    """A TSO read (virtio-net header, 5.5 segments of TCP) becomes one datagram per
    segment, each the VXLAN header and scapy's segment; counted as 1 frame, 6 datagrams.
    Catches a wrong UDP_SEGMENT size, a lost or doubled segment, a missing VXLAN header."""
    l3, l4, payload = v4(flags="DF"), tcp(), bytes(i % 253 for i in range(5 * 1398 + 700))
    frame = super_frame(l3, l4, payload)
    rig.tap.send(vnet.HEADER.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1398, 34, 16) + frame)
    assert rig.op.tx_batch() == 1
    got = datagrams(rig.peer, 6)
    want = [VX + r[8:] for r in reference(l3, l4, payload, 1398)]
    assert got == want
    c = rig.dp.counters.to_dict()
    assert c["tx"] == {"packets": 6, "bytes": sum(map(len, want)), "frames": 1}
    assert c["peers"][PEER]["tx_frames"] == 1 and c["peers"][PEER]["tx_packets"] == 6


def test_a_partial_checksum_is_completed_before_sending(rig):
    """A plain frame (no GSO) the kernel left CHECKSUM_PARTIAL: sent with the TCP checksum
    scapy computes. Catches sending the pseudo-header sum as it was read."""
    frame = super_frame(v4(), tcp(flags="A"), b"x" * 100)
    rig.tap.send(vnet.HEADER.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 34, 16) + frame)
    rig.op.tx_batch()
    [got] = datagrams(rig.peer, 1)
    assert got[:8] == VX
    inner = Ether(got[8:])
    again = inner.copy()
    del again[TCP].chksum
    assert Ether(bytes(again))[TCP].chksum == inner[TCP].chksum != pseudo(v4(), 6, 120)


def test_a_super_frame_whose_headers_do_not_add_up_is_dropped_and_counted(rig):
    """GSO_TCPV4 on a frame that is not TCP: nothing sent, one bad-offload drop, and the
    loop goes on to the next frame."""
    junk = bytes(Ether(dst=DST_MAC) / IP(dst="10.0.0.1", proto=17)) + bytes(100)
    good = super_frame(v4(), tcp(flags="A"), b"y" * 10)
    rig.tap.send(vnet.HEADER.pack(1, vnet.GSO_TCPV4, 54, 1398, 34, 16) + junk)
    rig.tap.send(vnet.HEADER.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 34, 16) + good)
    assert rig.op.tx_batch() == 2
    assert rig.dp.counters.tx_drops["bad-offload"] == 1
    assert len(datagrams(rig.peer, 1)) == 1


def test_received_segments_reach_the_tap_coalesced_and_bad_ones_are_counted(rig):
    """Five in-order segments of one flow from the peer, and one datagram of another VNI:
    one TAP write carrying all five (a GSO_TCPV4 virtio-net header, the payloads joined),
    the other counted as a `vni` drop. Catches per-frame writes, a lost segment, a
    datagram of the wrong VNI delivered."""
    segs = [VX + r[8:] for r in reference(v4(flags="DF"), tcp(flags="A"), bytes(range(250)) * 28,
                                          1400)]
    assert len(segs) == 5
    bad_vni = struct.pack("!II", 0x08000000, 7 << 8) + segs[0][8:]
    for d in segs + [bad_vni]:
        rig.peer.sendto(d, rig.rx.getsockname())
    assert rig.op.rx_batch() == 6
    rig.tap.setblocking(False)
    head = rig.tap.recv(65535)
    flags, gso_type, _, gso_size, start, off = vnet.HEADER.unpack_from(head)
    assert (flags, gso_type, gso_size, start, off) == (vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4,
                                                       1400, 34, 16)
    merged = Ether(head[vnet.LEN:])
    assert bytes(merged[TCP].payload) == bytes(range(250)) * 28
    with pytest.raises(BlockingIOError):
        rig.tap.recv(65535)          # one write, not five
    c = rig.dp.counters.to_dict()
    assert c["rx"]["packets"] == 5 and c["rx"]["frames"] == 1
    assert c["rx_drops"]["vni"] == 1 and c["peers"][PEER]["rx_packets"] == 5


def test_a_frame_too_big_for_the_path_answers_its_sender(rig):
    """EMSGSIZE on a plain frame over the path: counted too-big, and an ICMP "fragmentation
    needed" goes back through the TAP behind an all-zero virtio-net header (the TAP reads
    one with every frame). Catches an error written without its vnet header."""
    rig.dp.path_mtu = lambda peer: 1000
    rig.dp.vtep_ips = {PEER: socket.inet_aton("172.2.1.0")}
    rig.op.sends = tuple(lambda d, a: (_ for _ in ()).throw(OSError(90, "too long"))
                         for _ in rig.op.sends)   # EMSGSIZE
    frame = bytes(Ether(dst=DST_MAC) / IP(src="172.2.0.2", dst="172.2.1.9", flags="DF")
                  / TCP(flags="A") / (b"z" * 1200))
    rig.tap.send(vnet.ZERO + frame)
    rig.op.tx_batch()
    rig.tap.setblocking(False)
    out = rig.tap.recv(65535)
    assert out[:vnet.LEN] == vnet.ZERO
    icmp = Ether(out[vnet.LEN:])
    assert icmp[IP].proto == 1 and icmp[IP].dst == "172.2.0.2"
    assert bytes(icmp)[14 + 20:14 + 20 + 2] == b"\x03\x04"       # frag needed
    assert struct.unpack_from("!H", bytes(icmp), 14 + 20 + 6)[0] == 1000 - 50
    assert rig.dp.counters.tx_drops["too-big"] == 1 and rig.dp.counters.icmp_too_big == 1


class GroSocket:
    """A receive socket whose reads are what UDP_GRO returns: many datagrams back to back
    and a UDP_GRO control message with their size (level 17, type 104, an int)."""

    def __init__(self, reads):
        self.reads = list(reads)     # (datagrams, source)

    def recvmsg_into(self, buffers, ancbufsize):
        if not self.reads:
            raise BlockingIOError
        grams, src = self.reads.pop(0)
        data = b"".join(grams)
        buffers[0][:len(data)] = data
        return len(data), [(17, 104, struct.pack("=i", len(grams[0])))], 0, (src, 4789)


@pytest.mark.parametrize("bad", [None, 0, 4, 9])
def test_a_gro_read_is_split_checked_and_merged(rig, bad):
    """Ten segments of one flow in one GRO read (the last shorter), one of them of another
    VNI or none: every good one reaches the TAP, in order, the bad one is a `vni` drop.
    Catches a read taken whole when one header is bad (the numpy check), a wrong split
    (segment size, short last), per-datagram counts that do not add up."""
    payload = bytes(i % 241 for i in range(9 * 1000 + 300))
    segs = [VX + r[8:] for r in reference(v4(flags="DF"), tcp(flags="A"), payload, 1000)]
    assert len(segs) == 10 and len(segs[-1]) < len(segs[0])
    if bad is not None:
        segs[bad] = struct.pack("!II", 0x08000000, 7 << 8) + segs[bad][8:]
    rig.op.rx = GroSocket([(segs, PEER)])
    assert rig.op.rx_batch() == 1
    rig.tap.setblocking(False)
    got = b""
    frames = 0
    while True:
        try:
            w = rig.tap.recv(65535)
        except BlockingIOError:
            break
        got += bytes(Ether(w[vnet.LEN:])[TCP].payload)
        frames += 1
    keep = [i for i in range(10) if i != bad]
    assert got == b"".join(payload[i * 1000:(i + 1) * 1000] for i in keep)
    c = rig.dp.counters.to_dict()
    assert c["rx"]["packets"] == len(keep) and c["rx"]["frames"] == frames
    assert c["rx"]["bytes"] == sum(len(segs[i]) for i in keep)
    assert c["rx_drops"]["vni"] == (bad is not None)
    assert frames == (1 if bad in (None, 0, 9) else 2)   # merged around the gap


def test_small_frames_of_one_flow_go_in_one_send_in_order(rig):
    """Five pure ACKs, a shorter frame of the same flow, then a frame of another flow: the
    first six leave in one UDP_SEGMENT send (the shorter one last), the seventh on its
    own, all in the order read and each the VXLAN header and its frame. Catches a train
    that reorders, drops its short tail, or is not flushed at the end of a batch."""
    acks = [bytes(Ether(dst=DST_MAC) / IP(src="172.2.0.2", dst="172.2.1.9")
                  / TCP(sport=1000, dport=2000, seq=i, flags="A")) for i in range(5)]
    short = acks[0][:-4]              # fewer bytes: a train's last datagram may be shorter
    other = bytes(Ether(dst=DST_MAC) / IP(src="172.2.0.2", dst="172.2.1.9")
                  / TCP(sport=1001, dport=2000, flags="A"))
    calls = []

    def counting(i):
        real = rig.op.sendmsgs[i]

        def sendmsg(bufs, cmsg, flags, addr):
            calls.append((len(bufs[0]), cmsg[0][2]))
            return real(bufs, cmsg, flags, addr)
        return sendmsg
    rig.op.sendmsgs = tuple(counting(i) for i in range(len(rig.op.sendmsgs)))
    for f in acks + [short, other]:
        rig.tap.send(vnet.ZERO + f)
    assert rig.op.tx_batch() == 7
    got = datagrams(rig.peer, 7)
    assert got == [VX + f for f in acks + [short, other]]
    assert calls == [(5 * (8 + len(acks[0])) + 8 + len(short),
                      struct.pack("=H", 8 + len(acks[0])))]
    c = rig.dp.counters.to_dict()["tx"]
    assert c == {"packets": 7, "frames": 7, "bytes": sum(len(g) for g in got)}


def test_an_empty_datagram_is_a_short_drop_not_a_crash(rig):
    """A zero-length UDP datagram (anyone can send one) comes with no UDP_GRO size: counted
    `short`, and the datagram after it is delivered. Catches a division by its size."""
    good = VX + reference(v4(), tcp(flags="A"), b"p" * 40, 1000)[0][8:]
    rig.op.rx = GroSocket([([b""], PEER), ([good], PEER)])
    rig.op.rx.recvmsg_into = lambda bufs, anc, real=rig.op.rx.recvmsg_into: (
        lambda r: (r[0], [] if r[0] == 0 else r[1], r[2], r[3]))(real(bufs, anc))
    assert rig.op.rx_batch() == 2
    assert rig.dp.counters.rx_drops["short"] == 1 and rig.dp.counters.rx[0] == 1
    rig.tap.setblocking(False)
    assert rig.tap.recv(65535)[vnet.LEN:] == good[8:]


def test_a_super_frame_too_big_for_the_path_gets_the_answer_one_segment_would(rig):
    """UDP_SEGMENT refused with EINVAL (the kernel's answer when a segment exceeds the path
    MTU): one too-big drop, and the inner sender gets "fragmentation needed" with the path
    MTU less 50, quoting the first segment's IP header (its length is one segment's, not
    the super-frame's). EINVAL for a segment that fits the path is a send error, no ICMP.
    Catches a super-frame dropped silently, or an error quoting 64 KiB."""
    rig.dp.vtep_ips = {PEER: socket.inet_aton("172.2.1.0")}
    l3 = IP(src="172.2.0.2", dst="172.2.1.9", flags="DF", id=9)
    frame = super_frame(l3, tcp(), bytes(3 * 1398))

    def refuse(*_):
        raise OSError(22, "Invalid argument")    # EINVAL
    rig.op.sendmsgs = (refuse,) * len(rig.op.sendmsgs)
    for mtu, icmps in ((1400, 1), (1500, 1)):   # counted so far: the second adds none
        rig.dp.path_mtu = lambda peer, mtu=mtu: mtu
        rig.tap.send(vnet.HEADER.pack(1, vnet.GSO_TCPV4, 54, 1398, 34, 16) + frame)
        rig.op.tx_batch()
        assert rig.dp.counters.icmp_too_big == icmps
    assert rig.dp.counters.tx_drops["too-big"] == 1
    assert rig.dp.counters.tx_drops["send-error"] == 1
    rig.tap.setblocking(False)
    out = Ether(rig.tap.recv(65535)[vnet.LEN:])
    assert bytes(out)[14 + 20:14 + 20 + 2] == b"\x03\x04"
    assert struct.unpack_from("!H", bytes(out), 14 + 20 + 6)[0] == 1400 - 50
    quoted = IP(bytes(out)[14 + 20 + 8:])
    assert (quoted.len, quoted.id, quoted.dst) == (1398 + 40, 9, "172.2.1.9")
