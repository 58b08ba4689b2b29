"""``echo``: send every received byte back, with asyncio-style flow control.

When the peer reads slower than it writes, the transport's buffer passes the high-water mark and
``pause_writing`` is called; the app then stops reading until ``resume_writing``, so memory stays
bounded by the water marks instead of growing with what the peer sends.
"""

from __future__ import annotations

import asyncio


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("transport",)  # one per connection: no per-instance dict
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        # Half-close: the peer finished sending; everything echoed so far is flushed, then the
        # transport closes (returning False asks asyncio's close path for that).
        return False

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()
