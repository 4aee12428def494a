"""The issued-card record: written by a background thread, never in the way of a hook response."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cds_service.feedback import FeedbackStore, IssuedCardRecorder, dialects, parse_feedback
from cds_service.feedback import issued as issued_module
from tests.support.postgres_server import PostgresCluster

SERVICE = "b12-iron-patient-view"


def issued_counts(url: str) -> dict[str, int]:
    store = FeedbackStore.open(url)
    try:
        services = store.report()["services"]
    finally:
        store.close()
    return {
        f"{service}/{topic}": counts["issued"]
        for service, body in services.items()
        for topic, counts in body["topics"].items()
    }


def test_submitted_cards_are_written_by_close(store_url: str) -> None:
    recorder = IssuedCardRecorder(store_url)
    recorder.submit(SERVICE, [("c1", "iron-after-b12"), ("c2", "b12-high-supplement")])
    recorder.submit("b12-iron-order-sign", [("c3", "iron-after-b12")])
    recorder.submit(SERVICE, [])
    recorder.close()
    assert recorder.written == 3
    assert issued_counts(store_url) == {
        f"{SERVICE}/iron-after-b12": 1,
        f"{SERVICE}/b12-high-supplement": 1,
        "b12-iron-order-sign/iron-after-b12": 1,
    }


def test_feedback_is_reported_under_the_recorded_topic(sqlite_url: str) -> None:
    recorder = IssuedCardRecorder(sqlite_url)
    recorder.submit(SERVICE, [("c1", "iron-after-b12")])
    recorder.close()
    store = FeedbackStore.open(sqlite_url)
    entry = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-03-02T09:00:00Z"}
    store.add_feedback(SERVICE, parse_feedback({"feedback": [entry]}))
    topics = store.report()["services"][SERVICE]["topics"]
    assert list(topics) == ["iron-after-b12"]
    assert topics["iron-after-b12"]["overridden"] == 1
    store.close()


def test_many_request_threads_lose_nothing(sqlite_url: str) -> None:
    recorder = IssuedCardRecorder(sqlite_url)

    def requests(worker: int) -> None:
        for call in range(250):
            recorder.submit(
                SERVICE, [(f"{worker}-{call}-a", "iron-after-b12"), (f"{worker}-{call}-b", "b12-low")]
            )

    threads = [threading.Thread(target=requests, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.close(timeout_s=30)
    assert (recorder.written, recorder.dropped, recorder.failed) == (4000, 0, 0)
    assert issued_counts(sqlite_url) == {f"{SERVICE}/iron-after-b12": 2000, f"{SERVICE}/b12-low": 2000}


def test_submit_returns_while_the_database_is_locked(sqlite_url: str) -> None:
    """Another process holds the write lock: requests go on, the records wait and are written after."""
    with _write_locked(sqlite_url):
        recorder = IssuedCardRecorder(sqlite_url)
        for call in range(200):
            recorder.submit(SERVICE, [(f"card-{call}", "iron-after-b12")])
        assert recorder.written == 0
    recorder.close(timeout_s=30)
    assert recorder.written == 200
    assert issued_counts(sqlite_url) == {f"{SERVICE}/iron-after-b12": 200}


def test_a_lock_held_past_the_busy_timeout_is_waited_out_not_a_lost_batch(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's "database is locked" after the busy timeout is an outage like a PostgreSQL restart: the
    records wait and are written once the lock is released, instead of being counted as failed."""
    monkeypatch.setattr(dialects, "BUSY_TIMEOUT_MS", 100)
    with _write_locked(sqlite_url):
        recorder = IssuedCardRecorder(sqlite_url)
        recorder.submit(SERVICE, [("card-1", "iron-after-b12")])
        assert _wait_until(lambda: recorder._retry_s > 0 or recorder.failed > 0, timeout_s=10)
        recorder.submit(SERVICE, [("card-2", "iron-after-b12")])
    recorder.close(timeout_s=30)
    assert (recorder.written, recorder.failed) == (2, 0)
    assert issued_counts(sqlite_url) == {f"{SERVICE}/iron-after-b12": 2}


def test_a_full_queue_drops_and_counts_instead_of_blocking(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(issued_module, "QUEUE_LIMIT", 10)
    with _write_locked(sqlite_url):
        recorder = IssuedCardRecorder(sqlite_url)
        for call in range(50):
            recorder.submit(SERVICE, [(f"card-{call}", "iron-after-b12")])
    recorder.close(timeout_s=30)
    assert recorder.dropped > 0
    assert recorder.written + recorder.dropped == 50
    assert issued_counts(sqlite_url) == {f"{SERVICE}/iron-after-b12": recorder.written}


def test_a_broken_store_never_raises_into_the_request(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    recorder = IssuedCardRecorder(str(blocker / "feedback.sqlite3"))
    recorder.submit(SERVICE, [("c1", "iron-after-b12")])
    recorder.close()
    assert (recorder.written, recorder.failed) == (0, 1)


def test_submit_after_close_is_ignored(sqlite_url: str) -> None:
    recorder = IssuedCardRecorder(sqlite_url)
    recorder.submit(SERVICE, [("c1", "iron-after-b12")])
    recorder.close()
    recorder.submit(SERVICE, [("c2", "iron-after-b12")])
    recorder.close()
    assert issued_counts(sqlite_url) == {f"{SERVICE}/iron-after-b12": 1}


@contextmanager
def _write_locked(sqlite_url: str) -> Iterator[None]:
    """The store's tables created, then its write lock held by another connection (another process, an
    operator's open transaction) until the block ends."""
    FeedbackStore.open(sqlite_url).close()
    blocker = sqlite3.connect(sqlite_url, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def _wait_until(condition: Callable[[], bool], timeout_s: float = 20) -> bool:
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


def test_records_wait_through_a_database_outage_and_are_written_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PostgreSQL restart loses no card record: the writer keeps them and tries again."""
    cluster = PostgresCluster()  # initialised, not running
    recorder = IssuedCardRecorder(cluster.url("postgres"))
    try:
        with caplog.at_level(logging.INFO, logger="cds_service.feedback.issued"):
            for call in range(3):
                recorder.submit(SERVICE, [(f"card-{call}", "iron-after-b12")])
            assert _wait_until(lambda: any("wait for the database" in r.getMessage() for r in caplog.records))
            cluster.start()
            assert _wait_until(lambda: recorder.written == 3), (recorder.written, recorder.failed)
        recorder.close()
        assert (recorder.written, recorder.dropped, recorder.failed) == (3, 0, 0)
        assert issued_counts(cluster.url("postgres")) == {f"{SERVICE}/iron-after-b12": 3}
        waiting = [r for r in caplog.records if "wait for the database" in r.getMessage()]
        assert len(waiting) == 1, "one warning per outage, not one per attempt"
        assert any("available again" in r.getMessage() for r in caplog.records)
    finally:
        recorder.close()
        cluster.remove()


def test_records_still_waiting_when_the_process_stops_are_counted_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = PostgresCluster()
    recorder = IssuedCardRecorder(cluster.url("postgres"))
    try:
        for call in range(3):
            recorder.submit(SERVICE, [(f"card-{call}", "iron-after-b12")])
        with caplog.at_level(logging.WARNING, logger="cds_service.feedback.issued"):
            recorder.close(timeout_s=30)
        assert (recorder.written, recorder.failed) == (0, 3)
        assert any(
            "could not record 3 issued cards before stopping" in r.getMessage() for r in caplog.records
        )
    finally:
        cluster.remove()


def test_records_wait_for_a_missing_grant_and_are_written_once_it_is_given(postgres_url: str) -> None:
    """A role that may not INSERT into cds_issued_card (a GRANT left out): each batch failed with a
    stack trace and was dropped. It is waited out like an outage, and written once an operator grants."""
    import psycopg

    from tests.feedback.test_store import _role_url

    FeedbackStore.open(postgres_url).close()
    url = _role_url(postgres_url, "recorder", "GRANT SELECT, INSERT ON cds_feedback TO {role}")
    recorder = IssuedCardRecorder(url)
    try:
        recorder.submit(SERVICE, [("card-1", "iron-after-b12")])
        time.sleep(1)  # several attempts, all refused
        assert (recorder.written, recorder.failed) == (0, 0)
        role = url.split("//")[1].split("@")[0]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'GRANT SELECT, INSERT ON cds_issued_card TO "{role}"')
        assert _wait_until(lambda: recorder.written == 1), (recorder.written, recorder.failed)
    finally:
        recorder.close()
    assert issued_counts(postgres_url) == {f"{SERVICE}/iron-after-b12": 1}
