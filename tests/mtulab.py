"""The MTU suite's lab helpers: clusters per mode, router captures, a small pcap reader,
vxinspect's verdict, and the programs run inside pods.

Used by tests/test_mtu_suite_netns.py and pcaps/mtu/make_mtu_pcaps.py.

A Cluster is a view of the project's own lab (vtep.lab.lab.build) that the suite asks
things of: Cluster.up(prefix, LabSpec(...), base) builds the seed cluster the spec
describes (`vtep lab up --mode M` is LabSpec(mode=M) under /run/vtep; the cases that need
more name it in the spec: an underlay MTU of 9000, an IPv6 underlay, the router's link
towards network-2 at 1400, `vtep run --mtu N|auto` or `--df set`, a plan with
cluster.mtu). Nodes and pods are namespaces named with the prefix, the VTEPs are
`vtep run` in the nodes, the pods are attached by `vtep pod add`. stop() removes it all
(processes ended by PID, namespaces deleted); callers call it in `finally`.

Network safety (DEVELOPERS.md): everything happens inside namespaces carrying the prefix;
traffic goes only to addresses inside them; every capture, transfer and ping is bounded in
count and time.
"""
from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seedlab import cut_marker, flush_capture
from vtep import netns, plan as planlib
from vtep.lab import lab as lablib, seed
from vtep.lab.demo import tcpdump
from vtep.lab.lab import LabSpec
from vtep.lab.topology import end_process

VTEP = [sys.executable, "-m", "vtep.cli"]
NODES = seed.NODES                         # ("network-1", "network-2")
UNDERLAY = seed.underlay_ips("ipv4")       # node -> its underlay IPv4 address

# Every case runs on four paths: (lab mode, sender node, receiver node). The mixed lab has
# the kernel path on network-1 and the userspace path on network-2, so its two directions
# are the two mixed paths.
PATHS = {
    "kernel": ("kernel", "network-1", "network-2"),
    "kernel-to-userspace": ("mixed", "network-1", "network-2"),
    "userspace-to-kernel": ("mixed", "network-2", "network-1"),
    "userspace": ("userspace", "network-1", "network-2"),
}
MODES = ("kernel", "mixed", "userspace")


def paths_of(mode: str) -> list[str]:
    return [p for p, (m, _, _) in PATHS.items() if m == mode]


def sh(ns: str, argv: list[str], *, check=True, timeout: float = 30, input=None):
    return netns.sh(argv, ns=ns, check=check, timeout=timeout, input=input)


class Cluster:
    """The seed cluster: two nodes with a pod each, joined by a router; one `vtep run` per
    node in the data path that the spec's mode gives it (lablib.node_mode)."""

    def __init__(self, lab: lablib.Lab, spec: LabSpec):
        self.lab, self.spec = lab, spec
        self.prefix, self.mode = lab.prefix, spec.mode
        self.plan_path = lab.plan_path
        self.plan = planlib.load(lab.plan_path)
        self.underlay = seed.underlay_ips(spec.underlay)          # node -> underlay IP
        self.pods = {n: (lab.pods[n]["ns"], lab.pods[n]["ip"]) for n in NODES}
        self.state_dirs = {n: lab.dir / n for n in NODES}
        self.args: dict[str, list[str]] = {}                       # node -> extra run args
        self.df: dict[str, str] = {}                               # node -> "set" | "unset"
        for n in NODES:
            self._ran(n, spec.run_args.get(n, ()))

    @classmethod
    def up(cls, prefix: str, spec: LabSpec, base=lablib.LAB_BASE) -> "Cluster":
        """Build the lab `spec` describes (a failing step removes what it made)."""
        lab = lablib.build(lablib.Lab(prefix, base), spec, say=lablib.silent)
        return cls(lab, spec)

    # -- naming ------------------------------------------------------------------------------
    def ns(self, node: str) -> str:
        return self.prefix + node

    @property
    def router(self) -> str:
        return self.prefix + seed.SEED.router

    def pod_ns(self, node: str) -> str:
        return self.pods[node][0]

    def pod_ip(self, node: str) -> str:
        return self.pods[node][1]

    def pod_ip6(self, node: str) -> str:
        """The pod's global IPv6 address (a dual-stack plan), as iproute2 reports it."""
        r = sh(self.pod_ns(node), ["ip", "-j", "-6", "address", "show", "dev", "eth0",
                                   "scope", "global"])
        (addr,) = [a["local"] for i in json.loads(r.stdout) for a in i["addr_info"]
                   if "local" in a]   # ip -j lists the filtered-out ones as {}
        return addr

    def path_of(self, node: str) -> str:
        return lablib.node_mode(self.mode, node)

    def sender_df(self) -> dict[str, str]:
        """Outer source IP -> DF policy of that node's data path."""
        return {self.underlay[n]: self.df[n] for n in NODES}

    # -- one node's VTEP ---------------------------------------------------------------------
    def _ran(self, node: str, extra) -> None:
        """Note the arguments `vtep run` got on `node`, and the outer DF its path sets:
        the userspace path always, the kernel path with `--df set` only."""
        extra = list(extra)
        self.args[node] = extra
        forced = "--df" in extra and extra[extra.index("--df") + 1] == "set"
        self.df[node] = "set" if self.path_of(node) == "userspace" or forced else "unset"

    def restart_vtep(self, node: str, *extra: str) -> None:
        """SIGTERM the node's `vtep run` (by its PID; it removes its device), start it again
        with `extra`, until converged."""
        lablib.stop_agent(self.lab, node)
        lablib.start_agent(self.lab, node, args=extra)
        self._ran(node, extra)
        lablib.wait_converged(self.lab, self.plan, node)

    def log_of(self, node: str) -> str:
        return Path(self.lab.process(f"vtep run {node}")["log"]).read_text(errors="replace")

    # -- observing ---------------------------------------------------------------------------
    def status(self, node: str) -> dict:
        r = sh(self.ns(node), VTEP + ["status", "--json", "--state-dir",
                                      str(self.state_dirs[node])])
        return next(d for d in json.loads(r.stdout) if d["node"] == node)

    def counters(self, node: str) -> dict:
        return self.status(node)["counters"]

    def wait_counters(self, node: str, pred, limit: float = 15.0) -> dict:
        """The counters (republished every second) once pred(counters) holds."""
        deadline = time.monotonic() + limit
        while True:
            c = self.counters(node)
            if pred(c):
                return c
            if time.monotonic() > deadline:
                raise AssertionError(f"{node}: counters never matched: {c}")
            time.sleep(0.2)

    def device_mtu(self, ns: str, dev: str) -> int:
        return json.loads(sh(ns, ["ip", "-j", "link", "show", dev]).stdout)[0]["mtu"]

    def flush_pmtu(self) -> None:
        """Forget learnt path MTUs (route exceptions) and TCP metrics everywhere: each
        sub-case starts from what the configuration alone gives."""
        for n in NODES:
            for ns in (self.ns(n), self.pod_ns(n)):
                sh(ns, ["ip", "route", "flush", "cache"], check=False)
                # IPv6's learnt path MTUs are route exceptions of their own
                sh(ns, ["ip", "-6", "route", "flush", "cache"], check=False)
                sh(ns, ["ip", "tcp_metrics", "flush", "all"], check=False)
        sh(self.router, ["ip", "route", "flush", "cache"], check=False)

    def stop(self) -> None:
        if self.lab is not None:
            lab, self.lab = self.lab, None
            lablib.teardown(lab)


# --- captures on the router -------------------------------------------------------------------

CAPTURE_SECONDS = 120    # every capture is bounded in time as well as in packets


class Capture:
    """tcpdump on one of the router's interfaces (default eth1, network-1's side) while the
    `with` block runs; ended by its PID afterwards. `packets()` decodes the file."""

    def __init__(self, c: Cluster, path, *, iface: str = "eth1", snaplen: int | None = None,
                 count: int = 20000):
        self.c, self.path, self.iface = c, Path(path), iface
        self.snaplen, self.count = snaplen, count
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Capture":
        self.proc = tcpdump(self.c.router, self.iface, self.path, count=self.count,
                            seconds=CAPTURE_SECONDS, snaplen=self.snaplen)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:   # everything the block sent is in the file before it ends
                flush_capture(self.c.router, self.iface, self.path, self.proc)
        finally:
            end_process(self.proc)
            if self.proc.stderr:
                self.proc.stderr.close()
        cut_marker(self.path)

    def packets(self) -> list["Pkt"]:
        return read_pcap(self.path)


@dataclass
class Inner:
    """The inner IPv4 or IPv6 packet of a VXLAN frame, as far as the suite needs it. IPv6
    (v6): length is 40 + the payload length, proto the first next header (the lab's
    packets carry no extension headers), df/mf/offset False/False/0 (no such fields)."""
    src: str
    dst: str
    length: int
    proto: int
    df: bool
    mf: bool
    offset: int
    icmp_type: int | None = None
    tcp_flags: int | None = None
    mss: int | None = None
    v6: bool = False


@dataclass
class Pkt:
    """One captured outer IP packet (`no`: its 1-based record number)."""
    no: int
    src: str
    dst: str
    length: int
    df: bool
    mf: bool
    offset: int
    proto: int
    v6: bool = False
    vxlan: bool = False
    inner: Inner | None = None
    icmp: tuple[int, int, int] | None = None   # (type, code, next-hop MTU)

    @property
    def fragment(self) -> bool:
        return self.mf or self.offset > 0


def _ip(b: bytes) -> str:
    return ".".join(map(str, b))


def _inner(frame: bytes, q: int) -> Inner | None:
    if len(frame) >= q + 14 + 40 and frame[q + 12:q + 14] == b"\x86\xdd":
        p = q + 14
        plen, proto = struct.unpack_from("!HB", frame, p + 4)
        i = Inner(str(ipaddress.IPv6Address(frame[p + 8:p + 24])),
                  str(ipaddress.IPv6Address(frame[p + 24:p + 40])), 40 + plen, proto,
                  False, False, 0, v6=True)
        l4 = p + 40
    elif len(frame) >= q + 14 + 20 and frame[q + 12:q + 14] == b"\x08\x00":
        p = q + 14
        vihl, _, tlen, _, frag, _, proto = struct.unpack_from("!BBHHHBB", frame, p)
        ihl = (vihl & 15) * 4
        i = Inner(_ip(frame[p + 12:p + 16]), _ip(frame[p + 16:p + 20]), tlen, proto,
                  bool(frag & 0x4000), bool(frag & 0x2000), (frag & 0x1FFF) * 8)
        l4 = p + ihl
        if i.offset:
            return i
    else:
        return None
    if proto in (1, 58) and len(frame) > l4:   # ICMP, ICMPv6
        i.icmp_type = frame[l4]
    elif proto == 6 and len(frame) >= l4 + 20:
        i.tcp_flags = frame[l4 + 13]
        end = min(l4 + (frame[l4 + 12] >> 4) * 4, len(frame))
        o = l4 + 20
        while o < end:           # TCP options: find MSS (kind 2, length 4)
            kind = frame[o]
            if kind == 0:
                break
            if kind == 1:
                o += 1
                continue
            if o + 1 >= end or frame[o + 1] < 2:
                break
            if kind == 2 and o + 4 <= end:
                i.mss = struct.unpack_from("!H", frame, o + 2)[0]
            o += frame[o + 1]
    return i


def records(path) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A classic pcap file (either byte order) with Ethernet frames: its 24-byte header and
    its records as (16-byte record header, captured bytes)."""
    data = Path(path).read_bytes()
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(e + "I", data, 20)[0]
    assert linktype == 1, f"{path}: linktype {linktype}, expected Ethernet"
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from(e + "I", data, off + 8)[0]
        out.append((data[off:off + 16], data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return data[:24], out


def write_records(path, header: bytes, recs) -> None:
    Path(path).write_bytes(header + b"".join(h + f for h, f in recs))


def read_pcap(path) -> list[Pkt]:
    """The IPv4 packets of a capture, decoded as far as the suite needs (others skipped;
    Pkt.no stays the 1-based record number, as vxinspect and tshark count)."""
    _, recs = records(path)
    out, first_frags = [], set()
    for no, (_, frame) in enumerate(recs, 1):
        if len(frame) >= 62 and frame[12:14] == b"\x86\xdd":
            # IPv6 without extension headers: what the lab's VTEPs send
            plen, nh = struct.unpack_from("!HB", frame, 18)
            p = Pkt(no, str(ipaddress.IPv6Address(frame[22:38])),
                    str(ipaddress.IPv6Address(frame[38:54])), 40 + plen, True, False, 0, nh,
                    v6=True)
            if nh == 17 and struct.unpack_from("!H", frame, 56)[0] == 4789:
                p.vxlan = True
                p.inner = _inner(frame, 70)
            out.append(p)
            continue
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        vihl, _, tlen, ident, frag, _, proto = struct.unpack_from("!BBHHHBB", frame, 14)
        ihl = (vihl & 15) * 4
        src, dst = _ip(frame[26:30]), _ip(frame[30:34])
        p = Pkt(no, src, dst, tlen, bool(frag & 0x4000), bool(frag & 0x2000),
                (frag & 0x1FFF) * 8, proto)
        l4 = 14 + ihl
        if p.offset:
            p.vxlan = (src, dst, ident) in first_frags
        elif proto == 17 and len(frame) >= l4 + 8 and \
                struct.unpack_from("!H", frame, l4 + 2)[0] == 4789:
            p.vxlan = True
            if p.mf:
                first_frags.add((src, dst, ident))
            p.inner = _inner(frame, l4 + 16)
        elif proto == 1 and len(frame) >= l4 + 8:
            t, code, _, _, mtu = struct.unpack_from("!BBHHH", frame, l4)
            p.icmp = (t, code, mtu)
        out.append(p)
    return out


def vxlan_packets(pkts: list[Pkt]) -> list[Pkt]:
    return [p for p in pkts if p.vxlan]


def frag_needed(pkts: list[Pkt]) -> list[Pkt]:
    """ICMP destination unreachable, fragmentation needed (type 3 code 4)."""
    return [p for p in pkts if p.icmp and p.icmp[:2] == (3, 4)]


# --- vxinspect's verdict ----------------------------------------------------------------------

@dataclass
class Verdict:
    exit: int
    fired: dict[str, int]
    doc: dict = field(repr=False)
    argv: list[str] = field(repr=False, default_factory=list)


def vxinspect(capture, plan, *options: str) -> Verdict:
    """`vxinspect --json --plan PLAN [options] CAPTURE`: exit code and fired checks."""
    argv = [sys.executable, "-m", "vxinspect", "--json", "--plan", str(plan), *options,
            str(capture)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["error"] is None, doc["error"]
    fired = {cid: c["count"] for cid, c in doc["checks"].items() if c["count"]}
    return Verdict(r.returncode, fired, doc, argv)


def df_clear_expected(pkts: list[Pkt], sender_df: dict[str, str]) -> int:
    """How many VXLAN packets must fire df-clear, per sender: every packet of a sender whose
    DF policy is "unset" (the kernel path's default) has DF clear, every packet of a sender
    that sets DF (the userspace path, the kernel path with --df set) has it set. Asserts
    that this holds packet by packet and returns the count."""
    n = 0
    for p in vxlan_packets(pkts):
        if p.v6:
            continue    # IPv6 has no DF bit: df-clear is about IPv4 outers only
        policy = sender_df[p.src]
        if p.fragment:      # a fragment of an outer packet has DF clear by definition
            assert not p.df and policy == "unset", (p, policy)
        else:
            assert p.df == (policy == "set"), f"packet {p.no} from {p.src} ({policy}): {p}"
        n += not p.df
    return n


# --- programs run inside the pods (arguments as one JSON document) ---------------------------

def py(ns: str, program: str, arg: dict, *, timeout: float = 60):
    return sh(ns, [sys.executable, "-c", program, json.dumps(arg)], timeout=timeout, check=False)


def py_popen(ns: str, program: str, arg: dict) -> subprocess.Popen:
    return netns.popen([sys.executable, "-c", program, json.dumps(arg)], ns=ns,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)


# A TCP sink: accepts one connection, reads to EOF, answers its byte count and sha256.
TCP_SINK = r"""
import hashlib, json, socket, sys, time
a = json.loads(sys.argv[1])
deadline = time.monotonic() + a["limit"]
s = socket.socket(socket.AF_INET6 if a.get("v6") else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if a.get("v6") else "0.0.0.0", a["port"]))
s.listen(1)
print("listening", flush=True)
s.settimeout(a["limit"])
c, peer = s.accept()
h, n = hashlib.sha256(), 0
while True:
    c.settimeout(max(0.01, deadline - time.monotonic()))
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
c.sendall(json.dumps({"bytes": n, "sha256": h.hexdigest(), "client": peer[0]}).encode())
c.close()
"""

# The TCP source: `size` deterministic pseudo-random bytes, the sink's answer or why not,
# all within `limit` seconds.
TCP_SOURCE = r"""
import hashlib, json, random, socket, struct, sys, time
a = json.loads(sys.argv[1])
data = random.Random(4789).randbytes(a["size"])
out = {"sent_sha256": hashlib.sha256(data).hexdigest()}
t0 = time.monotonic()
deadline = t0 + a["limit"]
c = None
try:
    c = socket.create_connection((a["dst"], a["port"]), timeout=a["limit"])
    c.settimeout(max(0.01, deadline - time.monotonic()))
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    c.settimeout(max(0.01, deadline - time.monotonic()))
    out.update(json.loads(c.recv(4096)))
except (OSError, ValueError) as e:
    out["error"] = type(e).__name__ + ": " + str(e)
    if c is not None:
        # abort (RST), so that the kernel does not go on retransmitting the unsent rest
        # into the next test's capture
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
if c is not None:
    c.close()
out["seconds"] = round(time.monotonic() - t0, 3)
print(json.dumps(out))
"""


@dataclass
class Transfer:
    ok: bool
    seconds: float
    result: dict


def tcp_transfer(cluster: Cluster, src: str, dst: str, size: int, limit: float,
                 port: int = 9000, v6: bool = False) -> Transfer:
    """`size` bytes pod(src) -> pod(dst) over TCP, checked end to end (sha256), bounded by
    `limit` seconds. ok: the receiver got every byte and its sha256 is the sender's.
    v6: between the pods' IPv6 addresses (a dual-stack plan)."""
    addr = cluster.pod_ip6 if v6 else cluster.pod_ip
    dst_ip, src_ip = addr(dst), addr(src)
    sink = py_popen(cluster.pod_ns(dst), TCP_SINK, {"port": port, "limit": limit + 2,
                                                    "v6": v6})
    try:
        assert sink.stdout.readline().strip() == "listening", sink.stderr.read()
        r = py(cluster.pod_ns(src), TCP_SOURCE, {"dst": dst_ip, "port": port,
                                                 "size": size, "limit": limit},
               timeout=limit + 15)
        res = json.loads(r.stdout)
    finally:
        end_process(sink)
        sink.stdout.close()
        sink.stderr.close()
    ok = (res.get("bytes") == size and res.get("sha256") == res["sent_sha256"]
          and res.get("client") == src_ip)
    return Transfer(ok, res["seconds"], res)


# UDP with DF (IP_PMTUDISC_DO): send one datagram per size; "sent" or the errno name.
UDP_DF_SENDER = r"""
import errno, json, socket, sys
a = json.loads(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)   # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.connect((a["dst"], a["port"]))
out = {"mtu": s.getsockopt(socket.IPPROTO_IP, 14), "sent": {}}   # IP_MTU
for n in a["sizes"]:
    try:
        s.send(bytes(n))
        out["sent"][n] = "sent"
    except OSError as e:
        out["sent"][n] = errno.errorcode[e.errno]
print(json.dumps(out))
"""

# UDP receiver: the payload sizes of the datagrams that arrive within `limit` seconds.
UDP_RECEIVER = r"""
import json, socket, sys, time
a = json.loads(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", a["port"]))
print("listening", flush=True)
deadline = time.monotonic() + a["limit"]
got = []
while len(got) < a["want"] and time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        got.append(len(s.recv(65535)))
    except socket.timeout:
        break
print(json.dumps(got), flush=True)
"""


def ping(ns: str, dst: str, *opts: str, count: int = 3, timeout: float = 20):
    """ping -n -c COUNT -i 0.2 -W 1 [opts] DST; (exit code, stdout + stderr)."""
    r = sh(ns, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", *opts, dst],
           check=False, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def received(out: str) -> int:
    for line in out.splitlines():
        if "packets transmitted" in line:
            return int(line.split(",")[1].split()[0])
    return -1
