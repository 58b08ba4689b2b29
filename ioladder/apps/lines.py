"""``lines``: a line-oriented echo that rejects bad input.

Each ``\\n``-terminated line must be valid UTF-8 and at most ``max_line`` bytes; it is echoed
back. Bad input is answered with one ``ERR <reason>`` line and the connection is closed, so a
malformed or oversized stream costs the server at most ``max_line`` bytes and never affects
other connections.
"""

from __future__ import annotations

import asyncio

DEFAULT_MAX_LINE = 8192


class LineProtocol(asyncio.Protocol):
    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._pending = bytearray()
        self.transport: asyncio.Transport | None = None
        #: the reason the connection was rejected, if it was
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        self._pending += data
        start = 0
        out = []
        while True:
            end = self._pending.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._pending[start:end + 1])
            start = end + 1
            if len(line) > self.max_line:
                self._reject(f"line too long ({len(line)} bytes, limit {self.max_line})", out)
                return
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._reject(f"invalid UTF-8 at byte {exc.start} of line", out)
                return
            out.append(line)
        del self._pending[:start]
        if len(self._pending) > self.max_line:
            self._reject(f"line too long (over {self.max_line} bytes without a newline)", out)
            return
        if out:
            assert self.transport is not None
            self.transport.writelines(out)

    def _reject(self, reason: str, out: list[bytes]) -> None:
        self.error = reason
        self._pending.clear()
        assert self.transport is not None
        out.append(f"ERR {reason}\n".encode())
        self.transport.writelines(out)
        self.transport.close()

    def eof_received(self) -> bool:
        if self._pending and self.error is None:
            self._reject("incomplete line at end of stream", [])
        return False

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()
