"""vtep.rtlink against iproute2, the independent reader: in a namespace the test makes,
every link, address and gateway route RtLink reports must be what `ip -j` reports, also
for what trips a hand-written client (a dump of hundreds of links over many datagrams,
point-to-point addresses in both families, where IFA_ADDRESS is the peer, an altname)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vtep import netns

pytestmark = pytest.mark.netns

READ = """
import json, sys
from vtep.rtlink import RtLink
with RtLink() as rt:
    print(json.dumps({"links": [l._asdict() for l in rt.links()],
                      "addresses": rt.addresses(),
                      "routes": rt.gateway_routes(),
                      "by_name": (rt.link(sys.argv[1]) or (None,))[0],
                      "by_altname": rt.link(sys.argv[2])}))
"""


def ip(ns, *argv):
    r = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"ip {' '.join(argv)}: {r.stderr}"
    return r.stdout


@pytest.fixture
def ns(netns_prefix):
    name = netns_prefix + "rtl"
    netns.add(name)
    try:
        yield name
    finally:
        netns.delete(name)


def test_links_addresses_and_routes_agree_with_iproute2(ns):
    batch = [f"link add v{i} type veth peer name p{i}" for i in range(150)]
    batch += ["link set v0 up", "link set p0 up", "link set v1 mtu 1400",
              "address add 10.0.0.1/24 dev v0",
              "address add 10.1.0.1 peer 10.1.0.2/32 dev v1",
              "address add 2001:db8::1 peer 2001:db8::2/128 dev v1 nodad",
              "address add fd00::5/64 dev v0 nodad",
              "route add 10.7.0.0/16 via 10.0.0.254 dev v0",
              "route add default via 10.0.0.253 dev v0",
              "link property add dev v2 altname secondname"]
    r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(batch),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", READ,
                                     "v1", "secondname"], capture_output=True, text=True,
                                    timeout=30, check=True).stdout)
    links = json.loads(ip(ns, "-j", "-d", "link", "show"))
    assert len(links) == 301   # lo + 300 veths: more than one dump datagram holds
    assert {(x["index"], x["name"], x["mtu"], x["up"], x["mac"], x["kind"])
            for x in got["links"]} == \
        {(x["ifindex"], x["ifname"], x["mtu"], "UP" in x["flags"], x["address"],
          x.get("linkinfo", {}).get("info_kind")) for x in links}
    addrs = json.loads(ip(ns, "-j", "address", "show"))
    want = {(a["local"], a["prefixlen"], x["ifindex"]) for x in addrs for a in x["addr_info"]}
    assert {tuple(a) for a in got["addresses"]} == want
    assert ("10.1.0.1", 32, got["by_name"]) in want and ("2001:db8::1", 128, got["by_name"]) \
        in want   # the local end, not the peer's
    routes = json.loads(ip(ns, "-j", "-4", "route", "show"))
    names = {x["ifname"]: x["ifindex"] for x in links}
    assert {tuple(r) for r in got["routes"]} == {
        ("0.0.0.0/0" if r["dst"] == "default" else r["dst"], r["gateway"], names[r["dev"]])
        for r in routes if "gateway" in r}
    assert got["by_altname"] is None    # found by the kernel under v2's altname: not ours


WRITE6 = """
import json, socket, sys
from vtep.rtlink import RtLink, write_sysctl
with RtLink() as rt:
    v0 = rt.link("v0")
    rt.add_address(v0.index, "fd00:9::5", 64, nodad=True)
    rt.add_address(v0.index, "fd00:9::5", 64, nodad=True)   # again: idempotent
    rt.replace_route("::/0", "fd00:9::1", v0.index)
    rt.replace_route("fd00:77::/48", "fd00:9::2", v0.index)
    rt.replace_route("fd00:77::/48", "fd00:9::3", v0.index)   # replaced, not added
    print(json.dumps({"v6": rt.gateway_routes(v0.index, socket.AF_INET6),
                      "both": rt.gateway_routes(None, socket.AF_UNSPEC),
                      "v4": rt.gateway_routes(),
                      "wrote": [write_sysctl("net/ipv6/conf/v0/accept_ra", "0"),
                                write_sysctl("net/ipv6/conf/v0/accept_ra", "0")]}))
"""


def test_ipv6_addresses_routes_and_sysctls_agree_with_iproute2(ns):
    """What vtep.pods does for an IPv6 pod, read back with `ip -j` and /proc: a nodad
    address (not tentative), default and prefix routes through a gateway (one each after a
    replace), both families dumped together, a sysctl written once."""
    batch = ["link add v0 type veth peer name p0", "link set v0 up", "link set p0 up",
             "address add 10.0.0.1/24 dev v0", "route add default via 10.0.0.254 dev v0"]
    r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(batch),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", WRITE6],
                                    capture_output=True, text=True, timeout=30,
                                    check=True).stdout)
    addrs = json.loads(ip(ns, "-j", "-6", "address", "show", "dev", "v0"))[0]["addr_info"]
    mine = [a for a in addrs if a["local"] == "fd00:9::5"]
    assert len(mine) == 1 and mine[0]["prefixlen"] == 64
    assert mine[0].get("nodad") and not mine[0].get("tentative")
    index = json.loads(ip(ns, "-j", "link", "show", "v0"))[0]["ifindex"]
    routes6 = {("::/0" if r["dst"] == "default" else r["dst"], r["gateway"])
               for r in json.loads(ip(ns, "-j", "-6", "route", "show")) if "gateway" in r}
    assert routes6 == {("::/0", "fd00:9::1"), ("fd00:77::/48", "fd00:9::3")}
    assert {(d, g) for d, g, i in got["v6"]} == routes6 and {i for *_, i in got["v6"]} == {index}
    assert {(d, g) for d, g, _ in got["both"]} == routes6 | {("0.0.0.0/0", "10.0.0.254")}
    assert [(d, g) for d, g, _ in got["v4"]] == [("0.0.0.0/0", "10.0.0.254")]
    assert got["wrote"] == [True, False]
    r = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n",
                        "net.ipv6.conf.v0.accept_ra"], capture_output=True, text=True)
    assert r.stdout.strip() == "0"
