"""Entries of a Bundle linked by fullUrl become Type/id references, as a server would store them."""

from __future__ import annotations

from cds_service.fhir.bundles import resolve_full_urls, stored_as


def test_references_to_full_urls_become_type_and_id_everywhere_in_every_resource() -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "urn:uuid:aaa"},
        "hasMember": [{"reference": "urn:uuid:aaa"}, {"reference": "urn:uuid:bbb"}],
        "performer": [{"reference": "Practitioner/x"}, {"reference": "urn:uuid:unknown"}],
    }
    resolve_full_urls([("urn:uuid:aaa", patient), ("urn:uuid:bbb", observation)])
    assert observation["subject"] == {"reference": "Patient/p1"}
    assert observation["hasMember"] == [{"reference": "Patient/p1"}, {"reference": "urn:uuid:bbb"}]
    assert observation["performer"] == [{"reference": "Practitioner/x"}, {"reference": "urn:uuid:unknown"}]


def test_an_entry_without_an_id_or_full_url_is_no_target() -> None:
    linked = {"resourceType": "Encounter", "subject": {"reference": "urn:uuid:nameless"}}
    resolve_full_urls([("urn:uuid:nameless", {"resourceType": "Patient"}), (None, linked), ("", {})])
    assert linked["subject"] == {"reference": "urn:uuid:nameless"}


def test_stored_as() -> None:
    assert stored_as({"resourceType": "Patient", "id": "p1"}) == "Patient/p1"
    assert stored_as({"resourceType": "Patient", "id": ""}) is None
    assert stored_as({"resourceType": "Patient"}) is None
    assert stored_as({"id": "p1"}) is None
