"""Route ownership on the seed topology, in network namespaces (issue 8, defects 2 and 3).

- Our routes carry protocol 118 (the number the README documents for vtep).
- A route on another device with a peer subnet's key (a static route via the
  router, a connected route) is never replaced: it stays as it was, the agent
  names it once, `--once` exits 4 having applied everything else.
- A route someone adds on vxlan0 (scope link, through a nexthop object, or
  appended behind ours) is removed, whatever its scope, protocol or nexthop.
- Our route replaced by one that differs only in what the echo filter used to
  overlook (no onlink flag, a nexthop object, a tos of its own) is repaired on
  its notification, not at the next periodic resync.

Expected values are literal kernel/iproute2 facts: protocol 118, "kernel", "boot",
scope "link", and `ip -d -j route` output. Every vtep process runs inside a node's
namespace; the topology goes away in `finally` (seed.topology(...) as a context manager).
"""
import signal
import time

import pytest

from vtep.lab import seed
from seedlab import messages, wait_for
from test_kernel_netns import Daemon, has_vxlan0, js, vtep

pytestmark = pytest.mark.netns
ZEROS = "00:00:00:00:00:00"   # the vxlan driver's flood (default destination) entry

PROTO_VTEP = "118"   # `ip` prints a protocol number it has no name for as the number
PEER_SUBNET = "172.2.1.0/24"    # network-2's subnet in the seed plan
PEER_VTEP = "172.2.1.0"
ROUTER = "192.168.1.213"        # network-1's underlay gateway in the seed topology


def routes(node, *sel):
    """`ip -d -j route show SEL`: -d names every protocol, boot included."""
    return js(node, "ip", "-d", "-j", "-4", "route", "show", *sel)


def on(node, dev):
    """The main table's routes via `dev` (`ip route show dev D` leaves "dev" out)."""
    return [r for r in routes(node) if r.get("dev") == dev]


def brief(r):
    return (r["dst"], r.get("gateway"), r.get("dev"), r.get("protocol"), r.get("scope"))


def ours_only(node):
    """vxlan0 holds exactly the seed plan's route, tagged ours."""
    return [brief(r) for r in on(node, "vxlan0")] == [
        (PEER_SUBNET, PEER_VTEP, "vxlan0", PROTO_VTEP, "global")]


def lines_with(out, needle):
    return [x for x in out.splitlines() if needle in x]


# --- (c) our routes are tagged ----------------------------------------------------------------

def test_our_routes_carry_protocol_118_and_are_re_tagged(netns_prefix, plan_file, tmp_path):
    with seed.topology(netns_prefix + "r1-") as t:
        n1 = t["network-1"]
        vtep(n1, "run", "--kernel", "--once", "--config", str(plan_file), check=0)
        assert ours_only(n1), on(n1, "vxlan0")
        assert f"proto {PROTO_VTEP}" in n1.cmd(["ip", "route", "show", "dev", "vxlan0"]).stdout
        # the tag is a filter for `ip route`: exactly our routes
        assert [r["dst"] for r in js(n1, "ip", "-j", "route", "show", "proto", PROTO_VTEP)] == [
            PEER_SUBNET]

        # the planned route, replaced by hand on our device (proto boot), is made ours again
        d = Daemon(n1, plan_file, tmp_path / "state")
        n1.cmd(["ip", "route", "replace", PEER_SUBNET, "via", PEER_VTEP, "dev", "vxlan0",
                "onlink"])
        assert wait_for(lambda: ours_only(n1), 10), f"not re-tagged:\n{d.output()}"
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        out = d.output()
        assert (f"changed route {PEER_SUBNET} via {PEER_VTEP} onlink on vxlan0 (was via "
                f"{PEER_VTEP} onlink proto boot) (peer network-2)") in out, out
        assert "Traceback" not in out


# --- (a) a foreign route on our device is removed, as the dump gave it -------------------------

def test_foreign_routes_on_the_device_are_removed(netns_prefix, plan_file, tmp_path):
    """Defect 3: `ip route add 172.2.1.0/25 dev vxlan0` is scope link; the delete went out
    with scope universe, the kernel answered ESRCH, and the agent retried every second
    forever while the prefix was black-holed."""
    with seed.topology(netns_prefix + "r2-") as t:
        n1 = t["network-1"]
        d = Daemon(n1, plan_file, tmp_path / "state", "--interval", "0.2")
        n1.cmd(["ip", "route", "add", "172.2.1.0/25", "dev", "vxlan0"])
        # a route through a nexthop object (matched by its id only), and one appended
        # behind ours with the same key (the dump lists both)
        n1.cmd(["ip", "nexthop", "add", "id", "77", "via", PEER_VTEP, "dev", "vxlan0",
                "onlink"])
        n1.cmd(["ip", "route", "add", "172.9.0.0/24", "nhid", "77"])
        n1.cmd(["ip", "route", "append", PEER_SUBNET, "via", PEER_VTEP, "dev", "vxlan0",
                "onlink", "proto", "static"])
        took = wait_for(lambda: ours_only(n1) and not routes(n1, "172.9.0.0/24"), 10)
        assert took is not None, f"{on(n1, 'vxlan0')}\n{d.output()}"
        d.passes(3)   # resyncs (--interval 0.2) that would each retry a refused delete
        assert ours_only(n1) and not routes(n1, "172.9.0.0/24")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        out = d.output()
        assert "cannot converge" not in out and "No such process" not in out, out
        assert len(lines_with(out, "removed route 172.2.1.0/25 proto boot scope link from "
                                   "vxlan0 (not in the plan)")) == 1, out
        assert len(lines_with(out, "removed route 172.9.0.0/24 nhid 77 via 172.2.1.0 proto "
                                   "boot from vxlan0 (not in the plan)")) == 1, out
        assert len(lines_with(out, f"removed route {PEER_SUBNET} via {PEER_VTEP} proto static "
                                   "from vxlan0 (not in the plan)")) == 1, out
        assert "Traceback" not in out


# --- (d) drift the echo filter used to take for our own change -------------------------------

def exactly_ours(node):
    """vxlan0 holds exactly the route vtep creates: onlink, through no nexthop object,
    with no tos (`ip -d -j route` names each of those when present)."""
    rs = on(node, "vxlan0")
    return len(rs) == 1 and brief(rs[0]) == (PEER_SUBNET, PEER_VTEP, "vxlan0", PROTO_VTEP,
                                             "global") \
        and rs[0].get("flags") == ["onlink"] and "nhid" not in rs[0] and "tos" not in rs[0]


def test_a_route_that_only_looks_like_ours_is_repaired_on_its_notification(
        netns_prefix, plan_file, tmp_path):
    """Each drift leaves the plan's gateway, device and protocol 118 in place, and changes
    only what the echo filter (which drops notifications of our own changes) used to
    overlook; the daemon must take the notification as drift. --interval 60: the
    periodic resync never repairs it here, and the repairing pass names the route's
    notification as its cause."""
    drifts = [
        # without onlink: possible only while something else makes the gateway reachable,
        # here a /32 in the `default` table (which fib_lookup consults after main, and
        # which vtep neither reads nor watches); removed again afterwards
        ("lost onlink", [["ip", "route", "add", f"{PEER_VTEP}/32", "dev", "vxlan0", "table",
                          "default"],
                         ["ip", "route", "replace", PEER_SUBNET, "via", PEER_VTEP, "dev",
                          "vxlan0", "proto", PROTO_VTEP],
                         ["ip", "route", "del", f"{PEER_VTEP}/32", "dev", "vxlan0", "table",
                          "default"]],
         f"(was via {PEER_VTEP})"),
        ("nexthop object", [["ip", "nexthop", "add", "id", "77", "via", PEER_VTEP, "dev",
                             "vxlan0", "onlink"],
                            ["ip", "route", "replace", PEER_SUBNET, "nhid", "77", "proto",
                             PROTO_VTEP]],
         "(was nhid 77 onlink)"),
        ("tos", [["ip", "route", "add", PEER_SUBNET, "tos", "0x10", "via", PEER_VTEP, "dev",
                  "vxlan0", "onlink", "proto", PROTO_VTEP]],
         f"removed route {PEER_SUBNET} tos 0x10 via {PEER_VTEP} from vxlan0"),
    ]
    with seed.topology(netns_prefix + "r5-") as t:
        n1 = t["network-1"]
        d = Daemon(n1, plan_file, tmp_path / "state", "--interval", "60")
        assert exactly_ours(n1), on(n1, "vxlan0")
        for what, cmds, line in drifts:
            t0 = time.monotonic()
            for cmd in cmds:
                n1.cmd(cmd)
            assert wait_for(lambda: exactly_ours(n1), 10) is not None, \
                f"{what}: not repaired: {on(n1, 'vxlan0')}\n{d.output()}"
            # the route's notification scheduled a pass: the repairing one, or (when a pass
            # already due took the drift along) the one right after it, which finds
            # nothing left to do; the echo filter's mistake is that neither does
            rep = d.repair_since(t0)
            assert rep is not None, (what, d.output())
            assert d.caused(f"route {PEER_SUBNET} changed"), (what, d.doc(), d.output())
            assert line in d.output(), (what, d.output())
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert "Traceback" not in d.output()


# --- (b) a route in the way on another device is left alone and named once ---------------------

def test_a_route_in_the_way_is_left_alone_and_named_once(netns_prefix, plan_file, tmp_path):
    """Defect 2: the peer subnet's route replaced a route with the same key on any device."""
    with seed.topology(netns_prefix + "r3-") as t:
        n1 = t["network-1"]
        n1.cmd(["ip", "route", "add", PEER_SUBNET, "via", ROUTER, "dev", "eth0"])
        theirs = [(PEER_SUBNET, ROUTER, "eth0", "boot", "global")]
        d = Daemon(n1, plan_file, tmp_path / "state", "--interval", "0.2")
        d.passes(5)   # several resyncs, each retrying the route (counted by the daemon)
        assert [brief(r) for r in routes(n1, PEER_SUBNET)] == theirs
        assert not on(n1, "vxlan0")
        # the peer's other entries are in place
        assert [n["dst"] for n in js(n1, "ip", "-j", "neigh", "show", "dev", "vxlan0")] == [
            PEER_VTEP]
        # the peer's fdb entry and its flood entry (issue 17), both to its underlay
        assert sorted((f["mac"] == ZEROS, f["dst"]) for f in js(
            n1, "bridge", "-j", "fdb", "show", "dev", "vxlan0")) == [
            (False, "192.168.2.142"), (True, "192.168.2.142")]
        out = d.output()
        named = lines_with(out, f"{PEER_SUBNET} via {ROUTER} dev eth0 proto boot")
        assert named == [f"vtep: route {PEER_SUBNET} of peer network-2 not added: {PEER_SUBNET} "
                         f"via {ROUTER} dev eth0 proto boot is in the way (not made by vtep): "
                         "not replacing it"], out
        assert "cannot converge" not in out, out

        # once it is gone, the peer's route follows
        n1.cmd(["ip", "route", "del", PEER_SUBNET, "via", ROUTER, "dev", "eth0"])
        assert wait_for(lambda: ours_only(n1), 10), d.output()
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        out = d.output()
        assert len(lines_with(out, "is in the way")) == 1, out
        assert (f"added route {PEER_SUBNET} via {PEER_VTEP} onlink on vxlan0 (peer network-2)"
                in out), out


CONNECTED_PLAN = """\
[cluster]
vni = 10
port = 4789
overlay = "10.96.0.0/12"

[[nodes]]
name = "network-1"
underlay_ip = "192.168.1.138"
subnet = "10.96.0.0/24"

[[nodes]]
name = "network-2"
underlay_ip = "192.168.2.142"
subnet = "10.99.0.0/24"

[[nodes]]
name = "network-3"
underlay_ip = "192.168.3.33"
subnet = "10.97.0.0/24"
"""


def test_once_with_a_connected_route_in_the_way_exits_4(netns_prefix, tmp_path):
    """The issue's case: a peer subnet equal to a connected subnet of the node (here on a
    second interface, so that no underlay IP is inside a subnet). The connected route
    stays, `--once` says so in one line and exits 4, the other peers are programmed, and
    `vtep down` leaves the connected route as it was."""
    plan = tmp_path / "connected.toml"
    plan.write_text(CONNECTED_PLAN)
    with seed.topology(netns_prefix + "r4-") as t:
        n1 = t["network-1"]
        n1.cmd(["ip", "link", "add", "vtc0", "type", "veth", "peer", "name", "vtc1"])
        n1.cmd(["ip", "addr", "add", "10.99.0.1/24", "dev", "vtc0"])
        for dev in ("vtc0", "vtc1"):
            n1.cmd(["ip", "link", "set", dev, "up"])
        connected = [("10.99.0.0/24", None, "vtc0", "kernel", "link")]
        assert wait_for(lambda: [brief(r) for r in routes(n1, "10.99.0.0/24")] == connected)
        line = ("vtep: route 10.99.0.0/24 of peer network-2 not added: 10.99.0.0/24 dev vtc0 "
                "proto kernel scope link src 10.99.0.1 is in the way (not made by vtep): "
                "not replacing it")
        for _ in range(2):   # and the same again: nothing else to do, the same one line
            r = vtep(n1, "run", "--kernel", "--once", "--config", str(plan))
            assert r.returncode == 4, r.stderr
            assert lines_with(r.stderr, "10.99.0.0/24 dev vtc0") == [line], r.stderr
            assert "Traceback" not in r.stderr
            assert [brief(x) for x in routes(n1, "10.99.0.0/24")] == connected
            # everything else is in place: network-3's three entries, network-2's two
            assert [brief(x) for x in on(n1, "vxlan0")] == [
                ("10.97.0.0/24", "10.97.0.0", "vxlan0", PROTO_VTEP, "global")]
            assert sorted(n["dst"] for n in js(n1, "ip", "-j", "neigh", "show", "dev",
                                               "vxlan0")) == ["10.97.0.0", "10.99.0.0"]
            assert sorted((f["mac"] == ZEROS, f["dst"]) for f in js(
                n1, "bridge", "-j", "fdb", "show", "dev", "vxlan0")) == [
                (False, "192.168.2.142"), (False, "192.168.3.33"),
                (True, "192.168.2.142"), (True, "192.168.3.33")]
        assert [x for x in messages(r) if "in the way" not in x] == [], r.stderr
        r = vtep(n1, "down", "--config", str(plan), check=0)
        assert not has_vxlan0(n1)
        assert [brief(x) for x in routes(n1, "10.99.0.0/24")] == connected
