#!/usr/bin/env python3
"""Regenerate every sample capture in pcaps/ (see pcaps/README.md for the verdicts).

    sudo python pcaps/make_samples.py [--out DIR] [--no-lab] [--no-crafted]

Two kinds of sample:

* RECORDED (``lab-*``): real traffic between two Linux kernel VTEPs (``vxlan0``,
  VNI 10, dstport 4789, configured by hand below, not by vtep) in a throw-away
  seed lab, captured on the router namespace in between with tcpdump / dumpcap.
  Needs root. The lab is the project's (vtep.lab.lab.build with
  LabSpec(pods=False, agents=False): the seed topology and nothing else); every
  namespace is named with a per-run prefix ``vxs<pid>-`` and deleted in
  ``finally``; nothing is added to the root namespace and traffic only goes to
  addresses inside the lab. Recorded bytes vary from run to run (timestamps, IP
  ids, ICMP ids, UDP source ports) but the packet counts, sizes and verdicts do
  not.

* CRAFTED (``crafted-*``): scapy-built frames for faults a healthy kernel will
  not produce. Fully deterministic: fixed MACs, addresses, IP ids, ports and
  timestamps, written by the small pcap writer below, so a rerun gives identical
  bytes. Does not need root.

Topology (vtep.lab.seed: underlay 192.168.1.0/24 and 192.168.2.0/24 joined by
``router``; every veth's MAC is 02:00 and its IPv4 address, as in the crafted frames)::

    network-1                      router                        network-2
    eth0 192.168.1.138 ---- eth1 192.168.1.213
                                 eth2 192.168.2.216 ---- eth0 192.168.2.142
    vxlan0 172.2.0.0/32  ==== VXLAN VNI 10, UDP 4789 ====  vxlan0 172.2.1.0/32
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vtep import wire
from vtep.errors import LabError
from vtep.lab import lab as lablib
from vtep.lab.seed import SEED, address, mac

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------
# Addressing shared by the lab and the crafted frames (so crafted frames look
# like the recorded ones): the seed's (vtep.lab.seed), and the MACs of the
# sample VTEPs, which are configured by hand here (not vtep's derived ones)
# and follow the seed's rule for a fixed MAC: 02:00 and the IPv4 address.
# ---------------------------------------------------------------------------
N1, N2 = SEED.nodes
N1_UL_IP, N2_UL_IP = address(N1.ipv4.node), address(N2.ipv4.node)
R1_IP, R2_IP = address(N1.ipv4.router), address(N2.ipv4.router)
N1_UL_MAC, N2_UL_MAC = mac(N1.ipv4.node), mac(N2.ipv4.node)
R1_MAC, R2_MAC = mac(N1.ipv4.router), mac(N2.ipv4.router)
N1_UL6_IP, N2_UL6_IP = address(N1.ipv6.node), address(N2.ipv6.node)
N1_VTEP_IP, N2_VTEP_IP = (str(ipaddress.ip_network(n.subnet).network_address)
                          for n in (N1, N2))
N1_VTEP_MAC, N2_VTEP_MAC = mac(N1_VTEP_IP), mac(N2_VTEP_IP)
VNI = SEED.vni
VXLAN_PORT, LEGACY_PORT = SEED.port, wire.VXLAN_PORT_LINUX_LEGACY
UL_DEV = SEED.underlay_dev         # each node's underlay veth
CAPTURE_IF = N1.router_if          # the router's network-1 side
OVERLAY_MTU = SEED.underlay_mtu - 50   # IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14

LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 1, 113, 276


# ---------------------------------------------------------------------------
# Small capture-file helpers (independent of vxinspect).
# ---------------------------------------------------------------------------
def write_pcap(path: Path, frames, *, snaplen: int = 262144) -> Path:
    """Classic little-endian microsecond pcap, Ethernet, fixed timestamps.

    `frames` holds bytes-like frames or (bytes, orig_len) pairs; a pair with
    orig_len > len(bytes) is a frame cut by the snap length.
    """
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
    for i, f in enumerate(frames):
        data, orig = f if isinstance(f, tuple) else (f, None)
        data = bytes(data)
        orig = len(data) if orig is None else orig
        out += struct.pack("<IIII", 1700000000 + i, 1000 * i, len(data), orig) + data
    path.write_bytes(out)
    return path


def capture_summary(path: Path) -> tuple[str, int, int]:
    """(format, linktype, packet count) of a pcap or pcapng file."""
    b = path.read_bytes()
    magic = b[:4]
    if magic == b"\x0a\x0d\x0d\x0a":  # pcapng
        e = "<" if b[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        off, linktypes, count = 0, [], 0
        while off + 12 <= len(b):
            btype, blen = struct.unpack_from(e + "II", b, off)
            if btype == 1:
                linktypes.append(struct.unpack_from(e + "H", b, off + 8)[0])
            elif btype in (3, 6):
                count += 1
            off += blen
        return "pcapng", (linktypes[0] if linktypes else -1), count
    for e in "<>":
        m = struct.unpack_from(e + "I", b, 0)[0]
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            fmt = "pcap-" + ("ns" if m == 0xA1B23C4D else "us")
            linktype = struct.unpack_from(e + "I", b, 20)[0]
            off, count = 24, 0
            while off + 16 <= len(b):
                caplen = struct.unpack_from(e + "I", b, off + 8)[0]
                off += 16 + caplen
                count += 1
            return fmt, linktype, count
    raise ValueError(f"{path}: not a capture file")


# ---------------------------------------------------------------------------
# RECORDED samples: the seed lab, two kernel VTEPs typed in by hand.
# ---------------------------------------------------------------------------
class SampleLab:
    """The project's seed lab (topology only) and what the samples add to it: a kernel
    VTEP per node, captures on the router, traffic between the VTEPs."""

    def __init__(self, lab: lablib.Lab):
        self.lab = lab

    def node(self, name: str):
        return self.lab.topology[name]

    def exec(self, node: str, *args: str, **kw):
        return self.node(node).cmd(list(args), **kw)

    def ip(self, node: str, *args: str):
        return self.exec(node, "ip", *args)

    def configure_vteps(self) -> None:
        """On each node the commands of pcaps/README.md: vxlan0 with a fixed MAC, a
        permanent neighbour entry and an fdb entry for the peer, a route to its subnet."""
        nodes = (
            ("network-1", N1_UL_IP, N1_VTEP_IP, N1_VTEP_MAC,
             N2_VTEP_IP, N2_VTEP_MAC, N2_UL_IP, N2.subnet),
            ("network-2", N2_UL_IP, N2_VTEP_IP, N2_VTEP_MAC,
             N1_VTEP_IP, N1_VTEP_MAC, N1_UL_IP, N1.subnet),
        )
        for (node, ul_ip, vtep_ip, vtep_mac,
             peer_vtep_ip, peer_vtep_mac, peer_ul_ip, peer_overlay) in nodes:
            self.ip(node, "link", "add", "vxlan0", "type", "vxlan", "id", str(VNI),
                    "local", ul_ip, "dstport", str(VXLAN_PORT), "nolearning", "dev", UL_DEV)
            self.ip(node, "link", "set", "vxlan0", "address", vtep_mac, "mtu",
                    str(OVERLAY_MTU))
            self.ip(node, "addr", "add", f"{vtep_ip}/32", "dev", "vxlan0")
            self.ip(node, "link", "set", "vxlan0", "up")
            self.ip(node, "neigh", "add", peer_vtep_ip, "lladdr", peer_vtep_mac,
                    "dev", "vxlan0", "nud", "permanent")
            self.exec(node, "bridge", "fdb", "append", peer_vtep_mac, "dev", "vxlan0",
                      "dst", peer_ul_ip)
            self.ip(node, "route", "add", peer_overlay, "via", peer_vtep_ip,
                    "dev", "vxlan0", "onlink")
        # warm up: underlay ARP resolved, overlay reachable both ways
        self.exec("network-1", "ping", "-c", "1", "-W", "2", N2_UL_IP, timeout=10)
        self.exec("network-1", "ping", "-c", "1", "-W", "2", N2_VTEP_IP, timeout=10)
        self.exec("network-2", "ping", "-c", "1", "-W", "2", N1_VTEP_IP, timeout=10)

    # -- capture -----------------------------------------------------------
    def capture(self, path: Path, *, count: int, traffic, tool: str = "tcpdump",
                iface: str = CAPTURE_IF, bpf: str = f"udp dst port {VXLAN_PORT}",
                extra: tuple[str, ...] = ()) -> Path:
        """Capture exactly `count` packets on the router while `traffic()` runs."""
        if path.exists():
            path.unlink()
        if tool == "tcpdump":
            cmd = ["tcpdump", "-i", iface, "-nn", "-U", "-c", str(count), "-s", "262144",
                   *extra, "-w", str(path), bpf]
            ready = "listening on"
        else:  # dumpcap writes pcapng
            cmd = ["dumpcap", "-i", iface, "-c", str(count), "-s", "262144", "-f", bpf,
                   "-a", "duration:20", *extra, "-w", str(path)]
            ready = "Capturing on"
        # ended by PID (Topology.popen records it) if it outlives its bounds
        p = self.node(SEED.router).popen(["timeout", "20", *cmd], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        seen, deadline = b"", time.monotonic() + 10
        while ready.encode() not in seen:
            if p.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{tool} did not start: {seen.decode(errors='replace')}")
            r, _, _ = select.select([p.stderr], [], [], 0.5)
            if r:
                seen += os.read(p.stderr.fileno(), 4096)
        time.sleep(0.5)
        traffic()
        try:
            p.wait(timeout=25)
        except subprocess.TimeoutExpired:
            self.lab.topology.end_processes()
        p.stderr.close()
        # tcpdump writes as its drop-privileges user, dumpcap with mode 0600
        os.chown(path, os.getuid(), os.getgid())
        path.chmod(0o644)
        fmt, linktype, n = capture_summary(path)
        if n != count:
            raise LabError(f"{path.name}: captured {n} packets, wanted {count}")
        print(f"recorded {path.name}: {fmt}, linktype {linktype}, {n} packets, "
              f"{path.stat().st_size} bytes")
        return path

    def ping(self, node: str, dst: str, *args: str, count: int = 3):
        def go():
            self.exec(node, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2",
                      *args, dst, timeout=20)
        return go

    def udp(self, node: str, src: str, dst: str, count: int = 3):
        code = ("import socket,time\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"s.bind(({src!r},40000))\n"
                f"for i in range({count}):\n"
                f"    s.sendto(b'vxinspect sample %d' % i + bytes(64),({dst!r},9))\n"
                "    time.sleep(0.1)\n")

        def go():
            self.exec(node, sys.executable, "-c", code, timeout=20)
        return go


def make_recorded(out: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit("the recorded samples need root (network namespaces)")
    work = tempfile.mkdtemp(prefix="vtep-samples-")
    record = lablib.Lab(f"vxs{os.getpid()}-", base=work)
    lab = SampleLab(record)
    try:
        lablib.build(record, lablib.LabSpec(pods=False, agents=False), say=lablib.silent)
        lab.configure_vteps()
        # 3 x 56-byte pings VTEP to VTEP: 3 requests + 3 replies cross eth1
        lab.capture(out / "lab-kernel-ping.pcap", count=6,
                    traffic=lab.ping("network-1", N2_VTEP_IP, count=3),
                    bpf=f"udp port {VXLAN_PORT}")
        # largest ping that fits: inner IP 1450 = overlay MTU, outer IP 1500
        lab.capture(out / "lab-kernel-full-mtu.pcap", count=4,
                    traffic=lab.ping("network-1", N2_VTEP_IP, "-M", "do", "-s", "1422",
                                     count=2),
                    bpf=f"udp port {VXLAN_PORT}")
        # tcpdump -i any: cooked capture (SLL2 with libpcap >= 1.10), each packet
        # seen twice (in on eth1, out on eth2): 2 requests + 2 replies -> 8 records
        lab.capture(out / "lab-kernel-any-sll2.pcap", count=8, iface="any",
                    traffic=lab.ping("network-1", N2_VTEP_IP, count=2),
                    bpf=f"udp port {VXLAN_PORT}")
        # nanosecond-resolution classic pcap
        lab.capture(out / "lab-kernel-nano.pcap", count=4,
                    extra=("--time-stamp-precision=nano",),
                    traffic=lab.ping("network-2", N1_VTEP_IP, count=2),
                    bpf=f"udp port {VXLAN_PORT}")
        # pcapng: tcpdump 4.99 cannot write it, dumpcap (Wireshark) writes it natively
        lab.capture(out / "lab-kernel-pcapng.pcapng", count=4, tool="dumpcap",
                    traffic=lab.ping("network-1", N2_VTEP_IP, count=2),
                    bpf=f"udp port {VXLAN_PORT}")
        # inner UDP (no listener): the inner UDP checksum is filled because tx
        # checksum offload is off on eth0; only the 3 datagrams are captured
        lab.capture(out / "lab-kernel-udp.pcap", count=3,
                    traffic=lab.udp("network-1", N1_VTEP_IP, N2_VTEP_IP, count=3),
                    bpf=f"udp dst port {VXLAN_PORT} and src host {N1_UL_IP}")
        # the same with tx checksum offload left ON at the sender: the inner UDP
        # checksum leaves network-1 unfilled (partial) and is captured that way
        lab.exec("network-1", "ethtool", "-K", UL_DEV, "tx", "on")
        lab.capture(out / "lab-kernel-udp-offload.pcap", count=3,
                    traffic=lab.udp("network-1", N1_VTEP_IP, N2_VTEP_IP, count=3),
                    bpf=f"udp dst port {VXLAN_PORT} and src host {N1_UL_IP}")
        lab.exec("network-1", "ethtool", "-K", UL_DEV, "tx", "off")
    finally:
        lablib.teardown(record)
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------
# CRAFTED samples (scapy), deterministic.
# ---------------------------------------------------------------------------
def make_crafted(out: Path) -> None:
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw

    def payload(n: int) -> bytes:
        return bytes(i & 0xFF for i in range(n))

    def inner(seq=1, *, size=56, src_mac=N1_VTEP_MAC, dst_mac=N2_VTEP_MAC,
              src=N1_VTEP_IP, dst=N2_VTEP_IP, reply=False):
        """Inner frame: an ICMP echo of `size` data bytes (inner IP = size + 28)."""
        return (Ether(src=src_mac, dst=dst_mac)
                / IP(src=src, dst=dst, id=0x1000 + seq, flags="DF", ttl=64)
                / ICMP(type=0 if reply else 8, id=0x4242, seq=seq) / Raw(payload(size)))

    def reply_inner(seq=1, **kw):
        return inner(seq, src_mac=N2_VTEP_MAC, dst_mac=N1_VTEP_MAC, src=N2_VTEP_IP,
                     dst=N1_VTEP_IP, reply=True, **kw)

    def vxhdr(flags=0x08, vni=VNI, res1=0, res2=0) -> bytes:
        """Raw 8-byte VXLAN header, any field value."""
        return struct.pack("!II", (flags << 24) | res1, (vni << 8) | res2)

    def outer4(inn, *, vni=VNI, hdr=None, src=N1_UL_IP, dst=N2_UL_IP, src_mac=N1_UL_MAC,
               dst_mac=R1_MAC, ipid=1, sport=49152, dport=VXLAN_PORT, df=True,
               udp_chksum=None, ip_chksum=None, vlans=()):
        """Ether/[tags]/IPv4/UDP/VXLAN/inner; `hdr` overrides the VXLAN header bytes."""
        l2 = Ether(src=src_mac, dst=dst_mac)
        for tpid, vid in vlans:
            l2 = l2 / (Dot1AD(vlan=vid) if tpid == 0x88A8 else Dot1Q(vlan=vid))
        ip = IP(src=src, dst=dst, id=ipid, flags="DF" if df else 0, ttl=64)
        if ip_chksum is not None:
            ip.chksum = ip_chksum
        udp = UDP(sport=sport, dport=dport)
        if udp_chksum is not None:
            udp.chksum = udp_chksum
        vx = Raw(hdr + bytes(inn)) if hdr is not None else VXLAN(flags=0x08, vni=vni) / inn
        return l2 / ip / udp / vx

    def outer6(inn, *, udp_chksum=None, sport=49152):
        udp = UDP(sport=sport, dport=VXLAN_PORT)
        if udp_chksum is not None:
            udp.chksum = udp_chksum
        return (Ether(src=N1_UL_MAC, dst=R1_MAC)
                / IPv6(src=N1_UL6_IP, dst=N2_UL6_IP, hlim=64, fl=0)
                / udp / VXLAN(flags=0x08, vni=VNI) / inn)

    def fragments(inn, *, frag_bytes, ipid):
        """Outer IPv4 datagram (UDP checksum 0, DF clear) split in two fragments."""
        whole = bytes(UDP(sport=49153, dport=VXLAN_PORT, chksum=0)
                      / VXLAN(flags=0x08, vni=VNI) / inn)
        assert frag_bytes % 8 == 0
        frags = []
        for off, mf in ((0, True), (frag_bytes, False)):
            part = whole[off:off + frag_bytes] if mf else whole[off:]
            frags.append(Ether(src=N1_UL_MAC, dst=R1_MAC)
                         / IP(src=N1_UL_IP, dst=N2_UL_IP, id=ipid, flags="MF" if mf else 0,
                              frag=off // 8, proto=17, ttl=64)
                         / Raw(part))
        return frags

    def b(pkt) -> bytes:
        return bytes(pkt)

    samples: dict[str, list] = {}

    # VNI 42 where 10 is expected (request + reply)
    samples["crafted-wrong-vni.pcap"] = [
        outer4(inner(1), vni=42, ipid=1),
        outer4(reply_inner(1), vni=42, ipid=2, src=N2_UL_IP, dst=N1_UL_IP,
               src_mac=R1_MAC, dst_mac=N1_UL_MAC, sport=49200),
    ]
    # I flag clear (flags byte 0x00), VNI field 10; the second packet is a clean control
    samples["crafted-i-flag-clear.pcap"] = [
        outer4(inner(1), hdr=vxhdr(flags=0x00), ipid=1),
        outer4(inner(2), ipid=2),
    ]
    # reserved bits: scapy's old default flags 0x0C, a reserved bit in the
    # flags byte's top bit, reserved bytes 1-3 non-zero, byte 7 non-zero
    samples["crafted-reserved-bits.pcap"] = [
        outer4(inner(1), hdr=vxhdr(flags=0x0C), ipid=1),
        outer4(inner(2), hdr=vxhdr(flags=0x88), ipid=2),
        outer4(inner(3), hdr=vxhdr(res1=0x000001), ipid=3),
        outer4(inner(4), hdr=vxhdr(res2=0x01), ipid=4),
        outer4(inner(5), ipid=5),  # clean control
    ]
    # Linux's pre-IANA port 8472 (request + reply)
    samples["crafted-legacy-port.pcap"] = [
        outer4(inner(1), dport=LEGACY_PORT, ipid=1),
        outer4(reply_inner(1), dport=LEGACY_PORT, ipid=2, src=N2_UL_IP, dst=N1_UL_IP,
               src_mac=R1_MAC, dst_mac=N1_UL_MAC, sport=49200),
    ]
    # VXLAN (VNI 42) on a non-standard port 4790: plain UDP unless --port 4790
    samples["crafted-custom-port.pcap"] = [
        outer4(inner(1), vni=42, dport=4790, ipid=1),
    ]
    # outer IPv4 fragmented: whole datagram 20+8+8+14+1200 = 1250 bytes (fits
    # 1500), split 800 + 422 bytes of IP payload; DF clear as fragments must be
    samples["crafted-outer-fragment.pcap"] = fragments(inner(1, size=1200 - 28),
                                                       frag_bytes=800, ipid=0x2001)
    # a fragmented datagram whose whole length (1650) exceeds the 1500 underlay:
    # first fragment 1500 bytes on the wire, second 20 + 150
    samples["crafted-outer-fragment-too-big.pcap"] = fragments(inner(1, size=1600 - 28),
                                                               frag_bytes=1480, ipid=0x2002)
    # unfragmented outer 1550 bytes (inner IP 1500) with DF set
    samples["crafted-outer-too-big.pcap"] = [
        outer4(inner(1, size=1500 - 28), ipid=1),
    ]
    # wrong outer IPv4 header checksum in packet 1; packet 2 correct
    good = outer4(inner(1), ipid=1)
    bad_sum = (IP(b(good[IP])).chksum + 1) & 0xFFFF or 1
    samples["crafted-bad-ip-checksum.pcap"] = [
        outer4(inner(1), ipid=1, ip_chksum=bad_sum),
        outer4(inner(2), ipid=2),
    ]
    # outer UDP checksum: correct non-zero, zero (allowed over IPv4), wrong
    good = outer4(inner(3), ipid=3)
    right = Ether(b(good))[UDP].chksum
    samples["crafted-bad-udp-checksum.pcap"] = [
        outer4(inner(1), ipid=1),
        outer4(inner(2), ipid=2, udp_chksum=0),
        outer4(inner(3), ipid=3, udp_chksum=(right ^ 0x5A5A) or 1),
    ]
    # IPv6 underlay: UDP checksum zero (warning), then a correct one
    samples["crafted-ipv6-zero-udp-checksum.pcap"] = [
        outer6(inner(1), udp_chksum=0),
        outer6(inner(2), sport=49153),
    ]
    # inner frames: 802.1Q tag, then 802.1ad + 802.1Q (QinQ), then untagged control
    def tagged_inner(seq, tags):
        e = Ether(src=N1_VTEP_MAC, dst=N2_VTEP_MAC)
        for tpid, vid in tags:
            e = e / (Dot1AD(vlan=vid) if tpid == 0x88A8 else Dot1Q(vlan=vid))
        i = inner(seq)
        return e / i[IP]
    samples["crafted-inner-vlan.pcap"] = [
        outer4(tagged_inner(1, [(0x8100, 100)]), ipid=1),
        outer4(tagged_inner(2, [(0x88A8, 200), (0x8100, 100)]), ipid=2),
        outer4(inner(3), ipid=3),
    ]
    # outer 802.1Q and 802.1ad+802.1Q tags on the underlay: clean VXLAN
    samples["crafted-outer-vlan.pcap"] = [
        outer4(inner(1), ipid=1, vlans=[(0x8100, 10)]),
        outer4(inner(2), ipid=2, vlans=[(0x88A8, 20), (0x8100, 10)]),
    ]
    # inner EtherType 0x88B5 (IEEE local experimental): unknown; ARP and IPv6 are known
    samples["crafted-inner-unknown-type.pcap"] = [
        outer4(Ether(src=N1_VTEP_MAC, dst=N2_VTEP_MAC, type=0x88B5) / Raw(payload(46)), ipid=1),
        outer4(Ether(src=N1_VTEP_MAC, dst="ff:ff:ff:ff:ff:ff")
               / ARP(op=1, hwsrc=N1_VTEP_MAC, psrc=N1_VTEP_IP, hwdst="00:00:00:00:00:00",
                     pdst=N2_VTEP_IP), ipid=2),
        outer4(Ether(src=N1_VTEP_MAC, dst=N2_VTEP_MAC)
               / IPv6(src="fd00:172::", dst="fd00:172::1", hlim=64, fl=0)
               / UDP(sport=40000, dport=9) / Raw(payload(16)), ipid=3),
    ]
    # inner checksums: inner IPv4 header wrong; inner ICMP wrong; inner UDP
    # checksum 0 over IPv4 (= no checksum, fine)
    i1 = inner(1)
    i1[IP].chksum = (IP(b(inner(1)[IP])).chksum ^ 0x0101) or 1
    i2 = inner(2)
    i2[ICMP].chksum = (Ether(b(inner(2)))[ICMP].chksum ^ 0x0202) or 1
    i3 = (Ether(src=N1_VTEP_MAC, dst=N2_VTEP_MAC)
          / IP(src=N1_VTEP_IP, dst=N2_VTEP_IP, id=0x1003, flags="DF")
          / UDP(sport=40000, dport=9, chksum=0) / Raw(payload(32)))
    samples["crafted-bad-inner-checksums.pcap"] = [
        outer4(i1, ipid=1), outer4(i2, ipid=2), outer4(i3, ipid=3),
    ]

    # VXLAN in VXLAN: level k uses its own MACs and addresses 10.<k>.0.1 -> 10.<k>.0.2
    def nested(depth: int, seq: int):
        # the innermost MAC differs per depth so no MAC is seen behind two IPs
        pkt = inner(seq, src_mac=f"02:00:00:00:{depth:02x}:99")
        for level in range(depth, 1, -1):  # wrap levels depth..2, level 1 = outer4
            pkt = (Ether(src=f"02:00:00:00:{level:02x}:01", dst=f"02:00:00:00:{level:02x}:02")
                   / IP(src=f"10.{level}.0.1", dst=f"10.{level}.0.2", id=seq, flags="DF")
                   / UDP(sport=49152 + level, dport=VXLAN_PORT)
                   / VXLAN(flags=0x08, vni=VNI) / pkt)
        return outer4(pkt, ipid=seq)
    samples["crafted-nested-vxlan.pcap"] = [nested(4, 1), nested(5, 2)]

    # MAC move: inner source MAC seen behind 192.168.1.138, then behind 192.168.2.99
    samples["crafted-mac-move.pcap"] = [
        outer4(inner(1), ipid=1),
        outer4(inner(2), ipid=2),
        outer4(inner(3), ipid=3, src="192.168.2.99", src_mac=R1_MAC, dst_mac=N2_UL_MAC),
    ]
    # the same MAC behind two outer IPs but in two different VNIs: not a move
    samples["crafted-mac-two-vnis.pcap"] = [
        outer4(inner(1), ipid=1),
        outer4(inner(2), vni=20, ipid=2, src="192.168.2.99", src_mac=R1_MAC,
               dst_mac=N2_UL_MAC),
    ]

    # truncation (the file itself is well-formed):
    full = b(outer4(inner(1), ipid=1, udp_chksum=0))
    lying_ip = outer4(inner(4), ipid=4, udp_chksum=0)
    lying_ip[IP].len = len(lying_ip[IP]) + 40          # IP total length > bytes present
    short_udp = outer4(inner(5), ipid=5, udp_chksum=0)
    short_udp[UDP].len = 4                              # UDP length < 8
    padded = b(outer4(inner(6, size=4), ipid=6, udp_chksum=0)) + bytes(6)  # padding: fine
    samples["crafted-truncated.pcap"] = [
        (full[:60], len(full)),   # snap length cut inside the inner Ethernet header
        (full[:46], len(full)),   # cut inside the VXLAN header
        b(lying_ip),
        b(short_udp),
        padded,
    ]

    for name, frames in samples.items():
        frames = [f if isinstance(f, tuple) else b(f) for f in frames]
        write_pcap(out / name, frames)
        print(f"crafted {name}: {len(frames)} packets, {(out / name).stat().st_size} bytes")

    # a capture FILE cut in the middle of its second record's data (exit 2)
    tmp = write_pcap(out / "crafted-truncated-file.pcap",
                     [b(outer4(inner(1), ipid=1)), b(outer4(inner(2), ipid=2))])
    data = tmp.read_bytes()
    tmp.write_bytes(data[:len(data) - 40])
    print(f"crafted crafted-truncated-file.pcap: cut at byte {len(data) - 40}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: pcaps/)")
    ap.add_argument("--no-lab", action="store_true", help="skip the recorded (root) samples")
    ap.add_argument("--no-crafted", action="store_true", help="skip the crafted samples")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_crafted:
        make_crafted(args.out)
    if not args.no_lab:
        make_recorded(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
