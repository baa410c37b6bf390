"""`vtep run --etcd`: nodes that join, leave and die, with the cluster in a real etcd.

The seed topology (two nodes behind the router); etcd runs in the router's namespace
on its address towards network-1 (192.168.1.213), started and stopped by PID
(tests/etcdserver.py) with its data in tmp_path. `vtep cluster init` writes the
cluster from a plan that has only its [cluster] table; each agent starts with the
etcd URL and its name and nothing else, registers, and gets a subnet. Every agent
runs inside its node's namespace and is ended by PID; the topology goes in `finally`.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vtep.lab import seed
from etcdserver import EtcdServer, make_certs
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


def pair(t, srv, tmp_path, modes=("kernel", "kernel")):
    """Agents on network-1 and network-2, each converged with the other as its peer.
    (Started through the nodes' popen: the topology ends them by PID if this fails.)"""
    a1 = Agent(t["network-1"], modes[0], srv.url, tmp_path)
    a2 = Agent(t["network-2"], modes[1], srv.url, tmp_path)
    a1.converged(1)
    a2.converged(1)
    return a1, a2


def cli(node, *argv, url):
    return node.cmd(VTEP + ["cluster", *argv, "--etcd", url], check=False, timeout=30)


def vtep_address(node) -> str | None:
    out = node.cmd(["ip", "-j", "-4", "addr", "show", "dev", "vxlan0"], check=False).stdout
    addrs = json.loads(out)[0]["addr_info"] if out.strip() else []
    return addrs[0]["local"] if addrs else None


def routes(node) -> list[str]:
    out = node.cmd(["ip", "-j", "route", "show", "dev", "vxlan0"], check=False).stdout
    return [r["dst"] for r in json.loads(out)] if out.strip() else []


def fdb(node) -> list[str]:
    """The remote VTEPs vxlan0's fdb sends to (`bridge fdb`: the dst of its entries)."""
    out = node.cmd(["bridge", "-j", "fdb", "show", "dev", "vxlan0"], check=False).stdout
    return sorted({e["dst"] for e in json.loads(out) if "dst" in e}) if out.strip() else []


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
    a1, a2 = pair(t, srv, tmp_path, modes)
    try:
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
    a1, a2 = pair(t, srv, tmp_path)
    try:
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
    n1 = t["network-1"]
    a1, a2 = pair(t, srv, tmp_path)
    try:
        t0 = time.monotonic()
        assert a2.stop() == 0, a2.output()
        assert wait_for(lambda: routes(n1) == [], TTL) is not None, a1.output()
        assert time.monotonic() - t0 < TTL
    finally:
        assert a1.stop() == 0, a1.output()


def test_a_removed_node_tears_down_and_exits(etcd_lab, tmp_path):
    t, srv = etcd_lab
    n1, n2 = t["network-1"], t["network-2"]
    a1, a2 = pair(t, srv, tmp_path)
    try:
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


# --- failures: the store restarted, a node cut off, compaction, a taken name, TLS ---------

ETCD_PORT = 2379


def gateway(node, url, path, body, certs=None) -> dict:
    """POST `body` to etcd's JSON gateway from inside `node`'s namespace with nothing but
    the standard library (not vtep's client: these calls are the test's reference)."""
    ctx = ("c = ssl.create_default_context(cafile=%r); c.load_cert_chain(%r, %r)"
           % (str(certs.ca), str(certs.client_cert), str(certs.client_key))
           if certs else "c = None")
    prog = ("import json, ssl, sys, urllib.request\n" + ctx + "\n"
            "r = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), "
            "method='POST', headers={'Content-Type': 'application/json'})\n"
            "print(urllib.request.urlopen(r, timeout=10, context=c).read().decode())\n")
    r = node.cmd([sys.executable, "-c", prog, url + path, json.dumps(body)], timeout=30)
    return json.loads(r.stdout)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Pinger:
    """`ping -i 0.2` in a node's namespace until stopped; stop() is (sent, received) from
    ping's own summary line."""

    def __init__(self, node, dst):
        self.p = node.popen(["ping", "-n", "-i", "0.2", dst], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def stop(self) -> tuple[int, int]:
        self.p.send_signal(signal.SIGINT)      # ping prints its statistics on SIGINT
        out, _ = self.p.communicate(timeout=10)
        line = next(x for x in out.splitlines() if "packets transmitted" in x)
        sent, got = line.split(",")[:2]
        return int(sent.split()[0]), int(got.split()[0])


def lines_with(text: str, needle: str) -> list[str]:
    return [x for x in text.splitlines() if needle in x]


# How long etcd stays down in the restart test: long enough for retries that double
# from 0.5 s unbounded to be 8 s apart when it returns (0.5, 1.5, 3.5, 7.5, 15.5 s
# after the kill). etcd restores every lease to TTL + its election timeout (1 s) when it
# restarts; an agent that then waits past that to renew has its peers drop it, and the
# pings below fail. Retrying at least every TTL/3 keeps it.
OUTAGE = 3 * TTL


def test_etcd_restarted_while_agents_run_keeps_the_data_plane(etcd_lab, tmp_path):
    t, srv = etcd_lab
    n1, n2, router = t["network-1"], t["network-2"], t["router"]
    a1, a2 = pair(t, srv, tmp_path)
    a3 = None
    try:
        ip1, ip2 = vtep_address(n1), vtep_address(n2)
        want1, want2 = routes(n1), routes(n2)
        fdb1, fdb2 = fdb(n1), fdb(n2)
        assert want1 and want2 and fdb1 == ["192.168.2.142"] and fdb2 == ["192.168.1.138"]
        pings = [Pinger(n1, ip2), Pinger(n2, ip1)]
        time.sleep(1)
        srv.kill()
        # etcd is away: every agent says so (once), and nothing is flushed meanwhile
        for a in (a1, a2):
            assert wait_for(lambda a=a: "keeping the data plane" in a.output(), 5), a.output()
        t_kill = time.monotonic()
        while time.monotonic() - t_kill < OUTAGE:
            assert (routes(n1), routes(n2), fdb(n1), fdb(n2)) == (want1, want2, fdb1, fdb2)
            time.sleep(0.5)
        srv.restart()
        for a in (a1, a2):
            assert wait_for(lambda a=a: "reachable again" in a.output(), 2 * TTL), a.output()
        # past the leases' restored TTL: an agent that did not renew in time is dropped
        # by its peer now (and the pings fail while it is)
        time.sleep(TTL + 2)
        for p in pings:
            sent, got = p.stop()
            assert sent >= 5 * (OUTAGE + TTL) and got == sent, (sent, got, a1.output(),
                                                                 a2.output())
        assert (routes(n1), routes(n2), fdb(n1), fdb(n2)) == (want1, want2, fdb1, fdb2)
        for a in (a1, a2):
            out = a.output()
            assert len(lines_with(out, "keeping the data plane")) == 1, out
            assert len(lines_with(out, "reachable again")) == 1, out
            assert not lines_with(out, "registering again"), out   # its lease lived on
            assert a.p.poll() is None, out
        # a node that joins after the restart is seen by both
        a3 = Agent(router, "kernel", srv.url, tmp_path)
        a3.converged(2)
        a1.converged(2)
        a2.converged(2)
        ip3 = vtep_address(router)
        assert ping(n1, ip3) and ping(n2, ip3) and ping(n1, ip2)
    finally:
        assert a1.stop() == 0, a1.output()
        assert a2.stop() == 0, a2.output()
        if a3 is not None:
            a3.stop()


BLACKHOLE = ["blackhole", f"{ETCD_HOST}/32"]


def test_a_node_cut_off_from_etcd_is_dropped_keeps_its_state_and_comes_back(etcd_lab,
                                                                             tmp_path):
    t, srv = etcd_lab
    n1, n2 = t["network-1"], t["network-2"]
    a1, a2 = pair(t, srv, tmp_path)
    try:
        ip1, ip2 = vtep_address(n1), vtep_address(n2)
        want1, want2, fdb2 = routes(n1), routes(n2), fdb(n2)
        n2.cmd(["ip", "route", "add", *BLACKHOLE])
        cut = time.monotonic()
        assert wait_for(lambda: routes(n1) == [], TTL + 10) is not None, a1.output()
        took = time.monotonic() - cut
        # the lease's TTL (renewed at most TTL/3 before the cut), etcd's expiry check
        # (every 500 ms), one pass; the `ip` polls are the rest of the slack
        assert took <= TTL + 2.5, f"dropped {took:.1f} s after the cut"
        assert fdb(n1) == []
        # network-2 notices (a renewal unanswered: TTL/3 + the client's 5 s timeout)
        assert wait_for(lambda: "keeping the data plane" in a2.output(), TTL / 3 + 8), \
            a2.output()
        time.sleep(max(0.0, cut + 2 * TTL + 2 - time.monotonic()))   # cut off > 2 TTL
        # ... and keeps its own state: device, address, route and fdb entry of its peer
        assert (vtep_address(n2), routes(n2), fdb(n2)) == (ip2, want2, fdb2)
        assert a2.p.poll() is None, a2.output()
        n2.cmd(["ip", "route", "del", *BLACKHOLE])
        healed = time.monotonic()
        # it retries at least every TTL/3, then registers again at once
        assert wait_for(lambda: routes(n1) == want1, TTL + 3) is not None, \
            f"network-1 never got network-2 back:\n{a1.output()}\n{a2.output()}"
        assert time.monotonic() - healed <= TTL + 3
        assert vtep_address(n2) == ip2, "network-2 came back with another subnet"
        assert fdb(n1) == ["192.168.2.142"]
        assert ping(n1, ip2) and ping(n2, ip1)
        out = a2.output()
        assert len(lines_with(out, "keeping the data plane")) == 1, out
        assert len(lines_with(out, "registering again")) == 1, out
        # it never took a list without itself for a plan (a plan without this node
        # is refused by the reconciler: "keeping the current plan")
        assert not lines_with(out, "keeping the current plan"), out
        assert not lines_with(out, "cannot converge"), out
    finally:
        n2.cmd(["ip", "route", "del", *BLACKHOLE], check=False)
        assert a1.stop() == 0, a1.output()
        assert a2.stop() == 0, a2.output()


def test_a_delete_missed_behind_a_compaction_is_applied_by_a_re_list(etcd_lab, tmp_path):
    """network-1's agent is stopped, its connections to etcd cut (ss -K: etcd drops its
    watch), network-2 removed and etcd compacted past that delete; resumed, the agent
    watches from its last revision, is told it was compacted, lists and drops
    network-2 (flannel-io/flannel#2470 looped there; etcd-io/etcd#8668)."""
    t, srv = etcd_lab
    n1, n2, router = t["network-1"], t["network-2"], t["router"]
    a1, a2 = pair(t, srv, tmp_path)
    try:
        assert routes(n1) and fdb(n1) == ["192.168.2.142"]
        a1.signal(signal.SIGSTOP)
        try:
            cut = n1.cmd(["ss", "-t", "-n", "-K", "dst", ETCD_HOST, "dport", "=",
                          f":{ETCD_PORT}"]).stdout
            assert "ESTAB" in cut, cut                 # its watch among them
            r = cli(router, "remove", "network-2", url=srv.url)
            assert r.returncode == 0, r.stderr
            rev = int(gateway(router, srv.url, "/v3/kv/range",
                              {"key": b64("/vtep/")})["header"]["revision"])
            gateway(router, srv.url, "/v3/kv/compaction",
                    {"revision": str(rev), "physical": True})
        finally:
            a1.signal(signal.SIGCONT)
        assert a2.p.wait(timeout=TTL + 10) == 0, a2.output()
        assert wait_for(lambda: routes(n1) == [] and fdb(n1) == [], 10) is not None, \
            a1.output()
        out = a1.output()
        # one list for one compaction: a watch from a compacted revision is not retried
        time.sleep(1)
        assert len(lines_with(a1.output(), "compacted")) <= 1, a1.output()
        # the watch runs again after the list: a node joining now is seen
        a2 = Agent(n2, "kernel", srv.url, tmp_path)
        a2.converged(1)
        a1.converged(1)
        assert ping(n1, vtep_address(n2)), out
    finally:
        assert a1.stop() == 0, a1.output()
        a2.stop()


def test_a_live_node_s_name_from_another_node_is_refused(etcd_lab, tmp_path):
    t, srv = etcd_lab
    n1, n2, router = t["network-1"], t["network-2"], t["router"]
    a1 = Agent(n1, "kernel", srv.url, tmp_path)
    try:
        a1.converged(0)
        leases = gateway(router, srv.url, "/v3/lease/leases", {}).get("leases", [])
        state = tmp_path / "state-impostor"
        r = n2.cmd(VTEP + ["run", "--kernel", "--etcd", srv.url, "--name", "network-1",
                           "--ttl", str(TTL), "--state-dir", str(state)], check=False,
                   timeout=30)
        one_line(r, 4, "network-1", "192.168.1.138")
        # nothing on network-2: no device, no status file; no lease left in etcd
        assert n2.cmd(["ip", "link", "show", "vxlan0"], check=False).returncode != 0
        assert not (state.exists() and list(state.iterdir()))
        assert gateway(router, srv.url, "/v3/lease/leases", {}).get("leases", []) == leases
        # network-1 is still itself, alive, and its agent unharmed
        show = json.loads(cli(n1, "show", "--json", url=srv.url).stdout)
        (me,) = show["nodes"]
        assert (me["name"], me["underlay_ip"], me["status"]) == \
            ("network-1", "192.168.1.138", "alive"), me
        assert a1.p.poll() is None and vtep_address(n1) is not None, a1.output()
    finally:
        assert a1.stop() == 0, a1.output()


class TLSEtcd(EtcdServer):
    """EtcdServer's netns health probe speaks plain urllib without certificates; with
    --client-cert-auth it must present the client's."""

    def _health(self) -> bool:
        try:
            return gateway_get_health(self) == "true"
        except (subprocess.SubprocessError, OSError, ValueError):
            return False


def gateway_get_health(srv) -> str:
    c = srv.tls
    prog = ("import json, ssl, urllib.request\n"
            f"c = ssl.create_default_context(cafile={str(c.ca)!r})\n"
            f"c.load_cert_chain({str(c.client_cert)!r}, {str(c.client_key)!r})\n"
            f"print(json.loads(urllib.request.urlopen({srv.url + '/health'!r}, timeout=1,"
            " context=c).read()).get('health'))\n")
    r = subprocess.run(["ip", "netns", "exec", srv.netns, sys.executable, "-c", prog],
                       capture_output=True, text=True, timeout=5)
    return r.stdout.strip()


def test_tls_agents_join_and_a_missing_client_certificate_is_one_line(netns_prefix,
                                                                    tmp_path):
    certs = make_certs(tmp_path / "certs", host=ETCD_HOST)
    ca = ["--etcd-cacert", str(certs.ca)]
    mine = ca + ["--etcd-cert", str(certs.client_cert), "--etcd-key", str(certs.client_key)]
    with seed.topology(netns_prefix + "e3-") as t:
        n1, n2 = t["network-1"], t["network-2"]
        srv = TLSEtcd(tmp_path / "etcd-data", host=ETCD_HOST, tls=certs,
                      netns=t["router"].ns)
        a1 = a2 = None
        try:
            srv.start()
            assert srv.url.startswith("https://")
            plan = tmp_path / "cluster.toml"
            plan.write_text(CLUSTER_ONLY)
            r = n1.cmd(VTEP + ["cluster", "init", "--etcd", srv.url, "--config", str(plan),
                               *mine], check=False, timeout=30)
            assert r.returncode == 0, r.stderr
            # the CA but no client certificate: etcd refuses the handshake
            r = n2.cmd(VTEP + ["run", "--kernel", "--etcd", srv.url, "--name", "network-2",
                               "--state-dir", str(tmp_path / "s"), *ca],
                       check=False, timeout=60)
            one_line(r, 7, f"{ETCD_HOST}:{ETCD_PORT}")
            assert n2.cmd(["ip", "link", "show", "vxlan0"], check=False).returncode != 0
            a1 = Agent(n1, "kernel", srv.url, tmp_path, *mine)
            a2 = Agent(n2, "kernel", srv.url, tmp_path, *mine)
            a1.converged(1)
            a2.converged(1)
            ip1, ip2 = vtep_address(n1), vtep_address(n2)
            assert {ip1, ip2} == {"172.2.0.0", "172.2.1.0"}, (ip1, ip2)
            assert ping(n1, ip2) and ping(n2, ip1)
        finally:
            for a in (a1, a2):
                if a is not None:
                    assert a.stop() == 0, a.output()
            srv.stop()


def test_status_says_when_etcd_is_away(etcd_lab, tmp_path):
    t, srv = etcd_lab
    n1 = t["network-1"]
    a1 = Agent(n1, "kernel", srv.url, tmp_path)

    def store():
        r = n1.cmd(VTEP + ["status", "--json", "--state-dir", str(a1.state_dir)])
        (doc,) = json.loads(r.stdout)
        return doc.get("etcd") or {}
    try:
        a1.converged(0)
        assert store().get("reachable") is True, store()
        srv.kill()
        assert wait_for(lambda: store().get("reachable") is False, TTL / 3 + 2), store()
        st = store()
        assert f"{ETCD_HOST}:{ETCD_PORT}" in st["error"] and st["unreachable_since"], st
        srv.restart()
        assert wait_for(lambda: store().get("reachable") is True, TTL + 2), store()
        assert store().get("error") is None
    finally:
        assert a1.stop() == 0, a1.output()


# --- dual stack (issue 15) -----------------------------------------------------------------

CLUSTER46_ONLY = CLUSTER_ONLY + 'overlay6 = "fd00:172:2::/48"\n'


def vtep_address6(node) -> str | None:
    """vxlan0's global IPv6 address (`ip -j -6 addr`), None when it has none."""
    out = node.cmd(["ip", "-j", "-6", "addr", "show", "dev", "vxlan0", "scope", "global"],
                   check=False).stdout
    addrs = json.loads(out)[0]["addr_info"] if out.strip() and json.loads(out) else []
    return f"{addrs[0]['local']}/{addrs[0]['prefixlen']}" if addrs else None


def routes6(node) -> list[str]:
    out = node.cmd(["ip", "-j", "-6", "route", "show", "dev", "vxlan0", "proto", "118"],
                   check=False).stdout
    return sorted(r["dst"] for r in json.loads(out)) if out.strip() else []


def neighbours6(node) -> dict:
    """vxlan0's IPv6 neighbour entries: address -> (lladdr, states) (`ip -j -6 neigh`)."""
    out = node.cmd(["ip", "-j", "-6", "neigh", "show", "dev", "vxlan0"], check=False).stdout
    return {n["dst"]: (n.get("lladdr"), tuple(n.get("state", ())))
            for n in json.loads(out)} if out.strip() else {}


def ping6(node, dst) -> bool:
    return node.cmd(["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", dst],
                    check=False, timeout=20).returncode == 0


def init(node, url, tmp_path, text, *extra):
    plan = tmp_path / "cluster.toml"
    plan.write_text(text)
    r = node.cmd(VTEP + ["cluster", "init", "--etcd", url, "--config", str(plan), *extra],
                 check=False, timeout=30)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def etcd_lab46(netns_prefix, tmp_path):
    """(topology, etcd) with a dual-stack cluster: overlay6 fd00:172:2::/48, a /64 each."""
    t = seed.topology(netns_prefix + "e6-")
    with t:
        srv = EtcdServer(tmp_path / "etcd-data", host=ETCD_HOST, netns=t["router"].ns)
        try:
            srv.start()
            init(t["network-1"], srv.url, tmp_path, CLUSTER46_ONLY)
            yield t, srv
        finally:
            srv.stop()


@pytest.mark.parametrize("modes", [("kernel", "kernel"), ("kernel", "userspace")],
                         ids=["kernel", "mixed"])
def test_two_nodes_join_a_dual_stack_cluster_and_ping_over_ipv6(etcd_lab46, tmp_path,
                                                                modes):
    t, srv = etcd_lab46
    n1, n2 = t["network-1"], t["network-2"]
    a1, a2 = pair(t, srv, tmp_path, modes)
    try:
        show = json.loads(cli(n1, "show", "--json", url=srv.url).stdout)
        got = {n["name"]: (n["subnet"], n["subnet6"]) for n in show["nodes"]}
        macs = {n["name"]: n["vtep_mac"] for n in show["nodes"]}
        # the lowest free of each family, two distinct /64s of the overlay6
        assert sorted(got.values()) == [("172.2.0.0/24", "fd00:172:2::/64"),
                                        ("172.2.1.0/24", "fd00:172:2:1::/64")], got
        s1, s2 = got["network-1"][1], got["network-2"][1]
        ip1, ip2 = s1.split("/")[0], s2.split("/")[0]
        # each device holds its /64's first address as a /128, and an onlink route to
        # the peer's /64 (as `ip -j` reports them)
        assert wait_for(lambda: (vtep_address6(n1), vtep_address6(n2)) ==
                        (f"{ip1}/128", f"{ip2}/128"), 10) is not None, \
            (vtep_address6(n1), vtep_address6(n2), a1.output())
        assert wait_for(lambda: (routes6(n1), routes6(n2)) == ([s2], [s1]), 10) is not None, \
            (routes6(n1), routes6(n2), a1.output(), a2.output())
        # a permanent neighbour entry for the peer's IPv6 VTEP address: its one MAC
        assert neighbours6(n1)[ip2] == (macs["network-2"], ("PERMANENT",)), neighbours6(n1)
        assert neighbours6(n2)[ip1] == (macs["network-1"], ("PERMANENT",)), neighbours6(n2)
        assert ping6(n1, ip2) and ping6(n2, ip1)
        assert ping(n1, vtep_address(n2)) and ping(n2, vtep_address(n1))
        # one fdb entry per peer for both families (a kernel node's: a TAP has none)
        for node, mode, peer in ((n1, modes[0], "192.168.2.142"),
                                 (n2, modes[1], "192.168.1.138")):
            assert mode != "kernel" or fdb(node) == [peer], (node.name, fdb(node))
    finally:
        assert a1.stop() == 0, a1.output()
        assert a2.stop() == 0, a2.output()
    # teardown leaves no IPv6 state behind either
    assert vtep_address6(n1) is None and routes6(n1) == []


def test_running_nodes_claim_a_subnet6_when_the_config_gains_overlay6(etcd_lab, tmp_path):
    """A v4-only cluster, two agents up; `vtep cluster init --force` adds overlay6: each
    agent claims a /64 on its own leases, keeps its IPv4 subnet (pings across it never
    stop) and its peers route IPv6 to it."""
    t, srv = etcd_lab
    n1, n2 = t["network-1"], t["network-2"]
    a1, a2 = pair(t, srv, tmp_path)
    try:
        ip1, ip2 = vtep_address(n1), vtep_address(n2)
        assert vtep_address6(n1) is None
        pinger = Pinger(n1, ip2)
        time.sleep(0.6)
        init(n1, srv.url, tmp_path, CLUSTER46_ONLY, "--force")

        got = {}

        def both():
            show = json.loads(cli(n1, "show", "--json", url=srv.url).stdout)
            got.update((n["name"], n["subnet6"]) for n in show["nodes"])
            return all(got.values())
        assert wait_for(both, 10) is not None, (got, a1.output(), a2.output())
        assert sorted(got.values()) == ["fd00:172:2:1::/64", "fd00:172:2::/64"], got
        s1, s2 = got["network-1"], got["network-2"]
        assert wait_for(lambda: (routes6(n1), routes6(n2)) == ([s2], [s1]), 10) is not None, \
            (a1.output(), a2.output())
        assert ping6(n1, s2.split("/")[0]) and ping6(n2, s1.split("/")[0])
        sent, received = pinger.stop()
        assert sent >= 3 and received == sent, (sent, received)
        assert (vtep_address(n1), vtep_address(n2)) == (ip1, ip2)
        for a in (a1, a2):
            out = a.output()
            assert "claiming a subnet6" in out and not lines_with(out, "registering again"), out
    finally:
        assert a1.stop() == 0, a1.output()
        assert a2.stop() == 0, a2.output()
