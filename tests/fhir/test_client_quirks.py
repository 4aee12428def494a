"""FhirClient against FHIR servers that are busy, sloppy or odd in ways real ones are.

The fake EHR answers as the servers named in each test do; where it has to change its answer between two
requests (busy, then not), a subclass here says so.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cds_service.fhir.client import FhirClient
from cds_service.fhir.medications import follow_medication_references
from tests.support.fake_ehr_fhir import Canned, FakeEhrFhir

pytestmark = pytest.mark.integration

PATIENT = {"resourceType": "Patient", "id": "p1"}
THROTTLED = (
    b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"throttled",'
    b'"diagnostics":"Too many requests"}]}'
)


class BusyFakeEhr(FakeEhrFhir):
    """Answers its first ``busy_times`` requests with ``busy`` (a 429 or 503), then as usual: a cloud FHIR
    service over its request rate (Azure API for FHIR sends 429 with ``x-ms-retry-after-ms``, others
    ``Retry-After``), or one restarting behind its load balancer (503)."""

    def __init__(self, busy: Canned, busy_times: int = 1) -> None:
        super().__init__()
        self.busy = busy
        self.busy_left = busy_times

    def _answer(self, path: str, query: str) -> Canned:
        with self._lock:
            busy = self.busy_left > 0
            self.busy_left -= 1
        return self.busy if busy else super()._answer(path, query)


def _busy(status: int, *headers: tuple[str, str]) -> Canned:
    return Canned(status, THROTTLED, "application/fhir+json", headers)


@pytest.fixture
def client() -> Iterator[FhirClient]:
    fhir = FhirClient()
    yield fhir
    fhir.close()


@pytest.mark.parametrize(
    "busy",
    [
        _busy(429, ("Retry-After", "0")),
        _busy(429, ("x-ms-retry-after-ms", "150")),
        _busy(503, ("Retry-After", "0")),
    ],
    ids=["429-retry-after", "429-azure-ms", "503-retry-after"],
)
def test_a_busy_server_that_asks_for_a_short_wait_is_asked_again(client: FhirClient, busy: Canned) -> None:
    """A 429 failed the key at once, and with it the hook call (a 412), when waiting as asked left time."""
    with BusyFakeEhr(busy) as ehr:
        ehr.add_canned("Patient/p1", 200, PATIENT)
        started = time.monotonic()
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=1500)["p"]
        elapsed = time.monotonic() - started
    assert outcome.ok, outcome.error
    assert (outcome.requests, outcome.status) == (2, 200)
    wait = 0.15 if busy.headers[0][0] == "x-ms-retry-after-ms" else 0.0
    assert wait <= elapsed < wait + 0.3


def test_a_wait_longer_than_the_budget_is_not_waited_for_and_is_named(client: FhirClient) -> None:
    with BusyFakeEhr(_busy(429, ("Retry-After", "5"))) as ehr:
        ehr.add_canned("Patient/p1", 200, PATIENT)
        started = time.monotonic()
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=1500)["p"]
        elapsed = time.monotonic() - started
    assert outcome.error == (
        f"HTTP 429 from {ehr.base_url}/Patient/p1: OperationOutcome: Too many requests "
        "(the server asks to wait 5 s)"
    )
    assert outcome.requests == 1
    assert elapsed < 0.3


@pytest.mark.parametrize(
    "busy",
    [_busy(429, ("Retry-After", "0")), _busy(503), _busy(429, ("Retry-After", "soon"))],
    ids=["busy-twice", "no-retry-after", "retry-after-nonsense"],
)
def test_busy_again_or_without_a_wait_named_is_asked_only_once_more_or_not_at_all(
    client: FhirClient, busy: Canned
) -> None:
    with BusyFakeEhr(busy, busy_times=5) as ehr:
        ehr.add_canned("Patient/p1", 200, PATIENT)
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=1500)["p"]
    assert outcome.error is not None and outcome.error.startswith(f"HTTP {busy.status} from")
    assert outcome.requests == (2 if busy.headers == (("Retry-After", "0"),) else 1)


def _searchset(*entries: tuple[dict, str | None], total: object = None) -> dict:
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": resource, **({"search": {"mode": mode}} if mode else {})}
            for resource, mode in entries
        ],
    }
    if total is not None:
        bundle["total"] = total
    return bundle


SUBJECT = {"subject": {"reference": "Patient/p1"}}
OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", **SUBJECT}
CONDITION = {"resourceType": "Condition", "id": "c1", **SUBJECT}
ORDER = {"resourceType": "MedicationRequest", "id": "mr1", **SUBJECT}
MEDICATION = {"resourceType": "Medication", "id": "m1"}
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "information", "code": "informational"}],
}


@pytest.mark.parametrize(
    ("query", "page", "wrong"),
    [
        ("Observation?patient=p1", _searchset((OBSERVATION, "match"), (CONDITION, "match")), "Condition"),
        ("Observation?patient=p1", _searchset((OBSERVATION, None), (ORDER, None)), "MedicationRequest"),
        ("MedicationStatement?patient=p1", _searchset((ORDER, "include")), "MedicationRequest"),
        (
            "MedicationRequest?patient=p1&_include=MedicationRequest:medication",
            _searchset((ORDER, "match"), (MEDICATION, "match")),
            "Medication",
        ),
        ("Patient/p1/Observation", _searchset((CONDITION, "match")), "Condition"),
    ],
    ids=[
        "match-of-another-type",
        "no-mode-no-include",
        "include-not-asked-for",
        "included-as-match",
        "compartment",
    ],
)
def test_a_search_answered_with_another_type_of_resource_fails_its_key(
    client: FhirClient, query: str, page: dict, wrong: str
) -> None:
    """Merged as they came, such entries reached the rules as what they claim to be: a MedicationRequest
    in the answer to an Observation search counted as a B12 order on file."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned(query, 200, page)
        outcome = client.fetch_all(ehr.base_url, {"k": query}, authorization=None, budget_ms=3000)["k"]
    searched = query.split("?")[0].rsplit("/", 1)[-1]
    assert (
        outcome.error
        == f"the search {ehr.base_url}/{query} answered with a {wrong} among its {searched} results"
    )


def test_what_a_search_asked_to_include_and_the_servers_notes_are_kept(client: FhirClient) -> None:
    query = "MedicationRequest?patient=p1&_include=MedicationRequest:medication"
    page = _searchset((ORDER, "match"), (MEDICATION, "include"), (OUTCOME, "outcome"), total=1)
    with FakeEhrFhir() as ehr:
        ehr.add_canned(query, 200, page)
        outcome = client.fetch_all(ehr.base_url, {"k": query}, authorization=None, budget_ms=3000)["k"]
    assert outcome.ok, outcome.error
    assert [e["resource"]["id"] for e in outcome.resource["entry"]] == ["mr1", "m1"]
    assert outcome.warnings == ("server said: informational",)


@pytest.mark.parametrize(("total", "merged"), [(3, 3), (True, None), (-1, None)])
def test_a_total_larger_than_what_came_is_reported_and_a_nonsense_one_is_dropped(
    client: FhirClient, total: object, merged: int | None
) -> None:
    """Every page was read and one match came, yet the server counted three: a row skipped between
    offset pages, or a server that filters what it counted. The data is used, with a warning in the log."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Observation?patient=p1", 200, _searchset((OBSERVATION, "match"), total=total))
        outcome = client.fetch_all(
            ehr.base_url, {"k": "Observation?patient=p1"}, authorization=None, budget_ms=3000
        )["k"]
    assert outcome.ok, outcome.error
    assert outcome.resource.get("total") == merged
    assert outcome.warnings == (("the server counted 3 matches and sent 1",) if total == 3 else ())


def test_a_read_answered_with_a_searchset_is_refused(client: FhirClient) -> None:
    """A read was paged and merged like a search when the server answered it with a searchset."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 200, _searchset((PATIENT, "match")))
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
    assert outcome.error == f"expected a Patient from {ehr.base_url}/Patient/p1, got Bundle"


NAMED = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Jos\u00e9 Mu\u00f1oz"}]}
NAMED_TEXT = '{"resourceType": "Patient", "id": "p1", "name": [{"family": "Jos\u00e9 Mu\u00f1oz"}]}'


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xef\xbb\xbf" + NAMED_TEXT.encode(), "application/fhir+json; charset=utf-8"),
        (NAMED_TEXT.encode("utf-16"), "application/fhir+json"),
        (NAMED_TEXT.encode("utf-16-le"), "application/fhir+json; charset=UTF-16LE"),
        (NAMED_TEXT.encode("latin-1"), 'application/json; charset="ISO-8859-1"'),
        (NAMED_TEXT.encode("cp1252"), "application/fhir+json;charset=windows-1252"),
        (NAMED_TEXT.encode(), "application/json; charset=ISO-8859-1"),
    ],
    ids=[
        "utf-8-bom",
        "utf-16-bom",
        "utf-16le-declared",
        "latin-1-declared",
        "cp1252-declared",
        "utf-8-mislabelled",
    ],
)
def test_json_in_another_charset_or_with_a_byte_order_mark_is_read(
    client: FhirClient, body: bytes, content_type: str
) -> None:
    """Each of these was "not JSON" and failed its key, but the last: UTF-8 labelled Latin-1 (a Java
    default) is still read as UTF-8, not turned into "JosÃ©"."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 200, body, content_type)
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
    assert outcome.ok, outcome.error
    assert outcome.resource == NAMED


@pytest.mark.parametrize("charset", ["base64", "rot13", "no-such-charset", "utf-8"])
def test_bytes_that_are_not_json_in_any_declared_charset_are_still_not_json(
    client: FhirClient, charset: str
) -> None:
    with FakeEhrFhir() as ehr:
        content_type = f"application/fhir+json; charset={charset}"
        ehr.add_canned("Patient/p1", 200, b"eyJyZXNvdXJjZVR5cGUiOiJQYXRpZW50In0=", content_type)
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
    assert outcome.error == f"not JSON from {ehr.base_url}/Patient/p1 (HTTP 200, {content_type})"


def test_a_redirect_is_named_without_the_credentials_or_query_of_its_location(client: FhirClient) -> None:
    """The reason quoted the Location's userinfo, which went into the log and the 412."""
    location = "https://sso-user:sso-password@login.example.org:8443/authorize?session=abc123"
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 302, b"", "text/plain", headers=(("Location", location),))
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
        assert len(ehr.seen) == 1
    shown = "https://login.example.org:8443/authorize"
    assert outcome.error == f"HTTP 302 from {ehr.base_url}/Patient/p1: redirect to {shown} not followed"


@contextmanager
def _answering_raw(answer: bytes) -> Iterator[str]:
    """A loopback server that answers every request with ``answer``, byte for byte, then closes: what a
    broken proxy, a non-HTTP service on the FHIR port, or a server that dies mid-answer sends."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(65536)
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"resourceType":',
            "ended before the length it announced",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "is not valid HTTP (a malformed chunk)",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
            "is not valid HTTP (a header or status line too long)",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "is not valid HTTP (no status line)"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 200 + b"\r\n", "is not valid HTTP (its headers)"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            "is not valid HTTP (its headers)",
        ),
    ],
    ids=["cut-short", "bad-chunk", "long-header", "not-http", "too-many-headers", "two-lengths"],
)
def test_an_answer_that_is_not_valid_http_is_named_as_such(
    client: FhirClient, answer: bytes, reason: str
) -> None:
    """Each was "request to … failed: ConnectionError" (or ChunkedEncodingError, InvalidHeader), which
    sent an integrator looking at the network rather than at the server."""
    with _answering_raw(answer) as base:
        outcome = client.fetch_all(base, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
    assert outcome.error == f"the answer from {base}/Patient/p1 {reason}"
    assert outcome.requests == 1


def _page_to(next_url: str | None, n: int) -> dict:
    page = _searchset(({**OBSERVATION, "id": f"o{n}"}, "match"))
    if next_url is not None:
        page["link"] = [{"relation": "next", "url": next_url}]
    return page


@pytest.mark.parametrize("spelling", ["same", "absolute", "via-second-page", "with-a-fragment"])
def test_a_next_link_that_loops_back_fails_the_key_at_once(client: FhirClient, spelling: str) -> None:
    query = "Observation?patient=p1"
    with FakeEhrFhir() as ehr:
        first = f"{ehr.base_url}/{query}"
        if spelling == "via-second-page":
            ehr.add_canned(query, 200, _page_to(f"{query}&page=2", 1))
            ehr.add_canned(f"{query}&page=2", 200, _page_to(first, 2))
        else:
            again = {"same": query, "absolute": first, "with-a-fragment": f"{query}#more"}[spelling]
            ehr.add_canned(query, 200, _page_to(again, 1))
        outcome = client.fetch_all(ehr.base_url, {"k": query}, authorization=None, budget_ms=3000)["k"]
    assert outcome.error == f"next link of {first} repeats an earlier page"
    assert outcome.requests == (2 if spelling == "via-second-page" else 1)


def test_next_links_without_end_stop_at_the_page_limit(client: FhirClient) -> None:
    """A server whose next link always names a new page (an offset that never runs out)."""
    query = "Observation?patient=p1"
    with FakeEhrFhir() as ehr:
        for n in range(1, client.max_pages + 5):
            here = query if n == 1 else f"{query}&page={n}"
            ehr.add_canned(here, 200, _page_to(f"{query}&page={n + 1}", n))
        outcome = client.fetch_all(ehr.base_url, {"k": query}, authorization=None, budget_ms=3000)["k"]
    assert outcome.ok and outcome.truncated
    assert outcome.requests == client.max_pages
    assert len(outcome.resource["entry"]) == client.max_pages


def test_medications_come_whole_from_a_server_that_ignores_count(client: FhirClient) -> None:
    """Asked for ``_count=3``, a server with a fixed page size of 1 (HAPI's default for some setups is
    small, and ``_count`` is advisory) pages them; every page is read."""
    medications = [{"resourceType": "Medication", "id": f"m{n}", "code": {"text": f"m{n}"}} for n in range(3)]
    orders = [
        {
            "resourceType": "MedicationRequest",
            "id": f"r{n}",
            "medicationReference": {"reference": f"Medication/m{n}"},
        }
        for n in range(3)
    ]
    with FakeEhrFhir() as ehr:
        ehr.add_search("Medication", medications, page_size=1)

        def fetch(queries: dict[str, str], budget: int) -> dict:
            return client.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=budget)

        followed = follow_medication_references(orders, ehr.base_url, fetch, 3000)
        assert len(ehr.seen) == 3
    assert [m["id"] for m in followed.medications] == ["m0", "m1", "m2"]


def test_an_operation_answered_with_a_searchset_is_paged_like_a_search(client: FhirClient) -> None:
    """Refusing a read answered with a searchset must not refuse ``$everything``, whose answer is one."""
    query = "Patient/p1/$everything"
    page = _searchset((PATIENT, "match"), (OBSERVATION, "match"))
    with FakeEhrFhir() as ehr:
        ehr.add_canned(query, 200, page)
        outcome = client.fetch_all(ehr.base_url, {"k": query}, authorization=None, budget_ms=3000)["k"]
    assert outcome.ok, outcome.error
    assert [e["resource"]["resourceType"] for e in outcome.resource["entry"]] == ["Patient", "Observation"]
