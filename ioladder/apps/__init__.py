"""Built-in applications: ordinary ``asyncio`` protocols that run unchanged on every rung.

``APPS`` maps an app id (``ioladder serve --app``) to an *app builder*: a callable that takes
:class:`AppOptions` and returns the protocol factory to serve. Apps that need no options
(``echo``, ``discard``, ``lines``) ignore them; ``http`` and ``files`` read ``root`` and
``workers``. :func:`make_factory` is the one way to turn an app id (or a ``"module:attr"``
spec naming any zero-argument protocol factory) plus options into a protocol factory; the CLI,
the workers and the bench all use it, so a worker process builds exactly what a single process
would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from .discard import DiscardProtocol
from .echo import EchoProtocol
from .lines import LineProtocol

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


@dataclasses.dataclass(frozen=True)
class AppOptions:
    """What an app builder may be told (plain values: they cross into worker processes).

    ``root``: directory served by ``http`` (under ``/static/``) and ``files`` (the whole tree;
    default: the current directory). ``workers``: how many worker processes serve the app
    (``http``/``files`` add an ``X-Worker-Pid`` header when it is above 1).
    ``header_timeout``: seconds ``http``/``files`` give a client to send a request's head
    (then 408 and close); None: the apps' default (30 s), 0: no limit.
    """

    root: str | None = None
    workers: int = 1
    header_timeout: float | None = None

    @classmethod
    def from_args(cls, args: Any) -> AppOptions:
        """Options from parsed CLI arguments (missing attributes keep their defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: getattr(args, name) for name in fields if hasattr(args, name)})


AppBuilder = Callable[[AppOptions], ProtocolFactory]


def _fixed(factory: ProtocolFactory) -> AppBuilder:
    """The builder of an app that takes no options."""
    def build(options: AppOptions) -> ProtocolFactory:
        return factory
    build.__doc__ = f"{getattr(factory, '__name__', factory)!s} (no options)"
    return build


def _build_http(options: AppOptions) -> ProtocolFactory:
    from .http import build_http
    return build_http(options)


def _build_files(options: AppOptions) -> ProtocolFactory:
    from .files import build_files
    return build_files(options)


#: app id -> app builder (``ioladder serve --app``)
APPS: dict[str, AppBuilder] = {
    "echo": _fixed(EchoProtocol),
    "discard": _fixed(DiscardProtocol),
    "lines": _fixed(LineProtocol),
    "http": _build_http,
    "files": _build_files,
}


def make_factory(app: str, options: AppOptions | None = None, **kwargs: Any) -> ProtocolFactory:
    """The protocol factory for ``app``: an id from :data:`APPS`, or ``"module:attr"`` naming an
    importable zero-argument protocol factory (options do not apply to those).

    ``make_factory("http", root="/srv/www")`` is short for
    ``make_factory("http", AppOptions(root="/srv/www"))``.
    """
    if options is None:
        options = AppOptions(**kwargs)
    elif kwargs:
        options = dataclasses.replace(options, **kwargs)
    builder = APPS.get(app)
    if builder is not None:
        return builder(options)
    if ":" not in app:
        raise ValueError(f"unknown app {app!r}; choose one of {', '.join(sorted(APPS))} "
                         f"or give 'module:attr'")
    module_name, _, attr = app.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{app!r} is not callable")
    return obj


__all__ = ["APPS", "AppBuilder", "AppOptions", "DiscardProtocol", "EchoProtocol",
           "LineProtocol", "ProtocolFactory", "make_factory"]
