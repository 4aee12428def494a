"""The durable feedback store: what clinicians did with cards, and which cards were issued on what topic.

Nothing here identifies a patient or a user: a card is known by its uuid, its service and its topic; a
feedback item by its outcome, time, accepted suggestion ids and override reason Coding. The free-text
comment is not kept (see `schema.py`).

Feedback for a card uuid that has no issued record (issued before the record existed, by another
deployment, or lost with the background writer's queue) is still stored: it is a real clinician's answer.
The report counts it under the topic `unknown`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from cds_service.deferred_start import DeferredStart
from cds_service.feedback.dialects import TABLE_NAMES, Dialect, dialect_for
from cds_service.feedback.report import IssuedCount, OfferedReasons, OutcomeCount, build_report
from cds_service.feedback.schema import FeedbackItem, suggestions_text

log = logging.getLogger(__name__)
T = TypeVar("T")

# The longest a readiness check waits for the database (the kubelet's probe timeout is 2 s).
READINESS_WAIT_S = 1.0
# The longest a call waits for another's use of the connection: more than a statement may take (5 s,
# dialects.STATEMENT_TIMEOUT_MS), less than an EHR or a probe waits for anything.
LOCK_WAIT_S = 6.0

IssuedRow = tuple[str, str, str, datetime]
"""(service id, card uuid, topic, issued at)."""


_TABLES = (
    """CREATE TABLE IF NOT EXISTS cds_issued_card (
        service_id TEXT NOT NULL,
        card_uuid TEXT NOT NULL,
        topic TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        PRIMARY KEY (service_id, card_uuid)
    )""",
    "CREATE INDEX IF NOT EXISTS cds_issued_card_at ON cds_issued_card (issued_at)",
    """CREATE TABLE IF NOT EXISTS cds_feedback (
        id {id_column},
        service_id TEXT NOT NULL,
        card_uuid TEXT NOT NULL,
        outcome TEXT NOT NULL,
        outcome_at TEXT NOT NULL,
        accepted_suggestions TEXT NOT NULL,
        reason_system TEXT,
        reason_code TEXT,
        reason_display TEXT,
        received_at TEXT NOT NULL,
        UNIQUE (service_id, card_uuid, outcome, outcome_at, accepted_suggestions)
    )""",
    "CREATE INDEX IF NOT EXISTS cds_feedback_at ON cds_feedback (outcome_at)",
)

_INSERT_FEEDBACK = """INSERT INTO cds_feedback
    (service_id, card_uuid, outcome, outcome_at, accepted_suggestions,
     reason_system, reason_code, reason_display, received_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING"""

_RECEIVED_AT = """SELECT received_at FROM cds_feedback
    WHERE service_id = ? AND card_uuid = ? AND outcome = ? AND outcome_at = ? AND accepted_suggestions = ?"""

_INSERT_ISSUED = """INSERT INTO cds_issued_card (service_id, card_uuid, topic, issued_at)
    VALUES (?, ?, ?, ?)
    ON CONFLICT DO NOTHING"""

_ISSUED_COUNTS = """SELECT service_id, topic, COUNT(*) FROM cds_issued_card
    WHERE issued_at >= ?
    GROUP BY service_id, topic"""

# A card may be reported more than once (a clinician overrides, then reconsiders); each card counts once,
# with its latest outcome. Ties on the timestamp go to the item received last. A card with no issued
# record has a NULL topic. Displays are grouped, not MAX()ed: which one names a reason is chosen in
# report.py, since MAX follows the database's collation and SQLite and PostgreSQL would differ.
_OUTCOME_COUNTS = """WITH ranked AS (
        SELECT service_id, card_uuid, outcome, reason_system, reason_code, reason_display,
               ROW_NUMBER() OVER (
                   PARTITION BY service_id, card_uuid ORDER BY outcome_at DESC, id DESC
               ) AS position
        FROM cds_feedback
        WHERE outcome_at >= ?
    )
    SELECT r.service_id, i.topic, r.outcome,
           r.reason_system, r.reason_code, r.reason_display, COUNT(*)
    FROM ranked r
    LEFT JOIN cds_issued_card i ON i.service_id = r.service_id AND i.card_uuid = r.card_uuid
    WHERE r.position = 1
    GROUP BY r.service_id, i.topic, r.outcome, r.reason_system, r.reason_code, r.reason_display"""


# Whether each table holds any row at all, whatever --since says (EXISTS: no count of a big table).
_ANY_ROWS = "SELECT EXISTS (SELECT 1 FROM cds_issued_card), EXISTS (SELECT 1 FROM cds_feedback)"

# Feedback comes for cards the service issued and recorded a moment before, so a store with feedback and
# not one issued card has lost its records (or never got them): every row of the report then reads
# "issued 0" under the topic "unknown", which looked like a service that issued nothing.
NO_ISSUED_RECORDS = (
    "the store holds feedback but no card recorded as issued, so 'issued' is 0 and every topic 'unknown': "
    "the issued-card records are missing (a SQLite file copied without its -wal file? a service whose "
    "issued-card writer cannot write? see its log)"
)


class StoreUnavailable(Exception):
    """The database cannot serve right now (unreachable, connection lost, shutting down, a lock held too
    long, a read-only standby, a GRANT missing; a SQLite file full, locked, read-only or replaced under
    the service); nothing was written, and the same call may succeed later, some once an operator acts.
    The message is the database's reason, without secrets."""


def timestamp_text(moment: datetime) -> str:
    """Fixed-width UTC text, so that string order is time order on every database.

    The year is padded here, not by strftime's `%Y`, which glibc leaves unpadded below 1000: a client's
    `0026-03-02T09:05:00Z` (a two-digit year) became `26-03-02...`, which sorts after every `2026-...`,
    so that item counted as the card's latest outcome and fell inside every --since."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry a UTC offset")
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")


class FeedbackStore:
    """One connection per process, shared by the process's threads under a lock.

    Writes are a few rows and the database serialises writers anyway, so a lock costs nothing measurable
    and keeps the connection safe under gunicorn's threads. A connection inherited through fork is never
    used (nor closed, which could release the parent's SQLite locks): the child opens its own.
    """

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0
        self._inherited: list[Any] = []
        self._was_writable = False  # written to, or found writable, since this worker started
        self._check_lock = threading.Lock()
        self._check: threading.Thread | None = None  # the readiness check running or last run
        self._checked: str | None = None  # what it found
        # Every write first makes sure the tables exist; after that, the check is one attribute read.
        self._tables = DeferredStart(
            f"the feedback store ({dialect.describe()})", self._create_tables, StoreUnavailable
        )

    @classmethod
    def open(cls, url: str) -> FeedbackStore:
        """A store on a SQLite path or a postgresql:// URL, with its tables created if missing."""
        store = cls(dialect_for(url))
        store._tables.complete()
        return store

    @classmethod
    def open_for_service(cls, url: str) -> FeedbackStore:
        """Like `open`, except that a PostgreSQL server that cannot be reached now does not stop the worker:
        the tables are then created on the first write or readiness check that reaches it. What is wrong
        whether or not the server answers (psycopg missing, a malformed URL) raises ConfigError."""
        cls.check_url(url)
        store = cls(dialect_for(url))
        try:
            store._tables.complete()
        except StoreUnavailable as error:
            store._tables.defer(str(error))
        return store

    @staticmethod
    def check_url(url: str) -> None:
        """ConfigError for what is wrong with `url` whether or not its server answers (psycopg missing, a
        malformed postgresql:// URL); opens nothing, so `serve` can check it before any worker starts."""
        dialect_for(url).check()

    @classmethod
    def open_for_reading(cls, url: str) -> FeedbackStore:
        """A store that creates nothing and writes nothing: a report must not change the database it
        reads, nor create one at a mistyped path."""
        return cls(dialect_for(url, read_only=True))

    def describe(self) -> str:
        return self._dialect.describe()

    def present_tables(self) -> set[str]:
        """Which of the store's tables exist (none in a database the service never wrote to)."""
        return self._run(lambda cursor: self._dialect.existing_tables(cursor, TABLE_NAMES), write=False)

    def tables_elsewhere(self) -> tuple[list[str], dict[str, list[str]]]:
        """The schemas this connection sees, and the store's tables in the database's other schemas
        (PostgreSQL; none on SQLite): a report whose search_path misses them read as an empty store."""
        return self._run(lambda cursor: self._dialect.tables_elsewhere(cursor, TABLE_NAMES), write=False)

    def add_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> list[bool]:
        """Store the items in one transaction, committed before returning; for each item, whether it was new.

        An item already stored (the same card, outcome, time and suggestions: a client's resend, or a
        repeat within the batch) is kept once and marked False, so that the caller can count it as a
        duplicate rather than as another outcome. An item stored by this call's own first attempt, whose
        commit succeeded but whose connection dropped before the answer, is new: the retry knows it by
        the time received, which is this call's."""
        received = timestamp_text(datetime.now(UTC))
        rows = [
            (
                service_id,
                item.card,
                item.outcome,
                timestamp_text(item.outcome_timestamp),
                suggestions_text(item.accepted_suggestions),
                item.override_reason.system if item.override_reason else None,
                item.override_reason.code if item.override_reason else None,
                item.override_reason.display if item.override_reason else None,
                received,
            )
            for item in items
        ]
        statement = self._dialect.sql(_INSERT_FEEDBACK)
        stored_when = self._dialect.sql(_RECEIVED_AT)
        attempts = 0

        # Rows go in in key order, not the body's: two replicas storing overlapping batches in different
        # orders each waited on the other's uncommitted row in the unique index, and PostgreSQL broke the
        # deadlock by failing one post (a 503). In one order, the second waits and then finds the rows.
        # The stable sort keeps a repeat within the batch after its first occurrence.
        order = sorted(range(len(rows)), key=lambda index: rows[index][:5])

        def insert(cursor: Any) -> list[bool]:
            nonlocal attempts
            attempts += 1
            new = [False] * len(rows)
            seen: set[tuple[Any, ...]] = set()
            stored = self._dialect.insert_each(cursor, statement, [rows[index] for index in order])
            for index, was_stored in zip(order, stored, strict=True):
                key = rows[index][:5]
                if was_stored:
                    new[index] = True
                elif attempts > 1 and key not in seen:
                    # Run again because the connection dropped (see _run_reconnecting), maybe after the
                    # first attempt committed: a row received at this call's own time was stored by it.
                    cursor.execute(stored_when, key)
                    found = cursor.fetchone()
                    new[index] = found is not None and found[0] == received
                seen.add(key)
            return new

        self._tables.complete()
        return self._run(insert, write=True)

    def record_issued(self, service_id: str, cards: Sequence[tuple[str, str]], at: datetime) -> None:
        """Record (card uuid, topic) pairs issued by a service; a uuid already recorded is kept as is."""
        self.record_issued_rows([(service_id, uuid, topic, at) for uuid, topic in cards])

    def record_issued_rows(self, rows: Sequence[IssuedRow]) -> None:
        """Record issued cards of any services in one transaction (the background recorder's batches)."""
        if not rows:
            return
        statement = self._dialect.sql(_INSERT_ISSUED)

        def insert(cursor: Any) -> None:
            cursor.executemany(
                statement,
                [(service_id, uuid, topic, timestamp_text(at)) for service_id, uuid, topic, at in rows],
            )

        self._tables.complete()
        self._run(insert, write=True)

    def report(self, since: datetime | None = None, offered: OfferedReasons | None = None) -> dict[str, Any]:
        """Per service and topic: cards issued, accepted, overridden, acceptance rate, top reasons.

        `offered` names and groups override reasons that clients echoed in part (see `report.py`)."""
        bound = timestamp_text(since) if since else ""

        def read(cursor: Any) -> tuple[list[IssuedCount], list[OutcomeCount], tuple[Any, ...]]:
            cursor.execute(self._dialect.sql(_ISSUED_COUNTS), (bound,))
            issued = [IssuedCount(*row) for row in cursor.fetchall()]
            cursor.execute(self._dialect.sql(_OUTCOME_COUNTS), (bound,))
            outcomes = [OutcomeCount(*row) for row in cursor.fetchall()]
            cursor.execute(_ANY_ROWS)
            return issued, outcomes, cursor.fetchone()

        issued, outcomes, (any_issued, any_feedback) = self._run(read, write=False)
        warnings = []
        if any_feedback and not any_issued:
            warnings.append(NO_ISSUED_RECORDS)
        return build_report(issued, outcomes, since=since, offered=offered, warnings=warnings)

    def unwritable(self) -> str | None:
        """None if a write could be made now (readiness), creating the tables first if they still wait for
        the server; else why not, in the database's words without passwords (a database that does not
        exist or a password refused reads differently from a server that is down). Never raises.

        Waits at most READINESS_WAIT_S: libpq may wait 3 s to connect and 5 s for an answer from a server
        that stopped answering, and a write in progress holds the connection meanwhile, while the kubelet
        cuts a probe off after 2 s without a reason (and counts it failed, even where an outage should
        only degrade the pod). A check still running then is reported as such, and later probes wait for
        that same check rather than starting one each."""
        with self._check_lock:
            check = self._check
            if check is None or not check.is_alive():
                check = self._check = threading.Thread(
                    target=self._check_writable, name="feedback-readiness", daemon=True
                )
                self._checked = None
                check.start()
        check.join(READINESS_WAIT_S)
        if check.is_alive():
            log.warning("feedback store (%s) did not answer within %g s", self.describe(), READINESS_WAIT_S)
            return f"no answer within {READINESS_WAIT_S:g} s"
        return self._checked

    def _check_writable(self) -> None:
        try:
            self._tables.complete()
            with self._locked():
                if self._dialect.writable(self._connection()):
                    self._was_writable = True
                    self._checked = None
                    return
            reason = "the database accepts only reads"
        except Exception as error:
            reason = self._dialect.reason(error)
        log.warning("feedback store (%s) is not writable: %s", self.describe(), reason)
        self._checked = reason

    def outage_spares_readiness(self) -> bool:
        """Whether the store being unwritable now should leave the worker ready (readiness says so in its
        body instead): true for a database every replica shares (PostgreSQL) once this worker has written
        to it or found it writable. Its outage stops feedback, not cards; failing readiness would take
        every replica out of the load balancer at once, and clinicians would lose their cards for the sake
        of feedback. Until then the worker stays unready, so a new release whose feedback database is
        misconfigured stalls its rollout while the old pods serve. A SQLite file is the pod's own disk:
        when it fails, only this pod leaves."""
        return self._dialect.name == "postgresql" and self._was_writable

    def close(self) -> None:
        """Close the connection, unless a statement still waits on it (then the process's exit does)."""
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            log.warning("feedback store (%s): a statement still waits for the database", self.describe())
            return
        try:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
        finally:
            self._lock.release()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The connection, for one thread at a time; StoreUnavailable if another has held it for
        LOCK_WAIT_S, so that threads do not queue without end behind a statement that waits for a server
        which stopped answering (a hung disk on the server: the kernel still acknowledges, so neither TCP
        timeouts nor statement_timeout end that wait)."""
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            raise StoreUnavailable(
                f"a statement has waited more than {LOCK_WAIT_S:g} s for the database and still holds "
                "the connection"
            )
        try:
            yield
        finally:
            self._lock.release()

    def _create_tables(self) -> None:
        """Create the tables unless they exist. Looked for first: PostgreSQL checks the CREATE privilege on
        the schema before it looks whether a table exists, so `CREATE TABLE IF NOT EXISTS` failed for a role
        with SELECT and INSERT on the tables only (the least privilege, and what PostgreSQL 15 leaves on
        `public`), and the worker did not start. The look is a read: it does not count as having found
        the store writable (a read-only standby has the tables too)."""
        if self.present_tables() == set(TABLE_NAMES):
            return

        def create(cursor: Any) -> None:
            self._dialect.lock_schema(cursor)
            for statement in _TABLES:
                cursor.execute(statement.format(id_column=self._dialect.id_column))

        self._run(create, write=True)

    def _run(self, work: Callable[[Any], T], write: bool) -> T:
        """Run `work` in one transaction; StoreUnavailable when the database cannot serve right now."""
        try:
            result = self._run_reconnecting(work, write)
            self._was_writable = self._was_writable or write
            return result
        except Exception as error:
            if not self._dialect.is_transient(error):
                raise
            raise StoreUnavailable(self._dialect.reason(error)) from None

    def _run_reconnecting(self, work: Callable[[Any], T], write: bool) -> T:
        """Run `work` in one transaction. A connection the server dropped (a PostgreSQL restart or
        failover) is replaced and the work run once more: safe, because every write is idempotent."""
        with self._locked():
            conn = self._connection()
            try:
                with self._dialect.transaction(conn, write) as cursor:
                    return work(cursor)
            except Exception:
                if self._dialect.is_usable(conn):
                    raise
                log.warning("lost the connection to the %s; reconnecting once", self.describe())
            with self._dialect.transaction(self._connection(), write) as cursor:
                return work(cursor)

    def _connection(self) -> Any:
        """The process's connection, opened on first use, after a fork, or after the server dropped it."""
        if self._conn is not None and self._pid != os.getpid():
            self._inherited.append(self._conn)
            self._conn = None
        if self._conn is not None and not self._dialect.is_usable(self._conn):
            self._conn = None
        if self._conn is None:
            self._conn = self._dialect.connect()
            self._pid = os.getpid()
        return self._conn
