"""vtep-cni with a real container runtime: podman 4.3 (CNI backend, runc) inside each node
of the seed topology, `vtep run --kernel` on each node, containers attached through
`vtep-cni` with nothing else in between (tests/podmanlab.py contains podman: its own
mount namespace, root, runroot, plugin and config directories, all removed in
`finally`). The network config names no plan: the plugin reads the running agent's
status file, as a Kubernetes node would run it.

Expected values: the seed plan's convention (network-1 owns 172.2.0.0/24, network-2
172.2.1.0/24, the gateway .1, the first pod .2, the overlay MTU 1500 - 50), the kernel's
and podman's own view of each container (`ip`, `podman inspect`), and the HTTP server's
report of the client address it saw (busybox httpd's REMOTE_ADDR)."""
from __future__ import annotations

import ipaddress
import json
import os
import shlex
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from podmanlab import HTTPD, Podman, have_podman
from seedlab import Vtep
from vtep import pods
from vtep.lab import seed

pytestmark = pytest.mark.netns

PLUGIN = Path(sys.executable).with_name("vtep-cni")
SLEEP = ["sleep", "300"]   # bounded: even a container nobody removes ends by itself
SUBNETS = {"network-1": "172.2.0.0/24", "network-2": "172.2.1.0/24"}


class Node:
    def __init__(self, topo_node, pm: Podman, state: Path):
        self.node, self.pm, self.state = topo_node, pm, state

    def allocations(self) -> dict:
        path = self.state / f"pods-{self.node.name}.json"
        return json.loads(path.read_text())["pods"] if path.exists() else {}

    def links(self) -> list[str]:
        out = self.node.cmd(["ip", "-j", "link", "show"]).stdout
        return [x["ifname"] for x in json.loads(out)]


def plugin_for_tree(tmp_path) -> Path:
    """The plugin podman runs: the console script, which imports vtep as the venv
    installed it; under a PYTHONPATH (a worktree under test) a wrapper script that sets
    it, since podman's DEL runs with a bare environment (podmanlab's docstring)."""
    path = os.environ.get("PYTHONPATH")
    if not path:
        return PLUGIN
    wrapper = tmp_path / "vtep-cni"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(path)} exec "
                       f"{shlex.quote(str(PLUGIN))} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def cluster(netns_prefix, tmp_path, plan_file):
    """{node name: Node}: the seed topology, an agent and a podman on each node."""
    with podman_cluster(netns_prefix + "cp-", tmp_path, plan_file) as nodes:
        yield nodes


@pytest.fixture
def cluster6(netns_prefix, tmp_path):
    """The same with the seed's dual-stack plan (overlay6 fd00:172:2::/48)."""
    plan = tmp_path / "plan-dual.toml"
    plan.write_text(seed.plan_text(dual_stack=True))
    with podman_cluster(netns_prefix + "cp6-", tmp_path, plan) as nodes:
        yield nodes


@contextmanager
def podman_cluster(prefix, tmp_path, plan_file):
    reason = have_podman()
    if reason:
        pytest.skip(reason)
    with seed.topology(prefix) as t, ExitStack() as stack:
        nodes = {}
        for name in seed.NODES:
            state = tmp_path / f"state-{name}"
            state.mkdir()
            Vtep(t[name], "kernel", plan_file, state)   # ended by the topology, by PID
            conflist = {"cniVersion": "1.0.0", "name": "vtep",
                        "plugins": [{"type": "vtep", "stateDir": str(state)}]}
            pm = stack.enter_context(Podman(t[name], tmp_path,
                                            {"vtep": plugin_for_tree(tmp_path)}, conflist))
            nodes[name] = Node(t[name], pm, state)
        yield nodes


def test_containers_on_two_nodes_reach_each_other_without_nat(cluster):
    n1, n2 = cluster["network-1"], cluster["network-2"]
    n2.pm.run("web", HTTPD)
    cid = n1.pm.run("cli", SLEEP)
    cli, web = n1.pm.ip("cli"), n2.pm.ip("web")
    assert (cli, web) == ("172.2.0.2", "172.2.1.2")
    mtu = n1.pm.exec("cli", ["cat", "/sys/class/net/eth0/mtu"], check=True).stdout.strip()
    assert mtu == "1450"
    route = n1.pm.exec("cli", ["ip", "route"], check=True).stdout
    assert "default via 172.2.0.1 dev eth0" in route
    assert n1.pm.exec("cli", ["ping", "-c", "2", "-W", "2", web]).returncode == 0
    assert n2.pm.exec("web", ["ping", "-c", "2", "-W", "2", cli]).returncode == 0
    # the server on network-2 saw the client container's own address: nothing NATed it
    assert n1.pm.fetch("cli", f"http://{web}/cgi-bin/ip").strip() == cli
    # the allocation is keyed by podman's container ID and the interface it asked for
    assert n1.allocations() == {f"{cid}/eth0": {
        "ip": cli, "gateway": "172.2.0.1", "ips": [cli], "gateways": ["172.2.0.1"],
        "veth": pods.veth_name(f"{cid}/eth0"),
        "netns": n1.pm.netns("cli"), "created_netns": False, "bridge": "br0",
        "cni": {"network": "vtep", "container": cid, "ifname": "eth0"}}}
    assert pods.veth_name(f"{cid}/eth0") in n1.links()
    # `podman rm` is a DEL (run by conmon's cleanup, with a bare environment): the
    # address is free and the veth gone
    n1.pm.rm("cli")
    assert n1.allocations() == {} and pods.veth_name(f"{cid}/eth0") not in n1.links()
    n1.pm.run("again", SLEEP)
    assert n1.pm.ip("again") == "172.2.0.2"   # the freed address, lowest first


def test_ten_containers_started_at_once_get_ten_distinct_addresses(cluster):
    n1 = cluster["network-1"]
    names = [f"c{i}" for i in range(10)]
    procs = [n1.pm.popen(n1.pm.run_argv(n, SLEEP)) for n in names]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ips = {n: n1.pm.ip(n) for n in names}
    assert len(set(ips.values())) == 10, ips
    assert sorted(ips.values(), key=ipaddress.ip_address) == \
        [f"172.2.0.{i}" for i in range(2, 12)]
    assert sorted(r["ip"] for r in n1.allocations().values()) == sorted(ips.values())
    assert all(n1.pm.exec("c0", ["ping", "-c", "1", "-W", "2", ip]).returncode == 0
               for ip in ips.values())
    n1.pm.podman(["rm", "-f", "-a", "-t", "0"], timeout=120)
    assert n1.allocations() == {}
    assert not [x for x in n1.links() if x.startswith("veth")]


HTTPD6 = ["httpd", "-f", "-p", "[::]:80", "-h", "/www"]   # both families on one socket


def addresses6(pm: Podman, name: str) -> list[str]:
    """The container's global IPv6 addresses on eth0, as its own `ip` shows them."""
    out = pm.exec(name, ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"],
                  check=True).stdout
    return [line.split()[3] for line in out.splitlines() if " inet6 " in line]


def test_dual_stack_containers_reach_each_other_over_ipv6_without_nat(cluster6):
    """podman, vtep-cni and `vtep run` with a dual-stack plan: the plugin reads subnet6,
    gateway6 and overlay6 from the agent's status file; each container gets an address
    of each family; podman records both; busybox httpd on [::] sees the client
    container's own IPv6 address."""
    n1, n2 = cluster6["network-1"], cluster6["network-2"]
    n2.pm.run("web", HTTPD6)
    cid = n1.pm.run("cli", SLEEP)
    assert (n1.pm.ip("cli"), n2.pm.ip("web")) == ("172.2.0.2", "172.2.1.2")
    assert addresses6(n1.pm, "cli") == ["fd00:172:2::2/64"]
    assert addresses6(n2.pm, "web") == ["fd00:172:2:1::2/64"]
    route = n1.pm.exec("cli", ["ip", "-6", "route"], check=True).stdout
    assert "default via fd00:172:2::1 dev eth0" in route
    assert n1.pm.inspect("cli", "{{.NetworkSettings.GlobalIPv6Address}}") == "fd00:172:2::2"
    assert n1.pm.exec("cli", ["ping", "-6", "-c", "2", "-W", "2",
                              "fd00:172:2:1::2"]).returncode == 0
    seen = n1.pm.fetch("cli", "http://[fd00:172:2:1::2]/cgi-bin/ip").strip()
    assert seen.strip("[]") == "fd00:172:2::2"   # busybox may bracket an IPv6 REMOTE_ADDR
    assert n1.allocations()[f"{cid}/eth0"]["ips"] == ["172.2.0.2", "fd00:172:2::2"]
    n1.pm.rm("cli")   # DEL, from conmon's bare environment: both addresses freed
    assert n1.allocations() == {}
