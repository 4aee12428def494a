"""Medicines, diagnoses and lab orders known only by their text: the names EHRs send, read as clinicians do.

Codes are matched first (`test_config_and_codes`); this table is what happens when no code is known, which in
real data is most of the time (local order catalogues, patient-reported supplements, free-text problem lists).
A row whose reading is a judgement (which way is safer for the cards) says why beside it.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.clinical import codes
from tests.clinical.builders import (
    by_topic,
    condition,
    obs,
    run,
)

THERAPY = {codes.B12_THERAPY}
SUPPLEMENT = {codes.B12_SUPPLEMENT}
IRON = {codes.IRON_THERAPY}
NONE: set[str] = set()

CONDITIONS: list[tuple[str, set[str]]] = [
    # B12 deficiency and pernicious anaemia in their usual spellings.
    ("Pernicious anaemia", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Pernicious anemia (disorder)", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Addisonian pernicious anaemia", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Anemia, pernicious", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Pernicious anaemia with no neurological involvement", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Pernicious anaemia on B12 injections", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("B12 deficiency anaemia", {codes.B12_DEFICIENCY}),
    ("Vitamin B12 deficiency (disorder)", {codes.B12_DEFICIENCY}),
    ("Vitamin B-12 deficiency", {codes.B12_DEFICIENCY}),
    ("Vit B12 deficiency", {codes.B12_DEFICIENCY}),
    ("B12-deficiency neuropathy", {codes.B12_DEFICIENCY}),
    ("Cobalamin deficiency", {codes.B12_DEFICIENCY}),
    ("Deficiency of vitamin B12", {codes.B12_DEFICIENCY}),
    ("Megaloblastic anaemia", {codes.MEGALOBLASTIC}),
    ("Megaloblastic anemia due to folate deficiency", {codes.MEGALOBLASTIC}),
    # Iron deficiency anaemia, and iron deficiency that is not anaemia.
    ("Iron deficiency anaemia", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron-deficiency anemia", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Anemia, iron deficiency", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Anaemia due to iron deficiency", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency anemia secondary to blood loss (chronic)", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency anaemia, no active bleeding", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency anaemia not responding to oral iron", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency without anaemia", NONE),
    ("Iron deficiency without anemia", NONE),
    ("Iron deficiency", NONE),
    # Haemochromatosis, and carriers of its gene (who are not iron-loaded).
    ("Haemochromatosis", {codes.HAEMOCHROMATOSIS}),
    ("Hereditary hemochromatosis", {codes.HAEMOCHROMATOSIS}),
    ("HFE-related hemochromatosis", {codes.HAEMOCHROMATOSIS}),
    ("Hemochromatosis carrier", NONE),
    ("Carrier of haemochromatosis gene", NONE),
    # Other classes, and the words that contain their patterns by accident.
    ("Coeliac disease", {codes.COELIAC}),
    ("Celiac disease", {codes.COELIAC}),
    ("Non-celiac gluten sensitivity", NONE),
    ("Gluten sensitivity, non-coeliac", NONE),
    ("Non-alcoholic cirrhosis", {codes.LIVER_DISEASE}),
    ("Non-alcoholic steatohepatitis with cirrhosis", {codes.LIVER_DISEASE}),
    ("Cirrhosis, no hepatocellular carcinoma", {codes.LIVER_DISEASE}),
    ("Anemia in chronic kidney disease", {codes.CKD}),
    ("Chronic kidney disease stage 3, not on dialysis", {codes.CKD}),
    ("Macrocytic anaemia", NONE),
    ("Anaemia of chronic disease", NONE),
    # Not the patient's condition now: history, family, doubt, exclusion, screening, risk, resolution.
    ("History of pernicious anaemia", NONE),
    ("Hx of pernicious anaemia", NONE),
    ("H/O B12 deficiency", NONE),
    ("Personal history of iron deficiency anemia", NONE),
    ("Previous iron deficiency anaemia", NONE),
    ("Family history of pernicious anemia", NONE),
    ("FH: pernicious anaemia", NONE),
    ("Suspected pernicious anaemia", NONE),
    ("?pernicious anaemia", NONE),
    ("? Pernicious anaemia", NONE),
    ("B12 deficiency?", NONE),
    ("Query iron deficiency anaemia", NONE),
    ("Possible B12 deficiency", NONE),
    ("Probable iron deficiency anaemia", NONE),
    ("R/O pernicious anemia", NONE),
    ("Rule out coeliac disease", NONE),
    ("Pernicious anaemia ruled out", NONE),
    ("Pernicious anaemia excluded", NONE),
    ("Coeliac disease excluded", NONE),
    ("Pernicious anaemia not confirmed", NONE),
    ("No evidence of pernicious anaemia", NONE),
    ("Not pernicious anaemia", NONE),
    ("Macrocytosis without B12 deficiency", NONE),
    ("Iron deficiency anemia - negative", NONE),
    ("Screening for B12 deficiency", NONE),
    ("Coeliac screen", NONE),
    ("At risk of iron deficiency anaemia", NONE),
    ("Risk of B12 deficiency (metformin)", NONE),
    ("Pernicious anaemia - resolved", NONE),  # as clinicalStatus "resolved" is read
]


@pytest.mark.parametrize(("text", "expected"), CONDITIONS)
def test_condition_text(text: str, expected: set[str]) -> None:
    concept = {"coding": [{"system": "http://problems.example.org", "code": "P1"}], "text": text}
    assert codes.build_value_sets(None).condition_classes(concept) == expected


@pytest.mark.parametrize(("text", "expected"), CONDITIONS)
def test_condition_display_reads_as_text(text: str, expected: set[str]) -> None:
    local = {"coding": [{"system": "http://problems.example.org", "code": "P1", "display": text}]}
    assert codes.build_value_sets(None).condition_classes(local) == expected


def test_a_doubt_in_the_text_also_doubts_the_display_after_it() -> None:
    """An EHR that pairs a local code's plain display with the clinician's "?": the clinician's word wins."""
    concept = {
        "coding": [{"system": "http://problems.example.org", "code": "PA", "display": "Pernicious anaemia"}],
        "text": "?PA - pernicious anaemia",
    }
    assert codes.build_value_sets(None).condition_classes(concept) == NONE


def test_a_verified_code_is_read_whatever_its_text_says() -> None:
    """Text qualifiers decide text matches only: a coded diagnosis is read by its code and status."""
    coded = {"coding": [{"system": codes.SNOMED, "code": "84027009"}], "text": "?pernicious anaemia"}
    assert codes.build_value_sets(None).condition_classes(coded) == {
        codes.PERNICIOUS_ANAEMIA,
        codes.B12_DEFICIENCY,
    }


def _codes_suggested(finding: Any) -> set[str]:
    return {
        a.resource["code"]["coding"][0]["code"]
        for p in finding.proposals
        for a in p.actions
        if a.type == "create" and a.resource is not None
    }


def _local_condition(text: str) -> dict[str, Any]:
    return condition("P1", system="http://problems.example.org", text=text)


def test_a_queried_pernicious_anaemia_does_not_silence_the_tests_that_would_confirm_it() -> None:
    labs = (obs("b12", 140, 5), obs("ferritin", 12, 5))
    queried = by_topic(run(*labs, _local_condition("?pernicious anaemia")), "combined-b12-iron-deficiency")
    assert {"31444-3", "40960-7", "2333-3"} <= _codes_suggested(queried)
    known = by_topic(run(*labs, _local_condition("Pernicious anaemia")), "combined-b12-iron-deficiency")
    assert {"31444-3", "40960-7", "2333-3"}.isdisjoint(_codes_suggested(known))


def test_non_coeliac_gluten_sensitivity_still_gets_a_ttg() -> None:
    labs = (obs("b12", 140, 5), obs("ferritin", 12, 5))
    sensitivity = _local_condition("Non-coeliac gluten sensitivity")
    finding = by_topic(run(*labs, sensitivity), "combined-b12-iron-deficiency")
    assert "31017-7" in _codes_suggested(finding)
