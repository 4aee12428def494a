"""PatientRecord: which results count, their time, comparators, high/low precedence, courses, conditions."""

from __future__ import annotations

import logging
from datetime import timedelta

from cds_service.clinical import codes
from cds_service.clinical.engine import evaluate
from tests.clinical.builders import (
    CONFIG,
    CYANO,
    NOW,
    PID,
    ago,
    condition,
    draft_b12,
    med,
    obs,
    patient,
    record,
)


def test_only_final_amended_corrected_results_count() -> None:
    rec = record(
        *(
            obs("b12", 300 + i, 1 + i, status=s)
            for i, s in enumerate(
                [
                    "final",
                    "amended",
                    "corrected",
                    "preliminary",
                    "registered",
                    "cancelled",
                    "entered-in-error",
                ]
            )
        )
    )
    assert sorted(r.value for r in rec.results["b12"]) == [300, 301, 302]


def test_effective_time_falls_back_to_period_start_then_issued() -> None:
    period = obs("ferritin", 50, 0, effectivePeriod={"start": ago(5)})
    del period["effectiveDateTime"]
    issued = obs("ferritin", 60, 0, issued=ago(9))
    del issued["effectiveDateTime"]
    undated = obs("ferritin", 70, 0)
    del undated["effectiveDateTime"]
    rec = record(period, issued, undated)
    assert [(r.value, r.when) for r in rec.results["ferritin"]] == [
        (50, NOW - timedelta(days=5)),
        (60, NOW - timedelta(days=9)),
    ]


def test_comparator_strings_and_quantity_comparators_are_kept() -> None:
    rec = record(
        obs("b12", "<150 pg/mL", 3),
        obs("ferritin", None, 2, valueQuantity={"value": 2000, "unit": "ng/mL", "comparator": ">"}),
    )
    assert (rec.results["b12"][0].value, rec.results["b12"][0].comparator) == (150, "<")
    assert rec.results["ferritin"][0].comparator == ">"
    assert rec.results["b12"][0].quoted().startswith("<150 pg/mL on ")


def test_unconvertible_unit_is_dropped_and_logged_without_patient_data(caplog) -> None:
    caplog.set_level(logging.INFO)
    rec = record(obs("ferritin", 12, 3, unit="mmol/L"), obs("ferritin", 40, 4, unit="ug/L"))
    assert [r.value for r in rec.results["ferritin"]] == [40]
    messages = [r.getMessage() for r in caplog.records]
    assert any("ferritin" in m and "mmol/L" in m for m in messages)
    assert not any(PID in m for m in messages)


def test_high_low_precedence_flag_then_range_then_default() -> None:
    flagged = obs(
        "b12",
        500,
        1,
        interpretation=[{"coding": [{"code": "H"}]}],
        referenceRange=[{"high": {"value": 900, "unit": "pg/mL"}}],
    )
    ranged = obs(
        "b12",
        700,
        2,
        referenceRange=[{"low": {"value": 150, "unit": "pmol/L"}, "high": {"value": 480, "unit": "pmol/L"}}],
    )
    plain = obs("b12", 700, 3)
    rec = record(flagged, ranged, plain)
    by_value = {r.value: r for r in rec.results["b12"]}
    assert by_value[500].is_high(914)[0]  # the lab's flag wins over its own range
    ranged_result = next(r for r in rec.results["b12"] if r.resource is ranged)
    plain_result = next(r for r in rec.results["b12"] if r.resource is plain)
    high, basis = ranged_result.is_high(914)
    assert high and "650.58 pg/mL" in basis  # 480 pmol/L × 1.35537, not rounded to a whole number
    assert not plain_result.is_high(914)[0]
    assert ranged_result.is_low(200)[0] is False


def test_latest_means_within_365_days() -> None:
    rec = record(obs("b12", 1500, 366))
    assert rec.latest("b12") is None
    assert record(obs("b12", 1500, 364)).latest("b12").value == 1500


def test_other_patients_resources_are_ignored_and_urn_uuid_is_the_same_patient() -> None:
    other = obs("b12", 1500, 3, pid="someone-else")
    mine = obs("b12", 1400, 4)
    mine["subject"] = {"reference": f"urn:uuid:{PID}"}
    rec = record(other, mine)
    assert [r.value for r in rec.results["b12"]] == [1400]


def test_a_result_naming_no_patient_counts_as_done_but_is_not_read_and_is_logged(caplog) -> None:
    """An Observation without a subject reference cannot be shown to be this patient's: it makes no card
    (a deficiency read from it could be someone else's), but the test counts as done, as for a unit that
    cannot be converted, and the log says so (no patient data)."""
    caplog.set_level(logging.INFO)
    bare = obs("b12", 140, 3)
    del bare["subject"]
    display_only = obs("ferritin", 12, 3)
    display_only["subject"] = {"display": "Jane Doe"}
    rec = record(bare, display_only)
    assert rec.results == {} and rec.latest("b12") is None
    assert rec.tested_since("b12", NOW - timedelta(days=5)) is not None
    assert rec.tested_since("ferritin", NOW - timedelta(days=5)) is not None
    cards = evaluate([patient(), bare, display_only], patient_id=PID, now=NOW, config=CONFIG)
    assert cards == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("b12" in m and "no patient" in m for m in messages)
    assert any("ferritin" in m and "no patient" in m for m in messages)
    assert not any(PID in m or "Jane" in m for m in messages)
    # Its own results still count, and a medicine, diagnosis or order without a subject is still kept: the
    # patient-scoped search asserts it, and dropping a diagnosis of pernicious anaemia would invite
    # stopping the injections it explains.
    pa = condition("84027009")
    del pa["subject"]
    cyano = med(CYANO, 30)
    del cyano["subject"]
    kept = record(obs("b12", 1500, 3), pa, cyano)
    assert kept.latest("b12").value == 1500
    assert kept.has_condition(codes.B12_DEFICIENCY) and kept.course(codes.B12_THERAPY) is not None


def test_course_start_is_the_earliest_record_of_the_continuous_course() -> None:
    old = med(CYANO, 700, status="completed")
    renewal_1 = med(
        CYANO,
        150,
        status="completed",
        dispenseRequest={"validityPeriod": {"start": ago(150), "end": ago(80)}},
    )
    renewal_2 = med(CYANO, 75)
    rec = record(old, renewal_1, renewal_2)
    course = rec.course(codes.B12_THERAPY)
    assert course.start == NOW - timedelta(days=150)
    assert course.ongoing


def test_course_from_administrations_and_dosage_bounds() -> None:
    shots = [med(CYANO, d, kind="MedicationAdministration", status="completed") for d in (100, 70, 40, 10)]
    assert record(*shots).course(codes.B12_THERAPY).start == NOW - timedelta(days=100)
    bounded = med(CYANO, 20, dosageInstruction=[{"timing": {"repeat": {"boundsPeriod": {"start": ago(45)}}}}])
    assert record(bounded).course(codes.B12_THERAPY).start == NOW - timedelta(days=45)


def test_medication_reference_to_contained_and_bundled_medication() -> None:
    contained = med(
        None,
        30,
        medicationReference={"reference": "#m"},
        contained=[{"resourceType": "Medication", "id": "m", "code": {"text": "Hydroxocobalamin"}}],
    )
    bundled_med = {
        "resourceType": "Medication",
        "id": "med-9",
        "code": {"text": "Combination product"},
        "ingredient": [{"itemCodeableConcept": {"text": "cyanocobalamin"}}],
    }
    bundled = med(None, 30, medicationReference={"reference": "Medication/med-9"})
    rec = record(contained, bundled_med, bundled)
    assert [m.classes for m in rec.medications] == [frozenset({codes.B12_THERAPY})] * 2


def test_a_draft_order_reads_the_medication_that_travels_beside_it_in_the_draft_orders() -> None:
    product = {"resourceType": "Medication", "id": "draft-med", "code": CYANO}
    order = draft_b12()
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/draft-med"}

    with_product = record(drafts=(order, product))
    without_product = record(drafts=(order,))

    assert [d.classes for d in with_product.drafts] == [frozenset({codes.B12_THERAPY})]
    assert without_product.drafts == []


def test_void_medication_records_are_ignored() -> None:
    rec = record(med(CYANO, 30, status="entered-in-error"), med(CYANO, 30, status="cancelled"))
    assert rec.medications == []


def test_conditions_active_only_and_not_refuted() -> None:
    rec = record(
        condition("19943007"),
        condition("709044004", status="resolved"),
        condition("425333006", verification="refuted"),
        condition("84027009", status="remission"),
    )
    assert rec.has_condition(codes.LIVER_DISEASE)
    assert not rec.has_condition(codes.CKD)
    assert not rec.has_condition(codes.MPN)
    assert not rec.has_condition(codes.B12_DEFICIENCY)
    assert rec.has_condition(codes.B12_DEFICIENCY, include_controlled=True)


def test_a_condition_is_named_by_its_text_else_a_display_else_its_code_and_system() -> None:
    """A Condition with a code but no text was named "a coded condition", which tells the clinician
    nothing; it is named as a medicine known only by code is ("RxNorm 309594"), by system and code."""
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    displayed = condition("84027009")
    displayed["code"]["coding"][0]["display"] = "Pernicious anemia"
    local_first = condition("19943007")
    local_first["code"]["coding"].insert(
        0, {"system": "http://hospital.example.org/problems", "code": "LIV7"}
    )
    rec = record(
        condition("84027009"),
        condition("D51.0", system=icd),
        displayed,
        condition("709044004", text="CKD stage 3"),
        local_first,
    )
    assert rec.has_condition(codes.B12_DEFICIENCY) == [
        "SNOMED CT 84027009",
        "ICD-10-CM D51.0",
        "Pernicious anemia",
    ]
    assert rec.has_condition(codes.CKD) == ["CKD stage 3"]
    # The coding from a system a clinician knows names it, not a local code that comes first.
    assert rec.has_condition(codes.LIVER_DISEASE) == ["SNOMED CT 19943007"]
    # A medicine is named the same way.
    local_med = {"coding": [{"system": "http://hospital.example.org/drugs", "code": "X1"}, *CYANO["coding"]]}
    assert [m.name for m in record(med(local_med, 30)).medications] == ["RxNorm 309594"]


def test_drafts_are_kept_apart_from_medications_on_file() -> None:
    draft = draft_b12()
    rec = record(draft, drafts=(draft,))
    assert rec.medications == []
    assert [d.reference for d in rec.drafts] == ["MedicationRequest/draft-b12"]


def test_junk_resources_do_not_crash() -> None:
    junk = [
        None,
        3,
        {"resourceType": "Observation"},
        {"resourceType": "Observation", "code": "x", "status": "final"},
        {"resourceType": "MedicationRequest", "medicationCodeableConcept": []},
        {"resourceType": "Claim"},
    ]
    assert evaluate([patient(), *junk], patient_id=PID, now=NOW, config=CONFIG) == []


def _broken(field: str, value: object) -> dict:
    resource = obs("b12", 1500, 3)
    if "." in field:
        outer, inner = field.split(".")
        resource[outer] = {**resource[outer], inner: value}
    else:
        resource[field] = value
    return resource


def test_wrongly_typed_fields_are_skipped_not_crashed_on() -> None:
    """Values of the wrong JSON type (lists or objects where strings belong) read as absent."""
    unreadable = [
        _broken("status", {"reference": 5}),
        _broken("resourceType", []),
        _broken("subject.reference", ["Patient/p1"]),
        _broken("code", {"coding": [{"system": ["x"], "code": "2132-9"}]}),
        _broken("valueQuantity", {"value": 1500, "unit": [None]}),
        _broken("effectiveDateTime", {"when": "today"}),
    ]
    assert evaluate([patient(), *unreadable], patient_id=PID, now=NOW, config=CONFIG) == []
    # An odd id does not matter for reading a result.
    odd_id = evaluate([patient(), _broken("id", {"a": 1})], patient_id=PID, now=NOW, config=CONFIG)
    assert [f.topic for f in odd_id] == ["elevated-b12-no-supplement"]
    drafts = ({"resourceType": "MedicationRequest", "id": {"x": 1}}, {"resourceType": ["ServiceRequest"]})
    assert (
        evaluate(
            [patient()],
            patient_id=PID,
            now=NOW,
            config=CONFIG,
            draft_orders=drafts,
            focus_orders=list(drafts),
        )
        == []
    )


def test_a_versioned_reference_and_an_ingredient_of_an_ingredient_are_read() -> None:
    """The fhir layer follows versioned references and nested ingredients (fhir/medications.py); the record
    read only one ingredient level, and keyed Medications by id, whatever version a reference named."""
    old = {
        "resourceType": "Medication",
        "id": "m1",
        "meta": {"versionId": "1"},
        "code": {"text": "Vitamin D3"},
    }
    new = {
        "resourceType": "Medication",
        "id": "m1",
        "meta": {"versionId": "2"},
        "code": {"text": "Hydroxocobalamin 1 mg/mL"},
    }
    versioned = med(None, 30, medicationReference={"reference": "Medication/m1/_history/2"})
    rec = record(old, new, versioned)
    assert [m.classes for m in rec.medications] == [frozenset({codes.B12_THERAPY})]
    inner = {"resourceType": "Medication", "id": "inner", "code": {"text": "cyanocobalamin"}}
    middle = {
        "resourceType": "Medication",
        "id": "mid",
        "ingredient": [{"itemReference": {"reference": "Medication/inner"}}],
    }
    outer = {
        "resourceType": "Medication",
        "id": "out",
        "code": {"text": "Combination product"},
        "ingredient": [{"itemReference": {"reference": "Medication/mid"}}],
    }
    nested = med(None, 30, medicationReference={"reference": "Medication/out"})
    assert [m.classes for m in record(inner, middle, outer, nested).medications] == [
        frozenset({codes.B12_THERAPY})
    ]
    # A transaction Bundle's urn:uuid reference is still read by id.
    by_uuid = med(None, 30, medicationReference={"reference": "urn:uuid:inner"})
    assert [m.classes for m in record(inner, by_uuid).medications] == [frozenset({codes.B12_THERAPY})]
