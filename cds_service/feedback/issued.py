"""The record of issued cards, written off the hot path.

A hook response must not wait for a database commit (with SQLite and `synchronous=FULL`, an fsync), so
the request thread only appends (service, card uuid, topic) rows to an in-memory list; one background
thread per process wakes a few times a second and writes whatever has gathered in one transaction on its
own connection. Request threads never wake that thread: in a busy worker a wake-up per call (a queue
`put` notifying a waiting `get`) cost more CPU than the insert, in thread switches and GIL hand-offs. If
the list is full (the database is stalled) new records are dropped and counted rather than slowing
clinicians down; the report then shows feedback for those cards under the topic `unknown`.

While the database is unavailable (a PostgreSQL restart) the records wait in that list and the writer
tries again, less and less often, so an outage of minutes loses nothing; only a full list or a process
that stops before the database is back loses records, and both are counted.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

from cds_service.feedback.store import FeedbackStore, IssuedRow, StoreUnavailable

log = logging.getLogger(__name__)

# Submissions waiting to be written, at most (each is one call's cards).
QUEUE_LIMIT = 50_000
# How often the writer wakes to commit what has gathered: records reach the database within this time.
FLUSH_INTERVAL_S = 0.25
# Rows per transaction when a backlog has built up (after the database was locked, say).
BATCH_LIMIT = 5_000
# While the database is unavailable, the wait between attempts doubles up to this.
RETRY_LIMIT_S = 5.0


class IssuedCardRecorder:
    """Accepts issued cards from request threads and writes them from one background thread."""

    def __init__(self, store_url: str) -> None:
        self._url = store_url
        self._pending: deque[list[IssuedRow]] = deque()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False
        self.dropped = 0
        self.failed = 0
        self.written = 0
        self._retry_s = 0.0
        atexit.register(self.close)

    def submit(self, service_id: str, cards: Sequence[tuple[str, str]]) -> None:
        """Keep (card uuid, topic) pairs issued now for the writer; never blocks and never raises."""
        try:
            if self._closed or not cards:
                return
            self._ensure_thread()
            if len(self._pending) >= QUEUE_LIMIT:
                self._drop(len(cards))
                return
            at = datetime.now(UTC)
            # deque.append is atomic: no lock, and no wake-up of the writer.
            self._pending.append([(service_id, uuid, topic, at) for uuid, topic in cards])
        except Exception:
            log.exception("could not queue issued cards")

    def close(self, timeout_s: float = 5) -> None:
        """Write what is pending (waiting at most `timeout_s`) and stop the thread."""
        self._closed = True
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            return
        self._stop.set()
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("issued-card writer did not finish within %.1f s; some records are lost", timeout_s)
        if self.dropped or self.failed:
            log.warning(
                "issued-card records lost: %d dropped (queue full), %d failed", self.dropped, self.failed
            )

    def _drop(self, count: int) -> None:
        with self._count_lock:
            first = self.dropped == 0
            self.dropped += count
        if first:
            log.warning("issued-card queue is full: card records are being dropped (the database is stalled)")

    def _ensure_thread(self) -> None:
        """Start the writer in this process; after a fork the parent's thread does not exist here."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid and self._pid != os.getpid():
                self._pending = deque()
                self._stop = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="issued-card-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        store: FeedbackStore | None = None
        stopping = False
        wait_s = FLUSH_INTERVAL_S
        while not stopping:
            stopping = self._stop.wait(wait_s)
            wait_s = FLUSH_INTERVAL_S
            while batch := self._take(BATCH_LIMIT):
                try:
                    if store is None:
                        store = FeedbackStore.open(self._url)
                    store.record_issued_rows(batch)
                except StoreUnavailable as error:  # an outage, not a bug: keep the rows and wait
                    if stopping:
                        lost = len(batch)
                        while rest := self._take(BATCH_LIMIT):
                            lost += len(rest)
                        self.failed += lost
                        log.warning("could not record %d issued cards before stopping: %s", lost, error)
                        break
                    self._pending.appendleft(batch)
                    wait_s = self._waiting(error)
                    break
                except Exception:
                    self.failed += len(batch)
                    log.exception("could not record %d issued cards", len(batch))
                    if not stopping:
                        break
                else:
                    self.written += len(batch)
                    self._recovered()
        if store is not None:
            store.close()

    def _waiting(self, error: StoreUnavailable) -> float:
        """The wait before the next attempt; one warning when an outage begins."""
        if self._retry_s == 0:
            log.warning("issued-card records wait for the database, which is unavailable: %s", error)
        self._retry_s = min(RETRY_LIMIT_S, max(FLUSH_INTERVAL_S, self._retry_s * 2))
        return self._retry_s

    def _recovered(self) -> None:
        if self._retry_s:
            log.info("the database is available again: waiting issued-card records are being written")
            self._retry_s = 0.0

    def _take(self, limit: int) -> list[IssuedRow]:
        """Up to about `limit` pending rows, oldest first (popleft is atomic beside concurrent appends)."""
        batch: list[IssuedRow] = []
        while len(batch) < limit:
            try:
                batch.extend(self._pending.popleft())
            except IndexError:
                break
        return batch
