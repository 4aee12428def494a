"""Builders for hook requests and checks of responses, shared by every test module."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_service.protocol.cards import find_empty_values
from cds_service.protocol.schemas import validator

REPO = Path(__file__).resolve().parent.parent
SMART_PATIENTS = REPO / "tests" / "data" / "smart-sandbox-r4"
FIXED_NOW = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def empty_prefetch(patient_id: str = "pat-1") -> dict[str, Any]:
    """Every prefetch key answered with 'nothing found', as a client that ran the queries would send."""
    return {
        "patient": {
            "resourceType": "Patient",
            "id": patient_id,
            "gender": "female",
            "birthDate": "1960-04-02",
        },
        "b12IronLabs": searchset(),
        "contextLabs": searchset(),
        "medicationRequests": searchset(),
        "medicationStatements": searchset(),
        "medicationAdministrations": searchset(),
        "conditions": searchset(),
        "serviceRequests": searchset(),
    }


def cyanocobalamin_draft(order_id: str = "draft-b12", patient_id: str = "pat-1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "309594",
                    "display": "cyanocobalamin 1000 MCG/ML Injectable Solution",
                }
            ],
            "text": "cyanocobalamin 1000 mcg/mL injection",
        },
        "authoredOn": FIXED_NOW.date().isoformat(),
    }


def hook_body(hook: str = "patient-view", *, patient_id: str = "pat-1", **overrides: Any) -> dict[str, Any]:
    """A valid request for `hook`; keyword arguments replace top-level fields (None removes one)."""
    context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": patient_id}
    if hook != "patient-view":
        draft = cyanocobalamin_draft(patient_id=patient_id)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
        if hook == "order-select":
            context["selections"] = ["MedicationRequest/draft-b12"]
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": empty_prefetch(patient_id),
    }
    for key, value in overrides.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def select_and_sign(
    labs: Sequence[dict[str, Any]],
    *,
    patient_id: str = "pat-1",
    drafts: Sequence[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An order-select and the order-sign that follows it, ``labs`` the matches of their B12/iron search and
    ``drafts`` (default: one cyanocobalamin draft) their draft orders, the first selected: the pair whose
    second call a run-ahead entry of the first may answer."""
    bodies = []
    for hook in ("order-select", "order-sign"):
        body = hook_body(hook, patient_id=patient_id)
        body["prefetch"]["b12IronLabs"] = searchset(*copy.deepcopy(list(labs)))
        if drafts is not None:
            body["context"]["draftOrders"]["entry"] = [{"resource": copy.deepcopy(d)} for d in drafts]
            if hook == "order-select":
                body["context"]["selections"] = [f"MedicationRequest/{drafts[0]['id']}"]
        bodies.append(body)
    return bodies[0], bodies[1]


def card_summaries(response: dict[str, Any]) -> list[tuple[str, str]]:
    """Each card of a response by its topic and summary: what two answers to one request must share (their
    uuids never do)."""
    return [(card["source"]["topic"]["code"], card["summary"]) for card in response["cards"]]


SERVICE_FOR_HOOK = {
    "patient-view": "b12-iron-patient-view",
    "order-select": "b12-iron-order-select",
    "order-sign": "b12-iron-order-sign",
}


def assert_valid_response(body: Any) -> None:
    """The response schema plus the standard's no-empty-values rule, for every response a test sees."""
    errors = sorted(validator("response").iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    # `"cards": []` is the standard's answer when there is nothing to say; inside a card nothing is empty.
    for index, card in enumerate(body["cards"]):
        assert find_empty_values(card) == [], f"card {index}"
