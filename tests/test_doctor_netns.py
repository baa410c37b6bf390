"""`vtep doctor` on the seed topology: a healthy node gives exit 0 and no error finding;
each fault injected into network-1 (a stopped agent, a deleted fdb entry and a wrong
neighbour MAC with no agent to repair them, the wrong port, forwarding off, strict
rp_filter, an nftables rule dropping UDP 4789, the router's link narrowed to 1400) gives
its finding, by id. The faults are made with iproute2, sysctl and nft in the node's
namespace, never with vtep's own code; the expected ids and words come from the issue
and the plan (port 4789, the router at 192.168.1.213)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from seedlab import VTEP, Vtep, wait_for
from test_etcd_netns import TTL, etcd_lab, pair, routes, vtep_address  # noqa: F401 (a fixture)
from vtep.lab import seed

pytestmark = pytest.mark.netns


class Lab:
    def __init__(self, t, plan, tmp):
        self.t, self.plan, self.tmp = t, str(plan), tmp
        self.agents = {}

    def state(self, node):
        d = self.tmp / f"state-{node}"
        d.mkdir(exist_ok=True)
        return d

    def agent(self, node="network-1"):
        self.agents[node] = Vtep(self.t[node], "kernel", self.plan, self.state(node))
        return self.agents[node]

    def once(self, node="network-1"):
        """The node configured by `vtep run --once`: the state stays, no agent runs."""
        r = self.t[node].cmd(VTEP + ["run", "--kernel", "--once", "--config", self.plan,
                                     "--node", node, "--state-dir", str(self.state(node))],
                             check=False, timeout=60)
        assert r.returncode == 0, r.stderr

    def doctor(self, node="network-1", *extra):
        r = self.t[node].cmd(VTEP + ["doctor", "--config", self.plan, "--node", node,
                                     "--state-dir", str(self.state(node)), "--json", *extra],
                             check=False, timeout=120)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode in (0, 1), r.stderr
        doc = json.loads(r.stdout)
        assert doc["healthy"] == (r.returncode == 0)
        return r.returncode, doc

    def findings(self, *a, severity=None):
        _, doc = self.doctor(*a)
        return {f["id"]: f for f in doc["findings"]
                if severity is None or f["severity"] == severity}

    def sh(self, node, *argv):
        self.t[node].cmd(list(argv))


@pytest.fixture
def lab(netns_prefix, tmp_path, plan_file):
    with seed.topology(netns_prefix + "dr-") as t:
        yield Lab(t, plan_file, tmp_path)


def errors(lab, *a):
    return lab.findings(*a, severity="error")


def test_a_healthy_node_is_exit_0_with_no_error(lab):
    lab.agent("network-1")
    lab.agent("network-2")
    code, doc = lab.doctor("network-1", "--probe")
    ids = {f["id"]: f["severity"] for f in doc["findings"]}
    assert code == 0, doc
    assert "error" not in ids.values(), doc
    for passed in ("agent.running", "drift.none", "device.identity", "host.forwarding",
                   "host.rp-filter", "host.firewall", "probe.path-mtu", "probe.tunnel",
                   "probe.capture"):
        assert ids.get(passed) == "ok", (passed, doc)
    # text output: one line per finding, the summary last
    r = lab.t["network-1"].cmd(VTEP + ["doctor", "--config", lab.plan, "--state-dir",
                                       str(lab.state("network-1"))])
    lines = r.stdout.splitlines()
    assert len(lines) == len(doc["findings"]) - sum(f["id"].startswith("probe.")
                                                     for f in doc["findings"]) + 1
    assert lines[-1].startswith("node network-1: healthy")


def test_a_stopped_agent(lab):
    a = lab.agent()
    assert a.stop() == 0   # SIGTERM: it removes what it made
    found = errors(lab)
    assert {"agent.not-running", "device.missing"} <= set(found), found
    assert "vtep run --kernel --config" in found["agent.not-running"]["fix"]


def test_a_deleted_fdb_entry_with_the_agent_stopped(lab):
    lab.once()
    out = lab.t["network-1"].cmd(["bridge", "-j", "fdb", "show", "dev", "vxlan0"]).stdout
    entry = next(e for e in json.loads(out) if e.get("dst") == "192.168.2.142"
                 and e["mac"] != "00:00:00:00:00:00")
    lab.sh("network-1", "bridge", "fdb", "del", entry["mac"], "dev", "vxlan0",
           "dst", "192.168.2.142")
    found = errors(lab)
    assert "agent.not-running" in found
    assert entry["mac"] in found["drift.fdb-missing"]["saw"], found


def test_a_wrong_neighbour_mac(lab):
    lab.once()
    lab.sh("network-1", "ip", "neigh", "replace", "172.2.1.0", "lladdr", "02:00:00:00:00:99",
           "dev", "vxlan0", "nud", "permanent")
    found = errors(lab)
    assert "172.2.1.0" in found["drift.neigh-changed"]["saw"], found


def test_the_wrong_port(lab):
    lab.once()
    lab.sh("network-1", "ip", "link", "del", "vxlan0")
    lab.sh("network-1", "ip", "link", "add", "vxlan0", "type", "vxlan", "id", "10", "dstport",
           "8472", "local", "192.168.1.138", "dev", "eth0", "nolearning")
    found = errors(lab)
    saw = found["device.port"]["saw"]
    assert "8472" in saw and "4789" in saw, saw


def test_forwarding_off(lab):
    lab.once()
    lab.sh("network-1", "sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert "host.forwarding" in errors(lab)


def test_strict_rp_filter(lab):
    lab.once()
    lab.sh("network-1", "sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=1")
    found = lab.findings()
    assert found["host.rp-filter"]["severity"] == "warning"
    assert "eth0" in found["host.rp-filter"]["saw"]


def test_an_nftables_rule_dropping_vxlan(lab):
    lab.agent("network-1")
    lab.agent("network-2")
    for cmd in (["add", "table", "inet", "vtt"],
                ["add", "chain", "inet", "vtt", "in", "{ type filter hook input priority 0; }"],
                ["add", "rule", "inet", "vtt", "in", "udp", "dport", "4789", "drop"]):
        lab.sh("network-1", "nft", *cmd)
    found = errors(lab, "network-1", "--probe")
    assert "4789" in found["host.firewall"]["saw"]
    assert "nft inet vtt in" in found["host.firewall"]["saw"], found
    assert "probe.tunnel" in found, found   # the tunnel itself fails too


def test_a_router_link_narrowed_to_1400(lab):
    lab.agent("network-1")
    lab.agent("network-2")
    seed.narrow(lab.t, 1400)
    found = errors(lab, "network-1", "--probe")
    saw = found["probe.path-mtu"]["saw"]
    assert "network-2" in saw and "1400" in saw and "192.168.1.213" in saw, saw
    # the device's df is unset (the seed's): the kernel fragments the full-size outer
    # packets once the router's ICMP taught it the path MTU, and the capture shows it
    assert "outer-fragment" in found["probe.capture"]["saw"], found


def test_another_vxlan_device_on_the_port(lab):
    """A collect-metadata device (OVS's vxlan_sys_4789, Cilium's) on the port: an error
    (it cannot be up beside ours, or takes every VNI); another VNI shares the kernel's
    socket (information only). The kernel itself refuses a second device of the same
    VNI and port."""
    lab.once()
    lab.sh("network-1", "ip", "link", "add", "vxsame", "type", "vxlan", "external",
           "dstport", "4789")
    lab.sh("network-1", "ip", "link", "add", "vxother", "type", "vxlan", "id", "42",
           "dstport", "4789", "local", "192.168.1.138", "nolearning")
    found = lab.findings()
    assert found["device.foreign-on-port"]["severity"] == "error"
    assert "vxsame" in found["device.foreign-on-port"]["saw"]
    assert found["device.shared-port"]["severity"] == "info"
    assert "vxother" in found["device.shared-port"]["saw"]


def test_the_pod_leg_of_the_probe(lab):
    """With pods on both nodes, --probe also pings from a pod here to the peer's pod
    gateway; a forward chain dropping everything breaks that leg only (the VTEPs still
    reach each other), and the finding says so."""
    lab.agent("network-1")
    lab.agent("network-2")
    for node in ("network-1", "network-2"):
        pod = f"{lab.t.prefix}{node}-p"
        r = subprocess.run(["nsenter", f"--net={lab.t[node].path}"] + VTEP +
                           ["pod", "add", pod, "--config", lab.plan, "--node", node,
                            "--state-dir", str(lab.state(node))],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    try:
        code, doc = lab.doctor("network-1", "--probe")
        ids = {f["id"]: f for f in doc["findings"]}
        assert code == 0 and ids["probe.pod"]["severity"] == "ok", doc
        assert "172.2.0.2" in ids["probe.pod"]["saw"] and "172.2.1.1" in ids["probe.pod"]["saw"]
        for cmd in (["add", "table", "inet", "vtt"],
                    ["add", "chain", "inet", "vtt", "through",
                     "{ type filter hook forward priority 0; policy drop; }"]):
            lab.sh("network-1", "nft", *cmd)
        found = lab.findings("network-1", "--probe")
        assert found["probe.tunnel"]["severity"] == "ok"
        assert found["probe.pod"]["severity"] == "warning", found   # the peer may have no pods
        assert "while the VTEPs reach each other" in found["probe.pod"]["saw"]
    finally:
        for node in ("network-1", "network-2"):
            subprocess.run(["ip", "netns", "delete", f"{lab.t.prefix}{node}-p"],
                           capture_output=True)


def test_tx_checksum_offload_on_the_underlay_is_not_a_capture_error(lab):
    """As on a real NIC: this node's outer UDP checksums are filled after the capture
    sees the packet, so the probe must not judge them (a kernel peer accepts them)."""
    lab.agent("network-1")
    lab.agent("network-2")
    lab.sh("network-1", "ethtool", "-K", "eth0", "tx", "on")
    code, doc = lab.doctor("network-1", "--probe")
    ids = {f["id"]: f["severity"] for f in doc["findings"]}
    assert code == 0 and ids["probe.tunnel"] == "ok" and ids["probe.capture"] == "ok", doc


def test_a_healthy_mixed_pair_over_an_ipv6_underlay(netns_prefix, tmp_path):
    """The kernel path on network-1, the userspace path (a TAP, no kernel fdb) on
    network-2, over IPv6: no false error on either, --probe included."""
    plan = tmp_path / "plan6.toml"
    plan.write_text(seed.SEED_PLAN6)
    with seed.topology(netns_prefix + "d6-", underlay="ipv6") as t:
        lab = Lab(t, plan, tmp_path)
        Vtep(t["network-1"], "kernel", lab.plan, lab.state("network-1"))
        Vtep(t["network-2"], "userspace", lab.plan, lab.state("network-2"))
        for node in ("network-1", "network-2"):
            code, doc = lab.doctor(node, "--probe")
            ids = {f["id"]: f["severity"] for f in doc["findings"]}
            assert code == 0 and ids["probe.tunnel"] == "ok", (node, doc)
            assert "device.df" not in ids     # DF is IPv4's


def test_a_dead_agent_of_an_etcd_cluster(etcd_lab, tmp_path):
    """kill -9 the agent of network-2 in an etcd cluster: once its lease expired the
    store no longer lists it, yet `vtep doctor --etcd URL --node network-2` still checks
    it (against its reserved subnet and the device the agent left) and says why."""
    t, srv = etcd_lab
    a1, a2 = pair(t, srv, tmp_path)
    try:
        a2.signal(signal.SIGKILL)
        a2.p.wait(timeout=10)
        assert wait_for(lambda: routes(t["network-1"]) == [], TTL + 10) is not None
        r = t["network-2"].cmd(VTEP + ["doctor", "--etcd", srv.url, "--node", "network-2",
                                       "--state-dir", str(a2.state_dir), "--json"],
                               check=False, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        found = {f["id"]: f for f in json.loads(r.stdout)["findings"]}
        assert "agent.not-a-member" in found and "agent.not-running" in found, found
        assert vtep_address(t["network-2"]).rsplit(".", 1)[0] in \
            found["agent.not-a-member"]["saw"]          # its reserved subnet, named
        assert found["device.identity"]["severity"] == "ok"   # the device it left
    finally:
        assert a1.stop() == 0, a1.output()
