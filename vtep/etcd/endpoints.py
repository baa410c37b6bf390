"""Where etcd is and how to reach it: `--etcd URL[,URL...]` parsed into Endpoints, and the
TLS files (`--etcd-cacert`, `--etcd-cert`, `--etcd-key`) loaded into one ssl.SSLContext.

Both are checked before anything is dialled, so a typo is a one-line usage error
(EtcdConfigError, exit 2) and never a connection attempt to a wrong place.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import EtcdConfigError

DEFAULT_PORT = 2379    # etcd's IANA-registered client port


@dataclass(frozen=True)
class Endpoint:
    scheme: str        # "http" or "https"
    host: str          # a name or an address; IPv6 without brackets
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def __str__(self) -> str:
        return self.url


def _one(text: str) -> Endpoint:
    bad = f"--etcd {text!r}: not an etcd URL (want http://HOST:PORT or https://HOST:PORT)"
    try:
        u = urlsplit(text)
    except ValueError:             # an unclosed IPv6 bracket: "http://[::1"
        raise EtcdConfigError(bad) from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise EtcdConfigError(bad)
    try:
        port = u.port
    except ValueError:             # not a number, or outside 0..65535
        raise EtcdConfigError(f"--etcd {text!r}: bad port") from None
    if u.path not in ("", "/") or u.query or u.fragment or u.username or u.password:
        raise EtcdConfigError(f"--etcd {text!r}: a URL of etcd itself has no path, query "
                              "or user (the client adds /v3/...)")
    if port == 0:
        raise EtcdConfigError(f"--etcd {text!r}: bad port")
    return Endpoint(u.scheme, u.hostname, port or DEFAULT_PORT)


def parse_endpoints(spec) -> tuple[Endpoint, ...]:
    """`URL[,URL...]` (or a list of URLs) -> Endpoints, in the order given (tried in
    that order). Duplicates are dropped."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Endpoint] = []
    for item in items:
        if isinstance(item, Endpoint):
            ep = item
        else:
            text = str(item).strip()
            if not text:
                raise EtcdConfigError(f"--etcd {spec!r}: an empty URL in the list")
            ep = _one(text)
        if ep not in out:
            out.append(ep)
    if not out:
        raise EtcdConfigError("--etcd: no URL given")
    return tuple(out)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA that signed etcd's server certificate (None: the system's
    store), and our client certificate and key (etcd --client-cert-auth requires one)."""
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def given(self) -> bool:
        return any((self.cacert, self.cert, self.key))


def _readable(option: str, path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise EtcdConfigError(f"{option} {path}: no such file")
    try:
        p.open("rb").close()
    except OSError as e:
        raise EtcdConfigError(f"{option} {path}: {e.strerror}") from None
    return str(p)


def ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """A client context that verifies etcd's certificate (and its name or IP against
    the URL's host) and presents ours if given."""
    if files.key and not files.cert:
        raise EtcdConfigError(f"--etcd-key {files.key}: given without --etcd-cert")
    cafile = _readable("--etcd-cacert", files.cacert) if files.cacert else None
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as e:
        raise EtcdConfigError(f"--etcd-cacert {files.cacert}: not a PEM CA certificate "
                              f"({e.reason or e})") from None
    if files.cert:
        cert = _readable("--etcd-cert", files.cert)
        key = _readable("--etcd-key", files.key) if files.key else None
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            raise EtcdConfigError(f"--etcd-cert {files.cert}"
                                  + (f" / --etcd-key {files.key}" if files.key else "")
                                  + f": not a PEM certificate and its key ({e.reason or e})"
                                  ) from None
    return ctx


def check_tls(endpoints: tuple[Endpoint, ...], files: TLSFiles) -> ssl.SSLContext | None:
    """The context the endpoints need: None when all are http and no file is given; a
    TLS file with only http URLs is a mistake worth saying (it would be ignored)."""
    if not any(ep.tls for ep in endpoints):
        if files.given:
            raise EtcdConfigError(f"--etcd {','.join(e.url for e in endpoints)}: TLS files "
                                  "given but no URL is https://")
        return None
    return ssl_context(files)
