"""`vtep lab up|demo|down`: the demo passes in every mode (kernel, userspace, mixed)
and leaves nothing behind; a broken underlay (the router's forwarding off) fails it,
naming the checks; a failing step in `up` removes what it made; down is idempotent;
two labs coexist."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vtep import netns
from vtep.errors import LabError, UsageError
from vtep.lab import lab as lablib

pytestmark = pytest.mark.netns


def vtep(*argv, timeout=180):
    return subprocess.run([sys.executable, "-m", "vtep.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)


def ours(prefix):
    return sorted(n for n in netns.list_namespaces() if n.startswith(prefix))


def pids_in(text):
    return [int(p) for p in re.findall(r"pid (\d+)", text)]


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def prefix(netns_prefix, request):
    p = f"{netns_prefix}l{re.sub(r'[^A-Za-z0-9]', '', request.node.name)[-6:]}-"
    p = lablib.check_prefix(p)
    yield p
    vtep("lab", "down", "--prefix", p)  # in case the test failed half way
    netns.sweep(p)


CHECKS = [f"{a}{s} -> {b}{t}"
          for a, b in (("network-1", "network-2"), ("network-2", "network-1"))
          for s, t in (("", " VTEP"), ("", "'s pod"), ("'s pod", "'s pod"),
                       ("'s pod", "'s pod http"))] + ["vxinspect --plan"]


@pytest.mark.parametrize("mode", ["kernel", "userspace", "mixed"])
def test_demo_passes_and_leaves_nothing(prefix, tmp_path, mode):
    cap = tmp_path / "demo.pcap"
    r = vtep("lab", "demo", "--mode", mode, "--prefix", prefix, "--capture", str(cap))
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    # the same checks in every mode, each passed
    assert re.findall(r"^(?:PASS|FAIL)  ([^:]+):", out, re.M) == CHECKS, out
    assert "FAIL" not in out
    paths = {"kernel": ("kernel", "kernel"), "userspace": ("userspace", "userspace"),
             "mixed": ("kernel", "userspace")}[mode]
    for node, path in zip(("network-1", "network-2"), paths):
        assert f"{node}: vtep run --{path} (pid" in out, out
    assert "echo saw client 172.2.0.2 (the pod's own address: no NAT)" in out
    assert "echo saw client 172.2.1.2 (the pod's own address: no NAT)" in out
    m = re.search(r"capture: (\d+) packets, (\d+) VXLAN, VNIs 10 \(\d+\); checks fired: (.*)",
                  out)
    assert m and int(m.group(2)) >= 12, out  # 3 x 3 pings + HTTP, both ways, all VNI 10
    # vxinspect clean: nothing above info; DF clear only where a kernel path sends (its
    # default), never from the userspace path, which sets DF (RFC 7348 section 4.3)
    fired = dict(re.findall(r"(\S+) \[(\w+)\] x\d+", m.group(3)))
    assert set(fired.values()) <= {"info"}, m.group(3)
    assert set(fired) == (set() if mode == "userspace" else {"df-clear"}), m.group(3)
    # each userspace VTEP's counters: traffic both ways, nothing dropped
    for node, path in zip(("network-1", "network-2"), paths):
        line = re.search(rf"^      {node} \(userspace\) counters: (.*)$", out, re.M)
        assert (line is not None) == (path == "userspace"), out
        if line:
            c = re.match(r"tx (\d+) packets \d+ bytes, rx (\d+) packets \d+ bytes, drops (.*)",
                         line.group(1))
            assert int(c.group(1)) >= 12 and int(c.group(2)) >= 12, line.group(1)
            assert c.group(3) == "none", line.group(1)
    assert cap.stat().st_size > 0  # --capture kept it
    assert ours(prefix) == []
    assert not (Path(lablib.LAB_BASE) / f"lab-{prefix}").exists()
    assert all(gone(p) for p in pids_in(out)), "lab processes outlived the demo"


def test_router_forwarding_off_fails_the_demo_by_name(prefix):
    r = vtep("lab", "up", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    assert set(ours(prefix)) == {prefix + n for n in ("router", "network-1", "network-2",
                                                      "network-1-pod1", "network-2-pod1")}
    netns.sh(["sysctl", "-qw", "net.ipv4.ip_forward=0"], ns=prefix + "router")
    r = vtep("lab", "demo", "--prefix", prefix)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^FAIL  network-1 -> network-2 VTEP: ping -c 3 172.2.1.0 .*0 received",
                     r.stdout, re.M), r.stdout
    assert "FAIL  network-1's pod -> network-2's pod http" in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("vtep: demo failed:") and "network-1 -> network-2 VTEP" in last
    # a demo on a lab that was already up leaves it up
    assert len(ours(prefix)) == 5
    r = vtep("lab", "down", "--prefix", prefix)
    assert r.returncode == 0 and "down" in r.stdout
    assert ours(prefix) == []
    assert all(gone(p) for p in pids_in(r.stdout))
    r = vtep("lab", "down", "--prefix", prefix)
    assert r.returncode == 0 and "not up; nothing to do" in r.stdout


def test_failing_step_in_up_leaves_nothing(prefix, monkeypatch):
    started = []
    real_spawn = lablib.Lab.spawn

    def spawn(self, what, ns, argv, logname):
        rec = real_spawn(self, what, ns, argv, logname)
        started.append(rec["pid"])
        return rec

    def broken(lab, ns, rec):
        raise LabError(f"{ns}: echo server not listening (injected)")

    monkeypatch.setattr(lablib.Lab, "spawn", spawn)
    monkeypatch.setattr(lablib, "_wait_listening", broken)
    lab = lablib.Lab(prefix)
    with pytest.raises(LabError, match="injected"):
        lablib.up(lab, say=lambda *a, **k: None)
    assert started, "the failure came after processes were started"
    assert all(gone(p) for p in started)
    assert ours(prefix) == []
    assert not lab.dir.exists()


def test_up_twice_and_foreign_namespaces_are_refused(prefix):
    # a namespace with one of the lab's names that the lab did not make is never touched
    foreign = prefix + "network-2-pod1"
    netns.add(foreign)
    try:
        r = vtep("lab", "up", "--prefix", prefix)
        assert r.returncode == 6 and f"namespaces {foreign} already exist" in r.stderr
        assert ours(prefix) == [foreign]
    finally:
        netns.delete(foreign)
    assert vtep("lab", "up", "--prefix", prefix).returncode == 0
    r = vtep("lab", "up", "--prefix", prefix)
    assert r.returncode == 6 and "is already up" in r.stderr
    assert len(ours(prefix)) == 5
    assert vtep("lab", "down", "--prefix", prefix).returncode == 0
    assert ours(prefix) == []


def test_two_labs_coexist(prefix):
    other = prefix[:-1] + "b-"
    try:
        assert vtep("lab", "up", "--prefix", prefix).returncode == 0
        assert vtep("lab", "up", "--prefix", other).returncode == 0
        r = vtep("lab", "demo", "--prefix", other)  # checks the second, leaves both up
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(ours(prefix)) == 5 and len(ours(other)) == 5
        assert vtep("lab", "down", "--prefix", other).returncode == 0
        assert len(ours(prefix)) == 5  # the first lab untouched
    finally:
        vtep("lab", "down", "--prefix", other)
        netns.sweep(other)


def test_bad_prefix_and_mode(prefix):
    r = vtep("lab", "up", "--prefix", "../x")
    assert r.returncode == 2 and "--prefix '../x'" in r.stderr
    r = vtep("lab", "up", "--mode", "dpdk", "--prefix", prefix)
    assert r.returncode == 2 and "--mode" in r.stderr and "'dpdk'" in r.stderr
    with pytest.raises(UsageError, match="--mode dpdk"):
        lablib.up(lablib.Lab(prefix), "dpdk")
    assert not os.path.exists(f"{lablib.LAB_BASE}/lab-{prefix}")
    assert ours(prefix) == []


def test_mixed_lab_runs_each_path_where_planned(prefix):
    r = vtep("lab", "up", "--mode", "mixed", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    assert "mode mixed: network-1 kernel, network-2 userspace" in r.stdout
    n1, n2 = prefix + "network-1", prefix + "network-2"
    assert "vxlan id 10" in netns.sh(["ip", "-d", "link", "show", "vxlan0"], ns=n1).stdout
    assert "tun type tap" in netns.sh(["ip", "-d", "link", "show", "vxlan0"], ns=n2).stdout
    # a userspace node is present: tx checksum offload off on every underlay veth
    for ns, dev in ((n1, "eth0"), (n2, "eth0"), (prefix + "router", "eth1"),
                    (prefix + "router", "eth2")):
        out = netns.sh(["ethtool", "-k", dev], ns=ns).stdout
        assert "tx-checksumming: off" in out, f"{ns} {dev}:\n{out}"
    # `vtep status` in the userspace node reads its counters from the lab's state dir
    sd = f"{lablib.LAB_BASE}/lab-{prefix}/network-2"
    st = json.loads(netns.sh([sys.executable, "-m", "vtep.cli", "status", "--json",
                              "--state-dir", sd], ns=n2).stdout)
    assert [(d["node"], d["mode"], d["running"]) for d in st] == \
        [("network-2", "userspace", True)]
    assert set(st[0]["counters"]["peers"]) == {"192.168.1.138"}
    # demo on a lab that is up: --mode must be the lab's, or it says so and checks nothing
    r = vtep("lab", "demo", "--mode", "kernel", "--prefix", prefix)
    assert r.returncode == 2 and "is up in mode mixed, not --mode kernel" in r.stderr
    r = vtep("lab", "demo", "--prefix", prefix)   # no --mode: the lab's
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already up (mode mixed: network-1 kernel, network-2 userspace)" in r.stdout
    assert len(ours(prefix)) == 5
    r = vtep("lab", "down", "--prefix", prefix)
    assert r.returncode == 0
    assert ours(prefix) == []
    assert all(gone(p) for p in pids_in(r.stdout))
