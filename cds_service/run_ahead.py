"""The order-select → order-sign run-ahead cache.

An EHR calls order-select while the clinician picks an order and order-sign moments later for the same
drafts. The interpretation is the same if the patient, encounter, draft orders and clinical data are the
same, so order-sign can answer from what order-select computed instead of fetching and reasoning again.

Entries live for ``run_ahead_seconds`` (0 turns the cache off). One process keeps them in memory, within a
count and a byte bound, and drops them once expired; several
replicas share them through Redis when ``redis_url`` is set, because the EHR's two calls may reach
different replicas. Either way values are stored as JSON, so a hit is a fresh copy that the caller may
change freely, and both backends behave alike. The cache is an optimisation: a Redis outage, even one at the
worker's start, is logged and treated as a miss, never as a failed hook call.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from cds_service import __version__
from cds_service.config import Settings
from cds_service.redaction import address
from cds_service.redis_client import redis_client

log = logging.getLogger(__name__)

KEY_PREFIX = "cds:run-ahead:"
DEFAULT_MAX_ENTRIES = 4096
# Each worker's memory: a few KB an entry is usual, so the count bounds it first; the bytes bound holds
# when drafts and records are large (a "stop" suggestion carries the whole MedicationRequest back).
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# An entry larger than this is not kept, in memory or in Redis: order-sign computes it afresh.
MAX_ENTRY_BYTES = 512 * 1024
# What an entry costs beyond its key and value (the tuple, the float, the dictionary slot), roughly.
_ENTRY_OVERHEAD_BYTES = 200
# Redis sits on the hot path of order-sign; an unreachable Redis must cost milliseconds, not the budget.
_REDIS_TIMEOUT_SECONDS = 0.1


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class _MemoryStore:
    """Entries in the order they expire, bounded in count and bytes, guarded by one lock (gthread workers
    call it from several threads).

    Every entry lives the same lifetime and a hit does not lengthen it, so the oldest entry is always the
    first to expire: expired ones are dropped from the front at every call (a patient's findings do not
    stay in memory past their lifetime for want of a read), and past a bound the soonest to expire go.
    """

    def __init__(
        self, ttl_seconds: float, max_entries: int, max_bytes: int, clock: Callable[[], float]
    ) -> None:
        self._ttl = ttl_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        now = self._clock()
        with self._lock:
            self._drop_expired(now)
            entry = self._entries.get(key)
            return None if entry is None else entry[1]

    def put(self, key: str, payload: bytes) -> None:
        now = self._clock()
        with self._lock:
            self._drop_expired(now)
            self._forget(key)
            self._entries[key] = (now + self._ttl, payload)
            self._bytes += _size(key, payload)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._forget(next(iter(self._entries)))

    def _drop_expired(self, now: float) -> None:
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                return
            self._forget(key)

    def _forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry[1])

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        """What the entries held cost, as the bound counts it."""
        with self._lock:
            return self._bytes


def _size(key: str, payload: bytes) -> int:
    return len(key) + len(payload) + _ENTRY_OVERHEAD_BYTES


class _RedisStore:
    """Entries shared by every replica; Redis expires them itself."""

    def __init__(self, url: str, ttl_seconds: int) -> None:
        self._ttl = ttl_seconds
        self._where = address(url)
        # No connection yet: a Redis that cannot be reached at start is a miss like any other.
        self._client = redis_client(url, timeout_s=_REDIS_TIMEOUT_SECONDS)
        import redis  # present: redis_client has checked

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def get(self, key: str) -> bytes | None:
        try:
            return self._client.get(KEY_PREFIX + key)
        except self._errors as error:
            log.warning(
                "run-ahead cache read failed (Redis at %s: %s); computing afresh",
                self._where,
                type(error).__name__,
                extra={"error": type(error).__name__},
            )
            return None

    def put(self, key: str, payload: bytes) -> None:
        try:
            self._client.set(KEY_PREFIX + key, payload, ex=self._ttl)
        except self._errors as error:
            log.warning(
                "run-ahead cache write failed (Redis at %s: %s)",
                self._where,
                type(error).__name__,
                extra={"error": type(error).__name__},
            )


class RunAheadCache:
    """Findings computed at order-select, kept briefly for the matching order-sign call."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._ttl = settings.run_ahead_seconds
        self._redis_url = settings.redis_url
        self._store: _MemoryStore | _RedisStore | None
        if self._ttl <= 0:
            self._store = None
        elif settings.redis_url:
            self._store = _RedisStore(settings.redis_url, self._ttl)
        else:
            self._store = _MemoryStore(self._ttl, max_entries, max_bytes, clock)

    @staticmethod
    def key(patient_id: str, encounter_id: str | None, draft_orders: Sequence[dict], data_digest: str) -> str:
        """A stable digest of what the answer depends on; the order of keys in a JSON object does not matter.

        The order of the drafts does: cards name the drafts, and suggest removing them, in the order sent.
        The service version is part of it: during a rolling upgrade, replicas of two versions share Redis,
        and one must never read findings serialised by the other.
        """
        material = _canonical(
            {
                "patient": patient_id,
                "encounter": encounter_id,
                "drafts": list(draft_orders),
                "data": data_digest,
                "version": __version__,
            }
        )
        return hashlib.sha256(material).hexdigest()

    def get(self, key: str) -> Any:
        """A fresh copy of the stored value, or None when absent, expired or the cache is off."""
        if self._store is None:
            return None
        payload = self._store.get(key)
        if payload is None:
            return None
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            # Only something else writing under the key prefix in a shared Redis can leave such a value;
            # it was a 500 for the order-sign call that read it.
            log.warning("run-ahead entry is not JSON (%d bytes); computing afresh", len(payload))
            return None

    def put(self, key: str, value: Any) -> None:
        """Store a JSON-able value for ``run_ahead_seconds``; one larger than ``MAX_ENTRY_BYTES`` is not kept
        (a few such order-selects would otherwise push every other entry out, or fill Redis)."""
        if self._store is None:
            return
        payload = _canonical(value)
        if len(payload) > MAX_ENTRY_BYTES:
            log.info("run-ahead entry not kept: %d bytes, more than %d", len(payload), MAX_ENTRY_BYTES)
            return
        self._store.put(key, payload)

    def describe(self) -> str:
        """Where entries live, for the start-up log (never the Redis password)."""
        if self._store is None:
            return "run-ahead cache off (CDS_RUN_AHEAD_SECONDS=0)"
        if isinstance(self._store, _RedisStore):
            return f"run-ahead cache in Redis at {address(self._redis_url or '')}, {self._ttl} s"
        store = self._store
        return (
            f"run-ahead cache in process memory, {self._ttl} s, at most {store.max_entries} entries "
            f"and {store.max_bytes // (1024 * 1024)} MiB"
        )
