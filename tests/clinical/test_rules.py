"""Each catalogue topic: fires when it should, stays silent in its near misses, and makes valid proposals."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.clinical.findings import Finding
from cds_service.protocol.cards import find_empty_values
from tests.clinical.builders import (
    CYANO,
    NOW,
    PID,
    RXNORM,
    ago,
    by_topic,
    condition,
    draft_b12,
    draft_lab,
    med,
    obs,
    run,
    topics,
)

MULTIVITAMIN = {"text": "Multivitamin tablet"}


def actions(finding: Finding) -> list:
    return [a for p in finding.proposals for a in p.actions]


def ordered_codes(finding: Finding) -> list[str]:
    return [a.resource["code"]["coding"][0]["code"] for a in actions(finding) if a.type == "create"]


def assert_card_quality(finding: Finding) -> None:
    assert len(finding.summary) < 140
    assert finding.source_label
    assert "Sources:" in finding.detail
    assert "seed" not in finding.detail.lower()
    for action in actions(finding):
        if action.resource is not None:
            assert not find_empty_values(action.resource)
            if action.resource["resourceType"] == "ServiceRequest":
                sr = ServiceRequest.model_validate(action.resource)
                assert (sr.status, sr.intent) == ("draft", "order")
                assert sr.subject.reference == f"Patient/{PID}"
                assert sr.code.coding[0].system == "http://loinc.org"


# --- iron-studies-after-b12 ----------------------------------------------------------------------------


def test_patient_view_course_started_8_weeks_ago_without_iron_studies() -> None:
    findings = run(obs("mcv", 109, 60), obs("b12", 150, 60), obs("ferritin", 190, 60), med(CYANO, 40))
    finding = by_topic(findings, "iron-studies-after-b12")
    assert finding.indicator == "warning"
    assert (
        "190 ng/mL on " + (NOW.date().fromordinal(NOW.date().toordinal() - 60)).isoformat() in finding.detail
    )
    assert "Solmaz" in finding.detail
    followup = [a.resource for a in actions(finding) if "occurrenceDateTime" in a.resource]
    assert followup and followup[0]["occurrenceDateTime"] == "2026-01-31"  # 56 days after the start
    assert set(ordered_codes(finding)) == {"2276-4", "2502-3"}
    assert_card_quality(finding)


@pytest.mark.parametrize("days", [10, 200, 9000])
def test_patient_view_course_outside_28_to_180_days_gives_no_card(days) -> None:
    assert topics(run(med(CYANO, days))) == []


def test_patient_view_info_without_megaloblastic_picture() -> None:
    assert by_topic(run(med(CYANO, 60)), "iron-studies-after-b12").indicator == "info"


def test_results_since_the_start_suppress_but_ferritin_alone_does_not() -> None:
    assert topics(run(med(CYANO, 60), obs("ferritin", 80, 5), obs("tsat", 25, 5))) == []
    assert topics(run(med(CYANO, 60), obs("ferritin", 80, 5), obs("iron", 80, 5), obs("tibc", 300, 5))) == []
    finding = by_topic(run(med(CYANO, 60), obs("ferritin", 80, 5)), "iron-studies-after-b12")
    assert ordered_codes(finding) == ["2502-3"]


def test_order_select_b12_draft_fires_and_drafted_iron_studies_suppress_at_sign() -> None:
    draft = draft_b12()
    assert topics(run(drafts=(draft,), hook="order-select")) == ["iron-studies-after-b12"]
    accepted = by_topic(run(drafts=(draft,), hook="order-select"), "iron-studies-after-b12")
    created = [a.resource for a in actions(accepted)]
    # The clinician accepts the suggestion: its ServiceRequests come back as drafts at order-sign.
    again = run(
        drafts=(draft, *({**r, "id": f"accepted-{i}"} for i, r in enumerate(created))), hook="order-sign"
    )
    assert "iron-studies-after-b12" not in topics(again)


def test_order_hook_iron_studies_resulted_in_14_days_suppress_older_do_not() -> None:
    fresh = (obs("ferritin", 60, 10), obs("tsat", 22, 10))
    old = (obs("ferritin", 60, 20), obs("tsat", 22, 20))
    assert topics(run(*fresh, drafts=(draft_b12(),), hook="order-select")) == []
    assert topics(run(*old, drafts=(draft_b12(),), hook="order-select")) == ["iron-studies-after-b12"]


def test_pending_iron_studies_suppress() -> None:
    pending = [draft_lab(a, status="active", authoredOn="2026-01-01") for a in ("ferritin", "tsat")]
    assert topics(run(*pending, drafts=(draft_b12(),), hook="order-select")) == []
    assert topics(run(med(CYANO, 60), *pending)) == []


def test_a_draft_abandoned_on_the_server_long_ago_does_not_suppress() -> None:
    """A draft on file is held to the 180-day window of any open order; only this hook's drafts are not.

    A draft ferritin and TSAT left on the server three years ago silenced the reminder for good.
    """
    course = (obs("b12", 150, 60), obs("mcv", 110, 60), med(CYANO, 56))
    abandoned = [draft_lab(a, authoredOn=ago(1100)) for a in ("ferritin", "tsat")]
    recent = [draft_lab(a, authoredOn=ago(20)) for a in ("ferritin", "tsat")]
    assert topics(run(*course, *abandoned)) == ["iron-studies-after-b12"]
    assert topics(run(*course, *recent)) == []
    # This hook's own drafts carry no date and still count.
    hook_drafts = (draft_b12(), draft_lab("ferritin"), draft_lab("tsat"))
    assert topics(run(*course, drafts=hook_drafts, hook="order-sign")) == []


def test_an_undated_order_on_file_is_dated_by_when_the_server_last_changed_it() -> None:
    course = (obs("b12", 150, 60), obs("mcv", 110, 60), med(CYANO, 56))
    stale = [draft_lab(a, meta={"lastUpdated": ago(900)}) for a in ("ferritin", "tsat")]
    fresh = [draft_lab(a, meta={"lastUpdated": ago(5)}) for a in ("ferritin", "tsat")]
    assert topics(run(*course, *stale)) == ["iron-studies-after-b12"]
    assert topics(run(*course, *fresh)) == []


def test_renewal_of_long_maintenance_is_not_a_start() -> None:
    assert topics(run(med(CYANO, 3000), drafts=(draft_b12(),), hook="order-select")) == []


def test_order_select_only_about_the_selected_order() -> None:
    other = draft_lab("crp", "draft-crp")
    assert topics(run(drafts=(other, draft_b12()), hook="order-select")) == []
    assert topics(run(drafts=(other, draft_b12()), hook="order-sign")) == ["iron-studies-after-b12"]


# --- iron-deficiency-after-b12 --------------------------------------------------------------------------


def test_iron_deficiency_unmasked_after_b12_shows_the_trend() -> None:
    findings = run(obs("ferritin", 170, 130), med(CYANO, 120), obs("ferritin", 20, 10), obs("tsat", 11, 10))
    finding = by_topic(findings, "iron-deficiency-after-b12")
    assert finding.indicator == "warning"
    assert "170 ng/mL" in finding.detail and "20 ng/mL" in finding.detail and "11 %" in finding.detail
    assert topics(findings) == ["iron-deficiency-after-b12"]
    assert_card_quality(finding)


def test_no_iron_deficiency_after_b12_when_course_is_old_or_iron_fine() -> None:
    assert "iron-deficiency-after-b12" not in topics(
        run(med(CYANO, 400, status="completed"), obs("ferritin", 20, 10))
    )
    assert topics(run(med(CYANO, 120), obs("ferritin", 85, 10), obs("tsat", 30, 10))) == []


def test_ferritin_with_inflammation_below_100_counts_as_deficient() -> None:
    findings = run(med(CYANO, 120), obs("ferritin", 70, 10), obs("crp", 25, 12), obs("tsat", 25, 10))
    assert topics(findings) == ["iron-deficiency-after-b12"]


# --- elevated B12 ------------------------------------------------------------------------------------


def test_supplement_review_stops_the_statement_and_rechecks_in_3_months() -> None:
    statement = med(MULTIVITAMIN, 200, kind="MedicationStatement")
    finding = by_topic(run(obs("b12", 1250, 10), statement), "elevated-b12-supplement-review")
    update = next(a for a in actions(finding) if a.type == "update")
    assert update.resource["status"] == "stopped" and update.resource["id"] == statement["id"]
    MedicationStatement.model_validate(update.resource)
    recheck = next(a.resource for a in actions(finding) if a.type == "create")
    assert recheck["code"]["coding"][0]["code"] == "2132-9"
    assert recheck["occurrenceDateTime"] == "2026-04-15"
    assert "1250 pg/mL" in finding.detail and "914" in finding.detail
    assert_card_quality(finding)


def test_supplement_review_at_order_select_deletes_the_draft() -> None:
    findings = run(
        obs("b12", 1100, 30),
        drafts=(draft_b12({"text": "Vitamin B12 1000 mcg tablet"}, "d9"),),
        hook="order-select",
    )
    assert topics(findings) == ["elevated-b12-supplement-review"]
    delete = actions(findings[0])[0]
    assert (delete.type, delete.resource_id) == ("delete", "MedicationRequest/d9")


def test_pernicious_anaemia_and_prior_deficiency_are_exceptions() -> None:
    on_injections = (obs("b12", 1400, 10), med(CYANO, 3000))
    assert topics(run(*on_injections)) == ["elevated-b12-supplement-review"]
    assert topics(run(*on_injections, condition("84027009"))) == []
    assert topics(run(*on_injections, condition("D51.0", system="http://hl7.org/fhir/sid/icd-10-cm"))) == []
    assert topics(run(obs("b12", 120, 3100), *on_injections)) == []


def test_high_b12_without_supplement_suggests_liver_tests_and_warns_when_very_high() -> None:
    finding = by_topic(run(obs("b12", 1000, 10)), "elevated-b12-no-supplement")
    assert finding.indicator == "info"
    assert set(ordered_codes(finding)) == {"1742-6", "1920-8", "1988-5"}
    very = by_topic(run(obs("b12", 1600, 10), obs("alt", 30, 20)), "elevated-b12-no-supplement")
    assert very.indicator == "warning"
    assert set(ordered_codes(very)) == {"1920-8", "1988-5"}
    assert "Arendt" in very.detail
    assert_card_quality(very)


@pytest.mark.parametrize("code", ["19943007", "709044004", "425333006"])
def test_explaining_conditions_silence_high_b12_no_supplement(code) -> None:
    assert topics(run(obs("b12", 1600, 10), condition(code))) == []


def test_lab_range_decides_high_before_the_default() -> None:
    ranged = obs("b12", 800, 10, referenceRange=[{"high": {"value": 700, "unit": "pg/mL"}}])
    assert topics(run(ranged)) == ["elevated-b12-no-supplement"]
    assert topics(run(obs("b12", 800, 10))) == []


def test_iron_deficiency_with_high_b12_replaces_both_elevated_cards() -> None:
    findings = run(
        obs("b12", 1150, 10), obs("ferritin", 14, 10), med(MULTIVITAMIN, 200, kind="MedicationStatement")
    )
    assert topics(findings) == ["iron-deficiency-with-high-b12"]
    kinds = {a.type for a in actions(findings[0])}
    assert kinds == {"update", "create"}
    assert "31017-7" in ordered_codes(findings[0])
    assert "in someone taking B12" in findings[0].detail
    assert "ask about over-the-counter" not in findings[0].detail
    assert_card_quality(findings[0])
    (unexplained,) = run(obs("b12", 1150, 10), obs("ferritin", 14, 10))
    assert unexplained.topic == "iron-deficiency-with-high-b12"
    assert "No B12 product is on file: ask about over-the-counter vitamins" in unexplained.detail
    assert "taking B12" not in unexplained.detail, "no intake on file to reason from"
    assert_card_quality(unexplained)


# --- deficiencies ------------------------------------------------------------------------------------


def test_combined_deficiency_suggests_gastritis_and_coeliac_tests_unless_known() -> None:
    finding = by_topic(run(obs("b12", 140, 5), obs("ferritin", 12, 5)), "combined-b12-iron-deficiency")
    assert set(ordered_codes(finding)) == {"31444-3", "40960-7", "2333-3", "31017-7"}
    known = by_topic(
        run(obs("b12", 140, 5), obs("ferritin", 12, 5), condition("84568007")), "combined-b12-iron-deficiency"
    )
    assert ordered_codes(known) == ["31017-7"]
    assert_card_quality(finding)


def test_combined_needs_the_same_time() -> None:
    assert topics(run(obs("b12", 140, 100), obs("ferritin", 12, 5))) == []


def test_b12_not_for_high_ferritin_only_at_order_hooks_and_not_when_deficient() -> None:
    labs = (obs("b12", 480, 20), obs("ferritin", 650, 20), obs("tsat", 52, 20))
    finding = by_topic(
        run(*labs, drafts=(draft_b12(),), hook="order-select", gender="male"), "b12-not-for-high-ferritin"
    )
    assert "haemochromatosis" in finding.detail.lower() and "52 %" in finding.detail
    assert "2502-3" not in ordered_codes(finding)
    assert topics(run(*labs, gender="male")) == []
    deficient = (obs("b12", 150, 20), obs("ferritin", 650, 20))
    assert "b12-not-for-high-ferritin" not in topics(
        run(*deficient, drafts=(draft_b12(),), hook="order-select")
    )
    assert_card_quality(finding)


def test_ferritin_high_threshold_depends_on_sex() -> None:
    labs = (obs("b12", 480, 20), obs("ferritin", 250, 20))
    assert "b12-not-for-high-ferritin" in topics(run(*labs, drafts=(draft_b12(),), hook="order-select"))
    assert "b12-not-for-high-ferritin" not in topics(
        run(*labs, drafts=(draft_b12(),), hook="order-select", gender="male")
    )


def test_ferritin_inflammation_check_tsat() -> None:
    finding = by_topic(run(obs("ferritin", 65, 5), obs("crp", 22, 5)), "ferritin-inflammation-check-tsat")
    assert ordered_codes(finding) == ["2502-3"]
    assert topics(run(obs("ferritin", 65, 5), obs("crp", 3, 5))) == []
    assert topics(run(obs("ferritin", 65, 5), obs("crp", 22, 5), obs("tsat", 25, 6))) == []
    assert topics(run(obs("ferritin", 65, 5), obs("crp", 22, 5), draft_lab("tsat", status="active"))) == []
    assert_card_quality(finding)


def test_borderline_b12_check_mma() -> None:
    finding = by_topic(run(obs("b12", 250, 20)), "borderline-b12-check-mma")
    assert ordered_codes(finding) == ["13964-2"]
    assert topics(run(obs("b12", 250, 20), obs("mma", 200, 10))) == []
    assert topics(run(obs("b12", 250, 20, interpretation=[{"coding": [{"code": "L"}]}]))) == []
    assert topics(run(obs("b12", 310, 20))) == []
    assert_card_quality(finding)


def test_findings_are_ordered_warnings_first_and_one_per_topic() -> None:
    findings = run(
        obs("b12", 250, 20),
        obs("ferritin", 65, 5),
        obs("crp", 22, 5),
        med(CYANO, 60),
        obs("mcv", 105, 5),
        obs("ferritin", 150, 70),
    )
    assert len(topics(findings)) == len(set(topics(findings)))
    ranks = [0 if f.indicator == "warning" else 1 for f in findings]
    assert ranks == sorted(ranks)


def test_unmasked_iron_deficiency_replaces_the_iron_studies_reminder() -> None:
    findings = run(med(CYANO, 60), obs("ferritin", 150, 70), obs("ferritin", 20, 5))
    assert topics(findings) == ["iron-deficiency-after-b12"]
    assert "RxNorm 309594" in findings[0].detail


def test_deficiency_cards_quote_haemoglobin_against_the_who_threshold() -> None:
    findings = run(obs("b12", 140, 5), obs("ferritin", 12, 5), obs("hb", 11.2, 5))
    assert (
        "11.2 g/dL" in findings[0].detail
        and "(anaemia by the WHO threshold of 12 g/dL)" in findings[0].detail
    )
    male = run(obs("b12", 140, 5), obs("ferritin", 12, 5), obs("hb", 12.5, 5), gender="male")
    assert "(anaemia by the WHO threshold of 13 g/dL)" in male[0].detail
    female = run(obs("b12", 140, 5), obs("ferritin", 12, 5), obs("hb", 12.5, 5))
    assert "(no anaemia by the WHO threshold of 12 g/dL)" in female[0].detail


def test_very_high_ferritin_is_named() -> None:
    labs = (obs("b12", 480, 20), obs("ferritin", 1400, 20))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert "above 1000 ng/mL: very high" in finding.detail


def test_stopping_a_record_with_empty_values_emits_none() -> None:
    statement = med(MULTIVITAMIN, 200, kind="MedicationStatement", note=[], reasonCode=[{"text": ""}])
    finding = by_topic(run(obs("b12", 1250, 10), statement), "elevated-b12-supplement-review")
    update = next(a for a in actions(finding) if a.type == "update")
    assert not find_empty_values(update.resource)
    assert update.resource["medicationCodeableConcept"] == MULTIVITAMIN


# --- treatment and its baseline in time ----------------------------------------------------------------


def test_a_high_b12_on_treatment_does_not_silence_the_iron_studies_reminder() -> None:
    """Injections raise B12; the deficient, macrocytic patient they treat still needs iron studies."""
    before = (obs("b12", 150, 45), obs("mcv", 110, 45), obs("ferritin", 250, 45))
    on_treatment = obs("b12", 1200, 10)
    finding = by_topic(run(*before, med(CYANO, 40), on_treatment), "iron-studies-after-b12")
    assert finding.indicator == "warning"
    # A B12 already high before the course: starting it treats nothing and unmasks nothing.
    assert "iron-studies-after-b12" not in topics(run(obs("b12", 1200, 45), med(CYANO, 40)))


def test_an_old_deficiency_explains_only_the_course_it_preceded_while_it_runs() -> None:
    old_course = (obs("b12", 150, 2200), med(CYANO, 2190, status="completed"))
    now_high = (obs("b12", 1500, 7), med(MULTIVITAMIN, 200, kind="MedicationStatement"))
    assert "elevated-b12-supplement-review" in topics(run(*old_course, *now_high))
    running = (obs("b12", 150, 2200), med(CYANO, 2190))
    assert "elevated-b12-supplement-review" not in topics(run(*running, *now_high))


def test_a_baseline_drawn_on_the_day_b12_starts_is_not_a_result_of_treatment() -> None:
    start = NOW.date().toordinal() - 40
    authored = NOW.date().fromordinal(start).isoformat()  # a date alone: read as midnight
    course = med(CYANO, 40, authoredOn=authored)
    baseline = (obs("b12", 150, 39.6), obs("ferritin", 12, 39.6), obs("tsat", 9, 39.6))
    findings = run(course, *baseline)
    assert "iron-deficiency-after-b12" not in topics(findings)
    # ... so it does not count as the follow-up either: the 4–8 week iron studies are still due (carried by
    # the combined-deficiency card, which replaces the reminder).
    assert topics(findings) == ["combined-b12-iron-deficiency"]
    carried = [a.resource["code"]["coding"][0]["code"] for p in findings[0].proposals for a in p.actions]
    assert "2276-4" in carried and "2502-3" in carried
    after = (obs("ferritin", 14, 5), obs("tsat", 10, 5))
    assert "iron-deficiency-after-b12" in topics(run(course, *baseline, *after))


def test_a_deficient_b12_drawn_on_the_morning_b12_starts_explains_the_injections() -> None:
    """The course starts on a date alone (midnight): the B12 drawn that morning is the one it treats.

    Missing it made the supplement review propose stopping the injections of a deficient patient.
    """
    start = NOW.date().fromordinal(NOW.date().toordinal() - 90).isoformat()
    baseline = obs("b12", 140, 90, effectiveDateTime=f"{start}T08:00:00Z")
    injections = med(CYANO, 90, authoredOn=start)
    findings = run(baseline, injections, obs("b12", 1500, 30))
    assert "elevated-b12-supplement-review" not in topics(findings)


def test_the_reason_names_the_labs_low_flag_when_the_value_is_above_30() -> None:
    flagged = obs("ferritin", 45, 10, interpretation=[{"coding": [{"code": "L"}]}])
    finding = by_topic(run(med(CYANO, 120), flagged, obs("tsat", 25, 10)), "iron-deficiency-after-b12")
    assert "The laboratory flags this ferritin as low" in finding.detail
    assert "below 30 ng/mL" not in finding.detail


def test_the_inflammation_cut_off_is_not_attributed_to_who() -> None:
    findings = run(med(CYANO, 120), obs("ferritin", 70, 10), obs("crp", 25, 12), obs("tsat", 25, 10))
    detail = by_topic(findings, "iron-deficiency-after-b12").detail
    assert "below 100 ng/mL is compatible with iron deficiency (UK practice)" in detail


def test_a_statement_recorded_years_into_a_course_is_not_a_new_start() -> None:
    reconciled = med(CYANO, 40, kind="MedicationStatement")
    del reconciled["effectivePeriod"]
    reconciled["dateAsserted"] = NOW.date().fromordinal(NOW.date().toordinal() - 40).isoformat()
    assert "iron-studies-after-b12" not in topics(run(reconciled))


def test_converted_values_are_quoted_unrounded_with_what_the_lab_reported() -> None:
    finding = by_topic(
        run(obs("b12", 147.5, 5, unit="pmol/L"), obs("ferritin", 12, 5)), "combined-b12-iron-deficiency"
    )
    assert "199.92 pg/mL (reported as 147.5 pmol/L) on " in finding.detail
    assert "**12 ng/mL on " in finding.detail  # not converted: nothing to add
    below = by_topic(
        run(obs("b12", "<110 pmol/L", 5), obs("ferritin", 12, 5)), "combined-b12-iron-deficiency"
    )
    assert "<149.09 pg/mL (reported as <110 pmol/L) on " in below.detail


def test_lab_orders_carry_no_unverified_category_code() -> None:
    finding = by_topic(run(med(CYANO, 60)), "iron-studies-after-b12")
    for action in actions(finding):
        assert action.resource["category"] == [{"text": "Laboratory"}]


def test_very_high_b12_is_above_1000_pmol_per_litre_as_its_source_says() -> None:
    """Arendt & Nexo's limit is > 1000 pmol/L; a result of exactly that is high but not very high."""
    exactly = by_topic(run(obs("b12", 1000, 10, unit="pmol/L")), "elevated-b12-no-supplement")
    assert exactly.indicator == "info"
    above = by_topic(run(obs("b12", 1000.5, 10, unit="pmol/L")), "elevated-b12-no-supplement")
    assert above.indicator == "warning" and "Above 1355.37 pg/mL (1000 pmol/L)" in above.detail


def test_a_laboratory_limit_is_quoted_as_the_laboratory_gave_it() -> None:
    """Rounded to 1246, a limit of 1245.6 would make a result of 1245.8 read as below the limit it exceeds."""
    ranged = obs("b12", 1245.8, 10, referenceRange=[{"high": {"value": 1245.6, "unit": "pg/mL"}}])
    finding = by_topic(run(ranged), "elevated-b12-no-supplement")
    assert "upper reference limit of 1245.6 pg/mL" in finding.detail


def test_the_summary_quotes_the_value_unrounded_with_its_comparator() -> None:
    statement = med(MULTIVITAMIN, 200, kind="MedicationStatement")
    high = obs("b12", None, 10, valueQuantity={"value": 2000, "comparator": ">", "unit": "pg/mL"})
    finding = by_topic(run(high, statement), "elevated-b12-supplement-review")
    assert finding.summary.startswith("B12 is already high (>2000 pg/mL)")
    precise = by_topic(run(obs("b12", 1250.5, 10), statement), "elevated-b12-supplement-review")
    assert precise.summary.startswith("B12 is already high (1250.5 pg/mL)")


def _referencing(target: str, **extra: object) -> dict:
    """A medication order naming its medicine only by a reference, as many EHRs write them."""
    order = med(None, 30, medicationReference={"reference": target})
    order.update(extra)
    return order


def test_a_medicine_the_service_cannot_identify_is_not_read_as_no_supplement() -> None:
    """A reference to a Medication the EHR did not send could be a B12 injection: the card still asks
    about liver disease, but says first that the medication list holds something it could not read."""
    finding = by_topic(
        run(obs("b12", 1600, 10), _referencing("Medication/not-sent")), "elevated-b12-no-supplement"
    )
    assert "No B12 product or B12-containing supplement is identified" in finding.detail
    assert "**Check the medication list first:** 1 medication record(s)" in finding.detail
    assert "(an unnamed medicine;" in finding.detail
    coded = med({"coding": [{"system": RXNORM, "code": "1234567"}]}, 30)
    assert (
        "(RxNorm 1234567;" in by_topic(run(obs("b12", 1600, 10), coded), "elevated-b12-no-supplement").detail
    )


def test_the_referenced_medication_when_sent_decides() -> None:
    b12 = {"resourceType": "Medication", "id": "inj", "code": CYANO}
    shown = topics(run(obs("b12", 1600, 10), _referencing("Medication/inj"), b12))
    assert "elevated-b12-supplement-review" in shown and "elevated-b12-no-supplement" not in shown


def test_named_or_old_medicines_leave_the_card_as_it_was() -> None:
    named = med({"text": "Paracetamol 500 mg tablet"}, 30)
    old = _referencing("Medication/not-sent", status="completed", authoredOn=ago(3 * 365))
    displayed = med(
        None, 30, medicationReference={"reference": "Medication/x", "display": "Omeprazole 20 mg"}
    )
    for other in (named, old, displayed):
        finding = by_topic(run(obs("b12", 1600, 10), other), "elevated-b12-no-supplement")
        assert "Check the medication list" not in finding.detail and "is on file" in finding.detail


def test_a_b12_reported_as_more_than_1000_pmol_per_litre_is_very_high_in_both_elevated_cards() -> None:
    above = obs("b12", None, 10, valueQuantity={"value": 1000, "comparator": ">", "unit": "pmol/L"})
    alone = by_topic(run(above), "elevated-b12-no-supplement")
    assert alone.indicator == "warning" and "Arendt" in alone.detail
    statement = med(MULTIVITAMIN, 200, kind="MedicationStatement")
    review = by_topic(run(above, statement), "elevated-b12-supplement-review")
    assert "Above 1355.37 pg/mL (1000 pmol/L)" in review.detail


def test_direction_controls_leave_plain_text_names_too() -> None:
    """Suggestion labels and action descriptions are plain text: a right-to-left override in the name
    would reverse what follows it there as well."""
    statement = med({"text": "Multi\u202evitamin tablet"}, 200, kind="MedicationStatement")
    review = by_topic(run(obs("b12", 1250, 10), statement), "elevated-b12-supplement-review")
    assert "Stop Multivitamin tablet" in [a.description for a in actions(review)]
