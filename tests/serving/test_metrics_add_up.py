"""The numbers add up: calls of known outcomes against a real `cds-service serve` (2 workers, client JWTs
required), and every counter of /metrics, whichever worker answers the scrape, equals the calls of its
kind; the latency histograms agree with the call log lines, and so do the cards per topic.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.observability import CALL_LOGGER
from tests.auth.auth_support import Signer, ehr_signer, serve_requiring_jwts
from tests.support.served import HOOKS_NOW, Served, hook_example

pytestmark = pytest.mark.integration

MAX_BODY = 100_000
JSON = "application/json"
SIGNED = "a fresh token for the path"
VIEW_ID = "b12-iron-patient-view"
_SAMPLE = re.compile(r"^(?P<name>cds_[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$", re.MULTILINE)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(body: str) -> Samples:
    found: Samples = {}
    for match in _SAMPLE.finditer(body):
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        found[(match["name"], labels)] = float(match["value"])
    return found


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in found.items() if sample == name and wanted <= have)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return ehr_signer()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("metrics-add-up")
    server = Served(
        workdir,
        workers=2,
        threads=4,
        **serve_requiring_jwts(workdir, signer),
        CDS_NOW=HOOKS_NOW,
        CDS_MAX_BODY_BYTES=str(MAX_BODY),
    )
    yield server
    server.stop()


def without_prefetch(name: str) -> dict[str, Any]:
    body = hook_example(name)
    body.pop("prefetch", None)
    body.pop("fhirServer", None)
    return body


# (path, what is sent, the status expected): ``json`` a body sent as JSON, ``data`` raw bytes.
HOOK_CALLS: list[tuple[str, str, dict[str, Any], int]] = [
    *[
        ("b12-iron-patient-view", "json", {"json": hook_example(name)}, 200)
        for name in (
            "patient-view.json",
            "patient-view-combined-deficiency.json",
            "patient-view-iron-deficiency-after-b12.json",
            "patient-view-elevated-b12-supplement.json",
            "patient-view-ferritin-inflammation.json",
        )
    ],
    ("b12-iron-order-select", "json", {"json": hook_example("order-select-cyanocobalamin.json")}, 200),
    ("b12-iron-order-sign", "json", {"json": hook_example("order-sign.json")}, 200),
    ("b12-iron-patient-view", "json", {"json": {}}, 400),
    (
        "b12-iron-order-sign",
        "data",
        {"data": b"{not json", "headers": {"Content-Type": JSON}},
        400,
    ),
    ("b12-iron-patient-view", "json", {"json": without_prefetch("patient-view.json")}, 412),
    (
        "b12-iron-order-select",
        "data",
        {"data": b"{" + b" " * MAX_BODY + b"}", "headers": {"Content-Type": JSON}},
        413,
    ),
    ("b12-iron-patient-view", "data", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
    ("no-such-service", "json", {"json": hook_example("patient-view.json")}, 404),
    ("PATIENT-4711", "json", {"json": {}}, 404),
]
SENT_TOKENS: list[str] = []
ROUNDS = 4  # each hook call above is sent this many times, each on a new connection


def post(
    served: Served, signer: Signer, path: str, token: str | None = SIGNED, **kwargs: Any
) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token == SIGNED:
        headers["Authorization"] = f"Bearer {signer.token(path)}"
    elif token is not None:
        headers["Authorization"] = token
    if "Authorization" in headers:
        SENT_TOKENS.append(headers["Authorization"].removeprefix("Bearer "))
    return requests.post(f"{served.base}{path}", headers=headers, timeout=30, **kwargs)


def test_every_counter_equals_the_calls_of_its_kind_and_the_log_agrees(
    served: Served, signer: Signer
) -> None:
    # Both workers have booted (each writes its files then), so that either may take the calls.
    [metrics_dir] = served.metrics_dirs()
    deadline = time.monotonic() + 30
    while len(list(metrics_dir.glob("counter_*.db"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = samples(requests.get(f"{served.base}/metrics", timeout=10).text)
    assert {value for value in before.values()} == {0.0}, "a fresh server has counted nothing"
    expected_requests: Counter[tuple[str, str]] = Counter()
    shown_topics: Counter[tuple[str, str]] = Counter()

    def hook_call(call: tuple[str, str, dict[str, Any], int]) -> tuple[str, int, list[str]]:
        service, _, sent, status = call
        answer = post(served, signer, f"/cds-services/{service}", **sent)
        assert answer.status_code == status, (service, answer.status_code, answer.text[:300])
        cards = answer.json()["cards"] if status == 200 else []
        return service, status, [card["source"]["topic"]["code"] for card in cards]

    def send(calls: list[tuple[str, str, dict[str, Any], int]]) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for service, status, topics in pool.map(hook_call, calls):
                label = "unknown" if status == 404 else service
                expected_requests[(label, str(status))] += 1
                shown_topics.update((label, topic) for topic in topics)

    send(HOOK_CALLS * ROUNDS)
    # Workers share one listening socket, and an idle one can win every accept (Linux wakes them in a
    # fixed order): more calls, counted like the rest, until the other worker has answered some too.
    deadline = time.monotonic() + 30
    while not all(calls_per_worker(metrics_dir).values()) and time.monotonic() < deadline:
        send(HOOK_CALLS[:1] * 16)
    assert len(shown_topics) >= 5, "the 200s had cards of several topics"

    # Refused by authentication: no token, a malformed one, another endpoint's token, a token sent twice.
    view = "/cds-services/b12-iron-patient-view"
    replayed = f"Bearer {signer.token(view)}"
    first = post(served, signer, view, token=replayed, json=hook_example("patient-view.json"))
    assert first.status_code == 200
    expected_requests[("b12-iron-patient-view", "200")] += 1
    shown_topics.update(
        ("b12-iron-patient-view", c["source"]["topic"]["code"]) for c in first.json()["cards"]
    )
    rejected = [
        post(served, signer, view, token=None, json={}),
        post(served, signer, view, token="Bearer not.a.jwt", json={}),
        post(served, signer, view, token=f"Bearer {signer.token(view + '/feedback')}", json={}),
        post(served, signer, view, token=replayed, json=hook_example("patient-view.json")),
        post(served, signer, f"{view}/feedback", token=None, json={}),
    ]
    assert [answer.status_code for answer in rejected] == [401] * len(rejected)

    feedback = f"{view}/feedback"
    accepted = {
        "card": "c-accepted",
        "outcome": "accepted",
        "outcomeTimestamp": "2026-01-15T09:01:00Z",
        "acceptedSuggestions": [{"id": "s-1"}],
    }
    overridden = {"card": "c-overridden", "outcome": "overridden", "outcomeTimestamp": "2026-01-15T09:02:00Z"}
    sent_feedback = [[accepted, overridden], [overridden], [accepted], [dict(accepted, card="c-other")]]
    stored = [
        post(served, signer, feedback, json={"feedback": items}).json()["stored"] for items in sent_feedback
    ]
    assert stored == [2, 0, 0, 1]

    # Whichever worker answers: every scrape on a new connection reads the same numbers.
    scrapes = [samples(requests.get(f"{served.base}/metrics", timeout=10).text) for _ in range(8)]
    assert all(scrape == scrapes[0] for scrape in scrapes)
    after = scrapes[0]

    # The calls were answered by both workers (each has counted some in its own file).
    per_worker = calls_per_worker(metrics_dir)
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker

    counted = Counter(
        {
            (dict(labels)["service"], dict(labels)["status"]): value
            for (name, labels), value in after.items()
            if name == "cds_hook_requests_total" and value
        }
    )
    assert counted == expected_requests
    assert total(after, "cds_auth_rejections_total", status="401") == len(rejected)
    assert total(after, "cds_auth_rejections_total", status="503") == 0
    assert total(after, "cds_feedback_total", outcome="accepted") == 2
    assert total(after, "cds_feedback_total", outcome="overridden") == 1
    assert total(after, "cds_feedback_duplicates_total") == 2
    cards = Counter(
        {
            (dict(labels)["service"], dict(labels)["topic"]): value
            for (name, labels), value in after.items()
            if name == "cds_cards_total" and value
        }
    )
    assert cards == shown_topics

    # The call log: one line per hook call that reached a service, agreeing with every metric.
    # Each worker writes its lines every 0.2 s: wait for as many as there were calls (and a little more, for
    # any extra line to show).
    deadline = time.monotonic() + 10
    while len(call_lines(served)) < sum(expected_requests.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    lines = call_lines(served)
    assert len(lines) == sum(expected_requests.values())
    assert (
        Counter(
            ("unknown" if line["status"] == 404 else line["service"], str(line["status"])) for line in lines
        )
        == expected_requests
    )
    assert Counter((line["service"], topic) for line in lines for topic in line["topics"]) == shown_topics
    for service in {service for service, _ in expected_requests}:
        mine = [
            line for line in lines if ("unknown" if line["status"] == 404 else line["service"]) == service
        ]
        labels = {"service": service}
        assert total(after, "cds_hook_request_duration_seconds_count", **labels) == len(mine)
        logged_s = sum(line["latency_ms"] for line in mine) / 1000
        # The log rounds each latency to a microsecond; the histogram keeps it whole.
        assert math.isclose(
            total(after, "cds_hook_request_duration_seconds_sum", **labels),
            logged_s,
            abs_tol=len(mine) * 1e-6,
        )
        inf = total(after, "cds_hook_request_duration_seconds_bucket", le="+Inf", **labels)
        assert inf == len(mine)
    for phase in ("validation", "prefetch", "fhir", "rules", "render"):
        timed = [line["phases_ms"][phase] for line in lines if phase in line["phases_ms"]]
        assert total(after, "cds_hook_phase_duration_seconds_count", phase=phase) == len(timed), phase
        assert math.isclose(
            total(after, "cds_hook_phase_duration_seconds_sum", phase=phase),
            sum(timed) / 1000,
            abs_tol=len(timed) * 1e-6 + 1e-9,
        ), phase
    # No JWT (nor its signature alone) in any line, and no made-up service id in a call line.
    text = served.log()
    signed = [token for token in SENT_TOKENS if len(token) > 100]
    assert not [token for token in signed if token in text or token.rsplit(".", 1)[-1] in text]
    assert len(signed) > len(HOOK_CALLS) * ROUNDS
    assert "PATIENT-4711" not in json.dumps(lines)
    # Nothing here asked the EHR's FHIR server: the fetch metrics and the lines say so alike.
    assert sum(line["fhir_queries"] for line in lines) == 0
    assert total(after, "cds_fhir_fetch_duration_seconds_count") == 0
    assert total(after, "cds_fhir_fetch_errors_total") == 0
    assert total(after, "cds_run_ahead_hits_total") == sum(line["run_ahead_hit"] for line in lines)


def call_lines(served: Served) -> list[dict[str, Any]]:
    return [entry for entry in served.log_entries() if entry["logger"] == CALL_LOGGER]


def label_of(line: dict[str, Any]) -> str:
    """The service label of a call line's metrics: the 404s of made-up ids share one."""
    return "unknown" if line["status"] == 404 else line["service"]


def calls_per_worker(metrics_dir: Path) -> dict[str, float]:
    """Hook calls each live worker has counted, read from its own counter file."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        worker = path.stem.split("_", 1)[1]
        counts[worker] = sum(
            value
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
            if json.loads(key)[1] == "cds_hook_requests_total"
        )
    return counts
