"""Which medication references the service follows to the EHR's FHIR server, and how it asks."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.fhir.medications import (
    IDS_PER_QUERY,
    MAX_IDS,
    dangling_medication_ids,
    local_medication_id,
    medication_queries,
)
from tests.support.json_values import json_values

SERVER = "https://ehr.example.org/fhir"


def _order(reference: str, kind: str = "MedicationRequest") -> dict[str, Any]:
    return {
        "resourceType": kind,
        "id": f"r-{reference[-6:]}",
        "medicationReference": {"reference": reference},
    }


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Medication/m1", "m1"),
        ("Medication/m1/_history/3", "m1"),
        (f"{SERVER}/Medication/m-2.b", "m-2.b"),
        (f"{SERVER}/Medication/m1/_history/3", "m1"),
        ("https://other.example.org/fhir/Medication/m1", None),
        ("https://ehr.example.org/fhir-other/Medication/m1", None),
        ("#m1", None),
        ("urn:uuid:0f4ba7a6-0e43-4e2e-8d76-3e1a1c2f2f0a", None),
        ("Substance/m1", None),
        ("Medication/", None),
        ("Medication/m1&_include=*", None),
        ("Medication/m1,m2", None),
        ("Medication/m 1", None),
        ("Medication/" + "x" * 65, None),
        ("Medication/a/b", None),
    ],
)
def test_only_references_to_a_medication_on_the_requests_own_server_are_followed(
    reference: str, expected: str | None
) -> None:
    assert local_medication_id({"reference": reference}, SERVER) == expected
    assert local_medication_id({"reference": reference}, SERVER + "/") == expected


@pytest.mark.parametrize("reference", [None, "Medication/m1", 7, {"reference": 7}, {"display": "B12"}])
def test_a_reference_of_the_wrong_shape_is_not_followed(reference: Any) -> None:
    value = reference if not isinstance(reference, str) else {"display": reference}
    assert local_medication_id(value, SERVER) is None


def test_dangling_ids_leave_out_medications_that_came_with_the_request() -> None:
    resources = [
        _order("Medication/a"),
        _order("Medication/b", "MedicationStatement"),
        _order("Medication/c", "MedicationAdministration"),
        _order("Medication/a"),
        _order("Medication/d", "MedicationDispense"),
        {"resourceType": "Medication", "id": "b"},
        {"resourceType": "Observation", "id": "o", "medicationReference": {"reference": "Medication/e"}},
        "not a resource",
        {"resourceType": "MedicationRequest", "medicationCodeableConcept": {"text": "cyanocobalamin"}},
    ]
    assert dangling_medication_ids(resources, SERVER) == ["a", "c"]


def test_a_medication_sent_after_the_record_that_names_it_still_counts_as_sent() -> None:
    assert (
        dangling_medication_ids([_order("Medication/a"), {"resourceType": "Medication", "id": "a"}], SERVER)
        == []
    )


def test_queries_ask_for_each_id_once_in_pages_that_need_no_second_page() -> None:
    ids = [f"med-{n}" for n in range(MAX_IDS + 7)]

    queries = medication_queries(ids)

    assert len(queries) == MAX_IDS // IDS_PER_QUERY
    asked: list[str] = []
    for key, query in queries.items():
        path, _, params = query.partition("?")
        parsed = parse_qs(params)
        assert path == "Medication", key
        chunk = parsed["_id"][0].split(",")
        assert parsed["_count"] == [str(len(chunk))]
        assert len(chunk) <= IDS_PER_QUERY
        asked.extend(chunk)
    assert asked == ids[:MAX_IDS]
    assert list(queries) == [f"medications-{n}" for n in range(1, len(queries) + 1)]


def test_no_ids_no_queries() -> None:
    assert medication_queries([]) == {}


REFERENCES = st.one_of(
    json_values(max_leaves=6),
    st.builds(lambda text: {"reference": text}, st.text(max_size=80)),
    st.builds(lambda text: {"reference": f"Medication/{text}"}, st.text(max_size=80)),
    st.builds(lambda text: {"reference": f"{SERVER}/Medication/{text}/_history/1"}, st.text(max_size=80)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(REFERENCES, max_size=6), st.lists(json_values(max_leaves=6), max_size=3))
def test_any_json_reads_without_error_and_yields_only_valid_ids(
    references: list[Any], junk: list[Any]
) -> None:
    """Odd shapes anywhere (a reference that is a number, a record that is a list) read as nothing to
    follow; what is followed is always an id that can go into a URL unquoted."""
    resources = [
        {"resourceType": "MedicationStatement", "id": f"s{n}", "medicationReference": reference}
        for n, reference in enumerate(references)
    ] + junk
    for ident in dangling_medication_ids(resources, SERVER):
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", ident)
        [query] = medication_queries([ident]).values()
        assert parse_qs(query.partition("?")[2]) == {"_id": [ident], "_count": ["1"]}
