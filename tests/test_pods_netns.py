"""`vtep pod add|del` on the seed topology: allocation, idempotency, the state file,
--ip, --netns PATH, errors that leave nothing behind, and pods reaching each other
across the overlay (the nodes' VTEPs configured with the seed's iproute2 commands)."""
import ipaddress
import json
import os
import subprocess
import sys
import time
from argparse import Namespace

import pytest

from seedlab import hand_configured
from vtep import netns, plan as planlib, pods
from vtep.errors import PermissionDenied


# --- without root: the allocator and the privilege check ------------------------------------

def _node(subnet):
    return planlib.Node("n", ipaddress.ip_address("192.168.1.1"),
                        ipaddress.ip_network(subnet), "02:00:00:00:00:01")


def test_allocate_skips_vtep_and_gateway_and_fills_gaps():
    n = _node("10.1.0.0/24")
    assert pods.allocate(n, {}, None, "a") == "10.1.0.2"
    assert pods.allocate(n, {"10.1.0.2": "a", "10.1.0.4": "c"}, None, "b") == "10.1.0.3"


def test_allocate_exhausted_and_bad_ip():
    n = _node("10.1.0.0/30")  # .0 VTEP, .1 gateway, .2 the only pod address, .3 broadcast
    assert pods.allocate(n, {}, None, "a") == "10.1.0.2"
    with pytest.raises(pods.SubnetExhausted, match="subnet 10.1.0.0/30 is exhausted"):
        pods.allocate(n, {"10.1.0.2": "a"}, None, "b")
    for ip, msg in (("10.1.0.0", "VTEP address"), ("10.1.0.1", "bridge gateway"),
                    ("10.1.0.3", "broadcast"), ("10.2.0.2", "outside node n's subnet"),
                    ("nope", "not an IPv4 address")):
        with pytest.raises(pods.AddressError, match=msg):
            pods.allocate(n, {}, ip, "b")
    with pytest.raises(pods.AddressError, match="already taken by pod 'a'"):
        pods.allocate(n, {"10.1.0.2": "a"}, "10.1.0.2", "b")
    assert pods.allocate(n, {"10.1.0.2": "a"}, "10.1.0.2", "a") == "10.1.0.2"


def test_not_root_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(pods.host, "has_net_admin", lambda: False)
    args = Namespace(name="p", config="x", node=None, state_dir=str(tmp_path), ip=None,
                     netns=None, bridge="br0", device="vxlan0")
    with pytest.raises(PermissionDenied, match="vtep pod add needs root or CAP_NET_ADMIN"):
        pods.add(args)
    with pytest.raises(PermissionDenied, match="vtep pod del needs root"):
        pods.delete(args)


# --- in namespaces ---------------------------------------------------------------------------

class Cluster:
    def __init__(self, topo, plan_path, state_dir, prefix):
        self.topo, self.plan, self.state_dir, self.prefix = topo, plan_path, state_dir, prefix

    def pod(self, action, name, node="network-1", *extra, via="nsenter"):
        """Run `vtep pod ACTION` on `node` as the lab does (nsenter: network namespace only)."""
        enter = (["nsenter", f"--net={self.topo[node].path}"] if via == "nsenter"
                 else ["ip", "netns", "exec", self.topo[node].ns])
        return subprocess.run(enter + [sys.executable, "-m", "vtep.cli", "pod", action, name,
                                       "--config", self.plan, "--node", node, "--state-dir",
                                       str(self.state_dir / node), *extra],
                              capture_output=True, text=True, timeout=60)

    def add(self, name, node="network-1", *extra):
        r = self.pod("add", name, node, *extra)
        assert r.returncode == 0, r.stderr
        return self.allocations(node)[name]["ip"]

    def allocations(self, node="network-1"):
        return json.loads((self.state_dir / node / f"pods-{node}.json").read_text())["pods"]

    def node_links(self, node="network-1"):
        return self.topo[node].cmd(["ip", "-br", "link"]).stdout

    def namespaces(self):
        return sorted(n for n in netns.list_namespaces() if n.startswith(self.prefix))


def in_ns(path, argv):
    return subprocess.run(["nsenter", f"--net={path}"] + argv, capture_output=True, text=True,
                          timeout=15)


@pytest.fixture
def cluster(netns_prefix, tmp_path, plan_file):
    """The seed topology with both VTEPs configured by hand (the seed's commands); the
    pod namespaces `vtep pod add` makes are swept after, not only the topology's."""
    prefix = netns_prefix + "pod-"
    with hand_configured(prefix, plan_file) as t:
        yield Cluster(t, str(plan_file), tmp_path / "state", prefix)


@pytest.mark.netns
def test_add_configures_the_pod_and_is_idempotent(cluster):
    name = cluster.prefix + "p1"
    ip = cluster.add(name)
    assert ip == "172.2.0.2"
    assert cluster.add(name) == ip  # again: same address, no duplicates
    assert list(cluster.allocations()) == [name]
    veth = pods.veth_name(name)
    assert cluster.node_links().count(veth) == 1
    br = cluster.topo["network-1"].cmd(["ip", "-4", "-o", "address", "show", "dev", "br0"]).stdout
    assert "172.2.0.1/24" in br and br.count("inet ") == 1
    master = cluster.topo["network-1"].cmd(["ip", "-o", "link", "show", veth]).stdout
    assert "master br0" in master and "mtu 1450" in master  # the overlay MTU: 1500 - 50
    path = f"/run/netns/{name}"
    addr = in_ns(path, ["ip", "-4", "-o", "address", "show", "dev", "eth0"]).stdout
    assert "inet 172.2.0.2/24" in addr and addr.count("inet ") == 1
    assert "default via 172.2.0.1 dev eth0" in in_ns(path, ["ip", "route"]).stdout
    assert "state UNKNOWN" in in_ns(path, ["ip", "link", "show", "lo"]).stdout  # lo is up
    assert in_ns(path, ["ping", "-c", "1", "-W", "1", "172.2.0.1"]).returncode == 0

    r = cluster.pod("del", name)
    assert r.returncode == 0, r.stderr
    assert "172.2.0.2 freed" in r.stdout
    assert cluster.allocations() == {}
    assert veth not in cluster.node_links()
    assert name not in cluster.namespaces()  # `add` created it, so `del` removes it
    r = cluster.pod("del", name)
    assert r.returncode == 0 and "nothing to do" in r.stderr


@pytest.mark.netns
def test_allocations_survive_in_the_state_file(cluster):
    a, b, c = (cluster.prefix + x for x in ("a", "b", "c"))
    assert [cluster.add(a), cluster.add(b)] == ["172.2.0.2", "172.2.0.3"]
    state_file = cluster.state_dir / "network-1" / "pods-network-1.json"
    before = json.loads(state_file.read_text())
    assert before["pods"][a]["ip"] == "172.2.0.2" and before["pods"][b]["created_netns"]
    assert not list(state_file.parent.glob(".*.tmp"))  # written by rename, no leftovers
    # each command is a new process: the addresses come from the file, not from memory
    assert cluster.pod("del", a).returncode == 0
    assert cluster.add(c) == "172.2.0.2"  # the freed one, lowest first
    assert cluster.add(b) == "172.2.0.3"  # b kept its address
    # a pod whose veth vanished (e.g. deleted by hand) is repaired by add, same address
    cluster.topo["network-1"].cmd(["ip", "link", "del", pods.veth_name(b)])
    assert cluster.add(b) == "172.2.0.3"
    assert in_ns(f"/run/netns/{b}", ["ping", "-c", "1", "-W", "1", "172.2.0.1"]).returncode == 0


@pytest.mark.netns
def test_requested_ip_and_its_errors_leave_nothing(cluster):
    a, b = cluster.prefix + "a", cluster.prefix + "b"
    assert cluster.add(a, "network-1", "--ip", "172.2.0.50") == "172.2.0.50"
    assert cluster.add(a, "network-1", "--ip", "172.2.0.50") == "172.2.0.50"
    for ip, msg in (("172.2.1.5", "--ip 172.2.1.5 is outside node network-1's subnet "
                                  "172.2.0.0/24"),
                    ("172.2.0.50", f"--ip 172.2.0.50 is already taken by pod '{a}'"),
                    ("172.2.0.1", "--ip 172.2.0.1 is node network-1's bridge gateway"),
                    ("172.2.0.0", "VTEP address")):
        r = cluster.pod("add", b, "network-1", "--ip", ip)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert b not in cluster.namespaces()
    assert pods.veth_name(b) not in cluster.node_links()
    assert list(cluster.allocations()) == [a]
    r = cluster.pod("add", a, "network-1", "--ip", "172.2.0.51")
    assert r.returncode == 2 and "already has 172.2.0.50" in r.stderr


@pytest.mark.netns
def test_unknown_node_and_private_mount_namespace(cluster):
    name = cluster.prefix + "x"
    r = subprocess.run([sys.executable, "-m", "vtep.cli", "pod", "add", name, "--config",
                        cluster.plan, "--node", "network-9", "--state-dir",
                        str(cluster.state_dir)], capture_output=True, text=True)
    assert r.returncode == 2 and "no node named 'network-9'" in r.stderr
    # under `ip netns exec` a namespace created by `pod add` would be invisible outside
    r = cluster.pod("add", name, via="ip netns exec")
    assert r.returncode == 2
    assert "private mount namespace" in r.stderr and "nsenter --net=" in r.stderr
    assert name not in cluster.namespaces()
    assert not os.path.exists(f"/run/netns/{name}")


@pytest.mark.netns
def test_netns_path_from_a_runtime(cluster):
    """A CNI runtime hands over /proc/PID/ns/net of the container's process."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not enter a new namespace"
            time.sleep(0.02)
        name = cluster.prefix + "cid1"
        ip = cluster.add(name, "network-1", "--netns", path)
        assert not cluster.allocations()[name]["created_netns"]
        assert name not in cluster.namespaces()  # nothing made under /run/netns
        assert f"{ip}/24" in in_ns(path, ["ip", "-4", "-o", "address", "show", "eth0"]).stdout
        assert in_ns(path, ["ping", "-c", "1", "-W", "1", "172.2.0.1"]).returncode == 0
        assert cluster.pod("del", name).returncode == 0
        assert in_ns(path, ["ip", "link", "show", "eth0"]).returncode != 0  # veth gone
        assert holder.poll() is None  # the runtime's namespace (and process) untouched
        r = cluster.pod("add", cluster.prefix + "cid2", "network-1", "--netns", "/nonexistent")
        assert r.returncode == 2 and "--netns /nonexistent: no such file or directory" in r.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.netns
def test_pods_on_both_nodes_reach_each_other(cluster):
    p1, p2 = cluster.prefix + "n1p", cluster.prefix + "n2p"
    ip1, ip2 = cluster.add(p1, "network-1"), cluster.add(p2, "network-2")
    assert (ip1, ip2) == ("172.2.0.2", "172.2.1.2")
    for src, dst in ((p1, ip2), (p2, ip1)):
        r = in_ns(f"/run/netns/{src}", ["ping", "-c", "2", "-i", "0.2", "-W", "1", dst])
        assert r.returncode == 0, r.stdout
    for node, name in (("network-1", p1), ("network-2", p2)):
        assert cluster.pod("del", name, node).returncode == 0
    assert cluster.namespaces() == sorted(cluster.topo.namespaces)


@pytest.mark.netns
def test_del_by_name_alone_finds_the_pods_node(cluster):
    """`vtep pod del NAME`, as the issue writes it: no plan; the state files say where."""
    name = cluster.prefix + "bare"
    ip = cluster.add(name, "network-2")
    state_dir = str(cluster.state_dir / "network-2")
    r = subprocess.run(["nsenter", f"--net={cluster.topo['network-2'].path}", sys.executable,
                        "-m", "vtep.cli", "pod", "del", name, "--state-dir", state_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{ip} freed" in r.stdout
    assert cluster.allocations("network-2") == {}
    assert name not in cluster.namespaces()


@pytest.mark.netns
def test_del_twice_leaves_no_stray_lock_files(cluster):
    """`vtep pod del NAME` twice: the second finds the pod recorded nowhere and exits 0
    without inventing a node (it used to lock, and leave, `pods-unknown.lock`)."""
    name = cluster.prefix + "twice"
    cluster.add(name, "network-2")
    state_dir = cluster.state_dir / "network-2"
    bare = ["nsenter", f"--net={cluster.topo['network-2'].path}", sys.executable, "-m",
            "vtep.cli", "pod", "del", name]
    outs = [subprocess.run(bare + ["--state-dir", str(state_dir)], capture_output=True,
                           text=True, timeout=60) for _ in range(2)]
    assert [r.returncode for r in outs] == [0, 0], [r.stderr for r in outs]
    assert "172.2.1.2 freed" in outs[0].stdout
    assert outs[1].stderr.strip() == f"pod {name}: not attached; nothing to do"
    # the node's own store and its lock, nothing else
    assert sorted(os.listdir(state_dir)) == ["pods-network-2.json", "pods-network-2.lock"]
    # a node named but never used under a state dir: del creates neither dir nor lock
    unused = cluster.state_dir / "unused"
    r = subprocess.run(bare + ["--node", "network-2", "--state-dir", str(unused)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr
    assert not unused.exists()
