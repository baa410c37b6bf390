"""`vtep lab up|demo|down`: the demo passes in every mode (kernel, userspace, mixed)
and leaves nothing behind; a broken underlay (the router's forwarding off) fails it,
naming the checks; a failing step in `up` removes what it made; down is idempotent;
two labs coexist."""
import ipaddress
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
from seedlab import wait_for

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
            c = re.match(r"tx (\d+) packets \d+ bytes in \d+ TAP frames, rx (\d+) packets "
                         r"\d+ bytes in \d+ TAP frames, drops ([^;]*); offloads on: TAP",
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
    # (a peer is listed once it saw traffic: the TAP sends none of its own, no IPv6)
    ping = netns.sh(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "172.2.0.0"], ns=n2)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    sd = f"{lablib.LAB_BASE}/lab-{prefix}/network-2"

    def status():
        return json.loads(netns.sh([sys.executable, "-m", "vtep.cli", "status", "--json",
                                    "--state-dir", sd], ns=n2).stdout)
    st = status()
    assert [(d["node"], d["mode"], d["running"]) for d in st] == \
        [("network-2", "userspace", True)]
    # the counters are republished every second
    assert wait_for(lambda: set(status()[0]["counters"]["peers"]) == {"192.168.1.138"}) is not None
    # demo on a lab that is up: --mode must be the lab's, or it says so and checks nothing
    r = vtep("lab", "demo", "--mode", "kernel", "--prefix", prefix)
    assert r.returncode == 2 and "is up in mode mixed, not --mode kernel" in r.stderr
    # --dual-stack on a lab that is up with an IPv4 overlay only: refused, nothing checked
    r = vtep("lab", "demo", "--dual-stack", "--prefix", prefix)
    assert r.returncode == 2 and "is up with an IPv4 overlay only, not --dual-stack" in r.stderr
    assert "PASS" not in r.stdout and "FAIL" not in r.stdout
    r = vtep("lab", "demo", "--prefix", prefix)   # no --mode: the lab's
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already up (mode mixed: network-1 kernel, network-2 userspace)" in r.stdout
    assert len(ours(prefix)) == 5
    r = vtep("lab", "down", "--prefix", prefix)
    assert r.returncode == 0
    assert ours(prefix) == []
    assert all(gone(p) for p in pids_in(r.stdout))


def test_status_in_the_root_namespace_shows_the_lab_agents(prefix):
    """`vtep status` with its default --state-dir, in the root namespace (this test's),
    lists the agents `vtep lab up` started in the lab nodes' namespaces, as running, with
    the namespace each runs in (as `ip netns identify PID` names it)."""
    try:
        r = vtep("lab", "up", "--prefix", prefix)
        assert r.returncode == 0, r.stderr
        state = json.loads((Path(lablib.LAB_BASE) / f"lab-{prefix}" / "state.json").read_text())
        pids = {p["what"].split()[-1]: p["pid"] for p in state["processes"]
                if p["what"].startswith("vtep run ")}
        assert set(pids) == set(lablib.NODES)
        r = vtep("status")
        assert r.returncode == 0, r.stderr
        for node, pid in pids.items():
            ns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                                text=True).stdout.strip()
            assert ns == prefix + node
            assert re.search(rf"^vxlan0: node {node} \(lab {re.escape(prefix)}, netns "
                             rf"{re.escape(ns)}\), kernel path, pid {pid} running;", r.stdout,
                             re.M), r.stdout
        docs = [d for d in json.loads(vtep("status", "--json").stdout) if d["lab"] == prefix]
        assert sorted((d["node"], d["pid"], d["running"], d["here"], d["netns_name"])
                      for d in docs) == \
            sorted((n, pids[n], True, False, prefix + n) for n in lablib.NODES)
    finally:
        assert vtep("lab", "down", "--prefix", prefix).returncode == 0
    assert f"lab {prefix}" not in vtep("status").stdout


# --- the seed's IPv6 twin: `vtep lab up|demo --underlay ipv6` ---------------------------------
# Needs `--underlay {ipv4,ipv6}` on the `lab` subparser (vtep/cli.py). Called in-process, so
# that the CLI's own parsing is what is tested.

UNDERLAY6 = {"network-1": "fd00:1::8a", "network-2": "fd00:2::8e"}   # seed.SEED_PLAN6


def link(ns, dev):
    return json.loads(netns.sh(["ip", "-d", "-j", "link", "show", dev], ns=ns).stdout)[0]


@pytest.mark.parametrize("mode", ["kernel", "userspace", "mixed"])
def test_demo_over_an_ipv6_underlay(prefix, tmp_path, mode, capsys):
    from vtep import cli
    from mtulab import read_pcap
    cap = tmp_path / "demo6.pcap"
    try:
        code = cli.main(["lab", "demo", "--underlay", "ipv6", "--mode", mode, "--prefix",
                         prefix, "--capture", str(cap), "--keep"])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        assert re.findall(r"^(?:PASS|FAIL)  ([^:]+):", out.out, re.M) == CHECKS, out.out
        paths = {"kernel": ("kernel", "kernel"), "userspace": ("userspace", "userspace"),
                 "mixed": ("kernel", "userspace")}[mode]
        assert (f"mode {mode}: network-1 {paths[0]}, network-2 {paths[1]}; ipv6 underlay"
                in out.out), out.out
        assert "underlay fd00:1::/64 <-> router <-> fd00:2::/64" in out.out
        assert "echo saw client 172.2.0.2 (the pod's own address: no NAT)" in out.out
        assert "echo saw client 172.2.1.2 (the pod's own address: no NAT)" in out.out
        # every VXLAN packet the router saw has an IPv6 outer header between the two nodes
        vx = [p for p in read_pcap(cap) if p.vxlan]
        assert len(vx) >= 12 and all(p.v6 for p in vx), vx[:3]
        assert {(p.src, p.dst) for p in vx} == {tuple(UNDERLAY6.values()),
                                                tuple(reversed(UNDERLAY6.values()))}
        # overlay MTU 1500 - 70 (IPv6 40 + UDP 8 + VXLAN 8 + Ethernet 14) on the VTEP
        # devices and on the pods
        for (node, addr), path in zip(UNDERLAY6.items(), paths):
            ns = prefix + node
            assert link(ns, "vxlan0")["mtu"] == 1430
            assert link(ns, "eth0")["mtu"] == 1500
            pod = f"/run/netns/{ns}-pod1"
            r = subprocess.run(["nsenter", f"--net={pod}", "ip", "-j", "link", "show", "eth0"],
                               capture_output=True, text=True, check=True)
            assert json.loads(r.stdout)[0]["mtu"] == 1430
            if path == "kernel":
                assert link(ns, "vxlan0")["linkinfo"]["info_data"]["local6"] == addr
        # a demo on this lab asking for the other family is refused, the lab left as it is
        code = cli.main(["lab", "demo", "--underlay", "ipv4", "--prefix", prefix])
        err = capsys.readouterr().err
        assert code == 2 and "is up with an ipv6 underlay, not --underlay ipv4" in err, err
        assert len(ours(prefix)) == 5
    finally:
        assert vtep("lab", "down", "--prefix", prefix).returncode == 0
    assert ours(prefix) == []


# --- the dual-stack overlay: `vtep lab up|demo --dual-stack` (issue 15) -------------------------
# The seed plan with overlay6 fd00:172:2::/48, network-1 fd00:172:2::/64 and network-2
# fd00:172:2:1::/64 (typed here from the seed, not taken from vtep.lab.seed).

OVERLAY6 = ipaddress.ip_network("fd00:172:2::/48")
SUBNET6 = {"network-1": ipaddress.ip_network("fd00:172:2::/64"),
           "network-2": ipaddress.ip_network("fd00:172:2:1::/64")}
OUTER = {"192.168.1.138": "network-1", "192.168.2.142": "network-2", **{
    a: n for n, a in UNDERLAY6.items()}}
CHECKS_DUAL = [f"{a}{s} -> {b}{t}{fam}"
               for a, b in (("network-1", "network-2"), ("network-2", "network-1"))
               for fam in ("", " (IPv6)")
               for s, t in (("", " VTEP"), ("", "'s pod"), ("'s pod", "'s pod"),
                            ("'s pod", "'s pod http"))] + ["vxinspect --plan"]


def pod_addresses(ns):
    """The pod's global addresses on eth0, as iproute2 reports them: {4: ip, 6: ip}."""
    r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "ip", "-j", "addr", "show",
                        "dev", "eth0", "scope", "global"], capture_output=True, text=True,
                       check=True)
    # (iproute2 leaves an empty {} in addr_info for each address the scope filter drops)
    return {6 if a["family"] == "inet6" else 4: a["local"]
            for a in json.loads(r.stdout)[0]["addr_info"] if "local" in a}


@pytest.mark.parametrize("mode,underlay", [("kernel", "ipv4"), ("userspace", "ipv4"),
                                           ("mixed", "ipv6")])
def test_demo_dual_stack(prefix, tmp_path, mode, underlay, capsys):
    """Every check of the demo over IPv4 and over IPv6, on each data path and underlay
    family: the echo server sees each client pod's own IPv6 address (no NAT), and the
    router's capture holds inner IPv6 pod traffic whose addresses are in the subnets of
    the nodes that sent and received it (read with scapy, not vxinspect); what else
    crosses (the VTEP device's own MLD report from :: when its IPv6 comes up, flooded by
    the userspace path) has no overlay address."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap
    from vtep import cli
    cap = tmp_path / "dual.pcap"
    try:
        code = cli.main(["lab", "demo", "--dual-stack", "--mode", mode, "--underlay", underlay,
                         "--prefix", prefix, "--capture", str(cap), "--keep"])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        assert re.findall(r"^(?:PASS|FAIL)  ([^:]+):", out.out, re.M) == CHECKS_DUAL, out.out
        assert "dual-stack overlay (IPv4 and IPv6 pods)" in out.out
        # the echo server saw each pod's own address, per family, as iproute2 shows it
        for node in ("network-1", "network-2"):
            have = pod_addresses(f"{prefix}{node}-pod1")
            assert ipaddress.ip_address(have[6]) in SUBNET6[node], have
            for ip in (have[4], have[6]):
                assert f"echo saw client {ip} (the pod's own address: no NAT)" in out.out, ip
        m = re.search(r"capture: \d+ packets, (\d+) VXLAN, VNIs 10 \(\d+\); "
                      r"checks fired: (.*)", out.out)
        assert m and set(re.findall(r"\[(\w+)\]", m.group(2))) <= {"info"}, out.out
        # the capture, read with scapy: inner IPv6 between the nodes' own /64s only
        echo6, http6 = 0, set()
        for p in rdpcap(str(cap)):
            if VXLAN not in p:
                continue
            outer = p.payload
            inner = p[VXLAN].payload.getlayer(IPv6)
            if inner is None:
                continue
            for addr, node in ((inner.src, OUTER[outer.src]), (inner.dst, OUTER[outer.dst])):
                a = ipaddress.ip_address(addr)
                if a in OVERLAY6:
                    assert a in SUBNET6[node], p.summary()
                else:   # no pod's: a VTEP device's own MLD report from :: (vtep/host.py)
                    assert a.is_unspecified or a.is_multicast or a.is_link_local, p.summary()
            sender, receiver = OUTER[outer.src], OUTER[outer.dst]
            echo6 += ICMPv6EchoRequest in inner
            if TCP in inner and 8000 in (inner[TCP].sport, inner[TCP].dport):
                http6.add((sender, receiver))
        assert echo6 >= 18   # 3 pings x (VTEP, node -> pod, pod -> pod) x 2 directions
        assert http6 == {("network-1", "network-2"), ("network-2", "network-1")}
    finally:
        assert vtep("lab", "down", "--prefix", prefix).returncode == 0
    assert ours(prefix) == []


# --- the cluster in etcd (issue 10) -----------------------------------------------------------

@pytest.mark.parametrize("dual_stack", [False, True], ids=["ipv4", "dual-stack"])
def test_demo_with_etcd_and_three_nodes_passes_and_leaves_nothing(prefix, dual_stack):
    """`vtep lab demo --store etcd --nodes 3`: etcd in the router's namespace, the nodes
    register with only its URL; every pair of nodes passes the checks; one agent killed
    with SIGKILL is dropped by the others within TTL + 1 s and gets its subnet back.
    --dual-stack: each node claims a /64 too, every check also runs over IPv6, and the
    killed node's routes of both families are dropped."""
    r = vtep("lab", "demo", "--store", "etcd", "--nodes", "3", "--mode", "mixed",
             "--prefix", prefix, *(["--dual-stack"] if dual_stack else []))
    assert r.returncode == 0, r.stdout + r.stderr
    names = ("network-1", "network-2", "network-3")
    pairs = [(a, b) for a in names for b in names if a != b]
    for a, b in pairs:   # every ordered pair, each check
        for check in (f"{a} -> {b} VTEP", f"{a}'s pod -> {b}'s pod http"):
            assert f"PASS  {check}:" in r.stdout, check
            assert (f"PASS  {check} (IPv6):" in r.stdout) == dual_stack, check
    assert "PASS  vxinspect --plan" in r.stdout
    dropped = (r"routes to 172\.2\.\d\.0/24 and fd00:172:2:\d::/64" if dual_stack
               else r"route to 172\.2\.\d\.0/24")
    assert re.search(r"PASS  network-3 killed \(SIGKILL\): every other node dropped its "
                     + dropped + r" after \d+\.\d s", r.stdout), r.stdout
    assert "PASS  network-3 restarted: registered again" in r.stdout
    assert "FAIL" not in r.stdout
    assert ours(prefix) == []
    assert all(gone(p) for p in pids_in(r.stdout)), "etcd or an agent outlived the lab"


def test_lab_up_with_etcd_then_down_leaves_nothing(prefix):
    r = vtep("lab", "up", "--store", "etcd", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    assert "the cluster in etcd" in r.stdout
    etcd_pid = int(re.search(r"etcd http://\S+ in \S+ \(pid (\d+)\)", r.stdout).group(1))
    assert not gone(etcd_pid)
    # the lab's plan is what the cluster exported: both nodes, registered by themselves
    plan = lablib.Lab(prefix).load().plan_path.read_text()
    assert plan.count("[[nodes]]") == 2
    r = vtep("lab", "down", "--prefix", prefix)
    assert r.returncode == 0
    assert ours(prefix) == [] and gone(etcd_pid)


def test_lab_nodes_and_store_are_checked(prefix):
    for argv, needle in ((["--nodes", "1"], "--nodes"), (["--nodes", "33"], "--nodes"),
                         (["--store", "zk"], "--store"),
                         (["--store", "etcd", "--underlay", "ipv6"], "ipv4")):
        r = vtep("lab", "up", "--prefix", prefix, *argv)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, \
            r.stderr
        assert ours(prefix) == []
