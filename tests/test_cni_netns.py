"""vtep-cni driven the way the reference plugins' own tests drive theirs: the binary run
with CNI_* variables and a network config on stdin (ADD, CHECK, DEL, DEL again), inside
a node of the seed topology, with no container runtime (tests/test_cni_podman_netns.py
has the runtime). The container namespaces are made by the test, named with the run's
prefix. Expected values come from the seed plan's convention (node network-1 owns
172.2.0.0/24: the VTEP .0, the gateway .1, pods from .2; the overlay MTU 1500 - 50),
from the CNI specification's documents written by hand, from the kernel (read with
`ip -j`) and from the reference bridge plugin's own result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import pytest

from seedlab import Vtep, hand_configured
from test_etcd_netns import etcd_lab, pair, vtep_address  # noqa: F401 (etcd_lab: a fixture)
from vtep import netns, pods

PLUGIN = str(Path(sys.executable).with_name("vtep-cni"))
VTEP = [sys.executable, "-m", "vtep.cli"]
REFERENCE = Path("/usr/lib/cni")     # Debian's containernetworking-plugins


class Answer(NamedTuple):
    code: int            # the plugin's exit status
    doc: dict | None     # what it printed on stdout, parsed
    stderr: str


class Cni:
    """The seed topology's two nodes, with the plugin run in their namespaces."""

    def __init__(self, topo, plan_path, state, prefix):
        self.topo, self.plan, self.state, self.prefix = topo, plan_path, state, prefix

    def container(self, name: str) -> str:
        """A fresh namespace standing in for a container's; its path."""
        netns.add(self.prefix + name)
        return f"/run/netns/{self.prefix}{name}"

    def config(self, at="network-1", version="1.0.0", **extra) -> dict:
        """The network config for node `at` (its own state dir); extra keys added, a
        None value removing a key."""
        conf = {"cniVersion": version, "name": "vtepnet", "type": "vtep", "plan": self.plan,
                "stateDir": str(self.state / at)}
        conf.update(extra)
        return {k: v for k, v in conf.items() if v is not None}

    def call(self, command, container="c1", netns_path=None, *, node="network-1",
             ifname="eth0", conf=None, raw=None, env=None, **kw) -> Answer:
        stdin = raw if raw is not None else json.dumps(conf or self.config(node, **kw))
        # PYTHONPATH passed on: the console script imports vtep as the venv installed it
        # (the main checkout), not the tree under test
        e = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
             "CNI_NETNS": netns_path or "", "CNI_IFNAME": ifname,
             "CNI_PATH": str(REFERENCE), "PYTHONPATH": os.environ.get("PYTHONPATH")}
        e.update(env or {})
        e = {k: v for k, v in e.items() if v is not None}
        r = subprocess.run(["nsenter", f"--net={self.topo[node].path}", PLUGIN], input=stdin,
                           env=e, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in r.stderr + r.stdout, r.stderr
        return Answer(r.returncode, json.loads(r.stdout) if r.stdout.strip() else None,
                      r.stderr)

    def add(self, container="c1", netns_path=None, **kw) -> dict:
        a = self.call("ADD", container, netns_path or self.container(container), **kw)
        assert a.code == 0, a
        return a.doc

    def allocations(self, node="network-1") -> dict:
        path = self.state / node / f"pods-{node}.json"
        return json.loads(path.read_text())["pods"] if path.exists() else {}

    def links(self, node="network-1") -> list[str]:
        out = self.topo[node].cmd(["ip", "-j", "link", "show"]).stdout
        return sorted(x["ifname"] for x in json.loads(out))


def in_ns(path, argv, check=True):
    r = subprocess.run(["nsenter", f"--net={path}"] + argv, capture_output=True, text=True,
                       timeout=15)
    assert not check or r.returncode == 0, r.stderr
    return r


def kernel_view(path, ifname="eth0") -> dict:
    """The container's interface as the kernel reports it (`ip -j`), not as we recorded."""
    r = in_ns(path, ["ip", "-j", "address", "show", "dev", ifname], check=False)
    if r.returncode:
        return {}
    link = json.loads(r.stdout)[0]
    routes = json.loads(in_ns(path, ["ip", "-j", "-4", "route", "show"]).stdout)
    return {"mtu": link["mtu"], "mac": link["address"], "up": "UP" in link["flags"],
            "inet": [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                     if a["family"] == "inet"],
            "default": [r.get("gateway") for r in routes if r["dst"] == "default"]}


@pytest.fixture
def cni(netns_prefix, tmp_path, plan_file):
    """Both nodes' VTEPs configured with the seed's own iproute2 commands; forwarding on;
    the container namespaces (the test's, not the topology's) swept after."""
    prefix = netns_prefix + "cni-"
    with hand_configured(prefix, plan_file) as t:
        yield Cni(t, str(plan_file), tmp_path / "state", prefix)


# --- the protocol, as the reference plugins test it --------------------------------------

@pytest.mark.netns
def test_add_check_del_and_del_again(cni):
    path = cni.container("c1")
    a = cni.call("ADD", "c1", path)
    assert a.code == 0, a
    veth = pods.veth_name("c1/eth0")
    mac = kernel_view(path)["mac"]
    # CNI 1.0.0's result, written out: the host's bridge and veth, then the container's
    # interface with its sandbox; the address points at that interface (index 2)
    assert a.doc == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "br0", "mac": a.doc["interfaces"][0]["mac"]},
                       {"name": veth, "mac": a.doc["interfaces"][1]["mac"]},
                       {"name": "eth0", "mac": mac, "sandbox": path}],
        "ips": [{"address": "172.2.0.2/24", "gateway": "172.2.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "172.2.0.1"}],
    }
    assert kernel_view(path) == {"mtu": 1450, "mac": mac, "up": True,
                                 "inet": ["172.2.0.2/24"], "default": ["172.2.0.1"]}
    host = json.loads(cni.topo["network-1"].cmd(["ip", "-j", "-d", "link", "show", veth]).stdout)[0]
    assert host["master"] == "br0" and host["mtu"] == 1450
    assert host["address"] == a.doc["interfaces"][1]["mac"]
    assert in_ns(path, ["ping", "-c1", "-W1", "172.2.0.1"]).returncode == 0

    assert cni.call("CHECK", "c1", path, conf=cni.config(prevResult=a.doc)) == (0, None, "")
    assert cni.call("DEL", "c1", path) == (0, None, "")
    assert veth not in cni.links() and cni.allocations() == {}
    assert kernel_view(path) == {}     # the pair went: the container's end with it
    assert cni.call("DEL", "c1", path) == (0, None, "")   # again: still success
    gone = cni.call("CHECK", "c1", path, conf=cni.config(prevResult=a.doc))
    assert gone.code == 1 and gone.doc["code"] == 102
    assert "no address is allocated" in gone.doc["details"]


@pytest.mark.netns
def test_the_result_has_the_reference_bridge_plugins_shape(cni, tmp_path):
    """The same attachment made by Debian's bridge plugin with host-local IPAM: our
    result must carry the same keys, so whatever a runtime reads from theirs it finds
    in ours (the interface list, sandbox, ips with interface index, routes)."""
    theirs_path = cni.container("ref")
    conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "cniref0",
            "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.99.0.0/24",
                                        "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}],
                                        "dataDir": str(tmp_path / "host-local")}}
    e = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ref",
         "CNI_NETNS": theirs_path, "CNI_IFNAME": "eth0", "CNI_PATH": str(REFERENCE)}
    r = subprocess.run(["nsenter", f"--net={cni.topo['network-1'].path}",
                        str(REFERENCE / "bridge")], input=json.dumps(conf), env=e,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    theirs = json.loads(r.stdout)
    ours = cni.add("c1")

    def shape(doc):
        return (sorted(k for k in doc if k != "dns"),
                [sorted(i) for i in doc["interfaces"]],
                [sorted(i) for i in doc["ips"]], [sorted(i) for i in doc["routes"]])
    assert shape(ours) == shape(theirs)
    assert [("sandbox" in i) for i in ours["interfaces"]] == \
        [("sandbox" in i) for i in theirs["interfaces"]]
    assert ours["ips"][0]["interface"] == theirs["ips"][0]["interface"] == 2


@pytest.mark.netns
def test_add_again_returns_the_same_result_and_repairs_drift(cni):
    path = cni.container("c1")
    first = cni.add("c1", path, version="1.1.0")
    assert first["interfaces"][2]["mtu"] == 1450      # 1.1.0 carries the MTU
    in_ns(path, ["ip", "link", "set", "eth0", "mtu", "1500"])
    in_ns(path, ["ip", "route", "del", "default"])
    assert cni.add("c1", path, version="1.1.0") == first
    assert kernel_view(path)["mtu"] == 1450 and kernel_view(path)["default"] == ["172.2.0.1"]
    assert list(cni.allocations()) == ["c1/eth0"]
    # a second interface of the same container is a second attachment
    second = cni.add("c1", path, ifname="net1")
    assert second["ips"][0]["address"] == "172.2.0.3/24"
    assert kernel_view(path, "net1")["inet"] == ["172.2.0.3/24"]


BREAKAGES = {
    "address": (["ip", "address", "del", "172.2.0.2/24", "dev", "eth0"],
                "address 172.2.0.2/24 missing on eth0"),
    "route": (["ip", "route", "del", "default"], "no default route via 172.2.0.1"),
    "mtu": (["ip", "link", "set", "eth0", "mtu", "1400"], "MTU 1400 on eth0, expected 1450"),
    "down": (["ip", "link", "set", "eth0", "down"], "eth0 is down"),
    "interface": (["ip", "link", "del", "eth0"], "eth0 is missing in"),
    "mac": (["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"],
            "eth0 has MAC 02:00:00:00:00:99, prevResult"),
}


@pytest.mark.netns
@pytest.mark.parametrize("what", sorted(BREAKAGES))
def test_check_names_what_is_broken(cni, what):
    path = cni.container("c1")
    result = cni.add("c1", path)
    argv, message = BREAKAGES[what]
    in_ns(path, argv)
    a = cni.call("CHECK", "c1", path, conf=cni.config(prevResult=result))
    assert a.code == 1 and a.doc["code"] == 102 and a.doc["cniVersion"] == "1.0.0", a
    assert message in a.doc["details"], a.doc
    assert a.stderr.strip() == f"vtep-cni: {a.doc['details']}"


@pytest.mark.netns
def test_check_sees_the_host_side_and_a_foreign_prev_result(cni):
    path = cni.container("c1")
    result = cni.add("c1", path)
    veth = result["interfaces"][1]["name"]
    cni.topo["network-1"].cmd(["ip", "link", "set", veth, "nomaster"])
    a = cni.call("CHECK", "c1", path, conf=cni.config(prevResult=result))
    assert a.doc["code"] == 102 and f"host veth {veth} is not a port of br0" in a.doc["details"]
    cni.topo["network-1"].cmd(["ip", "link", "set", veth, "master", "br0"])
    other = json.loads(json.dumps(result).replace("172.2.0.2/24", "172.2.0.9/24"))
    a = cni.call("CHECK", "c1", path, conf=cni.config(prevResult=other))
    assert a.doc["code"] == 102 and "the allocation is 172.2.0.2/24" in a.doc["details"]
    a = cni.call("CHECK", "c1", path)      # the runtime must send prevResult
    assert a.doc["code"] == 7 and "prevResult" in a.doc["details"]


@pytest.mark.netns
def test_del_succeeds_when_the_namespace_or_the_allocation_is_gone(cni):
    path = cni.container("c1")
    cni.add("c1", path)
    netns.delete(cni.prefix + "c1")        # the runtime removed the namespace first
    assert cni.call("DEL", "c1", path) == (0, None, "")
    assert cni.allocations() == {} and pods.veth_name("c1/eth0") not in cni.links()
    assert cni.call("DEL", "c1", "") == (0, None, "")    # CNI_NETNS is optional for DEL
    # a DEL for a container never added, on a node with no allocation file: success,
    # and nothing is created for it
    assert cni.call("DEL", "ghost", "", node="network-2") == (0, None, "")
    assert not (cni.state / "network-2").exists()
    # DEL needs neither the plan nor the agent: the allocation is found by its key
    path = cni.container("c2")
    cni.add("c2", path)
    a = cni.call("DEL", "c2", path, plan="/nonexistent/plan.toml")
    assert a == (0, None, ""), a
    assert cni.allocations() == {}


@pytest.mark.netns
def test_ten_concurrent_adds_get_ten_distinct_addresses(cni):
    paths = {f"c{i}": cni.container(f"c{i}") for i in range(10)}
    answers = {}

    def add(name):
        answers[name] = cni.call("ADD", name, paths[name])
    threads = [threading.Thread(target=add, args=(n,)) for n in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.code == 0 for a in answers.values()), answers
    got = {n: a.doc["ips"][0]["address"] for n, a in answers.items()}
    assert sorted(got.values(), key=lambda c: int(c.split(".")[3].split("/")[0])) == \
        [f"172.2.0.{i}/24" for i in range(2, 12)]
    for name, cidr in got.items():     # each container holds what its result says
        assert kernel_view(paths[name])["inet"] == [cidr]
    assert {k: v["ip"] + "/24" for k, v in cni.allocations().items()} == \
        {f"{n}/eth0": c for n, c in got.items()}
    threads = [threading.Thread(target=lambda n=n: cni.call("DEL", n, paths[n])) for n in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cni.allocations() == {}
    assert not [x for x in cni.links() if x.startswith("veth")]


@pytest.mark.netns
def test_vtep_pod_and_the_plugin_share_one_allocation_file(cni):
    pod = cni.prefix + "p1"
    r = subprocess.run(["nsenter", f"--net={cni.topo['network-1'].path}"] + VTEP +
                       ["pod", "add", pod, "--config", cni.plan, "--node", "network-1",
                        "--state-dir", str(cni.state / "network-1")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "172.2.0.2" in r.stdout, r.stderr
    assert cni.add("c1")["ips"][0]["address"] == "172.2.0.3/24"
    assert cni.call("DEL", "c1", "").code == 0
    assert list(cni.allocations()) == [pod]


@pytest.mark.netns
def test_containers_on_two_nodes_reach_each_other_without_nat(cni):
    p1, p2 = cni.container("c1"), cni.container("c2")
    ip1 = cni.add("c1", p1)["ips"][0]["address"].split("/")[0]
    ip2 = cni.add("c2", p2, node="network-2")["ips"][0]["address"].split("/")[0]
    assert (ip1, ip2) == ("172.2.0.2", "172.2.1.2")
    assert in_ns(p1, ["ping", "-c2", "-i0.2", "-W2", ip2]).returncode == 0
    # a TCP server in c2 reports the source address it sees: c1's own, not a node's
    server = subprocess.Popen(["nsenter", f"--net={p2}", sys.executable, "-c", ACCEPT_ONE],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        in_ns(p1, [sys.executable, "-c", CONNECT, ip2])
        assert server.stdout.readline().strip() == ip1
    finally:
        server.kill()
        server.wait()


ACCEPT_ONE = """
import socket
s = socket.socket(); s.settimeout(20); s.bind(("0.0.0.0", 7000)); s.listen(1)
print("listening", flush=True)
c, peer = s.accept(); print(peer[0], flush=True)
"""
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], 7000), timeout=10).close()"


# --- bad input: the spec's error object, and nothing left --------------------------------

BAD = {
    "no cniVersion": (dict(version=None), {}, 7, "cniVersion is missing"),
    "unknown version": (dict(version="9.9.9"), {}, 1, "cniVersion 9.9.9 is not supported"),
    "node not in plan": (dict(node_="network-9"), {}, 7, "no node named 'network-9'"),
    "no netns variable": ({}, {"CNI_NETNS": None}, 4, "CNI_NETNS"),
    "unknown key": (dict(brige="br1"), {}, 2, "unknown key 'brige'"),
    "netns path gone": ({}, {"CNI_NETNS": "/run/netns/nonexistent-vtep-test"}, 3,
                        "no such namespace"),
    "plan unreadable": (dict(plan="/nonexistent/plan.toml"), {}, 7, "/nonexistent/plan.toml"),
    "netns is a file": ({}, {"CNI_NETNS": "/etc/hostname"}, 4,
                        "/etc/hostname: not a network namespace"),
    "netns is a mount namespace": ({}, {"CNI_NETNS": "/proc/self/ns/mnt"}, 4,
                                   "not a network namespace"),
    # the node's own: a pod's setup would replace the node's default route
    "netns is the node's": ({}, {"CNI_NETNS": "/proc/self/ns/net"}, 4,
                            "this node's own network namespace"),
}


@pytest.mark.netns
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_the_specs_error_and_leaves_nothing(cni, case):
    kw, env, code, needle = BAD[case]
    kw = {("node" if k == "node_" else k): v for k, v in kw.items()}   # the config's key
    path = cni.container("c1")
    before = cni.links()
    a = cni.call("ADD", "c1", path, env=env, conf=cni.config(**kw))
    assert a.code == 1, a
    assert set(a.doc) == {"cniVersion", "code", "msg", "details"}, a.doc
    assert a.doc["code"] == code and needle in a.doc["details"], a.doc
    assert len(a.stderr.splitlines()) == 1
    assert cni.links() == before and cni.allocations() == {}
    assert kernel_view(path) == {}


@pytest.mark.netns
def test_a_full_subnet_is_an_error_and_status_says_so(cni, tmp_path):
    """A plan whose network-1 owns a /30: .0 the VTEP, .1 the gateway, .2 the only pod
    address, .3 broadcast (the underlay addresses are the seed's, so the node is found)."""
    small = tmp_path / "small.toml"
    small.write_text(Path(cni.plan).read_text().replace('"172.2.0.0/24"', '"172.2.0.0/30"'))
    assert "172.2.0.0/30" in small.read_text()
    conf = cni.config(plan=str(small), version="1.1.0")
    assert cni.call("STATUS", conf=conf) == (0, None, "")
    assert cni.add("c1", conf=conf)["ips"][0]["address"] == "172.2.0.2/30"
    path = cni.container("c2")
    before = cni.links()
    a = cni.call("ADD", "c2", path, conf=conf)
    assert a.code == 1 and a.doc["code"] == 100 and "exhausted" in a.doc["details"], a
    assert cni.links() == before and list(cni.allocations()) == ["c1/eth0"]
    assert kernel_view(path) == {}
    s = cni.call("STATUS", conf=conf)
    assert s.code == 1 and s.doc["code"] == 50 and "exhausted" in s.doc["details"]


@pytest.mark.netns
def test_an_interface_the_container_already_has_is_refused(cni):
    """Section 2: an interface of the requested name already in the container is an
    error; nothing of ours is left, and the foreign interface is untouched."""
    path = cni.container("c1")
    in_ns(path, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
    a = cni.call("ADD", "c1", path)
    assert a.code == 1 and a.doc["code"] == 101, a
    assert "eth0 already exists in" in a.doc["details"] and "is not this pod's" in a.doc["details"]
    assert cni.allocations() == {} and pods.veth_name("c1/eth0") not in cni.links()
    assert kernel_view(path) != {}


# --- versions, GC, other sources ---------------------------------------------------------

@pytest.mark.netns
def test_a_0_4_0_config_gets_a_0_4_0_result(cni):
    path = cni.container("c1")
    result = cni.add("c1", path, version="0.4.0")
    assert result["cniVersion"] == "0.4.0"
    assert result["ips"] == [{"version": "4", "address": "172.2.0.2/24",
                              "gateway": "172.2.0.1", "interface": 2}]
    assert cni.call("CHECK", "c1", path, version="0.4.0",
                    conf=cni.config(version="0.4.0", prevResult=result)).code == 0
    old = cni.call("CHECK", "c1", path, conf=cni.config(version="0.3.1", prevResult=result))
    assert old.doc["code"] == 1 and old.doc["cniVersion"] == "0.3.1"


@pytest.mark.netns
def test_gc_releases_what_the_runtime_no_longer_lists(cni):
    pa, pb = cni.container("a"), cni.container("b")
    cni.add("a", pa)
    cni.add("b", pb)
    other = cni.add("o", cni.container("o"), name="othernet")   # another network's
    conf = cni.config(version="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": "a", "ifname": "eth0"}]})
    assert cni.call("GC", "", conf=conf) == (0, None, "")
    assert sorted(cni.allocations()) == ["a/eth0", "o/eth0"]
    assert pods.veth_name("b/eth0") not in cni.links()
    assert kernel_view(pb) == {} and kernel_view(pa) != {}
    assert other["ips"][0]["address"] == "172.2.0.4/24"


@pytest.mark.netns
def test_the_running_agents_status_file_is_a_source(cni, tmp_path, plan_file):
    """No plan and no etcd in the config: the facts come from `vtep run`'s status file,
    as flannel's plugin reads flanneld's subnet file; a stopped agent is "try later"."""
    state = cni.state / "network-1"
    state.mkdir(parents=True)
    agent = Vtep(cni.topo["network-1"], "kernel", plan_file, state, "--mtu", "1400")
    conf = cni.config(plan=None, version="1.1.0")
    try:
        result = cni.add("c1", conf=conf)
        assert result["ips"][0]["address"] == "172.2.0.2/24"
        assert result["interfaces"][2]["mtu"] == 1400        # the agent's --mtu
    finally:
        assert agent.stop() == 0, agent.output()
    a = cni.call("ADD", "c2", cni.container("c2"), conf=conf)
    assert a.doc["code"] == 11 and "is `vtep run` running" in a.doc["details"], a
    assert cni.call("DEL", "c1", "", conf=conf).code == 0    # DEL still releases
    assert cni.allocations() == {}


@pytest.mark.netns
def test_the_cluster_in_etcd_is_a_source(etcd_lab, tmp_path):
    """"etcd" in the config: the node's subnet is the one it claimed in the store (the
    kernel's vxlan0 holds its first address), found by the node's underlay address."""
    t, srv = etcd_lab
    a1, a2 = pair(t, srv, tmp_path)
    prefix = t.prefix
    try:
        c = Cni(t, None, tmp_path / "cni-state", prefix)
        vtep = vtep_address(t["network-1"])
        want = f"{vtep.rsplit('.', 1)[0]}.2/24"
        conf = c.config(plan=None, etcd=srv.url)
        path = c.container("c1")
        result = c.call("ADD", "c1", path, conf=conf)
        assert result.code == 0, result
        assert result.doc["ips"][0]["address"] == want
        assert kernel_view(path)["inet"] == [want]
        assert c.call("DEL", "c1", path, conf=conf).code == 0
        bad = c.call("ADD", "c2", c.container("c2"), conf=dict(conf, etcdPrefix="/elsewhere"))
        assert bad.code == 1 and bad.doc["code"] == 7, bad
    finally:
        assert a1.stop() == 0, a1.output()
        assert a2.stop() == 0, a2.output()
        netns.sweep(prefix + "c")


# --- what a review found: scope, crashes, refusals, second interfaces -------------------

@pytest.mark.netns
def test_gc_leaves_other_nodes_allocations_in_a_shared_state_dir(cni):
    """Two nodes (namespaces of one host) share one stateDir, each with its own
    allocation file: a GC from network-1's runtime releases network-1's only."""
    shared = {"stateDir": str(cni.state / "shared")}
    cni.add("a", cni.container("a"), **shared)
    cni.add("b", cni.container("b"), node="network-2", **shared)
    conf = cni.config(version="1.1.0", **shared, **{"cni.dev/valid-attachments": []})
    assert cni.call("GC", "", conf=conf) == (0, None, "")
    files = {p.name: json.loads(p.read_text())["pods"]
             for p in (cni.state / "shared").glob("pods-*.json")}
    assert files["pods-network-1.json"] == {}
    assert list(files["pods-network-2.json"]) == ["b/eth0"]


@pytest.mark.netns
def test_a_crash_after_the_reservation_leaves_a_record_del_releases(cni):
    """kill -9 between the reservation and the setup (here: the process exits inside
    attach, after the veth exists): the address stays reserved, so no later ADD hands it
    out again, and DEL releases it and the veth."""
    path = cni.container("c1")
    crash = ("import os, sys\nfrom vtep import pods\nfrom vtep.cni import main\n"
             "real = pods.attach\n"
             "def attach(*a, **k):\n    real(*a, **k)\n    os._exit(9)\n"
             "pods.attach = attach\nsys.exit(main.main([]))\n")
    e = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS=path,
             CNI_IFNAME="eth0")
    r = subprocess.run(["nsenter", f"--net={cni.topo['network-1'].path}", sys.executable,
                        "-c", crash], input=json.dumps(cni.config()), env=e,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    assert cni.allocations()["c1/eth0"]["ip"] == "172.2.0.2"
    assert cni.add("c2")["ips"][0]["address"] == "172.2.0.3/24"   # not .2 again
    assert cni.call("DEL", "c1", path).code == 0
    assert "c1/eth0" not in cni.allocations()
    assert pods.veth_name("c1/eth0") not in cni.links()


@pytest.mark.netns
def test_a_refused_re_add_touches_nothing(cni):
    first = cni.container("c1")
    cni.add("c1", first)
    other = cni.container("c1b")
    a = cni.call("ADD", "c1", other, env={"CNI_ARGS": "IP=172.2.0.77"})
    assert a.doc["code"] == 7 and "already has 172.2.0.2" in a.doc["details"], a
    assert kernel_view(first)["inet"] == ["172.2.0.2/24"]      # still attached
    assert pods.veth_name("c1/eth0") in cni.links() and kernel_view(other) == {}
    assert cni.allocations()["c1/eth0"]["netns"] == first


@pytest.mark.netns
def test_a_state_dir_that_cannot_be_written_leaves_nothing(cni):
    state = cni.state / "network-1"
    state.mkdir(parents=True)
    (state / "pods-network-1.json").mkdir()    # the file's place is taken: no rename works
    path = cni.container("c1")
    before = cni.links()
    a = cni.call("ADD", "c1", path)
    assert a.code == 1 and a.doc["code"] in (5, 7), a
    assert cni.links() == before and kernel_view(path) == {}


@pytest.mark.netns
def test_a_second_interface_routes_the_overlay_and_leaves_the_default_route(cni):
    """A multi-network container (Multus' net1): its eth0 keeps the default route; net1
    gets the overlay's route via the gateway, and CHECK holds it to that."""
    path = cni.container("c1")
    in_ns(path, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    in_ns(path, ["ip", "address", "add", "10.9.0.5/24", "dev", "eth0"])
    in_ns(path, ["ip", "link", "set", "eth0", "up"])
    in_ns(path, ["ip", "route", "add", "default", "via", "10.9.0.1"])
    result = cni.add("c1", path, ifname="net1")
    assert result["routes"] == [{"dst": "172.2.0.0/16", "gw": "172.2.0.1"}]
    routes = json.loads(in_ns(path, ["ip", "-j", "-4", "route", "show"]).stdout)
    assert [(r["dst"], r.get("gateway"), r["dev"]) for r in routes
            if r.get("gateway")] == [("default", "10.9.0.1", "eth0"),
                                     ("172.2.0.0/16", "172.2.0.1", "net1")]
    ok = cni.call("CHECK", "c1", path, ifname="net1", conf=cni.config(prevResult=result))
    assert ok.code == 0, ok
    in_ns(path, ["ip", "route", "del", "172.2.0.0/16"])
    bad = cni.call("CHECK", "c1", path, ifname="net1", conf=cni.config(prevResult=result))
    assert "no route 172.2.0.0/16 via 172.2.0.1" in bad.doc["details"], bad


@pytest.mark.netns
def test_check_of_a_namespace_that_is_not_one_is_a_finding_not_a_crash(cni):
    path = cni.container("c1")
    result = cni.add("c1", path)
    netns.delete(cni.prefix + "c1")
    a = cni.call("CHECK", "c1", path, conf=cni.config(prevResult=result))
    assert a.doc["code"] == 102 and f"namespace {path}" in a.doc["details"], a


# --- dual stack (issue 15) -------------------------------------------------------------------
# The seed's dual-stack plan (vtep.lab.seed.plan_text(dual_stack=True)): network-1 also owns
# fd00:172:2::/64 (VTEP ::, gateway ::1, containers from ::2), network-2 fd00:172:2:1::/64;
# the whole IPv6 overlay is fd00:172:2::/48. Result documents written out by hand from the
# spec (1.0.0: no "version" in ips; 0.4.0: "version": "6" for an IPv6 address).

from test_pods_netns import http_client_seen   # noqa: E402 (the dual-stack helpers' file)


def kernel_view6(path, ifname="eth0") -> dict:
    """The container's IPv6 side as `ip -j` reports it: global addresses (with whether
    they are tentative) and the gateways of its IPv6 routes, by destination."""
    r = in_ns(path, ["ip", "-j", "-6", "address", "show", "dev", ifname], check=False)
    if r.returncode or not json.loads(r.stdout):
        return {}
    link = json.loads(r.stdout)[0]
    routes = json.loads(in_ns(path, ["ip", "-j", "-6", "route", "show", "dev", ifname]).stdout)
    return {"inet6": [(f"{a['local']}/{a['prefixlen']}", bool(a.get("tentative")))
                      for a in link["addr_info"] if a.get("scope") == "global"],
            "gateways": {r["dst"]: r["gateway"] for r in routes if r.get("gateway")}}


def dual_text(**replace) -> str:
    from vtep.lab.seed import plan_text
    text = plan_text(dual_stack=True)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.fixture
def cni6(netns_prefix, tmp_path):
    """Both nodes configured from the dual-stack plan (its iproute2 commands, IPv6 ones
    included) and forwarding IPv6 too."""
    from vtep.lab.seed import NODES
    plan = tmp_path / "plan-dual.toml"
    plan.write_text(dual_text())
    prefix = netns_prefix + "cni6-"
    with hand_configured(prefix, plan) as t:
        for name in NODES:
            t[name].cmd(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        yield Cni(t, str(plan), tmp_path / "state", prefix)


@pytest.mark.netns
def test_dual_stack_add_check_del(cni6):
    path = cni6.container("c1")
    a = cni6.call("ADD", "c1", path)
    assert a.code == 0, a
    mac = kernel_view(path)["mac"]
    assert a.doc == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "br0", "mac": a.doc["interfaces"][0]["mac"]},
                       {"name": pods.veth_name("c1/eth0"), "mac": a.doc["interfaces"][1]["mac"]},
                       {"name": "eth0", "mac": mac, "sandbox": path}],
        "ips": [{"address": "172.2.0.2/24", "gateway": "172.2.0.1", "interface": 2},
                {"address": "fd00:172:2::2/64", "gateway": "fd00:172:2::1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "172.2.0.1"},
                   {"dst": "::/0", "gw": "fd00:172:2::1"}],
    }
    assert kernel_view(path) == {"mtu": 1450, "mac": mac, "up": True,
                                 "inet": ["172.2.0.2/24"], "default": ["172.2.0.1"]}
    assert kernel_view6(path) == {"inet6": [("fd00:172:2::2/64", False)],
                                  "gateways": {"default": "fd00:172:2::1"}}
    assert cni6.allocations()["c1/eth0"]["ips"] == ["172.2.0.2", "fd00:172:2::2"]
    # usable at once (no DAD): the first packet to the gateway gets its answer
    assert in_ns(path, ["ping", "-6", "-c1", "-W2", "fd00:172:2::1"]).returncode == 0
    assert cni6.call("CHECK", "c1", path, conf=cni6.config(prevResult=a.doc)) == (0, None, "")
    # a runtime that kept prevResult in another spelling of the same address
    respelt = json.loads(json.dumps(a.doc))
    respelt["ips"][1]["address"] = "FD00:172:2:0:0:0:0:2/64"
    assert cni6.call("CHECK", "c1", path, conf=cni6.config(prevResult=respelt)) == (0, None, "")
    assert cni6.call("DEL", "c1", path) == (0, None, "")
    assert cni6.allocations() == {} and kernel_view6(path) == {}
    # both addresses are free again: the next container gets the same two
    again = cni6.add("c2")
    assert [ip["address"] for ip in again["ips"]] == ["172.2.0.2/24", "fd00:172:2::2/64"]


BREAKAGES6 = {
    "address6": (["ip", "-6", "address", "del", "fd00:172:2::2/64", "dev", "eth0"],
                 "address fd00:172:2::2/64 missing on eth0"),
    "route6": (["ip", "-6", "route", "del", "default"], "no default route via fd00:172:2::1"),
}


@pytest.mark.netns
@pytest.mark.parametrize("what", sorted(BREAKAGES6))
def test_dual_stack_check_names_what_is_broken_in_ipv6(cni6, what):
    path = cni6.container("c1")
    result = cni6.add("c1", path)
    argv, message = BREAKAGES6[what]
    in_ns(path, argv)
    a = cni6.call("CHECK", "c1", path, conf=cni6.config(prevResult=result))
    assert a.code == 1 and a.doc["code"] == 102, a
    assert message in a.doc["details"], a.doc
    assert "172.2.0" not in a.doc["details"].split(": ", 1)[1]   # IPv4 is fine: not named
    # a prevResult that lacks the IPv6 address (an IPv4-only ADD's) is a finding too
    only4 = dict(result, ips=result["ips"][:1])
    cni6.add("c1", path)   # repaired
    a = cni6.call("CHECK", "c1", path, conf=cni6.config(prevResult=only4))
    assert a.doc["code"] == 102 and "the allocation is fd00:172:2::2/64" in a.doc["details"], a


@pytest.mark.netns
def test_dual_stack_0_4_0_result_tags_each_ip_with_its_version(cni6):
    path = cni6.container("c1")
    result = cni6.add("c1", path, version="0.4.0")
    assert result["ips"] == [
        {"version": "4", "address": "172.2.0.2/24", "gateway": "172.2.0.1", "interface": 2},
        {"version": "6", "address": "fd00:172:2::2/64", "gateway": "fd00:172:2::1",
         "interface": 2}]
    assert cni6.call("CHECK", "c1", path, conf=cni6.config(version="0.4.0",
                                                           prevResult=result)).code == 0


@pytest.mark.netns
def test_dual_stack_result_has_the_reference_bridge_plugins_shape(cni6, tmp_path):
    """Debian's bridge plugin with host-local IPAM over two ranges (one per family):
    our dual-stack result carries the same keys per IP and route, in the same order of
    families (IPv4 first), as theirs."""
    theirs_path = cni6.container("ref")
    conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "cniref0",
            "isGateway": True,
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                     "dataDir": str(tmp_path / "host-local")}}
    e = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ref",
         "CNI_NETNS": theirs_path, "CNI_IFNAME": "eth0", "CNI_PATH": str(REFERENCE)}
    r = subprocess.run(["nsenter", f"--net={cni6.topo['network-1'].path}",
                        str(REFERENCE / "bridge")], input=json.dumps(conf), env=e,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    theirs = json.loads(r.stdout)
    ours = cni6.add("c1")

    def shape(doc):
        return ([(sorted(i), ":" in i["address"]) for i in doc["ips"]],
                [(sorted(x for x in i if x != "gw"), ":" in i["dst"]) for i in doc["routes"]])
    assert shape(ours) == shape(theirs)


@pytest.mark.netns
def test_dual_stack_containers_on_two_nodes_reach_each_other_without_nat(cni6):
    p1, p2 = cni6.container("c1"), cni6.container("c2")
    ip1 = cni6.add("c1", p1)["ips"][1]["address"].split("/")[0]
    ip2 = cni6.add("c2", p2, node="network-2")["ips"][1]["address"].split("/")[0]
    assert (ip1, ip2) == ("fd00:172:2::2", "fd00:172:2:1::2")
    assert in_ns(p1, ["ping", "-6", "-c2", "-i0.2", "-W2", ip2]).returncode == 0
    assert in_ns(p2, ["ping", "-c2", "-i0.2", "-W2", "172.2.0.2"]).returncode == 0
    assert http_client_seen(p2, p1, ip2) == ip1


@pytest.mark.netns
def test_dual_stack_second_interface_routes_both_overlays(cni6):
    path = cni6.container("c1")
    in_ns(path, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    result = cni6.add("c1", path, ifname="net1")
    assert result["routes"] == [{"dst": "172.2.0.0/16", "gw": "172.2.0.1"},
                                {"dst": "fd00:172:2::/48", "gw": "fd00:172:2::1"}]
    assert kernel_view6(path, "net1")["gateways"] == {"fd00:172:2::/48": "fd00:172:2::1"}
    assert cni6.call("CHECK", "c1", path, ifname="net1",
                     conf=cni6.config(prevResult=result)).code == 0


@pytest.mark.netns
def test_dual_stack_exhausted_ipv6_reserves_no_ipv4_and_status_says_so(cni6, tmp_path):
    """network-1's subnet6 a /126: ::0 the VTEP, ::1 the gateway, ::2 and ::3 for
    containers. The third ADD fails on IPv6 with IPv4 addresses to spare: it reserves
    neither (both or neither), and STATUS names the IPv6 subnet."""
    small = tmp_path / "small6.toml"
    small.write_text(dual_text(**{'"fd00:172:2::/64"': '"fd00:172:2::/126"'}))
    conf = cni6.config(plan=str(small), version="1.1.0")
    assert cni6.call("STATUS", conf=conf) == (0, None, "")
    for c in ("c1", "c2"):
        cni6.add(c, conf=conf)
    assert sorted(tuple(r["ips"]) for r in cni6.allocations().values()) == \
        [("172.2.0.2", "fd00:172:2::2"), ("172.2.0.3", "fd00:172:2::3")]
    path = cni6.container("c3")
    before = cni6.links()
    a = cni6.call("ADD", "c3", path, conf=conf)
    assert a.code == 1 and a.doc["code"] == 100, a
    assert "fd00:172:2::/126 is exhausted" in a.doc["details"]
    assert cni6.links() == before and sorted(cni6.allocations()) == ["c1/eth0", "c2/eth0"]
    assert kernel_view(path) == {}
    s = cni6.call("STATUS", conf=conf)
    assert s.code == 1 and s.doc["code"] == 50 and "fd00:172:2::/126" in s.doc["details"]
    assert cni6.call("DEL", "c1", "", conf=conf).code == 0     # DEL frees both
    assert [ip["address"] for ip in cni6.add("c3", path, conf=conf)["ips"]] == \
        ["172.2.0.2/24", "fd00:172:2::2/126"]


@pytest.mark.netns
def test_ipv6_only_plan_adds_ipv6_alone(cni6, tmp_path):
    only6 = tmp_path / "only6.toml"
    only6.write_text("\n".join(x for x in dual_text().splitlines()
                               if not x.startswith(("overlay =", "subnet ="))) + "\n")
    path = cni6.container("c1")
    result = cni6.add("c1", path, plan=str(only6))
    assert (result["ips"], result["routes"]) == (
        [{"address": "fd00:172:2::2/64", "gateway": "fd00:172:2::1", "interface": 2}],
        [{"dst": "::/0", "gw": "fd00:172:2::1"}])
    assert kernel_view(path)["inet"] == [] and kernel_view(path)["default"] == []
    assert kernel_view6(path)["inet6"] == [("fd00:172:2::2/64", False)]
    ok = cni6.call("CHECK", "c1", path, conf=cni6.config(plan=str(only6), prevResult=result))
    assert ok.code == 0, ok
    bad = cni6.call("ADD", "c2", cni6.container("c2"), plan=str(only6),
                    env={"CNI_ARGS": "IP=172.2.0.9"})
    assert bad.doc["code"] == 7 and "has no IPv4 subnet" in bad.doc["details"], bad


@pytest.mark.netns
def test_dual_stack_static_addresses_per_family(cni6):
    path = cni6.container("c1")
    a = cni6.call("ADD", "c1", path, env={"CNI_ARGS": "IP=172.2.0.40,fd00:172:2::40"})
    assert a.code == 0, a
    assert [ip["address"] for ip in a.doc["ips"]] == ["172.2.0.40/24", "fd00:172:2::40/64"]
    b = cni6.call("ADD", "c2", cni6.container("c2"),
                  conf=cni6.config(runtimeConfig={"ips": ["fd00:172:2::41/64"]}))
    assert [ip["address"] for ip in b.doc["ips"]] == ["172.2.0.2/24", "fd00:172:2::41/64"]
    taken = cni6.call("ADD", "c3", cni6.container("c3"), env={"CNI_ARGS": "IP=fd00:172:2::40"})
    assert taken.doc["code"] == 7 and "fd00:172:2::40 is already taken" in taken.doc["details"]
    assert sorted(cni6.allocations()) == ["c1/eth0", "c2/eth0"]


@pytest.mark.netns
def test_dual_stack_the_running_agents_status_file_is_a_source(cni6):
    """No plan in the config: the IPv6 facts (subnet6, gateway6, overlay6) come from the
    status file `vtep run` writes, as the IPv4 ones do."""
    state = cni6.state / "network-1"
    state.mkdir(parents=True)
    agent = Vtep(cni6.topo["network-1"], "kernel", cni6.plan, state)
    conf = cni6.config(plan=None, version="1.1.0")
    try:
        net = json.loads((state / "vxlan0.network-1.json").read_text())["network"]
        assert {k: net[k] for k in ("subnet", "gateway", "overlay", "subnet6", "gateway6",
                                    "overlay6")} == {
            "subnet": "172.2.0.0/24", "gateway": "172.2.0.1", "overlay": "172.2.0.0/16",
            "subnet6": "fd00:172:2::/64", "gateway6": "fd00:172:2::1",
            "overlay6": "fd00:172:2::/48"}
        path = cni6.container("c1")
        result = cni6.add("c1", path, conf=conf)
        assert [ip["address"] for ip in result["ips"]] == ["172.2.0.2/24", "fd00:172:2::2/64"]
        assert kernel_view6(path)["gateways"] == {"default": "fd00:172:2::1"}
        second = cni6.add("c1", path, ifname="net1", conf=conf)
        assert [r["dst"] for r in second["routes"]] == ["172.2.0.0/16", "fd00:172:2::/48"]
    finally:
        assert agent.stop() == 0, agent.output()
    assert cni6.call("DEL", "c1", "", conf=conf).code == 0
    assert cni6.call("DEL", "c1", "", ifname="net1", conf=conf).code == 0
    assert cni6.allocations() == {}
