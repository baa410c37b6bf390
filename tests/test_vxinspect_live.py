"""vxinspect on streams (no root): `vxinspect -` and the stream reader against the file
reader, --interval, SIGINT, the progress line on a terminal, and usage errors.

The stream reader is held against `inspect_file` on every capture in pcaps/ and in
../shared/external-pcaps (read where they are, never copied), fed through a real pipe in
small random chunks: a stream must give the very report the file gives, faults included.
"""
from __future__ import annotations

import json
import os
import pty
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pcapwrite import write_pcap

from vxinspect import Options, inspect_file
from vxinspect.capture import batches
from vxinspect.progress import ERASE, Progress
from vxinspect.run import inspect_source
from vxinspect.stream import Source

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT.parent / "shared" / "external-pcaps"
CAPTURES = sorted(ROOT.glob("pcaps/*.pcap*")) + sorted(EXT.glob("*.pcap*"))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "inspect")])}


def vxinspect(*args) -> list[str]:
    return [sys.executable, "-m", "vxinspect", *args]


def feed(fd: int, data: bytes, seed: int, top: int = 3000) -> threading.Thread:
    """Write `data` to fd in random chunks of 1..top bytes from a thread, then close it."""
    def run():
        rnd = random.Random(seed)
        i = 0
        try:
            while i < len(data):
                n = rnd.randint(1, top)
                os.write(fd, data[i:i + n])
                i += n
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def through_pipe(data: bytes, seed: int, interval=None):
    r, w = os.pipe()
    t = feed(w, data, seed)
    try:
        report, interrupted = inspect_source(Source(r, "-"), Options(), interval,
                                             lambda *_: None)
    finally:
        os.close(r)
        t.join(10)
    assert not interrupted
    return report


def as_file(report) -> dict:
    d = report.to_dict()
    d.pop("file")
    return d


@pytest.mark.skipif(not (EXT / "README.md").is_file(),
                    reason=f"external captures not available: {EXT} is absent (as in "
                           f"tests/test_external_pcaps.py: kept next to the repository; CI "
                           f"provides them)")
def test_external_captures_are_read_too():
    assert len([p for p in CAPTURES if p.parent == EXT]) >= 20


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_stream_gives_the_file_report(path):
    want = as_file(inspect_file(path))
    data = path.read_bytes()
    for seed in range(3):
        assert as_file(through_pipe(data, seed)) == want
    # the timestamp path (--interval) decodes the same packets
    assert as_file(through_pipe(data, 7, interval=0.25)) == want


def test_stream_cut_mid_record_reports_as_the_file_does(tmp_path):
    data = (ROOT / "pcaps" / "lab-kernel-pcapng.pcapng").read_bytes()
    for cut in (3, 20, 100, len(data) - 5):
        p = tmp_path / "cut.pcapng"
        p.write_bytes(data[:cut])
        want = as_file(inspect_file(p))
        assert want["error"] is not None
        assert as_file(through_pipe(data[:cut], cut)) == want


def test_pcapng_timestamps_follow_if_tsresol():
    # lab-kernel-pcapng holds the same packets as lab-kernel-udp (pcap, microseconds)
    def stamps(path):
        out = []
        st: list = []
        with open(path, "rb") as f:
            for _, records in batches(f, st):
                out += st
        return out
    a, b = stamps(ROOT / "pcaps" / "lab-kernel-pcapng.pcapng"), stamps(ROOT / "pcaps" / "lab-kernel-nano.pcap")
    assert a and b and all(1.7e9 < t < 2e9 for t in a + b)
    assert a == sorted(a)


def test_dash_reads_stdin_in_chunks_and_exit_codes():
    for name, code in (("lab-kernel-ping.pcap", 0), ("crafted-wrong-vni.pcap", 1),
                       ("crafted-truncated-file.pcap", 2)):
        path = ROOT / "pcaps" / name
        p = subprocess.Popen(vxinspect("--json", "-"), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
        w = os.dup(p.stdin.fileno())
        p.stdin.close()
        p.stdin = None
        t = feed(w, path.read_bytes(), 1, 200)
        out, err = p.communicate(timeout=60)
        t.join(5)
        assert p.returncode == code, err
        doc = json.loads(out)
        assert doc["file"] == "-"
        doc.pop("file")
        assert doc == as_file(inspect_file(path))
        if code == 2:
            assert err.decode().count("\n") == 1 and "Traceback" not in err.decode()
            assert err.decode().startswith("vxinspect: -: file ends inside a record")
        else:
            assert err == b""


def frames_at(n: int) -> bytes:
    """n copies of lab-kernel-ping's first frame, packet i at 1700000000 + i + i/1000 s."""
    with open(ROOT / "pcaps" / "lab-kernel-ping.pcap", "rb") as f:
        buf, records = next(batches(f))
        frame = bytes(buf[records[0][0]:records[0][1]])
    return [frame] * n


def test_interval_json_one_document_per_line(tmp_path):
    p = write_pcap(tmp_path / "t.pcap", frames_at(7))  # packets at 0, 1.001, 2.002, ... 6.006 s
    r = subprocess.run(vxinspect("--json", "--interval", "2", str(p)), capture_output=True,
                       text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    ivs = [d["interval"] for d in docs[:-1]]
    # 0-2 s: packets 0, 1; 2-4: 2, 3; 4-6: 4, 5; 6-8 (packet 6) is not over: the final report
    assert [(i["index"], i["start"], i["end"], i["packets"]) for i in ivs] == [
        (0, 0, 2, 2), (1, 2, 4, 2), (2, 4, 6, 2)]
    assert [d["packets"] for d in docs[:-1]] == [2, 4, 6]  # each: the capture so far
    assert "interval" not in docs[-1] and docs[-1]["packets"] == 7
    plain = json.loads(subprocess.run(vxinspect("--json", str(p)), capture_output=True,
                                      env=ENV, timeout=60).stdout)
    assert docs[-1] == plain
    # text: a header per interval, then the report so far; the whole report last
    t = subprocess.run(vxinspect("--interval", "2", str(p)), capture_output=True, text=True,
                       env=ENV, timeout=60).stdout
    assert t.count("--- interval ") == 3 and "--- interval 1: 2-4 s of capture time: 2 packets" in t
    assert t.rstrip().endswith("verdict: OK")


def test_interval_skips_empty_intervals(tmp_path):
    p = write_pcap(tmp_path / "t.pcap", frames_at(3))
    r = subprocess.run(vxinspect("--json", "--interval", "0.25", str(p)), capture_output=True,
                       text=True, env=ENV, timeout=60)
    ivs = [json.loads(x).get("interval") for x in r.stdout.splitlines()]
    assert [(i["index"], i["packets"]) for i in ivs[:-1]] == [(0, 1), (4, 1)]
    assert ivs[-1] is None



def interrupt(p) -> tuple[bytes, bytes]:
    """SIGINT to a `vxinspect -` whose stdin stays open (the end comes from the signal,
    not from EOF); its stdout and stderr."""
    p.send_signal(signal.SIGINT)
    p.wait(30)
    out, err = p.stdout.read(), p.stderr.read()
    p.stdin.close()
    return out, err


def reap(p) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()

def test_sigint_mid_stream_gives_the_report_so_far():
    frames = frames_at(6)
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    recs = [struct.pack("<IIII", 1700000000 + i, 0, len(f), len(f)) + f for i, f in enumerate(frames)]
    p = subprocess.Popen(vxinspect("--json", "--interval", "1", "-"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        # 3 packets and half of the 4th: the interval of packet 1 ends at packet 2
        p.stdin.write(head + b"".join(recs[:3]) + recs[3][:30])
        p.stdin.flush()
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready, "no interval report"
        first = json.loads(p.stdout.readline())
        assert first["interval"]["index"] == 0
        time.sleep(0.3)
        out, err = interrupt(p)
    finally:
        reap(p)
    assert err == b"", err
    docs = [json.loads(x) for x in out.splitlines()]
    last = docs[-1]
    assert last["interrupted"] is True and last["packets"] == 3 and last["error"] is None
    assert p.returncode == 0


def test_sigint_text_and_exit_code_of_an_error_check(tmp_path):
    data = (ROOT / "pcaps" / "crafted-wrong-vni.pcap").read_bytes()
    p = subprocess.Popen(vxinspect("-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    try:
        p.stdin.write(data)  # whole records, the stream stays open
        p.stdin.flush()
        time.sleep(1.5)
        out, err = interrupt(p)
    finally:
        reap(p)
    assert p.returncode == 1 and err == b""
    assert b"interrupted: the report covers the" in out and b"verdict: FAIL" in out


def big_capture(path: Path, n: int) -> Path:
    """n packets: lab-kernel-udp's frames over and over, a microsecond apart."""
    with open(ROOT / "pcaps" / "lab-kernel-udp.pcap", "rb") as f:
        buf, records = next(batches(f))
        frames = [bytes(buf[s:e]) for s, e, _, _ in records]
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    for i in range(n):
        f = frames[i % len(frames)]
        out += struct.pack("<IIII", 1700000000 + i // 1000000, i % 1000000, len(f), len(f)) + f
    path.write_bytes(out)
    return path


BIG = 700_000  # about 2.5 s here with every check: well past the progress line's second


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return big_capture(tmp_path_factory.mktemp("big") / "big.pcap", BIG)


def test_progress_line_on_a_terminal(big):
    path = big
    master, slave = pty.openpty()
    p = subprocess.Popen(vxinspect(str(path)), stdout=subprocess.PIPE, stderr=slave, env=ENV)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every holder of the slave has gone
                    break
                if not chunk:
                    break
                seen += chunk
            elif p.poll() is not None:
                break
        out = p.stdout.read()
        p.wait(30)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    text = seen.decode()
    assert "packets/s" in text and "% (" in text and f"of {path.stat().st_size / 1e6:.1f} MB" in text
    assert text.endswith(ERASE)  # the line is gone when the report is printed
    assert f"{BIG} packets".encode() in out and b"packets/s" not in out


def test_no_progress_when_stderr_is_not_a_terminal(big):
    t0 = time.monotonic()
    r = subprocess.run(vxinspect(str(big)), capture_output=True, env=ENV, timeout=120)
    assert time.monotonic() - t0 > 1.0  # long enough that a terminal would have seen it
    assert r.returncode == 0 and r.stderr == b""


class Lines:
    """A stream that keeps what is written to it (a terminal's view of stderr)."""

    def __init__(self):
        self.out = []

    def write(self, s):
        self.out.append(s)

    def flush(self):
        pass


def test_progress_waits_a_second_and_redraws_in_place():
    now = [0.0]
    w = Lines()
    out = w.out
    pr = Progress("f", 1000, w, clock=lambda: now[0])
    pr.update(100, 10)
    assert out == []  # under a second: nothing
    now[0] = 1.5
    pr.update(500, 3000)
    now[0] = 1.6
    pr.update(600, 3100)  # within REDRAW: not drawn
    now[0] = 2.0
    pr.update(1000, 4000)
    assert out == [f"{ERASE}f:  50% (0.0 MB of 0.0 MB), 3000 packets, 2,000 packets/s",
                   f"{ERASE}f: 100% (0.0 MB of 0.0 MB), 4000 packets, 2,000 packets/s"]
    pr.done()
    assert out[-1] == ERASE


@pytest.mark.parametrize("args,needle", [
    (["--count", "3", "x.pcap"], "--count goes with -i IFACE"),
    (["--duration", "1", "-"], "--duration goes with -i IFACE"),
    (["-i", "eth0", "x.pcap"], "give no FILE with it"),
    ([], "give a FILE, - for stdin, or -i IFACE"),
    (["-", "-"], "stdin (-) can be read only once"),
    (["--interval", "0", "x.pcap"], "--interval must be more than 0 seconds"),
    (["--interval", "nan", "x.pcap"], "--interval must be more than 0 seconds"),
])
def test_usage_errors_are_one_line(args, needle):
    r = subprocess.run(vxinspect(*args), capture_output=True, text=True, env=ENV, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


def test_interval_reader_leaving_early_is_quiet(tmp_path):
    p = write_pcap(tmp_path / "t.pcap", frames_at(400))
    r = subprocess.run(f"{sys.executable} -m vxinspect --interval 1 {p} | head -1",
                       shell=True, capture_output=True, env=ENV, timeout=60)
    assert r.stderr == b"" and r.stdout.startswith(b"--- interval 0")


def test_no_permission_to_capture_is_one_line(monkeypatch, capsys):
    """What an unprivileged user sees (simulated: the tests run as root): the interface
    exists, the packet socket is refused. Nothing here opens a socket."""
    from vxinspect import cli, live

    def refused(*a, **kw):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(live.socket, "if_nametoindex", lambda name: 7)
    monkeypatch.setattr(live.socket, "socket", refused)
    assert cli.main(["-i", "eth0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "vxinspect: eth0: capturing needs root or CAP_NET_RAW\n"


def test_missing_tcpdump_is_one_line(monkeypatch, capsys):
    from vxinspect import cli, live
    monkeypatch.setattr(live, "check_interface", lambda iface: None)
    monkeypatch.setattr(live.shutil, "which", lambda name: None)
    monkeypatch.setattr(live.os, "access", lambda p, mode: False)
    assert cli.main(["-i", "eth0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tcpdump is not installed" in err


def test_bpf_filter_names_every_port_and_the_fragments():
    from vxinspect.live import bpf_filter
    f = bpf_filter({4789, 8472, 4790})
    assert f.startswith("((udp and (dst port 4789 or dst port 4790 or dst port 8472))")
    assert "ip[6:2] & 0x1fff != 0" in f and "ip6[6] == 44" in f and "vlan and" in f


def _pcap_head() -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def _records(frames, t=1700000000) -> bytes:
    return b"".join(struct.pack("<IIII", t, 0, len(f), len(f)) + f for f in frames)


def test_live_interval_ticks_on_the_wall_clock_while_quiet():
    """A live capture's --interval reports come every interval of wall-clock time, also
    when no packet arrives: a pipe stands in for tcpdump's stdout, quiet for ~0.45 s
    after the pcap header, then 2 packets (all at one capture time), quiet again."""
    r, w = os.pipe()
    got = []

    def writer():
        try:
            os.write(w, _pcap_head())
            time.sleep(0.45)
            os.write(w, _records(frames_at(2)))
            time.sleep(0.35)
        finally:
            os.close(w)
    t = threading.Thread(target=writer, daemon=True)
    t0 = time.monotonic()
    t.start()
    try:
        report, interrupted = inspect_source(
            Source(r, "eth0"), Options(), 0.1,
            lambda rep, iv: got.append((time.monotonic() - t0, rep.packets, iv)),
            wall_clock=True)
    finally:
        os.close(r)
        t.join(10)
    assert not interrupted and report.packets == 2
    ivs = [iv for _, _, iv in got]
    assert [iv.index for iv in ivs] == list(range(len(ivs)))  # every tick, none skipped
    assert len(ivs) >= 6  # ~0.8 s of 0.1 s ticks (a loaded machine may lose the last)
    assert [iv.packets for iv in ivs[:3]] == [0, 0, 0]  # quiet: reported, empty
    assert sum(iv.packets for iv in ivs) <= 2 and ivs[-1].packets == 0
    assert all(p == 2 for when, p, iv in got if iv.index >= 6)
    for when, _p, iv in got:  # on time: not before the interval's end, not much after
        assert iv.end - 0.02 <= when <= iv.end + 0.5, (when, iv)
    # the same stream read as a file: capture-time intervals, no ticks (one time: none)
    assert through_pipe(_pcap_head() + _records(frames_at(2)), 3, 0.1).packets == 2


def test_progress_line_without_a_total():
    """stdin and -i: no size known; the line shows bytes, packets and packets/s."""
    now = [0.0]
    w = Lines()
    out = w.out
    pr = Progress("-", None, w, clock=lambda: now[0])
    pr.update(100, 10)
    now[0] = 2.0
    pr.update(3_000_000, 5000)
    assert out == [f"{ERASE}-: 3.0 MB, 5000 packets, 2,500 packets/s"]
    pr.done()
    assert out[-1] == ERASE


def test_progress_on_a_terminal_for_stdin():
    """`vxinspect -` with a terminal on stderr: after a second, a line of packets and
    packets/s (no percentage: no total); erased before the report."""
    master, slave = pty.openpty()
    p = subprocess.Popen(vxinspect("-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=slave, env=ENV)
    os.close(slave)
    seen = b""
    try:
        p.stdin.write(_pcap_head())
        for k in range(8):  # 8 x 0.25 s: well past the line's first second
            p.stdin.write(_records(frames_at(50), 1700000000 + k))
            p.stdin.flush()
            end = time.monotonic() + 0.25
            while time.monotonic() < end:
                ready, _, _ = select.select([master], [], [], 0.05)
                if ready:
                    seen += os.read(master, 4096)
        p.stdin.close()
        out = p.stdout.read()
        p.wait(30)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    text = seen.decode()
    assert "-: " in text and "packets/s" in text and "%" not in text, text
    assert text.endswith(ERASE)
    assert out.startswith(b"-: 400 packets, 400 VXLAN")
