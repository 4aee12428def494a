"""Prefetch: templates render like a 2.0 client renders them, and every arrival is classified."""

from __future__ import annotations

import pytest

from cds_service.protocol.prefetch import (
    PrefetchState,
    TemplateError,
    classify,
    expected_type,
    render_template,
    resources_of,
)
from tests.builders import searchset

CONTEXT = {"patientId": "p1", "userId": "Practitioner/u9", "encounterId": "e2", "draftOrders": {"x": 1}}
SEARCH = "Observation?patient={{context.patientId}}&code=http://loinc.org|2132-9"
READ = "Patient/{{context.patientId}}"


def test_render_context_and_user_tokens() -> None:
    assert render_template(SEARCH, CONTEXT) == "Observation?patient=p1&code=http://loinc.org|2132-9"
    assert render_template("Practitioner/{{userPractitionerId}}", CONTEXT) == "Practitioner/u9"
    assert render_template("Encounter/{{ context.encounterId }}", CONTEXT) == "Encounter/e2"


@pytest.mark.parametrize(
    "template",
    [
        "Patient/{{context.draftOrders}}",  # not a primitive
        "Patient/{{context.missing}}",
        "Patient/{{context.draftOrders.x}}",  # FHIRPath is 3.0, not 2.0
        "Observation?date=gt{{today()}}",
        "Patient/{{userPatientId}}",  # the user is a Practitioner
    ],
)
def test_templates_outside_2_0_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        render_template(template, CONTEXT)


def test_expected_type() -> None:
    assert expected_type(READ) == ("Patient", False)
    assert expected_type(SEARCH) == ("Observation", True)


PATIENT = {"resourceType": "Patient", "id": "p1"}
OBS = {"resourceType": "Observation", "id": "o1"}


def first_page(*resources: dict) -> dict:
    """A searchset page with a next link, as a client that does not follow paging sends it."""
    page = searchset(*resources)
    page["total"] = 500
    page["link"] = [
        {"relation": "self", "url": "https://ehr.example/fhir/Observation?patient=p1"},
        {"relation": "next", "url": "https://ehr.example/fhir?_getpages=abc&_getpagesoffset=200"},
    ]
    return page


@pytest.mark.parametrize(
    ("template", "prefetch", "state"),
    [
        (READ, {}, PrefetchState.ABSENT),
        (READ, {"k": None}, PrefetchState.EMPTY),
        (SEARCH, {"k": searchset()}, PrefetchState.EMPTY),
        (SEARCH, {"k": {"resourceType": "Bundle", "type": "searchset"}}, PrefetchState.EMPTY),
        (READ, {"k": PATIENT}, PrefetchState.USABLE),
        (SEARCH, {"k": searchset(OBS)}, PrefetchState.USABLE),
        (
            READ,
            {"k": {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "timeout"}]}},
            PrefetchState.OUTCOME,
        ),
        (SEARCH, {"k": "<html><body>502 Bad Gateway</body></html>"}, PrefetchState.JUNK),
        (SEARCH, {"k": 42}, PrefetchState.JUNK),
        (SEARCH, {"k": []}, PrefetchState.JUNK),
        (SEARCH, {"k": {"no": "type"}}, PrefetchState.JUNK),
        (SEARCH, {"k": PATIENT}, PrefetchState.JUNK),
        (READ, {"k": OBS}, PrefetchState.JUNK),
        (READ, {"k": searchset(PATIENT)}, PrefetchState.JUNK),
        (SEARCH, {"k": {"resourceType": "Bundle", "entry": "nope"}}, PrefetchState.JUNK),
        (SEARCH, {"k": {"resourceType": "Bundle", "entry": [1, 2]}}, PrefetchState.JUNK),
        # Entries that are not resources were skipped, and a search of nothing else read as empty.
        (SEARCH, {"k": {"resourceType": "Bundle", "entry": [{"resource": "<html>"}]}}, PrefetchState.JUNK),
        (
            SEARCH,
            {"k": {"resourceType": "Bundle", "entry": [{"resource": {"id": "o1"}}]}},
            PrefetchState.JUNK,
        ),
        (SEARCH, {"k": {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1"}]}}, PrefetchState.JUNK),
        (
            SEARCH,
            {"k": {**searchset(OBS), "entry": [{"resource": OBS}, {"resource": None}]}},
            PrefetchState.JUNK,
        ),
        (SEARCH, {"k": first_page(OBS)}, PrefetchState.PAGED),
        (SEARCH, {"k": first_page()}, PrefetchState.PAGED),
    ],
)
def test_classification(template: str, prefetch: dict, state: PrefetchState) -> None:
    item = classify("k", template, prefetch, "p1")
    assert item.state is state
    assert item.state.is_missing is (
        state in (PrefetchState.ABSENT, PrefetchState.OUTCOME, PrefetchState.JUNK, PrefetchState.PAGED)
    )
    if state.is_missing:
        assert item.reason


def test_a_last_page_is_an_answer() -> None:
    """Only a next link makes a page partial; self and previous links do not."""
    page = searchset(OBS)
    page["link"] = [
        {"relation": "self", "url": "https://ehr.example/fhir/Observation?patient=p1"},
        {"relation": "previous", "url": "https://ehr.example/fhir?_getpages=abc&_getpagesoffset=0"},
    ]
    assert classify("k", SEARCH, {"k": page}, "p1").state is PrefetchState.USABLE


def test_paged_reason_says_what_arrived() -> None:
    item = classify("k", SEARCH, {"k": first_page(OBS, {**OBS, "id": "o2"})}, "p1")
    assert item.resource is None, "a first page is not used as if it were the whole search"
    assert item.reason == "only the first page of a paged search was sent: 2 entries and a next link"


def test_outcome_reason_names_the_issue_codes_and_none_of_the_free_text() -> None:
    """The text is the EHR's FHIR server's: it may quote a token the service was never given, or the
    patient, and the reason goes into the log and the 412."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "security", "details": {"text": "token abc denied for Smith"}},
            {"severity": "error", "code": "not-found", "diagnostics": "Patient/p1 not found"},
            {"severity": "error", "code": "Smith John"},
            {"severity": "error"},
        ],
    }
    reason = classify("k", READ, {"k": outcome}, "p1").reason
    assert reason == "the client sent an OperationOutcome (issue codes: security, not-found, unspecified)"


def _outcome_entry(severity: str) -> dict:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": "too-costly", "diagnostics": "too costly"}],
    }
    return {"search": {"mode": "outcome"}, "resource": outcome}


@pytest.mark.parametrize("severity", ["error", "fatal"])
def test_a_search_that_reports_an_error_is_a_failed_key_not_an_empty_one(severity: str) -> None:
    """Read as data it would say "nothing on file" (no supplement, no iron studies)."""
    for bundle in (searchset(), searchset(OBS)):
        bundle["entry"].append(_outcome_entry(severity))
        item = classify("k", SEARCH, {"k": bundle}, "p1")
        assert item.state is PrefetchState.OUTCOME
        assert "too-costly" in item.reason


def test_a_warning_outcome_in_a_search_is_not_a_failure() -> None:
    bundle = searchset(OBS)
    bundle["entry"].append(_outcome_entry("warning"))
    assert classify("k", SEARCH, {"k": bundle}, "p1").state is PrefetchState.USABLE


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": "Patient/p1"},
        {"reference": "urn:uuid:p1"},
        {"reference": "https://ehr.example/fhir/Patient/p1"},
        {"display": "no reference"},
    ],
)
def test_the_patients_own_resources_are_usable(subject: dict) -> None:
    assert (
        classify("k", SEARCH, {"k": searchset({**OBS, "subject": subject})}, "p1").state
        is PrefetchState.USABLE
    )


@pytest.mark.parametrize(
    ("template", "value"),
    [
        (SEARCH, searchset({**OBS, "subject": {"reference": "Patient/p2"}})),
        (
            SEARCH,
            searchset(
                OBS, {**OBS, "id": "o2", "subject": {"reference": "https://ehr.example/fhir/Patient/p2"}}
            ),
        ),
        (
            "MedicationRequest?patient={{context.patientId}}",
            searchset({"resourceType": "MedicationRequest", "patient": {"reference": "urn:uuid:p2"}}),
        ),
        (READ, {"resourceType": "Patient", "id": "p2"}),
    ],
)
def test_another_patients_data_is_junk_not_an_empty_record(template: str, value: dict) -> None:
    item = classify("k", template, {"k": value}, "p1")
    assert item.state is PrefetchState.JUNK
    assert "patient" in item.reason


def test_resources_of_skips_outcomes_and_junk_entries() -> None:
    bundle = searchset(OBS, {"resourceType": "OperationOutcome"})
    bundle["entry"].append({"fullUrl": "no resource"})
    assert list(resources_of(bundle)) == [OBS]
    assert list(resources_of(PATIENT)) == [PATIENT]
    assert list(resources_of(None)) == []


MEDS = "MedicationRequest?patient={{context.patientId}}&_include=MedicationRequest:medication&_count=200"
ORDER = {"resourceType": "MedicationRequest", "id": "mr1", "subject": {"reference": "Patient/p1"}}
PRODUCT = {"resourceType": "Medication", "id": "m1"}


def _entries(*pairs: tuple[dict, str | None]) -> dict:
    bundle = searchset()
    bundle["entry"] = [{"resource": r, **({"search": {"mode": m}} if m else {})} for r, m in pairs]
    return bundle


@pytest.mark.parametrize(
    ("template", "bundle"),
    [
        # A Condition among an Observation search's matches would be read as a condition.
        (SEARCH, _entries((OBS, "match"), ({"resourceType": "Condition", "id": "c1"}, "match"))),
        # Included, though the template asked for nothing but its matches.
        (SEARCH, _entries((OBS, "match"), ({"resourceType": "Condition", "id": "c1"}, "include"))),
        # A batch-response a client forgot to unwrap: its search inside was skipped, the key "answered".
        (
            SEARCH,
            {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": searchset(OBS)}]},
        ),
        # What an _include brings may not be passed off as a match.
        (MEDS, _entries((ORDER, "match"), (PRODUCT, "match"))),
    ],
    ids=["condition-match", "condition-include", "batch-response", "medication-as-match"],
)
def test_a_search_holding_resources_it_did_not_ask_for_is_junk(template: str, bundle: dict) -> None:
    """Held to the rule the FHIR client holds a server's answer to (a3669b6)."""
    item = classify("k", template, {"k": bundle}, "p1")
    assert item.state is PrefetchState.JUNK
    assert "search holds a" in item.reason


@pytest.mark.parametrize("mode", ["include", None])
def test_what_an_include_asks_for_is_usable(mode: str | None) -> None:
    bundle = _entries((ORDER, "match"), (PRODUCT, mode))
    assert classify("k", MEDS, {"k": bundle}, "p1").state is PrefetchState.USABLE


def test_a_search_cut_short_without_a_next_link_is_read_but_says_so() -> None:
    """A client that stopped at _count and, told to send no next link, dropped it: the key is read as
    sent (a server's total is not always exact) with a reason the service logs."""
    bundle = searchset(OBS, {**OBS, "id": "o2"})
    bundle["total"] = 350
    item = classify("k", SEARCH, {"k": bundle}, "p1")
    assert item.state is PrefetchState.USABLE
    assert item.reason == "the search counted 350 matches and the client sent 2, with no next link"
    included = _entries((ORDER, "match"), (PRODUCT, "include"))
    included["total"] = 1
    assert classify("k", MEDS, {"k": included}, "p1").reason is None, "an included resource is no match"
    for total in (2, True, "350", None):
        bundle["total"] = total
        assert classify("k", SEARCH, {"k": bundle}, "p1").reason is None
