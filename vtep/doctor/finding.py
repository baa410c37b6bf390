"""A finding: what a check saw, why it matters, and the command that fixes it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

SEVERITIES = ("error", "warning", "info", "ok")


@dataclass(frozen=True)
class Finding:
    id: str          # stable, dotted: "device.port", "drift.fdb-missing", ...
    severity: str    # one of SEVERITIES
    saw: str
    why: str = ""
    fix: str = ""

    def line(self) -> str:
        text = self.saw
        if self.why:
            text += f"; {self.why}"
        if self.fix:
            text += f"; fix: {self.fix}"
        # one line, whatever a kernel message or a file name held
        return f"{self.severity.upper():7} {self.id}: " + " ".join(text.split())


def ok(id: str, saw: str) -> Finding:
    return Finding(id, "ok", saw)


def ordered(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, information and what passed; stable within each."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def healthy(findings: list[Finding]) -> bool:
    return not any(f.severity == "error" for f in findings)


def render(findings: list[Finding], node: str, as_json: bool) -> str:
    findings = ordered(findings)
    if as_json:
        return json.dumps({"node": node, "healthy": healthy(findings),
                           "findings": [asdict(f) for f in findings]}, indent=1)
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    tail = (f"node {node}: " + ("healthy" if healthy(findings) else "NOT healthy") +
            f" ({counts['error']} errors, {counts['warning']} warnings, "
            f"{counts['ok']} checks passed)")
    return "\n".join([f.line() for f in findings] + [tail])
