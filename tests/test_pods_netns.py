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

from contextlib import contextmanager

from seedlab import hand_configured
from vtep import netns, plan as planlib, pods
from vtep.lab.seed import NODES as SEED_NODES
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


# --- dual stack (issue 15): an IPv6 address and default route next to the IPv4 ones ----------
# Expected values from the seed's dual-stack plan (vtep.lab.seed.plan_text(dual_stack=True)):
# network-1 owns 172.2.0.0/24 and fd00:172:2::/64, network-2 172.2.1.0/24 and
# fd00:172:2:1::/64; in each, the first address is the VTEP's, the second the bridge
# gateway's, pods from the third. The kernel's view is read with `ip -j`.

def _node6(subnet=None, subnet6="fd00:1::/64"):
    return planlib.Node("n", ipaddress.ip_address("192.168.1.1"),
                        subnet and ipaddress.ip_network(subnet), "02:00:00:00:00:01",
                        subnet6=ipaddress.ip_network(subnet6))


def test_allocate6_skips_vtep_and_gateway_fills_gaps_and_exhausts():
    n = _node6("10.1.0.0/24", "fd00:1::/126")  # ::0 VTEP, ::1 gateway, ::2 and ::3 pods
    assert pods.allocate(n, {}, None, "a", 6) == "fd00:1::2"
    assert pods.allocate(n, {"fd00:1::2": "a"}, None, "b", 6) == "fd00:1::3"
    with pytest.raises(pods.SubnetExhausted, match="subnet fd00:1::/126 is exhausted"):
        pods.allocate(n, {"fd00:1::2": "a", "fd00:1::3": "b"}, None, "c", 6)
    for ip, msg in (("fd00:1::", "VTEP address"), ("fd00:1::1", "bridge gateway"),
                    ("fd00:2::5", "outside node n's subnet fd00:1::/126"),
                    ("10.1.0.5", "not an IPv6 address")):
        with pytest.raises(pods.AddressError, match=msg):
            pods.allocate(n, {}, ip, "b", 6)
    # ::3 is an ordinary address in IPv6: there is no broadcast address to refuse
    assert pods.allocate(n, {}, "fd00:1:0:0::3", "b", 6) == "fd00:1::3"


def test_allocate_all_gives_one_per_family_ipv4_first_or_neither():
    n = _node6("10.1.0.0/30", "fd00:1::/64")
    assert pods.allocate_all(n, {}, {}, "a") == ["10.1.0.2", "fd00:1::2"]
    assert pods.allocate_all(n, {}, {6: "fd00:1::99"}, "a") == ["10.1.0.2", "fd00:1::99"]
    # an address the pod holds is kept; a family it lacks (a record older than overlay6)
    # gets the lowest free one
    assert pods.allocate_all(n, {"fd00:1::2": "x"}, {}, "a", ["10.1.0.2"]) == \
        ["10.1.0.2", "fd00:1::3"]
    # IPv4 exhausted: an error, whatever IPv6 has (the caller then records neither)
    with pytest.raises(pods.SubnetExhausted, match="10.1.0.0/30"):
        pods.allocate_all(n, {"10.1.0.2": "x"}, {}, "a")
    v6only = _node6(None, "fd00:1::/64")
    assert pods.allocate_all(v6only, {}, {}, "a") == ["fd00:1::2"]


def test_wanted_takes_one_address_per_family_of_the_plan():
    n = _node6("10.1.0.0/24", "fd00:1::/64")
    assert pods.wanted(n, "10.1.0.9,FD00:1:0::9") == {4: "10.1.0.9", 6: "fd00:1::9"}
    assert pods.wanted(n, None) == {}
    for text, msg in (("10.1.0.9,10.1.0.10", "two IPv4 addresses"),
                      ("fd00:1::9,fd00:1::a", "two IPv6 addresses"),
                      ("nope", "'nope' is not an IPv4 or IPv6 address")):
        with pytest.raises(pods.AddressError, match=msg):
            pods.wanted(n, text)
    with pytest.raises(pods.AddressError, match="node n has no IPv4 subnet"):
        pods.wanted(_node6(None), "10.1.0.9")
    with pytest.raises(pods.AddressError, match="node n has no IPv6 subnet"):
        pods.wanted(_node(("10.1.0.0/24")), "fd00:1::9")


def test_an_mtu_below_ipv6s_minimum_is_refused_with_an_ipv6_subnet():
    pods.check_mtu(_node("10.1.0.0/24"), 1000)       # IPv4 alone: 576 and up is fine
    pods.check_mtu(_node6("10.1.0.0/24"), 1280)
    with pytest.raises(pods.UsageError, match="overlay MTU 1279 is below 1280"):
        pods.check_mtu(_node6("10.1.0.0/24"), 1279)


def ip_json(path, *argv):
    r = in_ns(path, ["ip", "-j", *argv])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def kernel_addresses(path, dev="eth0"):
    """{family: [(local/prefix, flags)]} of `dev` as `ip -j` shows it, link-local left
    out; flags are the ones that say whether the address is usable now."""
    out = {}
    for a in ip_json(path, "address", "show", "dev", dev)[0]["addr_info"]:
        if a.get("scope") == "link" and a["family"] == "inet6":
            continue
        flags = sorted(k for k in ("tentative", "dadfailed", "nodad") if a.get(k))
        out.setdefault(a["family"], []).append((f"{a['local']}/{a['prefixlen']}", flags))
    return out


def gateway_routes(path):
    """[(family, dst, gateway, dev)] of the routes through a gateway, both families."""
    out = []
    for fam in ("-4", "-6"):
        for r in ip_json(path, fam, "route", "show"):
            if r.get("gateway"):
                out.append((fam, r["dst"], r["gateway"], r["dev"]))
    return out


@pytest.fixture
def dual_plan(tmp_path):
    from vtep.lab.seed import plan_text
    p = tmp_path / "plan-dual.toml"
    p.write_text(plan_text(dual_stack=True))
    return p


def ipv6_only_text():
    """The seed's dual-stack plan with its IPv4 overlay taken out (plan.py: `overlay`
    may be omitted when overlay6 is given)."""
    from vtep.lab.seed import plan_text
    lines = [x for x in plan_text(dual_stack=True).splitlines()
             if not x.startswith(("overlay =", "subnet ="))]
    return "\n".join(lines) + "\n"


@contextmanager
def dual_cluster(netns_prefix, tmp_path, plan_path, tag):
    """The seed topology configured by hand from `plan_path` (its own iproute2 commands,
    IPv6 ones included), with IPv6 forwarding on in both nodes."""
    prefix = netns_prefix + tag
    with hand_configured(prefix, plan_path) as t:
        for name in SEED_NODES:
            t[name].cmd(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        yield Cluster(t, str(plan_path), tmp_path / "state", prefix)


@pytest.fixture
def cluster6(netns_prefix, tmp_path, dual_plan):
    with dual_cluster(netns_prefix, tmp_path, dual_plan, "pd-") as c:
        yield c


@pytest.mark.netns
def test_dual_stack_pod_gets_both_families_usable_at_once(cluster6):
    name = cluster6.prefix + "p1"
    r = cluster6.pod("add", name)
    assert r.returncode == 0, r.stderr
    assert "172.2.0.2, fd00:172:2::2 via 172.2.0.1, fd00:172:2::1" in r.stdout
    rec = cluster6.allocations()[name]
    assert (rec["ip"], rec["ips"], rec["gateway"], rec["gateways"]) == \
        ("172.2.0.2", ["172.2.0.2", "fd00:172:2::2"], "172.2.0.1",
         ["172.2.0.1", "fd00:172:2::1"])
    path = f"/run/netns/{name}"
    # the pod's IPv6 address came without DAD: not tentative, usable as a source now
    assert kernel_addresses(path) == {"inet": [("172.2.0.2/24", [])],
                                      "inet6": [("fd00:172:2::2/64", ["nodad"])]}
    assert gateway_routes(path) == [("-4", "default", "172.2.0.1", "eth0"),
                                    ("-6", "default", "fd00:172:2::1", "eth0")]
    node = cluster6.topo["network-1"]
    br = json.loads(node.cmd(["ip", "-j", "address", "show", "dev", "br0"]).stdout)[0]
    assert sorted((a["local"], a["prefixlen"], bool(a.get("tentative")))
                  for a in br["addr_info"] if a.get("scope") != "link") == \
        [("172.2.0.1", 24, False), ("fd00:172:2::1", 64, False)]
    assert ip_json(path, "link", "show", "eth0")[0]["mtu"] == 1450   # one MTU, both families
    ra = in_ns(path, ["sysctl", "-n", "net.ipv6.conf.eth0.accept_ra"]).stdout.strip()
    assert ra == "0"
    # at once, no waiting: a tentative gateway or source would fail this first ping
    r = in_ns(path, ["ping", "-6", "-c", "1", "-W", "2", "fd00:172:2::1"])
    assert r.returncode == 0, r.stdout + r.stderr
    # again: the same record, nothing doubled
    assert cluster6.pod("add", name).returncode == 0
    assert cluster6.allocations()[name]["ips"] == ["172.2.0.2", "fd00:172:2::2"]
    assert len(kernel_addresses(path)["inet6"]) == 1

    r = cluster6.pod("del", name)
    assert r.returncode == 0, r.stderr
    assert "172.2.0.2, fd00:172:2::2 freed" in r.stdout
    assert cluster6.allocations() == {}
    assert pods.veth_name(name) not in cluster6.node_links()


@pytest.mark.netns
def test_dual_stack_drift_is_repaired_by_add_again(cluster6):
    name = cluster6.prefix + "drift"
    cluster6.add(name)
    path = f"/run/netns/{name}"
    in_ns(path, ["ip", "-6", "address", "del", "fd00:172:2::2/64", "dev", "eth0"])
    in_ns(path, ["ip", "-6", "address", "add", "fd00:172:2::77/64", "dev", "eth0", "nodad"])
    in_ns(path, ["ip", "-6", "route", "del", "default"])
    in_ns(path, ["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1"])
    cluster6.topo["network-1"].cmd(["ip", "-6", "address", "del", "fd00:172:2::1/64",
                                    "dev", "br0"])
    assert cluster6.add(name) == "172.2.0.2"
    assert kernel_addresses(path)["inet6"] == [("fd00:172:2::2/64", ["nodad"])]
    assert ("-6", "default", "fd00:172:2::1", "eth0") in gateway_routes(path)
    assert in_ns(path, ["ping", "-6", "-c", "1", "-W", "2", "fd00:172:2::1"]).returncode == 0
    assert in_ns(path, ["sysctl", "-n", "net.ipv6.conf.eth0.accept_ra"]).stdout.strip() == "0"
    # an MTU below 1280 takes IPv6 off the device and its addresses with it; add again
    # sets the MTU first, then the addresses
    in_ns(path, ["ip", "link", "set", "eth0", "mtu", "1200"])
    assert "inet6" not in kernel_addresses(path)
    cluster6.add(name)
    assert kernel_addresses(path)["inet6"] == [("fd00:172:2::2/64", ["nodad"])]


@pytest.mark.netns
def test_dual_stack_ip_option_and_its_errors_leave_nothing(cluster6):
    a, b = cluster6.prefix + "a", cluster6.prefix + "b"
    r = cluster6.pod("add", a, "network-1", "--ip", "172.2.0.50,fd00:172:2::50")
    assert r.returncode == 0, r.stderr
    assert cluster6.allocations()[a]["ips"] == ["172.2.0.50", "fd00:172:2::50"]
    # one family asked: the other is the lowest free
    assert cluster6.add(b, "network-1", "--ip", "fd00:172:2::7") == "172.2.0.2"
    assert cluster6.allocations()[b]["ips"] == ["172.2.0.2", "fd00:172:2::7"]
    c = cluster6.prefix + "c"
    for ip, msg in (("fd00:172:2::50", f"--ip fd00:172:2::50 is already taken by pod '{a}'"),
                    ("fd00:172:2::1", "--ip fd00:172:2::1 is node network-1's bridge gateway"),
                    ("fd00:172:2::", "--ip fd00:172:2:: is node network-1's VTEP address"),
                    ("fd00:172:2:1::5", "outside node network-1's subnet fd00:172:2::/64"),
                    ("fd00:172:2::8,fd00:172:2::9", "two IPv6 addresses"),
                    # a zone would dodge "taken" (the text differs) and give two pods one
                    # address
                    ("fd00:172:2::50%eth0", "--ip 'fd00:172:2::50%eth0' carries a zone"),
                    # IPv4 taken, IPv6 free: neither is reserved
                    ("172.2.0.50,fd00:172:2::9", "172.2.0.50 is already taken")):
        r = cluster6.pod("add", c, "network-1", "--ip", ip)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert c not in cluster6.namespaces()
    assert pods.veth_name(c) not in cluster6.node_links()
    assert sorted(cluster6.allocations()) == [a, b]
    r = cluster6.pod("add", a, "network-1", "--ip", "fd00:172:2::51")
    assert r.returncode == 2 and "already has fd00:172:2::50" in r.stderr


@pytest.mark.netns
def test_dual_stack_pods_reach_each_other_across_nodes_without_nat(cluster6):
    p1, p2 = cluster6.prefix + "x1", cluster6.prefix + "x2"
    cluster6.add(p1, "network-1")
    cluster6.add(p2, "network-2")
    ip1 = cluster6.allocations("network-1")[p1]["ips"][1]
    ip2 = cluster6.allocations("network-2")[p2]["ips"][1]
    assert (ip1, ip2) == ("fd00:172:2::2", "fd00:172:2:1::2")
    for src, dst in ((p1, ip2), (p2, ip1), (p1, "172.2.1.2")):
        r = in_ns(f"/run/netns/{src}", ["ping", "-c", "2", "-i", "0.2", "-W", "2", dst])
        assert r.returncode == 0, r.stdout + r.stderr
    # an HTTP server in p2, on ::, logs the client address its socket saw: p1's own
    assert http_client_seen(f"/run/netns/{p2}", f"/run/netns/{p1}", ip2) == ip1


def http_client_seen(server_ns, client_ns, server_ip, port=8080):
    """Start `python -m http.server --bind ::` in server_ns, GET it from client_ns with
    curl, and return the client address from the server's request log line."""
    server = subprocess.Popen(["nsenter", f"--net={server_ns}", sys.executable, "-u", "-m",
                               "http.server", "--bind", "::", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd="/tmp")
    try:
        assert "Serving HTTP on ::" in server.stdout.readline()
        r = in_ns(client_ns, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                              "--max-time", "10", f"http://[{server_ip}]:{port}/"])
        assert r.stdout == "200", r.stderr
        line = server.stderr.readline()   # `ADDRESS - - [date] "GET / HTTP/1.1" 200 -`
        assert '"GET / HTTP/1.1" 200' in line, line
        return line.split()[0]
    finally:
        server.kill()
        server.wait()


@pytest.mark.netns
def test_a_pod_added_before_overlay6_gains_ipv6_when_added_again(netns_prefix, tmp_path,
                                                                   plan_file, dual_plan):
    """The same state dir, the IPv4 plan first, then the dual-stack one (the plan gained
    overlay6): a second add keeps the IPv4 address and adds the IPv6 one."""
    with dual_cluster(netns_prefix, tmp_path, dual_plan, "pu-") as c:
        name = c.prefix + "old"
        old = Cluster(c.topo, str(plan_file), c.state_dir, c.prefix)
        assert old.add(name) == "172.2.0.2"
        assert "ips" in c.allocations()[name] and c.allocations()[name]["ips"] == ["172.2.0.2"]
        path = f"/run/netns/{name}"
        assert "inet6" not in kernel_addresses(path)
        assert c.add(name) == "172.2.0.2"
        assert c.allocations()[name]["ips"] == ["172.2.0.2", "fd00:172:2::2"]
        assert kernel_addresses(path)["inet6"] == [("fd00:172:2::2/64", ["nodad"])]
        # and back: the IPv6 address and its record go, the IPv4 one stays
        assert old.add(name) == "172.2.0.2"
        assert c.allocations()[name]["ips"] == ["172.2.0.2"]
        assert "inet6" not in kernel_addresses(path)


@pytest.mark.netns
def test_ipv6_only_plan_gives_ipv6_alone(netns_prefix, tmp_path):
    plan = tmp_path / "plan6only.toml"
    plan.write_text(ipv6_only_text())
    with dual_cluster(netns_prefix, tmp_path, plan, "p6-") as c:
        p1, p2 = c.prefix + "a", c.prefix + "b"
        assert c.add(p1, "network-1") == "fd00:172:2::2"
        assert c.add(p2, "network-2") == "fd00:172:2:1::2"
        rec = c.allocations()[p1]
        assert (rec["ips"], rec["gateway"], rec["gateways"]) == \
            (["fd00:172:2::2"], "fd00:172:2::1", ["fd00:172:2::1"])
        path = f"/run/netns/{p1}"
        assert kernel_addresses(path) == {"inet6": [("fd00:172:2::2/64", ["nodad"])]}
        assert gateway_routes(path) == [("-6", "default", "fd00:172:2::1", "eth0")]
        br = json.loads(c.topo["network-1"].cmd(["ip", "-j", "-4", "address", "show", "dev",
                                                 "br0"]).stdout)
        assert br == [] or br[0].get("addr_info") in (None, [])   # no IPv4 on the bridge
        r = in_ns(path, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "fd00:172:2:1::2"])
        assert r.returncode == 0, r.stdout + r.stderr
        r = c.pod("add", c.prefix + "x", "network-1", "--ip", "172.2.0.9")
        assert r.returncode == 2 and "node network-1 has no IPv4 subnet" in r.stderr


@pytest.mark.netns
def test_dual_stack_with_an_mtu_below_1280_is_refused_and_leaves_nothing(cluster6, tmp_path,
                                                                           dual_plan):
    """The nodes are configured from the usual dual-stack plan (a vxlan0 of MTU 1200
    would have no IPv6 at all); the pod is added from one that says mtu = 1200."""
    small = tmp_path / "plan-small.toml"
    small.write_text(dual_plan.read_text().replace("port = 4789", "port = 4789\nmtu = 1200"))
    c = Cluster(cluster6.topo, str(small), cluster6.state_dir, cluster6.prefix)
    name = c.prefix + "m"
    r = c.pod("add", name)
    assert r.returncode == 2, r.stderr
    # the plan itself refuses it now (vtep.plan: cluster.mtu below IPv6's minimum)
    assert "cluster.mtu: 1200 is below 1280, IPv6's minimum link MTU" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert name not in c.namespaces()
    assert pods.veth_name(name) not in c.node_links()
    assert not (c.state_dir / "network-1").exists()   # refused before anything was made


@pytest.mark.netns
def test_dual_stack_where_ipv6_is_off_by_default(cluster6):
    """A runtime or a node may make new devices without IPv6 (default.disable_ipv6=1):
    the kernel then refuses an IPv6 address ("IPv6 is disabled on this device"), so add
    turns it on for the bridge and the pod's interface, as the reference bridge plugin
    does, and nothing else."""
    node = cluster6.topo["network-1"]
    node.cmd(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
    name = cluster6.prefix + "off"
    netns.add(name)
    path = f"/run/netns/{name}"
    in_ns(path, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
    cluster6.add(name, "network-1", "--netns", path)
    assert kernel_addresses(path)["inet6"] == [("fd00:172:2::2/64", ["nodad"])]
    assert node.cmd(["sysctl", "-n", "net.ipv6.conf.br0.disable_ipv6"]).stdout.strip() == "0"
    assert in_ns(path, ["sysctl", "-n", "net.ipv6.conf.default.disable_ipv6"]).stdout.strip() \
        == "1"   # the namespace's default is left as it was
    assert in_ns(path, ["ping", "-6", "-c", "1", "-W", "2", "fd00:172:2::1"]).returncode == 0
