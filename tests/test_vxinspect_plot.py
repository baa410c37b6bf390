"""`vxinspect --plot FILE.png`: the picture exists, is a PNG of the stated size, and
was drawn from the same numbers the report gives.

Every capture in pcaps/ (and ../shared/external-pcaps when present, read where it
is) goes through run.inspect_source with a plot.Recorder: the series the picture is
drawn from must total the Report's packets, VXLAN packets, per-VNI counts and check
counts. A few are drawn and their PNG's magic and IHDR checked against plot.SIZE.
The command line is exercised for a file, for `-` and with --interval; a bad --plot
path is one line and exit 2 before the capture is read. The live case (-i) runs in
the seed lab and needs root (marked netns).
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seedlab import one_line
from test_vxinspect_live_netns import end, lab, vxinspect_live  # noqa: F401 (lab: a fixture)

from vxinspect import Options, inspect_file
from vxinspect import cli, plot
from vxinspect.run import inspect_source
from vxinspect.stream import Source

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT.parent / "shared" / "external-pcaps"
CAPTURES = (sorted(ROOT.glob("pcaps/*.pcap*")) + sorted(ROOT.glob("pcaps/mtu/*.pcap*"))
            + sorted(EXT.glob("*.pcap*")))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "inspect")])}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR, after checking the magic bytes."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, head[:8]
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def recorded(path: Path, opts: Options | None = None):
    opts = opts or Options()
    rec = plot.Recorder(opts.underlay_mtu, 1450, 1430)
    src = Source.open(str(path))
    try:
        report, interrupted = inspect_source(src, opts, recorder=rec)
    finally:
        src.close()
    assert not interrupted
    return rec, report


def agree(s: dict, report) -> None:
    assert s["packets"] == report.packets
    assert s["vxlan_packets"] == report.vxlan_packets
    assert s["vnis"] == report.vnis
    assert s["checks"] == {c: v["count"] for c, v in report.checks.items() if v["count"]}
    assert sum(s["bins"].values()) == report.packets


def test_size_is_stated():
    assert plot.SIZE == (1600, 1200)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_series_agree_with_the_report(path):
    rec, report = recorded(path)
    assert report.to_dict() == inspect_file(path).to_dict() | {"file": str(path)}
    agree(plot.series(rec, report.packets), report)


@pytest.mark.parametrize("name", ["mtu/kernel-forced-1500-fragments.pcap",
                                  "crafted-mac-two-vnis.pcap", "crafted-truncated.pcap",
                                  "crafted-custom-port.pcap"])
def test_drawn_png_is_the_stated_size(tmp_path, name):
    path = ROOT / "pcaps" / name
    rec, report = recorded(path)
    out = tmp_path / "p.png"
    s = plot.draw(rec, str(out), name, report.packets)
    assert png_size(out) == plot.SIZE
    agree(s, report)


def test_an_empty_recorder_still_draws(tmp_path):
    out = tmp_path / "empty.png"
    plot.draw(plot.Recorder(1500, 1450, 1430), str(out), "nothing", 0)
    assert png_size(out) == plot.SIZE


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vxinspect", *args], capture_output=True,
                          env=ENV, timeout=120, cwd=ROOT, **kw)


def test_cli_file_and_interval(tmp_path):
    cap = ROOT / "pcaps" / "mtu" / "kernel-forced-1500-fragments.pcap"
    for extra in ([], ["--interval", "0.00005"]):
        out = tmp_path / f"f{len(extra)}.png"
        r = run(str(cap), "--json", "--plot", str(out), *extra)
        assert r.returncode == 1 and r.stderr == b"", r.stderr  # error checks fired
        assert png_size(out) == plot.SIZE


def test_cli_stdin(tmp_path):
    cap = ROOT / "pcaps" / "crafted-mac-two-vnis.pcap"
    out = tmp_path / "stdin.png"
    r = run("--json", "-", "--plot", str(out), input=cap.read_bytes())
    assert r.returncode == 1 and r.stderr == b"", r.stderr  # vni-mismatch
    assert json.loads(r.stdout)["vnis"] == {"10": 1, "20": 1}
    assert png_size(out) == plot.SIZE


@pytest.mark.parametrize("target,needle", [
    ("nosuchdir/p.png", "does not exist"),
    (".", "is a directory"),
    ("pcaps/README.md/p.png", "is not a directory"),
])
def test_bad_path_is_one_line_before_reading(tmp_path, target, needle):
    # the capture does not exist either: the plot path is refused first
    r = run(str(tmp_path / "missing.pcap"), "--plot", target, text=True)
    assert r.stdout == ""
    one_line(r, 2, "vxinspect: --plot", needle)


def test_not_writable_is_one_line(tmp_path, monkeypatch, capsys):
    # as root, permission bits do not stop a write: os.access stands in for them
    monkeypatch.setattr(plot.os, "access", lambda *a, **k: False)
    rc = cli.main([str(ROOT / "pcaps" / "lab-kernel-udp.pcap"), "--plot",
                   str(tmp_path / "p.png")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err == f"vxinspect: --plot {tmp_path / 'p.png'}: not writable\n"
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("argv,needle", [
    (["a.pcap", "b.pcap"], "--plot draws one capture"),
    (["a.pcap", "--show", "1"], "--plot and --show"),
])
def test_usage(tmp_path, argv, needle):
    r = run(*argv, "--plot", str(tmp_path / "p.png"), text=True)
    one_line(r, 2, needle)


@pytest.mark.netns
def test_live_capture_draws_at_the_end(lab, tmp_path):
    """-i eth0 on network-1 while the pods ping; SIGINT; the picture holds what the report
    holds (the lab fixture and helpers are the live tests')."""
    out = tmp_path / "live.png"
    live = vxinspect_live(lab, "--plot", str(out))
    try:
        r = lab.ping(4)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(1.0)  # the last reply is on the wire and captured
        code = end(live)
        doc = json.loads(live.stdout.read())
        err = live.stderr.read().decode()
    finally:
        if live.poll() is None:
            end(live, signal.SIGKILL)
    assert code == 0 and "Traceback" not in err, err
    assert doc["vxlan_packets"] >= 8 and doc["vnis"] == {"10": doc["vxlan_packets"]}
    assert png_size(out) == plot.SIZE


def _many(path: Path, n: int) -> Path:
    """n VXLAN frames 1 ms apart (struct-written pcap); 100 of them, evenly spread, have
    a wrong inner IPv4 header checksum (a fixed bad value, set with scapy)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    inner = Ether(src="52:54:00:0a:00:01", dst="52:54:00:0b:00:01") / IP(
        src="10.10.0.1", dst="10.10.0.101", flags="DF") / TCP(sport=40000, dport=443, flags="A")
    good = bytes(Ether() / IP(src="192.168.1.138", dst="192.168.2.142", flags="DF")
                 / UDP(sport=50000, dport=4789) / VXLAN(flags=0x08, vni=10) / inner)
    bad_inner = inner.copy()
    bad_inner[IP].chksum = 0x1234
    bad = bytes(Ether() / IP(src="192.168.1.138", dst="192.168.2.142", flags="DF")
                / UDP(sport=50000, dport=4789) / VXLAN(flags=0x08, vni=10) / bad_inner)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    for i in range(n):
        f = bad if i % (n // 100) == 0 else good
        t = 1_700_000_000_000 + i  # milliseconds
        out += struct.pack("<IIII", t // 1000, (t % 1000) * 1000, len(f), len(f)) + f
    path.write_bytes(bytes(out))
    return path


def test_recorder_memory_does_not_grow_with_packets(tmp_path):
    """--plot keeps counters, not per-packet columns: after 10,000 and 100,000 packets the
    recorder holds the same number of entries (lengths, bins), and its totals are the
    capture's (counted here from how it was written)."""
    states = {}
    for n in (10_000, 100_000):
        rec, report = recorded(_many(tmp_path / f"m{n}.pcap", n))
        s = plot.series(rec, report.packets)
        assert (s["packets"], s["vxlan_packets"], s["vnis"]) == (n, n, {10: n})
        assert s["checks"] == {"inner-ip-checksum": 100}
        agree(s, report)
        assert len(rec.rows) == 0 and len(rec.tally.fired_no) == 0  # all folded
        states[n] = rec.state()
        assert states[n]["all_bins"] <= plot.MAX_BINS
        if n == 100_000:
            out = tmp_path / "many.png"
            plot.draw(rec, str(out), "many", report.packets)
            assert png_size(out) == plot.SIZE
    assert states[10_000] == states[100_000], states
