"""The two databases the feedback store runs on, behind the few operations where they differ.

Everything else, the SQL included, is shared: the statements are written once with `?` placeholders and
only standard SQL plus `INSERT ... ON CONFLICT DO NOTHING`, which both SQLite (3.24+) and PostgreSQL
understand. Timestamps are stored as ISO 8601 UTC text of fixed width on both, so that comparing them as
strings orders them in time and the same code filters `--since` on either database.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from cds_service.config import ConfigError
from cds_service.disk_space import shortage
from cds_service.redaction import without_passwords
from cds_service.sqlite_cache import CACHE_SIZE_PRAGMA

BUSY_TIMEOUT_MS = 15_000
# libpq leaves timing to the operating system: a server whose packets are dropped holds a connect for
# minutes, and a query on a connection whose peer vanished waits until TCP gives up. Each attempt must end
# well before the next readiness probe (every 5 s), or probes pile up in a worker's threads until none is
# left for /healthz. Settings in CDS_FEEDBACK_DB's own URL win over these.
CONNECTION_DEFAULTS = {
    "connect_timeout": "3",
    "tcp_user_timeout": "5000",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "2",
}


# SQLite result codes (primary, the low byte) that mean the file cannot serve now rather than a bug.
_UNAVAILABLE_FILE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
    }
)

# The service writes a few rows per statement. One still running after 5 s waits for a lock (an operator's
# migration, VACUUM FULL or open transaction) or a server in trouble: without a limit it held the request's
# thread and the store's connection, and so every later feedback post, until the lock went. The server
# cancels it (an outage: 503, the issued-card writer waits). The report, which reads, has no such limit:
# a long report on a big table is legitimate.
STATEMENT_TIMEOUT_MS = 5000
# What the report has instead: the longest it waits for each lock on the store's tables. A session holding
# one (a migration's `LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`, a `VACUUM FULL`, an open transaction that
# altered a table) made the report wait without end and without a word; the server now cancels the wait
# and the report says why in one line. A `lock_timeout` in the URL's `options` wins.
REPORT_LOCK_TIMEOUT_MS = 10_000
# SQLSTATE 55P03 (lock_not_available): a lock wait that ran out of lock_timeout.
_LOCK_NOT_AVAILABLE = "55P03"


# The store's tables (both databases).
TABLE_NAMES = ("cds_issued_card", "cds_feedback")
# SQLSTATEs that mean an outage an operator ends without a restart: 42501 (insufficient_privilege, a
# GRANT missing) and 25006 (read_only_sql_transaction: a write to a hot standby, after a failover).
_OUTAGE_STATES = frozenset({"42501", "25006"})


class DiskFull(Exception):
    """The file system under a SQLite file has (almost) no room left: the next commit would fail."""


class NotPermitted(Exception):
    """The database's role may not write the store's tables."""


class FileReplaced(Exception):
    """The SQLite file the service opened is no longer the one its path names."""


class Dialect(Protocol):
    """What the store needs to know about a database."""

    name: str
    id_column: str

    def connect(self) -> Any: ...

    def sql(self, statement: str) -> str: ...

    def insert_each(self, cursor: Any, statement: str, rows: Sequence[Sequence[Any]]) -> list[bool]: ...

    @contextmanager
    def transaction(self, conn: Any, write: bool) -> Iterator[Any]: ...

    def is_usable(self, conn: Any) -> bool: ...

    def lock_schema(self, cursor: Any) -> None: ...

    def writable(self, conn: Any) -> bool: ...

    def existing_tables(self, conn: Any, names: Sequence[str]) -> set[str]: ...

    def tables_elsewhere(self, conn: Any, names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]: ...

    def describe(self) -> str: ...

    def check(self) -> None: ...

    def is_transient(self, error: Exception) -> bool: ...

    def reason(self, error: Exception) -> str: ...


class _FileConnection(sqlite3.Connection):
    """A service connection that remembers which file it opened (see SQLiteDialect.is_usable)."""

    file: tuple[int, int] | None = None


class SQLiteDialect:
    """One file shared by every gunicorn worker: WAL lets readers run beside the one writer, the busy
    timeout makes writers queue instead of failing, and `synchronous=FULL` makes a commit survive a power
    cut as well as a killed process, since a 200 promises the item is kept."""

    name = "sqlite"
    id_column = "INTEGER PRIMARY KEY"

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        # Where the file is checked for (see _check_same_file): anchored now, whatever the cwd later.
        self._absolute = self.path if path == ":memory:" else Path(os.path.abspath(path))

    @property
    def wal_path(self) -> Path:
        """Where SQLite keeps the file's WAL: beside the file itself, not beside a link to it."""
        target = self.path.resolve()
        return target.with_name(target.name + "-wal")

    def in_wal_mode(self) -> bool:
        """Whether the file's header says WAL (bytes 18 and 19 are 2): the service's store always is."""
        try:
            with self.path.open("rb") as file:
                header = file.read(20)
        except OSError:
            return False
        return header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x02\x02"

    def wal_missing(self) -> bool:
        """The file is in WAL mode and no -wal file is beside it.

        Either the last connection closed cleanly (SQLite then copies the WAL into the file and deletes
        it), or it is a copy by SQLite's backup API, or it was copied without its -wal while the service
        ran, and what was written since the last checkpoint (up to some thousands of rows) is not in the
        copy. Nothing in the file tells them apart."""
        return self.in_wal_mode() and not self.wal_path.exists()

    def connect(self) -> sqlite3.Connection:
        if self.read_only:
            # mode=ro: no file created, no journal mode or other setting changed (a report only reads).
            # A WAL file with no -wal beside it is opened immutable: there is no WAL to read, and SQLite
            # would otherwise create an empty -wal and a -shm beside it and leave them there (or, in a
            # directory the reader may not write, refuse: "attempt to write a readonly database").
            immutable = "&immutable=1" if self.wal_missing() else ""
            return sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro{immutable}",
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
            factory=_FileConnection,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(CACHE_SIZE_PRAGMA)
        conn.file = self._file()
        return conn

    def _file(self) -> tuple[int, int] | None:
        """(device, inode) of the file the path names now; None for :memory: or no file."""
        if str(self.path) == ":memory:":
            return None
        try:
            found = os.stat(self._absolute)
        except OSError:
            return None
        return (found.st_dev, found.st_ino)

    def sql(self, statement: str) -> str:
        return statement

    def insert_each(
        self, cursor: sqlite3.Cursor, statement: str, rows: Sequence[Sequence[Any]]
    ) -> list[bool]:
        """Runs ``statement`` (an INSERT ... ON CONFLICT DO NOTHING) for each row, in order; for each row,
        whether it was stored. SQLite runs in the process, so a statement per row costs no round trip."""
        stored = []
        for row in rows:
            cursor.execute(statement, row)
            stored.append(cursor.rowcount > 0)
        return stored

    @contextmanager
    def transaction(self, conn: sqlite3.Connection, write: bool) -> Iterator[sqlite3.Cursor]:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades to a writer
        # gets SQLITE_BUSY at once, without waiting for the busy timeout.
        if write:
            self._check_same_file(conn)
        cursor = conn.cursor()
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cursor
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def is_usable(self, conn: sqlite3.Connection) -> bool:
        return True

    def _check_same_file(self, conn: sqlite3.Connection) -> None:
        """FileReplaced unless the path still names the file this (service) connection opened.

        A file moved away, deleted or replaced (an operator's reset, a backup restored with mv) while the
        service ran kept taking its writes: each post answered 'stored' and readiness 'writable' while
        the rows went into a file nobody could read any more, lost with the process if it was deleted.
        Reopening the path is no cure: the other workers' connections still write the -wal and -shm
        named after it, which a new file there would share (SQLite's own list of ways to corrupt a
        database). So it is an outage, as a full disk is, until the service restarts. One stat."""
        opened = getattr(conn, "file", None)
        if opened is not None and opened != self._file():
            raise FileReplaced(
                f"the file was moved, deleted or replaced while the service had it open; nothing is "
                f"written until the service restarts and opens {self.path} again"
            )

    def lock_schema(self, cursor: sqlite3.Cursor) -> None:
        """Nothing to do: BEGIN IMMEDIATE already serialises schema creation across processes."""

    def writable(self, conn: sqlite3.Connection) -> bool:
        self._check_same_file(conn)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        short = shortage(self.path)
        if short is not None:
            raise DiskFull(short)
        return True

    def existing_tables(self, conn: sqlite3.Connection, names: Sequence[str]) -> set[str]:
        marks = ", ".join("?" * len(names))
        query = f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({marks})"  # noqa: S608
        return {row[0] for row in conn.execute(query, tuple(names)).fetchall()}

    def tables_elsewhere(
        self, conn: sqlite3.Connection, names: Sequence[str]
    ) -> tuple[list[str], dict[str, list[str]]]:
        """A SQLite file has one namespace: no table of it is out of sight."""
        return [], {}

    def describe(self) -> str:
        return f"SQLite file {self.path}"

    def check(self) -> None:
        """Nothing to check before opening: any path is a valid name."""

    def is_transient(self, error: Exception) -> bool:
        """The file cannot take the work now, and the work was rolled back, so it may be tried again.

        A lock another connection held past the busy timeout (a long write, an operator's VACUUM or open
        transaction) passes like a server restart. A full disk, a file system turned read-only, an I/O
        error, a file that cannot be opened or is damaged pass only when an operator acts, but for the
        caller they are the same outage: nothing was written, the endpoint answers 503 (not a 500 with a
        stack trace) and the recorder keeps its batch and waits (its queue is bounded)."""
        if isinstance(error, FileReplaced):
            return True
        code = getattr(error, "sqlite_errorcode", None)
        return (
            isinstance(error, sqlite3.DatabaseError)
            and code is not None
            and code & 0xFF in _UNAVAILABLE_FILE_CODES
        )

    def reason(self, error: Exception) -> str:
        return str(error)


class PostgresDialect:
    """Several replicas share one server; each connection runs its own transactions."""

    name = "postgresql"
    id_column = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    _SCHEMA_LOCK_KEY = 0x0B12_F00D

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self.lock_timeout: str | None = None  # as the server shows it ("10s"), once a report connected

    def connect(self) -> Any:
        psycopg = _psycopg()
        given = psycopg.conninfo.conninfo_to_dict(self.url)
        options = {**CONNECTION_DEFAULTS, **given}
        # Before the URL's own options, so that a statement_timeout or lock_timeout there wins.
        if self.read_only:
            limit = f"-c lock_timeout={REPORT_LOCK_TIMEOUT_MS}"
        else:
            limit = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        options["options"] = f"{limit} {given.get('options', '')}".strip()
        conn = psycopg.connect(autocommit=True, **options)
        # The service's connections leave the transaction mode to the server: set to False, psycopg began
        # every transaction READ WRITE, which a hot standby refuses outright (FeatureNotSupported), so a
        # worker started against one, after a failover, did not start at all, even to read.
        if self.read_only:
            conn.read_only = True
            # One snapshot for the report's statements: under READ COMMITTED each saw what was committed
            # when it began, so a card issued and answered between the issued counts and the outcome
            # counts was answered but not issued (more accepted than issued).
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            # The limit in force (the URL's may differ from ours), for the message when it runs out.
            row = conn.execute("SHOW lock_timeout").fetchone()
            self.lock_timeout = row[0] if row else None
        return conn

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def insert_each(self, cursor: Any, statement: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Runs ``statement`` (an INSERT ... ON CONFLICT DO NOTHING) for each row, in order; for each row,
        whether it was stored. psycopg sends the rows as one pipeline: a statement per row, each waiting
        for its answer, cost a 1,000-item feedback post 1,000 round trips to the server."""
        if not rows:
            return []
        cursor.executemany(f"{statement} RETURNING 1", rows, returning=True)
        stored = [cursor.fetchone() is not None]
        while cursor.nextset():
            stored.append(cursor.fetchone() is not None)
        return stored

    @contextmanager
    def transaction(self, conn: Any, write: bool) -> Iterator[Any]:
        with conn.transaction(), conn.cursor() as cursor:
            yield cursor

    def is_usable(self, conn: Any) -> bool:
        return not (conn.closed or conn.broken)

    def lock_schema(self, cursor: Any) -> None:
        """Replicas starting together would race on CREATE TABLE IF NOT EXISTS; take turns."""
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self._SCHEMA_LOCK_KEY,))

    def writable(self, conn: Any) -> bool:
        """Whether a write could be made now; NotPermitted when the role may not INSERT into the tables
        (readiness answered 'ready' while every feedback post failed on a grant left out)."""
        row = conn.execute("SHOW transaction_read_only").fetchone()
        if row is None or row[0] != "off":
            return False
        rows = conn.execute(
            "SELECT name FROM unnest(%s::text[]) AS name "
            "WHERE to_regclass(name) IS NOT NULL AND NOT has_table_privilege(name, 'INSERT')",
            (list(TABLE_NAMES),),
        ).fetchall()
        if rows:
            raise NotPermitted(f"the role may not INSERT into {', '.join(row[0] for row in rows)}")
        return True

    def existing_tables(self, conn: Any, names: Sequence[str]) -> set[str]:
        query = "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL"
        return {row[0] for row in conn.execute(query, (list(names),)).fetchall()}

    def tables_elsewhere(self, conn: Any, names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
        """(the schemas this connection sees, {schema: tables}) for the tables among `names` that the
        connection does not read under those names: in schemas off its search_path, not usable by its role,
        or behind a table of the same name earlier on the path. The catalog lists them all."""
        seen = conn.execute("SELECT current_schemas(false)::text[]").fetchone()[0]
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = ANY(%s) AND c.relkind IN ('r', 'p') "
            "AND c.oid IS DISTINCT FROM to_regclass(quote_ident(c.relname))::oid "
            "ORDER BY 1, 2",
            (list(names),),
        ).fetchall()
        found: dict[str, list[str]] = {}
        for schema, table in rows:
            found.setdefault(schema, []).append(table)
        return list(seen), found

    def describe(self) -> str:
        """Host and database name, never the credentials in the URL."""
        parts = urlsplit(self.url)
        host = parts.hostname or parse_qs(parts.query).get("host", ["the local socket"])[0]
        return f"PostgreSQL database {parts.path.lstrip('/') or '(default)'} on {host}"

    def check(self) -> None:
        """ConfigError for what is wrong without asking the server: psycopg missing, a URL libpq cannot
        parse, a port that is not a number (libpq would report it as a host it cannot reach)."""
        psycopg = _psycopg()
        try:
            options = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.ProgrammingError as error:
            reason = self.reason(error)
            raise ConfigError(f"CDS_FEEDBACK_DB is not a valid PostgreSQL URL: {reason}") from None
        ports = str(options.get("port") or "5432").split(",")
        if not all(port.isdigit() and 0 < int(port) < 65536 for port in ports):
            port = without_passwords(repr(options["port"]), self.url)
            raise ConfigError(f"CDS_FEEDBACK_DB: the port {port} is not a TCP port number")

    def is_transient(self, error: Exception) -> bool:
        """The server cannot serve now: not reachable, connection lost, shutting down or starting up.

        libpq reports every failure to connect alike, without an error code, so a refused password or a
        missing database counts here too; the reason, logged, tells them apart. So does a privilege the
        role lacks (a GRANT left out) and a write to a hot standby (a failover left the service on one):
        like a SQLite file that is read-only, nothing was written and the work passes once an operator
        acts or the primary is back; each was a 500 for every feedback post."""
        psycopg = sys.modules.get("psycopg")  # not imported: the error cannot be one of its own
        if psycopg is None or not isinstance(error, psycopg.Error):
            return False
        return isinstance(error, psycopg.OperationalError) or error.sqlstate in _OUTAGE_STATES

    def reason(self, error: Exception) -> str:
        """The first line of the error, without the URL's passwords (psycopg quotes some URLs); a lock wait
        that ran out (only a report's connection has a lock_timeout) says what it was waiting for."""
        if getattr(error, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            limit = f" ({self.lock_timeout})" if self.lock_timeout else ""
            return (
                f"another session has held a lock on the store's tables for longer than lock_timeout{limit} "
                "allows: a migration, a VACUUM FULL or an open transaction? Try again later, or find the "
                "holder in pg_stat_activity"
            )
        lines = str(error).strip().splitlines()
        return without_passwords(lines[0] if lines else type(error).__name__, self.url)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "CDS_FEEDBACK_DB is a postgresql:// URL but psycopg is not installed; "
            "install the 'postgres' extra: pip install 'b12-iron-cds[postgres]'"
        ) from None
    return psycopg


def dialect_for(url: str, *, read_only: bool = False) -> Dialect:
    """`postgresql://` (or `postgres://`) URLs go to PostgreSQL; anything else is a SQLite path.

    ``read_only`` connections create and change nothing (the feedback report)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDialect(url, read_only=read_only)
    if "://" in url:
        raise ValueError(f"unsupported feedback store URL scheme in {url.split('://')[0]!r}")
    return SQLiteDialect(url, read_only=read_only)
