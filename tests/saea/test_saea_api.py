"""The pieces of ``ioladder.saea`` that need no I/O: enums, the errno table, the args object,
the completed event, ``ArgsPool`` and ``BufferManager``."""

from __future__ import annotations

import errno
import threading

import pytest

from ioladder.saea import (
    ArgsPool,
    ArgsPoolExhausted,
    BufferManager,
    CompletedEvent,
    InvalidOperationError,
    ObjectDisposedError,
    SocketAsyncEventArgs,
    SocketAsyncOperation,
    SocketError,
)

pytestmark = pytest.mark.timeout(30)


def test_enums_use_dotnet_names_and_numbers():
    assert SocketAsyncOperation.None_ == 0
    assert SocketAsyncOperation.Accept == 1
    assert SocketAsyncOperation.Receive == 4
    assert SocketAsyncOperation.Send == 7
    assert SocketError.Success == 0
    assert SocketError.ConnectionReset == 10054
    assert SocketError.ConnectionAborted == 10053
    assert SocketError.OperationAborted == 995


@pytest.mark.parametrize("err, name", [
    (0, "Success"),
    (errno.ECONNRESET, "ConnectionReset"),
    (errno.ECONNABORTED, "ConnectionAborted"),
    (errno.ECANCELED, "OperationAborted"),
    (errno.EPIPE, "Shutdown"),
    (errno.ECONNREFUSED, "ConnectionRefused"),
    (errno.ETIMEDOUT, "TimedOut"),
    (errno.EAGAIN, "WouldBlock"),
    (errno.EMFILE, "TooManyOpenSockets"),
    (errno.ENOBUFS, "NoBufferSpaceAvailable"),
    (errno.ENOTCONN, "NotConnected"),
    (errno.EINVAL, "InvalidArgument"),
    (errno.EADDRINUSE, "AddressAlreadyInUse"),
    (errno.EHOSTUNREACH, "HostUnreachable"),
])
def test_errno_maps_as_dotnet_maps_it(err, name):
    assert SocketError.from_errno(err) is SocketError[name]


def test_unknown_errno_is_the_generic_socket_error():
    assert SocketError.from_errno(errno.ENOEXEC) is SocketError.SocketError


def test_exception_hierarchy_mirrors_dotnet():
    assert issubclass(ObjectDisposedError, InvalidOperationError)
    assert issubclass(ArgsPoolExhausted, InvalidOperationError)


def test_fresh_args_state():
    e = SocketAsyncEventArgs()
    assert e.last_operation is SocketAsyncOperation.None_
    assert e.socket_error is SocketError.Success
    assert (e.buffer, e.offset, e.count, e.bytes_transferred) == (None, 0, 0, 0)
    assert e.user_token is None and e.accept_socket is None and e.remote_endpoint is None
    assert not e.pending


def test_set_buffer_forms_and_validation():
    e = SocketAsyncEventArgs()
    buf = bytearray(100)
    e.set_buffer(buf)
    assert (e.buffer, e.offset, e.count) == (buf, 0, 100)
    e.set_buffer(buf, 10, 20)
    assert (e.offset, e.count) == (10, 20)
    e.set_buffer(30, 70)  # same buffer, new window
    assert (e.buffer, e.offset, e.count) == (buf, 30, 70)
    with pytest.raises(ValueError):
        e.set_buffer(30, 71)
    with pytest.raises(ValueError):
        e.set_buffer(buf, 101, 0)
    with pytest.raises(ValueError):
        e.set_buffer(buf, -1, 1)
    with pytest.raises(TypeError):
        e.set_buffer(object())
    e.set_buffer(None)
    assert (e.buffer, e.offset, e.count) == (None, 0, 0)
    with pytest.raises(ValueError):
        e.set_buffer(0, 1)  # a window needs a buffer


def test_completed_event_add_remove_and_replace():
    calls: list[tuple[str, object, object]] = []

    def first(sender, e):
        calls.append(("first", sender, e))

    def second(sender, e):
        calls.append(("second", sender, e))

    e = SocketAsyncEventArgs()
    event = e.completed
    e.completed += first
    e.completed += second
    assert e.completed is event and len(e.completed) == 2
    e.on_completed(e)  # .NET's OnCompleted raises the event: sender is the socket (none yet)
    assert calls == [("first", None, e), ("second", None, e)]
    e.completed -= first
    calls.clear()
    e.on_completed(e)
    assert calls == [("second", None, e)]
    e.completed = first  # a plain callable replaces every handler
    assert len(e.completed) == 1
    e.completed = None
    assert not e.completed
    with pytest.raises(TypeError):
        e.completed += "not callable"
    assert isinstance(SocketAsyncEventArgs(first).completed, CompletedEvent)


def test_subclass_overrides_on_completed():
    class Args(SocketAsyncEventArgs):
        __slots__ = ("got",)

        def on_completed(self, e):
            self.got = e

    a = Args()
    a.on_completed(a)
    assert a.got is a


# ------------------------------------------------------------------------------- ArgsPool


def test_pool_is_preallocated_bounded_and_reports_exhaustion():
    made = []

    def factory():
        e = SocketAsyncEventArgs()
        made.append(e)
        return e

    pool = ArgsPool(3, factory)
    assert len(made) == 3 and len(pool) == 3 and pool.in_use == 0
    taken = [pool.acquire() for _ in range(3)]
    assert set(map(id, taken)) == set(map(id, made))  # nothing allocated after construction
    assert pool.try_acquire() is None
    with pytest.raises(ArgsPoolExhausted):
        pool.acquire()
    assert len(made) == 3
    pool.release(taken[0])
    assert pool.acquire() is taken[0]


def test_pool_release_checks_and_resets():
    pool = ArgsPool(2)
    other = ArgsPool(1)
    e = pool.acquire()
    e.user_token = "token"
    e.bytes_transferred = 7
    pool.release(e)
    assert e.user_token is None and e.bytes_transferred == 0
    with pytest.raises(InvalidOperationError):
        pool.release(e)  # already in the pool
    with pytest.raises(ValueError):
        pool.release(other.acquire())  # not ours
    with pytest.raises(ValueError):
        pool.release(SocketAsyncEventArgs())


def test_pool_with_buffers_and_handler():
    buffers = BufferManager(4, 128)
    handler = lambda sender, e: None  # noqa: E731
    pool = ArgsPool(4, buffer_manager=buffers, completed=handler)
    assert buffers.free_segments == 0
    offsets = set()
    for _ in range(4):
        e = pool.acquire()
        assert e.buffer is buffers.buffer and e.count == 128 and len(e.completed) == 1
        offsets.add(e.offset)
        e.set_buffer(e.offset, 5)  # an echo server narrows the window to what it sends...
        pool.release(e)
        assert pool.try_acquire().count == 128  # ...the pool hands out the whole segment again
        pool.release(e)
    assert len(offsets) >= 1
    with pytest.raises(ValueError):
        ArgsPool(5, buffer_manager=BufferManager(4, 16))


def test_pool_is_thread_safe():
    pool = ArgsPool(64)
    errors: list[BaseException] = []

    def churn():
        try:
            for _ in range(2000):
                e = pool.try_acquire()
                if e is not None:
                    pool.release(e)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
    assert errors == [] and len(pool) == 64


# -------------------------------------------------------------------------- BufferManager


def test_buffer_manager_carves_one_slab_into_disjoint_segments():
    bm = BufferManager(8, 512)
    assert len(bm.buffer) == 8 * 512 and bm.free_segments == 8
    args = [SocketAsyncEventArgs() for _ in range(9)]
    assert all(bm.set_buffer(e) for e in args[:8])
    assert not bm.set_buffer(args[8])  # .NET's SetBuffer returns false when it is full
    assert args[8].buffer is None
    assert all(e.buffer is bm.buffer and e.count == 512 for e in args[:8])
    assert sorted(e.offset for e in args[:8]) == list(range(0, 8 * 512, 512))
    # Writing through one segment touches no other.
    for i, e in enumerate(args[:8]):
        bm.buffer[e.offset:e.offset + e.count] = bytes([i]) * 512
    for i, e in enumerate(args[:8]):
        assert bytes(bm.buffer[e.offset:e.offset + e.count]) == bytes([i]) * 512


def test_buffer_manager_free_and_reuse():
    bm = BufferManager(2, 64)
    a, b, c = SocketAsyncEventArgs(), SocketAsyncEventArgs(), SocketAsyncEventArgs()
    assert bm.set_buffer(a) and bm.set_buffer(b) and not bm.set_buffer(c)
    offset = a.offset
    bm.free_buffer(a)
    assert a.buffer is None and bm.free_segments == 1
    with pytest.raises(ValueError):
        bm.free_buffer(a)  # no longer holds a segment
    assert bm.set_buffer(c) and c.offset == offset
    with pytest.raises(ValueError):
        BufferManager(2, 64).free_buffer(b)  # another manager's segment
    with pytest.raises(ValueError):
        BufferManager(0, 64)


def test_engine_logs_a_raising_completion_and_runs_the_rest_of_the_batch(engine, caplog):
    """The engine's dispatch: one ctx raising is logged; the completions reaped with it still
    run, in order, and the engine goes on serving."""
    done = threading.Event()
    ran: list = []

    class Ctx:
        def __init__(self, i: int) -> None:
            self.i = i

        def _complete(self, res: int, flags: int) -> None:
            ran.append(self.i)
            if self.i == 1:
                raise ValueError("handler bug")
            if self.i == 3:
                done.set()

    def post() -> None:
        for i in range(4):
            engine.ring.prep_nop(Ctx(i))

    with caplog.at_level("ERROR", logger="ioladder"):
        engine.call_soon(post)
        assert done.wait(5.0)
    assert ran == [0, 1, 2, 3]
    (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is ValueError
    assert engine.run_sync(lambda: 42) == 42  # still serving
