"""`POST /cds-services/{id}/feedback` through the Flask app: 200 after commit, 400 with the reason, 404."""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service import observability
from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.feedback import FeedbackStore, dialects
from tests.support.postgres_server import PostgresCluster

SERVICE = "b12-iron-order-select"
URL = f"/cds-services/{SERVICE}/feedback"


def sandbox_item(card: str) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "patient-declined"}, "userComment": "not today"},
        "outcomeTimestamp": "2026-03-02T10:15:00.000Z",
    }


def diagnostics(response: Any) -> str:
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def test_feedback_is_committed_and_counted_once(client: FlaskClient, settings: Settings) -> None:
    body = {"feedback": [sandbox_item("c1"), sandbox_item("c2")]}
    first = client.post(URL, json=body)
    assert first.status_code == 200
    assert first.get_json() == {"received": 2, "stored": 2}
    again = client.post(URL, json=body)
    assert again.get_json() == {"received": 2, "stored": 0}
    store = FeedbackStore.open(settings.feedback_db)
    counts = store.report()["services"][SERVICE]
    store.close()
    assert (counts["accepted"], counts["overridden"]) == (0, 2)
    assert counts["topics"]["unknown"]["topOverrideReasons"] == [{"code": "patient-declined", "count": 2}]


def feedback_counts() -> tuple[float, float, float]:
    """The process's (accepted, overridden, duplicate) feedback counters."""
    registry = observability._get_metrics().registry
    return (
        registry.get_sample_value("cds_feedback_total", {"outcome": "accepted"}) or 0.0,
        registry.get_sample_value("cds_feedback_total", {"outcome": "overridden"}) or 0.0,
        registry.get_sample_value("cds_feedback_duplicates_total") or 0.0,
    )


def test_a_resent_item_counts_as_a_duplicate_not_as_another_outcome(client: FlaskClient) -> None:
    accepted = {
        "card": "c9",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "s-1"}],
        "outcomeTimestamp": "2026-03-02T10:16:00Z",
    }
    before = feedback_counts()
    assert client.post(URL, json={"feedback": [sandbox_item("c1"), accepted]}).status_code == 200
    resent = client.post(URL, json={"feedback": [sandbox_item("c1"), sandbox_item("c2"), accepted]})
    assert resent.get_json() == {"received": 3, "stored": 1}
    after = feedback_counts()
    assert tuple(a - b for a, b in zip(after, before, strict=True)) == (1.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"feedback": []}, "feedback: must not be empty"),
        (
            {"feedback": [{"card": "c1", "outcome": "accepted", "outcomeTimestamp": "2026-03-02T10:15:00Z"}]},
            "feedback[0]: an 'accepted' outcome needs acceptedSuggestions",
        ),
        (
            {"feedback": [{**sandbox_item("c1"), "outcomeTimestamp": "2026-03-02 10:15"}]},
            "feedback[0].outcomeTimestamp: must be an ISO 8601 date-time",
        ),
        ([sandbox_item("c1")], "the body: expected an object, got a list"),
    ],
)
def test_bad_feedback_is_a_400_with_the_reason(client: FlaskClient, body: object, reason: str) -> None:
    response = client.post(URL, json=body)
    assert response.status_code == 400
    assert diagnostics(response).startswith(reason)


def test_feedback_for_an_unknown_service_is_a_404(client: FlaskClient) -> None:
    response = client.post("/cds-services/no-such-service/feedback", json={"feedback": [sandbox_item("c1")]})
    assert response.status_code == 404
    assert "no-such-service" in diagnostics(response)


def test_feedback_that_is_not_json_is_refused(client: FlaskClient) -> None:
    assert client.post(URL, data="feedback", content_type="text/plain").status_code == 415
    response = client.post(URL, data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in diagnostics(response)


def test_refused_feedback_is_logged_with_its_reason(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cds_service")
    client.post(URL, json={"feedback": []})
    client.post("/cds-services/no-such-service/feedback", json={"feedback": [sandbox_item("c1")]})
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feedback refused")]
    assert len(refusals) == 2
    assert refusals[0].startswith("feedback refused (400): feedback: must not be empty")
    assert refusals[1] == "feedback refused (404): There is no CDS service with the id in the URL."


def test_an_absurdly_long_service_id_is_not_echoed_whole(client: FlaskClient) -> None:
    response = client.post(f"/cds-services/{'x' * 5000}/feedback", json={"feedback": [sandbox_item("c1")]})
    assert response.status_code == 404
    assert len(diagnostics(response)) < 200


def test_a_postgres_outage_is_a_503_to_send_again_not_a_500(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The same answer whether the server went away after start or was away at start (see
    tests/serving/test_stores_down_at_start.py): nothing stored, and a warning rather than a stack trace."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        app = create_app(settings.with_overrides(feedback_db=cluster.url("postgres")))
        client = app.test_client()
        assert client.post(URL, json={"feedback": [sandbox_item("before")]}).status_code == 200
        cluster.stop()
        caplog.set_level(logging.WARNING, logger="cds_service")
        during = client.post(URL, json={"feedback": [sandbox_item("during")]})
        assert during.status_code == 503
        assert during.get_json(force=True)["issue"][0]["code"] == "transient"
        assert "nothing was stored" in diagnostics(during)
        assert [r.exc_info for r in caplog.records if r.getMessage().startswith("feedback not stored")] == [
            None
        ]
        cluster.start()
        assert client.post(URL, json={"feedback": [sandbox_item("during")]}).get_json() == {
            "received": 1,
            "stored": 1,
        }
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()
    finally:
        cluster.remove()


def test_a_nul_character_is_a_400_on_postgres_too(settings: Settings, postgres_url: str) -> None:
    """PostgreSQL text cannot hold U+0000: such a card uuid was a 500 there and stored on SQLite."""
    app = create_app(settings.with_overrides(feedback_db=postgres_url))
    try:
        response = app.test_client().post(URL, json={"feedback": [sandbox_item("c1\u0000")]})
        assert response.status_code == 400
        assert diagnostics(response) == "feedback[0].card: must not contain the NUL character (U+0000)"
    finally:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


def test_a_sqlite_lock_held_past_the_busy_timeout_is_a_503_to_send_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing was stored (the transaction never began), so the answer says so, as for a PostgreSQL
    outage, instead of a 500 with a stack trace."""
    monkeypatch.setattr(dialects, "BUSY_TIMEOUT_MS", 100)
    app = create_app(settings)
    blocker = sqlite3.connect(settings.feedback_db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        during = app.test_client().post(URL, json={"feedback": [sandbox_item("c1")]})
        assert during.status_code == 503
        assert "nothing was stored" in diagnostics(during)
        blocker.execute("ROLLBACK")
        after = app.test_client().post(URL, json={"feedback": [sandbox_item("c1")]})
        assert after.get_json() == {"received": 1, "stored": 1}
    finally:
        blocker.close()
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


def test_feedback_whose_commit_answer_was_lost_answers_what_it_stored(
    settings: Settings, postgres_url: str
) -> None:
    """A connection dropped between the commit and its answer: the retry finds the items; the client is
    told they were stored by this call, as they were, not `"stored": 0`, which reads as a resend."""
    from pathlib import Path
    from urllib.parse import parse_qs, urlsplit

    from tests.feedback.commit_cutter import CommitCutter

    parts = urlsplit(postgres_url)
    with CommitCutter(Path(parse_qs(parts.query)["host"][0])) as cutter:
        app = create_app(settings.with_overrides(feedback_db=cutter.url(parts.path.lstrip("/"))))
        try:
            client = app.test_client()
            cutter.arm()
            answer = client.post(URL, json={"feedback": [sandbox_item("a"), sandbox_item("b")]})
            assert cutter.cuts == 1
            assert answer.get_json() == {"received": 2, "stored": 2}
            resent = client.post(URL, json={"feedback": [sandbox_item("a")]})
            assert resent.get_json() == {"received": 1, "stored": 0}
        finally:
            app.extensions["cds"]["recorder"].close()
            app.extensions["cds"]["feedback"].close()


def test_feedback_blocked_by_a_lock_on_postgres_is_a_503_within_seconds(
    settings: Settings, postgres_url: str
) -> None:
    """An operator's migration or VACUUM FULL holds a lock on the table: the insert waited for it without
    end, holding the request's thread and the store's connection (so every later feedback post queued
    behind it) until the lock went. The server now cancels the statement after 5 s: a 503, nothing stored."""
    import threading

    import psycopg

    app = create_app(settings.with_overrides(feedback_db=postgres_url))
    client = app.test_client()
    answers: list[Any] = []
    try:
        assert client.post(URL, json={"feedback": [sandbox_item("before")]}).status_code == 200
        with psycopg.connect(postgres_url) as operator:
            operator.execute("LOCK TABLE cds_feedback IN ACCESS EXCLUSIVE MODE")
            poster = threading.Thread(
                target=lambda: answers.append(client.post(URL, json={"feedback": [sandbox_item("held")]})),
                daemon=True,
            )
            poster.start()
            poster.join(15)
            assert not poster.is_alive(), "still waiting for the lock after 15 s"
            operator.rollback()
        (answer,) = answers
        assert answer.status_code == 503
        assert answer.get_json(force=True)["issue"][0]["code"] == "transient"
        assert "nothing was stored" in diagnostics(answer)
        again = client.post(URL, json={"feedback": [sandbox_item("held")]})
        assert again.get_json() == {"received": 1, "stored": 1}
    finally:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


def _postgres_processes(cluster: PostgresCluster) -> list[int]:
    """The postmaster of ``cluster`` and its children (backends, checkpointer, ...)."""
    from pathlib import Path

    postmaster = int((cluster.base / "data" / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def test_a_postgres_that_stops_answering_holds_one_feedback_post_not_every_thread(settings: Settings) -> None:
    """Every process of the server stopped (as when its disk hangs: the kernel still acknowledges, so
    neither TCP timeouts nor statement_timeout end the wait). The post that holds the store's connection
    waits; the others must not queue behind it for ever, each holding one of the worker's few threads,
    until none is left for hook calls: they get the 503 within seconds."""
    import os
    import signal
    import threading
    import time

    cluster = PostgresCluster()
    cluster.start()
    app = create_app(settings.with_overrides(feedback_db=cluster.url("postgres")))
    stopped: list[int] = []
    answers: list[Any] = []
    try:
        assert app.test_client().post(URL, json={"feedback": [sandbox_item("before")]}).status_code == 200
        stopped = _postgres_processes(cluster)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        held = threading.Thread(
            target=lambda: app.test_client().post(URL, json={"feedback": [sandbox_item("held")]}), daemon=True
        )
        held.start()
        time.sleep(0.5)
        posters = [
            threading.Thread(
                target=lambda n=n: answers.append(
                    app.test_client().post(URL, json={"feedback": [sandbox_item(f"queued-{n}")]})
                ),
                daemon=True,
            )
            for n in range(3)
        ]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join(15)
        assert not any(poster.is_alive() for poster in posters), "queued behind the held post"
        assert [answer.status_code for answer in answers] == [503] * 3
        assert all("nothing was stored" in diagnostics(answer) for answer in answers)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()
        cluster.remove()


def _random_ids(count: int, length: int | None = None) -> list[str]:
    """Random UUIDs (no length) or ids of `length` letters and digits: they do not compress, and
    PostgreSQL compresses an index entry before it measures it."""
    import random
    import string

    chosen = random.Random(count)  # noqa: S311 - test data, not a secret
    if length is None:
        return [str(uuid.UUID(int=chosen.getrandbits(128), version=4)) for _ in range(count)]
    return ["".join(chosen.choices(string.ascii_letters + string.digits, k=length)) for _ in range(count)]


@pytest.mark.parametrize(
    ("suggestions", "size"),
    [(_random_ids(100), 4036), (_random_ids(12, 256), 3156)],
    ids=["100-uuids", "12-long-ids"],
)
def test_suggestion_ids_too_long_to_be_a_key_are_a_400_on_both_stores(
    settings: Settings, store_url: str, suggestions: list[str], size: int
) -> None:
    """Valid by the schema, such an item overflowed PostgreSQL's unique index on the item's key: a 503
    'send it again' for ever, which kept the batch's other items out too, while SQLite stored it."""
    app = create_app(settings.with_overrides(feedback_db=store_url))
    client = app.test_client()
    item = {
        "card": "9a6c2b7e-3f0d-4c55-9d61-7d5b1b0c2a11",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": s} for s in suggestions],
        "outcomeTimestamp": "2026-03-02T10:15:00Z",
    }
    try:
        response = client.post(URL, json={"feedback": [sandbox_item("c1"), item]})
        assert response.status_code == 400, response.get_data(as_text=True)
        assert diagnostics(response) == (
            f"feedback[1]: the card id and accepted suggestion ids take {size} bytes as stored; at most 2000 "
            "are accepted (about 50 UUIDs)"
        )
        item["acceptedSuggestions"] = item["acceptedSuggestions"][:1] if size == 4036 else [{"id": "s" * 256}]
        stored = client.post(URL, json={"feedback": [sandbox_item("c1"), item]})
        assert stored.get_json() == {"received": 2, "stored": 2}
    finally:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


def test_the_longest_key_accepted_is_stored_on_postgres(settings: Settings, postgres_url: str) -> None:
    """The limit is below what PostgreSQL's index takes, with a card id of 256 characters as well."""
    from cds_service.feedback import parse_feedback

    (card,) = _random_ids(1, 256)
    ids = _random_ids(60, 40)
    while len(json.dumps(ids)) + len(card) > 2000:
        ids.pop()
    assert len(json.dumps(ids)) + len(card) > 1950
    body = {
        "feedback": [
            {
                "card": card,
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": i} for i in ids],
                "outcomeTimestamp": "2026-03-02T10:15:00Z",
            }
        ]
    }
    store = FeedbackStore.open(postgres_url)
    try:
        assert store.add_feedback("b" * 64, parse_feedback(body)) == [True]
    finally:
        store.close()


def test_a_role_that_may_not_insert_is_unready_and_feedback_a_503(
    settings: Settings, postgres_url: str
) -> None:
    """It was ready, and every feedback post a 500 with a stack trace in the log."""
    from tests.feedback.test_store import _role_url

    FeedbackStore.open(postgres_url).close()
    url = _role_url(postgres_url, "reader", "GRANT SELECT ON cds_feedback, cds_issued_card TO {role}")
    app = create_app(settings.with_overrides(feedback_db=url))
    client = app.test_client()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "the role may not INSERT into cds_issued_card, cds_feedback" in ready.get_data(as_text=True)
        answer = client.post(URL, json={"feedback": [sandbox_item("c1")]})
        assert answer.status_code == 503
        assert "nothing was stored" in diagnostics(answer)
    finally:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


def test_a_service_on_a_hot_standby_is_unready_and_feedback_a_503(settings: Settings, standby: str) -> None:
    """After a failover left CDS_FEEDBACK_DB on a read-only standby the app did not even start (every
    transaction began READ WRITE, which a standby refuses); a write there was not an outage either."""
    app = create_app(settings.with_overrides(feedback_db=standby))
    client = app.test_client()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "the database accepts only reads" in ready.get_data(as_text=True)
        answer = client.post(URL, json={"feedback": [sandbox_item("c1")]})
        assert answer.status_code == 503
        assert "nothing was stored" in diagnostics(answer)
    finally:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


def test_a_sqlite_file_deleted_under_the_service_is_a_503_and_unready(
    client: FlaskClient, settings: Settings
) -> None:
    """An operator's 'reset' (rm cds-feedback.sqlite3) while the service ran: posts answered 200
    'stored' into the deleted file, and the pod stayed ready."""
    from pathlib import Path

    assert client.post(URL, json={"feedback": [sandbox_item("c1")]}).status_code == 200
    Path(settings.feedback_db).unlink()
    answer = client.post(URL, json={"feedback": [sandbox_item("c2")]})
    assert answer.status_code == 503
    assert "nothing was stored" in diagnostics(answer)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "moved, deleted or replaced while the service had it open" in ready.get_data(as_text=True)
