"""FhirClient against FHIR servers that are busy, sloppy or odd in ways real ones are.

The fake EHR answers as the servers named in each test do; where it has to change its answer between two
requests (busy, then not), a subclass here says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cds_service.fhir.client import FhirClient
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
