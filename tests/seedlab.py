"""Helpers shared by the namespace tests that drive the seed topology (vtep.lab.seed;
the seed plan's file is conftest's `plan_file` fixture): the seed's iproute2 commands
typed by hand, a bounded poll that does not hide a broken check, a netlink monitor run
inside a node's namespace, a marker frame that tells when a capture has written
everything before it, a `vtep run` agent in a node's namespace (Vtep) and the small
programs the tests run there (run_py: UDP_SENDER, FRAME_SENDER)."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from vtep import netns, plan as planlib, state
from vtep.errors import LabError
from vtep.lab.seed import NODES as SEED_NODES, SEED, topology as seed_topology
from vtep.lab.topology import end_process


def messages(r):
    """stderr lines that are not plan warnings (the seed overlay is public space)."""
    return [x for x in r.stderr.splitlines() if not x.startswith("vtep: warning:")]


def one_line(r, code, *needles):
    """The run exited `code` with exactly one message line (warnings aside) and no
    traceback, and that line holds every needle; returns it."""
    assert r.returncode == code, f"exit {r.returncode}:\n{r.stderr}"
    msg = messages(r)
    assert len(msg) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in msg[0], msg[0]
    return msg[0]


def hand_configure(node, plan, name):
    """The seed's iproute2 commands for `name`, typed in its namespace (no vtep there)."""
    s = state.desired(plan, name, underlay_dev=SEED.underlay_dev,
                      underlay_mtu=SEED.underlay_mtu)
    for cmd in state.iproute2(s):
        node.cmd(cmd.split())
    return s


@contextmanager
def hand_configured(prefix: str, plan_file):
    """The seed topology with both VTEPs configured by the seed's own iproute2 commands
    and forwarding on; afterwards every namespace with the prefix goes, also those the
    test made itself (pods, containers), not only the topology's."""
    plan = planlib.load(plan_file)
    try:
        with seed_topology(prefix) as t:
            for name in SEED_NODES:
                hand_configure(t[name], plan, name)
                t[name].cmd(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            yield t
    finally:
        netns.sweep(prefix)


# What a system that is not there yet raises: a file not written yet or half written
# (OSError, ValueError from json), a command that fails or times out (LabError from
# Node.cmd, subprocess errors). Anything else is a broken check and propagates at once.
NOT_YET = (OSError, ValueError, LabError, subprocess.SubprocessError)


def wait_for(pred, limit=10.0, step=0.01):
    """Seconds until pred() held (polling), or None after `limit` seconds. An exception
    in NOT_YET counts as "not yet"; any other (a KeyError, a TypeError: the check itself
    is wrong) propagates with its traceback instead of passing for a timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            if pred():
                return time.monotonic() - t0
        except NOT_YET:
            pass
        time.sleep(step)
    return None


# --- a netlink monitor inside a node's namespace -------------------------------------------

# Subscribed to RTMGRP_LINK (0x1), RTMGRP_NEIGH (0x4, which carries bridge fdb
# notifications too) and RTMGRP_IPV4_ROUTE (0x40): every datagram is written with the
# CLOCK_MONOTONIC time it was read. The kernel queues notifications in the order it made
# the changes, so the file holds them in kernel order.
MONITOR = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)   # SO_RCVBUFFORCE: lose nothing in a burst
s.bind((0, 0x1 | 0x4 | 0x40))
out = open(sys.argv[1], "wb", buffering=0)
print("ready", flush=True)
while True:
    data = s.recv(1 << 20)
    out.write(struct.pack("=dI", time.monotonic(), len(data)) + data)
"""
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29


class Event(NamedTuple):
    """One notification, decoded by pyroute2 (not by vtep's own decoder)."""
    t: float            # CLOCK_MONOTONIC when the monitor read it
    type: int           # RTM_NEWNEIGH, RTM_DELNEIGH, RTM_NEWROUTE, RTM_DELROUTE
    family: int
    ifindex: int | None  # a neighbour's ndm_ifindex, a route's RTA_OIF
    what: str | None    # NDA_DST of a neighbour or fdb entry, "dst/len" of a route
    table: int | None = None   # a route's RTA_TABLE
    state: int | None = None   # a neighbour's ndm_state


class Monitor:
    """Kernel notifications of a node's namespace, recorded from start() to stop()."""

    def __init__(self, node, path):
        self.path = Path(path)
        self.proc = node.popen([sys.executable, "-c", MONITOR, str(self.path)],
                               stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"netlink monitor did not start: {line!r}"

    def stop(self):
        if self.proc.poll() is None:
            end_process(self.proc)
        self.proc.stdout.close()

    def events(self) -> list[Event]:
        """The neighbour, fdb and route notifications so far, in kernel order."""
        from pyroute2.netlink.rtnl.ndmsg import ndmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg
        data, off, out = self.path.read_bytes(), 0, []
        while off + 12 <= len(data):
            t, n = struct.unpack_from("=dI", data, off)
            off += 12
            dgram, off = data[off:off + n], off + n
            pos = 0
            while pos + 16 <= len(dgram):
                ln, typ = struct.unpack_from("=IH", dgram, pos)
                msg = dgram[pos:pos + ln]
                pos += (ln + 3) & ~3
                if typ in (RTM_NEWNEIGH, RTM_DELNEIGH):
                    m = ndmsg(msg)
                    m.decode()
                    out.append(Event(t, typ, m["family"], m["ifindex"], m.get_attr("NDA_DST"),
                                     state=m["state"]))
                elif typ in (RTM_NEWROUTE, RTM_DELROUTE):
                    m = rtmsg(msg)
                    m.decode()
                    out.append(Event(t, typ, m["family"], m.get_attr("RTA_OIF"),
                                     f"{m.get_attr('RTA_DST')}/{m['dst_len']}",
                                     table=m.get_attr("RTA_TABLE") or m["table"]))
        return out


# --- knowing that a capture holds everything sent before a point -----------------------------

MARKER_TYPE = 0x88B5   # IEEE 802 "local experimental" EtherType: nothing in a lab speaks it
MARKER_SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
"""
MARKER_FILTER = f"ether proto 0x{MARKER_TYPE:04x}"   # to add to a capture filter with `or`


def _records(data: bytes):
    """(offset, frame) of each complete record of a classic pcap file (either byte order,
    micro- or nanosecond); a record tcpdump is still writing is left out."""
    if len(data) < 24:
        return []
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from(e + "I", data, off + 8)[0]
        if off + 16 + caplen > len(data):
            break
        out.append((off, data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return out


def _is_marker(frame: bytes) -> bool:
    return frame[12:14] == struct.pack("!H", MARKER_TYPE) and frame[14:25] == b"vtep-marker"


def flush_capture(ns: str, iface: str, path, proc: subprocess.Popen,
                  limit: float = 30.0) -> None:
    """Wait until tcpdump (`proc`, capturing `iface` in namespace `ns` into `path`, with
    -U) has written everything the interface carried so far: a marker frame sent out of
    `iface` now reaches tcpdump's socket after every packet before it (the kernel hands
    them over in order), so once the marker is in the file so is the rest. No fixed
    sleep: on a loaded machine tcpdump may be seconds behind. Ends early if tcpdump
    itself ended (its count or time bound): its file is then complete. The caller
    removes the marker with cut_marker() once tcpdump is stopped."""
    tag = os.urandom(4).hex().encode()
    frame = (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", MARKER_TYPE)
             + b"vtep-marker " + tag).ljust(60, b"\0")
    netns.sh([sys.executable, "-c", MARKER_SENDER, iface, frame.hex()], ns=ns)
    deadline = time.monotonic() + limit
    while True:
        if any(f == frame for _, f in _records(Path(path).read_bytes())):
            return
        if proc.poll() is not None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"capture {path} on {ns}:{iface}: the marker frame was not "
                                 f"written within {limit:g}s")
        time.sleep(0.02)


def cut_marker(path) -> None:
    """The capture file without its marker frames (and so as the test's traffic left it:
    record numbers unchanged, since the marker comes last)."""
    data = Path(path).read_bytes()
    recs = _records(data)
    keep = [data[:24]] + [data[off:off + 16 + len(f)] for off, f in recs if not _is_marker(f)]
    Path(path).write_bytes(b"".join(keep))


# --- a vtep agent, and programs, run inside a node's namespace ---------------------------------

VTEP = [sys.executable, "-m", "vtep.cli"]


class Vtep:
    """`vtep run --kernel|--userspace` inside a node's namespace (ended by its PID, or by
    the topology's stop())."""

    def __init__(self, node, mode, plan_file, state_dir, *extra):
        self.node = node
        self.state_dir = state_dir
        self.log = open(state_dir.parent / f"run-{node.name}-{mode}.log", "w+")
        self.status_path = state_dir / f"vxlan0.{node.name}.json"
        self.p = node.popen(VTEP + ["run", f"--{mode}", "--config", str(plan_file), "--node",
                                    node.name, "--state-dir", str(state_dir), *extra],
                            stdout=self.log, stderr=subprocess.STDOUT)
        ok = wait_for(lambda: json.loads(self.status_path.read_text())["pid"] == self.p.pid,
                      10) is not None
        assert ok, f"vtep run --{mode} never converged:\n{self.output()}"

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def status(self):
        """This run's entry in `vtep status --json`, read in the node's namespace."""
        r = self.node.cmd(VTEP + ["status", "--json", "--state-dir", str(self.state_dir)])
        return next(d for d in json.loads(r.stdout) if d["node"] == self.node.name)

    def counters(self):
        return self.status()["counters"]

    def wait_counters(self, pred, limit=15.0):
        """Counters (republished every second) once pred(counters) holds; fails after limit."""
        seen = []

        def check():
            seen[:] = [self.counters()]
            return pred(seen[0])
        assert wait_for(check, limit, 0.2) is not None, f"counters never matched: {seen}\n{self.output()}"
        return seen[0]

    def signal(self, sig):
        os.kill(self.p.pid, sig)   # `ip netns exec` execs vtep: this PID is vtep's

    def stop(self):
        self.signal(signal.SIGTERM)
        return self.p.wait(timeout=10)


# Programs run inside a namespace by run_py. Arguments come as one JSON document.
UDP_SENDER = r"""
import json, socket, sys
a = json.loads(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((a["src"], 0))
for d in a["datagrams"]:
    s.sendto(bytes.fromhex(d), (a["dst"], a["port"]))
"""

FRAME_SENDER = r"""
import json, socket, sys, time
a = json.loads(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
if a.get("vnet"):
    # PACKET_VNET_HDR: each frame starts with a virtio-net header, so a frame may be a
    # GSO super-frame with a partial checksum, as a VM's virtio driver sends them
    s.setsockopt(263, 15, 1)   # SOL_PACKET, PACKET_VNET_HDR
s.bind((a["iface"], 0))
for f in a["frames"]:
    s.send(bytes.fromhex(f))
    time.sleep(0.02)   # one at a time through the node: the capture keeps their order
"""


def run_py(node, program, arg, timeout=30):
    return node.cmd([sys.executable, "-c", program, json.dumps(arg)], timeout=timeout)


# --- a bounded TCP transfer checked by hash -------------------------------------------------

TCP_RECEIVER = r"""
import hashlib, json, socket, sys
a = json.loads(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((a["ip"], a["port"]))
s.listen(1)
s.settimeout(a["limit"])
print("ready", flush=True)
c, peer = s.accept()
c.settimeout(a["limit"])
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "peer": peer[0]}), flush=True)
"""

TCP_SENDER = r"""
import json, random, socket, sys
a = json.loads(sys.argv[1])
data = random.Random(a["seed"]).randbytes(a["bytes"])
c = socket.create_connection((a["ip"], a["port"]), timeout=a["limit"])
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
"""


def transfer(src, dst, dst_ip: str, seed: int, size: int, port: int = 5001,
             limit: float = 30.0) -> None:
    """`size` bytes from `src` to `dst_ip` (in `dst`) over TCP; the receiver's sha256 must
    be that of the bytes generated here (independently of the path), so data lost,
    corrupted or reordered on the way fails it."""
    import hashlib
    import random
    import select
    want = hashlib.sha256(random.Random(seed).randbytes(size)).hexdigest()
    rx = dst.popen([sys.executable, "-c", TCP_RECEIVER, json.dumps(
        {"ip": dst_ip, "port": port, "limit": limit})], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([rx.stdout], [], [], 10)[0], "receiver did not start"
        assert rx.stdout.readline().strip() == "ready"
        run_py(src, TCP_SENDER, {"ip": dst_ip, "port": port, "seed": seed, "bytes": size,
                                 "limit": limit}, timeout=limit + 5)
        out, _ = rx.communicate(timeout=limit)
    finally:
        end_process(rx)
    got = json.loads(out)
    assert got["bytes"] == size and got["sha256"] == want, \
        f"{src.name} -> {dst.name} ({dst_ip}): {got} (want {size} bytes, sha256 {want})"
