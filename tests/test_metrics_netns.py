"""`vtep run --metrics` on the seed topology, in network namespaces.

Each agent runs in a node's namespace (seedlab.Vtep) and serves its metrics on
that node's loopback; every scrape runs in the same namespace (a short urllib
program through Node.cmd) and is parsed with prometheus-client's own parser.
The counters are compared with `vtep status --json` with traffic stopped: the
status file is republished every second, so both are read once it stopped
changing. The topology is removed in `finally` (seed.topology as a context
manager, which also ends the agents by PID). The store's series are read from an
agent that joined a real etcd (test_etcd_netns.etcd_lab: etcd in the router's
namespace, stopped by its PID); the learnt path MTU is checked against what the
node's kernel says (`ip route get`) with the router's link towards network-2
narrowed.
"""
import json
import os
import re
import signal
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vtep.etcd.gateway import DEFAULT_TIMEOUT
from vtep.lab import seed
import seedlab
from seedlab import VTEP, Vtep, one_line
from test_etcd_netns import TTL, Agent, etcd_lab  # noqa: F401 (etcd_lab: a fixture)

pytestmark = pytest.mark.netns

N1_IP, N2_IP = "192.168.1.138", "192.168.2.142"
PORT = 9470
RENEW = TTL / 3       # s: how often an --etcd agent renews its lease (a request to etcd)
ETCD_TIMEOUT = DEFAULT_TIMEOUT   # s: the etcd client's request timeout
PING = ["ping", "-n", "-c", "5", "-i", "0.2", "-W", "2"]

SCRAPE = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
"""


def scrape(node, where=f"127.0.0.1:{PORT}") -> dict:
    """{(name, frozenset(labels)): value} of the agent's /metrics, read in its namespace."""
    text = node.cmd([sys.executable, "-c", SCRAPE, f"http://{where}/metrics"]).stdout
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def L(**kw):
    return frozenset(kw.items())


def wait_for(pred, limit=10.0):
    return seedlab.wait_for(pred, limit, 0.1) is not None


def settled(v):
    """The status once two reads a republication apart agree (no traffic, no pass)."""
    seen = []

    def same():
        a = v.status()
        seedlab.time.sleep(1.2)
        b = v.status()
        seen[:] = [b]
        return (a.get("counters"), a["passes"]) == (b.get("counters"), b["passes"])
    assert wait_for(same, 15), seen
    return seen[0]


def listeners(node) -> list[str]:
    """Local addresses of the TCP sockets listening in the node's namespace."""
    out = node.cmd(["ss", "-Htln"]).stdout
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


def test_userspace_metrics_agree_with_status(netns_prefix, plan_file, tmp_path):
    with seed.topology(netns_prefix + "m1-") as t:
        n1, n2 = t["network-1"], t["network-2"]
        n1.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        v = Vtep(n2, "userspace", plan_file, tmp_path / "state", "--metrics",
                 f"127.0.0.1:{PORT}")
        # bound on the address asked, and only there
        assert listeners(n2) == [f"127.0.0.1:{PORT}"]
        r = n2.cmd([sys.executable, "-c", SCRAPE, f"http://{N2_IP}:{PORT}/metrics"],
                   check=False)
        assert r.returncode != 0 and "refused" in r.stderr, r.stderr

        r = n2.cmd(PING + ["172.2.0.0"], check=False, timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr
        st = settled(v)
        s = scrape(n2)
        c = st["counters"]
        assert s[("vtep_agent_info", L(mode="userspace", device="vxlan0", node="network-2",
                                       version="0.1.0", offloads=c["offloads"].split(":")[0]))] == 1
        assert s[("vtep_peers", L())] == 1
        for d in ("tx", "rx"):
            assert s[("vtep_packets_total", L(direction=d))] == c[d]["packets"] >= 5
            assert s[("vtep_bytes_total", L(direction=d))] == c[d]["bytes"]
            assert s[("vtep_tap_frames_total", L(direction=d))] == c[d]["frames"]
            for reason, n in c[f"{d}_drops"].items():
                assert s[("vtep_drops_total", L(direction=d, reason=reason))] == n
            peer = c["peers"][N1_IP]
            for what in ("packets", "bytes"):
                assert s[(f"vtep_peer_{what}_total", L(peer="network-1", address=N1_IP,
                                                       direction=d))] == peer[f"{d}_{what}"]
        assert s[("vtep_icmp_errors_sent_total", L(type="too-big"))] == c["icmp_too_big"]
        assert s[("vtep_passes_total", L())] == st["passes"]
        assert sum(n for (name, _), n in s.items() if name == "vtep_changes_total") \
            == st["changes"]
        assert s[("vtep_pass_duration_seconds_count", L())] == st["passes"]
        # the first pass made the TAP, the neighbour, the route and set forwarding on
        assert s[("vtep_changes_total", L(kind="neighbour"))] == 1
        assert s[("vtep_changes_total", L(kind="route"))] == 1
        assert s[("vtep_changes_total", L(kind="device"))] >= 1
        assert s[("vtep_changes_total", L(kind="fdb"))] == 0   # the fdb is the process's
        assert not any(n for (name, _), n in s.items() if name == "vtep_drift_repairs_total")

        # a reload, then a rejected one (the running plan kept)
        v.signal(signal.SIGHUP)
        assert wait_for(lambda: scrape(n2)[("vtep_plan_reloads_total", L())] == 1), v.output()
        good = plan_file.read_text()
        plan_file.write_text(good.replace("[cluster]", "[cluster]\nbogus = 1", 1))
        v.signal(signal.SIGHUP)
        assert wait_for(lambda: scrape(n2)[("vtep_plan_reloads_rejected_total", L())] == 1), \
            v.output()
        assert "keeping the current plan" in v.output()
        plan_file.write_text(good)
        s = scrape(n2)
        assert s[("vtep_plan_reloads_total", L())] == 1
        assert not any(n for (name, _), n in s.items() if name == "vtep_drift_repairs_total")

        # drift: a route deleted by hand is repaired, and counted as such
        n2.cmd(["ip", "route", "del", "172.2.0.0/24", "dev", "vxlan0"])
        assert wait_for(lambda: scrape(n2)[("vtep_drift_repairs_total", L(kind="route"))]
                        == 1), v.output()
        s = scrape(n2)
        assert s[("vtep_changes_total", L(kind="route"))] == 2
        assert s[("vtep_drift_repairs_total", L(kind="neighbour"))] == 0
        assert v.stop() == 0
        assert "Traceback" not in v.output()


def test_kernel_metrics_drift_ipv6_loopback_and_a_taken_port(netns_prefix, plan_file,
                                                             tmp_path):
    with seed.topology(netns_prefix + "m2-") as t:
        n1, n2 = t["network-1"], t["network-2"]
        state = tmp_path / "state"
        v = Vtep(n1, "kernel", plan_file, state, "--metrics", f"[::1]:{PORT}")
        assert listeners(n1) == [f"[::1]:{PORT}"]
        s = scrape(n1, f"[::1]:{PORT}")
        assert s[("vtep_agent_info", L(mode="kernel", device="vxlan0", node="network-1",
                                       version="0.1.0"))] == 1
        assert not any(name.startswith("vtep_packets") for name, _ in s)   # the kernel's
        # one peer: neighbour, fdb entry, flood entry, route
        assert s[("vtep_changes_total", L(kind="fdb"))] == 2
        assert s[("vtep_changes_total", L(kind="neighbour"))] == 1

        # drift: the peer's fdb entry deleted by hand
        mac = next(line.split()[0] for line in
                   n1.cmd(["bridge", "fdb", "show", "dev", "vxlan0"]).stdout.splitlines()
                   if N2_IP in line and not line.startswith("00:00:00:00:00:00"))
        n1.cmd(["bridge", "fdb", "del", mac, "dev", "vxlan0", "dst", N2_IP])
        assert wait_for(lambda: scrape(n1, f"[::1]:{PORT}")[
            ("vtep_drift_repairs_total", L(kind="fdb"))] == 1), v.output()
        s = scrape(n1, f"[::1]:{PORT}")
        assert s[("vtep_changes_total", L(kind="fdb"))] == 3
        assert s[("vtep_drift_repairs_total", L(kind="route"))] == 0
        st = v.status()
        assert s[("vtep_passes_total", L())] >= st["passes"]

        # the port taken (by the first agent): exit 4, one line, nothing made
        r = n1.cmd(VTEP + ["run", "--kernel", "--config", str(plan_file), "--device", "vxm",
                           "--state-dir", str(state), "--metrics", f"[::1]:{PORT}"],
                   check=False, timeout=30)
        one_line(r, 4, f"--metrics [::1]:{PORT}", "already in use")
        assert n1.cmd(["ip", "link", "show", "vxm"], check=False).returncode != 0
        assert not (state / "vxm.network-1.json").exists()
        assert v.stop() == 0
        assert listeners(n1) == []


# --- the store's series with a real etcd (tests/etcdserver.py, in the router's namespace) ----

def store_series(node) -> tuple[float, float | None]:
    """(vtep_store_up, vtep_store_last_contact_timestamp_seconds) of the node's agent."""
    s = scrape(node)
    return s[("vtep_store_up", L())], s.get(("vtep_store_last_contact_timestamp_seconds", L()))


def test_etcd_store_series_follow_the_store_and_agree_with_status(etcd_lab, tmp_path):
    """`vtep run --etcd URL --metrics`: vtep_store_up and the last contact follow etcd
    stopped (its connections closed: refused) and frozen by SIGSTOP (requests unanswered
    until the client's 5 s timeout), each time with `vtep status --json`'s etcd.reachable,
    and come back when etcd does."""
    t, srv = etcd_lab
    n1 = t["network-1"]
    a1 = Agent(n1, "kernel", srv.url, tmp_path, "--metrics", f"127.0.0.1:{PORT}")

    def reachable():
        r = n1.cmd(VTEP + ["status", "--json", "--state-dir", str(a1.state_dir)])
        (doc,) = json.loads(r.stdout)
        return doc["etcd"]["reachable"]

    def back(since: float) -> None:
        """Up again, with a contact after `since`, and the status says so too."""
        def up_since():
            up, last = store_series(n1)
            return up == 1 and last > since
        assert wait_for(up_since, RENEW + 5), \
            (store_series(n1), a1.output())
        assert wait_for(lambda: reachable() is True, 5), a1.output()
        assert store_series(n1)[0] == 1

    def away() -> float:
        """Down within the renewal period plus the client's timeout, the status agreeing;
        returns the last contact, which must then stay where it is."""
        assert wait_for(lambda: store_series(n1)[0] == 0, RENEW + ETCD_TIMEOUT + 3), \
            (store_series(n1), a1.output())
        assert wait_for(lambda: reachable() is False, 5), a1.output()
        up, frozen = store_series(n1)
        assert up == 0 and frozen is not None
        time.sleep(2 * RENEW + 0.5)   # at least two renewals' worth: none got an answer
        assert store_series(n1) == (0, frozen), a1.output()
        assert reachable() is False
        return frozen

    stopped = False
    try:
        a1.converged(0)
        up, first = store_series(n1)
        assert up == 1 and reachable() is True
        assert abs(time.time() - first) < RENEW + 2, first   # recent: renewals every TTL/3
        # it advances while etcd answers (the lease's renewals)
        assert wait_for(lambda: store_series(n1)[1] > first, RENEW + 2), a1.output()

        srv.stop()
        frozen = away()
        srv.start()
        back(frozen)

        os.kill(srv.proc.pid, signal.SIGSTOP)   # `ip netns exec` execs etcd: its PID
        stopped = True
        frozen = away()
        os.kill(srv.proc.pid, signal.SIGCONT)
        stopped = False
        back(frozen)
    finally:
        if stopped:
            os.kill(srv.proc.pid, signal.SIGCONT)   # so that srv.stop() can end it
        assert a1.stop() == 0, a1.output()


# --- the learnt path MTU on the userspace path ------------------------------------------------

def kernel_path_mtu(node, dst) -> int | None:
    """The path MTU the node's kernel learnt towards `dst`: the "mtu N" of the cache line
    `ip route get` prints while a PMTU exception exists (None: none learnt)."""
    out = node.cmd(["ip", "route", "get", dst]).stdout
    m = re.search(r"\bcache\b.*?\bmtu (\d+)", out, re.S)
    return int(m.group(1)) if m else None


def test_userspace_path_mtu_metric_is_what_the_kernel_learnt(netns_prefix, plan_file,
                                                             tmp_path):
    """The router's link towards network-2 narrowed to 1400: a full-size DF ping from
    network-1's VTEP address through its userspace VTEP is dropped at the router, which
    tells network-1's kernel "fragmentation needed, 1400"; the next frame's send fails,
    the VTEP answers the pinger with a too-big (1400 - 50) and keeps a socket whose
    IP_MTU the scrape reads: vtep_path_mtu_bytes{peer="network-2"} is the kernel's
    1400 (read independently with `ip route get`), and the ICMP counter rose, as the
    status says."""
    with seed.topology(netns_prefix + "m3-") as t:
        n1, n2 = t["network-1"], t["network-2"]
        n2.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        seed.narrow(t, 1400)
        v = Vtep(n1, "userspace", plan_file, tmp_path / "state", "--metrics",
                 f"127.0.0.1:{PORT}")
        s = scrape(n1)
        assert not any(name == "vtep_path_mtu_bytes" for name, _ in s), s   # nothing refused
        assert s[("vtep_icmp_errors_sent_total", L(type="too-big"))] == 0
        assert kernel_path_mtu(n1, N2_IP) is None

        r = n1.cmd(["ping", "-n", "-c", "4", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1422",
                    "-I", "172.2.0.0", "172.2.1.0"], check=False, timeout=20)
        assert r.returncode != 0, r.stdout   # nothing of that size gets through
        assert "mtu=1350" in r.stdout + r.stderr or "mtu = 1350" in r.stdout, \
            r.stdout + r.stderr   # the VTEP's too-big reached the pinger
        assert kernel_path_mtu(n1, N2_IP) == 1400, n1.cmd(["ip", "route", "get", N2_IP]).stdout

        st = settled(v)
        c = st["counters"]
        s = scrape(n1)
        assert s[("vtep_path_mtu_bytes", L(peer="network-2", address=N2_IP))] == 1400
        assert [k for k in s if k[0] == "vtep_path_mtu_bytes"] == \
            [("vtep_path_mtu_bytes", L(peer="network-2", address=N2_IP))]
        assert s[("vtep_icmp_errors_sent_total", L(type="too-big"))] == c["icmp_too_big"] >= 1
        assert s[("vtep_drops_total", L(direction="tx", reason="too-big"))] \
            == c["tx_drops"]["too-big"] == c["icmp_too_big"]

        # the kernel forgets what it learnt (as when the exception expires, mtu_expires:
        # 10 min): the metric follows the kernel, not a socket connected while it knew
        n1.cmd(["ip", "route", "flush", "cache"])
        assert kernel_path_mtu(n1, N2_IP) is None
        s = scrape(n1)
        assert s[("vtep_path_mtu_bytes", L(peer="network-2", address=N2_IP))] == 1500
        assert v.stop() == 0
        assert "Traceback" not in v.output()
