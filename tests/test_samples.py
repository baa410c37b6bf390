"""Every sample capture in pcaps/ gets exactly the verdict pcaps/README.md gives it.

The verdict table in pcaps/README.md is the single source of truth: this module
parses it, then runs vxinspect on each row both through the Python API
(`inspect_file`) and through the CLI (`python -m vxinspect --json`), and asserts
the exit code and the exact set of fired check ids with their counts.
A capture file in pcaps/ without a row, or a row without its file, fails.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import verdicts

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT / "pcaps"
README = PCAPS / "README.md"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
DEFAULT_PORTS = frozenset({4789, 8472})



ROWS = verdicts.parse_table(README.read_text())


def row_id(row: dict) -> str:
    return row["file"] + ("[" + " ".join(row["options"]) + "]" if row["options"] else "")


def options_from_cli(argv: list[str]):
    """The Options the CLI would build from `argv` (per the contract)."""
    from vxinspect import Options

    vnis, ports, kw = set(), set(DEFAULT_PORTS), {}
    it = iter(argv)
    for a in it:
        if a == "--vni":
            vnis.add(int(next(it)))
        elif a == "--port":
            ports.add(int(next(it)))
        elif a == "--underlay-mtu":
            kw["underlay_mtu"] = int(next(it))
        elif a == "--mtu":
            kw["mtu"] = int(next(it))
        elif a == "--no-checksums":
            kw["checksums"] = False
        else:
            raise AssertionError(f"option {a!r} in the README is not understood by this test")
    if vnis:
        kw["vnis"] = frozenset(vnis)
    return Options(ports=frozenset(ports), **kw)


def fired(doc: dict) -> dict[str, int]:
    return {cid: c["count"] for cid, c in doc["checks"].items() if c["count"]}


def test_table_and_files_match():
    files = {p.name for p in PCAPS.iterdir() if p.suffix in CAPTURE_SUFFIXES}
    in_table = {r["file"] for r in ROWS}
    assert not files - in_table, f"capture files without a verdict row: {sorted(files - in_table)}"
    assert not in_table - files, f"verdict rows without a file: {sorted(in_table - files)}"


def test_table_check_ids_are_known():
    from vxinspect.checks import CHECKS

    unknown = {cid for r in ROWS for cid in r["checks"]} - set(CHECKS)
    assert not unknown, f"README names check ids vxinspect does not know: {sorted(unknown)}"


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_api_verdict(row):
    from vxinspect import inspect_file

    path = PCAPS / row["file"]
    assert path.is_file(), f"{row['file']} is in the README table but not in pcaps/"
    report = inspect_file(str(path), options_from_cli(row["options"]))
    doc = report.to_dict()
    exit_code = 2 if doc["error"] else (0 if doc["ok"] else 1)
    assert (exit_code, fired(doc)) == (row["exit"], row["checks"])


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_cli_verdict(row):
    path = PCAPS / row["file"]
    assert path.is_file(), f"{row['file']} is in the README table but not in pcaps/"
    r = subprocess.run([sys.executable, "-m", "vxinspect", "--json", str(path), *row["options"]],
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert (r.returncode, fired(doc)) == (row["exit"], row["checks"]), r.stderr
    if row["exit"] == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vxinspect: "), r.stderr
        assert row["file"] in lines[0] and re.search(r"byte offset \d+", lines[0]), r.stderr
    else:
        assert doc["error"] is None
