"""FhirClient against a real FHIR server (sekmet) on loopback, directly and behind a delaying proxy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cds_service.fhir.client import FhirClient
from tests.fhir.data import MEDICATION_REQUEST_COUNT, OBSERVATION_COUNT, PATIENT_ID
from tests.support.delay_proxy import DelayProxy
from tests.support.fhir_server import SekmetServer
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

BUDGET_MS = 5000


@pytest.fixture
def proxy(loaded_server: SekmetServer) -> Iterator[DelayProxy]:
    with DelayProxy(loaded_server.origin) as running:
        yield running


def _ids(bundle: dict, resource_type: str) -> list[str]:
    return [e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def test_read_returns_the_resource(fhir_client: FhirClient, loaded_server: SekmetServer) -> None:
    outcomes = fhir_client.fetch_all(
        loaded_server.base_url, {"patient": f"Patient/{PATIENT_ID}"}, authorization=None, budget_ms=BUDGET_MS
    )
    patient = outcomes["patient"]
    assert patient.ok, patient.error
    assert patient.resource["resourceType"] == "Patient"
    assert patient.resource["id"] == PATIENT_ID
    assert (patient.status, patient.requests) == (200, 1)
    assert patient.url == f"{loaded_server.base_url}/Patient/{PATIENT_ID}"


def test_search_follows_every_page_and_merges_them(
    fhir_client: FhirClient, loaded_server: SekmetServer
) -> None:
    query = f"Observation?patient={PATIENT_ID}&_count=2&_sort=date"
    outcome = fhir_client.fetch_all(
        loaded_server.base_url, {"labs": query}, authorization=None, budget_ms=BUDGET_MS
    )["labs"]
    assert outcome.ok, outcome.error
    bundle = outcome.resource
    assert bundle["type"] == "searchset"
    assert "link" not in bundle
    assert bundle["total"] == OBSERVATION_COUNT
    assert _ids(bundle, "Observation") == [f"fetch-obs-{n}" for n in range(OBSERVATION_COUNT)]
    assert outcome.requests == 3
    assert not outcome.truncated


def test_included_medications_are_kept_once(fhir_client: FhirClient, loaded_server: SekmetServer) -> None:
    query = f"MedicationRequest?patient={PATIENT_ID}&_include=MedicationRequest:medication&_count=1"
    outcome = fhir_client.fetch_all(
        loaded_server.base_url, {"meds": query}, authorization=None, budget_ms=BUDGET_MS
    )["meds"]
    assert outcome.ok, outcome.error
    assert sorted(_ids(outcome.resource, "MedicationRequest")) == [
        f"fetch-mr-{n}" for n in range(MEDICATION_REQUEST_COUNT)
    ]
    assert sorted(_ids(outcome.resource, "Medication")) == ["fetch-med-0", "fetch-med-1"]
    assert outcome.requests == MEDICATION_REQUEST_COUNT


def test_page_cap_marks_the_result_truncated(loaded_server: SekmetServer) -> None:
    fhir = FhirClient(max_pages=2)
    try:
        query = f"Observation?patient={PATIENT_ID}&_count=2"
        outcome = fhir.fetch_all(
            loaded_server.base_url, {"labs": query}, authorization=None, budget_ms=BUDGET_MS
        )["labs"]
    finally:
        fhir.close()
    assert outcome.ok
    assert outcome.truncated
    assert len(_ids(outcome.resource, "Observation")) == 4
    assert outcome.requests == 2
    assert any("stopped after 2 pages" in w for w in outcome.warnings)


def test_empty_search_is_data_not_an_error(fhir_client: FhirClient, loaded_server: SekmetServer) -> None:
    outcome = fhir_client.fetch_all(
        loaded_server.base_url,
        {"conditions": f"Condition?patient={PATIENT_ID}"},
        authorization=None,
        budget_ms=2000,
    )["conditions"]
    assert outcome.ok, outcome.error
    assert outcome.resource["entry"] == []
    assert outcome.resource["total"] == 0


def test_missing_resource_gives_the_servers_reason(
    fhir_client: FhirClient, loaded_server: SekmetServer
) -> None:
    outcome = fhir_client.fetch_all(
        loaded_server.base_url, {"patient": "Patient/no-such-patient"}, authorization=None, budget_ms=2000
    )["patient"]
    assert not outcome.ok
    assert outcome.resource is None
    assert outcome.status == 404
    assert outcome.error.startswith(f"HTTP 404 from {loaded_server.base_url}/Patient/no-such-patient")
    assert "OperationOutcome: Patient/no-such-patient not found" in outcome.error


def test_bad_search_parameter_is_the_servers_operation_outcome(
    fhir_client: FhirClient, loaded_server: SekmetServer
) -> None:
    outcome = fhir_client.fetch_all(
        loaded_server.base_url, {"labs": "Observation?_count=lots"}, authorization=None, budget_ms=2000
    )["labs"]
    assert outcome.status == 400
    assert "OperationOutcome: _count must be an integer" in outcome.error


def test_search_warnings_are_reported_not_merged(
    fhir_client: FhirClient, loaded_server: SekmetServer
) -> None:
    query = f"Observation?patient={PATIENT_ID}&_sort=no-such-field"
    outcome = fhir_client.fetch_all(
        loaded_server.base_url, {"labs": query}, authorization=None, budget_ms=2000
    )["labs"]
    assert outcome.ok
    assert {e["resource"]["resourceType"] for e in outcome.resource["entry"]} == {"Observation"}
    assert any("no-such-field" in w for w in outcome.warnings)


def test_keys_are_independent(fhir_client: FhirClient, loaded_server: SekmetServer) -> None:
    outcomes = fhir_client.fetch_all(
        loaded_server.base_url,
        {
            "patient": f"Patient/{PATIENT_ID}",
            "gone": "Patient/gone",
            "labs": f"Observation?patient={PATIENT_ID}",
        },
        authorization=None,
        budget_ms=BUDGET_MS,
    )
    assert outcomes["patient"].ok
    assert outcomes["labs"].ok
    assert outcomes["gone"].status == 404


def test_bearer_token_server(
    fhir_client: FhirClient, sekmet_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "s3cret-token-for-tests"
    server = sekmet_factory(tokens=[token])
    server.put({"resourceType": "Patient", "id": "p1"})
    queries = {"patient": "Patient/p1"}

    right = fhir_client.fetch_all(
        server.base_url, queries, authorization=f"Bearer {token}", budget_ms=BUDGET_MS
    )
    missing = fhir_client.fetch_all(server.base_url, queries, authorization=None, budget_ms=BUDGET_MS)
    wrong = fhir_client.fetch_all(
        server.base_url, queries, authorization="Bearer not-it", budget_ms=BUDGET_MS
    )

    assert right["patient"].ok, right["patient"].error
    assert missing["patient"].status == 401
    assert "OperationOutcome: Authentication required" in missing["patient"].error
    assert wrong["patient"].status == 401
    assert "HTTP 401" in wrong["patient"].error
    everything_said = caplog.text + repr([right, missing, wrong])
    assert token not in everything_said


def test_no_authorization_header_without_a_token(fhir_client: FhirClient, proxy: DelayProxy) -> None:
    fhir_client.fetch_all(
        proxy.url("/fhir"), {"patient": f"Patient/{PATIENT_ID}"}, authorization=None, budget_ms=2000
    )
    assert [r.authorization for r in proxy.seen] == [None]


def test_token_is_sent_on_every_page(fhir_client: FhirClient, proxy: DelayProxy) -> None:
    query = f"Observation?patient={PATIENT_ID}&_count=2"
    outcome = fhir_client.fetch_all(
        proxy.url("/fhir"), {"labs": query}, authorization="Bearer abc", budget_ms=BUDGET_MS
    )["labs"]
    assert outcome.ok
    assert len(proxy.seen) == 3
    assert {r.authorization for r in proxy.seen} == {"Bearer abc"}
    assert proxy.seen[1].path.startswith("/fhir/Observation?")


def test_server_down_is_connection_refused_at_once(fhir_client: FhirClient) -> None:
    base = f"http://127.0.0.1:{free_port()}/fhir"
    started = time.monotonic()
    outcomes = fhir_client.fetch_all(
        base,
        {"patient": "Patient/1", "labs": "Observation?patient=1"},
        authorization=None,
        budget_ms=BUDGET_MS,
    )
    elapsed = time.monotonic() - started
    for outcome in outcomes.values():
        assert outcome.error == f"connection refused by {outcome.url}"
        assert outcome.requests == 1
    assert elapsed < BUDGET_MS / 1000 / 2


def test_queries_run_side_by_side(fhir_client: FhirClient, proxy: DelayProxy) -> None:
    """Eight keys behind a 200 ms delay: sequential would take 1.6 s; the bound is half that."""
    proxy.delay_s = 0.2
    queries = {
        f"key{n}": f"Observation?patient={PATIENT_ID}&_id=fetch-obs-{n % OBSERVATION_COUNT}" for n in range(8)
    }
    started = time.monotonic()
    outcomes = fhir_client.fetch_all(proxy.url("/fhir"), queries, authorization=None, budget_ms=BUDGET_MS)
    elapsed = time.monotonic() - started
    assert all(o.ok for o in outcomes.values())
    assert len(proxy.seen) == 8
    assert elapsed < 8 * 0.2 / 2


def test_hanging_server_is_cut_off_at_the_budget(fhir_client: FhirClient, proxy: DelayProxy) -> None:
    proxy.hang = True
    started = time.monotonic()
    outcomes = fhir_client.fetch_all(
        proxy.url("/fhir"),
        {"patient": f"Patient/{PATIENT_ID}", "labs": f"Observation?patient={PATIENT_ID}"},
        authorization=None,
        budget_ms=300,
    )
    elapsed = time.monotonic() - started
    for outcome in outcomes.values():
        assert outcome.resource is None
        assert outcome.error.startswith("timeout after 300 ms")
        assert outcome.requests == 1
    assert 0.29 <= elapsed < 0.3 + 0.5


def test_slow_page_runs_out_of_budget(fhir_client: FhirClient, proxy: DelayProxy) -> None:
    proxy.delay_s = 0.15
    query = f"Observation?patient={PATIENT_ID}&_count=1"
    outcome = fhir_client.fetch_all(proxy.url("/fhir"), {"labs": query}, authorization=None, budget_ms=400)[
        "labs"
    ]
    assert outcome.error.startswith("timeout after 400 ms")
    assert 2 <= outcome.requests <= 3


def test_connection_reset_is_retried_once(fhir_client: FhirClient, proxy: DelayProxy) -> None:
    proxy.reset_next(1)
    outcome = fhir_client.fetch_all(
        proxy.url("/fhir"), {"patient": f"Patient/{PATIENT_ID}"}, authorization=None, budget_ms=BUDGET_MS
    )["patient"]
    assert outcome.ok, outcome.error
    assert outcome.requests == 2
    assert len(proxy.seen) == 2


def test_second_reset_gives_up(fhir_client: FhirClient, proxy: DelayProxy) -> None:
    proxy.reset_next(2)
    outcome = fhir_client.fetch_all(
        proxy.url("/fhir"), {"patient": f"Patient/{PATIENT_ID}"}, authorization=None, budget_ms=BUDGET_MS
    )["patient"]
    assert outcome.error == f"connection reset by {outcome.url}"
    assert outcome.requests == 2


def test_base_url_that_is_not_http(fhir_client: FhirClient) -> None:
    outcomes = fhir_client.fetch_all(
        "ftp://example.org/fhir", {"patient": "Patient/1"}, authorization=None, budget_ms=100
    )
    assert outcomes["patient"].error == "FHIR server 'ftp://example.org/fhir' is not an absolute http(s) URL"
    assert outcomes["patient"].requests == 0


def test_one_client_serves_many_threads(fhir_client: FhirClient, loaded_server: SekmetServer) -> None:
    queries = {"patient": f"Patient/{PATIENT_ID}", "labs": f"Observation?patient={PATIENT_ID}&_count=2"}

    def call(_: int) -> dict:
        return fhir_client.fetch_all(loaded_server.base_url, queries, authorization=None, budget_ms=BUDGET_MS)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(16)))
    for outcomes in results:
        assert outcomes["patient"].ok
        assert len(outcomes["labs"].resource["entry"]) == OBSERVATION_COUNT


def test_a_forked_worker_gets_its_own_session(
    fhir_client: FhirClient, loaded_server: SekmetServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = {"patient": f"Patient/{PATIENT_ID}"}
    fhir_client.fetch_all(loaded_server.base_url, query, authorization=None, budget_ms=BUDGET_MS)
    parent_session = fhir_client._session
    monkeypatch.setattr(os, "getpid", lambda: -1)
    outcome = fhir_client.fetch_all(loaded_server.base_url, query, authorization=None, budget_ms=BUDGET_MS)
    assert outcome["patient"].ok
    assert fhir_client._session is not parent_session
