"""The userspace path's offloads (issue 11) on the seed topology, in network namespaces.

What each test would catch:
- segmented TCP on the wire: a super-frame read from the TAP with its virtio-net
  header must leave as the same VXLAN datagrams the kernel's vxlan device makes of it
  (inner headers, sequence numbers, flags, IDs and checksums byte for byte); a
  segmenter that gets one field wrong differs from the kernel here.
- a TCP stream through every pairing: data corrupted, lost or reordered by the
  segmenter or the coalescer changes the sha256 the receiver computes; the counters
  prove offloads were used (datagrams > TAP frames each way), not the fallback.
- the fallbacks: --no-offload and udp_checksum = false run the per-frame loops and
  say so in one log line and in the status.

Underlay veths: tx checksum offload off (the seed's default, as every lab mixing the
paths), GRO on at the nodes' ends (seed.topology: as a real NIC).
"""
import json
import signal
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from vtep.lab import seed
import seedlab
from seedlab import FRAME_SENDER, Vtep, run_py
from test_userspace_netns import OUTER_UDP, capture, mask_outer

pytestmark = pytest.mark.netns

POD_IP, REMOTE = "172.2.0.2", "172.2.1.0"
MSS = 1398          # a full segment: the overlay MTU 1450 less the IPv4 and TCP headers
VNET = struct.Struct("<BBHHHH")   # virtio_net_hdr, written by hand (not vtep.vnet)


def pseudo_sum(src: str, dst: str, length: int, proto: int = 6) -> int:
    """The folded, uncomplemented pseudo-header sum (RFC 793, RFC 768) a CHECKSUM_PARTIAL
    frame carries in its checksum field; computed here from the RFCs, not by vtep."""
    words = [int.from_bytes(bytes(map(int, a.split("."))), "big") for a in (src, dst)]
    s = sum(w >> 16 for w in words) + sum(w & 0xFFFF for w in words) + proto + length
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def super_frames(pod_mac: str, node_mac: str) -> list[str]:
    """TSO super-frames as a guest's virtio driver hands them over: a virtio-net header
    (NEEDS_CSUM, GSO_TCPV4, the MSS) and one 64 KiB-class TCP packet whose checksum field
    holds the pseudo-header sum. One ends in PSH, one in FIN with CWR on (CWR belongs on
    the first segment only), one a short tail of 1 byte; and a UDP super-frame (USO)."""
    out = []
    cases = [(5 * MSS + 700, "PA", 0x5000), (3 * MSS, "FAC", 0x6000), (2 * MSS + 1, "A", 0xFFFF)]
    for i, (size, flags, ident) in enumerate(cases):
        payload = bytes((i * 7 + k) % 251 for k in range(size))
        pkt = (Ether(src=pod_mac, dst=node_mac) / IP(src=POD_IP, dst=REMOTE, id=ident, flags="DF")
               / TCP(sport=41000 + i, dport=5001, seq=0xFFFFF000 + i, ack=77, flags=flags,
                     window=500) / Raw(payload))
        raw = bytearray(bytes(pkt))
        tcp_len = len(raw) - 34
        struct.pack_into("!H", raw, 34 + 16, pseudo_sum(POD_IP, REMOTE, tcp_len))
        hdr = VNET.pack(1, 1 | (0x80 if "C" in flags else 0), 54, MSS, 34, 16)
        out.append((hdr + bytes(raw)).hex())
    # USO: a UDP super-frame (GSO_UDP_L4), cut into datagrams of 1400 payload bytes
    payload = bytes(k % 249 for k in range(3 * 1400 + 333))
    pkt = (Ether(src=pod_mac, dst=node_mac) / IP(src=POD_IP, dst=REMOTE, id=0x7000, flags="DF")
           / UDP(sport=42000, dport=5001) / Raw(payload))
    raw = bytearray(bytes(pkt))
    struct.pack_into("!H", raw, 34 + 6, pseudo_sum(POD_IP, REMOTE, len(raw) - 34, 17))
    out.append((VNET.pack(1, 5, 42, 1400, 34, 6) + bytes(raw)).hex())
    return out


def test_segmented_tcp_leaves_as_the_kernel_path_sends_it(netns_prefix, plan_file, tmp_path):
    t = seed.topology(netns_prefix + "o1-")
    pod = t.add_node("pod-1")
    # tx offload ON at the pod: its veth keeps the super-frame whole (GSO) as far as the
    # node, which forwards it to vxlan0 (the kernel device, or vtep's TAP) unsegmented
    t.add_link(pod, t["network-1"], "eth0", "vpod", f"{POD_IP}/24", "172.2.0.1/24")
    with t:
        n1, n2, router = t["network-1"], t["network-2"], t["router"]
        n2.cmd(seedlab.VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        mac = {}
        for node, dev in ((pod, "eth0"), (n1, "vpod")):
            mac[node.name] = json.loads(node.cmd(["ip", "-j", "link", "show", dev]).stdout)[0][
                "address"]
        frames = super_frames(mac["pod-1"], mac["network-1"])

        def send():
            run_py(pod, FRAME_SENDER, {"iface": "eth0", "frames": frames, "vnet": True})

        runs = {}
        for mode in ("kernel", "userspace"):
            v = Vtep(n1, mode, plan_file, tmp_path / f"state-{mode}")
            try:
                runs[mode] = capture(router, tmp_path / f"{mode}.pcap", send)
                if mode == "userspace":
                    c = v.wait_counters(lambda c: c["tx"]["frames"] >= 4)
            finally:
                assert v.stop() == 0, v.output()
            if mode == "userspace":
                assert "offloads on: TAP csum tso4 tso6" in v.output(), v.output()
        k, u = runs["kernel"], runs["userspace"]
        # 6 + 3 + 3 TCP segments (ceil(size / MSS) each, counted by hand from the cases)
        # and 4 UDP datagrams
        assert len(k) == len(u) == 16, (len(k), len(u))
        for i, (a, b) in enumerate(zip(k, u)):
            assert mask_outer(a) == mask_outer(b), f"segment {i}: kernel vs userspace differ\n" \
                f"{Ether(a).show(dump=True)}\n{Ether(b).show(dump=True)}"
        # and what both sent is right by scapy's reading, not only equal
        seq = {}
        udp = [Ether(f[OUTER_UDP + 16:]) for f in u if Ether(f[OUTER_UDP + 16:]).haslayer(UDP)
               and Ether(f[OUTER_UDP + 16:])[UDP].sport == 42000]
        assert b"".join(bytes(p[UDP].payload) for p in udp) == bytes(k % 249 for k in
                                                                      range(3 * 1400 + 333))
        assert [p[IP].id for p in udp] == [0x7000 + j for j in range(4)]
        for p in udp:
            again = Ether(bytes(p))
            del again[IP].chksum, again[UDP].chksum, again[UDP].len
            again = Ether(bytes(again))
            assert (again[IP].chksum, again[UDP].chksum) == (p[IP].chksum, p[UDP].chksum)
        for f in u:
            inner = Ether(f[OUTER_UDP + 16:])
            if not inner.haslayer(TCP):
                continue
            tcp = inner[TCP]
            again = Ether(bytes(inner))
            del again[IP].chksum, again[TCP].chksum
            again = Ether(bytes(again))
            assert (again[IP].chksum, again[TCP].chksum) == (inner[IP].chksum, tcp.chksum)
            seq.setdefault(tcp.sport, []).append((tcp.seq, len(tcp.payload), str(tcp.flags)))
        assert seq[41000][0] == (0xFFFFF000, MSS, "A") and seq[41000][-1][2] == "PA"
        assert [s for s, _, _ in seq[41001]] == [(0xFFFFF001 + j * MSS) % 2**32 for j in range(3)]
        assert [f for _, _, f in seq[41001]] == ["AC", "A", "FA"]
        assert [n for _, n, _ in seq[41002]] == [MSS, MSS, 1]
        # the userspace side counted one TAP frame per super-frame, a datagram per segment
        assert c["tx"]["frames"] == 4 and c["tx"]["packets"] == 16, c


VTEP_IP = {"network-1": "172.2.0.0", "network-2": "172.2.1.0"}
SIZE = 24 << 20


def transfer(src, dst, seed_):
    """SIZE bytes over TCP from src's VTEP address to dst's, checked by sha256."""
    seedlab.transfer(src, dst, VTEP_IP[dst.name], seed_, SIZE, port=5002)


@pytest.mark.parametrize("modes", [("userspace", "kernel"), ("kernel", "userspace"),
                                   ("userspace", "userspace")], ids="-".join)
def test_a_tcp_stream_is_delivered_whole_through_the_offloads(netns_prefix, plan_file,
                                                             tmp_path, modes):
    t = seed.topology(netns_prefix + "o2-")
    with t:
        nodes = [t["network-1"], t["network-2"]]
        vteps = [Vtep(n, m, plan_file, tmp_path / f"state-{n.name}")
                 for n, m in zip(nodes, modes)]
        try:
            transfer(nodes[0], nodes[1], 1)
            transfer(nodes[1], nodes[0], 2)
            for v, m in zip(vteps, modes):
                if m != "userspace":
                    continue
                # 24 MiB each way: sent as super-frames (many datagrams per TAP read), and
                # received coalesced (many datagrams per TAP write; GRO on the underlay)
                c = v.wait_counters(lambda c: c["rx"]["packets"] > SIZE // 1500)
                assert c["tx"]["packets"] > 4 * c["tx"]["frames"], c
                assert c["rx"]["packets"] > 4 * c["rx"]["frames"], c
                assert not any(c["rx_drops"].values()), c
                assert c["offloads"].startswith("on: TAP csum tso4 tso6"), c
                assert c["offloads"].endswith("UDP GRO"), c
        finally:
            for v in vteps:
                assert v.stop() == 0, v.output()


@pytest.mark.parametrize("how,line", [
    ("--no-offload", "offloads off: --no-offload; one frame a system call"),
    ("udp_checksum = false", "offloads off: udp_checksum = false (UDP GSO always fills the "
                             "outer checksum); one frame a system call")])
def test_without_offloads_the_per_frame_loops_run_and_say_so(netns_prefix, plan_file,
                                                            tmp_path, how, line):
    extra = [how] if how.startswith("--") else []
    if not extra:
        plan_file.write_text(plan_file.read_text().replace("[cluster]\n",
                                                           f"[cluster]\n{how}\n"))
    t = seed.topology(netns_prefix + "o3-")
    with t:
        n1, n2 = t["network-1"], t["network-2"]
        n2.cmd(seedlab.VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        v = Vtep(n1, "userspace", plan_file, tmp_path / "state", *extra)
        try:
            transfer(n1, n2, 3)
            c = v.wait_counters(lambda c: c["tx"]["packets"] > SIZE // 1500)
            # one datagram a frame each way: no segmentation, no coalescing
            assert c["tx"]["packets"] == c["tx"]["frames"], c
            assert c["rx"]["packets"] == c["rx"]["frames"], c
            assert c["offloads"] == line.removeprefix("offloads "), c
        finally:
            assert v.stop() == 0, v.output()
        assert v.output().count("offloads ") == 1 and line in v.output(), v.output()


def test_a_reload_that_turns_the_checksum_off_turns_offloads_off_and_back(
        netns_prefix, plan_file, tmp_path):
    """SIGHUP with udp_checksum = false: the TAP is remade without vnet headers (UDP GSO
    cannot send a zero checksum) and UDP_GRO goes off on the receive socket, and it says
    so; back to true, offloads return. Traffic flows both ways in each state. Catches a
    TAP left with vnet headers under per-frame loops (every frame read would start with 10
    bytes of header), a socket left coalescing under them, or a reload that never comes
    back."""
    t = seed.topology(netns_prefix + "o4-")
    with t:
        n1, n2 = t["network-1"], t["network-2"]
        n2.cmd(seedlab.VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        v = Vtep(n1, "userspace", plan_file, tmp_path / "state")
        text = plan_file.read_text()
        try:
            states = []
            for checksum in ("false", "true"):
                plan_file.write_text(text.replace("[cluster]\n",
                                                  f"[cluster]\nudp_checksum = {checksum}\n"))
                v.signal(signal.SIGHUP)
                want = "off: udp_checksum" if checksum == "false" else "on: TAP"
                c = v.wait_counters(lambda c: c["offloads"].startswith(want))
                ok = n1.cmd(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", REMOTE],
                            check=False, timeout=20)
                assert ok.returncode == 0, ok.stdout + v.output()
                transfer(n1, n2, 4)
                before = c["rx"]["packets"]
                transfer(n2, n1, 5)   # the kernel peer fills the checksum: GRO could merge
                # at least one datagram counted for each full-size segment: a per-frame loop
                # reading a socket left with UDP_GRO on takes a coalesced read for one
                c = v.wait_counters(lambda c: c["rx"]["packets"] - before > SIZE // 1450)
                states.append(c["offloads"])
        finally:
            assert v.stop() == 0, v.output()
        assert [s.split(":")[0] for s in states] == ["off", "on"]
        log = v.output()
        assert log.count("offloads off: udp_checksum = false") == 1, log
        assert log.count("offloads on: TAP") == 2, log


def test_a_pods_super_frames_reach_the_tap_whole(netns_prefix, plan_file, tmp_path):
    """Pod to pod, each pod behind its node on a veth with the kernel's default offloads
    (TSO on): the node forwards the pod's 64 KiB super-frames to the TAP, which must take
    them whole, so the transmit side sends many datagrams per TAP read. Catches a TAP
    whose gso_max_size is under 64 KiB: the kernel segments every forwarded super-frame
    longer than that in software (gso_features_check), and pods lose the offloads."""
    t = seed.topology(netns_prefix + "o5-")
    pods = {}
    for name, sub in (("network-1", "172.2.0"), ("network-2", "172.2.1")):
        pod = pods[name] = t.add_node(f"pod-{name[-1]}")
        t.add_link(pod, t[name], "eth0", "vpod", f"{sub}.2/24", f"{sub}.1/24", mtu=1450)
        t.add_route(pod, "default", f"{sub}.1")
    with t:
        vteps = [Vtep(t[n], "userspace", plan_file, tmp_path / f"state-{n}")
                 for n in ("network-1", "network-2")]
        try:
            seedlab.transfer(pods["network-1"], pods["network-2"], "172.2.1.2", 6, SIZE,
                             port=5003)
            c = vteps[0].wait_counters(lambda c: c["tx"]["packets"] > SIZE // 1500)
            assert c["tx"]["packets"] > 4 * c["tx"]["frames"], c
            c = vteps[1].wait_counters(lambda c: c["rx"]["packets"] > SIZE // 1500)
            assert c["rx"]["packets"] > 4 * c["rx"]["frames"], c
        finally:
            for v in vteps:
                assert v.stop() == 0, v.output()
