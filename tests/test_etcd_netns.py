"""`vtep run --etcd`: nodes that join, leave and die, with the cluster in a real etcd.

The seed topology (two nodes behind the router); etcd runs in the router's namespace
on its address towards network-1 (192.168.1.213), started and stopped by PID
(tests/etcdserver.py) with its data in tmp_path. `vtep cluster init` writes the
cluster from a plan that has only its [cluster] table; each agent starts with the
etcd URL and its name and nothing else, registers, and gets a subnet. Every agent
runs inside its node's namespace and is ended by PID; the topology goes in `finally`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from vtep.lab import seed
from etcdserver import EtcdServer
from seedlab import VTEP, one_line, wait_for

pytestmark = pytest.mark.netns

ETCD_HOST = "192.168.1.213"        # the router's eth1, reachable from both nodes
TTL = 3                            # s: the membership lease the agents take
CLUSTER_ONLY = """[cluster]
vni = 10
port = 4789
overlay = "172.2.0.0/16"
"""


class Agent:
    """`vtep run --MODE --etcd URL --name NODE` in the node's namespace."""

    def __init__(self, node, mode, url, tmp_path, *extra):
        self.node = node
        self.state_dir = tmp_path / f"state-{node.name}"
        self.status_path = self.state_dir / f"vxlan0.{node.name}.json"
        self.log = open(tmp_path / f"agent-{node.name}.log", "a+")
        self.p = node.popen(VTEP + ["run", f"--{mode}", "--etcd", url, "--name", node.name,
                                    "--ttl", str(TTL), "--state-dir", str(self.state_dir),
                                    *extra], stdout=self.log, stderr=subprocess.STDOUT)

    def converged(self, peers: int, limit: float = 15.0) -> None:
        def ok():
            st = json.loads(self.status_path.read_text())
            return st["pid"] == self.p.pid and len(st["peers"]) == peers
        assert wait_for(ok, limit) is not None, \
            f"{self.node.name} never converged with {peers} peer(s):\n{self.output()}"

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def signal(self, sig) -> None:
        os.kill(self.p.pid, sig)

    def stop(self) -> int:
        if self.p.poll() is None:
            self.signal(signal.SIGTERM)
        return self.p.wait(timeout=15)


def cli(node, *argv, url):
    return node.cmd(VTEP + ["cluster", *argv, "--etcd", url], check=False, timeout=30)


def vtep_address(node) -> str | None:
    out = node.cmd(["ip", "-j", "-4", "addr", "show", "dev", "vxlan0"], check=False).stdout
    addrs = json.loads(out)[0]["addr_info"] if out.strip() else []
    return addrs[0]["local"] if addrs else None


def routes(node) -> list[str]:
    out = node.cmd(["ip", "-j", "route", "show", "dev", "vxlan0"], check=False).stdout
    return [r["dst"] for r in json.loads(out)] if out.strip() else []


def ping(node, dst) -> bool:
    return node.cmd(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", dst], check=False,
                    timeout=20).returncode == 0


@pytest.fixture
def etcd_lab(netns_prefix, tmp_path):
    """(topology, etcd URL) with the cluster initialised from CLUSTER_ONLY."""
    t = seed.topology(netns_prefix + "e-")
    with t:
        srv = EtcdServer(tmp_path / "etcd-data", host=ETCD_HOST, netns=t["router"].ns)
        try:
            srv.start()
            plan = tmp_path / "cluster.toml"
            plan.write_text(CLUSTER_ONLY)
            r = t["network-1"].cmd(VTEP + ["cluster", "init", "--etcd", srv.url, "--config",
                                           str(plan)], check=False, timeout=30)
            assert r.returncode == 0, r.stderr
            yield t, srv
        finally:
            srv.stop()


@pytest.mark.parametrize("modes", [("kernel", "kernel"), ("kernel", "userspace")],
                         ids=["kernel", "mixed"])
def test_nodes_join_with_only_the_etcd_url_and_reach_each_other(etcd_lab, tmp_path, modes):
    t, srv = etcd_lab
    n1, n2 = t["network-1"], t["network-2"]
    a1 = Agent(n1, modes[0], srv.url, tmp_path)
    a2 = Agent(n2, modes[1], srv.url, tmp_path)
    try:
        a1.converged(1)
        a2.converged(1)
        ip1, ip2 = vtep_address(n1), vtep_address(n2)
        # two distinct subnets of the overlay, the lowest free ones: .0 and .1 in some order
        assert {ip1, ip2} == {"172.2.0.0", "172.2.1.0"}, (ip1, ip2)
        assert ping(n1, ip2) and ping(n2, ip1)
        show = json.loads(cli(n1, "show", "--json", url=srv.url).stdout)
        assert sorted(n["name"] for n in show["nodes"]) == ["network-1", "network-2"]
        assert {n["status"] for n in show["nodes"]} == {"alive"}
    finally:
        assert a1.stop() == 0, a1.output()
        assert a2.stop() == 0, a2.output()


def test_a_killed_node_is_dropped_within_the_ttl_and_gets_its_subnet_back(etcd_lab,
                                                                         tmp_path):
    t, srv = etcd_lab
    n1, n2 = t["network-1"], t["network-2"]
    a1 = Agent(n1, "kernel", srv.url, tmp_path)
    a2 = Agent(n2, "kernel", srv.url, tmp_path)
    try:
        a1.converged(1)
        a2.converged(1)
        ip2 = vtep_address(n2)
        subnet2 = f"{ip2}/24"
        assert routes(n1) == [subnet2]
        a2.signal(signal.SIGKILL)
        killed = time.monotonic()
        a2.p.wait(timeout=10)
        gone = wait_for(lambda: routes(n1) == [], TTL + 10)
        assert gone is not None, f"network-1 kept network-2's route:\n{a1.output()}"
        took = time.monotonic() - killed
        # the lease's TTL, then etcd's expiry check (every 500 ms) and one pass; the
        # poll itself (a few `ip` processes) is the rest of the slack
        assert took <= TTL + 2.5, f"dropped {took:.1f} s after the kill"
        # the kernel state of the dead node is untouched (kill -9: no teardown)
        assert vtep_address(n2) == ip2
        a2 = Agent(n2, "kernel", srv.url, tmp_path)
        a2.converged(1)
        assert vtep_address(n2) == ip2, "the restarted node got another subnet"
        assert wait_for(lambda: routes(n1) == [subnet2], 10) is not None, a1.output()
        assert ping(n1, ip2)
    finally:
        assert a1.stop() == 0, a1.output()
        a2.stop()


def test_a_node_that_stops_leaves_at_once(etcd_lab, tmp_path):
    """SIGTERM: the agent removes its device and revokes its lease, so peers drop it
    now, not a TTL later."""
    t, srv = etcd_lab
    n1, n2 = t["network-1"], t["network-2"]
    a1 = Agent(n1, "kernel", srv.url, tmp_path)
    a2 = Agent(n2, "kernel", srv.url, tmp_path)
    try:
        a1.converged(1)
        a2.converged(1)
        t0 = time.monotonic()
        assert a2.stop() == 0, a2.output()
        assert wait_for(lambda: routes(n1) == [], TTL) is not None, a1.output()
        assert time.monotonic() - t0 < TTL
    finally:
        assert a1.stop() == 0, a1.output()


def test_a_removed_node_tears_down_and_exits(etcd_lab, tmp_path):
    t, srv = etcd_lab
    n1, n2 = t["network-1"], t["network-2"]
    a1 = Agent(n1, "kernel", srv.url, tmp_path)
    a2 = Agent(n2, "kernel", srv.url, tmp_path)
    try:
        a1.converged(1)
        a2.converged(1)
        r = cli(n1, "remove", "network-2", url=srv.url)
        assert r.returncode == 0, r.stderr
        assert a2.p.wait(timeout=TTL + 10) == 0, a2.output()
        assert "removed from the cluster" in a2.output()
        assert vtep_address(n2) is None            # its device went with it
        assert wait_for(lambda: routes(n1) == [], 10) is not None, a1.output()
    finally:
        assert a1.stop() == 0, a1.output()
        a2.stop()


def test_bad_or_unreachable_etcd_is_one_line_and_leaves_nothing(netns_prefix, tmp_path):
    with seed.topology(netns_prefix + "e2-") as t:
        n1 = t["network-1"]
        for url, code, needle in (
                ("http://192.168.1.213:2379", 7, "192.168.1.213:2379"),   # nobody listens
                ("ftp://x", 2, "--etcd"),
                ("http://[::1", 2, "--etcd")):
            r = n1.cmd(VTEP + ["run", "--kernel", "--etcd", url, "--name", "network-1",
                               "--state-dir", str(tmp_path / "s")], check=False, timeout=60)
            one_line(r, code, needle)
            assert vtep_address(n1) is None and n1.cmd(
                ["ip", "link", "show", "vxlan0"], check=False).returncode != 0
        r = n1.cmd(VTEP + ["run", "--kernel", "--name", "network-1"], check=False)
        one_line(r, 2, "--config", "--etcd")
