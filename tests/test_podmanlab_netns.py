"""tests/podmanlab.py proven with the reference CNI plugins (bridge, host-local, loopback
from /usr/lib/cni): real podman containers in one node of a two-namespace lab get
addresses, ping each other, serve HTTP (the server reports the client's address), are
reachable from the other node, release what they held at `podman rm`, start ten at once
with ten distinct addresses, reach containers of a second node's podman, and leave nothing
on the host after stop(), also after a failing plugin, a killed conmon or a killed keeper.
The bridge plugin runs behind the harness's recorder, so the test also pins what podman
hands a CNI plugin (environment and stdin), which a plugin of ours must accept. The
conflist and plugin table are the only plugin-specific parts: a test of another plugin
swaps them."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from podmanlab import HTTPD, Podman, PodmanError, have_podman
from vtep.lab.topology import Topology

pytestmark = pytest.mark.netns

CNI = Path("/usr/lib/cni")
PLUGINS = {name: CNI / name for name in ("bridge", "host-local", "loopback")}
NET = "vttnet"
SUBNET = ipaddress.ip_network("10.99.0.0/24")
GATEWAY = "10.99.0.1"
CONFLIST = {
    "cniVersion": "1.0.0",
    "name": NET,
    "plugins": [{
        "type": "bridge", "bridge": "vttbr0", "isGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": str(SUBNET)}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }],
}
N1_ADDR, N2_ADDR = "192.168.77.1/24", "192.168.77.2/24"
SLEEP = ["sleep", "300"]   # bounded: even a container nobody removes ends by itself


def host_state(prefix: str) -> dict:
    """What a leak would show on the host: our namespaces and podman-style netns files in
    /run/netns, files under /var/lib/cni, podman's default state directories, mounts."""
    def files(top):
        top = Path(top)
        return sorted(str(p) for p in top.rglob("*")) if top.exists() else []
    netns = sorted(n for n in os.listdir("/run/netns")
                   if n.startswith((prefix, "netns-", "cni-")))
    return {"netns": netns, "var_lib_cni": files("/var/lib/cni"),
            "dirs": [d for d in ("/var/lib/containers", "/run/containers", "/run/libpod",
                                 "/run/runc", "/var/lib/cni") if Path(d).exists()],
            "dev_shm_libpod": sorted(n for n in os.listdir("/dev/shm") if "libpod" in n)}


@contextmanager
def podman_lab(prefix: str, tmp_path: Path):
    """n1 (podman, the bridge, forwarding) --- n2; n2 routes the pod subnet via n1."""
    reason = have_podman()
    if reason:
        pytest.skip(reason)
    topo = Topology(prefix)
    n1, n2 = topo.add_node("n1", forward=True), topo.add_node("n2")
    topo.add_link(n1, n2, "eth0", "eth0", N1_ADDR, N2_ADDR)
    topo.add_route(n2, str(SUBNET), N1_ADDR.split("/")[0])
    try:
        topo.start()
        with Podman(n1, tmp_path, PLUGINS, CONFLIST, record={"bridge"}) as pm:
            yield topo, pm
    finally:
        topo.stop()


def assert_nothing_left(pm: Podman, before: dict, prefix: str, tmp_path: Path,
                        seen: list[tuple[int, str]], topo: Topology | None = None) -> None:
    """After stop() (and the topology's stop, unless `topo` is still up: its namespaces
    are then expected)."""
    assert pm.stop_errors == []
    after = host_state(prefix)
    if topo is not None:
        after["netns"] = [n for n in after["netns"] if n not in topo.namespaces]
    assert after == before
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts and str(pm.runroot) not in mounts
    assert not pm.runroot.exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{pm.cgroup}"))
    assert not (tmp_path / f"podman-{pm.node.name}").exists()
    for pid, start in seen:   # conmon and container processes seen during the test: gone
        assert _start_time(pid) != start, f"pid {pid} outlived stop(): {_describe(pid)}"


def _start_time(pid: int) -> str | None:
    """The process's start time, None once it is gone. A zombie counts as gone: it holds
    nothing, and the orphaned conmons are reaped by PID 1 whenever it gets to it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _describe(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError as e:
        return str(e)
    return f"{cmd!r} " + " ".join(x for x in status if x.startswith(("State", "PPid")))


def _seen(pm: Podman) -> list[tuple[int, str]]:
    return [(pid, _start_time(pid)) for pid in pm.ours()]


def test_two_containers_ping_http_rm(netns_prefix, tmp_path):
    prefix = netns_prefix + "pm-"
    before = host_state(prefix)
    t0 = time.monotonic()
    with podman_lab(prefix, tmp_path) as (topo, pm):
        starts = {}
        for name, argv in (("srv", HTTPD), ("cli", SLEEP)):
            t = time.monotonic()
            cid = pm.run(name, argv)
            starts[name] = time.monotonic() - t
            assert len(cid) == 64
        srv, cli = pm.ip("srv"), pm.ip("cli")
        assert srv != cli and {ipaddress.ip_address(a) for a in (srv, cli)} <= set(SUBNET)
        assert pm.exec("cli", ["ping", "-c", "2", "-W", "1", srv]).returncode == 0
        assert pm.fetch("cli", f"http://{srv}/cgi-bin/ip").strip() == cli
        # the other node reaches a container through n1's bridge (the gateway), and the
        # server sees n2's own address: nothing translated it
        r = topo["n2"].cmd(["busybox", "wget", "-q", "-O", "-", f"http://{srv}/cgi-bin/ip"],
                           timeout=10)
        assert r.stdout.strip() == N2_ADDR.split("/")[0]
        route = pm.exec("cli", ["ip", "route"], check=True).stdout
        assert f"default via {GATEWAY} dev eth0" in route

        # what podman gave the plugin: one ADD per container so far
        adds = [c for c in pm.cni_calls() if c["command"] == "ADD"]
        assert len(adds) == 2
        add = next(c for c in adds if c["env"]["CNI_CONTAINERID"] == pm.inspect("cli", "{{.Id}}"))
        assert add["rc"] == 0 and add["stdout"]["ips"][0]["address"] == f"{cli}/24"
        env = add["env"]
        assert env["CNI_IFNAME"] == "eth0" and env["CNI_PATH"] == str(pm.plugin_dir)
        assert env["CNI_NETNS"] == pm.netns("cli") and env["CNI_NETNS"].startswith("/run/netns/")
        assert add["stdin"]["name"] == NET and add["stdin"]["cniVersion"] == "1.0.0"
        assert add["stdin"]["type"] == "bridge"
        print("\nrecorded ADD:", json.dumps(add, indent=1))

        # rm releases: the lease, the netns file, the host-side veth; DEL was called
        leases = pm.host_path(f"/var/lib/cni/networks/{NET}")
        assert (leases / cli).exists()
        netns_file = pm.host_path(env["CNI_NETNS"])
        assert netns_file.exists()
        links_before = topo["n1"].cmd(["ip", "-o", "link"]).stdout.count("master vttbr0")
        seen = _seen(pm)
        t = time.monotonic()
        pm.rm("cli")
        rm_time = time.monotonic() - t
        assert not (leases / cli).exists() and (leases / srv).exists()
        assert not netns_file.exists()
        assert topo["n1"].cmd(["ip", "-o", "link"]).stdout.count("master vttbr0") == \
            links_before - 1
        dels = [c for c in pm.cni_calls() if c["command"] == "DEL"]
        assert [d["env"]["CNI_CONTAINERID"] for d in dels] == [env["CNI_CONTAINERID"]]
        assert dels[0]["rc"] == 0 and dels[0]["env"]["CNI_NETNS"] == env["CNI_NETNS"]
        print("recorded DEL:", json.dumps(dels[0], indent=1))
        print("commands podman called:", [c["command"] for c in pm.cni_calls()])
        seen += _seen(pm)
    assert_nothing_left(pm, before, prefix, tmp_path, seen)
    print(f"podman run -d: {starts['srv']:.2f}s, {starts['cli']:.2f}s; podman rm: "
          f"{rm_time:.2f}s; whole test: {time.monotonic() - t0:.2f}s")


def test_ten_concurrent_starts_get_distinct_addresses(netns_prefix, tmp_path):
    prefix = netns_prefix + "pm10-"
    before = host_state(prefix)
    t0 = time.monotonic()
    with podman_lab(prefix, tmp_path) as (topo, pm):
        names = [f"c{i}" for i in range(10)]
        t = time.monotonic()
        procs = [pm.popen(pm.run_argv(n, SLEEP)) for n in names]
        results = [p.communicate(timeout=120) for p in procs]
        together = time.monotonic() - t
        for n, p, (out, err) in zip(names, procs, results):
            assert p.returncode == 0, f"{n}: {err}"
        ips = [pm.ip(n) for n in names]
        assert len(set(ips)) == 10
        assert {ipaddress.ip_address(a) for a in ips} <= set(SUBNET)
        leases = {p.name for p in pm.host_path(f"/var/lib/cni/networks/{NET}").iterdir()
                  if p.name[0].isdigit()}
        assert leases == set(ips)
        # every container reaches every other one's address (one ping each, one source)
        for ip in ips[1:]:
            assert pm.exec("c0", ["ping", "-c", "1", "-W", "1", ip]).returncode == 0, ip
        seen = _seen(pm)
        assert len(seen) >= 20   # ten conmons and ten sleeps
    assert_nothing_left(pm, before, prefix, tmp_path, seen)
    print(f"\n10 concurrent podman run -d: {together:.2f}s; whole test: "
          f"{time.monotonic() - t0:.2f}s")


def test_stop_leaves_nothing_after_failures(netns_prefix, tmp_path):
    """stop() after a plugin that fails, after conmon is killed under a running container
    (the container is handed to PID 1: only its cgroup still names it ours), and after the
    keeper itself is killed (podman cannot be entered any more): nothing is left each time,
    and only the last case is reported."""
    prefix = netns_prefix + "pmf-"
    before = host_state(prefix)
    reason = have_podman()
    if reason:
        pytest.skip(reason)
    topo = Topology(prefix)
    n1 = topo.add_node("n1")
    try:
        topo.start()
        failing = dict(PLUGINS, bridge=Path("/bin/false"))
        pm = Podman(n1, tmp_path / "plugin", failing, CONFLIST)
        try:
            pm.start()
            with pytest.raises(PodmanError, match="bridge"):
                pm.run("a", SLEEP)
            seen = _seen(pm)
        finally:
            pm.stop()
        pm.stop()   # twice: harmless
        assert_nothing_left(pm, before, prefix, tmp_path / "plugin", seen, topo)

        def harmed(name, harm):
            """A container started, then `harm(pm, seen)`, then stop()."""
            pm = Podman(n1, tmp_path / name, PLUGINS, CONFLIST)
            try:
                pm.start()
                pm.run("a", SLEEP)
                seen = _seen(pm)
                harm(pm, seen)
            finally:
                pm.stop()
            return pm, seen

        def kill_conmon(pm, seen):
            for pid, _ in seen:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "conmon":
                    os.kill(pid, signal.SIGKILL)

        def kill_keeper(pm, seen):
            pm.keeper.kill()
            pm.keeper.wait()

        pm, seen = harmed("conmon", kill_conmon)
        assert_nothing_left(pm, before, prefix, tmp_path / "conmon", seen, topo)

        pm, seen = harmed("keeper", kill_keeper)
        assert pm.stop_errors[0] == "the keeper had ended (exit -9) before stop()"
        pm.stop_errors = [e for e in pm.stop_errors if not e.endswith("killed")][1:]
        assert_nothing_left(pm, before, prefix, tmp_path / "keeper", seen, topo)
    finally:
        topo.stop()


def test_containers_on_two_nodes_reach_each_other(netns_prefix, tmp_path):
    """One Podman per node, side by side (the shape of a later cross-node test): each node
    bridges its own subnet, routes the other's via the link, and a container on n1 pings
    and fetches from one on n2, which sees the n1 container's own address."""
    reason = have_podman()
    if reason:
        pytest.skip(reason)
    prefix = netns_prefix + "pm2-"
    before = host_state(prefix)
    subnets = {"n1": "10.99.1.0/24", "n2": "10.99.2.0/24"}
    topo = Topology(prefix)
    n1, n2 = topo.add_node("n1", forward=True), topo.add_node("n2", forward=True)
    topo.add_link(n1, n2, "eth0", "eth0", N1_ADDR, N2_ADDR)
    topo.add_route(n1, subnets["n2"], N2_ADDR.split("/")[0])
    topo.add_route(n2, subnets["n1"], N1_ADDR.split("/")[0])
    pms, seen = [], []
    try:
        topo.start()
        for node in (n1, n2):
            conf = json.loads(json.dumps(CONFLIST))
            conf["plugins"][0]["ipam"]["ranges"] = [[{"subnet": subnets[node.name]}]]
            pms.append(Podman(node, tmp_path, PLUGINS, conf).start())
        pm1, pm2 = pms
        pm1.run("a", SLEEP)
        pm2.run("b", HTTPD)
        a, b = pm1.ip("a"), pm2.ip("b")
        assert ipaddress.ip_address(a) in ipaddress.ip_network(subnets["n1"])
        assert ipaddress.ip_address(b) in ipaddress.ip_network(subnets["n2"])
        assert pm1.exec("a", ["ping", "-c", "2", "-W", "1", b]).returncode == 0
        assert pm1.fetch("a", f"http://{b}/cgi-bin/ip").strip() == a
        assert pm1.cgroup != pm2.cgroup and pm1.runroot != pm2.runroot
        seen = _seen(pm1) + _seen(pm2)
    finally:
        for pm in pms:
            pm.stop()
        topo.stop()
    for pm in pms:
        assert_nothing_left(pm, before, prefix, tmp_path, seen)
