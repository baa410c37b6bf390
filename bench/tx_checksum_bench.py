#!/usr/bin/env python3
"""What the outer UDP checksum costs the userspace transmit loop (issue 17).

    .venv/bin/python bench/tx_checksum_bench.py [--frames 200000] [--repeat 5]

No root, no network: Datapath.tx_batch is driven with in-memory I/O (a TAP read
that copies a ready frame into the buffer, a sendto that does nothing), so the
figures are the loop's own per-frame cost, without the system calls that
dominate on a real TAP and socket (bench/datapath_bench.py measures those).

For each frame size (a 64-byte and a 1,450-byte inner IPv4/UDP packet, unicast to
one peer, and the small one broadcast to 8 peers) it times the loop with the
checksum off (udp_checksum = false: the field stays zero) and on (the plan's
default: the datagram summed once, each peer's pseudo-header added), best of
--repeat runs, alternating the two so that machine noise hits both, and prints
ns per frame and the ratio on/off measured in the same run.
"""
from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vtep import datapath  # noqa: E402

LOCAL = "192.168.1.138"
PEERS = [f"192.168.2.{i}" for i in range(10, 18)]
PEER_MAC = bytes.fromhex("5a0c71865911")
MY_MAC = bytes.fromhex("06b33177abd9")


def frame(dst_mac: bytes, inner_len: int) -> bytes:
    """Ethernet + IPv4 (no options, no checksum: the loop does not read it) + UDP."""
    payload = bytes(i % 251 for i in range(inner_len - 28))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, inner_len, 1, 0x4000, 64, 17, 0,
                     socket.inet_aton("172.2.0.2"), socket.inet_aton("172.2.1.2"))
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0)
    return dst_mac + MY_MAC + b"\x08\x00" + ip + udp + payload


def run(f: bytes, frames: int, csum: bool, peers: int) -> float:
    """Seconds for `frames` frames through tx_batch."""
    n = len(f)
    left = [frames]

    def readv(buffers):
        if not left[0]:
            raise BlockingIOError
        left[0] -= 1
        buffers[0][:n] = f
        return n

    def sendto(view, addr):
        return len(view)

    dp = datapath.Datapath(
        vni=10, port=4789, fdb={PEER_MAC: PEERS[0]}, peers=PEERS[:peers], tap_readv=readv,
        tap_write=None, sendto=sendto, recvfrom_into=None, addr_port=0,
        checksum_src=socket.inet_aton(LOCAL) if csum else None)
    t0 = time.perf_counter()
    while dp.tx_batch(256):
        pass
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    if a.frames < 1 or a.repeat < 1:
        ap.error("--frames and --repeat must be at least 1")
    cases = [("64 B unicast", frame(PEER_MAC, 64), 1),
             ("1450 B unicast", frame(PEER_MAC, 1450), 1),
             ("64 B broadcast to 8 peers", frame(b"\xff" * 6, 64), 8)]
    print(f"tx_batch, {a.frames:,} frames, best of {a.repeat}; ns per frame read from the TAP")
    print(f"{'case':<28}{'checksum off':>14}{'checksum on':>14}{'on/off':>9}")
    for name, f, peers in cases:
        best = {False: float("inf"), True: float("inf")}
        for _ in range(a.repeat):
            for csum in (False, True):
                best[csum] = min(best[csum], run(f, a.frames, csum, peers))
        off, on = (best[c] / a.frames * 1e9 for c in (False, True))
        print(f"{name:<28}{off:>12.0f}ns{on:>12.0f}ns{on / off:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
