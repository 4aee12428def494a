"""Which medication references the service follows to the EHR's FHIR server, and how it asks."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.fhir.client import FetchOutcome
from cds_service.fhir.medications import (
    IDS_PER_QUERY,
    MAX_IDS,
    MedicationIndex,
    MedicationRef,
    dangling_medication_ids,
    follow_medication_references,
    ingredient_concepts,
    local_medication_id,
    local_medication_reference,
    medication_queries,
    missing_medications,
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


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Medication/m1", MedicationRef("m1")),
        ("Medication/m1/_history/3", MedicationRef("m1", "3")),
        (f"{SERVER}/Medication/m1/_history/v-2.a", MedicationRef("m1", "v-2.a")),
        ("Medication/m1/_history/", None),
        ("Medication/m1/_history/3/x", None),
        ("Medication/m1/_history/3?_include=*", None),
        ("Medication/m1/_history/3#frag", None),
        ("https://other.example.org/fhir/Medication/m1/_history/3", None),
    ],
)
def test_a_versioned_reference_keeps_its_version_and_only_a_valid_one(
    reference: str, expected: MedicationRef | None
) -> None:
    """The version used to be cut off and the current Medication fetched instead; a version that is not
    a FHIR id (it goes into the URL's path) makes the reference one not followed at all."""
    assert local_medication_reference({"reference": reference}, SERVER) == expected
    if expected is not None:
        suffix = f"/_history/{expected.version}" if expected.version else ""
        assert expected.read_query() == f"Medication/{expected.ident}{suffix}"


def test_the_index_finds_the_version_a_reference_names() -> None:
    current = {"resourceType": "Medication", "id": "m1", "meta": {"versionId": "3"}, "code": {"text": "now"}}
    old = {"resourceType": "Medication", "id": "m1", "meta": {"versionId": "2"}, "code": {"text": "then"}}
    unsaid = {"resourceType": "Medication", "id": "m2", "code": {"text": "unsaid"}}
    index = MedicationIndex([current, unsaid])
    index.add(old, by_version=True)
    assert index.resolve({"reference": "Medication/m1"}) is current
    assert index.resolve({"reference": f"{SERVER}/Medication/m1/_history/2"}) is old
    assert index.resolve({"reference": "Medication/m1/_history/7"}) is None
    assert index.resolve({"reference": "Medication/m2/_history/7"}) is unsaid
    assert index.resolve({"reference": "Substance/m1"}) is None
    fetched_by_version_only = MedicationIndex()
    fetched_by_version_only.add(old, by_version=True)
    assert fetched_by_version_only.resolve({"reference": "Medication/m1"}) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values(max_leaves=8), max_size=4), st.lists(REFERENCES, max_size=4))
def test_ingredients_of_any_shape_read_without_error(junk: list[Any], references: list[Any]) -> None:
    """Medications of odd shapes, ingredients that are not objects, references of any kind: read as
    nothing, never an exception, and each Medication at most once."""
    medications = [
        {"resourceType": "Medication", "id": f"m{n}", "ingredient": [{"itemReference": ref}, *junk]}
        for n, ref in enumerate(references)
    ]
    index = MedicationIndex([*medications, *junk])
    for medication in medications:
        concepts = ingredient_concepts(medication, index)
        assert len(concepts) <= len(medications) + len(junk) * len(medications)


def test_missing_medications_are_those_a_record_leads_to_through_what_was_sent() -> None:
    """What tells the service whether following is needed at all: ``dangling_medication_ids`` saw a
    record's own Medication only, so one sent with an ingredient nobody sent, or sent in another version
    than the record names, needed nothing fetched."""
    sent = {
        "resourceType": "Medication",
        "id": "combo",
        "meta": {"versionId": "4"},
        "ingredient": [
            {"itemReference": {"reference": "Medication/inner"}},
            {"itemReference": {"reference": "#c"}},
        ],
    }
    assert missing_medications([_order("Medication/combo"), sent], SERVER) == [MedicationRef("inner")]
    assert missing_medications([_order("Medication/combo/_history/3"), sent], SERVER) == [
        MedicationRef("combo", "3")
    ]
    assert missing_medications([_order("Medication/combo/_history/4"), sent], SERVER) == [
        MedicationRef("inner")
    ]
    inner = {"resourceType": "Medication", "id": "inner"}
    assert missing_medications([_order("Medication/combo"), sent, inner], SERVER) == []
    assert missing_medications([_order("#m1"), _order(f"{SERVER}-other/Medication/x")], SERVER) == []


def test_looking_up_many_references_among_many_copies_of_one_medication_stays_linear() -> None:
    """A request (the prefetch is the EHR's to fill) may carry one Medication id thousands of times, in as
    many versions, and as many records naming versions of it: each look-up scanned every copy."""
    copies = [{"resourceType": "Medication", "id": "m", "meta": {"versionId": str(n)}} for n in range(10_000)]
    index = MedicationIndex(copies)
    started = time.perf_counter()
    found = [index.resolve({"reference": f"Medication/m/_history/{n}"}) for n in range(0, 10_000, 2)]
    assert time.perf_counter() - started < 0.5
    assert found[:3] == [copies[0], copies[2], copies[4]]
    assert index.resolve({"reference": "Medication/m"}) is copies[0]


def test_an_answer_far_larger_than_the_question_is_matched_in_linear_time() -> None:
    """A server that ignores ``_id`` answers every Medication search with all it has. Each of up to
    MAX_IDS references looked through the whole answer: 200 references and 100,000 Medications were
    seconds of CPU. The fetch stands in for such a server (the client's own limits are tested apart)."""
    everything = [{"resourceType": "Medication", "id": f"m{n}"} for n in range(100_000)]
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": m} for m in everything]}

    def fetch(queries: dict[str, str], budget_ms: int) -> dict[str, FetchOutcome]:
        return {key: FetchOutcome(key, query, bundle, None, 200, 1, 1.0) for key, query in queries.items()}

    orders = [_order(f"Medication/m{99_999 - n}") for n in range(MAX_IDS)]
    started = time.perf_counter()
    followed = follow_medication_references(orders, SERVER, fetch, 10_000)
    assert time.perf_counter() - started < 1.0
    assert len(followed.medications) == MAX_IDS
