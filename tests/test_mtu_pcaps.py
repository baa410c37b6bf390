"""Every MTU sample capture in pcaps/mtu/ gets exactly the verdict pcaps/mtu/README.md gives.

The README's verdict table is the single source of truth: this module parses it and runs
vxinspect on each row through the CLI (`python -m vxinspect --json OPTIONS FILE`, run in
pcaps/mtu so that `--plan plan.toml` names the samples' plan) and through the Python API,
asserting the exit code and the exact set of fired check ids with their counts. No root
needed. A capture without a row, or a row without its capture, fails; so does a capture
of 20 KB or more (the samples are meant to be read by hand) and a plan.toml that is not
the lab's seed plan the captures were recorded with.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import verdicts

from vtep.lab.seed import SEED_PLAN

pytestmark = pytest.mark.mtu   # part of the MTU suite (`pytest -m mtu`); no root needed

HERE = Path(__file__).resolve().parents[1] / "pcaps" / "mtu"
README = HERE / "README.md"
MAX_BYTES = 20_000


def parse_table(text: str) -> list[dict]:
    return verdicts.parse_table(text, "pcaps/mtu/README.md")


ROWS = parse_table(README.read_text())


def row_id(row: dict) -> str:
    return row["file"] + ("[" + " ".join(row["options"]) + "]" if row["options"] else "")


def options_from_cli(argv: list[str]):
    """The Options the CLI builds from `argv` (plan paths relative to pcaps/mtu)."""
    from vtep.plan import load
    from vxinspect import Options

    kw, vnis, ports, plan = {}, set(), {4789, 8472}, None
    it = iter(argv)
    for a in it:
        if a == "--plan":
            plan = load(HERE / next(it))
        elif a == "--underlay-mtu":
            kw["underlay_mtu"] = int(next(it))
        elif a == "--mtu":
            kw["mtu"] = int(next(it))
        elif a == "--vni":
            vnis.add(int(next(it)))
        elif a == "--port":
            ports.add(int(next(it)))
        elif a == "--no-checksums":
            kw["checksums"] = False
        else:
            raise AssertionError(f"option {a!r} in the README is not understood by this test")
    default_vni = plan.vni if plan is not None else 10
    return Options(vnis=frozenset(vnis or {default_vni}), ports=frozenset(ports), plan=plan,
                   **kw)


def fired(doc: dict) -> dict[str, int]:
    return {cid: c["count"] for cid, c in doc["checks"].items() if c["count"]}


def test_table_and_files_match():
    files = {p.name for p in HERE.iterdir() if p.suffix in (".pcap", ".pcapng")}
    in_table = {r["file"] for r in ROWS}
    assert not files - in_table, f"captures without a verdict row: {sorted(files - in_table)}"
    assert not in_table - files, f"verdict rows without a capture: {sorted(in_table - files)}"


def test_captures_are_small():
    big = {p.name: p.stat().st_size for p in HERE.glob("*.pcap")
           if p.stat().st_size >= MAX_BYTES}
    assert not big, f"captures of {MAX_BYTES} bytes or more: {big}"


def test_plan_is_the_seed_plan_they_were_recorded_with():
    assert (HERE / "plan.toml").read_text() == SEED_PLAN


def test_check_ids_are_known():
    from vxinspect.checks import CHECKS
    unknown = {cid for r in ROWS for cid in r["checks"]} - set(CHECKS)
    assert not unknown, f"the README names check ids vxinspect does not know: {unknown}"


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_cli_verdict(row):
    r = subprocess.run([sys.executable, "-m", "vxinspect", "--json", *row["options"],
                        row["file"]], capture_output=True, text=True, timeout=60, cwd=HERE)
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["error"] is None
    assert (r.returncode, fired(doc)) == (row["exit"], row["checks"]), r.stderr


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_api_verdict(row):
    from vxinspect import inspect_file
    doc = inspect_file(str(HERE / row["file"]), options_from_cli(row["options"])).to_dict()
    assert doc["error"] is None
    assert (0 if doc["ok"] else 1, fired(doc)) == (row["exit"], row["checks"])
