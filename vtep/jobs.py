"""Work the event loop hands to a thread, so that forwarding goes on meanwhile.

A Job runs one function at a time in a thread (a plan read on SIGHUP, a path
MTU probe) and wakes the loop's select() through a socketpair when the result,
or the exception, is ready; the loop then take()s it on its own thread.
"""
from __future__ import annotations

import socket
import sys
import threading


class Job:
    """One function at a time run in a thread; fileno() is readable when it finished.

    A job that computes (`cpu`: parsing and validating a huge plan) lowers the
    interpreter's thread switch interval from 5 ms to SWITCH while it runs: the loop,
    returning from each system call, waits at most that long for the GIL the job holds,
    so traffic slows down while it runs but never stops.
    """

    SWITCH = 0.0002

    def __init__(self, fn, cpu: bool = False):
        self.fn, self.cpu = fn, cpu
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.thread: threading.Thread | None = None
        self.result = None
        self.again = False
        self.interval = sys.getswitchinterval()

    def fileno(self) -> int:
        return self.r.fileno()

    @property
    def busy(self) -> bool:
        return self.thread is not None

    def start(self) -> None:
        if self.thread is not None:   # asked again while running: run once more afterwards
            self.again = True
            return
        if self.cpu:
            self.interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self.interval, self.SWITCH))
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            self.result = (self.fn(), None)
        except Exception as e:   # handed to the loop: a VtepError is logged, a bug raised
            self.result = (None, e)
        finally:
            self.w.send(b"!")

    def take(self):
        """(result, None) or (None, exception) of the finished run; starts the next run
        when it was asked for meanwhile (a SIGHUP: the file may have changed since)."""
        try:
            while self.r.recv(64):
                pass
        except BlockingIOError:
            pass
        self.thread.join()
        self.thread = None
        if self.cpu:
            sys.setswitchinterval(self.interval)
        result, self.result = self.result, None
        if self.again:
            self.again = False
            self.start()
        return result

    def close(self) -> None:
        if self.thread is not None and self.cpu:   # (daemon threads never hold the exit up)
            sys.setswitchinterval(self.interval)
        self.r.close()
        self.w.close()
