"""`vtep run --userspace` on the seed topology, in network namespaces.

Every VTEP and every sender runs inside a namespace of the test's topology
(`ip netns exec`), every namespace carries the run's prefix, and the topology
is removed in `finally` (seed.topology(...) as a context manager, which also
ends the processes started through Node.popen, by PID). Underlay veths have tx
checksum offload off (seed.topology's default; add_link(..., tx_offload=False)
for the links added here).

Hostile traffic is sent by short Python programs run in a namespace: plain UDP
sockets for datagrams (fast, no scapy in the loop) and an AF_PACKET socket for
whole frames built with scapy in the test.
"""
import json
import re
import signal
import struct
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from vtep import plan as planlib
from vtep.lab import seed
from vtep.lab.seed import SEED_PLAN
from vtep.lab.topology import end_process
import seedlab
from seedlab import FRAME_SENDER, UDP_SENDER, VTEP, Vtep, hand_configure, one_line, run_py

pytestmark = pytest.mark.netns

N1_IP, N2_IP, N3_IP, ROUTER_N2_IP = "192.168.1.138", "192.168.2.142", "192.168.3.33", \
    "192.168.2.216"
THIRD_NODE = f"""
[[nodes]]
name = "network-3"
underlay_ip = "{N3_IP}"
subnet = "172.2.2.0/24"
"""
PING = ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2"]
RX_REASONS = ("short", "flags", "reserved", "vni", "runt", "source")


def wait_for(pred, limit=10.0, step=0.05):
    return seedlab.wait_for(pred, limit, step) is not None


def ping(node, dst, count=2):
    r = node.cmd(PING[:3] + [str(count)] + PING[4:] + [dst], check=False, timeout=20)
    return r.returncode == 0, r.stdout + r.stderr


def assert_pings(*pairs):
    for node, dst in pairs:
        ok, out = ping(node, dst)
        assert ok, f"{node.name} -> {dst}:\n{out}"


def add_pods(t):
    """A routed pod per node: the node side of its veth holds the subnet's gateway."""
    for name, sub in (("network-1", "172.2.0"), ("network-2", "172.2.1")):
        pod = t.add_node(f"pod-{name[-1]}")
        t.add_link(pod, t[name], "eth0", "vpod", f"{sub}.2/24", f"{sub}.1/24",
                   tx_offload=False)
        t.add_route(pod, "default", f"{sub}.1")


# Programs run inside a namespace. Arguments come as one JSON document.
# 100,000 datagrams with random contents, each with exactly one fault, so that the
# reason it is counted under is known: short (< 8 bytes), flags (I clear), reserved
# (a reserved bit set), vni (not the plan's), runt (inner frame < 14 bytes). Paced in
# bursts; prints how many of each it sent.
BURST_SENDER = r"""
import json, os, random, socket, struct, sys, time
a = json.loads(sys.argv[1])
rnd = random.Random(a["seed"])
vni = a["vni"]
def hdr(flags, res1, v, res2):
    return struct.pack("!II", flags << 24 | res1, v << 8 | res2)
def body(lo, hi):
    return rnd.randbytes(rnd.randint(lo, hi))
def short():
    return body(0, 7)
def flags():
    return hdr(0, 0, vni, 0) + body(14, 120)
def reserved():
    f, r1, r2 = 0x08, 0, 0
    which = rnd.randrange(3)
    if which == 0:
        f |= rnd.choice((0x01, 0x02, 0x04, 0x10, 0x20, 0x40, 0x80))
    elif which == 1:
        r1 = rnd.randint(1, 0xFFFFFF)
    else:
        r2 = rnd.randint(1, 0xFF)
    return hdr(f, r1, vni, r2) + body(14, 120)
def badvni():
    v = rnd.randint(0, 0xFFFFFF)
    return hdr(0x08, 0, v if v != vni else v ^ 1, 0) + body(14, 120)
def runt():
    return hdr(0x08, 0, vni, 0) + body(0, 13)
kinds = {"short": short, "flags": flags, "reserved": reserved, "vni": badvni, "runt": runt}
names = list(kinds)
sent = dict.fromkeys(names, 0)
data = []
for i in range(a["count"]):
    k = names[i % len(names)]
    data.append(kinds[k]())
    sent[k] += 1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((a["src"], 0))
dst = (a["dst"], a["port"])
deadline = time.monotonic() + a["limit"]
n = 0
for i in range(0, len(data), a["burst"]):
    for d in data[i:i + a["burst"]]:
        s.sendto(d, dst)
        n += 1
    time.sleep(a["pause"])
    if time.monotonic() > deadline:
        break
print(json.dumps({"sent": sent, "n": n}))
"""


def udp_rcvbuf_errors(node) -> int:
    """UDP datagrams the node's kernel dropped for a full socket buffer (/proc/net/snmp is
    per network namespace)."""
    lines = [ln.split() for ln in node.cmd(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if ln.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1]))["RcvbufErrors"])


# --- 1. interop with a node configured by hand --------------------------------------------

def test_interop_with_a_hand_configured_kernel_peer(netns_prefix, plan_file, tmp_path):
    plan = planlib.load(plan_file)
    t = seed.topology(netns_prefix + "u1-")
    add_pods(t)
    with t:
        n1, n2 = t["network-1"], t["network-2"]
        hand_configure(n1, plan, "network-1")   # the seed's commands; no vtep on network-1
        n1.cmd(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        v = Vtep(n2, "userspace", plan_file, tmp_path / "state")
        link = n2.cmd(["ip", "-d", "link", "show", "vxlan0"]).stdout
        assert "tun type tap" in link and plan.node("network-2").vtep_mac in link, link
        assert_pings((n1, "172.2.1.0"), (n2, "172.2.0.0"),
                     (t["pod-1"], "172.2.1.2"), (t["pod-2"], "172.2.0.2"))
        # routed, not NATed: the reply comes from the remote pod's own address
        assert "from 172.2.1.2" in ping(t["pod-1"], "172.2.1.2")[1]
        # a well-behaved kernel peer's traffic is never dropped, and is counted per peer
        c = v.wait_counters(lambda c: c["peers"][N1_IP]["rx_packets"] >= 8
                            and c["peers"][N1_IP]["tx_packets"] >= 8)
        assert not any(c["rx_drops"].values()), c
        assert v.stop() == 0
        out = v.output()
        assert re.search(r"vtep: counters: tx \d+ packets \d+ bytes in \d+ TAP frames, rx \d+ "
                         r"packets", out), out
        assert n2.cmd(["ip", "link", "show", "vxlan0"], check=False).returncode != 0
        assert "Traceback" not in out


# --- 2. the same traffic on the wire from both paths --------------------------------------

OUTER_ETH, OUTER_IP, OUTER_UDP = 0, 14, 34


def mask_outer(frame: bytes) -> bytes:
    """The captured frame with the outer fields the two paths legitimately differ in
    zeroed: IP ID, the DF bit, the IP header checksum (it covers both), the UDP source
    port (a flow hash) and the UDP checksum."""
    b = bytearray(frame)
    assert b[OUTER_IP] == 0x45, "outer IPv4 header without options"
    b[OUTER_IP + 4:OUTER_IP + 6] = b"\0\0"
    b[OUTER_IP + 6] &= ~0x40 & 0xFF
    b[OUTER_IP + 10:OUTER_IP + 12] = b"\0\0"
    b[OUTER_UDP:OUTER_UDP + 2] = b"\0\0"
    b[OUTER_UDP + 6:OUTER_UDP + 8] = b"\0\0"
    return bytes(b)


def from_the_pod(inner: bytes) -> bool:
    """An inner frame carrying IPv4 from pod-1 (172.2.0.2)."""
    return inner[12:14] == b"\x08\x00" and inner[14 + 12:14 + 16] == bytes([172, 2, 0, 2])


def capture(router, path, send, keep=from_the_pod):
    """tcpdump on the router's network-1 side around send(), bounded in count and time;
    returns the VXLAN frames network-1 sent whose inner frame `keep` accepts (by default:
    IPv4 from the pod).
    Stopped once a marker frame sent after send() is in the file (seedlab.flush_capture),
    not after a fixed sleep: on a loaded machine tcpdump may be seconds behind."""
    # --immediate-mode: without it, packets of the last buffer timeout stay in the ring
    p = router.popen(["tcpdump", "-i", "eth1", "-n", "-U", "--immediate-mode", "-Z", "root",
                      "-c", "1000", "-w", str(path),
                      f"(udp dst port 4789 and src host {N1_IP}) or {seedlab.MARKER_FILTER}"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    while b"listening on" not in seen:
        line = p.stderr.readline()
        assert line, f"tcpdump did not start: {seen!r}"
        seen += line
    try:
        send()
        seedlab.flush_capture(router.ns, "eth1", path, p)
    finally:
        end_process(p)
        p.stderr.close()
    seedlab.cut_marker(path)
    frames = []
    for pkt in rdpcap(str(path)):
        raw = bytes(pkt)
        if keep(raw[OUTER_UDP + 8 + 8:]):
            frames.append(raw)
    return frames


def pod_frames(src_mac, dst_mac):
    """What the pod sends, identical in both runs: three 200-byte pings, four UDP flows
    and one ping that fills the overlay MTU (1450-byte IP packet), all to network-2."""
    eth = Ether(src=src_mac, dst=dst_mac)
    frames = [eth / IP(src="172.2.0.2", dst="172.2.1.0", id=0x4200 + i)
              / ICMP(id=0x1234, seq=i) / Raw(bytes(range(200))) for i in range(1, 4)]
    frames += [eth / IP(src="172.2.0.2", dst="172.2.1.0", id=0x4300 + i)
               / UDP(sport=40000 + i, dport=9) / Raw(b"vtep" * 25) for i in range(4)]
    frames.append(eth / IP(src="172.2.0.2", dst="172.2.1.0", id=0x4400)
                  / ICMP(id=0x1234, seq=9) / Raw(bytes(i % 251 for i in range(1422))))
    assert len(frames[-1][IP]) == 1450
    return [bytes(f).hex() for f in frames]


def test_wire_kernel_and_userspace_paths_agree(netns_prefix, plan_file, tmp_path):
    t = seed.topology(netns_prefix + "u2-")
    pod = t.add_node("pod-1")
    t.add_link(pod, t["network-1"], "eth0", "vpod", "172.2.0.2/24", "172.2.0.1/24",
               tx_offload=False)
    with t:
        n1, n2, router = t["network-1"], t["network-2"], t["router"]
        # the receiver is the same kernel VTEP in both runs
        n2.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        mac = {}
        for node, dev in ((pod, "eth0"), (n1, "vpod")):
            mac[node.name] = json.loads(node.cmd(["ip", "-j", "link", "show", dev]).stdout)[0][
                "address"]
        frames = pod_frames(mac["pod-1"], mac["network-1"])

        def send():
            run_py(pod, FRAME_SENDER, {"iface": "eth0", "frames": frames})

        runs = {}
        for mode in ("kernel", "userspace"):
            v = Vtep(n1, mode, plan_file, tmp_path / f"state-{mode}")
            try:
                runs[mode] = capture(router, tmp_path / f"{mode}.pcap", send)
            finally:
                assert v.stop() == 0, v.output()
        k, u = runs["kernel"], runs["userspace"]
        assert len(k) == len(u) == len(frames), (len(k), len(u))
        for i, (a, b) in enumerate(zip(k, u)):
            assert mask_outer(a) == mask_outer(b), f"frame {i}: kernel vs userspace differ\n" \
                f"{Ether(a).show(dump=True)}\n{Ether(b).show(dump=True)}"
            # the VXLAN header and the inner frame, byte for byte (already in the above;
            # said explicitly because it is the point)
            assert a[OUTER_UDP + 8:] == b[OUTER_UDP + 8:]
            assert a[OUTER_UDP + 8:OUTER_UDP + 16] == struct.pack("!II", 0x08000000, 10 << 8)
        # the plan's default udp_checksum: both paths send the outer UDP checksum, valid
        for f in k + u:
            assert udp_checksum_state(f) == "valid", Ether(f).show(dump=True)
        # the fields that may differ, as each path sets them
        flags = lambda f: f[OUTER_IP + 6] & 0x40   # noqa: E731
        assert not any(flags(f) for f in k), "the kernel path (df unset) leaves DF clear"
        assert all(flags(f) for f in u), "the userspace path sets DF (RFC 7348 s4.3)"
        sport = [struct.unpack_from("!H", f, OUTER_UDP)[0] for f in u]
        assert all(32768 <= p <= 60999 for p in sport), sport
        # one flow keeps one port (the pings), different flows spread (the UDP flows)
        assert len({sport[0], sport[1], sport[2], sport[7]}) == 1, sport
        assert len(set(sport[3:7])) > 1, sport


def udp_checksum_state(frame: bytes) -> str:
    """"zero", "valid" or "wrong": the outer UDP checksum, against the one scapy computes."""
    got = struct.unpack_from("!H", frame, OUTER_UDP + 6)[0]
    if got == 0:
        return "zero"
    pkt = Ether(frame)
    del pkt[UDP].chksum
    return "valid" if Ether(bytes(pkt))[UDP].chksum == got else "wrong"


@pytest.mark.parametrize("mode", ["kernel", "userspace"])
def test_udp_checksum_false_sends_zero_on_both_paths(netns_prefix, plan_file, tmp_path, mode):
    """cluster.udp_checksum = false: the kernel device is made noudpcsum, the userspace
    path leaves the field zero (RFC 7348 section 5 allows it over IPv4)."""
    plan_file.write_text(plan_file.read_text().replace("[cluster]\n",
                                                       "[cluster]\nudp_checksum = false\n"))
    t = seed.topology(netns_prefix + "u7-")
    pod = t.add_node("pod-1")
    t.add_link(pod, t["network-1"], "eth0", "vpod", "172.2.0.2/24", "172.2.0.1/24",
               tx_offload=False)
    t.add_route(pod, "default", "172.2.0.1")
    with t:
        n1, n2, router = t["network-1"], t["network-2"], t["router"]
        n2.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        assert "noudpcsum" in n2.cmd(["ip", "-d", "link", "show", "vxlan0"]).stdout
        v = Vtep(n1, mode, plan_file, tmp_path / "state")
        try:
            frames = capture(router, tmp_path / "off.pcap",
                             lambda: assert_pings((pod, "172.2.1.0")))
        finally:
            assert v.stop() == 0, v.output()
        assert len(frames) >= 2
        assert {udp_checksum_state(f) for f in frames} == {"zero"}


def flood_frames(src_mac):
    """A broadcast ARP request and an IPv6 all-nodes multicast frame (RFC 2464 section 7:
    33:33 and the group's low 32 bits), each with a marker the capture looks for."""
    arp = Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(
        bytes.fromhex("0001080006040001") + bytes.fromhex(src_mac.replace(":", ""))
        + bytes([172, 2, 0, 0]) + b"\0" * 6 + bytes([172, 2, 1, 77]))
    v6 = Ether(src=src_mac, dst="33:33:00:00:00:01", type=0x86DD) / Raw(
        struct.pack("!IHBB", 6 << 28, 16, 59, 1) + bytes.fromhex("fe80" + "00" * 13 + "01")
        + bytes.fromhex("ff02" + "00" * 13 + "01") + b"vtep-flood-test!")
    return [bytes(arp), bytes(v6)]


@pytest.mark.parametrize("mode", ["kernel", "userspace"])
def test_broadcast_and_ipv6_multicast_are_flooded_to_the_peers(netns_prefix, plan_file,
                                                             tmp_path, mode):
    """A frame to ff:ff:ff:ff:ff:ff or 33:33:... on the node's VTEP device goes to every
    peer: the kernel path through its all-zeros fdb entries, the userspace path by
    replicating it. Without flooding, a peer that resolves ARP through the tunnel (Open
    vSwitch, tests/test_ovs_interop_netns.py) never hears this node."""
    plan = planlib.load(plan_file)
    with seed.topology(netns_prefix + "u8-") as t:
        n1, n2, router = t["network-1"], t["network-2"], t["router"]
        n2.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        v = Vtep(n1, mode, plan_file, tmp_path / "state")
        frames = flood_frames(plan.node("network-1").vtep_mac)
        try:
            got = capture(router, tmp_path / "flood.pcap",
                          lambda: run_py(n1, FRAME_SENDER, {"iface": "vxlan0",
                                                            "frames": [f.hex() for f in frames]}),
                          keep=lambda inner: inner[:6] in (b"\xff" * 6, b"\x33\x33\0\0\0\1"))
        finally:
            assert v.stop() == 0, v.output()
        assert sorted(f[OUTER_UDP + 16:] for f in got) == sorted(frames)
        for f in got:   # to the peer's underlay address, with the plan's VNI
            assert f[OUTER_IP + 16:OUTER_IP + 20] == bytes(map(int, N2_IP.split(".")))
            assert f[OUTER_UDP + 8:OUTER_UDP + 16] == struct.pack("!II", 0x08000000, 10 << 8)


# --- 3. hostile input from the underlay ---------------------------------------------------

def vxlan(vni=10, flags=0x08, res1=0, res2=0):
    return struct.pack("!II", flags << 24 | res1, vni << 8 | res2)


def inner_frame(plan):
    """A well-formed inner frame to network-2's VTEP (what a real peer would send)."""
    n1, n2 = plan.node("network-1"), plan.node("network-2")
    return bytes(Ether(src=n1.vtep_mac, dst=n2.vtep_mac)
                 / IP(src=str(n1.vtep_ip), dst=str(n2.vtep_ip)) / ICMP() / Raw(b"x" * 32))


def test_hostile_input_is_dropped_and_counted(netns_prefix, plan_file, tmp_path):
    plan = planlib.load(plan_file)
    with seed.topology(netns_prefix + "u3-") as t:
        n1, n2, router = t["network-1"], t["network-2"], t["router"]
        n1.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        v = Vtep(n2, "userspace", plan_file, tmp_path / "state")
        good = inner_frame(plan)
        # each case: the datagrams, who sends them, the reason they must be counted under
        cases = {
            "vni": (N1_IP, [vxlan(vni=11) + good, vxlan(vni=0) + good,
                            vxlan(vni=0xFFFFFF) + good]),
            "flags": (N1_IP, [vxlan(flags=0) + good, vxlan(flags=0) + good[:20]]),
            "reserved": (N1_IP, [vxlan(flags=0x0C) + good, vxlan(flags=0x88) + good,
                                 vxlan(res1=1) + good, vxlan(res2=0x80) + good]),
            "short": (N1_IP, [b"", b"\x08", vxlan()[:7]]),
            "runt": (N1_IP, [vxlan(), vxlan() + good[:13]]),
            "source": (ROUTER_N2_IP, [vxlan() + good, vxlan() + good]),
        }
        before = v.counters()
        for reason, (src, datagrams) in cases.items():
            sender = n1 if src == N1_IP else router
            run_py(sender, UDP_SENDER, {"src": src, "dst": N2_IP, "port": 4789,
                                        "datagrams": [d.hex() for d in datagrams]})
        want = {r: before["rx_drops"][r] + len(cases[r][1]) for r in cases}
        c = v.wait_counters(lambda c: {r: c["rx_drops"][r] for r in want} == want)
        assert c["rx"] == before["rx"], "a bad datagram reached the TAP device"
        assert c["rx_drops"]["tap-write"] == 0

        # a burst of 100,000 random bad datagrams, bounded in time
        errs0 = udp_rcvbuf_errors(n2)
        r = run_py(n1, BURST_SENDER, {"seed": 4789, "count": 100_000, "vni": 10, "src": N1_IP,
                                      "dst": N2_IP, "port": 4789, "burst": 200, "pause": 0.001,
                                      "limit": 60}, timeout=90)
        burst = json.loads(r.stdout)
        assert burst["n"] == 100_000, burst
        sent = burst["sent"]

        def accounted(c):
            # every datagram is counted under its reason, except those the kernel dropped
            # before the socket (a full receive buffer; counted in /proc/net/snmp)
            got = {k: c["rx_drops"][k] - want.get(k, before["rx_drops"][k]) for k in sent}
            lost = udp_rcvbuf_errors(n2) - errs0
            return (sum(got.values()) + lost == 100_000
                    and all(0 <= got[k] <= sent[k] for k in sent))
        c = v.wait_counters(accounted, limit=20)
        assert c["rx"] == before["rx"] and c["rx_drops"]["source"] == want["source"], c
        assert v.p.poll() is None, "vtep run --userspace died:\n" + v.output()
        # the overlay still carries traffic, both ways
        assert_pings((n2, "172.2.0.0"), (n1, "172.2.1.0"))
        c = v.wait_counters(lambda c: c["rx"]["packets"] >= before["rx"]["packets"] + 4)
        assert v.stop() == 0
        out = v.output()
        assert "Traceback" not in out
        assert re.search(r"vtep: counters: .* drops .*rx vni \d+.*rx source \d+", out), out
        # --accept-any-source turns the allowlist off: the stranger's frames are delivered
        v = Vtep(n2, "userspace", plan_file, tmp_path / "state", "--accept-any-source")
        src, datagrams = cases["source"]
        run_py(router, UDP_SENDER, {"src": src, "dst": N2_IP, "port": 4789,
                                    "datagrams": [d.hex() for d in datagrams]})
        c = v.wait_counters(lambda c: c["rx"]["packets"] == len(datagrams))
        assert not any(c["rx_drops"].values()), c
        assert v.stop() == 0


# --- 4. the fdb follows the plan on SIGHUP ------------------------------------------------

def test_sighup_fdb_follows_the_plan(netns_prefix, plan_file, tmp_path):
    t = seed.topology(netns_prefix + "u4-")
    n3 = t.add_node("network-3")
    t.add_link(n3, t["router"], "eth0", "eth3", f"{N3_IP}/24", "192.168.3.1/24",
               tx_offload=False)
    t.add_route(n3, "192.168.0.0/16", "192.168.3.1")
    t.add_route(t["network-1"], "192.168.3.0/24", "192.168.1.213")
    t.add_route(t["network-2"], "192.168.3.0/24", "192.168.2.216")
    three = tmp_path / "plan3.toml"
    three.write_text(SEED_PLAN + THIRD_NODE)
    with t:
        n1, n2 = t["network-1"], t["network-2"]
        n1.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        n3.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(three)])
        v = Vtep(n2, "userspace", plan_file, tmp_path / "state")
        # network-3 is not in network-2's plan: its packets are dropped as "source"
        assert not ping(n3, "172.2.1.0", 1)[0]
        v.wait_counters(lambda c: c["rx_drops"]["source"] >= 1)

        plan_file.write_text(three.read_text())
        v.signal(signal.SIGHUP)
        assert wait_for(lambda: v.status()["peers"] == ["network-1", "network-3"]), v.output()
        assert_pings((n2, "172.2.2.0"), (n3, "172.2.1.0"), (n2, "172.2.0.0"))
        c = v.wait_counters(lambda c: c["peers"][N3_IP]["tx_packets"] >= 4
                            and c["peers"][N3_IP]["rx_packets"] >= 4)
        assert set(c["peers"]) == {N1_IP, N3_IP}
        source = c["rx_drops"]["source"]

        plan_file.write_text(SEED_PLAN)
        v.signal(signal.SIGHUP)
        c = v.wait_counters(lambda c: set(c["peers"]) == {N1_IP})
        assert v.status()["peers"] == ["network-1"]
        routes = n2.cmd(["ip", "-4", "route", "show", "dev", "vxlan0"]).stdout
        assert "172.2.2.0/24" not in routes and "172.2.0.0/24" in routes, routes
        assert "172.2.2.0" not in n2.cmd(["ip", "neigh", "show", "dev", "vxlan0"]).stdout
        assert not ping(n2, "172.2.2.0", 1)[0]
        assert not ping(n3, "172.2.1.0", 1)[0]   # network-3 is a stranger again
        v.wait_counters(lambda c: c["rx_drops"]["source"] > source)
        assert_pings((n2, "172.2.0.0"))
        assert v.stop() == 0
        out = v.output()
        assert "added network-3" in out and "removed network-3" in out, out
        assert "Traceback" not in out


# --- 5. errors ----------------------------------------------------------------------------

def test_errors(netns_prefix, plan_file, tmp_path):
    run = VTEP + ["run", "--userspace", "--config", str(plan_file), "--state-dir",
                  str(tmp_path / "state")]
    with seed.topology(netns_prefix + "u5-") as t:
        n1 = t["network-1"]

        def has(dev):
            return n1.cmd(["ip", "link", "show", dev], check=False).returncode == 0

        one_line(n1.cmd(run + ["--once"], check=False), 2, "--once", "--userspace")
        one_line(n1.cmd(run + ["--keep"], check=False), 2, "--keep")
        kernel = [a if a != "--userspace" else "--kernel" for a in run]
        one_line(n1.cmd(kernel + ["--no-offload"], check=False), 2, "--no-offload",
                 "--userspace only")
        # the port held by a kernel vxlan device in the same namespace
        n1.cmd(["ip", "link", "add", "vxo", "type", "vxlan", "id", "10", "dstport", "4789",
                "local", N1_IP, "dev", "eth0"])
        n1.cmd(["ip", "link", "set", "vxo", "up"])
        one_line(n1.cmd(run, check=False, timeout=30), 4, "UDP port 4789", N1_IP,
                 "already held")
        assert not has("vxlan0"), "a failed start left a device behind"
        assert not (tmp_path / "state" / "vxlan0.network-1.json").exists()
        n1.cmd(["ip", "link", "del", "vxo"])
        # a kernel vxlan0 left by `vtep run --kernel --once`: incompatible; --replace takes it
        n1.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        one_line(n1.cmd(run, check=False), 5, "vxlan0", "kind: tap (this process's) vs vxlan")
        v = Vtep(n1, "userspace", plan_file, tmp_path / "state", "--replace")
        assert "tun type tap" in n1.cmd(["ip", "-d", "link", "show", "vxlan0"]).stdout
        # a second run on the same device refuses while the first lives
        one_line(n1.cmd(run, check=False), 4, "already manages vxlan0")
        assert v.stop() == 0
        assert "deleted vxlan0 (vxlan) to create the TAP device" in v.output()
        assert not has("vxlan0")
