"""`--mtu auto`'s re-probe at run time (vtep.reprobe): when a late peer answers with a
narrower path, the overlay MTU is lowered, but never below what the plan's families need
(IPv6's 1280, RFC 8200 section 5): below it the kernel would take IPv6 off the device and
every later pass would be refused."""
import logging
from types import SimpleNamespace

from vtep import plan as planlib
from vtep.reprobe import Reprobe

PLAN = {"cluster": {"overlay": "172.2.0.0/16"},
        "nodes": [{"name": "a", "underlay_ip": "192.168.1.1", "subnet": "172.2.0.0/24"},
                  {"name": "b", "underlay_ip": "192.168.2.1", "subnet": "172.2.1.0/24"}]}


def reconciler(dual: bool):
    data = {"cluster": dict(PLAN["cluster"]), "nodes": [dict(n) for n in PLAN["nodes"]]}
    if dual:
        data["cluster"]["overlay6"] = "fd00:172:2::/48"
        data["nodes"][0]["subnet6"] = "fd00:172:2::/64"
        data["nodes"][1]["subnet6"] = "fd00:172:2:1::/64"
    plan = planlib.parse(data, "p.toml")
    rec = SimpleNamespace(plan=plan, node=plan.node("a"), lowered=[],
                          want=SimpleNamespace(device=SimpleNamespace(mtu=1450)))
    rec.lower_mtu = rec.lowered.append
    return rec


def late_answer(rec, overlay_mtu):
    r = Reprobe(rec, unreachable=("b",))
    assert r.wanted() and r.asked == ("b",)
    found = SimpleNamespace(unreachable=(), overlay_mtu=overlay_mtu, path_mtu=overlay_mtu + 50,
                            narrowest="b")
    return r.apply(found, None)


def test_an_ipv4_overlay_is_lowered_to_what_the_late_peer_carries():
    rec = reconciler(dual=False)
    assert late_answer(rec, 1250) is True
    assert rec.lowered == [1250]


def test_a_dual_stack_overlay_is_not_lowered_below_1280_and_says_why(caplog):
    rec = reconciler(dual=True)
    with caplog.at_level(logging.WARNING, logger="vtep"):
        assert late_answer(rec, 1279) is False
    assert rec.lowered == []
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ("warning: --mtu auto: b answers now; path MTU 1329 to b leaves an overlay "
                    "MTU of 1279, below 1280 (IPv6's minimum link MTU, RFC 8200 section 5; the "
                    "plan has overlay6): keeping 1450; larger frames to it are dropped")


def test_a_dual_stack_overlay_may_go_down_to_1280():
    rec = reconciler(dual=True)
    assert late_answer(rec, 1280) is True
    assert rec.lowered == [1280]
