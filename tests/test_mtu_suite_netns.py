"""The MTU and fragmentation suite (issue 5): how both data paths behave at and beyond the
MTU, on every path of the seed cluster.

Every case runs on four paths (mtulab.PATHS): kernel -> kernel, kernel -> userspace and
userspace -> kernel (the mixed lab: kernel path on network-1, userspace on network-2,
traffic both ways), userspace -> userspace. Traffic goes pod -> remote pod. Every case
captures the underlay on the router (tcpdump, bounded by count and time, started before
the traffic and ended by PID after), runs `vxinspect --json --plan` on the capture and
asserts the exact set of checks that fire, with their counts. `df-clear` (info) fires for
every packet of a sender that leaves DF clear (the kernel path's default `df unset`) and
for none of a sender that sets it (the userspace path; the kernel path with `--df set`):
mtulab.df_clear_expected checks that packet by packet from its own reading of the capture.

Clusters are built once per mode and shared by the cases of a class (class-scoped,
indirectly parametrized fixtures; pytest groups the tests by mode). Cases 1-5 and 8 use
the project's lab (`vtep lab up --mode M`); case 1's jumbo underlay, case 6 and case 7
build it with the same builder from a spec that names what they change (LabSpec). Tests
in a class do not rely on each other's order: each one puts the cluster in the state it
needs first.

Figures (1500-byte underlay): overlay MTU 1450, the largest DF ping `-s 1422` (inner IP
1450, outer IP 1500), TCP MSS 1410; 9000 underlay: 8950; IPv6 underlay: 1430. Case 7
narrows the router's link towards network-2 to 1400 (both ends): path MTU 1400, overlay
MTU 1350.

`over(..., xfail=...)` marks known vtep bugs as strict xfails naming the exception
they raise (the day one passes, its mark must go); none is open.
"""
from __future__ import annotations

import json
import re
from contextlib import ExitStack, contextmanager

import pytest

import mtulab as m
from mtulab import PATHS, Capture, Cluster, vxinspect
from vtep.lab.lab import LabSpec
from vtep.lab.seed import plan_text
from vxinspect.checks import CHECKS

pytestmark = [pytest.mark.netns, pytest.mark.mtu]

ALL = tuple(PATHS)                                   # the four paths
KERNEL_SENDERS = ("kernel", "kernel-to-userspace")   # network-1 (kernel) sends
TRANSFER_LIMIT = 10.0      # seconds: a transfer not done by then is a black hole
BULK = 20_000_000          # case 5
SMALL_BULK = 2_000_000     # case 7: enough for many full-size segments
NFT_DROP_ICMP = ("add table inet vtep_mtu; add chain inet vtep_mtu out { type filter hook "
                 "output priority 0; }; add rule inet vtep_mtu out icmp type "
                 "destination-unreachable drop")


def over(fixture: str, *paths: str,
         xfail: dict[str, tuple[str, type[BaseException]]] | None = None):
    """Parametrize a test over `paths`; `fixture` (class-scoped) gets each path's lab mode,
    so that the paths of one mode share one cluster. xfail: path -> (the known bug that
    makes it fail, the exception it raises: conftest refuses an xfail without raises=;
    strict: the day it passes, the mark must go)."""
    xfail = xfail or {}
    params = [pytest.param(PATHS[p][0], p, id=p, marks=[pytest.mark.xfail(
        strict=True, reason=xfail[p][0], raises=xfail[p][1])] if p in xfail else [])
        for p in paths]
    return pytest.mark.parametrize(f"{fixture},path", params, indirect=[fixture],
                                   scope="class")


def ends(path: str) -> tuple[str, str]:
    """(sending node, receiving node) of a path."""
    _, src, dst = PATHS[path]
    return src, dst


def prefix_for(netns_prefix: str, tag: str, mode: str) -> str:
    return f"{netns_prefix}{tag}{mode[0]}-"


@contextmanager
def custom(request, netns_prefix, tmp_path_factory, tag: str, **spec):
    """The lab built from LabSpec(**spec) in the mode the fixture is parametrized with,
    recorded in a temporary directory; always stopped."""
    c = None
    try:
        c = Cluster.up(prefix_for(netns_prefix, tag[0], request.param),
                       LabSpec(mode=request.param, **spec), tmp_path_factory.mktemp(tag))
        yield c
    finally:
        if c is not None:
            c.stop()


def expect(v: m.Verdict, fired: dict[str, int]) -> None:
    """vxinspect fired exactly `fired` (zero counts dropped), with the exit code that
    follows: 1 when an error-severity check is among them, else 0."""
    want = {k: n for k, n in fired.items() if n}
    code = 1 if any(CHECKS[k].severity == "error" for k in want) else 0
    assert (v.exit, v.fired) == (code, want), f"{' '.join(v.argv)}"


def inner_icmp(pkts, src_ip: str, size: int | None = None):
    """VXLAN packets carrying an inner ICMP packet from src_ip (of IP length `size`)."""
    return [p for p in pkts if p.inner and p.inner.proto == 1 and p.inner.src == src_ip
            and (size is None or p.inner.length == size)]


def syns(pkts):
    """(inner source, SYN/ACK flags, MSS) of every TCP SYN and SYN-ACK in the capture."""
    return {(p.inner.src, p.inner.tcp_flags & 0x12, p.inner.mss) for p in pkts
            if p.inner and p.inner.tcp_flags is not None and p.inner.tcp_flags & 0x02}


# === cases 1-5 and 8: the project's lab ======================================================

@pytest.fixture(scope="class")
def lab(request, netns_prefix):
    # `vtep lab up --mode M`: a failing step of the build removes what it made; stop()
    # removes the rest
    c = Cluster.up(prefix_for(netns_prefix, "l", request.param), LabSpec(mode=request.param))
    try:
        yield c
    finally:
        c.stop()


class TestSeedLab:
    """A 1500-byte underlay: overlay MTU 1450 on every data path."""

    @over("lab", *ALL)
    def test_1_device_mtu_is_underlay_minus_50(self, lab, path, tmp_path):
        for node in m.NODES:   # the VTEP device (vxlan or TAP) and the pod it serves
            assert lab.device_mtu(lab.ns(node), "eth0") == 1500
            assert lab.device_mtu(lab.ns(node), "vxlan0") == 1450, (node, lab.path_of(node))
            assert lab.device_mtu(lab.pod_ns(node), "eth0") == 1450
        # the node's own traffic over its VTEP device: 1450 passes, 1451 does not
        src, dst = ends(path)
        lab.flush_pmtu()
        vtep_ip = {"network-1": "172.2.0.0", "network-2": "172.2.1.0"}
        with Capture(lab, tmp_path / "c1.pcap") as cap:
            rc, out = m.ping(lab.ns(src), vtep_ip[dst], "-M", "do", "-s", "1422", count=2)
            rc2, out2 = m.ping(lab.ns(src), vtep_ip[dst], "-M", "do", "-s", "1423", count=1)
        assert rc == 0 and m.received(out) == 2, out
        assert rc2 != 0 and "ping: local error: message too long, mtu=1450" in out2, out2
        pkts = cap.packets()
        full = inner_icmp(pkts, vtep_ip[src], 1450) + inner_icmp(pkts, vtep_ip[dst], 1450)
        assert len(full) == 4 and {p.length for p in full} == {1500}, pkts
        assert not any(p.inner and p.inner.length > 1450 for p in pkts)
        expect(vxinspect(cap.path, lab.plan_path),
               {"df-clear": m.df_clear_expected(pkts, lab.sender_df())})

    @over("lab", *ALL)
    def test_2_largest_df_packet_passes_in_1500_byte_outer_packets(self, lab, path, tmp_path):
        src, dst = ends(path)
        lab.flush_pmtu()
        with Capture(lab, tmp_path / "c2.pcap") as cap:
            rc, out = m.ping(lab.pod_ns(src), lab.pod_ip(dst), "-M", "do", "-s", "1422")
        assert rc == 0 and m.received(out) == 3, out
        assert "1422(1450) bytes" in out and "1430 bytes from" in out, out
        pkts = cap.packets()
        full = inner_icmp(pkts, lab.pod_ip(src), 1450) + inner_icmp(pkts, lab.pod_ip(dst), 1450)
        assert len(full) == 6, pkts   # 3 requests + 3 replies, each one VXLAN packet
        assert {p.length for p in full} == {1500} and not any(p.fragment for p in full)
        expect(vxinspect(cap.path, lab.plan_path),
               {"df-clear": m.df_clear_expected(pkts, lab.sender_df())})

    @over("lab", *ALL)
    def test_3_one_byte_more_fails_at_the_sender(self, lab, path, tmp_path):
        src, dst = ends(path)
        lab.flush_pmtu()
        with Capture(lab, tmp_path / "c3.pcap") as cap:
            rc, out = m.ping(lab.pod_ns(src), lab.pod_ip(dst), "-M", "do", "-s", "1423",
                             count=2)
        assert rc != 0 and m.received(out) == 0, out
        assert out.count("ping: local error: message too long, mtu=1450") == 2, out
        pkts = cap.packets()
        assert inner_icmp(pkts, lab.pod_ip(src)) == [], "part of it reached the underlay"
        assert not any(p.length > 1500 or p.fragment for p in pkts)
        expect(vxinspect(cap.path, lab.plan_path),
               {"df-clear": m.df_clear_expected(pkts, lab.sender_df())})

    @over("lab", *ALL)
    def test_4_without_df_the_sender_fragments_the_inner_packet(self, lab, path, tmp_path):
        src, dst = ends(path)
        lab.flush_pmtu()
        with Capture(lab, tmp_path / "c4.pcap") as cap:
            rc, out = m.ping(lab.pod_ns(src), lab.pod_ip(dst), "-s", "3000", count=2)
        assert rc == 0 and m.received(out) == 2, out
        pkts = cap.packets()
        for ip in (lab.pod_ip(src), lab.pod_ip(dst)):   # requests, then replies
            pieces = inner_icmp(pkts, ip)   # first fragments and the later ones
            # 3028 bytes of IP = 3008 of payload in pieces of at most 1430, cut on 8 bytes:
            # 1424 + 1424 + 160, i.e. inner packets of 1444, 1444 and 180 bytes per ping
            assert sorted(p.inner.length for p in pieces) == [180, 180, 1444, 1444, 1444,
                                                              1444], pieces
            assert all(p.inner.mf or p.inner.offset for p in pieces)
        vx = m.vxlan_packets(pkts)
        assert not any(p.fragment for p in vx) and max(p.length for p in vx) == 1494
        expect(vxinspect(cap.path, lab.plan_path),
               {"df-clear": m.df_clear_expected(pkts, lab.sender_df())})

    @over("lab", *ALL)
    def test_5_tcp_bulk_20mb_checked_end_to_end(self, lab, path, tmp_path):
        src, dst = ends(path)
        lab.flush_pmtu()
        # headers only (-s 128: outer 50 + inner Ethernet, IP and TCP with options fit)
        with Capture(lab, tmp_path / "c5.pcap", snaplen=128, count=60000) as cap:
            t = m.tcp_transfer(lab, src, dst, BULK, 30)
        assert t.ok, t.result
        pkts = cap.packets()
        vx = m.vxlan_packets(pkts)
        assert len(vx) > BULK // 1398, len(vx)   # every segment crossed the router
        assert syns(pkts) == {(lab.pod_ip(src), 0x02, 1410), (lab.pod_ip(dst), 0x12, 1410)}
        assert max(p.length for p in vx) == 1500 and not any(p.fragment for p in pkts)
        assert max(p.inner.length for p in vx if p.inner) == 1450
        v = vxinspect(cap.path, lab.plan_path)
        expect(v, {"df-clear": m.df_clear_expected(pkts, lab.sender_df())})
        assert max(f["largest_inner"] for f in v.doc["flows"]) == 1450

    @over("lab", *ALL)
    def test_8_udp_1450_passes_1451_is_refused_at_the_sender(self, lab, path, tmp_path):
        src, dst = ends(path)
        lab.flush_pmtu()
        # returns at the first datagram (the 1450-byte one): 1451 bytes are refused at the
        # sender, and the capture shows every datagram that crossed; the limit only bounds
        # a failure, so a loaded machine never runs out of it
        rx = m.py_popen(lab.pod_ns(dst), m.UDP_RECEIVER, {"port": 9999, "want": 1,
                                                          "limit": 20})
        try:
            assert rx.stdout.readline().strip() == "listening", rx.stderr.read()
            with Capture(lab, tmp_path / "c8.pcap") as cap:
                # UDP payloads 1422 and 1423: IP datagrams of 1450 and 1451 bytes, DF set
                r = m.py(lab.pod_ns(src), m.UDP_DF_SENDER, {"dst": lab.pod_ip(dst),
                                                            "port": 9999,
                                                            "sizes": [1422, 1423]})
                got = json.loads(rx.stdout.readline())
        finally:
            m.end_process(rx)
            rx.stdout.close()
            rx.stderr.close()
        sent = json.loads(r.stdout)
        assert sent == {"mtu": 1450, "sent": {"1422": "sent", "1423": "EMSGSIZE"}}, r.stdout
        assert got == [1422]
        pkts = cap.packets()
        udp = [p for p in pkts if p.inner and p.inner.proto == 17
               and p.inner.src == lab.pod_ip(src)]
        assert [(p.inner.length, p.length) for p in udp] == [(1450, 1500)], udp
        expect(vxinspect(cap.path, lab.plan_path),
               {"df-clear": m.df_clear_expected(pkts, lab.sender_df())})


# === case 1 on a 9000-byte underlay ==========================================================

def largest_packet(c: Cluster, path: str, tmp_path, mtu: int, outer: int):
    """Case 1 on a custom underlay: VTEP devices and pods at `mtu`; a DF ping of exactly
    `mtu` passes both ways in `outer`-byte outer packets, one byte more is refused at the
    sender. Returns (the capture, its packets) for the caller's vxinspect verdicts."""
    for node in m.NODES:
        assert c.device_mtu(c.ns(node), "vxlan0") == mtu
        assert c.device_mtu(c.pod_ns(node), "eth0") == mtu
    src, dst = ends(path)
    c.flush_pmtu()
    with Capture(c, tmp_path / "c1.pcap") as cap:
        rc, out = m.ping(c.pod_ns(src), c.pod_ip(dst), "-M", "do", "-s", str(mtu - 28), count=2)
        rc2, out2 = m.ping(c.pod_ns(src), c.pod_ip(dst), "-M", "do", "-s", str(mtu - 27),
                           count=1)
    assert rc == 0 and m.received(out) == 2, out
    assert rc2 != 0 and f"message too long, mtu={mtu}" in out2, out2
    pkts = cap.packets()
    full = inner_icmp(pkts, c.pod_ip(src), mtu) + inner_icmp(pkts, c.pod_ip(dst), mtu)
    assert len(full) == 4 and {p.length for p in full} == {outer}, pkts
    return cap, pkts


@pytest.fixture(scope="class")
def jumbo(request, netns_prefix, tmp_path_factory):
    with custom(request, netns_prefix, tmp_path_factory, "jumbo", underlay_mtu=9000) as c:
        yield c


class TestJumboUnderlay:
    @over("jumbo", *ALL)
    def test_1_device_mtu_8950_and_its_largest_packet(self, jumbo, path, tmp_path):
        c = jumbo
        cap, pkts = largest_packet(c, path, tmp_path, 8950, 9000)
        df = m.df_clear_expected(pkts, c.sender_df())
        expect(vxinspect(cap.path, c.plan_path, "--underlay-mtu", "9000"), {"df-clear": df})
        # held against vxinspect's default 1500-byte underlay, the same packets are too big
        expect(vxinspect(cap.path, c.plan_path),
               {"df-clear": df, "outer-too-big": 4, "inner-too-big": 4})


# === case 1 on an IPv6 underlay (the lab's topology is IPv4: built by mtulab) ===============



@pytest.fixture(scope="class")
def v6(request, netns_prefix, tmp_path_factory):
    with custom(request, netns_prefix, tmp_path_factory, "6ipv6", underlay="ipv6") as c:
        yield c


class TestIpv6Underlay:
    @over("v6", *ALL)
    def test_1_device_mtu_1430_and_its_largest_packet(self, v6, path, tmp_path):
        """Over IPv6 the encapsulation costs 70 bytes (40 + 8 + 8 + 14): 1500 - 70."""
        c = v6
        cap, pkts = largest_packet(c, path, tmp_path, 1430, 1500)
        assert all(p.v6 for p in inner_icmp(pkts, c.pod_ip(ends(path)[0]), 1430)), pkts
        # no df-clear over IPv6 (no DF bit), and both paths fill the outer UDP checksum
        expect(vxinspect(cap.path, c.plan_path), {})


# === case 6: overlay MTU 1500 forced on a 1500-byte underlay =================================

FORCED_PLAN = plan_text(mtu=1500)   # the seed plan with cluster.mtu = 1500


@pytest.fixture(scope="class")
def forced(request, netns_prefix, tmp_path_factory):
    """cluster.mtu = 1500 (the pods get 1500) and `vtep run --mtu 1500` (the override that
    turns the plan error into a warning) on every node."""
    with custom(request, netns_prefix, tmp_path_factory, "forced", plan_text=FORCED_PLAN,
                run_args={n: ["--mtu", "1500"] for n in m.NODES}) as c:
        yield c


class TestForcedOverlayMtu:
    @over("forced", *(p for p in ALL if p not in KERNEL_SENDERS))
    def test_6_userspace_sender_drops_and_answers(self, forced, path, tmp_path):
        """`vtep run --userspace --mtu 1500` on a 1500 underlay, then a full-size (1500) DF
        ping: the frame cannot be sent whole with DF set, so it is dropped and counted."""
        c = forced
        src, dst = ends(path)
        assert c.device_mtu(c.pod_ns(src), "eth0") == 1500
        assert c.device_mtu(c.ns(src), "vxlan0") == 1500   # a TAP takes any MTU
        before = c.counters(src)
        c.flush_pmtu()
        with Capture(c, tmp_path / "c6.pcap") as cap:
            rc, out = m.ping(c.pod_ns(src), c.pod_ip(dst), "-M", "do", "-s", "1472", count=2)
        assert rc != 0 and m.received(out) == 0, out
        # the sender hears of 1450 at once from the userspace VTEP: the frame did not fit
        # the path (EMSGSIZE), so it was dropped, counted, and answered with the path MTU
        # - 50 (naming the peer's VTEP address, the next hop over the tunnel); its second
        # ping fails locally
        peer_vtep = "172.2.1.0" if dst == "network-2" else "172.2.0.0"
        assert f"From {peer_vtep} icmp_seq=1 Frag needed and DF set (mtu = 1450)" in out, out
        after = c.wait_counters(src, lambda k: k["tx_drops"]["too-big"]
                                >= before["tx_drops"]["too-big"] + 1)
        assert after["icmp_too_big"] == before["icmp_too_big"] + 1, after
        assert after["tx_drops"]["too-big"] == before["tx_drops"]["too-big"] + 1, after
        assert "ping: local error: message too long, mtu=1450" in out, out
        pkts = cap.packets()
        assert inner_icmp(pkts, c.pod_ip(src)) == [], "a too-big frame reached the underlay"
        expect(vxinspect(cap.path, c.plan_path),
               {"df-clear": m.df_clear_expected(pkts, c.sender_df())})

    @over("forced", *KERNEL_SENDERS)
    def test_6_kernel_device_above_the_underlay_fragments_outer_packets(self, forced, path,
                                                                       tmp_path):
        """vxlan0 at 1500 over eth0 at 1500: the kernel caps a vxlan device bound to eth0 at
        1450, so `vtep run --kernel --mtu 1500` makes it unbound (no `dev`), and with its
        default `df unset` the kernel path fragments the 1550-byte outer packets."""
        c = forced
        src, dst = ends(path)
        for node in m.NODES:     # every kernel path of the cluster, so both ways in "kernel"
            if c.path_of(node) == "kernel":
                assert c.device_mtu(c.ns(node), "vxlan0") == 1500
                link = json.loads(m.sh(c.ns(node), ["ip", "-d", "-j", "link", "show",
                                                    "vxlan0"]).stdout)[0]
                assert "link" not in link["linkinfo"]["info_data"], link  # unbound
        if c.path_of(dst) == "userspace":
            before = c.counters(dst)
        c.flush_pmtu()
        with Capture(c, tmp_path / "c6b.pcap") as cap:
            rc, out = m.ping(c.pod_ns(src), c.pod_ip(dst), "-M", "do", "-s", "1472", count=2)
        pkts = cap.packets()
        vx = m.vxlan_packets(pkts)
        requests = [p for p in vx if p.src == m.UNDERLAY[src]]
        # each 1550-byte outer packet in two fragments: 1500 (MF) + 70 (offset 1480)
        assert sorted((p.length, p.mf, p.offset) for p in requests) == \
            [(70, False, 1480)] * 2 + [(1500, True, 0)] * 2, requests
        df = m.df_clear_expected(pkts, c.sender_df())
        if c.path_of(dst) == "kernel":
            # both ways: the reply (1500, DF clear) is fragmented the same way
            assert rc == 0 and m.received(out) == 2, out
            expect(vxinspect(cap.path, c.plan_path),
                   {"outer-fragment": 8, "outer-too-big": 4, "inner-too-big": 4,
                    "df-clear": df})
        else:
            # the userspace receiver reassembles the request; its pod's 1500-byte reply
            # (an echo reply leaves DF clear) does not fit the path: dropped and counted,
            # with no ICMP error (DF clear: the sender allowed fragmentation)
            assert rc != 0 and m.received(out) == 0, out
            after = c.wait_counters(dst, lambda k: k["tx_drops"]["too-big"]
                                    >= before["tx_drops"]["too-big"] + 2)
            assert after["icmp_too_big"] == before["icmp_too_big"], after
            assert inner_icmp(pkts, c.pod_ip(dst)) == []
            expect(vxinspect(cap.path, c.plan_path),
                   {"outer-fragment": 4, "outer-too-big": 2, "inner-too-big": 2,
                    "df-clear": df})


# === case 7: the router's link towards network-2 at MTU 1400 =================================

@pytest.fixture(scope="class")
def narrow(request, netns_prefix, tmp_path_factory):
    """The seed cluster whose router link towards network-2 (both ends) is 1400.

    The pods are attached before the link narrows (they keep 1450 and advertise MSS 1410,
    as pods of a cluster deployed on a 1500 underlay do); the VTEPs start after it, so
    network-2's own overlay MTU is 1350 (its eth0 is 1400) while network-1's stays 1450:
    the narrow hop is in the middle of network-1's path, invisible to network-1."""
    with custom(request, netns_prefix, tmp_path_factory, "narrow", narrow=1400) as c:
        c.icmp_dropped = False
        yield c


def configure(c: Cluster, *, n1: tuple = (), n2: tuple = (), drop_icmp: bool = False) -> None:
    """The state a case-7 test needs, whatever the previous one left: `vtep run` extra
    arguments per node (restarted only when they change), the router's ICMP errors
    dropped or not (nftables in the router namespace); then every learnt path MTU
    forgotten. (net.ipv4.ip_forward_use_pmtu is vtep's: `--df set` turns it on.)"""
    for node, args in (("network-1", list(n1)), ("network-2", list(n2))):
        if c.args[node] != args:
            c.restart_vtep(node, *args)
    if drop_icmp != c.icmp_dropped:
        m.sh(c.router, ["nft", NFT_DROP_ICMP] if drop_icmp
             else ["nft", "delete table inet vtep_mtu"])
        c.icmp_dropped = drop_icmp
    c.flush_pmtu()


def df_args(c: Cluster, node: str, df: str | None) -> tuple:
    return ("--df", df) if df and c.path_of(node) == "kernel" else ()


class Both:
    """Captures on both router interfaces: eth1 (network-1's side: what the sender sends,
    and the router's ICMP errors to it) and eth2 (the 1400 link to network-2)."""

    def __init__(self, c: Cluster, tmp, name: str, **kw):
        self.c = c
        self.eth1 = Capture(c, tmp / f"{name}-eth1.pcap", iface="eth1", **kw)
        self.eth2 = Capture(c, tmp / f"{name}-eth2.pcap", iface="eth2", **kw)
        self.stack = ExitStack()

    def __enter__(self):
        self.stack.enter_context(self.eth1)
        self.stack.enter_context(self.eth2)
        return self

    def __exit__(self, *exc):
        self.stack.close()

    def verdicts(self):
        """(eth1 packets, eth1 verdict, eth2 packets, eth2 verdict): eth2 held against its
        own MTU, 1400."""
        return (self.eth1.packets(), vxinspect(self.eth1.path, self.c.plan_path),
                self.eth2.packets(),
                vxinspect(self.eth2.path, self.c.plan_path, "--underlay-mtu", "1400"))


def assert_no_outer_fragments(c: Cluster, caps: Both, eth2_max: int = 1400) -> None:
    p1, v1, p2, v2 = caps.verdicts()
    assert not any(p.fragment for p in p1 + p2)
    assert max((p.length for p in m.vxlan_packets(p2)), default=0) <= eth2_max
    expect(v1, {"df-clear": m.df_clear_expected(p1, c.sender_df())})
    expect(v2, {"df-clear": m.df_clear_expected(p2, c.sender_df())})


def full_ping(c: Cluster, src: str, dst: str):
    return m.ping(c.pod_ns(src), c.pod_ip(dst), "-M", "do", "-s", "1422")


class TestNarrowLink:
    @over("narrow", *ALL)
    def test_7_setup(self, narrow, path):
        c = narrow
        configure(c)
        assert m.sh(c.router, ["ip", "-o", "link", "show", "eth2"]).stdout.count("mtu 1400")
        want = {"network-1": (1500, 1450), "network-2": (1400, 1350)}
        for node, (eth0, overlay) in want.items():
            assert c.device_mtu(c.ns(node), "eth0") == eth0
            assert c.device_mtu(c.ns(node), "vxlan0") == overlay
            assert c.device_mtu(c.pod_ns(node), "eth0") == 1450

    @over("narrow", *ALL)
    def test_7_default_full_size_df_packet(self, narrow, path, tmp_path):
        """No fix: what each path does with a 1450-byte DF packet."""
        c = narrow
        src, dst = ends(path)
        configure(c)
        if c.path_of(src) == "userspace":
            before = c.counters(src)
        with Both(c, tmp_path, "ping") as caps:
            rc, out = full_ping(c, src, dst)
        p1, v1, p2, v2 = caps.verdicts()
        df1, df2 = (m.df_clear_expected(p, c.sender_df()) for p in (p1, p2))
        if src == "network-2":
            # the narrow link is network-2's own: its overlay MTU is 1350, and the node
            # itself answers its pod (IP forwarding into a smaller device)
            assert rc != 0 and m.received(out) == 0, out
            assert "From 172.2.1.1 icmp_seq=1 Frag needed and DF set (mtu = 1350)" in out, out
            assert inner_icmp(p1 + p2, c.pod_ip(src)) == []
            expect(v1, {"df-clear": df1})
            expect(v2, {"df-clear": df2})
        elif c.path_of(src) == "kernel":
            # DF clear outside: the router fragments every 1500-byte outer packet
            assert rc == 0 and m.received(out) == 3, out
            req1 = inner_icmp(p1, c.pod_ip(src), 1450)
            assert [p.length for p in req1] == [1500] * 3 and not any(p.df for p in req1)
            req2 = [p for p in m.vxlan_packets(p2) if p.src == m.UNDERLAY[src]]
            # 1500 = 20 + 1480: 1376 bytes (a multiple of 8 that fits 1400) + 104
            assert sorted((p.length, p.offset) for p in req2) == \
                [(124, 1376)] * 3 + [(1396, 0)] * 3, req2
            assert m.frag_needed(p1) == []
            expect(v1, {"df-clear": df1})
            expect(v2, {"outer-fragment": 6, "outer-too-big": 3, "inner-too-big": 3,
                        "df-clear": df2})
        else:
            # DF set outside: the router drops the first and says "fragmentation needed,
            # 1400" to network-1; the kernel learns that path MTU, the next frames fail
            # with EMSGSIZE in the VTEP, which drops them, counts them and answers the pod
            # with 1400 - 50 (RFC 7348 section 4.3)
            assert rc != 0 and m.received(out) == 0, out
            assert re.search(r"From 172\.2\.1\.0 icmp_seq=\d Frag needed and DF set "
                             r"\(mtu = 1350\)", out), out
            assert "ping: local error: message too long, mtu=1350" in out, out
            errs = m.frag_needed(p1)
            assert [(p.src, p.dst, p.icmp[2]) for p in errs] == \
                [("192.168.1.213", m.UNDERLAY[src], 1400)], errs
            req1 = inner_icmp(p1, c.pod_ip(src), 1450)
            assert [(p.length, p.df) for p in req1] == [(1500, True)], req1
            assert inner_icmp(p2, c.pod_ip(src)) == []
            after = c.wait_counters(src, lambda k: k["icmp_too_big"] > before["icmp_too_big"])
            assert after["tx_drops"]["too-big"] - before["tx_drops"]["too-big"] == \
                after["icmp_too_big"] - before["icmp_too_big"] >= 1, after
            expect(v1, {"df-clear": df1})
            expect(v2, {"df-clear": df2})

    @over("narrow", *ALL)
    def test_7_default_tcp_transfer(self, narrow, path, tmp_path):
        c = narrow
        src, dst = ends(path)
        configure(c)
        with Both(c, tmp_path, "tcp", snaplen=128, count=20000) as caps:
            t = m.tcp_transfer(c, src, dst, SMALL_BULK, TRANSFER_LIMIT)
        assert t.ok, t.result
        p1, v1, p2, v2 = caps.verdicts()
        if c.path_of(src) == "kernel" and src == "network-1":
            # completes, every full-size segment fragmented by the router
            frags = [p for p in m.vxlan_packets(p2) if p.fragment]
            firsts = [p for p in frags if p.offset == 0]
            assert len(firsts) > SMALL_BULK // 1500 and len(frags) == 2 * len(firsts)
            expect(v1, {"df-clear": m.df_clear_expected(p1, c.sender_df())})
            expect(v2, {"outer-fragment": len(frags), "outer-too-big": len(firsts),
                        "inner-too-big": len(firsts),
                        "df-clear": m.df_clear_expected(p2, c.sender_df())})
        else:
            # network-2's own MTU (userspace-to-kernel), or the userspace VTEP's path MTU
            # discovery through the tunnel (userspace): no outer fragment anywhere
            assert_no_outer_fragments(c, caps)

    @over("narrow", *KERNEL_SENDERS)
    def test_7_kernel_df_set_router_drops_and_answers(self, narrow, path, tmp_path):
        """`vtep run --kernel --df set` on network-1: the router drops the 1500-byte DF
        packet and answers "fragmentation needed, 1400" to network-1, which learns the path
        MTU; the next full-size packet from the pod is refused by the node's vxlan device,
        which tells the pod the overlay MTU that fits (1400 - 50), because vtep turned on
        net.ipv4.ip_forward_use_pmtu (without it a forwarding host ignores learnt MTUs and
        the pod would hear nothing)."""
        c = narrow
        src, dst = ends(path)
        configure(c, n1=df_args(c, src, "set"))
        with Both(c, tmp_path, "ping") as caps:
            rc, out = full_ping(c, src, dst)
        assert rc != 0 and m.received(out) == 0, out
        assert re.search(r"Frag needed and DF set \(mtu = 1350\)", out), out
        p1, v1, p2, v2 = caps.verdicts()
        req1 = inner_icmp(p1, c.pod_ip(src), 1450)
        assert [(p.length, p.df) for p in req1] == [(1500, True)], req1   # the first only
        errs = m.frag_needed(p1)
        assert [(p.src, p.dst, p.icmp[2]) for p in errs] == \
            [("192.168.1.213", m.UNDERLAY[src], 1400)], errs
        assert inner_icmp(p2, c.pod_ip(src)) == []
        expect(v1, {"df-clear": m.df_clear_expected(p1, c.sender_df())})
        expect(v2, {"df-clear": m.df_clear_expected(p2, c.sender_df())})
        # network-1 learnt the path MTU towards network-2, and so did the pod
        r = m.sh(c.ns(src), ["ip", "route", "get", m.UNDERLAY[dst]])
        assert "mtu 1400" in r.stdout, r.stdout
        r = m.sh(c.pod_ns(src), ["ip", "route", "get", c.pod_ip(dst)])
        assert "mtu 1350" in r.stdout, r.stdout

    @over("narrow", *KERNEL_SENDERS)
    def test_7_fix_b_kernel_df_set_tcp_completes(self, narrow, path, tmp_path):
        """--df set: vtep also turns on net.ipv4.ip_forward_use_pmtu in the node, so the
        kernel's tunnel PMTU handling reaches the pod and the transfer completes
        unfragmented."""
        c = narrow
        src, dst = ends(path)
        configure(c, n1=df_args(c, src, "set"))
        assert m.sh(c.ns(src), ["sysctl", "-n", "net.ipv4.ip_forward_use_pmtu"]).stdout.strip() \
            == "1"
        with Both(c, tmp_path, "tcp", snaplen=128, count=20000) as caps:
            t = m.tcp_transfer(c, src, dst, SMALL_BULK, TRANSFER_LIMIT)
        assert t.ok, t.result
        assert_no_outer_fragments(c, caps)
        p1 = caps.eth1.packets()
        assert m.frag_needed(p1), "the router's error is what taught network-1"
        assert (c.pod_ip(src), 0x02, 1410) in syns(p1)   # the pod started at 1450

    @over("narrow", *ALL)
    def test_7_black_hole(self, narrow, path, tmp_path):
        """The router's ICMP errors dropped: a DF-setting sender (userspace; kernel with
        --df set) loses every full-size packet silently and the transfer stalls."""
        c = narrow
        src, dst = ends(path)
        configure(c, n1=df_args(c, src, "set"), drop_icmp=True)
        if c.path_of(src) == "userspace":
            before = c.counters(src)
        with Both(c, tmp_path, "ping") as caps:
            rc, out = full_ping(c, src, dst)
        with Both(c, tmp_path, "tcp", snaplen=128, count=20000) as tcaps:
            t = m.tcp_transfer(c, src, dst, SMALL_BULK, TRANSFER_LIMIT)
        if src == "network-2":
            # its narrow link is local: no ICMP from the router is needed
            assert "Frag needed and DF set (mtu = 1350)" in out, out
            assert t.ok, t.result
            assert_no_outer_fragments(c, tcaps)
            return
        assert rc != 0 and m.received(out) == 0, out
        assert "Frag needed" not in out and "local error" not in out, out
        assert not t.ok and "timed out" in t.result.get("error", ""), t.result
        assert t.seconds >= TRANSFER_LIMIT - 0.5
        for cap in (caps, tcaps):
            p1, v1, p2, v2 = cap.verdicts()
            assert m.frag_needed(p1) == []      # dropped in the router
            big = [p for p in m.vxlan_packets(p1) if p.length == 1500]
            assert big and all(p.df for p in big)   # sent, with DF, and lost
            assert max((p.length for p in m.vxlan_packets(p2)), default=0) <= 1400
            assert not any(p.fragment for p in p1 + p2)
            expect(v1, {"df-clear": m.df_clear_expected(p1, c.sender_df())})
            expect(v2, {"df-clear": m.df_clear_expected(p2, c.sender_df())})
        if c.path_of(src) == "userspace":
            # the kernel never learns the path MTU: every send "succeeds"
            after = c.counters(src)
            assert after["tx_drops"]["too-big"] == before["tx_drops"]["too-big"]
            assert after["icmp_too_big"] == before["icmp_too_big"]

    @over("narrow", *KERNEL_SENDERS)
    def test_7_black_hole_spares_kernel_df_unset(self, narrow, path, tmp_path):
        """The kernel default (DF clear) needs no ICMP: the router fragments instead."""
        c = narrow
        src, dst = ends(path)
        configure(c, drop_icmp=True)
        with Both(c, tmp_path, "tcp", snaplen=128, count=20000) as caps:
            t = m.tcp_transfer(c, src, dst, SMALL_BULK, TRANSFER_LIMIT)
        assert t.ok, t.result
        p1, v1, p2, v2 = caps.verdicts()
        frags = [p for p in m.vxlan_packets(p2) if p.fragment]
        assert frags and v2.fired["outer-fragment"] == len(frags)

    @over("narrow", *ALL)
    def test_7_fix_a_mtu_auto(self, narrow, path, tmp_path):
        """`vtep run --mtu auto` on both nodes, with the router's ICMP errors still dropped:
        the probe finds 1400 by binary search, the overlay MTU becomes 1350 and the node
        itself tells its pods (IP forwarding into a 1350 device)."""
        c = narrow
        src, dst = ends(path)
        configure(c, n1=("--mtu", "auto"), n2=("--mtu", "auto"), drop_icmp=True)
        for node in m.NODES:
            assert c.device_mtu(c.ns(node), "vxlan0") == 1350
        assert "--mtu auto: overlay MTU 1350" in c.log_of("network-1")
        with Both(c, tmp_path, "tcp", snaplen=128, count=20000) as caps:
            t = m.tcp_transfer(c, src, dst, SMALL_BULK, TRANSFER_LIMIT)
        assert t.ok, t.result
        assert_no_outer_fragments(c, caps)
        p2 = caps.eth2.packets()
        assert max(p.length for p in m.vxlan_packets(p2)) == 1400   # the path, filled
        gw = "172.2.0.1" if src == "network-1" else "172.2.1.1"
        r = m.sh(c.pod_ns(src), ["ip", "route", "get", c.pod_ip(dst)])
        assert "mtu 1350" in r.stdout, r.stdout
        rc, out = full_ping(c, src, dst)
        assert f"From {gw} icmp_seq=1 Frag needed and DF set (mtu = 1350)" in out or \
            "message too long, mtu=1350" in out, out

    @over("narrow", "userspace")
    def test_7_fix_c_userspace_pmtu_discovery_through_the_tunnel(self, narrow, path,
                                                                 tmp_path):
        """The userspace VTEP answers the pod with "fragmentation needed, 1350" when a frame
        does not fit the path MTU its socket learnt from the router: TCP starts at MSS 1410
        and completes with no outer fragment."""
        c = narrow
        src, dst = ends(path)
        configure(c)
        before = c.counters(src)
        with Both(c, tmp_path, "tcp", snaplen=128, count=20000) as caps:
            t = m.tcp_transfer(c, src, dst, SMALL_BULK, TRANSFER_LIMIT)
        assert t.ok, t.result
        assert_no_outer_fragments(c, caps)
        p1 = caps.eth1.packets()
        assert (c.pod_ip(src), 0x02, 1410) in syns(p1)
        assert m.frag_needed(p1), "the router's error taught the VTEP's socket"
        r = m.sh(c.pod_ns(src), ["ip", "route", "get", c.pod_ip(dst)])
        assert "mtu 1350" in r.stdout, r.stdout
        after = c.wait_counters(src, lambda k: k["icmp_too_big"] > before["icmp_too_big"])
        assert after["tx_drops"]["too-big"] > before["tx_drops"]["too-big"], after


# === case 9: inner IPv6 (a dual-stack plan) ==================================================
#
# The overlay MTU is one for both families: 1450 on a 1500 underlay. An inner IPv6 packet
# of 1450 bytes is the largest: ping -6 -s 1402 (1450 - 40 IPv6 - 8 ICMPv6) travels in a
# 1500-byte outer packet, -s 1403 is refused at the sender by its own stack (iputils
# prints "local error: message too long, mtu: 1450" for IPv6, "mtu=" for IPv4). Addresses
# are the seed's (vtep.lab.seed, fd00:172:2::/48, a /64 per node): the node's IPv6 VTEP
# address is its /64's first address, the bridge's gateway the second, the pod the third.

DUAL_PLAN = plan_text(dual_stack=True)
VTEP6 = {"network-1": "fd00:172:2::", "network-2": "fd00:172:2:1::"}
GATEWAY6 = {"network-1": "fd00:172:2::1", "network-2": "fd00:172:2:1::1"}
V6_LOCAL_ERROR = "ping: local error: message too long, mtu: {}"


def inner_icmp6(pkts, src_ip: str, size: int | None = None):
    """VXLAN packets carrying an inner ICMPv6 packet from src_ip (of IP length `size`)."""
    return [p for p in pkts if p.inner and p.inner.v6 and p.inner.proto == 58
            and p.inner.src == src_ip and (size is None or p.inner.length == size)]


@pytest.fixture(scope="class")
def dual(request, netns_prefix, tmp_path_factory):
    with custom(request, netns_prefix, tmp_path_factory, "dual", plan_text=DUAL_PLAN) as c:
        yield c


class TestInnerIpv6:
    @over("dual", *ALL)
    def test_9_inner_ipv6_1450_passes_1451_is_refused_at_the_sender(self, dual, path,
                                                                    tmp_path):
        c = dual
        src, dst = ends(path)
        for node in m.NODES:   # one MTU for both families, on the device and in the pod
            assert c.device_mtu(c.ns(node), "vxlan0") == 1450
            assert m.sh(c.ns(node), ["sysctl", "-n", "net.ipv6.conf.vxlan0.mtu"]
                        ).stdout.strip() == "1450"
            assert m.sh(c.pod_ns(node), ["sysctl", "-n", "net.ipv6.conf.eth0.mtu"]
                        ).stdout.strip() == "1450"
        c.flush_pmtu()
        p_src, p_dst = c.pod_ip6(src), c.pod_ip6(dst)
        with Capture(c, tmp_path / "c9.pcap") as cap:
            rc, out = m.ping(c.pod_ns(src), p_dst, "-6", "-M", "do", "-s", "1402")
            rc2, out2 = m.ping(c.pod_ns(src), p_dst, "-6", "-M", "do", "-s", "1403", count=2)
            # the node's own traffic over its VTEP device, VTEP address to VTEP address
            rc3, out3 = m.ping(c.ns(src), VTEP6[dst], "-6", "-M", "do", "-s", "1402", count=2)
            rc4, out4 = m.ping(c.ns(src), VTEP6[dst], "-6", "-M", "do", "-s", "1403", count=1)
        assert rc == 0 and m.received(out) == 3, out
        assert "1402 data bytes" in out and "1410 bytes from" in out, out
        assert rc2 != 0 and m.received(out2) == 0, out2
        assert out2.count(V6_LOCAL_ERROR.format(1450)) == 2, out2
        assert rc3 == 0 and m.received(out3) == 2, out3
        assert rc4 != 0 and V6_LOCAL_ERROR.format(1450) in out4, out4
        pkts = cap.packets()
        full = inner_icmp6(pkts, p_src, 1450) + inner_icmp6(pkts, p_dst, 1450)
        assert len(full) == 6, pkts   # 3 requests + 3 replies, each one VXLAN packet
        assert {p.length for p in full} == {1500} and not any(p.fragment for p in full)
        own = inner_icmp6(pkts, VTEP6[src], 1450) + inner_icmp6(pkts, VTEP6[dst], 1450)
        assert len(own) == 4 and {p.length for p in own} == {1500}, pkts
        # nothing larger crossed: the 1451-byte packets never left their senders
        assert not any(p.inner and p.inner.length > 1450 for p in pkts)
        assert not any(p.length > 1500 or p.fragment for p in pkts)
        expect(vxinspect(cap.path, c.plan_path),
               {"df-clear": m.df_clear_expected(pkts, c.sender_df())})


@pytest.fixture(scope="class")
def narrow6(request, netns_prefix, tmp_path_factory):
    """Case 7's lab (the router's link towards network-2 at 1400) with a dual-stack plan."""
    with custom(request, netns_prefix, tmp_path_factory, "ynarrow6", narrow=1400,
                plan_text=DUAL_PLAN) as c:
        c.icmp_dropped = False
        yield c


class TestInnerIpv6NarrowLink:
    @over("narrow6", *ALL)
    def test_9_ipv6_path_mtu_discovery_through_the_tunnel(self, narrow6, path, tmp_path):
        """An inner IPv6 sender, a 1400 hop in the underlay: the sender hears "packet too
        big, 1350" (ICMPv6, RFC 4443 3.2), lowers its path MTU, and a ping at the new size
        and a TCP transfer pass with no outer fragment. Who answers:
        - network-2's pod: its node, whose device is 1350 (forwarding into it), from the
          bridge's gateway;
        - a kernel path with `--df set` on network-1: the router drops the first 1500-byte
          packet and tells network-1 (ICMP "fragmentation needed, 1400"); the next one
          teaches the pod's route through vxlan0 the tunnel's path MTU (the vxlan driver,
          skb_tunnel_check_pmtu) and is lost; the one after is refused by the node's
          forwarding with a packet too big from the bridge's gateway;
        - the userspace path: the router teaches its socket; the next frame fails with
          EMSGSIZE, and the VTEP answers from the node's own IPv6 VTEP address."""
        c = narrow6
        src, dst = ends(path)
        configure(c, n1=df_args(c, src, "set"))
        userspace = c.path_of(src) == "userspace" and src == "network-1"
        if userspace:
            before = c.counters(src)
        p_src, p_dst = c.pod_ip6(src), c.pod_ip6(dst)
        r = m.sh(c.pod_ns(src), ["ip", "-6", "route", "get", p_dst])
        assert "mtu" not in r.stdout, r.stdout   # nothing learnt yet (configure flushed)
        with Both(c, tmp_path, "ping6") as caps:
            rc, out = m.ping(c.pod_ns(src), p_dst, "-6", "-M", "do", "-s", "1402", count=4)
        assert rc != 0 and m.received(out) == 0, out
        p1, v1, p2, v2 = caps.verdicts()
        if src == "network-2":
            assert f"From {GATEWAY6[src]} icmp_seq=1 Packet too big: mtu=1350" in out, out
            assert inner_icmp6(p1 + p2, p_src) == []
        else:
            who = VTEP6[src] if userspace else GATEWAY6[src]
            assert re.search(rf"From {re.escape(who)} icmp_seq=\d Packet too big: mtu=1350",
                             out), out
            # the first request went out whole (1500 bytes, DF set) and died at the router,
            # which told network-1 of 1400
            req1 = inner_icmp6(p1, p_src, 1450)
            assert req1 and {(p.length, p.df) for p in req1} == {(1500, True)}, req1
            errs = m.frag_needed(p1)
            assert {(p.src, p.dst, p.icmp[2]) for p in errs} == \
                {("192.168.1.213", m.UNDERLAY[src], 1400)}, errs
            assert inner_icmp6(p2, p_src) == []
        # every later try is refused at the sender itself, at the learnt 1350
        assert V6_LOCAL_ERROR.format(1350) in out, out
        expect(v1, {"df-clear": m.df_clear_expected(p1, c.sender_df())})
        expect(v2, {"df-clear": m.df_clear_expected(p2, c.sender_df())})
        r = m.sh(c.pod_ns(src), ["ip", "-6", "route", "get", p_dst])
        assert "mtu 1350" in r.stdout, r.stdout
        if userspace:
            after = c.wait_counters(src, lambda k: k["icmp_too_big"] > before["icmp_too_big"])
            assert after["tx_drops"]["too-big"] - before["tx_drops"]["too-big"] == \
                after["icmp_too_big"] - before["icmp_too_big"] >= 1, after
        # at the size it learnt, the pod's packets pass: a ping of 1350 and a TCP transfer
        # whose SYN already announces MSS 1290 (1350 - 40 - 20: IPv6 takes the MSS it
        # advertises from the route's learnt MTU, measured), segments of 1350
        rc, out = m.ping(c.pod_ns(src), p_dst, "-6", "-M", "do", "-s", "1302")
        assert rc == 0 and m.received(out) == 3, out
        with Both(c, tmp_path, "tcp6", snaplen=128, count=20000) as caps:
            t = m.tcp_transfer(c, src, dst, SMALL_BULK, TRANSFER_LIMIT, v6=True)
        assert t.ok, t.result
        assert_no_outer_fragments(c, caps)
        p1 = caps.eth1.packets()
        assert (p_src, 0x02, 1290) in syns(p1), syns(p1)
        tcp = [p for p in m.vxlan_packets(p1) if p.inner and p.inner.src == p_src]
        assert len(tcp) > SMALL_BULK // 1400 and max(p.inner.length for p in tcp) == 1350
