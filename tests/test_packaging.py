"""A normal (non-editable) install works: build the real wheel, install it into a
fresh venv, and run the commands from there.

An editable install maps whole source directories, so it hides a package the
build configuration leaves out; only a built wheel shows it (vtep.lab was
missing from `pip install .`, and `vtep lab` died with ModuleNotFoundError).

The fresh venv has no site-packages but its own: the wheel goes in with
`pip --python ... install --no-deps`, and the runtime dependencies (scapy,
pyroute2, pytun) are made importable through a .pth file naming a directory
that holds links to those distributions' top-level modules and nothing else:
never the project venv's site-packages (it carries the editable vtep) and never
the source tree (the commands run from an empty temporary directory).

Building needs setuptools and wheel from the test environment (the `test`
extra) and no network: --no-build-isolation.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "pcaps" / "crafted-wrong-vni.pcap"  # pcaps/README.md: exit 1, vni-mismatch=2


def _source_modules() -> set[str]:
    """Every module file the source tree holds, as the wheel must name it."""
    found = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vtep").rglob("*.py")}
    found |= {"vxinspect/" + p.relative_to(ROOT / "inspect" / "vxinspect").as_posix()
              for p in (ROOT / "inspect" / "vxinspect").rglob("*.py")}
    return {f for f in found if "__pycache__" not in f}


def _dependency_tops(requirements: list[str]) -> set[Path]:
    """The installed top-level files/dirs of the runtime requirements, recursively
    (requirements behind an extra are not installed by a plain install)."""
    tops: set[Path] = set()
    todo = [r for r in requirements if "extra ==" not in r]
    done: set[str] = set()
    while todo:
        name = re.match(r"[A-Za-z0-9_.-]+", todo.pop()).group(0).lower()
        if name in done:
            continue
        done.add(name)
        dist = importlib.metadata.distribution(name)
        for f in dist.files or ():
            first = f.parts[0]
            if first == ".." or first.endswith((".dist-info", ".egg-info")) or \
                    first == "__pycache__":
                continue
            tops.add(Path(dist.locate_file(first)))
        todo += [r for r in (dist.requires or []) if "extra ==" not in r
                 and "platform_system == \"Windows\"" not in r]
    return tops


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin dir, env, wheel path): the wheel built from this tree, installed alone."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the
    # checkout, and stale ones there would be packaged instead of the sources.
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "out"))
    dist = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "--disable-pip-version-check", "-q", "-w", str(dist),
                        str(src)], capture_output=True, text=True, timeout=120, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = dist.glob("vtep-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                        "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=120, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    deps = tmp / "deps"
    deps.mkdir()
    for top in _dependency_tops(requires):
        (deps / top.name).symlink_to(top)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "vtep-test-deps.pth").write_text(f"{deps}\n")

    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp),
           "LC_ALL": "C.UTF-8"}
    run_dir = tmp / "cwd"
    run_dir.mkdir()
    return venv / "bin", env, wheel, run_dir


def _run(installed, *argv):
    bindir, env, _, cwd = installed
    return subprocess.run([str(bindir / argv[0]), *argv[1:]], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60)


def test_wheel_holds_every_module_of_the_source_tree(installed):
    _, _, wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    want = _source_modules()
    assert {"vtep/lab/__init__.py", "vtep/lab/lab.py", "vxinspect/cli.py"} <= want
    assert want - names == set(), f"missing from the wheel: {sorted(want - names)}"
    # inspect/ is a directory of the checkout, never a package of its own
    assert not [n for n in names if n.startswith(("inspect/", "tests/", "bench/"))], names


def test_installed_modules_import_from_the_venv_not_the_checkout(installed):
    bindir, _, _, _ = installed
    mods = sorted(f[:-3].replace("/", ".").removesuffix(".__init__") for f in _source_modules()
                  if not f.endswith("__main__.py"))
    code = ("import importlib, inspect, json, sys\n"
            f"mods = {mods!r}\n"
            "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
            "print(json.dumps({'files': files, 'path': sys.path, "
            "'inspect': inspect.__file__, 'signature': hasattr(inspect, 'signature')}))\n")
    r = _run(installed, "python", "-c", code)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    venv = str(bindir.parent)
    for mod, f in doc["files"].items():
        assert f.startswith(venv + "/"), (mod, f)  # the installed copy, not the checkout
    assert not any(p.startswith(str(ROOT)) for p in doc["path"]), doc["path"]
    assert doc["signature"] and not doc["inspect"].startswith(venv), doc["inspect"]  # stdlib


@pytest.mark.parametrize("argv", [("vtep", "--help"), ("vtep", "lab", "--help"),
                                  ("vxinspect", "--help")])
def test_installed_commands_show_help(installed, argv):
    r = _run(installed, *argv)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {' '.join(argv[:-1])}"), r.stdout
    assert r.stderr == ""


def test_installed_vxinspect_reads_a_capture(installed):
    r = _run(installed, "vxinspect", "--json", str(CAPTURE))
    assert r.returncode == 1, r.stderr  # an error check fired: vni-mismatch
    doc = json.loads(r.stdout)
    assert doc["checks"]["vni-mismatch"]["count"] == 2
    assert doc["vnis"] == {"42": 2}
    assert r.stderr == ""


def test_installed_vtep_runs_a_command_from_the_lab_package(installed):
    # `vtep lab` imports vtep.lab; `down` of a lab never brought up under this
    # prefix touches nothing (and needs no namespaces).
    r = _run(installed, "vtep", "lab", "down", "--prefix", f"vtpkg{os.getpid() % 10000}-")
    assert "ModuleNotFoundError" not in r.stderr and "internal error" not in r.stderr, r.stderr
    if os.geteuid() == 0:
        assert r.returncode == 0 and "not up; nothing to do" in r.stdout, r.stderr
    else:  # the lab needs CAP_NET_ADMIN: exit 3, after the import succeeded
        assert r.returncode == 3, r.stderr


def test_installed_vtep_cni_answers_version_as_the_spec_says(installed):
    """The plugin binary a runtime runs (linked as `vtep` into its plugin directory):
    VERSION with a config on stdin, as libcni asks it (spec section 2, "VERSION")."""
    bindir, env, _, cwd = installed
    r = subprocess.run([str(bindir / "vtep-cni")], input='{"cniVersion": "1.0.0"}',
                       capture_output=True, text=True, timeout=60, cwd=cwd,
                       env=dict(env, CNI_COMMAND="VERSION"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    assert doc["cniVersion"] == "1.0.0"
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(doc["supportedVersions"])
