#!/usr/bin/env python3
"""Benchmark `vtep run --kernel --etcd`: convergence from the cluster in a real etcd.

    sudo python bench/etcd_bench.py [--peers 1000] [--burst 100] [--churn-seconds 60]
                                    [--rate 10] [--writes 2000] [--repeat 3] [--strict]

What it does (root; everything inside one network namespace it creates, named
vte<pid>-bench, removed in `finally`; the benchmark runs itself again inside it, so
etcd, the agent and the writer all talk over that namespace's loopback):

0. Gives the namespace an underlay device holding 10.0.0.1/8 (a dummy, or a veth
   pair kept inside it), starts Debian's etcd on 127.0.0.1 with a temporary data
   dir (tests/etcdserver.py: stopped by its PID), and measures etcd's own write
   rate there: WRITES sequential puts, then WRITES create-if-absent transactions,
   through vtep's client (the reference for everything below).
1. Writes the cluster config (membership.init_cluster) and PEERS registrations
   straight into etcd, one transaction each as register() writes them: the subnet
   reservation (100.64.i.0/24 and up, on a long lease) and the model.Member JSON
   (underlay 10.x.y.1, a fixed MAC, on a member lease). Measures `ip -batch` +
   `bridge -batch` + `ip -batch` of the same PEERS peers' entries on a vxlan device
   (the state `vtep plan` prints; kernel_converge_bench's reference), REPEAT times.
   Then starts `vtep run --kernel --etcd URL --name n0 --underlay-ip 10.0.0.1` and
   times it from the process start to its status file listing PEERS peers (polled
   every 5 ms): registration, list, plan and kernel programming together.
   Target 2 s.
2. A burst of BURST events written as fast as the client goes: half joins of new
   nodes, half leaves of registered ones, interleaved. Time from the last write
   being sent to the end of the agent's pass that applied it (the status file's
   last_repair.ended, CLOCK_MONOTONIC as ours). Target 1 s.
3. RATE events per second for CHURN seconds (a join of a new node, a leave of a
   registered one, alternating), each timed from its write to the end of the pass
   that applied it (p50, p95, max), then the time from the last event until
   everything is applied; also the agent's passes per event, why they ran (its
   status file's last_cause: a plan re-read, netlink notifications) and its CPU.
After each of 1-3 the kernel state is checked against etcd's: the members read
back from etcd (not the benchmark's bookkeeping) give each peer's route (subnet
via its VTEP address, onlink), neighbour (VTEP address -> MAC, permanent) and fdb
entries (MAC -> underlay IP, 00:00:00:00:00:00 -> underlay IP); the kernel's come
from `ip -j neigh`, `bridge -j fdb` and `ip -j route` (iproute2, not vtep's
netlink code). Missing or extra entries are a failure.

Prints the figures and their ratios. Exit status 0 when it ran (targets are
PASS/MISS lines; --strict makes a MISS exit 1), 1 when a step failed or the
kernel state differed from etcd's, 2 on bad arguments, 130 on SIGTERM (the
namespace, etcd and the agent are removed all the same). Bounded: the inner run
is ended (by its PID) after 240 s plus the churn time.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))   # etcdserver.py: etcd by PID, temp dir
sys.path.insert(2, os.path.dirname(os.path.abspath(__file__)))
# the namespace with an underlay device holding 10.0.0.1/8: kernel_converge_bench's
from kernel_converge_bench import setup  # noqa: E402

TARGET_CONVERGE = 2.0
TARGET_BURST = 1.0
UNDERLAY = "ul0"
LOCAL = "10.0.0.1"            # n0, the agent's node
DEVICE = "vxlan0"
OVERLAY = ipaddress.IPv4Network("100.64.0.0/10")
SUBNET_LEN = 24
FLOOD = "00:00:00:00:00:00"
MEMBER_LEASE_SLACK = 120      # the member lease outlives the run by this much
POLL = 0.005                  # status file polling, seconds
WAIT_LIMIT = 60.0             # any single wait for the agent
VTEP = [sys.executable, "-m", "vtep.cli"]


# --- node i's records: pure -------------------------------------------------------------

def name_of(i: int) -> str:
    return f"n{i}"


def subnet_of(i: int) -> ipaddress.IPv4Network:
    # node i's /24 is the i-th of the overlay: n0 (the agent, which claims the lowest
    # free one itself) gets 100.64.0.0/24
    return ipaddress.IPv4Network((int(OVERLAY.network_address) + (i << 8), SUBNET_LEN))


def underlay_of(i: int) -> str:
    return f"10.{i >> 8}.{i & 255}.1"     # all on-link in 10.0.0.0/8; i = 0 is LOCAL


def mac_of(i: int) -> str:
    # locally administered (0x02), unicast; distinct per i
    return f"02:76:74:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def expected_entries(members) -> dict:
    """What iproute2 must show on the agent's device for these etcd members (the
    agent's own left out): derived from the records alone, as RFC 7348's static
    flannel-style VTEP is built (the VTEP address is the subnet's first address)."""
    neigh, fdb, routes = set(), set(), set()
    for m in members:
        vtep = str(m.subnet.network_address)
        neigh.add((vtep, m.vtep_mac, True))
        fdb.add((m.vtep_mac, str(m.underlay_ip)))
        fdb.add((FLOOD, str(m.underlay_ip)))
        routes.add((str(m.subnet), vtep, True))
    return {"neighbours": neigh, "fdb": fdb, "routes": routes}


def ip_json(cmd: list[str]):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise Failed(f"{' '.join(cmd)}: {r.stderr.strip()[:200]}")
    return json.loads(r.stdout or "[]")


def kernel_entries(dev: str = DEVICE) -> dict:
    neigh = ip_json(["ip", "-j", "neigh", "show", "dev", dev])
    fdb = ip_json(["bridge", "-j", "fdb", "show", "dev", dev])
    routes = ip_json(["ip", "-j", "route", "show", "dev", dev])
    return {"neighbours": {(e.get("dst"), e.get("lladdr"), "PERMANENT" in e.get("state", ()))
                           for e in neigh},
            "fdb": {(e.get("mac"), e.get("dst")) for e in fdb},
            "routes": {(e.get("dst"), e.get("gateway"), "onlink" in e.get("flags", ()))
                       for e in routes}}


def compare(want: dict, have: dict) -> tuple[bool, str]:
    parts, ok = [], True
    for kind in ("routes", "neighbours", "fdb"):
        missing, extra = want[kind] - have[kind], have[kind] - want[kind]
        ok &= not missing and not extra
        text = f"{kind} {len(have[kind])}/{len(want[kind])}"
        for what, xs in (("missing", missing), ("extra", extra)):
            if xs:
                text += f" ({what} {len(xs)}, e.g. {min(xs)})"
        parts.append(text)
    return ok, ", ".join(parts)


class Failed(Exception):
    """A step of the benchmark went wrong: one line, exit 1."""


# --- inside the namespace ---------------------------------------------------------------

class Status:
    """The agent's status file, re-read only when a new one was renamed into place."""

    def __init__(self, path: str):
        self.path, self.ino, self.data = path, None, None

    def poll(self) -> bool:
        """True when a new version was read."""
        try:
            with open(self.path) as f:
                st = os.fstat(f.fileno())
                if (st.st_ino, st.st_mtime_ns) == self.ino:
                    return False
                data = json.load(f)
        except (OSError, ValueError):
            return False
        self.ino, self.data = (st.st_ino, st.st_mtime_ns), data
        return True

    @property
    def peers(self) -> set:
        return set(self.data.get("peers") or ()) if self.data else set()

    @property
    def ended(self) -> float | None:
        r = self.data.get("last_repair") if self.data else None
        return r["ended"] if r else None


class Writer:
    """Registrations and departures written straight into etcd."""

    def __init__(self, client, layout, member_lease: int, long_lease: int):
        from vtep.etcd import codec, model
        self.codec, self.model = codec, model
        self.client, self.layout = client, layout
        self.member_lease, self.long_lease = member_lease, long_lease

    def join(self, i: int) -> None:
        m, c, lay = self.model, self.codec, self.layout
        net = subnet_of(i)
        member = m.Member(name_of(i), ipaddress.ip_address(underlay_of(i)), mac_of(i), net,
                          "kernel", None, "bench", time.time())
        # one transaction, as membership.register writes a node: reservation + member
        r = self.client.txn([], [c.op_put(lay.subnet(net), m.Reservation(net, member.name)
                                          .to_json(), self.long_lease),
                                 c.op_put(lay.node(member.name), member.to_json(),
                                          self.member_lease)])
        if not r.succeeded:
            raise Failed(f"join of {member.name}: the transaction was refused")

    def leave(self, i: int) -> None:
        # what the agent's deregister (a revoked lease) or an expiry does to the store
        if self.client.delete(self.layout.node(name_of(i))) != 1:
            raise Failed(f"leave of {name_of(i)}: no such key")


def etcd_rate(client, n: int) -> dict:
    from vtep.etcd import codec
    value = b'{"node":"n0"}'
    t = time.perf_counter()
    for i in range(n):
        client.put(f"/bench/put/{i}", value)
    puts = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(n):
        k = f"/bench/txn/{i}"
        if not client.txn([codec.cmp_absent(k)], [codec.op_put(k, value)]).succeeded:
            raise Failed(f"create of {k} refused")
    txns = time.perf_counter() - t
    client.delete("/bench/", prefix=True)
    return {"puts_per_s": n / puts, "txns_per_s": n / txns}


def ip_batch_reference(config, members, repeat: int, local_mac: str) -> list[float]:
    """`ip -batch` + `bridge -batch` + `ip -batch` of the state these members give n0,
    timed with the three process starts (kernel_converge_bench's reference)."""
    from vtep import state
    from vtep.etcd import model
    me = model.Member(name_of(0), ipaddress.ip_address(LOCAL), local_mac, subnet_of(0),
                      "kernel", None, "bench", time.time())
    plan = model.to_plan(config, list(members) + [me], "bench")
    want = state.desired(plan, name_of(0), underlay_dev=UNDERLAY, underlay_mtu=1500,
                         device=DEVICE)
    cmds = state.iproute2(want)
    ip1 = [c[3:] for c in cmds if c.startswith("ip ") and " route " not in c]
    br = [c[7:] for c in cmds if c.startswith("bridge ")]
    ip2 = [c[3:] for c in cmds if c.startswith("ip route ")]
    n = len(members)
    times = []
    with tempfile.TemporaryDirectory() as d:
        files = []
        for name, lines in (("ip1", ip1), ("br", br), ("ip2", ip2)):
            p = os.path.join(d, name)
            Path(p).write_text("\n".join(lines) + "\n")
            files.append(p)
        try:
            for _ in range(repeat):
                t = time.perf_counter()
                for tool, p in (("ip", files[0]), ("bridge", files[1]), ("ip", files[2])):
                    r = subprocess.run([tool, "-batch", p], capture_output=True, text=True,
                                       timeout=60)
                    if r.returncode:
                        raise Failed(f"{tool} -batch failed: {r.stderr.strip()[:200]}")
                times.append(time.perf_counter() - t)
                have = kernel_entries()
                counts = tuple(len(have[k]) for k in ("neighbours", "fdb", "routes"))
                if counts != (n, 2 * n, n):
                    raise Failed(f"ip -batch left {counts} entries, want {(n, 2 * n, n)}")
                subprocess.run(["ip", "link", "del", DEVICE], capture_output=True)
        finally:
            subprocess.run(["ip", "link", "del", DEVICE], capture_output=True)
    return times


def kind_of_cause(cause: str) -> str:
    """A pass's cause (daemon: "plan re-read", "periodic resync", or up to 8 netlink
    notifications such as "route 100.64.1.0/24 deleted") as a category to count."""
    parts = set()
    for c in cause.split(", "):
        word = c.split(" ", 1)[0]
        parts.add("netlink notification" if word in ("route", "fdb", "neigh", "link",
                                                      "address", "addr") else c)
    return " + ".join(sorted(parts))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_status(status: Status, agent, pred, what: str, limit: float = WAIT_LIMIT) -> float:
    """Poll until pred(status) holds; the monotonic time it was seen."""
    t0 = time.monotonic()
    while True:
        status.poll()
        if status.data is not None and pred(status):
            return time.monotonic()
        if agent.poll() is not None:
            raise Failed(f"the agent exited {agent.returncode} waiting for {what}")
        if time.monotonic() - t0 > limit:
            raise Failed(f"{what}: not seen within {limit:g} s (status peers: "
                         f"{len(status.peers)})")
        time.sleep(POLL)


def check_kernel(client, layout, label: str, out: dict) -> None:
    from vtep.etcd import membership
    _, members, _ = membership.snapshot(client, layout)
    want = expected_entries(m for m in members.values() if m.name != name_of(0))
    ok, text = compare(want, kernel_entries())
    out.setdefault("checks", []).append((label, ok, text, len(members) - 1))
    if not ok:
        raise Failed(f"after {label}: the kernel state differs from etcd's: {text}")


def inner(a, d: str, pidfile: str) -> dict:
    from etcdserver import EtcdServer
    from vtep.etcd import membership, model
    from vtep.etcd.gateway import Client

    res: dict = {}
    procs = []

    def note(p):
        procs.append(p)
        with open(pidfile, "a") as f:
            f.write(f"{p.pid}\n")

    srv = EtcdServer(Path(d) / "etcd-data", host="127.0.0.1")
    agent = None
    agent_log = os.path.join(d, "agent.log")
    try:
        try:
            srv.start()
        except AssertionError as e:     # etcdserver's way of failing a test
            raise Failed(str(e).splitlines()[0]) from None
        note(srv.proc)
        client = Client(srv.url, timeout=10)
        fs = subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True, text=True)
        res["etcd"] = {"version": client.status().version, "fs": fs.stdout.strip()}

        # 0. etcd's own write rate, before anything else runs
        res["rate"] = etcd_rate(client, a.writes)

        # 1. the cluster: config, then PEERS registrations
        layout = model.Layout()
        plan = model.plan_from_data({"cluster": {"vni": 10, "port": 4789,
                                                 "overlay": str(OVERLAY)}}, "bench")
        membership.init_cluster(client, layout, plan, SUBNET_LEN)
        budget = 240 + a.churn_seconds + MEMBER_LEASE_SLACK
        member_lease = client.lease_grant(budget).id
        long_lease = client.lease_grant(membership.DEFAULT_RESERVATION_TTL).id
        w = Writer(client, layout, member_lease, long_lease)
        t = time.perf_counter()
        for i in range(1, a.peers + 1):
            w.join(i)
        res["register"] = time.perf_counter() - t
        config, members, _ = membership.snapshot(client, layout)
        if len(members) != a.peers:
            raise Failed(f"etcd holds {len(members)} members, want {a.peers}")
        from vtep import plan as planmod
        res["ip_batch"] = ip_batch_reference(config, members.values(), a.repeat,
                                             planmod.derive_mac(name_of(0), subnet_of(0)))

        # what the agent pays before it does anything: the interpreter and its imports
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import vtep.cli, vtep.commands, "
                        "vtep.etcd.join"], check=True, env=os.environ)
        res["imports"] = time.perf_counter() - t

        status = Status(os.path.join(d, "state", f"{DEVICE}.{name_of(0)}.json"))
        with open(agent_log, "w") as log:
            t0 = time.monotonic()
            agent = subprocess.Popen(VTEP + ["run", "--kernel", "--etcd", srv.url, "--name",
                                             name_of(0), "--underlay-ip", LOCAL,
                                             "--state-dir", os.path.join(d, "state")],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        note(agent)
        seen = wait_status(status, agent, lambda s: len(s.peers) == a.peers,
                           f"{a.peers} peers after the start")
        res["converge"] = seen - t0
        check_kernel(client, layout, "start", res)

        # 2. a burst: joins of new nodes and leaves of registered ones, interleaved
        present = set(range(1, a.peers + 1))
        fresh = a.peers + 1
        joins = list(range(fresh, fresh + a.burst // 2))
        fresh += len(joins)
        leaves = list(range(a.peers, a.peers - (a.burst - len(joins)), -1))
        order = []
        for k in range(max(len(joins), len(leaves))):
            order += [("join", joins[k])] if k < len(joins) else []
            order += [("leave", leaves[k])] if k < len(leaves) else []
        passes0 = status.data.get("passes", 0)
        t_first = time.monotonic()
        for kind, i in order:
            t_last = time.monotonic()
            (w.join if kind == "join" else w.leave)(i)
        t_written = time.monotonic()
        present |= set(joins)
        present -= set(leaves)
        want = {name_of(i) for i in present}
        seen = wait_status(status, agent, lambda s: s.peers == want, "the burst applied")
        ended = status.ended
        res["burst"] = {"events": len(order), "write": t_written - t_first,
                        "applied": (ended if ended and ended >= t_last else seen) - t_last,
                        "seen": seen - t_last,
                        "passes": status.data.get("passes", 0) - passes0}
        check_kernel(client, layout, f"a burst of {len(order)}", res)

        # 3. RATE events per second: a new node joins, a registered one leaves, ...
        # leaves: initial nodes the burst left alone, lowest first (pop() from the end);
        # joins: new names. Each node changes once, so an event's effect is unambiguous.
        pool = sorted((i for i in present if i <= a.peers), reverse=True)
        n_events = int(round(a.rate * a.churn_seconds))
        if n_events // 2 + 1 > len(pool):
            raise Failed(f"--rate x --churn-seconds asks for {n_events // 2} leaves; "
                         f"only {len(pool)} nodes can leave")
        pending = []          # [kind, name, t_sent]
        lat, late = [], 0
        status.poll()
        passes0, cpu0 = status.data.get("passes", 0), cpu_seconds(agent.pid)
        t_start = time.monotonic()

        causes: dict = {}     # why the passes we saw ran (polling may miss a few)

        def absorb():
            nonlocal late
            if not status.poll():
                return
            cause = kind_of_cause(status.data.get("last_cause", "?"))
            causes[cause] = causes.get(cause, 0) + 1
            peers, ended_ = status.peers, status.ended
            for e in list(pending):
                kind_, name_, t_sent = e
                if (name_ in peers) == (kind_ == "join"):
                    if ended_ is not None and ended_ >= t_sent:
                        lat.append(ended_ - t_sent)
                    else:   # a failed pass published the plan: count when we saw it
                        lat.append(time.monotonic() - t_sent)
                        late += 1
                    pending.remove(e)
        for k in range(n_events):
            due = t_start + k / a.rate
            while time.monotonic() < due:
                absorb()
                time.sleep(min(POLL, max(0.0, due - time.monotonic())))
            if agent.poll() is not None:
                raise Failed(f"the agent exited {agent.returncode} during the churn")
            if k % 2 == 0:
                i = fresh
                fresh += 1
                kind = "join"
                present.add(i)
            else:
                i = pool.pop()
                kind = "leave"
                present.discard(i)
            t_sent = time.monotonic()
            (w.join if kind == "join" else w.leave)(i)
            pending.append([kind, name_of(i), t_sent])
        t_last = pending[-1][2] if pending else time.monotonic()
        want = {name_of(i) for i in present}
        limit = time.monotonic() + WAIT_LIMIT
        while pending or status.peers != want:
            absorb()
            if agent.poll() is not None:
                raise Failed(f"the agent exited {agent.returncode} after the churn")
            if time.monotonic() > limit:
                raise Failed(f"churn: {len(pending)} events not applied {WAIT_LIMIT:g} s "
                             "after the last")
            time.sleep(POLL)
        ended = status.ended
        took = time.monotonic() - t_start
        res["churn"] = {"events": n_events, "seconds": took,
                        "passes": status.data.get("passes", 0) - passes0, "causes": causes,
                        "cpu": (cpu_seconds(agent.pid) - cpu0) / took,
                        "p50": statistics.median(lat) if lat else 0.0,
                        "p95": sorted(lat)[int(0.95 * (len(lat) - 1))] if lat else 0.0,
                        "max": max(lat) if lat else 0.0, "late": late,
                        "after_last": (ended if ended and ended >= t_last else
                                       time.monotonic()) - t_last}
        check_kernel(client, layout, f"{n_events} events in {a.churn_seconds:g} s", res)

        # the agent leaves: SIGTERM, its own lease revoked, its device removed
        agent.send_signal(signal.SIGTERM)
        try:
            rc = agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise Failed("the agent did not exit within 30 s of SIGTERM") from None
        if rc != 0:
            raise Failed(f"the agent exited {rc} on SIGTERM")
        client.lease_revoke(member_lease)
        client.close()
        return res
    except Failed:
        if agent is not None:
            sys.stderr.write("agent log (tail):\n" + "".join(
                open(agent_log).readlines()[-15:]))
        raise
    finally:
        from vtep.lab.topology import end_process
        for p in reversed(procs):
            end_process(p)
        srv.stop()                      # by its PID, also when it never became ready
        subprocess.run(["ip", "link", "del", DEVICE], capture_output=True)


# --- outside ----------------------------------------------------------------------------

def sh(cmd, ns=None, check=True):
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    r = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise Failed(f"{' '.join(full)}: {r.stderr.strip()}")
    return r


def end_strays(pidfile: str, ns: str) -> None:
    """End, by PID, what the inner run started and left behind (it was killed): only a
    process still in the benchmark's namespace, so a reused PID is never touched."""
    try:
        pids = [int(x) for x in Path(pidfile).read_text().split()]
        ns_ino = os.stat(f"/run/netns/{ns}").st_ino
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ns_ino:
                continue
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def report(r: dict, a, kind: str) -> bool:
    ms = lambda s: f"{s * 1000:8.1f} ms"   # noqa: E731
    rate = r["rate"]
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, underlay {kind}; etcd "
          f"{r['etcd']['version']} on loopback, data dir on {r['etcd']['fs']}")
    print(f"etcd's own write rate ({a.writes} sequential calls through vtep's client):")
    print(f"  put                            {rate['puts_per_s']:8.0f} writes/s")
    print(f"  create-if-absent txn           {rate['txns_per_s']:8.0f} writes/s")
    print(f"1. {a.peers} registrations written    {ms(r['register'])} "
          f"({a.peers / r['register']:.0f}/s, one txn of 2 puts each)")
    ipb = statistics.median(r["ip_batch"])
    print(f"   ip/bridge -batch, {a.peers} peers {ms(ipb)} (median of {a.repeat}, "
          f"best {min(r['ip_batch']) * 1000:.1f} ms)")
    print(f"   agent start -> {a.peers} peers    {ms(r['converge'])} "
          f"(of which interpreter + imports ~{r['imports'] * 1000:.0f} ms)")
    print(f"     ratio agent / ip -batch     {r['converge'] / ipb:8.2f}x "
          f"(without the imports: {(r['converge'] - r['imports']) / ipb:.2f}x)")
    b = r["burst"]
    print(f"2. burst of {b['events']} joins+leaves, written in {ms(b['write']).strip()} "
          f"({b['events'] / b['write']:.0f}/s)")
    print(f"   last write -> applied         {ms(b['applied'])} "
          f"(status file seen after {b['seen'] * 1000:.1f} ms; {b['passes']} passes)")
    print(f"     ratio applied / write time  {b['applied'] / b['write']:8.2f}x; "
          f"applied / ip -batch of {a.peers}: {b['applied'] / ipb:.2f}x")
    c = r["churn"]
    print(f"3. churn: {c['events']} events at {a.rate:g}/s over {c['seconds']:.1f} s; "
          "write -> applied per event:")
    polled = f" ({c['late']} timed by polling)" if c["late"] else ""
    print(f"   p50 {c['p50'] * 1000:.1f} ms, p95 {c['p95'] * 1000:.1f} ms, max "
          f"{c['max'] * 1000:.1f} ms{polled}; everything applied "
          f"{c['after_last'] * 1000:.1f} ms after the last event")
    print(f"   {c['passes']} passes ({c['passes'] / c['events']:.2f} per event), agent CPU "
          f"{c['cpu'] * 100:.0f}% of one core")
    print("   causes of the passes seen: " + ", ".join(
        f"{k} {v}" for k, v in sorted(c["causes"].items(), key=lambda kv: -kv[1])))
    print("kernel state vs etcd's members (iproute2 -j vs the records read back):")
    for label, ok, text, n in r["checks"]:
        print(f"  after {label:<26} {n:5d} peers: {'EQUAL' if ok else 'DIFFERS'}: {text}")
    print("targets:")
    good = True
    for label, v, lim in ((f"start -> {a.peers} peers", r["converge"], TARGET_CONVERGE),
                          (f"burst of {b['events']} applied", b["applied"], TARGET_BURST)):
        good &= v <= lim
        print(f"  {label:<28} {v * 1000:7.1f} ms <= {lim * 1000:.0f} ms  "
              f"{'PASS' if v <= lim else 'MISS'}")
    return good


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=1000, help="registrations (default 1000)")
    ap.add_argument("--burst", type=int, default=100, help="events in the burst (default 100)")
    ap.add_argument("--churn-seconds", type=float, default=60.0,
                    help="duration of the steady churn (default 60)")
    ap.add_argument("--rate", type=float, default=10.0, help="churn events/s (default 10)")
    ap.add_argument("--writes", type=int, default=2000,
                    help="puts and txns for etcd's own write rate (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="ip -batch runs (default 3)")
    ap.add_argument("--strict", action="store_true", help="exit 1 on a missed target")
    ap.add_argument("--inner", nargs=2, metavar=("DIR", "PIDFILE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    bad = [f"{flag}: {v} is outside {lo}..{hi}" for flag, v, lo, hi in (
        ("--peers", a.peers, 2, 10000), ("--burst", a.burst, 2, 2000),
        ("--churn-seconds", a.churn_seconds, 1, 600), ("--rate", a.rate, 0.1, 100),
        ("--writes", a.writes, 10, 100000), ("--repeat", a.repeat, 1, 20))
        if not lo <= v <= hi]
    if a.burst // 2 + int(a.rate * a.churn_seconds) // 2 + 2 > a.peers:
        bad.append("--burst and --rate x --churn-seconds ask for more leaves than --peers")
    if bad:
        print(f"etcd_bench: {bad[0]}", file=sys.stderr)
        return 2
    if a.inner:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))   # finally: end by PID
        try:
            r = inner(a, *a.inner)
        except Failed as e:
            print(f"etcd_bench: {e}", file=sys.stderr)
            return 1
        print(json.dumps(r))
        return 0
    if os.geteuid() != 0:
        print("etcd_bench: needs root (it builds a network namespace)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))   # finally: the namespace goes
    ns = f"vte{os.getpid()}-bench"
    limit = 240 + a.churn_seconds
    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as d:
        pidfile = os.path.join(d, "pids")
        inner_p = None
        try:
            kind = setup(ns)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [ROOT, os.path.join(ROOT, "inspect")] +
                [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
            argv = [sys.executable, os.path.abspath(__file__), "--inner", d, pidfile]
            for flag in ("peers", "burst", "churn_seconds", "rate", "writes", "repeat"):
                argv += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
            inner_p = subprocess.Popen(["ip", "netns", "exec", ns] + argv,
                                       stdout=subprocess.PIPE, text=True, env=env)
            try:
                out, _ = inner_p.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                print(f"etcd_bench: not done within {limit:g} s; stopped", file=sys.stderr)
                return 1
            if inner_p.returncode:
                return 1
            r = json.loads(out)
        except Failed as e:
            print(f"etcd_bench: {e}", file=sys.stderr)
            return 1
        finally:
            if inner_p is not None and inner_p.poll() is None:
                inner_p.send_signal(signal.SIGTERM)   # its finally ends etcd and the agent
                try:
                    inner_p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    inner_p.kill()
                    inner_p.wait()
            end_strays(pidfile, ns)
            sh(["ip", "netns", "delete", ns], check=False)
    good = report(r, a, kind)
    return 0 if good or not a.strict else 1


if __name__ == "__main__":
    sys.exit(main())
