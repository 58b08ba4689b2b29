"""Rung ``eventselect``: ``WSAEventSelect`` + ``WSAWaitForMultipleEvents`` +
``WSAEnumNetworkEvents`` — one event object per socket, one waiting thread per 64 events.

Seed concept: the article's event model. ``WSACreateEvent`` makes an event object for each
socket, ``WSAEventSelect`` binds it to the socket's network events, a thread blocks in
``WSAWaitForMultipleEvents`` on an array of events, and when the wait returns it calls
``WSAEnumNetworkEvents`` on the signalled sockets to learn — and reset — which of
``FD_ACCEPT``/``FD_READ``/``FD_WRITE``/``FD_CLOSE`` happened, then accepts, receives or sends.
A wait takes at most ``WSA_MAXIMUM_WAIT_EVENTS`` (64) handles, so a server needs another
waiting thread for every 64 sockets. Linux mechanism: ``poll(2)`` over groups of at most 64
descriptors, one thread per group (a ``select.poll`` object each).

How the Windows objects map:

* **event object** (``WSAEVENT``) = the socket's ``pollfd`` entry in its group's poll set plus a
  per-socket record (:class:`_Event`): the *armed* network events (what ``WSAEventSelect``
  selected, minus what has been reported and not yet re-enabled) and the interest mask derived
  from them (``FD_READ``/``FD_ACCEPT`` -> ``POLLIN``, ``FD_WRITE`` -> ``POLLOUT``; ``POLLHUP``/
  ``POLLERR`` always report, as ``FD_CLOSE`` does). "Signalled" is ``poll`` returning it;
* **WSAWaitForMultipleEvents** = ``poll`` on the group's <= 64 entries, infinite timeout (or
  the group's nearest timer); one of the 64 is the group's own ``eventfd``, the extra event a
  Windows waiter keeps so other threads can wake it — it counts against the 64, so a group
  holds 63 sockets;
* **WSAEnumNetworkEvents** = after the wait, for each returned socket, translate ``revents``
  into ``FD_*`` bits masked by the armed set, and *reset* them: every reported event is
  disarmed until its **re-enabling function** runs, as Winsock specifies — ``recv`` re-enables
  ``FD_READ``, ``accept`` re-enables ``FD_ACCEPT``, a ``send`` failing with ``EWOULDBLOCK``
  re-enables ``FD_WRITE``; ``FD_CLOSE`` is reported once. So after ``FD_READ`` the socket's
  read interest is off until the driver's ``recv`` has run (and stays off while the transport
  has reading paused — resuming is ``WSAEventSelect`` again). Level-triggered ``poll`` then
  re-signals at once if data remains, like Windows re-posting after a partial ``recv``.

Trait kept, with its limits: **threads grow with connections** — a connection is assigned to
the first group with a free slot and a new group thread is started when all are full (1,000
connections -> 16 threads), and a group left empty exits with its last socket (or after
``GROUP_LINGER`` seconds, if set). Each group thread is the *context* of its connections:
their protocol callbacks run on it, so two callbacks of one connection never overlap; calls
from other threads (a ``write`` from an application thread, ``Server.shutdown``) are queued to
the owning group and wake it through its ``eventfd``. Listeners live in the first group; a
connection accepted there is handed to its group's thread, where ``connection_made`` runs.
Every wait re-walks the group's <= 64 entries (``poll``), so the cost per wake-up is bounded
by the group, not by the server — the price is a thread, a stack and a context switch per 63
connections.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..transport import Transport
from .base import (
    LINGER_DONE,
    LINGER_POLL,
    LINGER_RESET,
    Receiver,
    Rung,
    close_socket,
    discard_input,
    linger_timeout,
    release_policy,
    send_nonblocking,
    sweep_lingering,
)

log = logging.getLogger("ioladder")

#: WSA_MAXIMUM_WAIT_EVENTS: handles one WSAWaitForMultipleEvents can wait on.
MAXIMUM_WAIT_EVENTS = 64
#: sockets per group: one of the 64 events is the group's own wake-up eventfd.
SOCKETS_PER_GROUP = MAXIMUM_WAIT_EVENTS - 1
#: seconds an empty group waits for a new connection before its thread exits. 0: at once, as
#: the simplest Windows servers do (a thread per full array, gone with its last socket); > 0
#: spares the thread start when connections come and go around a multiple of 63, but keeps a
#: thread and an eventfd that long after the load has gone.
GROUP_LINGER = 0.0
RECV_SIZE = 256 * 1024
#: connections accepted per FD_ACCEPT before serving the group's other sockets.
ACCEPT_BATCH = 64

#: Winsock network events (winsock2.h values).
FD_READ = 0x01
FD_WRITE = 0x02
FD_ACCEPT = 0x08
FD_CLOSE = 0x20

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLLCLOSE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class _Event:
    """A socket's event object (``WSAEVENT``) and network-events record."""

    __slots__ = ("fd", "sock", "conn", "group", "armed", "mask", "closed", "born", "reading",
                 "paused", "dead", "deadline")

    def __init__(self, sock: socket.socket, conn: Transport | None, group: _Group) -> None:
        self.fd = sock.fileno()
        self.sock = sock
        self.conn = conn           # None for a listener
        self.group = group
        self.armed = 0             # FD_* events selected and currently enabled
        self.mask: int | None = None  # interest registered in the poll set (None: absent)
        self.closed = False        # FD_CLOSE already reported
        self.born = 0              # the group's wait number when registered
        self.reading = False       # the transport wants data
        self.paused = False        # a listener backing off after EMFILE & co.
        self.dead = False          # removed from its group
        #: set (the lingering close's deadline) while the released connection is in its
        #: lingering close (``rungs.base``)
        self.deadline: float | None = None


class _Group:
    """One waiting thread with its <= 64 events: a WSAWaitForMultipleEvents loop."""

    def __init__(self, rung: EventSelectRung, index: int) -> None:
        self.rung = rung
        self.index = index
        self.rx = Receiver(RECV_SIZE)  # this group thread's receive buffer
        #: sockets assigned to this group, counting ones still on their way to it; guarded by
        #: the rung's lock.
        self.load = 0
        self.events: dict[int, _Event] = {}
        self.poll = select.poll()
        self.wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.poll.register(self.wakefd, _POLLIN)
        self.lock = threading.Lock()      # guards alive + cross-thread posting
        self.alive = True
        self.running = True
        self.woken = False
        self.calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self.timers: list[tuple[float, int, Callable[[], Any]]] = []
        self.seq = itertools.count()
        self.waits = 0
        self.ident: int | None = None
        self.lingering: set[_Event] = set()
        self.linger_ticking = False
        self.thread = threading.Thread(target=self.run, daemon=True,
                                       name=f"ioladder-eventselect-{index}")

    # ------------------------------------------------------------------------ posting
    def call(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn`` for this group's thread and wake it; False if the thread is gone."""
        if threading.get_ident() == self.ident:
            self.calls.append((fn, args))
            return True
        with self.lock:
            if not self.alive:
                return False
            self.calls.append((fn, args))
            if not self.woken:
                self.woken = True
                os.eventfd_write(self.wakefd, 1)
        return True

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.seq), fn))

    # ------------------------------------------------------------------ the event object
    def add(self, ev: _Event, armed: int) -> None:
        """WSAEventSelect: bind ``ev`` into this group's wait array with ``armed`` events."""
        ev.born = self.waits
        ev.armed = armed
        self.events[ev.fd] = ev
        self.sync(ev)

    def remove(self, ev: _Event) -> None:
        if ev.dead:
            return
        ev.dead = True
        if self.events.get(ev.fd) is ev:
            del self.events[ev.fd]
            if ev.mask is not None:
                self.poll.unregister(ev.fd)
        ev.mask = None

    def sync(self, ev: _Event) -> None:
        """Make the pollfd's interest match the armed events."""
        if ev.dead:
            return
        armed = ev.armed
        mask: int | None = ((_POLLIN if armed & (FD_READ | FD_ACCEPT) else 0)
                            | (_POLLOUT if armed & FD_WRITE else 0))
        if not mask and ev.closed:
            # FD_CLOSE was reported and nothing is armed: poll would report POLLHUP on every
            # wait. Leave the array until an event is re-enabled.
            mask = None
        if mask == ev.mask:
            return
        if mask is None:
            self.poll.unregister(ev.fd)
        else:
            self.poll.register(ev.fd, mask)
        ev.mask = mask

    # ------------------------------------------------------------------------ the loop
    def run(self) -> None:
        self.ident = threading.get_ident()
        try:
            while self.running:
                self.run_once()
        except BaseException:
            log.exception("eventselect group %d crashed", self.index)
            raise
        finally:
            self.close_wakefd()
            for ev in list(self.events.values()):  # none, unless the loop crashed
                self.rung._abort_event(ev)
            self.drain_calls()  # connection_lost calls, hand-overs that came too late
            self.events.clear()
            self.rung._group_exited(self)

    def drain_calls(self) -> None:
        while self.calls:
            fn, args = self.calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r failed in eventselect group %d", fn, self.index)

    def run_once(self) -> None:
        timeout: float | None = None
        if self.calls:
            timeout = 0.0
        elif self.timers:
            timeout = max(0.0, self.timers[0][0] - time.monotonic())
        # WSAWaitForMultipleEvents(<= 64 events, FALSE, timeout)
        ready = self.poll.poll(None if timeout is None else math.ceil(timeout * 1000))
        self.waits += 1
        wait = self.waits
        events = self.events
        for fd, revents in ready:
            if fd == self.wakefd:
                # Read, then clear the flag: cleared first, a poster's write could be consumed
                # by this read while its flag stays set, and later posters would skip waking us.
                try:
                    os.eventfd_read(self.wakefd)
                except BlockingIOError:
                    pass
                self.woken = False
                continue
            ev = events.get(fd)
            if ev is None or ev.born == wait:
                continue  # closed, or its fd reused, since the wait returned
            network = self.enumerate(ev, revents)
            if network:
                self.rung._handle(ev, network)
                self.sync(ev)
        if self.timers:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                fn()
        calls = self.calls
        for _ in range(len(calls)):
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("call %r failed in eventselect group %d", fn, self.index)

    @staticmethod
    def enumerate(ev: _Event, revents: int) -> int:
        """WSAEnumNetworkEvents: the events that occurred, reset until re-enabled."""
        armed = ev.armed
        network = 0
        if revents & _POLLIN:
            network |= armed & (FD_READ | FD_ACCEPT)
        if revents & _POLLOUT:
            network |= armed & FD_WRITE
        if revents & _POLLCLOSE and not ev.closed and ev.conn is not None:
            ev.closed = True
            network |= FD_CLOSE
        ev.armed = armed & ~network
        return network

    # ------------------------------------------------------------------------ exiting
    def maybe_exit(self) -> None:
        """On this group's thread: end it if it is (still) empty.

        The eventfd goes now, before the released connections' ``connection_lost`` calls
        still queued run: once the server counts no connection, no empty group holds a
        descriptor any more.
        """
        if not self.running or not self.rung._retire(self):
            return
        self.running = False
        self.close_wakefd()

    def close_wakefd(self) -> None:
        with self.lock:
            self.alive = False  # from now on nobody writes the eventfd
        if self.wakefd >= 0:
            self.poll.unregister(self.wakefd)
            os.close(self.wakefd)
            self.wakefd = -1


class EventSelectRung(Rung):
    name = "eventselect"
    seed = "WSAEventSelect: an event object per socket, waited in groups of 64"
    windows_api = "WSACreateEvent + WSAEventSelect + WSAWaitForMultipleEvents + WSAEnumNetworkEvents"
    mechanism = "poll(2) on groups of <= 64 fds (63 sockets + an eventfd), a thread per group"
    trait = (f"one event object per socket; one waiting thread per {MAXIMUM_WAIT_EVENTS} events "
             "(WSA_MAXIMUM_WAIT_EVENTS), so threads grow with connections; network events "
             "enumerated and reset per socket, re-enabled by recv/accept/EWOULDBLOCK")
    rank = 25

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self._lock = threading.Lock()
        self._groups: list[_Group] = []
        self._all: list[_Group] = []     # every group ever started and not yet joined
        self._home: _Group | None = None  # the group holding the listeners
        self._listeners: list[_Event] = []
        self._stopping = False

    # ------------------------------------------------------------------------- lifecycle
    def start(self, listeners: list[socket.socket]) -> None:
        with self._lock:
            home = self._new_group()
            home.load = len(listeners)
        self._home = home
        for sock in listeners:
            sock.setblocking(False)
            ev = _Event(sock, None, home)
            self._listeners.append(ev)
            home.call(home.add, ev, FD_ACCEPT)
        try:
            home.thread.start()
        except BaseException:
            with self._lock:
                self._groups.remove(home)
                self._all.remove(home)
            os.close(home.wakefd)
            self._home = None
            raise

    def stop_accepting(self) -> None:
        home = self._home
        if home is None:
            return
        if threading.get_ident() == home.ident:
            self._close_listeners()
            return
        done = threading.Event()

        def close() -> None:
            self._close_listeners()
            done.set()
        # Synchronous from other threads: once this returns no accept is in progress, so no
        # connection can appear half set-up to Server.shutdown's close_all().
        if home.call(close):
            done.wait(5.0)
        else:
            self._close_listeners()

    def _close_listeners(self) -> None:
        for ev in self._listeners:
            if not ev.dead:
                ev.group.remove(ev)
                ev.sock.close()
                self._release_slot(ev.group)
        self._listeners.clear()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            groups = list(self._all)
        for g in groups:
            g.call(self._stop_group, g)
        me = threading.current_thread()
        for g in groups:
            if g.thread is not me and g.thread.ident is not None:
                g.thread.join(10.0)
        with self._lock:
            self._all = [g for g in self._all if g.thread.is_alive()]

    def _stop_group(self, g: _Group) -> None:
        if g is self._home:
            self._close_listeners()
        for ev in list(g.events.values()):
            self._abort_event(ev)
        g.running = False

    def _abort_event(self, ev: _Event) -> None:
        """On the event's group thread: end its socket now (a reset for a connection)."""
        if ev.conn is None:
            ev.group.remove(ev)
            ev.sock.close()
        elif ev.deadline is not None:
            self._end_linger(ev, abort=True)
        elif not ev.conn._released:
            ev.conn._force_close(None)  # through the transport: later calls find it released

    def thread_count(self) -> int:
        with self._lock:
            return sum(1 for g in self._all if g.thread.is_alive())

    def group_loads(self) -> list[int]:
        """Sockets per live group (listeners included), in group order."""
        with self._lock:
            return [g.load for g in self._groups]

    # ------------------------------------------------------------------ group registry
    def _new_group(self) -> _Group:
        """A new group (caller holds the lock); its thread is not started yet."""
        used = {g.index for g in self._groups}
        index = next(i for i in itertools.count() if i not in used)
        g = _Group(self, index)
        self._groups.append(g)
        self._groups.sort(key=lambda g: g.index)
        self._all.append(g)
        return g

    def _assign(self) -> _Group:
        """Reserve a slot in the first group with room, starting a new group if all are full."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("server is stopping")
            for g in self._groups:
                if g.load < SOCKETS_PER_GROUP:
                    g.load += 1
                    return g
            g = self._new_group()
            g.load = 1
            try:
                g.thread.start()
            except RuntimeError:
                self._groups.remove(g)
                self._all.remove(g)
                os.close(g.wakefd)
                raise
            return g

    def _release_slot(self, g: _Group) -> None:
        with self._lock:
            g.load -= 1
            if g.load:
                return
        if threading.get_ident() != g.ident:
            return  # only the group's own thread retires it
        if GROUP_LINGER > 0:
            g.call_later(GROUP_LINGER, g.maybe_exit)
        else:
            g.maybe_exit()

    def _retire(self, g: _Group) -> bool:
        """Take an empty group out of the registry so its thread can end."""
        with self._lock:
            if g.load or g not in self._groups:
                return False
            self._groups.remove(g)
            return True

    def _group_exited(self, g: _Group) -> None:
        with self._lock:
            if g in self._groups:
                self._groups.remove(g)
            if g in self._all:
                self._all.remove(g)

    # ----------------------------------------------------------------------- the events
    def _handle(self, ev: _Event, network: int) -> None:
        """Act on the enumerated network events of one socket, in Winsock's order."""
        conn = ev.conn
        if conn is None:
            if network & FD_ACCEPT:
                self._accept(ev)
            return
        if ev.deadline is not None:
            self._linger_read(ev)
            return
        if conn._released:
            return
        if network & (FD_WRITE | FD_CLOSE) and conn._sending and conn._buffer:
            self.start_send(conn)
        if network & (FD_READ | FD_CLOSE) and ev.reading and not conn._released:
            self._read(conn, ev)

    def _read(self, conn: Transport, ev: _Event) -> None:
        try:
            data = ev.group.rx.recv(conn._sock)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError as exc:
            conn._on_error(exc)
            return
        if data:
            conn._on_data(data)
        elif data is not None:
            conn._on_eof()
        # recv() is FD_READ's re-enabling function.
        if ev.reading and not ev.dead:
            ev.armed |= FD_READ

    def _accept(self, lev: _Event) -> None:
        lsock = lev.sock
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                delay = self.core.accept_error(exc)
                if delay:
                    self._pause_listener(lev, delay)
                    return
                continue
            conn = self.core.admit(sock, self)
            if conn is None:
                continue
            try:
                g = self._assign()
            except RuntimeError as exc:  # can't start new thread: the model's own limit
                self.core.forget(conn)
                self.core.refuse(sock, f"cannot start a waiting thread for it: {exc}")
                continue
            sock.setblocking(False)
            ev = _Event(sock, conn, g)
            conn.rung_data = ev
            if g is lev.group:
                self._adopt(ev)
            elif not g.call(self._adopt, ev):  # its group died (stop): never made
                close_socket(sock, abort=True)
                conn._on_released()
        # accept() is FD_ACCEPT's re-enabling function.
        if not lev.dead:
            lev.armed |= FD_ACCEPT

    def _adopt(self, ev: _Event) -> None:
        """On the connection's group thread: bind its event object, then connection_made."""
        g = ev.group
        conn = ev.conn
        assert conn is not None
        if not g.running or self._stopping:
            g.remove(ev)
            close_socket(ev.sock, abort=True)
            conn._on_released()
            self._release_slot(g)
            return
        g.add(ev, 0)
        conn._start()

    def _pause_listener(self, lev: _Event, delay: float) -> None:
        lev.paused = True
        lev.armed &= ~FD_ACCEPT

        def resume() -> None:
            lev.paused = False
            if not lev.dead:
                lev.armed |= FD_ACCEPT
                lev.group.sync(lev)
        lev.group.call_later(delay, resume)

    # ------------------------------------------------------------------------ driver API
    def dispatch(self, conn: Transport, fn: Callable[..., Any], *args: Any) -> None:
        g = conn.rung_data.group
        if threading.get_ident() == g.ident or not g.call(fn, *args):
            # Our own thread, or the group has exited — then every connection it held is
            # released and the call is a no-op on a closed transport.
            fn(*args)

    def in_context(self, conn: Transport) -> bool:
        g = conn.rung_data.group
        return threading.get_ident() == g.ident or not g.alive

    def start_send(self, conn: Transport) -> None:
        if send_nonblocking(conn, until_eagain=True):
            # A send failing with EWOULDBLOCK is FD_WRITE's re-enabling function.
            ev: _Event = conn.rung_data
            ev.armed |= FD_WRITE
            ev.group.sync(ev)

    def set_reading(self, conn: Transport, on: bool) -> None:
        ev: _Event = conn.rung_data
        if ev.reading == on or ev.dead:
            return
        ev.reading = on
        if on:
            ev.armed |= FD_READ   # WSAEventSelect(FD_READ | ...) again
        else:
            ev.armed &= ~FD_READ
        ev.group.sync(ev)

    def release(self, conn: Transport, abort: bool) -> None:
        ev: _Event = conn.rung_data
        ev.reading = False
        abort, linger = release_policy(conn, self.core, abort)
        if linger:
            self._linger(ev)
            return
        self._finish(ev, abort)

    def _finish(self, ev: _Event, abort: bool) -> None:
        """Close the socket, free its slot, and queue ``connection_lost``."""
        g = ev.group
        g.remove(ev)
        close_socket(ev.sock, abort, shutdown=False)
        # As asyncio: connection_lost on a later pass of the group, never inside close().
        g.calls.append((ev.conn._on_released, ()))  # type: ignore[union-attr]
        self._release_slot(g)

    # ------------------------------------------------------------------- lingering close
    def _linger(self, ev: _Event) -> None:
        """Keep the event selecting FD_READ|FD_CLOSE only, discarding input, until the peer
        acknowledged every byte (looked up every LINGER_POLL), sent EOF, or the deadline."""
        g = ev.group
        ev.deadline = time.monotonic() + linger_timeout(self.core)
        ev.armed = FD_READ
        g.sync(ev)
        g.lingering.add(ev)
        if not g.linger_ticking:
            g.linger_ticking = True
            g.call_later(LINGER_POLL, lambda: self._linger_tick(g))

    def _linger_tick(self, g: _Group) -> None:
        sweep_lingering(g.lingering, self._end_linger)
        if g.lingering and g.running:
            g.call_later(LINGER_POLL, lambda: self._linger_tick(g))
        else:
            g.linger_ticking = False

    def _linger_read(self, ev: _Event) -> None:
        """Discard what the lingering peer sent; its EOF or an error ends the wait."""
        verdict = discard_input(ev.sock, RECV_SIZE, 16)
        if verdict in (LINGER_DONE, LINGER_RESET):
            self._end_linger(ev, abort=verdict == LINGER_RESET)
            return
        ev.armed |= FD_READ  # recv() re-enables FD_READ

    def _end_linger(self, ev: _Event, abort: bool) -> None:
        if ev not in ev.group.lingering:
            return
        ev.group.lingering.discard(ev)
        self._finish(ev, abort)


RUNG = EventSelectRung
