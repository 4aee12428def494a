"""`classify` checks a search entry's patient with a shortcut for ``subject.reference`` of the usual spelling;
these cases hold it to what the general check (`_belongs_to`) decides for every other shape."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.protocol.prefetch import PrefetchState, classify, resources_of
from tests.builders import searchset

SEARCH = "Observation?patient={{context.patientId}}&code=http://loinc.org|2132-9"
WITH_PATIENT = "Observation?patient={{context.patientId}}&_include=Observation:patient"


def observation(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "o1", **elements}


@pytest.mark.parametrize(
    ("elements", "state"),
    [
        ({"subject": {"reference": "Patient/p1"}}, PrefetchState.USABLE),
        ({"subject": {"reference": "urn:uuid:p1"}}, PrefetchState.USABLE),
        ({"subject": {"reference": "https://ehr.example/fhir/Patient/p1"}}, PrefetchState.USABLE),
        ({"subject": {"reference": "Patient/p2"}}, PrefetchState.JUNK),
        ({"subject": {"reference": "Group/p1"}}, PrefetchState.JUNK),
        (
            {"subject": {"reference": "Patient/p2"}, "patient": {"reference": "Patient/p1"}},
            PrefetchState.JUNK,
        ),
        # Names no patient (or not readably): still an answer; the record decides what it may be used for.
        ({"subject": {"reference": ["Patient/p2"]}}, PrefetchState.USABLE),
        (
            {"subject": {"reference": ["Patient/p2"]}, "patient": {"reference": "Patient/p2"}},
            PrefetchState.JUNK,
        ),
        ({"subject": "Patient/p2"}, PrefetchState.USABLE),
        ({"subject": {"display": "someone"}}, PrefetchState.USABLE),
        ({}, PrefetchState.USABLE),
    ],
)
def test_a_search_entry_is_the_patients_by_every_spelling(
    elements: dict[str, Any], state: PrefetchState
) -> None:
    item = classify("k", SEARCH, {"k": searchset(observation(**elements))}, "p1")
    assert item.state is state
    if state is PrefetchState.JUNK:
        assert item.reason == "the search holds a resource of another patient (Observation)"


def test_an_included_patient_is_judged_by_its_id_not_by_a_subject() -> None:
    """A Patient is the patient by its id: a ``subject`` it should not carry cannot make another one ours."""
    other = {"resourceType": "Patient", "id": "p2", "subject": {"reference": "Patient/p1"}}
    bundle = searchset(observation(subject={"reference": "Patient/p1"}))
    bundle["entry"].append({"resource": other, "search": {"mode": "include"}})
    item = classify("k", WITH_PATIENT, {"k": bundle}, "p1")
    assert item.state is PrefetchState.JUNK
    assert item.reason == "the search holds a resource of another patient (Patient)"


@pytest.mark.parametrize("resource", [None, "x", {"id": "o1"}, {"resourceType": 5}])
def test_an_entry_that_is_no_resource_makes_the_search_junk(resource: Any) -> None:
    bundle = searchset(observation(subject={"reference": "Patient/p1"}))
    bundle["entry"].append({"resource": resource})
    item = classify("k", SEARCH, {"k": bundle}, "p1")
    assert (item.state, item.reason) == (PrefetchState.JUNK, "a Bundle entry is not a FHIR resource")


def test_resources_of_keeps_the_entries_order_and_leaves_out_what_is_no_resource() -> None:
    first, second = observation(id="a"), observation(id="b")
    bundle = searchset(first, {"resourceType": "OperationOutcome"}, second)
    bundle["entry"] += [{"resource": {"resourceType": 5}}, "junk", {"resource": []}]
    assert resources_of(bundle) == [first, second]
    assert resources_of({"resourceType": "Bundle"}) == []
