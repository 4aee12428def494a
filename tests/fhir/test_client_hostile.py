"""FhirClient against a FHIR server that answers a byte at a time: the budget bounds the whole answer.

The read timeout bounds each ``recv``, so a server that keeps sending a little (the status line and
headers, or the body) never trips it. The hook call was answered in time anyway, but the pool thread kept
reading for as long as the server liked, and once every pool thread was held so, every later call of the
worker waited in the queue and timed out, whatever server it asked.
"""

from __future__ import annotations

import time

import pytest

from cds_service.fhir.client import FhirClient
from tests.support.dripping_server import dripping_server
from tests.support.fake_ehr_fhir import FakeEhrFhir

pytestmark = pytest.mark.integration

HEADERS_DRIP = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400
BODY_DRIP = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n"


@pytest.mark.parametrize("prefix", [HEADERS_DRIP, BODY_DRIP], ids=["headers", "body"])
def test_a_dripping_server_holds_no_pool_thread_past_the_budget(prefix: bytes) -> None:
    client = FhirClient(max_workers=2)
    try:
        with dripping_server(prefix) as (slow_server, held), FakeEhrFhir() as healthy:
            slow_base = f"{slow_server}/fhir"
            healthy.add_canned("Patient/p1", 200, {"resourceType": "Patient", "id": "p1"})
            started = time.monotonic()
            slow = client.fetch_all(
                slow_base, {"a": "Patient/p1", "b": "Patient/p2"}, authorization=None, budget_ms=300
            )
            assert time.monotonic() - started < 0.6
            assert all(o.error.startswith("timeout after 300 ms") for o in slow.values())

            fast = client.fetch_all(healthy.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=1000)
            assert fast["p"].ok, fast["p"].error
            deadline = time.monotonic() + 2
            while len(held) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(held) == 2 and max(held) < 1.0, held
    finally:
        client.close()


def test_a_next_link_that_is_not_a_url_fails_its_key_without_a_stack_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``urljoin`` raises ValueError on "http://[::1": it reached the catch-all, which logged a stack
    trace and gave the integrator "unexpected error … ValueError"."""
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": "http://[::1"}],
    }
    client = FhirClient()
    try:
        with FakeEhrFhir() as ehr:
            ehr.add_canned("Observation?patient=p1", 200, page)
            ehr.add_canned("Patient/p1", 302, b"", "text/plain", headers=(("Location", "http://[::1/x"),))
            outcomes = client.fetch_all(
                ehr.base_url,
                {"labs": "Observation?patient=p1", "patient": "Patient/p1"},
                authorization=None,
                budget_ms=3000,
            )
    finally:
        client.close()
    assert outcomes["labs"].error == f"next link of {ehr.base_url}/Observation?patient=p1 is not a valid URL"
    assert outcomes["patient"].error == (
        f"HTTP 302 from {ehr.base_url}/Patient/p1: redirect to a malformed Location not followed"
    )
    assert not [record for record in caplog.records if record.exc_info]


def _search_page_with_next(url: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": "o1", "status": "final"}}],
        "link": [{"relation": "next", "url": url}],
    }


@pytest.mark.parametrize(
    "shape",
    [
        "http://127.0.0.1:{other}\\@127.0.0.1:{ehr}/baseR4?page=2",
        "http://127.0.0.1:{other}\\\\@127.0.0.1:{ehr}/baseR4?page=2",
        "http://127.0.0.1:{other}\\x@127.0.0.1:{ehr}/baseR4?page=2",
    ],
)
def test_a_next_link_that_parses_as_this_origin_but_connects_elsewhere_gets_no_token(shape: str) -> None:
    """Python's urlsplit ends the authority at the first '/', '?' or '#', and reads the host after the
    last '@': ``http://OTHER\\@EHR/...`` is EHR to it. urllib3 (what requests connects with) also ends
    the authority at a backslash: the same link is OTHER to it. The origin check used urlsplit, so such a
    next link passed it and the page request, with the EHR's access token, went to OTHER."""
    client = FhirClient()
    try:
        with FakeEhrFhir() as elsewhere, FakeEhrFhir() as ehr:
            link = shape.format(other=elsewhere.port, ehr=ehr.port)
            ehr.add_canned("Observation?patient=p1", 200, _search_page_with_next(link))
            outcome = client.fetch_all(
                ehr.base_url,
                {"labs": "Observation?patient=p1"},
                authorization="Bearer secret-ehr-token",
                budget_ms=3000,
            )["labs"]
            reached_elsewhere = elsewhere.seen
            reached_ehr = ehr.seen
    finally:
        client.close()
    assert reached_elsewhere == []
    assert [seen.authorization for seen in reached_ehr] == ["Bearer secret-ehr-token"]
    assert outcome.resource is None
    assert outcome.error is not None and "not followed" in outcome.error


TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-access-token.c2lnbmF0dXJl"


def _echoing_outcome(severity: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": severity, "code": "security", "diagnostics": f"token {TOKEN} is not valid here"}
        ],
    }


def test_a_jwt_the_fhir_server_quotes_is_kept_out_of_the_reason_whoever_it_belongs_to() -> None:
    """Not only the token sent: a server may quote another JWT (a session's, an id_token, the token of a
    proxy in front of it) in its error, and the reason goes into the service log and the 412."""
    other = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJwcmFjdGl0aW9uZXIvNyJ9.c2lnbmF0dXJlLW90aGVy"
    body = f"Unauthorized: session token {other} expired".encode()
    client = FhirClient()
    try:
        with FakeEhrFhir() as ehr:
            ehr.add_canned("Patient/p1", 401, body, "text/plain")
            ehr.add_canned("Patient/p2", 401, body, "text/plain")
            with_token = client.fetch_all(
                ehr.base_url, {"patient": "Patient/p1"}, authorization=f"Bearer {TOKEN}", budget_ms=3000
            )["patient"]
            without = client.fetch_all(
                ehr.base_url, {"patient": "Patient/p2"}, authorization=None, budget_ms=3000
            )["patient"]
    finally:
        client.close()
    for outcome in (with_token, without):
        assert outcome.error.startswith(f"HTTP 401 from {ehr.base_url}/Patient/p"), outcome.error
        assert "session token [a JWT] expired" in outcome.error
        assert "eyJzdWIiOiJwcmFjdGl0aW9uZXIvNyJ9" not in outcome.error


def test_a_fhir_server_quoting_the_access_token_does_not_put_it_in_the_reason() -> None:
    """A server's error text is quoted in the reason, which is logged and sent back in the 412: a server
    that echoes the bearer token it was sent (in an OperationOutcome or a text body) put the token in the
    service log."""
    search = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": _echoing_outcome("warning"), "search": {"mode": "outcome"}}],
    }
    client = FhirClient()
    try:
        with FakeEhrFhir() as ehr:
            ehr.add_canned("Patient/p1", 401, _echoing_outcome("error"))
            ehr.add_canned("Condition/c1", 403, f"Forbidden: Bearer {TOKEN}".encode(), "text/plain")
            # The reason quotes the first 200 characters: here the cut falls inside the token.
            padded = f"Forbidden: {'.' * 162} Bearer {TOKEN}".encode()
            ehr.add_canned("Condition/c2", 403, padded, "text/plain")
            ehr.add_canned("Observation?patient=p1", 200, search)
            outcomes = client.fetch_all(
                ehr.base_url,
                {
                    "patient": "Patient/p1",
                    "condition": "Condition/c1",
                    "cut": "Condition/c2",
                    "labs": "Observation?patient=p1",
                },
                authorization=f"Bearer {TOKEN}",
                budget_ms=3000,
            )
            assert {seen.authorization for seen in ehr.seen} == {f"Bearer {TOKEN}"}
    finally:
        client.close()
    assert outcomes["patient"].error.startswith(f"HTTP 401 from {ehr.base_url}/Patient/p1: OperationOutcome")
    assert outcomes["condition"].error.startswith(f"HTTP 403 from {ehr.base_url}/Condition/c1: Forbidden")
    assert outcomes["labs"].ok and outcomes["labs"].warnings
    assert outcomes["cut"].error.startswith(f"HTTP 403 from {ehr.base_url}/Condition/c2: Forbidden")
    texts = [outcomes[key].error for key in ("patient", "condition", "cut")] + [*outcomes["labs"].warnings]
    assert not [text for text in texts if "secret-access-token" in text or "eyJhbGciOiJSUzI1NiJ9" in text]
