"""A real etcd for tests: Debian's etcd-server (3.4) as a subprocess on loopback.

One member, its client and peer URLs on free ports of 127.0.0.1 (or `host`), its data
in a directory the test owns (tmp_path), ready when GET /health answers
{"health":"true"}, stopped by its own PID (never a system service, never pkill).
restart() brings it back on the same data dir and the same ports, so a client's URL
stays valid across the restart, as an agent's --etcd does when the store bounces.

With `tls` (a Certs from make_certs), the client URL is https and etcd requires a
client certificate signed by the CA (--client-cert-auth); the peer URL stays plain
(one member: nobody dials it).

A missing etcd binary is a test failure with a one-line reason, never a skip
(bootstrap.sh installs etcd-server; CI must run these tests).
"""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vtep.lab.topology import end_process

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
READY_LIMIT = 15.0     # seconds for /health to answer after a start (a cold start takes ~1 s)


def require_etcd() -> str:
    """The etcd binary's path; a missing one fails the test (never skips it)."""
    if not Path(ETCD).exists():
        raise AssertionError(f"etcd not found at {ETCD}: `sh bootstrap.sh` installs "
                             "Debian's etcd-server (these tests must not skip)")
    return ETCD


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel has just handed out on `host` (free at that instant)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, a server certificate for 127.0.0.1 and a client certificate,
    both signed by the CA."""
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"openssl {args[0]} failed: {r.stderr.strip()}")


def make_certs(d: Path, name: str = "ca", host: str = "127.0.0.1") -> Certs:
    """A throwaway CA and two certificates it signs (openssl CLI; EC P-256 keys, fast).
    The server certificate names `host` as an IP subjectAltName, which is what Go's TLS
    verifies an https://IP URL against, and is good for client auth too: etcd 3.4's
    JSON gateway dials etcd's own gRPC port presenting --cert-file, and with
    --client-cert-auth a serverAuth-only certificate is refused there ("incompatible
    key usage"), which the gateway's clients see as a connection closed unanswered."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN=vtep test {name}", cwd=d)
    ext = {"server": f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth,clientAuth\n",
           "client": "extendedKeyUsage=clientAuth\n"}
    for role, text in ext.items():
        (d / f"{name}-{role}.ext").write_text(text)
        _openssl("req", "-new", *ec, "-keyout", f"{name}-{role}.key",
                 "-out", f"{name}-{role}.csr", "-subj", f"/CN=vtep test {role}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}-{role}.csr", "-CA", f"{name}.pem",
                 "-CAkey", f"{name}.key", "-CAcreateserial", "-days", "2",
                 "-extfile", f"{name}-{role}.ext", "-out", f"{name}-{role}.pem", cwd=d)
    return Certs(ca=d / f"{name}.pem",
                 server_cert=d / f"{name}-server.pem", server_key=d / f"{name}-server.key",
                 client_cert=d / f"{name}-client.pem", client_key=d / f"{name}-client.key")


class EtcdServer:
    """One etcd member. Use as a context manager: started on enter, stopped by PID in
    __exit__ whatever happened (and its log tail shown if it never became ready)."""

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", tls: Certs | None = None,
                 progress_notify_interval: str | None = None, netns: str | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.tls = tls
        self.progress_notify_interval = progress_notify_interval
        # netns: run inside that network namespace (a lab node's), listening on `host`,
        # one of its addresses; the namespace is the test's own and new, so etcd's
        # well-known ports are free there
        self.netns = netns
        self.client_port = 2379 if netns else free_port(host)
        self.peer_port = 2380 if netns else free_port(host)
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def argv(self) -> list[str]:
        a = [require_etcd(), "--name", "vtep-test", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", self.peer_url,
             "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", f"vtep-test={self.peer_url}",
             "--initial-cluster-state", "new", "--logger", "zap"]
        if self.tls:
            a += ["--cert-file", str(self.tls.server_cert), "--key-file",
                  str(self.tls.server_key), "--trusted-ca-file", str(self.tls.ca),
                  "--client-cert-auth"]
        if self.progress_notify_interval:
            a += ["--experimental-watch-progress-notify-interval",
                  self.progress_notify_interval]
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + a

    def start(self) -> "EtcdServer":
        assert self.proc is None or self.proc.poll() is not None, "etcd already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def _health(self) -> bool:
        if self.netns:   # asked from inside the namespace, where the address is
            probe = (f"import json, urllib.request; print(json.loads(urllib.request.urlopen("
                     f"'{self.url}/health', timeout=1).read()).get('health'))")
            try:
                r = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c",
                                    probe], capture_output=True, text=True, timeout=5)
            except subprocess.TimeoutExpired:
                return False
            return r.stdout.strip() == "true"
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca))
            ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1.0,
                                        context=ctx) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):      # URLError is an OSError; not up yet
            return False

    def wait_ready(self, limit: float = READY_LIMIT) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited {self.proc.returncode} at start:\n"
                                     + self.log_tail())
            if self._health():
                return
            time.sleep(0.05)
        raise AssertionError(f"etcd not healthy after {limit:g} s:\n" + self.log_tail())

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash: no graceful close of its connections beyond the kernel's."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc:
            end_process(self.proc)

    def restart(self) -> "EtcdServer":
        """Same data dir, same ports (the listeners set SO_REUSEADDR)."""
        self.stop()
        return self.start()

    def __enter__(self) -> "EtcdServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
