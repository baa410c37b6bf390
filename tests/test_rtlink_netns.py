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
