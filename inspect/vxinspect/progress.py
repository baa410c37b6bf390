"""The progress line: how far `vxinspect FILE` (or `-`, or `-i`) got, on a terminal's stderr.

How data flows: `run.inspect_source` calls `update(bytes read, packets)` after
every batch; the line is drawn only once a second has passed (short files stay
silent), redrawn at most every REDRAW seconds in place (carriage return, then
erase to the end of the line), and erased by `done()`, so that what is left on
the terminal is the report alone. A file shows how much of its size was read;
stdin and a live capture (no total known) show bytes, packets and packets/s.
`for_stderr` makes one only when stderr is a terminal: a redirected stderr gets
nothing.
"""
from __future__ import annotations

import os
import sys
import time

DELAY = 1.0  # seconds before the line first shows
REDRAW = 0.2
ERASE = "\r\x1b[K"


class Progress:
    def __init__(self, name: str, total: int | None, out=None, clock=time.monotonic):
        self.name = name
        self.total = total
        self.out = out if out is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.last = None  # when the line was last drawn; None: never
        self.drawn = False

    def update(self, nbytes: int, packets: int) -> None:
        now = self.clock()
        if now - self.start < DELAY or (self.last is not None and now - self.last < REDRAW):
            return
        self.last = now
        rate = packets / (now - self.start)
        done = f"{nbytes / 1e6:.1f} MB"
        if self.total:
            done = f"{100 * nbytes / self.total:3.0f}% ({done} of {self.total / 1e6:.1f} MB)"
        self.out.write(f"{ERASE}{self.name}: {done}, {packets} packets, {rate:,.0f} packets/s")
        self.out.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.out.write(ERASE)
            self.out.flush()
            self.drawn = False


def for_stderr(name: str, total: int | None) -> Progress | None:
    try:
        tty = os.isatty(sys.__stderr__.fileno()) if sys.__stderr__ else False
    except (OSError, ValueError):
        tty = False
    return Progress(name, total) if tty else None
