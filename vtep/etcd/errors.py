"""Typed errors of the etcd client, each a vtep.errors type so the CLI maps it once.

Every message is one line that names the endpoint (or the option) it is about. The
split is by what the caller does next:

EtcdConfigError   the URL or a TLS file given is wrong: fix the command line (exit 2)
EtcdUnavailable   no endpoint answered (refused, reset, closed, timed out): retry
                  with backoff; the data plane stays as it is
EtcdTLSError      an endpoint answered but the TLS handshake failed (wrong CA, no or
                  rejected client certificate): retrying will not help
EtcdRequestError  etcd answered and refused the request (its gRPC code and message);
                  EtcdCompacted and LeaseNotFound are the two a caller acts on
"""
from __future__ import annotations

from ..errors import UsageError, VtepError

# The store is away or refuses us. vtep/cli.py's docstring must list this code.
EXIT_STORE = 7


class EtcdConfigError(UsageError):
    """A malformed --etcd URL, or a TLS file that is missing or not PEM."""


class EtcdError(VtepError):
    """Base of the errors about talking to etcd; `endpoint` is the URL it concerns
    ("" when it concerns several)."""

    exit_code = EXIT_STORE

    def __init__(self, message: str, endpoint: str = ""):
        self.endpoint = endpoint
        super().__init__(message)


class EtcdUnavailable(EtcdError):
    """No endpoint answered. `reasons` holds (endpoint, reason) for each one tried."""

    def __init__(self, reasons: list[tuple[str, str]]):
        self.reasons = list(reasons)
        super().__init__("etcd unavailable: " + "; ".join(f"{u}: {r}" for u, r in reasons),
                         reasons[0][0] if len(reasons) == 1 else "")


class EtcdTLSError(EtcdError):
    """The TLS handshake with `endpoint` failed."""

    def __init__(self, endpoint: str, reason: str):
        self.reason = reason
        super().__init__(f"etcd {endpoint}: TLS handshake failed: {reason}", endpoint)


# gRPC status codes etcd's gateway returns in {"code": N} (grpc/codes).
GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14


class EtcdRequestError(EtcdError):
    """etcd answered with an error: its gRPC `code` and `message`."""

    def __init__(self, endpoint: str, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(f"etcd {endpoint}: {message} (gRPC code {code})", endpoint)


class EtcdCompacted(EtcdRequestError):
    """A read at a revision older than the last compaction: re-read at the current
    revision (and diff, so a delete in between is still seen)."""


class LeaseNotFound(EtcdRequestError):
    """The lease expired or was revoked: its keys are gone; grant a new one."""


def request_error(endpoint: str, code: int, message: str) -> EtcdRequestError:
    """The typed error for an answer etcd gave (the messages are etcd's own, from
    etcdserver/api/v3rpc/rpctypes)."""
    if code == GRPC_OUT_OF_RANGE and "compacted" in message:
        return EtcdCompacted(endpoint, code, message)
    if code == GRPC_NOT_FOUND and "lease not found" in message:
        return LeaseNotFound(endpoint, code, message)
    return EtcdRequestError(endpoint, code, message)
