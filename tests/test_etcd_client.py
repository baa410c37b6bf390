"""vtep.etcd against a real etcd (Debian's etcd-server 3.4, tests/etcdserver.py) on
loopback: every call, the compare-and-swap refusals, leases expiring and kept alive,
the watch stream (order, compaction, etcd killed and restarted, an idle stream), TLS
with client certificates, and the one-line errors for bad and unreachable URLs.

No root and no namespace: these run everywhere, CI included, and never skip (a missing
etcd fails them). Expected values come from etcd itself read without the client under
test (`raw`: urllib and base64 by hand, the gateway's JSON as documented) or are
literals; every wait is bounded.
"""
import base64
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from etcdserver import EtcdServer, free_port, make_certs, require_etcd
from vtep.etcd import (EXIT_STORE, Client, Compacted, EtcdCompacted, EtcdConfigError,
                       EtcdTLSError, EtcdUnavailable, Event, Idle, LeaseNotFound, Lost,
                       Progress, TLSFiles, cmp_value, op_get, op_put, parse_endpoints,
                       prefix_end)
from vtep.etcd.http1 import ProtocolError, Response

LIMIT = 5.0            # seconds any single wait may take


# --- the reference: etcd's gateway spoken by hand ------------------------------------

def enc(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def raw(srv: EtcdServer, path: str, body: dict) -> dict:
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=LIMIT) as r:
        return json.loads(r.read())


def raw_get(srv, key: str) -> dict | None:
    """The key's kv as etcd's JSON has it (strings for int64, base64 bytes)."""
    kvs = raw(srv, "/v3/kv/range", {"key": enc(key)}).get("kvs", [])
    return kvs[0] if kvs else None


def raw_put(srv, key: str, value: str) -> int:
    return int(raw(srv, "/v3/kv/put", {"key": enc(key), "value": enc(value)})["header"]["revision"])


def raw_revision(srv) -> int:
    return int(raw(srv, "/v3/kv/range", {"key": enc("/")})["header"]["revision"])


def one_line(e: Exception, *needles: str) -> str:
    msg = str(e)
    assert "\n" not in msg and msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def wait_until(pred, limit=LIMIT, step=0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def drain(w, want: int, limit=LIMIT) -> list:
    """Results of take() until `want` of them arrived (select() wakes us) or limit."""
    out, t0 = [], time.monotonic()
    while len(out) < want and time.monotonic() - t0 < limit:
        if not w.pending:
            select.select([w], [], [], min(0.2, limit))
        out += w.take()
        if w.closed:
            break
    return out


@pytest.fixture
def pfx(request):
    """A key prefix of this test's own."""
    return f"/t/{request.node.name}/"


# --- no server: URLs, ranges, HTTP framing ---------------------------------------------

def test_endpoints_are_parsed_in_the_order_given():
    eps = parse_endpoints("http://127.0.0.1:2379, https://[::1]:2380,http://etcd")
    assert [e.url for e in eps] == ["http://127.0.0.1:2379", "https://[::1]:2380",
                                    "http://etcd:2379"]
    assert [e.host for e in eps] == ["127.0.0.1", "::1", "etcd"]


@pytest.mark.parametrize("spec", ["127.0.0.1:2379", "ftp://h:1", "http://", "http://h:99999",
                                  "http://h:2379/v3", "http://h:2379,,http://g:1", "",
                                  "http://h:port", "http://[::1"])   # unclosed bracket: urlsplit raises
def test_a_malformed_url_is_a_one_line_usage_error(spec):
    with pytest.raises(EtcdConfigError) as ei:
        Client(spec)
    assert ei.value.exit_code == 2
    one_line(ei.value, "--etcd")


def test_prefix_end_is_the_next_key_after_the_prefix():
    # etcd's rule (clientv3.GetPrefixRangeEnd): last byte below 0xff plus one
    assert prefix_end(b"/vtep/") == b"/vtep0"
    assert prefix_end("a\xff".encode("latin-1")) == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n"
           b"Grpc-Trailer-Content-Type: application/grpc\r\n\r\n")


def test_http_chunked_body_with_trailers_split_anywhere():
    # Every split of the hand-written response into two reads gives the same result.
    # (feed(b"") means EOF, so the empty piece of a split at either end is not fed)
    for cut in range(1, len(CHUNKED)):
        r = Response()
        r.feed(CHUNKED[:cut])
        assert not r.complete, cut
        r.feed(CHUNKED[cut:])
        assert (r.complete, bytes(r.body), r.status, r.keep_alive) == \
            (True, b"hello world", 200, True), cut
    r = Response()
    for i in range(len(CHUNKED)):
        r.feed(CHUNKED[i:i + 1])
    assert r.complete and bytes(r.body) == b"hello world"


def test_http_content_length_truncation_and_garbage():
    r = Response()
    r.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{}\r\n")
    assert (r.complete, r.status, bytes(r.body), r.keep_alive) == (True, 404, b"{}\r\n", False)
    r = Response()
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ProtocolError, match="before the response ended"):
        r.feed(b"")
    r = Response()
    r.feed(b"HTTP/1.0 200 OK\r\n\r\nuntil eof")      # no framing: the body ends at EOF
    r.feed(b"")
    assert r.complete and bytes(r.body) == b"until eof" and not r.keep_alive
    for junk in (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                 b"chunked\r\n\r\nzz\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nX"):
        with pytest.raises(ProtocolError):
            Response().feed(junk)


def test_tls_files_missing_or_not_pem_are_usage_errors(tmp_path):
    with pytest.raises(EtcdConfigError) as ei:
        Client("https://127.0.0.1:1", tls=TLSFiles(cacert=str(tmp_path / "nope.pem")))
    one_line(ei.value, "--etcd-cacert", "nope.pem", "no such file")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(EtcdConfigError) as ei:
        Client("https://127.0.0.1:1", tls=TLSFiles(cert=str(junk), key=str(junk)))
    one_line(ei.value, "--etcd-cert", "junk.pem")
    with pytest.raises(EtcdConfigError) as ei:
        Client("http://127.0.0.1:1", tls=TLSFiles(cacert=str(junk)))
    one_line(ei.value, "no URL is https")


# --- the calls ----------------------------------------------------------------------------

def test_put_and_range_agree_with_the_gateway(etcd, client, pfx):
    r1 = client.put(pfx + "b", "v1")
    r2 = client.put(pfx + "b", "v2")
    r3 = client.put(pfx + "a", "x")
    assert (r2, r3) == (r1 + 1, r1 + 2)                  # one revision per write
    ref = raw_get(etcd, pfx + "b")
    assert ref == {"key": enc(pfx + "b"), "value": enc("v2"), "create_revision": str(r1),
                   "mod_revision": str(r2), "version": "2"}
    kv = client.get(pfx + "b")
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == \
        ((pfx + "b").encode(), b"v2", r1, r2, 2, 0)
    rng = client.range(pfx, prefix=True)
    assert [(k.key, k.value) for k in rng.kvs] == [((pfx + "a").encode(), b"x"),
                                                  ((pfx + "b").encode(), b"v2")]
    assert (rng.count, rng.revision) == (2, raw_revision(etcd))
    assert client.get(pfx + "b", revision=r1).value == b"v1"   # history
    assert client.get(pfx + "nothing") is None
    assert client.range(pfx + "b", prefix=True, limit=1).more is False


def test_create_if_absent_refuses_a_second_create(etcd, client, pfx):
    first = client.create(pfx + "subnet-1", "node-a")
    assert first.succeeded and first.current is None
    second = client.create(pfx + "subnet-1", "node-b")
    assert not second.succeeded
    assert (second.current.value, second.current.mod_revision) == (b"node-a", first.revision)
    assert raw_get(etcd, pfx + "subnet-1")["value"] == enc("node-a")
    assert raw_get(etcd, pfx + "subnet-1")["version"] == "1"


def test_update_with_a_stale_revision_is_refused(etcd, client, pfx):
    made = client.create(pfx + "n", "1").revision
    upd = client.update(pfx + "n", "2", mod_revision=made)
    assert upd.succeeded and upd.revision == made + 1
    stale = client.update(pfx + "n", "3", mod_revision=made)
    assert not stale.succeeded and stale.current.mod_revision == made + 1
    assert raw_get(etcd, pfx + "n")["value"] == enc("2")
    with pytest.raises(ValueError):
        client.update(pfx + "n", "4", mod_revision=0)  # would act as a create
    missing = client.update(pfx + "absent", "x", mod_revision=made)
    assert not missing.succeeded and missing.current is None
    assert raw_get(etcd, pfx + "absent") is None


def test_delete_and_delete_if(etcd, client, pfx):
    a = client.put(pfx + "a", "1")
    client.put(pfx + "b", "1")
    refused = client.delete_if(pfx + "a", mod_revision=a - 1)
    assert not refused.succeeded and raw_get(etcd, pfx + "a") is not None
    assert client.delete_if(pfx + "a", mod_revision=a).succeeded
    assert raw_get(etcd, pfx + "a") is None
    assert client.delete(pfx + "b") == 1
    assert client.delete(pfx + "b") == 0
    client.put(pfx + "c/1", "x")
    client.put(pfx + "c/2", "x")
    assert client.delete(pfx + "c/", prefix=True) == 2


def test_a_general_transaction_runs_one_branch(etcd, client, pfx):
    client.put(pfx + "cfg", "vni=42")
    ok = client.txn([cmp_value(pfx + "cfg", "vni=42")], [op_put(pfx + "x", "1"),
                                                         op_get(pfx, prefix=True)])
    assert ok.succeeded and ok.results[0] is None
    assert [k.key for k in ok.results[1].kvs] == [(pfx + "cfg").encode(), (pfx + "x").encode()]
    no = client.txn([cmp_value(pfx + "cfg", "vni=7")], [op_put(pfx + "y", "1")],
                    [op_get(pfx + "cfg")])
    assert not no.succeeded and no.results[0].kvs[0].value == b"vni=42"
    assert raw_get(etcd, pfx + "y") is None


def test_a_lease_expires_and_its_keys_go(etcd, client, pfx):
    lease = client.lease_grant(2)
    assert lease.ttl == 2 and lease.id > 0
    client.put(pfx + "member", "up", lease=lease.id)
    assert raw_get(etcd, pfx + "member")["lease"] == str(lease.id)
    t0 = time.monotonic()
    assert wait_until(lambda: raw_get(etcd, pfx + "member") is None, limit=LIMIT)
    assert time.monotonic() - t0 <= 2 + 2.0            # TTL, and etcd's expiry tick
    with pytest.raises(LeaseNotFound) as ei:
        client.lease_keepalive(lease.id)
    one_line(ei.value, etcd.url, f"{lease.id:x}")


def test_keepalive_keeps_the_keys(etcd, client, pfx):
    lease = client.lease_grant(2)
    client.put(pfx + "member", "up", lease=lease.id)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.5:                 # well past the TTL
        assert client.lease_keepalive(lease.id) == 2
        time.sleep(0.5)
    assert raw_get(etcd, pfx + "member")["value"] == enc("up")
    client.lease_revoke(lease.id)                      # revoke: keys go at once
    assert raw_get(etcd, pfx + "member") is None
    with pytest.raises(LeaseNotFound) as ei:
        client.lease_revoke(lease.id)
    one_line(ei.value, etcd.url, "lease not found")


def test_status_is_this_etcd(etcd, client):
    out = subprocess.run([require_etcd(), "--version"], capture_output=True, text=True,
                         timeout=LIMIT).stdout
    version = re.search(r"etcd Version: (\S+)", out).group(1)
    st = client.status()
    assert (st.version, st.endpoint, st.revision) == (version, etcd.url, raw_revision(etcd))
    assert st.leader == st.member_id != 0               # one member leads itself


def test_a_read_at_a_compacted_revision_is_a_typed_error(etcd, client, pfx):
    old = client.put(pfx + "k", "1")
    now = client.put(pfx + "k", "2")
    client.compact(now)
    with pytest.raises(EtcdCompacted) as ei:
        client.get(pfx + "k", revision=old)
    assert ei.value.exit_code == EXIT_STORE
    one_line(ei.value, etcd.url, "compacted")
    assert client.get(pfx + "k").value == b"2"


# --- the watch ----------------------------------------------------------------------------

def test_the_watch_delivers_puts_and_deletes_in_order(etcd, client, pfx):
    start = raw_revision(etcd) + 1
    with client.watch(pfx, start_revision=start, idle_timeout=30) as w:
        assert w.fileno() >= 0 and w.take() == []       # nothing yet, and it did not block
        revs = [raw_put(etcd, pfx + "a", "1"), raw_put(etcd, pfx + "b", "2")]
        revs.append(int(raw(etcd, "/v3/kv/deleterange", {"key": enc(pfx + "a")})
                        ["header"]["revision"]))
        revs.append(raw_put(etcd, pfx + "a", "3"))
        raw_put(etcd, "/elsewhere", "not ours")
        got = drain(w, 4)
        assert [(e.type, e.key.decode(), e.kv.value, e.revision) for e in got] == [
            ("PUT", pfx + "a", b"1", revs[0]), ("PUT", pfx + "b", b"2", revs[1]),
            ("DELETE", pfx + "a", b"", revs[2]), ("PUT", pfx + "a", b"3", revs[3])]
        assert w.next_revision == revs[3] + 1
        assert w.take() == []                           # and nothing more


def test_a_watch_from_a_compacted_revision_reports_compaction_then_relist(etcd, client, pfx):
    first = client.put(pfx + "gone", "1")
    client.delete(pfx + "gone")                         # the delete a late watcher misses
    keep = client.put(pfx + "kept", "1")
    client.compact(keep)
    with client.watch(pfx, start_revision=first, idle_timeout=30) as w:
        got = drain(w, 1)
        assert got == [Compacted(keep)] and w.closed and w.fileno() == -1
    listed = client.range(pfx, prefix=True)             # the re-list sees the delete
    assert [k.key for k in listed.kvs] == [(pfx + "kept").encode()]
    with client.watch(pfx, start_revision=listed.revision + 1, idle_timeout=30) as w:
        rev = raw_put(etcd, pfx + "new", "1")
        got = drain(w, 1)
        assert [(type(e), e.key, e.revision) for e in got] == [(Event, (pfx + "new").encode(),
                                                               rev)]


def test_etcd_killed_and_restarted(tmp_path):
    """The watch reports the loss at once (select wakes), calls fail with a one-line
    error naming the endpoint, and both work again after a restart on the same data."""
    with EtcdServer(tmp_path / "data") as srv, Client(srv.url, timeout=2.0) as c:
        r = c.put("/k/a", "1")
        w = c.watch("/k/", start_revision=r + 1, idle_timeout=60)
        srv.kill()
        t0 = time.monotonic()
        assert select.select([w], [], [], LIMIT)[0] == [w]
        got = w.take()
        assert time.monotonic() - t0 < 1.0
        assert len(got) == 1 and isinstance(got[0], Lost) and w.closed
        one_line(Exception(got[0].reason), srv.url, "closed by etcd")
        with pytest.raises(EtcdUnavailable) as ei:
            c.get("/k/a")
        assert ei.value.exit_code == EXIT_STORE
        one_line(ei.value, srv.url, "connection refused")
        with pytest.raises(EtcdUnavailable):
            c.watch("/k/", start_revision=w.next_revision)
        srv.start()
        assert c.get("/k/a").value == b"1"              # the data survived
        with c.watch("/k/", start_revision=w.next_revision, idle_timeout=60) as w2:
            rev = c.put("/k/b", "2")
            assert rev == r + 1                         # nothing in between was lost
            got = drain(w2, 1)
            assert [(e.key, e.revision) for e in got] == [(b"/k/b", rev)]


def test_an_idle_watch_is_reported(tmp_path):
    """Progress notifications (every 500 ms here) keep a quiet watch alive; a watch
    on which nothing arrives for idle_timeout (etcd stopped with SIGSTOP: its socket
    open, nothing sent) reports Idle."""
    with EtcdServer(tmp_path / "data", progress_notify_interval="500ms") as srv, \
            Client(srv.url, timeout=2.0) as c:
        w = c.watch("/quiet/", idle_timeout=2.0)
        got, t0 = [], time.monotonic()
        while time.monotonic() - t0 < 3.0:              # > idle_timeout: kept alive
            select.select([w], [], [], w.wait_timeout())
            got += w.take()
        assert got and all(isinstance(g, Progress) for g in got), got
        assert got[-1].revision == raw_revision(srv) and not w.closed
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            res = []
            while not res and time.monotonic() - t0 < LIMIT:
                select.select([w], [], [], w.wait_timeout())
                res = w.take()
            assert len(res) == 1 and isinstance(res[0], Idle), res
            assert time.monotonic() - t0 <= 2.0 + 0.5 and w.closed
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)


class FakeGateway:
    """A loopback server that answers the one request it gets with hand-written bytes,
    a piece per send() call, each after the test says go: the stream as etcd's gateway
    frames it, cut where a test wants it cut."""

    def __init__(self, pieces: list[bytes]):
        self.pieces, self.go = pieces, threading.Semaphore(0)
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.url = f"http://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.request = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.lsock.settimeout(LIMIT)
        conn, _ = self.lsock.accept()
        with conn:
            conn.settimeout(LIMIT)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(4096)
            for piece in self.pieces:
                if not self.go.acquire(timeout=LIMIT):
                    return
                conn.sendall(piece)
            self.go.acquire(timeout=LIMIT)          # hold the connection until told

    def close(self):
        self.go.release()
        self.thread.join(LIMIT)
        self.lsock.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
CREATED = b'{"result":{"header":{"revision":"7"},"created":true}}\n'
PUT_A = (b'{"result":{"header":{"revision":"8"},"events":[{"kv":{"key":"L2svYQ==",'
         b'"create_revision":"8","mod_revision":"8","version":"1","value":"MQ=="}}]}}\n')
DEL_A = (b'{"result":{"header":{"revision":"9"},"events":[{"type":"DELETE","kv":'
         b'{"key":"L2svYQ==","mod_revision":"9"}}]}}\n')
PROGRESS = b'{"result":{"header":{"revision":"9"}}}\n'


def test_the_watch_stream_framing_cut_anywhere():
    """Two messages in the read that brought "created"; a message cut across chunks
    and reads; a progress notification; the stream's end. Hand-written bytes (the
    gateway's framing, as etcd 3.4 sends it); /k/a is L2svYQ==, "1" is MQ==."""
    half = len(DEL_A) // 2
    srv = FakeGateway([HEAD + chunk(CREATED + PUT_A), chunk(DEL_A[:half]),
                       chunk(DEL_A[half:] + PROGRESS) + b"0\r\n\r\n"])
    try:
        srv.go.release()
        with Client(srv.url, timeout=LIMIT) as c, c.watch("/k/", idle_timeout=30) as w:
            assert b"POST /v3/watch HTTP/1.1" in srv.request
            assert w.revision == 7 and w.pending and w.wait_timeout() == 0
            got = w.take()
            assert [(e.type, e.key, e.kv.value, e.revision) for e in got] == \
                [("PUT", b"/k/a", b"1", 8)]
            srv.go.release()
            assert select.select([w], [], [], LIMIT)[0] == [w]
            time.sleep(0.1)                             # all of the piece is in
            assert w.take() == [] and not w.pending     # half a message: nothing yet
            srv.go.release()
            got = drain(w, 3)
            assert [type(g) for g in got] == [Event, Progress, Lost], got
            assert (got[0].type, got[0].revision, got[1].revision) == ("DELETE", 9, 9)
            assert "ended by etcd" in got[2].reason and w.closed
            assert w.next_revision == 10
    finally:
        srv.close()


def test_a_broken_watch_stream_is_lost_not_a_crash():
    srv = FakeGateway([HEAD + chunk(CREATED), chunk(b"{not json}\n")])
    try:
        srv.go.release()
        with Client(srv.url, timeout=LIMIT) as c, c.watch("/k/", idle_timeout=30) as w:
            srv.go.release()
            got = drain(w, 1)
            assert len(got) == 1 and isinstance(got[0], Lost) and w.closed
            one_line(Exception(got[0].reason), srv.url, "not JSON")
    finally:
        srv.close()


# --- TLS ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    certs = make_certs(d / "pki")
    with EtcdServer(d / "data", tls=certs) as srv:
        yield srv, certs


def test_tls_with_a_client_certificate(tls_etcd):
    srv, certs = tls_etcd
    files = TLSFiles(str(certs.ca), str(certs.client_cert), str(certs.client_key))
    with Client(srv.url, tls=files, timeout=LIMIT) as c:
        rev = c.put("/tls/a", "1")
        assert c.get("/tls/a").mod_revision == rev
        with c.watch("/tls/", start_revision=rev, idle_timeout=30) as w:
            assert [(e.key, e.revision) for e in drain(w, 1)] == [(b"/tls/a", rev)]


def test_tls_with_the_wrong_ca_is_a_one_line_error(tls_etcd, tmp_path):
    srv, certs = tls_etcd
    other = make_certs(tmp_path / "other", name="other")
    files = TLSFiles(str(other.ca), str(certs.client_cert), str(certs.client_key))
    with Client(srv.url, tls=files, timeout=LIMIT) as c:
        with pytest.raises(EtcdTLSError) as ei:
            c.get("/tls/a")
        one_line(ei.value, srv.url, "certificate verify failed")
        with pytest.raises(EtcdTLSError):
            c.watch("/tls/")


def test_tls_without_a_client_certificate_is_refused(tls_etcd):
    srv, certs = tls_etcd
    with Client(srv.url, tls=TLSFiles(cacert=str(certs.ca)), timeout=LIMIT) as c:
        with pytest.raises(EtcdTLSError) as ei:
            c.get("/tls/a")
        one_line(ei.value, srv.url, "TLS handshake failed", "no client certificate given")


# --- unreachable endpoints -------------------------------------------------------------

def test_an_unreachable_url_is_a_one_line_error():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=LIMIT) as c:
        with pytest.raises(EtcdUnavailable) as ei:
            c.status()
        assert ei.value.exit_code == EXIT_STORE
        one_line(ei.value, url, "connection refused")
        with pytest.raises(EtcdUnavailable):
            c.watch("/x/")


@pytest.fixture
def silent():
    """A port that completes TCP handshakes (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_every_call_has_a_timeout(silent):
    with Client(silent, timeout=0.5) as c:
        for call in (c.status, lambda: c.watch("/x/")):
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable) as ei:
                call()
            assert time.monotonic() - t0 < 0.5 + 0.5
            one_line(ei.value, silent, "no answer within 0.5 s")


def test_endpoints_are_tried_in_turn(etcd, silent, pfx):
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(f"{dead},{etcd.url}", timeout=LIMIT) as c:
        assert c.status().endpoint == etcd.url
        assert c.put(pfx + "k", "1") > 0
    with Client(f"{dead},http://127.0.0.1:{free_port()}", timeout=LIMIT) as c:
        with pytest.raises(EtcdUnavailable) as ei:
            c.status()
        assert one_line(ei.value).count("connection refused") == 2
    # A write that reached an endpoint which then said nothing is not sent again to
    # the next one (it may have been applied); a read is.
    with Client(f"{silent},{etcd.url}", timeout=0.5) as c:
        with pytest.raises(EtcdUnavailable) as ei:
            c.put(pfx + "once", "1")
        one_line(ei.value, silent, "may have been applied")
        assert raw_get(etcd, pfx + "once") is None
        assert c.get(pfx + "k").value == b"1"
