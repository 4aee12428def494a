"""`cds-service feedback-report`: the acceptance report from the feedback store, as a table or JSON.

A report only reads: it opens the store read-only and never creates the file, the tables or anything
else the service would (nor a -wal or -shm beside a copy), so pointing it at the wrong path or at a store
in use changes nothing. A store the service has not written to yet (no tables) gives an empty report;
what only looks like one is refused or reported with a warning: a SQLite copy taken without its -wal
file, PostgreSQL tables outside the connection's search_path, feedback without one issued-card record.
On PostgreSQL it waits for a lock on the tables at most REPORT_LOCK_TIMEOUT_MS, and reads one snapshot.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from cds_service.cli_types import config_message
from cds_service.config import ConfigError, load_settings, load_site_config, parse_rfc3339
from cds_service.feedback.dialects import TABLE_NAMES, SQLiteDialect, dialect_for
from cds_service.feedback.report import OfferedReasons, build_report, format_text, offered_reasons
from cds_service.feedback.store import FeedbackStore, StoreUnavailable
from cds_service.protocol.cards import (
    DEFAULT_OVERRIDE_REASONS,
    OVERRIDE_REASON_SYSTEM,
    parse_override_reasons,
)
from cds_service.redaction import without_passwords


def _store_errors() -> tuple[type[Exception], ...]:
    """The failures of opening or reading a store; psycopg's only when it is installed."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error, ConfigError, StoreUnavailable)
    return (sqlite3.Error, ConfigError, StoreUnavailable, psycopg.Error)


def read_report(url: str, since: datetime | None, offered: OfferedReasons) -> dict[str, Any]:
    """The report from the store at `url`, read without writing; ClickException for any store failure.

    Database errors become one line naming the store (never the password of a postgresql:// URL), so a
    wrong --db reads as a wrong --db rather than as a traceback."""
    if "://" not in url and not Path(url).is_file():
        raise click.ClickException(f"no feedback store at {url} (set CDS_FEEDBACK_DB or pass --db)")
    try:
        urlsplit(url)
    except ValueError as error:  # the message names the flaw, never the URL or its password
        raise click.ClickException(f"the feedback store URL is malformed: {error}") from None
    store = FeedbackStore.open_for_reading(url)
    dialect = dialect_for(url, read_only=True)
    wal_missing = isinstance(dialect, SQLiteDialect) and dialect.wal_missing()
    try:
        present = store.present_tables()
        if not present:
            seen, elsewhere = store.tables_elsewhere()
            if elsewhere:
                # The service's URL sets a search_path (its own schema) that the report's does not, or the
                # report's role may not use that schema: it read as a store with nothing in it.
                where = "; ".join(f"schema {schema} holds {', '.join(t)}" for schema, t in elsewhere.items())
                schema = next(iter(elsewhere))
                raise click.ClickException(
                    f"{store.describe()} has no feedback tables in the schemas this connection sees "
                    f"({', '.join(seen) or 'none'}), but {where}: add options=-c search_path={schema} to "
                    "the URL, as the service's has, or grant the role USAGE on that schema"
                )
            others = _other_sqlite_tables(url)
            if others:
                raise click.ClickException(
                    f"{store.describe()} is not a feedback store: it holds other tables "
                    f"({', '.join(others)}); check --db or CDS_FEEDBACK_DB"
                )
            if wal_missing:
                # The service creates its tables as soon as it has put a new file in WAL mode; they reach
                # the file itself at a checkpoint. A WAL file without them is a copy of one whose every
                # write is still in the -wal file left behind, not a store with nothing to report.
                raise click.ClickException(
                    f"{store.describe()} is in WAL mode but holds no tables, and no {dialect.wal_path.name} "
                    f"is beside it: a copy taken without its -wal file while the service ran? Copy "
                    f"{dialect.wal_path.name} into the same directory too, or {_BACKUP}"
                )
            return build_report([], [], since=since, offered=offered)
        if present != set(TABLE_NAMES):
            missing = ", ".join(sorted(set(TABLE_NAMES) - present))
            raise click.ClickException(f"{store.describe()} is not a complete feedback store: no {missing}")
        report = store.report(since=since, offered=offered)
        if wal_missing:
            report.setdefault("warnings", []).insert(0, _wal_missing_warning(dialect))
        seen, elsewhere = store.tables_elsewhere()
        if elsewhere:
            # Another set of the tables (left in public when the service moved to its own schema, or
            # another deployment's): which one the numbers come from is worth a line.
            where = "; ".join(f"schema {schema} holds {', '.join(t)}" for schema, t in elsewhere.items())
            other = next(iter(elsewhere))
            report.setdefault("warnings", []).append(
                f"{where} as well: this report reads the tables first on the connection's search_path "
                f"({', '.join(seen)}); to read the others, add options=-c search_path={other} to the URL"
            )
        return report
    except _store_errors() as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise click.ClickException(
            without_passwords(f"cannot read the feedback store ({store.describe()}): {reason}", url)
        ) from None
    finally:
        store.close()


# How to copy a store in use, said where a copy looks incomplete. The image has Python, not the sqlite3
# shell. VACUUM INTO writes a whole snapshot in rollback-journal mode, so its copy is not taken for one
# that lost its -wal (a copy by the backup API keeps WAL mode in its header, and would be). The store is
# opened read-only: a mistyped path is an error, not a new empty database copied into an empty report.
_BACKUP = (
    'take the copy with VACUUM INTO: python -c "import sqlite3,sys; '
    "sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True).execute('VACUUM INTO ?', sys.argv[2:])\" "
    "STORE COPY"
)


def _wal_missing_warning(dialect: SQLiteDialect) -> str:
    """Said with every report of a WAL file that has no -wal beside it: it may be whole (the service
    stopped cleanly, or a copy by the backup API) or miss everything written since the last checkpoint (a
    copy without its -wal), and the file cannot tell which; the report of such a copy looked complete."""
    wal = dialect.wal_path.name
    return (
        f"{dialect.path} is in WAL mode and no {wal} is beside it: if it was copied while the service "
        f"ran, what was written since the last checkpoint is in {wal} and missing here; copy {wal} too, or "
        f"{_BACKUP}"
    )


def _other_sqlite_tables(url: str) -> list[str]:
    """The tables of a SQLite file that holds none of the store's, at most five of them.

    The service creates its tables as soon as it opens a SQLite store, so such a file is another program's
    database (cds-state.sqlite3, say), not a store the service has yet to write to. A PostgreSQL database
    may be shared with other applications and the service creates its tables there only once it reaches
    it, so it is not judged this way."""
    if "://" in url:
        return []
    conn = dialect_for(url, read_only=True).connect()
    try:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name LIMIT 6"
        ).fetchall()
    finally:
        conn.close()
    names = [row[0] for row in rows]
    return [*names[:5], "..."] if len(names) > 5 else names


class _ConfigurationError(click.ClickException):
    exit_code = 2


def _store_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--db as given, refused at once when empty or of a kind the store cannot open."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("empty; give a SQLite path or a postgresql:// URL", ctx, param)
    try:
        dialect_for(value)
    except ValueError as error:
        raise click.BadParameter(f"{error}; give a SQLite path or a postgresql:// URL", ctx, param) from None
    return value


@click.command("feedback-report")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--since",
    metavar="DATE",
    help="Count only cards issued and feedback given from this date or RFC 3339 date-time on.",
)
@click.option(
    "--db",
    metavar="PATH_OR_URL",
    callback=_store_url,
    help="The feedback store (a SQLite path or a postgresql:// URL); "
    "default: CDS_FEEDBACK_DB, else cds-feedback.sqlite3.",
)
def feedback_report(as_json: bool, since: str | None, db: str | None) -> None:
    """Per service and topic: cards issued, accepted, overridden, acceptance rate, top override reasons.

    \b
    Examples:
      cds-service feedback-report --since 2026-03-01
      cds-service feedback-report --db /var/lib/cds-service/feedback.sqlite3 --json
      cds-service feedback-report --db postgresql://reader@db.internal/cds --since 2026-03-01T00:00:00Z

    The report only reads the store. What each number means: docs/feedback.md.
    """
    try:
        # An empty --since (a script's unset variable) is an error, not the report for all time.
        start = parse_rfc3339("--since", since) if since is not None else None
        if start is not None:
            start.astimezone(UTC)  # the store compares UTC instants
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    except OverflowError:
        raise click.UsageError(f"--since={since!r}: in UTC that is outside the years 1 to 9999") from None
    try:
        settings = load_settings()
        site = load_site_config(settings.site_config)
        offered = list(DEFAULT_OVERRIDE_REASONS)
        if "overrideReasons" in site:
            try:
                offered = [*parse_override_reasons(site["overrideReasons"]), *offered]
            except ValueError as error:
                raise ConfigError(f"CDS_SITE_CONFIG={str(settings.site_config)!r}: {error}") from None
    except ValueError as error:  # ConfigError included
        # The environment, not the command line: no usage banner; status 2 as `serve` gives it.
        raise _ConfigurationError(f"configuration error: {config_message(error)}") from None
    url = db if db is not None else settings.feedback_db
    report = read_report(url, start, offered_reasons(offered, OVERRIDE_REASON_SYSTEM))
    if as_json:  # the table shows them under its heading; JSON read by a program, on stderr as well
        for warning in report.get("warnings", ()):
            click.echo(f"Warning: {warning}", err=True)
    click.echo(json.dumps(report, indent=2) if as_json else format_text(report), nl=as_json)
