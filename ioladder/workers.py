"""Multi-core serving: N worker processes sharing one port with ``SO_REUSEPORT``.

``serve_workers(app, host, port, workers=N, model=...)`` (or ``ioladder serve --workers N``)
starts N *fresh* Python processes (``subprocess``: fork immediately followed by exec, never a
bare fork of a process that may already run threads). Each worker builds the app itself, binds
its own listening socket with ``SO_REUSEPORT`` and runs its own rung instance (its own threads,
its own epoll set or ring), so the kernel spreads incoming connections across the workers.

The parent only supervises:

* it holds the port: a socket bound with ``SO_REUSEPORT`` but never listening (so the kernel
  never hands it a connection) keeps the port reserved while workers come and go, and turns
  ``port=0`` into one concrete port for all of them;
* a worker that dies unexpectedly is logged and restarted; consecutive quick deaths back off
  exponentially (``RESTART_DELAY`` doubling up to ``MAX_RESTART_DELAY``), so a crash loop does
  not spin. Connections still waiting in a dead worker's accept queue are lost with it (the
  kernel resets them): that is ``SO_REUSEPORT``'s nature;
* :meth:`WorkerPool.shutdown` (SIGINT/SIGTERM to the ``ioladder serve`` parent) sends SIGTERM to
  every worker; each runs ``Server.shutdown`` — stop accepting, close every connection
  gracefully after its buffered bytes are sent, the same no-byte-lost guarantee as one process
  — and exits 0; stragglers are killed after ``shutdown_timeout`` plus a grace period.

Workers run in their own session, so a terminal's Ctrl-C reaches only the parent, which
coordinates. Each worker also watches a pipe from the parent ("lifeline") and shuts down
gracefully if the parent disappears, so killing the parent never leaves orphans serving.

With one worker (the default) nothing here is used: ``serve`` runs in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import rungs
from .apps import AppOptions, make_factory
from .server import Serving

log = logging.getLogger("ioladder")

#: first restart delay after a quick death; doubles per consecutive quick death.
RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 30.0
#: a worker that served this long before dying resets the back-off.
STABLE_AFTER = 10.0
#: how long a worker may take to start serving before it is killed (and retried).
START_TIMEOUT = 30.0
#: extra time, beyond the graceful shutdown timeout, before a worker is killed.
KILL_GRACE = 5.0


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker after ``quick_deaths`` consecutive quick
    deaths (1 for the first)."""
    return min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** max(0, quick_deaths - 1))


def app_spec(app: str | Callable[..., Any]) -> str:
    """``app`` as something a fresh process can import: an app id, ``"module:attr"``, or an
    importable module-level protocol factory (a class or function) turned into one."""
    if isinstance(app, str):
        return app
    module = getattr(app, "__module__", None)
    qualname = getattr(app, "__qualname__", None)
    if module and qualname and "<" not in qualname and module != "__main__":
        spec = f"{module}:{qualname}"
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            obj = None
        if obj is app:
            return spec
    raise TypeError(
        f"workers > 1 need a protocol factory a new process can import: an app id, "
        f"'module:attr', or a module-level class/function (not {app!r})")


def _reserve(host: str | None, port: int) -> list[socket.socket]:
    """Bind (never listen) one ``SO_REUSEPORT`` socket per address: the port stays ours."""
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr[:1] + (port,) + addr[2:])
            port = sock.getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class _Slot:
    """One worker position: the process currently filling it and its restart history."""

    __slots__ = ("index", "proc", "ready_fd", "ready", "started", "quick_deaths", "restart_at",
                 "error")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_fd: int | None = None
        self.ready = False
        self.started = 0.0
        self.quick_deaths = 0
        self.restart_at: float | None = None
        self.error: str | None = None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class WorkerPool(Serving):
    """N supervised worker processes serving one app on one port (see the module docstring).

    The interface follows :class:`~ioladder.server.Server`: ``port``, ``addresses``, ``model``,
    ``shutdown(timeout)``, ``serve_forever()``, ``wait_closed()``, context manager.
    """

    def __init__(self, app: str | Callable[..., Any], host: str | None = "127.0.0.1",
                 port: int = 0, *, workers: int, model: str = "auto",
                 app_options: AppOptions | None = None, backlog: int = 1024,
                 max_connections: int | None = None, idle_timeout: float | None = None,
                 linger: float | None = None, shutdown_timeout: float = 10.0,
                 start_timeout: float = START_TIMEOUT, log_level: int | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.app = app_spec(app)
        options = app_options if app_options is not None else AppOptions()
        root = os.path.abspath(options.root) if options.root is not None else None
        self.options = dataclasses.replace(options, root=root, workers=workers)
        make_factory(self.app, self.options)  # fail here, not N times in the workers
        #: the rung every worker runs ("auto" is resolved once, here)
        self.model: str = rungs.resolve(model).name
        self.workers = workers
        self.host = host
        self.shutdown_timeout = shutdown_timeout
        self.start_timeout = start_timeout
        self._server_kwargs = {"backlog": backlog, "max_connections": max_connections,
                               "idle_timeout": idle_timeout, "linger": linger}
        self._log_level = log_level if log_level is not None else log.getEffectiveLevel()
        self._reserved = _reserve(host, port)
        self._port: int = self._reserved[0].getsockname()[1]
        self._slots = [_Slot(i) for i in range(workers)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # The lifeline: workers read it; EOF means the parent is gone.
        self._life_r, self._life_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        #: restarts performed so far
        self.restarts = 0
        self.clean_exit = True

    # ------------------------------------------------------------------------- public
    @property
    def port(self) -> int:
        return self._port

    @property
    def addresses(self) -> list[Any]:
        return [s.getsockname() for s in self._reserved if s.fileno() != -1]

    @property
    def pids(self) -> list[int]:
        """Pids of the workers currently serving (started and ready)."""
        with self._lock:
            return [s.proc.pid for s in self._slots
                    if s.proc is not None and s.ready and s.proc.returncode is None]

    def start(self) -> WorkerPool:
        """Start every worker and wait until all serve; raise (after cleaning up) if one cannot
        start."""
        try:
            with self._lock:
                for slot in self._slots:
                    self._spawn(slot)
            deadline = time.monotonic() + self.start_timeout
            while True:
                self._poll(0.05, starting=True)
                with self._lock:
                    failed = [s for s in self._slots if s.error is not None]
                    if failed:
                        raise RuntimeError(f"worker {failed[0].index} failed to start: "
                                           f"{failed[0].error}")
                    if all(s.ready for s in self._slots):
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers not serving after {self.start_timeout:g} s")
        except BaseException:
            self._stop_workers(1.0)
            self._cleanup()
            self._done.set()
            raise
        self._thread = threading.Thread(target=self._supervise, name="ioladder-supervisor",
                                        daemon=True)
        self._thread.start()
        log.info("serving on %s with rung %s in %d worker processes %s", self.addresses,
                 self.model, self.workers, self.pids)
        return self

    def shutdown(self, timeout: float | None = None) -> bool:
        """Shut every worker down gracefully (each its own ``Server.shutdown(timeout)``); kill
        any still running ``KILL_GRACE`` seconds later. True if all exited by themselves."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        with self._shutdown_lock:
            if self._done.is_set():
                return self.clean_exit
            self._stopping.set()
            self._wake()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            try:
                self.clean_exit = self._stop_workers(timeout)
            finally:
                self._cleanup()
                self._done.set()
            return self.clean_exit

    def __repr__(self) -> str:
        return f"<ioladder.WorkerPool {self.model} {self.addresses} workers={self.pids}>"

    # -------------------------------------------------------------------- supervision
    def _spawn(self, slot: _Slot) -> None:
        """Start a fresh worker process in ``slot`` (lock held)."""
        ready_r, ready_w = os.pipe()
        spec = {
            "app": self.app, "options": dataclasses.asdict(self.options), "host": self.host,
            "port": self._port, "model": self.model, "index": slot.index,
            "server": self._server_kwargs, "shutdown_timeout": self.shutdown_timeout,
            "ready_fd": ready_w, "life_fd": self._life_r, "log_level": self._log_level,
            "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
        }
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-c", "from ioladder.workers import worker_main; worker_main()",
                 json.dumps(spec)],
                pass_fds=(ready_w, self._life_r), stdin=subprocess.DEVNULL,
                start_new_session=True, env=env)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        slot.ready_fd = ready_r
        slot.ready = False
        slot.error = None
        slot.started = time.monotonic()
        slot.restart_at = None
        self._selector.register(ready_r, selectors.EVENT_READ, slot)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _supervise(self) -> None:
        try:
            while not self._stopping.is_set():
                self._poll(0.1, starting=False)
        except Exception:
            log.exception("worker supervisor failed; shutting the workers down")
            threading.Thread(target=self.shutdown, daemon=True).start()

    def _poll(self, timeout: float, starting: bool) -> None:
        """One supervision step: read readiness reports, reap dead workers, restart."""
        with self._lock:
            due = [s.restart_at for s in self._slots if s.restart_at is not None]
        if due:
            timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        for key, _ in self._selector.select(timeout):
            slot = key.data
            if slot is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            with self._lock:
                self._read_ready(slot)
        if self._stopping.is_set():
            return
        now = time.monotonic()
        with self._lock:
            for slot in self._slots:
                proc = slot.proc
                if proc is not None and proc.poll() is not None:
                    self._reap(slot, now, starting)
                elif (proc is not None and not slot.ready
                      and now - slot.started > self.start_timeout):
                    log.warning("worker %d (pid %d) not serving after %.0f s: killing it",
                                slot.index, proc.pid, self.start_timeout)
                    proc.kill()
                if slot.restart_at is not None and now >= slot.restart_at:
                    try:
                        self._spawn(slot)
                    except OSError as exc:  # fork/exec failed (EMFILE, EAGAIN, ...): retry later
                        slot.quick_deaths += 1
                        slot.restart_at = now + restart_delay(slot.quick_deaths)
                        log.error("cannot restart worker %d: %s; retrying in %.1f s",
                                  slot.index, exc, slot.restart_at - now)
                        continue
                    self.restarts += 1
                    log.warning("worker %d restarted as pid %d", slot.index, slot.proc.pid)

    def _read_ready(self, slot: _Slot) -> None:
        fd = slot.ready_fd
        if fd is None:
            return
        try:
            line = os.read(fd, 4096).decode("utf-8", "replace").strip()
        except OSError:
            line = ""
        if line.startswith("ready"):
            slot.ready = True
        elif line.startswith("error"):
            slot.error = line[len("error"):].strip()
            log.error("worker %d could not start: %s", slot.index, slot.error)
        self._close_ready(slot)

    def _close_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _reap(self, slot: _Slot, now: float, starting: bool) -> None:
        proc = slot.proc
        assert proc is not None and proc.returncode is not None
        if slot.ready_fd is not None:
            self._read_ready(slot)  # an "error" line may be waiting
        slot.proc = None
        lived = now - slot.started
        if starting:
            if slot.error is None:
                slot.error = _describe_exit(proc.returncode)
            return
        slot.quick_deaths = 1 if lived >= STABLE_AFTER else slot.quick_deaths + 1
        delay = restart_delay(slot.quick_deaths)
        slot.restart_at = now + delay
        slot.ready = False
        log.warning("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                    slot.index, proc.pid, _describe_exit(proc.returncode), lived, delay)

    def _stop_workers(self, timeout: float) -> bool:
        with self._lock:
            procs = [(s.index, s.proc) for s in self._slots if s.proc is not None]
            for slot in self._slots:
                slot.restart_at = None
        for _, proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + timeout + KILL_GRACE
        for index, proc in procs:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) still running %.0f s after SIGTERM: killing it",
                          index, proc.pid, timeout + KILL_GRACE)
                proc.kill()
                proc.wait()
                clean = False
                continue
            if code != 0:
                log.warning("worker %d (pid %d) %s during shutdown", index, proc.pid,
                            _describe_exit(code))
                clean = False
        with self._lock:
            for slot in self._slots:
                slot.proc = None
        return clean

    def _cleanup(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._close_ready(slot)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for sock in self._reserved:
            sock.close()


def serve_workers(app: str | Callable[..., Any], host: str | None = "127.0.0.1",
                  port: int = 0, *, workers: int, model: str = "auto",
                  app_options: AppOptions | None = None, **kwargs: Any) -> WorkerPool:
    """Serve ``app`` in ``workers`` supervised processes sharing ``port``; return the started
    :class:`WorkerPool` once every worker serves.

    ``app`` is an app id from :data:`ioladder.apps.APPS` (built with ``app_options``), a
    ``"module:attr"`` spec or an importable module-level protocol factory. Other keyword
    arguments: ``backlog``, ``max_connections``, ``idle_timeout``, ``linger`` (per worker, as for
    :func:`ioladder.serve`), ``shutdown_timeout``, ``start_timeout``, ``log_level``.
    """
    return WorkerPool(app, host, port, workers=workers, model=model, app_options=app_options,
                      **kwargs).start()


# ----------------------------------------------------------------------------- the worker

def worker_main(argv: list[str] | None = None) -> None:
    """Entry point of a worker process (started by :class:`WorkerPool`, not by hand)."""
    from .allocator import settle_allocator
    from .server import Server, StopRequest

    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    for path in reversed(spec["sys_path"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    index = spec["index"]
    logging.basicConfig(
        level=spec["log_level"],
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index} pid {os.getpid()}]: "
               f"%(message)s")
    ready_fd, life_fd = spec["ready_fd"], spec["life_fd"]
    settle_allocator()
    stop = StopRequest.on_signals(signal.SIGTERM, signal.SIGINT)  # not a threading.Event
    try:
        factory = make_factory(spec["app"], AppOptions(**spec["options"]))
        srv = Server(factory, spec["host"], spec["port"], model=spec["model"], reuse_port=True,
                     **spec["server"])
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(ready_fd, f"error {type(exc).__name__}: {exc}\n".encode())
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        sys.exit(2)
    os.write(ready_fd, f"ready {srv.port}\n".encode())
    os.close(ready_fd)

    def lifeline() -> None:
        while True:
            try:
                if not os.read(life_fd, 64):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        if not stop.is_set():
            log.warning("the parent process is gone: shutting down")
            stop.set()
    threading.Thread(target=lifeline, name="ioladder-lifeline", daemon=True).start()
    while not stop.wait(0.5):
        pass
    log.info("shutting down gracefully")
    srv.shutdown(spec["shutdown_timeout"])
    sys.exit(0)


__all__ = ["WorkerPool", "app_spec", "restart_delay", "serve_workers", "worker_main"]
