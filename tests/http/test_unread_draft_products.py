"""A draft order whose product cannot be read is not passed over without a word in the log."""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient

from tests.builders import SERVICE_FOR_HOOK, cyanocobalamin_draft, hook_body

B12 = {
    "resourceType": "Medication",
    "id": "med-1",
    "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "309594"}]},
}


def _call(client: FlaskClient, hook: str, draft: dict, *extra: dict) -> tuple[int, list[str]]:
    body = hook_body(hook)
    body["context"]["draftOrders"]["entry"] = [{"resource": draft}, *({"resource": r} for r in extra)]
    response = client.post(f"/cds-services/{SERVICE_FOR_HOOK[hook]}", json=body)
    return response.status_code, [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]


def _by_reference(reference: dict) -> dict:
    draft = cyanocobalamin_draft()
    del draft["medicationCodeableConcept"]
    draft["medicationReference"] = reference
    return draft


def _unread_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "draft order(s) name their medication only" in r.getMessage()]


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_a_draft_named_only_by_an_unsent_medication_is_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, hook: str
) -> None:
    """No fhirServer to fetch it from: the call is answered (no card about the draft), and the operator
    learns why from the log; before, nothing at all said so."""
    with caplog.at_level(logging.INFO, logger="cds_service.services"):
        status, topics = _call(client, hook, _by_reference({"reference": "Medication/med-1"}))
    assert (status, topics) == (200, [])
    [line] = _unread_lines(caplog)
    assert "Medication/med-1" in line.getMessage()
    assert line.hookInstance


@pytest.mark.parametrize(
    ("draft", "extra"),
    [
        (cyanocobalamin_draft(), ()),
        (_by_reference({"reference": "Medication/med-1"}), (B12,)),
        (_by_reference({"reference": "Medication/med-1", "display": "cyanocobalamin 1 mg/mL inj"}), ()),
        ({**_by_reference({"reference": "#med-1"}), "contained": [B12]}, ()),
    ],
    ids=["coded", "medication-in-draft-orders", "reference-with-display", "contained"],
)
def test_a_draft_whose_product_can_be_read_is_not_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, draft: dict, extra: tuple
) -> None:
    with caplog.at_level(logging.INFO, logger="cds_service.services"):
        status, topics = _call(client, "order-select", draft, *extra)
    assert (status, topics) == (200, ["iron-studies-after-b12"])
    assert _unread_lines(caplog) == []
