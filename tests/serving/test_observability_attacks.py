"""What callers can do to `/metrics` and to the log of a real `cds-service serve`.

Every label value of every metric must come from a bounded set whatever URLs, methods and bodies callers
send (a scan of random URLs must not create a time series per URL), and every log line must stay one JSON
object whose fields the code chose, quoting no token and no patient identifier.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service import observability
from cds_service.app import HOOK_INSTANCE
from cds_service.clinical.engine import TOPICS
from tests.support.served import HOOKS_NOW, Served, hook_example

pytestmark = pytest.mark.integration

SERVICES = {"b12-iron-patient-view", "b12-iron-order-select", "b12-iron-order-sign"}
_SAMPLE = re.compile(r"^(?P<name>cds_[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# Every value each label may take, whatever callers send.
BOUNDED = {
    "service": SERVICES | {"unknown"},
    "topic": set(TOPICS),
    "phase": set(observability._PHASES),
    "outcome": {"ok", "error", "accepted", "overridden", "other"},
    "status": set(observability._HOOK_STATUSES) | {"404"} | set(observability._AUTH_STATUSES),
}
CALL_FIELDS = {"time", "level", "logger", "message", "service", "hookInstance", "status", "latency_ms"}
CALL_FIELDS |= {"phases_ms", "cards", "topics", "fhir_queries", "fhir_errors", "run_ahead_hit"}
ATTACK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("observability-attacks"), workers=2, threads=2, CDS_NOW=HOOKS_NOW)
    yield server
    server.stop()


def label_values(served: Served) -> dict[str, set[str]]:
    """Every label name of the cds_* samples on /metrics, with the values it has (``le`` left out)."""
    body = requests.get(f"{served.base}/metrics", timeout=5).text
    found: dict[str, set[str]] = {}
    for sample in _SAMPLE.finditer(body):
        for name, value in _LABEL.findall(sample["labels"] or ""):
            if name != "le":
                found.setdefault(name, set()).add(value)
    return found


def segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@ATTACK
@given(
    made_up=st.text(max_size=80),
    service=st.sampled_from(sorted(SERVICES)),
    content_type=st.sampled_from(["application/json", "text/plain", "application/x+json; charset=utf-16"]),
    body=st.sampled_from([b"{}", b"[", b"\xff", orjson.dumps(hook_example("patient-view.json"))]),
)
def test_metric_labels_stay_in_their_bounded_sets_whatever_callers_send(
    served: Served, made_up: str, service: str, content_type: str, body: bytes
) -> None:
    headers = {"Content-Type": content_type}
    with requests.Session() as session:
        for path in (
            f"/cds-services/{segment(made_up)}",
            f"/cds-services/{segment(made_up)}/feedback",
            f"/{segment(made_up)}",
            f"/cds-services/{service}",
            f"/cds-services/{service}/feedback",
        ):
            answer = session.post(f"{served.base}{path}", data=body, headers=headers, timeout=10)
            assert answer.status_code != 500
        session.request("PROPFIND", f"{served.base}/cds-services/{segment(made_up)}", timeout=10)
    values = label_values(served)
    assert set(values) <= set(BOUNDED), values.keys()
    for name, seen in values.items():
        assert seen <= BOUNDED[name], (name, seen - BOUNDED[name])


def test_log_lines_stay_json_with_the_codes_fields_and_quote_no_token_or_identifier(served: Served) -> None:
    """Newlines and forged fields in the path, the hookInstance and headers; a token in the body and in
    the Authorization header; a patient identifier in the context."""
    token, patient = "tok-SECRET-4711", "PATIENT-XYZ-0815"
    forged = '\n{"level": "ERROR", "logger": "cds_service.calls", "forged": true}'
    body = hook_example("patient-view.json")
    body["hookInstance"] = "00000000-0000-4000-8000-000000000000" + forged
    body["context"]["patientId"] = patient
    headers = {"User-Agent": 'x" "forged": 1', "X-Forwarded-For": "1.2.3.4, evil", "Authorization": token}
    calls = [
        (f"/cds-services/{segment(forged)}", body),
        ("/cds-services/b12-iron-patient-view", body),
        (
            "/cds-services/b12-iron-patient-view",
            {
                **hook_example("patient-view.json"),
                "context": {**body["context"], "patientId": patient},
                "prefetch": {},
                "fhirServer": "https://fhir.example.org/r4",
                "fhirAuthorization": {
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.read",
                    "subject": "cds-service",
                },
            },
        ),
    ]
    statuses = [
        requests.post(f"{served.base}{path}", json=sent, headers=headers, timeout=10).status_code
        for path, sent in calls
    ]
    assert statuses == [404, 400, 412]
    served.wait_for_log("fhirServer")
    served.wait_for_log('"status":412')
    text = served.log()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(entry, dict) for entry in entries)
    assert token not in text and patient not in text
    call_lines = [e for e in entries if e["logger"] == observability.CALL_LOGGER]
    assert call_lines and all(set(e) == CALL_FIELDS for e in call_lines)
    assert not [e for e in entries if "forged" in e]
    assert all(e["hookInstance"] is None or HOOK_INSTANCE.fullmatch(e["hookInstance"]) for e in call_lines)


def test_a_call_line_does_not_quote_a_made_up_service_id(served: Served) -> None:
    """A 404's id is the caller's free text, as a patient's identifier would be in a URL built wrongly
    (``/cds-services/{patientId}``): its call line says ``unknown``, like its metric label."""
    patient = "PATIENT-404-4711"
    time.sleep(0.3)  # earlier tests' lines are out of the workers' buffers
    before = len(call_lines(served))
    answer = requests.post(f"{served.base}/cds-services/{patient}", json={}, timeout=10)
    assert answer.status_code == 404
    deadline = time.monotonic() + 5
    while len(call_lines(served)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = call_lines(served)[before:]
    assert [(line["service"], line["status"]) for line in lines] == [("unknown", 404)]
    assert patient not in json.dumps(lines)


def call_lines(served: Served) -> list[dict]:
    return [entry for entry in served.log_entries() if entry["logger"] == observability.CALL_LOGGER]
