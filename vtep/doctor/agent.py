"""The agent: running or not, its last pass, its store, and drift: the very diff `vtep
run` computes (vtep.kernel.diff), shown entry by entry."""
from __future__ import annotations

import time
from datetime import datetime

from .. import kernel
from .facts import Facts
from .finding import Finding, ok

STALE_PASS = 120.0   # s: an agent resyncs every 10 s by default; 12 missed passes is wrong


def _run_cmd(f: Facts, once: bool = False) -> str:
    """The `vtep run` that would manage this node (with --once where it applies: a plan
    file and the kernel path)."""
    dev = f" --device {f.device}" if f.device != "vxlan0" else ""
    if f.source.startswith("plan"):
        return (f"vtep run --{f.mode} --config {f.plan.path} --node {f.node.name}{dev}"
                + (" --once" if once and f.mode == "kernel" else ""))
    return f"vtep run --{f.mode} --etcd URL --name {f.node.name}{dev} (the etcd options " \
           "this doctor was given)"


def check(f: Facts) -> list[Finding]:
    out = []
    st = f.status or {}
    if f.agent_pid is None:
        out.append(Finding("agent.not-running", "error",
                           f"no vtep agent manages {f.device} in this namespace",
                           "nobody repairs drift or follows the plan's changes; entries "
                           "made by an earlier run stay as they were",
                           _run_cmd(f)))
    else:
        saw = f"pid {f.agent_pid or '(unknown)'} manages {f.device} ({f.mode})"
        if st.get("pid") == f.agent_pid:
            saw += f", {st.get('passes', 0)} passes, last {st.get('last_pass')}"
        out.append(ok("agent.running", saw))
        age = _age(st.get("last_pass"))
        if st.get("pid") == f.agent_pid and age is not None and age > STALE_PASS:
            out.append(Finding("agent.stale", "warning",
                               f"its last pass was {age:.0f} s ago",
                               "a live agent passes every resync interval (10 s): it is "
                               "stuck or starved", f"look at its log; `kill {f.agent_pid}`"
                               f" and `{_run_cmd(f)}`"))
        if st.get("error"):
            out.append(Finding("agent.error", "error", f"its last pass failed: {st['error']}",
                               "the node's state is not what the plan says", ""))
        store = st.get("etcd")
        if isinstance(store, dict) and store.get("reachable") is False:
            out.append(Finding("agent.store-unreachable", "error",
                               f"etcd unreachable since {store.get('unreachable_since')}: "
                               f"{store.get('error')}",
                               "the node keeps its entries but sees no member join, move "
                               "or leave", "check the route and firewall towards etcd"))
    out += drift(f)
    return out


def _age(stamp) -> float | None:
    try:   # datetime honours the %z offset (time.mktime would read it as local time)
        return time.time() - datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


PHRASE = {"added": "missing", "changed": "differs", "removed": "not in the plan"}
SUFFIX = {"added": "missing", "changed": "changed", "removed": "extra"}


def drift(f: Facts) -> list[Finding]:
    if f.want is None or f.realised is None:
        return []
    changes = kernel.diff(f.want, f.realised, fdb=f.mode == "kernel")
    if not changes:
        peers = len(f.want.peers)
        return [ok("drift.none", f"{f.device}'s neighbour, fdb and route entries are the "
                                 f"plan's ({peers} peers)")]
    live = f.agent_pid is not None
    sev = "warning" if live else "error"
    why = ("the agent repairs it at its next pass" if live else
           "no agent runs to repair it: traffic to that peer fails or goes astray")
    fix = "wait a pass, or look at the agent's log" if live else \
        f"{_run_cmd(f, once=True)} (or start the agent)"
    out = []
    for c in changes:
        verb, _, rest = c.text.partition(" ")
        kind = c.ops[0].kind if c.ops else "entry"
        rest = rest.replace(" (not in the plan)", "")
        out.append(Finding(f"drift.{kind}-{SUFFIX.get(verb, 'changed')}", sev,
                           f"{PHRASE.get(verb, verb)}: {rest}", why, fix))
    return out
