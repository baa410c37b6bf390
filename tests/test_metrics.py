"""`vtep run --metrics`, without root: the address option, the collector against a fake
agent, the loop's records, the kinds a pass reports, the HTTP endpoint on loopback.

Every exposition is parsed with prometheus-client's own parser
(text_string_to_metric_families), never matched as text."""
from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vtep import host, metrics, state
from vtep.cli import main
from vtep.config import parse_listen
from vtep.errors import HostMismatch

from test_kernel_unit import EMPTY, PLAN, realised_from, recording_vtep
from vtep import plan as planlib

MISSING = "/nonexistent/vtep-plan.toml"


def samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of an exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(m: metrics.Metrics) -> str:
    return generate_latest(m.registry).decode()


def L(**kw):
    return frozenset(kw.items())


# --- --metrics [ADDR:]PORT ------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("9470", ("127.0.0.1", 9470)),
    ("127.0.0.1:9470", ("127.0.0.1", 9470)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:9470", ("::1", 9470)),
    ("[fe80::0001]:65535", ("fe80::1", 65535)),
])
def test_listen_values(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("value", ["", "0", "65536", "-1", "http", "::1:9470", "[::1]",
                                   "[127.0.0.1]:9470", "localhost:9470", ":9470",
                                   "1.2.3:9470", "127.0.0.1:", "127.0.0.1:9x", "[::1]:0"])
def test_a_bad_metrics_value_is_a_one_line_usage_error(capsys, value):
    rc = main(["run", "--kernel", "--config", MISSING, f"--metrics={value}"])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("vtep: argument --metrics: "), err
    assert out == ""


def test_metrics_with_once_is_a_usage_error(capsys, tmp_path, monkeypatch):
    p = tmp_path / "plan.toml"
    p.write_text('[cluster]\nvni = 1\noverlay = "10.0.0.0/16"\n[[nodes]]\nname = "a"\n'
                 'underlay_ip = "192.0.2.1"\nsubnet = "10.0.0.0/24"\n')
    monkeypatch.setattr(host, "require_net_admin", lambda what: None)
    rc = main(["run", "--kernel", "--once", "--config", str(p), "--node", "a",
               "--metrics", "9470"])
    err = capsys.readouterr().err
    assert rc == 2 and "--metrics does not apply to --once" in err, err


# --- the collector, against a fake agent ------------------------------------------------------

class FakeView:
    def __init__(self, counters=None, store=None, mtus=None):
        self.c = counters or {}
        self.s = store
        self.m = mtus or {}

    def info(self):
        return {"mode": "userspace" if self.c else "kernel", "device": "vxlan0",
                "node": "network-2", "version": "0.1.0"}

    def peers(self):
        return [("network-1", "192.168.1.138"), ("network-3", "192.168.3.33")]

    def counters(self):
        return self.c

    def path_mtus(self):
        return self.m

    def store(self):
        return self.s


COUNTERS = {
    "tx": {"packets": 10, "bytes": 1500, "frames": 4},
    "rx": {"packets": 7, "bytes": 900, "frames": 7},
    "tx_drops": {"unknown-dst": 2, "too-big": 1, "runt": 0},
    "icmp_too_big": 1,
    "rx_drops": {"short": 3, "vni": 5, "runt": 4},
    "peers": {"192.168.1.138": {"tx_packets": 10, "tx_bytes": 1500, "tx_frames": 4,
                                "rx_packets": 7, "rx_bytes": 900}},
    "offloads": "on: TAP csum",
}


def test_the_userspace_counters_each_way_per_peer_and_by_reason():
    m = metrics.Metrics()
    m.attach(FakeView(COUNTERS, mtus={"192.168.1.138": 1400}))
    s = samples(scrape(m))
    assert s[("vtep_agent_info", L(mode="userspace", device="vxlan0", node="network-2",
                                   version="0.1.0", offloads="on"))] == 1
    assert s[("vtep_peers", L())] == 2
    assert s[("vtep_packets_total", L(direction="tx"))] == 10
    assert s[("vtep_packets_total", L(direction="rx"))] == 7
    assert s[("vtep_bytes_total", L(direction="tx"))] == 1500
    assert s[("vtep_tap_frames_total", L(direction="tx"))] == 4
    assert s[("vtep_drops_total", L(direction="tx", reason="unknown-dst"))] == 2
    # "runt" in both directions, kept apart by the direction label
    assert s[("vtep_drops_total", L(direction="rx", reason="runt"))] == 4
    assert s[("vtep_drops_total", L(direction="tx", reason="runt"))] == 0
    assert s[("vtep_icmp_errors_sent_total", L(type="too-big"))] == 1
    one = dict(peer="network-1", address="192.168.1.138")
    assert s[("vtep_peer_packets_total", L(direction="tx", **one))] == 10
    assert s[("vtep_peer_bytes_total", L(direction="rx", **one))] == 900
    # a peer without traffic is there, at zero (the status file leaves it out)
    three = dict(peer="network-3", address="192.168.3.33")
    assert s[("vtep_peer_packets_total", L(direction="rx", **three))] == 0
    assert s[("vtep_path_mtu_bytes", L(**one))] == 1400
    assert ("vtep_store_up", L()) not in s   # a plan file has no store


def test_types_and_units_follow_prometheus_conventions():
    m = metrics.Metrics()
    m.attach(FakeView(COUNTERS, store={"reachable": True, "last_contact": 1.0e9}))
    m.record_pass(0.01, {"route": 1})
    fams = families(scrape(m))
    want = {"vtep_passes": "counter", "vtep_pass_failures": "counter",
            "vtep_pass_duration_seconds": "histogram", "vtep_changes": "counter",
            "vtep_drift_repairs": "counter", "vtep_plan_reloads": "counter",
            "vtep_plan_reloads_rejected": "counter", "vtep_peers": "gauge",
            "vtep_agent_info": "gauge", "vtep_store_up": "gauge",
            "vtep_store_last_contact_timestamp_seconds": "gauge",
            "vtep_packets": "counter", "vtep_bytes": "counter", "vtep_drops": "counter",
            "vtep_peer_packets": "counter", "vtep_peer_bytes": "counter",
            "vtep_icmp_errors_sent": "counter", "vtep_path_mtu_bytes": "gauge",
            "vtep_last_pass_timestamp_seconds": "gauge", "vtep_tap_frames": "counter"}
    for name, typ in want.items():
        assert fams[name].type == typ, name
    for f in fams.values():
        assert f.name.startswith("vtep_") and f.documentation, f.name
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name


def test_the_kernel_path_has_no_traffic_families():
    m = metrics.Metrics()
    m.attach(FakeView())
    fams = families(scrape(m))
    assert fams["vtep_agent_info"].samples[0].labels["mode"] == "kernel"
    assert not {"vtep_packets", "vtep_drops", "vtep_peer_packets"} & set(fams)


def test_store_up_and_last_contact():
    m = metrics.Metrics()
    m.attach(FakeView(store={"reachable": False, "last_contact": 1700000000.5}))
    s = samples(scrape(m))
    assert s[("vtep_store_up", L())] == 0
    assert s[("vtep_store_last_contact_timestamp_seconds", L())] == 1700000000.5


def test_before_attach_only_the_loops_records():
    fams = families(scrape(metrics.Metrics()))
    assert "vtep_passes" in fams and "vtep_agent_info" not in fams


# --- what the loop records --------------------------------------------------------------------

def test_passes_changes_drift_and_reloads_are_counted():
    m = metrics.Metrics()
    m.record_pass(0.2, {"device": 1, "neighbour": 2, "fdb": 4, "route": 2, "sysctl": 2})
    m.record_pass(0.003, {"route": 1, "fdb": 1}, drift=True)
    m.record_pass(0.5, None, failed=True)
    m.record_pass(0.004, {})
    m.record_reload(True)
    m.record_reload(False)
    m.record_reload(False)
    s = samples(scrape(m))
    assert s[("vtep_passes_total", L())] == 4
    assert s[("vtep_pass_failures_total", L())] == 1
    assert s[("vtep_pass_duration_seconds_count", L())] == 4
    assert s[("vtep_pass_duration_seconds_sum", L())] == pytest.approx(0.707)
    assert s[("vtep_pass_duration_seconds_bucket", L(le="0.005"))] == 2
    assert s[("vtep_pass_duration_seconds_bucket", L(le="+Inf"))] == 4
    assert s[("vtep_changes_total", L(kind="route"))] == 3
    assert s[("vtep_changes_total", L(kind="fdb"))] == 5
    assert s[("vtep_changes_total", L(kind="sysctl"))] == 2
    assert s[("vtep_drift_repairs_total", L(kind="route"))] == 1
    assert s[("vtep_drift_repairs_total", L(kind="neighbour"))] == 0   # there from the start
    assert s[("vtep_plan_reloads_total", L())] == 1
    assert s[("vtep_plan_reloads_rejected_total", L())] == 2


# --- the kinds a pass reports (Reconciler.kinds) -----------------------------------------------

@pytest.fixture
def want():
    return state.desired(planlib.parse(PLAN, "plan.toml"), "a", underlay_dev="eth0",
                         underlay_mtu=1500)


def test_a_pass_reports_its_changes_by_kind(monkeypatch, want):
    rec, _ = recording_vtep(monkeypatch, want, EMPTY)
    monkeypatch.setattr(host, "enable_forwarding",
                        lambda df=None: ["set net.ipv4.ip_forward = 1"])
    lines = rec.converge(first=True)
    # two peers: a neighbour, an fdb entry, a flood entry and a route each
    assert rec.kinds == {"neighbour": 2, "fdb": 4, "route": 2, "sysctl": 1}
    assert sum(rec.kinds.values()) == len(lines)


def test_a_converged_pass_reports_nothing_and_a_repair_its_kind(monkeypatch, want):
    have = realised_from(want)
    rec, _ = recording_vtep(monkeypatch, want, have)
    assert rec.converge() == [] and rec.kinds == {}
    del have.routes[(want.peers[0].route.dst, 0, 0)]
    assert len(rec.converge()) == 1 and rec.kinds == {"route": 1}


# --- the endpoint ------------------------------------------------------------------------------

def test_the_endpoint_serves_on_loopback_and_a_taken_port_is_exit_4():
    m = metrics.Metrics()
    m.attach(FakeView(COUNTERS))
    srv = metrics.Server(m, "127.0.0.1", 0)
    try:
        host_, port = srv.httpd.server_address[:2]
        assert host_ == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            s = samples(r.read().decode())
        assert s[("vtep_packets_total", L(direction="tx"))] == 10
        with pytest.raises(metrics.MetricsUnavailable) as e:
            metrics.Server(metrics.Metrics(), "127.0.0.1", port)
        assert isinstance(e.value, HostMismatch) and e.value.exit_code == 4
        assert str(e.value) == (f"--metrics 127.0.0.1:{port}: cannot listen: the port is "
                                "already in use")
    finally:
        srv.close()
    # closed: the port can be listened on again (SO_REUSEADDR, as the server sets it:
    # the connection just served is in TIME_WAIT; a listener left open would still refuse)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    s.close()


def test_an_address_not_on_this_host_is_exit_4():
    with pytest.raises(metrics.MetricsUnavailable, match="not one of this host's"):
        metrics.Server(metrics.Metrics(), "192.0.2.77", 9)


# --- the live view: the store's state and its contact clock ------------------------------------

class FakeClient:
    def __init__(self):
        self.fail = False

    def call(self, path, body, *, write, timeout=None):
        if self.fail:
            raise OSError("etcd away")
        return {"path": path}


class FakeStore:
    def __init__(self):
        self.reachable = True

    def status(self):
        return {"store": "http://127.0.0.1:2379", "reachable": self.reachable,
                "unreachable_since": None, "error": None}


def test_the_store_is_up_and_its_last_contact_is_its_last_answer(monkeypatch):
    client, store = FakeClient(), FakeStore()
    now = [1000.0]
    monkeypatch.setattr(metrics.time, "time", lambda: now[0])
    clock = metrics.ContactClock(client)
    now[0] = 1010.0
    assert client.call("/v3/lease/keepalive", {}, write=False) == {"path": "/v3/lease/keepalive"}
    client.fail, store.reachable = True, False
    now[0] = 1020.0
    with pytest.raises(OSError):
        client.call("/v3/kv/range", {}, write=False)
    rec = type("Rec", (), {"want": None})()
    view = metrics.LiveView(rec, store, clock)
    assert view.store() == {"reachable": False, "last_contact": 1010.0}
    assert view.peers() == [] and view.path_mtus() == {}
    # a plan file has no store
    assert metrics.LiveView(rec, type("F", (), {"status": lambda self: None})()).store() is None
