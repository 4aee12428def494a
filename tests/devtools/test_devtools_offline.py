"""The offline FHIR evaluator answers the prefetch subset the way a FHIR server does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cds_service.devtools.bundles import bundle_resources
from cds_service.devtools.offline import OfflineFhirServer, OfflineQueryError, parse_fhir_instant

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _obs(oid: str, code: str, when: str | None, status: str = "final", subject: str = "Patient/p1") -> dict:
    obs = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 1, "unit": "ng/mL"},
    }
    if when:
        obs["effectiveDateTime"] = when
    return obs


@pytest.fixture
def server() -> OfflineFhirServer:
    resources = [
        {"resourceType": "Patient", "id": "p1"},
        {"resourceType": "Patient", "id": "p2"},
        _obs("b12-old", "2132-9", "2024-01-10"),
        _obs("b12-new", "2132-9", "2025-06-01T08:30:00+02:00"),
        _obs("ferritin", "2276-4", "2025-03-01"),
        _obs("mcv", "787-2", "2025-07-01"),
        _obs("b12-prelim", "2132-9", "2025-07-02", status="preliminary"),
        _obs("b12-undated", "2132-9", None),
        _obs("b12-other-patient", "2132-9", "2025-08-01", subject="Patient/p2"),
        {
            "resourceType": "Observation",
            "id": "b12-wrong-system",
            "status": "final",
            "code": {"coding": [{"system": "http://example.org/local", "code": "2132-9"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2025-09-01",
        },
        {
            "resourceType": "Medication",
            "id": "med1",
            "code": {"coding": [{"system": RXNORM, "code": "309594"}]},
        },
        {
            "resourceType": "Medication",
            "id": "med-unused",
            "code": {"coding": [{"system": RXNORM, "code": "1"}]},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr-ref",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": "Medication/med1"},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr-ref-2",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": "Medication/med1"},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr-concept",
            "status": "stopped",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "310325"}]},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "Condition",
            "id": "c-active",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "Condition",
            "id": "c-resolved",
            "clinicalStatus": {"coding": [{"code": "resolved"}]},
            "code": {"text": "y"},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "ServiceRequest",
            "id": "sr-active",
            "status": "active",
            "intent": "order",
            "code": {"text": "z"},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "ServiceRequest",
            "id": "sr-done",
            "status": "completed",
            "intent": "order",
            "code": {"text": "z"},
            "subject": {"reference": "Patient/p1"},
        },
    ]
    return OfflineFhirServer(resources)


def _ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def test_instance_read_returns_the_resource_or_none(server: OfflineFhirServer) -> None:
    assert server.query("Patient/p1") == {"resourceType": "Patient", "id": "p1"}
    assert server.query("Patient/nobody") is None


def test_code_filter_needs_system_and_code_and_takes_alternatives(server: OfflineFhirServer) -> None:
    bundle = server.query(f"Observation?patient=p1&code={LOINC}|2132-9")
    assert set(_ids(bundle)) == {"b12-old", "b12-new", "b12-prelim", "b12-undated"}
    both = server.query(f"Observation?patient=p1&code={LOINC}|2276-4,{LOINC}|787-2")
    assert set(_ids(both)) == {"ferritin", "mcv"}
    any_system = server.query("Observation?patient=p1&code=2132-9")
    assert "b12-wrong-system" in _ids(any_system)


def test_url_encoded_bar_is_decoded(server: OfflineFhirServer) -> None:
    bundle = server.query("Observation?patient=Patient%2Fp1&code=http%3A%2F%2Floinc.org%7C2276-4")
    assert _ids(bundle) == ["ferritin"]


def test_patient_filter_keeps_other_patients_out(server: OfflineFhirServer) -> None:
    bundle = server.query(f"Observation?patient=p2&code={LOINC}|2132-9")
    assert _ids(bundle) == ["b12-other-patient"]
    assert bundle["total"] == 1


def test_sort_newest_first_with_undated_last_and_count_pages(server: OfflineFhirServer) -> None:
    bundle = server.query(f"Observation?patient=p1&code={LOINC}|2132-9&_sort=-date")
    assert _ids(bundle) == ["b12-prelim", "b12-new", "b12-old", "b12-undated"]
    ascending = server.query(f"Observation?patient=p1&code={LOINC}|2132-9&_sort=date")
    assert _ids(ascending) == ["b12-old", "b12-new", "b12-prelim", "b12-undated"]
    paged = server.query(f"Observation?patient=p1&code={LOINC}|2132-9&_sort=-date&_count=2")
    assert _ids(paged) == ["b12-prelim", "b12-new"]
    assert paged["total"] == 4
    relations = {link["relation"]: link["url"] for link in paged["link"]}
    assert "_offset=2" in relations["next"]
    whole = server.query(f"Observation?patient=p1&code={LOINC}|2132-9&_count=10")
    assert [link["relation"] for link in whole["link"]] == ["self"]


def test_prefetch_answers_each_search_whole(server: OfflineFhirServer) -> None:
    """A first page with a next link is refused by the service as incomplete, so the offline EHR sends
    every match in one Bundle, as an EHR that follows the paging does."""
    query = f"Observation?patient=p1&code={LOINC}|2132-9&_sort=-date&_count=2"
    answered = server.prefetch({"labs": query, "patient": "Patient/p1"})
    assert _ids(answered["labs"]) == ["b12-prelim", "b12-new", "b12-old", "b12-undated"]
    assert [link["relation"] for link in answered["labs"]["link"]] == ["self"]
    assert answered["patient"]["id"] == "p1"


def test_status_token_lists(server: OfflineFhirServer) -> None:
    final = server.query(f"Observation?patient=p1&code={LOINC}|2132-9&status=final,amended")
    assert "b12-prelim" not in _ids(final)
    assert "b12-new" in _ids(final)
    srs = server.query("ServiceRequest?patient=p1&status=draft,active,on-hold")
    assert _ids(srs) == ["sr-active"]
    conditions = server.query("Condition?patient=p1&clinical-status=active,recurrence")
    assert _ids(conditions) == ["c-active"]


def test_include_medication_adds_each_referenced_medication_once(server: OfflineFhirServer) -> None:
    bundle = server.query("MedicationRequest?patient=p1&_include=MedicationRequest:medication")
    assert set(_ids(bundle)) == {"mr-ref", "mr-ref-2", "mr-concept"}
    assert _ids(bundle, "include") == ["med1"]
    assert bundle["total"] == 3  # included resources are not counted
    medication_code = server.query(f"MedicationRequest?patient=p1&code={RXNORM}|310325")
    assert _ids(medication_code) == ["mr-concept"]


def test_searchset_shape_matches_a_server(server: OfflineFhirServer) -> None:
    empty = server.query("ServiceRequest?patient=p2")
    assert empty["resourceType"] == "Bundle" and empty["type"] == "searchset"
    assert empty["total"] == 0 and "entry" not in empty
    bundle = server.query("Condition?patient=p1")
    entry = bundle["entry"][0]
    assert entry["fullUrl"].endswith(f"/Condition/{entry['resource']['id']}")
    assert entry["search"] == {"mode": "match"}


@pytest.mark.parametrize(
    "query",
    [
        "Observation?patient=p1&value-quantity=gt5",
        "Observation?code:in=http://example.org/vs",
        "Observation?_sort=code",
        "Observation?_count=many",
        "Observation?_include=Condition:subject",
        "Patient/p1/_history/1",
    ],
)
def test_unsupported_queries_are_refused_by_name(server: OfflineFhirServer, query: str) -> None:
    with pytest.raises(OfflineQueryError):
        server.query(query)


def test_date_filters(server: OfflineFhirServer) -> None:
    recent = server.query(f"Observation?patient=p1&code={LOINC}|2132-9&date=ge2025-01-01")
    assert set(_ids(recent)) == {"b12-new", "b12-prelim"}
    old = server.query(f"Observation?patient=p1&code={LOINC}|2132-9&date=lt2025")
    assert _ids(old) == ["b12-old"]


def test_transaction_urn_uuid_references_become_type_and_id() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0f4c2a1e-0000-4000-8000-000000000001",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:0f4c2a1e-0000-4000-8000-000000000002",
                "resource": {"resourceType": "Medication", "id": "m7"},
                "request": {"method": "POST", "url": "Medication"},
            },
            {
                "fullUrl": "urn:uuid:0f4c2a1e-0000-4000-8000-000000000003",
                "resource": {
                    "resourceType": "MedicationRequest",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": "urn:uuid:0f4c2a1e-0000-4000-8000-000000000001"},
                    "medicationReference": {"reference": "urn:uuid:0f4c2a1e-0000-4000-8000-000000000002"},
                    "contained": [{"resourceType": "Basic", "subject": {"reference": "urn:uuid:unknown"}}],
                },
                "request": {"method": "PUT", "url": "MedicationRequest/mr9"},
            },
        ],
    }
    resources = bundle_resources(bundle)
    patient, medication, request = resources
    assert medication["id"] == "m7"
    assert patient["id"] == "0f4c2a1e-0000-4000-8000-000000000001"
    assert request["id"] == "mr9"
    assert request["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert request["medicationReference"] == {"reference": "Medication/m7"}
    assert request["contained"][0]["subject"] == {"reference": "urn:uuid:unknown"}
    server = OfflineFhirServer(resources)
    found = server.query(f"MedicationRequest?patient={patient['id']}&_include=MedicationRequest:medication")
    assert _ids(found) == ["mr9"] and _ids(found, "include") == ["m7"]
    assert "urn:uuid" not in json.dumps(bundle_resources(bundle)[2]["subject"])
    assert bundle["entry"][0]["resource"] == {"resourceType": "Patient"}  # the input is not modified


def test_smart_sandbox_bundle_resolves_every_subject() -> None:
    path = sorted(Path(__file__).parents[1].joinpath("data", "smart-sandbox-r4").glob("*.json"))[0]
    resources = bundle_resources(json.loads(path.read_text()))
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    subjects = {r["subject"]["reference"] for r in resources if "subject" in r}
    assert subjects == {f"Patient/{patient['id']}"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-06", datetime(2025, 6, 1, tzinfo=UTC)),
        (" 2025-06-01 ", datetime(2025, 6, 1, tzinfo=UTC)),
        ("2025-06-01T10:00:00+02:00", datetime(2025, 6, 1, 8, tzinfo=UTC)),
        ("2025-06-01T10:00:00Z", datetime(2025, 6, 1, 10, tzinfo=UTC)),
        ("2025-06-01T10:00:00", datetime(2025, 6, 1, 10, tzinfo=UTC)),
        ("2025-13", None),
        ("yesterday", None),
    ],
)
def test_fhir_dates_read_as_their_first_instant_in_utc(value: str, expected: datetime | None) -> None:
    moment = parse_fhir_instant(value)
    assert moment == expected
    assert moment is None or moment.tzinfo is UTC


def test_a_coding_that_is_not_a_list_matches_nothing_instead_of_raising() -> None:
    """`"code": {"coding": null}` raised TypeError in the token search (found by replaying mangled
    fixtures): the replay of that Bundle ended in a traceback."""
    odd = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p"}}
    server = OfflineFhirServer(
        [
            {"resourceType": "Patient", "id": "p"},
            {**odd, "code": {"coding": None}},
            {**odd, "id": "o2", "code": {"coding": "http://loinc.org|2132-9"}},
        ]
    )
    bundle = server.query("Observation?patient=p&code=http://loinc.org|2132-9")
    assert bundle is not None
    assert bundle["total"] == 0
