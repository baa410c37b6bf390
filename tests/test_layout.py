"""The repository layout must never shadow the standard library's `inspect`."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_inspect_package_marker():
    assert not (ROOT / "inspect" / "__init__.py").exists()


def test_import_inspect_from_repo_root_is_stdlib():
    out = subprocess.run(
        [sys.executable, "-c", "import inspect, sys; print(inspect.__file__); "
         "print(hasattr(inspect, 'signature'))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "True"
    assert not out[0].startswith(str(ROOT)), out[0]


def test_vxinspect_uses_the_shared_wire_module():
    # The wire format is written once, in vtep.wire; the inspector imports it.
    src = (ROOT / "inspect" / "vxinspect" / "decode.py").read_text()
    assert "from vtep import wire" in src
    assert "4789" not in src and "8472" not in src


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands_and_ci_runs_the_second():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert all(c.startswith("sh bootstrap.sh && ") for c in cmds)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci, ".ci/run must run the README's test command verbatim"
