"""Workers that die and are replaced, under a real `cds-service serve`: the counters stay right.

A worker killed outright (SIGKILL, as the kernel's out-of-memory killer does) leaves its memory-mapped
metric files behind; gunicorn starts a new worker with a new pid and new files. The dead worker's counts
must stay in the sums (a counter that goes down reads as a reset to Prometheus, and ``rate`` then counts
the whole total again), must not be counted twice, and its files must not pile up: every scrape reads
every file, and the directory is in memory in the image (``/tmp``, an ``emptyDir``).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cds_service import observability
from tests.support.served import HOOKS_NOW, Served, hook_example

VIEW = "b12-iron-patient-view"
REQUESTS_200 = re.compile(
    rf'^cds_hook_requests_total\{{service="{VIEW}",status="200"\}} (\S+)$', re.MULTILINE
)
COUNT = re.compile(rf'^cds_hook_request_duration_seconds_count\{{service="{VIEW}"\}} (\S+)$', re.MULTILINE)
WORKERS = 2
KILLS = 6


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path, workers=WORKERS, threads=2, CDS_NOW=HOOKS_NOW)
    yield server
    server.stop()


def worker_pids(master: int) -> set[int]:
    """The master's live children, from /proc (the workers are its only children)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[1]) == master:
            found.add(int(entry.name))
    return found


def wait_for_workers(served: Served, without: set[int], timeout_s: float = 30) -> set[int]:
    """Wait until the master has its full count of workers, none of them in ``without``, each of which has
    written its metric files (it does so while it boots, before it accepts a call)."""
    [metrics_dir] = served.metrics_dirs()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = worker_pids(served.process.pid)
        if len(pids) == WORKERS and not pids & without:
            written = {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}
            if {str(pid) for pid in pids} <= written:
                return pids
        time.sleep(0.05)
    raise AssertionError(f"workers not replaced: {worker_pids(served.process.pid)}, dead {without}")


def scraped(served: Served) -> tuple[float, float]:
    """(answered 200, latency count) for the patient-view service, on a new connection."""
    answer = requests.get(f"{served.base}/metrics", timeout=10)
    body = answer.text
    found = REQUESTS_200.search(body), COUNT.search(body)
    assert answer.status_code == 200 and all(found), (answer.status_code, body[:2000])
    return float(found[0][1]), float(found[1][1])


def call(served: Served, body: dict, n: int) -> None:
    for _ in range(n):  # a new connection each time: the kernel hands them to either worker
        assert requests.post(f"{served.base}/cds-services/{VIEW}", json=body, timeout=30).status_code == 200


@pytest.mark.integration
def test_killed_and_reloaded_workers_keep_their_counts_once_and_leave_no_files_behind(served: Served) -> None:
    body = hook_example("patient-view.json")
    [metrics_dir] = served.metrics_dirs()
    pids = wait_for_workers(served, set())
    files_at_start = sorted(p.name for p in metrics_dir.glob("*.db"))

    # Scrapes throughout, in sequence: a total seen to go down at any moment is a counter reset.
    seen: list[float] = []
    stop = threading.Event()

    failed: list[str] = []

    def scrape_all_along() -> None:
        while not stop.is_set():
            try:
                seen.append(scraped(served)[0])
            except requests.RequestException:
                pass  # a connection a killed worker held
            except AssertionError as error:  # a status other than 200, or a series missing
                failed.append(str(error)[:300])

    scraper = threading.Thread(target=scrape_all_along)
    scraper.start()
    expected = 0
    dead: set[int] = set()
    try:
        for round_ in range(KILLS + 1):
            call(served, body, 8)
            expected += 8
            assert scraped(served) == (expected, expected)
            victims = set(pids)
            if round_ < KILLS:
                victim = sorted(pids)[round_ % WORKERS]
                time.sleep(0.3)  # past the log writer's interval, so its call lines are out too
                os.kill(victim, signal.SIGKILL)
                victims = {victim}
            else:  # gunicorn's own recycling: SIGHUP replaces every worker, gracefully
                served.process.send_signal(signal.SIGHUP)
            dead |= victims
            pids = wait_for_workers(served, dead)
            assert scraped(served) == (expected, expected), "a dead worker's calls lost or counted twice"
    finally:
        stop.set()
        scraper.join(timeout=30)

    assert failed == [], "a scrape failed while workers were replaced"
    assert seen and seen == sorted(seen), "the total went down between two scrapes"
    assert max(seen) <= expected
    time.sleep(0.3)
    lines = [e for e in served.log_entries() if e["logger"] == "cds_service.calls"]
    assert len(lines) == expected
    # What is left: the live workers' files and a fixed few holding what the dead ones had counted.
    names = sorted(p.name for p in metrics_dir.glob("*.db"))
    live = sorted(p.name for p in metrics_dir.glob("*.db") if p.stem.rsplit("_", 1)[-1] in map(str, pids))
    assert len(live) == len(files_at_start)
    assert len(names) <= len(files_at_start) + 2, names
    assert not [name for name in names if any(f"_{pid}." in name for pid in dead)]


def collected(directory: Path) -> dict[tuple[str, tuple], float]:
    from prometheus_client.multiprocess import MultiProcessCollector

    collector = MultiProcessCollector(None, path=str(directory))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for m in collector.collect() for s in m.samples
    }


def write_samples(path: Path, metric: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
    """A worker's file as prometheus_client writes it: ``(sample name, labels, value)`` of one metric."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    mmapped = MmapedDict(str(path))
    for name, labels, value in samples:
        mmapped.write_value(mmap_key(metric, name, list(labels), list(labels.values()), "help"), value, 0.0)
    mmapped.close()


def test_folding_a_dead_worker_changes_no_total_and_adds_to_earlier_folds(tmp_path: Path) -> None:
    service = {"service": VIEW}
    for pid, calls in ((101, 3.0), (102, 5.0), (103, 7.0)):
        write_samples(
            tmp_path / f"counter_{pid}.db",
            "cds_hook_requests",
            [("cds_hook_requests_total", service | {"status": "200"}, calls)],
        )
        write_samples(
            tmp_path / f"histogram_{pid}.db",
            "cds_hook_request_duration_seconds",
            [
                ("cds_hook_request_duration_seconds_bucket", service | {"le": "0.5"}, calls),
                ("cds_hook_request_duration_seconds_sum", service, calls / 10),
            ],
        )
    before = collected(tmp_path)
    observability.fold_dead_worker(str(tmp_path), 101)
    observability.fold_dead_worker(str(tmp_path), 102)
    observability.fold_dead_worker(str(tmp_path), 999)  # no files: nothing to do
    after = collected(tmp_path)
    assert after == before
    assert after[("cds_hook_requests_total", (("service", VIEW), ("status", "200")))] == 15.0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_103.db",
        "counter_dead-workers.db",
        "histogram_103.db",
        "histogram_dead-workers.db",
    ]


def test_a_scrape_waits_while_a_dead_worker_is_being_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between adding a dead worker's counts to the archive and removing its files, its calls are on disk
    twice; a scrape then would read a total that the next scrape sees fall, a counter reset."""
    monkeypatch.setenv(observability.MULTIPROC_ENV, str(tmp_path))
    answered = threading.Event()

    def scrape() -> None:
        observability.metrics_response()
        answered.set()

    with observability._folding_lock(str(tmp_path), fcntl.LOCK_EX):
        scraper = threading.Thread(target=scrape)
        scraper.start()
        assert not answered.wait(0.5), "the scrape read the directory in the middle of a fold"
    assert answered.wait(5)
    scraper.join()


def test_a_fold_that_fails_half_way_changes_no_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold is all or nothing: written to the archive half-way, with the dead worker's file still
    there, the part written would be counted twice (a full /tmp, a bug)."""
    from prometheus_client.mmap_dict import MmapedDict

    service = {"service": VIEW}
    for pid in (101, 102):
        write_samples(
            tmp_path / f"counter_{pid}.db",
            "cds_hook_requests",
            [
                ("cds_hook_requests_total", service | {"status": status}, 2.0)
                for status in ("200", "400", "412")
            ],
        )
    observability.fold_dead_worker(str(tmp_path), 101)
    before = collected(tmp_path)
    written = []
    original = MmapedDict.write_value

    def fail_on_the_second(self: MmapedDict, key: str, value: float, timestamp: float) -> None:
        if written:
            raise OSError("No space left on device")
        written.append(key)
        original(self, key, value, timestamp)

    monkeypatch.setattr(MmapedDict, "write_value", fail_on_the_second)
    with pytest.raises(OSError, match="No space"):
        observability.fold_dead_worker(str(tmp_path), 102)
    monkeypatch.undo()
    assert written, "the fold had written part of the archive"
    assert collected(tmp_path) == before
    assert (tmp_path / "counter_102.db").exists()
    observability.fold_dead_worker(str(tmp_path), 102)  # the next attempt folds it whole
    assert collected(tmp_path) == before
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_dead-workers.db"]


def test_a_dead_workers_files_left_by_a_failed_fold_are_folded_at_the_next_death(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(observability.MULTIPROC_ENV, str(tmp_path))
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    # The files of a worker whose fold failed, of one just reaped, and of one alive (this process).
    for pid in (exited.pid, 4_000_001, os.getpid()):
        write_samples(
            tmp_path / f"counter_{pid}.db",
            "cds_hook_requests",
            [("cds_hook_requests_total", {"service": VIEW, "status": "200"}, 1.0)],
        )
    before = collected(tmp_path)
    observability.mark_worker_dead(4_000_001)
    assert collected(tmp_path) == before
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        f"counter_{os.getpid()}.db",
        "counter_dead-workers.db",
    ]


def test_a_file_a_booting_worker_has_only_just_created_is_read_as_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus_client creates a worker's file, then sizes it: a scrape in between read 0 bytes and
    was a 500 (struct.error), seen while gunicorn replaced killed workers. Such a file holds no sample
    yet; a worker killed at that moment leaves it so, and its fold just removes it."""
    monkeypatch.setenv(observability.MULTIPROC_ENV, str(tmp_path))
    write_samples(
        tmp_path / "counter_101.db",
        "cds_hook_requests",
        [("cds_hook_requests_total", {"service": VIEW, "status": "200"}, 3.0)],
    )
    (tmp_path / "counter_102.db").touch()
    (tmp_path / "histogram_102.db").write_bytes(b"\0\0")
    body, _ = observability.metrics_response()
    assert f'cds_hook_requests_total{{service="{VIEW}",status="200"}} 3.0' in body.decode()
    observability.fold_dead_worker(str(tmp_path), 102)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_101.db"]


def test_the_master_does_not_wait_forever_for_a_scrape_that_never_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master folds in gunicorn's child_exit: blocked there, it would start no worker and watch no
    timeout. A worker stopped (SIGSTOP, a debugger) in the middle of a scrape holds the shared lock; the
    fold then gives up after a while and is retried at a later death."""
    monkeypatch.setenv(observability.MULTIPROC_ENV, str(tmp_path))
    write_samples(
        tmp_path / "counter_4000002.db",
        "cds_hook_requests",
        [("cds_hook_requests_total", {"service": VIEW, "status": "200"}, 1.0)],
    )
    before = collected(tmp_path)
    done = threading.Event()
    with observability._folding_lock(str(tmp_path), fcntl.LOCK_SH):
        master = threading.Thread(target=lambda: (observability.mark_worker_dead(4_000_002), done.set()))
        master.start()
        assert done.wait(observability.FOLD_WAIT_S + 5), "the master is stuck on the lock"
    assert collected(tmp_path) == before
    assert (tmp_path / "counter_4000002.db").exists(), "not folded while the scrape held the lock"
    observability.mark_worker_dead(4_000_003)  # the next death folds it
    assert collected(tmp_path) == before
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_dead-workers.db"]


@pytest.mark.integration
def test_workers_killed_under_load_leave_totals_that_only_grow_and_match_the_answers(served: Served) -> None:
    """Calls on 8 connections all along while workers are killed: a call a killed worker had counted may
    not have had its answer sent, so the total lies between the answers received and those plus the
    calls that failed; every scrape reads at least what the one before did."""
    body = hook_example("patient-view.json")
    pids = wait_for_workers(served, set())
    stop = threading.Event()
    answered, failed_calls, seen, bad_scrapes = [0], [0], [], []
    lock = threading.Lock()

    def caller() -> None:
        while not stop.is_set():
            try:
                status = requests.post(
                    f"{served.base}/cds-services/{VIEW}", json=body, timeout=30
                ).status_code
            except requests.RequestException:
                status = None
            with lock:
                if status == 200:
                    answered[0] += 1
                else:
                    failed_calls[0] += 1

    def scraper() -> None:
        while not stop.is_set():
            try:
                seen.append(scraped(served))
            except requests.RequestException:
                pass
            except AssertionError as error:
                bad_scrapes.append(str(error)[:300])

    threads = [threading.Thread(target=caller) for _ in range(8)] + [threading.Thread(target=scraper)]
    for thread in threads:
        thread.start()
    dead: set[int] = set()
    try:
        for round_ in range(5):
            time.sleep(0.4)
            victim = sorted(pids)[round_ % WORKERS]
            os.kill(victim, signal.SIGKILL)
            dead.add(victim)
            pids = wait_for_workers(served, dead)
        time.sleep(0.4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert bad_scrapes == []
    assert len(seen) > 10
    assert [s[0] for s in seen] == sorted(s[0] for s in seen), "a total went down"
    requests_200, count = scraped(served)
    assert requests_200 == count
    assert answered[0] <= requests_200 <= answered[0] + failed_calls[0], (
        answered,
        failed_calls,
        requests_200,
    )
    [metrics_dir] = served.metrics_dirs()
    assert len(list(metrics_dir.glob("*.db"))) <= 2 * WORKERS + 2
