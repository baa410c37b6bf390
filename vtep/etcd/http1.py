"""The HTTP/1.1 we need to speak to etcd's gateway, on a plain or TLS socket we own.

Not http.client: the watch is a response that never ends, read in pieces whenever the
daemon's select() says its socket is readable, and http.client's buffered reader would
hide bytes from select(). One incremental parser (Response.feed) serves both the
unary calls (fed until complete, under one deadline) and the watch (fed whatever has
arrived). It knows what Go's net/http sends: a Content-Length body, or a chunked one
(RFC 9112 section 7.1) that may end in trailers (the gateway adds
Grpc-Trailer-Content-Type), or a body that ends with the connection.
"""
from __future__ import annotations

import socket
import ssl
import time

from .endpoints import Endpoint

MAX_HEAD = 64 * 1024       # status line + headers (and a trailer section)
MAX_LINE = 1024            # a chunk-size line


class ProtocolError(ValueError):
    """The peer does not speak HTTP/1.1 as RFC 9112 has it."""


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def connect(ep: Endpoint, ctx: ssl.SSLContext | None, deadline: float) -> socket.socket:
    """A connected (and, for https, handshaken) blocking socket, within the deadline."""
    sock = socket.create_connection((ep.host, ep.port), timeout=remaining(deadline))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ep.tls:
            sock.settimeout(remaining(deadline))
            sock = ctx.wrap_socket(sock, server_hostname=ep.host)
        return sock
    except BaseException:
        sock.close()
        raise


def request(ep: Endpoint, path: str, body: bytes) -> bytes:
    """A POST of a JSON body; the connection is kept for the next call."""
    return (f"POST {path} HTTP/1.1\r\nHost: {ep.netloc}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body


def sendall(sock: socket.socket, data: bytes, deadline: float) -> None:
    sock.settimeout(remaining(deadline))
    sock.sendall(data)


class Response:
    """An HTTP/1.1 response parsed as bytes arrive: feed(data), feed(b"") at EOF.

    `status` and `headers` (lower-cased names) once the head is in; `body` holds the
    decoded body bytes not yet taken (the caller may empty it); `complete` once the
    body ended as its framing says; `keep_alive` whether the connection may carry
    another request afterwards. Malformed input raises ProtocolError."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "head"    # head, length, size, data, data-crlf, trailers, eof, done
        self._left = 0
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.keep_alive = False

    @property
    def complete(self) -> bool:
        return self._state == "done"

    @property
    def head_done(self) -> bool:
        return self._state != "head"

    def feed(self, data: bytes) -> None:
        if self._state == "done":
            if data:
                raise ProtocolError("bytes after the end of the response")
            return
        if not data:
            self._eof()
            return
        self._buf += data
        while self._step():
            pass

    def _eof(self) -> None:
        if self._state == "eof":
            self._state = "done"
            return
        raise ProtocolError("connection closed before the response ended" if self.head_done
                            else "connection closed before a response")

    def _line(self, limit: int) -> bytes | None:
        i = self._buf.find(b"\r\n")
        if i < 0:
            if len(self._buf) > limit:
                raise ProtocolError(f"a line longer than {limit} bytes")
            return None
        line = bytes(self._buf[:i])
        del self._buf[:i + 2]
        return line

    def _step(self) -> bool:
        """Advance by one piece of the framing; False when more input is needed."""
        st = self._state
        if st == "head":
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise ProtocolError(f"a response head longer than {MAX_HEAD} bytes")
                return False
            self._head(bytes(self._buf[:end]).decode("latin-1"))
            del self._buf[:end + 4]
            return True
        if st == "length":
            n = min(self._left, len(self._buf))
            self.body += self._buf[:n]
            del self._buf[:n]
            self._left -= n
            if self._left == 0:
                self._state = "done"
                return bool(self._buf) and self._extra()
            return False
        if st == "eof":
            self.body += self._buf
            self._buf.clear()
            return False
        if st == "size":
            line = self._line(MAX_LINE)
            if line is None:
                return False
            size = line.split(b";", 1)[0].strip()     # chunk extensions are ignored
            try:
                self._left = int(size, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
            if self._left < 0 or not size.isalnum():
                raise ProtocolError(f"bad chunk size {line[:40]!r}")
            self._state = "data" if self._left else "trailers"
            return True
        if st == "data":
            n = min(self._left, len(self._buf))
            self.body += self._buf[:n]
            del self._buf[:n]
            self._left -= n
            if self._left:
                return False
            self._state = "data-crlf"
            return True
        if st == "data-crlf":
            if len(self._buf) < 2:
                return False
            if self._buf[:2] != b"\r\n":
                raise ProtocolError("a chunk not followed by CRLF")
            del self._buf[:2]
            self._state = "size"
            return True
        if st == "trailers":
            line = self._line(MAX_HEAD)
            if line is None:
                return False
            if line == b"":
                self._state = "done"
                return bool(self._buf) and self._extra()
            return True                                   # a trailer field: not needed
        if self._buf:                                     # "done"
            self._extra()
        return False

    def _extra(self) -> bool:
        raise ProtocolError("bytes after the end of the response")

    def _head(self, text: str) -> None:
        lines = text.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:60]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line[:60]!r}")
            self.headers[name.lower()] = value.strip()
        conn = self.headers.get("connection", "").lower()
        self.keep_alive = parts[0] == "HTTP/1.1" and "close" not in conn
        te = self.headers.get("transfer-encoding", "").lower()
        if te:
            if te != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {te!r}")
            self._state = "size"
        elif "content-length" in self.headers:
            cl = self.headers["content-length"]
            if not cl.isdigit():
                raise ProtocolError(f"bad Content-Length {cl!r}")
            self._left = int(cl)
            self._state = "length" if self._left else "done"
        elif self.status in (204, 304):
            self._state = "done"
        else:
            self._state = "eof"            # the body ends with the connection
            self.keep_alive = False
