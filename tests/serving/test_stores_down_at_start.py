"""`cds-service serve` started while its Redis or PostgreSQL is down, as after a restart of either.

The service must start (not exit, which under Kubernetes puts every replica in CrashLoopBackOff), say
once in its log which store it cannot reach, answer /readyz as not ready, answer calls that need the
store as during any outage of it, and become ready by itself once the store is back, with the start-up
work it skipped (the PostgreSQL tables) done then. A store URL that is malformed still stops it at start.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.auth.auth_support import ehr_signer, serve_requiring_jwts
from tests.support.postgres_server import PostgresCluster
from tests.support.processes import free_port
from tests.support.redis_server import running_redis
from tests.support.served import COMMAND, HOOKS_NOW, Served, clean_env, hook_example

pytestmark = pytest.mark.integration

SECRET = "never-shown-7f3a"
VIEW = "/cds-services/b12-iron-patient-view"
FEEDBACK = f"{VIEW}/feedback"


def readiness(base: str) -> tuple[int, dict[str, Any]]:
    answer = requests.get(f"{base}/readyz", timeout=15)
    return answer.status_code, answer.json()


def messages_with(server: Served, text: str) -> list[str]:
    return [entry["message"] for entry in server.log_entries() if text in entry["message"]]


def assert_one_warning_and_no_restart(server: Served, store: str) -> None:
    """One "cannot be reached" line naming the store, one worker boot, no password, no traceback."""
    unreachable = messages_with(server, "cannot be reached")
    assert len(unreachable) == 1, unreachable
    assert store in unreachable[0]
    assert len(messages_with(server, "Booting worker")) == 1, "the worker was never restarted"
    assert SECRET not in server.log()
    assert "Traceback" not in server.log()


def feedback_item(card: str) -> dict[str, Any]:
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-01-15T09:05:00Z"}


def test_redis_down_at_start_fails_closed_until_it_is_back_then_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    """Client JWTs required, so every call needs the replay store in Redis."""
    signer = ehr_signer()
    port = free_port()  # nothing listens there yet
    server = Served(
        tmp_path,
        workers=1,
        **serve_requiring_jwts(tmp_path, signer),
        CDS_REDIS_URL=f"redis://:{SECRET}@127.0.0.1:{port}/0",
        CDS_NOW=HOOKS_NOW,
    )

    def call(token: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return requests.post(
            server.base + VIEW, json=hook_example("patient-view.json"), headers=headers, timeout=30
        )

    try:
        assert requests.get(f"{server.base}/healthz", timeout=5).json() == {"status": "ok"}
        assert readiness(server.base) == (
            503,
            {
                "status": "not ready",
                "reason": f"the JWT replay store (Redis at redis://127.0.0.1:{port}/0) cannot be reached "
                f"(Error 111 connecting to 127.0.0.1:{port}. Connection refused.)",
            },
        )
        refused = call(signer.token(VIEW))
        assert refused.status_code == 503, "fails closed, as in any Redis outage, as the service's fault"
        assert refused.json()["issue"][0]["code"] == "transient"

        with running_redis(tmp_path, SECRET, port=port):
            token = signer.token(VIEW)
            answer = call(token)  # the first use after Redis is back, before any readiness probe
            assert answer.status_code == 200, answer.text
            assert answer.json()["cards"], "the example patient has a card"
            assert call(token).status_code == 401, "the jti is in Redis now: the replay is refused"
            assert readiness(server.base) == (200, {"status": "ready"})
    finally:
        server.stop()
    assert_one_warning_and_no_restart(server, f"Redis at redis://127.0.0.1:{port}/0")


def test_postgres_down_at_start_refuses_feedback_then_creates_its_tables_when_back(tmp_path: Path) -> None:
    cluster = PostgresCluster()  # initialised, not running
    try:
        server = Served(
            tmp_path, workers=1, CDS_FEEDBACK_DB=cluster.url("postgres", password=SECRET), CDS_NOW=HOOKS_NOW
        )
        try:
            assert requests.get(f"{server.base}/healthz", timeout=5).json() == {"status": "ok"}
            status, body = readiness(server.base)
            assert (status, body["status"]) == (503, "not ready")
            assert body["reason"].startswith(
                f"the feedback store (PostgreSQL database postgres on {cluster.base}) is not writable "
                "(connection is bad: connection to server on socket"
            ), body["reason"]
            assert SECRET not in body["reason"]

            refused = requests.post(
                server.base + FEEDBACK, json={"feedback": [feedback_item("early")]}, timeout=30
            )
            assert refused.status_code == 503
            (issue,) = refused.json()["issue"]
            assert (issue["severity"], issue["code"]) == ("error", "transient")
            assert "nothing was stored" in issue["diagnostics"]

            # Hook calls do not wait for the store; the issued-card record they leave waits for it.
            hook = requests.post(server.base + VIEW, json=hook_example("patient-view.json"), timeout=30)
            assert hook.status_code == 200 and hook.json()["cards"]
            server.wait_for_log("issued-card records wait for the database")
            assert messages_with(server, "issued-card records wait for the database")

            cluster.start()
            issued = [card["uuid"] for card in hook.json()["cards"]]
            give_up = time.monotonic() + 30
            while issued_cards(cluster) != issued and time.monotonic() < give_up:
                time.sleep(0.1)
            assert issued_cards(cluster) == issued, "the card issued during the outage is recorded after it"
            stored = requests.post(
                server.base + FEEDBACK, json={"feedback": [feedback_item("after")]}, timeout=30
            )
            assert stored.json() == {"received": 1, "stored": 1}, stored.text
            assert tables(cluster) == {"cds_feedback", "cds_issued_card"}
            assert readiness(server.base) == (200, {"status": "ready"})
            assert feedback_cards(cluster) == ["after"]
        finally:
            server.stop()
    finally:
        cluster.remove()
    assert_one_warning_and_no_restart(server, f"PostgreSQL database postgres on {cluster.base}")


def tables(cluster: PostgresCluster) -> set[str]:
    import psycopg

    query = "SELECT tablename FROM pg_tables WHERE tablename LIKE 'cds_%'"
    with psycopg.connect(cluster.url("postgres")) as conn:
        return {row[0] for row in conn.execute(query).fetchall()}


def issued_cards(cluster: PostgresCluster) -> list[str]:
    import psycopg

    query = "SELECT card_uuid FROM cds_issued_card"
    try:
        with psycopg.connect(cluster.url("postgres")) as conn:
            return [row[0] for row in conn.execute(query).fetchall()]
    except psycopg.errors.UndefinedTable:
        return []


def feedback_cards(cluster: PostgresCluster) -> list[str]:
    import psycopg

    with psycopg.connect(cluster.url("postgres")) as conn:
        return [row[0] for row in conn.execute("SELECT card_uuid FROM cds_feedback").fetchall()]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CDS_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:not-a-port/0"),
        ("CDS_FEEDBACK_DB", f"postgresql://cds:{SECRET}@[::1/cds"),
    ],
)
def test_a_malformed_store_url_still_stops_serve_with_one_line_naming_it(
    variable: str, value: str, tmp_path: Path
) -> None:
    settings = {
        "CDS_AUTH": "off",
        "CDS_FEEDBACK_DB": str(tmp_path / "feedback.sqlite3"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    done = subprocess.run(
        [COMMAND, "serve", "--port", str(free_port()), "--workers", "1"],
        env=clean_env(**(settings | {variable: value})),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"cds-service: configuration error: {variable}")
    assert SECRET not in done.stderr
