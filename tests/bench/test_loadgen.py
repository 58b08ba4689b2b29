"""The load generator against real loopback servers: the C floor, and Python servers that
misbehave on purpose. Short runs, bounded time, no assertions about speed."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ioladder.bench import _loadgen
from ioladder.bench.floor import FloorServer, build_floor
from ioladder.bench.loadgen import (
    LoadResult,
    histogram_from_pairs,
    latency_summary,
    merge_histograms,
    run_inprocess,
    run_load,
)

# -------------------------------------------------------------------------- servers


class ThreadServer:
    """A thread-per-connection loopback server whose per-connection behaviour is `handler`."""

    def __init__(self, handler: Callable[[socket.socket, int], None], rcvbuf: int = 4096):
        self.handler = handler
        self.sock = socket.socket()
        # set before listen() so accepted sockets inherit it (and the window scale it implies)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        index = 0
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()
            index += 1

    def _serve(self, conn: socket.socket, index: int) -> None:
        try:
            self.handler(conn, index)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def corrupting_echo(every: int) -> Callable[[socket.socket, int], None]:
    """Echo, but invert the byte at stream offsets every-1, 2*every-1, ..."""

    def handler(conn: socket.socket, index: int) -> None:
        pos = 0
        while data := conn.recv(65536):
            buf = bytearray(data)
            off = (pos // every + 1) * every - 1
            while off < pos + len(buf):
                buf[off - pos] ^= 0xFF
                off += every
            conn.sendall(buf)
            pos += len(buf)

    return handler


def closing_echo(close_after: int) -> Callable[[socket.socket, int], None]:
    """Echo `close_after` bytes, then hang up: odd connections with RST, even ones with FIN."""

    def handler(conn: socket.socket, index: int) -> None:
        pos = 0
        while pos < close_after and (data := conn.recv(65536)):
            conn.sendall(data)
            pos += len(data)
        if index % 2:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return handler


def slow_echo(conn: socket.socket, index: int) -> None:
    """Echo faithfully, but in 8 KiB sips with a pause: a peer whose window stays small."""
    while data := conn.recv(8192):
        conn.sendall(data)
        time.sleep(0.0001)


def dribbling_echo(conn: socket.socket, index: int) -> None:
    """Echo everything, faithfully, in pieces of 1..7 bytes: partial reads on the client."""
    rng = random.Random(index)
    while data := conn.recv(4096):
        i = 0
        while i < len(data):
            n = rng.randint(1, 7)
            conn.sendall(data[i : i + n])
            i += n


@pytest.fixture(scope="module")
def floor() -> Iterator[FloorServer]:
    with FloorServer() as server:
        yield server


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket, int], None]], ThreadServer]]:
    servers: list[ThreadServer] = []

    def start(handler: Callable[[socket.socket, int], None]) -> ThreadServer:
        servers.append(ThreadServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def assert_ordered(r: LoadResult) -> None:
    assert 0 < r.min_us <= r.p50_us <= r.p99_us <= r.p999_us
    # the percentiles are bucket upper bounds (3 significant figures), max is exact
    assert r.p999_us <= r.max_us * 1.001 + 0.001


# -------------------------------------------------------------------------- (a) the floor


@pytest.mark.parametrize("size", [64, 4096])
def test_every_byte_verified_against_the_floor_server(floor: FloorServer, size: int) -> None:
    r = run_inprocess("127.0.0.1", floor.port, connections=10, size=size, depth=4,
                      warmup=0.1, duration=0.4)
    assert r.connections == 10 and r.connect_errors == 0
    assert r.messages > 0
    assert r.errors == 0 and r.verify_errors == 0 and r.close_errors == 0
    assert r.bytes == r.messages * size
    assert r.histogram().get_total_count() == r.messages
    assert_ordered(r)
    assert r.client_cpu_s > 0


def test_large_messages_against_the_floor_server(floor: FloorServer) -> None:
    r = run_inprocess("127.0.0.1", floor.port, connections=4, size=256 * 1024, depth=4,
                      warmup=0.05, duration=0.3)
    assert r.connections == 4
    assert r.messages > 0
    assert r.errors == 0


def test_generator_survives_short_writes_to_a_slow_reader(serve) -> None:
    # 8 x 512 KiB in flight is more than a loopback send buffer (~1 MiB after autotuning) plus
    # the slow server's 4 KiB receive buffer: sends come back short or EAGAIN, and the
    # generator must wait for EPOLLOUT and resume mid-message.
    server = serve(slow_echo)
    r = run_inprocess("127.0.0.1", server.port, connections=2, size=512 * 1024, depth=8,
                      warmup=0.0, duration=1.0)
    assert r.connections == 2
    assert r.messages > 0
    assert r.errors == 0


def test_floor_server_parks_unsent_bytes_and_drops_none(floor: FloorServer) -> None:
    # A client that writes 8 MiB before reading anything: the server's writes must come back
    # short, the rest be kept, reading paused, and every byte echoed in order in the end.
    payload = random.Random(7).randbytes(8 << 20)
    with socket.create_connection(("127.0.0.1", floor.port), timeout=30) as c:
        sender = threading.Thread(target=c.sendall, args=(payload,), daemon=True)
        sender.start()
        time.sleep(0.3)
        got = bytearray()
        while len(got) < len(payload):
            chunk = c.recv(1 << 20)
            assert chunk, "server closed early"
            got += chunk
        sender.join(10)
    assert bytes(got) == payload


def test_partial_reads_reassemble_without_errors(serve) -> None:
    server = serve(dribbling_echo)
    r = run_inprocess("127.0.0.1", server.port, connections=4, size=100, depth=3,
                      warmup=0.05, duration=0.3)
    assert r.connections == 4
    assert r.messages > 0
    assert r.errors == 0


def test_ipv6_loopback_and_floor_refuse_other_hosts(floor: FloorServer) -> None:
    with pytest.raises(ValueError):
        _loadgen.run("10.1.2.3", floor.port, 1, 64, 1, 0.0, 0.1)
    with pytest.raises(ValueError):
        run_load("192.0.2.1", floor.port, connections=1, duration=0.1)


# -------------------------------------------------------------------------- (b) corruption


def test_corrupting_server_is_caught(serve) -> None:
    size = 64
    server = serve(corrupting_echo(every=size * 50))  # one flipped byte every 50 messages
    r = run_inprocess("127.0.0.1", server.port, connections=10, size=size, depth=4,
                      warmup=0.0, duration=0.5)
    assert r.connections == 10
    assert r.errors > 0
    assert r.verify_errors > 0
    assert r.close_errors == 0


# -------------------------------------------------------------------------- (c) hang-ups


def test_server_closing_connections_counts_errors_and_does_not_hang(serve) -> None:
    server = serve(closing_echo(close_after=64 * 200))
    t0 = time.monotonic()
    r = run_inprocess("127.0.0.1", server.port, connections=10, size=64, depth=2,
                      warmup=0.0, duration=3.0)
    wall = time.monotonic() - t0
    assert r.connections == 10
    assert r.close_errors == 10 and r.errors == 10
    assert r.verify_errors == 0
    # every connection died, so the run ends early instead of waiting out its duration
    assert wall < 3.0 + 5.0


def silent(conn: socket.socket, index: int) -> None:
    """Accept and read, never answer."""
    while conn.recv(65536):
        pass


def test_server_that_never_answers_fails_connects_within_the_timeout(serve) -> None:
    server = serve(silent)
    t0 = time.monotonic()
    r = run_inprocess("127.0.0.1", server.port, connections=5, warmup=0.0, duration=0.2,
                      connect_timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert r.connections == 0
    assert r.connect_errors == 5
    assert "timed out" in r.connect_error.lower()


def test_refused_connections_are_reported() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = run_inprocess("127.0.0.1", port, connections=5, duration=0.2, warmup=0.0)
    assert r.connections == 0
    assert r.connect_errors == 5
    assert "refused" in r.connect_error.lower()
    assert r.messages == 0


# -------------------------------------------------------------------------- (d) fixed rate


def test_fixed_rate_paces_near_the_offered_rate(floor: FloorServer) -> None:
    rate, duration = 2000.0, 1.0
    r = run_inprocess("127.0.0.1", floor.port, connections=10, size=64, depth=4,
                      warmup=0.2, duration=duration, rate=rate)
    assert r.errors == 0
    # an unpaced run on the same server completes hundreds of thousands; paced, about 2,000
    assert 0.5 * rate * duration <= r.messages <= 1.3 * rate * duration
    assert r.rate == rate
    assert_ordered(r)


# -------------------------------------------------------------------------- (e) histograms


def test_c_histogram_buckets_map_one_to_one_onto_hdrhistogram(floor: FloorServer) -> None:
    raw = _loadgen.run("127.0.0.1", floor.port, 10, 64, 2, 0.05, 0.3)
    pairs = raw["hist"]
    assert sum(c for _, c in pairs) == raw["messages"] > 0
    h = histogram_from_pairs(pairs)
    assert h.get_total_count() == raw["messages"]
    # each (value, count) is a distinct bucket of the same layout: re-recording keeps it so
    for value, count in pairs:
        assert h.get_count_at_value(value) == count
    assert h.get_min_value() <= raw["hist_min_ns"] <= raw["hist_max_ns"]


def test_merging_two_runs_adds_counts_and_keeps_percentiles_sane(floor: FloorServer) -> None:
    a = run_inprocess("127.0.0.1", floor.port, connections=10, size=64, depth=1,
                      warmup=0.05, duration=0.3)
    b = run_inprocess("127.0.0.1", floor.port, connections=10, size=64, depth=8,
                      warmup=0.05, duration=0.3)
    merged = merge_histograms([a, b])
    assert merged.get_total_count() == a.messages + b.messages
    lat = latency_summary(merged)
    assert lat["p50_us"] <= lat["p99_us"] <= lat["p999_us"]
    # a percentile of a mixture lies between the parts' percentiles
    for key in ("p50_us", "p99_us"):
        lo, hi = sorted((getattr(a, key), getattr(b, key)))
        assert lo <= lat[key] <= hi
    # merging through the encoded form and the decoded form agree
    again = merge_histograms([a.latency_hdr, b.histogram()])
    assert again.get_total_count() == merged.get_total_count()
    assert latency_summary(again) == lat


# -------------------------------------------------------------------------- (f) the CLI


def test_cli_prints_one_json_line_with_typed_keys(floor: FloorServer) -> None:
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.run(
        [sys.executable, "-m", "ioladder.bench.loadgen", "--host", "127.0.0.1",
         "--port", str(floor.port), "--connections", "6", "--size", "64", "--depth", "2",
         "--warmup", "0.1", "--duration", "0.3", "--cpu", str(cpu), "--processes", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    types = {
        "connections": int, "connect_errors": int, "messages": int, "bytes": int,
        "errors": int, "verify_errors": int, "close_errors": int, "processes": int,
        "elapsed": float, "rt_per_s": float, "mb_per_s": float, "p50_us": float,
        "p99_us": float, "p999_us": float, "max_us": float, "client_cpu_s": float,
        "client_cpu_util": float, "latency_hdr": str, "per_process": list, "cpus": list,
    }
    for key, typ in types.items():
        assert isinstance(d[key], typ), (key, d[key])
    assert d["connections"] == 6 and d["processes"] == 2 and d["cpus"] == [cpu]
    assert d["messages"] > 0 and d["errors"] == 0
    assert len(d["per_process"]) == 2
    assert sum(p["connections"] for p in d["per_process"]) == 6
    assert LoadResult.from_dict(d).histogram().get_total_count() == d["messages"]


def test_cli_rejects_a_remote_host() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ioladder.bench.loadgen", "--host", "8.8.8.8", "--port", "7"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "loopback" in proc.stderr


def test_floor_server_exits_cleanly_on_sigterm() -> None:
    server = FloorServer().start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
        assert server.stop() == 0


def test_floor_binary_is_cached_by_source_hash() -> None:
    assert build_floor() == build_floor()
    assert os.access(build_floor(), os.X_OK)
