"""Shared test policy.

In CI (CI=true; .ci/run sets it itself) a skipped test is a failure: CI runs
as root with every dependency and ../shared present, so a skip there means a
test silently did not run (DEVELOPERS.md: a skipped privileged test is a
failure). That holds wherever the skip happens:

- in a test or its setup (`pytest.skip`, a skip/skipif mark, also on a whole
  module): the test's report becomes a failure;
- at collection (`pytest.importorskip` or `pytest.skip(allow_module_level=True)`
  at module level): no test of the module exists to fail, so the module is
  listed under "skipped at collection" and the session exits 1 once every
  other test has run (turning the collect report itself into an error would
  make pytest abort the whole run on it).

Everywhere, not only in CI, an xfail mark must name the exception it expects
(`raises=`): without it, a strict xfail turns ANY exception into an expected
failure, so a test that broke for an unrelated reason (a typo, an import, a
fixture) reads as "the known bug is still there". A mark without it fails the
test's setup, locally and in CI alike, since it is a property of the test's
source, not of the machine.
"""
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_collection_skips = []  # skipped collect reports of this session (CI only)


def _xfail_marks_without_raises(item):
    return [m for m in item.iter_markers("xfail") if m.kwargs.get("raises") is None]


def _reason(report):
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup" and _xfail_marks_without_raises(item):
        # Checked on the setup report, after pytest's own xfail handling (this
        # wrapper is outermost), so neither an xfail(run=False) nor a setup
        # error can hide it; a failed setup report also keeps the test from running.
        report.outcome = "failed"
        if hasattr(report, "wasxfail"):
            del report.wasxfail
        report.longrepr = (f"{item.nodeid}: xfail mark without raises=; name the exception "
                           f"the known bug raises (any other exception must fail the test)")
        return
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {_reason(report)}"


def pytest_sessionstart(session):
    _collection_skips.clear()


def pytest_collectreport(report):
    if IN_CI and report.skipped:
        _collection_skips.append(report)


def pytest_terminal_summary(terminalreporter):
    if not _collection_skips:
        return
    terminalreporter.section("skipped at collection in CI, which counts as a failure",
                             red=True, bold=True)
    for report in _collection_skips:
        terminalreporter.line(f"SKIPPED AT COLLECTION {report.nodeid}: {_reason(report)}",
                              red=True)


def pytest_sessionfinish(session):
    if _collection_skips and session.exitstatus in (pytest.ExitCode.OK,
                                                    pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


@pytest.fixture
def plan_file(tmp_path):
    """The seed plan (vtep.lab.seed.SEED_PLAN), written to a file (vtep reads plans from
    files)."""
    from vtep.lab.seed import SEED_PLAN   # as netns_prefix: conftest loads without vtep
    p = tmp_path / "plan.toml"
    p.write_text(SEED_PLAN)
    return p


# --- a real etcd (tests/etcdserver.py) for the etcd client and data-model tests --------------

@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """One etcd on loopback per test module, its data in a temporary directory, stopped by
    PID when the module is done. (Imported here, not at the top: test_ci_policy runs a
    copy of this file on its own, where neither module is importable.)"""
    from etcdserver import EtcdServer
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as srv:
        yield srv


@pytest.fixture
def client(etcd):
    """vtep's etcd client on that etcd (every call within 5 s)."""
    from vtep.etcd import Client
    with Client(etcd.url, timeout=5.0) as c:
        yield c
