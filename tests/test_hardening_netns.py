"""Regression tests for what a hostile user broke (issue 8): a deleted TAP device, and
ownership that lived in a status file path instead of on the device.

Every agent runs inside a node's namespace of the seed topology; the topology is
removed in `finally` (seed.topology(...) as a context manager ends the processes it started)."""
import json
import os
import re
import signal
import time

import pytest

from seedlab import one_line, wait_for
from seedlab import VTEP, Vtep
from test_userspace_netns import add_pods, assert_pings
from vtep import plan as planlib
from vtep.lab import seed

pytestmark = pytest.mark.netns


REPAIR_LIMIT = 1.0   # s: the kernel path's bound for repairing drift (test_kernel_netns)


def status(v):
    """The agent's status file (read directly: no process per poll)."""
    return json.loads(v.status_path.read_text())


def link(node, dev="vxlan0"):
    """`ip -d -j link show DEV` as a dict, or None when there is no such device."""
    r = node.cmd(["ip", "-d", "-j", "link", "show", dev], check=False)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


# --- defect 1: the userspace TAP device deleted under the agent ------------------------

def test_a_deleted_tap_device_is_recreated_with_its_entries(netns_prefix, plan_file,
                                                            tmp_path):
    plan = planlib.load(plan_file)
    t = seed.topology(netns_prefix + "h1-")
    add_pods(t)
    with t:
        n1, n2 = t["network-1"], t["network-2"]
        n1.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        v = Vtep(n2, "userspace", plan_file, tmp_path / "state")
        assert_pings((t["pod-1"], "172.2.1.2"))
        before, changes = link(n2), v.status()["changes"]
        t0 = time.monotonic()
        n2.cmd(["ip", "link", "del", "vxlan0"])
        # back as a new TAP with the node's MAC, address, neighbour and route; the agent
        # never stopped
        assert wait_for(lambda: (link(n2) or {}).get("ifindex", before["ifindex"])
                        != before["ifindex"], 10), v.output()
        assert wait_for(lambda: "172.2.0.0/24" in n2.cmd(
            ["ip", "route", "show", "dev", "vxlan0"]).stdout, 10), v.output()
        # ...within the kernel path's repair time, as the agent itself timed the pass (its
        # status file: from noticing the loss to the end of the pass that recreated it)
        assert wait_for(lambda: (status(v)["last_repair"] or {}).get("ended", 0) >= t0, 10)
        rep = status(v)["last_repair"]
        assert rep["ended"] - rep["noticed"] <= REPAIR_LIMIT, rep
        now = link(n2)
        assert now["linkinfo"]["info_kind"] == "tun" and now["address"] == before["address"]
        assert now["mtu"] == 1450 and now["ifalias"] == "vtep:userspace:network-2"
        addr = n2.cmd(["ip", "-4", "-o", "addr", "show", "dev", "vxlan0"]).stdout
        assert "172.2.1.0/32" in addr, addr
        neigh = n2.cmd(["ip", "neigh", "show", "dev", "vxlan0"]).stdout
        assert plan.node("network-1").vtep_mac in neigh and "PERMANENT" in neigh, neigh
        assert_pings((t["pod-1"], "172.2.1.2"), (t["pod-2"], "172.2.0.2"))
        assert v.p.poll() is None, v.output()
        # counted as a repair, like any other drift: the TAP, address, neighbour, route
        assert wait_for(lambda: v.status()["changes"] >= changes + 4, 10), v.status()
        assert v.stop() == 0
        out = v.output()
        assert "internal error" not in out and "Traceback" not in out, out
        assert re.search(r"vxlan0: 4 changes after: .*(device lost|link deleted)", out), out


def test_a_foreign_device_in_the_tap_s_place_is_left_alone(netns_prefix, plan_file, tmp_path):
    with seed.topology(netns_prefix + "h2-") as t:
        n2 = t["network-2"]
        v = Vtep(n2, "userspace", plan_file, tmp_path / "state")
        # the agent stopped while its TAP is replaced by a veth of the same name (it would
        # otherwise recreate the TAP within milliseconds, before anyone else could)
        v.signal(signal.SIGSTOP)
        try:
            n2.cmd(["ip", "link", "del", "vxlan0"])
            n2.cmd(["ip", "link", "add", "vxlan0", "type", "veth", "peer", "name", "vxp"])
        finally:
            v.signal(signal.SIGCONT)
        assert wait_for(lambda: "made by: vtep vs someone else" in v.output(), 10), v.output()
        assert link(n2)["linkinfo"]["info_kind"] == "veth"   # never removed
        assert v.p.poll() is None
        # once it is gone, the agent's TAP is back
        n2.cmd(["ip", "link", "del", "vxlan0"])
        assert wait_for(lambda: (link(n2) or {}).get("linkinfo", {}).get("info_kind") == "tun",
                        10), v.output()
        assert v.stop() == 0
        out = v.output()
        assert out.count("made by: vtep vs someone else") == 1, out   # said once, not per retry
        assert "converges again" in out and "Traceback" not in out, out


# --- defect 4: ownership on the device, whatever the state dir -------------------------

def test_a_live_agent_owns_its_device_whatever_the_state_dir(netns_prefix, plan_file,
                                                              tmp_path):
    with seed.topology(netns_prefix + "h4-") as t:
        n1 = t["network-1"]
        v = Vtep(n1, "kernel", plan_file, tmp_path / "lab-state")
        idx = link(n1)["ifindex"]
        other = ["--config", str(plan_file), "--state-dir", str(tmp_path / "other")]
        # `vtep down` with another (the default) state dir: refused, device kept
        one_line(n1.cmd(VTEP + ["down", "--config", str(plan_file)], check=False), 4,
                 f"pid {v.p.pid}", "vxlan0")
        # a second agent, daemon or --once, --replace or not, kernel or userspace
        for mode, extra in (("--kernel", []), ("--kernel", ["--once"]),
                            ("--kernel", ["--once", "--replace"]),
                            ("--userspace", ["--replace"])):
            r = n1.cmd(VTEP + ["run", mode, *extra, *other], check=False, timeout=20)
            one_line(r, 4, f"pid {v.p.pid}", "already manages vxlan0")
        assert link(n1)["ifindex"] == idx, "a refused run touched the live agent's device"
        assert v.p.poll() is None
        # kill -9: the lock dies with the agent; the device, marked as vtep's, stays for
        # `vtep down`, which now removes it whatever state dir it is given
        os.kill(v.p.pid, signal.SIGKILL)
        v.p.wait(timeout=10)
        assert link(n1)["ifalias"] == "vtep:kernel:network-1"
        r = n1.cmd(VTEP + ["down", *other], check=False)
        assert r.returncode == 0, r.stderr
        assert link(n1) is None


def test_replace_never_deletes_a_device_vtep_did_not_make(netns_prefix, plan_file, tmp_path):
    with seed.topology(netns_prefix + "h5-") as t:
        n1 = t["network-1"]
        n1.cmd(["ip", "link", "add", "vxlan0", "type", "veth", "peer", "name", "vxpeer"])
        for mode in ("--kernel", "--userspace"):
            extra = ["--once"] if mode == "--kernel" else []
            r = n1.cmd(VTEP + ["run", mode, *extra, "--replace", "--config", str(plan_file),
                               "--state-dir", str(tmp_path / "s")], check=False, timeout=20)
            one_line(r, 5, "vxlan0", "made by: vtep vs someone else", "kind veth")
            assert link(n1)["linkinfo"]["info_kind"] == "veth"
        one_line(n1.cmd(VTEP + ["down", "--config", str(plan_file)], check=False), 5,
                 "not removing")
        assert link(n1)["linkinfo"]["info_kind"] == "veth"


def test_a_device_left_by_once_is_vtep_s_and_down_removes_it(netns_prefix, plan_file):
    with seed.topology(netns_prefix + "h6-") as t:
        n1 = t["network-1"]
        n1.cmd(VTEP + ["run", "--kernel", "--once", "--config", str(plan_file)])
        assert link(n1)["ifalias"] == "vtep:kernel:network-1"
        r = n1.cmd(VTEP + ["down", "--config", str(plan_file), "--state-dir", "/nonexistent"],
                   check=False)
        assert r.returncode == 0, r.stderr
        assert link(n1) is None
        # a compatible device made by hand with `vtep plan`'s commands is vtep's too
        r = n1.cmd(VTEP + ["plan", "--config", str(plan_file)])
        for cmd in r.stdout.splitlines()[1:]:
            n1.cmd(cmd.split())
        assert link(n1)["ifalias"] == "vtep:kernel:network-1"
        assert n1.cmd(VTEP + ["down", "--config", str(plan_file)], check=False).returncode == 0


# --- defect 9: `--mtu auto` re-probes a peer that did not answer at start ---------------

def test_mtu_auto_lowers_the_mtu_when_a_silent_peer_answers_later(netns_prefix, plan_file,
                                                                  tmp_path):
    with seed.topology(netns_prefix + "h9-") as t:
        # network-2 sits behind a 1400-byte link (path MTU 1400: overlay 1350, RFC 7348's
        # 50 bytes), and the router forwards nothing yet: network-2 is silent at start
        t["router"].cmd(["ip", "link", "set", "eth2", "mtu", "1400"])
        t["network-2"].cmd(["ip", "link", "set", "eth0", "mtu", "1400"])
        t["router"].cmd(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        n1 = t["network-1"]
        v = Vtep(n1, "kernel", plan_file, tmp_path / "state", "--mtu", "auto",
                 "--interval", "1")
        assert link(n1)["mtu"] == 1450, v.output()   # the plan's: 1500 - 50
        assert "no peer answered (network-2)" in v.output()
        t["router"].cmd(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        assert wait_for(lambda: link(n1)["mtu"] == 1350, 15), v.output()
        assert v.p.poll() is None
        assert v.stop() == 0
        out = v.output()
        assert ("--mtu auto: network-2 answers now; path MTU 1400 to network-2: lowering "
                "the overlay MTU from 1450 to 1350") in out, out
        assert "Traceback" not in out
