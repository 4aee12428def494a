"""Eight clients, as threads and as separate processes, writing thousands of items to one store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cds_service.feedback import FeedbackStore, parse_feedback

SERVICE = "b12-iron-order-sign"
WRITER = Path(__file__).with_name("writer.py")
CLIENTS = 8
BATCHES = 50
BATCH_SIZE = 12  # 8 x 50 x 12 = 4,800 items per test


def expected_counts(items: int) -> tuple[int, int]:
    """Items with i % 3 == 0 are overridden, the rest accepted (see writer.py)."""
    per_batch_overridden = len([i for i in range(BATCH_SIZE) if i % 3 == 0])
    batches = items // BATCH_SIZE
    return batches * (BATCH_SIZE - per_batch_overridden), batches * per_batch_overridden


def spawn_writer(url: str, worker: int, batches: int = BATCHES) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), url, SERVICE, str(worker), str(batches), str(BATCH_SIZE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_eight_processes_each_count_exactly(store_url: str) -> None:
    FeedbackStore.open(store_url).close()
    writers = [spawn_writer(store_url, n) for n in range(CLIENTS)]
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        assert out.count("committed") == BATCHES
    store = FeedbackStore.open(store_url)
    counts = store.report()["services"][SERVICE]
    accepted, overridden = expected_counts(CLIENTS * BATCHES * BATCH_SIZE)
    assert (counts["accepted"], counts["overridden"]) == (accepted, overridden)
    reasons = counts["topics"]["unknown"]["topOverrideReasons"]
    assert sum(r["count"] for r in reasons) == overridden
    # Everyone sends everything again: nothing new is stored.
    again = [spawn_writer(store_url, n) for n in range(CLIENTS)]
    for writer in again:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    assert store.report()["services"][SERVICE]["accepted"] == accepted
    store.close()


def test_eight_threads_each_with_its_own_store_count_exactly(store_url: str) -> None:
    FeedbackStore.open(store_url).close()
    new_counts: list[int] = []
    errors: list[BaseException] = []

    def client(worker: int) -> None:
        store = FeedbackStore.open(store_url)
        try:
            for batch in range(BATCHES):
                entries = [
                    {
                        "card": f"t{worker}-{batch}-{i}",
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-03-02T09:00:00Z",
                    }
                    for i in range(BATCH_SIZE)
                ]
                new_counts.append(sum(store.add_feedback(SERVICE, parse_feedback({"feedback": entries}))))
        except BaseException as error:
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(new_counts) == CLIENTS * BATCHES * BATCH_SIZE
    store = FeedbackStore.open(store_url)
    assert store.report()["services"][SERVICE]["overridden"] == CLIENTS * BATCHES * BATCH_SIZE
    store.close()


def test_every_committed_batch_survives_sigkill(sqlite_url: str) -> None:
    """Writers killed with SIGKILL mid-load: each batch a writer had printed as committed is stored."""
    FeedbackStore.open(sqlite_url).close()
    writers = [spawn_writer(sqlite_url, n, batches=100_000) for n in range(4)]
    committed: dict[int, set[int]] = {n: set() for n in range(4)}
    deadline = time.monotonic() + 30

    def read(worker: int, writer: subprocess.Popen[str]) -> None:
        assert writer.stdout is not None
        for line in writer.stdout:
            _, who, batch = line.split()
            committed[int(who)].add(int(batch))

    readers = [threading.Thread(target=read, args=(n, w)) for n, w in enumerate(writers)]
    for reader in readers:
        reader.start()
    while min(len(batches) for batches in committed.values()) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    for writer in writers:
        os.killpg(writer.pid, signal.SIGKILL)
    for writer, reader in zip(writers, readers, strict=True):
        writer.wait(timeout=10)
        reader.join(timeout=10)
        assert writer.returncode == -signal.SIGKILL
    assert min(len(batches) for batches in committed.values()) >= 20, "writers made too little progress"

    store = FeedbackStore.open(sqlite_url)
    assert store.unwritable() is None
    promised = sum(len(batches) for batches in committed.values()) * BATCH_SIZE
    counts = store.report()["services"][SERVICE]
    stored = counts["accepted"] + counts["overridden"]
    # Every promised item is there; at most one more batch per writer (committed, not yet printed).
    assert promised <= stored <= promised + 4 * BATCH_SIZE
    store.close()


def test_report_is_consistent_while_writers_run(sqlite_url: str) -> None:
    """Readers in WAL mode see whole batches only: totals are always a multiple of the batch size."""
    FeedbackStore.open(sqlite_url).close()
    writers = [spawn_writer(sqlite_url, n, batches=20) for n in range(CLIENTS)]
    store = FeedbackStore.open(sqlite_url)
    seen: list[int] = []
    while any(w.poll() is None for w in writers):
        service = store.report()["services"].get(SERVICE)
        if service:
            seen.append(service["accepted"] + service["overridden"])
        time.sleep(0.005)
    for writer in writers:
        assert writer.wait() == 0
    assert all(total % BATCH_SIZE == 0 for total in seen)
    assert seen == sorted(seen)
    store.close()


def test_replicas_storing_the_same_items_in_different_orders_do_not_deadlock(store_url: str) -> None:
    """An EHR resends a batch to another replica, in another order, while the first is still storing
    it. Each transaction waited on a row the other had inserted and not committed: PostgreSQL broke the
    deadlock by failing one of them ('deadlock detected', a 503 to send again). Every post must succeed,
    and each item be counted new by exactly one of them."""
    from cds_service.feedback import StoreUnavailable

    FeedbackStore.open(store_url).close()
    rounds, size = 15, 40
    start = threading.Barrier(CLIENTS)
    failures: list[str] = []
    stored = [[0] * rounds for _ in range(CLIENTS)]

    def replica(worker: int) -> None:
        store = FeedbackStore.open(store_url)
        try:
            for round_ in range(rounds):
                when = "2026-03-02T09:00:00Z"
                entries = [
                    {"card": f"r{round_}-{i:03}", "outcome": "overridden", "outcomeTimestamp": when}
                    for i in range(size)
                ]
                if worker % 2:
                    entries.reverse()
                items = parse_feedback({"feedback": entries})
                start.wait(30)
                try:
                    stored[worker][round_] = sum(store.add_feedback(SERVICE, items))
                except StoreUnavailable as error:
                    failures.append(str(error))
        finally:
            store.close()

    replicas = [threading.Thread(target=replica, args=(worker,)) for worker in range(CLIENTS)]
    for thread in replicas:
        thread.start()
    for thread in replicas:
        thread.join(120)
    assert failures == []
    assert [sum(column) for column in zip(*stored, strict=True)] == [size] * rounds
    store = FeedbackStore.open(store_url)
    assert store.report()["services"][SERVICE]["overridden"] == rounds * size
    store.close()
