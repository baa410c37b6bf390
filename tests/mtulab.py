"""The MTU suite's lab helpers: clusters per mode, router captures, a small pcap reader,
vxinspect's verdict, and the programs run inside pods.

Used by tests/test_mtu_suite_netns.py and pcaps/mtu/make_mtu_pcaps.py.

Two ways to get the seed cluster, with the same interface (Cluster):
- Cluster.lab(prefix, mode): the project's own lab (`vtep lab up --mode M` through
  vtep.lab.lab.up): topology, plan, `vtep run` per node, a pod on each node.
- Cluster.custom(prefix, mode, ...): the same cluster built here because a case needs what
  the lab does not offer: an underlay MTU of 9000, an IPv6 underlay, the router's link
  towards network-2 at 1400, `vtep run --mtu N|auto` or `--df set`, a plan with
  cluster.mtu. The nodes and pods
  are namespaces of a vtep.lab.topology.Topology (all named with the prefix), the VTEPs are
  `vtep run` in the nodes and the pods are attached by `vtep pod add`, as the lab does.
Either is removed by stop() (processes ended by PID, namespaces deleted); callers call it
in `finally`.

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
from vtep import netns
from vtep.lab import lab as lablib
from vtep.lab.topology import SEED_UNDERLAY6, Topology, end_process, seed

VTEP = [sys.executable, "-m", "vtep.cli"]
NODES = lablib.NODES                       # ("network-1", "network-2")
UNDERLAY = {"network-1": "192.168.1.138", "network-2": "192.168.2.142"}
ROUTER_IF = {"network-1": "eth1", "network-2": "eth2"}   # the router's side towards each node
# the seed's IPv6 twin, as the lab builds it (topology.seed(underlay="ipv6"))
UNDERLAY6 = {n: a.split("/")[0] for n, (a, _, _) in SEED_UNDERLAY6.items()}
SEED_PLAN6 = lablib.SEED_PLAN6

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
CONVERGE_TIMEOUT = 20.0


def paths_of(mode: str) -> list[str]:
    return [p for p, (m, _, _) in PATHS.items() if m == mode]


def sh(ns: str, argv: list[str], *, check=True, timeout: float = 30, input=None):
    return netns.sh(argv, ns=ns, check=check, timeout=timeout, input=input)


def seed6(prefix: str, *, mtu: int | None = None) -> Topology:
    """The seed topology with an IPv6 underlay: the lab's own (addressed, routed and
    forwarding once started; tx checksum offload off, as in seed())."""
    return seed(prefix, mtu=mtu, underlay="ipv6")


class Cluster:
    """The seed cluster: two nodes with a pod each, joined by a router; one `vtep run` per
    node in the data path that `mode` gives it (lablib.node_mode)."""

    def __init__(self, prefix: str, mode: str):
        self.prefix = prefix
        self.mode = mode
        self.plan_path: Path | None = None
        self.pods: dict[str, tuple[str, str]] = {}     # node -> (pod namespace, pod address)
        self.df: dict[str, str] = {}                   # node -> outer DF: "set" | "unset"
        self.state_dirs: dict[str, Path] = {}
        self.underlay = dict(UNDERLAY)                 # node -> underlay IP
        self._stop = None

    # -- naming ------------------------------------------------------------------------------
    def ns(self, node: str) -> str:
        return self.prefix + node

    @property
    def router(self) -> str:
        return self.prefix + "router"

    def pod_ns(self, node: str) -> str:
        return self.pods[node][0]

    def pod_ip(self, node: str) -> str:
        return self.pods[node][1]

    def path_of(self, node: str) -> str:
        return lablib.node_mode(self.mode, node)

    def sender_df(self) -> dict[str, str]:
        """Outer source IP -> DF policy of that node's data path."""
        return {self.underlay[n]: self.df[n] for n in NODES}

    # -- the project's lab -------------------------------------------------------------------
    @classmethod
    def lab(cls, prefix: str, mode: str) -> "Cluster":
        c = cls(prefix, mode)
        lab = lablib.Lab(prefix)
        c._stop = lambda: lablib.teardown(lab)
        lablib.up(lab, mode, say=lambda *a, **k: None)
        c.plan_path = lab.plan_path
        for n in NODES:
            c.pods[n] = (lab.pods[n]["ns"], lab.pods[n]["ip"])
            c.state_dirs[n] = lab.dir / n
            c.df[n] = "unset" if c.path_of(n) == "kernel" else "set"
        return c

    # -- built here, with what the lab does not offer ----------------------------------------
    @classmethod
    def custom(cls, prefix: str, mode: str, workdir: Path, *, underlay_mtu: int | None = None,
               narrow: int | None = None, plan_text: str | None = None,
               run_args: dict[str, list[str]] | None = None,
               ipv6: bool = False) -> "Cluster":
        """narrow: the MTU of the router's link towards network-2 (both ends of it).
        run_args: extra `vtep run` arguments per node (e.g. ["--mtu", "1500"]).
        ipv6: an IPv6 underlay (UNDERLAY6, routed by the router); the overlay stays IPv4."""
        c = cls(prefix, mode)
        workdir.mkdir(parents=True, exist_ok=True)
        c.plan_path = workdir / "plan.toml"
        c.plan_path.write_text(plan_text or (SEED_PLAN6 if ipv6 else lablib.SEED_PLAN))
        if ipv6:
            c.underlay = dict(UNDERLAY6)
        t = seed6(prefix, mtu=underlay_mtu) if ipv6 else seed(prefix, mtu=underlay_mtu)
        for n in NODES:
            t.add_node(f"{n}-pod1")
        c.topo, c.procs, c.logs, c.args = t, {}, {}, {}
        c._stop = t.stop
        try:
            t.start()
            for n in NODES:
                c.state_dirs[n] = workdir / n
                c.state_dirs[n].mkdir(exist_ok=True)
                c.add_pod(n)
            # the pods first: they keep the MTU the plan gave them on the underlay as it
            # was, as the pods of a running cluster do when its underlay narrows
            if narrow:
                sh(c.router, ["ip", "link", "set", ROUTER_IF["network-2"], "mtu", str(narrow)])
                sh(c.ns("network-2"), ["ip", "link", "set", "eth0", "mtu", str(narrow)])
            for n in NODES:
                c.start_vtep(n, *(run_args or {}).get(n, []))
        except BaseException:
            c.stop()
            raise
        return c

    def start_vtep(self, node: str, *extra: str) -> None:
        """`vtep run --kernel|--userspace` in the node's namespace, until converged."""
        path = self.path_of(node)
        self.df[node] = ("set" if path == "userspace" or
                         (extra and "--df" in extra and extra[extra.index("--df") + 1] == "set")
                         else "unset")
        self.args[node] = list(extra)
        log = self.logs.get(node) or open(self.state_dirs[node].parent / f"run-{node}.log",
                                          "a+")
        self.logs[node] = log
        argv = VTEP + ["run", f"--{path}", "--config", str(self.plan_path), "--node", node,
                       "--state-dir", str(self.state_dirs[node]), *extra]
        p = self.topo[node].popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT)
        self.procs[node] = p
        status = self.state_dirs[node] / f"vxlan0.{node}.json"
        peer = next(n for n in NODES if n != node)
        subnet = {"network-1": "172.2.0.0/24", "network-2": "172.2.1.0/24"}[peer]
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while True:
            if p.poll() is not None:
                raise AssertionError(f"{node}: vtep run --{path} exited {p.returncode}:\n"
                                     + self.log_of(node))
            try:
                ok = json.loads(status.read_text())["pid"] == p.pid
            except (OSError, ValueError, KeyError):
                ok = False
            if ok and subnet in sh(self.ns(node), ["ip", "-4", "route", "show", "dev",
                                                   "vxlan0"], check=False).stdout:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{node}: vtep run --{path} did not converge in "
                                     f"{CONVERGE_TIMEOUT:g}s:\n" + self.log_of(node))
            time.sleep(0.1)

    def stop_vtep(self, node: str) -> int:
        """SIGTERM (the run removes its device), by the PID we started."""
        p = self.procs.pop(node)
        end_process(p, grace=10)
        self.topo.processes.remove(p)
        return p.returncode

    def restart_vtep(self, node: str, *extra: str) -> None:
        self.stop_vtep(node)
        self.start_vtep(node, *extra)

    def log_of(self, node: str) -> str:
        f = self.logs[node]
        f.flush()
        return Path(f.name).read_text(errors="replace")

    def add_pod(self, node: str) -> None:
        """`vtep pod add` joins the pod namespace (made by the topology) to the node's bridge
        (it makes the bridge); the pod's MTU is the plan's overlay MTU on the underlay as it
        is now. nsenter, not `ip netns exec`, as lab.py explains."""
        pod = self.topo[f"{node}-pod1"].ns
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns(node)}", *VTEP, "pod", "add",
                            pod, "--config", str(self.plan_path), "--node", node,
                            "--state-dir", str(self.state_dirs[node])],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"vtep pod add {pod}: {r.stderr}"
        store = json.loads((self.state_dirs[node] / f"pods-{node}.json").read_text())
        self.pods[node] = (pod, store["pods"][pod]["ip"])

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
                sh(ns, ["ip", "tcp_metrics", "flush", "all"], check=False)
        sh(self.router, ["ip", "route", "flush", "cache"], check=False)

    def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()
        for f in getattr(self, "logs", {}).values():
            f.close()


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
        from vtep.lab.demo import tcpdump
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
    """The inner IPv4 packet of a VXLAN frame, as far as the suite needs it."""
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
    if len(frame) < q + 14 + 20 or frame[q + 12:q + 14] != b"\x08\x00":
        return None
    p = q + 14
    vihl, _, tlen, _, frag, _, proto = struct.unpack_from("!BBHHHBB", frame, p)
    ihl = (vihl & 15) * 4
    i = Inner(_ip(frame[p + 12:p + 16]), _ip(frame[p + 16:p + 20]), tlen, proto,
              bool(frag & 0x4000), bool(frag & 0x2000), (frag & 0x1FFF) * 8)
    l4 = p + ihl
    if i.offset:
        return i
    if proto == 1 and len(frame) > l4:
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
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", a["port"]))
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
                 port: int = 9000) -> Transfer:
    """`size` bytes pod(src) -> pod(dst) over TCP, checked end to end (sha256), bounded by
    `limit` seconds. ok: the receiver got every byte and its sha256 is the sender's."""
    sink = py_popen(cluster.pod_ns(dst), TCP_SINK, {"port": port, "limit": limit + 2})
    try:
        assert sink.stdout.readline().strip() == "listening", sink.stderr.read()
        r = py(cluster.pod_ns(src), TCP_SOURCE, {"dst": cluster.pod_ip(dst), "port": port,
                                                 "size": size, "limit": limit},
               timeout=limit + 15)
        res = json.loads(r.stdout)
    finally:
        end_process(sink)
        sink.stdout.close()
        sink.stderr.close()
    ok = (res.get("bytes") == size and res.get("sha256") == res["sent_sha256"]
          and res.get("client") == cluster.pod_ip(src))
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
