"""Thin bindings for signal-driven I/O: ``signalfd(2)``, ``F_SETSIG`` and ``F_SETOWN_EX``.

The standard library has ``signal.pthread_sigmask`` and ``fcntl.fcntl`` but neither
``signalfd(2)`` nor the ``fcntl`` commands that turn ``O_ASYNC`` into a per-socket, per-thread
message (``F_SETSIG``, ``F_SETOWN_EX``/``F_OWNER_TID``). This module supplies them through
``ctypes`` and ``fcntl``; the ``asyncselect`` rung is their user.

How the pieces fit (``fcntl(2)``, ``signalfd(2)``, ``signal(7)``):

* ``F_SETOWN_EX {F_OWNER_TID, tid}`` names one *thread* as the owner of a descriptor: the
  signals that descriptor raises are thread-directed, queued on that thread alone.
* ``F_SETSIG rt`` makes ``O_ASYNC`` raise the realtime signal ``rt`` (queued, one per event,
  carrying ``si_fd`` and ``si_band``) instead of a bare ``SIGIO``. When the realtime queue is
  full (``RLIMIT_SIGPENDING``) the kernel falls back to a plain ``SIGIO`` without the fd.
* A thread that blocks those signals and reads them from a ``signalfd`` never runs a handler:
  each read returns ``struct signalfd_siginfo`` records (128 bytes each) — a message queue.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import signal
import struct
from collections.abc import Iterable

# --------------------------------------------------------------------------- constants
#: <fcntl.h> commands the stdlib does not export (asm-generic values, all Linux archs).
F_SETSIG = 10
F_GETSIG = 11
F_SETOWN_EX = 15
F_GETOWN_EX = 16
#: ``struct f_owner_ex.type``
F_OWNER_TID = 0
F_OWNER_PID = 1
F_OWNER_PGRP = 2

SFD_CLOEXEC = os.O_CLOEXEC
SFD_NONBLOCK = os.O_NONBLOCK

#: ``si_code`` of a signal raised by ``O_ASYNC`` (``POLL_IN`` ... ``POLL_HUP``, <siginfo.h>).
POLL_IN, POLL_OUT, POLL_MSG, POLL_ERR, POLL_PRI, POLL_HUP = 1, 2, 3, 4, 5, 6
#: ``si_code`` of a signal the kernel sends without information (the overflow ``SIGIO``).
SI_KERNEL = 0x80

#: ``struct f_owner_ex { int type; pid_t pid; }``
_F_OWNER_EX = struct.Struct("ii")

#: glibc's ``sigset_t`` is 1024 bits; the kernel reads the first ``_NSIG / 8`` bytes.
_SIGSET_WORDS = 1024 // (8 * ctypes.sizeof(ctypes.c_ulong))
_WORD_BITS = 8 * ctypes.sizeof(ctypes.c_ulong)


class SignalfdSiginfo(ctypes.Structure):
    """``struct signalfd_siginfo`` (<sys/signalfd.h>), 128 bytes, for reference and tests.

    The hot path parses records with :data:`SIGINFO` instead (one ``struct`` call per batch).
    """

    _fields_ = [
        ("ssi_signo", ctypes.c_uint32),
        ("ssi_errno", ctypes.c_int32),
        ("ssi_code", ctypes.c_int32),
        ("ssi_pid", ctypes.c_uint32),
        ("ssi_uid", ctypes.c_uint32),
        ("ssi_fd", ctypes.c_int32),
        ("ssi_tid", ctypes.c_uint32),
        ("ssi_band", ctypes.c_uint32),
        ("ssi_overrun", ctypes.c_uint32),
        ("ssi_trapno", ctypes.c_uint32),
        ("ssi_status", ctypes.c_int32),
        ("ssi_int", ctypes.c_int32),
        ("ssi_ptr", ctypes.c_uint64),
        ("ssi_utime", ctypes.c_uint64),
        ("ssi_stime", ctypes.c_uint64),
        ("ssi_addr", ctypes.c_uint64),
        ("ssi_addr_lsb", ctypes.c_uint16),
        ("__pad2", ctypes.c_uint16),
        ("ssi_syscall", ctypes.c_int32),
        ("ssi_call_addr", ctypes.c_uint64),
        ("ssi_arch", ctypes.c_uint32),
        ("__pad", ctypes.c_uint8 * 28),
    ]


SIGINFO_SIZE = 128
assert ctypes.sizeof(SignalfdSiginfo) == SIGINFO_SIZE
#: The leading fields of one record: (ssi_signo, ssi_code, ssi_fd, ssi_band); the rest skipped.
SIGINFO = struct.Struct(f"=I4xi8xi4xI{SIGINFO_SIZE - 32}x")
assert SIGINFO.size == SIGINFO_SIZE


# ------------------------------------------------------------------------------- libc
_libc: ctypes.CDLL | None = None
_load_error: str | None = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _signalfd = _libc.signalfd
    _signalfd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    _signalfd.restype = ctypes.c_int
except (OSError, AttributeError) as exc:  # not glibc/musl, or no signalfd symbol
    _load_error = f"libc has no signalfd(): {exc}"


def load_error() -> str | None:
    """None when ``signalfd`` is callable, else why not."""
    return _load_error


def sigset(signals: Iterable[int]) -> ctypes.Array[ctypes.c_ulong]:
    """A C ``sigset_t`` holding ``signals``."""
    words = (ctypes.c_ulong * _SIGSET_WORDS)()
    for sig in signals:
        bit = int(sig) - 1
        words[bit // _WORD_BITS] |= 1 << (bit % _WORD_BITS)
    return words


def signalfd(signals: Iterable[int], flags: int = SFD_NONBLOCK | SFD_CLOEXEC) -> int:
    """A new signalfd that dequeues ``signals`` (which the reading thread must block)."""
    if _load_error is not None:
        raise OSError(errno.ENOSYS, _load_error)
    mask = sigset(signals)
    fd = _signalfd(-1, ctypes.byref(mask), flags)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"signalfd: {os.strerror(err)}")
    return fd


def read_siginfo(fd: int, max_records: int = 512) -> list[tuple[int, int, int, int]]:
    """Dequeue up to ``max_records`` pending signals from a non-blocking signalfd.

    Returns ``(signo, code, fd, band)`` per signal, oldest first per signal number; ``[]``
    when none is pending. Only the calling thread's own and the process's shared pending
    signals are visible (``signalfd(2)``).
    """
    try:
        data = os.read(fd, SIGINFO_SIZE * max_records)
    except (BlockingIOError, InterruptedError):
        return []
    return list(SIGINFO.iter_unpack(data))


# ----------------------------------------------------------------------- fcntl helpers
def set_owner_thread(fd: int, tid: int) -> None:
    """``F_SETOWN_EX {F_OWNER_TID, tid}``: signals of ``fd`` go to thread ``tid`` only."""
    fcntl.fcntl(fd, F_SETOWN_EX, _F_OWNER_EX.pack(F_OWNER_TID, tid))


def get_owner(fd: int) -> tuple[int, int]:
    """``F_GETOWN_EX``: ``(type, pid)``; type is ``F_OWNER_TID``/``_PID``/``_PGRP``."""
    return _F_OWNER_EX.unpack(fcntl.fcntl(fd, F_GETOWN_EX, bytes(_F_OWNER_EX.size)))


def set_signal(fd: int, signum: int) -> None:
    """``F_SETSIG``: raise ``signum`` (with si_fd/si_band) instead of ``SIGIO``."""
    fcntl.fcntl(fd, F_SETSIG, signum)


def get_signal(fd: int) -> int:
    return fcntl.fcntl(fd, F_GETSIG)


def set_async(fd: int, on: bool = True) -> None:
    """Turn ``O_ASYNC`` (signal-driven I/O) and ``O_NONBLOCK`` on or ``O_ASYNC`` off."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    new = (flags | os.O_ASYNC | os.O_NONBLOCK) if on else (flags & ~os.O_ASYNC)
    if new != flags:
        fcntl.fcntl(fd, fcntl.F_SETFL, new)


def own_async(fd: int, tid: int, signum: int) -> None:
    """Make ``fd`` post ``signum`` messages to thread ``tid``.

    The order matters: the owner and the signal are set *before* ``O_ASYNC``, so the very
    first event already goes to ``tid`` as ``signum`` — never as a process-wide ``SIGIO``.
    """
    set_owner_thread(fd, tid)
    set_signal(fd, signum)
    set_async(fd, True)


# --------------------------------------------------------------------- signal choice
_RT_SPEC = re.compile(r"^\s*(?:SIG)?RT(MIN|MAX)\s*(?:([+-])\s*(\d+))?\s*$", re.IGNORECASE)


def parse_signal(spec: str | int) -> int:
    """A realtime signal number from ``38``, ``"38"``, ``"SIGRTMIN+4"`` or ``"RTMAX-2"``.

    Raises ValueError unless the result lies in ``[SIGRTMIN, SIGRTMAX]`` (glibc's SIGRTMIN,
    which already skips the two signals the threading library keeps for itself).
    """
    if isinstance(spec, int):
        num = spec
    else:
        text = spec.strip()
        m = _RT_SPEC.match(text)
        if m:
            base = signal.SIGRTMIN if m.group(1).upper() == "MIN" else signal.SIGRTMAX
            off = int(m.group(3) or 0)
            num = base + off if m.group(2) != "-" else base - off
        elif text.isdigit():
            num = int(text)
        else:
            raise ValueError(f"not a realtime signal: {spec!r} (use e.g. SIGRTMIN+4 or 38)")
    if not signal.SIGRTMIN <= num <= signal.SIGRTMAX:
        raise ValueError(f"signal {num} is not a realtime signal "
                         f"(SIGRTMIN={int(signal.SIGRTMIN)}..SIGRTMAX={int(signal.SIGRTMAX)})")
    return int(num)
