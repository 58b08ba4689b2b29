"""The ``files`` app (a directory over HTTP/1.1) on every rung, and the zero-copy hook contract
(``transport.sendfile_nowait(file, offset, count) -> bool``) as the app uses it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from typing import Any

import pytest

from ioladder import rungs, serve
from ioladder.apps import AppOptions, make_factory
from ioladder.apps.files import make_files_factory
from ioladder.apps.http import FILE_CHUNK, HttpConfig, HttpProtocol

TIMEOUT = 20.0
BIG = 3 * FILE_CHUNK + 12345  # several chunks and a ragged end


def _recv_response(sock: socket.socket, buf: bytearray, head_only: bool = False
                   ) -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(1 << 20)
        if not data:
            raise EOFError
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[:end + 4]
    headers = {k.decode().lower(): v.decode().strip()
               for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", 0))
    while len(buf) < length:
        data = sock.recv(1 << 20)
        if not data:
            raise EOFError
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return int(lines[0].split()[1]), headers, body


def fetch(port: int, *paths: str, method: str = "GET") -> list[tuple[int, dict[str, str], bytes]]:
    """Request ``paths`` pipelined on one connection; the responses in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(f"{method} {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                              for p in paths))
        buf = bytearray()
        return [_recv_response(sock, buf, method == "HEAD") for _ in paths]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("tree")
    root = base / "root"
    (root / "docs" / "deeper").mkdir(parents=True)
    (root / "index.html").write_bytes(b"<h1>root</h1>\n")
    (root / "docs" / "a.txt").write_bytes(b"alpha\n")
    (root / "docs" / "deeper" / "b.json").write_bytes(b'{"b": 1}\n')
    (root / "name with space.txt").write_bytes(b"spaced\n")
    data = os.urandom(BIG)
    (root / "blob.bin").write_bytes(data)
    (base / "private.txt").write_bytes(b"private")
    return root, hashlib.sha256(data).hexdigest()


@pytest.fixture(params=rungs.names())
def files_server(request: pytest.FixtureRequest, tree: Any):  # noqa: ANN201 - a generator
    name = request.param
    why = rungs.reason(name)
    if why is not None:
        pytest.skip(f"rung {name} unavailable here: {why}")
    root, _ = tree
    srv = serve(make_factory("files", AppOptions(root=str(root))), "127.0.0.1", 0, model=name)
    try:
        yield srv
    finally:
        srv.shutdown(5.0)


def test_serves_the_tree(files_server, tree: Any) -> None:
    _, digest = tree
    out = fetch(files_server.port, "/", "/docs/a.txt", "/docs/deeper/b.json",
                "/name%20with%20space.txt", "/blob.bin", "/index.html?x=1")
    assert [o[0] for o in out] == [200] * 6
    assert out[0][2] == b"<h1>root</h1>\n" and out[0][1]["content-type"] == "text/html"
    assert out[1][2] == b"alpha\n"
    assert out[2][1]["content-type"] == "application/json"
    assert out[3][2] == b"spaced\n"
    assert hashlib.sha256(out[4][2]).hexdigest() == digest
    assert out[5][2] == b"<h1>root</h1>\n"


def test_head_requests(files_server) -> None:
    out = fetch(files_server.port, "/blob.bin", "/docs/a.txt", method="HEAD")
    assert out[0][0] == 200 and int(out[0][1]["content-length"]) == BIG and out[0][2] == b""
    assert out[1][1]["content-length"] == "6"


def test_refusals(files_server) -> None:
    out = fetch(files_server.port, "/../private.txt", "/docs/../../private.txt",
                "/%2e%2e/private.txt", "/docs/missing.txt", "/docs", "/echo", "/static/a.txt")
    statuses = [o[0] for o in out]
    assert statuses[:3] == [403, 403, 403]
    assert statuses[3:] == [404, 404, 404, 404]  # /docs has no index.html
    assert all(b"private" not in o[2] for o in out)
    with socket.create_connection(("127.0.0.1", files_server.port), timeout=TIMEOUT) as s:
        s.sendall(b"POST /docs/a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
        status, headers, _ = _recv_response(s, bytearray())
        assert status == 405 and headers["allow"] == "GET, HEAD"


def test_files_default_root_is_cwd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "here.txt").write_bytes(b"here\n")
    monkeypatch.chdir(tmp_path)
    srv = serve(make_factory("files"), "127.0.0.1", 0, model="select")
    try:
        assert fetch(srv.port, "/here.txt")[0][2] == b"here\n"
    finally:
        srv.shutdown(5.0)


# ------------------------------------------------------------- the zero-copy hook contract

class RecordingTransport(asyncio.Transport):
    """A transport double: records writes and hook calls; ``accept_sendfile`` decides what
    ``sendfile_nowait`` answers."""

    def __init__(self, accept_sendfile: bool) -> None:
        super().__init__()
        self.accept_sendfile = accept_sendfile
        self.log: list[tuple[str, Any]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.log.append(("write", bytes(data)))

    def sendfile_nowait(self, file: Any, offset: int, count: int) -> bool:
        self.log.append(("sendfile", (file, offset, count)))
        return self.accept_sendfile

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _drive(tree: Any, accept: bool, requests: bytes) -> tuple[RecordingTransport, HttpProtocol]:
    root, _ = tree
    proto = HttpProtocol(make_files_factory(str(root)))
    tr = RecordingTransport(accept)
    proto.connection_made(tr)
    proto.data_received(requests)
    return tr, proto


def test_hook_used_when_the_transport_offers_it(tree: Any) -> None:
    root, _ = tree
    tr, _ = _drive(tree, True, b"GET /blob.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                               b"GET /docs/a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    kinds = [k for k, _ in tr.log]
    # the head, then the whole body handed over, then the next response: in order
    assert kinds[:2] == ["write", "sendfile"]
    head = tr.log[0][1]
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: %d\r\n" % BIG in head
    file, offset, count = tr.log[1][1]
    assert (offset, count) == (0, BIG)
    assert os.path.samefile(f"/proc/self/fd/{file.fileno()}", root / "blob.bin")
    assert not file.closed  # the transport owns it now
    file.close()
    # the small file goes through the hook too; no body bytes were written by the app
    assert kinds == ["write", "sendfile", "write", "sendfile"]
    tr.log[3][1][0].close()


def test_hook_refused_falls_back_to_chunks(tree: Any) -> None:
    _, digest = tree
    tr, proto = _drive(tree, False, b"GET /blob.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                                    b"GET /docs/a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    writes = [d for k, d in tr.log if k == "write"]
    sendfiles = [d for k, d in tr.log if k == "sendfile"]
    assert len(sendfiles) == 2
    stream = b"".join(writes)
    first_end = stream.index(b"\r\n\r\n") + 4
    assert hashlib.sha256(stream[first_end:first_end + BIG]).hexdigest() == digest
    assert stream[first_end + BIG:].startswith(b"HTTP/1.1 200 OK")
    assert stream.endswith(b"alpha\n")
    assert all(len(w) <= FILE_CHUNK for w in writes)  # never the whole file at once
    assert all(f.closed for f, _, _ in sendfiles)  # the app closed what it kept


def test_head_never_uses_the_hook(tree: Any) -> None:
    tr, _ = _drive(tree, True, b"HEAD /blob.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    assert [k for k, _ in tr.log] == ["write"]


class _HookingTransport:
    """Wraps a real rung transport and adds ``sendfile_nowait`` honouring the contract
    (order, flow-control accounting via write(), ownership) without zero-copy: it stands in for
    a rung that has the hook, so the app's side is exercised over a real socket."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def sendfile_nowait(self, file: Any, offset: int, count: int) -> bool:
        self.calls += 1
        with file:
            self._inner.write(os.pread(file.fileno(), count, offset))
        return True


def test_hook_over_a_real_socket(tree: Any) -> None:
    root, digest = tree
    cfg = make_files_factory(str(root))
    seen: list[_HookingTransport] = []

    class Hooked(HttpProtocol):
        __slots__ = ()

        def connection_made(self, transport: Any) -> None:
            wrapped = _HookingTransport(transport)
            seen.append(wrapped)
            super().connection_made(wrapped)

    srv = serve(lambda: Hooked(cfg), "127.0.0.1", 0, model="epoll")
    try:
        out = fetch(srv.port, "/blob.bin", "/docs/a.txt", "/blob.bin")
        assert hashlib.sha256(out[0][2]).hexdigest() == digest
        assert out[1][2] == b"alpha\n"
        assert hashlib.sha256(out[2][2]).hexdigest() == digest
        assert seen[0].calls == 3
    finally:
        srv.shutdown(5.0)


def test_config_validation(tmp_path: Any) -> None:
    with pytest.raises(ValueError):
        HttpConfig(root=tmp_path / "missing")
    with pytest.raises(ValueError):
        HttpConfig(max_line=1)


def test_zero_copy_path_where_the_rung_has_it(files_server, tree: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file body is offered to the transport's hook; rungs that support it take it (and
    the digest still matches), the others refuse and the app streams the file itself."""
    from ioladder.transport import Transport
    original = getattr(Transport, "sendfile_nowait", None)
    if original is None:
        pytest.skip("the shared transport has no sendfile_nowait yet")
    answers: list[bool] = []

    def spy(self: Any, file: Any, offset: int = 0, count: int | None = None) -> bool:
        answers.append(original(self, file, offset, count))
        return answers[-1]
    monkeypatch.setattr(Transport, "sendfile_nowait", spy)
    _, digest = tree
    out = fetch(files_server.port, "/blob.bin", "/docs/a.txt", "/blob.bin")
    assert hashlib.sha256(out[0][2]).hexdigest() == digest == hashlib.sha256(out[2][2]).hexdigest()
    assert out[1][2] == b"alpha\n"
    supported = getattr(files_server.rung, "supports_sendfile", False)
    assert answers == [supported] * 3
