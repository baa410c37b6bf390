#!/usr/bin/env python3
"""Small datagrams one system call each against recvmmsg/sendmmsg (vtep.mmsg).

    .venv/bin/python bench/mmsg_bench.py [--datagrams 200000] [--size 64] [--chunk 1024] [--repeat 3]

No root: two UDP sockets on 127.0.0.1. The datagrams go in chunks that fit the
receiver's buffer (SO_RCVBUF raised as far as rmem_max allows), and only one
side of each chunk is timed, so no datagram is dropped and neither side's cost
hides in the other's:

- receive: a chunk is sent untimed, then drained timed, either by
  `recvfrom_into` once per datagram or by `RecvBatch.recv` (64 slots); both
  loops read every datagram's length and sender address, as the data path does;
- send: a chunk is sent timed, by `sendto` once per datagram or by
  `SendBatch.add` per datagram and `flush` every 64, then drained untimed.

On loopback a send also does the receiver's kernel work inline (the datagram
is queued to the receiving socket in the sender's call), so both send figures
include it. Best of --repeat runs, the two methods alternating; kpps each and
the ratio batch/single. Bounded: --datagrams per run, and a run stops after
--max-seconds whatever it has done.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vtep import mmsg  # noqa: E402

SLOTS = 64


def sockets() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    return rx, tx


def fill(tx: socket.socket, dst, payload: bytes, n: int) -> None:
    send = tx.sendto
    for _ in range(n):
        send(payload, dst)


def drain(rx: socket.socket) -> int:
    got = 0
    buf = bytearray(65536)
    recv = rx.recv_into
    try:
        while True:
            recv(buf)
            got += 1
    except BlockingIOError:
        return got


def recv_single(rx, tx, payload, total, chunk, limit) -> tuple[int, float]:
    dst = rx.getsockname()
    buf = bytearray(2048)
    recvfrom_into = rx.recvfrom_into
    done = 0
    spent = 0.0
    while done < total and spent < limit:
        fill(tx, dst, payload, min(chunk, total - done))
        got = 0
        t = time.perf_counter()
        try:
            while True:
                n, addr = recvfrom_into(buf)
                ip = addr[0]
                got += 1
        except BlockingIOError:
            pass
        spent += time.perf_counter() - t
        done += got
    return done, spent


def recv_batch(rx, tx, payload, total, chunk, limit) -> tuple[int, float]:
    dst = rx.getsockname()
    batch = mmsg.RecvBatch(SLOTS, 2048)
    recv = batch.recv
    source = batch.source
    fd = rx.fileno()
    done = 0
    spent = 0.0
    while done < total and spent < limit:
        fill(tx, dst, payload, min(chunk, total - done))
        got = 0
        t = time.perf_counter()
        while True:
            count = recv(fd)
            if not count:
                break
            lengths = batch.lengths
            for i in range(count):
                n = lengths[i]
                ip = source(i)
            got += count
        spent += time.perf_counter() - t
        done += got
    return done, spent


def send_single(rx, tx, payload, total, chunk, limit) -> tuple[int, float]:
    ip, port = rx.getsockname()
    addr = (ip, port)
    view = memoryview(payload)
    sendto = tx.sendto
    done = 0
    spent = 0.0
    while done < total and spent < limit:
        k = min(chunk, total - done)
        t = time.perf_counter()
        for _ in range(k):
            sendto(view, addr)
        spent += time.perf_counter() - t
        got = drain(rx)
        assert got == k, f"{k - got} datagrams dropped: lower --chunk"
        done += k
    return done, spent


def send_batch(rx, tx, payload, total, chunk, limit) -> tuple[int, float]:
    ip, port = rx.getsockname()
    view = memoryview(payload)
    size = len(payload)
    batch = mmsg.SendBatch(SLOTS)
    add = batch.add
    flush = batch.flush
    fd = tx.fileno()
    done = 0
    spent = 0.0
    while done < total and spent < limit:
        k = min(chunk, total - done)
        t = time.perf_counter()
        for _ in range(k):
            if not add(view, size, ip, port):
                flush(fd)
                add(view, size, ip, port)
        sent, err = flush(fd)
        spent += time.perf_counter() - t
        assert err is None, err
        got = drain(rx)
        assert got == k, f"{k - got} datagrams dropped: lower --chunk"
        done += k
    return done, spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datagrams", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    ap.add_argument("--chunk", type=int, default=1024, help="datagrams per fill/drain round")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=10.0, help="per run, timed part")
    args = ap.parse_args()
    payload = bytes(i % 251 for i in range(args.size))
    rx, tx = sockets()
    try:
        pairs = (("receive", recv_single, recv_batch), ("send", send_single, send_batch))
        print(f"{args.datagrams} datagrams of {args.size} bytes, 127.0.0.1, best of {args.repeat}")
        for name, single, batched in pairs:
            best = {single: 0.0, batched: 0.0}
            for _ in range(args.repeat):
                for fn in (single, batched):
                    drain(rx)
                    n, s = fn(rx, tx, payload, args.datagrams, args.chunk, args.max_seconds)
                    best[fn] = max(best[fn], n / s / 1000)
            a, b = best[single], best[batched]
            what = "recvfrom_into" if name == "receive" else "sendto"
            batch = "RecvBatch.recv" if name == "receive" else "SendBatch"
            print(f"{name:8s} {what:>14s} {a:8.0f} kpps   {batch:>14s} {b:8.0f} kpps   "
                  f"ratio {b / a:.2f}")
    finally:
        rx.close()
        tx.close()


if __name__ == "__main__":
    main()
