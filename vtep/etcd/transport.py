"""One exchange with one endpoint, and what a failure of it means.

exchange() connects (or reuses the endpoint's idle connection), sends one request and
reads until `until(response)` holds, all under one deadline. A failure is raised as
Failed with a short reason ("connection refused", "no answer within 2 s", "TLS ...")
and whether the request may have reached etcd (`sent`): the client retries a write on
the next endpoint only when it cannot have (a non-idempotent transaction must not run
twice), a read always.
"""
from __future__ import annotations

import json
import select
import socket
import ssl
import time

from . import http1
from .endpoints import Endpoint
from .errors import GRPC_UNAVAILABLE, request_error


class Failed(Exception):
    def __init__(self, reason: str, *, sent: bool = False, tls: bool = False):
        self.reason, self.sent, self.tls = reason, sent, tls
        super().__init__(reason)


def reason(e: BaseException, timeout: float) -> tuple[str, bool]:
    """(one-line reason, whether it is a TLS failure) for an exception of a socket."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message or e.reason}", True
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "connection closed (TLS EOF)", False
    if isinstance(e, ssl.SSLError):
        text = (e.reason or "").lower().replace("_", " ") or str(e)
        return text, True
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s", False
    if isinstance(e, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(e, ConnectionResetError):
        return "connection reset", False
    if isinstance(e, BrokenPipeError):
        return "connection closed", False
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})", False
    if isinstance(e, http1.ProtocolError):
        return f"not an etcd answer: {e}", False
    if isinstance(e, OSError):
        return e.strerror or str(e), False
    return str(e), False


def idle_and_open(sock: socket.socket) -> bool:
    """Whether a kept connection can carry a request: nothing to read on it (a closed
    one reads as EOF, e.g. after etcd restarted). A TLS 1.3 session ticket arriving
    late is consumed here and is not a reason to drop it."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return True
        sock.setblocking(False)
        try:
            sock.recv(1)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        return False                       # EOF, or bytes nobody asked for
    except (OSError, ValueError):
        return False


def read_until(sock: socket.socket, resp: http1.Response, until, deadline: float) -> None:
    while not until(resp):
        sock.settimeout(http1.remaining(deadline))
        resp.feed(sock.recv(65536))


def exchange(ep: Endpoint, ctx, data: bytes, timeout: float, kept: socket.socket | None,
             until=lambda r: r.complete) -> tuple[socket.socket, http1.Response]:
    """(the socket, its response) for one request; raises Failed."""
    deadline = time.monotonic() + timeout
    sock = kept if kept is not None and idle_and_open(kept) else None
    if kept is not None and sock is None:
        kept.close()
    sent = False
    try:
        if sock is None:
            sock = http1.connect(ep, ctx, deadline)
        http1.sendall(sock, data, deadline)
        sent = True
        resp = http1.Response()
        read_until(sock, resp, until, deadline)
        return sock, resp
    except (OSError, http1.ProtocolError) as e:
        if sock is not None:
            sock.close()
        text, tls = reason(e, timeout)
        # A refused handshake or a TLS alert means etcd never read the request.
        raise Failed(text, sent=sent and not tls, tls=tls) from None


def decode(ep: Endpoint, resp: http1.Response) -> dict:
    """The gateway's JSON answer, unwrapped from a stream's {"result": ...}; an error
    etcd answered is raised typed (a gRPC UNAVAILABLE as Failed: another member may
    have a leader)."""
    try:
        d = json.loads(bytes(resp.body) or b"{}")
    except ValueError:
        raise Failed(f"not an etcd answer (HTTP {resp.status}, not JSON)", sent=True) from None
    if not isinstance(d, dict):
        raise Failed(f"not an etcd answer (HTTP {resp.status})", sent=True)
    err = d.get("error")
    if isinstance(err, dict):                 # a stream's error envelope
        code, msg = int(err.get("grpc_code") or 0), str(err.get("message", ""))
    elif err is not None or resp.status != 200:
        code, msg = int(d.get("code") or 0), str(d.get("message") or err or "")
    else:
        return d.get("result", d) if set(d) == {"result"} else d
    msg = msg or f"HTTP {resp.status} {resp.reason}"
    if code == GRPC_UNAVAILABLE:
        raise Failed(msg, sent=True)
    raise request_error(ep.url, code, msg)
