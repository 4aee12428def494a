"""End to end through the app and sekmet: a medication record that names its product by a versioned
reference, or through ingredients that are Medications themselves, is read as the product it names.

The example hook requests are changed so that nothing but the Medication (in the version the order names,
or two ingredient levels below the order's Medication) says what the product is; the cards must be those
of the example as written.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.builders import REPO
from tests.fhir.test_app_fetch import (
    _call,
    _example,
    _products_by_reference,
    _topics,
    fhir_base,
    proxy,
    settings,
)
from tests.support.delay_proxy import DelayProxy
from tests.support.fhir_server import SekmetServer

__all__ = ["fhir_base", "proxy", "settings"]  # fixtures shared with test_app_fetch

pytestmark = pytest.mark.integration

EXAMPLES = ["patient-view-iron-deficiency-after-b12", "patient-view-elevated-b12-supplement"]
# A product with no B12 or iron in it, named by text only (no code to invent).
OTHER_PRODUCT = {"text": "Sodium chloride 0.9% solution for injection"}


def _records(body: dict[str, Any]) -> list[dict]:
    records = []
    for value in body["prefetch"].values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            records += [
                e["resource"] for e in value.get("entry", []) if "medicationReference" in e["resource"]
            ]
    return records


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_order_naming_a_version_is_read_as_that_version(
    name: str, client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """The order names version 1 (the B12 or supplement product); version 2 is another product. The
    current version was fetched, and the order read as the other product."""
    original = _example(REPO / "hooks" / f"{name}.json")
    body, products = _products_by_reference(original)
    versions = {}
    for product in products:
        versions[product["id"]] = fhir_server.put(product)["meta"]["versionId"]
        fhir_server.put({**product, "code": OTHER_PRODUCT})
    for record in _records(body):
        ident = record["medicationReference"]["reference"].split("/")[1]
        record["medicationReference"]["reference"] = (
            f"{fhir_base}/Medication/{ident}/_history/{versions[ident]}"
        )

    _, expected = _call(client, original)
    status, fetched = _call(client, {**body, "fhirServer": fhir_base})

    assert status == 200, fetched
    assert _topics(fetched["cards"]) == _topics(expected["cards"])
    assert sorted(r.path for r in proxy.seen) == sorted(
        f"/fhir/Medication/{p['id']}/_history/{versions[p['id']]}" for p in products
    )


@pytest.mark.parametrize("name", EXAMPLES)
def test_a_product_two_ingredient_levels_down_is_recognised(
    name: str, client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """The order's Medication is a pack of a tablet whose ingredient is the product: only the pack was
    fetched, and the order read as an unidentified medicine."""
    original = _example(REPO / "hooks" / f"{name}.json")
    body, products = _products_by_reference(original)
    for product in products:
        ident = product["id"]
        fhir_server.put({**copy.deepcopy(product), "id": f"{ident}-substance"})
        fhir_server.put(
            {
                "resourceType": "Medication",
                "id": f"{ident}-tablet",
                "code": {"text": "Tablet"},
                "ingredient": [{"itemReference": {"reference": f"Medication/{ident}-substance"}}],
            }
        )
        fhir_server.put(
            {
                "resourceType": "Medication",
                "id": ident,
                "code": {"text": "Pack"},
                "ingredient": [{"itemReference": {"reference": f"Medication/{ident}-tablet"}}],
            }
        )

    _, expected = _call(client, original)
    _, blind = _call(client, body)
    status, fetched = _call(client, {**body, "fhirServer": fhir_base})

    assert status == 200, fetched
    assert _topics(fetched["cards"]) == _topics(expected["cards"])
    assert _topics(blind["cards"]) != _topics(expected["cards"])
    assert len(proxy.seen) == 3  # one round per level
