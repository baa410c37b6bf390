"""Open vSwitch as a VXLAN peer inside one lab node's namespace (the interop suite).

Open vSwitch is a VXLAN stack vtep did not write, so it is the far node that tells
whether vtep's two paths speak VXLAN (RFC 7348) or only speak to themselves. This
machine's kernel has no openvswitch module, so OVS runs its userspace datapath
(`ovs-vswitchd --disable-system`, `datapath_type=netdev` bridges) with native
tunnelling: OVS itself pushes and pops the outer headers and sends them out of a bridge.

Isolation, the point of most of this file:

- ovsdb-server and ovs-vswitchd run only inside the node's namespace (Node.popen, which
  is `ip netns exec`: it execs the daemon, so the Popen PID is the daemon's), in the
  foreground (no --detach: their PIDs are the Popens'), and are ended by PID;
- the database, the sockets, the logs and the pid files live in `workdir` (a pytest
  tmp_path); every OVS_*DIR points there and every client is handed the socket path
  explicitly (`--db=unix:...`, `-t .../vswitchd.ctl`, `unix:.../BRIDGE.mgmt`), so
  nothing ever reads or writes /var/run/openvswitch or contacts the system service.

The peer's configuration is pure data (OvsNode) turned into commands by pure functions
(vsctl_commands, ip_commands); OvsPeer runs them.

    br-under (netdev)  ports: the node's underlay veth; LOCAL (the internal port) holds the
                       underlay address and the node's routes, so OVS's tunnel route table
                       (learnt from the namespace, `ovs/route/show`) sends through it; its
                       tunnel neighbour table is filled by hand (`tnl/arp/set`) since the
                       native tunnel ARPs on its own and we do not want to depend on it
    br-ovl (netdev)    ports: one vxlan port per peer (key = the plan's VNI, port 4789);
                       LOCAL plays the VTEP device: the plan's VTEP MAC and address /32,
                       onlink routes to the peers' subnets via their VTEP addresses, NO
                       static neighbour (ARP resolves through the tunnel). NORMAL flows:
                       a learning switch that floods broadcast, multicast and unknown
                       unicast to every vxlan port (head-end replication).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vtep.lab.topology import end_process

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DAEMONS = ("ovsdb-server", "ovs-vswitchd")
START_LIMIT = 15.0   # s: a loaded 2-core machine; vswitchd's first run also builds the db
MISSING = ("Open vSwitch is not installed (ovsdb-server, ovs-vswitchd, ovs-vsctl, "
           "ovs-appctl, ovsdb-tool and {schema} are needed: bootstrap.sh installs Debian's "
           "openvswitch-switch without starting its service); missing: {what}")


def missing() -> list[str]:
    """What this machine lacks to run the peer (empty: nothing)."""
    tools = ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl",
             "ovs-ofctl"]
    gone = [t for t in tools if not shutil.which(t, path=os.environ.get("PATH", "") +
                                                 ":/usr/sbin:/sbin")]
    if not SCHEMA.exists():
        gone.append(str(SCHEMA))
    return gone


def require() -> None:
    """Fail (never skip: in CI a skip is a failure) when OVS is missing, saying what."""
    gone = missing()
    if gone:
        raise AssertionError(MISSING.format(schema=SCHEMA, what=", ".join(gone)))


# --- the configuration, as data ------------------------------------------------------------

@dataclass(frozen=True)
class Tunnel:
    """One vxlan port of br-ovl: towards one peer's underlay address."""
    port: str                  # the OVS port name, e.g. "vx-network-1"
    remote_ip: str
    key: int                   # the VNI
    dst_port: int = 4789
    csum: bool | None = None   # options:csum (None: OVS's default, no outer UDP checksum)


@dataclass(frozen=True)
class OvsNode:
    """What one node running Open vSwitch looks like (see the module docstring)."""
    underlay_dev: str          # the veth towards the router, moved into br-under
    underlay_mac: str          # its MAC, kept as br-under's (the router's neighbour entry)
    underlay_addr: str         # CIDR, on br-under's internal port
    routes: tuple[tuple[str, str], ...]      # (dst, via) over the underlay
    tnl_neighbours: tuple[tuple[str, str], ...]   # (ip, mac) for OVS's tunnel ARP table
    vtep_mac: str
    vtep_addr: str             # the VTEP address (no prefix), held as /32
    mtu: int                   # the overlay MTU of br-ovl's internal port
    overlay_routes: tuple[tuple[str, str], ...]   # (peer subnet, peer VTEP address)
    tunnels: tuple[Tunnel, ...] = field(default=())


UNDER, OVL = "br-under", "br-ovl"


def vsctl_commands(n: OvsNode) -> list[list[str]]:
    """The ovs-vsctl invocations (arguments after the --db option) that build both bridges."""
    cmds = [
        ["add-br", UNDER, "--", "set", "bridge", UNDER, "datapath_type=netdev",
         f"other-config:hwaddr={n.underlay_mac}"],
        ["add-port", UNDER, n.underlay_dev],
        ["add-br", OVL, "--", "set", "bridge", OVL, "datapath_type=netdev",
         f"other-config:hwaddr={n.vtep_mac}"],
        ["set", "interface", OVL, f"mtu_request={n.mtu}"],
    ]
    cmds += [tunnel_command(t) for t in n.tunnels]
    return cmds


def tunnel_options(t: Tunnel) -> list[str]:
    opts = [f"options:remote_ip={t.remote_ip}", f"options:key={t.key}",
            f"options:dst_port={t.dst_port}"]
    if t.csum is not None:
        opts.append(f"options:csum={'true' if t.csum else 'false'}")
    return opts


def tunnel_command(t: Tunnel) -> list[str]:
    return ["add-port", OVL, t.port, "--", "set", "interface", t.port, "type=vxlan",
            *tunnel_options(t)]


def ip_commands(n: OvsNode) -> list[list[str]]:
    """The iproute2 commands that move the underlay address onto br-under and make br-ovl's
    internal port the VTEP device (as `state.iproute2` writes a vtep node's, minus the
    static neighbours and fdb entries: OVS learns those)."""
    dev = n.underlay_dev
    cmds = [["ip", "address", "flush", "dev", dev],
            # OVS reads the veth through a packet socket, but the kernel still takes every
            # frame up its own stack too, and the host model is weak: it would accept the
            # VXLAN packets for br-under's address on the veth and answer each with ICMP
            # port unreachable (no kernel socket on 4789), and answer ARP there as well.
            # Strict reverse path filtering drops them there (the route back to any sender
            # leaves through br-under, not the veth); arp_ignore=1 answers ARP only for an
            # address of the device the request came in on.
            ["sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=1",
             f"net.ipv4.conf.{dev}.arp_ignore=1"],
            ["ip", "link", "set", UNDER, "up"],
            ["ip", "address", "add", n.underlay_addr, "dev", UNDER]]
    cmds += [["ip", "route", "add", dst, "via", via, "dev", UNDER] for dst, via in n.routes]
    cmds += [["ip", "link", "set", OVL, "address", n.vtep_mac, "mtu", str(n.mtu), "up"],
             ["ip", "address", "add", f"{n.vtep_addr}/32", "dev", OVL]]
    cmds += [["ip", "route", "add", dst, "via", via, "dev", OVL, "onlink"]
             for dst, via in n.overlay_routes]
    return cmds


# --- the daemons ----------------------------------------------------------------------------

class OvsPeer:
    """ovsdb-server and ovs-vswitchd in `node`'s namespace, everything under `workdir`.

    Use as a context manager (the daemons are ended by PID on exit, whatever happened),
    or start()/stop() in try/finally."""

    def __init__(self, node, workdir: Path):
        self.node = node
        self.dir = Path(workdir)
        self.db = self.dir / "conf.db"
        self.db_sock = self.dir / "db.sock"
        self.ctl = self.dir / "vswitchd.ctl"
        self.procs: dict[str, subprocess.Popen] = {}

    # the environment of every OVS program we run: all its default directories are ours
    @property
    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d,
                "OVS_SYSCONFDIR": d}

    def _daemon(self, name: str, argv: list[str], ready: Path) -> None:
        log = open(self.dir / f"{name}.out", "w")
        try:
            self.procs[name] = self.node.popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                               stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + START_LIMIT
        while not ready.exists():
            p = self.procs[name]
            if p.poll() is not None:
                raise AssertionError(f"{name} in {self.node.ns} exited {p.returncode}: "
                                     f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} in {self.node.ns}: {ready} not there within "
                                     f"{START_LIMIT:g}s: {self.log_tail(name)}")
            time.sleep(0.05)

    def log_tail(self, name: str, n: int = 5) -> str:
        text = ""
        for suffix in (".out", ".log"):
            p = self.dir / f"{name}{suffix}"
            if p.exists():
                text += p.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-n:])

    def start(self) -> "OvsPeer":
        require()
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ovsdb-tool", "create", str(self.db), str(SCHEMA)], check=True,
                       capture_output=True, timeout=30, env=self.env)
        d = self.dir
        try:
            self._daemon("ovsdb-server", [
                "ovsdb-server", str(self.db), f"--remote=punix:{self.db_sock}",
                f"--unixctl={d / 'ovsdb-server.ctl'}", f"--log-file={d / 'ovsdb-server.log'}",
                f"--pidfile={d / 'ovsdb-server.pid'}"], self.db_sock)
            self.vsctl("--no-wait", "init")
            self._daemon("ovs-vswitchd", [
                "ovs-vswitchd", f"unix:{self.db_sock}", "--disable-system",
                f"--unixctl={self.ctl}", f"--log-file={d / 'ovs-vswitchd.log'}",
                f"--pidfile={d / 'ovs-vswitchd.pid'}"], self.ctl)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End both daemons by their PIDs, vswitchd first (it holds the db connection)."""
        for name in reversed(DAEMONS):
            p = self.procs.pop(name, None)
            if p is not None:
                end_process(p)

    def __enter__(self) -> "OvsPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- clients, each given the paths explicitly ---------------------------------------

    def _run(self, argv: list[str], check: bool = True,
             timeout: float = 30) -> subprocess.CompletedProcess:
        full = ["ip", "netns", "exec", self.node.ns, *argv]
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(argv)} in {self.node.ns}: exit {r.returncode}: "
                                 f"{(r.stderr or r.stdout).strip()}\nvswitchd: "
                                 f"{self.log_tail('ovs-vswitchd')}")
        return r

    def vsctl(self, *args: str, check: bool = True) -> str:
        return self._run(["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=20", *args],
                         check).stdout

    def appctl(self, *args: str, check: bool = True) -> str:
        return self._run(["ovs-appctl", "-t", str(self.ctl), "--timeout=20", *args],
                         check).stdout

    def ofctl(self, verb: str, bridge: str, *args: str) -> str:
        return self._run(["ovs-ofctl", verb, f"unix:{self.dir / bridge}.mgmt", *args]).stdout

    # --- the node's configuration -------------------------------------------------------

    def configure(self, n: OvsNode) -> None:
        """Build br-under and br-ovl as `n` describes, then wait until OVS can tunnel: its
        route table knows every peer and each tunnel neighbour is in its ARP table."""
        for args in vsctl_commands(n):
            self.vsctl(*args)
        for cmd in ip_commands(n):
            self.node.cmd(cmd)
        # vswitchd learns the namespace's routes from netlink (route-table.c); a tunnel
        # is sent only when its remote's route leaves through an OVS bridge (br-under)
        for t in n.tunnels:
            self.wait_route(t.remote_ip)
        for ip, mac in n.tnl_neighbours:
            self.appctl("tnl/arp/set", UNDER, ip, mac)

    def wait_route(self, ip: str, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while True:
            out = self.appctl("ovs/route/lookup", ip, check=False)
            if UNDER in out:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"OVS in {self.node.ns} has no tunnel route to {ip} "
                                     f"through {UNDER} within {limit:g}s: {out.strip()}\n"
                                     + self.appctl("ovs/route/show", check=False))
            time.sleep(0.1)

    def set_tunnel(self, t: Tunnel) -> None:
        """Change one vxlan port's options in place (e.g. a wrong key)."""
        self.vsctl("set", "interface", t.port, *tunnel_options(t))
