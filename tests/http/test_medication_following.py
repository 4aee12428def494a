"""Medications the request only refers to, followed on the EHR's FHIR server as fhir.medications does it:
the version a reference names, and ingredients below a Medication that was sent."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from tests.builders import REPO
from tests.support.fake_ehr_fhir import FakeEhrFhir

EXAMPLE = REPO / "hooks" / "patient-view-iron-deficiency-after-b12.json"
SERVICE = "/cds-services/b12-iron-patient-view"


@pytest.fixture
def ehr() -> Iterator[FakeEhrFhir]:
    with FakeEhrFhir() as server:
        yield server


def _cards(client: FlaskClient, body: dict) -> list[tuple[str, str]]:
    response = client.post(SERVICE, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [(card["summary"], card["indicator"]) for card in response.get_json()["cards"]]


def _b12_order(body: dict) -> dict:
    return body["prefetch"]["medicationRequests"]["entry"][0]["resource"]


def _by_reference(reference: str) -> tuple[dict, dict]:
    """The example with its B12 order naming the product only by ``reference``; and that product."""
    body = json.loads(EXAMPLE.read_text())
    order = _b12_order(body)
    product = {"resourceType": "Medication", "code": order.pop("medicationCodeableConcept")}
    order["medicationReference"] = {"reference": reference}
    return body, product


def test_a_versioned_reference_is_read_in_that_version(served: FlaskClient, ehr: FakeEhrFhir) -> None:
    """It was cut at /_history/ and the current Medication searched by _id (which this server, like one
    that keeps only versions, does not answer), so the B12 course went unseen."""
    expected = _cards(served, json.loads(EXAMPLE.read_text()))
    body, product = _by_reference("Medication/b12-product/_history/2")
    ehr.add_canned(
        "Medication/b12-product/_history/2", 200, {**product, "id": "b12-product", "meta": {"versionId": "2"}}
    )
    blind = _cards(served, copy.deepcopy(body))

    assert _cards(served, {**body, "fhirServer": ehr.base_url}) == expected
    assert blind != expected, (
        "without the Medication the product is unknown, so the check above means something"
    )
    assert "/baseR4/Medication/b12-product/_history/2" in [seen.path for seen in ehr.seen]


def test_an_ingredient_below_a_sent_medication_is_fetched(served: FlaskClient, ehr: FakeEhrFhir) -> None:
    """The order's own Medication was sent (as _include brings it) but names its B12 only as an
    ingredient nobody sent: only the order's own Medication was looked for, so nothing was fetched."""
    expected = _cards(served, json.loads(EXAMPLE.read_text()))
    body, product = _by_reference("Medication/kit")
    kit = {
        "resourceType": "Medication",
        "id": "kit",
        "ingredient": [{"itemReference": {"reference": "Medication/b12-product"}}],
    }
    body["prefetch"]["medicationRequests"]["entry"].append({"resource": kit, "search": {"mode": "include"}})
    ehr.add_canned(
        "Medication?_id=b12-product&_count=1",
        200,
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {**product, "id": "b12-product"}}],
        },
    )
    blind = _cards(served, copy.deepcopy(body))

    assert _cards(served, {**body, "fhirServer": ehr.base_url}) == expected
    assert blind != expected
    assert [seen.path for seen in ehr.seen] == ["/baseR4/Medication?_id=b12-product&_count=1"]
