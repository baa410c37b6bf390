"""The client: etcd's v3 calls as POSTs of JSON to its gateway (/v3/...).

Each call tries the endpoints in turn, the one that answered last first, each within
`timeout` seconds (connect, TLS handshake, request and answer together), over one
kept connection per endpoint. Reads move on to the next endpoint after any failure;
a write moves on only if it cannot have reached etcd (refused, TLS failure, a dead
kept connection found before sending), else it raises at once: its outcome is
unknown and running a transaction twice is not the same as once. When every endpoint
failed, EtcdUnavailable (or EtcdTLSError when TLS was the only trouble) names each
with its reason.

Writes are transactions that compare first (create(): create_revision == 0;
update() and delete_if(): mod_revision == N); put() and delete() exist for tests,
tools and benchmarks that own their keys.
"""
from __future__ import annotations

import json
import threading

from . import codec, http1
from .codec import KeyValue, Lease, Range, Status, TxnResult, b64, prefix_end
from .endpoints import TLSFiles, check_tls, parse_endpoints
from .errors import EtcdTLSError, EtcdUnavailable, GRPC_NOT_FOUND, LeaseNotFound
from .transport import Failed, decode, exchange
from .watch import DEFAULT_IDLE, Watch

DEFAULT_TIMEOUT = 5.0


class Client:
    def __init__(self, endpoints, *, tls: TLSFiles | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.endpoints = parse_endpoints(endpoints)
        self.ssl = check_tls(self.endpoints, tls or TLSFiles())
        self._has_cert = bool(tls and tls.cert)
        if not timeout > 0:
            raise ValueError(f"timeout {timeout!r}: must be > 0")
        self.timeout = float(timeout)
        self._kept: dict = {}              # Endpoint -> its idle keep-alive socket
        self._first = 0                    # the endpoint that answered last
        self._lock = threading.Lock()      # one request at a time per kept socket

    def order(self):
        """The endpoints in the order to try them: the last good one first."""
        n = len(self.endpoints)
        return [self.endpoints[(self._first + i) % n] for i in range(n)]

    def unavailable(self, reasons: list[tuple[str, str, bool]]) -> Exception:
        if all(tls for _, _, tls in reasons):
            hint = "" if self.ssl is None or self._has_cert else \
                " (no client certificate given: --etcd-cert, --etcd-key)"
            return EtcdTLSError(reasons[0][0], reasons[0][1] + hint)
        return EtcdUnavailable([(u, ("TLS: " if tls else "") + r) for u, r, tls in reasons])

    def call(self, path: str, body: dict, *, write: bool, timeout: float | None = None) -> dict:
        """One gateway call: `body` as JSON to `path`; the decoded answer."""
        data = json.dumps(body, separators=(",", ":")).encode()
        timeout = self.timeout if timeout is None else timeout
        reasons = []
        with self._lock:
            for ep in self.order():
                try:
                    sock, resp = exchange(ep, self.ssl, http1.request(ep, path, data),
                                          timeout, self._kept.pop(ep, None))
                    if resp.keep_alive:
                        self._kept[ep] = sock
                    else:
                        sock.close()
                    answer = decode(ep, resp)
                except Failed as f:
                    reasons.append((ep.url, f.reason, f.tls))
                    if write and f.sent:
                        reasons[-1] = (ep.url, f.reason + " after the request was sent "
                                       "(it may have been applied)", False)
                        break
                    continue
                self._first = self.endpoints.index(ep)
                return answer
        raise self.unavailable(reasons)

    def close(self) -> None:
        with self._lock:
            for sock in self._kept.values():
                sock.close()
            self._kept.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- KV -------------------------------------------------------------------------

    def range(self, key, *, prefix: bool = False, revision: int = 0, limit: int = 0,
              timeout: float | None = None) -> Range:
        """The key (or every key under the prefix), as of `revision` (0: now), sorted by
        key. A compacted revision raises EtcdCompacted."""
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        return Range.from_json(self.call("/v3/kv/range", body, write=False, timeout=timeout))

    def get(self, key, *, revision: int = 0, timeout: float | None = None) -> KeyValue | None:
        r = self.range(key, revision=revision, timeout=timeout)
        return r.kvs[0] if r.kvs else None

    def put(self, key, value, *, lease: int = 0, timeout: float | None = None) -> int:
        """An unconditional put; the revision it made."""
        body = codec.op_put(key, value, lease)["request_put"]
        d = self.call("/v3/kv/put", body, write=True, timeout=timeout)
        return codec.num(d.get("header", {}), "revision")

    def delete(self, key, *, prefix: bool = False, timeout: float | None = None) -> int:
        """An unconditional delete; how many keys it removed."""
        body = codec.op_delete(key, prefix)["request_delete_range"]
        return codec.num(self.call("/v3/kv/deleterange", body, write=True, timeout=timeout),
                         "deleted")

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] = (),
            *, timeout: float | None = None) -> TxnResult:
        """If every compare holds, the success ops, else the failure ops (codec.cmp_*,
        codec.op_*), atomically at one revision."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        return codec.txn_result(self.call("/v3/kv/txn", body, write=True, timeout=timeout))

    def _cas(self, key, compare: dict, op: dict, timeout) -> TxnResult:
        r = self.txn([compare], [op], [codec.op_get(key)], timeout=timeout)
        if r.succeeded:
            return r
        kvs = r.results[0].kvs if r.results and isinstance(r.results[0], Range) else ()
        return TxnResult(False, r.revision, r.results, kvs[0] if kvs else None)

    def create(self, key, value, *, lease: int = 0, timeout: float | None = None) -> TxnResult:
        """Put only if the key does not exist; when refused, `current` is its holder."""
        return self._cas(key, codec.cmp_absent(key), codec.op_put(key, value, lease), timeout)

    def update(self, key, value, *, mod_revision: int, lease: int = 0,
               timeout: float | None = None) -> TxnResult:
        """Put only if the key was last written at `mod_revision` (what we read)."""
        if mod_revision <= 0:   # a missing key compares as mod_revision 0: that is create()
            raise ValueError(f"update of {key!r}: mod_revision must be > 0, not {mod_revision}")
        return self._cas(key, codec.cmp_mod(key, mod_revision),
                         codec.op_put(key, value, lease), timeout)

    def delete_if(self, key, *, mod_revision: int, timeout: float | None = None) -> TxnResult:
        """Delete only if the key was last written at `mod_revision`."""
        if mod_revision <= 0:
            raise ValueError(f"delete_if of {key!r}: mod_revision must be > 0, "
                             f"not {mod_revision}")
        return self._cas(key, codec.cmp_mod(key, mod_revision), codec.op_delete(key), timeout)

    def compact(self, revision: int, *, physical: bool = True,
                timeout: float | None = None) -> None:
        """Forget the history before `revision` (physical: return once it is done, so a
        watch from an older revision is refused from then on)."""
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": physical},
                  write=True, timeout=timeout)

    # --- leases ---------------------------------------------------------------------

    def lease_grant(self, ttl: int, *, lease_id: int = 0,
                    timeout: float | None = None) -> Lease:
        """A lease of `ttl` seconds (etcd may grant more: its minimum is about 1.5 x
        the election timeout)."""
        body = {"TTL": str(int(ttl))}
        if lease_id:
            body["ID"] = str(lease_id)
        d = self.call("/v3/lease/grant", body, write=True, timeout=timeout)
        return Lease(codec.num(d, "ID"), codec.num(d, "TTL"))

    def lease_keepalive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew the lease; its TTL from now. An expired or revoked lease raises
        LeaseNotFound (etcd answers TTL 0 then, not an error)."""
        d = self.call("/v3/lease/keepalive", {"ID": str(lease_id)}, write=False,
                      timeout=timeout)
        ttl = codec.num(d, "TTL")
        if ttl <= 0:
            ep = self.endpoints[self._first].url
            raise LeaseNotFound(ep, GRPC_NOT_FOUND,
                                f"lease {lease_id:x} not found (expired or revoked)")
        return ttl

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """End the lease now; its keys are deleted with it."""
        self.call("/v3/lease/revoke", {"ID": str(lease_id)}, write=True, timeout=timeout)

    # --- the member, and the watch ---------------------------------------------------

    def status(self, *, timeout: float | None = None) -> Status:
        """The first answering member's status (version, revision, leader, db size)."""
        d = self.call("/v3/maintenance/status", {}, write=False, timeout=timeout)
        return Status.from_json(self.endpoints[self._first].url, d)

    def watch(self, key, *, prefix: bool = True, start_revision: int = 0,
              progress_notify: bool = True, prev_kv: bool = False,
              idle_timeout: float = DEFAULT_IDLE) -> Watch:
        """A watch stream on its own connection (see watch.Watch)."""
        return Watch(self, key, prefix=prefix, start_revision=start_revision,
                     progress_notify=progress_notify, prev_kv=prev_kv,
                     idle_timeout=idle_timeout)
