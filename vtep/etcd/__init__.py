"""etcd v3 for vtep's control plane: a small client of etcd's JSON gateway (/v3/...),
standard library only (sockets, ssl, json, base64).

How data flows: `--etcd URL[,URL...]` and the TLS files become Endpoints and one
ssl.SSLContext (endpoints.py, checked before anything is dialled). A call on the
Client (gateway.py) becomes one JSON POST, keys and values in base64 (codec.py),
sent by transport.exchange over a kept HTTP/1.1 connection (http1.py) to each
endpoint in turn under a timeout; the answer comes back as frozen data (KeyValue,
Range, TxnResult, Lease, Status) or as a typed error (errors.py) whose one line names
the endpoint. The watch (watch.py) is a POST /v3/watch on its own connection whose
chunked response never ends: the daemon polls its fileno() in select() and take()
returns what arrived (Event, Progress) or why the stream is over (Compacted: re-list;
Lost, Idle: watch again from next_revision), never blocking.

Why not etcd3gw: its watch runs in a thread that ignores etcd's cancel with
compact_revision and ends silently on EOF, so the caller's iterator blocks forever
in both cases (checked against etcd 3.4.23; README, "etcd"), and it has no socket to
poll.

Modules: errors (typed exceptions, vtep.errors types), endpoints (URLs, TLS files),
http1 (request bytes, incremental response parser), codec (gateway JSON <-> data;
transaction compares and ops), transport (one exchange, failure reasons), gateway
(Client), watch (Watch and its results).
"""
from __future__ import annotations

from .codec import (KeyValue, Lease, Range, Status, TxnResult, cmp_absent, cmp_lease,
                    cmp_mod, cmp_value, op_delete, op_get, op_put, prefix_end)
from .endpoints import Endpoint, TLSFiles, parse_endpoints
from .errors import (EXIT_STORE, EtcdCompacted, EtcdConfigError, EtcdError, EtcdRequestError,
                     EtcdTLSError, EtcdUnavailable, LeaseNotFound)
from .gateway import DEFAULT_TIMEOUT, Client
from .watch import DEFAULT_IDLE, Canceled, Compacted, Event, Idle, Lost, Progress, Watch

__all__ = [
    "Canceled", "Client", "Compacted", "DEFAULT_IDLE", "DEFAULT_TIMEOUT", "EXIT_STORE",
    "Endpoint", "EtcdCompacted", "EtcdConfigError", "EtcdError", "EtcdRequestError",
    "EtcdTLSError", "EtcdUnavailable", "Event", "Idle", "KeyValue", "Lease",
    "LeaseNotFound", "Lost", "Progress", "Range", "Status", "TLSFiles", "TxnResult",
    "Watch", "cmp_absent", "cmp_lease", "cmp_mod", "cmp_value", "op_delete", "op_get",
    "op_put", "parse_endpoints", "prefix_end",
]
