"""Hostile and careless peers: resets with data in flight, peers that never read, abrupt
drops of many connections, IPv6 loopback. Each must end only the connection concerned, within
the server's limits, and leave no descriptor, thread or connection record behind."""

from __future__ import annotations

import time

import pytest

from .support import (
    Collector,
    Probe,
    recv_until_end,
)

pytestmark = pytest.mark.timeout(30)


class Flood(Probe):
    """Writes ``size`` bytes as fast as flow control allows (it honours pause_writing)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.left = size
        self.paused = False

    def on_made(self) -> None:
        self._pump()

    def _pump(self) -> None:
        while self.left > 0 and not self.paused:
            n = min(65536, self.left)
            self.left -= n
            self.transport.write(b"z" * n)

    def on_pause_writing(self) -> None:
        self.paused = True

    def on_resume_writing(self) -> None:
        self.paused = False
        self._pump()


@pytest.mark.parametrize("size", [200_000, 8 * 1024 * 1024],
                         ids=["in-kernel", "in-transport"])
def test_shutdown_timeout_bounds_a_peer_that_never_reads(server, connect, size):
    # The bytes sit in the kernel (the close lingers, waiting for acknowledgements that never
    # come) or still in the transport (the flush cannot finish): shutdown(timeout) must end
    # both at its timeout with a reset, not wait for the linger time (5 s) on top.
    collector = Collector(lambda: Flood(size))
    srv = server(collector)
    clients = [connect(srv.port, rcvbuf=4096) for _ in range(3)]  # and never read
    collector.wait_for(3)
    time.sleep(0.2)  # let the writes fill every buffer they can
    start = time.monotonic()
    srv.shutdown(timeout=0.5)
    took = time.monotonic() - start
    assert took < 2.0, f"shutdown(timeout=0.5) took {took:.2f} s"
    collector.assert_all_lost_once()
    for client in clients:
        data, error = recv_until_end(client)
        assert isinstance(error, ConnectionResetError), f"{len(data)} bytes then {error!r}"
        assert len(data) < size
