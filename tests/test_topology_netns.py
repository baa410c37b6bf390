"""The lab's topology model: the seed underlay routes through the router, and stop()
leaves nothing behind (also when a step fails)."""
import pytest

from vtep import netns
from vtep.errors import LabError, UsageError
from vtep.lab import seed
from vtep.lab.topology import Topology

pytestmark = pytest.mark.netns


def ours(prefix):
    return sorted(n for n in netns.list_namespaces() if n.startswith(prefix))


def test_seed_underlay_routes_through_router(netns_prefix):
    prefix = netns_prefix + "topo-"
    with seed.topology(prefix) as t:
        assert ours(prefix) == sorted(prefix + n for n in ("network-1", "network-2", "router"))
        n1, n2 = t["network-1"], t["network-2"]
        r = n1.cmd(["ping", "-c", "1", "-W", "2", "192.168.2.142"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        # one hop through the router: the reply's TTL is 63
        assert "ttl=63" in r.stdout
        r = n2.cmd(["ping", "-c", "1", "-W", "2", "192.168.1.138"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        # tx checksum offload is off on the seed's veths (tx_offload=False)
        out = n1.cmd(["ethtool", "-k", "eth0"]).stdout
        assert "tx-checksumming: off" in out
        p = t["router"].popen(["sleep", "60"])
    assert p.poll() is not None, "stop() must end the processes it started"
    assert ours(prefix) == []


def test_seed_ipv6_twin_routes_from_the_first_packet(netns_prefix):
    """The seed's IPv6 twin: the same links with fd00:1::/64 and fd00:2::/64. start()
    returns with the underlay working: the very first ping crosses the router (an IPv6
    device's neighbour discovery starts only when the kernel's link watch reports its
    carrier, up to a second after it is up; start() waits for it)."""
    prefix = netns_prefix + "topo6-"
    with seed.topology(prefix, underlay="ipv6") as t:
        n1, n2 = t["network-1"], t["network-2"]
        assert "inet6 fd00:1::8a/64" in n1.cmd(["ip", "-6", "address", "show", "eth0"]).stdout
        r = n1.cmd(["ping", "-c", "1", "-W", "1", "fd00:2::8e"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ttl=63" in r.stdout  # one hop: the router decremented the hop limit
        r = n2.cmd(["ping", "-c", "1", "-W", "1", "fd00:1::8a"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "tx-checksumming: off" in n1.cmd(["ethtool", "-k", "eth0"]).stdout
    assert ours(prefix) == []


def test_unknown_underlay_family_is_a_usage_error():
    with pytest.raises(UsageError, match="--underlay ipx: use one of ipv4, ipv6"):
        seed.topology("vtt-never-", underlay="ipx")


def test_forwarding_off_breaks_the_underlay(netns_prefix):
    prefix = netns_prefix + "topo-"
    with seed.topology(prefix) as t:
        t["router"].cmd(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        r = t["network-1"].cmd(["ping", "-c", "1", "-W", "1", "192.168.2.142"], check=False)
        assert r.returncode != 0
    assert ours(prefix) == []


def test_failing_start_removes_what_it_made(netns_prefix):
    prefix = netns_prefix + "topo-"
    t = Topology(prefix)
    a, b = t.add_node("a"), t.add_node("b")
    t.add_link(a, b, "eth0", "eth0", "10.9.0.1/24", "10.9.0.2/24")
    t.add_route(a, "10.8.0.0/24", "10.7.0.1")  # unreachable gateway: `ip route add` fails
    with pytest.raises(LabError, match="ip route add 10.8.0.0/24"):
        t.start()
    assert ours(prefix) == []
    t.stop()  # idempotent


def test_existing_namespace_is_never_adopted(netns_prefix):
    prefix = netns_prefix + "topo-"
    with seed.topology(prefix):
        with pytest.raises(LabError, match="already exists"):
            seed.topology(prefix).start()
        assert len(ours(prefix)) == 3  # the failed second start removed nothing of the first
    assert ours(prefix) == []
