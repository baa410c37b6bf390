"""Shared test policy.

In CI (CI=true) a skipped test is a failure: CI runs as root with every
dependency and ../shared present, so a skip there means a test silently did
not run (DEVELOPERS.md: a skipped privileged test is a failure).
"""
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


NETNS_BASE = "vtt"  # every test namespace starts with this; the session sweep removes only these


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def netns_prefix():
    """A per-run namespace prefix; leftovers of earlier crashed runs are swept first."""
    from vtep import netns
    netns.sweep_stale(NETNS_BASE)
    prefix = netns.run_prefix(NETNS_BASE)
    yield prefix
    left = netns.sweep(prefix)
    assert not left, f"tests leaked namespaces: {left}"
