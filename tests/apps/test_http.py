"""The ``http`` app: HTTP/1.1 conformance over real loopback sockets, on every rung.

Raw sockets where the exact bytes matter (pipelining, malformed input, limits), ``http.client``
as a standard client. Every case is bounded in time and shuts its server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ioladder import rungs, serve
from ioladder.apps import APPS, AppOptions, EchoProtocol, make_factory
from ioladder.apps.http import HELLO_BODY, HttpConfig, HttpProtocol, http_date

BIG_SIZE = 8 * 1024 * 1024
TIMEOUT = 20.0


# ------------------------------------------------------------------------------- helpers

class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, head: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.head = head

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {len(self.body)} bytes>"


class Client:
    """A raw HTTP/1.1 client on one connection: send bytes, read responses one by one."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("connection closed by the server")
        self.buf += data

    def response(self, head_request: bool = False) -> Response:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._fill()
        head = bytes(self.buf[:end])
        del self.buf[:end + 4]
        lines = head.split(b"\r\n")
        version, status, _ = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode().strip().lower()] = value.decode().strip()
        code = int(status)
        length = 0 if head_request or code < 200 else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            self._fill()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return Response(code, headers, body, head)

    def request(self, data: bytes, head_request: bool = False) -> Response:
        self.send(data)
        return self.response(head_request)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True once the server has closed (FIN or reset) with nothing more to read."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


# ------------------------------------------------------------------------------ fixtures

class Site:
    def __init__(self, root: str, big_digest: str, secret: bytes) -> None:
        self.root = root
        self.big_digest = big_digest
        self.secret = secret


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("site")
    root = base / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello file\n")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<p>index</p>\n")
    (root / "sub" / "deep.txt").write_bytes(b"deep\n")
    (root / "empty").mkdir()
    (root / "zero.bin").write_bytes(b"")
    big = os.urandom(BIG_SIZE)
    (root / "big.bin").write_bytes(big)
    secret = b"TOP SECRET " + os.urandom(8).hex().encode()
    (base / "secret.txt").write_bytes(secret)
    os.symlink(base / "secret.txt", root / "link.txt")          # leads out of the root
    os.symlink(root / "hello.txt", root / "inside-link.txt")    # stays inside: fine
    os.mkfifo(root / "fifo")
    return Site(str(root), hashlib.sha256(big).hexdigest(), secret)


@pytest.fixture(params=rungs.names())
def server(request: pytest.FixtureRequest, site: Site):  # noqa: ANN201 - a generator
    name = request.param
    why = rungs.reason(name)
    if why is not None:
        pytest.skip(f"rung {name} unavailable here: {why}")
    srv = serve(make_factory("http", root=site.root), "127.0.0.1", 0, model=name)
    try:
        yield srv
    finally:
        srv.shutdown(5.0)


# ------------------------------------------------------------------------- conformance

def test_hello_keep_alive(server) -> None:
    with Client(server.port) as c:
        for _ in range(5):
            r = c.request(get("/"))
            assert r.status == 200
            assert r.body == b"Hello, World!" and len(r.body) == 13
            assert r.headers["content-length"] == "13"
            assert r.headers["content-type"] == "text/plain"
            assert r.headers["date"].endswith("GMT")
            assert "connection" not in r.headers
            assert "x-worker-pid" not in r.headers
        r = c.request(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", head_request=True)
        assert r.status == 200 and r.headers["content-length"] == "13" and r.body == b""
        assert c.request(get("/?q=1")).body == HELLO_BODY
        assert not c.at_eof(0.2)


def test_standard_client(server, site: Site) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"Hello, World!")
        sock = conn.sock
        conn.request("POST", "/echo", body=b"x" * 5000,
                     headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"x" * 5000)
        conn.request("GET", "/static/hello.txt")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"hello file\n")
        assert r.getheader("Content-Type") == "text/plain"
        assert r.getheader("Last-Modified", "").endswith("GMT")
        assert conn.sock is sock  # all on one kept-alive connection
    finally:
        conn.close()


def test_pipelining_in_order(server) -> None:
    reqs = []
    for i in range(10):
        if i % 3 == 0:
            reqs.append(get("/"))
        elif i % 3 == 1:
            reqs.append(post("/echo", f"body-{i}".encode()))
        else:
            reqs.append(get("/static/hello.txt"))
    with Client(server.port) as c:
        c.send(b"".join(reqs))  # one write: ten requests
        for i in range(10):
            r = c.response()
            assert r.status == 200
            expected = (HELLO_BODY, f"body-{i}".encode(), b"hello file\n")[i % 3]
            assert r.body == expected, i
        assert not c.at_eof(0.2)


def test_pipelining_behind_a_streaming_file(server, site: Site) -> None:
    """Responses queued behind an 8 MiB file still come out in request order."""
    with Client(server.port) as c:
        c.send(get("/static/big.bin") + get("/") + post("/echo", b"after") +
               get("/static/big.bin") + get("/static/hello.txt"))
        r = c.response()
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == site.big_digest
        assert c.response().body == HELLO_BODY
        assert c.response().body == b"after"
        r = c.response()
        assert hashlib.sha256(r.body).hexdigest() == site.big_digest
        assert c.response().body == b"hello file\n"


def test_chunked_request_body(server) -> None:
    with Client(server.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(b"5\r\nhello\r\n")
        time.sleep(0.05)
        c.send(b"1;ext=1\r\n \r\n")  # a chunk extension
        time.sleep(0.05)
        c.send(b"5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.body == b"hello world"
        assert r.headers["content-length"] == "11"
        big = os.urandom(300_000)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 7000]), big[i:i + 7000])
                          for i in range(0, len(big), 7000))
        r = c.request(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + chunks + b"0\r\n\r\n")
        assert r.status == 200 and r.body == big


def test_post_content_length(server) -> None:
    body = os.urandom(100_000)
    with Client(server.port) as c:
        r = c.request(post("/echo", body))
        assert r.status == 200 and r.body == body
        assert r.headers["content-type"] == "application/octet-stream"
        r = c.request(post("/echo", b""))
        assert r.status == 200 and r.body == b""
        assert c.request(get("/")).body == HELLO_BODY  # still in sync


def test_expect_100_continue(server) -> None:
    with Client(server.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
               b"Expect: 100-continue\r\n\r\n")
        interim = c.response()
        assert interim.status == 100
        c.send(b"data")
        r = c.response()
        assert r.status == 200 and r.body == b"data"


def test_malformed_request_gets_400_and_close(server) -> None:
    with Client(server.port) as bystander:
        assert bystander.request(get("/")).status == 200
        for garbage in (b"BLAH\x01 / nonsense\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header Name: x\r\n\r\n",
                        b"GET / HTTP/9.9\r\n\r\n",
                        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                        b"GET nothing HTTP/1.1\r\nHost: t\r\n\r\n"):
            with Client(server.port) as c:
                # A good request first: its answer is not lost, then 400, then the close.
                c.send(get("/") + garbage)
                assert c.response().status == 200
                r = c.response()
                assert r.status == 400, garbage
                assert r.headers["connection"] == "close"
                assert c.at_eof(), garbage
        # the other connection is unaffected
        assert bystander.request(get("/")).body == HELLO_BODY


def test_oversized_headers_get_431_and_close(server) -> None:
    cases = [
        # one header line too long
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
        # many short headers adding up past 16 KiB
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60)
                                         for i in range(400)) + b"\r\n",
    ]
    for data in cases:
        with Client(server.port) as c:
            c.send(data)
            r = c.response()
            assert r.status == 431
            assert c.at_eof()
    # a head that never ends: the server must not wait (or buffer) forever
    with Client(server.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        r = None
        try:
            for _ in range(20):
                c.send(b"b" * 4096)
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response()
        assert r.status == 431
        assert c.at_eof()
    with Client(server.port) as c:
        r = c.request(get("/" + "u" * 10_000))
        assert r.status == 414
        assert c.at_eof()
    with Client(server.port) as c:
        assert c.request(get("/")).status == 200


def test_body_too_large_gets_413_and_close(server) -> None:
    with Client(server.port) as c:
        # declared too large: refused before the body is sent
        r = c.request(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
        assert r.status == 413 and c.at_eof()
    with Client(server.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
        try:
            for _ in range(40):  # 2.5 MiB
                c.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            r = c.response()
            assert r.status == 413
        except (ConnectionResetError, EOFError):
            pass  # unread body bytes may turn the close into a reset: still refused
        assert c.at_eof()


def test_methods_and_unknown_paths(server) -> None:
    with Client(server.port) as c:
        r = c.request(b"DELETE / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"  # what / supports
        r = c.request(b"DELETE /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD, POST"  # server-wide
        r = c.request(post("/", b"x"))
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
        r = c.request(get("/echo"))
        assert r.status == 405 and r.headers["allow"] == "POST"
        r = c.request(b"PUT /static/hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        assert r.status == 405
        r = c.request(get("/nowhere"))
        assert r.status == 404
        r = c.request(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 405
        # absolute-form target
        assert c.request(get("http://t/")).body == HELLO_BODY
        # none of those closed the connection
        assert c.request(get("/")).body == HELLO_BODY
    with Client(server.port) as c:
        r = c.request(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert r.status == 405 and c.at_eof()


@pytest.mark.parametrize("path", [
    "/static/../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E%2Fsecret.txt",
    "/static/..%2fsecret.txt",
    "/static/sub/../../secret.txt",
    "/static/sub/%2e%2e/%2e%2e/secret.txt",
    "/static//../secret.txt",
    "/static/link.txt",
    "/static/%00",
    "/static/hello.txt%00.png",
    "/static/fifo",
    "/static/empty",
    "/static/nope.txt",
    "/static/",
])
def test_path_traversal_refused(server, site: Site, path: str) -> None:
    with Client(server.port) as c:
        r = c.request(get(path))
        assert r.status in (403, 404), (path, r)
        assert site.secret not in r.body
        assert c.request(get("/")).body == HELLO_BODY  # refusals keep the connection


def test_static_files_served(server) -> None:
    with Client(server.port) as c:
        assert c.request(get("/static/hello.txt")).body == b"hello file\n"
        assert c.request(get("/static/sub/deep.txt")).body == b"deep\n"
        assert c.request(get("/static/sub/./x/../deep.txt")).body == b"deep\n"
        r = c.request(get("/static/sub/"))
        assert r.body == b"<p>index</p>\n" and r.headers["content-type"] == "text/html"
        assert c.request(get("/static/inside-link.txt")).body == b"hello file\n"
        r = c.request(get("/static/zero.bin"))
        assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0"
        r = c.request(get("/static/hello.txt?v=2"))
        assert r.body == b"hello file\n"


def test_large_file_digest(server, site: Site) -> None:
    with Client(server.port) as c:
        r = c.request(b"HEAD /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n", head_request=True)
        assert r.status == 200 and int(r.headers["content-length"]) == BIG_SIZE
        r = c.request(get("/static/big.bin"))
        assert r.status == 200 and len(r.body) == BIG_SIZE
        assert hashlib.sha256(r.body).hexdigest() == site.big_digest
        assert c.request(get("/")).body == HELLO_BODY  # and the connection carries on


def test_large_file_slow_reader(server, site: Site) -> None:
    """A reader slower than the server: flow control paces the file, nothing is lost."""
    with Client(server.port, rcvbuf=32 * 1024) as c:
        c.send(get("/static/big.bin"))
        h = hashlib.sha256()
        got = 0
        head_end = -1
        data = bytearray()
        while head_end < 0:
            data += c.sock.recv(65536)
            head_end = data.find(b"\r\n\r\n")
        body = bytes(data[head_end + 4:])
        h.update(body)
        got = len(body)
        reads = 0
        while got < BIG_SIZE:
            chunk = c.sock.recv(min(16384, BIG_SIZE - got))
            assert chunk
            h.update(chunk)
            got += len(chunk)
            reads += 1
            if reads % 64 == 0:
                time.sleep(0.002)
        assert h.hexdigest() == site.big_digest


def test_http10(server) -> None:
    with Client(server.port) as c:
        r = c.request(get("/", version="1.0"))
        assert r.status == 200 and r.body == HELLO_BODY
        assert r.headers["connection"] == "close"
        assert c.at_eof()
    with Client(server.port) as c:
        r = c.request(get("/", "Connection: keep-alive\r\n", version="1.0"))
        assert r.headers["connection"] == "keep-alive"
        r = c.request(get("/static/hello.txt", "Connection: keep-alive\r\n", version="1.0"))
        assert r.body == b"hello file\n"
        assert not c.at_eof(0.2)


def test_connection_close_request(server) -> None:
    with Client(server.port) as c:
        # the request after "Connection: close" is never answered
        c.send(get("/", "Connection: close\r\n") + get("/"))
        r = c.response()
        assert r.status == 200 and r.headers["connection"] == "close"
        assert c.at_eof()
    with Client(server.port) as c:  # the same while a file streams
        c.send(get("/static/big.bin", "Connection: close\r\n"))
        r = c.response()
        assert len(r.body) == BIG_SIZE
        assert c.at_eof()


def test_half_close_after_request(server) -> None:
    with Client(server.port) as c:
        c.send(get("/") + get("/static/big.bin"))
        c.sock.shutdown(socket.SHUT_WR)
        assert c.response().body == HELLO_BODY
        assert len(c.response().body) == BIG_SIZE
        assert c.at_eof()


def test_many_connections(server) -> None:
    clients = [Client(server.port) for _ in range(50)]
    try:
        for c in clients:
            c.send(get("/"))
        for c in clients:
            assert c.response().body == HELLO_BODY
    finally:
        for c in clients:
            c.close()


# ------------------------------------------------------------------------ unit level

class FakeTransport(asyncio.Transport):
    """Records what the protocol does; never pushes back unless told to."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_flow_control_pauses_reading() -> None:
    proto = HttpProtocol(HttpConfig())
    tr = FakeTransport()
    proto.connection_made(tr)
    proto.pause_writing()
    assert tr.paused
    proto.resume_writing()
    assert not tr.paused


def test_hello_response_cached_per_second() -> None:
    cfg = HttpConfig()
    for _ in range(5):
        date = http_date()
        a, b = cfg.hello(0, False), cfg.hello(0, False)
        if http_date() is date:  # no second boundary crossed meanwhile
            break
    assert a is b  # built once per second, not per request
    assert b"\r\nDate: " + date + b"\r\n" in a
    assert a.endswith(b"\r\n\r\nHello, World!")
    assert cfg.hello(0, True) == a[:-len(HELLO_BODY)]  # HEAD: same head, no body


def test_internal_error_answers_500(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = HttpConfig()

    def broken() -> None:
        raise RuntimeError("boom")
    monkeypatch.setattr(cfg, "refresh_hello", broken)
    proto = HttpProtocol(cfg)
    tr = FakeTransport()
    proto.connection_made(tr)
    proto.data_received(get("/"))
    assert tr.out.startswith(b"HTTP/1.1 500 ")
    assert tr.closed
    proto.data_received(get("/"))  # nothing more is read from that connection
    assert tr.out.count(b"HTTP/1.1") == 1


def test_app_registry() -> None:
    assert {"echo", "discard", "lines", "http", "files"} <= set(APPS)
    assert make_factory("echo") is EchoProtocol
    assert make_factory("ioladder.apps.echo:EchoProtocol") is EchoProtocol
    factory = make_factory("http", AppOptions(workers=2))
    assert isinstance(factory(), HttpProtocol)
    assert b"X-Worker-Pid: %d" % os.getpid() in factory.hello(0, False)  # type: ignore
    with pytest.raises(ValueError):
        make_factory("nope")
    with pytest.raises(ValueError):
        make_factory("http", root="/definitely/not/here")


def _fed(*chunks: bytes) -> FakeTransport:
    proto = HttpProtocol(HttpConfig())
    tr = FakeTransport()
    proto.connection_made(tr)
    for chunk in chunks:
        proto.data_received(chunk)
    return tr


def test_endless_head_is_cut_off_early() -> None:
    # header bytes trickling in: 431 as soon as the head passes 16 KiB, not at its end
    pieces = [b"GET / HTTP/1.1\r\nX: "] + [b"a" * 1024] * 17
    tr = _fed(*pieces[:16])
    assert tr.out == b"" and not tr.closed
    tr = _fed(*pieces)
    assert tr.out.startswith(b"HTTP/1.1 431 ") and tr.closed
    # the oversized head starts in the same feed as complete requests
    tr = _fed(get("/") * 2 + b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000)
    assert tr.out.count(b"HTTP/1.1 200 OK") == 2
    assert tr.out.endswith(b"431 Request Header Fields Too Large\n") and tr.closed


def test_big_body_then_partial_head_is_not_431() -> None:
    body = b"q" * 100_000
    tr = _fed(post("/echo", body) + b"GET / HTTP/1.1\r\nHo", b"st: t\r\n\r\n")
    assert b" 431 " not in tr.out and not tr.closed
    assert tr.out.count(b"HTTP/1.1 200 OK") == 2 and tr.out.endswith(HELLO_BODY)


def test_shutdown_mid_file_delivers_everything(server, site: Site) -> None:
    """Server.shutdown() while a slow client is mid-way through 8 MiB: every byte arrives,
    then the connection closes."""
    import threading
    with Client(server.port, rcvbuf=32 * 1024) as c:
        c.send(get("/static/big.bin"))
        while len(c.buf) < 128 * 1024:
            c._fill()
        done = threading.Event()
        t = threading.Thread(target=lambda: (server.shutdown(15.0), done.set()), daemon=True)
        t.start()
        time.sleep(0.2)
        assert not done.is_set()  # shutdown waits for the response in flight
        r = c.response()
        assert len(r.body) == BIG_SIZE
        assert hashlib.sha256(r.body).hexdigest() == site.big_digest
        assert c.at_eof()
        t.join(15.0)
        assert done.is_set()


def test_deep_pipeline_behind_a_file(server, site: Site) -> None:
    """More requests queued behind a streaming file than the app keeps before it pauses
    reading: all are answered, in order."""
    n = 3 * 64
    with Client(server.port, rcvbuf=64 * 1024) as c:
        c.send(get("/static/big.bin") + b"".join(post("/echo", b"#%d" % i) for i in range(n)))
        r = c.response()
        assert hashlib.sha256(r.body).hexdigest() == site.big_digest
        for i in range(n):
            assert c.response().body == b"#%d" % i


def test_upgrade_request_answered_then_closed(server) -> None:
    with Client(server.port) as c:
        r = c.request(get("/", "Connection: Upgrade\r\nUpgrade: websocket\r\n"))
        assert r.status == 200 and r.body == HELLO_BODY
        assert r.headers["connection"] == "close"
        assert c.at_eof()


def trickle_head(client: Client, read_timeout: float) -> tuple[bytes, float]:
    """Send a request head a line every 50 ms (at most 40 lines, until the server closes),
    then read to the end: (what the server answered, seconds since the first line)."""
    start = time.monotonic()
    for i in range(40):
        try:
            client.send(b"GET / HTTP/1.1\r\n" if i == 0 else b"X-%d: y\r\n" % i)
        except OSError:
            break  # the server closed: its answer is queued for us
        time.sleep(0.05)
    client.sock.settimeout(read_timeout)
    answer = b""
    try:
        while chunk := client.sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer, time.monotonic() - start


@pytest.mark.parametrize("rung", rungs.names())
def test_slowloris_head_gets_408_after_header_timeout(rung: str) -> None:
    # A head trickled a line at a time: every piece resets the idle timeout, so only a bound
    # on the whole head (header_timeout) ends it; another connection is unaffected.
    if rungs.reason(rung) is not None:
        pytest.skip(f"rung {rung} unavailable here: {rungs.reason(rung)}")
    srv = serve(HttpConfig(header_timeout=0.4), "127.0.0.1", 0, model=rung, idle_timeout=5.0)
    try:
        with Client(srv.port) as slow, Client(srv.port) as fine:
            answer, took = trickle_head(slow, read_timeout=2.0)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
            assert b"Connection: close" in answer
            assert 0.4 <= took < 1.5, took
            assert fine.request(get("/")).body == HELLO_BODY
    finally:
        srv.shutdown(5.0)


def test_header_timeout_spares_slow_but_complete_requests_and_idle_keep_alive() -> None:
    cfg = HttpConfig(header_timeout=0.2)
    proto = HttpProtocol(cfg)
    tr = FakeTransport()
    proto.connection_made(tr)
    for _ in range(3):  # each head in two feeds, well within the timeout; idle in between
        proto.data_received(b"GET / HTTP/1.1\r\nHo")
        proto.data_received(b"st: t\r\n\r\n")
        time.sleep(0.15)
    assert tr.out.count(b"HTTP/1.1 200 OK") == 3 and not tr.closed
    proto.data_received(b"GET / HTTP/1.1\r\n")  # a head begun, then too slow
    time.sleep(0.25)
    proto.data_received(b"Host: t\r\n")
    assert tr.out.endswith(b"408 Request Timeout\n") and tr.closed
    with pytest.raises(ValueError):
        HttpConfig(header_timeout=0)


def test_header_timeout_option_of_the_builders() -> None:
    from ioladder.apps import AppOptions
    from ioladder.apps.files import build_files
    from ioladder.apps.http import DEFAULT_HEADER_TIMEOUT, build_http

    for build in (build_http, build_files):
        assert build(AppOptions()).header_timeout == DEFAULT_HEADER_TIMEOUT
        assert build(AppOptions(header_timeout=0.5)).header_timeout == 0.5
        assert build(AppOptions(header_timeout=0)).header_timeout == float("inf")  # no limit
        with pytest.raises(ValueError):
            build(AppOptions(header_timeout=-1.0))


@contextlib.contextmanager
def serve_cli(*args: str) -> Iterator[int]:
    """``ioladder serve --app http --model epoll --port 0 *args`` in a child process: yields
    its port; at the end SIGTERM, which must make it exit 0 within 20 s."""
    proc = subprocess.Popen([sys.executable, "-m", "ioladder", "serve", "--app", "http",
                             "--model", "epoll", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+) ", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield int(m.group(1))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_serve_cli_rejects_negative_timeouts() -> None:
    for flag in ("--header-timeout", "--idle-timeout"):
        bad = subprocess.run([sys.executable, "-m", "ioladder", "serve", "--app", "http",
                              flag, "-1", "--port", "0"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and flag in bad.stderr, (flag, bad.stderr)


def test_serve_cli_header_timeout_ends_a_trickled_head_with_408() -> None:
    with serve_cli("--header-timeout", "0.3") as port, Client(port) as slow:
        answer, took = trickle_head(slow, read_timeout=5.0)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert 0.3 <= took < 3.0, took


def test_serve_cli_idle_timeout_of_the_http_apps() -> None:
    from ioladder.cli import HTTP_IDLE_TIMEOUT, serve_idle_timeout

    assert serve_idle_timeout("http", None) == serve_idle_timeout("files", None) == HTTP_IDLE_TIMEOUT
    assert serve_idle_timeout("echo", None) is None  # raw TCP apps: none unless asked
    assert serve_idle_timeout("http", 0) is None and serve_idle_timeout("echo", 2.5) == 2.5
    # A head begun and then silent (header_timeout is checked as bytes arrive): the idle
    # timeout ends it, and a busy keep-alive connection beside it is spared.
    with serve_cli("--idle-timeout", "0.5") as port, Client(port) as silent, \
            Client(port) as busy:
        silent.send(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        silent.sock.settimeout(5.0)
        while time.monotonic() - start < 1.0:
            assert busy.request(get("/")).body == HELLO_BODY
            time.sleep(0.1)
        try:
            rest = silent.sock.recv(65536)
        except ConnectionResetError:
            rest = b""
        assert rest == b"" and time.monotonic() - start < 4.0
        assert busy.request(get("/")).body == HELLO_BODY
