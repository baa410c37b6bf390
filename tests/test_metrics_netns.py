"""`vtep run --metrics` on the seed topology, in network namespaces.

Each agent runs in a node's namespace (seedlab.Vtep) and serves its metrics on
that node's loopback; every scrape runs in the same namespace (a short urllib
program through Node.cmd) and is parsed with prometheus-client's own parser.
The counters are compared with `vtep status --json` with traffic stopped: the
status file is republished every second, so both are read once it stopped
changing. The topology is removed in `finally` (seed.topology as a context
manager, which also ends the agents by PID).
"""
import signal
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vtep.lab import seed
import seedlab
from seedlab import VTEP, Vtep, one_line

pytestmark = pytest.mark.netns

N1_IP, N2_IP = "192.168.1.138", "192.168.2.142"
PORT = 9470
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
