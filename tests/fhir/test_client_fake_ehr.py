"""FhirClient against imitations of HAPI paging, the SMART launcher's 401 and other odd answers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cds_service.fhir.client import FhirClient
from tests.support.fake_ehr_fhir import SMART_LAUNCHER_401_TEXT, FakeEhrFhir
from tests.support.unaccepting import unaccepting_port

pytestmark = pytest.mark.integration

BUDGET_MS = 3000


def _observations(count: int) -> list[dict]:
    return [{"resourceType": "Observation", "id": f"o{n}", "status": "final"} for n in range(count)]


def test_hapi_opaque_getpages_links_are_followed(fhir_client: FhirClient) -> None:
    with FakeEhrFhir(token="tok") as ehr:
        ehr.add_search("Observation", _observations(5), page_size=2)
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"labs": "Observation?patient=1"}, authorization="Bearer tok", budget_ms=BUDGET_MS
        )["labs"]
        seen = ehr.seen
    assert outcome.ok, outcome.error
    assert [e["resource"]["id"] for e in outcome.resource["entry"]] == ["o0", "o1", "o2", "o3", "o4"]
    assert outcome.requests == 3
    assert seen[1].path.startswith("/baseR4?_getpages=")
    assert {r.authorization for r in seen} == {"Bearer tok"}


def test_next_link_to_another_origin_is_not_followed(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as elsewhere, FakeEhrFhir() as ehr:
        ehr.add_search("Observation", _observations(3), page_size=2, next_origin=elsewhere.origin)
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"labs": "Observation?patient=1"}, authorization="Bearer tok", budget_ms=BUDGET_MS
        )["labs"]
        assert elsewhere.seen == []
    assert outcome.resource is None
    assert outcome.error.startswith(f"next link to another origin ({elsewhere.origin}) not followed")


def test_smart_launcher_401_text_is_quoted(fhir_client: FhirClient) -> None:
    with FakeEhrFhir(token="right") as ehr:
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization="Bearer expired", budget_ms=BUDGET_MS
        )["patient"]
    assert outcome.status == 401
    assert outcome.error == f"HTTP 401 from {ehr.base_url}/Patient/1: {SMART_LAUNCHER_401_TEXT}"


def test_long_text_body_is_cut(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/1", 503, b"<html>" + b"x" * 1000 + b"</html>", "text/html")
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization=None, budget_ms=500
        )["patient"]
    assert outcome.status == 503
    assert outcome.error.startswith(f"HTTP 503 from {ehr.base_url}/Patient/1: <html>xxx")
    assert outcome.error.endswith("…")
    assert len(outcome.error) < 300


def test_html_page_with_status_200_is_not_json(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/1", 200, b"<html><body>Sign in</body></html>", "text/html")
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization=None, budget_ms=500
        )["patient"]
    assert outcome.resource is None
    assert outcome.error == f"not JSON from {ehr.base_url}/Patient/1 (HTTP 200, text/html)"


def test_json_without_resource_type_is_refused(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/1", 200, {"error": "nope"}, "application/json")
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization=None, budget_ms=500
        )["patient"]
    assert "not a FHIR resource" in outcome.error


def test_operation_outcome_details_text_is_used(fhir_client: FhirClient) -> None:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "details": {"text": "database unavailable"}}],
    }
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Observation?patient=1", 500, body)
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"labs": "Observation?patient=1"}, authorization=None, budget_ms=500
        )["labs"]
    assert (
        outcome.error
        == f"HTTP 500 from {ehr.base_url}/Observation?patient=1: OperationOutcome: database unavailable"
    )


def test_operation_outcome_with_status_200_is_an_error(fhir_client: FhirClient) -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "diagnostics": "no access"}]}
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/1", 200, body)
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization=None, budget_ms=500
        )["patient"]
    assert outcome.error.endswith("OperationOutcome: no access")
    assert outcome.resource is None


def test_search_answered_with_a_single_resource_is_refused(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Observation?patient=1", 200, {"resourceType": "Observation", "id": "x"})
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"labs": "Observation?patient=1"}, authorization=None, budget_ms=500
        )["labs"]
    assert (
        outcome.error
        == f"expected a searchset Bundle from {ehr.base_url}/Observation?patient=1, got Observation"
    )


def test_redirects_are_not_followed(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as elsewhere, FakeEhrFhir() as ehr:
        target = f"{elsewhere.base_url}/Patient/1"
        ehr.add_canned("Patient/1", 302, b"", "text/plain", headers=(("Location", target),))
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization="Bearer tok", budget_ms=500
        )["patient"]
        assert elsewhere.seen == []
    assert outcome.status == 302
    assert outcome.error == f"HTTP 302 from {ehr.base_url}/Patient/1: redirect to {target} not followed"


def test_read_answered_with_another_resource_type_is_refused(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/1", 200, {"resourceType": "Practitioner", "id": "1"})
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization=None, budget_ms=500
        )["patient"]
    assert outcome.error == f"expected a Patient from {ehr.base_url}/Patient/1, got Practitioner"


def test_operation_outcome_whose_issue_is_not_a_list_is_still_an_error(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/1", 500, {"resourceType": "OperationOutcome", "issue": 5})
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"patient": "Patient/1"}, authorization=None, budget_ms=500
        )["patient"]
    assert outcome.status == 500
    assert (
        outcome.error == f"HTTP 500 from {ehr.base_url}/Patient/1: OperationOutcome: (no diagnostics given)"
    )


@pytest.mark.parametrize("entry", [5, "entries", True, {"resource": {}}])
def test_searchset_whose_entry_is_not_a_list_is_refused(fhir_client: FhirClient, entry: object) -> None:
    """Read as "no entries", it would tell the rules that nothing is on file."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned(
            "Observation?patient=1", 200, {"resourceType": "Bundle", "type": "searchset", "entry": entry}
        )
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"labs": "Observation?patient=1"}, authorization=None, budget_ms=500
        )["labs"]
    assert outcome.resource is None
    assert outcome.error == f"Bundle.entry from {ehr.base_url}/Observation?patient=1 is not a list"


def _searchset_with_outcome(severity: str) -> dict:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "diagnostics": "too costly"}],
    }
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "o1"}},
            {"search": {"mode": "outcome"}, "resource": outcome},
        ],
    }


def test_a_search_that_reports_an_error_fails_its_key(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Observation?patient=1", 200, _searchset_with_outcome("error"))
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"labs": "Observation?patient=1"}, authorization=None, budget_ms=500
        )["labs"]
    assert outcome.resource is None
    assert outcome.error == f"the search {ehr.base_url}/Observation?patient=1 reported an error: too costly"


def test_a_search_warning_is_passed_on_with_the_results(fhir_client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Observation?patient=1", 200, _searchset_with_outcome("warning"))
        outcome = fhir_client.fetch_all(
            ehr.base_url, {"labs": "Observation?patient=1"}, authorization=None, budget_ms=500
        )["labs"]
    assert outcome.ok
    assert [e["resource"]["id"] for e in outcome.resource["entry"]] == ["o1"]
    assert outcome.warnings == ("server said: too costly",)


@pytest.fixture
def unaccepting_server() -> Iterator[str]:
    with unaccepting_port() as port:
        yield f"http://127.0.0.1:{port}/fhir"


def test_a_server_that_never_accepts_is_reported_as_unreachable_not_slow(unaccepting_server: str) -> None:
    """The connect timeout (300 ms here) is shorter than the budget: the reason names it, so an operator
    looks at the network, not at the FHIR server's speed."""
    client = FhirClient(connect_timeout_s=0.3)
    try:
        started = time.monotonic()
        outcome = client.fetch_all(
            unaccepting_server, {"patient": "Patient/p1"}, authorization=None, budget_ms=2000
        )
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert outcome["patient"].error == f"no connection to {unaccepting_server}/Patient/p1 within 300 ms"
    assert 0.29 <= elapsed < 1.5


def test_a_budget_shorter_than_the_connect_timeout_is_reported_as_the_budget(unaccepting_server: str) -> None:
    client = FhirClient(connect_timeout_s=1.0)
    try:
        outcome = client.fetch_all(
            unaccepting_server, {"patient": "Patient/p1"}, authorization=None, budget_ms=300
        )
    finally:
        client.close()
    assert outcome["patient"].error.startswith("timeout after 300 ms")
