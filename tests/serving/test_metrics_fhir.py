"""The FHIR numbers add up: a served instance fetching what the prefetch lacks from a loopback FHIR server.

What the server saw is the ground truth: the HTTP requests it answered must equal the call lines'
``fhir_queries`` and ``cds_fhir_queries_total``; the fetch histogram counts prefetch keys fetched (each
with all its pages), and its errors are the lines' ``fhir_errors``. The patient's id reaches no log line,
and a call line names no FHIR URL.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cds_service.observability import CALL_LOGGER
from tests.support.fake_ehr_fhir import FakeEhrFhir
from tests.support.served import HOOKS_NOW, Served, hook_example

pytestmark = pytest.mark.integration

VIEW = "/cds-services/b12-iron-patient-view"
_SAMPLE = re.compile(r"^(?P<name>cds_[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$", re.MULTILINE)


def total(body: str, name: str, **labels: str) -> float:
    found = 0.0
    for match in _SAMPLE.finditer(body):
        have = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if match["name"] == name and labels.items() <= have.items():
            found += float(match["value"])
    return found


@pytest.fixture
def fhir() -> Iterator[FakeEhrFhir]:
    with FakeEhrFhir() as fake:
        labs = hook_example("patient-view.json")["prefetch"]["b12IronLabs"]["entry"]
        fake.add_search("Observation", [entry["resource"] for entry in labs], page_size=1)
        yield fake  # no Condition search: a query for conditions is a 404 OperationOutcome


@pytest.fixture
def served(tmp_path: Path, fhir: FakeEhrFhir) -> Iterator[Served]:
    server = Served(tmp_path, workers=2, threads=2, CDS_NOW=HOOKS_NOW, CDS_ALLOWED_FHIR_SERVERS=fhir.base_url)
    yield server
    server.stop()


def call_without(served: Served, fhir: FakeEhrFhir, *keys: str) -> int:
    body = hook_example("patient-view.json")
    for key in keys:
        del body["prefetch"][key]
    body["fhirServer"] = fhir.base_url
    return requests.post(f"{served.base}{VIEW}", json=body, timeout=30).status_code


def call_lines(served: Served, count: int, timeout_s: float = 5) -> list[dict]:
    """The call lines, once ``count`` are written (each worker writes its own every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [entry for entry in served.log_entries() if entry["logger"] == CALL_LOGGER]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_fhir_queries_fetches_and_errors_agree_with_the_log_and_the_fhir_server(
    served: Served, fhir: FakeEhrFhir
) -> None:
    statuses = [call_without(served, fhir, "b12IronLabs") for _ in range(3)]
    statuses += [call_without(served, fhir, "b12IronLabs", "conditions") for _ in range(2)]
    assert statuses == [200] * 3 + [412] * 2
    metrics = requests.get(f"{served.base}/metrics", timeout=10).text
    lines = call_lines(served, len(statuses))
    assert sorted(line["status"] for line in lines) == statuses

    sent = len(fhir.seen)
    assert sent == 3 * 3 + 2 * (3 + 1), "three pages of labs per call, and one refused search for conditions"
    assert sorted(line["fhir_queries"] for line in lines) == [3, 3, 3, 4, 4]
    assert total(metrics, "cds_fhir_queries_total") == sent
    assert total(metrics, "cds_fhir_queries_total", service="b12-iron-patient-view") == sent
    # One observation per prefetch key fetched, whatever its pages.
    assert total(metrics, "cds_fhir_fetch_duration_seconds_count", outcome="ok") == 5
    assert total(metrics, "cds_fhir_fetch_duration_seconds_count", outcome="error") == 2
    assert total(metrics, "cds_fhir_fetch_errors_total") == sum(line["fhir_errors"] for line in lines) == 2
    assert total(metrics, "cds_hook_phase_duration_seconds_count", phase="fhir") == 5

    text = served.log()
    patient = hook_example("patient-view.json")["context"]["patientId"]
    assert patient not in text
    # The refusal's reason names the FHIR server and query, with the patient's id replaced; the call lines
    # name neither.
    assert "patient=<id>" in text
    assert fhir.origin not in json.dumps(lines)
