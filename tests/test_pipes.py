"""A reader that leaves early (`| head -1`) ends `vtep` and `vxinspect` quietly.

The commands run as real processes whose stdout is a pipe. Two ways the reader
leaves, both as `head` does:
  * after one line, with far more output than the pipe's buffer (64 KiB on
    Linux) still to come: the next write fails with EPIPE mid-command;
  * before the command writes anything (the read end closed at once), with
    output small enough to sit in stdout's buffer until the interpreter's flush
    at exit (where an unhandled EPIPE prints "Exception ignored" and exits 120).
Either way: nothing on stderr, no traceback, and the exit status the command has
with its output sent to /dev/null: `vtep plan` 0; vxinspect its verdict (the
expected verdicts of the captures come from pcaps/README.md).

Unit tests: no root, no namespaces (`vtep plan` for a node whose underlay IP,
in 198.18.0.0/15, is not on this host touches nothing).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PING = str(ROOT / "pcaps" / "lab-kernel-ping.pcap")         # README: exit 0
WRONG_VNI = str(ROOT / "pcaps" / "crafted-wrong-vni.pcap")  # README: exit 1
PIPE_BUFFER = 65536  # Linux default pipe capacity (pipe(7))


def plan_text(n: int) -> str:
    """n nodes, private overlay (no warning on stderr), underlay in 198.18.0.0/15
    (RFC 2544 benchmarking space: not an address of this host)."""
    out = ['[cluster]', 'vni = 10', 'overlay = "10.244.0.0/16"', '']
    for i in range(n):
        out += ['[[nodes]]', f'name = "n{i}"', f'underlay_ip = "198.18.{i >> 8}.{i & 255}"',
                f'subnet = "10.244.{i >> 3}.{(i & 7) * 32}/27"', '']
    return "\n".join(out)


def vtep(*args) -> list[str]:
    return [sys.executable, "-m", "vtep.cli", *args]


def vxinspect(*args) -> list[str]:
    return [sys.executable, "-m", "vxinspect", *args]


def head_1(argv, cwd) -> tuple[bytes, int, bytes, int]:
    """Read one line, close the pipe, and return (line, returncode, stderr, bytes the
    command would have written)."""
    full = subprocess.run(argv, capture_output=True, timeout=120, cwd=cwd).stdout
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    try:
        line = p.stdout.readline()
        p.stdout.close()
        err = p.stderr.read()
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return line, rc, err, len(full)


def reader_gone_before_start(argv, cwd) -> tuple[int, bytes]:
    r, w = os.pipe()
    os.close(r)  # nobody will ever read: every write to w fails with EPIPE
    try:
        p = subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, timeout=120, cwd=cwd)
    finally:
        os.close(w)
    return p.returncode, p.stderr


@pytest.fixture
def big_plan(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text(plan_text(2000))
    return path


def test_vtep_plan_into_head_ends_quietly_with_0(tmp_path, big_plan):
    line, rc, err, size = head_1(vtep("plan", "--config", str(big_plan), "--node", "n5"),
                                 tmp_path)
    assert size > 4 * PIPE_BUFFER  # the command had to write into a closed pipe
    assert line.startswith(b"# node n5: ")
    assert err == b"" and rc == 0, (rc, err.decode())


def test_vtep_plan_reader_gone_before_the_flush_at_exit(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(plan_text(2))
    rc, err = reader_gone_before_start(vtep("plan", "--config", str(path), "--node", "n1"),
                                       tmp_path)
    assert err == b"" and rc == 0, (rc, err.decode())


def test_vtep_errors_still_reach_stderr_with_their_status(tmp_path):
    # the guard on stdout changes nothing for a real error: exit 2, one line
    rc, err = reader_gone_before_start(vtep("plan", "--config", str(tmp_path / "none.toml")),
                                       tmp_path)
    assert rc == 2 and err.decode() == f"vtep: {tmp_path / 'none.toml'}: no such file\n"


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
@pytest.mark.parametrize("files,verdict", [([PING] * 200, 0), ([PING] * 199 + [WRONG_VNI], 1)],
                         ids=["ok", "vni-mismatch-last"])
def test_vxinspect_into_head_ends_quietly_with_its_verdict(tmp_path, json_flag, files, verdict):
    line, rc, err, size = head_1(vxinspect(*json_flag, *files), tmp_path)
    assert size > PIPE_BUFFER
    assert line.strip() in (b"[", f"{PING}: 6 packets, 6 VXLAN, 0 other".encode())
    # the verdict covers every capture, the last included, though the reader left
    # after the first line
    assert err == b"" and rc == verdict, (rc, err.decode())


@pytest.mark.parametrize("capture,verdict", [(PING, 0), (WRONG_VNI, 1)],
                         ids=["ok", "vni-mismatch"])
def test_vxinspect_reader_gone_before_the_flush_at_exit(tmp_path, capture, verdict):
    rc, err = reader_gone_before_start(vxinspect("--json", capture), tmp_path)
    assert err == b"" and rc == verdict, (rc, err.decode())
