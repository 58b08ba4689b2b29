"""Built-in applications: ordinary ``asyncio`` protocols that run unchanged on every rung."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .discard import DiscardProtocol
from .echo import EchoProtocol
from .lines import LineProtocol

#: app id -> protocol factory (``ioladder serve --app``)
APPS: dict[str, Callable[[], asyncio.BaseProtocol]] = {
    "echo": EchoProtocol,
    "discard": DiscardProtocol,
    "lines": LineProtocol,
}

__all__ = ["APPS", "DiscardProtocol", "EchoProtocol", "LineProtocol"]
