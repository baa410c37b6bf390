"""The status file: who manages a device, and how its passes went.

<state_dir>/<device>.<node>.json, written by the event loop (vtep.daemon) after
each pass, read by `vtep status`, removed by `vtep down` and at a clean exit.
Written to a temporary file and renamed, so a reader never sees half of one.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time

from .config import DEFAULT_STATE_DIR

log = logging.getLogger("vtep")


def netns_inode(pid="self") -> int | None:
    """The inode of a process's network namespace (which namespace it runs in)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StatusFile:
    def __init__(self, state_dir: str, node: str, device: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", node)
        self.path = os.path.join(state_dir or DEFAULT_STATE_DIR, f"{device}.{safe}.json")
        self.warned = False

    def read(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write(self, data: dict) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)   # readers never see half a file
        except OSError as e:
            if not self.warned:   # the data path does not depend on it: say so once
                log.warning(f"cannot write the status file {self.path}: {e.strerror}")
                self.warned = True

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning(f"cannot remove the status file {self.path}: {e.strerror}")
