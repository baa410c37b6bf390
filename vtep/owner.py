"""Who owns a VTEP device: a mark on the device, and a lock held by the live agent.

Both are seen by every vtep invocation in the network namespace, whatever its
`--state-dir`, because both live where the device lives:

- *made by vtep*: the device's alias (IFLA_IFALIAS, `ip link show` prints it)
  starts with "vtep:". It outlives the agent (`--keep`, `--once`, kill -9),
  so `vtep down` and `--replace` can tell a device vtep made from one that
  merely has the name (a veth, a hand-made vxlan device), which they never
  delete.
- *managed now*: the agent binds the abstract unix socket "vtep/<device>" for
  its whole life. Abstract socket names are scoped to the network namespace
  (unix(7)), exactly like the device name; the kernel releases the name when
  the process dies, SIGKILL included, so a crash never leaves a stale lock
  behind, and nothing on disk can disagree with it. The holder's pid is read
  with SO_PEERCRED, which for a listening socket gives the credentials of the
  process that called listen().
"""
from __future__ import annotations

import os
import socket
import struct

from .errors import HostMismatch

ALIAS_PREFIX = "vtep:"
_UCRED = struct.Struct("=iII")   # struct ucred: pid, uid, gid


def alias(node: str, mode: str) -> str:
    """The mark vtep puts on a device it made, e.g. "vtep:kernel:network-1": one word,
    so that `vtep plan` can print it as a plain iproute2 argument (node names hold no
    white space), and shorter than IFALIASZ (256 bytes with the NUL)."""
    return f"{ALIAS_PREFIX}{mode}:{node}"[:255]


def made_by_vtep(alias_text: str | None) -> bool:
    return bool(alias_text) and alias_text.startswith(ALIAS_PREFIX)


def _address(device: str) -> str:
    return f"\0vtep/{device}"   # leading NUL: the abstract namespace, no file


def holder(device: str) -> int | None:
    """The pid of the live agent that manages `device` in this network namespace
    (0 when one does but its pid cannot be read), or None when none does."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(_address(device))
    except (ConnectionRefusedError, FileNotFoundError):
        return None            # nobody listens on the name: no agent
    except BlockingIOError:
        return 0               # its backlog is full: an agent is there, pid unknown
    except OSError:
        return None
    else:
        pid = _UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                         _UCRED.size))[0]
        return pid
    finally:
        s.close()


class Claim:
    """This process manages `device` until release() (or its death)."""

    def __init__(self, device: str):
        self.device = device
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(_address(device))
        except OSError:
            s.close()
            pid = holder(self.device)
            who = f"pid {pid}" if pid else "another process"
            stop = f"; stop it first (kill {pid})" if pid else ""
            raise HostMismatch(f"vtep run ({who}) already manages {device} in this network "
                               f"namespace{stop}")
        s.listen(64)   # lets holder() read our pid; connections are never accepted
        self.sock = s

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_if_managed(device: str, doing: str) -> None:
    """HostMismatch when a live agent other than this process manages `device`."""
    pid = holder(device)
    if pid is not None and pid != os.getpid():
        who = f"pid {pid}" if pid else "another process"
        stop = f"; stop it with SIGTERM (kill {pid}), which removes the device itself" \
            if pid else ""
        raise HostMismatch(f"vtep run ({who}) still manages {device} here: not {doing}{stop}")
