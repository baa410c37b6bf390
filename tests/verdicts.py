"""The verdict tables of pcaps/README.md and pcaps/mtu/README.md: one parser for both.

Each row: | `file` | how made | what it shows | options | exit | checks fired |, the
checks as `id=count, ...` or none.
"""
from __future__ import annotations

import re
import shlex

ROW = re.compile(r"^\|\s*`(?P<file>[^`]+)`\s*\|(?P<rest>.*)\|\s*$")
CHECK = re.compile(r"^(?P<id>[a-z0-9-]+)\s*=\s*(?P<n>\d+)$")


def parse_table(text: str, where: str = "README.md") -> list[dict]:
    """Rows of the table under '## Verdicts': file | made | shows | options | exit | checks."""
    section = re.search(r"^## Verdicts\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not section:
        raise AssertionError(f"{where} has no '## Verdicts' section")
    rows = []
    for line in section.group(1).splitlines():
        m = ROW.match(line.strip())
        if not m:
            continue
        cells = [c.strip() for c in m.group("rest").split("|")]
        if len(cells) != 5:
            raise AssertionError(f"verdict row needs 6 cells: {line!r}")
        _made, _shows, options, exit_code, checks = cells
        options = options.strip("`").strip()
        opts = [] if options in ("", "-", "—", "(none)", "none") else shlex.split(options)
        fired = {}
        checks = checks.replace("`", "").strip()
        if checks.lower() not in ("none", "-", "—", ""):
            for item in checks.split(","):
                cm = CHECK.match(item.strip())
                if not cm:
                    raise AssertionError(f"bad check item {item!r} in {line!r}")
                fired[cm.group("id")] = int(cm.group("n"))
        rows.append({"file": m.group("file"), "options": opts,
                     "exit": int(exit_code.strip("`")), "checks": fired})
    if not rows:
        raise AssertionError(f"the verdict table in {where} is empty")
    return rows
