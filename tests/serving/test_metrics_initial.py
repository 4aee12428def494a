"""Series that exist from start: an alert or dashboard has a zero to evaluate before the first event.

Checked where it matters, in prometheus_client's multiprocess mode: in a fresh interpreter (this one's
registry has long been used by other tests) and under `cds-service serve` with two workers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from cds_service import observability
from cds_service.clinical.engine import TOPICS
from tests.support.served import HOOKS_NOW, Served, clean_env, hook_example

PACKAGE = Path(observability.__file__).parent
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$", re.MULTILINE)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# A fresh interpreter in multiprocess mode: the app a worker builds, and its /metrics before any call.
_PROBE = textwrap.dedent(
    """
    import json, sys
    from cds_service.app import create_app
    from cds_service.config import Settings

    folder = sys.argv[1]
    app = create_app(Settings(auth="off", feedback_db=folder + "/f.sqlite3", state_db=folder + "/s.sqlite3"))
    body = app.test_client().get("/metrics").get_data(as_text=True)
    print(json.dumps({"services": sorted(app.extensions["cds"]["handler"].services), "metrics": body}))
    app.extensions["cds"]["recorder"].close()
    app.extensions["cds"]["feedback"].close()
    """
)


def samples(body: str) -> Samples:
    found: Samples = {}
    for match in _SAMPLE.finditer(body):
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        found[(match["name"], labels)] = float(match["value"])
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    """The sample's value, or None when the series is not listed at all."""
    return found.get((name, frozenset(labels.items())))


def expected_zero_series(services: list[str]) -> list[tuple[str, dict[str, str]]]:
    series: list[tuple[str, dict[str, str]]] = [
        ("cds_hook_requests_total", {"service": "unknown", "status": "404"}),
        ("cds_hook_request_duration_seconds_count", {"service": "unknown"}),
        ("cds_fhir_fetch_errors_total", {}),
        ("cds_auth_rejections_total", {"status": "401"}),
        ("cds_auth_rejections_total", {"status": "503"}),
        ("cds_feedback_total", {"outcome": "accepted"}),
        ("cds_feedback_total", {"outcome": "overridden"}),
        ("cds_feedback_duplicates_total", {}),
    ]
    series += [("cds_fhir_fetch_duration_seconds_count", {"outcome": o}) for o in ("ok", "error")]
    series += [("cds_hook_phase_duration_seconds_count", {"phase": p}) for p in observability._PHASES]
    for service in services:
        series += [
            ("cds_hook_request_duration_seconds_count", {"service": service}),
            ("cds_hook_request_duration_seconds_bucket", {"service": service, "le": "+Inf"}),
            ("cds_run_ahead_hits_total", {"service": service}),
            ("cds_fhir_queries_total", {"service": service}),
        ]
        series += [
            ("cds_hook_requests_total", {"service": service, "status": status})
            for status in observability._HOOK_STATUSES
        ]
        series += [("cds_cards_total", {"service": service, "topic": topic}) for topic in TOPICS]
    return series


def assert_known_series_at_zero(found: Samples, services: list[str]) -> None:
    missing = [
        (name, labels)
        for name, labels in expected_zero_series(services)
        if value(found, name, **labels) != 0.0
    ]
    assert missing == []
    service_labels = {
        dict(labels).get("service") for name, labels in found if name == "cds_hook_requests_total"
    }
    assert service_labels == {*services, "unknown"}, "nothing but the catalogue and the 404 label"


def test_a_fresh_app_lists_every_known_series_at_zero_before_any_call(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(**{observability.MULTIPROC_ENV: str(metrics_dir)}),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    services = probe["services"]
    assert "b12-iron-patient-view" in services
    assert list(metrics_dir.glob("counter_*.db")), "the zeros were not written to the multiprocess files"
    body = probe["metrics"]
    assert 'cds_hook_requests_total{service="b12-iron-patient-view",status="500"} 0.0' in body
    found = samples(body)
    assert_known_series_at_zero(found, services)
    assert set(found.values()) == {0.0}, "nothing has happened yet"


def test_every_status_a_call_is_answered_with_has_a_zero_series() -> None:
    """A status added to the code without a zero series would again have no series until it first occurs."""
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    literal = set(re.findall(r"(?:RequestError|operation_outcome)\(\s*(\d{3})\b", source))
    assert literal, "the pattern no longer finds the statuses"
    # 404 is labelled service="unknown"; 503 is answered only by the feedback endpoint (its store cannot
    # be reached), which has no status metric: a hook call never waits for a store that way.
    assert literal - {"404", "503"} <= set(observability._HOOK_STATUSES)


def test_every_phase_a_call_is_timed_in_has_a_zero_series() -> None:
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    phases = set(re.findall(r'\.phase\("(\w+)"\)', source))
    assert phases == set(observability._PHASES)


@pytest.mark.integration
def test_served_metrics_start_at_zero_and_count_from_there(tmp_path: Path) -> None:
    """Each worker writes its zeros when it boots; a call and a resent feedback item then add up exactly."""
    served = Served(tmp_path, workers=2, CDS_NOW=HOOKS_NOW)
    try:
        [metrics_dir] = served.metrics_dirs()
        deadline = time.monotonic() + 30
        while len(list(metrics_dir.glob("counter_*.db"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2, "both workers write before any call"
        services = sorted(
            s["id"] for s in requests.get(f"{served.base}/cds-services", timeout=5).json()["services"]
        )
        before = samples(requests.get(f"{served.base}/metrics", timeout=5).text)
        assert_known_series_at_zero(before, services)

        view = "b12-iron-patient-view"
        answer = requests.post(
            f"{served.base}/cds-services/{view}", json=hook_example("patient-view.json"), timeout=30
        )
        assert answer.status_code == 200
        shown = {card["source"]["topic"]["code"] for card in answer.json()["cards"]}
        item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-03-02T10:15:00Z"}
        for _ in range(2):
            posted = requests.post(
                f"{served.base}/cds-services/{view}/feedback", json={"feedback": [item]}, timeout=10
            )
            assert posted.status_code == 200
        after = samples(requests.get(f"{served.base}/metrics", timeout=5).text)
    finally:
        served.stop()
    assert value(after, "cds_hook_requests_total", service=view, status="200") == 1.0
    assert value(after, "cds_hook_requests_total", service=view, status="500") == 0.0
    for topic in TOPICS:
        assert value(after, "cds_cards_total", service=view, topic=topic) == (1.0 if topic in shown else 0.0)
    assert value(after, "cds_feedback_total", outcome="overridden") == 1.0
    assert value(after, "cds_feedback_total", outcome="accepted") == 0.0
    assert value(after, "cds_feedback_duplicates_total") == 1.0
