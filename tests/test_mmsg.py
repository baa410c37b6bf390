"""vtep.mmsg against plain sockets on loopback (no root, no devices).

The reference is the socket module: what `sendto` sent is what RecvBatch must
report, and what SendBatch sent is what `recvfrom` receives. Loopback delivers
a datagram inside the sender's call, so it is queued by the time the call
returns: no sleeps. Linux answers on all of 127/8 without configuration,
which gives the senders distinct source addresses.
"""
from __future__ import annotations

import errno
import socket

import pytest

from vtep import mmsg


@pytest.fixture
def socks():
    """make(family, addr) -> a bound UDP socket, closed after the test."""
    made = []

    def make(family=socket.AF_INET, addr=("127.0.0.1", 0)):
        s = socket.socket(family, socket.SOCK_DGRAM)
        made.append(s)
        if addr is not None:
            s.bind(addr)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def v6(socks):
    """Skip when this host has no ::1 (CI has one)."""
    try:
        socks(socket.AF_INET6, ("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    return socks


def payloads(n: int) -> list[bytes]:
    """Distinct contents and lengths: a swapped or mis-sized slot shows."""
    return [bytes([i]) * (3 + 5 * i) + b"#%d" % i for i in range(n)]


def drain(rx: socket.socket) -> list[tuple[bytes, tuple]]:
    out = []
    rx.setblocking(False)
    try:
        while True:
            out.append(rx.recvfrom(70000))
    except BlockingIOError:
        return out


def batch_items(b: mmsg.RecvBatch) -> list[tuple[bytes, int, str, int]]:
    return [(bytes(b.payload(i)), b.lengths[i], b.source(i), b.source_port(i))
            for i in range(b.count)]


# ------------------------------------------------------------------ receive

def test_recv_reports_each_datagram_its_length_and_sender_in_order(socks):
    rx = socks()
    a = socks(addr=("127.0.0.2", 0))
    # the same port on another address: the sender is its address, not its port
    b = socks(addr=("127.0.0.3", a.getsockname()[1]))
    data = payloads(10)
    senders = [a if i % 3 else b for i in range(10)]
    for d, s in zip(data, senders):
        s.sendto(d, rx.getsockname())
    batch = mmsg.RecvBatch()
    assert batch.recv(rx.fileno()) == 10
    want = [(d, len(d), s.getsockname()[0], s.getsockname()[1]) for d, s in zip(data, senders)]
    assert batch_items(batch) == want
    assert [batch.length(i) for i in range(10)] == [len(d) for d in data]
    assert batch.truncated == []
    # datagram i sits at i * slot_size in the one buffer
    assert bytes(batch.view[3 * 2048:3 * 2048 + len(data[3])]) == data[3]


def test_a_steady_sender_costs_a_lookup_not_a_new_string(socks):
    rx = socks()
    tx = socks(addr=("127.0.0.2", 0))
    for _ in range(3):
        tx.sendto(b"x", rx.getsockname())
    batch = mmsg.RecvBatch()
    assert batch.recv(rx.fileno()) == 3
    assert batch.source(0) == "127.0.0.2"
    assert batch.source(0) is batch.source(2)


def test_empty_socket_gives_zero(socks):
    rx = socks()
    batch = mmsg.RecvBatch()
    assert batch.recv(rx.fileno()) == 0
    assert batch.count == 0 and batch.lengths == []


def test_more_than_slots_comes_in_slot_sized_batches_in_order(socks):
    rx = socks()
    tx = socks()
    data = payloads(10)
    for d in data:
        tx.sendto(d, rx.getsockname())
    batch = mmsg.RecvBatch(slots=4, slot_size=128)
    got = []
    counts = []
    while n := batch.recv(rx.fileno()):
        counts.append(n)
        got += [bytes(batch.payload(i)) for i in range(n)]
    assert counts == [4, 4, 2]
    assert got == data


def test_a_datagram_longer_than_its_slot_is_cut_and_flagged(socks):
    rx = socks()
    tx = socks()
    data = [b"a" * 50, b"b" * 100, bytes(range(150)), b"d" * 10]
    for d in data:
        tx.sendto(d, rx.getsockname())
    batch = mmsg.RecvBatch(slots=8, slot_size=100)
    assert batch.recv(rx.fileno()) == 4
    # exactly a slot's worth is whole: only the kernel's MSG_TRUNC says "cut"
    assert batch.truncated == [2]
    assert batch.lengths == [50, 100, 100, 10]
    assert bytes(batch.payload(2)) == data[2][:100]
    assert bytes(batch.payload(3)) == data[3]   # the next slot is untouched by the cut one
    tx.sendto(b"e" * 5, rx.getsockname())
    assert batch.recv(rx.fileno()) == 1 and batch.truncated == []


def test_recv_on_a_bad_fd_raises(socks):
    s = socks()
    fd = s.fileno()
    s.close()
    with pytest.raises(OSError) as e:
        mmsg.RecvBatch().recv(fd)
    assert e.value.errno == errno.EBADF


def test_recv_ipv6(v6):
    rx = v6(socket.AF_INET6, ("::1", 0))
    tx = v6(socket.AF_INET6, ("::1", 0))
    data = payloads(5)
    for d in data:
        tx.sendto(d, rx.getsockname()[:2])
    batch = mmsg.RecvBatch(ipv6=True)
    assert batch.recv(rx.fileno()) == 5
    port = tx.getsockname()[1]
    assert batch_items(batch) == [(d, len(d), "::1", port) for d in data]
    assert batch.source(0) is batch.source(4)


# ------------------------------------------------------------------ send

def test_flush_sends_every_datagram_to_its_destination_in_order(socks):
    rx1 = socks()
    rx2 = socks(addr=("127.0.0.2", 0))
    tx = socks()
    data = payloads(7)
    dests = [rx1 if i % 2 else rx2 for i in range(7)]
    batch = mmsg.SendBatch()
    for d, r in zip(data, dests):
        ip, port = r.getsockname()
        assert batch.add(memoryview(d), len(d), ip, port)
    assert batch.count == 7
    assert batch.flush(tx.fileno()) == (7, None)
    assert batch.failed is None and batch.count == 0
    me = tx.getsockname()
    assert drain(rx1) == [(d, me) for d, r in zip(data, dests) if r is rx1]
    assert drain(rx2) == [(d, me) for d, r in zip(data, dests) if r is rx2]


def test_add_copies_length_bytes_so_the_buffer_can_be_reused(socks):
    rx = socks()
    tx = socks()
    buf = bytearray(b"first-frame-and-more")
    batch = mmsg.SendBatch()
    batch.add(buf, 11, *rx.getsockname())
    buf[:] = b"second-frame-and-more"
    batch.add(buf, 12, *rx.getsockname())
    assert batch.flush(tx.fileno()) == (2, None)
    assert [d for d, _ in drain(rx)] == [b"first-frame", b"second-frame"]


def test_too_big_in_the_middle_stops_there_with_emsgsize(socks):
    rx = socks()
    tx = socks()
    ip, port = rx.getsockname()
    batch = mmsg.SendBatch(slots=8)
    for d in (b"zero", b"one", b"x" * 70000, b"three", b"four"):
        assert batch.add(d, len(d), ip, port)
    sent, err = batch.flush(tx.fileno())
    assert sent == 2
    assert isinstance(err, OSError) and err.errno == errno.EMSGSIZE
    assert batch.failed == 2 and batch.count == 0
    assert [d for d, _ in drain(rx)] == [b"zero", b"one"]   # the rest was dropped
    # the slot the big one borrowed points at its own buffer again
    for d in (b"again0", b"again1", b"again2"):
        batch.add(d, len(d), ip, port)
    assert batch.flush(tx.fileno()) == (3, None) and batch.failed is None
    assert [d for d, _ in drain(rx)] == [b"again0", b"again1", b"again2"]


def test_a_datagram_longer_than_a_slot_still_goes_whole(socks):
    rx = socks()
    tx = socks()
    big = bytes(i % 251 for i in range(5000))
    batch = mmsg.SendBatch(slots=4, slot_size=256)
    batch.add(b"small", 5, *rx.getsockname())
    batch.add(big, len(big), *rx.getsockname())
    assert batch.flush(tx.fileno()) == (2, None)
    assert [d for d, _ in drain(rx)] == [b"small", big]


def test_flush_of_an_empty_batch(socks):
    tx = socks()
    batch = mmsg.SendBatch()
    assert batch.flush(tx.fileno()) == (0, None)
    assert batch.failed is None


def test_a_full_batch_refuses_more(socks):
    rx = socks()
    tx = socks()
    batch = mmsg.SendBatch(slots=3)
    assert [batch.add(b"%d" % i, 1, *rx.getsockname()) for i in range(4)] == [True] * 3 + [False]
    assert batch.flush(tx.fileno()) == (3, None)
    assert [d for d, _ in drain(rx)] == [b"0", b"1", b"2"]


def test_flush_on_a_bad_fd_reports_ebadf_and_empties_the_queue(socks):
    rx = socks()
    s = socks()
    fd = s.fileno()
    s.close()
    batch = mmsg.SendBatch()
    batch.add(b"lost", 4, *rx.getsockname())
    batch.add(b"lost", 4, *rx.getsockname())
    sent, err = batch.flush(fd)
    assert sent == 0 and err.errno == errno.EBADF and batch.failed == 0
    assert batch.count == 0
    assert drain(rx) == []


def test_send_ipv6_and_ipv4_mapped(v6):
    rx6 = v6(socket.AF_INET6, ("::1", 0))
    rx4 = v6()
    tx = v6(socket.AF_INET6, None)   # dual-stack: IPv4 peers as ::ffff:a.b.c.d
    batch = mmsg.SendBatch(ipv6=True)
    port6 = rx6.getsockname()[1]
    batch.add(b"to-six-1", 8, "::1", port6)
    batch.add(b"to-four", 7, *rx4.getsockname())
    batch.add(b"to-six-2", 8, "::1", port6)
    assert batch.flush(tx.fileno()) == (3, None)
    assert [d for d, _ in drain(rx6)] == [b"to-six-1", b"to-six-2"]
    assert [d for d, _ in drain(rx4)] == [b"to-four"]


def test_round_trip_through_both_batches(socks):
    """SendBatch's datagrams read back by RecvBatch: byte for byte, sender for sender."""
    rx = socks()
    tx = socks(addr=("127.0.0.5", 0))
    data = payloads(20)
    out = mmsg.SendBatch(slots=32)
    for d in data:
        out.add(d, len(d), *rx.getsockname())
    assert out.flush(tx.fileno()) == (20, None)
    inb = mmsg.RecvBatch(slots=32)
    assert inb.recv(rx.fileno()) == 20
    assert batch_items(inb) == [(d, len(d), "127.0.0.5", tx.getsockname()[1]) for d in data]


def test_recv_ipv6_tells_ipv4_senders_apart_by_address(socks):
    """A dual-stack socket bound to ::ffff:127.0.0.1 hears IPv4 senders as mapped addresses;
    two of them on one port differ only in the address bytes of sockaddr_in6."""
    try:
        rx = socks(socket.AF_INET6, None)
        rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        rx.bind(("::ffff:127.0.0.1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 sockets here: {e}")
    a = socks(addr=("127.0.0.2", 0))
    b = socks(addr=("127.0.0.3", a.getsockname()[1]))
    for s in (a, b, a):
        s.sendto(b"hi", ("127.0.0.1", rx.getsockname()[1]))
    batch = mmsg.RecvBatch(ipv6=True)
    assert batch.recv(rx.fileno()) == 3
    assert [batch.source(i) for i in range(3)] == ["::ffff:127.0.0.2", "::ffff:127.0.0.3",
                                                    "::ffff:127.0.0.2"]


def test_a_socket_of_the_other_family_cannot_overflow_the_address_slots(v6):
    """An IPv4 batch on an IPv6 socket: the kernel reports 28-byte addresses into 16-byte
    room (cut, so the sources are wrong, but the memory stays the batch's own), and the
    datagrams themselves still arrive whole, call after call."""
    rx = v6(socket.AF_INET6, ("::1", 0))
    tx = v6(socket.AF_INET6, ("::1", 0))
    batch = mmsg.RecvBatch(slots=4, slot_size=64)
    for rnd in range(3):
        for i in range(4):
            tx.sendto(b"%d-%d" % (rnd, i), rx.getsockname()[:2])
        assert batch.recv(rx.fileno()) == 4
        assert [bytes(batch.payload(i)) for i in range(4)] == [b"%d-%d" % (rnd, i) for i in range(4)]
    # what the next call may write: the room there is, not what the last sender needed
    assert batch._namelens.tolist() == [16] * 4
