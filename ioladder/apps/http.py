"""``http``: a small HTTP/1.1 server as an ordinary ``asyncio.Protocol`` (so it runs on every rung).

Parsing is ``httptools`` (llhttp, the parser uvicorn uses). Routes:

* ``GET /`` (and ``HEAD``): ``Hello, World!`` — 13 bytes of ``text/plain``, the benchmark route.
  Its whole response is prebuilt once per second (when the ``Date`` header changes).
* ``POST /echo``: the request body back (``Content-Length`` or chunked request bodies).
* ``GET /static/<path>`` (and ``HEAD``): a file under ``root`` — ``ioladder serve --app http
  --root DIR``; without a root every ``/static/`` path is 404. The ``files`` app serves the
  whole tree at ``/`` instead (see :mod:`ioladder.apps.files`).

Connection handling: keep-alive (HTTP/1.1 by default, HTTP/1.0 with ``Connection:
keep-alive``); pipelining, answered strictly in request order even while a file is streaming;
``Expect: 100-continue``. An ``Upgrade``/``CONNECT`` request is answered like any other (405
for CONNECT) and the connection then closes. With several worker processes every response
carries ``X-Worker-Pid`` (see :mod:`ioladder.workers`). Every limit closes only the offending
connection:

* malformed request (llhttp refuses it, or an unusable request target): ``400``, then close;
* request target over ``max_line`` bytes: ``414``, then close;
* one header line over ``max_line`` bytes or the whole head over ``max_header_bytes``: ``431``,
  then close — exactly for every complete head, and also for a head that never ends (what the
  parser holds back meanwhile stays within about twice the limit plus one receive);
* request head still incomplete ``header_timeout`` seconds (default 30) after its first byte:
  ``408``, then close — the slowloris defence the server's ``idle_timeout`` cannot give, since
  a head trickled a byte at a time moves a byte often enough. Checked as bytes arrive; a head
  that stops arriving altogether is the ``idle_timeout``'s to end;
* body over ``max_body`` (declared by ``Content-Length`` or counted while chunked): ``413``,
  then close;
* a method the server does not implement, or one the route does not allow: ``405`` with
  ``Allow``, and the connection carries on; an unknown path: ``404``, and it carries on;
* a bug in this module answers ``500`` and closes that connection; nothing else is affected.

Memory is bounded per connection: reading is paused while the peer does not read our responses
(``pause_writing``) and while too many pipelined requests wait behind a streaming file.

Static files are resolved safely: the path is percent-decoded, dot-segments are normalised,
any ``..`` that would climb above the root is refused with ``403``, the result must still lie
inside the root after resolving symlinks (``403`` otherwise), only regular files are served
(a directory serves its ``index.html``), everything else is ``404``. File bodies are never read
whole into memory:

**Zero-copy hook** — ``transport.sendfile_nowait(file, offset, count) -> bool``. An optional
transport method (the completion rungs' TransmitFile; the shared transport does not have it
yet). The app calls it, after writing the response head, when the transport has it. If it
returns True the transport has queued ``count`` bytes of ``file`` starting at ``offset``: they go
out after every byte already written and before any byte written later (Rule 2's order); they
count in ``get_write_buffer_size()`` so ``pause_writing``/``resume_writing`` work as for
``write()``; ``close()`` flushes them like buffered bytes; the transport owns ``file`` from then
on and closes it once the bytes are sent or the connection is released; if the file turns out
shorter than ``count`` the transport aborts the connection (the HTTP framing is broken). If it
returns False (it may, for instance for small counts) nothing was queued and the caller still
owns ``file``. ``file`` is a binary file
object opened for reading (``fileno()`` is what the kernel needs); the call is made in the
connection's context.

Without the hook the file is read in 256 KiB ``os.pread`` chunks and written until the
transport calls ``pause_writing``; ``resume_writing`` continues. A graceful ``Server.shutdown``
during such a stream still delivers the whole file: ``close()`` waits for the buffer to drain,
and every chunk is written from ``resume_writing`` while that flush is in progress.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import mimetypes
import os
import stat
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, parse_url

log = logging.getLogger("ioladder")

#: bytes of a header line (name + value) or of the request target before 431 / 414.
DEFAULT_MAX_LINE = 8192
#: bytes of a whole request head before 431.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
#: seconds a request head may take to arrive, from its first byte, before 408.
DEFAULT_HEADER_TIMEOUT = 30.0
#: bytes of a request body before 413.
DEFAULT_MAX_BODY = 1024 * 1024
#: bytes read from a file per chunk when the transport has no zero-copy hook.
FILE_CHUNK = 256 * 1024
#: responses waiting behind a streaming file before reading pauses.
MAX_PIPELINE = 64

HELLO_BODY = b"Hello, World!"
SERVER = b"ioladder"

_REASONS = {
    100: b"Continue", 200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
}
_STATUS = {code: b"%d %s" % (code, reason) for code, reason in _REASONS.items()}
#: the Connection header per "connection mode": 0 HTTP/1.1 keep-alive (implicit),
#: 1 keep-alive asked for explicitly (HTTP/1.0), 2 close.
_CONN = (b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n")
_KEEP, _KEEP_EXPLICIT, _CLOSE_MODE = 0, 1, 2
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CT_TEXT = b"text/plain"
_CT_OCTETS = b"application/octet-stream"
_ALLOW_ALL = b"GET, HEAD, POST"
_ALLOW_GET = b"GET, HEAD"
_ALLOW_POST = b"POST"

# request kinds (decided when the head is complete)
_K_HELLO, _K_ECHO, _K_FILE, _K_ERROR = 1, 2, 3, 4

_time = time.time
_monotonic = time.monotonic
_date_second = -1
_date_value = b""


def http_date() -> bytes:
    """The ``Date`` header value, formatted at most once per second."""
    global _date_second, _date_value
    now = int(_time())
    if now != _date_second:
        _date_value = email.utils.formatdate(now, usegmt=True).encode("ascii")
        _date_second = now
    return _date_value


class _Reject(Exception):
    """Raised inside a parser callback to answer ``status`` and close the connection."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _FileJob:
    """A file response waiting to be sent: its head, then ``size`` bytes of ``file``."""

    __slots__ = ("head", "file", "size")

    def __init__(self, head: bytes, file: Any, size: int) -> None:
        self.head = head
        self.file = file
        self.size = size


#: queue item: close the connection once everything before it is sent.
_CLOSE = object()

_mime_cache: dict[bytes, bytes] = {}


def _content_type(path: bytes) -> bytes:
    ext = os.path.splitext(path)[1].lower()
    ctype = _mime_cache.get(ext)
    if ctype is None:
        guess = mimetypes.guess_type("x" + os.fsdecode(ext))[0]
        ctype = guess.encode("ascii") if guess else _CT_OCTETS
        if len(_mime_cache) < 1024:
            _mime_cache[ext] = ctype
    return ctype


class StaticRoot:
    """Maps a URL path below a route prefix to a regular file inside ``root``, safely."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        real = os.path.realpath(os.fspath(root))
        if not os.path.isdir(real):
            raise ValueError(f"static root {os.fspath(root)!r} is not a directory")
        self.root: bytes = os.fsencode(real)
        self._inside = self.root.rstrip(b"/") + b"/"

    def _contained(self, real: bytes) -> bool:
        return real == self.root or real.startswith(self._inside)

    def open(self, target: bytes) -> tuple[int, Any, os.stat_result | None, bytes]:
        """``(200, file, stat, path)`` or ``(403 | 404, None, None, b"")`` for ``target``
        (percent-encoded, relative to the root, query already removed); ``path`` is the file
        actually opened (a directory's ``index.html``, symlinks resolved)."""
        refused = 403, None, None, b""
        missing = 404, None, None, b""
        raw = unquote_to_bytes(target)
        if b"\0" in raw:
            return missing
        parts: list[bytes] = []
        for seg in raw.split(b"/"):
            if not seg or seg == b".":
                continue
            if seg == b"..":
                if not parts:
                    return refused  # would climb above the root
                parts.pop()
                continue
            parts.append(seg)
        real = os.path.realpath(b"/".join([self.root.rstrip(b"/"), *parts]))
        if not self._contained(real):
            return refused  # a symlink that leads out of the root
        try:
            st = os.stat(real)
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(real + b"/index.html")
                if not self._contained(real):
                    return refused
                st = os.stat(real)
        except OSError:
            return missing
        if not stat.S_ISREG(st.st_mode):
            return missing
        try:
            # O_NONBLOCK: should the file be swapped for a FIFO meanwhile, open() must not hang.
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except PermissionError:
            return refused
        except OSError:
            return missing
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return missing
            return 200, open(fd, "rb", buffering=0), st, real  # noqa: SIM115 - owned by caller
        except BaseException:
            os.close(fd)
            raise


class HttpConfig:
    """What one ``http``/``files`` server does; shared by all its connections (read-only but
    for the per-second response cache)."""

    def __init__(self, *, root: str | os.PathLike[str] | None = None,
                 static_prefix: str | None = "/static/", routes: bool = True,
                 max_body: int = DEFAULT_MAX_BODY,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_line: int = DEFAULT_MAX_LINE,
                 header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
                 worker_pid: bool = False) -> None:
        if max_body < 0 or max_header_bytes < 256 or max_line < 64:
            raise ValueError("limits too small")
        if header_timeout is not None and not header_timeout > 0:
            raise ValueError("header_timeout must be > 0 or None")
        self.routes = routes
        self.static = StaticRoot(root) if root is not None else None
        self.static_prefix = (static_prefix.encode("ascii") if static_prefix is not None
                              else None)
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.max_line = max_line
        self.header_timeout = header_timeout if header_timeout is not None else float("inf")
        #: extra header lines on every response (``X-Worker-Pid`` when several workers serve).
        self.extra = b"X-Worker-Pid: %d\r\n" % os.getpid() if worker_pid else b""
        #: the prebuilt ``/`` responses (see :meth:`hello`) and when they expire (``time()``)
        self.hello_responses: tuple[bytes, ...] = ()
        self.hello_until = 0.0

    def head(self, status: int, ctype: bytes, length: int, mode: int, extra: bytes = b"") -> bytes:
        """A response head (status line and headers)."""
        return (b"HTTP/1.1 %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: %s\r\n"
                b"Content-Length: %d\r\n%s%s%s\r\n"
                % (_STATUS[status], SERVER, http_date(), ctype, length, _CONN[mode],
                   self.extra, extra))

    def hello(self, mode: int, head_only: bool) -> bytes:
        """The whole ``GET /`` (or ``HEAD /``) response, rebuilt once per second."""
        if _time() >= self.hello_until:
            self.refresh_hello()
        return self.hello_responses[2 * mode + head_only]

    def refresh_hello(self) -> None:
        now = _time()
        built = []
        for m in (_KEEP, _KEEP_EXPLICIT, _CLOSE_MODE):
            head = self.head(200, _CT_TEXT, len(HELLO_BODY), m)
            built += [head + HELLO_BODY, head]
        # responses first, then the expiry: a thread that sees the new expiry sees them too
        self.hello_responses = tuple(built)
        self.hello_until = float(int(now) + 1)

    def error(self, status: int, mode: int, head_only: bool = False, extra: bytes = b"") -> bytes:
        body = _STATUS[status] + b"\n"
        head = self.head(status, _CT_TEXT, len(body), mode, extra)
        return head if head_only else head + body

    def factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    __call__ = factory


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection.

    The hot path (a kept-alive ``GET /``) is three parser callbacks — ``on_url``, ``on_header``
    per header, ``on_message_complete`` — and one ``write`` of a prebuilt response; routing
    waits for the first body byte or the end of the message, whichever comes first.
    """

    __slots__ = (
        "cfg", "transport", "parser",
        # the request being parsed
        "url", "in_head", "head_vis", "head_raw", "last_body", "clen", "conn_hdr", "dirty",
        "kind", "head_only", "status", "allow", "target", "body", "body_len", "head_start",
        # the connection
        "stopped", "busy", "queue", "file", "f_off", "f_left", "write_paused", "reading",
        "pumping",
    )

    def __init__(self, cfg: HttpConfig) -> None:
        self.cfg = cfg
        self.transport: Any = None
        self.parser: Any = None
        self.url = b""
        self.in_head = True      # not past the current request's head (or between requests)
        self.head_vis = 0        # head bytes seen through callbacks (target + header lines)
        self.head_raw = 0        # head bytes still pending in the parser; -1: count afresh
        self.last_body = 0       # body bytes of the last request with a body (estimates only)
        self.clen = -1
        self.conn_hdr = False
        self.dirty = False       # some rarely used per-request field below was set
        self.kind = 0            # 0: not routed yet
        self.head_only = False
        self.status = 0
        self.allow = b""
        self.target = b""
        self.body: list[bytes] | None = None
        self.body_len = 0
        #: when the request being read began (monotonic), for header_timeout: 0.0 none is in
        #: progress, -1.0 one began in the current feed (timed only if that feed ends inside it)
        self.head_start = 0.0
        self.stopped = False     # no more requests are read (closing, or an error answered)
        self.busy = False        # a file is streaming: later responses wait in ``queue``
        self.queue: collections.deque[Any] = collections.deque()
        self.file: Any = None
        self.f_off = 0
        self.f_left = 0
        self.write_paused = False
        self.reading = True
        self.pumping = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        if not self.head_start:
            self.head_start = -1.0
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            # An Upgrade/CONNECT request was answered; this server speaks nothing else.
            self.stopped = True
            self._emit(_CLOSE)
            self._update_reading()
            return
        except HttpParserError as exc:
            if self.stopped:
                return  # data after a Connection: close request: ignore it
            ctx = exc.__context__
            if isinstance(ctx, _Reject):
                self._fail(ctx.status)
            elif ctx is not None:
                log.error("http: request handling failed on %r", self.transport, exc_info=ctx)
                self._fail(500)
            else:
                log.debug("http: malformed request on %r: %s", self.transport, exc)
                self._fail(400)
            return
        if self.in_head:
            if data[-1] == 10:
                # The feed ends with a complete line (usually a whole request): what llhttp
                # holds back is at most that line, reported to on_header() and checked there
                # as soon as the next line starts.
                self.head_raw = 0
            elif not self.stopped:
                self._check_partial_head(data)
            if self.head_start and not self.stopped:
                self._check_head_time()

    def eof_received(self) -> bool:
        self.stopped = True
        if self.busy:
            self.queue.append(_CLOSE)  # finish what is streaming, then close
            return True
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.busy:
            self._pump()
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        for item in self.queue:
            if type(item) is _FileJob:
                item.file.close()
        self.queue.clear()
        self.busy = False
        self.stopped = True
        self.parser = None  # the parser holds our bound methods: break the cycle

    # ------------------------------------------------------------------ parser callbacks
    def on_url(self, url: bytes) -> None:
        if self.url:
            url = self.url + url  # the target arrived in pieces
        if len(url) > self.cfg.max_line:
            raise _Reject(414)
        self.url = url
        self.head_vis = len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        cfg = self.cfg
        n = len(name) + len(value)
        self.head_vis += n + 4
        if n > cfg.max_line or self.head_vis > cfg.max_header_bytes:
            raise _Reject(431)
        ln = len(name)
        if ln == 14:
            if name.lower() == b"content-length":
                self.clen = int(value)  # llhttp has validated it
                self.dirty = True
                if self.clen > cfg.max_body:
                    raise _Reject(413)
        elif ln == 10:
            if name.lower() == b"connection":
                self.conn_hdr = True
                self.dirty = True
        elif ln == 6:
            if (name.lower() == b"expect" and value.lower() == b"100-continue"
                    and not self.busy):
                # Sent as soon as seen: a later header may still turn the request down, and
                # then a final status follows the interim one, which HTTP allows.
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.in_head = False
        self.dirty = True
        n = self.body_len + len(body)
        self.body_len = n
        if n > self.cfg.max_body:
            raise _Reject(413)
        if not self.kind:
            self._route(self.parser.get_method())
        if self.kind == _K_ECHO:
            if self.body is None:
                self.body = [body]
            else:
                self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        keep = parser.should_keep_alive()
        if (keep and not self.dirty and self.url == b"/" and not self.busy
                and parser.get_method() == b"GET" and self.cfg.routes):
            # the benchmark route: one prebuilt response, nothing else to reset
            cfg = self.cfg
            if _time() >= cfg.hello_until:
                cfg.refresh_hello()
            self.transport.write(cfg.hello_responses[0])
            self.url = b""
            self.head_raw = -1
            self.head_start = 0.0
            return
        self._respond(keep)
        self.url = b""
        self.head_raw = -1
        self.head_start = 0.0
        self.last_body = self.body_len
        self.in_head = True
        if self.dirty:
            self.dirty = False
            self.clen = -1
            self.conn_hdr = False
            self.body = None
            self.body_len = 0
        self.kind = 0

    def _respond(self, keep: bool) -> None:
        if keep and self.parser.should_upgrade():
            keep = False  # Upgrade/CONNECT: answered, then the connection closes
        mode = (_KEEP_EXPLICIT if self.conn_hdr else _KEEP) if keep else _CLOSE_MODE
        if not self.kind:
            self._route(self.parser.get_method())
        kind = self.kind
        cfg = self.cfg
        if kind == _K_HELLO:
            item: Any = cfg.hello(mode, self.head_only)
        elif kind == _K_ECHO:
            body = self.body
            data = b"" if body is None else body[0] if len(body) == 1 else b"".join(body)
            self.body = None
            head = cfg.head(200, _CT_OCTETS, len(data), mode)
            item = head + data if len(data) < 16384 else (head, data)
        elif kind == _K_FILE:
            item = self._file_response(mode)
        else:
            item = cfg.error(self.status, mode, self.head_only, self.allow)
        if self.busy:
            self._queue(item)
        else:
            self._perform(item)
        if not keep:
            self.stopped = True
            self._emit(_CLOSE)
            self._update_reading()

    # ------------------------------------------------------------------------- routing
    def _route_error(self, status: int, allow: bytes = b"", method: bytes = b"") -> None:
        self.kind = _K_ERROR
        self.status = status
        self.head_only = method == b"HEAD"
        self.allow = b"Allow: %s\r\n" % allow if allow else b""

    def _route(self, method: bytes) -> None:
        """Decide ``kind`` (and what it needs) for the current request."""
        cfg = self.cfg
        known = method in (b"GET", b"HEAD", b"POST")
        path = self.url
        if path[:1] != b"/":
            if path[:7].lower() == b"http://" or path[:8].lower() == b"https://":
                try:
                    path = parse_url(path).path or b"/"  # absolute-form (RFC 9112 3.2.2)
                except HttpParserError:
                    raise _Reject(400) from None
            elif known:
                raise _Reject(400)  # "*" or garbage: nothing here serves it
            else:
                self._route_error(405, _ALLOW_ALL, method)  # CONNECT host:port, OPTIONS *
                return
        q = path.find(b"?")
        if q >= 0:
            path = path[:q]
        is_get = method == b"GET" or method == b"HEAD"
        if cfg.routes and path == b"/":
            if is_get:
                self.kind, self.head_only = _K_HELLO, method == b"HEAD"
            else:
                self._route_error(405, _ALLOW_GET, method)
        elif cfg.routes and path == b"/echo":
            if method == b"POST":
                self.kind = _K_ECHO
            else:
                self._route_error(405, _ALLOW_POST, method)
        elif cfg.static_prefix is not None and path.startswith(cfg.static_prefix):
            if not is_get:
                self._route_error(405, _ALLOW_GET, method)
            elif cfg.static is None:
                self._route_error(404, b"", method)
            else:
                self.kind, self.head_only = _K_FILE, method == b"HEAD"
                self.target = path[len(cfg.static_prefix):]
        elif known:
            self._route_error(404, b"", method)
        else:
            self._route_error(405, _ALLOW_ALL, method)  # no such method anywhere here

    def _file_response(self, mode: int) -> Any:
        cfg = self.cfg
        assert cfg.static is not None
        try:
            status, f, st, path = cfg.static.open(self.target)
        except OSError as exc:
            log.warning("http: cannot open %r: %s", self.target, exc)
            status, f, st, path = 404, None, None, b""
        if status != 200:
            return cfg.error(status, mode, self.head_only)
        assert st is not None
        size = st.st_size
        head = cfg.head(200, _content_type(path), size, mode,
                        b"Last-Modified: %s\r\n"
                        % email.utils.formatdate(st.st_mtime, usegmt=True).encode("ascii"))
        if self.head_only or not size:
            f.close()
            return head
        return _FileJob(head, f, size)

    # ----------------------------------------------------------------- limits and errors
    def _check_partial_head(self, data: bytes) -> None:
        """The feed ended inside a request head: bound what llhttp/httptools accumulate."""
        if self.head_raw < 0:
            # A request completed in this feed, so the pending head began here: it is at most
            # what follows the last blank line (the end of the previous head) less the
            # previous request's body.
            end = data.rfind(b"\r\n\r\n")
            start = end + 4 if end >= 0 else 0
            self.head_raw = max(0, len(data) - start - self.last_body)
        else:
            self.head_raw += len(data)  # every byte of this feed belongs to the head
        if self.head_raw > self.cfg.max_header_bytes:
            self._fail(431)

    def _check_head_time(self) -> None:
        """The feed ended inside a request head: 408 once the head has taken longer than
        ``header_timeout`` (the slowloris defence: a head trickled a byte at a time resets the
        server's idle timeout with every byte). Checked as bytes arrive, so a head that stops
        arriving altogether is left to the idle timeout."""
        now = _monotonic()
        if self.head_start < 0:
            self.head_start = now
        elif now - self.head_start > self.cfg.header_timeout:
            self._fail(408)

    def _fail(self, status: int) -> None:
        """Answer ``status`` after every earlier response, then close."""
        self.stopped = True
        self._emit(self.cfg.error(status, _CLOSE_MODE))
        self._emit(_CLOSE)
        self._update_reading()

    # ------------------------------------------------------------------- sending, in order
    def _emit(self, item: Any) -> None:
        if self.busy:
            self._queue(item)
        else:
            self._perform(item)

    def _queue(self, item: Any) -> None:
        self.queue.append(item)
        if len(self.queue) >= MAX_PIPELINE:
            self._update_reading()

    def _perform(self, item: Any) -> None:
        """Send ``item`` now (nothing is streaming)."""
        tr = self.transport
        t = type(item)
        if t is bytes:
            tr.write(item)
        elif t is tuple:
            for part in item:
                tr.write(part)
        elif t is _FileJob:
            tr.write(item.head)
            sendfile = getattr(tr, "sendfile_nowait", None)
            if sendfile is not None and sendfile(item.file, 0, item.size):
                return  # the transport owns the file now
            self.file = item.file
            self.f_off = 0
            self.f_left = item.size
            self.busy = True
            self._pump()
        elif item is _CLOSE:
            tr.close()

    def _pump(self) -> None:
        """Stream the current file until the transport pushes back, then what queued up."""
        if self.pumping:
            return
        self.pumping = True
        tr = self.transport
        try:
            while True:
                f = self.file
                if f is not None:
                    fd = f.fileno()
                    while self.f_left and not self.write_paused:
                        chunk = os.pread(fd, min(FILE_CHUNK, self.f_left), self.f_off)
                        if not chunk:
                            raise OSError(f"file shrank while sending it ({self.f_left} bytes "
                                          f"missing)")
                        self.f_off += len(chunk)
                        self.f_left -= len(chunk)
                        tr.write(chunk)
                        if tr.is_closing() and not tr.get_write_buffer_size():
                            # aborted under us (a closing transport that is still flushing
                            # always holds what we just wrote)
                            self.f_left = 0
                            self.queue.clear()
                    if self.f_left:
                        return  # resume_writing() carries on
                    self.file = None
                    f.close()
                self.busy = False
                if not self.queue:
                    break
                self._perform(self.queue.popleft())  # may start the next file: loop again
        except OSError as exc:
            log.warning("http: file send failed on %r: %s", tr, exc)
            tr.abort()
        finally:
            self.pumping = False
        self._update_reading()

    def _update_reading(self) -> None:
        want = not (self.write_paused or self.stopped or len(self.queue) >= MAX_PIPELINE)
        if want != self.reading and self.transport is not None:
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()


def header_timeout_option(options: Any) -> float | None:
    """``AppOptions.header_timeout`` as :class:`HttpConfig` takes it (None there: no limit)."""
    value = options.header_timeout
    if value is None:
        return DEFAULT_HEADER_TIMEOUT
    return value if value != 0 else None


def build_http(options: Any) -> HttpConfig:
    """The ``http`` app: ``/``, ``/echo`` and ``/static/`` under ``options.root`` (if given)."""
    return HttpConfig(root=options.root, static_prefix="/static/", routes=True,
                      worker_pid=options.workers > 1,
                      header_timeout=header_timeout_option(options))


def make_http_factory(root: str | os.PathLike[str] | None = None, **kwargs: Any) -> HttpConfig:
    """An ``http`` protocol factory with explicit settings (see :class:`HttpConfig`)."""
    return HttpConfig(root=root, **kwargs)


__all__ = ["HttpConfig", "HttpProtocol", "StaticRoot", "build_http", "header_timeout_option",
           "http_date", "make_http_factory", "FILE_CHUNK", "HELLO_BODY"]
