"""The card catalogue end to end: every fixture patient through the real HTTP endpoint, with the prefetch an
EHR would build from the service's own discovery templates, gives exactly its expected topics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cds_service.app import create_app
from cds_service.config import Settings, parse_rfc3339
from cds_service.devtools.bundles import load_draft_orders, load_patient_bundle
from cds_service.devtools.hookrequest import hook_context, hook_request
from cds_service.devtools.offline import OfflineFhirServer
from cds_service.protocol.prefetch import render_template
from tests.builders import REPO, SERVICE_FOR_HOOK, assert_valid_response
from tests.live import serving

FIXTURES = REPO / "fhir_fixtures"
EXPECTATIONS = json.loads((FIXTURES / "expectations.json").read_text())
CASES = sorted(EXPECTATIONS["fixtures"].items())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("fixture-cards")
    settings = Settings(
        auth="off",
        public_base_url="http://127.0.0.1:8080",
        feedback_db=str(folder / "feedback.sqlite3"),
        state_db=str(folder / "state.sqlite3"),
        now=parse_rfc3339("now", EXPECTATIONS["now"]),
    )
    app = create_app(settings)
    with serving(app) as url:
        yield url
    app.extensions["cds"]["recorder"].close()


@pytest.fixture(scope="module")
def discovery(base: str) -> dict[str, Any]:
    return {s["id"]: s for s in requests.get(f"{base}/cds-services", timeout=10).json()["services"]}


def call(base: str, discovery: dict[str, Any], fixture: str, hook: str, order: str | None) -> dict[str, Any]:
    """Act as an EHR: render the discovered templates, answer them from the fixture, POST the hook."""
    record = load_patient_bundle(FIXTURES / fixture)
    drafts = load_draft_orders(FIXTURES / order, record.patient_id) if order else None
    context = hook_context(hook, record.patient_id, drafts)
    service = SERVICE_FOR_HOOK[hook]
    queries = {k: render_template(t, context) for k, t in discovery[service]["prefetch"].items()}
    prefetch = OfflineFhirServer(record.resources).prefetch(queries)
    response = requests.post(
        f"{base}/cds-services/{service}", json=hook_request(hook, context, prefetch), timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid_response(body)
    return body


def topics(body: dict[str, Any]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in body["cards"]]


@pytest.mark.parametrize(("fixture", "expect"), CASES, ids=[name for name, _ in CASES])
def test_fixture_gives_exactly_its_topics(base: str, discovery: dict, fixture: str, expect: dict) -> None:
    body = call(base, discovery, fixture, expect["hook"], expect.get("order"))
    got = topics(body)
    assert sorted(got) == sorted(expect["topics"]), expect["why"]
    assert not set(got) & set(expect["forbid"])
    for card in body["cards"]:
        assert len(card["summary"]) < 140
        assert card["source"]["label"] and card["detail"]


def test_every_catalogue_topic_has_a_positive_fixture() -> None:
    catalogue = {
        "iron-studies-after-b12",
        "iron-deficiency-after-b12",
        "elevated-b12-supplement-review",
        "elevated-b12-no-supplement",
        "iron-deficiency-with-high-b12",
        "combined-b12-iron-deficiency",
        "b12-not-for-high-ferritin",
        "ferritin-inflammation-check-tsat",
        "borderline-b12-check-mma",
    }
    covered = {topic for _, expect in CASES for topic in expect["topics"]}
    assert covered == catalogue


def test_accepting_the_suggestion_does_not_loop_at_order_sign(base: str, discovery: dict) -> None:
    """order-select suggests iron studies; the EHR adds the accepted ServiceRequests to the draft orders and
    fires order-sign: the same card must not come back."""
    fixture, order = "order-b12-megaloblastic.json", "orders/b12-draft.json"
    selected = call(base, discovery, fixture, "order-select", order)
    card = next(c for c in selected["cards"] if c["source"]["topic"]["code"] == "iron-studies-after-b12")
    accepted = [a["resource"] for s in card["suggestions"] for a in s["actions"] if a["type"] == "create"]
    assert accepted, "the card proposes orders"

    record = load_patient_bundle(FIXTURES / fixture)
    drafts = load_draft_orders(FIXTURES / order, record.patient_id)
    entries = list(drafts.bundle["entry"])
    for index, resource in enumerate(accepted):
        entries.append({"resource": {**resource, "id": f"accepted-{index}"}})
    context = hook_context("order-sign", record.patient_id, drafts)
    context["draftOrders"] = {**drafts.bundle, "entry": entries}
    queries = {
        k: render_template(t, context) for k, t in discovery["b12-iron-order-sign"]["prefetch"].items()
    }
    prefetch = OfflineFhirServer(record.resources).prefetch(queries)
    body = requests.post(
        f"{base}/cds-services/b12-iron-order-sign",
        json=hook_request("order-sign", context, prefetch),
        timeout=30,
    ).json()
    assert_valid_response(body)
    assert "iron-studies-after-b12" not in topics(body)

    without_acceptance = call(base, discovery, fixture, "order-sign", order)
    assert "iron-studies-after-b12" in topics(without_acceptance), "control: order-sign alone does fire"


def test_iron_deficiency_on_injections_for_pernicious_anaemia_says_keep_b12(
    base: str, discovery: dict
) -> None:
    """The clinician reads the summary first: it must not ask to review B12 for a patient who needs it for
    life, and nothing on the card may stop the injections."""
    body = call(base, discovery, "iron-deficiency-on-b12-for-pernicious-anaemia.json", "patient-view", None)
    (card,) = body["cards"]
    assert "keep B12" in card["summary"] and "review B12" not in card["summary"]
    assert "keep B12 therapy" in card["detail"] and "usually reflects supplements" not in card["detail"]
    kinds = {a["type"] for s in card.get("suggestions", ()) for a in s["actions"]}
    assert kinds <= {"create"}
