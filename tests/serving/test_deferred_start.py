"""Deferred start-up work: done once, by one thread at a time, retried until it succeeds, then never again."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cds_service.deferred_start import DeferredStart


class Store:
    """Start-up work that fails while the store is "down" and counts how often it ran and overlapped."""

    def __init__(self, up: bool, takes_s: float = 0.02) -> None:
        self.up = up
        self.takes_s = takes_s
        self.attempts = 0
        self.successes = 0
        self.running = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def start_up(self) -> None:
        with self._lock:
            self.attempts += 1
            self.running += 1
            self.overlaps += self.running > 1
        time.sleep(self.takes_s)  # long enough for every other thread to arrive meanwhile
        with self._lock:
            self.running -= 1
        if not self.up:
            raise ConnectionError("connection refused")
        self.successes += 1


def test_threads_arriving_together_run_the_work_once() -> None:
    store = Store(up=True)
    start = DeferredStart("the test store", store.start_up, ConnectionError)
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        start.complete()

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(use) for _ in range(8)]:
            future.result()
    assert (store.attempts, store.successes, store.overlaps) == (1, 1, 0)
    assert start.done


def test_failed_work_stays_pending_and_is_retried_until_it_succeeds_then_never_again() -> None:
    store = Store(up=False)
    start = DeferredStart("the test store", store.start_up, ConnectionError)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            start.complete()
    assert not start.done
    failure = start.unready()
    assert isinstance(failure, ConnectionError), "the readiness probe tries too, and does not raise"
    assert str(failure) == "connection refused", "the probe can say why"
    store.up = True
    assert start.unready() is None
    start.complete()
    assert (store.attempts, store.successes) == (4, 1)


def test_threads_arriving_during_a_failing_attempt_share_it_instead_of_queueing_their_own() -> None:
    """Eight calls behind an unreachable store wait for one connection timeout, not eight in a row."""
    store = Store(up=False, takes_s=0.3)
    start = DeferredStart(
        "the test store", store.start_up, lambda reason: ConnectionError(f"shared: {reason}")
    )
    barrier = threading.Barrier(8)

    def use() -> str:
        barrier.wait()
        try:
            start.complete()
        except ConnectionError as error:
            return str(error)
        return "done"

    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: use(), range(8)))
    elapsed = time.monotonic() - began

    assert store.attempts == 1
    assert elapsed < 2 * store.takes_s
    assert (
        sorted(answers)
        == ["connection refused"]
        + ["shared: the test store could not be reached by the attempt just made"] * 7
    )
    assert not start.done


def test_threads_racing_while_the_store_comes_back_never_overlap_and_succeed_once() -> None:
    store = Store(up=False)
    start = DeferredStart("the test store", store.start_up, ConnectionError)
    outcomes: list[bool] = []

    def use() -> None:
        deadline = time.monotonic() + 10  # a count of tries would depend on how busy the machine is
        while time.monotonic() < deadline:
            try:
                start.complete()
            except ConnectionError:
                continue
            outcomes.append(True)
            return
        outcomes.append(False)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    store.up = True
    for thread in threads:
        thread.join(timeout=10)
    assert outcomes == [True] * 4
    assert (store.successes, store.overlaps) == (1, 0)


def test_a_deferred_start_is_one_warning_and_its_completion_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(up=False)
    start = DeferredStart("the test store (at test://here)", store.start_up, ConnectionError)
    caplog.set_level(logging.INFO, logger="cds_service.deferred_start")
    with pytest.raises(ConnectionError) as refused:
        start.complete()
    start.defer(str(refused.value))
    store.up = True
    start.complete()
    start.complete()
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        (
            "WARNING",
            "the test store (at test://here) cannot be reached (connection refused); the worker starts "
            "without it and is not ready until it is reached",
        ),
        ("INFO", "the test store (at test://here) is reachable now: its start-up work is done"),
    ]
