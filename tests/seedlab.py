"""Helpers shared by the namespace tests that drive the seed topology."""
from __future__ import annotations

import time

import pytest

from vtep import state
from vtep.lab.lab import SEED_PLAN


@pytest.fixture
def plan_file(tmp_path):
    """The seed plan, written to a file (vtep reads plans from files)."""
    p = tmp_path / "plan.toml"
    p.write_text(SEED_PLAN)
    return p


def messages(r):
    """stderr lines that are not plan warnings (the seed overlay is public space)."""
    return [x for x in r.stderr.splitlines() if not x.startswith("vtep: warning:")]


def hand_configure(node, plan, name):
    """The seed's iproute2 commands for `name`, typed in its namespace (no vtep there)."""
    s = state.desired(plan, name, underlay_dev="eth0", underlay_mtu=1500)
    for cmd in state.iproute2(s):
        node.cmd(cmd.split())
    return s


def wait_for(pred, limit=3.0, step=0.01):
    """Seconds until pred() held (polling; an exception counts as not yet), or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            if pred():
                return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(step)
    return None
