"""Issue 10's data model in etcd and the `vtep cluster` commands.

Pure tests of vtep.etcd.model take literal keys and JSON (the formats the issue fixes);
the membership tests run against a real etcd (tests/etcdserver.py, Debian's
etcd-server) and read what was written back through the gateway by hand (`raw`:
urllib and base64, not the client under test); the CLI runs as `python -m vtep.cli`
subprocesses. No root and no namespace; every wait is bounded.
"""
import base64
import ipaddress
import json
import os
import sys
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from etcdserver import free_port
from vtep import plan as planmod
from vtep.errors import PlanError
from vtep.etcd import Client
from vtep.etcd.membership import (ConfigDiffers, NameTaken, NoCluster, NoSuchNode,
                                  RegistrationLost, ReservationConflict, deregister,
                                  init_cluster, register, remove_node, snapshot)
from vtep.etcd.model import (BadRecord, ClusterConfig, Layout, LayoutError, Member,
                             NoFreeSubnet, Reservation, export_toml, free_subnet,
                             plan_from_data, read_records, to_plan)

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 5.0
N = ipaddress.IPv4Network
CONFIG_JSON = (b'{"vni":10,"port":4789,"overlay":"172.2.0.0/16","mtu":null,'
               b'"udp_checksum":true,"subnet_len":24}')
MEMBER_JSON = (b'{"underlay_ip":"192.168.1.138","vtep_mac":"06:b3:5c:00:11:22",'
               b'"subnet":"172.2.1.0/24","mode":"kernel","mtu":1450,"version":"0.1.0",'
               b'"since":1700000000.5}')


def cfg(**kw) -> ClusterConfig:
    d = {"vni": 10, "port": 4789, "overlay": N("172.2.0.0/16"), "mtu": None,
         "udp_checksum": True, "subnet_len": 24}
    d.update(kw)
    return ClusterConfig(**d)


def member(name, ip, subnet, mac="06:b3:5c:00:11:22") -> Member:
    return Member(name, ipaddress.ip_address(ip), mac, N(subnet), "kernel", 1450, "0.1.0",
                  1700000000.0)


# --- keys ------------------------------------------------------------------------------------

def test_layout_keys_are_the_ones_the_issue_fixes():
    lay = Layout()
    assert lay.config == "/vtep/config"
    assert lay.node("network-2") == "/vtep/nodes/network-2"
    assert lay.subnet(N("172.2.1.0/24")) == "/vtep/subnets/172.2.1.0-24"
    assert lay.root == "/vtep/" and lay.nodes == "/vtep/nodes/"
    assert Layout("/a/b").subnet(N("10.0.0.0/30")) == "/a/b/subnets/10.0.0.0-30"


def test_layout_inverses():
    lay = Layout()
    assert lay.name_of(b"/vtep/nodes/network-2") == "network-2"
    assert lay.name_of("/vtep/config") is None
    assert lay.name_of("/vtep2/nodes/x") is None
    assert lay.net_of(b"/vtep/subnets/172.2.1.0-24") == N("172.2.1.0/24")
    assert lay.net_of("/vtep/nodes/a") is None


@pytest.mark.parametrize("key", ["/vtep/subnets/172.2.1.0/24", "/vtep/subnets/172.2.1.0-",
                                 "/vtep/subnets/172.2.1.5-24", "/vtep/subnets/172.2.01.0-24",
                                 "/vtep/subnets/x-24", "/vtep/subnets/172.2.1.0-33"])
def test_a_malformed_subnet_key_is_a_bad_record_naming_it(key):
    with pytest.raises(BadRecord) as e:
        Layout().net_of(key)
    assert e.value.key == key and key in str(e.value) and "\n" not in str(e.value)


def test_a_node_key_with_a_name_the_plan_refuses_is_a_bad_record():
    with pytest.raises(BadRecord, match=r"/vtep/nodes/-x: .*not a valid node name"):
        Layout().name_of("/vtep/nodes/-x")


@pytest.mark.parametrize("prefix", ["vtep", "/vtep/", "/v tep", ""])
def test_a_prefix_that_cannot_hold_keys_is_refused(prefix):
    with pytest.raises(LayoutError):
        Layout(prefix)


# --- records ----------------------------------------------------------------------------------

def test_config_json_both_ways():
    c = ClusterConfig.from_json(CONFIG_JSON, "/vtep/config")
    assert c == cfg()
    assert c.to_json() == CONFIG_JSON
    assert c.table() == {"vni": 10, "port": 4789, "overlay": "172.2.0.0/16",
                         "udp_checksum": True}


@pytest.mark.parametrize("patch,needle", [
    ({"vni": 0}, "cluster.vni: 0 is outside 1..16777215"),          # vtep.plan's message
    ({"vni": True}, "cluster.vni: True is not a whole number"),
    ({"overlay": "127.0.0.0/8"}, "overlaps 127.0.0.0/8, loopback"),
    ({"overlay": 5}, "overlay: 5 is not a string"),
    ({"udp_checksum": "yes"}, "cluster.udp_checksum: 'yes' is not true or false"),
    ({"subnet_len": 31}, "subnet_len: 31 is outside 16..30"),
    ({"subnet_len": 8}, "subnet_len: 8 is outside 16..30"),
    ({"mtu": 10}, "cluster.mtu: 10 is outside"),
])
def test_a_bad_config_is_a_bad_record_with_the_plans_words(patch, needle):
    d = json.loads(CONFIG_JSON)
    d.update(patch)
    with pytest.raises(BadRecord) as e:
        ClusterConfig.from_json(json.dumps(d).encode(), "/vtep/config")
    msg = str(e.value)
    assert msg.startswith("etcd /vtep/config: ") and needle in msg and "\n" not in msg, msg


@pytest.mark.parametrize("data,needle", [
    (b"{", "not JSON"), (b"[1]", "not a JSON object"), (b"\xff", "not UTF-8"),
    (b'{"vni":10}', "port: missing"),
])
def test_config_that_is_not_a_record(data, needle):
    with pytest.raises(BadRecord, match=needle):
        ClusterConfig.from_json(data, "/vtep/config")


def test_member_json_both_ways():
    m = Member.from_json("network-2", MEMBER_JSON, "/vtep/nodes/network-2")
    assert m == Member("network-2", ipaddress.IPv4Address("192.168.1.138"),
                       "06:b3:5c:00:11:22", N("172.2.1.0/24"), "kernel", 1450, "0.1.0",
                       1700000000.5)
    assert json.loads(m.to_json()) == json.loads(MEMBER_JSON)
    # a field an agent of a later version adds is ignored
    d = dict(json.loads(MEMBER_JSON), zone="b")
    assert Member.from_json("network-2", json.dumps(d)) == m


@pytest.mark.parametrize("field,value,needle", [
    ("underlay_ip", "1.2.3", "underlay_ip: '1.2.3' is not an IP address"),
    ("vtep_mac", "01:00:5e:00:00:01", "vtep_mac: '01:00:5e:00:00:01' is not a unicast"),
    ("subnet", "172.2.1.1/24", "subnet: '172.2.1.1/24' is not an IPv4 network"),
    ("mode", "dpdk", "mode: 'dpdk' is not one of kernel, userspace"),
    ("mtu", "1450", "mtu: '1450' is not a whole number or null"),
    ("mtu", 10, "mtu: 10 is outside"),
    ("since", "yesterday", "since: 'yesterday' is not a number"),
    ("version", None, "version: None is not a string"),
])
def test_a_bad_member_names_its_key_and_field(field, value, needle):
    d = json.loads(MEMBER_JSON)
    d[field] = value
    with pytest.raises(BadRecord) as e:
        Member.from_json("n", json.dumps(d), "/vtep/nodes/n")
    assert str(e.value).startswith("etcd /vtep/nodes/n: ") and needle in str(e.value)


def test_read_records_sorts_keys_and_keeps_bad_reservations_taken():
    class KV:
        def __init__(self, key, value, lease=0):
            self.key, self.value, self.lease, self.mod_revision = key, value, lease, 1
    recs = read_records(Layout(), [
        KV(b"/vtep/config", CONFIG_JSON), KV(b"/vtep/nodes/network-2", MEMBER_JSON, 7),
        KV(b"/vtep/subnets/172.2.1.0-24", b'{"node":"network-2"}', 9),
        KV(b"/vtep/subnets/172.2.2.0-24", b'garbage'),
        KV(b"/vtep/nodes/bad", b'{}'), KV(b"/vtep/other", b"x")])
    assert recs.config == cfg()
    assert list(recs.members) == ["network-2"]
    assert recs.reservations[N("172.2.1.0/24")] == Reservation(N("172.2.1.0/24"),
                                                               "network-2", 9)
    assert recs.reservations[N("172.2.2.0/24")].node == ""
    assert sorted(p.key for p in recs.problems) == ["/vtep/nodes/bad",
                                                    "/vtep/subnets/172.2.2.0-24"]


# --- plans, subnets, export ---------------------------------------------------------------------

def test_to_plan_goes_through_the_plans_rules():
    p = to_plan(cfg(), [member("b", "192.168.1.2", "172.2.1.0/24", "02:00:00:00:00:02"),
                        member("a", "192.168.1.1", "172.2.0.0/24", "02:00:00:00:00:01")],
                "etcd http://127.0.0.1:2379/vtep")
    assert [n.name for n in p.nodes] == ["a", "b"]
    assert p.node("b").vtep_ip == ipaddress.IPv4Address("172.2.1.0")
    assert (p.vni, p.port, str(p.overlay), p.mtu, p.udp_checksum) == \
        (10, 4789, "172.2.0.0/16", None, True)
    assert p.path == "etcd http://127.0.0.1:2379/vtep"
    with pytest.raises(PlanError, match=r"etcd http://x/vtep: node 'a': subnet: "
                       r"172.2.0.0/24 contains the underlay_ip"):
        to_plan(cfg(), [member("a", "172.2.0.9", "172.2.0.0/24")], "etcd http://x/vtep")
    assert to_plan(cfg(), [], "etcd x").nodes == ()


def test_plan_from_data_takes_a_cluster_table_alone():
    p = plan_from_data({"cluster": {"vni": 42, "overlay": "10.244.0.0/16"}}, "p.toml")
    assert (p.vni, p.port, str(p.overlay), p.nodes) == (42, 4789, "10.244.0.0/16", ())
    with pytest.raises(PlanError) as e:
        plan_from_data({"cluster": {"vni": 0, "overlay": "10.244.0.0/16"}}, "p.toml")
    assert e.value.problems == ["p.toml: cluster.vni: 0 is outside 1..16777215"]
    with pytest.raises(PlanError, match="p.toml: extra: unknown section"):
        plan_from_data({"cluster": {"overlay": "10.0.0.0/8"}, "extra": {}}, "p.toml")


@pytest.mark.parametrize("taken,previous,want", [
    ([], None, "172.2.0.0/24"),
    (["172.2.0.0/24", "172.2.2.0/24"], None, "172.2.1.0/24"),
    (["172.2.0.0/23"], None, "172.2.2.0/24"),                    # a larger block skipped
    (["172.2.0.128/25"], None, "172.2.1.0/24"),                  # a smaller one too
    (["172.2.0.0/24"], "172.2.7.0/24", "172.2.7.0/24"),          # the previous one, free
    (["172.2.0.0/24", "172.2.7.0/24"], "172.2.7.0/24", "172.2.1.0/24"),
    (["172.2.6.0/23"], "172.2.7.0/24", "172.2.0.0/24"),          # overlapped: not free
    ([], "10.0.0.0/24", "172.2.0.0/24"),                          # outside the overlay
    (["10.0.0.0/8"], None, "172.2.0.0/24"),                       # outside: ignored
])
def test_free_subnet(taken, previous, want):
    got = free_subnet(cfg(), {N(t) for t in taken}, N(previous) if previous else None)
    assert got == N(want)


def test_free_subnet_when_the_overlay_is_full():
    full = {N(f"172.2.{i}.0/24") for i in range(256)}
    with pytest.raises(NoFreeSubnet) as e:
        free_subnet(cfg(), full)
    assert str(e.value) == "overlay 172.2.0.0/16 has no free /24 left (256 taken)"
    assert e.value.exit_code == 2
    assert free_subnet(cfg(subnet_len=26), full - {N("172.2.255.0/24")}) == \
        N("172.2.255.0/26")


def test_config_diff_names_each_field_plan_first():
    assert cfg().diff(cfg(vni=42, overlay=N("10.0.0.0/8"))) == \
        ["vni: 10 vs 42", "overlay: 172.2.0.0/16 vs 10.0.0.0/8"]
    assert cfg(mtu=1400).diff(cfg()) == ["mtu: 1400 vs null"]
    assert cfg().diff(cfg()) == []


def test_export_is_a_plan_file(tmp_path):
    ms = [member("a", "192.168.1.1", "172.2.0.0/24", "02:00:00:00:00:01"),
          member("b", "192.168.1.2", "172.2.1.0/24", "02:00:00:00:00:02")]
    f = tmp_path / "x.toml"
    f.write_text(export_toml(cfg(mtu=1400), ms,
                             [Reservation(N("172.2.9.0/24"), "gone")], "etcd x"))
    p = planmod.load(f)
    assert [(n.name, str(n.underlay_ip), str(n.subnet), n.vtep_mac) for n in p.nodes] == [
        ("a", "192.168.1.1", "172.2.0.0/24", "02:00:00:00:00:01"),
        ("b", "192.168.1.2", "172.2.1.0/24", "02:00:00:00:00:02")]
    assert (p.vni, p.port, str(p.overlay), p.mtu, p.udp_checksum) == \
        (10, 4789, "172.2.0.0/16", 1400, True)
    assert "#   172.2.9.0/24 for gone" in f.read_text()


# --- against a real etcd ---------------------------------------------------------------------------

def enc(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def raw(srv, path: str, body: dict) -> dict:
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=LIMIT) as r:
        return json.loads(r.read())


def raw_get(srv, key: str):
    """(value as JSON, lease id) of the key as etcd has it, or None."""
    kvs = raw(srv, "/v3/kv/range", {"key": enc(key)}).get("kvs", [])
    if not kvs:
        return None
    return json.loads(base64.b64decode(kvs[0]["value"])), int(kvs[0].get("lease", 0))


def raw_keys(srv, prefix: str) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    kvs = raw(srv, "/v3/kv/range", {"key": enc(prefix), "range_end": enc(end),
                                    "keys_only": True}).get("kvs", [])
    return sorted(base64.b64decode(kv["key"]).decode() for kv in kvs)


def wait_until(pred, limit=LIMIT, step=0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if pred():
            return True
        time.sleep(step)
    return False


@pytest.fixture
def lay(request):
    return Layout(f"/t/{request.node.name.replace('[', '_').replace(']', '')}")


CLUSTER = planmod.Plan("p.toml", 10, 4789, N("172.2.0.0/16"), None, ())


def reg(client, lay, name, ip, **kw):
    return register(client, lay, name=name, underlay_ip=ip, mode="kernel", mtu=1450,
                    version="0.1.0", **kw)


def test_init_writes_the_config_and_reserves_the_plans_nodes(etcd, client, lay):
    plan = plan_from_data({"cluster": {"overlay": "172.2.0.0/16"}, "nodes": [
        {"name": "a", "underlay_ip": "192.168.1.1", "subnet": "172.2.5.0/24"}]}, "p.toml")
    done = init_cluster(client, lay, plan, 24)
    assert raw_get(etcd, lay.config) == (json.loads(CONFIG_JSON), 0)
    assert raw_get(etcd, lay.prefix + "/subnets/172.2.5.0-24") == ({"node": "a"}, 0)
    assert done[0].startswith(f"{lay.config}: created")
    # the reservation is a's: its agent gets it, on its long lease now
    r = reg(client, lay, "a", "192.168.1.1")
    assert r.member.subnet == N("172.2.5.0/24")
    assert raw_get(etcd, lay.prefix + "/subnets/172.2.5.0-24") == ({"node": "a"},
                                                                     r.long_lease_id)
    # and nobody else gets it
    assert reg(client, lay, "b", "192.168.1.2").member.subnet == N("172.2.0.0/24")
    # init again, same plan: nothing to do
    assert init_cluster(client, lay, plan, 24)[0] == f"{lay.config}: unchanged"


def test_init_over_another_config_is_refused_unless_forced(etcd, client, lay):
    init_cluster(client, lay, CLUSTER, 24)
    other = planmod.Plan("q.toml", 42, 4789, N("172.2.0.0/16"), None, ())
    with pytest.raises(ConfigDiffers) as e:
        init_cluster(client, lay, other, 25)
    assert "vni: 42 vs 10, subnet_len: 25 vs 24" in str(e.value)
    assert e.value.exit_code == 2
    assert raw_get(etcd, lay.config)[0]["vni"] == 10
    init_cluster(client, lay, other, 25, force=True)
    assert raw_get(etcd, lay.config)[0]["vni"] == 42
    assert raw_get(etcd, lay.config)[0]["subnet_len"] == 25


def test_init_refuses_a_plan_subnet_held_for_another_node(client, lay):
    init_cluster(client, lay, CLUSTER, 24)
    reg(client, lay, "b", "192.168.1.2")               # takes 172.2.0.0/24
    plan = plan_from_data({"cluster": {"overlay": "172.2.0.0/16"}, "nodes": [
        {"name": "a", "underlay_ip": "192.168.1.1", "subnet": "172.2.0.0/23"}]}, "p.toml")
    with pytest.raises(ReservationConflict, match="a's subnet 172.2.0.0/23 overlaps "
                       "172.2.0.0/24 held for b"):
        init_cluster(client, lay, plan, 24)


def test_register_without_a_cluster(client, lay):
    with pytest.raises(NoCluster, match=f"no cluster at {lay.prefix}: run vtep cluster init"):
        reg(client, lay, "a", "192.168.1.1")


def test_two_nodes_get_the_lowest_distinct_subnets_on_their_leases(etcd, client, lay):
    init_cluster(client, lay, CLUSTER, 24)
    a = reg(client, lay, "network-1", "192.168.1.1")
    b = reg(client, lay, "network-2", "192.168.1.2")
    assert (a.member.subnet, b.member.subnet) == (N("172.2.0.0/24"), N("172.2.1.0/24"))
    value, lease = raw_get(etcd, lay.node("network-2"))
    assert lease == b.lease_id and lease != b.long_lease_id
    assert value["underlay_ip"] == "192.168.1.2" and value["subnet"] == "172.2.1.0/24"
    assert value["vtep_mac"] == planmod.derive_mac("network-2", "172.2.1.0/24")
    assert raw_get(etcd, lay.prefix + "/subnets/172.2.1.0-24") == ({"node": "network-2"},
                                                                     b.long_lease_id)
    config, members, rev = snapshot(client, lay)
    assert config == cfg() and sorted(members) == ["network-1", "network-2"]
    assert rev >= b.revision


def test_back_after_the_ttl_expired_the_node_gets_its_subnet_back(etcd, client, lay):
    init_cluster(client, lay, CLUSTER, 24)
    a = reg(client, lay, "a", "192.168.1.1", ttl=2)
    assert wait_until(lambda: raw_get(etcd, lay.node("a")) is None, limit=8)
    # while a is away, another node joins: a's subnet is still reserved (flannel#1289)
    assert reg(client, lay, "b", "192.168.1.2").member.subnet == N("172.2.1.0/24")
    with pytest.raises(RegistrationLost, match="node a: the membership lease"):
        a.renew(client)
    again = reg(client, lay, "a", "192.168.1.1")
    assert again.member.subnet == a.member.subnet == N("172.2.0.0/24")
    again.renew(client)


def test_a_new_underlay_ip_keeps_the_subnet(etcd, client, lay):
    init_cluster(client, lay, CLUSTER, 24)
    reg(client, lay, "z", "192.168.1.9")
    a = reg(client, lay, "a", "192.168.1.1")
    deregister(client, lay, a)
    assert raw_get(etcd, lay.node("a")) is None
    assert raw_get(etcd, lay.prefix + "/subnets/172.2.1.0-24")[0] == {"node": "a"}
    moved = reg(client, lay, "a", "10.9.9.9")
    assert moved.member.subnet == N("172.2.1.0/24")
    assert raw_get(etcd, lay.node("a"))[0]["underlay_ip"] == "10.9.9.9"


def test_a_second_agent_with_a_live_nodes_name_is_refused(etcd, client, lay):
    init_cluster(client, lay, CLUSTER, 24)
    a = reg(client, lay, "a", "192.168.1.1")
    leases = len(raw(etcd, "/v3/lease/leases", {}).get("leases", []))
    with pytest.raises(NameTaken) as e:
        reg(client, lay, "a", "192.168.1.7")
    msg = str(e.value)
    assert msg.startswith("node a is alive at 192.168.1.1 (since ") and \
        msg.endswith("): another agent has that name"), msg
    assert e.value.exit_code == 4
    assert len(raw(etcd, "/v3/lease/leases", {}).get("leases", [])) == leases  # none left
    assert raw_get(etcd, lay.node("a")) == (json.loads(a.member.to_json()), a.lease_id)
    # the same host's agent again (its device lock refused a second one): takes over
    b = reg(client, lay, "a", "192.168.1.1")
    assert b.lease_id != a.lease_id and b.member.subnet == a.member.subnet
    assert raw_get(etcd, lay.node("a"))[1] == b.lease_id


def test_twenty_agents_at_once_get_twenty_subnets(etcd, lay):
    with Client(etcd.url, timeout=LIMIT) as c:
        init_cluster(c, lay, CLUSTER, 24)
    got, errors = {}, []

    def one(i):
        try:
            with Client(etcd.url, timeout=LIMIT) as c:
                got[i] = reg(c, lay, f"n{i}", f"192.168.2.{i + 1}").member.subnet
        except Exception as e:     # reported below, with the thread's index
            errors.append((i, e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(got) == 20, errors
    assert sorted(got.values()) == [N(f"172.2.{i}.0/24") for i in range(20)]
    assert raw_keys(etcd, lay.subnets) == sorted(
        f"{lay.subnets}172.2.{i}.0-24" for i in range(20))


def test_a_claim_read_before_another_claim_is_refused(client, lay):
    """The claim's guard: a subnet key written after our read fails the transaction,
    whatever its size (a /23 and a /24 inside it have different keys, so the key's
    own create-if-absent could not see that overlap)."""
    from vtep.etcd import op_put
    from vtep.etcd.membership import _guard_subnets
    rev = client.put(lay.config, b"{}")
    assert client.txn([_guard_subnets(lay, rev)], [op_put(lay.prefix + "/x", b"1")]).succeeded
    client.put(lay.subnets + "172.2.0.0-23", b'{"node":"a"}')
    assert not client.txn([_guard_subnets(lay, rev)], []).succeeded
    client.put(lay.prefix + "/nodes/q", b"{}")            # not a subnet: no matter
    assert client.txn([_guard_subnets(lay, client.put(lay.prefix + "/y", b"1"))],
                      []).succeeded


def test_remove_frees_the_name_and_the_subnet_at_once(etcd, client, lay):
    init_cluster(client, lay, CLUSTER, 24)
    reg(client, lay, "a", "192.168.1.1")
    reg(client, lay, "b", "192.168.1.2")
    assert remove_node(client, lay, "a") == [f"{lay.node('a')}: deleted",
                                             f"{lay.subnets}172.2.0.0-24: deleted"]
    assert raw_keys(etcd, lay.root) == [lay.config, lay.node("b"),
                                        f"{lay.subnets}172.2.1.0-24"]
    assert reg(client, lay, "c", "192.168.1.3").member.subnet == N("172.2.0.0/24")
    with pytest.raises(NoSuchNode, match=r"no node a at .* \(nodes: b, c\)"):
        remove_node(client, lay, "a")


def test_export_of_the_live_cluster_loads_as_a_plan(client, lay, tmp_path):
    init_cluster(client, lay, CLUSTER, 24)
    a = reg(client, lay, "a", "192.168.1.1")
    b = reg(client, lay, "b", "192.168.1.2")
    config, members, _ = snapshot(client, lay)
    f = tmp_path / "live.toml"
    f.write_text(export_toml(config, members))
    p = planmod.load(f)
    assert [(n.name, n.underlay_ip, n.subnet, n.vtep_mac) for n in p.nodes] == [
        (m.name, m.underlay_ip, m.subnet, m.vtep_mac) for m in (a.member, b.member)]


# --- the CLI -------------------------------------------------------------------------------------

def vtep(*argv, timeout=30):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "inspect"), os.environ.get("PYTHONPATH", "")]))
    env.pop("VTEP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "vtep.cli", "cluster", *argv],
                          capture_output=True, text=True, timeout=timeout, env=env)


def one_error(r, code, *needles):
    """One error line (a plan's warnings aside: 172.2.0.0/16 is public space)."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if not x.startswith("vtep: warning:")]
    assert len(lines) == 1 and lines[0].startswith("vtep: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_init_show_remove_export(etcd, client, lay, tmp_path):
    opts = ["--etcd", etcd.url, "--etcd-prefix", lay.prefix]
    one_error(vtep("show", *opts), 2, f"no cluster at {lay.prefix}: run vtep cluster init")
    plan = tmp_path / "p.toml"
    plan.write_text('[cluster]\nvni = 10\noverlay = "172.2.0.0/16"\n\n[[nodes]]\n'
                    'name = "c"\nunderlay_ip = "192.168.1.3"\nsubnet = "172.2.9.0/24"\n')
    r = vtep("init", *opts, "--config", str(plan))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"{lay.subnets}172.2.9.0-24: reserved for c"
    a = reg(client, lay, "a", "192.168.1.1")
    r = vtep("show", *opts)
    assert r.returncode == 0, r.stderr
    rows = [line.split(None, 5) for line in r.stdout.splitlines()]
    assert rows[0] == ["NAME", "SUBNET", "UNDERLAY-IP", "VTEP-MAC", "MODE", "STATUS"]
    assert rows[1][:5] == ["a", "172.2.0.0/24", "192.168.1.1", a.member.vtep_mac, "kernel"]
    assert rows[1][5] == "alive since " + time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                        time.gmtime(a.member.since))
    assert rows[2] == ["c", "172.2.9.0/24", "-", planmod.derive_mac("c", "172.2.9.0/24"),
                       "-", "reserved (by init)"]
    js = json.loads(vtep("show", "--json", *opts).stdout)
    assert [(n["name"], n["status"]) for n in js["nodes"]] == [("a", "alive"),
                                                              ("c", "reserved")]
    r = vtep("export", *opts)
    assert r.returncode == 0, r.stderr
    (tmp_path / "live.toml").write_text(r.stdout)
    assert [n.name for n in planmod.load(tmp_path / "live.toml").nodes] == ["a"]
    assert vtep("remove", "c", *opts).returncode == 0
    one_error(vtep("remove", "c", *opts), 2, f"no node c at {lay.prefix} (nodes: a)")


def test_cli_errors_are_one_line_with_their_exit_code(etcd, lay, tmp_path):
    opts = ["--etcd", etcd.url, "--etcd-prefix", lay.prefix]
    plan = tmp_path / "p.toml"
    plan.write_text('[cluster]\nvni = 10\noverlay = "172.2.0.0/16"\n')
    assert vtep("init", *opts, "-c", str(plan)).returncode == 0
    plan.write_text('[cluster]\nvni = 42\noverlay = "172.2.0.0/16"\n')
    one_error(vtep("init", *opts, "-c", str(plan)), 2, "vni: 42 vs 10", "--force")
    assert vtep("init", *opts, "-c", str(plan), "--force").returncode == 0
    one_error(vtep("init", *opts, "-c", str(plan), "--subnet-len", "12"), 2,
              "subnet_len: 12 is outside 16..30")
    plan.write_text('[cluster]\nvni = 0\noverlay = "172.2.0.0/16"\n')
    one_error(vtep("init", *opts, "-c", str(plan)), 2,
              f"{plan}: cluster.vni: 0 is outside 1..16777215")
    one_error(vtep("init", *opts, "-c", str(tmp_path / "none.toml")), 2, "no such file")
    dead = f"http://127.0.0.1:{free_port()}"
    one_error(vtep("show", "--etcd", dead), 7, f"etcd unavailable: {dead}")
    one_error(vtep("show", "--etcd", "127.0.0.1:2379"), 2, "not an etcd URL")
    one_error(vtep("show", "--etcd", etcd.url, "--etcd-prefix", "vtep"), 2,
              "etcd prefix 'vtep'")
    one_error(vtep("show"), 2, "--etcd")


def test_init_warns_as_a_plan_file_does(etcd, lay, tmp_path):
    """A [cluster]-only plan is checked by the plan's own rules, warnings included."""
    plan = tmp_path / "p.toml"
    plan.write_text('[cluster]\nvni = 10\noverlay = "172.2.0.0/16"\n')
    r = vtep("init", "--etcd", etcd.url, "--etcd-prefix", lay.prefix, "-c", str(plan))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"vtep: warning: {plan}: cluster.overlay: 172.2.0.0/16 is not private address space "
        "(RFC 1918 or 100.64.0.0/10); traffic to those addresses elsewhere on the internet "
        "will be routed into the overlay"]


# --- dual stack (issue 15) ------------------------------------------------------------------------
# The expected keys and JSON are written by hand: RFC 5952's compressed form for the IPv6
# keys, the plan's field names (overlay6, subnet6) and flannel's /64 default per node.

N6 = ipaddress.IPv6Network
CONFIG46_JSON = (b'{"vni":10,"port":4789,"overlay":"172.2.0.0/16","mtu":null,'
                 b'"udp_checksum":true,"subnet_len":24,"overlay6":"fd00:172:2::/48",'
                 b'"subnet6_len":64}')
CONFIG6_JSON = (b'{"vni":10,"port":4789,"mtu":null,"udp_checksum":true,'
                b'"overlay6":"fd00:172:2::/48","subnet6_len":64}')
MEMBER46_JSON = (b'{"underlay_ip":"192.168.1.138","vtep_mac":"06:b3:5c:00:11:22",'
                 b'"subnet":"172.2.1.0/24","mode":"kernel","mtu":1450,"version":"0.1.0",'
                 b'"since":1700000000.5,"subnet6":"fd00:172:2:1::/64"}')
MEMBER6_JSON = (b'{"underlay_ip":"192.168.1.138","vtep_mac":"06:b3:5c:00:11:22",'
                b'"subnet":null,"mode":"kernel","mtu":1450,"version":"0.1.0",'
                b'"since":1700000000.5,"subnet6":"fd00:172:2:1::/64"}')


def cfg46(**kw) -> ClusterConfig:
    return cfg(**{"overlay6": N6("fd00:172:2::/48"), "subnet6_len": 64, **kw})


def cfg6(**kw) -> ClusterConfig:
    return cfg(**{"overlay": None, "subnet_len": None, "overlay6": N6("fd00:172:2::/48"),
                  "subnet6_len": 64, **kw})


def member46(name, ip, subnet, subnet6, mac="06:b3:5c:00:11:22") -> Member:
    return Member(name, ipaddress.ip_address(ip), mac, N(subnet) if subnet else None,
                  "kernel", 1450, "0.1.0", 1700000000.0, N6(subnet6) if subnet6 else None)


def test_ipv6_reservation_keys_are_compressed_and_one_spelling():
    lay = Layout()
    assert lay.subnet(N6("fd00:172:2:1::/64")) == "/vtep/subnets/fd00:172:2:1::-64"
    assert lay.subnet(N6("fd00:172:2::/64")) == "/vtep/subnets/fd00:172:2::-64"
    assert lay.net_of("/vtep/subnets/fd00:172:2:1::-64") == N6("fd00:172:2:1::/64")
    for key in ("/vtep/subnets/FD00:172:2:1::-64", "/vtep/subnets/fd00:172:2:1:0::-64",
                "/vtep/subnets/fd00:0172:2:1::-64", "/vtep/subnets/fd00:172:2:1::1-64",
                "/vtep/subnets/fd00:172:2:1::-129"):
        with pytest.raises(BadRecord) as e:
            lay.net_of(key)
        assert e.value.key == key


def test_dual_stack_and_ipv6_only_config_json_both_ways():
    c = ClusterConfig.from_json(CONFIG46_JSON, "/vtep/config")
    assert c == cfg46() and c.families == (4, 6)
    assert c.to_json() == CONFIG46_JSON
    assert c.table() == {"vni": 10, "port": 4789, "overlay": "172.2.0.0/16",
                         "overlay6": "fd00:172:2::/48", "udp_checksum": True}
    c6 = ClusterConfig.from_json(CONFIG6_JSON, "/vtep/config")
    assert c6 == cfg6() and c6.families == (6,)
    assert c6.to_json() == CONFIG6_JSON
    assert c6.table() == {"vni": 10, "port": 4789, "overlay6": "fd00:172:2::/48",
                          "udp_checksum": True}
    # null is read as absent (a hand-written record may say so)
    d = dict(json.loads(CONFIG6_JSON), overlay=None, subnet_len=None)
    assert ClusterConfig.from_json(json.dumps(d)) == c6
    # a v4-only config is still the pre-dual-stack bytes (an earlier agent reads it)
    assert cfg().to_json() == CONFIG_JSON


@pytest.mark.parametrize("base,patch,needle", [
    (CONFIG46_JSON, {"overlay6": "fe80::/10"}, "overlaps fe80::/10, link-local"),
    (CONFIG46_JSON, {"overlay6": "10.0.0.0/8"}, "is IPv4: give it as cluster.overlay"),
    (CONFIG46_JSON, {"overlay6": 6}, "overlay6: 6 is not a string"),
    (CONFIG46_JSON, {"subnet6_len": 127}, "subnet6_len: 127 is outside 48..126"),
    (CONFIG46_JSON, {"subnet6_len": 40}, "subnet6_len: 40 is outside 48..126"),
    (CONFIG46_JSON, {"subnet6_len": "64"}, "subnet6_len: '64' is not a whole number"),
    (CONFIG6_JSON, {"overlay6": None}, "cluster.overlay: missing"),
])
def test_a_bad_ipv6_config_is_a_bad_record_with_the_plans_words(base, patch, needle):
    d = json.loads(base)
    d.update(patch)
    with pytest.raises(BadRecord) as e:
        ClusterConfig.from_json(json.dumps(d).encode(), "/vtep/config")
    msg = str(e.value)
    assert msg.startswith("etcd /vtep/config: ") and needle in msg and "\n" not in msg, msg


def test_a_config_with_overlay6_but_no_subnet6_len_is_a_bad_record():
    d = json.loads(CONFIG46_JSON)
    del d["subnet6_len"]
    with pytest.raises(BadRecord, match=r"subnet6_len: missing \(overlay6 is set\)"):
        ClusterConfig.from_json(json.dumps(d), "/vtep/config")


def test_from_plan_checks_subnet6_len_against_overlay6_only():
    p = plan_from_data({"cluster": {"overlay": "10.244.0.0/16",
                                    "overlay6": "fd00:10:244::/120"}}, "p.toml")
    with pytest.raises(PlanError) as e:
        ClusterConfig.from_plan(p, 24)          # the default /64 is larger than the overlay6
    assert str(e.value) == ("p.toml: subnet6_len: 64 is outside 120..126 (each node's IPv6 "
                            "subnet lies inside the overlay6 fd00:10:244::/120 and is /126 "
                            "or larger)")
    assert ClusterConfig.from_plan(p, 24, subnet6_len=124).subnet6_len == 124
    # no overlay6: no subnet6_len stored, whatever was asked
    c = ClusterConfig.from_plan(plan_from_data({"cluster": {"overlay": "10.244.0.0/16"}},
                                               "p.toml"), 24, subnet6_len=999)
    assert (c.overlay6, c.subnet6_len) == (None, None)


def test_config_diff_names_the_ipv6_fields():
    assert cfg().diff(cfg46()) == ["overlay6: null vs fd00:172:2::/48",
                                   "subnet6_len: null vs 64"]
    assert cfg46().diff(cfg6()) == ["overlay: 172.2.0.0/16 vs null", "subnet_len: 24 vs null"]


def test_dual_stack_and_ipv6_only_member_json_both_ways():
    m = Member.from_json("network-2", MEMBER46_JSON, "/vtep/nodes/network-2")
    assert (m.subnet, m.subnet6) == (N("172.2.1.0/24"), N6("fd00:172:2:1::/64"))
    assert m.to_json() == MEMBER46_JSON
    m6 = Member.from_json("network-2", MEMBER6_JSON, "/vtep/nodes/network-2")
    assert (m6.subnet, m6.subnet6) == (None, N6("fd00:172:2:1::/64"))
    assert m6.to_json() == MEMBER6_JSON
    assert m6.subnets == (N6("fd00:172:2:1::/64"),)
    # a v4-only member still has no subnet6 field at all (pre-dual-stack bytes)
    assert b"subnet6" not in Member.from_json("n", MEMBER_JSON).to_json()


@pytest.mark.parametrize("patch,needle", [
    ({"subnet6": "fd00:172:2:1::1/64"}, "subnet6: 'fd00:172:2:1::1/64' is not an IPv6 network"),
    ({"subnet6": "172.2.1.0/24"}, "subnet6: '172.2.1.0/24' is not an IPv6 network"),
    ({"subnet6": 64}, "subnet6: 64 is not a string"),
    ({"subnet6": None}, "subnet and subnet6: both null"),
    ({"subnet": "fd00:172:2:1::/64"}, "subnet: 'fd00:172:2:1::/64' is not an IPv4 network"),
])
def test_a_bad_member_subnet6_names_its_key_and_field(patch, needle):
    d = json.loads(MEMBER6_JSON)
    d.update(patch)
    with pytest.raises(BadRecord) as e:
        Member.from_json("n", json.dumps(d), "/vtep/nodes/n")
    assert str(e.value).startswith("etcd /vtep/nodes/n: ") and needle in str(e.value)


def test_to_plan_dual_stack_and_ipv6_only():
    ms = [member46("a", "192.168.1.1", "172.2.0.0/24", "fd00:172:2::/64", "02:00:00:00:00:01"),
          member46("b", "192.168.1.2", "172.2.1.0/24", "fd00:172:2:1::/64",
                   "02:00:00:00:00:02")]
    p = to_plan(cfg46(), ms, "etcd x")
    assert (str(p.overlay), str(p.overlay6)) == ("172.2.0.0/16", "fd00:172:2::/48")
    assert not [w for w in p.warnings if "overlay6" in w], p.warnings
    b = p.node("b")
    assert (str(b.subnet), str(b.subnet6), str(b.vtep_ip6)) == \
        ("172.2.1.0/24", "fd00:172:2:1::/64", "fd00:172:2:1::")
    p6 = to_plan(cfg6(), [member46("a", "192.168.1.1", None, "fd00:172:2::/64")], "etcd x")
    assert (p6.overlay, p6.node("a").subnet, str(p6.node("a").subnet6)) == \
        (None, None, "fd00:172:2::/64")
    # the plan's own rules hold for subnet6 too
    with pytest.raises(PlanError, match=r"etcd x: node 'a': subnet6: fd00:173::/64 is outside "
                       r"the overlay fd00:172:2::/48"):
        to_plan(cfg6(), [member46("a", "192.168.1.1", None, "fd00:173::/64")], "etcd x")
    # a subnet6 of a cluster without overlay6 (it lost it) is not served
    assert to_plan(cfg(), ms, "etcd x").node("a").subnet6 is None


def test_to_plan_leaves_out_a_family_some_member_holds_no_subnet_of():
    """overlay6 set while b's agent (an older one, or one that has not claimed yet) holds
    only IPv4: every node serves IPv4 alone, and says why."""
    ms = [member46("a", "192.168.1.1", "172.2.0.0/24", "fd00:172:2::/64", "02:00:00:00:00:01"),
          member46("b", "192.168.1.2", "172.2.1.0/24", None, "02:00:00:00:00:02")]
    p = to_plan(cfg46(), ms, "etcd x")
    assert p.overlay6 is None and [n.subnet6 for n in p.nodes] == [None, None]
    assert [str(n.subnet) for n in p.nodes] == ["172.2.0.0/24", "172.2.1.0/24"]
    (w,) = [w for w in p.warnings if "overlay6" in w]
    assert w.startswith("etcd x: cluster.overlay6 fd00:172:2::/48 is left out of the plan: "
                        "the member record of b has no subnet6, not compatible with the "
                        "current config"), w
    with pytest.raises(PlanError, match=r"etcd x: no address family every member holds a "
                       r"subnet of: b holds no subnet6"):
        to_plan(cfg6(), ms[1:] + [member46("c", "192.168.1.3", None, "fd00:172:2:2::/64",
                                           "02:00:00:00:00:03")],
                "etcd x")


@pytest.mark.parametrize("taken,previous,want", [
    ([], None, "fd00:172:2::/64"),
    (["fd00:172:2::/63"], None, "fd00:172:2:2::/64"),                # a larger block skipped
    (["fd00:172:2::/80"], None, "fd00:172:2:1::/64"),                # a smaller one too
    (["172.2.0.0/24", "fd00:172:2::/64"], None, "fd00:172:2:1::/64"),  # IPv4: another family
    ([], "fd00:172:2:7::/64", "fd00:172:2:7::/64"),                  # the previous one, free
    ([], "172.2.7.0/24", "fd00:172:2::/64"),                         # of the other family
    ([], "fd00:173::/64", "fd00:172:2::/64"),                        # outside the overlay6
])
def test_free_subnet6(taken, previous, want):
    got = free_subnet(cfg46(), {ipaddress.ip_network(t) for t in taken},
                      ipaddress.ip_network(previous) if previous else None, 6)
    assert got == N6(want)


def test_free_subnet6_when_the_overlay6_is_full():
    c = cfg6(overlay6=N6("fd00:172:2::/62"))
    full = {N6(f"fd00:172:2:{i}::/64") for i in range(4)}
    with pytest.raises(NoFreeSubnet) as e:
        free_subnet(c, full, version=6)
    assert str(e.value) == "overlay6 fd00:172:2::/62 has no free /64 left (4 taken)"


def test_export_of_a_dual_stack_cluster_is_a_plan_file(tmp_path):
    ms = [member46("a", "192.168.1.1", "172.2.0.0/24", "fd00:172:2::/64", "02:00:00:00:00:01"),
          member46("b", "192.168.1.2", "172.2.1.0/24", "fd00:172:2:1::/64",
                   "02:00:00:00:00:02")]
    f = tmp_path / "x.toml"
    text = export_toml(cfg46(), ms, [Reservation(N6("fd00:172:2:9::/64"), "gone")])
    f.write_text(text)
    p = planmod.load(f)
    assert [(n.name, str(n.subnet), str(n.subnet6)) for n in p.nodes] == [
        ("a", "172.2.0.0/24", "fd00:172:2::/64"), ("b", "172.2.1.0/24", "fd00:172:2:1::/64")]
    assert str(p.overlay6) == "fd00:172:2::/48"
    assert "# subnet6_len = 64" in text and "#   fd00:172:2:9::/64 for gone" in text
    # a member without a subnet6: the file is the IPv4 plan to_plan serves, overlay6 shown
    # commented out
    f.write_text(export_toml(cfg46(), [ms[0], member46("b", "192.168.1.2", "172.2.1.0/24",
                                                      None)]))
    p = planmod.load(f)
    assert p.overlay6 is None and [n.subnet6 for n in p.nodes] == [None, None]
    assert '# overlay6 = "fd00:172:2::/48"' in f.read_text()


# --- dual stack against a real etcd ------------------------------------------------------------

CLUSTER46 = planmod.Plan("p.toml", 10, 4789, N("172.2.0.0/16"), None, (),
                         overlay6=N6("fd00:172:2::/48"))
CLUSTER6 = planmod.Plan("p.toml", 10, 4789, None, None, (), overlay6=N6("fd00:172:2::/48"))


def test_init_dual_stack_writes_overlay6_and_reserves_both_subnets(etcd, client, lay):
    plan = plan_from_data({"cluster": {"overlay": "172.2.0.0/16",
                                       "overlay6": "fd00:172:2::/48"}, "nodes": [
        {"name": "a", "underlay_ip": "192.168.1.1", "subnet": "172.2.5.0/24",
         "subnet6": "fd00:172:2:5::/64"}]}, "p.toml")
    done = init_cluster(client, lay, plan, 24)
    assert raw_get(etcd, lay.config) == (json.loads(CONFIG46_JSON), 0)
    assert raw_get(etcd, lay.prefix + "/subnets/172.2.5.0-24") == ({"node": "a"}, 0)
    assert raw_get(etcd, lay.prefix + "/subnets/fd00:172:2:5::-64") == ({"node": "a"}, 0)
    assert done[-1] == f"{lay.subnets}fd00:172:2:5::-64: reserved for a"
    # a's agent gets both, now on its long lease; b the lowest free of each family
    a = reg(client, lay, "a", "192.168.1.1")
    assert (a.member.subnet, a.member.subnet6) == (N("172.2.5.0/24"), N6("fd00:172:2:5::/64"))
    assert raw_get(etcd, lay.prefix + "/subnets/fd00:172:2:5::-64") == ({"node": "a"},
                                                                          a.long_lease_id)
    b = reg(client, lay, "b", "192.168.1.2")
    assert (b.member.subnet, b.member.subnet6) == (N("172.2.0.0/24"), N6("fd00:172:2::/64"))
    assert init_cluster(client, lay, plan, 24)[0] == f"{lay.config}: unchanged"
    # a plan giving a another subnet6, or b's subnet6 to c, is refused
    other = plan_from_data({"cluster": {"overlay": "172.2.0.0/16",
                                        "overlay6": "fd00:172:2::/48"}, "nodes": [
        {"name": "a", "underlay_ip": "192.168.1.1", "subnet": "172.2.5.0/24",
         "subnet6": "fd00:172:2:6::/64"},
        {"name": "c", "underlay_ip": "192.168.1.3", "subnet": "172.2.7.0/24",
         "subnet6": "fd00:172:2::/63"}]}, "p.toml")
    with pytest.raises(ReservationConflict) as e:
        init_cluster(client, lay, other, 24)
    assert "a holds fd00:172:2:5::/64, the plan gives it fd00:172:2:6::/64" in str(e.value)
    assert "c's subnet fd00:172:2::/63 overlaps fd00:172:2::/64 held for b" in str(e.value)


def test_two_nodes_join_a_dual_stack_cluster_one_transaction_each(etcd, client, lay):
    init_cluster(client, lay, CLUSTER46, 24)
    a = reg(client, lay, "network-1", "192.168.1.1")
    b = reg(client, lay, "network-2", "192.168.1.2")
    value, lease = raw_get(etcd, lay.node("network-2"))
    assert lease == b.lease_id
    assert (value["subnet"], value["subnet6"]) == ("172.2.1.0/24", "fd00:172:2:1::/64")
    # one MAC for both families, derived from the IPv4 subnet as in a v4-only cluster
    assert value["vtep_mac"] == planmod.derive_mac("network-2", "172.2.1.0/24")
    for key in ("172.2.1.0-24", "fd00:172:2:1::-64"):
        assert raw_get(etcd, lay.subnets + key) == ({"node": "network-2"}, b.long_lease_id)
    # both reservations and the member record came from one transaction: one revision
    kvs = raw(etcd, "/v3/kv/range", {"key": enc(lay.root), "range_end": enc(lay.prefix + "0")})
    revs = {base64.b64decode(kv["key"]).decode(): int(kv["mod_revision"]) for kv in kvs["kvs"]}
    assert revs[lay.node("network-2")] == revs[lay.subnets + "172.2.1.0-24"] == \
        revs[lay.subnets + "fd00:172:2:1::-64"] == b.revision
    p = to_plan(*snapshot(client, lay)[:2], "etcd x")
    assert [(n.name, str(n.subnet6)) for n in p.nodes] == [
        ("network-1", "fd00:172:2::/64"), ("network-2", "fd00:172:2:1::/64")]
    assert a.member.subnet6 == N6("fd00:172:2::/64")


def test_an_ipv6_only_cluster(etcd, client, lay):
    init_cluster(client, lay, CLUSTER6, 24)
    assert raw_get(etcd, lay.config)[0] == json.loads(CONFIG6_JSON)
    a = reg(client, lay, "a", "192.168.1.1")
    b = reg(client, lay, "b", "192.168.1.2")
    assert (a.member.subnet, a.member.subnet6) == (None, N6("fd00:172:2::/64"))
    assert raw_get(etcd, lay.node("b"))[0]["subnet"] is None
    assert raw_keys(etcd, lay.subnets) == [lay.subnets + "fd00:172:2:1::-64",
                                           lay.subnets + "fd00:172:2::-64"]
    p = to_plan(*snapshot(client, lay)[:2], "etcd x")
    assert p.overlay is None and [str(n.vtep_ip6) for n in p.nodes] == ["fd00:172:2::",
                                                                        "fd00:172:2:1::"]
    assert b.member.vtep_mac == planmod.derive_mac("b", "fd00:172:2:1::/64")
    assert remove_node(client, lay, "a") == [f"{lay.node('a')}: deleted",
                                             f"{lay.subnets}fd00:172:2::-64: deleted"]


def test_both_reservations_outlive_the_membership(etcd, client, lay):
    init_cluster(client, lay, CLUSTER46, 24)
    a = reg(client, lay, "a", "192.168.1.1", ttl=2)
    assert wait_until(lambda: raw_get(etcd, lay.node("a")) is None, limit=8)
    b = reg(client, lay, "b", "192.168.1.2")
    assert (b.member.subnet, b.member.subnet6) == (N("172.2.1.0/24"), N6("fd00:172:2:1::/64"))
    again = reg(client, lay, "a", "10.9.9.9")
    assert (again.member.subnet, again.member.subnet6) == (a.member.subnet, a.member.subnet6)
    assert remove_node(client, lay, "a") == [
        f"{lay.node('a')}: deleted", f"{lay.subnets}172.2.0.0-24: deleted",
        f"{lay.subnets}fd00:172:2::-64: deleted"]


def test_a_config_that_gains_overlay6_has_members_claim_a_subnet6(etcd, client, lay):
    """A v4-only cluster with a live member; `init --force` adds overlay6. Until the member
    claims a subnet6 the cluster is served IPv4-only (with the reason); reclaim claims it
    on the member's own leases, its IPv4 subnet and MAC kept."""
    from vtep.etcd.membership import lacking, reclaim
    init_cluster(client, lay, CLUSTER, 24)
    a = reg(client, lay, "a", "192.168.1.1")
    assert a.member.subnet6 is None
    done = init_cluster(client, lay, CLUSTER46, 24, force=True)
    assert done[0] == (f"{lay.config}: replaced (overlay6: fd00:172:2::/48 vs null, "
                       "subnet6_len: 64 vs null)")
    config, members, _ = snapshot(client, lay)
    assert lacking(config, members["a"]) == (6,)
    p = to_plan(config, members, "etcd x")
    assert p.overlay6 is None and any("the member record of a has no subnet6" in w
                                      for w in p.warnings)
    # a new node joining meanwhile gets both; the plan stays IPv4 while a lacks one
    b = reg(client, lay, "b", "192.168.1.2")
    assert b.member.subnet6 == N6("fd00:172:2::/64")
    a2 = reclaim(client, lay, a)
    assert (a2.lease_id, a2.long_lease_id) == (a.lease_id, a.long_lease_id)
    assert (a2.member.subnet, a2.member.vtep_mac) == (a.member.subnet, a.member.vtep_mac)
    assert a2.member.subnet6 == N6("fd00:172:2:1::/64")
    assert raw_get(etcd, lay.subnets + "fd00:172:2:1::-64") == ({"node": "a"},
                                                                  a.long_lease_id)
    assert raw_get(etcd, lay.node("a")) == (json.loads(a2.member.to_json()), a.lease_id)
    p = to_plan(*snapshot(client, lay)[:2], "etcd x")
    assert str(p.overlay6) == "fd00:172:2::/48" and \
        [str(n.subnet6) for n in p.nodes] == ["fd00:172:2:1::/64", "fd00:172:2::/64"]
    # a lease gone: reclaim says register again
    deregister(client, lay, a2)
    with pytest.raises(RegistrationLost):
        reclaim(client, lay, a2)


def test_twenty_agents_at_once_get_twenty_subnets_of_each_family(etcd, lay):
    with Client(etcd.url, timeout=LIMIT) as c:
        init_cluster(c, lay, CLUSTER46, 24)
    got, errors = {}, []

    def one(i):
        try:
            with Client(etcd.url, timeout=LIMIT) as c:
                m = reg(c, lay, f"n{i}", f"192.168.2.{i + 1}").member
                got[i] = (m.subnet, m.subnet6)
        except Exception as e:     # reported below, with the thread's index
            errors.append((i, e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(got) == 20, errors
    assert sorted(s for s, _ in got.values()) == [N(f"172.2.{i}.0/24") for i in range(20)]
    assert sorted(s6 for _, s6 in got.values()) == [
        N6(f"fd00:172:2:{i:x}::/64") for i in range(20)]


def test_cli_dual_stack_init_show_export(etcd, client, lay, tmp_path):
    opts = ["--etcd", etcd.url, "--etcd-prefix", lay.prefix]
    plan = tmp_path / "p.toml"
    plan.write_text('[cluster]\nvni = 10\noverlay = "10.244.0.0/16"\n'
                    'overlay6 = "fd00:10:244::/48"\n\n[[nodes]]\n'
                    'name = "c"\nunderlay_ip = "192.168.1.3"\nsubnet = "10.244.9.0/24"\n'
                    'subnet6 = "fd00:10:244:9::/64"\n')
    r = vtep("init", *opts, "--config", str(plan))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [f"{lay.subnets}10.244.9.0-24: reserved for c",
                                          f"{lay.subnets}fd00:10:244:9::-64: reserved for c"]
    assert raw_get(etcd, lay.config)[0]["subnet6_len"] == 64
    a = reg(client, lay, "a", "192.168.1.1")
    r = vtep("show", *opts)
    assert r.returncode == 0, r.stderr
    rows = [line.split(None, 6) for line in r.stdout.splitlines()]
    assert rows[0] == ["NAME", "SUBNET", "SUBNET6", "UNDERLAY-IP", "VTEP-MAC", "MODE",
                       "STATUS"]
    assert rows[1][:6] == ["a", "10.244.0.0/24", "fd00:10:244::/64", "192.168.1.1",
                           a.member.vtep_mac, "kernel"]
    assert rows[2] == ["c", "10.244.9.0/24", "fd00:10:244:9::/64", "-",
                       planmod.derive_mac("c", "10.244.9.0/24"), "-", "reserved (by init)"]
    js = json.loads(vtep("show", "--json", *opts).stdout)
    assert js["config"]["overlay6"] == "fd00:10:244::/48"
    assert [(n["name"], n["subnet6"]) for n in js["nodes"]] == [
        ("a", "fd00:10:244::/64"), ("c", "fd00:10:244:9::/64")]
    r = vtep("export", *opts)
    assert r.returncode == 0, r.stderr
    (tmp_path / "live.toml").write_text(r.stdout)
    p = planmod.load(tmp_path / "live.toml")
    assert [(n.name, str(n.subnet6)) for n in p.nodes] == [("a", "fd00:10:244::/64")]
    # --subnet6-len reaches the config (clustercmd.init with the parsed arguments)
    from argparse import Namespace
    from vtep import clustercmd
    assert clustercmd.init(Namespace(
        config=str(plan), etcd=etcd.url, etcd_prefix=lay.prefix + "-80", etcd_cacert=None,
        etcd_cert=None, etcd_key=None, subnet_len=24, subnet6_len=80, force=False)) == 0
    assert raw_get(etcd, lay.prefix + "-80/config")[0]["subnet6_len"] == 80
    # an overlay6 too small for a /64 each: the plan's words, one line, exit 2
    plan.write_text('[cluster]\nvni = 10\noverlay6 = "fd00:10:244::/120"\n')
    one_error(vtep("init", "--etcd", etcd.url, "--etcd-prefix", lay.prefix + "-6",
                   "-c", str(plan)), 2, "subnet6_len: 64 is outside 120..126")


def test_cli_show_of_an_ipv6_only_cluster(etcd, client, lay, tmp_path):
    opts = ["--etcd", etcd.url, "--etcd-prefix", lay.prefix]
    plan = tmp_path / "p.toml"
    plan.write_text('[cluster]\nvni = 10\noverlay6 = "fd00:10:244::/48"\n')
    r = vtep("init", *opts, "--config", str(plan))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{lay.config}: created (vni 10, port 4789, mtu null, udp_checksum true, "
        "overlay6 fd00:10:244::/48, subnet6_len 64)"]
    reg(client, lay, "a", "192.168.1.1")
    rows = [line.split() for line in vtep("show", *opts).stdout.splitlines()]
    assert rows[0] == ["NAME", "SUBNET6", "UNDERLAY-IP", "VTEP-MAC", "MODE", "STATUS"]
    assert rows[1][:2] == ["a", "fd00:10:244::/64"]


def test_a_running_source_claims_a_subnet6_when_the_config_gains_overlay6(etcd, lay):
    """The agent's plan source (vtep run --etcd's thread) on a v4-only cluster; overlay6
    is added: it claims a /64 for its node at once, and the plans it delivers are
    IPv4-only (with the reason) until the other member has one too, then dual-stack."""
    import select
    from vtep.etcd.membership import reclaim
    from vtep.etcd.source import EtcdSource
    with Client(etcd.url, timeout=LIMIT) as c:
        init_cluster(c, lay, CLUSTER, 24)
        b = reg(c, lay, "b", "192.168.1.2")
    client = Client(etcd.url, timeout=LIMIT)
    a = reg(client, lay, "a", "192.168.1.1")
    config, members, rev = snapshot(client, lay)
    src = EtcdSource(client, lay, a, config, members, rev, where="etcd x", ttl=20,
                     register=lambda: pytest.fail("registered again"))

    def next_plan(pred):
        t0 = time.monotonic()
        while time.monotonic() - t0 < LIMIT:
            select.select([src.fileno()], [], [], 0.2)
            out = src.take()
            if out is not None and out[0] is not None and pred(out[0]):
                return out[0]
        raise AssertionError("no such plan delivered")
    try:
        with Client(etcd.url, timeout=LIMIT) as c:
            init_cluster(c, lay, CLUSTER46, 24, force=True)
        p = next_plan(lambda p: any("of b has no subnet6" in w for w in p.warnings))
        assert p.overlay6 is None
        assert raw_get(etcd, lay.node("a"))[0]["subnet6"] == "fd00:172:2::/64"
        assert raw_get(etcd, lay.node("a"))[0]["subnet"] == str(a.member.subnet)
        assert src.reg.lease_id == a.lease_id
        with Client(etcd.url, timeout=LIMIT) as c:
            reclaim(c, lay, b)
        p = next_plan(lambda p: p.overlay6 is not None)
        assert [(n.name, str(n.subnet6)) for n in p.nodes] == [
            ("a", "fd00:172:2::/64"), ("b", "fd00:172:2:1::/64")]
    finally:
        src.close()
