"""Remembers which JWT ids (``jti``) have been used, so a captured token cannot be replayed.

The memory must be shared by every process that answers calls: gunicorn runs several workers, and a
replayed token landing on a different worker than the original must still be refused. On one machine a
SQLite file in WAL mode does that (the insert on a unique key is atomic across processes); several
replicas need Redis (``SET NX`` with an expiry). Either way an id is remembered only for the lifetime of
its token, after which the token itself is refused as expired.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cds_service.config import ConfigError, Settings
from cds_service.deferred_start import DeferredStart
from cds_service.disk_space import shortage
from cds_service.redaction import address, without_passwords
from cds_service.redis_client import redis_client
from cds_service.sqlite_cache import CACHE_SIZE_PRAGMA

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 60.0
# A SET NX takes well under a millisecond. Redis that has not answered in half a second is one that cannot
# serve (hung, or a stalled network): each hook call waits this long at most before its token is refused,
# and the readiness probe says why within the kubelet's 2 s timeout instead of being cut off.
REDIS_TIMEOUT_S = 0.5
# Redis keeps the ids only in memory unless it persists them: a restart without its file, a FLUSHALL or a
# failover to a server that lacked them forgets them, and a token used before could be used again while it
# lives. The epoch key is written once, never expires, and holds the moment it was written: Redis holds the
# ids of every token used since then, and of none used before. It cannot say whether it is new or has lost
# ids (both look empty), so tokens that could have been used before it was written are refused, for as long
# as such a token can pass. That needs no memory in the workers, so it holds when every worker restarts
# together with Redis. Readiness probes write it too, so after a loss it dates from within a probe interval.
EPOCH_KEY = "cds:jti-epoch"
PROBE_KEY = "cds:jti-probe"  # written by readiness checks


class ReplayStoreError(Exception):
    """The replay store could not be consulted; callers must refuse the token (fail closed)."""


class ReplayStore(Protocol):
    def claim(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at`` (epoch seconds); False if it is already recorded."""
        ...

    def describe(self) -> str:
        """One line for the start-up log: which store, where."""
        ...

    def unready(self) -> str | None:
        """For /readyz: None while the store can be used now (asking it, if it is a server); else which
        store cannot be reached, and where (never a password)."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jwt_jti_seen (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
)
"""

# One statement, so the check and the record cannot be split by another process: a new key is
# inserted; a known key is taken over only when its previous use has expired.
_CLAIM = """
INSERT INTO jwt_jti_seen (key, expires_at) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
WHERE jwt_jti_seen.expires_at <= ?
"""


class SQLiteReplayStore:
    """A SQLite file shared by the workers of one machine."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise ConfigError("CDS_STATE_DB: an in-memory database cannot be shared between workers")
        self._local = threading.local()
        self._purge_lock = threading.Lock()
        self._next_purge = 0.0
        try:
            self._connection()
        except sqlite3.Error as error:
            raise ConfigError(
                f"CDS_STATE_DB={self.path!r}: cannot open the state database ({error})"
            ) from None

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread and per process: a connection inherited through fork() must not
        # be used by the child.
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(CACHE_SIZE_PRAGMA)
            connection.execute(_SCHEMA)
            self._local.connection = connection
            self._local.pid = os.getpid()
        return connection

    def claim(self, key: str, expires_at: float) -> bool:
        now = time.time()
        try:
            connection = self._connection()
            claimed = connection.execute(_CLAIM, (key, expires_at, now)).rowcount == 1
            self._maybe_purge(connection, now)
        except sqlite3.Error as error:
            raise ReplayStoreError(f"SQLite replay store {self.path!r}: {error}") from None
        return claimed

    def _maybe_purge(self, connection: sqlite3.Connection, now: float) -> None:
        """Drop expired ids now and then, so the table holds only live tokens."""
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge = now + PURGE_INTERVAL_S
            connection.execute("DELETE FROM jwt_jti_seen WHERE expires_at <= ?", (now,))
        finally:
            self._purge_lock.release()

    def describe(self) -> str:
        return f"SQLite file {self.path} (WAL; shared by the workers of this machine only)"

    def unready(self) -> str | None:
        """A local file, opened at start or the worker did not start: never waiting for a server; but on
        a full disk no token can be recorded, so every signed call would be refused."""
        short = shortage(self.path)
        return None if short is None else f"the JWT replay store (SQLite file {self.path}) has {short}"


class RedisReplayStore:
    """Redis, shared by every replica that points at the same server.

    A Redis that cannot be reached at start does not stop the worker (a Redis restart would otherwise
    stop every replica); the store then fails closed, as during any Redis outage, until it is reached.
    Credentials Redis refuses are a configuration error and do stop it.

    Readiness asks Redis at every probe, not only until it is first reached: without it every call is
    refused (fail closed), so a pod that cannot reach it has nothing to serve, and the load balancer's
    503 tells an EHR the truth where the pod's 401 would blame its credentials. A Redis that only one
    pod cannot reach (its node's network) then costs that pod's share of calls, not a share of refusals."""

    PREFIX = "cds:jti:"

    def __init__(self, url: str, loss_window_s: float) -> None:
        """``loss_window_s``: how long after its use a token can still be presented, counted on the expiry
        a claim carries; after the epoch, tokens whose expiry lies within it of the epoch are refused."""
        self._loss_window_s = loss_window_s
        self._redis = redis_client(url, timeout_s=REDIS_TIMEOUT_S)
        import redis  # present: redis_client has checked

        self._errors = (redis.RedisError,)
        self._refused = redis.AuthenticationError
        self._refuses_writes = redis.ResponseError  # OOM under noeviction, READONLY on a replica
        self._url = url
        self._where = address(url)
        self._away = False  # since the last probe found Redis away (one warning per outage)
        # The epoch this process last saw in Redis and its moment, one tuple so that a thread reading it
        # never pairs one epoch with another's moment.
        self._known: tuple[bytes | None, float] = (None, 0.0)
        self._epoch_lock = threading.Lock()
        self._start = DeferredStart(
            f"the JWT replay store (Redis at {self._where})", self._redis.ping, redis.ConnectionError
        )
        try:
            self._start.complete()
        except redis.AuthenticationError as error:
            raise ConfigError(
                f"CDS_REDIS_URL ({self._where}): Redis refused the credentials "
                f"({without_passwords(str(error), url)})"
            ) from None
        except redis.RedisError as error:
            self._start.defer(str(error))

    def claim(self, key: str, expires_at: float) -> bool:
        """SET NX, and in the same round trip since when Redis holds the ids (see EPOCH_KEY): a token that
        may have been used before then is refused until it can no longer pass."""
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))
        try:
            self._start.complete()
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(self.PREFIX + key, b"1", nx=True, px=ttl_ms)
            pipe.get(EPOCH_KEY)
            claimed, epoch = pipe.execute()
            known, since = self._known
            if epoch is None or epoch != known:
                since = self._new_epoch(epoch)
        except self._errors as error:
            raise ReplayStoreError(f"Redis replay store {self._where}: {error}") from None
        if expires_at < since + self._loss_window_s:
            raise ReplayStoreError(
                f"Redis replay store {self._where} holds no ids of tokens used before {_utc(since)}; "
                f"a token that may have been used then is refused until {_utc(since + self._loss_window_s)}"
            )
        return bool(claimed)

    def _new_epoch(self, seen: bytes | None) -> float:
        """The moment since which Redis holds the ids, writing the epoch if it has none; logged once per
        process and epoch while tokens from before it can still be presented."""
        with self._epoch_lock:
            if seen is None:
                self._redis.set(EPOCH_KEY, _epoch_value(), nx=True)
                seen = self._redis.get(EPOCH_KEY)
                if seen is None:  # lost again at once: the safe bound is now
                    return time.time()
            known, known_since = self._known
            if seen == known:  # another thread has just dealt with it
                return known_since
            try:
                since = float(seen.split()[0])
            except (IndexError, ValueError):
                # Not written by this service: the safe bound is now.
                since = time.time()
            self._known = (seen, since)
            until = since + self._loss_window_s
            if until <= time.time():
                return since
            if known is None:
                log.warning(
                    "%s holds no ids of tokens used before %s: it is new, or it lost them (a restart "
                    "without persistence, a flush or a failover). A token that may have been used before "
                    "then is refused until %s",
                    self._start.store,
                    _utc(since),
                    _utc(until),
                )
            else:
                log.error(
                    "%s lost the ids of tokens already used (a restart without persistence, a flush or a "
                    "failover): a token that may have been used before %s is refused until %s",
                    self._start.store,
                    _utc(since),
                    _utc(until),
                )
            return since

    def describe(self) -> str:
        return f"Redis at {self._where} (shared by every replica using it)"

    def _ping(self) -> Exception | None:
        """None if Redis takes a write now; else the error, with one warning when an outage begins and one
        line when it ends (the probe runs every few seconds)."""
        try:
            # A write, as a claim is: a Redis full under noeviction, or a replica after a failover, answers
            # PING but refuses every claim. The epoch, if Redis has none, dates a loss to this probe.
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(PROBE_KEY, b"1", px=60_000)
            pipe.set(EPOCH_KEY, _epoch_value(), nx=True)
            pipe.execute()
        except self._errors as error:
            if not self._away:
                self._away = True
                log.warning(
                    "%s stopped answering (%s): client JWTs are refused and the worker is not ready "
                    "until it answers",
                    self._start.store,
                    without_passwords(str(error), self._url),
                )
            return error
        if self._away:
            self._away = False
            log.info("%s answers again: the worker is ready", self._start.store)
        return None

    def unready(self) -> str | None:
        """Asks Redis now. Says whether Redis refused the credentials or could not be reached, and Redis's
        words: a Redis first reached after start may be one whose password has changed, which no retry
        will fix."""
        error = self._start.unready() if not self._start.done else self._ping()
        if error is None:
            return None
        words = without_passwords(str(error), self._url)
        if isinstance(error, self._refused):
            return f"{self._start.store}: Redis refused the credentials ({words})"
        if isinstance(error, self._refuses_writes):
            return f"{self._start.store} refuses to record token ids ({words})"
        return f"{self._start.store} cannot be reached ({words})"


def _epoch_value() -> str:
    """The moment, and a nonce so that two epochs written in the same microsecond still differ."""
    return f"{time.time():.6f} {uuid.uuid4().hex}"


def _utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_replay_store(settings: Settings, *, loss_window_s: float) -> ReplayStore:
    """Redis when ``CDS_REDIS_URL`` is set, else the SQLite file at ``CDS_STATE_DB`` (a file that cannot
    lose some ids and keep others, so ``loss_window_s`` is Redis's alone; see RedisReplayStore)."""
    if settings.redis_url:
        return RedisReplayStore(settings.redis_url, loss_window_s)
    return SQLiteReplayStore(settings.state_db)
