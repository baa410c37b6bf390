"""The lab pods' HTTP echo server, and the client the demo runs in a pod.

    python -m vtep.lab.echo serve [--port 8000] [--host ::]   # in a pod namespace
    python -m vtep.lab.echo get URL [--body TEXT]   # prints the server's JSON answer

`/echo` (GET or POST) answers JSON: {"client": [address, port], "method", "path",
"headers": {...}, "body"}. The client address is the one the server's socket saw,
which is what proves the overlay does not NAT: it must be the calling pod's own.

--host :: (a dual-stack pod) listens on one IPv6 socket with IPV6_V6ONLY off, which
takes IPv4 clients too (RFC 3493 section 3.7): the socket names such a client by its
IPv4-mapped address (::ffff:172.2.0.2, RFC 4291 section 2.5.5.2), which is the IPv4
address itself, so the answer names it as such (172.2.0.2), as an IPv4 socket would.
A URL names an IPv6 server in brackets: http://[fd00:172:2:1::2]:8000/echo.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_PORT = 8000
MAX_BODY = 1 << 20


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "vtep-echo/1"

    def _answer(self) -> None:
        if self.path.split("?", 1)[0] != "/echo":
            self._send(404, {"error": f"no such path {self.path}; try /echo"})
            return
        n = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
        self._send(200, {"client": [client_ip(self.client_address[0]),
                                    self.client_address[1]], "method": self.command,
                         "path": self.path, "headers": dict(self.headers.items()),
                         "body": body})

    do_GET = do_POST = do_PUT = _answer

    def _send(self, status: int, doc: dict) -> None:
        data = (json.dumps(doc) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *a):  # one line per request on stderr (the lab's log file)
        sys.stderr.write(f"echo: {client_ip(self.client_address[0])} {fmt % a}\n")
        sys.stderr.flush()


def client_ip(addr: str) -> str:
    """The client's address as its own family writes it: an IPv4-mapped IPv6 address
    (an IPv4 client of a dual-stack socket) is the IPv4 address."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else addr


class EchoServer(ThreadingHTTPServer):
    """The family follows the host: an IPv6 host (e.g. ::) makes an IPv6 socket that
    takes IPv4 clients too (IPV6_V6ONLY off)."""

    def __init__(self, addr, handler):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(port: int = DEFAULT_PORT, host: str = "0.0.0.0") -> None:
    with EchoServer((host, port), EchoHandler) as srv:
        print(f"echo: listening on {host}:{port}", file=sys.stderr, flush=True)
        srv.serve_forever()


def get(url: str, body: str | None = None, timeout: float = 5) -> dict:
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"X-Vtep-Demo": "1"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vtep.lab.echo")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--host", default="0.0.0.0")
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("--body")
    g.add_argument("--timeout", type=float, default=5)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        try:
            serve(a.port, a.host)
        except KeyboardInterrupt:
            pass
        return 0
    try:
        print(json.dumps(get(a.url, a.body, a.timeout)))
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"echo: {a.url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
