"""Unreadable input: `vxinspect FILE` exits 2 with ONE line on stderr that starts with
"vxinspect: ", names the file and says "byte offset N"; never a traceback; what was read
before the fault is still reported on stdout.  The Python API never raises for a
bad/corrupt capture: report.error is set instead (contract, CLI and Python API)."""
from __future__ import annotations

import json
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from pcapwrite import write_pcap, write_pcapng

from vxinspect import Options, inspect_file
from vxinspect.decode import make_decoder
from vxinspect.report import Tally

REPO = Path(__file__).resolve().parents[1]
PCAP_HDR = 24
REC_HDR = 16


def vxlan_frame(i=0, vni=10):
    return bytes(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") /
                 IP(src="192.0.2.1", dst="192.0.2.2", flags="DF") /
                 UDP(sport=49152 + i, dport=4789) / VXLAN(flags=0x08, vni=vni) /
                 Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") /
                 IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(seq=i) / b"payload!")


FRAMES = [vxlan_frame(i) for i in range(3)]


def good_pcap(path, frames=FRAMES, **kw):
    return write_pcap(path, frames, **kw)


def record_offsets(frames):
    """Byte offset of each record header in a classic pcap written by write_pcap."""
    offs, off = [], PCAP_HDR
    for f in frames:
        offs.append(off)
        off += REC_HDR + len(f)
    return offs, off


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vxinspect", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def assert_unreadable(r, path, offset=None):
    """The contract's exit-2 behaviour; returns the offset named in the message."""
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got: {r.stderr!r}"
    line = lines[0]
    assert line.startswith("vxinspect: "), line
    assert Path(path).name in line, line
    m = re.search(r"byte offset (\d+)", line)
    assert m, line
    if offset is not None:
        assert int(m.group(1)) == offset, line
    return int(m.group(1))


# ---- the corrupt files ---------------------------------------------------------------------
# Each builder returns (path, number of complete good packets before the fault).

def empty_file(tmp):
    p = tmp / "empty.pcap"
    p.write_bytes(b"")
    return p, 0


def text_file(tmp):
    p = tmp / "notes.pcap"
    p.write_text("this is not a capture file\njust some text\n" * 4)
    return p, 0


def pcap_header_cut(tmp):
    p = good_pcap(tmp / "hdrcut.pcap")
    p.write_bytes(p.read_bytes()[:13])
    return p, 0


def pcapng_shb_cut(tmp):
    p = write_pcapng(tmp / "shbcut.pcapng", FRAMES)
    p.write_bytes(p.read_bytes()[:18])
    return p, 0


def record_header_cut(tmp):
    p = good_pcap(tmp / "rechdrcut.pcap")
    offs, _ = record_offsets(FRAMES)
    p.write_bytes(p.read_bytes()[:offs[2] + 7])     # 2 good records, 7 bytes of the third
    return p, 2


def record_runs_past_eof(tmp):
    p = good_pcap(tmp / "recpast.pcap")
    _, end = record_offsets(FRAMES)
    p.write_bytes(p.read_bytes()[:end - 10])        # last record loses its final 10 bytes
    return p, 2


def record_absurd_length(tmp):
    p = good_pcap(tmp / "absurd.pcap")
    b = p.read_bytes() + struct.pack("<IIII", 1700000100, 0, 0xFFFFFFFF, 0xFFFFFFFF) + b"x" * 64
    p.write_bytes(b)
    return p, 3


def unknown_linktype(tmp):
    return good_pcap(tmp / "lt147.pcap", linktype=147), 0


def pcapng_bad_total_length_small(tmp):
    p = write_pcapng(tmp / "badlen.pcapng", FRAMES[:2], extra_blocks=False)
    # a third EPB whose total length (8) is below the 12-byte minimum
    p.write_bytes(p.read_bytes() + struct.pack("<II", 6, 8) + b"\0" * 40)
    return p, 2


def pcapng_bad_total_length_past_eof(tmp):
    p = write_pcapng(tmp / "badlen2.pcapng", FRAMES[:2], extra_blocks=False)
    epb_body = struct.pack("<IIIII", 0, 0, 0, len(FRAMES[2]), len(FRAMES[2])) + FRAMES[2]
    p.write_bytes(p.read_bytes() + struct.pack("<II", 6, 0x7FFFFFF0) + epb_body)
    return p, 2


def pcapng_bad_total_length_unaligned(tmp):
    p = write_pcapng(tmp / "badlen3.pcapng", FRAMES[:2], extra_blocks=False)
    b = bytearray(p.read_bytes())
    # The second EPB is the last block: bump its total length (leading copy) by 1, so it is
    # not a multiple of 4 and no longer matches its trailing copy.
    last_len = struct.unpack("<I", b[-4:])[0]
    start = len(b) - last_len
    assert struct.unpack("<II", b[start:start + 8]) == (6, last_len)
    b[start + 4:start + 8] = struct.pack("<I", last_len + 1)
    p.write_bytes(bytes(b))
    return p, 1


def pcapng_undefined_interface(tmp):
    # an EPB referring to interface 3 when only interface 0 was described: its link type
    # is unknown, so the capture cannot be read from there on
    p = write_pcapng(tmp / "noif.pcapng", [FRAMES[0], (3, FRAMES[1])], extra_blocks=False)
    return p, 1


CORRUPT = [empty_file, text_file, pcap_header_cut, pcapng_shb_cut, record_header_cut,
           record_runs_past_eof, record_absurd_length, unknown_linktype,
           pcapng_bad_total_length_small, pcapng_bad_total_length_past_eof,
           pcapng_bad_total_length_unaligned, pcapng_undefined_interface]


@pytest.mark.parametrize("build", CORRUPT, ids=[b.__name__ for b in CORRUPT])
def test_cli_exit_2_one_line(tmp_path, build):
    path, _ = build(tmp_path)
    assert_unreadable(run_cli(path), path)


@pytest.mark.parametrize("build", CORRUPT, ids=[b.__name__ for b in CORRUPT])
def test_cli_json_reports_what_was_read(tmp_path, build):
    path, good = build(tmp_path)
    r = run_cli(path, "--json")
    off = assert_unreadable(r, path)
    d = json.loads(r.stdout)            # the document is still printed
    assert d["packets"] == good
    assert d["vxlan_packets"] == good
    assert d["ok"] is False
    assert d["error"] is not None
    assert isinstance(d["error"]["message"], str) and d["error"]["message"]
    assert d["error"]["offset"] == off


@pytest.mark.parametrize("build", CORRUPT, ids=[b.__name__ for b in CORRUPT])
def test_api_never_raises(tmp_path, build):
    path, good = build(tmp_path)
    rep = inspect_file(str(path), Options())
    assert rep.error
    d = rep.to_dict()
    assert d["error"] is not None and isinstance(d["error"]["offset"], int)
    assert d["packets"] == good
    assert d["ok"] is False


def test_missing_file(tmp_path):
    path = tmp_path / "no-such-capture.pcap"
    assert_unreadable(run_cli(path), path)


def test_record_past_eof_names_its_offset(tmp_path):
    path, _ = record_runs_past_eof(tmp_path)
    offs, _ = record_offsets(FRAMES)
    r = run_cli(path, "--json")
    assert_unreadable(r, path, offset=offs[2])
    d = json.loads(r.stdout)
    assert d["packets"] == 2 and d["vnis"] == {"10": 2}
    assert d["error"]["offset"] == offs[2]


def test_absurd_length_names_its_offset(tmp_path):
    """The offset must point into the bad record header (its start or its length field),
    not at the end of the file 4 GiB later or at the file header."""
    path, _ = record_absurd_length(tmp_path)
    _, end = record_offsets(FRAMES)
    off = assert_unreadable(run_cli(path), path)
    assert end <= off < end + REC_HDR


def test_plain_output_still_printed(tmp_path):
    path, _ = record_runs_past_eof(tmp_path)
    r = run_cli(path)
    assert_unreadable(r, path)
    assert r.stdout.strip(), "what was read before the fault must still be reported"


def test_several_files_worst_exit_wins(tmp_path):
    good = good_pcap(tmp_path / "good.pcap")
    bad, _ = record_header_cut(tmp_path)
    r = run_cli(good, bad, "--json")
    assert_unreadable(r, bad)
    docs = json.loads(r.stdout)
    assert [d["error"] is None for d in docs] == [True, False]
    assert [d["packets"] for d in docs] == [3, 2]
    # a corrupt file first does not stop the next one from being read
    r = run_cli(bad, good, "--json")
    assert_unreadable(r, bad)
    docs = json.loads(r.stdout)
    assert [d["packets"] for d in docs] == [2, 3]
    assert docs[1]["ok"] is True


def test_good_file_is_not_an_error(tmp_path):
    """Control for the tests above: the same frames, intact, read cleanly."""
    path = good_pcap(tmp_path / "good.pcap")
    r = run_cli(path, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    d = json.loads(r.stdout)
    assert (d["packets"], d["error"], d["ok"]) == (3, None, True)


# ---- every truncation point --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pcap-le", "pcap-be-ns", "pcapng-le", "pcapng-be-spb"])
def test_file_cut_at_every_byte(tmp_path, kind):
    """Cut a good capture at every length: never raises; a cut exactly on a record/block
    boundary is a valid shorter capture, any other cut is a read error, and the complete
    records before the cut are always counted."""
    frames = FRAMES[:2]
    if kind == "pcap-le":
        full = good_pcap(tmp_path / "f", frames).read_bytes()
    elif kind == "pcap-be-ns":
        full = good_pcap(tmp_path / "f", frames, big_endian=True, nanos=True).read_bytes()
    elif kind == "pcapng-le":
        full = write_pcapng(tmp_path / "f", frames).read_bytes()
    else:
        full = write_pcapng(tmp_path / "f", frames, big_endian=True, simple=True).read_bytes()

    neutral = set()
    if kind.startswith("pcap-"):
        bounds = {PCAP_HDR: 0}
        off = PCAP_HDR
        for n, f in enumerate(frames, 1):
            off += REC_HDR + len(f)
            bounds[off] = n
    else:
        e = ">" if "be" in kind else "<"
        bounds, off, n = {}, 0, 0
        while off < len(full):
            btype, blen = struct.unpack(e + "II", full[off:off + 8])
            off += blen
            n += btype in (3, 6)
            if btype == 0x0A0D0D0A:
                neutral.add(off)      # an SHB and nothing else: not asserted either way
            else:
                bounds[off] = n
    assert max(bounds) == len(full)

    p = tmp_path / "cut"
    for cut in range(0, len(full) + 1):
        p.write_bytes(full[:cut])
        d = inspect_file(str(p), Options()).to_dict()      # must not raise
        if cut in neutral:
            continue
        if cut in bounds:
            assert d["error"] is None, (cut, d["error"])
            assert d["packets"] == bounds[cut], cut
        else:
            assert d["error"] is not None, cut
            done = max([v for b, v in bounds.items() if b <= cut], default=0)
            assert d["packets"] == done, cut
            assert isinstance(d["error"]["offset"], int) and 0 <= d["error"]["offset"] <= cut


# ---- garbage inside intact records --------------------------------------------------------

def decode_without_net(frames, linktype=1):
    """Each frame alone in its own buffer, through the decoder with its safety net off (a
    read past the frame's end raises instead of counting as truncated): {check: count}."""
    tally = Tally()
    decode_batch = make_decoder(Options(), tally, safety_net=False)
    for no, f in enumerate(frames):
        decode_batch(f, [(0, len(f), len(f), linktype)], no)
    return {c: h[0] for c, h in tally.hits.items()}


def test_frames_cut_at_every_length_are_checks_not_errors(tmp_path):
    """Records are intact, only the frames inside are short: that is the `truncated` check,
    not a read error, and decoding must not raise."""
    f = FRAMES[0]
    frames = [f[:n] for n in range(len(f) + 1)]
    path = write_pcap(tmp_path / "short.pcap", frames)
    d = inspect_file(str(path), Options()).to_dict()
    assert d["error"] is None
    assert d["packets"] == len(frames)
    # Every cut that still holds the whole outer UDP header (>= 42 bytes: 14 Eth + 20 IP +
    # 8 UDP, destination port 4789) but not the whole frame is a VXLAN packet whose IP total
    # length exceeds the bytes present: truncated.  (Shorter cuts are not asserted: whether a
    # datagram with a partial UDP header counts as VXLAN is not settled by the contract.)
    n = d["checks"]["truncated"]["count"]
    assert len(f) - 42 <= n <= len(f)
    assert d["vxlan_packets"] >= len(f) - 42 + 1
    assert d["ok"] is False
    # decoding does not raise: not even with the safety net that would count it as truncated
    assert decode_without_net(frames) == {c: v["count"] for c, v in d["checks"].items()}


def test_random_garbage_frames_never_raise(tmp_path):
    rng = random.Random(7348)
    frames = []
    for i in range(400):
        b = bytearray(vxlan_frame(i, vni=rng.choice([10, 11, 0xFFFFFF])))
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.3:
            b = b[:rng.randrange(len(b) + 1)]
        frames.append(bytes(b))
    for lt in (1, 101, 113, 276):
        path = write_pcap(tmp_path / f"garbage{lt}.pcap", frames, linktype=lt)
        d = inspect_file(str(path), Options()).to_dict()
        assert d["error"] is None, (lt, d["error"])
        assert d["packets"] == len(frames)
        assert d["vxlan_packets"] + d["other_packets"] == len(frames)
        assert decode_without_net(frames, lt) == {c: v["count"] for c, v in d["checks"].items()}
    r = run_cli(path, "--json")
    assert "Traceback" not in r.stderr
    assert r.returncode in (0, 1)
