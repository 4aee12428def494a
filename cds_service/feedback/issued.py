"""The record of issued cards, written off the hot path.

A hook response must not wait for a database commit (with SQLite and `synchronous=FULL`, an fsync), so
the request thread only puts (service, card uuid, topic) on a bounded queue; one background thread per
process drains it in batches, each batch one transaction on the thread's own connection. If the queue is
full (the database is stalled) new records are dropped and counted rather than slowing clinicians down;
the report then shows feedback for those cards under the topic `unknown`.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from cds_service.feedback.store import FeedbackStore, IssuedRow

log = logging.getLogger(__name__)

QUEUE_LIMIT = 50_000
# How long a batch waits for more issued cards before it is committed.
LINGER_S = 0.25
BATCH_LIMIT = 500
_STOP = object()


class IssuedCardRecorder:
    """Accepts issued cards from request threads and writes them from one background thread."""

    def __init__(self, store_url: str) -> None:
        self._url = store_url
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_LIMIT)
        self._start_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False
        self.dropped = 0
        self.failed = 0
        self.written = 0
        atexit.register(self.close)

    def submit(self, service_id: str, cards: Sequence[tuple[str, str]]) -> None:
        """Queue (card uuid, topic) pairs issued now; never blocks and never raises."""
        try:
            if self._closed or not cards:
                return
            self._ensure_thread()
            at = datetime.now(UTC)
            self._queue.put_nowait([(service_id, uuid, topic, at) for uuid, topic in cards])
        except queue.Full:
            with self._count_lock:
                first = self.dropped == 0
                self.dropped += len(cards)
            if first:
                log.warning(
                    "issued-card queue is full: card records are being dropped (the database is stalled)"
                )
        except Exception:
            log.exception("could not queue issued cards")

    def close(self, timeout_s: float = 5) -> None:
        """Write what is queued (waiting at most `timeout_s`) and stop the thread."""
        self._closed = True
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("issued-card queue still full at shutdown; some records are lost")
            return
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("issued-card writer did not finish within %.1f s; some records are lost", timeout_s)
        if self.dropped or self.failed:
            log.warning(
                "issued-card records lost: %d dropped (queue full), %d failed", self.dropped, self.failed
            )

    def _ensure_thread(self) -> None:
        """Start the writer in this process; after a fork the parent's thread does not exist here."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid and self._pid != os.getpid():
                self._queue = queue.Queue(QUEUE_LIMIT)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="issued-card-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        store: FeedbackStore | None = None
        stopping = False
        while not stopping:
            batch: list[IssuedRow] = []
            stopping = self._collect(batch)
            if not batch:
                continue
            try:
                if store is None:
                    store = FeedbackStore.open(self._url)
                store.record_issued_rows(batch)
                self.written += len(batch)
            except Exception:
                self.failed += len(batch)
                log.exception("could not record %d issued cards", len(batch))
                time.sleep(0.5)
        if store is not None:
            store.close()

    def _collect(self, batch: list[IssuedRow]) -> bool:
        """Wait for one submission, then gather what arrives within LINGER_S; True when asked to stop.

        Lingering turns a commit (an fsync with SQLite) per busy moment into one per quarter second: under
        load the commits, not the rows, were the recorder's cost.
        """
        item = self._queue.get()
        deadline = time.monotonic() + LINGER_S
        while True:
            if item is _STOP:
                return True
            batch.extend(item)  # type: ignore[arg-type]
            if len(batch) >= BATCH_LIMIT:
                return False
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
