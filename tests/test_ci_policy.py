"""The test policy itself (tests/conftest.py and .ci/run): in CI a skip is a
failure wherever it happens, and an xfail must name the exception it expects.

Each case runs pytest in a subprocess on a small example suite in a temporary
directory that holds a copy of tests/conftest.py, with CI=true and without,
and checks the exit status and each test's outcome as pytest reports them.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CONFTEST = HERE / "conftest.py"
CI_RUN = HERE.parent / ".ci" / "run"

OK = "def test_ok():\n    assert True\n"


def run_suite(tmp_path, files: dict[str, str], ci: bool):
    """pytest on `files` (name -> source) beside a copy of our conftest.py.

    Returns (exit status, {nodeid: outcome}, output). Outcomes come from -rA:
    PASSED, FAILED, ERROR, XFAIL, XPASS per test, and SKIPPED per skip (by file)."""
    for name, src in files.items():
        (tmp_path / name).write_text(textwrap.dedent(src))
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    if ci:
        env["CI"] = "true"
    r = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider",
                        "-p", "no:randomly", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    outcomes = {}
    for m in re.finditer(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+)", out, re.M):
        outcomes[m.group(2)] = m.group(1)
    for m in re.finditer(r"^SKIPPED \[\d+\] ([^:\s]+):", out, re.M):
        outcomes.setdefault(m.group(1), "SKIPPED")
    return r.returncode, outcomes, out


# --------------------------------------------------------------- collection-time skips

IMPORTORSKIP = """
import pytest
pytest.importorskip("vtep_issue16_no_such_module")

def test_never_runs():
    assert True
"""

MODULE_SKIP = """
import pytest
pytest.skip("the lab is not here", allow_module_level=True)

def test_never_runs():
    assert True
"""


@pytest.mark.parametrize("source, reason", [
    (IMPORTORSKIP, "vtep_issue16_no_such_module"),
    (MODULE_SKIP, "the lab is not here"),
], ids=["importorskip", "module-level-skip"])
def test_collection_time_skip_fails_the_run_in_ci_and_names_the_module(tmp_path, source, reason):
    rc, outcomes, out = run_suite(tmp_path, {"test_ok.py": OK, "test_gone.py": source}, ci=True)
    assert rc == 1, out
    assert outcomes["test_ok.py::test_ok"] == "PASSED", out   # the rest of the run still ran
    line = [ln for ln in out.splitlines() if ln.startswith("SKIPPED AT COLLECTION")]
    assert len(line) == 1 and "test_gone.py" in line[0] and reason in line[0], out


@pytest.mark.parametrize("source", [IMPORTORSKIP, MODULE_SKIP],
                         ids=["importorskip", "module-level-skip"])
def test_collection_time_skip_is_a_skip_outside_ci(tmp_path, source):
    rc, outcomes, out = run_suite(tmp_path, {"test_ok.py": OK, "test_gone.py": source}, ci=False)
    assert rc == 0, out
    assert outcomes == {"test_ok.py::test_ok": "PASSED", "test_gone.py": "SKIPPED"}, out
    assert "SKIPPED AT COLLECTION" not in out


def test_a_run_whose_only_module_is_skipped_at_collection_fails_in_ci(tmp_path):
    # Nothing collected at all: pytest alone would exit 5 or 0, never 1.
    rc, _, out = run_suite(tmp_path, {"test_gone.py": MODULE_SKIP}, ci=True)
    assert rc == 1, out


# --------------------------------------------------------------- skips at run time

SKIP_MARK_ON_MODULE = """
import pytest
pytestmark = pytest.mark.skip(reason="whole module off")

def test_a():
    assert True
"""

SKIP_IN_TEST = """
import pytest

def test_a():
    pytest.skip("no tcpdump")
"""


@pytest.mark.parametrize("source", [SKIP_MARK_ON_MODULE, SKIP_IN_TEST], ids=["module-mark", "in-test"])
@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
def test_run_time_skip_is_a_failure_in_ci_only(tmp_path, source, ci):
    rc, outcomes, out = run_suite(tmp_path, {"test_ok.py": OK, "test_s.py": source}, ci=ci)
    if ci:
        assert rc == 1, out
        assert outcomes["test_s.py::test_a"] in ("FAILED", "ERROR"), out
        assert "skipped in CI, which counts as a failure" in out
    else:
        assert rc == 0, out
        assert outcomes["test_s.py"] == "SKIPPED", out
    assert outcomes["test_ok.py::test_ok"] == "PASSED", out


# --------------------------------------------------------------- xfail must name raises=

XFAIL_NO_RAISES = """
import pytest

@pytest.mark.xfail(strict=True, reason="known bug: wrong VNI")
def test_a():
    {}["typo"]          # broke for another reason: a KeyError, not the known bug
"""

XFAIL_NO_RAISES_NOT_RUN = """
import pytest

@pytest.mark.xfail(run=False, reason="known bug: hangs")
def test_a():
    assert False
"""

XFAIL_RAISES_MATCH = """
import pytest

@pytest.mark.xfail(raises=ZeroDivisionError, strict=True, reason="known bug")
def test_a():
    1 / 0
"""

XFAIL_RAISES_OTHER = """
import pytest

@pytest.mark.xfail(raises=ZeroDivisionError, strict=True, reason="known bug")
def test_a():
    {}["typo"]
"""


@pytest.mark.parametrize("source", [XFAIL_NO_RAISES, XFAIL_NO_RAISES_NOT_RUN],
                         ids=["strict-other-exception", "run-false"])
@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
def test_xfail_without_raises_fails_everywhere(tmp_path, source, ci):
    rc, outcomes, out = run_suite(tmp_path, {"test_ok.py": OK, "test_x.py": source}, ci=ci)
    assert rc == 1, out
    assert outcomes["test_x.py::test_a"] == "ERROR", out
    assert "test_x.py::test_a: xfail mark without raises=" in out
    assert outcomes["test_ok.py::test_ok"] == "PASSED", out


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
def test_xfail_with_raises_is_an_expected_failure_when_that_exception_comes(tmp_path, ci):
    rc, outcomes, out = run_suite(tmp_path, {"test_x.py": XFAIL_RAISES_MATCH}, ci=ci)
    assert rc == 0, out
    assert outcomes == {"test_x.py::test_a": "XFAIL"}, out


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
def test_xfail_with_raises_fails_on_any_other_exception(tmp_path, ci):
    rc, outcomes, out = run_suite(tmp_path, {"test_x.py": XFAIL_RAISES_OTHER}, ci=ci)
    assert rc == 1, out
    assert outcomes == {"test_x.py::test_a": "FAILED"}, out


# --------------------------------------------------------------- .ci/run sets CI itself

@pytest.mark.parametrize("caller_ci", [None, "", "false"], ids=["unset", "empty", "false"])
def test_ci_run_sets_ci_true_for_the_test_command(tmp_path, caller_ci):
    # .ci/run copied beside a bootstrap.sh that does nothing and a .venv/bin/python
    # that reports the CI its test command sees.
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI_RUN, tmp_path / ".ci" / "run")
    (tmp_path / "bootstrap.sh").write_text("exit 0\n")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text('#!/bin/sh\necho "CI=${CI-<unset>} ARGS=$*"\n')
    py.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if caller_ci is not None:
        env["CI"] = caller_ci
    r = subprocess.run(["sh", str(tmp_path / ".ci" / "run")], cwd="/", env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["CI=true ARGS=-m pytest -ra"], r.stdout
