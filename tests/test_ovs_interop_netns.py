"""Interop with Open vSwitch, a VXLAN stack vtep did not write (issue 17).

Three nodes joined by the router (tests/ovslab.py): network-1 and network-2 run vtep
(kernel on both, userspace on both, or mixed: kernel on network-1, userspace on
network-2), network-3 runs Open vSwitch 3.1 (userspace datapath, native tunnelling;
tests/ovspeer.py) configured from the same plan. OVS's side has NO static neighbour:
ARP resolves through the tunnel, flooded by OVS's NORMAL learning switch.

Isolation: every daemon, vtep agent, sender and capture runs inside a node's namespace
of the test's topology (names carry the run's prefix), OVS keeps its database, sockets,
logs and pid files in tmp_path and is ended by PID, the topology is removed in `finally`.
Every wait is bounded. A missing Open vSwitch fails (never skips: a skip in CI is a
failure) with a message saying what is missing.

The last test measures the wire: the same inner frames sent by the kernel path, the
userspace path and Open vSwitch, captured at the router, checked against the table under
"### What differs on the wire" in README.md, cell by cell.
"""
from __future__ import annotations

import json
import random
import re
import select
import struct
import subprocess
import sys
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from vtep import plan as planlib
from vtep.lab import demo
from vtep.lab.seed import SEED
from vtep.lab.topology import end_process

import ovslab
import ovspeer
import seedlab
from ovslab import OVS_NODE, VTEP_NODES, node_mode, tunnel_port
from ovspeer import OvsPeer
from seedlab import FRAME_SENDER, Vtep, run_py, transfer

# the namespace tests are marked one by one: the README table's parser is a unit test

ROOT = Path(__file__).resolve().parent.parent
WRONG_VNI = 42
TRANSFER = 5 * 1000 * 1000          # bytes each way
TCP_PORT = 5001
LIMIT = 10.0                        # s: any single wait of this file


def ping(node, dst, *extra, count=2):
    r = node.cmd(["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", *extra, dst],
                 check=False, timeout=20)
    return r.returncode == 0, r.stdout + r.stderr


def assert_ping(node, dst, *extra):
    ok, out = ping(node, dst, *extra)
    assert ok, f"{node.name} -> {dst} {' '.join(extra)}:\n{out}"
    return out


# --- the lab ----------------------------------------------------------------------------------

class Lab:
    """The three-node topology, OVS on network-3, vtep on the others in `mode`."""

    def __init__(self, prefix: str, mode: str, tmp: Path, *, csum: bool | None = None,
                 cluster: str = ""):
        self.mode, self.tmp = mode, tmp
        self.plan_file = tmp / "plan.toml"
        self.plan_file.write_text(ovslab.plan_text(cluster))
        self.plan = planlib.load(self.plan_file)
        self.t = ovslab.topology(prefix)
        self.ovs_conf = ovslab.ovs_node(self.plan, csum=csum)
        self.ovs: OvsPeer | None = None
        self.agents: dict[str, Vtep] = {}

    def __enter__(self) -> "Lab":
        self.t.start()
        try:
            self.ovs = OvsPeer(self.t[OVS_NODE], self.tmp / "ovs").start()
            self.ovs.configure(self.ovs_conf)
            for name in VTEP_NODES:
                self.agents[name] = Vtep(self.t[name], node_mode(self.mode, name),
                                         self.plan_file, self.tmp / f"state-{name}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.ovs:
                self.ovs.stop()
        finally:
            self.t.stop()      # ends the agents and captures by PID, deletes the namespaces

    def __getitem__(self, name):
        return self.t[name]

    def vtep_ip(self, name: str) -> str:
        return str(self.plan.node(name).vtep_ip)


# --- captures -----------------------------------------------------------------------------

class Sniff:
    """tcpdump on `iface` in `node`'s namespace until `count` frames matched `filt` (or
    `limit` seconds); started only once it listens."""

    def __init__(self, node, iface: str, path: Path, filt: str, count: int):
        self.node, self.iface, self.path, self.count = node, iface, path, count
        self.p = node.popen(["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-Z",
                             "root", "-c", str(count), "-w", str(path), filt],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
        seen, deadline = b"", time.monotonic() + LIMIT
        while b"listening on" not in seen:
            left = deadline - time.monotonic()
            if self.p.poll() is not None or left <= 0:
                end_process(self.p)
                raise AssertionError(f"tcpdump on {node.ns}:{iface} did not start: {seen!r}")
            if select.select([self.p.stderr], [], [], left)[0]:
                seen += self.p.stderr.read1(4096)

    def frames(self, limit: float = LIMIT, flush: bool = False) -> list[bytes]:
        """The frames captured once `count` came or `limit` passed, whichever is first;
        flush=True: once a marker frame sent now is in the file (seedlab.flush_capture:
        the filter must let it through), for captures without a known count; the marker
        is cut from the file."""
        if flush:
            seedlab.flush_capture(self.node.ns, self.iface, self.path, self.p, limit)
        try:
            self.p.wait(timeout=0 if flush else limit)
        except subprocess.TimeoutExpired:
            pass
        end_process(self.p)
        self.p.stderr.close()
        if flush:
            seedlab.cut_marker(self.path)
        return [bytes(f) for f in rdpcap(str(self.path))] if self.path.stat().st_size else []


def tag_of(frame: bytes) -> bytes | None:
    m = re.search(rb"vtep-flood [0-9a-f]{8}", frame)
    return m.group(0) if m else None


FLOOD_FILTER = "ether proto 0x88b5 or (ip6 and udp port 9)"


def flood_frames(src_mac: str) -> dict[bytes, str]:
    """A broadcast frame and an IPv6 multicast frame (33:33:00:00:00:01, to ff02::1 all
    nodes), each carrying a unique tag: tag -> frame (hex)."""
    out = {}
    for kind in ("bcast", "mcast6"):
        tag = b"vtep-flood " + random.randbytes(4).hex().encode()
        if kind == "bcast":   # EtherType 0x88B5: IEEE 802 local experimental
            f = Ether(dst="ff:ff:ff:ff:ff:ff", src=src_mac, type=0x88B5) / Raw(tag.ljust(46))
        else:
            f = (Ether(dst="33:33:00:00:00:01", src=src_mac) / IPv6(src="fe80::1",
                 dst="ff02::1", hlim=1) / UDP(sport=9, dport=9) / Raw(tag))
        out[tag] = bytes(f).hex()
    return out


def vxinspect(plan_file: Path, pcap: Path) -> tuple[int, dict]:
    """`vxinspect --plan --json` on a capture: (exit code, the JSON report)."""
    r = subprocess.run([sys.executable, "-m", "vxinspect", "--plan", str(plan_file), "--json",
                        str(pcap)], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("{"), f"vxinspect {pcap}: exit {r.returncode}: {r.stderr}"
    return r.returncode, json.loads(r.stdout)


def fired(rep: dict) -> dict[str, int]:
    return {k: c["count"] for k, c in rep.get("checks", {}).items() if c.get("count")}


def neighbours(node, dev: str) -> dict[str, dict]:
    out = node.cmd(["ip", "-j", "neigh", "show", "dev", dev]).stdout
    return {e["dst"]: e for e in json.loads(out or "[]")}


# --- 1. interop, per lab mode -------------------------------------------------------------

@pytest.mark.netns
@pytest.mark.parametrize("mode", ovslab.MODES)
def test_interop_with_open_vswitch(netns_prefix, tmp_path, mode):
    ovspeer.require()
    with Lab(f"{netns_prefix}o{mode[0]}-", mode, tmp_path) as lab:
        n3, router = lab[OVS_NODE], lab[SEED.router]
        ovs_ip = lab.vtep_ip(OVS_NODE)
        # the whole run crosses the router's link to network-3: vxinspect reads it (7.)
        cap_path = tmp_path / "router-eth3.pcap"
        cap = demo.tcpdump(router.ns, ovslab.ROUTER_IF[OVS_NODE], cap_path, count=100000,
                           seconds=120)
        try:
            # 4. (before) no neighbour on OVS's side: nothing static, nothing learnt yet
            assert not neighbours(n3, ovspeer.OVL), neighbours(n3, ovspeer.OVL)

            # 1. ping both ways, OVS <-> each vtep node's VTEP address
            for name in VTEP_NODES:
                assert_ping(n3, lab.vtep_ip(name))
                assert_ping(lab[name], ovs_ip)
            # 2. a full-size DF ping both ways: a 1450-byte IP packet fills the overlay MTU
            for name in VTEP_NODES:
                for a, dst in ((n3, lab.vtep_ip(name)), (lab[name], ovs_ip)):
                    out = assert_ping(a, dst, "-M", "do", "-s", "1422")
                    assert "1430 bytes from" in out, out   # 1422 + ICMP 8: the echo came back whole
            # 3. 5 MB over TCP each way, checked by sha256
            for i, name in enumerate(VTEP_NODES):
                transfer(n3, lab[name], lab.vtep_ip(name), seed=2 * i, size=TRANSFER,
                         port=TCP_PORT)
                transfer(lab[name], n3, ovs_ip, seed=2 * i + 1, size=TRANSFER, port=TCP_PORT)
            # 4. (after) ARP resolved through the tunnel: each vtep node's VTEP MAC, learnt
            neigh = neighbours(n3, ovspeer.OVL)
            for name in VTEP_NODES:
                e = neigh.get(lab.vtep_ip(name))
                assert e and e.get("lladdr") == lab.plan.node(name).vtep_mac, neigh
                assert set(e["state"]) & {"REACHABLE", "STALE", "DELAY", "PROBE"} and \
                    "PERMANENT" not in e["state"], e

            # 5. broadcast and IPv6 multicast flooded: from OVS to both vtep nodes ...
            # (asserted at the end, so that one path's missing flood hides no other case)
            unflooded = []
            sent = flood_frames(lab.plan.node(OVS_NODE).vtep_mac)
            sniffs = {name: Sniff(lab[name], "vxlan0", tmp_path / f"flood-{name}.pcap",
                                  FLOOD_FILTER, len(sent)) for name in VTEP_NODES}
            run_py(n3, FRAME_SENDER, {"iface": ovspeer.OVL, "frames": list(sent.values())})
            kinds = dict(zip(sent, ("broadcast", "IPv6 multicast")))
            for name, s in sniffs.items():
                got = {tag_of(f) for f in s.frames()}
                missing = [kinds[t] for t in sent if t not in got]
                if missing:
                    unflooded.append(f"OVS -> {name} ({node_mode(mode, name)} path): "
                                     f"{', '.join(missing)}")
            # ... and from each vtep node to OVS
            sent = {}
            for name in VTEP_NODES:
                sent[name] = flood_frames(lab.plan.node(name).vtep_mac)
            s = Sniff(n3, ovspeer.OVL, tmp_path / "flood-ovs.pcap", FLOOD_FILTER,
                      sum(len(v) for v in sent.values()))
            for name in VTEP_NODES:
                run_py(lab[name], FRAME_SENDER, {"iface": "vxlan0",
                                                 "frames": list(sent[name].values())})
            got = {tag_of(f) for f in s.frames()}
            for name in VTEP_NODES:
                kinds = dict(zip(sent[name], ("broadcast", "IPv6 multicast")))
                missing = [kinds[t] for t in sent[name] if t not in got]
                if missing:
                    unflooded.append(f"{name} ({node_mode(mode, name)} path) -> OVS: "
                                     f"{', '.join(missing)}")
        except BaseException:
            end_process(cap)     # started by netns.popen, not Node.popen: ours to end
            raise
        seedlab.flush_capture(router.ns, ovslab.ROUTER_IF[OVS_NODE], cap_path, cap)
        end_process(cap)
        cap.stderr.close()
        # 7. the router's capture of everything above passes vxinspect --plan
        seedlab.cut_marker(cap_path)
        rc, rep = vxinspect(lab.plan_file, cap_path)
        assert rc == 0 and rep.get("vxlan_packets", 0) > 0, \
            f"vxinspect --plan {cap_path}: exit {rc}: {fired(rep)}"

        # 6. a wrong VNI on OVS's side towards network-2: the ping fails, and a userspace
        # network-2 counts every packet OVS sent it under "vni" (a kernel vxlan device
        # finds no device for the VNI and drops it without a counter of its own)
        conf = next(x for x in lab.ovs_conf.tunnels if x.port == tunnel_port("network-2"))
        lab.ovs.set_tunnel(dataclasses.replace(conf, key=WRONG_VNI))
        agent = lab.agents["network-2"]
        userspace = node_mode(mode, "network-2") == "userspace"
        before = agent.counters()["rx_drops"]["vni"] if userspace else 0
        # what OVS sent, counted on the wire (VXLAN header word 2 = VNI << 8, RFC 7348)
        wrong = Sniff(router, ovslab.ROUTER_IF["network-2"], tmp_path / "wrong-vni.pcap",
                      f"(udp dst port 4789 and udp[12:4] = {WRONG_VNI << 8:#x}) or "
                      f"{seedlab.MARKER_FILTER}", 1000)
        ok, out = ping(n3, lab.vtep_ip("network-2"), count=3)
        assert not ok, f"ping over VNI {WRONG_VNI} to a VNI-10 node answered:\n{out}"
        sent_n = len(wrong.frames(flush=True))
        assert sent_n >= 3, f"the router saw {sent_n} VNI-{WRONG_VNI} packets to network-2"
        # (kept out of the capture above: vxinspect --plan rightly fails on them)
        rc, rep = vxinspect(lab.plan_file, wrong.path)
        assert rc == 1 and fired(rep).get("vni-mismatch") == sent_n, \
            f"vxinspect --plan on the VNI-{WRONG_VNI} packets: exit {rc}, {fired(rep)}"
        if userspace:
            agent.wait_counters(lambda c: c["rx_drops"]["vni"] - before >= sent_n)
        # network-1's tunnel still carries traffic
        assert_ping(n3, lab.vtep_ip("network-1"))
        for a in lab.agents.values():
            assert a.p.poll() is None, a.output()
        assert not unflooded, "broadcast/multicast not flooded: " + "; ".join(unflooded)


# --- 2. what differs on the wire: README's table, asserted cell by cell ----------------------

WIRE_HEADING = "### What differs on the wire"
WIRE_COLUMNS = ("field", "kernel path", "userspace path", "Open vSwitch")
# column -> (the sender, the device its frames are injected on, the receiver); a mixed lab
# has the kernel path on network-1 and the userspace path on network-2
SENDERS = {"kernel path": ("network-1", "vxlan0", OVS_NODE),
           "userspace path": ("network-2", "vxlan0", OVS_NODE),
           "Open vSwitch": (OVS_NODE, ovspeer.OVL, "network-1")}
ETH, OIP, OUDP, INNER = 0, 14, 34, 50    # offsets in an outer IPv4 VXLAN frame


class TableError(AssertionError):
    """README's table cannot be read, or holds a cell no predicate understands."""


def wire_table(readme: str) -> list[tuple[str, dict[str, str]]]:
    """The rows under WIRE_HEADING: (field, {column: cell}), in order."""
    lines = readme.splitlines()
    try:
        at = lines.index(WIRE_HEADING)
    except ValueError:
        raise TableError(f"README.md has no heading {WIRE_HEADING!r}")
    rows = []
    for ln in lines[at + 1:]:
        if ln.startswith("#"):
            break
        if ln.startswith("|"):
            rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif rows:
            break
    if len(rows) < 3 or tuple(rows[0]) != WIRE_COLUMNS or \
            not all(set(c) <= set(":-") for c in rows[1]):
        raise TableError(f"README.md {WIRE_HEADING!r}: expected a table with columns "
                         f"{' | '.join(WIRE_COLUMNS)}, got {rows[:2]}")
    out = []
    for r in rows[2:]:
        if len(r) != len(WIRE_COLUMNS):
            raise TableError(f"README.md {WIRE_HEADING!r}: row {r} has {len(r)} cells")
        out.append((r[0], dict(zip(WIRE_COLUMNS[1:], r[1:]))))
    return out


@dataclass
class Sent:
    """What one sender put on the wire for the probes (probe_frames)."""
    unicast: list[bytes]      # the outer frame of each unicast probe, in the order sent
    flows: list[int]          # the inner flow of each unicast probe
    mcast6: list[bytes]       # every outer copy of the inner IPv6 multicast probe
    peers: set[str]           # the sender's peers' underlay addresses


def udp_checksum_ok(f: bytes) -> bool:
    """The outer UDP checksum verifies (RFC 768: the one's complement sum over the IPv4
    pseudo-header, the UDP header and the data is 0xFFFF). Written here, not vtep's."""
    ulen = struct.unpack_from("!H", f, OUDP + 4)[0]
    data = f[OIP + 12:OIP + 20] + struct.pack("!BBH", 0, 17, ulen) + f[OUDP:OUDP + ulen]
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def df(f): return bool(f[OIP + 6] & 0x40)                          # noqa: E704
def ip_id(f): return struct.unpack_from("!H", f, OIP + 4)[0]        # noqa: E704
def sport(f): return struct.unpack_from("!H", f, OUDP)[0]           # noqa: E704
def ucsum(f): return struct.unpack_from("!H", f, OUDP + 6)[0]       # noqa: E704
def outer_dst(f): return ".".join(map(str, f[OIP + 16:OIP + 20]))   # noqa: E704


def incrementing(ids: list[int]) -> bool:
    """Each next ID a little above the last (mod 2^16): a counter, which may skip (Linux
    adds a random step for the time since its last use, CVE-2019-10638's fix)."""
    steps = [(b - a) % 65536 for a, b in zip(ids, ids[1:])]
    return bool(steps) and all(1 <= s <= 1024 for s in steps)


def one_port_per_flow(w: Sent, lo: int, hi: int) -> bool:
    ports = [sport(f) for f in w.unicast]
    by_flow: dict[int, set[int]] = {}
    for flow, p in zip(w.flows, ports):
        by_flow.setdefault(flow, set()).add(p)
    return (all(lo <= p <= hi for p in ports) and all(len(v) == 1 for v in by_flow.values())
            and len({next(iter(v)) for v in by_flow.values()}) > 1)   # flows spread


# field -> {cell value -> predicate on Sent}; a value is the cell's text before " (" (the
# reason), backticks and case ignored. "outer TTL" takes any number.
PREDICATES = {
    "outer df": {"set": lambda w: all(map(df, w.unicast)),
                 "clear": lambda w: not any(map(df, w.unicast))},
    "outer ip id": {"0": lambda w: all(ip_id(f) == 0 for f in w.unicast),
                    "incrementing": lambda w: incrementing([ip_id(f) for f in w.unicast]),
                    "random": lambda w: len({ip_id(f) for f in w.unicast}) == len(w.unicast)
                    and not incrementing([ip_id(f) for f in w.unicast])},
    "outer udp checksum": {"zero": lambda w: all(ucsum(f) == 0 for f in w.unicast),
                           "valid": lambda w: all(ucsum(f) and udp_checksum_ok(f)
                                                  for f in w.unicast)},
    "inner ipv6 multicast": {
        "flooded to every peer": lambda w: sorted(map(outer_dst, w.mcast6)) == sorted(w.peers),
        "dropped": lambda w: not w.mcast6},
}
PORT_RANGE = re.compile(r"(\d+)-(\d+), one port per flow")


def predicate(field: str, column: str, cell: str):
    """The check a cell states, or TableError naming the row, column and cell."""
    key, value = field.strip("`").lower(), cell.split(" (", 1)[0].replace("`", "").strip()
    low = value.lower()
    if key == "outer ttl" and value.isdigit():
        return lambda w: all(f[OIP + 8] == int(value) for f in w.unicast + w.mcast6)
    if key == "outer udp source port" and PORT_RANGE.fullmatch(low):
        lo, hi = map(int, PORT_RANGE.fullmatch(low).groups())
        return lambda w: one_port_per_flow(w, lo, hi)
    if key in PREDICATES and low in PREDICATES[key]:
        return PREDICATES[key][low]
    known = sorted(PREDICATES[key]) if key in PREDICATES else \
        ["a number"] if key == "outer ttl" else ["LO-HI, one port per flow"] \
        if key == "outer udp source port" else []
    raise TableError(f"README.md {WIRE_HEADING!r}, row {field!r}, column {column!r}: cell "
                     f"{cell!r} not understood (value {value!r}; this test knows "
                     + (", ".join(repr(k) for k in known) if known else
                        f"no field {field!r}; it knows outer TTL, outer UDP source port, "
                        + ", ".join(sorted(PREDICATES))) + ")")


def probe_frames(plan, src: str, dst: str) -> tuple[list[bytes], list[int], bytes]:
    """The same inner frames from any sender: three 200-byte pings and a full-size one
    (1450-byte IP packet) of one ICMP flow, four UDP flows, all unicast to `dst`'s VTEP;
    and an IPv6 multicast frame (33:33:00:00:00:01, to ff02::1). Returns (unicast frames,
    their flows, the multicast frame)."""
    s, d = plan.node(src), plan.node(dst)
    eth = Ether(src=s.vtep_mac, dst=d.vtep_mac)
    ip = dict(src=str(s.vtep_ip), dst=str(d.vtep_ip))
    uni = [eth / IP(**ip, id=0x4200 + i) / ICMP(id=0x1234, seq=i) / Raw(bytes(range(200)))
           for i in range(1, 4)]
    uni += [eth / IP(**ip, id=0x4300 + i) / UDP(sport=40000 + i, dport=9) / Raw(b"vtep" * 25)
            for i in range(4)]
    uni.append(eth / IP(**ip, id=0x4400) / ICMP(id=0x1234, seq=9)
               / Raw(bytes(i % 251 for i in range(1422))))
    assert len(uni[-1][IP]) == 1450
    flows = [0, 0, 0, 1, 2, 3, 4, 0]
    mcast = (Ether(src=s.vtep_mac, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1",
             hlim=1) / UDP(sport=9, dport=9) / Raw(b"vtep-probe " + src.encode()))
    return [bytes(f) for f in uni], flows, bytes(mcast)


def test_wire_table_cells_map_to_checks():
    """The parser and the cell vocabulary, on hand-written frames (no namespaces)."""
    readme = "\n".join([
        "intro", WIRE_HEADING, "", "| " + " | ".join(WIRE_COLUMNS) + " |",
        "|---|---|---|---|",
        "| outer DF | clear (why) | set | `set` (OVS's df_default) |",
        "| outer TTL | 64 | 64 | 63 |", "", "## next"])
    rows = wire_table(readme)
    assert [r[0] for r in rows] == ["outer DF", "outer TTL"]
    assert rows[0][1]["Open vSwitch"] == "`set` (OVS's df_default)"

    def outer(*, flags=0x40, ttl=64, ident=0, sp=40000, csum=0, dst=b"\xc0\xa8\x01\x8a"):
        ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 8, ident, flags << 8, ttl, 17,
                             0, b"\xc0\xa8\x03\x21", dst)
        return b"\0" * 12 + b"\x08\x00" + ip_hdr + struct.pack("!HHHH", sp, 4789, 16, csum) \
            + struct.pack("!II", 0x08000000, 10 << 8)
    w = Sent([outer(), outer()], [0, 1], [], set())
    assert predicate("outer DF", "x", "set (RFC 7348)")(w)
    assert not predicate("outer DF", "x", "clear")(w)
    assert predicate("outer TTL", "x", "64")(w) and not predicate("outer TTL", "x", "63")(w)
    assert predicate("outer IP ID", "x", "0")(w)
    assert predicate("outer IP ID", "x", "incrementing")(
        Sent([outer(ident=65535), outer(ident=2), outer(ident=5)], [0, 0, 0], [], set()))
    assert not predicate("outer IP ID", "x", "incrementing")(w)
    # a UDP checksum computed by hand: 0xc0a8+0x0321+0xc0a8+0x018a+0x0011+0x0010 (pseudo
    # header) + 0x9c40+0x12b5+0x0010 (header) + 0x0800 (VXLAN) + 0x0a00 = 0x2_4721 -> 0x4723,
    # complemented: 0xb8dc
    assert predicate("outer UDP checksum", "x", "valid")(Sent([outer(csum=0xB8DC)], [0], [],
                                                              set()))
    assert not predicate("outer UDP checksum", "x", "valid")(Sent([outer(csum=0xB8DD)], [0],
                                                                  [], set()))
    assert predicate("outer UDP checksum", "x", "zero")(w)
    ports = Sent([outer(sp=33000), outer(sp=33000), outer(sp=50000)], [0, 0, 1], [], set())
    assert predicate("outer UDP source port", "x", "32768-60999, one port per flow")(ports)
    assert not predicate("outer UDP source port", "x", "40000-60999, one port per flow")(ports)
    two = {"192.168.1.138", "192.168.2.142"}
    m = Sent([], [], [outer(dst=b"\xc0\xa8\x01\x8a"), outer(dst=b"\xc0\xa8\x02\x8e")], two)
    assert predicate("inner IPv6 multicast", "x", "flooded to every peer")(m)
    assert not predicate("inner IPv6 multicast", "x", "dropped")(m)
    assert predicate("inner IPv6 multicast", "x", "dropped")(Sent([], [], [], two))
    for field, cell, says in (("outer DF", "sometimes", "'clear', 'set'"),
                              ("outer TTL", "inherited", "a number"),
                              ("colour", "blue", "no field 'colour'")):
        with pytest.raises(TableError, match=re.escape(says)):
            predicate(field, "kernel path", cell)
    with pytest.raises(TableError, match="no heading"):
        wire_table("# vtep\n")
    with pytest.raises(TableError, match="expected a table with columns"):
        wire_table(WIRE_HEADING + "\n| field | kernel | userspace |\n|---|---|---|\n| a | b | c |")


@pytest.mark.netns
def test_what_differs_on_the_wire_is_what_readme_says(netns_prefix, tmp_path):
    """The same inner frames sent by the kernel path, the userspace path and Open vSwitch
    (a mixed lab), captured at the router on each sender's link; every cell of README's
    table is asserted on what was captured (mismatches are listed together)."""
    ovspeer.require()
    table = wire_table((ROOT / "README.md").read_text())
    checks = [(field, col, cell, predicate(field, col, cell))
              for field, cells in table for col, cell in cells.items()]
    with Lab(f"{netns_prefix}ow-", "mixed", tmp_path) as lab:
        # OVS learns where each VTEP MAC lives (its NORMAL switch floods unknown unicast)
        for name in VTEP_NODES:
            assert_ping(lab[OVS_NODE], lab.vtep_ip(name))
        sent = {col: send_probes(lab, col, tmp_path) for col in SENDERS}
    wrong = [f"{field} / {col}: README says {cell!r}; the wire says " + describe(field, sent[col])
             for field, col, cell, check in checks if not check(sent[col])]
    assert not wrong, "README's wire table is not what was captured:\n" + "\n".join(wrong)


def send_probes(lab: Lab, col: str, tmp: Path) -> Sent:
    """probe_frames() injected on the VTEP device of the sender of column `col`, captured
    at the router on that sender's link."""
    src, dev, dst = SENDERS[col]
    uni, flows, mcast = probe_frames(lab.plan, src, dst)
    s = Sniff(lab[SEED.router], ovslab.ROUTER_IF[src], tmp / f"wire-{src}.pcap",
              f"(udp dst port 4789 and src host {ovslab.underlay_ip(src)}) or "
              f"{seedlab.MARKER_FILTER}", 1000)
    run_py(lab[src], FRAME_SENDER, {"iface": dev, "frames": [f.hex() for f in uni + [mcast]]})
    got = s.frames(flush=True)
    copies = [[g for g in got if g[INNER:] == f] for f in uni]
    assert all(len(c) == 1 for c in copies), \
        f"{col}: unicast probes captured {[len(c) for c in copies]} times"
    return Sent([c[0] for c in copies], flows, [g for g in got if g[INNER:] == mcast],
                {str(p.underlay_ip) for p in lab.plan.peers(src)})


@pytest.mark.netns
def test_udp_checksum_false_both_vtep_paths_send_zero_and_ovs_accepts(netns_prefix,
                                                                     tmp_path):
    """The plan's `udp_checksum = false`: the kernel path's device (`noudpcsum`) and the
    userspace path both send a zero outer UDP checksum (RFC 7348 allows it over IPv4), and
    Open vSwitch still takes their traffic."""
    ovspeer.require()
    with Lab(f"{netns_prefix}oc-", "mixed", tmp_path,
             cluster="udp_checksum = false") as lab:
        link = lab["network-1"].cmd(["ip", "-d", "link", "show", "vxlan0"]).stdout
        assert " noudpcsum " in link, link
        for name in VTEP_NODES:
            assert_ping(lab[OVS_NODE], lab.vtep_ip(name))
            assert_ping(lab[name], lab.vtep_ip(OVS_NODE), "-M", "do", "-s", "1422")
        for col in ("kernel path", "userspace path"):
            w = send_probes(lab, col, tmp_path)
            assert [ucsum(f) for f in w.unicast] == [0] * len(w.unicast), \
                f"{col}: {describe('checksum', w)}"


def describe(field: str, w: Sent) -> str:
    """What a sender actually did for `field` (for the failure message)."""
    f = field.lower()
    if "df" in f:
        return f"DF {[int(df(x)) for x in w.unicast]}"
    if "ip id" in f:
        return f"IDs {[ip_id(x) for x in w.unicast]}"
    if "ttl" in f:
        return f"TTLs {[x[OIP + 8] for x in w.unicast]}"
    if "checksum" in f:
        return f"checksums {[hex(ucsum(x)) for x in w.unicast]} (valid: " \
            f"{[udp_checksum_ok(x) for x in w.unicast]})"
    if "port" in f:
        return f"ports {[sport(x) for x in w.unicast]} for flows {w.flows}"
    return f"copies to {sorted(map(outer_dst, w.mcast6))} (peers {sorted(w.peers)})"


def test_ovs_recipe_from_the_plan(tmp_path):
    """network-3's OVS configuration, from the plan, against literal values: one vxlan
    port per peer (its underlay address, the plan's VNI and port), the VTEP's MAC and
    address on br-ovl, onlink routes to the peers' subnets via their VTEP addresses, and
    no static neighbour or fdb entry anywhere (ARP must resolve through the tunnel)."""
    p = tmp_path / "plan.toml"
    p.write_text(ovslab.plan_text())
    n = ovslab.ovs_node(planlib.load(p))
    assert [(t.port, t.remote_ip, t.key, t.dst_port) for t in n.tunnels] == [
        ("vx-network-1", "192.168.1.138", 10, 4789), ("vx-network-2", "192.168.2.142", 10, 4789)]
    assert (n.vtep_addr, n.mtu, n.underlay_addr) == ("172.2.2.0", 1450, "192.168.3.33/24")
    assert n.overlay_routes == (("172.2.0.0/24", "172.2.0.0"), ("172.2.1.0/24", "172.2.1.0"))
    vsctl = [" ".join(c) for c in ovspeer.vsctl_commands(n)]
    assert "add-port br-ovl vx-network-1 -- set interface vx-network-1 type=vxlan " \
        "options:remote_ip=192.168.1.138 options:key=10 options:dst_port=4789" in vsctl
    assert sum("datapath_type=netdev" in c for c in vsctl) == 2
    ip = [" ".join(c) for c in ovspeer.ip_commands(n)]
    assert "ip route add 172.2.1.0/24 via 172.2.1.0 dev br-ovl onlink" in ip
    assert "ip address add 172.2.2.0/32 dev br-ovl" in ip
    assert not [c for c in ip if "neigh" in c or "fdb" in c], ip
    # csum=True: OVS computes the outer UDP checksum (its default sends none)
    csum = ovslab.ovs_node(planlib.load(p), csum=True).tunnels[0]
    assert ovspeer.tunnel_options(csum)[-1] == "options:csum=true"
