"""A run-ahead answer is the answer a fresh evaluation gives, for every way order-sign can differ from
order-select: who asks, the patient, the drafts, the prefetch and its envelope, the site, the clinical
clock, and what order-select read from the EHR's FHIR server rather than the request.

Each test answers order-sign twice, once through a handler that shares order-select's cache and once
through one without a cache, and compares the two (statuses, cards and their suggestions, uuids aside).
Where the stale answer would be the same as the fresh one anyway, a test also shows that the scenario
changes the answer, so that its comparison means something.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cds_service.config import Settings
from cds_service.observability import CallTrace
from cds_service.protocol.auth import AuthenticatedClient
from cds_service.protocol.request import RequestError
from cds_service.run_ahead import RunAheadCache
from cds_service.services import HookHandler, build_handler
from tests.builders import FIXED_NOW, cyanocobalamin_draft, hook_body, select_and_sign
from tests.clinical.builders import obs
from tests.support.fake_ehr_fhir import FakeEhrFhir

SELECT = "b12-iron-order-select"
SIGN = "b12-iron-order-sign"
PID = "pat-1"
EHR_A = AuthenticatedClient(iss="https://ehr-a.example", tenant="t1", fhir_servers=())


def _without_uuids(cards: list[dict]) -> list[dict]:
    plain = copy.deepcopy(cards)
    for card in plain:
        card.pop("uuid")
        for suggestion in card.get("suggestions", ()):
            suggestion.pop("uuid")
    return plain


def _outcome(
    handler: HookHandler,
    service: str,
    body: dict,
    client: AuthenticatedClient | None = None,
    trace: CallTrace | None = None,
) -> dict[str, Any]:
    """What the EHR sees, uuids aside: the status, and the cards or the refusal's reason."""
    try:
        response = handler.handle(service, copy.deepcopy(body), client, trace)
    except RequestError as error:
        return {"status": error.status, "reason": error.reason}
    return {"status": 200, "cards": _without_uuids(response["cards"])}


@dataclass(frozen=True)
class Signed:
    answer: dict[str, Any]  # order-sign through the cache order-select filled
    fresh: dict[str, Any]  # the same order-sign through a handler without a cache
    stale: dict[str, Any]  # order-sign as it would have been answered at order-select's moment
    hit: bool


def select_then_sign(
    settings: Settings,
    select: dict,
    sign: dict,
    *,
    select_at: datetime | None = None,
    sign_at: datetime | None = None,
    select_client: AuthenticatedClient | None = None,
    sign_client: AuthenticatedClient | None = None,
    between: Callable[[], object] = lambda: None,
) -> Signed:
    """order-select on one handler, ``between``, then order-sign on another sharing the same cache (two
    replicas sharing Redis, or one process later on). ``select_at`` and ``sign_at`` run each call on the
    clinical clock as the service runs it without CDS_NOW, stopped at that moment."""

    def handler(at: datetime | None, cache: RunAheadCache | None = None) -> HookHandler:
        if at is None:
            return build_handler(settings, run_ahead=cache)
        return build_handler(settings.with_overrides(now=None), run_ahead=cache, clock=lambda: at)

    cache = RunAheadCache(settings)
    stale_sign = {**copy.deepcopy(sign), "prefetch": copy.deepcopy(select["prefetch"])}
    stale_sign["context"]["draftOrders"] = copy.deepcopy(select["context"]["draftOrders"])
    stale = _outcome(handler(select_at), SIGN, stale_sign, select_client)
    handler(select_at, cache).handle(SELECT, copy.deepcopy(select), select_client)
    between()
    trace = CallTrace(service=SIGN)
    answer = _outcome(handler(sign_at, cache), SIGN, sign, sign_client, trace)
    fresh = _outcome(handler(sign_at), SIGN, sign, sign_client)
    return Signed(answer, fresh, stale, trace.run_ahead_hit)


def _bodies(labs: list[dict], drafts: list[dict] | None = None) -> tuple[dict, dict]:
    return select_and_sign(labs, patient_id=PID, drafts=drafts)


def _high_b12(days: float = 10, *, plus: timedelta = timedelta()) -> dict:
    result = obs("b12", 1200, days, pid=PID)
    result["effectiveDateTime"] = (FIXED_NOW - timedelta(days=days) + plus).isoformat()
    return result


def _topics(outcome: dict[str, Any]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in outcome.get("cards", ())]


# --- the clinical clock --------------------------------------------------------------------------------


def test_a_result_leaving_its_window_between_select_and_sign_is_not_answered_from_memory(
    settings: Settings,
) -> None:
    """A high B12 a year and a minute before midnight: in the 365-day window two minutes before midnight,
    past it two minutes after (whether windows run to the minute or count calendar days)."""
    midnight = datetime(2026, 1, 16, tzinfo=UTC)
    result = obs("b12", 1200, 0, pid=PID)
    result["effectiveDateTime"] = (midnight - timedelta(days=365, minutes=1)).isoformat()
    select, sign = _bodies([result])
    signed = select_then_sign(
        settings,
        select,
        sign,
        select_at=midnight - timedelta(minutes=2),
        sign_at=midnight + timedelta(minutes=2),
    )
    assert _topics(signed.stale) == ["elevated-b12-supplement-review"]
    assert _topics(signed.fresh) != _topics(signed.stale), "the window's end changes the answer"
    assert signed.answer == signed.fresh
    assert signed.hit is False


def test_a_day_ending_between_select_and_sign_is_not_answered_from_memory(settings: Settings) -> None:
    """A suggested lab order is authored 'today': one minute either side of midnight, not the same day."""
    before = datetime(2026, 1, 15, 23, 59, 30, tzinfo=UTC)
    select, sign = _bodies([obs("b12", 150, 10, pid=PID)])
    signed = select_then_sign(settings, select, sign, select_at=before, sign_at=before + timedelta(minutes=1))
    assert signed.stale != signed.fresh, "the suggested order's date changes with the day"
    assert signed.answer == signed.fresh
    assert signed.hit is False


def test_a_clock_that_moves_without_crossing_a_window_is_still_answered_from_memory(
    settings: Settings,
) -> None:
    select, sign = _bodies([_high_b12(10)])
    signed = select_then_sign(
        settings, select, sign, select_at=FIXED_NOW, sign_at=FIXED_NOW + timedelta(minutes=4)
    )
    assert signed.answer == signed.fresh
    assert _topics(signed.answer) == ["elevated-b12-supplement-review"]
    assert signed.hit is True


@pytest.mark.parametrize(
    "moved",
    [
        pytest.param(-timedelta(minutes=1), id="a clock behind order-select's"),
        pytest.param(timedelta(seconds=301), id="past the lifetime, the entry still held"),
    ],
)
def test_a_clinical_now_outside_the_span_checked_at_select_is_a_miss(
    settings: Settings, moved: timedelta
) -> None:
    """A replica whose clock is behind, or a read after the lifetime the findings were checked for (a
    store's own expiry runs on another clock: the process's monotonic one, or Redis's)."""
    select, sign = _bodies([_high_b12(10)])
    signed = select_then_sign(settings, select, sign, select_at=FIXED_NOW, sign_at=FIXED_NOW + moved)
    assert signed.answer == signed.fresh
    assert signed.hit is False


def test_replicas_pinned_to_two_moments_do_not_share_entries(settings: Settings) -> None:
    """With CDS_NOW the clinical clock stands still, so an entry holds for that moment only."""
    select, sign = _bodies([_high_b12(10)])
    cache = RunAheadCache(settings)
    build_handler(settings, run_ahead=cache).handle(SELECT, select)
    for now, hit in ((FIXED_NOW, True), (FIXED_NOW + timedelta(seconds=1), False)):
        trace = CallTrace(service=SIGN)
        build_handler(settings.with_overrides(now=now), run_ahead=cache).handle(
            SIGN, copy.deepcopy(sign), None, trace
        )
        assert trace.run_ahead_hit is hit


def test_the_real_clock_still_hits(settings: Settings) -> None:
    """Without CDS_NOW, order-select checks its findings for the whole lifetime ahead and order-sign reads
    them moments later."""
    live = settings.with_overrides(now=None)
    today = datetime.now(UTC)
    result = obs("b12", 1200, 10, pid=PID)
    result["effectiveDateTime"] = (today - timedelta(days=10)).isoformat()
    select, sign = _bodies([result])
    for body in (select, sign):
        body["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"] = today.date().isoformat()
    signed = select_then_sign(live, select, sign)
    assert signed.answer == signed.fresh
    assert signed.hit is True


# --- the drafts, the prefetch and its envelope -----------------------------------------------------------


def _named_draft(order_id: str, text: str) -> dict:
    draft = cyanocobalamin_draft(order_id)
    draft["medicationCodeableConcept"]["text"] = text
    return draft


ALPHA = _named_draft("draft-a", "Alpha B12 1000 mcg")
BETA = _named_draft("draft-b", "Beta B12 1000 mcg")


def test_the_same_drafts_in_another_order_are_answered_in_that_order(settings: Settings) -> None:
    """The card names the B12 products, and the suggestion removes the drafts, in the order sent."""
    select, sign = _bodies([_high_b12(10)], drafts=[ALPHA, BETA])
    sign["context"]["draftOrders"]["entry"].reverse()
    signed = select_then_sign(settings, select, sign)
    assert signed.stale != signed.fresh
    assert signed.answer == signed.fresh


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda body: body["context"]["draftOrders"]["entry"].pop(), id="a draft removed"),
        pytest.param(
            lambda body: body["context"]["draftOrders"]["entry"].append(
                {"resource": _named_draft("draft-c", "Gamma B12 1000 mcg")}
            ),
            id="a draft added",
        ),
        pytest.param(
            lambda body: body["context"]["draftOrders"]["entry"][0]["resource"][
                "medicationCodeableConcept"
            ].update(text="Alpha B12 500 mcg"),
            id="a draft's content changed, same id",
        ),
        pytest.param(
            lambda body: body["context"]["draftOrders"]["entry"][1]["resource"].update(id="draft-z"),
            id="a draft's id changed",
        ),
        pytest.param(
            lambda body: body["prefetch"]["b12IronLabs"]["entry"][0]["resource"]["valueQuantity"].update(
                value=1500
            ),
            id="a result's value changed",
        ),
        pytest.param(
            lambda body: body.update(fhirServer="https://fhir.example.org/r4"), id="a FHIR server named"
        ),
        pytest.param(
            lambda body: body["context"].update(encounterId="another-encounter"), id="another encounter"
        ),
    ],
)
def test_changed_drafts_or_data_are_answered_as_a_fresh_evaluation(
    settings: Settings, change: Callable[[dict], object]
) -> None:
    select, sign = _bodies([_high_b12(10)], drafts=[ALPHA, BETA])
    change(sign)
    signed = select_then_sign(settings, select, sign)
    assert signed.answer == signed.fresh
    assert signed.hit is False


def test_another_patient_with_the_same_data_is_answered_as_a_fresh_evaluation(settings: Settings) -> None:
    select, _ = _bodies([_high_b12(10)])
    sign = hook_body("order-sign", patient_id="pat-2")
    signed = select_then_sign(settings, select, sign)
    assert signed.answer == signed.fresh
    assert signed.hit is False


@pytest.mark.parametrize(
    "sign_client",
    [
        pytest.param(
            AuthenticatedClient(iss="https://ehr-b.example", tenant="t1", fhir_servers=()), id="client"
        ),
        pytest.param(AuthenticatedClient(iss=EHR_A.iss, tenant="t2", fhir_servers=()), id="tenant"),
        pytest.param(None, id="unauthenticated"),
    ],
)
def test_another_caller_is_answered_as_a_fresh_evaluation(
    settings: Settings, sign_client: AuthenticatedClient | None
) -> None:
    select, sign = _bodies([_high_b12(10)])
    signed = select_then_sign(settings, select, sign, select_client=EHR_A, sign_client=sign_client)
    assert signed.answer == signed.fresh
    assert signed.hit is False


def _medication_search_with(mode: str) -> dict:
    """The medications search with a Medication the way _include brings it (``include``) or as if it were
    one of the search's matches (``match``, which a MedicationRequest search cannot have)."""
    product = {"resourceType": "Medication", "id": "product-1", "code": {"text": "ferrous sulfate 200 mg"}}
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": product, "search": {"mode": mode}}],
    }


def test_a_search_entry_of_another_mode_is_answered_as_a_fresh_evaluation(settings: Settings) -> None:
    """Only a search's envelope changed: a Medication that came as an include now claims to be a match,
    which makes the search junk (refused with 412 here, with no fhirServer to fetch it from)."""
    select, sign = _bodies([_high_b12(10)])
    select["prefetch"]["medicationRequests"] = _medication_search_with("include")
    sign["prefetch"]["medicationRequests"] = _medication_search_with("match")
    signed = select_then_sign(settings, select, sign)
    assert signed.fresh["status"] == 412
    assert signed.answer == signed.fresh


def test_a_search_sent_as_its_first_page_is_answered_as_a_fresh_evaluation(settings: Settings) -> None:
    """The same results, but now with a next link: only a first page, which is not an answer."""
    select, sign = _bodies([_high_b12(10)])
    sign["prefetch"]["b12IronLabs"]["link"] = [
        {"relation": "next", "url": "https://fhir.example.org/Observation?page=2"}
    ]
    signed = select_then_sign(settings, select, sign)
    assert signed.fresh["status"] == 412
    assert signed.answer == signed.fresh


# --- what order-select read from the EHR's FHIR server --------------------------------------------------


@pytest.fixture
def ehr() -> Iterator[FakeEhrFhir]:
    with FakeEhrFhir() as server:
        yield server


LOW_FERRITIN = obs("ferritin", 8, 0.05, pid=PID)


def test_results_fetched_at_select_that_change_before_sign_are_fetched_again(
    settings: Settings, ehr: FakeEhrFhir
) -> None:
    """The EHR sent no B12/iron search, so order-select fetched it; a ferritin resulted before order-sign."""
    allowed = settings.with_overrides(allowed_fhir_servers=(ehr.base_url,))
    select, sign = _bodies([])
    for body in (select, sign):
        del body["prefetch"]["b12IronLabs"]
        body["fhirServer"] = ehr.base_url
    ehr.add_search("Observation", [_high_b12(10)], page_size=50)

    signed = select_then_sign(
        allowed,
        select,
        sign,
        between=lambda: ehr.add_search("Observation", [_high_b12(10), LOW_FERRITIN], page_size=50),
    )
    assert "iron-deficiency-with-high-b12" in _topics(signed.fresh)
    assert "iron-deficiency-with-high-b12" not in _topics(signed.stale)
    assert signed.answer == signed.fresh
    assert signed.hit is False


def _b12_product(code: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Medication", "id": "prod", "code": code}}],
    }


CYANOCOBALAMIN = cyanocobalamin_draft()["medicationCodeableConcept"]


def test_a_medication_fetched_at_select_that_changes_before_sign_is_fetched_again(
    settings: Settings, ehr: FakeEhrFhir
) -> None:
    """The draft names its product only by reference; order-select read it from the server, and the
    Medication was corrected (it is not B12) before order-sign."""
    allowed = settings.with_overrides(allowed_fhir_servers=(ehr.base_url,))
    draft = cyanocobalamin_draft()
    del draft["medicationCodeableConcept"]
    draft["medicationReference"] = {"reference": "Medication/prod"}
    select, sign = _bodies([_high_b12(10)], drafts=[draft])
    for body in (select, sign):
        body["fhirServer"] = ehr.base_url
    query = "Medication?_id=prod&_count=1"
    ehr.add_canned(query, 200, _b12_product(CYANOCOBALAMIN))

    signed = select_then_sign(
        allowed,
        select,
        sign,
        between=lambda: ehr.add_canned(query, 200, _b12_product({"text": "ferrous sulfate 200 mg tablet"})),
    )
    assert _topics(signed.stale) == ["elevated-b12-supplement-review"]
    assert signed.stale != signed.fresh
    assert signed.answer == signed.fresh
    assert signed.hit is False


# --- card uuids ----------------------------------------------------------------------------------------


def test_every_answer_from_memory_has_its_own_card_and_suggestion_uuids(settings: Settings) -> None:
    """CDS Hooks 2.0: a card's uuid names that card in feedback; the issued-card record keeps each one
    with its topic. Two order-sign answers from one entry must not share a card or suggestion uuid."""
    issued: list[tuple[str, str]] = []
    handler = build_handler(
        settings, run_ahead=RunAheadCache(settings), on_cards=lambda service, cards: issued.extend(cards)
    )
    select, sign = _bodies([_high_b12(10)], drafts=[ALPHA, BETA])
    responses = [handler.handle(SELECT, copy.deepcopy(select))]
    for _ in range(2):
        trace = CallTrace(service=SIGN)
        responses.append(handler.handle(SIGN, copy.deepcopy(sign), None, trace))
        assert trace.run_ahead_hit is True
    cards = [card for response in responses for card in response["cards"]]
    uuids = [card["uuid"] for card in cards] + [
        s["uuid"] for card in cards for s in card.get("suggestions", ())
    ]
    assert len(cards) == 3 and len(uuids) > len(cards), "cards with suggestions in every answer"
    assert len(set(uuids)) == len(uuids)
    assert all(str(uuid.UUID(value)) == value for value in uuids)
    assert issued == [(card["uuid"], card["source"]["topic"]["code"]) for card in cards]


# --- threads -------------------------------------------------------------------------------------------


def test_concurrent_selects_and_signs_for_many_patients_each_get_their_own_answer(settings: Settings) -> None:
    """gthread workers share one cache between threads: 8 threads each order-select and order-sign 40
    patients whose data alternate between two answers, with room for only 16 entries, so that entries are
    pushed out while other threads read. Every order-sign is the fresh answer for its own patient."""
    handler = build_handler(settings, run_ahead=RunAheadCache(settings, max_entries=16))
    fresh = build_handler(settings)
    expected: dict[int, dict] = {}

    def bodies(n: int) -> tuple[dict, dict]:
        result = obs("b12", 1200 if n % 2 else 150, 10, pid=f"pat-{n}")
        result["id"] = "b12-result"
        return select_and_sign([result], patient_id=f"pat-{n}")

    for n in range(2):
        expected[n] = _outcome(fresh, SIGN, bodies(n)[1])
    assert _topics(expected[0]) != _topics(expected[1]), "the two kinds of patient are answered differently"

    def work(thread: int) -> list[tuple[int, bool, list[str], bool]]:
        seen = []
        for i in range(40):
            n = thread * 40 + i
            select, sign = bodies(n)
            handler.handle(SELECT, select)
            trace = CallTrace(service=SIGN)
            answer = _outcome(handler, SIGN, sign, None, trace)
            seen.append((n, answer == _outcome(fresh, SIGN, sign), _topics(answer), trace.run_ahead_hit))
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [item for part in pool.map(work, range(8)) for item in part]
    assert [n for n, same, _, _ in results if not same] == []
    assert all(topics == _topics(expected[n % 2]) for n, _, topics, _ in results)
    assert any(hit for *_, hit in results), "some order-signs were answered from memory"
