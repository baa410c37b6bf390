"""What one capture showed: counters, flows and fired checks, as text or JSON."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .checks import CHECKS, ERROR, FIRST_PACKETS
from .plancheck import node_names


class Tally:
    """Mutable state the decoder fills in (see decode.make_decoder)."""

    def __init__(self):
        # check id -> [count, first packet numbers, last packet number]
        self.hits = {cid: [0, [], 0] for cid in CHECKS}
        self.vnis: dict[int, int] = {}
        # (outer src, dst) -> [packets, bytes, largest inner, PlanCheck.flow's ranges when
        # both ends are plan nodes (falsy otherwise)]
        self.flows: dict[tuple[bytes, bytes], list] = {}
        self.macs: dict[tuple[int, bytes], bytes] = {}  # (vni, inner src MAC) -> outer src
        self.frags: dict[tuple, bool] = {}  # outer fragments of VXLAN awaiting their rest

    def hit(self, cid: str, no: int) -> None:
        """Check `cid` fired on packet `no`: counted at most once per packet, so that the
        layers of one packet (nested VXLAN, a fast path handing over to a slow one) can
        each fire it."""
        h = self.hits[cid]
        if h[2] != no:
            h[2] = no
            h[0] += 1
            if h[0] <= FIRST_PACKETS:
                h[1].append(no)


@dataclass
class Report:
    file: str
    packets: int = 0
    vxlan_packets: int = 0
    vnis: dict[int, int] = field(default_factory=dict)
    flows: list[dict] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    error: dict | None = None  # {"message", "offset"} when the capture could not be read to its end
    plan: str | None = None  # the plan file the capture was held against (--plan)
    plan_summary: str | None = None  # e.g. "VNI 10, port 4789, 2 nodes" (text report only)

    @property
    def other_packets(self) -> int:
        return self.packets - self.vxlan_packets

    @property
    def ok(self) -> bool:
        return self.error is None and not any(
            c["count"] and c["severity"] == ERROR for c in self.checks.values())

    @classmethod
    def from_tally(cls, file: str, packets: int, vxlan_packets: int, t: Tally, error=None,
                   plan=None):
        names = node_names(plan) if plan is not None else {}
        flows = [
            {"src": str(ipaddress.ip_address(s)), "dst": str(ipaddress.ip_address(d)),
             "src_node": names.get(s), "dst_node": names.get(d),
             "packets": f[0], "bytes": f[1], "largest_inner": f[2]}
            for (s, d), f in t.flows.items()
        ]
        flows.sort(key=lambda f: (-f["packets"], f["src"], f["dst"]))
        checks = {cid: {"severity": CHECKS[cid].severity, "count": h[0], "packets": h[1]}
                  for cid, h in t.hits.items()}
        summary = None
        if plan is not None:
            summary = (f"VNI {plan.vni}, port {plan.port}, {len(plan.nodes)} "
                       f"node{'s' * (len(plan.nodes) != 1)}")
        return cls(file, packets, vxlan_packets, dict(sorted(t.vnis.items())), flows, checks, error,
                   plan.path if plan is not None else None, summary)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "plan": self.plan,
            "packets": self.packets,
            "vxlan_packets": self.vxlan_packets,
            "other_packets": self.other_packets,
            "vnis": {str(k): v for k, v in self.vnis.items()},
            "flows": self.flows,
            "checks": self.checks,
            "ok": self.ok,
            "error": self.error,
        }

    def fired(self) -> dict[str, dict]:
        return {cid: c for cid, c in self.checks.items() if c["count"]}

    def to_text(self) -> str:
        out = [f"{self.file}: {self.packets} packets, {self.vxlan_packets} VXLAN, "
               f"{self.other_packets} other"]
        if self.plan is not None:
            out.append(f"plan: {self.plan} ({self.plan_summary})")
        if self.vnis:
            out.append("VNIs: " + ", ".join(f"{k} ({v} packets)" for k, v in self.vnis.items()))
        if self.flows:
            out.append("VTEP flows (outer src -> dst):")
            pairs = [f"{_end(f, 'src')} -> {_end(f, 'dst')}" for f in self.flows]
            w = max(map(len, pairs))
            for f, pair in zip(self.flows, pairs):
                out.append(f"  {pair:<{w}} {f['packets']:>9} packets {f['bytes']:>12} bytes"
                           f"   largest inner {f['largest_inner']}")
        fired = self.fired()
        if fired:
            out.append("checks fired:")
            order = {"error": 0, "warning": 1, "info": 2}
            for cid, c in sorted(fired.items(), key=lambda kv: (order[kv[1]["severity"]], kv[0])):
                nums = ", ".join(map(str, c["packets"]))
                more = ", ..." if c["count"] > len(c["packets"]) else ""
                out.append(f"  {c['severity']:<7} {cid:<22} {c['count']:>8}  packets {nums}{more}")
                out.append(f"          {CHECKS[cid].meaning}")
        else:
            out.append("checks fired: none")
        if self.error:
            out.append(f"read error: {self.error['message']} at byte offset {self.error['offset']}"
                       f" (after {self.packets} packets)")
        n_err = sum(1 for c in fired.values() if c["severity"] == ERROR)
        verdict = "OK" if self.ok else (
            "UNREADABLE" if self.error else f"FAIL ({n_err} error check{'s' * (n_err != 1)} fired)")
        out.append(f"verdict: {verdict}")
        return "\n".join(out)


def _end(flow: dict, side: str) -> str:
    """One end of a flow: the IP, and the plan's node name when it is a node."""
    node = flow.get(f"{side}_node")
    return f"{flow[side]} ({node})" if node else flow[side]
