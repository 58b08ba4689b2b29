"""The asyncio.Transport surface every rung hands to connection_made: extra info, write-eof
capability, write-buffer limits and argument checking."""

from __future__ import annotations

import asyncio
import socket

import pytest

from .support import Collector, Probe

pytestmark = pytest.mark.timeout(30)


class Inspector(Probe):
    """Calls the transport's API from connection_made and keeps what it saw."""

    def on_made(self) -> None:
        t = self.transport
        self.seen: dict[str, object] = {}
        self.seen["is_transport"] = isinstance(t, asyncio.Transport)
        self.seen["peername"] = t.get_extra_info("peername")
        self.seen["sockname"] = t.get_extra_info("sockname")
        sock = t.get_extra_info("socket")
        self.seen["socket"] = (sock.family, sock.type, sock.getsockname(), sock.getpeername())
        self.seen["default"] = t.get_extra_info("no such key", "fallback")
        self.seen["can_write_eof"] = t.can_write_eof()
        self.seen["is_closing"] = t.is_closing()
        self.seen["is_reading"] = t.is_reading()
        self.seen["protocol"] = t.get_protocol() is self
        self.seen["limits"] = [t.get_write_buffer_limits()]
        self.seen["size"] = t.get_write_buffer_size()
        errors = []
        for high, low in [(100, 200), (-1, None), (None, -4), (10, -1)]:
            try:
                t.set_write_buffer_limits(high=high, low=low)
            except ValueError:
                errors.append((high, low))
        self.seen["rejected"] = errors
        self.seen["limits_after_rejects"] = t.get_write_buffer_limits()
        for high, low in [(None, 1000), (1000, None), (500, 500), (0, 0), (None, None)]:
            t.set_write_buffer_limits(high=high, low=low)
            self.seen["limits"].append(t.get_write_buffer_limits())
        try:
            t.write("text")  # type: ignore[arg-type]
        except TypeError:
            self.seen["str_rejected"] = True
        t.writelines([b"hello", bytearray(b", "), memoryview(b"world")])


def test_transport_api_reports_extra_info_limits_and_capabilities(server, connect):
    collector = Collector(Inspector)
    srv = server(collector)
    client = connect(srv.port)
    assert client.recv(100) == b"hello, world"
    (proto,) = collector.wait_for(1)
    seen = proto.seen
    assert seen["is_transport"] is True
    assert seen["peername"] == client.getsockname()
    assert seen["sockname"] == client.getpeername()
    assert seen["socket"] == (socket.AF_INET, socket.SOCK_STREAM, client.getpeername(),
                              client.getsockname())
    assert seen["default"] == "fallback"
    assert seen["can_write_eof"] is True
    assert seen["is_closing"] is False
    assert seen["is_reading"] is True
    assert seen["protocol"] is True
    assert seen["size"] == 0
    # asyncio's rules (FlowControlMixin._set_write_buffer_limits): high defaults to 64 KiB or
    # 4 * low, low to high // 4, and high >= low >= 0 or ValueError.
    assert seen["rejected"] == [(100, 200), (-1, None), (None, -4), (10, -1)]
    assert seen["limits_after_rejects"] == (16384, 65536)
    assert seen["limits"] == [(16384, 65536), (1000, 4000), (250, 1000), (500, 500), (0, 0),
                              (16384, 65536)]
    assert seen.get("str_rejected") is True
    client.close()
    collector.assert_all_lost_once()
