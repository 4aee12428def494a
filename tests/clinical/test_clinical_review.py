"""Findings of the clinical review of the cards: each test is a patient whose card said something wrong."""

from __future__ import annotations

from datetime import timedelta

from cds_service.clinical.engine import load_clinical_config
from tests.clinical.builders import (
    CYANO,
    NOW,
    ago,
    by_topic,
    condition,
    draft_b12,
    draft_lab,
    med,
    obs,
    record,
    run,
    topics,
)

PERNICIOUS_ANAEMIA = "84027009"


# --- iron-deficiency-with-high-b12 when B12 treatment is explained --------------------------------------


def test_iron_deficiency_on_injections_for_pernicious_anaemia_does_not_ask_to_review_b12() -> None:
    """A high B12 on injections for pernicious anaemia is expected. The card said 'review B12
    supplements' in its summary while its detail said 'keep B12 therapy': a clinician reading the summary
    could stop the injections of a patient who needs them for life."""
    labs = (obs("b12", 1500, 10), obs("ferritin", 12, 10))
    treated = (med(CYANO, 3000), condition(PERNICIOUS_ANAEMIA))
    for hook, drafts in (("patient-view", ()), ("order-select", (draft_b12(),))):
        finding = by_topic(run(*labs, *treated, drafts=drafts, hook=hook), "iron-deficiency-with-high-b12")
        assert "review B12" not in finding.summary
        assert "keep B12" in finding.summary
        assert len(finding.summary) < 140
        assert "usually reflects supplements" not in finding.detail
        assert "keep B12 therapy" in finding.detail
        assert not [a for p in finding.proposals for a in p.actions if a.type in ("update", "delete")]
    # Without an explanation the supplement review stays the card's message.
    (unexplained,) = run(*labs, med({"text": "Multivitamin tablet"}, 200, kind="MedicationStatement"))
    assert "review B12 supplements" in unexplained.summary


def test_an_uncoded_diagnosis_label_still_says_which_diagnosis_explains_the_b12() -> None:
    labs = (obs("b12", 1500, 10), obs("ferritin", 12, 10))
    finding = by_topic(
        run(*labs, med(CYANO, 3000), condition(PERNICIOUS_ANAEMIA)), "iron-deficiency-with-high-b12"
    )
    assert "a coded condition" not in finding.detail
    assert "B12 deficiency or pernicious anaemia" in finding.detail
    named = run(*labs, med(CYANO, 3000), condition(PERNICIOUS_ANAEMIA, text="Pernicious anemia"))
    assert "pernicious anaemia (Pernicious anemia)" in by_topic(named, "iron-deficiency-with-high-b12").detail


# --- b12-not-for-high-ferritin: what the B12 is ----------------------------------------------------------


def test_a_borderline_b12_is_not_called_normal_when_b12_is_ordered_for_a_high_ferritin() -> None:
    """200–300 pg/mL neither confirms nor excludes deficiency; with macrocytosis a tissue deficiency
    (which B12 would treat) is quite possible. The card called it 'a normal B12'."""
    labs = (obs("b12", 240, 10), obs("mcv", 112, 10), obs("ferritin", 600, 10))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert "normal B12" not in finding.detail
    assert "borderline" in finding.detail and "methylmalonic acid" in finding.detail
    assert "will not lower" not in finding.summary and "MMA" in finding.summary
    assert len(finding.summary) < 140
    offered = [a.resource["code"]["coding"][0]["code"] for p in finding.proposals for a in p.actions]
    assert "13964-2" in offered
    done = run(*labs, obs("mma", 250, 5), drafts=(draft_b12(),), hook="order-select")
    assert "13964-2" not in [
        a.resource["code"]["coding"][0]["code"]
        for p in by_topic(done, "b12-not-for-high-ferritin").proposals
        for a in p.actions
    ]


def test_a_high_b12_is_not_called_normal_when_b12_is_ordered_for_a_high_ferritin() -> None:
    labs = (obs("b12", 1600, 10), obs("ferritin", 600, 10))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert "normal B12" not in finding.detail and "not deficient" not in finding.detail
    assert "1600 pg/mL on 2026-01-05** is already high" in finding.detail
    assert finding.summary.startswith("B12 already high") and len(finding.summary) < 140


def test_a_b12_order_for_a_patient_with_b12_and_ferritin_both_high_gets_one_card() -> None:
    """Both high (liver disease raises both): the order got two warnings about the same draft, one that B12
    will not lower the ferritin and the supplement review asking to reconsider it. One card now says
    both and offers the work-up and removing the draft."""
    labs = (obs("b12", 1600, 10), obs("ferritin", 600, 10))
    for hook in ("order-select", "order-sign"):
        findings = run(*labs, drafts=(draft_b12(),), hook=hook)
        assert topics(findings) == ["b12-not-for-high-ferritin"]
        (finding,) = findings
        assert "reconsider" in finding.summary and len(finding.summary) < 140
        removals = [p for p in finding.proposals if any(a.type == "delete" for a in p.actions)]
        assert [p.label for p in removals] == ["Remove the B12 draft order"]
        assert removals[0].is_recommended
        assert [a.resource_id for a in removals[0].actions] == ["MedicationRequest/draft-b12"]
        assert finding.selection_behavior == "any"
        assert "pernicious anaemia" in finding.detail
    # A B12 that is not high: no removal offered here (B12 may still be wanted for something else).
    (not_high,) = run(
        obs("b12", 480, 10), obs("ferritin", 600, 10), drafts=(draft_b12(),), hook="order-select"
    )
    assert not [a for p in not_high.proposals for a in p.actions if a.type == "delete"]


def test_a_b12_in_the_reference_range_is_still_read_as_not_low() -> None:
    labs = (obs("b12", 480, 10), obs("ferritin", 600, 10))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert "480 pg/mL on 2026-01-05** is not deficient" in finding.detail
    assert "borderline" not in finding.detail


# --- iron-studies-after-b12: the picture B12 was started for ---------------------------------------------


def test_the_megaloblastic_picture_is_read_before_treatment_not_from_results_on_it() -> None:
    """Injections raise B12 and bring the MCV down within weeks. Read on treatment, a deficient,
    ferritin-180 patient looked non-megaloblastic and the reminder dropped to 'info'."""
    before = (obs("b12", 150, 60), obs("mcv", 96, 60), obs("ferritin", 180, 60))
    on_treatment = (obs("b12", 600, 10), obs("mcv", 92, 10))
    finding = by_topic(run(*before, med(CYANO, 56), *on_treatment), "iron-studies-after-b12")
    assert finding.indicator == "warning"
    assert "150 pg/mL on 2025-11-16" in finding.detail
    assert "600 pg/mL on 2026-01-05" in finding.detail and "on treatment" in finding.detail
    # A macrocytosis before the start counts too, though the MCV has since come down.
    macrocytic = (obs("b12", 260, 60), obs("mcv", 108, 60), obs("ferritin", 180, 60))
    finding = by_topic(run(*macrocytic, med(CYANO, 56), obs("mcv", 95, 10)), "iron-studies-after-b12")
    assert finding.indicator == "warning"
    # Nothing megaloblastic before the start: still info.
    plain = (obs("b12", 260, 60), obs("mcv", 90, 60), obs("ferritin", 180, 60))
    assert by_topic(run(*plain, med(CYANO, 56)), "iron-studies-after-b12").indicator == "info"


# --- combined-b12-iron-deficiency once B12 has been started ----------------------------------------------


def test_combined_deficiency_does_not_say_replace_b12_first_when_b12_was_started() -> None:
    """B12 started after the deficient result: 'replace B12 first' is done; the iron is what is left."""
    labs = (obs("b12", 140, 40), obs("ferritin", 12, 40))
    started = by_topic(run(*labs, med(CYANO, 38)), "combined-b12-iron-deficiency")
    assert "Replace B12 first" not in started.detail and "replace B12 first" not in started.summary
    assert "B12 therapy started on 2025-12-08" in started.detail
    assert "iron" in started.summary and len(started.summary) < 140
    # On B12 since long before a result that is still deficient: adherence and absorption.
    failing = by_topic(run(*labs, med(CYANO, 400)), "combined-b12-iron-deficiency")
    assert "Replace B12 first" not in failing.detail
    assert "adherence" in failing.detail
    untreated = by_topic(run(*labs), "combined-b12-iron-deficiency")
    assert "Replace B12 first" in untreated.detail and "replace B12 first" in untreated.summary


# --- "unmasked" iron deficiency that was never hidden ----------------------------------------------------


def test_iron_deficiency_present_before_b12_is_not_called_unmasked() -> None:
    """Ferritin 12 before B12 and 10 after: nothing was hidden. The card explained the result by B12
    unmasking a deficiency, which points away from the long-standing loss or malabsorption to look for."""
    findings = run(obs("ferritin", 12, 40), med(CYANO, 38), obs("ferritin", 10, 10), obs("tsat", 8, 10))
    finding = by_topic(findings, "iron-deficiency-after-b12")
    assert "becomes visible" not in finding.detail
    assert "already" in finding.detail and "12 ng/mL on 2025-12-06" in finding.detail
    # Ferritin 165 before, 18 after: that is the unmasking the card is about.
    unmasked = run(obs("ferritin", 165, 130), med(CYANO, 120), obs("ferritin", 18, 10), obs("tsat", 12, 10))
    assert "becomes visible" in by_topic(unmasked, "iron-deficiency-after-b12").detail


def test_the_iron_studies_reminder_does_not_promise_to_unmask_a_deficiency_already_shown() -> None:
    # (At patient-view a deficient B12 beside it makes the combined card, which carries the reminder: a
    # borderline B12 shows the reminder itself.)
    for findings in (
        run(obs("b12", 250, 60), obs("ferritin", 12, 60), med(CYANO, 56)),
        run(obs("b12", 140, 7), obs("ferritin", 12, 7), drafts=(draft_b12(),), hook="order-select"),
    ):
        finding = by_topic(findings, "iron-studies-after-b12")
        assert "unmasked" not in finding.summary and len(finding.summary) < 140
        assert "already shows iron deficiency" in finding.detail
    plain = by_topic(
        run(obs("b12", 140, 60), obs("ferritin", 180, 60), med(CYANO, 56)), "iron-studies-after-b12"
    )
    assert "unmasked" in plain.summary and "already shows iron deficiency" not in plain.detail


# --- molar equivalents follow the site's thresholds -------------------------------------------------------


def test_molar_equivalents_quoted_beside_thresholds_follow_a_sites_thresholds() -> None:
    """The borderline card printed '148–221 pmol/L' and the high-B12 cards '(1000 pmol/L)' whatever the
    site had set: with a borderline band up to 400 pg/mL, the card contradicted itself."""
    config = load_clinical_config({"thresholds": {"b12_borderline_upper": 400, "b12_very_high": 1500}})
    borderline = by_topic(run(obs("b12", 350, 20), config=config), "borderline-b12-check-mma")
    assert "(200–400 pg/mL, 147.56–295.12 pmol/L)" in borderline.detail
    very = by_topic(run(obs("b12", 1600, 10), config=config), "elevated-b12-no-supplement")
    assert "Above 1500 pg/mL (1106.71 pmol/L)" in very.detail and "1000 pmol/L" not in very.detail
    review = by_topic(
        run(obs("b12", 1600, 10), med({"text": "Multivitamin tablet"}, 200), config=config),
        "elevated-b12-supplement-review",
    )
    assert "Above 1500 pg/mL (1106.71 pmol/L)" in review.detail
    # The defaults still read as the sources give them.
    default = by_topic(run(obs("b12", 250, 20)), "borderline-b12-check-mma")
    assert "(200–300 pg/mL, 147.56–221.34 pmol/L)" in default.detail
    assert (
        "Above 1355.37 pg/mL (1000 pmol/L)"
        in by_topic(run(obs("b12", 1600, 10)), "elevated-b12-no-supplement").detail
    )


# --- suggestion labels name what they order ------------------------------------------------------------


def test_iron_studies_suggestion_labels_name_only_the_tests_they_order() -> None:
    """With a ferritin already drafted, the suggestions ordered only a TSAT but were labelled 'Order ferritin
    and transferrin saturation ...': the clinician cannot tell what accepting them does."""
    findings = run(drafts=(draft_b12(), draft_lab("ferritin")), hook="order-sign")
    finding = by_topic(findings, "iron-studies-after-b12")
    assert finding.proposals
    for proposal in finding.proposals:
        assert [a.resource["code"]["coding"][0]["code"] for a in proposal.actions] == ["2502-3"]
        assert "ferritin" not in proposal.label.lower() and "transferrin saturation" in proposal.label
    both = by_topic(run(drafts=(draft_b12(),), hook="order-select"), "iron-studies-after-b12")
    assert all("ferritin and transferrin saturation" in p.label for p in both.proposals)


# --- a high B12 on prescribed B12 therapy with no recorded indication -------------------------------------


def _stop_proposal(finding):
    return next(p for p in finding.proposals if any(a.type == "update" for a in p.actions))


def test_b12_injections_without_a_recorded_indication_are_not_recommended_for_stopping() -> None:
    """Decades of B12 injections are given for pernicious anaemia or malabsorption far more often than
    the diagnosis is coded. On a high B12 (expected on injections) the card recommended stopping them as
    'supplement not needed', which for pernicious anaemia risks irreversible neurological damage."""
    labs = obs("b12", 1200, 10)
    finding = by_topic(run(labs, med(CYANO, 3000)), "elevated-b12-supplement-review")
    assert "review B12 supplements" not in finding.summary and len(finding.summary) < 140
    assert "indication" in finding.summary
    assert "why" in finding.detail and "pernicious anaemia" in finding.detail
    stop = _stop_proposal(finding)
    assert not stop.is_recommended
    update = next(a for a in stop.actions if a.type == "update")
    assert "supplement not needed" not in update.resource["statusReason"]["text"]
    # With the iron deficiency beside it, the same caution.
    both = by_topic(run(labs, obs("ferritin", 12, 10), med(CYANO, 3000)), "iron-deficiency-with-high-b12")
    assert not _stop_proposal(both).is_recommended and "why" in both.detail
    assert "review B12 supplements" not in both.summary and len(both.summary) < 140
    # A multivitamin is a supplement: the review stays as it was.
    multi = med({"text": "Multivitamin tablet"}, 200, kind="MedicationStatement")
    supplement = by_topic(run(labs, multi), "elevated-b12-supplement-review")
    assert "review B12 supplements" in supplement.summary and _stop_proposal(supplement).is_recommended


# --- a supplement started after the high B12 was measured -------------------------------------------------


def test_a_supplement_started_after_the_high_b12_does_not_explain_it() -> None:
    """B12 1600 pg/mL in June, a multivitamin started in December: the supplement review blamed the
    multivitamin, and the work-up for liver disease or cancer (Arendt & Nexo) was silenced."""
    high = obs("b12", 1600, 200)
    later = med({"text": "Multivitamin tablet"}, 30, kind="MedicationStatement")
    findings = run(high, later)
    assert "elevated-b12-supplement-review" not in [f.topic for f in findings]
    finding = by_topic(findings, "elevated-b12-no-supplement")
    assert finding.indicator == "warning"
    assert "Multivitamin tablet" in finding.detail and "after" in finding.detail
    assert "is on file" not in finding.detail
    # Taken before the test: the supplement review, as before.
    earlier = med({"text": "Multivitamin tablet"}, 300, kind="MedicationStatement")
    assert [f.topic for f in run(high, earlier)] == ["elevated-b12-supplement-review"]
    # A renewal written after the test of a course running since before it still counts.
    first = med(
        CYANO,
        250,
        status="completed",
        dispenseRequest={"validityPeriod": {"start": ago(250), "end": ago(40)}},
    )
    renewed = (first, med(CYANO, 30))
    assert "elevated-b12-no-supplement" not in [f.topic for f in run(high, *renewed)]


# --- no stale "before" value -----------------------------------------------------------------------------


def test_a_ferritin_years_before_the_course_is_not_quoted_as_its_baseline() -> None:
    """The 'ferritin before B12 was started' had no age limit: a ferritin of 2017 was shown as the trend
    of a course started last month, and read as iron deficiency present before the course."""
    findings = run(obs("ferritin", 12, 3000), med(CYANO, 38), obs("ferritin", 10, 10), obs("tsat", 8, 10))
    finding = by_topic(findings, "iron-deficiency-after-b12")
    assert "before B12 was started" not in finding.detail and "already present" not in finding.detail
    assert "becomes visible" in finding.detail
    recent = run(obs("ferritin", 165, 300), med(CYANO, 38), obs("ferritin", 10, 10), obs("tsat", 8, 10))
    assert (
        "Ferritin before B12 was started: **165 ng/mL" in by_topic(recent, "iron-deficiency-after-b12").detail
    )


# --- borderline B12 measured on B12 therapy ---------------------------------------------------------------


def test_a_borderline_b12_on_b12_therapy_is_not_framed_as_a_diagnostic_question() -> None:
    """On injections for pernicious anaemia the deficiency is not in doubt: 'order MMA to confirm or exclude
    B12 deficiency' invites doubting the diagnosis; the question is whether the treatment is enough."""
    on_therapy = (med(CYANO, 3000), condition(PERNICIOUS_ANAEMIA), obs("b12", 250, 20))
    finding = by_topic(run(*on_therapy), "borderline-b12-check-mma")
    assert "confirm or exclude" not in finding.summary and "confirm or exclude" not in finding.detail
    assert "on B12 therapy" in finding.summary and len(finding.summary) < 140
    assert "adherence" in finding.detail
    assert [a.resource["code"]["coding"][0]["code"] for p in finding.proposals for a in p.actions] == [
        "13964-2"
    ]
    untreated = by_topic(run(obs("b12", 250, 20)), "borderline-b12-check-mma")
    assert "confirm or exclude B12 deficiency" in untreated.summary


def test_iron_studies_weeks_into_a_course_are_not_called_a_baseline() -> None:
    """40 days after B12 started, iron studies now are not a pre-treatment baseline."""
    finding = by_topic(run(med(CYANO, 40)), "iron-studies-after-b12")
    labels = [p.label for p in finding.proposals]
    assert len(labels) == 2 and not any("baseline" in label for label in labels)
    new_order = by_topic(run(drafts=(draft_b12(),), hook="order-select"), "iron-studies-after-b12")
    assert any("baseline" in p.label for p in new_order.proposals)


def test_iron_deficiency_with_high_b12_names_a_recorded_condition_that_raises_b12() -> None:
    """With cirrhosis on the problem list and no supplement, the card put the high B12 down to supplements
    and said nothing of the liver disease that explains it (and that bleeds)."""
    findings = run(
        obs("b12", 1500, 10), obs("ferritin", 12, 10), condition("19943007", text="Cirrhosis of liver")
    )
    finding = by_topic(findings, "iron-deficiency-with-high-b12")
    assert "Cirrhosis of liver" in finding.detail
    assert "usually reflects supplements" not in finding.detail


def test_a_high_ferritin_months_from_the_high_b12_is_not_read_together_with_it() -> None:
    """'Together they point to liver disease or inflammation' was said of a ferritin ten months older than
    the B12; values are read together only within 30 days of each other."""
    apart = run(obs("b12", 1600, 10), obs("ferritin", 450, 300), gender="male")
    finding = by_topic(apart, "elevated-b12-no-supplement")
    assert "450 ng/mL" in finding.detail and "together they point" not in finding.detail
    close = run(obs("b12", 1600, 10), obs("ferritin", 450, 12), gender="male")
    assert "together they point" in by_topic(close, "elevated-b12-no-supplement").detail


# --- one card for a combined deficiency found after B12 was started --------------------------------------


def _ordered(finding) -> list[str]:
    return [
        a.resource["code"]["coding"][0]["code"]
        for p in finding.proposals
        for a in p.actions
        if a.type == "create"
    ]


def test_combined_deficiency_found_after_starting_b12_is_one_card_that_keeps_the_gastric_work_up() -> None:
    """B12 140 pg/mL with a ferritin of 12, B12 started, then a ferritin of 10 after the start: the combined
    card and the after-B12 card both fired, each saying 'treat the iron; look for malabsorption'.
    iron-deficiency-after-b12 now tells the story alone and carries what only the combined card offered:
    the deficient B12, the shared causes and the tests for autoimmune gastritis and coeliac disease."""
    before = (obs("b12", 140, 40), obs("ferritin", 12, 40))
    after = (obs("ferritin", 10, 15), obs("tsat", 8, 15))
    findings = run(*before, med(CYANO, 38), *after)
    assert topics(findings) == ["iron-deficiency-after-b12"]
    (finding,) = findings
    assert _ordered(finding) == ["31444-3", "40960-7", "2333-3", "31017-7"]
    assert "140 pg/mL on 2025-12-06** is deficient" in finding.detail
    assert "autoimmune gastritis" in finding.summary and len(finding.summary) < 140
    assert "intravenous iron" in finding.detail and "already present" in finding.detail
    assert "adherence" not in finding.detail
    # Pernicious anaemia recorded: no gastric antibodies, only the coeliac screen.
    known = by_topic(
        run(*before, med(CYANO, 38), *after, condition(PERNICIOUS_ANAEMIA)), "iron-deficiency-after-b12"
    )
    assert _ordered(known) == ["31017-7"] and "already recorded" in known.detail
    assert "test for autoimmune gastritis" not in known.summary and "coeliac" in known.summary
    untreated = by_topic(run(*before, condition(PERNICIOUS_ANAEMIA)), "combined-b12-iron-deficiency")
    assert untreated.summary.endswith("screen for coeliac disease")
    # A B12 measured on the course and still deficient: adherence and absorption, as the combined card says.
    failing = run(obs("ferritin", 165, 130), med(CYANO, 120), obs("b12", 150, 10), obs("ferritin", 12, 10))
    assert topics(failing) == ["iron-deficiency-after-b12"]
    assert "adherence" in failing[0].detail and _ordered(failing[0])
    # Without a deficient B12 beside the ferritin, the after-B12 card is as it was: no gastric work-up.
    plain = by_topic(
        run(obs("ferritin", 165, 130), med(CYANO, 120), obs("ferritin", 18, 10), obs("tsat", 12, 10)),
        "iron-deficiency-after-b12",
    )
    assert not plain.proposals and "autoimmune gastritis" not in plain.summary


def test_a_condition_known_only_by_code_is_named_by_its_code_on_the_card() -> None:
    """A cirrhosis coded without text was quoted as 'the recorded a coded condition'."""
    findings = run(obs("b12", 1500, 10), obs("ferritin", 12, 10), condition("19943007"))
    detail = by_topic(findings, "iron-deficiency-with-high-b12").detail
    assert "a coded condition" not in detail and "recorded SNOMED CT 19943007" in detail
    treated = run(
        obs("b12", 1500, 10), obs("ferritin", 12, 10), med(CYANO, 3000), condition(PERNICIOUS_ANAEMIA)
    )
    detail = by_topic(treated, "iron-deficiency-with-high-b12").detail
    assert "B12 deficiency or pernicious anaemia (SNOMED CT 84027009)" in detail


# --- "was the patient taking B12 when this test was drawn?" asks about every course ------------------------


def test_a_high_b12_drawn_during_an_earlier_course_is_not_called_unexplained() -> None:
    """Prescriptions 310 and 211 days ago (one continuous course: gaps under 100 days), a B12 of 1600 drawn
    212 days ago, and a new course since. The rule asked only about the most recent course and about single
    records within 90 days of the test, so it said no B12 was being taken and asked for a liver work-up."""
    earlier = (med(CYANO, 310, status="completed"), med(CYANO, 211, status="completed"))
    findings = run(obs("b12", 1600, 212), *earlier, med(CYANO, 30))
    assert "elevated-b12-no-supplement" not in topics(findings)
    rec = record(*earlier, med(CYANO, 30))
    assert [(c.start.date().isoformat(), c.ongoing) for c in rec.courses("b12-therapy")] == [
        ("2025-03-11", False),
        ("2025-12-16", True),
    ]
    assert rec.course("b12-therapy") == rec.courses("b12-therapy")[-1]
    drawn, therapy = NOW - timedelta(days=212), frozenset({"b12-therapy"})
    assert rec.taking(therapy, drawn - timedelta(days=90), drawn) is not None
    assert rec.taking(therapy, NOW - timedelta(days=150), NOW - timedelta(days=100)) is None
    # A course that ended more than 90 days before the test still does not explain it.
    ended = run(obs("b12", 1600, 100), med(CYANO, 300, status="completed"), med(CYANO, 30))
    assert "elevated-b12-no-supplement" in topics(ended)


# --- an iron deficiency read through inflammation, and the card asking to check it -------------------------


def test_a_deficiency_card_on_an_inflamed_ferritin_carries_the_tsat_check_instead_of_contradicting_it() -> (
    None
):
    """Ferritin 60 with a CRP of 20: the deficiency cards call it iron deficiency (below 100 with
    inflammation) while ferritin-inflammation-check-tsat, on the same two values, called it equivocal and
    asked for a TSAT. One card now: the deficiency card, which says the reading is uncertain and offers the
    transferrin saturation that would support it."""
    inflamed = (obs("ferritin", 60, 10), obs("crp", 20, 10))
    cases = {
        "combined-b12-iron-deficiency": run(obs("b12", 150, 10), *inflamed),
        "iron-deficiency-with-high-b12": run(obs("b12", 1200, 10), *inflamed),
        "iron-deficiency-after-b12": run(med(CYANO, 38), *inflamed),
    }
    for topic, findings in cases.items():
        assert topics(findings) == [topic]
        (finding,) = findings
        assert "2502-3" in _ordered(finding), topic
        assert "transferrin saturation below 20 %" in finding.detail and "uncertain" in finding.detail
    # With a TSAT beside the ferritin there is nothing to check, and no TSAT suggested.
    with_tsat = run(obs("b12", 150, 10), *inflamed, obs("tsat", 15, 10))
    assert "2502-3" not in _ordered(by_topic(with_tsat, "combined-b12-iron-deficiency"))
    # A ferritin below 30 needs no TSAT to call it deficient.
    low = by_topic(
        run(obs("b12", 150, 10), obs("ferritin", 20, 10), obs("crp", 20, 10)), "combined-b12-iron-deficiency"
    )
    assert "2502-3" not in _ordered(low)
    # Without a deficiency card the TSAT card is as it was.
    assert topics(run(*inflamed)) == ["ferritin-inflammation-check-tsat"]


# --- the iron-studies reminder beside a card that already shows the iron deficiency ------------------------


def test_a_card_showing_the_iron_deficiency_carries_the_iron_studies_recheck_instead_of_a_second_card() -> (
    None
):
    """B12 and ferritin both low before a course started 38 days ago: the combined card said 'treat iron too'
    and the iron-studies reminder 'treat the iron; recheck ferritin and TSAT'. At an order hook, a high B12
    on treatment beside a ferritin of 12 got iron-deficiency-with-high-b12 and a reminder to order TSAT 'to
    catch unmasked iron deficiency' that was already shown. One card now, carrying the recheck."""
    combined = run(obs("b12", 150, 60), obs("ferritin", 12, 60), med(CYANO, 38))
    assert topics(combined) == ["combined-b12-iron-deficiency"]
    assert [c for c in _ordered(combined[0]) if c in ("2276-4", "2502-3")] == ["2276-4", "2502-3"]
    assert "2026-02-02" in combined[0].detail
    for hook in ("order-select", "order-sign"):
        high = run(
            obs("b12", 1200, 10), obs("ferritin", 12, 10), med(CYANO, 38), drafts=(draft_b12(),), hook=hook
        )
        assert topics(high) == ["iron-deficiency-with-high-b12"]
        assert "2502-3" in _ordered(high[0]) and "unmasked" not in high[0].detail
    at_view = run(obs("ferritin", 12, 40), med(CYANO, 38), obs("b12", 1200, 20))
    assert topics(at_view) == ["iron-deficiency-with-high-b12"] and "2276-4" in _ordered(at_view[0])


def test_the_iron_studies_reminder_carries_the_tsat_check_of_an_inflamed_ferritin() -> None:
    """A ferritin of 60 with a CRP of 20 before B12 was started: the reminder read it as iron deficiency
    already present, the TSAT card as equivocal. The reminder now says it is uncertain and offers a TSAT
    now, beside the iron studies after the start."""
    findings = run(obs("ferritin", 60, 60), obs("crp", 20, 60), med(CYANO, 38))
    assert topics(findings) == ["iron-studies-after-b12"]
    (finding,) = findings
    assert "uncertain" in finding.detail
    now = [
        a.resource["code"]["coding"][0]["code"]
        for p in finding.proposals
        for a in p.actions
        if "occurrenceDateTime" not in a.resource
    ]
    assert now == ["2502-3"]


def test_the_reminder_at_an_order_hook_does_not_promise_to_catch_a_deficiency_shown_on_treatment() -> None:
    """A renewal 38 days into a course, with a ferritin of 12 taken on treatment: the reminder quoted the
    ferritin without a word and said 'order ferritin and TSAT to catch unmasked iron deficiency'. (At
    patient-view iron-deficiency-after-b12 speaks instead.)"""
    findings = run(
        obs("b12", 600, 10),
        obs("ferritin", 12, 10),
        med(CYANO, 38),
        drafts=(draft_b12(),),
        hook="order-select",
    )
    finding = by_topic(findings, "iron-studies-after-b12")
    assert "unmasked" not in finding.summary and len(finding.summary) < 140
    assert "12 ng/mL on 2026-01-05" in finding.detail and "already shows iron deficiency" in finding.detail
    assert "treat" in finding.summary
    assert topics(run(obs("b12", 600, 10), obs("ferritin", 12, 10), med(CYANO, 38))) == [
        "iron-deficiency-after-b12"
    ]
