"""`vtep run --kernel` and `vtep down` on the seed topology, in network namespaces.

Every VTEP process runs inside a node's namespace (`ip netns exec`), every
namespace carries the run's prefix, and the topology is removed in `finally`
(seed.topology(...) as a context manager), also when an assertion fails.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vtep import plan as planlib
from vtep.lab import seed
from vtep.lab.seed import SEED_PLAN
from seedlab import Monitor, hand_configure, messages, one_line, wait_for

pytestmark = pytest.mark.netns

VTEP = [sys.executable, "-m", "vtep.cli"]
THIRD_NODE = """
[[nodes]]
name = "network-3"
underlay_ip = "192.168.3.33"
subnet = "172.2.2.0/24"
"""
REPAIR_LIMIT = 1.0   # s: the bound for repairing drift, as the daemon times it
POLL_LIMIT = 10.0    # s: how long we wait for a state to come back before calling it failed
                     # (only whether it comes back: a loaded machine may be slow to show it)


def vtep(node, *argv, check=None, timeout=30):
    """Run `vtep ARGV` inside the node's namespace; returns CompletedProcess."""
    r = node.cmd(VTEP + list(argv), check=False, timeout=timeout)
    if check is not None:
        assert r.returncode == check, f"exit {r.returncode}:\n{r.stderr}"
    return r


def js(node, *argv):
    out = node.cmd(list(argv)).stdout
    return json.loads(out) if out.strip() else []


def snapshot(node):
    """The realised state of vxlan0, with the fields that differ between two identical
    topologies (ifindex, timers, counters) left out, entry by entry."""
    links = js(node, "ip", "-d", "-j", "link", "show", "vxlan0")
    link = links[0]
    keep = ("ifname", "flags", "mtu", "address", "link_type", "operstate", "linkinfo",
            "inet6_addr_gen_mode")
    addrs = js(node, "ip", "-j", "-4", "addr", "show", "dev", "vxlan0")[0]["addr_info"]
    addrs = [{k: a[k] for k in ("family", "local", "prefixlen", "scope")} for a in addrs]
    return {"link": {k: link.get(k) for k in keep},
            "addr": addrs,
            "neigh": js(node, "ip", "-j", "neigh", "show", "dev", "vxlan0"),
            "fdb": js(node, "bridge", "-j", "fdb", "show", "dev", "vxlan0"),
            "route": js(node, "ip", "-j", "route", "show", "dev", "vxlan0"),
            "route_all": js(node, "ip", "-j", "-4", "route", "show", "table", "all",
                            "dev", "vxlan0")}


def entries(node):
    """(neighbours, fdb, routes) of vxlan0; the fdb sorted (the kernel lists it in hash
    order, which a re-added entry may change)."""
    fdb = js(node, "bridge", "-j", "fdb", "show", "dev", "vxlan0")
    return (js(node, "ip", "-j", "neigh", "show", "dev", "vxlan0"),
            sorted(fdb, key=lambda e: (e["mac"], e.get("dst", ""))),
            js(node, "ip", "-j", "route", "show", "dev", "vxlan0"))


ZEROS = "00:00:00:00:00:00"   # the vxlan driver's flood (default destination) entry


def has_vxlan0(node):
    return node.cmd(["ip", "link", "show", "vxlan0"], check=False).returncode == 0


class Daemon:
    """`vtep run --kernel` inside a node's namespace, ended by its PID."""

    def __init__(self, node, plan_file, state_dir, *extra):
        self.log = open(state_dir.parent / f"run-{node.name}.log", "w+")
        self.state_dir = state_dir
        self.status = state_dir / f"vxlan0.{node.name}.json"
        self.p = node.popen(VTEP + ["run", "--kernel", "--config", str(plan_file), "--node",
                                    node.name, "--state-dir", str(state_dir), *extra],
                            stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_for(self.ready, 10), f"never converged:\n{self.output()}"

    def ready(self):
        """The status file names this process (written after the first pass)."""
        return self.doc()["pid"] == self.p.pid

    def doc(self):
        return json.loads(self.status.read_text())

    def repair_since(self, t0, limit=POLL_LIMIT):
        """The daemon's record of its last repairing pass ({noticed, ended, changes, cause};
        CLOCK_MONOTONIC seconds, comparable with time.monotonic() here), once it is of a
        pass that ended after `t0`; None if none shows up within `limit`. (`noticed` may be
        a little before `t0`: a pass already due, for a notification of the previous
        repair, takes the drift along; the latency then counts from that earlier moment,
        which only makes it larger.)"""
        found = []

        def seen():
            rep = self.doc()["last_repair"]
            found[:] = [rep]
            return rep is not None and rep["ended"] >= t0
        return found[0] if wait_for(seen, limit) is not None else None

    def caused(self, reason, limit=POLL_LIMIT):
        """Did `reason` (a notification, as the daemon names it) schedule a pass: the last
        repairing one, or the last one? (A pass already due may repair the drift before
        the daemon reads the drift's own notification, which then schedules one more
        pass that finds nothing to do.)"""
        return wait_for(lambda: reason in self.doc()["last_repair"]["cause"]
                        or reason in self.doc()["last_cause"], limit) is not None

    def passes(self, more, limit=20.0):
        """Wait until the daemon has finished `more` passes beyond those it has now (its own
        count, in the status file): a number of resyncs, whatever the machine's speed."""
        target = self.doc()["passes"] + more
        assert wait_for(lambda: self.doc()["passes"] >= target, limit) is not None, \
            f"fewer than {more} passes in {limit:g}s:\n{self.output()}"

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def signal(self, sig):
        os.kill(self.p.pid, sig)   # `ip netns exec` execs vtep: this PID is vtep's

    def wait(self, timeout=10):
        return self.p.wait(timeout=timeout)


def seed_plan(plan_file):
    return planlib.load(plan_file)


# --- 1. the state equals the seed's iproute2 commands, entry by entry ----------------------

def test_once_equals_the_seeds_iproute2_state(netns_prefix, plan_file):
    plan = seed_plan(plan_file)
    with seed.topology(netns_prefix + "k1a-") as a, seed.topology(netns_prefix + "k1b-") as b:
        r = vtep(a["network-1"], "run", "--kernel", "--once", "--config", str(plan_file), check=0)
        assert "converged (1 peer" in r.stderr
        hand_configure(b["network-1"], plan, "network-1")
        got, want = snapshot(a["network-1"]), snapshot(b["network-1"])
        for table in want:
            assert got[table] == want[table], f"{table} differs"
        # one of each, as the seed has, and the peer's flood entry (issue 17)
        assert len(got["neigh"]) == len(got["route"]) == 1
        assert sorted((e["mac"], e["dst"], e["state"]) for e in got["fdb"]) == [
            ("00:00:00:00:00:00", "192.168.2.142", "permanent"),
            (got["neigh"][0]["lladdr"], "192.168.2.142", "permanent")]
        info = got["link"]["linkinfo"]["info_data"]
        assert (info["id"], info["local"], info["port"], info["learning"], info["link"]) == \
            (10, "192.168.1.138", 4789, False, "eth0")
        # the outer UDP checksum as the plan says (on by default), stated explicitly
        assert info["udp_csum"] is True
        # vtep adopts the hand-made state unchanged: nothing about vxlan0 to do
        r = vtep(b["network-1"], "run", "--kernel", "--once", "--config", str(plan_file),
                 check=0)
        assert not [x for x in messages(r) if "vxlan0" in x and "converged" not in x], r.stderr
        assert snapshot(b["network-1"]) == want


# --- 2. interop with a node configured by hand ----------------------------------------------

def test_interop_with_a_hand_configured_node(netns_prefix, plan_file):
    plan = seed_plan(plan_file)
    t = seed.topology(netns_prefix + "k2-")
    # a routed pod on each node: the node side of its veth holds the subnet's gateway
    for name, sub in (("network-1", "172.2.0"), ("network-2", "172.2.1")):
        pod = t.add_node(f"pod-{name[-1]}")
        t.add_link(pod, t[name], "eth0", "vpod", f"{sub}.2/24", f"{sub}.1/24")
        t.add_route(pod, "default", f"{sub}.1")
    with t:
        n1, n2 = t["network-1"], t["network-2"]
        vtep(n1, "run", "--kernel", "--once", "--config", str(plan_file), check=0)
        hand_configure(n2, plan, "network-2")
        n2.cmd(["sysctl", "-qw", "net.ipv4.ip_forward=1"])   # by hand, as vtep would
        assert n1.cmd(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
        for src, dst in ((n1, "172.2.1.0"), (n2, "172.2.0.0"),
                         (t["pod-1"], "172.2.1.2"), (t["pod-2"], "172.2.0.2")):
            r = src.cmd(["ping", "-c", "2", "-W", "2", dst], check=False)
            assert r.returncode == 0, f"{src.name} -> {dst}:\n{r.stdout}{r.stderr}"
        # the pods see each other's own addresses (routed, no NAT)
        r = t["pod-1"].cmd(["ping", "-c", "1", "-W", "2", "172.2.1.2"])
        assert "from 172.2.1.2" in r.stdout


# --- 3. idempotency ---------------------------------------------------------------------------

def test_second_once_changes_nothing(netns_prefix, plan_file):
    with seed.topology(netns_prefix + "k3-") as t:
        n1 = t["network-1"]
        r1 = vtep(n1, "run", "--kernel", "--once", "--config", str(plan_file), check=0)
        assert any(x.startswith("vtep: added route 172.2.1.0/24") for x in messages(r1))
        before = snapshot(n1)
        r2 = vtep(n1, "run", "--kernel", "--once", "--config", str(plan_file), check=0)
        assert messages(r2) == ["vtep: node network-1: vxlan0 already converged (1 peer): "
                                "nothing changed"]
        assert snapshot(n1) == before
        neigh, fdb, route = entries(n1)
        # one of each, and one flood entry per peer
        assert (len(neigh), len(fdb), len(route)) == (1, 2, 1)


# --- 4. drift repair --------------------------------------------------------------------------

def test_drift_is_repaired_within_a_second(netns_prefix, plan_file, tmp_path):
    """Every drift comes back (checked with `ip`, as long as a loaded machine needs), and
    the pass that repaired it ended within REPAIR_LIMIT of the daemon noticing it. Both
    times are the daemon's own (its status file's last_repair): polling with `ip`, several
    processes a poll, measures the poll, not the repair. --interval 60: the periodic
    resync is never what repairs it, the notification is."""
    with seed.topology(netns_prefix + "k4-") as t:
        n1 = t["network-1"]
        d = Daemon(n1, plan_file, tmp_path / "state", "--interval", "60")
        plan = seed_plan(plan_file)
        mac1, mac2 = plan.node("network-1").vtep_mac, plan.node("network-2").vtep_mac
        want = entries(n1)

        def restored():
            if not has_vxlan0(n1) or entries(n1) != want:
                return False
            link = js(n1, "ip", "-d", "-j", "link", "show", "vxlan0")[0]
            return ((link["address"], link["mtu"], link["linkinfo"]["info_data"]["learning"])
                    == (mac1, 1450, False) and "UP" in link["flags"])

        drifts = [
            ("route", ["ip", "route", "del", "172.2.1.0/24", "dev", "vxlan0"]),
            ("neigh", ["ip", "neigh", "del", "172.2.1.0", "dev", "vxlan0"]),
            ("fdb", ["bridge", "fdb", "del", mac2, "dev", "vxlan0", "dst", "192.168.2.142",
                     "self"]),
            ("flood entry", ["bridge", "fdb", "del", ZEROS, "dev", "vxlan0", "dst",
                             "192.168.2.142", "self"]),
            ("changed neigh", ["ip", "neigh", "replace", "172.2.1.0", "lladdr",
                               "02:00:00:00:00:01", "dev", "vxlan0", "nud", "permanent"]),
            ("changed route", ["ip", "route", "replace", "172.2.1.0/24", "via", "172.2.1.9",
                               "dev", "vxlan0", "onlink"]),
            ("device", ["ip", "link", "del", "vxlan0"]),
            ("device down", ["ip", "link", "set", "vxlan0", "down"]),
            ("device mtu", ["ip", "link", "set", "vxlan0", "mtu", "1400"]),
            ("device address", ["ip", "link", "set", "vxlan0", "address", "02:00:00:00:00:02"]),
            ("device learning", ["ip", "link", "set", "vxlan0", "type", "vxlan", "learning"]),
        ]
        for what, cmd in drifts:
            t0 = time.monotonic()
            n1.cmd(cmd)
            assert wait_for(restored, POLL_LIMIT) is not None, \
                f"{what}: not repaired within {POLL_LIMIT}s:\n{d.output()}"
            rep = d.repair_since(t0)
            assert rep is not None, f"{what}: no repairing pass after {t0} in {d.doc()}:\n{d.output()}"
            assert rep["cause"] != "periodic resync", (what, rep)
            if what == "route":   # the notification is what brought it back
                assert d.caused("route 172.2.1.0/24 deleted"), (d.doc(), d.output())
            took = rep["ended"] - rep["noticed"]
            assert 0 <= took <= REPAIR_LIMIT, f"{what}: repaired {took:.3f}s after noticing it"
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        out = d.output()
        assert "added route 172.2.1.0/24 via 172.2.1.0 onlink on vxlan0 (peer network-2)" in out
        assert "created vxlan0" in out and "changed vxlan0 mtu 1450 (was 1400)" in out
        assert "deleted vxlan0 to recreate it (learning: off vs on" in out
        assert "Traceback" not in out


# --- 4b. the order the kernel sees the changes in ---------------------------------------------

FOURTH_NODE = """
[[nodes]]
name = "network-4"
underlay_ip = "192.168.4.44"
subnet = "172.2.3.0/24"
"""
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29
AF_INET, AF_BRIDGE, RT_TABLE_MAIN = 2, 7, 254


NUD_FAILED = 0x20


def on_device(events, ifindex):
    """(type, family, what) of the notifications about vxlan0's neighbours, fdb remotes
    and main-table IPv4 routes, in kernel order. A neighbour's deletion is announced
    twice (neigh_del: an RTM_NEWNEIGH in state NUD_FAILED, then RTM_DELNEIGH): the first
    is left out."""
    out = []
    for e in events:
        if e.ifindex != ifindex or e.what is None:
            continue
        if e.type == RTM_NEWNEIGH and e.state == NUD_FAILED:
            continue
        if e.type in (RTM_NEWNEIGH, RTM_DELNEIGH) and e.family in (AF_INET, AF_BRIDGE):
            out.append((e.type, e.family, e.what))
        elif (e.type in (RTM_NEWROUTE, RTM_DELROUTE) and e.family == AF_INET
              and e.table == RT_TABLE_MAIN):
            out.append((e.type, e.family, e.what))
    return out


def test_changes_reach_the_kernel_neighbour_then_fdb_then_route(netns_prefix, plan_file,
                                                                tmp_path):
    """What the kernel did, in its own order (a netlink monitor in the node's namespace):
    per peer the neighbour (AF_INET), the fdb remote (AF_BRIDGE), then the route, which the
    kernel would accept first and then resolve by ARP across the tunnel; a peer leaving the
    plan loses its route before its fdb remote and neighbour."""
    three = tmp_path / "three.toml"
    three.write_text(SEED_PLAN + THIRD_NODE)
    four = tmp_path / "four.toml"   # network-2 leaves, network-4 joins
    four.write_text("[[nodes]]".join(SEED_PLAN.split("[[nodes]]")[:2]) + THIRD_NODE
                    + FOURTH_NODE)
    with seed.topology(netns_prefix + "k4b-") as t:
        n1 = t["network-1"]
        mon = Monitor(n1, tmp_path / "first.events")
        try:
            vtep(n1, "run", "--kernel", "--once", "--config", str(three), check=0)
        finally:
            mon.stop()
        idx = js(n1, "ip", "-j", "link", "show", "vxlan0")[0]["ifindex"]
        # per peer: neighbour, fdb remote, flood entry (AF_BRIDGE, the same dst), route
        assert on_device(mon.events(), idx) == [
            (RTM_NEWNEIGH, AF_INET, "172.2.1.0"), (RTM_NEWNEIGH, AF_BRIDGE, "192.168.2.142"),
            (RTM_NEWNEIGH, AF_BRIDGE, "192.168.2.142"), (RTM_NEWROUTE, AF_INET, "172.2.1.0/24"),
            (RTM_NEWNEIGH, AF_INET, "172.2.2.0"), (RTM_NEWNEIGH, AF_BRIDGE, "192.168.3.33"),
            (RTM_NEWNEIGH, AF_BRIDGE, "192.168.3.33"), (RTM_NEWROUTE, AF_INET, "172.2.2.0/24")]
        mon = Monitor(n1, tmp_path / "second.events")
        try:
            vtep(n1, "run", "--kernel", "--once", "--config", str(four), check=0)
        finally:
            mon.stop()
        assert on_device(mon.events(), idx) == [
            (RTM_DELROUTE, AF_INET, "172.2.1.0/24"), (RTM_DELNEIGH, AF_BRIDGE, "192.168.2.142"),
            (RTM_DELNEIGH, AF_BRIDGE, "192.168.2.142"), (RTM_DELNEIGH, AF_INET, "172.2.1.0"),
            (RTM_NEWNEIGH, AF_INET, "172.2.3.0"), (RTM_NEWNEIGH, AF_BRIDGE, "192.168.4.44"),
            (RTM_NEWNEIGH, AF_BRIDGE, "192.168.4.44"), (RTM_NEWROUTE, AF_INET, "172.2.3.0/24")]


# --- 5. SIGHUP: a peer added, one removed -----------------------------------------------------

def test_sighup_applies_peers_added_and_removed(netns_prefix, plan_file, tmp_path):
    with seed.topology(netns_prefix + "k5-") as t:
        n1 = t["network-1"]
        d = Daemon(n1, plan_file, tmp_path / "state")
        # network-2 leaves the plan, network-3 joins it
        text = SEED_PLAN.split("[[nodes]]")
        plan_file.write_text("[[nodes]]".join(text[:2]) + THIRD_NODE)
        mac3 = planlib.load(plan_file).node("network-3").vtep_mac
        d.signal(signal.SIGHUP)

        def followed():
            neigh, fdb, route = entries(n1)
            return ([(n["dst"], n["lladdr"]) for n in neigh] == [("172.2.2.0", mac3)]
                    and sorted((f["mac"], f["dst"]) for f in fdb) == [
                        (ZEROS, "192.168.3.33"), (mac3, "192.168.3.33")]
                    and [(r["dst"], r["gateway"]) for r in route] == [("172.2.2.0/24",
                                                                      "172.2.2.0")])
        assert wait_for(followed), f"entries did not follow the plan:\n{d.output()}"
        status = json.loads(d.status.read_text())
        assert wait_for(lambda: json.loads(d.status.read_text())["peers"] == ["network-3"])
        assert status["pid"] == d.p.pid
        # a broken plan is reported and the current one kept
        plan_file.write_text("[cluster]\nvni = 0\n")
        d.signal(signal.SIGHUP)
        assert wait_for(lambda: "keeping the current plan" in d.output())
        assert followed()
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        out = d.output()
        assert "added network-3; removed network-2" in out
        assert "removed route 172.2.1.0/24 via 172.2.1.0 from vxlan0 (not in the plan)" in out
        assert "added fdb " + mac3 + " dst 192.168.3.33 on vxlan0 (peer network-3)" in out


# --- 6. SIGTERM leaves nothing; --keep leaves it for `vtep down` ------------------------------

def test_sigterm_removes_everything(netns_prefix, plan_file, tmp_path):
    with seed.topology(netns_prefix + "k6-") as t:
        n1 = t["network-1"]
        d = Daemon(n1, plan_file, tmp_path / "state")
        assert has_vxlan0(n1)
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert not has_vxlan0(n1)
        assert not js(n1, "ip", "-j", "route", "show", "172.2.1.0/24")
        assert not [n for n in js(n1, "ip", "-j", "neigh") if n["dst"].startswith("172.2.")]
        assert not d.status.exists()
        assert "removed vxlan0" in d.output()

        d = Daemon(n1, plan_file, tmp_path / "state", "--keep")
        d.signal(signal.SIGINT)
        assert d.wait() == 0
        assert has_vxlan0(n1) and not d.status.exists()
        r = vtep(n1, "down", "--config", str(plan_file), check=0)
        assert messages(r) == ["vtep: removed vxlan0 (vni 10) and with it 1 neighbour, 1 fdb, "
                               "1 flood and 1 route entries"]
        assert not has_vxlan0(n1)
        r = vtep(n1, "down", "--config", str(plan_file), check=0)
        assert messages(r) == ["vtep: vxlan0 does not exist here: nothing to remove"]


# --- 7. kill -9, then run again ---------------------------------------------------------------

def test_after_kill_9_run_converges_without_duplicates(netns_prefix, plan_file, tmp_path):
    with seed.topology(netns_prefix + "k7-") as t:
        n1 = t["network-1"]
        sd = tmp_path / "state"
        d = Daemon(n1, plan_file, sd)
        before = snapshot(n1)
        # while it lives, `vtep down` refuses and a second run refuses
        r = vtep(n1, "down", "--config", str(plan_file), "--state-dir", str(sd), check=4)
        assert f"pid {d.p.pid}" in r.stderr
        r = vtep(n1, "run", "--kernel", "--config", str(plan_file), "--state-dir", str(sd),
                 check=4)
        assert "already manages vxlan0" in r.stderr
        d.signal(signal.SIGKILL)
        d.wait()
        assert d.status.exists() and has_vxlan0(n1)   # a crash leaves both behind
        r = vtep(n1, "run", "--kernel", "--once", "--config", str(plan_file), check=0)
        assert "nothing changed" in r.stderr
        assert snapshot(n1) == before
        # a new daemon takes over despite the dead one's status file
        d2 = Daemon(n1, plan_file, sd)
        assert json.loads(d2.status.read_text())["pid"] == d2.p.pid
        d2.signal(signal.SIGKILL)
        d2.wait()
        r = vtep(n1, "down", "--config", str(plan_file), "--state-dir", str(sd), check=0)
        assert not has_vxlan0(n1) and not d2.status.exists()


# --- 8. errors: one line, documented exit code, nothing left behind ---------------------------

def test_errors(netns_prefix, plan_file, tmp_path):
    run = ["run", "--kernel", "--once", "--config", str(plan_file)]
    with seed.topology(netns_prefix + "k8-") as t:
        n1 = t["network-1"]
        # no CAP_NET_ADMIN: every capability dropped from the bounding set
        r = n1.cmd(["setpriv", "--inh-caps=-all", "--bounding-set=-all"] + VTEP + run,
                   check=False)
        one_line(r, 3, "needs root or CAP_NET_ADMIN")
        # underlay IP not on this host
        one_line(vtep(n1, *run, "--node", "network-2"), 4, "192.168.2.142", "not an address")
        # the plan's underlay device is missing
        bad = tmp_path / "dev.toml"
        bad.write_text(SEED_PLAN.replace('subnet = "172.2.0.0/24"',
                                         'subnet = "172.2.0.0/24"\nunderlay_dev = "eth9"'))
        one_line(vtep(n1, "run", "--kernel", "--once", "--config", str(bad)), 4, "eth9")
        # MTU above what the underlay carries
        bad.write_text(SEED_PLAN.replace("port = 4789", "port = 4789\nmtu = 1480"))
        one_line(vtep(n1, "run", "--kernel", "--once", "--config", str(bad)), 2,
                 "cluster.mtu", "1480", "1450")
        assert not has_vxlan0(n1)
        # an incompatible device made by hand: --replace too leaves it alone (not vtep's)
        n1.cmd(["ip", "link", "add", "vxlan0", "type", "vxlan", "id", "42", "local",
                "192.168.1.138", "dstport", "4789", "nolearning", "dev", "eth0"])
        one_line(vtep(n1, *run), 5, "vni: 10 vs 42", "made by: vtep vs someone else",
                 "ip link del vxlan0")
        one_line(vtep(n1, "down", "--config", str(plan_file)), 5, "vni: 10 vs 42",
                 "not removing")
        one_line(vtep(n1, *run, "--replace"), 5, "made by: vtep vs someone else",
                 "ip link del vxlan0")
        assert js(n1, "ip", "-d", "-j", "link", "show", "vxlan0")[0]["linkinfo"][
            "info_data"]["id"] == 42
        # one vtep made (its alias says so), e.g. with an older plan: --replace recreates it
        n1.cmd(["ip", "link", "set", "vxlan0", "alias", "vtep:kernel:network-1"])
        r = vtep(n1, *run, "--replace", check=0)
        assert "deleted vxlan0 to recreate it (vni: 10 vs 42" in r.stderr
        info = js(n1, "ip", "-d", "-j", "link", "show", "vxlan0")[0]["linkinfo"]["info_data"]
        assert info["id"] == 10
        vtep(n1, "down", "--config", str(plan_file), check=0)
        # the port: held by another device with our VNI, or by a userspace socket
        n1.cmd(["ip", "link", "add", "vxo", "type", "vxlan", "id", "10", "dstport", "4789",
                "dev", "eth0"])
        one_line(vtep(n1, *run), 4, "UDP port 4789", "vxo")
        n1.cmd(["ip", "link", "del", "vxo"])
        holder = n1.popen([sys.executable, "-c", "import socket, time; s = socket.socket("
                           "socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 4789)); "
                           "print('bound', flush=True); time.sleep(30)"],
                          stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "bound"
            one_line(vtep(n1, *run), 4, "UDP port 4789", "in use")
            assert not has_vxlan0(n1)
        finally:
            holder.kill()
            holder.wait()
        # another VNI on the same port shares the kernel's socket: not a conflict
        n1.cmd(["ip", "link", "add", "vxo", "type", "vxlan", "id", "11", "dstport", "4789",
                "dev", "eth0"])
        n1.cmd(["ip", "link", "set", "vxo", "up"])
        vtep(n1, *run, check=0)
        assert has_vxlan0(n1)
