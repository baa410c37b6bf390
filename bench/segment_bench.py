#!/usr/bin/env python3
"""What userspace TSO/USO costs per 64 KiB super-frame: vtep.segment against a plain loop.

    .venv/bin/python bench/segment_bench.py [--iterations 2000] [--repeat 5]

No root, no network, a few seconds. For each case (a 64 KiB TCP/IPv4 super-frame with
timestamps cut into 1398-byte segments as an MTU-1450 overlay would; the same over IPv6;
an odd gso_size; USO) it times Segmenter.segment (all full segments at once with numpy)
and a per-segment pure-Python loop written here (struct for the headers, int.from_bytes
checksums as vtep.checksum does them: the way datapath.py's loops work today), best of
--repeat runs of --iterations frames, alternating the two so that machine noise hits
both. Both write the same bytes (checked before timing). It prints us per super-frame,
the ratio, and the TCP payload rate the time implies: the ceiling segmentation alone
would put on one Python thread (the TAP read and the GSO send come on top).
"""
from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vtep import checksum, vnet  # noqa: E402
from vtep.segment import Segmenter  # noqa: E402

VX = bytes.fromhex("0800000000000a00")
ETH = bytes.fromhex("5a0c71865911" "06b33177abd9")
SRC4, DST4 = socket.inet_aton("172.2.0.2"), socket.inet_aton("172.2.1.2")
SRC6 = socket.inet_pton(socket.AF_INET6, "fd00::2")
DST6 = socket.inet_pton(socket.AF_INET6, "fd00:1::2")
TS_OPTS = bytes([1, 1, 8, 10]) + struct.pack("!II", 123456, 654321)   # NOP NOP timestamps


def tcp_frame(ipv6: bool, payload: int) -> bytearray:
    """A TSO super-frame as the TAP gives it (checksum fields as the stack leaves them
    does not matter here: both sides recompute them)."""
    body = bytes(i % 251 for i in range(payload))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1_000_000, 77, (32 // 4) << 4, 0x18, 502,
                      0, 0) + TS_OPTS
    if ipv6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + payload, 6, 64, SRC6, DST6)
        return bytearray(ETH + b"\x86\xdd" + ip + tcp + body)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + payload, 7, 0x4000, 64, 6, 0,
                     SRC4, DST4)
    return bytearray(ETH + b"\x08\x00" + ip + tcp + body)


def udp_frame(payload: int) -> bytearray:
    body = bytes(i % 251 for i in range(payload))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + payload, 7, 0x4000, 64, 17, 0, SRC4, DST4)
    return bytearray(ETH + b"\x08\x00" + ip + struct.pack("!HHHH", 5000, 6000, 0, 0) + body)


class Loop:
    """The reference: one segment at a time, in Python, into a preallocated buffer."""

    def __init__(self):
        self.out = bytearray(1 << 18)

    def segment(self, gso_type: int, gso: int, frame, n: int) -> tuple[int, int, int]:
        out = self.out
        mv = memoryview(frame)
        ipv4 = frame[12:14] == b"\x08\x00"
        l4 = 14 + (frame[14] & 15) * 4 if ipv4 else 54
        tcp = gso_type & 0x7F != vnet.GSO_UDP_L4
        hlen = l4 + (frame[l4 + 12] >> 4) * 4 if tcp else l4 + 8
        pseudo = (checksum.pseudo_header_sum(mv[26:30], mv[30:34], 0, 0) if ipv4
                  else checksum.pseudo_header_sum(mv[22:38], mv[38:54], 0, 0))
        pseudo += 6 if tcp else 17
        id0, = struct.unpack_from("!H", frame, 18)
        seq0, = struct.unpack_from("!I", frame, l4 + 4)
        flags0 = frame[l4 + 13]
        pack16 = struct.Struct("!H").pack_into
        o = i = 0
        size = 0
        segs = -(-(n - hlen) // gso)
        for src in range(hlen, n, gso):
            length = min(gso, n - src)
            b = o + 8
            out[o:b] = VX
            out[b:b + hlen] = mv[:hlen]
            out[b + hlen:b + hlen + length] = mv[src:src + length]
            l4len = hlen - l4 + length
            if ipv4:
                pack16(out, b + 16, hlen - 14 + length)
                pack16(out, b + 18, (id0 + i) & 0xFFFF)
                pack16(out, b + 24, 0)
                pack16(out, b + 24, checksum.checksum(out[b + 14:b + l4]))
            else:
                pack16(out, b + 18, l4len)
            t = b + l4
            if tcp:
                struct.pack_into("!I", out, t + 4, (seq0 + i * gso) & 0xFFFFFFFF)
                f = flags0
                if i:
                    f &= 0x7F
                if i < segs - 1:
                    f &= ~0x09
                out[t + 13] = f
                field = t + 16
            else:
                pack16(out, t + 4, l4len)
                field = t + 6
            pack16(out, field, 0)
            pack16(out, field, checksum.checksum(out[t:b + hlen + length], pseudo + l4len))
            o = b + hlen + length
            size = size or o
            i += 1
        return o, size, i


def best(fn, iterations: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - t0) / iterations


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    if a.iterations < 1 or a.repeat < 1:
        ap.error("--iterations and --repeat must be at least 1")
    # 64 KiB of TCP payload less what keeps the IP length in 16 bits
    cases = [("TCP/IPv4 64 KiB, gso 1398", vnet.GSO_TCPV4, 1398, tcp_frame(False, 65_000)),
             ("TCP/IPv6 64 KiB, gso 1378", vnet.GSO_TCPV6, 1378, tcp_frame(True, 65_000)),
             ("TCP/IPv4 64 KiB, gso 1397 (odd)", vnet.GSO_TCPV4, 1397,
              tcp_frame(False, 65_000)),
             ("TCP/IPv4 64 KiB, gso 8948 (jumbo)", vnet.GSO_TCPV4, 8948,
              tcp_frame(False, 65_000)),
             ("UDP/IPv4 64 KiB, gso 1422 (USO)", vnet.GSO_UDP_L4, 1422, udp_frame(65_000))]
    print(f"{'case':36} {'numpy us':>9} {'loop us':>9} {'ratio':>6} {'numpy Gbit/s':>13} "
          f"{'loop Gbit/s':>12}")
    for name, gso_type, gso, frame in cases:
        seg, loop = Segmenter(VX), Loop()
        n = len(frame)
        r1, r2 = seg.segment(gso_type, gso, frame, n), loop.segment(gso_type, gso, frame, n)
        assert r1 == r2 and seg.out[:r1[0]] == loop.out[:r2[0]], f"{name}: outputs differ"
        fast = slow = float("inf")
        for _ in range(a.repeat):
            fast = min(fast, best(lambda: seg.segment(gso_type, gso, frame, n), a.iterations))
            slow = min(slow, best(lambda: loop.segment(gso_type, gso, frame, n),
                                  max(1, a.iterations // 5)))
        bits = (n - 14) * 8   # the inner L3 bytes a super-frame carries, once
        print(f"{name:36} {fast * 1e6:9.1f} {slow * 1e6:9.1f} {slow / fast:6.1f} "
              f"{bits / fast / 1e9:13.1f} {bits / slow / 1e9:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
