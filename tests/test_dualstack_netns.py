"""A dual-stack (and an IPv6-only) overlay on both data paths, in network namespaces.

`vtep run --kernel` and `--userspace` on the seed topology with the seed's dual-stack
plan (vtep.lab.seed.plan_text(dual_stack=True)): every node's device holds its /32 and
its /128, and per peer an IPv4 and an IPv6 permanent neighbour entry with the same MAC,
one fdb entry (kernel path) and both onlink routes. What the tests hold it to is what
iproute2 reports (`ip -j`, `bridge -j`) and what ping sees, never vtep's own reading.
Every process runs inside a node's namespace; the topology goes in `finally`.
"""
import contextlib
import json
import signal
import sys

import pytest

from vtep import plan as planlib
from vtep.lab import seed
from seedlab import Vtep, wait_for

pytestmark = pytest.mark.netns

VTEP = [sys.executable, "-m", "vtep.cli"]
POLL_LIMIT = 10.0   # s: whether a repaired entry comes back (a loaded machine is slow)


def dual_plan(tmp_path, ipv6_only=False):
    """The seed's dual-stack plan in a file; ipv6_only: without the IPv4 overlay and
    subnets (the plan allows an overlay of IPv6 alone)."""
    text = seed.plan_text(dual_stack=True)
    if ipv6_only:
        text = "\n".join(x for x in text.splitlines()
                         if not x.startswith(("overlay =", "subnet =")))
    p = tmp_path / "plan6.toml"
    p.write_text(text + "\n")
    return p


def js(node, *argv):
    out = node.cmd(list(argv)).stdout
    return json.loads(out) if out.strip() else []


def addresses(node):
    """{"ip/plen": flags} of vxlan0's addresses, both families, as `ip -j addr` has them."""
    info = js(node, "ip", "-j", "addr", "show", "dev", "vxlan0")[0]["addr_info"]
    return {f"{a['local']}/{a['prefixlen']}": a for a in info}


def neighbours(node, family):
    return {n["dst"]: n for n in js(node, "ip", family, "-j", "neigh", "show", "dev", "vxlan0")}


def routes6(node):
    return {r["dst"]: r for r in js(node, "ip", "-6", "-j", "route", "show", "dev", "vxlan0")}


def ping6(node, dst, src=None):
    argv = ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2"] + (["-I", src] if src else [])
    return node.cmd(argv + [dst], check=False, timeout=15).returncode == 0


def expect_entries(plan, t, name, kernel_fdb):
    """Node `name`'s device as the plan wants it, read by iproute2."""
    me = plan.node(name)
    peer = next(p for p in plan.nodes if p.name != name)
    node = t[name]
    addrs = addresses(node)
    want = {f"{me.vtep_ip6}/128"} | ({f"{me.vtep_ip}/32"} if me.vtep_ip else set())
    assert set(addrs) == want, addrs      # no link-local address: addr_gen_mode none
    assert addrs[f"{me.vtep_ip6}/128"].get("nodad") is True
    n6 = neighbours(node, "-6")
    assert n6 == {str(peer.vtep_ip6): {"dst": str(peer.vtep_ip6), "lladdr": peer.vtep_mac,
                                       "state": ["PERMANENT"]}}
    n4 = neighbours(node, "-4")
    if peer.vtep_ip:   # the same MAC for both families: one device, one fdb entry
        assert n4[str(peer.vtep_ip)]["lladdr"] == peer.vtep_mac
    else:
        assert n4 == {}
    r6 = routes6(node)
    r = r6[str(peer.subnet6)]
    assert (r["gateway"], r["protocol"], r["metric"], r["flags"]) == (
        str(peer.vtep_ip6), "118", 1024, ["onlink"])
    if kernel_fdb:
        fdb = [e for e in js(node, "bridge", "-j", "fdb", "show", "dev", "vxlan0")
               if e["mac"] == peer.vtep_mac]
        assert [(e["dst"], e.get("state")) for e in fdb] == [(str(peer.underlay_ip),
                                                              "permanent")]
    conf = node.cmd(["sysctl", "-n", "net.ipv6.conf.vxlan0.disable_ipv6",
                     "net.ipv6.conf.vxlan0.addr_gen_mode",
                     "net.ipv6.conf.vxlan0.accept_ra"]).stdout.split()
    assert conf == ["0", "1", "0"]


def pod_bridge(node, gateway6):
    """A bridge holding the node's IPv6 gateway address (what a pod's default route goes
    to): pod-to-pod reachability without a pod namespace."""
    node.cmd(["ip", "link", "add", "podbr", "type", "bridge"])
    node.cmd(["ip", "-6", "addr", "add", f"{gateway6}/64", "dev", "podbr", "nodad"])
    node.cmd(["ip", "link", "set", "podbr", "up"])


def leaves_nothing(node):
    """No device, no IPv6 route of ours, no neighbour entry on a vxlan0."""
    assert node.cmd(["ip", "link", "show", "vxlan0"], check=False).returncode != 0
    assert js(node, "ip", "-6", "-j", "route", "show", "proto", "118") == []
    assert js(node, "ip", "-4", "-j", "route", "show", "proto", "118") == []


PAIRS = [("kernel", "kernel"), ("userspace", "userspace"), ("kernel", "userspace")]


@contextlib.contextmanager
def agents(t, plan_file, tmp_path, modes):
    """`vtep run` on each seed node in its mode; stopped at the end, and each must have
    exited 0."""
    runs = [Vtep(t[name], mode, plan_file, tmp_path / f"st-{name}")
            for name, mode in zip(seed.NODES, modes)]
    try:
        yield runs
    finally:
        codes = [r.stop() for r in runs]
    assert codes == [0, 0], [r.output() for r in runs]


@pytest.mark.parametrize("modes", PAIRS, ids=["-".join(m) for m in PAIRS])
def test_ipv6_crosses_the_tunnel_both_ways_and_teardown_leaves_nothing(
        netns_prefix, tmp_path, modes):
    plan_file = dual_plan(tmp_path)
    plan = planlib.load(plan_file)
    with seed.topology(netns_prefix) as t:
        with agents(t, plan_file, tmp_path, modes) as runs:
            for name, mode in zip(seed.NODES, modes):
                expect_entries(plan, t, name, mode == "kernel")
            a, b = (plan.node(n) for n in seed.NODES)
            assert ping6(t[a.name], str(b.vtep_ip6)) and ping6(t[b.name], str(a.vtep_ip6))
            # IPv4 still goes, next to it
            assert t[a.name].cmd(["ping", "-c", "1", "-W", "2", str(b.vtep_ip)],
                                 check=False).returncode == 0
            for n in (a, b):
                pod_bridge(t[n.name], n.gateway6)
            assert ping6(t[a.name], str(b.gateway6), str(a.gateway6))
            assert ping6(t[b.name], str(a.gateway6), str(b.gateway6))
        for name in seed.NODES:
            leaves_nothing(t[name])


@pytest.mark.parametrize("mode", ["kernel", "userspace"])
def test_a_deleted_ipv6_neighbour_and_a_changed_ipv6_route_are_repaired(
        netns_prefix, tmp_path, mode):
    plan_file = dual_plan(tmp_path)
    plan = planlib.load(plan_file)
    a, b = (plan.node(n) for n in seed.NODES)
    with seed.topology(netns_prefix) as t:
        run = Vtep(t[a.name], mode, plan_file, tmp_path / "st", "--interval", "30")
        try:
            node = t[a.name]
            peer6, net6 = str(b.vtep_ip6), str(b.subnet6)
            # the long interval: only a netlink notification can bring these back in time
            node.cmd(["ip", "-6", "neigh", "del", peer6, "dev", "vxlan0"])
            assert wait_for(lambda: neighbours(node, "-6").get(peer6, {}).get("state")
                            == ["PERMANENT"], POLL_LIMIT) is not None, run.output()
            node.cmd(["ip", "-6", "route", "replace", net6, "via", "fd00:172:2:1::99",
                      "dev", "vxlan0", "onlink", "proto", "118"])
            assert wait_for(lambda: routes6(node).get(net6, {}).get("gateway") == peer6,
                            POLL_LIMIT) is not None, run.output()
            node.cmd(["ip", "-6", "route", "del", net6, "dev", "vxlan0"])
            assert wait_for(lambda: routes6(node).get(net6, {}).get("gateway") == peer6,
                            POLL_LIMIT) is not None, run.output()
            node.cmd(["ip", "-6", "addr", "del", f"{a.vtep_ip6}/128", "dev", "vxlan0"])
            assert wait_for(lambda: f"{a.vtep_ip6}/128" in addresses(node),
                            POLL_LIMIT) is not None, run.output()
            expect_entries(plan, t, a.name, mode == "kernel")
            out = run.output()
            for line in (f"added neigh {peer6} lladdr {b.vtep_mac} on vxlan0",
                         f"changed route {net6} via {peer6} onlink on vxlan0 (was via "
                         "fd00:172:2:1::99 onlink",
                         f"added route {net6} via {peer6} onlink on vxlan0",
                         f"added address {a.vtep_ip6}/128 on vxlan0"):
                assert line in out, out
        finally:
            assert run.stop() == 0, run.output()
        leaves_nothing(t[a.name])


@pytest.mark.parametrize("modes", [("kernel", "kernel"), ("userspace", "kernel")],
                         ids=["kernel", "userspace-kernel"])
def test_an_ipv6_only_plan(netns_prefix, tmp_path, modes):
    plan_file = dual_plan(tmp_path, ipv6_only=True)
    plan = planlib.load(plan_file)
    assert plan.node(seed.NODES[0]).vtep_ip is None
    with seed.topology(netns_prefix) as t:
        with agents(t, plan_file, tmp_path, modes) as runs:
            for name, mode in zip(seed.NODES, modes):
                expect_entries(plan, t, name, mode == "kernel")
                assert js(t[name], "ip", "-4", "-j", "route", "show", "dev", "vxlan0") == []
            a, b = (plan.node(n) for n in seed.NODES)
            assert ping6(t[a.name], str(b.vtep_ip6)) and ping6(t[b.name], str(a.vtep_ip6))
        for name in seed.NODES:
            leaves_nothing(t[name])


def test_a_device_without_ipv6_gains_it_on_sighup_and_loses_it_again(netns_prefix, tmp_path,
                                                                     plan_file):
    """A device made for an IPv4-only plan has IPv6 off (disable_ipv6 1). A plan that gains
    overlay6 turns it on in place (addr_gen_mode 1 first: no link-local address), without
    recreating the device; a plan that loses it turns it off, which drops the IPv6
    address, neighbours and routes."""
    dual = dual_plan(tmp_path)
    plan = planlib.load(dual)
    a, b = (plan.node(n) for n in seed.NODES)
    with seed.topology(netns_prefix) as t:
        with agents(t, plan_file, tmp_path, ("kernel", "kernel")) as runs:
            node = t[a.name]
            assert node.cmd(["sysctl", "-n", "net.ipv6.conf.vxlan0.disable_ipv6"]
                            ).stdout.strip() == "1"
            index = js(node, "ip", "-j", "link", "show", "vxlan0")[0]["ifindex"]
            plan_file.write_text(dual.read_text())
            for r in runs:
                r.signal(signal.SIGHUP)
            for name in seed.NODES:
                assert wait_for(lambda: neighbours(t[name], "-6"), POLL_LIMIT) is not None, \
                    "\n".join(r.output() for r in runs)
                other = next(x for x in seed.NODES if x != name)   # the route to its peer
                assert wait_for(lambda: str(plan.node(other).subnet6) in routes6(t[name]),
                                POLL_LIMIT) is not None, \
                    "\n".join(r.output() for r in runs)
                expect_entries(plan, t, name, True)
            assert js(node, "ip", "-j", "link", "show", "vxlan0")[0]["ifindex"] == index
            assert ping6(node, str(b.vtep_ip6))
            assert "turned IPv6 on on vxlan0 (addr_gen_mode 1 (was 0)" in runs[0].output()
            plan_file.write_text(seed.SEED_PLAN)
            runs[0].signal(signal.SIGHUP)
            assert wait_for(lambda: node.cmd(["sysctl", "-n",
                                              "net.ipv6.conf.vxlan0.disable_ipv6"]
                                             ).stdout.strip() == "1",
                            POLL_LIMIT) is not None, runs[0].output()
            assert js(node, "ip", "-6", "-j", "route", "show", "dev", "vxlan0") == []
            assert neighbours(node, "-6") == {}
            assert set(addresses(node)) == {f"{a.vtep_ip}/32"}


def test_vtep_plan_lines_typed_by_hand_give_what_vtep_run_makes(netns_prefix, tmp_path):
    """`vtep plan`'s ip -6 lines work when typed into a namespace, and `vtep doctor` finds
    that state the plan's (no drift), then names a deleted IPv6 neighbour; `vtep down`
    removes the device with both families' entries."""
    plan_file = dual_plan(tmp_path)
    plan = planlib.load(plan_file)
    a = plan.node(seed.NODES[0])
    with seed.topology(netns_prefix) as t:
        node = t[a.name]
        # a host whose new devices start without IPv6: the printed lines must turn it on
        node.cmd(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
        r = node.cmd(VTEP + ["plan", "--config", str(plan_file), "--node", a.name])
        lines = [x for x in r.stdout.splitlines() if x and not x.startswith("#")]
        assert any(x.startswith("ip -6 route add") for x in lines), r.stdout
        assert f"VTEP {a.vtep_ip}/32 {a.vtep_ip6}/128" in r.stdout
        for x in lines:
            node.cmd(x.split())
        expect_entries(plan, t, a.name, True)
        doc = node.cmd(VTEP + ["doctor", "--config", str(plan_file), "--node", a.name,
                               "--state-dir", str(tmp_path / "st"), "--json"], check=False)
        found = {f["id"] for f in json.loads(doc.stdout)["findings"]}
        assert {"drift.none", "device.addresses"} <= found, doc.stdout
        peer6 = str(plan.node(seed.NODES[1]).vtep_ip6)
        node.cmd(["ip", "-6", "neigh", "del", peer6, "dev", "vxlan0"])
        doc = node.cmd(VTEP + ["doctor", "--config", str(plan_file), "--node", a.name,
                               "--state-dir", str(tmp_path / "st"), "--json"], check=False)
        drift = [f for f in json.loads(doc.stdout)["findings"] if f["id"].startswith("drift.")]
        assert [f["id"] for f in drift] == ["drift.neigh-missing"], doc.stdout
        assert peer6 in drift[0]["saw"], drift
        # a router advertisement would now be taken, and a link-local address made
        node.cmd(["sysctl", "-qw", "net.ipv6.conf.vxlan0.accept_ra=2"])
        doc = node.cmd(VTEP + ["doctor", "--config", str(plan_file), "--node", a.name,
                               "--state-dir", str(tmp_path / "st"), "--json"], check=False)
        found = {f["id"]: f for f in json.loads(doc.stdout)["findings"]}
        assert found["device.ipv6-settings"]["saw"] == "vxlan0: accept_ra 2 (plan: 0)", doc.stdout
        node.cmd(["sysctl", "-qw", "net.ipv6.conf.vxlan0.accept_ra=0"])
        # the /128 gone, IPv6 off: both named (no agent runs to repair them)
        node.cmd(["ip", "-6", "addr", "del", f"{a.vtep_ip6}/128", "dev", "vxlan0"])
        doc = node.cmd(VTEP + ["doctor", "--config", str(plan_file), "--node", a.name,
                               "--state-dir", str(tmp_path / "st"), "--json"], check=False)
        found = {f["id"]: f for f in json.loads(doc.stdout)["findings"]}
        assert found["device.address-missing"]["saw"] == f"vxlan0 lacks its VTEP address " \
                                                        f"{a.vtep_ip6}/128", doc.stdout
        node.cmd(["sysctl", "-qw", "net.ipv6.conf.vxlan0.disable_ipv6=1"])
        doc = node.cmd(VTEP + ["doctor", "--config", str(plan_file), "--node", a.name,
                               "--state-dir", str(tmp_path / "st"), "--json"], check=False)
        assert "device.ipv6-off" in {f["id"] for f in json.loads(doc.stdout)["findings"]}
        # IPv6 forwarding off: the node no longer routes its IPv6 pods' packets
        node.cmd(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=0"])
        doc = node.cmd(VTEP + ["doctor", "--config", str(plan_file), "--node", a.name,
                               "--state-dir", str(tmp_path / "st"), "--json"], check=False)
        found = {f["id"]: f for f in json.loads(doc.stdout)["findings"]}
        assert found["host.forwarding"]["severity"] == "error", doc.stdout
        assert found["host.forwarding"]["saw"] == "net.ipv6.conf.all.forwarding is 0"
        down = node.cmd(VTEP + ["down", "--config", str(plan_file), "--node", a.name,
                                "--state-dir", str(tmp_path / "st")], check=False)
        assert down.returncode == 0, down.stderr
        leaves_nothing(node)


def test_vtep_down_counts_the_entries_of_both_families_and_only_ours(netns_prefix, tmp_path):
    """A dual-stack device left by a dead agent (here: typed by hand from `vtep plan`):
    `vtep down` names its two neighbours and two routes per peer, and not the kernel's
    own prefix route for the /128 (IPv4's /32 makes none in the main table)."""
    plan_file = dual_plan(tmp_path)
    a = planlib.load(plan_file).node(seed.NODES[0])
    with seed.topology(netns_prefix) as t:
        node = t[a.name]
        r = node.cmd(VTEP + ["plan", "--config", str(plan_file), "--node", a.name])
        for x in (x for x in r.stdout.splitlines() if x and not x.startswith("#")):
            node.cmd(x.split())
        kernel_routes = js(node, "ip", "-6", "-j", "route", "show", "dev", "vxlan0",
                           "proto", "kernel")
        assert [x["dst"] for x in kernel_routes] == [str(a.vtep_ip6)]   # the one not ours
        down = node.cmd(VTEP + ["down", "--config", str(plan_file), "--node", a.name,
                                "--state-dir", str(tmp_path / "st")], check=False)
        assert down.returncode == 0, down.stderr
        assert "with it 2 neighbour, 1 fdb, 1 flood and 2 route entries" in down.stderr, \
            down.stderr
        leaves_nothing(node)
