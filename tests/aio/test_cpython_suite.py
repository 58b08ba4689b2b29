"""CPython's own asyncio tests, run against ``ioladder.aio`` (the conformance bar, design §6).

The interpreter ships them as ``test.test_asyncio`` (pyenv and python.org builds install
``Lib/test``; some distributions split it into a separate package, e.g. Debian's
``libpython3.X-testsuite``). Where it is missing the whole module is skipped, saying so.

Two kinds of tests are collected here:

* the loop-parametrized mixins CPython instantiates once per event loop
  (``EventLoopTestsMixin`` + ``SubprocessTestsMixin``, ``BaseSockTestsMixin``,
  ``SendfileTestsBase``, ``BaseStartServer``, ``BaseTestBufferedProtocol``, ``SubprocessMixin``,
  ``BaseStartTLS``), each given a ``create_event_loop``/``new_loop`` returning our loop;
* whole test modules that create their loops through the policy (``asyncio.new_event_loop()``,
  ``asyncio.run()``, ``IsolatedAsyncioTestCase``): they run with :class:`ioladder.aio
  .EventLoopPolicy` installed around every test (``StreamTests``, ``TestSSL``, task groups,
  timeouts, ``wait_for``, queues, locks, ``to_thread``, contexts, runners, tasks, PEP 492,
  ``HandleTests``, the Unix sendfile tests). Many of their tests build their own loops (mock
  or ``TestLoop``); they run here too, and cost little.

Tests that cannot pass on this loop are listed in ``KNOWN`` with their reason (and in
docs/aio.md): 8, all testing the selector loop's private sendfile path or the child-watcher
API this loop does not use; the other skips are CPython's own (a selector-loop-only
test, and a connect race CPython itself skips when the kernel reports the socket connected).
Three tests fail with asyncio's own proactor transports on Linux (see ``_STDLIB_SHUTDOWN``).

``IOLADDER_AIO_TRANSPORTS=proactor`` runs the same tests on asyncio's own proactor transports
(a future per recv/send) over our proactor: the proactor interface alone, checked by CPython.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import unittest

import pytest

import ioladder.aio as aio

try:
    from test.test_asyncio import utils as test_utils
except ImportError as exc:  # pragma: no cover -- depends on the interpreter's packaging
    pytest.skip(f"CPython's test package (test.test_asyncio) is not installed with this "
                f"interpreter ({exc}); nothing to run", allow_module_level=True)

if aio.availability() is not None:  # pragma: no cover
    pytest.skip(f"io_uring unavailable: {aio.availability()}", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)

_TRANSPORTS = os.environ.get("IOLADDER_AIO_TRANSPORTS")
LOOP_KWARGS = {"transports": _TRANSPORTS} if _TRANSPORTS else {}

_SELECTOR_SENDFILE = (
    "tests the selector loop's private os.sendfile() path: calls "
    "_sock_sendfile_native_impl() or patches asyncio.unix_events.os; this loop's native "
    "sendfile is an io_uring splice (tested by SendfileTestsBase and tests/aio)")
_CHILD_WATCHER = (
    "expects the loop to consult the policy's child watcher; this loop watches its children "
    "itself (a pidfd polled by the ring, as uvloop does without watchers; watchers are "
    "deprecated since Python 3.12)")

#: test id ("Class.test_name") -> why it cannot pass on this loop (mirrored in docs/aio.md)
KNOWN: dict[str, str] = {
    **{f"Aio_unix_events_SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_{t}":
       _SELECTOR_SENDFILE
       for t in ("not_available", "blocking_error", "cancel1", "cancel2", "exception",
                 "os_error_first_call", "os_error_next_call")},
    "Aio_subprocess_GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher":
        _CHILD_WATCHER,
}

_STDLIB_SHUTDOWN = (
    "asyncio's own proactor transport (used with IOLADDER_AIO_TRANSPORTS=proactor) calls "
    "sock.shutdown(SHUT_RDWR) unguarded in _call_connection_lost; Linux raises ENOTCONN there "
    "once the peer has reset the connection (Windows does not), so connection_lost is reported "
    "as a callback error")
if _TRANSPORTS == "proactor":
    KNOWN.update({
        "Aio_streams_StreamTests.test_drain_raises": _STDLIB_SHUTDOWN,
        "Aio_ssl_TestSSL.test_create_server_ssl_1": _STDLIB_SHUTDOWN,
        "Aio_ssl_TestSSL.test_create_server_ssl_over_ssl": _STDLIB_SHUTDOWN,
    })


def new_loop() -> asyncio.AbstractEventLoop:
    return aio.new_event_loop(**LOOP_KWARGS)


class Policy(aio.EventLoopPolicy):
    def _loop_factory(self) -> asyncio.AbstractEventLoop:  # type: ignore[override]
        return new_loop()


@pytest.fixture(autouse=True)
def _aio_policy():
    asyncio.set_event_loop_policy(Policy())
    yield
    asyncio.set_event_loop_policy(None)


def _module(name: str):
    try:
        return importlib.import_module(f"test.test_asyncio.{name}")
    except ImportError:  # pragma: no cover -- absent in this Python version
        return None


def _mark_known(cls: type) -> type:
    for test_id, reason in KNOWN.items():
        owner, _, method = test_id.partition(".")
        if owner == cls.__name__ and hasattr(cls, method):
            setattr(cls, method, unittest.skip(reason)(getattr(cls, method)))
    return cls


def _export(name: str, bases: tuple[type, ...], body: dict | None = None) -> None:
    globals()[name] = _mark_known(type(name, bases, dict(body or {})))


def _create_event_loop(self):
    return new_loop()


def _new_loop(self):
    return new_loop()


def _subprocess_setup(self):
    test_utils.TestCase.setUp(self)
    self.loop = new_loop()
    self.set_event_loop(self.loop)


# ---------------------------------------------------------------- loop-parametrized mixins

_events = _module("test_events")
if _events is not None:
    _mixins = tuple(getattr(_events, n) for n in ("UnixEventLoopTestsMixin",
                                                  "SubprocessTestsMixin") if hasattr(_events, n))
    if not _mixins:  # pragma: no cover
        _mixins = (_events.EventLoopTestsMixin,)
    _export("AioEventLoopTests", (*_mixins, test_utils.TestCase),
            {"create_event_loop": _create_event_loop})

_sock = _module("test_sock_lowlevel")
if _sock is not None:
    _export("AioSockTests", (_sock.BaseSockTestsMixin, test_utils.TestCase),
            {"create_event_loop": _create_event_loop})

_sendfile = _module("test_sendfile")
if _sendfile is not None:
    _export("AioSendfileTests", (_sendfile.SendfileTestsBase, test_utils.TestCase),
            {"create_event_loop": _create_event_loop})

_server = _module("test_server")
if _server is not None:
    # the selector flavour adds the UNIX-socket server test to the shared ones
    _export("AioStartServerTests", (_server.SelectorStartServerTests,), {"new_loop": _new_loop})

_buffered = _module("test_buffered_proto")
if _buffered is not None:
    _export("AioBufferedProtocolTests",
            (_buffered.BaseTestBufferedProtocol, unittest.TestCase), {"new_loop": _new_loop})

_subprocess = _module("test_subprocess")
if _subprocess is not None:
    _export("AioSubprocessTests", (_subprocess.SubprocessMixin, test_utils.TestCase),
            {"setUp": _subprocess_setup})

_sslproto = _module("test_sslproto")
if _sslproto is not None and hasattr(_sslproto, "BaseStartTLS"):
    _export("AioStartTLSTests", (_sslproto.BaseStartTLS, unittest.TestCase),
            {"new_loop": _new_loop})

# ---------------------------------------------------------------- policy-driven modules

_POLICY_MODULES = {
    "test_streams": ("StreamTests",),
    "test_ssl": ("TestSSL",),
    "test_taskgroups": None,
    "test_timeouts": None,
    "test_waitfor": None,
    "test_queues": None,
    "test_locks": None,
    "test_threads": None,
    "test_context": None,
    "test_events": ("HandleTests",),
    "test_subprocess": ("GenericWatcherTests",),
    "test_unix_events": ("SelectorEventLoopUnixSockSendfileTests",),
    "test_runners": None,
    "test_pep492": None,
    "test_tasks": None,
}

for _name, _classes in _POLICY_MODULES.items():
    _mod = _module(_name)
    if _mod is None:
        continue
    for _attr in dir(_mod):
        _cls = getattr(_mod, _attr)
        if not (isinstance(_cls, type) and issubclass(_cls, unittest.TestCase)
                and _cls.__module__ == _mod.__name__):
            continue
        if _classes is not None and _attr not in _classes:
            continue
        _export(f"Aio_{_name[5:]}_{_attr}", (_cls,))


def test_the_policy_makes_aio_loops():
    loop = asyncio.new_event_loop()
    try:
        assert type(loop).__name__ == "UringEventLoop"
    finally:
        loop.close()
