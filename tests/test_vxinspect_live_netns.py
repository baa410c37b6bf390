"""`vxinspect -i IFACE` and `tcpdump -w - | vxinspect -` in the seed lab (needs root).

The seed topology with both VTEPs configured by the seed's own iproute2 commands
(seedlab.hand_configured) and a pod on each node (`vtep pod add`); the pods ping each
other, bounded in count and time, across the overlay. On network-1's underlay device
vxinspect captures while tcpdump, started at the same time on the same interface,
writes the reference capture; vxinspect's live counts must be what its file reader finds
in tcpdump's file. Every process runs in a node's or a pod's namespace; all of them are
ended by PID and every namespace with the run's prefix is swept afterwards.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seedlab import hand_configured, one_line

from vxinspect import inspect_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "inspect")])}
NODES = ("network-1", "network-2")


class Lab:
    def __init__(self, topo, pods):
        self.topo, self.pods = topo, pods  # pods: node -> (netns name, ip)

    def enter(self, node: str) -> list[str]:
        return ["nsenter", f"--net={self.topo[node].path}"]

    def ping(self, count: int, interval: float = 0.2):
        ns, _ = self.pods["network-1"]
        _, dst = self.pods["network-2"]
        return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "ping", "-n", "-c",
                               str(count), "-i", str(interval), "-W", "1", dst],
                              capture_output=True, text=True, timeout=count * interval + 15)


@pytest.fixture
def lab(netns_prefix, tmp_path, plan_file):
    prefix = netns_prefix + "vxl-"
    with hand_configured(prefix, plan_file) as t:
        pods = {}
        for node in NODES:
            name = f"{prefix}p{node[-1]}"
            state_dir = tmp_path / "state" / node
            r = subprocess.run(["nsenter", f"--net={t[node].path}", sys.executable, "-m",
                                "vtep.cli", "pod", "add", name, "--config", str(plan_file),
                                "--node", node, "--state-dir", str(state_dir)],
                               capture_output=True, text=True, timeout=60, env=ENV)
            assert r.returncode == 0, r.stderr
            ip = json.loads((state_dir / f"pods-{node}.json").read_text())["pods"][name]["ip"]
            pods[node] = (name, ip)
        yield Lab(t, pods)


def start(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=kw.pop("stdout", subprocess.PIPE),
                            stderr=subprocess.PIPE, env=ENV, **kw)


def wait_line(p: subprocess.Popen, needle: str, limit: float = 20.0) -> str:
    """Read p's stderr until a line holds `needle` (bounded)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stderr], [], [], 0.5)
        if ready:
            line = p.stderr.readline().decode()
            if needle in line:
                return line
            assert line, f"{p.args[:4]} ended: {p.poll()}"
    raise AssertionError(f"{p.args[:4]}: no {needle!r} within {limit} s")


def end(p: subprocess.Popen, sig=signal.SIGINT, limit: float = 15.0) -> int:
    """Signal p (by PID), wait for it; kill it if it does not end."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        return p.wait(limit)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise


def reference(lab: Lab, path: Path) -> subprocess.Popen:
    """tcpdump's own capture of the VXLAN packets on network-1's underlay device."""
    p = start(lab.enter("network-1") + ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(path),
                                         "udp dst port 4789"], stdout=subprocess.DEVNULL)
    wait_line(p, "listening on")
    return p


def vxinspect_live(lab: Lab, *args) -> subprocess.Popen:
    p = start(lab.enter("network-1") + [sys.executable, "-m", "vxinspect", "-i", "eth0",
                                         "--json", *args])
    wait_line(p, "vxinspect: listening on eth0")
    return p


def settle_and_compare(doc: dict, ref_path: Path) -> None:
    ref = inspect_file(ref_path)
    assert ref.error is None and ref.vxlan_packets >= 10  # 5 requests, 5 replies at least
    assert doc["packets"] == ref.packets
    assert doc["vxlan_packets"] == ref.vxlan_packets
    assert doc["vnis"] == {str(k): v for k, v in ref.vnis.items()} == {"10": ref.vxlan_packets}
    assert doc["flows"] == ref.flows


@pytest.mark.netns
def test_live_counts_agree_with_tcpdump_and_sigint_ends_cleanly(lab, tmp_path):
    ref_path = tmp_path / "ref.pcap"
    ref = live = None
    try:
        ref = reference(lab, ref_path)
        live = vxinspect_live(lab, "--interval", "0.3")  # pings 0.2 s apart
        r = lab.ping(5)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(1.0)  # the last reply is on the wire and in both captures
        code = end(live)  # SIGINT mid-capture
        out, err = live.stdout.read().decode(), live.stderr.read().decode()
        assert end(ref) == 0
    finally:
        for p in (live, ref):
            if p is not None and p.poll() is None:
                end(p, signal.SIGKILL)
    assert code == 0 and "Traceback" not in err, err
    docs = [json.loads(x) for x in out.splitlines()]
    assert docs and all("interval" in d for d in docs[:-1]) and len(docs) >= 3
    final = docs[-1]
    assert final["capture"]["tool"] == "tcpdump" and final["capture"]["dropped_by_kernel"] == 0
    assert final["capture"]["received_by_filter"] == final["packets"]
    assert final["ok"] and final["error"] is None
    settle_and_compare(final, ref_path)


@pytest.mark.netns
def test_count_ends_the_capture_exactly(lab):
    live = vxinspect_live(lab, "--count", "4", "--duration", "30")
    try:
        t0 = time.monotonic()
        lab.ping(5)
        assert live.wait(15) == 0
        took = time.monotonic() - t0
        doc = json.loads(live.stdout.read())
    finally:
        if live.poll() is None:
            end(live, signal.SIGKILL)
    assert doc["packets"] == 4 and took < 15


@pytest.mark.netns
def test_duration_ends_the_capture(lab):
    t0 = time.monotonic()
    live = vxinspect_live(lab, "--duration", "1.5")
    try:
        lab.ping(3)
        assert live.wait(15) == 0
        doc = json.loads(live.stdout.read())
    finally:
        if live.poll() is None:
            end(live, signal.SIGKILL)
    assert 1.5 <= time.monotonic() - t0 < 15
    assert doc["vxlan_packets"] >= 6 and "interrupted" not in doc


@pytest.mark.netns
def test_a_pipe_from_tcpdump(lab, tmp_path):
    ref_path = tmp_path / "ref.pcap"
    ref = dump = reader = None
    try:
        ref = reference(lab, ref_path)
        dump = start(lab.enter("network-1") + ["tcpdump", "-i", "eth0", "-n", "-U", "-w", "-",
                                                "udp dst port 4789"])
        reader = start(lab.enter("network-1") + [sys.executable, "-m", "vxinspect", "--json",
                                                  "-"], stdin=dump.stdout)
        dump.stdout.close()  # the reader holds the pipe now
        wait_line(dump, "listening on")
        r = lab.ping(5)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(1.0)
        assert end(dump) == 0  # tcpdump flushes, closes the pipe: vxinspect reads to its end
        assert reader.wait(30) == 0
        doc = json.loads(reader.stdout.read())
        assert reader.stderr.read() == b""
        assert end(ref) == 0
    finally:
        for p in (reader, dump, ref):
            if p is not None and p.poll() is None:
                end(p, signal.SIGKILL)
    assert doc["file"] == "-" and doc["ok"]
    settle_and_compare(doc, ref_path)


@pytest.mark.netns
def test_missing_interface_is_one_line(lab):
    r = subprocess.run(lab.enter("network-1") + [sys.executable, "-m", "vxinspect", "-i",
                                                  "nosuch0"],
                       capture_output=True, text=True, timeout=30, env=ENV)
    assert r.stdout == ""
    one_line(r, 2, "vxinspect: nosuch0: no such interface")
