"""Where capture bytes come from: a file, stdin or tcpdump's stdout, read as a stream.

How data flows: `Source` wraps one file descriptor and is what `capture.batches`
reads from. `readinto` hands over whatever one read(2) returns (a pipe gives what
it holds, so a batch never waits for a full chunk), counts the bytes for the
progress line, and waits for data in short select(2) slices so that a SIGINT
(`stop()`, called from the signal handler) is noticed within STOP_LATENCY even
while the writer is silent: it then raises Interrupted, which the driver
(`run.inspect_source`) turns into "the report so far". Interrupted is only ever
raised from a read, i.e. between batches, so the tally is never half-updated.
Nothing seeks and nothing reads ahead more than one chunk, so a stream of any
length is read in flat memory. A driver that reports on wall-clock ticks (a live
capture with --interval) sets `ticks`: a wait that reaches the next tick calls
it, so a report comes on time even when no packet does (also between batches
only, as with Interrupted).
"""
from __future__ import annotations

import os
import select
import stat
import time

STOP_LATENCY = 0.2  # seconds a blocked read may take to notice stop()


class Interrupted(Exception):
    """The reader was told to stop (SIGINT) before the input ended."""


class Source:
    def __init__(self, fd: int, name: str, total: int | None = None):
        self.fd = fd
        self.name = name
        self.total = total  # size in bytes when known (a regular file), for progress
        self.bytes_read = 0
        self.stopped = False
        self.ticks = None  # on_tick() -> when (time.monotonic) it wants calling next
        self.tick_at = 0.0

    @classmethod
    def open(cls, path: str) -> Source:
        """A regular file (its size known) or any other readable path; OSError as open(2)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, path, st.st_size if stat.S_ISREG(st.st_mode) else None)

    def stop(self) -> None:
        """Safe from a signal handler: the next read (or the one waiting) raises Interrupted."""
        self.stopped = True

    def every(self, on_tick, first: float) -> None:
        """Call on_tick() once time.monotonic() passes `first` while a read waits, then
        at whatever time it returns."""
        self.ticks = on_tick
        self.tick_at = first

    def _wait(self) -> None:
        while True:
            if self.stopped:
                raise Interrupted()
            timeout = STOP_LATENCY
            if self.ticks is not None:
                left = self.tick_at - time.monotonic()
                if left <= 0:
                    self.tick_at = self.ticks()
                    continue
                timeout = min(timeout, left)
            try:
                ready, _, _ = select.select([self.fd], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
                continue
            if ready:
                return

    def readinto(self, mv) -> int:
        self._wait()
        got = os.readv(self.fd, [mv])
        self.bytes_read += got
        return got

    def read(self, n: int) -> bytes:
        """Up to n bytes in one read (b"" at end of input); callers loop for more."""
        self._wait()
        data = os.read(self.fd, n)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
