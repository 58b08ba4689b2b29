"""The completion port's queue semantics: post/get, timeouts, the concurrency value, LIFO
release of waiting threads, worker pools and closing (GetQueuedCompletionStatus,
PostQueuedCompletionStatus, CreateIoCompletionPort's NumberOfConcurrentThreads)."""

from __future__ import annotations

import threading
import time

import pytest

from ioladder.iocp import (
    CompletionPort,
    Overlapped,
    PortClosed,
    WaitTimeout,
    WorkerPool,
    cpu_count,
)

pytestmark = pytest.mark.timeout(30)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# ------------------------------------------------------------------------------ post / get


def test_post_get_round_trip_keeps_key_and_overlapped_identity(make_port):
    port = make_port(1)
    key, ov = object(), Overlapped(user="mine")
    port.post_queued(42, key, ov)
    nbytes, got_key, got_ov = port.get_queued(timeout=5)
    assert nbytes == 42
    assert got_key is key
    assert got_ov is ov and got_ov.user == "mine"


def test_posted_packets_come_out_in_order_and_overlapped_may_be_anything(make_port):
    port = make_port(1)
    items = [(i, f"key{i}", {"n": i}) for i in range(100)]
    for packet in items:
        port.post_queued(*packet)
    assert [port.get_queued(timeout=5) for _ in items] == items
    port.post_queued()  # all defaults: (0, None, None), like a NULL lpOverlapped
    assert port.get_queued(timeout=5) == (0, None, None)


def test_post_from_another_thread_wakes_a_thread_blocked_in_get_queued(make_port):
    port = make_port(2)
    got: list = []
    t = threading.Thread(target=lambda: got.append(port.get_queued(timeout=10)))
    t.start()
    assert wait_until(lambda: port.waiting == 1)
    time.sleep(0.05)  # it is now asleep in the ring
    start = time.monotonic()
    port.post_queued(7, "k", None)
    t.join(5)
    assert got == [(7, "k", None)]
    assert time.monotonic() - start < 1.0


def test_get_queued_timeout_raises_wait_timeout(make_port):
    port = make_port(1)
    start = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        port.get_queued(timeout=0.2)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert 0.19 <= elapsed < 2.0
    start = time.monotonic()
    with pytest.raises(WaitTimeout):
        port.get_queued(timeout=0)  # a poll
    assert time.monotonic() - start < 0.5
    # A timeout leaves the port fully usable.
    port.post_queued(1, "after", None)
    assert port.get_queued(timeout=0) == (1, "after", None)


def test_timeouts_of_several_waiting_threads_are_independent(make_port):
    port = make_port(4)
    results: dict[float, float] = {}

    def wait(timeout: float) -> None:
        start = time.monotonic()
        try:
            port.get_queued(timeout=timeout)
        except WaitTimeout:
            results[timeout] = time.monotonic() - start

    threads = [threading.Thread(target=wait, args=(t,)) for t in (0.1, 0.3, 0.6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(results) == [0.1, 0.3, 0.6]
    for timeout, elapsed in results.items():
        assert timeout - 0.01 <= elapsed < timeout + 1.0


def test_post_after_is_a_timer_whose_expiry_is_a_completion(make_port):
    port = make_port(1)
    ov = Overlapped()
    start = time.monotonic()
    port.post_after(0.15, "tick", ov)
    assert ov.pending
    assert port.get_queued(timeout=5) == (0, "tick", ov)
    assert time.monotonic() - start >= 0.14
    assert not ov.pending and ov.error == 0


def test_default_concurrency_is_the_cpu_count(make_port):
    assert make_port().concurrency == cpu_count()
    assert make_port(3).concurrency == 3
    with pytest.raises(ValueError):
        CompletionPort(-1)


# ----------------------------------------------------------------------- concurrency value


class Gauge:
    """Counts handlers running at once; remembers the peak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.done = 0
        self.threads: set[str] = set()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.threads.add(threading.current_thread().name)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1
            self.done += 1


@pytest.mark.parametrize("concurrency, workers", [(2, 6), (1, 4), (3, 8)])
def test_concurrency_limit_holds_with_more_workers_than_slots(make_port, concurrency, workers):
    port = make_port(concurrency)
    gauge = Gauge()
    over: list[int] = []

    def handler(nbytes: int, key: object, ov: object) -> None:
        with gauge:
            if port.running > concurrency:
                over.append(port.running)
            time.sleep(0.005)

    pool = port.start_workers(workers, handler)
    try:
        assert wait_until(lambda: port.waiting == workers)  # every worker is waiting
        packets = 40 * concurrency
        for i in range(packets):
            port.post_queued(i, "work", None)
        assert wait_until(lambda: gauge.done == packets, 20.0), f"{gauge.done} of {packets}"
    finally:
        assert pool.stop(5.0)
    assert gauge.peak == concurrency, f"peak {gauge.peak} with concurrency {concurrency}"
    assert over == []
    assert port.running == 0


def test_surplus_workers_stay_parked_while_packets_are_queued(make_port):
    """With concurrency 1, a second worker does not take a queued packet while the first is
    still running its handler: the packet waits for the running thread to come back."""
    port = make_port(1)
    release = threading.Event()
    taken: list[tuple[str, int]] = []

    def handler(nbytes: int, key: object, ov: object) -> None:
        taken.append((threading.current_thread().name, nbytes))
        if nbytes == 0:
            release.wait(5.0)

    pool = port.start_workers(3, handler)
    try:
        assert wait_until(lambda: port.waiting == 3)
        port.post_queued(0)          # the blocking one
        assert wait_until(lambda: len(taken) == 1)
        port.post_queued(1)
        port.post_queued(2)
        time.sleep(0.2)
        assert len(taken) == 1       # queued, yet nobody else may run
        assert port.running == 1 and port.queued == 2
        release.set()
        assert wait_until(lambda: len(taken) == 3)
    finally:
        release.set()
        assert pool.stop(5.0)
    # The thread that comes back to get_queued takes the next packet at once (no hand-off).
    assert taken[1][0] == taken[0][0]


def test_waiting_threads_are_released_last_in_first_out(make_port):
    port = make_port(3)
    got: dict[str, tuple] = {}
    names = ["first", "second", "third"]

    def wait(name: str) -> None:
        try:
            got[name] = port.get_queued(timeout=10)
        except PortClosed:
            pass

    threads = []
    for i, name in enumerate(names):
        t = threading.Thread(target=wait, args=(name,), name=name)
        t.start()
        threads.append(t)
        assert wait_until(lambda n=i + 1: port.waiting == n)
        time.sleep(0.02)
    port.post_queued(1, "lifo", None)
    assert wait_until(lambda: got)
    assert list(got) == ["third"], got  # the most recently arrived waiter goes first
    port.close()
    for t in threads:
        t.join(5)


def test_blocking_section_lends_the_slot_to_another_thread(make_port):
    port = make_port(1)
    gauge = Gauge()
    started = threading.Event()

    def handler(nbytes: int, key: object, ov: object) -> None:
        with gauge:
            if nbytes == 0:
                started.set()
                with port.blocking():    # like a thread blocking in Sleep(): not counted
                    time.sleep(0.3)
            else:
                time.sleep(0.01)

    pool = port.start_workers(2, handler)
    try:
        assert wait_until(lambda: port.waiting == 2)
        port.post_queued(0)
        assert started.wait(5)
        port.post_queued(1)
        assert wait_until(lambda: gauge.done == 2)
    finally:
        assert pool.stop(5.0)
    assert gauge.peak == 2  # the second packet ran while the first handler was blocked


# ------------------------------------------------------------------------ pools and closing


def test_worker_pool_stop_posts_quit_packets_after_queued_work(make_port):
    port = make_port(2)
    seen: list[int] = []
    lock = threading.Lock()

    def handler(nbytes: int, key: object, ov: object) -> None:
        with lock:
            seen.append(nbytes)

    pool = WorkerPool(port, handler, 4, name="test-pool")
    pool.start()
    assert pool.alive() == 4
    for i in range(50):
        port.post_queued(i)
    assert pool.stop(5.0)
    assert pool.alive() == 0
    assert sorted(seen) == list(range(50))
    assert not port.closed  # the port outlives its pool


def test_closing_the_port_wakes_and_ends_every_worker(make_port):
    port = make_port(2)
    pool = port.start_workers(6, lambda *a: None, name="closing")
    assert wait_until(lambda: port.waiting == 6)
    start = time.monotonic()
    port.close()
    assert wait_until(lambda: pool.alive() == 0, 5.0), f"{pool.alive()} workers still alive"
    assert time.monotonic() - start < 2.0
    assert port.closed
    with pytest.raises(PortClosed):
        port.get_queued(timeout=1)
    with pytest.raises(PortClosed):
        port.post_queued(1)
    port.close()  # idempotent


def test_close_wakes_a_thread_blocked_without_timeout(make_port):
    port = make_port(1)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            port.get_queued()
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    assert wait_until(lambda: port.waiting == 1)
    time.sleep(0.05)
    port.close()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], PortClosed)


def test_handler_exceptions_do_not_kill_workers(make_port, caplog):
    port = make_port(1)
    seen: list[int] = []

    def handler(nbytes: int, key: object, ov: object) -> None:
        seen.append(nbytes)
        if nbytes == 1:
            raise RuntimeError("boom")

    pool = port.start_workers(1, handler)
    try:
        port.post_queued(1)
        port.post_queued(2)
        assert wait_until(lambda: seen == [1, 2])
        assert pool.alive() == 1
    finally:
        assert pool.stop(5.0)
    assert "boom" in caplog.text
