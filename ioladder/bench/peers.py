"""The peers: echo servers written the way each framework's users write them.

``python -m ioladder.bench.peers --peer NAME [--host 127.0.0.1] [--port 0]`` serves echo until
SIGTERM or SIGINT, after printing one line ``LISTENING <port>`` (flushed) once the listener is
bound, and exits 0 after closing it.

| peer              | what it is                                                              |
|-------------------|-------------------------------------------------------------------------|
| `asyncio`         | stdlib selector event loop, an ``asyncio.Protocol`` (the ioladder echo) |
| `asyncio-streams` | stdlib selector event loop, ``start_server`` with reader/writer         |
| `uvloop`          | uvloop (libuv) event loop, the same ``asyncio.Protocol``                |
| `uvloop-streams`  | uvloop event loop, ``start_server`` with reader/writer                  |
| `aio`             | ``ioladder.aio`` loop on the completion engine, the same Protocol      |
| `aio-streams`     | ``ioladder.aio`` loop, ``start_server`` with reader/writer             |
| `trio`            | ``trio.serve_tcp``, one task per connection, ``async for`` over stream  |
| `gevent`          | ``gevent.server.StreamServer``, one greenlet per connection             |

Each is idiomatic and keeps the flow control its framework expects, so none of them can buffer
without bound against a client that stops reading: the Protocol servers are the package's own
:class:`~ioladder.apps.echo.EchoProtocol` (``pause_writing`` stops reading until
``resume_writing``), the streams servers ``await writer.drain()``, trio's ``send_all`` and
gevent's ``sendall`` block the task until the bytes are in the kernel. Every peer sets
``TCP_NODELAY`` (asyncio, uvloop and trio do it themselves; gevent is told to), listens with a
backlog of 1024 like ``ioladder serve`` (asyncio's default of 100 would drop SYNs when the load
generator connects a batch at once), raises its soft ``RLIMIT_NOFILE`` to the hard limit, and
starts with glibc's allocator settled (:func:`ioladder.allocator.settle_allocator`, as
``ioladder serve`` does for the rungs), so that the stdlib loop's 256 KiB reads cost the same
in every run.

A peer whose package is not installed is *unavailable*, never an error: :func:`reason` says
which package is missing and that ``pip install 'ioladder[bench]'`` brings it.

HTTP peers (:data:`HTTP_PEERS`, for ``ioladder bench --profile http``; nginx, the fourth, is run
by :mod:`ioladder.bench.http` itself) answer ``GET /`` with the 13-byte ``Hello, World!`` the
``http`` app sends, keep-alive, and the same ``LISTENING <port>`` line:

| peer                | what it is                                                            |
|---------------------|-----------------------------------------------------------------------|
| `uvloop-httptools`  | uvloop loop, a bare ``asyncio.Protocol`` feeding ``httptools``        |
| `asyncio-httptools` | the stdlib selector loop, the same Protocol                           |
| `uvicorn`           | uvicorn (``--loop uvloop --http httptools --no-access-log``, one      |
|                     | worker) serving a minimal ASGI app                                    |
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable

from ..allocator import settle_allocator

BACKLOG = 1024
READ_SIZE = 65536


class Peer:
    """One peer: its id, the package it needs, a one-line description and its server."""

    def __init__(self, name: str, package: str | None, description: str,
                 serve: Callable[[str, int], None]) -> None:
        self.name = name
        self.package = package
        self.description = description
        self.serve = serve


def _announce(port: int) -> None:
    print(f"LISTENING {port}", flush=True)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------ asyncio and uvloop


async def _stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()  # flow control: wait while the peer is not reading
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve_asyncio(host: str, port: int, streams: bool) -> None:
    from ioladder.apps.echo import EchoProtocol

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if streams:
        server = await asyncio.start_server(_stream_echo, host, port, backlog=BACKLOG,
                                            limit=READ_SIZE)
    else:
        server = await loop.create_server(EchoProtocol, host, port, backlog=BACKLOG)
    _announce(server.sockets[0].getsockname()[1])
    async with server:
        await stop.wait()
    # leaving `async with` closes the listener; open connections end with the loop


def _run_asyncio(streams: bool) -> Callable[[str, int], None]:
    def serve(host: str, port: int) -> None:
        loop = asyncio.SelectorEventLoop()  # the stdlib's own, on epoll here
        try:
            loop.run_until_complete(_serve_asyncio(host, port, streams))
        finally:
            loop.close()
    return serve


def _run_uvloop(streams: bool) -> Callable[[str, int], None]:
    def serve(host: str, port: int) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(_serve_asyncio(host, port, streams))
        finally:
            loop.close()
    return serve


def _run_aio(streams: bool) -> Callable[[str, int], None]:
    def serve(host: str, port: int) -> None:
        from ioladder import aio

        loop = aio.new_event_loop()
        try:
            loop.run_until_complete(_serve_asyncio(host, port, streams))
        finally:
            loop.close()
    return serve


# ------------------------------------------------------------------------------ trio


def _serve_trio(host: str, port: int) -> None:
    import trio

    async def echo(stream: trio.SocketStream) -> None:
        try:
            async for data in stream:  # receive_some until EOF
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, echo, port, host=host, backlog=BACKLOG))
                _announce(listeners[0].socket.getsockname()[1])
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


# ---------------------------------------------------------------------------- gevent


def _serve_gevent(host: str, port: int) -> None:
    import gevent
    import gevent.event
    from gevent.server import StreamServer

    def echo(sock: socket.socket, address: object) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                data = sock.recv(READ_SIZE)
                if not data:
                    break
                sock.sendall(data)  # blocks this greenlet only, until the kernel took it all
        except OSError:
            pass
        finally:
            sock.close()

    server = StreamServer((host, port), echo, backlog=BACKLOG)
    server.start()  # binds and listens (a gevent socket: accepting never blocks the hub)
    # signal callbacks run in the hub, which must not block: they only set an event
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    _announce(server.server_port)
    stop.wait()
    server.stop(timeout=1.0)


# --------------------------------------------------------------------------- registry

PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("asyncio", None, "asyncio selector loop, asyncio.Protocol echo", _run_asyncio(False)),
    Peer("asyncio-streams", None, "asyncio selector loop, streams (start_server, drain)",
         _run_asyncio(True)),
    Peer("uvloop", "uvloop", "uvloop (libuv) loop, asyncio.Protocol echo", _run_uvloop(False)),
    Peer("uvloop-streams", "uvloop", "uvloop (libuv) loop, streams (start_server, drain)",
         _run_uvloop(True)),
    Peer("aio", "ioladder.aio", "ioladder.aio loop (completion engine), asyncio.Protocol echo",
         _run_aio(False)),
    Peer("aio-streams", "ioladder.aio", "ioladder.aio loop (completion engine), streams",
         _run_aio(True)),
    Peer("trio", "trio", "trio.serve_tcp, a task per connection", _serve_trio),
    Peer("gevent", "gevent", "gevent StreamServer, a greenlet per connection", _serve_gevent),
)}


# ------------------------------------------------------------------------ HTTP peers
#
# For ``ioladder bench --profile http`` (:mod:`ioladder.bench.http`): the servers the ``http``
# app is measured beside. Each answers ``GET /`` with ``Hello, World!`` (13 bytes, text/plain,
# ``Server``/``Date``/``Content-Type``/``Content-Length`` like the app), anything else with
# 404, keeps connections alive as HTTP/1.1 asks, and pauses reading while its peer does not read.

HELLO_BODY = b"Hello, World!"


class HttpHelloProtocol(asyncio.Protocol):
    """The raw server: an ``asyncio.Protocol`` feeding ``httptools`` (the shape of uvloop's own
    HTTP benchmark server). One parser per connection; the response is prebuilt once a second."""

    _second = -1
    _responses: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._error = httptools.HttpParserError
        self._transport: asyncio.Transport | None = None
        self._url = b""

    @classmethod
    def _refresh(cls, now: int) -> None:
        import email.utils

        date = email.utils.formatdate(now, usegmt=True).encode("ascii")
        out = []
        for status, body in ((b"200 OK", HELLO_BODY), (b"404 Not Found", b"Not Found\n")):
            for conn in (b"", b"Connection: close\r\n"):
                out.append(b"HTTP/1.1 %s\r\nServer: httptools\r\nDate: %s\r\nContent-Type: "
                           b"text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                           % (status, date, len(body), conn, body))
        cls._responses = tuple(out)  # type: ignore[assignment]
        cls._second = now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._error:
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
            self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_message_complete(self) -> None:
        now = int(time.time())
        if now != HttpHelloProtocol._second:
            HttpHelloProtocol._refresh(now)
        keep = self._parser.should_keep_alive()
        found = self._url == b"/"
        transport = self._transport
        assert transport is not None
        transport.write(self._responses[(0 if found else 2) + (0 if keep else 1)])
        if not keep:
            transport.close()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def _serve_http_protocol(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(HttpHelloProtocol, host, port, backlog=BACKLOG)
    _announce(server.sockets[0].getsockname()[1])
    async with server:
        await stop.wait()


def _run_http(make_loop: Callable[[], asyncio.AbstractEventLoop]) -> Callable[[str, int], None]:
    def serve(host: str, port: int) -> None:
        loop = make_loop()
        try:
            loop.run_until_complete(_serve_http_protocol(host, port))
        finally:
            loop.close()
    return serve


def _uvloop_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


async def asgi_hello(scope: dict, receive: Callable, send: Callable) -> None:
    """The minimal ASGI app uvicorn serves: ``GET /`` -> ``Hello, World!``, else 404."""
    if scope["type"] != "http":
        return
    found = scope["path"] == "/"
    body = HELLO_BODY if found else b"Not Found\n"
    await send({"type": "http.response.start", "status": 200 if found else 404,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


#: what ``uvicorn`` is told: its fastest single-process settings, as on its command line
#: ``uvicorn ioladder.bench.peers:asgi_hello --loop uvloop --http httptools --no-access-log
#: --workers 1`` (plus ``--lifespan off --log-level warning``: nothing at start-up or per request)
UVICORN_SETTINGS = {"loop": "uvloop", "http": "httptools", "access_log": False, "workers": 1,
                    "lifespan": "off", "log_level": "warning", "backlog": BACKLOG}


def _serve_uvicorn(host: str, port: int) -> None:
    import uvicorn

    # Bind here so the port (0: ephemeral) is known before uvicorn starts; uvicorn serves on the
    # socket exactly as on one it bound itself (this is how its own workers are handed theirs).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    config = uvicorn.Config("ioladder.bench.peers:asgi_hello", host=host,
                            port=sock.getsockname()[1], **UVICORN_SETTINGS)
    _announce(sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])


HTTP_PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("uvloop-httptools", "uvloop", "uvloop loop, raw asyncio.Protocol + httptools",
         _run_http(_uvloop_loop)),
    Peer("asyncio-httptools", "httptools", "asyncio selector loop, raw asyncio.Protocol + "
         "httptools", _run_http(asyncio.SelectorEventLoop)),
    Peer("uvicorn", "uvicorn", "uvicorn (uvloop + httptools, no access log, 1 worker), "
         "minimal ASGI app", _serve_uvicorn),
)}


def http_names() -> list[str]:
    return list(HTTP_PEERS)


def names() -> list[str]:
    return list(PEERS)


def reason(name: str) -> str | None:
    """None if peer ``name`` (echo or HTTP) can run here, else why not (the missing package)."""
    peer = PEERS[name] if name in PEERS else HTTP_PEERS[name]
    if peer.package is None:
        return None
    try:
        found = importlib.util.find_spec(peer.package) is not None
    except ImportError:
        found = False
    if found and peer.package.startswith("ioladder."):
        # our own loop: usable once it offers the documented entry point
        try:
            module = importlib.import_module(peer.package)
        except Exception as exc:  # a half-built module must not stop the benchmark
            return f"{peer.package} cannot be imported: {exc}"
        if not callable(getattr(module, "new_event_loop", None)):
            return f"{peer.package} has no new_event_loop() yet"
        return None
    if found:
        return None
    if peer.package.startswith("ioladder."):
        return f"{peer.package} is not part of this build yet"
    return (f"package {peer.package!r} is not installed "
            "(pip install 'ioladder[bench]' installs every peer)")


def version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ioladder.bench.peers",
                                     description="Run one peer server (echo, or HTTP for the "
                                                 "http profile) for the benchmark.")
    parser.add_argument("--peer", required=True, choices=[*names(), *http_names()])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    why = reason(args.peer)
    if why is not None:
        print(f"peer {args.peer} unavailable: {why}", file=sys.stderr)
        return 3
    _raise_nofile()
    settle_allocator()
    (PEERS[args.peer] if args.peer in PEERS else HTTP_PEERS[args.peer]).serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
