"""The store on a real SQLite file and a real PostgreSQL database: dedup, exact report numbers, since."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cds_service.config import ConfigError
from cds_service.feedback import FeedbackStore, StoreUnavailable, parse_feedback
from cds_service.feedback.dialects import PostgresDialect, SQLiteDialect
from cds_service.sqlite_cache import CACHE_KIB
from tests.support.postgres_server import PostgresCluster
from tests.support.unaccepting import unaccepting_port

SERVICE = "b12-iron-patient-view"
OTHER = "b12-iron-order-sign"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REASON_SYSTEM = "urn:b12-iron-cds:override-reason"


def accepted(card: str, at: datetime, *suggestions: str) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": s} for s in suggestions or ("s-1",)],
        "outcomeTimestamp": at.isoformat(),
    }


def overridden(
    card: str, at: datetime, code: str | None = None, display: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"card": card, "outcome": "overridden", "outcomeTimestamp": at.isoformat()}
    if code:
        reason = {"code": code, "system": REASON_SYSTEM}
        if display:
            reason["display"] = display
        entry["overrideReason"] = {"reason": reason, "userComment": "free text that is not kept"}
    return entry


def post(store: FeedbackStore, service: str, *entries: dict[str, Any]) -> int:
    return sum(store.add_feedback(service, parse_feedback({"feedback": list(entries)})))


@pytest.fixture
def store(store_url: str) -> FeedbackStore:
    opened = FeedbackStore.open(store_url)
    yield opened
    opened.close()


def test_the_same_item_sent_again_is_stored_once(store: FeedbackStore) -> None:
    entries = [accepted("c1", T0, "s-2", "s-1"), overridden("c2", T0, "declined")]
    assert post(store, SERVICE, *entries) == 2
    assert post(store, SERVICE, *entries) == 0
    # The same suggestions in another order, the same instant in another offset: still the same item.
    same = accepted("c1", T0, "s-1", "s-2")
    same["outcomeTimestamp"] = "2026-03-02T11:00:00+02:00"
    assert post(store, SERVICE, same, same) == 0
    report = store.report()["services"][SERVICE]
    assert (report["accepted"], report["overridden"]) == (1, 1)


def test_each_item_is_marked_new_or_already_stored(store: FeedbackStore) -> None:
    """The endpoint counts an item marked False as a duplicate, not as another outcome."""
    first = [accepted("c1", T0), overridden("c2", T0)]
    assert store.add_feedback(SERVICE, parse_feedback({"feedback": first})) == [True, True]
    # A resend of c2 among a new item, and a new item sent twice in one batch.
    again = [overridden("c3", T0), overridden("c2", T0), accepted("c4", T0), accepted("c4", T0)]
    assert store.add_feedback(SERVICE, parse_feedback({"feedback": again})) == [True, False, True, False]


def test_items_that_differ_in_any_key_field_are_all_stored(store: FeedbackStore) -> None:
    base = accepted("c1", T0, "s-1")
    assert post(store, SERVICE, base) == 1
    assert post(store, OTHER, base) == 1  # another service
    assert post(store, SERVICE, accepted("c2", T0, "s-1")) == 1  # another card
    assert post(store, SERVICE, accepted("c1", T0 + timedelta(seconds=1), "s-1")) == 1  # another time
    assert post(store, SERVICE, accepted("c1", T0, "s-9")) == 1  # other suggestions
    assert post(store, SERVICE, overridden("c1", T0)) == 1  # another outcome
    assert post(store, SERVICE, base, accepted("c3", T0)) == 1  # one old, one new in the same call


def test_report_counts_are_exact_per_service_and_topic(store: FeedbackStore) -> None:
    store.record_issued(SERVICE, [(f"iron-{i}", "iron-after-b12") for i in range(10)], T0)
    store.record_issued(SERVICE, [(f"high-{i}", "b12-high-supplement") for i in range(4)], T0)
    store.record_issued(OTHER, [("sign-1", "iron-after-b12")], T0)
    post(
        store,
        SERVICE,
        accepted("iron-0", T0),
        accepted("iron-1", T0),
        accepted("iron-2", T0),
        overridden("iron-3", T0, "already-ordered", "Already ordered"),
        overridden("iron-4", T0, "already-ordered"),
        overridden("iron-5", T0, "not-relevant", "Not relevant"),
        overridden("high-0", T0),
        accepted("never-issued", T0),
    )
    post(store, OTHER, overridden("sign-1", T0, "not-relevant"))

    report = store.report()
    view = report["services"][SERVICE]
    assert (view["issued"], view["accepted"], view["overridden"]) == (14, 4, 4)
    assert view["acceptanceRate"] == 0.5
    iron = view["topics"]["iron-after-b12"]
    assert (iron["issued"], iron["accepted"], iron["overridden"]) == (10, 3, 3)
    assert iron["acceptanceRate"] == 0.5
    assert iron["topOverrideReasons"] == [
        {"system": REASON_SYSTEM, "code": "already-ordered", "display": "Already ordered", "count": 2},
        {"system": REASON_SYSTEM, "code": "not-relevant", "display": "Not relevant", "count": 1},
    ]
    high = view["topics"]["b12-high-supplement"]
    assert (high["issued"], high["accepted"], high["overridden"], high["acceptanceRate"]) == (4, 0, 1, 0.0)
    assert high["topOverrideReasons"] == []
    unknown = view["topics"]["unknown"]
    assert (unknown["issued"], unknown["accepted"], unknown["overridden"]) == (0, 1, 0)
    sign = report["services"][OTHER]
    assert (sign["issued"], sign["accepted"], sign["overridden"]) == (1, 0, 1)
    assert sign["topics"]["iron-after-b12"]["topOverrideReasons"][0]["code"] == "not-relevant"


def test_a_card_reported_several_times_counts_once_with_its_latest_outcome(store: FeedbackStore) -> None:
    store.record_issued(SERVICE, [("c1", "iron-after-b12"), ("c2", "iron-after-b12")], T0)
    post(store, SERVICE, overridden("c1", T0, "not-now"), accepted("c1", T0 + timedelta(minutes=5)))
    post(store, SERVICE, accepted("c2", T0 + timedelta(minutes=5)), overridden("c2", T0, "not-now"))
    post(store, SERVICE, accepted("c2", T0 + timedelta(minutes=6), "s-2"))
    topic = store.report()["services"][SERVICE]["topics"]["iron-after-b12"]
    assert (topic["issued"], topic["accepted"], topic["overridden"]) == (2, 2, 0)
    assert topic["topOverrideReasons"] == []


def test_issued_cards_are_recorded_once_per_uuid(store: FeedbackStore) -> None:
    store.record_issued(SERVICE, [("c1", "iron-after-b12")], T0)
    store.record_issued(SERVICE, [("c1", "iron-after-b12"), ("c2", "iron-after-b12")], T0)
    assert store.report()["services"][SERVICE]["issued"] == 2


def test_since_filters_issue_and_outcome_times(store: FeedbackStore) -> None:
    store.record_issued(SERVICE, [("old", "iron-after-b12")], T0 - timedelta(days=40))
    store.record_issued(SERVICE, [("new", "iron-after-b12")], T0)
    post(store, SERVICE, overridden("old", T0 - timedelta(days=39)), accepted("new", T0 + timedelta(hours=1)))
    everything = store.report()["services"][SERVICE]
    assert (everything["issued"], everything["accepted"], everything["overridden"]) == (2, 1, 1)
    recent = store.report(since=T0 - timedelta(days=1))
    assert recent["since"] == (T0 - timedelta(days=1)).isoformat()
    counts = recent["services"][SERVICE]
    assert (counts["issued"], counts["accepted"], counts["overridden"]) == (1, 1, 0)
    assert store.report(since=T0 + timedelta(days=1))["services"] == {}


def test_a_timestamp_before_year_1000_is_older_not_newer(store: FeedbackStore) -> None:
    """A two-digit year sent padded (`0026-...`, a client's date-format slip) is an old outcome: it neither
    outranks the card's real later outcome nor falls inside a --since window. Its year used to be stored
    unpadded (`26-...`), which sorts after every `2026-...`."""
    store.record_issued(SERVICE, [("c1", "iron-after-b12")], T0)
    slip = overridden("c1", T0, "not-now")
    slip["outcomeTimestamp"] = "0026-03-02T09:05:00Z"
    post(store, SERVICE, slip, accepted("c1", T0))
    counts = store.report()["services"][SERVICE]
    assert (counts["accepted"], counts["overridden"]) == (1, 0)
    post(store, SERVICE, {**slip, "card": "c2"})
    recent = store.report(since=T0 - timedelta(days=1))["services"][SERVICE]
    assert (recent["accepted"], recent["overridden"]) == (1, 0)


def test_an_empty_store_reports_no_services(store: FeedbackStore) -> None:
    assert store.report() == {"since": None, "services": {}}


def test_a_store_is_writable_and_reopening_keeps_the_data(store_url: str) -> None:
    first = FeedbackStore.open(store_url)
    assert first.unwritable() is None
    post(first, SERVICE, accepted("c1", T0))
    first.close()
    second = FeedbackStore.open(store_url)
    assert second.report()["services"][SERVICE]["accepted"] == 1
    second.close()


def test_threads_share_one_store(store: FeedbackStore) -> None:
    def work(worker: int) -> None:
        for batch in range(20):
            post(store, SERVICE, *(accepted(f"w{worker}-b{batch}-{i}", T0) for i in range(5)))
            store.report()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.report()["services"][SERVICE]["accepted"] == 8 * 20 * 5


def test_nothing_patient_related_is_stored(sqlite_url: str) -> None:
    store = FeedbackStore.open(sqlite_url)
    store.record_issued(SERVICE, [("c1", "iron-after-b12")], T0)
    post(store, SERVICE, overridden("c1", T0, "declined", "Declined"))
    store.close()
    with sqlite3.connect(sqlite_url) as conn:
        dump = "\n".join(conn.iterdump())
    assert "free text that is not kept" not in dump
    columns = {
        row[1]
        for table in ("cds_feedback", "cds_issued_card")
        for row in conn.execute(f"PRAGMA table_info({table})")
    }
    assert not {c for c in columns if "patient" in c or "user" in c or "comment" in c}


def test_sqlite_uses_wal_so_workers_read_while_one_writes(sqlite_url: str) -> None:
    FeedbackStore.open(sqlite_url).close()
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_connections_keep_a_small_page_cache(tmp_path: Path) -> None:
    """SQLite's default 2 MiB cache per connection filled as the file grew and raised worker memory."""
    conn = SQLiteDialect(str(tmp_path / "feedback.sqlite3")).connect()
    try:
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    finally:
        conn.close()


def test_an_unreachable_store_is_not_writable_and_says_why_without_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    unopenable = FeedbackStore(SQLiteDialect(str(blocker / "feedback.sqlite3")))
    reason = unopenable.unwritable()
    assert reason is not None and "File exists" in reason and "a-file" in reason, reason
    pytest.importorskip("psycopg")
    gone = PostgresDialect(f"postgresql://postgres@/feedback?host={tmp_path / 'no-server'}&port=5432")
    reason = FeedbackStore(gone).unwritable()
    assert reason is not None and "No such file or directory" in reason, reason


def test_a_database_that_does_not_exist_reads_differently_from_a_server_that_is_down() -> None:
    """libpq gives no code that tells them apart, so readiness passes PostgreSQL's own words on."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        store = FeedbackStore.open_for_service(cluster.url("no_such_db", password="hidden-pass"))
        reason = store.unwritable()
        assert reason is not None and 'database "no_such_db" does not exist' in reason, reason
        assert "hidden-pass" not in reason
        store.close()
    finally:
        cluster.remove()


def test_a_postgres_server_down_at_start_gets_its_tables_from_the_first_writes_once_back() -> None:
    """The worker's store opens without the server; writes fail as in any outage (nothing half-done, no
    password in the reason); once the server is up, threads writing together create the tables once."""
    cluster = PostgresCluster()  # initialised, not running
    try:
        store = FeedbackStore.open_for_service(cluster.url("postgres", password="hidden-pass"))
        reason = store.unwritable()
        assert reason is not None and "connection" in reason and "hidden-pass" not in reason, reason
        with pytest.raises(StoreUnavailable, match="connection") as refused:
            post(store, SERVICE, accepted("early", T0))
        assert "hidden-pass" not in str(refused.value)
        cluster.start()
        barrier = threading.Barrier(6)

        def write(number: int) -> int:
            barrier.wait()
            return post(store, SERVICE, accepted(f"c{number}", T0))

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(write, range(6))) == [1] * 6
        assert store.unwritable() is None
        assert store.present_tables() == {"cds_feedback", "cds_issued_card"}
        assert store.report()["services"][SERVICE]["accepted"] == 6
        store.close()
    finally:
        cluster.remove()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://cds:hidden-pass@[::1/cds", "not a valid PostgreSQL URL"),
        ("postgresql://cds:hidden-pass@db.internal:not-a-port/cds", "is not a TCP port number"),
        # An unencoded '/' in the password ends the authority: libpq reads 'hidden' as the port.
        ("postgresql://cds:hidden/pass@db.internal/cds", "is not a TCP port number"),
        ("postgresql://cds:hidden-pass@db.internal/cds?no_such_option=1", "not a valid PostgreSQL URL"),
    ],
)
def test_a_malformed_postgres_url_still_stops_the_start(url: str, says: str) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test,postgres]'")
    with pytest.raises(ConfigError, match=says) as caught:
        FeedbackStore.open_for_service(url)
    assert "hidden" not in str(caught.value)


def test_a_missing_psycopg_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` meets without the extra
    with pytest.raises(ConfigError, match=re.escape("pip install 'b12-iron-cds[postgres]'")):
        FeedbackStore.open_for_service("postgresql://cds@db.internal/cds")


def test_an_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported feedback store URL scheme"):
        FeedbackStore.open("mysql://db.example.org/feedback")


def test_a_dropped_postgres_connection_is_replaced_without_failing_the_call(postgres_url: str) -> None:
    import psycopg

    store = FeedbackStore.open(postgres_url)
    post(store, SERVICE, accepted("c1", T0))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    assert ended == [(True,)]
    assert post(store, SERVICE, accepted("c2", T0)) == 1
    assert store.report()["services"][SERVICE]["accepted"] == 2
    store.close()


def test_the_store_description_never_shows_credentials() -> None:
    store = FeedbackStore(PostgresDialect("postgresql://cds:s3cret@db.internal:5432/cds_feedback"))
    assert store.describe() == "PostgreSQL database cds_feedback on db.internal"


def test_a_forked_worker_opens_its_own_connection(sqlite_url: str) -> None:
    """gunicorn forks workers: a store opened before the fork keeps working in parent and child."""
    store = FeedbackStore.open(sqlite_url)
    post(store, SERVICE, accepted("before-fork", T0))
    child = os.fork()
    if child == 0:
        try:
            code = 0 if post(store, SERVICE, accepted("in-child", T0)) == 1 else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    post(store, SERVICE, accepted("after-fork", T0))
    assert store.report()["services"][SERVICE]["accepted"] == 3
    store.close()


@pytest.mark.parametrize(("query", "limit_s"), [("", 3), ("?connect_timeout=1", 1)])
def test_a_postgres_server_that_never_answers_costs_seconds_not_minutes(query: str, limit_s: float) -> None:
    """libpq alone would wait for the operating system (minutes) on a server whose packets are dropped,
    and readiness probes every 5 s would queue up behind it. Its own URL's setting wins."""
    pytest.importorskip("psycopg")
    with unaccepting_port() as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres{query}"
        started = time.monotonic()
        store = FeedbackStore.open_for_service(url)
        opened_s = time.monotonic() - started
        try:
            started = time.monotonic()
            assert store.unwritable() is not None
            probed_s = time.monotonic() - started
        finally:
            store.close()
    assert limit_s - 0.5 < opened_s < limit_s + 1.5
    assert probed_s < limit_s + 1.5


def test_sqlite_and_a_postgres_with_a_linguistic_collation_name_reasons_alike(
    sqlite_url: str, postgres_cluster: str
) -> None:
    """Which display names a reason the cards did not offer must not follow the database's collation:
    MAX() of 'Not now' and 'not now' is the second on SQLite (bytes) and the first under ICU."""
    import psycopg

    name = f"feedback_icu_{os.getpid()}"
    with psycopg.connect(postgres_cluster.format(database="postgres"), autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und' LOCALE 'C'"
        )
    reports = []
    for url in (sqlite_url, postgres_cluster.format(database=name)):
        store = FeedbackStore.open(url)
        try:
            post(
                store,
                SERVICE,
                overridden("c1", T0, "not-now", "not now"),
                overridden("c2", T0, "not-now", "Not now"),
                overridden("c3", T0, "later", "Later"),
                overridden("c4", T0, "later", "later"),
                overridden("c5", T0, "later", "later"),
            )
            reports.append(store.report())
        finally:
            store.close()
    assert reports[0] == reports[1]
    assert reports[0]["services"][SERVICE]["topics"]["unknown"]["topOverrideReasons"] == [
        {"system": REASON_SYSTEM, "code": "later", "display": "later", "count": 3},
        {"system": REASON_SYSTEM, "code": "not-now", "display": "Not now", "count": 2},
    ]


def test_items_committed_by_an_attempt_whose_answer_was_lost_still_count_as_new(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection drops after the server committed and before the store heard so; the store tries
    again on a new connection and finds the items there. They were new to this call, which must say so
    ("stored" counts new items; counting them as resends hid real outcomes from the metrics). A repeat
    within the batch, and a later resend, are still duplicates."""
    from urllib.parse import parse_qs, urlsplit

    from tests.feedback.commit_cutter import CommitCutter

    parts = urlsplit(postgres_url)
    with CommitCutter(Path(parse_qs(parts.query)["host"][0])) as cutter:
        store = FeedbackStore.open(cutter.url(parts.path.lstrip("/")))
        try:
            cutter.arm()
            items = [accepted("c1", T0), overridden("c2", T0), accepted("c1", T0)]
            batch = parse_feedback({"feedback": items})
            with caplog.at_level(logging.WARNING, logger="cds_service.feedback.store"):
                new = store.add_feedback(SERVICE, batch)
            assert cutter.cuts == 1, "the answer to the COMMIT was lost"
            assert "reconnecting once" in caplog.text
            assert new == [True, True, False]
            assert store.add_feedback(SERVICE, batch[:2]) == [False, False], "a resend is a duplicate"
            assert store.report()["services"][SERVICE]["accepted"] == 1
        finally:
            store.close()


def test_the_readiness_check_of_a_server_that_stopped_answering_takes_a_second_not_the_probe(
    postgres_url: str,
) -> None:
    """A PostgreSQL that holds connections without answering (a stalled network, a hung server): libpq
    waits up to 3 s to connect and 5 s for a query on TCP, longer than the kubelet's 2 s probe timeout, so
    the probe would be cut off without a reason and the pod made unready even where an outage only
    degrades it. The check answers within a second, and probes meanwhile share the one check running."""
    from urllib.parse import parse_qs, urlsplit

    from tests.feedback.commit_cutter import CommitCutter

    parts = urlsplit(postgres_url)
    with CommitCutter(Path(parse_qs(parts.query)["host"][0])) as cutter:
        store = FeedbackStore.open(cutter.url(parts.path.lstrip("/")))
        try:
            assert store.unwritable() is None
            cutter.stall()
            before = threading.active_count()
            for _ in range(3):
                started = time.monotonic()
                assert store.unwritable() == "no answer within 1 s"
                assert time.monotonic() - started < 1.5
            assert threading.active_count() <= before + 1, "one check at a time, not one per probe"
            assert store.outage_spares_readiness()
            cutter.release()
            deadline = time.monotonic() + 10
            while store.unwritable() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert store.unwritable() is None, "writable again once the server answers"
        finally:
            cutter.release()
            store.close()


def test_service_connections_limit_statements_and_the_url_may_change_the_limit(postgres_url: str) -> None:
    def statement_timeout(store: FeedbackStore) -> str:
        with store._lock:
            return store._connection().execute("SHOW statement_timeout").fetchone()[0]

    service = FeedbackStore.open(postgres_url)
    options = "-c%20statement_timeout%3D9s%20-c%20search_path%3Dpublic"
    own = FeedbackStore.open(f"{postgres_url}&options={options}")
    report = FeedbackStore.open_for_reading(postgres_url)
    try:
        assert statement_timeout(service) == "5s"
        assert statement_timeout(own) == "9s"
        assert statement_timeout(report) == "0", "a report may take its time"
    finally:
        for store in (service, own, report):
            store.close()


def test_a_report_reads_one_snapshot_while_a_card_and_its_feedback_land(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report counts issued cards in one statement and outcomes in the next. On PostgreSQL each
    statement of a READ COMMITTED transaction sees what was committed when it began, so a card issued
    and answered between the two was answered but not issued: a topic with 0 issued and 1 accepted,
    and a service whose accepted cards outnumbered its issued ones. Both statements now read one
    snapshot (SQLite's read transaction always did)."""
    from cds_service.feedback import dialects

    FeedbackStore.open(store_url).close()
    writer = FeedbackStore.open(store_url)
    reader = FeedbackStore.open_for_reading(store_url)
    sql = type(reader._dialect).sql
    landed = []

    def between_the_statements(dialect: Any, statement: str) -> str:
        if "ROW_NUMBER()" in statement and not landed:  # the outcome counts, after the issued counts
            writer.record_issued(SERVICE, [("late", "iron-after-b12")], T0)
            landed.append(post(writer, SERVICE, accepted("late", T0 + timedelta(minutes=1))))
        return sql(dialect, statement)

    kind = dialects.PostgresDialect if store_url.startswith("postgresql") else dialects.SQLiteDialect
    monkeypatch.setattr(kind, "sql", between_the_statements)
    try:
        if kind is dialects.SQLiteDialect:
            writer.record_issued(SERVICE, [("first", "iron-after-b12")], T0)  # the snapshot has a file
        report = reader.report()
    finally:
        reader.close()
        writer.close()
    assert landed == [1]
    counts = report["services"].get(SERVICE, {"issued": 0, "accepted": 0})
    assert counts["accepted"] == 0, report
    assert counts["issued"] <= 1


def test_a_card_uuid_echoed_in_upper_case_is_the_card_the_service_issued(store: FeedbackStore) -> None:
    """UUIDs are case-insensitive on input (RFC 4122), and some EHRs keep them in upper case: such
    feedback matched no issued card (topic 'unknown'), and the same item resent in lower case was stored
    and counted as a second card."""
    card = "9a6c2b7e-3f0d-4c55-9d61-7d5b1b0c2a11"
    suggestion = "0b9e4c1d-6f2a-4e8b-9c3d-5a7f1e2d4b6c"
    store.record_issued(SERVICE, [(card, "iron-after-b12")], T0)
    assert post(store, SERVICE, accepted(card.upper(), T0, suggestion.upper())) == 1
    assert post(store, SERVICE, accepted(card, T0, suggestion)) == 0
    view = store.report()["services"][SERVICE]
    assert list(view["topics"]) == ["iron-after-b12"]
    assert (view["issued"], view["accepted"]) == (1, 1)
    assert post(store, SERVICE, accepted("Card-ABC", T0)) == 1  # not a UUID: kept as sent
    assert post(store, SERVICE, accepted("card-abc", T0)) == 1


def _role_url(postgres_url: str, role: str, *grants: str) -> str:
    """A URL of the same database for a new role (roles are the whole cluster's: named after the
    database) with `grants` run for it."""
    import psycopg

    name = f"{role}_{postgres_url.split('/')[3].split('?')[0]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
        for grant in grants:
            admin.execute(grant.format(role=f'"{name}"'))
    return postgres_url.replace("postgres@", f"{name}@", 1)


def test_a_role_with_select_and_insert_only_runs_the_service(postgres_url: str) -> None:
    """The least privilege the docs name: CREATE the first time (here the owner's), then SELECT and
    INSERT on the two tables. The store ran CREATE TABLE IF NOT EXISTS at every start, which PostgreSQL
    refuses without CREATE on the schema even when the table exists: the worker did not start."""
    FeedbackStore.open(postgres_url).close()
    url = _role_url(
        postgres_url, "service", "GRANT SELECT, INSERT ON cds_feedback, cds_issued_card TO {role}"
    )
    store = FeedbackStore.open_for_service(url)
    try:
        assert store.unwritable() is None
        store.record_issued(SERVICE, [("c1", "iron-after-b12")], T0)
        assert post(store, SERVICE, overridden("c1", T0 + timedelta(minutes=1))) == 1
        assert store.report()["services"][SERVICE]["overridden"] == 1
    finally:
        store.close()


def test_a_read_only_database_with_the_tables_starts_the_worker_not_ready(postgres_url: str) -> None:
    """Looking for the tables is a read: a store that only answers reads (a standby, here a database
    whose transactions are read-only) is not found writable by it, so readiness still refuses it."""
    import psycopg

    FeedbackStore.open(postgres_url).close()
    name = postgres_url.split("/")[3].split("?")[0]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    store = FeedbackStore.open_for_service(postgres_url)
    try:
        assert store.unwritable() == "the database accepts only reads"
        assert not store.outage_spares_readiness()
    finally:
        store.close()


def test_a_role_that_may_not_insert_is_not_writable_and_its_writes_wait(postgres_url: str) -> None:
    """A GRANT left out: readiness said the store was writable while every feedback post was a 500 and
    the issued-card writer dropped its batches. Like a read-only SQLite file, it is an outage now: not
    ready with the reason, and writes are StoreUnavailable (a 503 to send again, records kept)."""
    FeedbackStore.open(postgres_url).close()
    url = _role_url(postgres_url, "reader", "GRANT SELECT ON cds_feedback, cds_issued_card TO {role}")
    store = FeedbackStore.open_for_service(url)
    try:
        assert store.unwritable() == "the role may not INSERT into cds_issued_card, cds_feedback"
        with pytest.raises(StoreUnavailable, match="permission denied for table cds_feedback"):
            post(store, SERVICE, overridden("c1", T0))
        with pytest.raises(StoreUnavailable, match="permission denied for table cds_issued_card"):
            store.record_issued(SERVICE, [("c1", "iron-after-b12")], T0)
        assert store.report()["services"] == {}  # reading is allowed
    finally:
        store.close()


def _rows(store_url: str, query: str) -> list[tuple[Any, ...]]:
    if store_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(store_url) as conn:
            return conn.execute(query).fetchall()
    conn = sqlite3.connect(store_url)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _hand_count(store_url: str, since: datetime | None) -> dict[tuple[str, str], dict[str, Any]]:
    """The report's numbers counted in Python from the raw rows, by the definitions in report.py."""
    from collections import Counter

    def moment(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    issued = {
        (service, card): (topic, moment(at))
        for service, card, topic, at in _rows(
            store_url, "SELECT service_id, card_uuid, topic, issued_at FROM cds_issued_card"
        )
    }
    counts: dict[tuple[str, str], dict[str, Any]] = {}

    def of(key: tuple[str, str]) -> dict[str, Any]:
        return counts.setdefault(key, {"issued": 0, "accepted": 0, "overridden": 0, "reasons": Counter()})

    for (service, _), (topic, at) in issued.items():
        if since is None or at >= since:
            of((service, topic))["issued"] += 1
    latest: dict[tuple[str, str], tuple[Any, ...]] = {}
    for number, service, card, outcome, at, code in _rows(
        store_url, "SELECT id, service_id, card_uuid, outcome, outcome_at, reason_code FROM cds_feedback"
    ):
        when = moment(at)
        if since is not None and when < since:
            continue
        if (service, card) not in latest or (when, number) > latest[(service, card)][:2]:
            latest[(service, card)] = (when, number, outcome, code)
    for (service, card), (_, _, outcome, code) in latest.items():
        counts_here = of((service, issued.get((service, card), ("unknown",))[0]))
        counts_here[outcome] += 1
        if outcome == "overridden" and code:
            counts_here["reasons"][code] += 1
    return counts


def test_the_report_agrees_with_a_hand_count_of_the_raw_rows(store: FeedbackStore, store_url: str) -> None:
    """Random cards, feedback sent several times per card, in several offsets, for cards never issued
    too; the report's numbers, with and without --since (given in another offset), against a count in
    Python of the rows as stored."""
    import random

    chosen = random.Random(7)  # noqa: S311 - test data
    services, topics = (SERVICE, OTHER), ("iron-after-b12", "b12-high-supplement", "elevated-b12")
    cards = []
    for number in range(150):
        service, at = chosen.choice(services), T0 + timedelta(hours=chosen.randrange(24 * 20))
        store.record_issued(service, [(f"c{number}", chosen.choice(topics))], at)
        cards.append((service, f"c{number}", at))
    cards += [(chosen.choice(services), f"never-issued-{number}", T0) for number in range(20)]
    # On the --since bound exactly (it counts from then on), issued and answered.
    store.record_issued(SERVICE, [("on-the-bound", "elevated-b12")], T0 + timedelta(days=9))
    post(store, SERVICE, overridden("on-the-bound", T0 + timedelta(days=9), "r1"))
    # Two outcomes at the same time: the one received last counts.
    store.record_issued(OTHER, [("tied", "iron-after-b12")], T0)
    post(store, OTHER, overridden("tied", T0 + timedelta(days=10), "r2"))
    post(store, OTHER, accepted("tied", T0 + timedelta(days=10)))
    for service, card, at in cards:
        for _ in range(chosen.choice((0, 1, 1, 2, 3))):
            when = at + timedelta(minutes=chosen.randrange(60 * 24 * 5))
            sent = when.astimezone(timezone(timedelta(hours=chosen.choice((-8, 0, 5, 14)))))
            if chosen.random() < 0.5:
                post(store, service, accepted(card, sent, f"s{chosen.randrange(3)}"))
            else:
                post(store, service, overridden(card, sent, chosen.choice(("r1", "r2", "r3", None))))
    for since in (
        None,
        T0 + timedelta(days=9),
        datetime(2026, 3, 11, 5, 30, tzinfo=timezone(timedelta(hours=5.5))),
    ):
        report = store.report(since=since)
        expected = _hand_count(store_url, since.astimezone(UTC) if since else None)
        got = {
            (service, topic): counts
            for service, body in report["services"].items()
            for topic, counts in body["topics"].items()
        }
        assert set(got) == set(expected), since
        for key, counts in expected.items():
            assert {k: got[key][k] for k in ("issued", "accepted", "overridden")} == {
                k: counts[k] for k in ("issued", "accepted", "overridden")
            }, (since, key)
            assert {r["code"]: r["count"] for r in got[key]["topOverrideReasons"]} == dict(counts["reasons"])
        for service, body in report["services"].items():
            for field in ("issued", "accepted", "overridden"):
                assert body[field] == sum(c[field] for (s, _), c in expected.items() if s == service)


def test_a_worker_on_a_hot_standby_starts_not_ready_and_its_writes_wait(standby: str) -> None:
    """A failover left CDS_FEEDBACK_DB on a read-only standby. Every transaction began READ WRITE, which a
    standby refuses: the worker did not start. Now it starts, is not ready ('accepts only reads'), and a
    write is StoreUnavailable (a 503 to send again, issued-card records kept), as the docs promise."""
    store = FeedbackStore.open_for_service(standby)
    try:
        assert store.unwritable() == "the database accepts only reads"
        assert not store.outage_spares_readiness()
        with pytest.raises(StoreUnavailable, match="read-only transaction"):
            post(store, SERVICE, overridden("c2", T0))
        with pytest.raises(StoreUnavailable, match="read-only transaction"):
            store.record_issued(SERVICE, [("c2", "iron-after-b12")], T0)
        assert store.report()["services"][SERVICE]["overridden"] == 1  # what the primary had
    finally:
        store.close()


@pytest.mark.parametrize("how", ["moved", "deleted", "replaced"])
def test_a_sqlite_file_moved_deleted_or_replaced_under_the_service_is_an_outage(
    tmp_path: Path, how: str
) -> None:
    """Each post answered 'stored' and readiness 'writable' while the rows went into the file the
    service had open, which the path no longer named (lost with the process if it was deleted). Until
    the service restarts, writes are StoreUnavailable (a 503 to send again, issued-card records wait)
    and readiness says why; nothing is written to whatever the path names now."""
    path = tmp_path / "cds-feedback.sqlite3"
    store = FeedbackStore.open_for_service(str(path))
    try:
        assert post(store, SERVICE, overridden("before", T0)) == 1
        if how == "moved":
            path.rename(tmp_path / "elsewhere.sqlite3")
        elif how == "deleted":
            path.unlink()
        else:  # a backup restored over it with mv
            restored = tmp_path / "backup.sqlite3"
            FeedbackStore.open(str(restored)).close()
            restored.rename(path)
        reason = (
            "the file was moved, deleted or replaced while the service had it open; nothing is written "
            f"until the service restarts and opens {path} again"
        )
        with pytest.raises(StoreUnavailable) as refused:
            post(store, SERVICE, overridden("after", T0))
        assert str(refused.value) == reason
        with pytest.raises(StoreUnavailable):
            store.record_issued(SERVICE, [("after", "iron-after-b12")], T0)
        assert store.unwritable() == reason
    finally:
        store.close()
    # Nothing was written after it, in any file. (Which file holds 'before' is SQLite's affair: the -wal
    # named after the path stays behind when the file is moved, which is why the docs say to stop the
    # service first.)
    for left in tmp_path.glob("*.sqlite3"):
        if _rows(str(left), "SELECT 1 FROM sqlite_master WHERE name = 'cds_feedback'"):
            cards = {row[0] for row in _rows(str(left), "SELECT card_uuid FROM cds_feedback")}
            assert "after" not in cards, left


def test_a_relative_sqlite_path_is_still_the_same_file_after_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = FeedbackStore.open_for_service("cds-feedback.sqlite3")
    try:
        monkeypatch.chdir("/")
        assert post(store, SERVICE, overridden("c1", T0)) == 1
        assert store.unwritable() is None
    finally:
        store.close()


def test_a_role_that_may_not_create_the_missing_tables_starts_the_worker_not_ready(postgres_url: str) -> None:
    """The tables are missing and the role may not create them (PostgreSQL 15 grants no CREATE on public):
    the worker starts, not ready, saying why, and creates them on the first write once allowed."""
    import psycopg

    url = _role_url(postgres_url, "creator")
    store = FeedbackStore.open_for_service(url)
    try:
        assert store.unwritable() == "permission denied for schema public"
        with pytest.raises(StoreUnavailable):
            post(store, SERVICE, overridden("c1", T0))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'GRANT CREATE ON SCHEMA public TO "{url.split("//")[1].split("@")[0]}"')
        assert post(store, SERVICE, overridden("c1", T0)) == 1
        assert store.unwritable() is None
    finally:
        store.close()
