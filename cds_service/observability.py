"""Structured logs and Prometheus metrics for every hook call.

An operator needs one log line per call that explains where the time went, and metrics that add up
across gunicorn's worker processes. Both must be safe to ship to a log store outside the clinical
boundary, so nothing here ever records patient data, request bodies or tokens: only service ids, the
EHR's ``hookInstance`` (a random UUID per call), timings, statuses and card topics.

Metrics run in one of two modes, chosen once, when the first metric is created:

* served by ``cds-service serve``: ``PROMETHEUS_MULTIPROC_DIR`` is set before the workers fork, each
  worker writes its samples to memory-mapped files there, and ``/metrics`` on any worker reads them all;
  when a worker exits or is killed, the master adds its counts to ``<type>_dead-workers.db`` and removes
  its files (``mark_worker_dead``), so the directory holds the live workers' files and two more however
  often workers are replaced, and no total ever goes down;
* anywhere else (tests, ``replay``): the default in-process registry.

``prometheus_client`` is imported lazily so that the mode follows the environment ``serve`` prepares
rather than whichever module happened to import the library first.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

CALL_LOGGER = "cds_service.calls"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Hook calls are dominated by FHIR fetches under a 1.5 s budget; the buckets resolve both the fast
# prefetch-only path (a few ms) and budget exhaustion.
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_FEEDBACK_OUTCOMES = frozenset({"accepted", "overridden"})
# The phases services.py and app.py time with CallTrace.phase.
_PHASES = ("validation", "prefetch", "fhir", "rules", "render")
# What a call to one of the services is answered with (app.call_service and the RequestErrors it catches).
# A 404 is labelled service "unknown"; a 401 is refused before the call reaches a service.
_HOOK_STATUSES = ("200", "400", "412", "413", "415", "500", "501")
_UNKNOWN_SERVICE = "unknown"
_FHIR_OUTCOMES = ("ok", "error")
# What authentication refuses with (app.authenticate): the caller's credentials, or the replay store's outage.
_AUTH_STATUSES = ("401", "503")
_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# A label set per path segment an attacker chooses would grow without bound; past this many distinct
# values per label a process reports "other".
_MAX_LABEL_VALUES = 64

_LOG_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Characters JSON may carry unescaped that end a line for Unicode-aware readers (NEL, LINE and PARAGRAPH
# SEPARATOR: Python's str.splitlines, JavaScript before ES2019) or that terminals may act on (DEL, the C1
# controls): orjson escapes only what JSON requires (below U+0020), so a caller's path or hookInstance could
# split one log line into several. Written as JSON \u escapes instead (\u2028), which read back the same.
_UNSAFE_IN_LOG_LINE = re.compile("[\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _LOG_RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = orjson.dumps(entry, default=str).decode()
        return _UNSAFE_IN_LOG_LINE.sub(_escaped, line) if _UNSAFE_IN_LOG_LINE.search(line) else line


@dataclass
class CallTrace:
    """What one hook call did, filled in as it goes; ``finish_call`` reports it."""

    service: str
    hook_instance: str | None = None
    phases_ms: dict[str, float] = field(default_factory=dict)
    topics: list[str] = field(default_factory=list)
    fhir_queries: int = 0
    fhir_errors: int = 0
    status: int = 200
    run_ahead_hit: bool = False

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a block into ``phases_ms[name]``, adding to earlier time spent in the same phase."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - started) * 1000.0
            self.phases_ms[name] = self.phases_ms.get(name, 0.0) + elapsed


class _BoundedLabel:
    """Keeps a label's distinct values finite, whatever callers pass."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value or not _LABEL_PATTERN.match(value):
            return "invalid"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= _MAX_LABEL_VALUES:
                return "other"
            self._seen.add(value)
        return value


class _Metrics:
    """The process's metric objects, built on first use in the mode the environment selects."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        # A registry of our own, complete or not at all: a half-built set of metrics in the global
        # registry would make every later attempt fail on duplicate names.
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "cds_hook_request_duration_seconds",
            "Seconds the service took to answer a hook call, by service: from the route's start to the answer"
            " built, reading the body included. Calls refused by authentication are not timed (they are"
            ' counted in cds_auth_rejections_total); calls to an unknown service id are service="unknown".',
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.phase_seconds = Histogram(
            "cds_hook_phase_duration_seconds",
            "Seconds a hook call spent in each phase: validation, prefetch, fhir (waiting for the EHR's FHIR"
            " server), rules, render; a phase a call did not go through is not observed.",
            ["phase"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "cds_hook_requests",
            "Hook calls answered, by service and HTTP status; calls to an unknown service id are"
            ' service="unknown", status 404. Calls refused by authentication (401, 503) are counted in'
            " cds_auth_rejections_total instead.",
            ["service", "status"],
            registry=registry,
        )
        self.cards = Counter(
            "cds_cards", "Cards returned, by service and topic.", ["service", "topic"], registry=registry
        )
        self.run_ahead_hits = Counter(
            "cds_run_ahead_hits",
            "Calls answered from the order-select run-ahead cache.",
            ["service"],
            registry=registry,
        )
        # Observed once per prefetch key fetched (FetchOutcome): a paged search is one observation for all
        # its pages, a retried one for both tries. The HTTP requests are cds_fhir_queries_total.
        self.fhir_seconds = Histogram(
            "cds_fhir_fetch_duration_seconds",
            "Seconds to fetch one prefetch key from an EHR's FHIR server, all its pages and retries included,"
            " by outcome (ok, error).",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.fhir_errors = Counter(
            "cds_fhir_fetch_errors",
            "Prefetch keys that could not be fetched from an EHR's FHIR server (HTTP error, timeout, bad"
            " payload, another patient's data).",
            registry=registry,
        )
        self.fhir_queries = Counter(
            "cds_fhir_queries",
            "HTTP requests sent to EHRs' FHIR servers (every page and retry), by the service whose call sent"
            " them: the sum of the call log lines' fhir_queries.",
            ["service"],
            registry=registry,
        )
        self.auth_rejections = Counter(
            "cds_auth_rejections",
            "Hook or feedback calls refused by client authentication, by status: 401 a missing or invalid"
            " client JWT (the caller's credentials), 503 a token whose reuse could not be checked (the"
            " service's replay store is unavailable).",
            ["status"],
            registry=registry,
        )
        self.feedback = Counter(
            "cds_feedback",
            "Feedback items stored, by outcome (an item sent again counts in cds_feedback_duplicates_total"
            " instead).",
            ["outcome"],
            registry=registry,
        )
        self.feedback_duplicates = Counter(
            "cds_feedback_duplicates",
            "Feedback items the store already held (a client's resend), not counted again by outcome.",
            registry=registry,
        )
        self.service_label = _BoundedLabel()
        self.topic_label = _BoundedLabel()
        self.phase_label = _BoundedLabel()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def create_known_series(self, services: Iterable[str], topics: Iterable[str]) -> None:
        """Create, at zero, every series whose label values are known before the first call.

        A series appears only once its labels have been used, so an alert such as
        ``rate(cds_hook_requests_total{status="500"}[5m]) > 0`` had nothing to evaluate until the first
        500, and a cards-per-topic dashboard left out the topics that had not fired yet. ``labels()``
        creates a child at 0; in multiprocess mode that zero is written to this process's mmap file at
        once, so the ``MultiProcessCollector`` of any worker reports it. Each worker runs this in its own
        ``create_app``, after the fork, and a dead worker's counter files stay and keep the zeros.

        Only bounded, known values are created: the service catalogue (and ``unknown``, the 404 label),
        the rules' card topics, the statuses a call is answered with, the phases, and the FHIR fetch and
        feedback outcomes. Values that are open-ended or learnt only at run time are not: the
        ``other``/``invalid`` overflow labels, and anything a future label might take from a request (a
        FHIR server's URL, a client's issuer). Guessing those would add series that mean nothing, and
        any list of them would be arbitrary. The known service ids and topics are also
        the first values the bounded labels admit, so callers' junk can never push them out to ``other``.
        Every (service, topic) pair is created, since which topics a hook can show is decided inside the
        rules, not declared; a pair a hook never shows stays at 0.
        """
        service_ids = [self.service_label(service) for service in services]
        topic_labels = [self.topic_label(topic) for topic in topics]
        for service in service_ids:
            self.child(self.request_seconds, service)
            self.child(self.run_ahead_hits, service)
            self.child(self.fhir_queries, service)
            for status in _HOOK_STATUSES:
                self.child(self.requests, service, status)
            for topic in topic_labels:
                self.child(self.cards, service, topic)
        self.child(self.request_seconds, _UNKNOWN_SERVICE)
        self.child(self.requests, _UNKNOWN_SERVICE, "404")
        for phase in _PHASES:
            self.child(self.phase_seconds, self.phase_label(phase))
        for outcome in _FHIR_OUTCOMES:
            self.child(self.fhir_seconds, outcome)
        for outcome in sorted(_FEEDBACK_OUTCOMES):
            self.child(self.feedback, outcome)
        for status in _AUTH_STATUSES:
            self.child(self.auth_rejections, status)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client checks the labels and takes a lock on
        every ``labels`` call, and a hook call makes several. The bounded labels keep this map finite."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def _get_metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


_call_log = logging.getLogger(CALL_LOGGER)
_log = logging.getLogger(__name__)


@contextmanager
def _metrics_guard() -> Iterator[None]:
    """Metrics must never turn a good answer into a 500: a failure is logged and the call goes on."""
    try:
        yield
    except Exception:
        _log.exception("could not update the metrics")


def prepare_metrics(services: Iterable[str], topics: Iterable[str]) -> None:
    """Build the metrics at start, in the mode the environment has selected by then, with a zero series
    for every known label value (``_Metrics.create_known_series``): importing prometheus_client and
    creating them otherwise costs a worker's first hook call about 30 ms."""
    with _metrics_guard():
        _get_metrics().create_known_series(services, topics)


def finish_call(trace: CallTrace, total_ms: float) -> None:
    """Write the call's one log line and update the request metrics."""
    with _metrics_guard():
        metrics = _get_metrics()
        # A 404 names a service that does not exist: whatever path a caller made up, one label.
        service = _UNKNOWN_SERVICE if trace.status == 404 else metrics.service_label(trace.service)
        metrics.child(metrics.request_seconds, service).observe(total_ms / 1000.0)
        metrics.child(metrics.requests, service, str(trace.status)).inc()
        for name, elapsed_ms in trace.phases_ms.items():
            metrics.child(metrics.phase_seconds, metrics.phase_label(name)).observe(elapsed_ms / 1000.0)
        for topic in trace.topics:
            metrics.child(metrics.cards, service, metrics.topic_label(topic)).inc()
        if trace.run_ahead_hit:
            metrics.child(metrics.run_ahead_hits, service).inc()
        if trace.fhir_queries:
            metrics.child(metrics.fhir_queries, service).inc(trace.fhir_queries)
    if _call_log.isEnabledFor(logging.INFO):
        _call_log.info(
            "hook call",
            extra={
                # Any other status means the id is one of the catalogue's. A 404's is whatever the caller put
                # in the URL, a patient's identifier for a client that builds it wrongly: not quoted.
                "service": _UNKNOWN_SERVICE if trace.status == 404 else trace.service[:64],
                "hookInstance": trace.hook_instance,
                "status": trace.status,
                "latency_ms": round(total_ms, 3),
                "phases_ms": {name: round(value, 3) for name, value in trace.phases_ms.items()},
                "cards": len(trace.topics),
                "topics": trace.topics,
                "fhir_queries": trace.fhir_queries,
                "fhir_errors": trace.fhir_errors,
                "run_ahead_hit": trace.run_ahead_hit,
            },
        )


def observe_fhir_fetch(elapsed_ms: float, ok: bool) -> None:
    """Record one FHIR query's latency, and count it as an error when it failed."""
    with _metrics_guard():
        metrics = _get_metrics()
        metrics.fhir_seconds.labels("ok" if ok else "error").observe(elapsed_ms / 1000.0)
        if not ok:
            metrics.fhir_errors.inc()


def observe_auth_rejection(status: int | None = None) -> None:
    """Count a call refused by client authentication, by the status it is answered with.

    Without ``status``, the exception being handled decides: ``ReplayCheckUnavailable`` (the replay store
    cannot be asked) is answered 503, any other refusal 401. A Redis outage refuses every signed token;
    counted with the 401s, it read like a client whose keys had rotated."""
    with _metrics_guard():
        if status is None:
            from cds_service.protocol.auth import ReplayCheckUnavailable

            status = 503 if isinstance(sys.exc_info()[1], ReplayCheckUnavailable) else 401
        label = str(status) if str(status) in _AUTH_STATUSES else "401"
        metrics = _get_metrics()
        metrics.child(metrics.auth_rejections, label).inc()


def observe_feedback(outcome: str, count: int = 1, *, duplicate: bool = False) -> None:
    """Count feedback items by outcome (``accepted``, ``overridden``; anything else as ``other``).

    CDS Hooks lets a client send feedback again; the store keeps such an item once and says so. A
    ``duplicate`` is counted in ``cds_feedback_duplicates_total`` only, not under its outcome: the outcome
    counts, which acceptance rates are computed from, then count each reported outcome once, and a
    client that resends a lot is still visible. A separate counter rather than an ``outcome="duplicate"``
    value, so that summing ``cds_feedback_total`` over its outcomes still counts outcomes."""
    with _metrics_guard():
        metrics = _get_metrics()
        if duplicate:
            metrics.feedback_duplicates.inc(count)
        else:
            label = outcome if outcome in _FEEDBACK_OUTCOMES else "other"
            metrics.child(metrics.feedback, label).inc(count)


def metrics_response() -> tuple[bytes, str]:
    """The Prometheus exposition of every worker's metrics (or this process's), and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        registry.register(_worker_files_collector(directory))
        # Not while the master folds a dead worker's files into the archive (mark_worker_dead): a scrape
        # in between would count that worker twice, or not at all, and either reads as a counter reset.
        with _folding_lock(directory, fcntl.LOCK_SH):
            return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(_get_metrics().registry), CONTENT_TYPE_LATEST


def _holds_samples(path: str) -> bool:
    """Whether a metric file has its header yet. prometheus_client creates a worker's file, then sizes it:
    read in between, it has no bytes at all, and its reader raised (a scrape's 500 while gunicorn started a
    worker). Such a file holds no sample yet, so leaving it out changes no total."""
    try:
        return os.path.getsize(path) >= 8
    except OSError:
        return False


def _worker_files_collector(directory: str) -> Any:
    from prometheus_client.multiprocess import MultiProcessCollector

    class WorkerFilesCollector(MultiProcessCollector):
        """MultiProcessCollector, leaving out the files that a booting worker has only just created."""

        def collect(self) -> Any:
            files = [path for path in glob.glob(os.path.join(self._path, "*.db")) if _holds_samples(path)]
            return self.merge(files, accumulate=True)

    return WorkerFilesCollector(None, path=directory)


# Where the counts of dead workers go, one file per type; named like a worker's files ("<type>_<id>.db")
# so that the MultiProcessCollector sums them in.
_ARCHIVE_ID = "dead-workers"
_FOLDED_TYPES = ("counter", "histogram")
_LOCK_FILE = ".dead-workers.lock"
# The longest the master waits for scrapes to finish before a fold (one takes a few ms): it folds in
# gunicorn's child_exit, and while it waits it neither starts workers nor watches their timeouts.
FOLD_WAIT_S = 2.0


@contextmanager
def _folding_lock(directory: str, mode: int, wait_s: float | None = None) -> Iterator[None]:
    """An advisory lock on a file of the directory: shared for scrapes, exclusive for a fold; TimeoutError
    when ``wait_s`` is given and the lock is not had within it.

    Opened afresh each time: a descriptor inherited across gunicorn's fork would share its lock."""
    fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if wait_s is None:
            fcntl.flock(fd, mode)
        else:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"the metrics directory stayed locked for {wait_s:g} s") from None
                    time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def mark_worker_dead(pid: int) -> None:
    """A worker has gone (its exit, SIGKILL, a recycle): fold its counts into the archive, drop its files.

    Called by gunicorn's master for every worker it reaps (``child_exit``). prometheus_client's
    ``mark_process_dead`` only removes live gauges' files (the service has no gauges); a dead worker's
    counter and histogram files stayed, 64 KiB or more each, in a directory held in memory, and every
    scrape read each of them: a worker killed every few minutes (OOM, timeouts) or SIGHUP reloads piled
    them up without bound. Its samples are instead added to ``<type>_dead-workers.db`` and its files
    removed, under the lock scrapes take, so a total never goes down or counts a worker twice."""
    from prometheus_client import multiprocess

    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    try:
        multiprocess.mark_process_dead(pid, directory)
        fold_dead_worker(directory, pid)
        # A worker whose fold failed or waited too long before is folded now: any file of a process that
        # no longer exists. A live worker's files, and those of a pid since reused, are left alone.
        for leftover in sorted(_pids_with_files(directory) - {pid}):
            if not _process_exists(leftover):
                fold_dead_worker(directory, leftover)
    except TimeoutError as error:
        # Its files stay and are counted as they are; the next worker's exit folds them.
        _log.warning(
            "metrics of worker %d not folded yet (%s); tried again at the next worker's exit", pid, error
        )
    except Exception:
        _log.exception("could not fold the metrics of worker %d", pid)


def _pids_with_files(directory: str) -> set[int]:
    pids = set()
    for kind in _FOLDED_TYPES:
        for path in Path(directory).glob(f"{kind}_*.db"):
            ident = path.stem.removeprefix(f"{kind}_")
            if ident.isdigit():
                pids.add(int(ident))
    return pids


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fold_dead_worker(directory: str, pid: int) -> None:
    """Add the samples of worker ``pid``'s counter and histogram files to the archive files, then remove
    its files. Counters and histogram buckets are plain sums across processes, so the archive reads as
    that worker did, and the MultiProcessCollector's totals are unchanged.

    Each file's fold is all or nothing: the sums go into a copy of the archive (named so that the
    collector does not read it), which replaces the archive only when complete; a failure half-way
    leaves the archive and the dead worker's file as they were, for the next attempt."""
    from prometheus_client.mmap_dict import MmapedDict

    with _folding_lock(directory, fcntl.LOCK_EX, wait_s=FOLD_WAIT_S):
        for kind in _FOLDED_TYPES:
            dead = os.path.join(directory, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            if not _holds_samples(dead):  # the worker was killed while it created the file
                os.remove(dead)
                continue
            archive = os.path.join(directory, f"{kind}_{_ARCHIVE_ID}.db")
            draft = os.path.join(directory, f".{kind}_{_ARCHIVE_ID}.draft")
            try:
                if os.path.exists(archive):
                    shutil.copyfile(archive, draft)
                summed = MmapedDict(draft)  # created when there is no archive yet
                try:
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                        if value:
                            summed.write_value(key, summed.read_value(key)[0] + value, timestamp)
                finally:
                    summed.close()
                os.replace(draft, archive)
            finally:
                if os.path.exists(draft):
                    os.remove(draft)
            os.remove(dead)


# A server's metrics directory is held, for the life of the server, by an exclusive flock on this file.
_OWNER_LOCK = ".owner.lock"
_METRICS_DIR_PREFIX = "cds-metrics-"
_owner_locks: list[int] = []  # descriptors held open by this process (the gunicorn master)


def fresh_metrics_dir(parent: str | None) -> str:
    """A new, empty directory for a server's metric files, under ``parent`` (the system's temporary
    directory if None), held by this process until it exits; directories left by servers that are gone
    are removed first.

    The master removes its directory when it exits, but not when it is killed outright: a container's
    PID 1 killed for memory leaves it, and the restarted container finds it in the same ``/tmp``
    (Kubernetes keeps an ``emptyDir`` across container restarts; in memory, it counts against the pod's
    limit). Each start then added another, 128 KiB or more per worker, for the life of the pod.

    The lock is inherited by the workers (a fork shares the open file), so a directory is taken for gone
    only when the master and every worker have exited. A directory without the lock file (being created
    right now, or made by an older version) is left alone.
    """
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    remove_abandoned_metrics_dirs(parent or tempfile.gettempdir())
    directory = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX, dir=parent)
    fd = os.open(os.path.join(directory, _OWNER_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _owner_locks.append(fd)
    return directory


def remove_abandoned_metrics_dirs(parent: str) -> list[str]:
    """Remove the metrics directories under ``parent`` whose server has gone; return their paths."""
    removed = []
    for path in sorted(Path(parent).glob(f"{_METRICS_DIR_PREFIX}*")):
        try:
            fd = os.open(path / _OWNER_LOCK, os.O_RDWR | os.O_CLOEXEC)
        except OSError:  # no lock file, or another user's directory
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its server is running
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
        finally:
            os.close(fd)
    if removed:
        _log.info("removed %d metrics directories of servers that had stopped", len(removed))
    return removed
