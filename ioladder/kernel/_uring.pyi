"""Type stub for the io_uring C extension (see ioladder/kernel/uring.py for the design)."""

from collections.abc import Callable, Sequence, Sized
from types import TracebackType
from typing import Any

from typing_extensions import Buffer, Self

Completion = tuple[Any, int, int]
"""(ctx, res, flags): the op's ctx, the raw CQE result (-errno on failure), the CQE flags."""

class UringUnavailable(OSError):
    """io_uring cannot be used here; str() names the exact cause."""

class Ring:
    def __new__(
        cls,
        entries: int = 256,
        *,
        flags: int = 0,
        cq_entries: int = 0,
        single_issuer: bool = True,
        register_fd: bool = True,
    ) -> Self:
        """``register_fd``: a single-issuer ring registers its fd in the creating thread's
        registered-ring table (``IORING_REGISTER_RING_FDS``, Linux 5.18) and enters the kernel
        through that index (``IORING_ENTER_REGISTERED_RING``: no fdget per call). Older kernels,
        a full table (16 per thread), ``single_issuer=False`` or ``register_fd=False`` use the
        fd; :attr:`registered_fd` tells which. Close such a ring on its own thread: the
        registration belongs to that thread, and a close elsewhere (a finalizer) leaves it
        holding the ring's file until the thread exits."""
    # --- op preparation: each returns the op id (the kernel's user_data) ---
    def prep_nop(self, ctx: object, *, link: bool = False, hardlink: bool = False) -> int: ...
    def prep_accept(
        self,
        fd: int,
        ctx: object,
        multishot: bool = False,
        *,
        flags: int = ...,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_connect(
        self,
        fd: int,
        sockaddr: tuple[str, int] | tuple[str, int, int, int],
        ctx: object,
        *,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_recv(
        self,
        fd: int,
        buffer: Buffer,
        ctx: object,
        flags: int = 0,
        *,
        start: int = 0,
        nbytes: int = -1,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_recv_multishot(
        self,
        fd: int,
        bufring: BufferRing,
        ctx: object,
        flags: int = 0,
        *,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_send(
        self,
        fd: int,
        data: Buffer,
        ctx: object,
        flags: int = ...,
        *,
        start: int = 0,
        nbytes: int = -1,
        link: bool = False,
        hardlink: bool = False,
        quiet: bool = False,
    ) -> int: ...
    def prep_sendmsg(
        self,
        fd: int,
        buffers: Sequence[Buffer],
        ctx: object,
        flags: int = ...,
        *,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_read(
        self,
        fd: int,
        buffer: Buffer,
        ctx: object,
        offset: int = -1,
        *,
        start: int = 0,
        nbytes: int = -1,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_write(
        self,
        fd: int,
        data: Buffer,
        ctx: object,
        offset: int = -1,
        *,
        start: int = 0,
        nbytes: int = -1,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_poll_add(
        self,
        fd: int,
        mask: int,
        ctx: object,
        multishot: bool = False,
        *,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_shutdown(
        self, fd: int, how: int, ctx: object, *, link: bool = False, hardlink: bool = False
    ) -> int: ...
    def prep_close(
        self, fd: int, ctx: object, *, link: bool = False, hardlink: bool = False
    ) -> int: ...
    def prep_cancel(
        self, op_id: int, ctx: object, *, link: bool = False, hardlink: bool = False
    ) -> int: ...
    def prep_cancel_fd(
        self,
        fd: int,
        ctx: object,
        all: bool = True,
        *,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_timeout(
        self,
        seconds: float,
        ctx: object,
        count: int = 0,
        *,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    def prep_link_timeout(
        self, seconds: float, ctx: object, *, link: bool = False, hardlink: bool = False
    ) -> int: ...
    def prep_splice(
        self,
        fd_in: int,
        off_in: int,
        fd_out: int,
        off_out: int,
        nbytes: int,
        ctx: object,
        flags: int = 0,
        *,
        link: bool = False,
        hardlink: bool = False,
    ) -> int: ...
    # --- submission and completion ---
    def submit(self) -> int: ...
    def wait(
        self, min_complete: int = 1, timeout: float | None = None, max_complete: int = 0
    ) -> list[Completion]: ...
    def reap(self, max_complete: int = 0) -> list[Completion]: ...
    def dispatch(
        self,
        min_complete: int = 1,
        timeout: float | None = None,
        method: str | None = None,
        on_error: Callable[[Exception, Any], object] | None = None,
        until: tuple[Sized, ...] | None = None,
    ) -> int:
        """``wait()`` without the list: submit, block (GIL released) until ``min_complete``
        completions, the timeout or ``wake()``, then call ``ctx.<method>(res, flags)`` -- or
        ``ctx(res, flags)`` when ``method`` is None -- for every completion available, in
        completion order, from C. Returns how many it delivered.

        A final completion's buffers are released before its callback runs (as ``wait()``
        releases them before returning). A callback raising an ``Exception`` goes to
        ``on_error(exc, ctx)`` and delivery carries on. Without ``on_error``, for a
        ``BaseException`` that is not an ``Exception``, or when ``on_error`` raises, delivery
        stops and the exception propagates; the completions reaped but not delivered go back to
        the ring's backlog, which the next ``wait()``/``reap()``/``dispatch()`` delivers first
        and counts toward ``min_complete`` (so it does not block). Nothing is lost or delivered
        twice.

        Callbacks may prepare ops, ``submit()`` and ``close()`` the ring; ``wait()``, ``reap()``
        or ``dispatch()`` on the same ring from a callback raises ``RuntimeError`` (completions
        already reaped would be delivered out of order). Each reaped chunk sets :attr:`batch`
        before its first callback.

        ``until``: a tuple of containers (a loop's call queue and timer heap, say). With it,
        ``dispatch()`` runs pass after pass, each one as above, and returns only when a pass
        leaves one of them non-empty, ends on ``wake()``, or the timeout passed; it returns the
        total delivered. An event loop's steady state then stays in C between passes; whatever
        must end the run adds to a container or calls ``wake()`` (also allowed from a callback).
        Needs ``min_complete >= 1``.

        Generic on purpose: the ``saea`` engine calls ``dispatch(1, None, "_complete",
        on_error, (calls, timers))``; an event loop whose ctxs are callables (the ``aio`` loop's
        ``ctx(res, flags)``) can pass ``method=None`` and keep its own error handling.
        """
    def wake(self) -> None: ...
    # --- features and resources ---
    def supports(self, op: str | int) -> bool: ...
    def buffer_ring(
        self, group_id: int, count: int, size: int, *, incremental: bool = False
    ) -> BufferRing: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    @property
    def fd(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def sq_entries(self) -> int: ...
    @property
    def cq_entries(self) -> int: ...
    @property
    def setup_flags(self) -> int: ...
    @property
    def features(self) -> dict[str, bool]: ...
    @property
    def features_mask(self) -> int: ...
    @property
    def supported_ops(self) -> frozenset[str]: ...
    @property
    def overflow_count(self) -> int: ...
    @property
    def cq_dropped(self) -> int: ...
    @property
    def inflight(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def ext_blocks(self) -> int:
        """Side-data blocks allocated so far for ops holding a buffer or a sockaddr/timespec.

        In use plus kept for reuse (a steady state allocates none); ops without side data
        (multishot recv/accept, poll, cancel, nop, ...) take none.  Freed at close, except those
        of ops that never completed (kept pinned, like their buffers).
        """
    @property
    def single_issuer(self) -> bool: ...
    @property
    def registered_fd(self) -> bool:
        """io_uring_enter goes through the registered ring index, not the fd."""
    @property
    def batch(self) -> int:
        """Completions in the batch ``dispatch()`` is delivering, or delivered last (0 before
        the first): what that call delivered so far + the reaped chunk + what is still queued in
        the CQ, set before the chunk's first callback."""
    @property
    def sync_send(self) -> bool:
        """``0 < batch <= sync_send_batch``: the ring as an ioladder transport's send gate
        (``transport._send_gate = ring``), open while ``dispatch()`` runs small batches."""
    sync_send_batch: int
    """The largest batch for which :attr:`sync_send` is true (default 0: never)."""
    @property
    def has_multishot_accept(self) -> bool: ...
    @property
    def has_recv_multishot(self) -> bool: ...
    @property
    def has_buffer_rings(self) -> bool: ...

class BufferRing:
    def take(self, bid: int, nbytes: int, more: bool = False, /) -> bytes: ...
    def view(self, bid: int, nbytes: int, /) -> memoryview: ...
    def recycle(self, bid: int, nbytes: int = 0, more: bool = False, /) -> None: ...
    def close(self) -> None: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    @property
    def available(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def stride(self) -> int: ...
    @property
    def incremental(self) -> bool: ...
    @property
    def group_id(self) -> int: ...
    @property
    def registered(self) -> bool: ...

class RecvContext:
    """Base class for the ctx of a multishot receive on a buffer ring.

    ``Ring.dispatch()`` delivers such an op's steady-state completions itself: one with
    ``res > 0``, ``CQE_F_BUFFER`` and ``CQE_F_MORE`` becomes ``conn._on_data(bytes)`` (the bytes
    copied out, the bytes released at once), with no Python frame and no int objects. That is
    exactly what the ctx's own method must do with such a completion, because every other one --
    the completion ending the op (no ``CQE_F_MORE``, possibly with bytes), errors, and whatever
    ``wait()``/``reap()`` return or ``dispatch()`` takes from the backlog -- goes to the method.
    A raising ``_on_data`` is handled as a raising callback (``on_error`` or propagation).
    Subclass it with ``__slots__`` for the rest of the state.
    """

    conn: Any
    """Whose ``_on_data(bytes)`` receives the data (``None`` until set)."""
    fd: int
    """The connection's socket (where a :class:`SendContext`'s sends go)."""
    ops: int
    """Ops in flight on the socket, as the driver counts them (the send fast path keeps it)."""
    closing: bool
    """True once the driver closes the connection: its sends' completions all go to the method."""

class SendContext:
    """Base class for the ctx of a stream connection's SENDs.

    ``st`` is the connection's :class:`RecvContext`. While ``st.closing`` is false,
    ``Ring.dispatch()`` handles a send's successful completion itself: ``st.ops -= 1``, then
    ``st.conn._on_sent(res)``; when that returns True, the next chunk, ``st.conn._next_chunk()``,
    is sent from C (``st.ops += 1``) if it is a buffer, or handed to ``ctx._send_chunk(chunk)``
    if not. Every other completion (an error, nothing sent, ``st.closing`` set) goes to the
    ctx's method, which must treat a successful one the same way. The ring's send gate starts a
    transport's flush the same way when the transport's ``_send_ctx`` is such a ctx.
    """

    st: Any
    """The connection's :class:`RecvContext` (``None`` until set)."""

def _availability() -> str | None: ...
def _reason_for_errno(
    errno: int, io_uring_disabled: int = -2, io_uring_group: int = -2
) -> str: ...

CQE_F_BUFFER: int
CQE_F_MORE: int
CQE_F_BUF_MORE: int
CQE_F_SOCK_NONEMPTY: int
CQE_F_NOTIF: int
CQE_BUFFER_SHIFT: int
SETUP_CLAMP: int
SETUP_SUBMIT_ALL: int
SETUP_COOP_TASKRUN: int
SETUP_TASKRUN_FLAG: int
SETUP_SINGLE_ISSUER: int
SETUP_DEFER_TASKRUN: int
SETUP_CQSIZE: int
FEAT_SINGLE_MMAP: int
FEAT_NODROP: int
FEAT_EXT_ARG: int
EPOLLIN: int
EPOLLPRI: int
EPOLLOUT: int
EPOLLERR: int
EPOLLHUP: int
EPOLLRDHUP: int
MSG_NOSIGNAL: int
MSG_WAITALL: int
MSG_DONTWAIT: int
MSG_MORE: int
MSG_PEEK: int
SOCK_NONBLOCK: int
SOCK_CLOEXEC: int
SHUT_RD: int
SHUT_WR: int
SHUT_RDWR: int
SPLICE_F_MOVE: int
SPLICE_F_NONBLOCK: int
SPLICE_F_MORE: int
