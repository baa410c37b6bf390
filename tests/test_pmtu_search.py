"""The path-MTU search of vtep/pmtu.py against a fake path (no sockets, no root), and the
parsing of the ICMP answers it relies on against hand-written bytes.

The search's contract (pmtu.py, RFC 1191 / RFC 8201): the largest packet between 576
(RFC 791's minimum) and the underlay MTU that reaches the peer with DF set. A router
that cannot forward a probe names its MTU in an ICMP "fragmentation needed" (IPv4) or
"packet too big" (IPv6), unless the path is a black hole that drops both silently.
"""
import struct

import pytest

from vtep import pmtu


class FakePath:
    """Hops in order, each (mtu, sends_icmp); probes of sizes in `lose_once` lose their
    first reply. Records every size probed."""

    def __init__(self, *hops, lose_once=()):
        self.hops = hops
        self.lose = set(lose_once)
        self.sent = []

    def __call__(self, size):
        self.sent.append(size)
        for mtu, icmp in self.hops:
            if size > mtu:
                return False, (mtu if icmp else None)
        if size in self.lose:
            self.lose.discard(size)
            return False, None
        return True, None


def search(path, ceiling=1500, tries=2):
    return pmtu.search(path, ceiling, tries)


def test_icmp_named_1400_under_a_1500_underlay_takes_three_probes():
    path = FakePath((1400, True))
    assert search(path) == (1400, 3, True)
    assert path.sent == [576, 1500, 1400]  # the floor, the ceiling, the MTU the router named


def test_black_hole_at_1400_is_found_by_binary_search():
    path = FakePath((1400, False))
    assert search(path) == (1400, 17, False)
    # every size above the path is tried twice (silence is not a verdict at first);
    # worked by hand: (lo + hi + 1) // 2 from 576..1499 once 1500 went unanswered
    assert path.sent == [576, 1500, 1500, 1038, 1269, 1384, 1442, 1442, 1413, 1413, 1398,
                         1405, 1405, 1401, 1401, 1399, 1400]


@pytest.mark.parametrize("icmp", [True, False])
def test_a_path_as_wide_as_the_underlay_takes_two_probes(icmp):
    path = FakePath((1500, icmp))
    assert search(path) == (1500, 2, False)
    assert path.sent == [576, 1500]


def test_576_black_hole():
    path = FakePath((576, False))
    assert search(path) == (576, 21, False)
    assert path.sent == [576, 1500, 1500, 1038, 1038, 807, 807, 691, 691, 633, 633, 604, 604,
                         590, 590, 583, 583, 579, 579, 577, 577]


def test_576_named_by_icmp_needs_no_search():
    path = FakePath((576, True))
    assert search(path) == (576, 2, True)
    assert path.sent == [576, 1500]


@pytest.mark.parametrize("icmp,sent,probes,learned", [
    (False, [576, 576], 2, False),   # silence: tried `tries` times
    (True, [576], 1, True),          # a router named an MTU below 576: no second try
])
def test_below_576_is_unreachable(icmp, sent, probes, learned):
    path = FakePath((575, icmp))
    assert search(path) == (None, probes, learned)
    assert path.sent == sent


def test_two_routers_name_their_mtus_in_turn():
    path = FakePath((1450, True), (1400, True))
    assert search(path) == (1400, 4, True)
    assert path.sent == [576, 1500, 1450, 1400]


def test_a_named_mtu_that_does_not_fit_falls_back_to_the_search():
    # the first router names 1400, a black hole behind it passes only 1300
    path = FakePath((1400, True), (1300, False))
    mtu, probes, learned = search(path)
    assert (mtu, learned) == (1300, True)
    assert path.sent[:4] == [576, 1500, 1400, 1400]
    assert probes == len(path.sent)
    assert all(577 <= s <= 1399 for s in path.sent[4:])


def test_a_lost_reply_is_retried():
    path = FakePath((1500, False), lose_once={576, 1500})
    assert search(path) == (1500, 4, False)
    assert path.sent == [576, 576, 1500, 1500]
    path = FakePath((1500, False), lose_once={576})
    assert search(path, tries=1) == (None, 1, False)  # one try: a lost reply is final


@pytest.mark.parametrize("icmp", [True, False])
def test_every_path_mtu_between_576_and_the_underlay_is_found(icmp):
    for mtu in range(576, 1501):
        path = FakePath((mtu, icmp))
        found, probes, _ = search(path)
        assert found == mtu
        # at most the floor, the ceiling twice and 2 * ceil(log2(924)) search probes
        assert probes == len(path.sent) <= (3 if icmp else 3 + 2 * 10), mtu
        if icmp:
            assert path.sent == ([576, 1500] if mtu in (576, 1500) else [576, 1500, mtu])


def test_ceiling_at_or_below_576():
    path = FakePath((1500, False))
    assert search(path, ceiling=576) == (576, 2, False)
    assert search(FakePath((1500, False)), ceiling=500) == (576, 2, False)


# --------------------------------------------------------------------------- Prober.path_mtu

def _prober(fake, *, v6=False, tries=2):
    """A Prober without its raw socket (that needs root): probe() is the fake path."""
    p = object.__new__(pmtu.Prober)
    p.v6, p.tries, p.refused, p.ident, p.seq = v6, tries, None, 0x1234, 7
    p.hlen = 40 if v6 else 20
    p.probe = lambda dst, size: fake(size)
    return p


def test_path_mtu_wraps_the_search():
    r = _prober(FakePath((1400, True))).path_mtu("network-2", "192.168.2.142", 1500)
    assert r == pmtu.PathMtu("network-2", "192.168.2.142", 1400, 3, True)


def test_path_mtu_names_the_peer_it_cannot_reach():
    with pytest.raises(pmtu.Unreachable) as e:
        _prober(FakePath((500, False))).path_mtu("network-2", "192.168.2.142", 1500)
    assert str(e.value) == ("peer network-2 (192.168.2.142): no 576-byte probe with DF came back "
                            "in 2 tries: the underlay path is down or drops ICMP echo")
    assert e.value.exit_code == 1


# --------------------------------------------------------------------------- the ICMP answers
# Byte layouts from RFC 792 (echo, destination unreachable), RFC 1191 section 4 (the
# next-hop MTU in the second half of the unused word) and RFC 4443 (ICMPv6).

IDENT, SEQ = 0x1234, 7
ECHO_V4 = struct.pack("!BBHHH", 8, 0, 0, IDENT, SEQ)
ECHO_V6 = struct.pack("!BBHHH", 128, 0, 0, IDENT, SEQ)
IP4_HDR = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0, 192, 168, 1, 138, 192, 168, 2, 142])


def _v4(icmp: bytes) -> bytes:
    """A raw IPv4 socket hands over the IP header too."""
    return IP4_HDR + icmp


def test_match_ipv4_echo_reply():
    p = _prober(None)
    reply = _v4(struct.pack("!BBHHH", 0, 0, 0, IDENT, SEQ))
    assert p._match(reply, "192.168.2.142", "192.168.2.142") == (True, None)
    assert p._match(reply, "192.168.9.9", "192.168.2.142") is None  # from someone else
    other = _v4(struct.pack("!BBHHH", 0, 0, 0, IDENT, SEQ + 1))
    assert p._match(other, "192.168.2.142", "192.168.2.142") is None  # an older probe's


def test_match_ipv4_fragmentation_needed_names_the_mtu():
    p = _prober(None)
    err = _v4(bytes([3, 4, 0, 0, 0, 0]) + (1400).to_bytes(2, "big") + IP4_HDR + ECHO_V4)
    assert p._match(err, "192.168.3.1", "192.168.2.142") == (False, 1400)
    # an old router sends 0 (RFC 1191 section 5): too big, MTU unknown
    err0 = _v4(bytes([3, 4, 0, 0, 0, 0, 0, 0]) + IP4_HDR + ECHO_V4)
    assert p._match(err0, "192.168.3.1", "192.168.2.142") == (False, None)
    # about somebody else's probe
    theirs = _v4(bytes([3, 4, 0, 0, 0, 0, 0x05, 0x78]) + IP4_HDR +
                 struct.pack("!BBHHH", 8, 0, 0, IDENT + 1, SEQ))
    assert p._match(theirs, "192.168.3.1", "192.168.2.142") is None


def test_match_ipv4_host_unreachable_is_refused():
    p = _prober(None)
    err = _v4(bytes([3, 1, 0, 0, 0, 0, 0, 0]) + IP4_HDR + ECHO_V4)
    assert p._match(err, "192.168.3.1", "192.168.2.142") == (False, None)
    assert p.refused == "192.168.3.1 answered destination unreachable (code 1)"


def test_match_ipv6_packet_too_big():
    p = _prober(None, v6=True)
    ip6 = bytes([0x60, 0, 0, 0, 0, 8, 58, 64]) + bytes(32)
    err = bytes([2, 0, 0, 0]) + (1280).to_bytes(4, "big") + ip6 + ECHO_V6
    assert p._match(err, "fd00:3::1", "fd00:2::142") == (False, 1280)
    reply = struct.pack("!BBHHH", 129, 0, 0, IDENT, SEQ)
    assert p._match(reply, "fd00:2::142", "fd00:2::142") == (True, None)
    # an ICMPv4 type 3 code 4 means nothing on an ICMPv6 socket (type 3 is time exceeded)
    assert p._match(bytes([3, 4, 0, 0, 0, 0, 5, 0x78]) + ip6 + ECHO_V6, "fd00:3::1",
                    "fd00:2::142") is None
