"""``ioladder.aio``: an asyncio event loop on the completion engine (io_uring).

Any asyncio program runs on it with one line, as on uvloop::

    import ioladder.aio
    ioladder.aio.install()                   # the policy: asyncio.run() and friends use it
    asyncio.run(main())

    asyncio.run(main(), loop_factory=ioladder.aio.new_event_loop)          # Python 3.12+
    with asyncio.Runner(loop_factory=ioladder.aio.new_event_loop) as r:   # Python 3.11+
        r.run(main())

The loop is asyncio's proactor loop (the completion-port design asyncio uses on Windows) with an
io_uring proactor, completion-driven socket transports, and the Unix parts (signals, pipes,
subprocesses, UNIX sockets, ``add_reader``). docs/aio.md describes the design and its limits.

Where io_uring cannot be used (``kernel.io_uring_disabled``, a seccomp policy, an old kernel),
:func:`new_event_loop` raises :class:`UringUnavailable` naming the cause, and
``install(fallback=True)`` logs that cause and keeps asyncio's default loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

__all__ = [
    "EventLoopPolicy",
    "UringEventLoop",
    "UringUnavailable",
    "availability",
    "install",
    "new_event_loop",
]

logger = logging.getLogger("ioladder.aio")

try:
    from ioladder.kernel import uring as _uring
except ImportError as _exc:  # the C extension is not built
    _uring = None  # type: ignore[assignment]
    _IMPORT_ERROR: str | None = (
        f"the io_uring extension ioladder.kernel._uring is not built ({_exc}); build it with "
        "`python setup.py build_ext --inplace` or reinstall the package")

    class UringUnavailable(OSError):  # type: ignore[no-redef]
        """io_uring cannot be used here; str() names the exact cause."""
else:
    _IMPORT_ERROR = None
    UringUnavailable = _uring.UringUnavailable  # type: ignore[misc]


def availability() -> str | None:
    """None if the loop can run here, else the exact reason it cannot."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    return _uring.availability()


def new_event_loop(**kwargs: Any) -> asyncio.AbstractEventLoop:
    """A new :class:`UringEventLoop`; :class:`UringUnavailable` (an OSError) names why not.

    Keyword arguments go to :class:`UringEventLoop` (``entries``, ``buffers``, ``transports``).
    """
    reason = availability()
    if reason is not None:
        raise UringUnavailable(errno.ENOTSUP, f"ioladder.aio needs io_uring: {reason}")
    from ._loop import UringEventLoop

    return UringEventLoop(**kwargs)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """asyncio's default policy, making :class:`UringEventLoop` loops."""

    def _loop_factory(self) -> asyncio.AbstractEventLoop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__}>"


def install(fallback: bool = False) -> bool:
    """Make asyncio create ``ioladder.aio`` loops (sets :class:`EventLoopPolicy`).

    Returns True if the policy is installed. Where io_uring is unavailable it raises
    :class:`UringUnavailable`, or with ``fallback=True`` logs the reason, leaves asyncio's
    default policy in place and returns False.
    """
    reason = availability()
    if reason is not None:
        if not fallback:
            raise UringUnavailable(errno.ENOTSUP, f"ioladder.aio needs io_uring: {reason}")
        logger.warning("ioladder.aio: io_uring unavailable (%s); using asyncio's default event "
                       "loop", reason)
        return False
    asyncio.set_event_loop_policy(EventLoopPolicy())
    return True


def __getattr__(name: str) -> Any:
    if name == "UringEventLoop":
        from ._loop import UringEventLoop

        return UringEventLoop
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
