"""Following medication references to a real FHIR server (sekmet): the version a reference names, and
ingredients that are Medications themselves, several levels down.

The codes are placeholders in the example.org system of ``tests.fhir.data``: this layer only has to bring
the right Medication; what its code means is the clinical layer's business.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cds_service.fhir.client import FhirClient
from cds_service.fhir.medications import (
    MAX_IDS,
    MAX_INGREDIENT_DEPTH,
    MAX_NOTES,
    FollowedMedications,
    MedicationIndex,
    follow_medication_references,
    ingredient_concepts,
)
from tests.fhir.data import CODE_SYSTEM
from tests.support.delay_proxy import DelayProxy
from tests.support.fake_ehr_fhir import FakeEhrFhir
from tests.support.fhir_server import SekmetServer

pytestmark = pytest.mark.integration

PATIENT = "Patient/med-ref-patient"


@pytest.fixture
def proxy(fhir_server: SekmetServer) -> Iterator[DelayProxy]:
    with DelayProxy(fhir_server.origin) as running:
        yield running


def _code(name: str) -> dict[str, Any]:
    return {"coding": [{"system": CODE_SYSTEM, "code": name}]}


def _medication(ident: str, code: str, *ingredients: str) -> dict[str, Any]:
    medication: dict[str, Any] = {"resourceType": "Medication", "id": ident, "code": _code(code)}
    if ingredients:
        medication["ingredient"] = [{"itemReference": {"reference": ref}} for ref in ingredients]
    return medication


def _order(reference: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"order-{abs(hash(reference)) % 10_000}",
        "status": "active",
        "intent": "order",
        "subject": {"reference": PATIENT},
        "medicationReference": {"reference": reference},
        **extra,
    }


def _follow(
    client: FhirClient, base: str, resources: list[dict], budget_ms: int = 5000, token: str | None = None
) -> FollowedMedications:
    authorization = f"Bearer {token}" if token else None

    def fetch(queries: dict[str, str], budget: int) -> dict:
        return client.fetch_all(base, queries, authorization=authorization, budget_ms=budget)

    return follow_medication_references(resources, base, fetch, budget_ms)


def _codes(medications: list[dict]) -> list[str]:
    return [m["code"]["coding"][0]["code"] for m in medications]


def _versioned(server: SekmetServer) -> str:
    """Medication ``m1`` in two versions, the product changed between them; the id of version 1."""
    first = server.put(_medication("m1", "product-as-ordered"))
    second = server.put(_medication("m1", "product-now"))
    assert first["meta"]["versionId"] != second["meta"]["versionId"]
    return first["meta"]["versionId"]


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_a_versioned_reference_brings_the_version_it_names(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy, absolute: bool
) -> None:
    """The reference was cut at ``/_history/`` and the current Medication searched by ``_id``: an order
    written against version 1 was read as the product version 2 describes."""
    version = _versioned(fhir_server)
    base = proxy.url("/fhir")
    reference = f"Medication/m1/_history/{version}"
    followed = _follow(fhir_client, base, [_order(f"{base}/{reference}" if absolute else reference)])
    assert _codes(followed.medications) == ["product-as-ordered"]
    assert [r.path for r in proxy.seen] == [f"/fhir/{reference}"]


def test_current_and_versioned_references_side_by_side_each_get_their_own(
    fhir_client: FhirClient, fhir_server: SekmetServer
) -> None:
    version = _versioned(fhir_server)
    orders = [_order(f"Medication/m1/_history/{version}"), _order("Medication/m1")]
    followed = _follow(fhir_client, fhir_server.base_url, orders)
    assert _codes(followed.medications) == ["product-now", "product-as-ordered"]
    index = MedicationIndex(followed.medications)
    assert _codes([index.resolve(order["medicationReference"]) for order in orders]) == [
        "product-as-ordered",
        "product-now",
    ]


def test_a_version_already_sent_is_not_fetched_and_another_version_is(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    version = _versioned(fhir_server)
    base = proxy.url("/fhir")
    current = {**_medication("m1", "product-now"), "meta": {"versionId": "99"}}
    as_sent = {**_medication("m1", "product-as-ordered"), "meta": {"versionId": version}}
    order = _order(f"Medication/m1/_history/{version}")

    assert _follow(fhir_client, base, [order, as_sent]).medications == []
    assert proxy.seen == []
    followed = _follow(fhir_client, base, [order, current])
    assert _codes(followed.medications) == ["product-as-ordered"]
    assert len(proxy.seen) == 1


def test_a_contained_medication_and_other_servers_are_never_asked_for(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    version = _versioned(fhir_server)
    contained = _order("#med1", contained=[_medication("med1", "product-contained")])
    elsewhere = [
        _order(f"https://other.example.org/fhir/Medication/m1/_history/{version}"),
        _order(f"{proxy.url('/fhir-other')}/Medication/m1/_history/{version}"),
        _order("Medication/m1/_history/1?_include=*"),
        _order("Medication/m1/_history/"),
    ]
    followed = _follow(fhir_client, proxy.url("/fhir"), [contained, *elsewhere], token="secret-token-1234")
    assert followed.medications == [] and followed.rounds == 0
    assert proxy.seen == []
    assert MedicationIndex().resolve(contained["medicationReference"], contained["contained"])["id"] == "med1"


def test_a_server_that_ignores_history_is_not_taken_at_its_word(fhir_client: FhirClient) -> None:
    """A server without version reads (or a proxy that drops the path's end) may answer with the current
    version: that is not the product the order named, so the record stays unidentified."""
    with FakeEhrFhir() as ehr:
        current = {**_medication("m1", "product-now"), "meta": {"versionId": "2"}}
        ehr.add_canned("Medication/m1/_history/1", 200, current)
        followed = _follow(fhir_client, ehr.base_url, [_order("Medication/m1/_history/1")])
        assert [r.path for r in ehr.seen] == ["/baseR4/Medication/m1/_history/1"]
    assert followed.medications == []


def test_an_ingredient_two_levels_down_is_fetched_and_read(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    """Only the record's own Medication was fetched; its ingredient Medication, and that one's, were not,
    so a product whose active part sat two levels down was read by its outer name only."""
    for medication in [
        _medication("combo", "combination-pack", "Medication/tablet"),
        _medication("tablet", "tablet", "Medication/active"),
        _medication("active", "active-substance"),
    ]:
        fhir_server.put(medication)
    followed = _follow(fhir_client, proxy.url("/fhir"), [_order("Medication/combo")])

    assert _codes(followed.medications) == ["combination-pack", "tablet", "active-substance"]
    assert followed.rounds == 3 and followed.notes == []
    combo = MedicationIndex(followed.medications).resolve({"reference": "Medication/combo"})
    concepts = ingredient_concepts(combo, MedicationIndex(followed.medications))
    assert [c["coding"][0]["code"] for c in concepts] == ["tablet", "active-substance"]


def test_ingredients_already_sent_are_read_without_asking(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    fhir_server.put(_medication("active", "active-substance"))
    sent = [
        _order("Medication/combo"),
        _medication("combo", "combination-pack", "Medication/tablet"),
        _medication("tablet", "tablet", "Medication/active"),
    ]
    followed = _follow(fhir_client, proxy.url("/fhir"), sent)
    assert _codes(followed.medications) == ["active-substance"]
    assert [r.path for r in proxy.seen] == ["/fhir/Medication?_id=active&_count=1"]


def test_a_cycle_of_ingredients_ends_where_it_closes(
    fhir_client: FhirClient,
    fhir_server: SekmetServer,
    proxy: DelayProxy,
) -> None:
    fhir_server.put(_medication("a", "product-a", "Medication/b"))
    fhir_server.put(_medication("b", "product-b", "Medication/a", "Medication/b"))
    followed = _follow(fhir_client, proxy.url("/fhir"), [_order("Medication/a")])

    assert _codes(followed.medications) == ["product-a", "product-b"]
    assert len(proxy.seen) == 2
    assert "ingredients of Medication/b lead back to Medication/a" in followed.notes
    assert "ingredients of Medication/b lead back to Medication/b" in followed.notes
    index = MedicationIndex(followed.medications)
    concepts = ingredient_concepts(index.resolve({"reference": "Medication/a"}), index)
    assert [c["coding"][0]["code"] for c in concepts] == ["product-b"]


def test_an_over_deep_chain_stops_at_the_depth_limit(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    chain = [f"level-{n}" for n in range(1, 10)]
    for ident, inner in zip(chain, [*chain[1:], None], strict=True):
        fhir_server.put(_medication(ident, ident, *([f"Medication/{inner}"] if inner else [])))
    followed = _follow(fhir_client, proxy.url("/fhir"), [_order("Medication/level-1")])

    assert _codes(followed.medications) == chain[: MAX_INGREDIENT_DEPTH + 1]
    assert len(proxy.seen) == MAX_INGREDIENT_DEPTH + 1
    last = chain[MAX_INGREDIENT_DEPTH]
    assert followed.notes == [
        f"ingredients of Medication/{last} not followed: {MAX_INGREDIENT_DEPTH} ingredient levels at most"
    ]


def test_a_slow_server_ends_the_rounds_within_the_budget(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    """Each round gets what the ones before left of one budget; the one it runs out in is a timeout the
    caller logs, the rest is not asked for."""
    fhir_server.put(_medication("combo", "combination-pack", "Medication/tablet"))
    fhir_server.put(_medication("tablet", "tablet", "Medication/active"))
    fhir_server.put(_medication("active", "active-substance", "Medication/more"))
    fhir_server.put(_medication("more", "more"))
    proxy.delay_s = 0.25
    errors: list[str] = []

    def fetch(queries: dict[str, str], budget: int) -> dict:
        outcomes = fhir_client.fetch_all(proxy.url("/fhir"), queries, authorization=None, budget_ms=budget)
        errors.extend(o.error for o in outcomes.values() if o.error)
        return outcomes

    started = time.monotonic()
    followed = follow_medication_references([_order("Medication/combo")], proxy.url("/fhir"), fetch, 600)
    elapsed = time.monotonic() - started

    assert _codes(followed.medications) == ["combination-pack", "tablet"]
    assert elapsed < 0.7, elapsed
    assert len(errors) == 1 and errors[0].startswith("timeout after"), errors
    assert len(proxy.seen) == 3


def test_nothing_is_logged_with_a_token_and_the_token_goes_only_to_the_server(
    fhir_server: SekmetServer, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeEhrFhir(token="med-ref-token-5678") as ehr:
        ehr.add_canned(
            "Medication/m1/_history/1", 200, {**_medication("m1", "p"), "meta": {"versionId": "1"}}
        )
        client = FhirClient()
        try:
            with caplog.at_level(logging.DEBUG):
                followed = _follow(
                    client, ehr.base_url, [_order("Medication/m1/_history/1")], token="med-ref-token-5678"
                )
        finally:
            client.close()
        assert [r.authorization for r in ehr.seen] == ["Bearer med-ref-token-5678"]
    assert _codes(followed.medications) == ["p"]
    assert "med-ref-token-5678" not in caplog.text


def test_a_medication_with_thousands_of_ingredients_costs_a_bounded_number_of_fetches_and_notes(
    fhir_client: FhirClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    """Every ingredient reference that led back was one more note, and the service logs each note: a
    server could fill the log with one Medication. Ingredients naming new Medications are capped by
    MAX_IDS in all."""
    ingredients = [f"Medication/a/_history/{n}" for n in range(500)] + ["Medication/a"] * 500
    ingredients += [f"Medication/new-{n}" for n in range(MAX_IDS + 50)]
    fhir_server.put(_medication("a", "product-a", *ingredients))
    followed = _follow(fhir_client, proxy.url("/fhir"), [_order("Medication/a")])

    assert followed.asked == MAX_IDS
    assert len(followed.notes) <= MAX_NOTES + 1
    assert "ingredients of Medication/a lead back to Medication/a" in followed.notes
    assert "51 Medication(s) not fetched: 200 asked for already" in followed.notes
