"""`cds-service feedback-report`, through click and once as a real subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cds_service.cli import main
from cds_service.feedback import FeedbackStore, parse_feedback
from cds_service.feedback.report import OutcomeCount, build_report, offered_reasons
from cds_service.protocol.cards import DEFAULT_OVERRIDE_REASONS, OVERRIDE_REASON_SYSTEM
from tests.support.processes import free_port

VIEW = "b12-iron-patient-view"
SIGN = "b12-iron-order-sign"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def filled(sqlite_url: str) -> str:
    store = FeedbackStore.open(sqlite_url)
    store.record_issued(VIEW, [(f"v{i}", "iron-after-b12") for i in range(4)], T0)
    store.record_issued(SIGN, [("s0", "b12-high-supplement")], T0 - timedelta(days=30))
    entries = [
        {
            "card": "v0",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "x"}],
            "outcomeTimestamp": "2026-03-02T09:05:00Z",
        },
        {
            "card": "v1",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-03-02T09:06:00Z",
            "overrideReason": {
                "reason": {
                    "code": "already-ordered",
                    "system": "urn:b12-iron-cds:override-reason",
                    "display": "Already ordered",
                }
            },
        },
        {
            "card": "v2",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-03-02T09:07:00Z",
            "overrideReason": {
                "reason": {"code": "already-ordered", "system": "urn:b12-iron-cds:override-reason"}
            },
        },
    ]
    store.add_feedback(VIEW, parse_feedback({"feedback": entries}))
    old = {"card": "s0", "outcome": "overridden", "outcomeTimestamp": "2026-01-31T09:00:00Z"}
    store.add_feedback(SIGN, parse_feedback({"feedback": [old]}))
    store.close()
    return sqlite_url


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["feedback-report", *args], env=env)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The exit status and what was printed: standard output only after a success (with --json, a
    warning goes to stderr as well as into the JSON), both streams after a failure (the error)."""
    result = invoke(*args, env=env)
    return result.exit_code, result.output if result.exit_code else result.stdout


def error_line(result: Result) -> str:
    """The one `Error:` line of a refused run; a Python exception instead fails the test."""
    assert isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def test_json_report(filled: str) -> None:
    code, output = run("--json", "--db", filled)
    assert code == 0, output
    report = json.loads(output)
    view = report["services"][VIEW]
    assert (view["issued"], view["accepted"], view["overridden"], view["acceptanceRate"]) == (4, 1, 2, 0.3333)
    topic = view["topics"]["iron-after-b12"]
    assert topic["topOverrideReasons"] == [
        {
            "system": "urn:b12-iron-cds:override-reason",
            "code": "already-ordered",
            "display": "Already ordered",
            "count": 2,
        }
    ]
    assert report["services"][SIGN]["overridden"] == 1


def test_since_leaves_out_older_cards_and_feedback(filled: str) -> None:
    code, output = run("--json", "--since", "2026-03-01", "--db", filled)
    assert code == 0, output
    report = json.loads(output)
    assert report["since"] == "2026-03-01T00:00:00+00:00"
    assert list(report["services"]) == [VIEW]


def test_text_report_is_a_table_per_service_and_topic(filled: str) -> None:
    code, output = run("--db", filled)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "Card feedback for all time"
    view = lines.index(VIEW)
    assert lines[view + 1].split() == ["topic", "issued", "accepted", "overridden", "accept", "%"]
    assert lines[view + 2].split() == ["iron-after-b12", "4", "1", "2", "33.3"]
    assert lines[view + 3].split() == ["all", "topics", "4", "1", "2", "33.3"]
    assert "already-ordered (Already ordered)" in output
    sign = lines.index(SIGN)
    assert lines[sign + 2].split() == ["b12-high-supplement", "1", "0", "1", "0.0"]


def test_the_store_comes_from_cds_feedback_db(filled: str) -> None:
    code, output = run("--json", env={"CDS_FEEDBACK_DB": filled})
    assert code == 0, output
    assert json.loads(output)["services"][VIEW]["accepted"] == 1


def test_an_empty_store_says_so(sqlite_url: str) -> None:
    FeedbackStore.open(sqlite_url).close()
    code, output = run("--db", sqlite_url)
    assert code == 0
    assert "No cards issued and no feedback received" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last week"], "--since='last week': expected an RFC 3339 date-time"),
        (["--since", "2026-03-02T09:00:00"], "needs an offset"),
        (["--since", ""], "--since='': expected an RFC 3339 date-time"),  # was the report for all time
    ],
)
def test_a_bad_since_is_a_usage_error(filled: str, args: list[str], message: str) -> None:
    code, output = run(*args, "--db", filled)
    assert code == 2
    assert message in output


def test_a_missing_store_file_is_an_error_not_a_new_empty_store(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sqlite3"
    code, output = run("--db", str(missing))
    assert code == 1
    assert f"no feedback store at {missing}" in output
    assert not missing.exists()


def test_the_installed_command_in_a_subprocess(filled: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDS_")}
    env["CDS_FEEDBACK_DB"] = filled
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("cds-service")),
            "feedback-report",
            "--json",
            "--since",
            "2026-03-02T00:00:00Z",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["services"][VIEW]["overridden"] == 2


def test_postgres_store(postgres_url: str) -> None:
    store = FeedbackStore.open(postgres_url)
    store.record_issued(VIEW, [("p1", "iron-after-b12")], T0)
    entry = {
        "card": "p1",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "s"}],
        "outcomeTimestamp": "2026-03-02T09:00:00Z",
    }
    store.add_feedback(VIEW, parse_feedback({"feedback": [entry]}))
    store.close()
    code, output = run("--json", "--db", postgres_url)
    assert code == 0, output
    assert json.loads(output)["services"][VIEW]["topics"]["iron-after-b12"]["acceptanceRate"] == 1.0


def test_reasons_echoed_in_part_are_counted_as_the_coding_the_cards_offered(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The Sandbox echoes the Coding without display, other clients drop the system: the report names
    the reason from the offered ones and counts it once, whichever way it came back."""
    site = tmp_path / "site.json"
    site.write_text(
        json.dumps({"overrideReasons": [{"code": "snooze-month", "display": "Snooze for a month"}]})
    )
    store = FeedbackStore.open(sqlite_url)
    entries = [
        {
            "card": "a",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-03-02T09:00:00Z",
            "overrideReason": {"reason": {"code": "patient-declined"}},
        },
        {
            "card": "b",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-03-02T09:00:00Z",
            "overrideReason": {
                "reason": {"code": "snooze-month", "system": "urn:b12-iron-cds:override-reason"}
            },
        },
        {
            "card": "c",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-03-02T09:00:00Z",
            "overrideReason": {
                "reason": {"code": "patient-declined", "system": "http://other.example/reasons"}
            },
        },
        {
            "card": "d",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-03-02T09:00:00Z",
            "overrideReason": {
                "reason": {"code": "patient-declined", "system": "urn:b12-iron-cds:override-reason"}
            },
        },
    ]
    store.add_feedback(VIEW, parse_feedback({"feedback": entries}))
    store.close()
    code, output = run("--json", "--db", sqlite_url, env={"CDS_SITE_CONFIG": str(site)})
    assert code == 0, output
    reasons = json.loads(output)["services"][VIEW]["topics"]["unknown"]["topOverrideReasons"]
    by_code = {(r["code"], r.get("system")): (r.get("display"), r["count"]) for r in reasons}
    assert by_code == {
        ("patient-declined", "urn:b12-iron-cds:override-reason"): ("Patient declined", 2),
        ("snooze-month", "urn:b12-iron-cds:override-reason"): ("Snooze for a month", 1),
        ("patient-declined", "http://other.example/reasons"): (None, 1),
    }


def _not_sqlite(tmp_path: Path) -> str:
    path = tmp_path / "notes.sqlite3"
    path.write_text("these are notes, not a database\n")
    return str(path)


@pytest.mark.parametrize(
    ("store", "status", "says"),
    [
        (_not_sqlite, 1, "file is not a database"),
        (lambda _: f"postgresql://nobody:s3cret-pw@127.0.0.1:{free_port()}/x", 1, "127.0.0.1"),
        (lambda _: "postgresql://nobody:s3cret-pw@[::1]x/feedback", 1, "PostgreSQL database feedback"),
        (lambda _: "postgresql://nobody:s3cret-pw@[::1/feedback", 1, "URL is malformed"),
        (lambda _: "mysql://nobody:s3cret-pw@db/feedback", 2, "unsupported feedback store URL scheme"),
    ],
    ids=["not-sqlite", "postgres-refused", "postgres-uri-echoed", "malformed-url", "mysql"],
)
def test_a_store_that_cannot_be_read_is_one_line_without_the_password(
    tmp_path: Path, store: Callable[[Path], str], status: int, says: str
) -> None:
    result = invoke("--db", store(tmp_path))
    assert result.exit_code == status
    line = error_line(result)
    assert says in line
    assert "s3cret-pw" not in result.output


def test_an_empty_db_option_is_a_usage_error_not_the_default(filled: str) -> None:
    result = invoke("--db", "", env={"CDS_FEEDBACK_DB": filled})
    assert result.exit_code == 2
    assert "'--db'" in error_line(result)


@pytest.mark.parametrize("kind", ["empty-file", "other-tables"])
def test_the_report_only_reads_a_database_the_service_never_wrote(tmp_path: Path, kind: str) -> None:
    """No tables, no journal mode change, not a byte written: an empty report from an empty store.

    A SQLite file with tables but none of the store's is another program's database (the service creates
    its tables when it opens a SQLite store): --db cds-state.sqlite3 said 'No cards issued and no feedback
    received', exit 0, and an operator read that as no feedback."""
    path = tmp_path / "fresh.sqlite3"
    path.touch()
    if kind == "other-tables":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE unrelated (x)")
            conn.execute("CREATE TABLE jti (x)")
        conn.close()
    before = path.read_bytes()
    result = invoke("--json", "--db", str(path))
    if kind == "other-tables":
        assert result.exit_code == 1
        assert error_line(result) == (
            f"Error: SQLite file {path} is not a feedback store: it holds other tables (jti, unrelated); "
            "check --db or CDS_FEEDBACK_DB"
        )
    else:
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["services"] == {}
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.sqlite3"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


def test_a_store_with_half_its_tables_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "half.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE cds_feedback (id INTEGER PRIMARY KEY)")
    conn.close()
    result = invoke("--db", str(path))
    assert result.exit_code == 1
    assert "not a complete feedback store: no cds_issued_card" in error_line(result)


def test_postgres_database_without_tables_gives_an_empty_report_and_stays_empty(postgres_url: str) -> None:
    import psycopg

    result = invoke("--json", "--db", postgres_url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["services"] == {}
    with psycopg.connect(postgres_url) as conn:
        found = conn.execute("SELECT to_regclass('cds_feedback'), to_regclass('cds_issued_card')").fetchone()
    assert found == (None, None)


def test_a_reason_is_named_by_the_coding_offered_whatever_the_row_order() -> None:
    """An echo with the client's own display and one by code only are the reason the cards offered: its
    display names it, not whichever row the database returned first."""
    offered = offered_reasons(DEFAULT_OVERRIDE_REASONS, OVERRIDE_REASON_SYSTEM)
    rows = [
        OutcomeCount(VIEW, "t", "overridden", OVERRIDE_REASON_SYSTEM, "patient-declined", "Pt said no", 1),
        OutcomeCount(VIEW, "t", "overridden", None, "patient-declined", None, 1),
    ]
    named = [
        build_report([], order, offered=offered)["services"][VIEW]["topics"]["t"]["topOverrideReasons"]
        for order in (rows, rows[::-1])
    ]
    assert (
        named[0]
        == named[1]
        == [
            {
                "system": OVERRIDE_REASON_SYSTEM,
                "code": "patient-declined",
                "display": "Patient declined",
                "count": 2,
            }
        ]
    )


def test_a_site_reason_under_its_own_system_echoed_by_code_only_is_counted_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    site = tmp_path / "site.json"
    reason = {
        "system": "urn:example-hospital:reasons",
        "code": "snooze-month",
        "display": "Snooze for a month",
    }
    site.write_text(json.dumps({"overrideReasons": [reason]}))
    store = FeedbackStore.open(sqlite_url)
    echoes = [reason, {"code": "snooze-month"}, {"code": "snooze-month", "system": reason["system"]}]
    entries = [
        {
            "card": f"c{i}",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-03-02T09:00:00Z",
            "overrideReason": {"reason": echo},
        }
        for i, echo in enumerate(echoes)
    ]
    store.add_feedback(VIEW, parse_feedback({"feedback": entries}))
    store.close()
    code, output = run("--json", "--db", sqlite_url, env={"CDS_SITE_CONFIG": str(site)})
    assert code == 0, output
    reasons = json.loads(output)["services"][VIEW]["topics"]["unknown"]["topOverrideReasons"]
    assert reasons == [{**reason, "count": 3}]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CDS_FHIR_BUDGET_MS": "abc"}, "configuration error: CDS_FHIR_BUDGET_MS='abc'"),
        (
            {"CDS_SITE_CONFIG": "{site}"},
            "configuration error: CDS_SITE_CONFIG='{site}': overrideReasons must be",
        ),
    ],
    ids=["malformed-setting", "bad-site-override-reasons"],
)
def test_a_configuration_error_is_not_shown_as_a_usage_error(
    filled: str, tmp_path: Path, env: dict[str, str], says: str
) -> None:
    """A bad CDS_* setting came with 'Usage: ... Try --help', as if the command line were wrong, and a site
    file's bad overrideReasons did not say which file."""
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"overrideReasons": 5}))
    filled_env = {name: value.format(site=site) for name, value in env.items()}
    result = invoke("--db", filled, env=filled_env)
    assert result.exit_code == 2
    assert "Usage:" not in result.output
    assert says.format(site=site) in error_line(result)


@pytest.mark.parametrize("since", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_a_since_off_the_calendar_in_utc_is_a_usage_error(filled: str, since: str) -> None:
    """Valid RFC 3339 whose UTC instant falls outside the years 1 to 9999: an OverflowError traceback."""
    result = invoke("--db", filled, "--since", since)
    assert result.exit_code == 2
    assert f"--since={since!r}" in error_line(result)


def test_a_configuration_error_does_not_quote_a_store_password(filled: str) -> None:
    """config.py quotes a malformed CDS_FEEDBACK_DB as given, password included."""
    result = invoke(env={"CDS_FEEDBACK_DB": "mysql://reporter:pw-S3cret@db.internal/cds"})
    assert result.exit_code == 2
    assert "CDS_FEEDBACK_DB=" in error_line(result)
    assert "pw-S3cret" not in result.output


def test_an_outcome_the_report_does_not_know_is_counted_apart_not_a_key_error(sqlite_url: str) -> None:
    """A row whose outcome is neither accepted nor overridden (written by another version of the service,
    or by hand) raised KeyError in build_report: the operator got a traceback instead of a report."""
    store = FeedbackStore.open(sqlite_url)
    store.record_issued(VIEW, [("v0", "iron-after-b12")], T0)
    store.close()
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute(
            "INSERT INTO cds_feedback (service_id, card_uuid, outcome, outcome_at, accepted_suggestions, "
            "received_at) VALUES (?, 'v0', 'snoozed', '2026-03-02T09:00:00Z', '[]', '2026-03-02T09:00:00Z')",
            (VIEW,),
        )
    conn.close()
    as_json = invoke("--json", "--db", sqlite_url)
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["services"][VIEW]["issued"] == 1
    assert report["otherOutcomes"] == {"snoozed": 1}
    as_text = invoke("--db", sqlite_url)
    assert as_text.exit_code == 0, as_text.output
    assert "1 feedback item with another outcome (snoozed ×1) is not counted" in as_text.output


def _report_while_locked(url: str, lock: str) -> tuple[Result | None, float]:
    """`feedback-report --db url` run while another session holds `lock` (a migration's), in a thread so
    that a report that waits for ever fails the test instead of hanging it; the lock is released after
    at most 20 s either way."""
    import threading
    import time

    import psycopg

    store = FeedbackStore.open(url)
    store.record_issued(VIEW, [("p1", "iron-after-b12")], T0)
    store.close()
    results: list[Result] = []
    with psycopg.connect(url) as migration:
        migration.execute(lock)
        started = time.monotonic()
        reporter = threading.Thread(target=lambda: results.append(invoke("--db", url)), daemon=True)
        reporter.start()
        reporter.join(20)
        elapsed = time.monotonic() - started
        migration.rollback()
    reporter.join(20)
    return (results[0] if results and elapsed < 20 else None), elapsed


@pytest.mark.parametrize("table", ["cds_issued_card", "cds_feedback"])
def test_a_report_on_a_locked_postgres_table_gives_up_in_one_line(
    postgres_url: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration holding ACCESS EXCLUSIVE on a table made the report wait without end and without a
    word. It waits for the lock a bounded time (lock_timeout, not statement_timeout: a long report on a
    big table is legitimate), then says why in one line, exit 1."""
    from cds_service.feedback import dialects

    # The default, 10 s, is slow to test (raising=False: without the limit the test shows the endless wait).
    monkeypatch.setattr(dialects, "REPORT_LOCK_TIMEOUT_MS", 1000, raising=False)
    result, elapsed = _report_while_locked(postgres_url, f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    assert result is not None, "the report still waited for the lock after 20 s"
    assert 0.9 < elapsed < 10
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert line.startswith("Error: cannot read the feedback store (PostgreSQL database feedback_")
    assert "another session has held a lock on the store's tables for longer than lock_timeout (1s)" in line


def test_the_report_waits_for_locks_ten_seconds_unless_the_url_says_otherwise(postgres_url: str) -> None:
    """The default limit is in the message; `options=-c lock_timeout=...` in the URL changes it."""
    from cds_service.feedback import dialects

    assert dialects.REPORT_LOCK_TIMEOUT_MS == 10_000
    url = f"{postgres_url}&options=-c%20lock_timeout%3D300ms"
    result, elapsed = _report_while_locked(url, "LOCK TABLE cds_feedback IN ACCESS EXCLUSIVE MODE")
    assert result is not None, "the report still waited for the lock after 20 s"
    assert elapsed < 5
    assert result.exit_code == 1, result.output
    assert "for longer than lock_timeout (300ms) allows" in error_line(result)


def test_a_report_reads_beside_an_open_writing_transaction(postgres_url: str) -> None:
    """Only a lock that excludes readers stops the report: a writer's open transaction (ROW EXCLUSIVE,
    the service's inserts) does not, and its uncommitted rows are not counted."""
    import psycopg

    store = FeedbackStore.open(postgres_url)
    store.record_issued(VIEW, [("p1", "iron-after-b12")], T0)
    store.close()
    with psycopg.connect(postgres_url) as writer:
        writer.execute(
            "INSERT INTO cds_issued_card (service_id, card_uuid, topic, issued_at) "
            "VALUES (%s, 'p2', 'iron-after-b12', '2026-03-02T09:00:00.000000Z')",
            (VIEW,),
        )
        code, output = run("--json", "--db", postgres_url)
        writer.rollback()
    assert code == 0, output
    assert json.loads(output)["services"][VIEW]["issued"] == 1


BACKUP = (
    'take the copy with VACUUM INTO: python -c "import sqlite3,sys; '
    "sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True).execute('VACUUM INTO ?', sys.argv[2:])\" "
    "STORE COPY"
)


def _running_store(path: Path, *, restarted: bool) -> FeedbackStore:
    """A store as a running service holds it: open, in WAL mode, its latest writes in the -wal file.
    `restarted`: the service was stopped cleanly once after creating it, so its (empty) tables reached
    the file itself and only the rows are in the -wal."""
    if restarted:
        FeedbackStore.open(str(path)).close()
    store = FeedbackStore.open(str(path))
    store.record_issued(VIEW, [("v0", "iron-after-b12"), ("v1", "iron-after-b12")], T0)
    entry = {"card": "v1", "outcome": "overridden", "outcomeTimestamp": "2026-03-02T09:06:00Z"}
    store.add_feedback(VIEW, parse_feedback({"feedback": [entry]}))
    assert path.with_name(path.name + "-wal").stat().st_size > 0
    return store


def _copy_without_wal(store_path: Path, to: Path) -> Path:
    """What `kubectl cp pod:/data/cds-feedback.sqlite3 .` takes: the file, not its -wal or -shm."""
    to.mkdir()
    copy = to / store_path.name
    copy.write_bytes(store_path.read_bytes())
    return copy


def test_a_copy_without_its_wal_and_so_without_tables_is_refused_in_one_line(tmp_path: Path) -> None:
    """Copied off a running pod without its -wal, a store whose every write was still in the WAL (the
    tables included) read as 'No cards issued and no feedback received', exit 0. It is refused, naming
    the missing file; with the -wal beside it the same copy reads whole."""
    live = tmp_path / "pod" / "cds-feedback.sqlite3"
    store = _running_store(live, restarted=False)
    try:
        copy = _copy_without_wal(live, tmp_path / "copy")
        before = copy.read_bytes()
        result = invoke("--db", str(copy))
        assert result.exit_code == 1, result.output
        assert error_line(result) == (
            f"Error: SQLite file {copy} is in WAL mode but holds no tables, and no cds-feedback.sqlite3-wal "
            "is beside it: a copy taken without its -wal file while the service ran? Copy "
            f"cds-feedback.sqlite3-wal into the same directory too, or {BACKUP}"
        )
        assert copy.read_bytes() == before
        assert sorted(p.name for p in copy.parent.iterdir()) == ["cds-feedback.sqlite3"]

        wal = live.with_name(live.name + "-wal").read_bytes()
        copy.with_name("cds-feedback.sqlite3-wal").write_bytes(wal)
        result = invoke("--json", "--db", str(copy))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert (report["services"][VIEW]["issued"], report["services"][VIEW]["overridden"]) == (2, 1)
        assert "warnings" not in report
    finally:
        store.close()


def test_a_copy_without_its_wal_that_has_its_tables_is_reported_with_a_warning(tmp_path: Path) -> None:
    """The tables reached the file at a clean stop, the rows since then are in the -wal left on the pod:
    the copy's report was empty, exit 0, with nothing to say that it is not the whole store. The file
    cannot tell such a copy from a store whose service stopped cleanly, so the report is given, with a
    warning naming the missing file; and it creates no -wal or -shm beside the copy."""
    live = tmp_path / "pod" / "cds-feedback.sqlite3"
    store = _running_store(live, restarted=True)
    try:
        copy = _copy_without_wal(live, tmp_path / "copy")
        before = copy.read_bytes()
        result = invoke("--db", str(copy))
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[1] == (
            f"Warning: {copy} is in WAL mode and no cds-feedback.sqlite3-wal is beside it: if it was copied "
            "while the service ran, what was written since the last checkpoint is in "
            f"cds-feedback.sqlite3-wal and missing here; copy cds-feedback.sqlite3-wal too, or {BACKUP}"
        )
        assert lines[2] == "No cards issued and no feedback received in this period."

        result = invoke("--json", "--db", str(copy))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["warnings"] == [lines[1].removeprefix("Warning: ")]
        assert result.stderr == lines[1] + "\n"
        assert copy.read_bytes() == before
        assert sorted(p.name for p in copy.parent.iterdir()) == ["cds-feedback.sqlite3"]

        # The live store, read in place beside its -wal: whole, and no warning.
        result = invoke("--json", "--db", str(live))
        assert result.exit_code == 0, result.output
        assert "warnings" not in json.loads(result.stdout)
    finally:
        store.close()


def test_a_fresh_store_the_service_closed_cleanly_is_an_empty_report_not_an_error(tmp_path: Path) -> None:
    """A legitimate empty store: the service created it and runs (its tables only in the -wal so far),
    or created it and stopped (its WAL copied in and deleted)."""
    path = tmp_path / "cds-feedback.sqlite3"
    running = FeedbackStore.open(str(path))
    try:
        result = invoke("--json", "--db", str(path))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"since": None, "services": {}}
        assert result.stderr == ""
    finally:
        running.close()
    assert not path.with_name(path.name + "-wal").exists()
    result = invoke("--json", "--db", str(path))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["services"] == {}
    assert len(report["warnings"]) == 1  # it may be a copy: the file cannot say
    assert "is in WAL mode and no cds-feedback.sqlite3-wal is beside it" in report["warnings"][0]


def test_feedback_without_a_single_issued_record_is_reported_with_a_warning(store_url: str) -> None:
    """Every card under 'unknown' with 'issued' 0 read like a service that issued nothing; the issued-card
    records are missing, and the report says so (whatever --since says: it is about the whole store)."""
    store = FeedbackStore.open(store_url)
    entry = {"card": "v1", "outcome": "overridden", "outcomeTimestamp": "2026-03-02T09:06:00Z"}
    store.add_feedback(VIEW, parse_feedback({"feedback": [entry]}))
    store.close()
    for since in ([], ["--since", "2027-01-01"]):
        result = invoke("--json", "--db", store_url, *since)
        assert result.exit_code == 0, result.output
        # (On SQLite, the closed file in WAL mode has its own warning before this one.)
        warning = json.loads(result.stdout)["warnings"][-1]
        assert warning.startswith("the store holds feedback but no card recorded as issued")
    assert f"Warning: {warning}" in invoke("--db", store_url).output.splitlines()

    store = FeedbackStore.open(store_url)
    store.record_issued(VIEW, [("v0", "iron-after-b12")], T0)
    store.close()
    result = invoke("--json", "--db", store_url)
    warnings = json.loads(result.stdout).get("warnings", [])
    assert not any(warning.startswith("the store holds feedback") for warning in warnings)


def test_a_wal_store_on_a_read_only_file_system_is_read(tmp_path: Path) -> None:
    """A cleanly closed store on a read-only mount (a volume snapshot, a backup) could not be read:
    SQLite wanted to create a -shm beside it ('attempt to write a readonly database')."""
    import subprocess

    from tests.support.tiny_filesystem import tiny_filesystem

    source = tmp_path / "cds-feedback.sqlite3"
    _running_store(source, restarted=False).close()
    with tiny_filesystem(1024) as where:
        copy = where / source.name
        copy.write_bytes(source.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        result = invoke("--json", "--db", str(copy))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["services"][VIEW]["issued"] == 2


def test_an_ehr_cannot_forge_lines_or_send_terminal_escapes_through_the_text_report(sqlite_url: str) -> None:
    """Override reasons come from the EHR. A code holding line breaks printed a forged service with 999
    accepted cards in the table, and escape sequences in a display or system reached the operator's
    terminal (clear the screen, hide text, set the title), as bidi controls reordered what it showed.
    The store keeps what was sent (rows written before the validation refused such characters, or by
    hand); the table prints each such character as its escape, on the line it belongs to."""
    from cds_service.feedback import FeedbackItem, OverrideReason

    forged = "x\n\nb12-iron-order-sign\n  all topics   999   999   0   100.0"
    reason = OverrideReason(f"{forged}\x1b[8m", "urn:x\x1b]0;pwned\x07", "\u202eevil\x1b[2J\u2028")
    store = FeedbackStore.open(sqlite_url)
    store.record_issued(VIEW, [("v1", "iron-after-b12")], T0)
    store.add_feedback(VIEW, [FeedbackItem("v1", "overridden", T0, (), reason)])
    store.close()
    code, output = run("--db", sqlite_url)
    assert code == 0, output
    assert not [c for c in output if (c < " " and c != "\n") or "\x7f" <= c <= "\x9f" or c in "\u202e\u2028"]
    lines = output.splitlines()
    assert [line for line in lines if line.strip().startswith("all topics")] == [
        "  all topics               1           0           1         0.0"
    ]
    assert lines[-1] == (
        "         1  x\\n\\nb12-iron-order-sign\\n  all topics   999   999   0   100.0\\x1b[8m "
        "(\\u202eevil\\x1b[2J\\u2028)  [urn:x\\x1b]0;pwned\\x07]"
    )
    code, output = run("--json", "--db", sqlite_url)
    (kept,) = json.loads(output)["services"][VIEW]["topics"]["iron-after-b12"]["topOverrideReasons"]
    assert kept["code"] == f"{forged}\x1b[8m"  # JSON escapes them itself: the values stay as stored


def test_postgres_tables_out_of_the_reports_sight_are_named_not_an_empty_report(postgres_url: str) -> None:
    """The service's URL sets search_path to its own schema; the operator's URL does not, or its role
    may not use that schema. The report found no tables and said 'No cards issued and no feedback
    received', exit 0. It now says where the tables are and what to add to the URL."""
    import psycopg

    reader = "reader_" + postgres_url.split("/")[3].split("?")[0]  # roles are the whole cluster's
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA cds")
        admin.execute(f'CREATE ROLE "{reader}" LOGIN')
    service_url = f"{postgres_url}&options=-c%20search_path%3Dcds"
    store = FeedbackStore.open(service_url)
    store.record_issued(VIEW, [("p1", "iron-after-b12")], T0)
    store.close()

    result = invoke("--db", postgres_url)
    assert result.exit_code == 1, result.output
    described = FeedbackStore.open_for_reading(postgres_url).describe()
    assert error_line(result) == (
        f"Error: {described} has no feedback tables in the schemas this "
        "connection sees (public), but schema cds holds cds_feedback, cds_issued_card: add "
        "options=-c search_path=cds to the URL, as the service's has, or grant the role USAGE on that schema"
    )
    code, output = run("--json", "--db", service_url)
    assert code == 0, output
    assert json.loads(output)["services"][VIEW]["issued"] == 1

    # A role that may not use the schema does not see it, even on its search_path.
    reader_url = service_url.replace("postgres@", f"{reader}@", 1)
    result = invoke("--db", reader_url)
    assert result.exit_code == 1, result.output
    assert "in the schemas this connection sees (none), but schema cds holds" in error_line(result)

    # Another set of the tables in public (the service's before it moved to cds): which one is read is said.
    FeedbackStore.open(postgres_url).close()
    code, output = run("--json", "--db", postgres_url)
    assert code == 0, output
    report = json.loads(output)
    assert report["services"] == {}
    assert report["warnings"] == [
        "schema cds holds cds_feedback, cds_issued_card as well: this report reads the tables first on the "
        "connection's search_path (public); to read the others, add options=-c search_path=cds to the URL"
    ]
    code, output = run("--json", "--db", service_url)
    assert json.loads(output)["warnings"] == [
        "schema public holds cds_feedback, cds_issued_card as well: this report reads the tables first on "
        "the connection's search_path (cds); to read the others, add options=-c search_path=public to the URL"
    ]


def test_a_store_named_through_a_symbolic_link_is_read_with_the_wal_beside_its_target(tmp_path: Path) -> None:
    """SQLite keeps the -wal beside the file a link points to: looked for beside the link, it was
    'missing', and the report read the file alone (immutable), without the rows still in the -wal."""
    live = tmp_path / "volume" / "cds-feedback.sqlite3"
    store = _running_store(live, restarted=True)
    try:
        link = tmp_path / "current.sqlite3"
        link.symlink_to(live)
        result = invoke("--json", "--db", str(link))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert "warnings" not in report
        assert report["services"][VIEW]["issued"] == 2
    finally:
        store.close()


def test_a_copy_made_as_the_warning_says_is_whole_and_not_warned_about(tmp_path: Path) -> None:
    """The command the warning gives (run by the image's Python) copies a store in use with the rows
    still in its -wal, and its copy, in rollback-journal mode, is reported without the warning."""
    import shlex

    live = tmp_path / "pod" / "cds-feedback.sqlite3"
    store = _running_store(live, restarted=True)
    try:
        copy = tmp_path / "copy.sqlite3"
        command = BACKUP.split(": ", 1)[1].replace("STORE", str(live)).replace("COPY", str(copy))
        argv = shlex.split(command)
        assert argv[:2] == ["python", "-c"]
        subprocess.run([sys.executable, *argv[1:]], check=True, timeout=60)
        result = invoke("--json", "--db", str(copy))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert "warnings" not in report
        assert (report["services"][VIEW]["issued"], report["services"][VIEW]["overridden"]) == (2, 1)

        # A mistyped store is an error, not a new empty database copied into an empty report.
        mistyped = [
            arg.replace(str(live), str(live) + "x").replace(str(copy), str(copy) + "2") for arg in argv
        ]
        assert subprocess.run([sys.executable, *mistyped[1:]], capture_output=True, check=False).returncode
        assert not Path(str(live) + "x").exists() and not Path(str(copy) + "2").exists()
    finally:
        store.close()


def test_the_report_reads_a_hot_standby(standby: str) -> None:
    """Operators may point the report at a replica: one snapshot, read-only, no write of any kind."""
    code, output = run("--json", "--db", standby)
    assert code == 0, output
    topics = json.loads(output)["services"][VIEW]["topics"]
    assert topics["iron-after-b12"]["overridden"] == 1
