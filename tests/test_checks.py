"""Unit tests for vxinspect's checks, written from /tmp/vtep-shared/CONTRACT.md.

Every capture is crafted with scapy (tests/craft.py) and written with
tests/pcapwrite.py; nothing here uses vxinspect to build its inputs.
Packet numbers are 1-based positions in the capture.
"""
from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys

import pytest

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import craft as C
from pcapwrite import (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW,
                       write_pcap, write_pcapng)

from vxinspect import Options, inspect_file

# --------------------------------------------------------------------------- contract tables

SEVERITY = {
    "vni-mismatch": "error",
    "vxlan-flags": "error",
    "vxlan-reserved": "error",
    "outer-fragment": "error",
    "outer-too-big": "error",
    "inner-too-big": "error",
    "ip-checksum": "error",
    "udp-checksum": "error",
    "udp-zero-checksum-ipv6": "warning",
    "inner-ip-checksum": "error",
    "inner-l4-checksum": "warning",
    "truncated": "error",
    "inner-vlan": "warning",
    "unknown-inner-type": "warning",
    "legacy-port": "info",
    "df-clear": "info",
    "nesting-too-deep": "error",
    "mac-move": "warning",
    "plan-mismatch": "error",  # --plan only (tests/test_plan_check.py); count 0 without a plan
}
CHECKSUM_CHECKS = {"ip-checksum", "udp-checksum", "inner-ip-checksum", "inner-l4-checksum"}
DOC_KEYS = {"file", "plan", "packets", "vxlan_packets", "other_packets", "vnis", "flows", "checks",
            "ok", "error"}


# --------------------------------------------------------------------------- helpers

def inspect(tmp_path, frames, opts=None, name="cap.pcap", **pcap_kw) -> dict:
    path = write_pcap(tmp_path / name, [bytes(f) for f in frames], **pcap_kw)
    report = inspect_file(path, opts if opts is not None else Options())
    d = report.to_dict()
    assert d["error"] is None, d["error"]
    assert d["packets"] == len(frames)
    return d


def fired(d, ignore=()) -> dict:
    """{check id: packet list} for every check that fired, minus `ignore`."""
    out = {}
    for cid, c in d["checks"].items():
        if cid in ignore:
            continue
        if c["count"]:
            out[cid] = c["packets"]
    return out


def assert_fired(d, expected: dict, ignore=()):
    """Exactly the checks in `expected` fired (ids in `ignore` are not looked at),
    each on exactly the listed packets, and count == number of packets (lists <= 10)."""
    got = fired(d, ignore)
    assert got == expected
    for cid, pkts in expected.items():
        assert d["checks"][cid]["count"] == len(pkts), cid


def ok_expected(expected: dict) -> bool:
    return not any(SEVERITY[c] == "error" for c in expected)


# --------------------------------------------------------------------------- registry / shape

def test_checks_registry_matches_contract():
    from vxinspect.checks import CHECKS
    assert set(CHECKS) == set(SEVERITY)
    for cid, chk in CHECKS.items():
        assert chk.id == cid
        assert chk.severity == SEVERITY[cid], cid
        assert isinstance(chk.meaning, str) and chk.meaning


def test_document_shape_every_check_present(tmp_path):
    d = inspect(tmp_path, [C.vxlan(C.inner_icmp())])
    assert set(d) == DOC_KEYS
    assert set(d["checks"]) == set(SEVERITY)
    for cid, c in d["checks"].items():
        assert c == {"severity": SEVERITY[cid], "count": 0, "packets": []}
    assert d["ok"] is True
    assert d["file"].endswith("cap.pcap")
    json.dumps(d)  # must be JSON-serialisable


# --------------------------------------------------------------------------- twin cases
#
# Each case: (firing frame, clean twin, options, also, both, ignore)
#   firing frame fires `target` plus the ids in `also`;
#   both the firing frame and the clean twin fire the ids in `both`;
#   ids in `ignore` are not asserted (the contract leaves them open for that frame).
# The capture is [clean, firing, clean, firing]: target fires on packets [2, 4].

def _wrong(pkt, layer):
    return C.with_wrong_checksum(pkt, layer)


def _iplen_plus(n):
    p = C.vxlan(C.inner_icmp())
    return C.vxlan(C.inner_icmp(), ip_len=len(p[IP]) + n)


def _udplen_plus(n):
    p = C.vxlan(C.inner_icmp())
    return C.vxlan(C.inner_icmp(), udp_len=len(p[UDP]) + n)


def _plen_plus(n):
    p = C.vxlan(C.inner_icmp(), outer6=True)
    return C.vxlan(C.inner_icmp(), outer6=True, plen=len(p[IPv6].payload) + n)


def _inner_iplen_plus(n):
    i = C.inner_icmp()
    i[IP].len = len(i[IP]) + n
    return C.vxlan(i)


def _inner_plen_plus(n):
    i = C.inner_udp6()
    i[IPv6].plen = len(i[IPv6].payload) + n
    return C.vxlan(i)


def _ip_flags(flags):
    p = C.vxlan(C.inner_icmp(), df=False)
    p[IP].flags = flags
    return p


BIG = dict(mtu=9000)  # isolate outer-too-big from inner-too-big
INNER_ONLY = dict(underlay_mtu=9000, mtu=1450)

TWINS = {
    # vni-mismatch
    "vni-mismatch/11": ("vni-mismatch", lambda: C.vxlan(C.inner_icmp(), vni=11),
                        lambda: C.vxlan(C.inner_icmp(), vni=10), {}, (), (), ()),
    "vni-mismatch/0": ("vni-mismatch", lambda: C.vxlan(C.inner_icmp(), vni=0),
                       lambda: C.vxlan(C.inner_icmp(), vni=10), {}, (), (), ()),
    "vni-mismatch/max": ("vni-mismatch", lambda: C.vxlan(C.inner_icmp(), vni=0xFFFFFF),
                         lambda: C.vxlan(C.inner_icmp(), vni=10), {}, (), (), ()),
    "vni-mismatch/ipv6-outer": ("vni-mismatch", lambda: C.vxlan(C.inner_icmp(), vni=11, outer6=True),
                                lambda: C.vxlan(C.inner_icmp(), vni=10, outer6=True), {}, (), (), ()),
    "vni-mismatch/legacy-port": ("vni-mismatch", lambda: C.vxlan(C.inner_icmp(), vni=11, dport=8472),
                                 lambda: C.vxlan(C.inner_icmp(), dport=8472), {}, (),
                                 ("legacy-port",), ()),
    "vni-mismatch/nested-level2": ("vni-mismatch", lambda: C.nested(2, [10, 11]),
                                   lambda: C.nested(2, [10, 10]), {}, (), (), ()),
    # vxlan-flags
    "vxlan-flags/00": ("vxlan-flags", lambda: C.vxlan(C.inner_icmp(), flags=0x00),
                       lambda: C.vxlan(C.inner_icmp(), flags=0x08), {}, (), (), ()),
    "vxlan-flags/04": ("vxlan-flags", lambda: C.vxlan(C.inner_icmp(), flags=0x04),
                       lambda: C.vxlan(C.inner_icmp(), flags=0x08), {}, ("vxlan-reserved",), (), ()),
    # vxlan-reserved
    **{f"vxlan-reserved/flags-{f:02x}": (
        "vxlan-reserved", (lambda f=f: C.vxlan(C.inner_icmp(), flags=f)),
        lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()) for f in (0x0C, 0x88, 0x09, 0x48, 0x18)},
    **{f"vxlan-reserved/res1-{r:06x}": (
        "vxlan-reserved", (lambda r=r: C.vxlan(C.inner_icmp(), res1=r)),
        lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()) for r in (0x000001, 0x000100, 0x800000)},
    **{f"vxlan-reserved/res2-{r:02x}": (
        "vxlan-reserved", (lambda r=r: C.vxlan(C.inner_icmp(), res2=r)),
        lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()) for r in (0x01, 0x80, 0xFF)},
    # outer-fragment (whole datagram in one packet, but marked as a fragment)
    "outer-fragment/ipv4-MF": ("outer-fragment", lambda: _ip_flags("MF"), lambda: _ip_flags(0),
                               {}, (), ("df-clear",), ()),
    "outer-fragment/ipv6-M": ("outer-fragment", lambda: C.ipv6_first_fragment_whole(C.inner_icmp(), m=1),
                              lambda: C.ipv6_first_fragment_whole(C.inner_icmp(), m=0), {}, (), (), ()),
    # outer-too-big
    "outer-too-big/ipv4": ("outer-too-big", lambda: C.vxlan_of_outer_len(1501),
                           lambda: C.vxlan_of_outer_len(1500), BIG, (), (), ()),
    "outer-too-big/ipv6": ("outer-too-big", lambda: C.vxlan_of_outer_len(1501, outer6=True),
                           lambda: C.vxlan_of_outer_len(1500, outer6=True), BIG, (), (), ()),
    "outer-too-big/default-opts": ("outer-too-big", lambda: C.vxlan_of_outer_len(1501),
                                   lambda: C.vxlan_of_outer_len(1500), {}, ("inner-too-big",), (), ()),
    # inner-too-big
    "inner-too-big/inner-ipv4": ("inner-too-big", lambda: C.vxlan(C.inner_ipv4_of_len(1451)),
                                 lambda: C.vxlan(C.inner_ipv4_of_len(1450)), INNER_ONLY, (), (), ()),
    "inner-too-big/inner-ipv6": ("inner-too-big", lambda: C.vxlan(C.inner_ipv6_of_len(1451)),
                                 lambda: C.vxlan(C.inner_ipv6_of_len(1450)), INNER_ONLY, (), (), ()),
    "inner-too-big/inner-vlan-not-counted": (
        "inner-too-big", lambda: C.vxlan(C.inner_ipv4_of_len(1451, vlans=(100,))),
        lambda: C.vxlan(C.inner_ipv4_of_len(1450, vlans=(100,))), INNER_ONLY, (), ("inner-vlan",), ()),
    # ip-checksum
    "ip-checksum/outer": ("ip-checksum", lambda: _wrong(C.vxlan(C.inner_icmp()), IP),
                          lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()),
    # udp-checksum
    "udp-checksum/ipv4": ("udp-checksum", lambda: _wrong(C.vxlan(C.inner_icmp()), UDP),
                          lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()),
    "udp-checksum/ipv6": ("udp-checksum", lambda: _wrong(C.vxlan(C.inner_icmp(), outer6=True), UDP),
                          lambda: C.vxlan(C.inner_icmp(), outer6=True), {}, (), (), ()),
    # udp-zero-checksum-ipv6
    "udp-zero-checksum-ipv6": ("udp-zero-checksum-ipv6",
                               lambda: C.vxlan(C.inner_icmp(), outer6=True, udp_chksum=0),
                               lambda: C.vxlan(C.inner_icmp(), outer6=True), {}, (), (), ()),
    # inner-ip-checksum
    "inner-ip-checksum/icmp": ("inner-ip-checksum", lambda: C.vxlan(_wrong(C.inner_icmp(), IP)),
                               lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()),
    "inner-ip-checksum/tcp": ("inner-ip-checksum", lambda: C.vxlan(_wrong(C.inner_tcp(), IP)),
                              lambda: C.vxlan(C.inner_tcp()), {}, (), (), ()),
    # inner-l4-checksum
    "inner-l4-checksum/tcp": ("inner-l4-checksum", lambda: C.vxlan(_wrong(C.inner_tcp(), TCP)),
                              lambda: C.vxlan(C.inner_tcp()), {}, (), (), ()),
    "inner-l4-checksum/udp": ("inner-l4-checksum", lambda: C.vxlan(_wrong(C.inner_udp(), UDP)),
                              lambda: C.vxlan(C.inner_udp()), {}, (), (), ()),
    "inner-l4-checksum/icmp": ("inner-l4-checksum", lambda: C.vxlan(_wrong(C.inner_icmp(), ICMP)),
                               lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()),
    "inner-l4-checksum/icmpv6": ("inner-l4-checksum",
                                 lambda: C.vxlan(_wrong(C.inner_icmp6(), ICMPv6EchoRequest)),
                                 lambda: C.vxlan(C.inner_icmp6()), {}, (), (), ()),
    "inner-l4-checksum/tcp6": ("inner-l4-checksum", lambda: C.vxlan(_wrong(C.inner_tcp6(), TCP)),
                               lambda: C.vxlan(C.inner_tcp6()), {}, (), (), ()),
    "inner-l4-checksum/udp6": ("inner-l4-checksum", lambda: C.vxlan(_wrong(C.inner_udp6(), UDP)),
                               lambda: C.vxlan(C.inner_udp6()), {}, (), (), ()),
    "inner-l4-checksum/ipv6-outer": ("inner-l4-checksum",
                                     lambda: C.vxlan(_wrong(C.inner_tcp(), TCP), outer6=True),
                                     lambda: C.vxlan(C.inner_tcp(), outer6=True), {}, (), (), ()),
    # truncated (length fields that disagree with the bytes present)
    "truncated/outer-ip-len": ("truncated", lambda: _iplen_plus(4), lambda: _iplen_plus(0), {}, (), (),
                               ("udp-checksum",)),
    "truncated/outer-udp-len-long": ("truncated", lambda: _udplen_plus(4), lambda: _udplen_plus(0), {},
                                     (), (), ("udp-checksum",)),
    "truncated/outer-udp-len-7": ("truncated", lambda: C.vxlan(C.inner_icmp(), udp_len=7),
                                  lambda: _udplen_plus(0), {}, (), (), ("udp-checksum",)),
    "truncated/outer-ipv6-plen": ("truncated", lambda: _plen_plus(4), lambda: _plen_plus(0), {}, (), (),
                                  ("udp-checksum",)),
    "truncated/inner-ip-len": ("truncated", lambda: _inner_iplen_plus(4), lambda: _inner_iplen_plus(0),
                               {}, (), (), ("inner-l4-checksum",)),
    "truncated/inner-ipv6-plen": ("truncated", lambda: _inner_plen_plus(4), lambda: _inner_plen_plus(0),
                                  {}, (), (), ("inner-l4-checksum",)),
    # inner-vlan
    "inner-vlan/8021q": ("inner-vlan", lambda: C.vxlan(C.inner_icmp(vlans=(100,))),
                         lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()),
    "inner-vlan/8021ad": ("inner-vlan", lambda: C.vxlan(C.inner_icmp(vlans=(200, 100), qinq=True)),
                          lambda: C.vxlan(C.inner_icmp()), {}, (), (), ()),
    "inner-vlan/arp": ("inner-vlan", lambda: C.vxlan(C.inner_arp(vlans=(100,))),
                       lambda: C.vxlan(C.inner_arp()), {}, (), (), ()),
    # unknown-inner-type
    "unknown-inner-type/88b5": ("unknown-inner-type", lambda: C.vxlan(C.inner_icmp(ethertype=0x88B5)),
                                lambda: C.vxlan(C.inner_icmp(ethertype=0x0800)), {}, (), (), ()),
    "unknown-inner-type/9000": ("unknown-inner-type", lambda: C.vxlan(C.inner_icmp(ethertype=0x9000)),
                                lambda: C.vxlan(C.inner_icmp(ethertype=0x0800)), {}, (), (), ()),
    "unknown-inner-type/after-vlan": (
        "unknown-inner-type", lambda: C.vxlan(C.inner_icmp(ethertype=0x88B5, vlans=(100,))),
        lambda: C.vxlan(C.inner_icmp(ethertype=0x0800, vlans=(100,))), {}, (), ("inner-vlan",), ()),
    # legacy-port
    "legacy-port": ("legacy-port", lambda: C.vxlan(C.inner_icmp(), dport=8472),
                    lambda: C.vxlan(C.inner_icmp(), dport=4789), {}, (), (), ()),
    # df-clear
    "df-clear": ("df-clear", lambda: C.vxlan(C.inner_icmp(), df=False),
                 lambda: C.vxlan(C.inner_icmp(), df=True), {}, (), (), ()),
    # nesting-too-deep
    "nesting-too-deep": ("nesting-too-deep", lambda: C.nested(5), lambda: C.nested(4), {}, (), (), ()),
}


@pytest.mark.parametrize("case", sorted(TWINS))
def test_twin(tmp_path, case):
    target, fire, clean, opts, also, both, ignore = TWINS[case]
    assert target not in ignore
    frames = [clean(), fire(), clean(), fire()]
    d = inspect(tmp_path, frames, Options(**opts))
    expected = {target: [2, 4]}
    for c in also:
        expected[c] = [2, 4]
    for c in both:
        expected[c] = [1, 2, 3, 4]
    assert_fired(d, expected, ignore)
    if not ignore:
        assert d["ok"] is ok_expected(expected)
    if not target == "truncated":
        assert d["vxlan_packets"] == 4 and d["other_packets"] == 0


def test_every_check_has_a_firing_twin():
    # mac-move needs two packets (its own test); plan-mismatch a plan (test_plan_check.py).
    assert {t[0] for t in TWINS.values()} | {"mac-move", "plan-mismatch"} == set(SEVERITY)


# --------------------------------------------------------------------------- clean reference

def _reference_frames():
    return [
        C.vxlan(C.inner_arp()),
        C.vxlan(C.inner_icmp()),
        C.vxlan(C.inner_tcp()),
        C.vxlan(C.inner_udp()),
        C.vxlan(C.inner_udp(chksum=0)),          # inner UDP checksum 0 over IPv4: "none"
        C.vxlan(C.inner_icmp6()),
        C.vxlan(C.inner_tcp6()),
        C.vxlan(C.inner_udp6()),
        C.vxlan(C.inner_icmp(), udp_chksum=0),   # outer UDP checksum 0 over IPv4 is fine
        C.vxlan(C.inner_arp(), outer6=True),
        C.vxlan(C.inner_icmp(), outer6=True),
        C.vxlan(C.inner_tcp(), outer6=True),
        C.vxlan(C.inner_udp6(), outer6=True),
        C.vxlan(C.inner_icmp6(), outer6=True),
    ]


def test_reference_frames_are_what_they_claim():
    # guards the crafting helpers: IPv4 outers carry DF, IPv6 outers a non-zero UDP checksum
    for f in _reference_frames():
        if IPv6 in f:
            assert C.checksum_of(f, UDP) != 0
        else:
            assert f[IP].flags.DF


def test_clean_reference_set(tmp_path):
    frames = _reference_frames()
    others = [C.outer_icmp_other(), C.outer_arp_other(), C.outer_udp_other(53)]
    d = inspect(tmp_path, frames + others)
    assert_fired(d, {})
    assert d["ok"] is True
    assert d["vxlan_packets"] == len(frames)
    assert d["other_packets"] == len(others)
    assert d["vnis"] == {"10": len(frames)}


def test_flows(tmp_path):
    d = inspect(tmp_path, _reference_frames() + [C.vxlan(C.inner_icmp(src_mac="02:42:ac:02:00:77"), src=C.UNDER_SRC2)])
    flows = {(ipaddress.ip_address(f["src"]), ipaddress.ip_address(f["dst"])): f["packets"]
             for f in d["flows"]}
    assert flows == {
        (ipaddress.ip_address(C.UNDER_SRC), ipaddress.ip_address(C.UNDER_DST)): 9,
        (ipaddress.ip_address(C.UNDER6_SRC), ipaddress.ip_address(C.UNDER6_DST)): 5,
        (ipaddress.ip_address(C.UNDER_SRC2), ipaddress.ip_address(C.UNDER_DST)): 1,
    }


def test_outer_vlan_tags_are_decoded(tmp_path):
    frames = [
        C.vxlan(C.inner_icmp(), outer_vlans=(7,)),
        C.vxlan(C.inner_icmp(), outer_vlans=(7, 8), outer_qinq=True),
        C.vxlan(C.inner_icmp(), vni=11, outer_vlans=(7,)),
        C.vxlan(C.inner_icmp(), vni=11, outer_vlans=(7, 8), outer_qinq=True),
    ]
    d = inspect(tmp_path, frames)
    assert d["vxlan_packets"] == 4
    assert_fired(d, {"vni-mismatch": [3, 4]})


def test_ethernet_padding_is_not_truncation(tmp_path):
    inner_icmp_small = C.inner_eth() / IP(src=C.INNER_SRC, dst=C.INNER_DST, flags="DF") / ICMP(type=8)
    assert len(inner_icmp_small) < 60
    frames = [
        bytes(C.vxlan(C.inner_icmp())) + b"\0" * 8,                       # outer frame padded
        C.vxlan(bytes(C.inner_arp()) + b"\0" * 18),                        # inner ARP padded to 60
        C.vxlan(bytes(inner_icmp_small) + b"\0" * (60 - len(inner_icmp_small))),  # inner IPv4 padded
        C.vxlan(bytes(C.inner_udp(chksum=0)) + b"\0" * 6),
    ]
    d = inspect(tmp_path, frames)
    assert_fired(d, {})
    assert d["vxlan_packets"] == 4


_FULL_TCP_LEN = len(C.vxlan(C.inner_tcp()))


@pytest.mark.parametrize("cut", [
    14 + 20 + 8 + 4,                 # inside the VXLAN header
    14 + 20 + 8 + 8 + 6,             # inside the inner Ethernet header
    14 + 20 + 8 + 8 + 14 + 10,       # inside the inner IPv4 header
    14 + 20 + 8 + 8 + 14 + 20 + 10,  # inside the inner TCP header
    _FULL_TCP_LEN - 5,               # inner payload only (outer IP total length > bytes present)
], ids=["in-vxlan-hdr", "in-inner-eth", "in-inner-ip", "in-inner-tcp", "in-payload"])
@pytest.mark.parametrize("snap", [True, False], ids=["snaplen", "short-record"])
def test_capture_truncation(tmp_path, cut, snap):
    """Frame cut short in the capture: with orig_len = full length (snaplen) or orig_len = cut."""
    full = bytes(C.vxlan(C.inner_tcp()))
    frames = [full, full[:cut], full]
    orig = [len(full)] * 3 if snap else None
    d = inspect(tmp_path, frames, orig_lens=orig)
    if snap and cut == _FULL_TCP_LEN - 5:
        # A snap length that cuts only payload (tcpdump -s 128, the usual
        # header-only capture) leaves every header whole, and the length fields
        # agree with the original length the record states: not truncation.
        # Otherwise every header-only capture would fail (README, "Reading rules").
        assert_fired(d, {}, ignore=CHECKSUM_CHECKS)
        assert d["ok"] is True
        return
    assert_fired(d, {"truncated": [2]}, ignore=CHECKSUM_CHECKS)
    assert d["ok"] is False


# --------------------------------------------------------------------------- counting rules

def test_count_once_per_packet(tmp_path):
    frames = [
        C.vxlan(C.inner_icmp()),
        C.nested(2, [11, 12]),                                    # two wrong VNIs in one packet
        C.vxlan(C.inner_icmp(), flags=0x0C, res1=0xABCDEF, res2=0x7F),  # every reserved field set
    ]
    d = inspect(tmp_path, frames)
    assert_fired(d, {"vni-mismatch": [2], "vxlan-reserved": [3]})


def test_packet_list_capped_at_ten(tmp_path):
    frames = [C.vxlan(C.inner_icmp())] + [C.vxlan(C.inner_icmp(), vni=11)] * 12
    d = inspect(tmp_path, frames)
    c = d["checks"]["vni-mismatch"]
    assert c["count"] == 12
    assert c["packets"] == list(range(2, 12))


def test_vnis_counts_outermost_layer(tmp_path):
    frames = [C.vxlan(C.inner_icmp()), C.vxlan(C.inner_arp(), vni=20),
              C.vxlan(C.inner_tcp()), C.nested(3, [20, 30, 40])]
    d = inspect(tmp_path, frames, Options(vnis=frozenset({10, 20, 30, 40})))
    assert d["vnis"] == {"10": 2, "20": 2}
    assert_fired(d, {})


def test_udp_source_port_does_not_make_vxlan(tmp_path):
    frames = [C.vxlan(C.inner_icmp(), vni=11, sport=4789, dport=5555), C.vxlan(C.inner_icmp())]
    d = inspect(tmp_path, frames)
    assert d["vxlan_packets"] == 1 and d["other_packets"] == 1
    assert_fired(d, {})


# --------------------------------------------------------------------------- options

def test_vni_option_replaces_default(tmp_path):
    frames = [C.vxlan(C.inner_icmp(), vni=42), C.vxlan(C.inner_icmp(), vni=10)]
    assert_fired(inspect(tmp_path, frames), {"vni-mismatch": [1]})
    assert_fired(inspect(tmp_path, frames, Options(vnis=frozenset({42}))), {"vni-mismatch": [2]})
    assert_fired(inspect(tmp_path, frames, Options(vnis=frozenset({10, 42}))), {})


def test_port_option(tmp_path):
    frames = [C.vxlan(C.inner_icmp(), vni=11, dport=9999), C.vxlan(C.inner_icmp(), vni=11),
              C.vxlan(C.inner_icmp(), vni=11, dport=8472)]
    d = inspect(tmp_path, frames)
    assert (d["vxlan_packets"], d["other_packets"]) == (2, 1)
    assert_fired(d, {"vni-mismatch": [2, 3], "legacy-port": [3]})
    d = inspect(tmp_path, frames, Options(ports=frozenset({4789, 8472, 9999})))
    assert (d["vxlan_packets"], d["other_packets"]) == (3, 0)
    assert_fired(d, {"vni-mismatch": [1, 2, 3], "legacy-port": [3]})


@pytest.mark.parametrize("opts,lens,expected", [
    # default: underlay 1500, overlay 1450 over IPv4
    ({}, [1500, 1501], {"outer-too-big": [2], "inner-too-big": [2]}),
    ({"underlay_mtu": 1400}, [1400, 1401], {"outer-too-big": [2], "inner-too-big": [2]}),
    ({"underlay_mtu": 1400}, [1500], {"outer-too-big": [1], "inner-too-big": [1]}),
    ({"underlay_mtu": 9000}, [1500, 1501, 9000], {}),
    ({"underlay_mtu": 9000}, [9000, 9001], {"outer-too-big": [2], "inner-too-big": [2]}),
    ({"mtu": 1400}, [1450, 1451], {"inner-too-big": [2]}),
    ({"mtu": 1400}, [1449, 1450], {}),
])
def test_mtu_thresholds_ipv4(tmp_path, opts, lens, expected):
    frames = [C.vxlan_of_outer_len(n) for n in lens]
    d = inspect(tmp_path, frames, Options(**opts))
    assert_fired(d, expected)


def test_mtu_option_boundary(tmp_path):
    # --mtu 1400: inner 1400 ok, 1401 fires; outer 1450/1451 stay under the 1500 underlay
    frames = [C.vxlan(C.inner_ipv4_of_len(1400)), C.vxlan(C.inner_ipv4_of_len(1401)),
              C.vxlan(C.inner_ipv6_of_len(1401))]
    assert_fired(inspect(tmp_path, frames, Options(mtu=1400)), {"inner-too-big": [2, 3]})
    assert_fired(inspect(tmp_path, frames), {})


def test_mtu_thresholds_ipv6_outer(tmp_path):
    frames = [C.vxlan(C.inner_ipv4_of_len(1430), outer6=True),
              C.vxlan(C.inner_ipv4_of_len(1431), outer6=True),
              C.vxlan(C.inner_ipv4_of_len(1431)),            # same inner over IPv4: fine
              C.vxlan(C.inner_ipv6_of_len(1431), outer6=True)]
    assert len(frames[0][IPv6]) == 1500
    d = inspect(tmp_path, frames)
    assert_fired(d, {"inner-too-big": [2, 4], "outer-too-big": [2, 4]})
    # a bigger underlay moves both thresholds
    d = inspect(tmp_path, frames, Options(underlay_mtu=1501))
    assert_fired(d, {})
    d = inspect(tmp_path, frames, Options(underlay_mtu=1499))
    assert_fired(d, {"inner-too-big": [1, 2, 4], "outer-too-big": [1, 2, 4]})


@pytest.mark.parametrize("outer6", [False, True], ids=["ipv4-underlay", "ipv6-underlay"])
def test_overlay_mtu_boundary_with_default_options(tmp_path, outer6):
    # underlay MTU 1500 (the default): the overlay carries 1500 - 50 = 1450 over IPv4 and
    # 1500 - 70 = 1430 over IPv6 (RFC 7348 s4.3: no fragmentation), whatever the inner IP
    limit = 1430 if outer6 else 1450
    frames = [C.vxlan(C.inner_ipv4_of_len(limit), outer6=outer6),
              C.vxlan(C.inner_ipv4_of_len(limit + 1), outer6=outer6),
              C.vxlan(C.inner_ipv6_of_len(limit), outer6=outer6),
              C.vxlan(C.inner_ipv6_of_len(limit + 1), outer6=outer6)]
    assert [len(f[IPv6 if outer6 else IP]) for f in frames] == [1500, 1501, 1500, 1501]
    d = inspect(tmp_path, frames)
    assert_fired(d, {"inner-too-big": [2, 4], "outer-too-big": [2, 4]})
    # with room in the underlay only the inner check is left, still at the same limit
    d = inspect(tmp_path, frames, Options(underlay_mtu=9000, mtu=limit))
    assert_fired(d, {"inner-too-big": [2, 4]})


def _checksum_faults():
    return [
        C.vxlan(C.inner_icmp()),
        _wrong(C.vxlan(C.inner_icmp()), IP),
        _wrong(C.vxlan(C.inner_icmp()), UDP),
        _wrong(C.vxlan(C.inner_icmp(), outer6=True), UDP),
        C.vxlan(_wrong(C.inner_icmp(), IP)),
        C.vxlan(_wrong(C.inner_tcp(), TCP)),
        C.vxlan(C.inner_icmp(), vni=11),
    ]


def test_checksums_option(tmp_path):
    frames = _checksum_faults()
    d = inspect(tmp_path, frames)
    assert_fired(d, {"ip-checksum": [2], "udp-checksum": [3, 4], "inner-ip-checksum": [5],
                     "inner-l4-checksum": [6], "vni-mismatch": [7]})
    d = inspect(tmp_path, frames, Options(checksums=False))
    assert_fired(d, {"vni-mismatch": [7]})
    for c in CHECKSUM_CHECKS:
        assert d["checks"][c]["count"] == 0


# --------------------------------------------------------------------------- nesting

@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_nesting_depth(tmp_path, depth):
    d = inspect(tmp_path, [C.nested(depth)])
    assert_fired(d, {"nesting-too-deep": [1]} if depth > 4 else {})
    assert d["vnis"] == {"10": 1}
    assert d["vxlan_packets"] == 1
    assert d["ok"] is (depth <= 4)


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_vni_mismatch_at_any_nesting_level(tmp_path, level):
    vnis = [10] * 4
    vnis[level - 1] = 11
    d = inspect(tmp_path, [C.nested(4), C.nested(4, vnis)])
    assert_fired(d, {"vni-mismatch": [2]})
    assert d["vnis"] == ({"10": 2} if level > 1 else {"10": 1, "11": 1})


# --------------------------------------------------------------------------- mac-move

def _mac_frames(last_src):
    m, n = "02:42:ac:02:00:aa", "02:42:ac:02:00:bb"
    return [
        C.vxlan(C.inner_icmp(src_mac=m), vni=10, src=C.UNDER_SRC),
        C.vxlan(C.inner_icmp(src_mac=m), vni=20, src=C.UNDER_SRC2),   # other VNI: no move
        C.vxlan(C.inner_icmp(src_mac=n), vni=10, src=C.UNDER_SRC2),   # other MAC: no move
        C.vxlan(C.inner_icmp(src_mac=m), vni=10, src=C.UNDER_SRC),    # same IP again: no move
        C.vxlan(C.inner_icmp(src_mac=m), vni=10, src=last_src),
    ]


def test_mac_move_fires_on_second_ip(tmp_path):
    d = inspect(tmp_path, _mac_frames(C.UNDER_SRC2), Options(vnis=frozenset({10, 20})))
    assert_fired(d, {"mac-move": [5]})
    assert d["ok"] is True


def test_mac_move_clean_twin(tmp_path):
    d = inspect(tmp_path, _mac_frames(C.UNDER_SRC), Options(vnis=frozenset({10, 20})))
    assert_fired(d, {})


def test_mac_move_simple_pair(tmp_path):
    m = "02:42:ac:02:00:cc"
    frames = [C.vxlan(C.inner_arp(src=m), src=C.UNDER_SRC),
              C.vxlan(C.inner_arp(src=m), src=C.UNDER_SRC2)]
    assert_fired(inspect(tmp_path, frames), {"mac-move": [2]})


def test_same_mac_different_vni_is_not_a_move(tmp_path):
    m = "02:42:ac:02:00:dd"
    frames = [C.vxlan(C.inner_icmp(src_mac=m), vni=10, src=C.UNDER_SRC),
              C.vxlan(C.inner_icmp(src_mac=m), vni=20, src=C.UNDER_SRC2)]
    assert_fired(inspect(tmp_path, frames, Options(vnis=frozenset({10, 20}))), {})


# --------------------------------------------------------------------------- fragments

def _big_datagram(outer_len=1600, **kw):
    return C.vxlan_of_outer_len(outer_len, df=False, **kw)


def test_outer_fragments_ipv4_two(tmp_path):
    frags = fragment(_big_datagram(1600), 1480)
    assert [len(f[IP]) for f in frags] == [1500, 120]
    d = inspect(tmp_path, frags, Options(mtu=9000))
    assert_fired(d, {"outer-fragment": [1, 2], "outer-too-big": [1]}, ignore={"df-clear", "truncated"})
    assert d["vxlan_packets"] == 2 and d["other_packets"] == 0
    assert d["ok"] is False


@pytest.mark.parametrize("underlay,too_big", [(1500, [2]), (1599, [2]), (1600, []), (9000, [])])
def test_outer_fragments_whole_datagram_length(tmp_path, underlay, too_big):
    frags = fragment(_big_datagram(1600), 600)
    assert len(frags) == 3
    frames = [C.vxlan(C.inner_icmp())] + frags
    d = inspect(tmp_path, frames, Options(underlay_mtu=underlay, mtu=9000))
    expected = {"outer-fragment": [2, 3, 4]}
    if too_big:
        expected["outer-too-big"] = too_big
    assert_fired(d, expected, ignore={"df-clear", "truncated"})
    assert d["vxlan_packets"] == 4


def test_unmatched_non_first_fragment_is_other(tmp_path):
    f1, f2 = fragment(_big_datagram(1600), 1480)
    f2 = f2.copy()
    f2[IP].id = 0x4321  # belongs to no VXLAN first fragment
    d = inspect(tmp_path, [f1, f2], Options(mtu=9000))
    assert d["vxlan_packets"] == 1 and d["other_packets"] == 1
    assert d["checks"]["outer-fragment"]["packets"] == [1]


def test_non_vxlan_fragments_are_other(tmp_path):
    big = C.outer_udp_other(53, payload=b"z" * 1700, df=False)
    frags = fragment(big, 1480)
    d = inspect(tmp_path, frags + [C.vxlan(C.inner_icmp())])
    assert d["other_packets"] == 2 and d["vxlan_packets"] == 1
    assert d["checks"]["outer-fragment"]["count"] == 0


def test_outer_fragments_ipv6(tmp_path):
    big = Ether(src=C.OUTER_SMAC, dst=C.OUTER_DMAC) / IPv6(src=C.UNDER6_SRC, dst=C.UNDER6_DST) / \
        IPv6ExtHdrFragment(id=0x99) / UDP(sport=51234, dport=4789) / \
        Raw(C.vxlan_header(10) + bytes(C.inner_ipv4_of_len(1000)))
    frags = fragment6(big, 600)
    assert len(frags) == 2
    frames = [C.vxlan(C.inner_icmp(), outer6=True)] + frags
    d = inspect(tmp_path, frames)
    assert_fired(d, {"outer-fragment": [2, 3]}, ignore={"truncated"})
    assert d["vxlan_packets"] == 3


# --------------------------------------------------------------------------- link types / formats

def _lt_frames():
    return [C.vxlan(C.inner_icmp()), C.vxlan(C.inner_icmp(), vni=11),
            C.vxlan(C.inner_tcp(), outer6=True), C.vxlan(C.inner_arp(), vni=11, outer6=True)]


@pytest.mark.parametrize("fmt", ["eth", "eth-be-ns", "raw", "sll", "sll2", "pcapng", "pcapng-be"])
def test_link_types_and_formats(tmp_path, fmt):
    frames = [bytes(f) for f in _lt_frames()]
    p = tmp_path / "cap"
    if fmt == "eth":
        write_pcap(p, frames)
    elif fmt == "eth-be-ns":
        write_pcap(p, frames, big_endian=True, nanos=True)
    elif fmt == "raw":
        write_pcap(p, [C.strip_ether(f) for f in frames], linktype=LINKTYPE_RAW)
    elif fmt == "sll":
        write_pcap(p, [C.sll(f) for f in frames], linktype=LINKTYPE_LINUX_SLL)
    elif fmt == "sll2":
        write_pcap(p, [C.sll2(f) for f in frames], linktype=LINKTYPE_LINUX_SLL2)
    elif fmt == "pcapng":
        write_pcapng(p, frames)
    else:
        write_pcapng(p, frames, big_endian=True)
    d = inspect_file(p, Options()).to_dict()
    assert d["error"] is None
    assert (d["packets"], d["vxlan_packets"]) == (4, 4)
    assert_fired(d, {"vni-mismatch": [2, 4]})


# --------------------------------------------------------------------------- ok semantics

def test_warning_and_info_only_is_ok(tmp_path):
    m = "02:42:ac:02:00:ee"
    frames = [
        C.vxlan(C.inner_icmp(), dport=8472),                           # legacy-port (info)
        C.vxlan(C.inner_icmp(), df=False),                             # df-clear (info)
        C.vxlan(C.inner_icmp(vlans=(5,))),                             # inner-vlan (warning)
        C.vxlan(C.inner_icmp(ethertype=0x88B5)),                       # unknown-inner-type
        C.vxlan(C.inner_icmp(), outer6=True, udp_chksum=0),            # udp-zero-checksum-ipv6
        C.vxlan(_wrong(C.inner_tcp(), TCP)),                           # inner-l4-checksum
        C.vxlan(C.inner_arp(src=m), src=C.UNDER_SRC),
        C.vxlan(C.inner_arp(src=m), src=C.UNDER_SRC2),                 # mac-move
    ]
    d = inspect(tmp_path, frames)
    assert_fired(d, {"legacy-port": [1], "df-clear": [2], "inner-vlan": [3], "unknown-inner-type": [4],
                     "udp-zero-checksum-ipv6": [5], "inner-l4-checksum": [6], "mac-move": [8]})
    assert d["ok"] is True


# --------------------------------------------------------------------------- CLI

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vxinspect", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def _write(tmp_path, name, frames):
    return write_pcap(tmp_path / name, [bytes(f) for f in frames])


def test_cli_json_firing(tmp_path):
    f = _write(tmp_path, "bad.pcap", [C.vxlan(C.inner_icmp()), C.vxlan(C.inner_icmp(), vni=11)])
    r = _cli(f, "--json")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    d = json.loads(r.stdout)
    assert set(d) == DOC_KEYS
    assert set(d["checks"]) == set(SEVERITY)
    assert d["ok"] is False and d["error"] is None
    assert d["packets"] == 2 and d["vxlan_packets"] == 2 and d["other_packets"] == 0
    assert d["checks"]["vni-mismatch"] == {"severity": "error", "count": 1, "packets": [2]}
    assert "bad.pcap" in d["file"]
    assert d["vnis"] == {"10": 1, "11": 1}


def test_cli_json_clean(tmp_path):
    f = _write(tmp_path, "good.pcap", _reference_frames())
    r = _cli(f, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True
    assert all(c["count"] == 0 for c in d["checks"].values())


def test_cli_text_output(tmp_path):
    frames = [C.vxlan(C.inner_icmp())] * 12
    frames[6] = C.vxlan(C.inner_icmp(), vni=11)
    frames[10] = C.vxlan(C.inner_icmp(), vni=11)
    f = _write(tmp_path, "text.pcap", frames)
    r = _cli(f)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    idx = [i for i, ln in enumerate(lines) if "vni-mismatch" in ln]
    assert idx, r.stdout
    near = "\n".join(lines[idx[0]: idx[0] + 3])
    assert re.search(r"\b7\b", near) and re.search(r"\b11\b", near), r.stdout


def test_cli_warning_only_exit_0(tmp_path):
    f = _write(tmp_path, "warn.pcap", [C.vxlan(C.inner_icmp(vlans=(5,)), dport=8472, df=False)])
    r = _cli(f, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True
    assert fired(d) == {"inner-vlan": [1], "legacy-port": [1], "df-clear": [1]}


@pytest.mark.parametrize("args,frames,expected,rc", [
    (["--vni", "42"], [C.vxlan(C.inner_icmp(), vni=42), C.vxlan(C.inner_icmp())], {"vni-mismatch": [2]}, 1),
    (["--vni", "42", "--vni", "10"], [C.vxlan(C.inner_icmp(), vni=42), C.vxlan(C.inner_icmp())], {}, 0),
    ([], [C.vxlan(C.inner_icmp(), vni=11, dport=9999), C.vxlan(C.inner_icmp())], {}, 0),
    (["--port", "9999"], [C.vxlan(C.inner_icmp(), vni=11, dport=9999), C.vxlan(C.inner_icmp(), vni=11)],
     {"vni-mismatch": [1, 2]}, 1),
    (["--underlay-mtu", "1400"], [C.vxlan_of_outer_len(1400), C.vxlan_of_outer_len(1401)],
     {"outer-too-big": [2], "inner-too-big": [2]}, 1),
    (["--underlay-mtu", "9000", "--mtu", "1450"],
     [C.vxlan(C.inner_ipv4_of_len(1450)), C.vxlan(C.inner_ipv4_of_len(1451))], {"inner-too-big": [2]}, 1),
    ([], [_wrong(C.vxlan(C.inner_icmp()), IP)], {"ip-checksum": [1]}, 1),
    (["--no-checksums"], [_wrong(C.vxlan(C.inner_icmp()), IP), _wrong(C.vxlan(C.inner_icmp()), UDP)], {}, 0),
], ids=["vni", "vni-twice", "port-default", "port-added", "underlay-mtu", "mtu", "cksum", "no-cksum"])
def test_cli_options(tmp_path, args, frames, expected, rc):
    f = _write(tmp_path, "opt.pcap", frames)
    r = _cli(f, "--json", *args)
    assert r.returncode == rc, r.stderr
    d = json.loads(r.stdout)
    assert_fired(d, expected)


def test_cli_several_files(tmp_path):
    good = _write(tmp_path, "a.pcap", [C.vxlan(C.inner_icmp())])
    bad = _write(tmp_path, "b.pcap", [C.vxlan(C.inner_icmp(), vni=11)])
    r = _cli(good, bad, "--json")
    assert r.returncode == 1, r.stderr
    docs = json.loads(r.stdout)
    assert isinstance(docs, list) and len(docs) == 2
    assert docs[0]["file"].endswith("a.pcap") and docs[1]["file"].endswith("b.pcap")
    assert docs[0]["ok"] is True and docs[1]["ok"] is False
    r = _cli(good, good, "--json")
    assert r.returncode == 0


# --------------------------------------------------------------------------- IPv6 extension headers
#
# Each header below is longer than 8 bytes, so a decoder that skips an extension header by
# any length but (Hdr Ext Len + 1) * 8 (RFC 8200 section 4) reads UDP, VXLAN or the inner L4
# header at the wrong place: a clean frame stops being VXLAN or fires a check, a wrong
# checksum or VNI behind the headers no longer fires. Expectations are written by hand and
# the capture is also read with tshark, an independent decoder.

_HBH, _DST = C.hop_by_hop(), C.dest_opts()
_ROUTED = C.routing("fd00:3::1")                  # segments left 1: dst is not the final one
_ROUTED_DONE = C.routing("fd00:3::1", segleft=0)  # segments left 0: dst is the final one


def _wrong_outer_udp(p):
    return _wrong(p, UDP)


EXT_CASES = [
    # (name, frame, checks it fires)
    ("outer-hbh", lambda: C.vxlan_ipv6_ext([_HBH], C.inner_icmp()), {}),
    ("outer-hbh-dst", lambda: C.vxlan_ipv6_ext([_HBH, _DST], C.inner_tcp()), {}),
    ("outer-hbh-dst-atomic-frag",
     lambda: C.vxlan_ipv6_ext([_HBH, _DST, C.atomic_fragment()], C.inner_icmp()), {}),
    ("outer-routing-done", lambda: C.vxlan_ipv6_ext([_ROUTED_DONE], C.inner_icmp()), {}),
    # RFC 8200 8.1: the outer UDP checksum covers the final destination (in the routing
    # header), not dst; vxinspect does not verify it then, tshark does and finds it right
    ("outer-routing-left", lambda: C.vxlan_ipv6_ext([_ROUTED], C.inner_icmp()), {}),
    ("outer-dst-routing-dst",
     lambda: C.vxlan_ipv6_ext([_DST, _ROUTED, C.dest_opts(4)], C.inner_icmp()), {}),
    ("outer-hbh-dst-vni11", lambda: C.vxlan_ipv6_ext([_HBH, _DST], C.inner_icmp(), vni=11),
     {"vni-mismatch"}),
    ("outer-hbh-dst-bad-udp",
     lambda: _wrong_outer_udp(C.vxlan_ipv6_ext([_HBH, _DST], C.inner_icmp())), {"udp-checksum"}),
    ("outer-routing-done-bad-udp",
     lambda: _wrong_outer_udp(C.vxlan_ipv6_ext([_ROUTED_DONE], C.inner_icmp())),
     {"udp-checksum"}),
    ("outer-hbh-dst-bad-inner-tcp",
     lambda: C.vxlan_ipv6_ext([_HBH, _DST], _wrong(C.inner_tcp(), TCP)), {"inner-l4-checksum"}),
    ("inner-hbh-udp", lambda: C.vxlan(C.inner_ipv6_ext([_HBH])), {}),
    ("inner-hbh-dst-udp", lambda: C.vxlan(C.inner_ipv6_ext([_HBH, _DST])), {}),
    ("inner-hbh-tcp", lambda: C.vxlan(C.inner_ipv6_ext([_HBH], TCP(sport=1, dport=2) / Raw(b"t" * 33))),
     {}),
    ("inner-hbh-dst-udp-over-ipv6",
     lambda: C.vxlan(C.inner_ipv6_ext([_HBH, _DST]), outer6=True), {}),
    ("inner-hbh-dst-bad-udp", lambda: C.vxlan(_wrong(C.inner_ipv6_ext([_HBH, _DST]), UDP)),
     {"inner-l4-checksum"}),
    ("inner-dst-bad-tcp",
     lambda: C.vxlan(_wrong(C.inner_ipv6_ext([_DST], TCP(sport=1, dport=2) / Raw(b"t" * 33)), TCP)),
     {"inner-l4-checksum"}),
    ("inner-hbh-dst-bad-icmpv6",
     lambda: C.vxlan(_wrong(C.inner_ipv6_ext([_HBH, _DST], ICMPv6EchoRequest(data=b"q" * 9)),
                            ICMPv6EchoRequest)), {"inner-l4-checksum"}),
    # VXLAN nested behind the inner extension headers: its VNI is read only if they are skipped right
    ("inner-dst-nested-vni11",
     lambda: C.vxlan(C.inner_ipv6_ext([_DST], UDP(sport=9, dport=4789) /
                                      Raw(C.vxlan_header(11) + bytes(C.inner_icmp())))),
     {"vni-mismatch"}),
    # not verified (the final destination is elsewhere / a fragment), the checksum is right anyway
    ("inner-routing-left-udp", lambda: C.vxlan(C.inner_ipv6_ext([_ROUTED])), {}),
    ("inner-atomic-frag-udp", lambda: C.vxlan(C.inner_ipv6_ext([C.atomic_fragment()])), {}),
]


def _tshark_fields(path, *fields):
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", "udp.check_checksum:TRUE",
         "-o", "tcp.check_checksum:TRUE", "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
         *[a for f in fields for a in ("-e", f)]],
        capture_output=True, text=True, timeout=120, check=True).stdout
    return [[c.split(",") if c else [] for c in line.split("\t")] for line in out.splitlines()]


def test_ipv6_extension_headers_outer_and_inner(tmp_path):
    frames = [make() for _, make, _ in EXT_CASES]
    d = inspect(tmp_path, frames, name="ext.pcap")
    expected = {}
    for i, (_, _, checks) in enumerate(EXT_CASES, 1):
        for c in checks:
            expected.setdefault(c, []).append(i)
    assert_fired(d, expected)
    assert d["vxlan_packets"] == len(frames)
    assert d["vnis"] == {"10": len(frames) - 1, "11": 1}


def test_ipv6_extension_headers_agree_with_tshark(tmp_path):
    """tshark decodes every header chain the same way: the VNIs it finds, and the frames
    whose checksums it finds wrong (status 0) are the ones vxinspect flags."""
    frames = [make() for _, make, _ in EXT_CASES]
    path = write_pcap(tmp_path / "ext.pcap", [bytes(f) for f in frames])
    d = inspect_file(path, Options()).to_dict()
    rows = _tshark_fields(path, "vxlan.vni", "udp.checksum.status", "tcp.checksum.status",
                          "icmpv6.checksum.status")
    assert len(rows) == len(frames)
    for i, ((name, _, _), (vnis, udp, tcp, icmp6)) in enumerate(zip(EXT_CASES, rows), 1):
        assert vnis and vnis[0] == ("11" if name.startswith("outer") and "vni11" in name
                                    else "10"), (name, vnis)
        assert (i in d["checks"]["vni-mismatch"]["packets"]) == ("11" in vnis), name
        # tshark's first UDP is the outer one; every later checksum is an inner L4 one
        assert (i in d["checks"]["udp-checksum"]["packets"]) == (udp[:1] == ["0"]), name
        inner_bad = "0" in udp[1:] + tcp + icmp6
        assert (i in d["checks"]["inner-l4-checksum"]["packets"]) == inner_bad, name


def test_inner_extension_header_longer_than_the_payload_is_truncated(tmp_path):
    # a Hop-by-Hop header of 16 bytes in an IPv6 packet whose payload length says 8
    inner = C.inner_ipv6_ext([_HBH])
    inner[IPv6].plen = 8
    clean = C.vxlan(C.inner_ipv6_ext([_HBH]))
    d = inspect(tmp_path, [clean, C.vxlan(bytes(inner)[:14 + 48])])
    assert_fired(d, {"truncated": [2]})
