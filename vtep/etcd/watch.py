"""The watch: one POST /v3/watch whose response never ends, read without blocking.

etcd's gateway answers a create_request with a chunked stream of JSON messages, one
a line: {"result": {...}} (created, events, a progress notification, or a cancel)
or {"error": {...}}. Watch owns that socket: fileno() is for the daemon's select(),
take() reads whatever has arrived and returns it parsed, in order, never blocking.

What take() returns, and what the caller does:

Event       a PUT or DELETE, in revision order (apply it)
Progress    nothing happened up to `revision` (progress_notify: etcd sends one when
            the watch has been quiet for its --experimental-watch-progress-notify-
            interval, 10 minutes unless set)
Compacted   the start revision is older than etcd's history (compact_revision):
            events were lost, so re-list and diff, then watch from the list's revision
            + 1 (etcd-io/etcd#8668: a watcher that ignores this misses deletes)
Canceled    etcd ended the watch for another reason (cancel_reason)
Lost        the connection went: EOF (etcd stopped or restarted), a reset, a
            malformed stream; watch again from `next_revision`
Idle        no byte for `idle_timeout` seconds, not even a progress notification: a
            partition or a hung etcd; watch again from `next_revision`

After Compacted, Canceled, Lost or Idle the watch is closed (fileno() is -1) and
take() returns nothing more. Creation waits for etcd's "created" (within the client's
timeout, endpoints in turn), so a watch that exists has been registered.
"""
from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass

from . import http1
from .codec import KeyValue, b64, num, prefix_end
from .errors import EtcdRequestError, request_error
from .transport import Failed, decode, exchange

DEFAULT_IDLE = 660.0    # etcd's default progress interval (10 min) and a minute's slack


@dataclass(frozen=True)
class Event:
    type: str                     # "PUT" or "DELETE"
    kv: KeyValue                  # for a DELETE: the key, at the delete's mod_revision
    prev_kv: KeyValue | None = None

    @property
    def key(self) -> bytes:
        return self.kv.key

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True)
class Progress:
    revision: int


@dataclass(frozen=True)
class Compacted:
    compact_revision: int


@dataclass(frozen=True)
class Canceled:
    reason: str


@dataclass(frozen=True)
class Lost:
    reason: str


@dataclass(frozen=True)
class Idle:
    seconds: float


def _lines(body: bytearray) -> list[bytes]:
    """The complete lines in `body`, removed from it (a partial last one stays)."""
    end = body.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(body[:end]).split(b"\n")
    del body[:end + 1]
    return [ln for ln in lines if ln.strip()]


class Watch:
    def __init__(self, client, key, *, prefix: bool = True, start_revision: int = 0,
                 progress_notify: bool = True, prev_kv: bool = False,
                 idle_timeout: float = DEFAULT_IDLE):
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout {idle_timeout!r}: must be > 0")
        req = {"key": b64(key)}
        if prefix:
            req["range_end"] = b64(prefix_end(key))
        if start_revision:
            req["start_revision"] = str(start_revision)
        if progress_notify:
            req["progress_notify"] = True
        if prev_kv:
            req["prev_kv"] = True
        data = json.dumps({"create_request": req}, separators=(",", ":")).encode()
        self.idle_timeout = float(idle_timeout)
        self._sock = None
        self._resp: http1.Response | None = None
        reasons = []
        for ep in client.order():
            try:
                sock, resp = exchange(ep, client.ssl, http1.request(ep, "/v3/watch", data),
                                      client.timeout, None,
                                      until=lambda r: r.complete or b"\n" in r.body)
            except Failed as f:
                reasons.append((ep.url, f.reason, f.tls))
                continue
            self._created(ep, sock, resp, start_revision)
            break
        else:
            raise client.unavailable(reasons)

    def _created(self, ep, sock, resp, start_revision: int) -> None:
        """The stream's first message must be etcd's created; raise what it says if not."""
        if resp.status != 200 or resp.complete:
            sock.close()
            try:
                decode(ep, resp)
            except Failed as f:
                raise EtcdRequestError(ep.url, 0, f"watch refused: {f.reason}") from None
            raise EtcdRequestError(ep.url, 0, "watch stream ended before it was created")
        # Only the first line: what followed it in the same read stays for take().
        i = resp.body.index(b"\n")
        first = bytes(resp.body[:i])
        del resp.body[:i + 1]
        try:
            m = json.loads(first)
        except ValueError:
            sock.close()
            raise EtcdRequestError(ep.url, 0, f"watch: not JSON: {first[:60]!r}") from None
        r = m.get("result", {}) if isinstance(m, dict) else {}
        if not r.get("created"):
            sock.close()
            err = m.get("error", {}) if isinstance(m, dict) else {}
            raise request_error(ep.url, int(err.get("grpc_code") or 0),
                                "watch not created: " + str(err.get("message") or m)[:120])
        self.endpoint = ep.url
        self.watch_id = num(r, "watch_id")
        # Every event up to `revision` has been delivered (or precedes the watch).
        self.revision = (start_revision - 1 if start_revision
                         else num(r.get("header", {}), "revision"))
        self._sock, self._resp = sock, resp
        sock.setblocking(False)
        self._last_rx = time.monotonic()

    # --- for the event loop ----------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def next_revision(self) -> int:
        """Where a new watch resumes without losing or repeating an event."""
        return self.revision + 1

    @property
    def pending(self) -> bool:
        """Whether take() has something to return without reading (a message that
        arrived with an earlier read): select() will not say so."""
        return self._resp is not None and b"\n" in self._resp.body

    def wait_timeout(self, now: float | None = None) -> float | None:
        """How long select() may wait before take() is due: 0 if pending, else until
        the idle deadline; None once closed."""
        if self.closed:
            return None
        if self.pending:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self._last_rx + self.idle_timeout - now)

    def take(self, now: float | None = None) -> list:
        """What has arrived, parsed, in order; [] if nothing. Never blocks."""
        if self.closed:
            return []
        lost = self._read()
        now = time.monotonic() if now is None else now
        out = []
        for line in _lines(self._resp.body):
            out += self._message(line)
            if out and isinstance(out[-1], (Compacted, Canceled, Lost)):
                self.close()
                return out
        if lost:
            out.append(Lost(f"etcd {self.endpoint}: watch stream {lost}"))
            self.close()
        elif now - self._last_rx >= self.idle_timeout:
            out.append(Idle(round(now - self._last_rx, 3)))
            self.close()
        return out

    def _read(self) -> str:
        """Drain the socket into the parser; the reason the stream ended, or ""."""
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return ""
            except InterruptedError:
                continue
            except OSError as e:
                return f"failed: {e.strerror or e}"
            self._last_rx = time.monotonic()
            if not data:
                return "closed by etcd (EOF)"
            try:
                self._resp.feed(data)
            except http1.ProtocolError as e:
                return f"broken: {e}"
            if self._resp.complete:
                return "ended by etcd"

    def _message(self, line: bytes) -> list:
        try:
            m = json.loads(line)
        except ValueError:
            return [Lost(f"etcd {self.endpoint}: watch stream broken: not JSON: "
                         f"{line[:60]!r}")]
        if not isinstance(m, dict):
            return [Lost(f"etcd {self.endpoint}: watch stream broken: {line[:60]!r}")]
        if "error" in m:
            err = m["error"] if isinstance(m["error"], dict) else {"message": m["error"]}
            return [Lost(f"etcd {self.endpoint}: watch stream error: "
                         f"{err.get('message', err)}")]
        r = m.get("result", {})
        if r.get("canceled") or r.get("compact_revision"):
            cr = num(r, "compact_revision")
            if cr:
                return [Compacted(cr)]
            return [Canceled(r.get("cancel_reason") or "canceled by etcd")]
        events = r.get("events")
        if events:
            out = []
            for e in events:
                prev = e.get("prev_kv")
                ev = Event(e.get("type", "PUT"), KeyValue.from_json(e.get("kv", {})),
                           KeyValue.from_json(prev) if prev else None)
                self.revision = max(self.revision, ev.revision)
                out.append(ev)
            return out
        if r.get("created"):
            return []
        rev = num(r.get("header", {}), "revision")
        self.revision = max(self.revision, rev)
        return [Progress(rev)]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
