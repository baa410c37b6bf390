"""vxinspect --plan: the plan-mismatch check, VNI/port precedence, report fields, exit codes.

Captures are crafted with scapy (RFC 7348 headers: VXLAN(flags=0x08, vni=...))
and written with tests/pcapwrite.py. The plan is the seed plan, written into
tmp_path; VTEP MACs come from vtep.plan, never typed in here. Packet numbers
are 1-based. Unit tests: no root, no namespaces.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from pcapwrite import write_pcap

from vtep.plan import load
from vxinspect import Options, inspect_file
from vxinspect.cli import main
from vtep.lab.seed import SEED_PLAN

SEED = SEED_PLAN
THIRD = """
[[nodes]]
name = "network-3"
underlay_ip = "192.168.3.77"
subnet = "172.2.2.0/24"
"""
ROGUE_IP = "192.168.1.139"          # on network-1's underlay subnet, but no node
OFF_PLAN_IP = "192.168.2.1"         # on network-2's subnet (its router), no node
POD_MAC = "02:42:ac:02:01:05"       # a pod behind network-2's bridge: no VTEP MAC
ROGUE_MAC = "02:42:0a:00:00:09"
BROADCAST = "ff:ff:ff:ff:ff:ff"
ND_MULTICAST = "33:33:ff:00:00:01"  # IPv6 solicited-node multicast


@pytest.fixture
def plan_path(tmp_path) -> Path:
    p = tmp_path / "seed.toml"
    p.write_text(SEED)
    return p


@pytest.fixture
def nodes(plan_path):
    plan = load(plan_path)
    return plan.node("network-1"), plan.node("network-2")


# --------------------------------------------------------------------------- frames

def vx(src, dst, inner, vni=10, dport=4789, sport=49321):
    """Outer Ethernet/IPv4/UDP/VXLAN (RFC 7348 header) around `inner`."""
    outer = IPv6(src=src, dst=dst, hlim=64) if ":" in src else IP(src=src, dst=dst, flags="DF",
                                                                  ttl=64, id=0x4d2)
    return (Ether(src="02:00:00:00:aa:01", dst="02:00:00:00:aa:02") / outer
            / UDP(sport=sport, dport=dport) / VXLAN(flags=0x08, vni=vni) / inner)


def icmp(a, b, seq=1):
    """ICMP echo between two nodes' VTEP addresses, as the kernel routes it: the
    inner destination MAC is the peer's VTEP MAC (the neighbour entry)."""
    return (Ether(src=a.vtep_mac, dst=b.vtep_mac)
            / IP(src=str(a.vtep_ip), dst=str(b.vtep_ip), flags="DF") / ICMP(type=8, id=7, seq=seq))


def arp_request(a, b):
    return Ether(src=a.vtep_mac, dst=BROADCAST) / ARP(
        op=1, hwsrc=a.vtep_mac, psrc=str(a.vtep_ip), pdst=str(b.vtep_ip))


def to_pod(a, b):
    """A bridged setup: node a's VTEP sends straight to a pod MAC behind node b."""
    return (Ether(src=a.vtep_mac, dst=POD_MAC)
            / IP(src=str(a.vtep_ip), dst=str(b.subnet.network_address + 5)) / ICMP(id=9))


def nd_multicast(a):
    return (Ether(src=a.vtep_mac, dst=ND_MULTICAST)
            / IPv6(src="fe80::1", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="fe80::1:ff00:1"))


def ip_of(node) -> str:
    return str(node.underlay_ip)


# --------------------------------------------------------------------------- running

def capture(tmp_path, frames, name="cap.pcap", **kw) -> Path:
    return write_pcap(tmp_path / name, [bytes(f) for f in frames], **kw)


def cli(tmp_path, capsys, frames, *args, name="cap.pcap", **kw):
    """(exit status, JSON document, stderr) of `vxinspect CAP --json ARGS`."""
    path = capture(tmp_path, frames, name, **kw)
    rc = main([str(path), "--json", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


def fired(d) -> dict:
    return {cid: c["packets"] for cid, c in d["checks"].items() if c["count"]}


def twin(tmp_path, capsys, clean, firing, *args, also=()):
    """Capture [clean, firing, clean, firing]: plan-mismatch (and `also`) fire on
    exactly packets 2 and 4, nothing fires on the clean twin, exit status 1."""
    rc, d, err = cli(tmp_path, capsys, [clean, firing, clean, firing], *args)
    assert err == ""
    assert d["vxlan_packets"] == 4
    assert fired(d) == {cid: [2, 4] for cid in ("plan-mismatch", *also)}
    assert d["checks"]["plan-mismatch"] == {"severity": "error", "count": 2, "packets": [2, 4]}
    assert rc == 1 and d["ok"] is False
    return d


# --------------------------------------------------------------------------- clean traffic

def test_clean_traffic_between_the_nodes(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    frames = [
        vx(ip_of(n1), ip_of(n2), arp_request(n1, n2)),
        vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
        vx(ip_of(n2), ip_of(n1), icmp(n2, n1)),
        vx(ip_of(n2), ip_of(n1), arp_request(n2, n1)),
        vx(ip_of(n1), ip_of(n2), to_pod(n1, n2)),
        vx(ip_of(n1), ip_of(n2), nd_multicast(n1)),
    ]
    rc, d, err = cli(tmp_path, capsys, frames, "--plan", plan_path)
    assert (rc, err, fired(d), d["ok"]) == (0, "", {}, True)
    assert d["vxlan_packets"] == 6
    assert d["checks"]["plan-mismatch"] == {"severity": "error", "count": 0, "packets": []}


def test_without_plan_the_check_is_present_and_never_fires(tmp_path, capsys, nodes):
    n1, n2 = nodes
    frames = [vx(ROGUE_IP, OFF_PLAN_IP, icmp(n1, n2)), vx(ip_of(n2), ip_of(n1), icmp(n2, n2))]
    rc, d, _ = cli(tmp_path, capsys, frames)
    assert rc == 0 and fired(d) == {}
    assert d["plan"] is None
    assert d["checks"]["plan-mismatch"] == {"severity": "error", "count": 0, "packets": []}
    assert all(f["src_node"] is None and f["dst_node"] is None for f in d["flows"])


# --------------------------------------------------------------------------- firing twins

def test_outer_source_not_a_node(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    rogue = (Ether(src=ROGUE_MAC, dst=n2.vtep_mac)
             / IP(src="172.2.0.9", dst=str(n2.vtep_ip)) / ICMP())
    twin(tmp_path, capsys, vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
         vx(ROGUE_IP, ip_of(n2), rogue), "--plan", plan_path)


def test_outer_destination_not_the_fdb_owner_of_the_inner_mac(tmp_path, capsys, plan_path, nodes):
    # network-2 sends a frame for its own VTEP MAC to network-1: the fdb says
    # that MAC lives behind 192.168.2.142, so the outer destination is wrong.
    n1, n2 = nodes
    twin(tmp_path, capsys, vx(ip_of(n2), ip_of(n1), icmp(n2, n1)),
         vx(ip_of(n2), ip_of(n1), icmp(n2, n2)), "--plan", plan_path)


def test_outer_destination_not_the_fdb_owner_among_three_nodes(tmp_path, capsys):
    path = tmp_path / "three.toml"
    path.write_text(SEED + THIRD)
    plan = load(path)
    n1, n2, n3 = (plan.node(f"network-{i}") for i in (1, 2, 3))
    twin(tmp_path, capsys, vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
         vx(ip_of(n1), ip_of(n3), icmp(n1, n2)), "--plan", path)


@pytest.mark.parametrize("inner", ["arp", "nd-multicast", "pod-mac"])
def test_non_vtep_inner_mac_must_still_go_to_a_node(tmp_path, capsys, plan_path, nodes, inner):
    # Broadcast/multicast and unicast MACs that are no VTEP MAC name no node in
    # the fdb: any node will do, but it must be a node.
    n1, n2 = nodes
    frame = {"arp": arp_request(n1, n2), "nd-multicast": nd_multicast(n1),
             "pod-mac": to_pod(n1, n2)}[inner]
    twin(tmp_path, capsys, vx(ip_of(n1), ip_of(n2), frame),
         vx(ip_of(n1), OFF_PLAN_IP, frame), "--plan", plan_path)


def test_wrong_vni_fires_plan_and_vni_mismatch(tmp_path, capsys, plan_path, nodes):
    # Without --vni the plan's VNI is the expected set, so vni-mismatch fires too.
    n1, n2 = nodes
    d = twin(tmp_path, capsys, vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
             vx(ip_of(n1), ip_of(n2), icmp(n1, n2), vni=11), "--plan", plan_path,
             also=("vni-mismatch",))
    assert d["vnis"] == {"10": 2, "11": 2}


def test_wrong_port_added_with_port_option(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    twin(tmp_path, capsys, vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
         vx(ip_of(n1), ip_of(n2), icmp(n1, n2), dport=4790), "--plan", plan_path, "--port", 4790)


def test_legacy_port_is_not_the_plans(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    twin(tmp_path, capsys, vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
         vx(ip_of(n1), ip_of(n2), icmp(n1, n2), dport=8472), "--plan", plan_path,
         also=("legacy-port",))


# --------------------------------------------------------------------------- precedence

def test_vni_option_replaces_the_plans_vni_as_expected_set(tmp_path, capsys, plan_path, nodes):
    # --vni 11: vni-mismatch holds packets to {11}; plan-mismatch still to the plan's 10.
    n1, n2 = nodes
    frames = [vx(ip_of(n1), ip_of(n2), icmp(n1, n2), vni=10),
              vx(ip_of(n1), ip_of(n2), icmp(n1, n2), vni=11)]
    rc, d, _ = cli(tmp_path, capsys, frames, "--plan", plan_path, "--vni", 11)
    assert rc == 1
    assert fired(d) == {"vni-mismatch": [1], "plan-mismatch": [2]}


def test_plans_port_is_a_vxlan_port_without_port_option(tmp_path, capsys, nodes):
    path = tmp_path / "p4790.toml"
    path.write_text(SEED.replace("port = 4789", "port = 4790"))
    n1, n2 = nodes  # names and subnets unchanged, so the derived MACs are the same
    assert load(path).node("network-2").vtep_mac == n2.vtep_mac
    frames = [vx(ip_of(n1), ip_of(n2), icmp(n1, n2), dport=4790),
              vx(ip_of(n1), ip_of(n2), icmp(n1, n2), dport=4789)]
    rc, d, _ = cli(tmp_path, capsys, frames, "--plan", path)
    assert d["vxlan_packets"] == 2
    assert fired(d) == {"plan-mismatch": [2]}
    # Without the plan, 4790 is not a VXLAN port.
    rc, d, _ = cli(tmp_path, capsys, frames, name="again.pcap")
    assert d["vxlan_packets"] == 1


def test_api_options_add_the_plans_port(tmp_path):
    path = tmp_path / "p4790.toml"
    path.write_text(SEED.replace("port = 4789", "port = 4790"))
    opts = Options(plan=load(path))
    assert {4789, 8472, 4790} <= opts.ports
    assert Options().plan is None and 4790 not in Options().ports


# --------------------------------------------------------------------------- edge cases

def test_truncated_packets_are_held_to_what_was_captured(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    good = bytes(vx(ip_of(n1), ip_of(n2), icmp(n1, n2)))
    rogue = bytes(vx(ROGUE_IP, ip_of(n2), icmp(n1, n2)))
    wrong_vni = bytes(vx(ip_of(n1), ip_of(n2), icmp(n1, n2), vni=11))
    vxlan_at = 14 + 20 + 8
    # Inside the VXLAN header; inside the inner destination MAC (the VNI is whole).
    cuts = [vxlan_at + 4, vxlan_at + 8 + 4]
    frames, origs = [], []
    for cut in cuts:
        for f in (good, rogue, wrong_vni):
            frames.append(f[:cut])
            origs.append(len(f))
    rc, d, _ = cli(tmp_path, capsys, frames, "--plan", plan_path, orig_lens=origs)
    assert rc == 1
    # Cut inside the VXLAN header the VNI is unknown: only the addresses are held.
    assert d["checks"]["plan-mismatch"]["packets"] == [2, 5, 6]
    assert d["checks"]["truncated"]["packets"] == [1, 2, 3, 4, 5, 6]


def test_nested_vxlan_is_not_held_against_the_plan(tmp_path, capsys, plan_path, nodes):
    # Only the outermost layer is the plan's traffic; an overlay tenant may run its own VXLAN.
    n1, n2 = nodes
    tenant = (Ether(src="02:00:00:00:bb:01", dst="02:00:00:00:bb:02")
              / IP(src="10.9.0.1", dst="10.9.0.2") / ICMP())
    inner = (Ether(src=n1.vtep_mac, dst=n2.vtep_mac)
             / IP(src=str(n1.vtep_ip), dst=str(n2.vtep_ip))
             / UDP(sport=50000, dport=4789) / VXLAN(flags=0x08, vni=10) / tenant)
    rc, d, _ = cli(tmp_path, capsys, [vx(ip_of(n1), ip_of(n2), inner)], "--plan", plan_path,
                   "--no-checksums")
    assert (rc, fired(d)) == (0, {})


def test_ipv6_underlay_plan(tmp_path, capsys):
    path = tmp_path / "v6.toml"
    path.write_text(SEED.replace("192.168.1.138", "fd00:1::138")
                    .replace("192.168.2.142", "fd00:2::142"))
    plan = load(path)
    n1, n2 = plan.node("network-1"), plan.node("network-2")
    ipv4_host = (Ether(src=ROGUE_MAC, dst=n2.vtep_mac)
                 / IP(src="172.2.0.9", dst=str(n2.vtep_ip)) / ICMP())
    frames = [vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
              vx("192.168.1.138", "192.168.2.142", ipv4_host),  # the old IPv4 addresses
              vx(ip_of(n2), ip_of(n1), icmp(n2, n1)),
              vx(ip_of(n2), "fd00:1::139", icmp(n2, n1))]
    rc, d, _ = cli(tmp_path, capsys, frames, "--plan", path)
    assert (rc, fired(d)) == (1, {"plan-mismatch": [2, 4]})
    assert {(f["src_node"], f["dst_node"]) for f in d["flows"]} == {
        ("network-1", "network-2"), (None, None), ("network-2", "network-1"), ("network-2", None)}


def test_show_reports_plan_mismatch_for_one_packet(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    path = capture(tmp_path, [vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
                              vx(ROGUE_IP, ip_of(n2), icmp(n1, n2))])
    assert main([str(path), "--plan", str(plan_path), "--show", "2"]) == 0
    assert "checks on this packet alone: plan-mismatch (" in capsys.readouterr().out
    assert main([str(path), "--plan", str(plan_path), "--show", "1"]) == 0
    assert "checks on this packet alone: none (" in capsys.readouterr().out


# --------------------------------------------------------------------------- report

def test_json_names_the_plan_and_the_nodes_of_each_flow(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    frames = [vx(ip_of(n1), ip_of(n2), icmp(n1, n2)), vx(ip_of(n1), ip_of(n2), icmp(n1, n2, 2)),
              vx(ip_of(n2), ip_of(n1), icmp(n2, n1)), vx(ROGUE_IP, ip_of(n2), to_pod(n1, n2))]
    rc, d, _ = cli(tmp_path, capsys, frames, "--plan", plan_path)
    assert d["plan"] == str(plan_path)
    flows = {(f["src"], f["dst"]): (f["src_node"], f["dst_node"], f["packets"]) for f in d["flows"]}
    assert flows == {
        (ip_of(n1), ip_of(n2)): ("network-1", "network-2", 2),
        (ip_of(n2), ip_of(n1)): ("network-2", "network-1", 1),
        (ROGUE_IP, ip_of(n2)): (None, "network-2", 1),
    }
    # The API gives the same document.
    assert inspect_file(tmp_path / "cap.pcap", Options(plan=load(plan_path))).to_dict() == d


def test_text_report_names_the_plan_and_the_nodes(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    path = capture(tmp_path, [vx(ip_of(n1), ip_of(n2), icmp(n1, n2)),
                              vx(ROGUE_IP, ip_of(n2), to_pod(n1, n2))])
    assert main([str(path), "--plan", str(plan_path)]) == 1
    out = capsys.readouterr().out
    assert f"plan: {plan_path} (VNI 10, port 4789, 2 nodes)" in out
    assert "192.168.1.138 (network-1) -> 192.168.2.142 (network-2)" in out
    assert "192.168.1.139 -> 192.168.2.142 (network-2)" in out
    assert "plan-mismatch" in out and "verdict: FAIL (1 error check fired)" in out
    # Without a plan: no plan line, bare addresses.
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "plan:" not in out and "(network-" not in out


# --------------------------------------------------------------------------- exit codes

def test_exit_codes(tmp_path, capsys, plan_path, nodes):
    n1, n2 = nodes
    clean = capture(tmp_path, [vx(ip_of(n1), ip_of(n2), icmp(n1, n2))], "clean.pcap")
    bad = capture(tmp_path, [vx(ROGUE_IP, ip_of(n2), icmp(n1, n2))], "bad.pcap")
    assert main([str(clean), "--plan", str(plan_path)]) == 0
    assert main([str(bad), "--plan", str(plan_path)]) == 1
    assert main([str(bad)]) == 0
    assert main([str(clean), str(bad), "--plan", str(plan_path)]) == 1


@pytest.mark.parametrize("case", ["missing", "not-toml", "duplicate-ip", "bad-vni", "directory"])
def test_plan_errors_exit_2_with_one_line(tmp_path, capsys, nodes, case):
    n1, n2 = nodes
    cap = capture(tmp_path, [vx(ip_of(n1), ip_of(n2), icmp(n1, n2))])
    path = tmp_path / "plan.toml"
    if case == "not-toml":
        path.write_text("[cluster\nvni = 10\n")
    elif case == "duplicate-ip":
        path.write_text(SEED.replace("192.168.2.142", "192.168.1.138"))
    elif case == "bad-vni":
        path.write_text(SEED.replace("vni = 10", "vni = 0"))
    elif case == "directory":
        path.mkdir()
    rc = main([str(cap), "--plan", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vxinspect: {path}"), err
    want = {"missing": "no such file", "not-toml": "not valid TOML",
            "duplicate-ip": "underlay_ip: 192.168.1.138 is already used by node 'network-1'",
            "bad-vni": "cluster.vni: 0 is outside 1..16777215", "directory": "cannot read"}[case]
    assert want in lines[0], err


def test_plan_with_several_problems_gives_one_line_each(tmp_path, capsys, nodes):
    n1, n2 = nodes
    cap = capture(tmp_path, [vx(ip_of(n1), ip_of(n2), icmp(n1, n2))])
    path = tmp_path / "plan.toml"
    path.write_text(SEED.replace("vni = 10", "vni = 0").replace("port = 4789", "port = 0"))
    assert main([str(cap), "--plan", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"vxinspect: {path}: cluster.") for line in lines)


def test_plan_given_twice_is_a_usage_error(tmp_path, capsys, plan_path):
    assert main(["x.pcap", "--plan", str(plan_path), "--plan", str(plan_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--plan" in err and "once" in err


def test_cli_process_plan_error_has_no_traceback(tmp_path, plan_path, nodes):
    n1, n2 = nodes
    cap = capture(tmp_path, [vx(ROGUE_IP, ip_of(n2), icmp(n1, n2))])
    r = subprocess.run([sys.executable, "-m", "vxinspect", str(cap), "--plan",
                        str(tmp_path / "absent.toml")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"vxinspect: {tmp_path / 'absent.toml'}: no such file\n"
    r = subprocess.run([sys.executable, "-m", "vxinspect", str(cap), "--plan", str(plan_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == ""
