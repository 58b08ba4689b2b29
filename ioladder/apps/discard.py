"""``discard``: read and drop everything (RFC 863), counting bytes."""

from __future__ import annotations

import asyncio


class DiscardProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
