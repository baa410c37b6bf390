"""Writers for test captures: classic pcap (both byte orders, us/ns) and pcapng.

Kept independent of vxinspect's reader on purpose: the tests must not use the
code under test to build their inputs.
"""
from __future__ import annotations

import struct
from pathlib import Path

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276


def _raw(frame) -> bytes:
    return frame if isinstance(frame, (bytes, bytearray)) else bytes(frame)


def write_pcap(path, frames, linktype=LINKTYPE_ETHERNET, *, nanos=False,
               big_endian=False, snaplen=262144, orig_lens=None) -> Path:
    """Write `frames` (bytes or scapy packets) as a classic pcap file."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for i, f in enumerate(frames):
        b = _raw(f)
        orig = orig_lens[i] if orig_lens else len(b)
        out += struct.pack(e + "IIII", 1700000000 + i, 1000 * i, len(b), orig) + b
    Path(path).write_bytes(out)
    return Path(path)


def _block(e, btype, body) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def write_pcapng(path, records, interfaces=(LINKTYPE_ETHERNET,), *, big_endian=False,
                 simple=False, extra_blocks=True) -> Path:
    """Write pcapng: one SHB, one IDB per entry of `interfaces`, then packets.

    `records` is a list of frames (interface 0) or (interface_id, frame) pairs.
    With `simple=True` frames go in Simple Packet Blocks (interface 0 only).
    `extra_blocks` adds a Name Resolution Block and an Interface Statistics
    Block, which a reader must skip.
    """
    e = ">" if big_endian else "<"
    out = bytearray(_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
    for lt in interfaces:
        # option if_tsresol = 9 (nanoseconds), then opt_endofopt
        opts = struct.pack(e + "HH", 9, 1) + b"\x09\0\0\0" + struct.pack(e + "HH", 0, 0)
        out += _block(e, 1, struct.pack(e + "HHI", lt, 0, 262144) + opts)
    if extra_blocks:
        out += _block(e, 4, struct.pack(e + "HH", 0, 0))  # empty NRB
    for i, rec in enumerate(records):
        ifid, f = rec if isinstance(rec, tuple) else (0, rec)
        b = _raw(f)
        if simple:
            out += _block(e, 3, struct.pack(e + "I", len(b)) + b)
        else:
            ts = 1700000000_000000000 + i
            out += _block(e, 6, struct.pack(e + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF,
                                            len(b), len(b)) + b)
    if extra_blocks:
        out += _block(e, 5, struct.pack(e + "III", 0, 0, 0))  # ISB, no options
    Path(path).write_bytes(out)
    return Path(path)
