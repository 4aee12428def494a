"""The memory budget of FHIR answers held at once in a worker process (``cds_service.fhir.memory``)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cds_service.fhir import client as client_module
from cds_service.fhir.client import DEFAULT_MAX_RESPONSE_BYTES, FhirClient
from cds_service.fhir.decoding import structural_tokens
from cds_service.fhir.medications import follow_medication_references
from cds_service.fhir.memory import (
    DEFAULT_FETCH_MEMORY_BYTES,
    PROCESS_MEMORY,
    MemoryBudget,
    Reservation,
    parse_need,
)
from tests.fhir import memory_probe
from tests.support.fake_ehr_fhir import Canned, FakeEhrFhir

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
SANDBOX = Path(__file__).resolve().parents[1] / "data" / "smart-sandbox-r4"
PATIENT = {"resourceType": "Patient", "id": "p1"}
SEARCH = "Observation?patient=p1"


class RecordingBudget(MemoryBudget):
    """A budget that counts its reservations and give-backs and keeps the most it held."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.takes = 0
        self.gives = 0
        self.peak = 0

    def take(self, at_least: int, up_to: int) -> int:
        granted = super().take(at_least, up_to)
        self.takes += 1
        self.peak = max(self.peak, self.held)
        return granted

    def give_back(self, amount: int) -> None:
        self.gives += bool(amount)
        super().give_back(amount)


def _observation(n: int) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"o{n}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-01-02T03:04:05Z",
        "valueQuantity": {"value": 13.2, "unit": "g/dL", "system": "http://unitsofmeasure.org"},
    }


def _page(count: int, *, start: int = 0, next_url: str | None = None) -> bytes:
    """A searchset of ``count`` Observations (about 330 bytes each)."""
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": _observation(n), "search": {"mode": "match"}} for n in range(start, start + count)
        ],
    }
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return json.dumps(bundle).encode()


def _need(body: bytes) -> int:
    return parse_need(len(body), structural_tokens(body))


def _settled(budget: MemoryBudget, within_s: float = 5.0) -> int:
    """What ``budget`` holds once every fetch thread still running has stopped (or ``within_s`` passed)."""
    deadline = time.monotonic() + within_s
    while budget.held and time.monotonic() < deadline:
        time.sleep(0.01)
    return budget.held


@pytest.fixture
def ehr() -> Iterator[FakeEhrFhir]:
    with FakeEhrFhir() as fake:
        fake.add_canned("Patient/p1", 200, PATIENT)
        yield fake


def test_budget_grants_what_is_free_and_refuses_below_the_least() -> None:
    budget = MemoryBudget(100)
    assert budget.take(10, 30) == 30
    assert budget.take(50, 500) == 70  # all that is free, at least 50
    assert budget.take(1, 1) == 0
    assert (budget.held, budget.refused) == (100, 1)
    held = Reservation(budget)
    budget.give_back(40)
    assert held.take(20, 20) == 20
    held.give_back(50)  # never more than it holds
    assert (held.amount, budget.held) == (0, 60)
    held.take(5, 5)
    held.release()
    held.release()
    assert (held.amount, budget.held) == (0, 60)


def test_one_budget_per_process_shared_by_every_client_and_reset_in_a_forked_child() -> None:
    """A gunicorn worker forked while its parent held some of the budget starts with all of it."""
    assert FhirClient().memory is PROCESS_MEMORY
    assert FhirClient().memory is FhirClient().memory
    assert PROCESS_MEMORY.take(MIB, MIB) == MIB
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once
            os.write(write, str(PROCESS_MEMORY.held).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        assert os.read(read, 100) == b"0"
        os.close(read)
    finally:
        PROCESS_MEMORY.give_back(MIB)


def test_an_ordinary_call_takes_one_reservation_a_body_and_gives_all_back_when_it_returns(
    ehr: FakeEhrFhir,
) -> None:
    """The cost on the normal path: one lock a body (three bodies of more than one 64 KiB piece here) and
    one a key when the answers leave the client; nothing held after."""
    page_2 = f"{ehr.base_url}/Observation?patient=p1&page=2"
    first, second = _page(300, next_url=page_2), _page(300, start=300)
    assert len(first) > 64 * 1024
    ehr.add_canned(SEARCH, 200, first)
    ehr.add_canned("Observation?patient=p1&page=2", 200, second)
    ehr.add_canned("Condition?patient=p1", 200, {"resourceType": "Bundle", "type": "searchset"})
    budget = RecordingBudget(64 * MIB)
    fhir = FhirClient(memory=budget)
    try:
        queries = {"patient": "Patient/p1", "labs": SEARCH, "conditions": "Condition?patient=p1"}
        outcomes = fhir.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=3000)
    finally:
        fhir.close()
    assert all(outcome.ok for outcome in outcomes.values()), outcomes
    assert len(outcomes["labs"].resource["entry"]) == 600
    assert budget.takes == 4  # Patient, two pages, the empty search
    assert budget.gives == 3
    assert budget.held == 0
    assert budget.peak >= _need(first) + _need(second)


def test_an_answer_the_budget_has_no_room_for_fails_its_key_and_the_others_are_read(ehr: FakeEhrFhir) -> None:
    big = _page(3000)  # ~1 MB, which needs ~9 MB once parsed
    ehr.add_canned(SEARCH, 200, big)
    budget = MemoryBudget(4 * MIB)
    fhir = FhirClient(memory=budget)
    try:
        queries = {"patient": "Patient/p1", "labs": SEARCH}
        outcomes = fhir.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=3000)
    finally:
        fhir.close()
    assert outcomes["patient"].ok
    assert outcomes["labs"].resource is None
    assert outcomes["labs"].error.startswith(
        f"response from {ehr.base_url}/{SEARCH} not read: the FHIR answers this worker holds at once "
        "would need more than its 4 MiB of memory ("
    ), outcomes["labs"].error
    assert budget.held == 0


def test_the_budget_is_shared_with_what_other_calls_hold(ehr: FakeEhrFhir) -> None:
    body = _page(600)  # ~200 KB, one ordinary reservation of ~2 MB
    ehr.add_canned(SEARCH, 200, body)
    budget = MemoryBudget(8 * MIB)
    other_call = Reservation(budget)
    other_call.take(7 * MIB, 7 * MIB)
    fhir = FhirClient(memory=budget)
    try:
        refused = fhir.fetch_all(ehr.base_url, {"labs": SEARCH}, authorization=None, budget_ms=3000)["labs"]
        assert refused.error is not None and refused.error.endswith("of memory (7 MiB held now)"), (
            refused.error
        )
        other_call.release()
        read = fhir.fetch_all(ehr.base_url, {"labs": SEARCH}, authorization=None, budget_ms=3000)["labs"]
    finally:
        fhir.close()
    assert read.ok, read.error
    assert budget.held == 0


def test_an_answer_is_counted_until_the_call_returns_it_not_only_while_it_is_read(ehr: FakeEhrFhir) -> None:
    """A key read early still holds its answer in the client while the call waits for a slower key."""
    body = _page(600)
    ehr.add_canned(SEARCH, 200, body)
    ehr.add_canned("Condition?patient=p1", 200, _page(0), stall_after=10, stall_s=0.6)
    budget = MemoryBudget(64 * MIB)
    fhir = FhirClient(memory=budget)
    during: list[int] = []
    try:
        queries = {"labs": SEARCH, "conditions": "Condition?patient=p1"}
        watcher = threading.Timer(0.3, lambda: during.append(budget.held))
        watcher.start()
        outcomes = fhir.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=3000)
        watcher.join()
    finally:
        fhir.close()
    assert all(outcome.ok for outcome in outcomes.values())
    assert during[0] >= _need(body)
    assert budget.held == 0


def test_a_key_that_fails_gives_its_memory_back_at_once_not_when_the_call_ends(ehr: FakeEhrFhir) -> None:
    error_page = b"<html>" + b"x" * 1_500_000 + b"</html>"
    ehr.add_canned(SEARCH, 500, error_page, "text/html")
    ehr.add_canned("Condition?patient=p1", 200, _page(0), stall_after=10, stall_s=0.6)
    budget = RecordingBudget(64 * MIB)
    fhir = FhirClient(memory=budget)
    during: list[int] = []
    try:
        queries = {"labs": SEARCH, "conditions": "Condition?patient=p1"}
        watcher = threading.Timer(0.3, lambda: during.append(budget.held))
        watcher.start()
        outcomes = fhir.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=3000)
        watcher.join()
    finally:
        fhir.close()
    assert outcomes["labs"].status == 500
    assert budget.peak >= _need(error_page)
    assert during == [0]


class _Stop(BaseException):
    """Not an Exception: escapes the fetch thread's own handling, as an interpreter shutdown would."""


def _raise(error: BaseException) -> Callable[..., object]:
    def fail(*_args: object) -> object:
        raise error

    return fail


LARGE = _page(4500)  # ~1.5 MB: reserved as it arrives, not only at its end
NEXT = "Observation?patient=p1&page=2"


def _setup(case: str, ehr: FakeEhrFhir, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Make ``case`` happen; returns FhirClient options and the fetch's budget in ms."""
    options: dict = {"budget_ms": 3000}
    paged = _page(600, next_url=f"{ehr.base_url}/{NEXT}")
    if case == "http-error":
        ehr.add_canned(SEARCH, 500, b"<html>" + b"x" * 300_000 + b"</html>", "text/html")
    elif case == "not-json":
        ehr.add_canned(SEARCH, 200, b"<html>" + b"x" * 300_000 + b"</html>", "text/html")
    elif case == "larger-than-the-limit":
        ehr.add_canned(SEARCH, 200, LARGE)
        options["max_response_bytes"] = 1_000_000
    elif case == "no-room-left":
        ehr.add_canned(SEARCH, 200, LARGE)
        options["limit"] = 3 * MIB
    elif case == "second-page-fails":
        ehr.add_canned(SEARCH, 200, paged)
        ehr.add_canned(NEXT, 503, {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]})
    elif case == "unexpected-exception":
        ehr.add_canned(SEARCH, 200, paged)
        ehr.add_canned(NEXT, 200, _page(10))
        monkeypatch.setattr(client_module, "merge_search_pages", _raise(RuntimeError("surprise")))
    elif case == "timeout-mid-body":
        ehr.add_canned(SEARCH, 200, LARGE, stall_after=1_200_000, stall_s=3)
        options["budget_ms"] = 400
    elif case == "timeout-on-a-later-page":
        ehr.add_canned(SEARCH, 200, paged)
        ehr.add_canned(NEXT, 200, _page(10), stall_after=10, stall_s=3)
        options["budget_ms"] = 400
    elif case == "cancelled-before-it-started":
        ehr.add_canned(SEARCH, 200, LARGE, stall_after=1_200_000, stall_s=3)
        options["max_workers"] = 1  # the second key waits in the queue and is cancelled
        options["budget_ms"] = 300
    return options


CASES = [
    "http-error",
    "not-json",
    "larger-than-the-limit",
    "no-room-left",
    "second-page-fails",
    "unexpected-exception",
    "timeout-mid-body",
    "timeout-on-a-later-page",
    "cancelled-before-it-started",
]


@pytest.mark.parametrize("case", CASES)
def test_the_budget_comes_back_to_zero_after_a_failure_of_every_kind(
    case: str, ehr: FakeEhrFhir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reservation never given back would refuse a little more of every later fetch, until the worker
    read nothing at all; each failure here held memory before it failed."""
    options = _setup(case, ehr, monkeypatch)
    budget = RecordingBudget(options.pop("limit", 64 * MIB))
    budget_ms = options.pop("budget_ms")
    fhir = FhirClient(memory=budget, **options)
    try:
        queries = {"labs": SEARCH, "again": SEARCH} if case.startswith("cancelled") else {"labs": SEARCH}
        outcomes = fhir.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=budget_ms)
        assert not any(outcome.ok for outcome in outcomes.values()), outcomes
        assert _settled(budget) == 0
        assert budget.peak > 0
        if case.startswith("cancelled"):
            assert outcomes["again"].requests == 0
    finally:
        fhir.close()


def test_the_budget_comes_back_to_zero_when_the_call_itself_is_interrupted(
    ehr: FakeEhrFhir, monkeypatch: pytest.MonkeyPatch
) -> None:
    ehr.add_canned(SEARCH, 200, _page(600))
    monkeypatch.setattr(client_module, "merge_search_pages", _raise(_Stop()))
    budget = RecordingBudget(64 * MIB)
    fhir = FhirClient(memory=budget)
    try:
        with pytest.raises(_Stop):
            fhir.fetch_all(ehr.base_url, {"labs": SEARCH}, authorization=None, budget_ms=3000)
        assert _settled(budget) == 0
        assert budget.peak > 0
    finally:
        fhir.close()


def test_an_answer_asked_for_again_gives_back_what_the_first_one_held() -> None:
    """A 503 with a large error page, then the answer: the page is no longer counted when the GET is sent
    again."""
    error_page = b"<html>" + b"x" * 1_500_000 + b"</html>"
    budget = RecordingBudget(64 * MIB)
    held_when_asked: list[int] = []

    class BusyOnce(FakeEhrFhir):
        def _answer(self, path: str, query: str) -> Canned:
            held_when_asked.append(budget.held)
            if len(held_when_asked) == 1:
                return Canned(503, error_page, "text/html", (("Retry-After", "0"),))
            return super()._answer(path, query)

    fhir = FhirClient(memory=budget)
    try:
        with BusyOnce() as ehr:
            ehr.add_canned(SEARCH, 200, LARGE)
            outcome = fhir.fetch_all(ehr.base_url, {"labs": SEARCH}, authorization=None, budget_ms=3000)[
                "labs"
            ]
    finally:
        fhir.close()
    assert outcome.ok, outcome.error
    assert outcome.requests == 2
    assert held_when_asked == [0, 0]
    assert budget.peak >= _need(error_page)
    assert budget.held == 0


def _sandbox_call(ehr: FakeEhrFhir, path: Path) -> dict[str, str]:
    """The fake EHR loaded with one SMART sandbox patient, paged as the service asks (200 a page), and
    the service's prefetch queries for them; both Observation keys get every Observation (more than the
    service's codes would select)."""
    by_type: dict[str, list[dict]] = {}
    for entry in json.loads(path.read_text())["entry"]:
        resource = entry["resource"]
        by_type.setdefault(resource["resourceType"], []).append(resource)
    patient = by_type["Patient"][0]
    ehr.add_canned(f"Patient/{patient['id']}", 200, patient)
    searched = ("Observation", "MedicationRequest", "MedicationStatement", "MedicationAdministration")
    for kind in (*searched, "Condition", "ServiceRequest"):
        ehr.add_search(kind, by_type.get(kind, []), page_size=200)
    return {
        "patient": f"Patient/{patient['id']}",
        "b12IronLabs": f"Observation?patient={patient['id']}&code=a&_count=200",
        "contextLabs": f"Observation?patient={patient['id']}&code=b&_count=200",
        "medicationRequests": f"MedicationRequest?patient={patient['id']}&_count=200",
        "medicationStatements": f"MedicationStatement?patient={patient['id']}&_count=200",
        "medicationAdministrations": f"MedicationAdministration?patient={patient['id']}&_count=200",
        "conditions": f"Condition?patient={patient['id']}&_count=200",
        "serviceRequests": f"ServiceRequest?patient={patient['id']}&_count=200",
    }


def test_the_default_budget_holds_many_calls_for_the_densest_sandbox_chart() -> None:
    """Where the default comes from: the SMART sandbox patient with the most data (351 Observations) needs
    about 7 MiB for a whole call by the budget's count; a worker's four threads at once, twice over, fit."""
    densest = max(SANDBOX.glob("*.json"), key=lambda path: path.stat().st_size)
    budget = RecordingBudget(DEFAULT_FETCH_MEMORY_BYTES)
    fhir = FhirClient(memory=budget)
    try:
        with FakeEhrFhir() as ehr:
            queries = _sandbox_call(ehr, densest)
            outcomes = fhir.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=5000)
    finally:
        fhir.close()
    assert all(outcome.ok for outcome in outcomes.values()), outcomes
    assert len(outcomes["b12IronLabs"].resource["entry"]) == 351
    assert 2 * MIB < budget.peak <= DEFAULT_FETCH_MEMORY_BYTES / 8, budget.peak / MIB


@pytest.mark.parametrize("limit", [64 * MIB, 1024])
def test_the_medication_follower_leaves_a_product_unidentified_when_the_budget_has_no_room(
    ehr: FakeEhrFhir, limit: int
) -> None:
    """Following references never refuses the call: a Medication the budget had no room for stays an
    unidentified product, and the fetch's outcome says why (the service logs it)."""
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "cyanocobalamin"}}
    ehr.add_search("Medication", [medication], page_size=50)
    order = {
        "resourceType": "MedicationRequest",
        "id": "r1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": {"reference": "Medication/m1"},
    }
    budget = MemoryBudget(limit)
    fhir = FhirClient(memory=budget)
    errors: list[str] = []

    def fetch(queries: dict[str, str], budget_ms: int) -> dict:
        outcomes = fhir.fetch_all(ehr.base_url, queries, authorization=None, budget_ms=budget_ms)
        errors.extend(outcome.error for outcome in outcomes.values() if outcome.error)
        return outcomes

    try:
        followed = follow_medication_references([order], ehr.base_url, fetch, 3000)
    finally:
        fhir.close()
    assert budget.held == 0
    if limit == 1024:
        assert followed.medications == []
        assert len(errors) == 1 and " not read: the FHIR answers this worker holds at once" in errors[0]
    else:
        assert followed.medications == [medication]
        assert errors == []


def test_an_answer_as_large_as_allowed_fits_the_default_budget_with_room_to_spare() -> None:
    """A FHIR page of ``DEFAULT_MAX_RESPONSE_BYTES`` (tokens as dense as the sandbox's Observation pages,
    one in ten bytes) can be read, and not only when nothing else is."""
    need = parse_need(DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_MAX_RESPONSE_BYTES // 10)
    assert need <= 0.6 * DEFAULT_FETCH_MEMORY_BYTES, need / MIB


def test_a_body_larger_than_the_default_limit_is_refused_for_its_size(ehr: FakeEhrFhir) -> None:
    """Not read to the end, and not for lack of memory: the reason names the size."""
    body = b'{"resourceType": "Patient", "id": "p1"' + b" " * DEFAULT_MAX_RESPONSE_BYTES + b"}"
    ehr.add_canned("Patient/p1", 200, body)
    fhir = FhirClient()
    try:
        outcome = fhir.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
    finally:
        fhir.close()
    assert outcome.error == f"response from {ehr.base_url}/Patient/p1 is larger than 4194304 bytes"
    assert _settled(PROCESS_MEMORY) == 0


def test_a_worker_answered_large_bodies_by_several_calls_at_once_stays_within_its_budget() -> None:
    """The resident memory of a process whose four calls of eight keys each get ~1.9 MiB searchsets at
    once: 316 to 335 MiB at its peak before the budget (about 300 MiB more than at rest), now 43 to 57 MiB
    more than at rest (the budget counts from above); what fits is still read."""
    result = memory_probe.measure(mib=2, calls=4, keys=8)
    grown_mib = result["peak_mib"] - result["before_mib"]
    assert grown_mib < DEFAULT_FETCH_MEMORY_BYTES / MIB + 32, result
    assert result["outcomes"].get("ok", 0) >= 1, result  # 4 to 9 of the 32 in practice
    assert result["held_after"] == 0, result
