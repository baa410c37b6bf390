"""Where the cluster plan comes from, after the first one.

A plan source delivers new validated plans to the event loop, which hands each
to the reconciler (Reconciler.reload: diff against the running plan, apply on
the next pass; a plan that does not validate is reported and the running one
kept). The loop polls the source's fileno() in its select() and, when it is
readable, take()s what arrived; a source does its slow work (reading, parsing,
watching a datastore) off the loop's thread, so forwarding never waits for it.
The reconciler and the device backends know nothing of where plans come from.

FileSource is the TOML plan file, re-read when asked (SIGHUP).
"""
from __future__ import annotations

from typing import Protocol

from . import plan as planlib
from .errors import VtepError
from .jobs import Job


class PlanSource(Protocol):
    where: str   # names the source in log lines ("plan.toml")

    def fileno(self) -> int:
        """Readable when a plan, or the error of a failed read, is ready to take()."""

    def refresh(self) -> None:
        """Asked for a fresh plan (SIGHUP): deliver one through fileno()/take()."""

    def take(self):
        """(plan, None) or (None, VtepError) of what arrived; None when nothing did.
        Any other exception is a bug, and is raised."""

    def status(self) -> dict | None:
        """What `vtep status` shows about the source (a store's reachability), or None."""

    def close(self) -> None: ...


class FileSource:
    """The plan file, read and validated in a thread when refresh() asks for it."""

    def __init__(self, path: str):
        self.where = path
        self._job = Job(self.read, cpu=True)

    def read(self) -> planlib.Plan:
        return planlib.load(self.where)

    def fileno(self) -> int:
        return self._job.fileno()

    def refresh(self) -> None:
        self._job.start()

    def take(self):
        if not self._job.busy:
            return None
        plan, err = self._job.take()
        if err is not None and not isinstance(err, VtepError):
            raise err   # not a VtepError: a bug in reading plans, which the CLI reports
        return plan, err

    def status(self) -> None:
        return None   # a file has nothing to say between reads

    def close(self) -> None:
        self._job.close()
