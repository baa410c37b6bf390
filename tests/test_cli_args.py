"""Hostile command-line values are usage errors at parse time: exit 2, one line
on stderr naming the option, before any plan is read or anything is touched.

Every refused case below names a plan file that does not exist (or, for `vtep
plan`, a valid plan: that command touches nothing): were the option accepted,
the command would go on and fail on the plan, or succeed, with another message,
so each case fails unless the option itself is refused. Unit tests: no root.

The limits come from outside the code: the kernel's interface-name rule
(net/core/dev.c dev_valid_name: IFNAMSIZ 16 bytes with the NUL, not "." or
"..", no '/', ':' or whitespace), and the ranges the CLI documents in --help.
"""
from __future__ import annotations

import math

import pytest

from vtep.cli import build_parser, main

MISSING = "/nonexistent/vtep-plan.toml"


def refused(capsys, argv, option):
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("vtep: argument " + option + ": "), err
    assert out == ""
    return lines[0]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "0", "-1", "0.05", "0.0999",
                                   "86401", "ten", ""])
def test_run_interval_out_of_range(capsys, value):
    line = refused(capsys, ["run", "--kernel", "--config", MISSING, "--node", "n",
                            f"--interval={value}"], "--interval")
    assert "seconds" in line


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-0.5", "-0", "0.001", "61", "1e9", "x"])
def test_mtu_timeout_out_of_range(capsys, value):
    line = refused(capsys, ["mtu", "--config", MISSING, "--node", "n", f"--timeout={value}"],
                   "--timeout")
    assert "seconds" in line


@pytest.mark.parametrize("name,why", [
    ("", "empty"),
    ("abcdefghijklmnop", "16 bytes"),            # 16 ASCII bytes: one over IFNAMSIZ - 1
    ("\u00e9" * 8, "16 bytes"),                  # 8 characters, but 16 bytes in UTF-8
    ("vx/0", "'/'"), ("vx 0", "' '"), ("vx\t0", "'\\t'"), ("vx:0", "':'"),
    ("vx\x1b0", "'\\x1b'"), ("vx%d", "'%'"), (".", "'.'"), ("..", "'..'"),
])
@pytest.mark.parametrize("command", ["plan", "run", "down"])
def test_device_name_must_be_a_kernel_interface_name(capsys, plan_file, command, name, why):
    argv = {"plan": ["plan", "--config", str(plan_file), "--node", "network-2"],
            "run": ["run", "--kernel", "--config", MISSING, "--node", "n"],
            "down": ["down", "--config", MISSING, "--node", "n"]}[command]
    line = refused(capsys, argv + [f"--device={name}"], "--device")
    assert "not a valid interface name" in line and why in line, line


def test_pod_bridge_name_is_checked_too(capsys):
    refused(capsys, ["pod", "add", "p1", "--config", MISSING, "--bridge", "br/0"], "--bridge")


@pytest.mark.parametrize("argv", [["status"], ["run", "--kernel", "--config", MISSING],
                                  ["down", "--config", MISSING],
                                  ["pod", "del", "p1"]])
def test_empty_state_dir_is_refused(capsys, argv):
    # '' would silently mean the current directory for some commands, /run/vtep for others
    refused(capsys, argv + ["--state-dir="], "--state-dir")


@pytest.mark.parametrize("argv,attr,want", [
    (["run", "--kernel", "-c", "p", "--interval", "0.1"], "interval", 0.1),
    (["run", "--kernel", "-c", "p", "--interval", "86400"], "interval", 86400.0),
    (["mtu", "-c", "p", "--timeout", "0.01"], "timeout", 0.01),
    (["mtu", "-c", "p", "--timeout", "60"], "timeout", 60.0),
    (["plan", "-c", "p", "--device", "abcdefghijklmno"], "device", "abcdefghijklmno"),
    (["plan", "-c", "p", "--device", "\u00e9" * 7], "device", "\u00e9" * 7),  # 14 bytes
    (["plan", "-c", "p", "--device", "vx.lan-0_a"], "device", "vx.lan-0_a"),
    (["status", "--state-dir", "rel/dir"], "state_dir", "rel/dir"),
])
def test_values_at_the_limits_are_accepted(argv, attr, want):
    assert getattr(build_parser().parse_args(argv), attr) == want


def test_defaults_pass_their_own_checks():
    a = build_parser().parse_args(["run", "--kernel", "-c", "p"])
    assert (a.interval, a.device, a.state_dir) == (10.0, "vxlan0", "/run/vtep")
    assert math.isclose(build_parser().parse_args(["mtu", "-c", "p"]).timeout, 0.4)
