"""The real served instance (`cds-service serve`, gunicorn) killed with SIGKILL while clients post feedback.

Every item that got a 200 must be in the store after a restart: the endpoint answers only after the
commit, and SQLite's WAL with `synchronous=FULL` keeps committed transactions through a killed process.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from cds_service.cli import main
from tests.support.served import COMMAND, HOOKS_NOW, Served, hook_example

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        "serve" not in main.commands, reason="`cds-service serve` is not registered in cli.py yet"
    ),
]

SERVICE = "b12-iron-patient-view"
CLIENTS = 8
ITEMS_PER_POST = 5


def entries(client: int, post: int) -> list[dict[str, object]]:
    return [
        {
            "card": f"c{client}-p{post}-{i}",
            "outcome": "accepted" if i % 2 else "overridden",
            "acceptedSuggestions": [{"id": f"s{i}"}],
            "overrideReason": {
                "reason": {"code": "already-ordered", "system": "urn:b12-iron-cds:override-reason"}
            },
            "outcomeTimestamp": "2026-03-02T09:00:00Z",
        }
        for i in range(ITEMS_PER_POST)
    ]


def stored_cards(database: Path) -> set[str]:
    with sqlite3.connect(database) as conn:
        return {row[0] for row in conn.execute("SELECT card_uuid FROM cds_feedback")}


def test_every_item_answered_200_survives_sigkill_and_restart(tmp_path: Path) -> None:
    workdir = tmp_path
    database = workdir / "feedback.sqlite3"
    server = Served(workdir, CDS_FEEDBACK_DB=str(database), CDS_LOG_LEVEL="WARNING")
    confirmed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        session = requests.Session()
        for post in range(10_000):
            if stop.is_set():
                return
            body = entries(number, post)
            try:
                answer = session.post(
                    f"{server.base}/cds-services/{SERVICE}/feedback", json={"feedback": body}, timeout=10
                )
            except requests.RequestException:
                return  # the server is gone: this post got no 200 and promises nothing
            if answer.status_code != 200 or answer.json() != {
                "received": ITEMS_PER_POST,
                "stored": ITEMS_PER_POST,
            }:
                with lock:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")
                return
            with lock:
                confirmed.extend(item["card"] for item in body)  # type: ignore[misc]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(confirmed) < 300 * ITEMS_PER_POST and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        server.kill()  # mid-load: the clients are still posting
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        stop.set()
        server.stop()
    assert errors == []
    assert len(confirmed) >= 300 * ITEMS_PER_POST, "the load did not reach the server before the kill"

    restarted = Served(workdir, CDS_FEEDBACK_DB=str(database), CDS_LOG_LEVEL="WARNING")
    try:
        assert requests.get(f"{restarted.base}/readyz", timeout=5).status_code == 200
        missing = set(confirmed) - stored_cards(database)
        assert not missing, f"{len(missing)} items answered 200 are not stored"
        # The restarted server stores a confirmed batch sent again only once.
        again = restarted_post(restarted, entries(0, 0))
        assert again == {"received": ITEMS_PER_POST, "stored": 0}
    finally:
        restarted.stop()

    counts = reported_services(database)[SERVICE]
    stored = counts["accepted"] + counts["overridden"]
    in_flight = CLIENTS * ITEMS_PER_POST
    assert len(confirmed) <= stored <= len(confirmed) + in_flight


def reported_services(database: Path) -> dict[str, dict]:
    """The store read back by `cds-service feedback-report --json`, as an operator reads it."""
    done = subprocess.run(
        [COMMAND, "feedback-report", "--json", "--db", str(database)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)["services"]


def restarted_post(server: Served, body: list[dict[str, object]]) -> dict[str, int]:
    answer = requests.post(
        f"{server.base}/cds-services/{SERVICE}/feedback", json={"feedback": body}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


EXAMPLES = {
    "patient-view.json": "b12-iron-patient-view",
    "order-select-cyanocobalamin.json": "b12-iron-order-select",
    "order-sign.json": "b12-iron-order-sign",
    "patient-view-elevated-b12-supplement.json": "b12-iron-patient-view",
}


def test_issued_cards_and_feedback_meet_in_the_report(tmp_path: Path) -> None:
    """Hook calls record their cards off the hot path; a graceful stop flushes them; feedback on those
    cards is reported under each card's topic, with the display of a reason sent by code only."""
    database = tmp_path / "feedback.sqlite3"
    server = Served(tmp_path, CDS_FEEDBACK_DB=str(database), CDS_LOG_LEVEL="WARNING", CDS_NOW=HOOKS_NOW)
    cards: list[tuple[str, dict[str, object]]] = []
    try:
        for example, service in EXAMPLES.items():
            body = hook_example(example)
            answer = requests.post(f"{server.base}/cds-services/{service}", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            cards += [(service, card) for card in answer.json()["cards"]]
        assert cards, "the hook examples produced no cards"
        with_suggestion = next((sc for sc in cards if sc[1].get("suggestions")), None)
        assert with_suggestion is not None, "no card with a suggestion among the examples"
        overridden = next(sc for sc in cards if sc is not with_suggestion)
        accept_service, accept_card = with_suggestion
        override_service, override_card = overridden
        reason = override_card["overrideReasons"][0]  # type: ignore[index]
        suggestion = accept_card["suggestions"][0]["uuid"]  # type: ignore[index]
        now = "2026-01-15T09:01:00Z"
        posts = [
            (
                accept_service,
                {
                    "card": accept_card["uuid"],
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": suggestion}],
                    "outcomeTimestamp": now,
                },
            ),
            (
                override_service,
                {
                    "card": override_card["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": {"code": reason["code"]}},
                    "outcomeTimestamp": now,
                },
            ),
        ]
        for service, item in posts:
            answer = requests.post(
                f"{server.base}/cds-services/{service}/feedback", json={"feedback": [item]}, timeout=10
            )
            assert answer.json() == {"received": 1, "stored": 1}
    finally:
        server.stop()  # SIGTERM: workers exit gracefully and flush their issued-card queues

    report = reported_services(database)
    expected: dict[tuple[str, str], int] = {}
    for service, card in cards:
        key = (service, card["source"]["topic"]["code"])  # type: ignore[index]
        expected[key] = expected.get(key, 0) + 1
    issued = {
        (service, topic): counts["issued"]
        for service, body in report.items()
        for topic, counts in body["topics"].items()
    }
    assert issued == expected
    accepted_topic = report[accept_service]["topics"][accept_card["source"]["topic"]["code"]]  # type: ignore[index]
    assert accepted_topic["accepted"] == 1
    override_topic = report[override_service]["topics"][override_card["source"]["topic"]["code"]]  # type: ignore[index]
    assert override_topic["overridden"] == 1
    assert override_topic["topOverrideReasons"] == [
        {"system": reason["system"], "code": reason["code"], "display": reason["display"], "count": 1}
    ]
    total = sum(body["accepted"] + body["overridden"] for body in report.values())
    assert total == 2
    assert "unknown" not in {topic for body in report.values() for topic in body["topics"]}
