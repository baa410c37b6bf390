"""What one capture showed: counters, flows and fired checks, as text or JSON."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .checks import CHECKS, ERROR

FIRST_PACKETS = 10


class Tally:
    """Mutable state the decoder fills in (see decode.make_decoder)."""

    def __init__(self):
        # check id -> [count, first packet numbers, last packet number]
        self.hits = {cid: [0, [], 0] for cid in CHECKS}
        self.vnis: dict[int, int] = {}
        self.flows: dict[tuple[bytes, bytes], list[int]] = {}  # -> [packets, bytes, largest inner]
        self.macs: dict[tuple[int, bytes], bytes] = {}  # (vni, inner src MAC) -> outer src
        self.frags: dict[tuple, bool] = {}  # outer fragments of VXLAN awaiting their rest


@dataclass
class Report:
    file: str
    packets: int = 0
    vxlan_packets: int = 0
    vnis: dict[int, int] = field(default_factory=dict)
    flows: list[dict] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    error: dict | None = None  # {"message", "offset"} when the capture could not be read to its end

    @property
    def other_packets(self) -> int:
        return self.packets - self.vxlan_packets

    @property
    def ok(self) -> bool:
        return self.error is None and not any(
            c["count"] and c["severity"] == ERROR for c in self.checks.values())

    @classmethod
    def from_tally(cls, file: str, packets: int, vxlan_packets: int, t: Tally, error=None):
        flows = [
            {"src": str(ipaddress.ip_address(s)), "dst": str(ipaddress.ip_address(d)),
             "packets": f[0], "bytes": f[1], "largest_inner": f[2]}
            for (s, d), f in t.flows.items()
        ]
        flows.sort(key=lambda f: (-f["packets"], f["src"], f["dst"]))
        checks = {cid: {"severity": CHECKS[cid].severity, "count": h[0], "packets": h[1]}
                  for cid, h in t.hits.items()}
        return cls(file, packets, vxlan_packets, dict(sorted(t.vnis.items())), flows, checks, error)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
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
        if self.vnis:
            out.append("VNIs: " + ", ".join(f"{k} ({v} packets)" for k, v in self.vnis.items()))
        if self.flows:
            out.append("VTEP flows (outer src -> dst):")
            w = max(len(f["src"]) + len(f["dst"]) for f in self.flows) + 4
            for f in self.flows:
                pair = f"{f['src']} -> {f['dst']}"
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
