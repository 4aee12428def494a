"""Cards read as a clinician would: each test is a card whose suggestions or quoted values were wrong."""

from __future__ import annotations

from typing import Any

from tests.clinical.builders import (
    CYANO,
    RXNORM,
    ago,
    by_topic,
    condition,
    draft_b12,
    draft_lab,
    med,
    obs,
    run,
)


def _orders(finding: Any) -> list[tuple[str, str | None]]:
    return [
        (a.resource["code"]["coding"][0]["code"], a.resource.get("occurrenceDateTime"))
        for p in finding.proposals
        for a in p.actions
        if a.type == "create"
    ]


def test_the_follow_up_after_starting_b12_rechecks_the_ferritin_a_baseline_already_measured() -> None:
    """A B12 order for a deficient, macrocytic patient whose ferritin (250) was measured last week, with no
    TSAT: the 8-week follow-up ordered a transferrin saturation alone. The baseline ferritin is the very
    value expected to fall (Solmaz 2015); the follow-up must measure it again."""
    labs = (obs("b12", 150, 5), obs("mcv", 110, 5), obs("ferritin", 250, 5))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "iron-studies-after-b12")
    followup = [code for code, when in _orders(finding) if when is not None]
    assert sorted(followup) == ["2276-4", "2502-3"]
    assert "Order ferritin and transferrin saturation for" in finding.proposals[0].label
    # A ferritin already drafted for the follow-up is not ordered twice.
    drafted = draft_lab("ferritin", occurrenceDateTime="2026-03-12")
    again = run(*labs, drafts=(draft_b12(), drafted), hook="order-select")
    assert [c for c, w in _orders(by_topic(again, "iron-studies-after-b12")) if w] == ["2502-3"]


def test_a_resulted_transferrin_saturation_is_not_followed_by_an_iron_panel() -> None:
    """B12 ordered for a high ferritin with a TSAT of 55 % last month: the card ordered serum iron and TIBC
    (the panel that TSAT is calculated from) and its label still said 'iron panel'."""
    labs = (obs("b12", 400, 20), obs("ferritin", 800, 20), obs("tsat", 55, 20))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert sorted(c for c, _ in _orders(finding)) == ["1742-6", "1920-8", "1988-5"]
    assert finding.proposals[0].label == "Order CRP and liver enzymes to find the cause of the high ferritin"
    # Serum iron with TIBC give the saturation too.
    panel = (obs("b12", 400, 20), obs("ferritin", 800, 20), obs("iron", 180, 20), obs("tibc", 300, 20))
    finding = by_topic(run(*panel, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert "2502-3" not in [c for c, _ in _orders(finding)]
    # With none of them, the iron panel is ordered and named.
    bare = by_topic(
        run(obs("b12", 400, 20), obs("ferritin", 800, 20), drafts=(draft_b12(),), hook="order-select"),
        "b12-not-for-high-ferritin",
    )
    assert {"2502-3", "2498-4", "2500-7"} <= {c for c, _ in _orders(bare)}
    assert "iron panel" in bare.proposals[0].label


def test_the_b12_quoted_beside_an_unmasked_iron_deficiency_says_when_it_was_taken() -> None:
    """B12 150 pg/mL drawn before the course, ferritin 200 → 15 on it: the card listed 'Vitamin B12 150
    pg/mL' bare under the iron studies taken on treatment, which reads as a deficiency persisting on B12;
    and a high B12 from before the course was called 'high on treatment'."""
    course = med(CYANO, 100)
    iron = (obs("ferritin", 200, 105), obs("ferritin", 15, 10))
    finding = by_topic(run(course, *iron, obs("b12", 150, 105)), "iron-deficiency-after-b12")
    assert "- Vitamin B12 **150 pg/mL on 2025-10-02** (before B12 was started)" in finding.detail
    high_before = by_topic(run(course, *iron, obs("b12", 1000, 105)), "iron-deficiency-after-b12")
    assert "high on treatment" not in high_before.detail
    high_on = by_topic(run(course, *iron, obs("b12", 1000, 10)), "iron-deficiency-after-b12")
    assert "(high on treatment)" in high_on.detail


def test_iron_deficiency_beside_a_high_b12_mentions_the_iron_therapy_on_file() -> None:
    """A patient on ferrous sulfate and B12 injections (as the sandbox's Silvana Cremin), iron deficient
    with a high B12: the card asked for a work-up of the iron deficiency without saying the patient is
    already on iron, the first thing to check (adherence, absorption), which makes blood loss likelier."""
    ferrous = med({"coding": [{"system": RXNORM, "code": "310325"}], "text": "ferrous sulfate 325 MG"}, 400)
    labs = (obs("b12", 1500, 10), obs("ferritin", 12, 10))
    finding = by_topic(run(*labs, ferrous, med(CYANO, 3000)), "iron-deficiency-with-high-b12")
    assert "Iron therapy on file: ferrous sulfate 325 MG" in finding.detail
    assert "Iron therapy on file" not in by_topic(run(*labs), "iron-deficiency-with-high-b12").detail


def test_a_combined_deficiency_on_oral_iron_says_so() -> None:
    ferrous = med({"coding": [{"system": RXNORM, "code": "310325"}], "text": "ferrous sulfate 325 MG"}, 400)
    labs = (obs("b12", 150, 10), obs("ferritin", 12, 10))
    finding = by_topic(run(*labs, ferrous), "combined-b12-iron-deficiency")
    assert "Iron therapy on file: ferrous sulfate 325 MG" in finding.detail
    assert "Iron therapy on file" not in by_topic(run(*labs), "combined-b12-iron-deficiency").detail


def test_b12_for_a_high_ferritin_quotes_the_crp_it_did_not_order() -> None:
    """A B12 order for a ferritin of 450 with a CRP of 30 mg/L last month: the card told the clinician to
    look for inflammation (CRP) and left CRP out of its orders, as resulted, without ever showing it."""
    labs = (obs("b12", 400, 30), obs("ferritin", 450, 30), obs("crp", 30, 30), obs("alt", 20, 200))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert "- CRP **30 mg/L on 2025-12-16** (inflammation: above 5 mg/L)" in finding.detail
    assert "ALT **" not in finding.detail, "an ALT older than 90 days is ordered, not quoted"
    assert "1742-6" in [c for c, _ in _orders(finding)]


def test_a_work_up_test_left_out_as_already_resulted_is_named_with_its_date() -> None:
    """A combined deficiency whose tTG IgA was resulted four months ago: the card ordered the gastric tests
    and silently left tTG out, so the clinician could not tell whether coeliac disease had been forgotten."""
    labs = (obs("b12", 150, 10), obs("ferritin", 12, 10))
    ttg = obs("ttg-iga", "negative", 120)
    finding = by_topic(run(*labs, ttg), "combined-b12-iron-deficiency")
    assert "- Already resulted (see the laboratory report): tTG IgA on 2025-09-17." in finding.detail
    assert "31017-7" not in [c for c, _ in _orders(finding)]
    high = by_topic(run(obs("b12", 1500, 10), obs("ferritin", 12, 10), ttg), "iron-deficiency-with-high-b12")
    assert "tTG IgA on 2025-09-17" in high.detail
    assert "Already resulted" not in by_topic(run(*labs), "combined-b12-iron-deficiency").detail


def test_a_ferritin_the_service_cannot_read_is_not_called_no_result() -> None:
    """A B12 order with last month's ferritin in a unit the service cannot convert: the card said 'Ferritin:
    no result in the last year', which the clinician can see is false."""
    labs = (obs("b12", 150, 5), obs("ferritin", 80, 30, unit="pmol/L"))
    finding = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "iron-studies-after-b12")
    assert "- Ferritin: a result on 2025-12-16 that the service cannot read" in finding.detail
    alone = by_topic(
        run(obs("b12", 150, 5), drafts=(draft_b12(),), hook="order-select"), "iron-studies-after-b12"
    )
    assert "- Ferritin: no result in the last year" in alone.detail


def test_no_hfe_genotyping_for_a_recorded_haemochromatosis() -> None:
    """B12 ordered for a patient with hereditary haemochromatosis on file, ferritin 900 and TSAT 70 %: the
    card suggested HFE genotyping for a diagnosis already made, and did not name the known cause."""
    labs = (obs("b12", 400, 20), obs("ferritin", 900, 20), obs("tsat", 70, 20))
    hh = condition("35400008", text="Hereditary hemochromatosis")
    finding = by_topic(
        run(*labs, hh, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin"
    )
    assert "HFE genotyping" not in finding.detail
    assert "- Recorded: Hereditary hemochromatosis, a known cause of a high ferritin." in finding.detail
    treated = condition("35400008", status="remission")
    in_remission = run(*labs, treated, drafts=(draft_b12(),), hook="order-select")
    assert "HFE genotyping" not in by_topic(in_remission, "b12-not-for-high-ferritin").detail
    unknown = by_topic(run(*labs, drafts=(draft_b12(),), hook="order-select"), "b12-not-for-high-ferritin")
    assert "consider HFE genotyping" in unknown.detail


def test_a_b12_recheck_already_ordered_is_not_ordered_again() -> None:
    """The review accepted at an earlier visit for its B12 re-check but not its stop: the card came back
    offering a second B12 order beside the one already due."""
    labs = (obs("b12", 1500, 10), med({"text": "Multivitamin"}, 200, kind="MedicationStatement"))
    due = draft_lab("b12", status="active", authoredOn=ago(5), occurrenceDateTime=ago(-85))
    finding = by_topic(run(*labs, due), "elevated-b12-supplement-review")
    assert [a.type for p in finding.proposals for a in p.actions] == ["update"]
    assert "already ordered" in finding.proposals[0].label
    # The order that produced the result (written before it, still open) is no re-check.
    earlier = draft_lab("b12", status="active", authoredOn=ago(12))
    again = by_topic(run(*labs, earlier), "elevated-b12-supplement-review")
    assert "2132-9" in [c for c, _ in _orders(again)]


def test_a_b12_draft_beside_an_iron_deficiency_is_not_treated_as_a_supplement_being_taken() -> None:
    """order-select of a multivitamin for a patient with a high B12 and a ferritin of 10, nothing on file: the
    card said 'B12 product(s): Multivitamin. Review them: stop if not needed and re-measure B12 in about 3
    months' and 'Iron deficiency in someone taking B12 suggests ongoing blood loss', of a product not yet
    taken, which cannot explain the B12."""
    multivitamin = draft_b12({"text": "Multivitamin with minerals tablet"})
    labs = (obs("b12", 1400, 20), obs("ferritin", 10, 20))
    finding = by_topic(
        run(*labs, drafts=(multivitamin,), hook="order-select"), "iron-deficiency-with-high-b12"
    )
    assert "re-measure B12 in about 3 months" not in finding.detail
    assert "in someone taking B12" not in finding.detail
    assert "- Being ordered: Multivitamin with minerals tablet." in finding.detail
    assert "No B12 product is on file: ask about over-the-counter vitamins" in finding.detail
    assert "reconsider this B12 order" in finding.summary
    # With a supplement on file when the B12 was drawn, that is named as the likely source.
    on_file = med({"text": "B-complex"}, 200, kind="MedicationStatement")
    found = by_topic(
        run(*labs, on_file, drafts=(multivitamin,), hook="order-select"), "iron-deficiency-with-high-b12"
    )
    assert "- On file: B-complex, the likely source of the high B12." in found.detail
    assert "in someone taking B12" in found.detail


def test_a_b12_product_stopped_at_an_unknown_time_is_not_called_not_taken() -> None:
    """A B12 prescription written 200 days ago, now 'stopped' with no end date, and a B12 of 1500 last week:
    the card said no B12 product was taken in the 90 days before the test, which nothing on file shows."""
    stopped = med({"text": "Cyanocobalamin 1000 mcg tablet"}, 200, status="stopped")
    finding = by_topic(run(obs("b12", 1500, 7), stopped), "elevated-b12-no-supplement")
    assert "**Check when it was stopped:** Cyanocobalamin 1000 mcg tablet (from 2025-06-29, now stopped)" in (
        finding.detail
    )
    ended = med(
        {"text": "Cyanocobalamin 1000 mcg tablet"},
        200,
        status="completed",
        dispenseRequest={"validityPeriod": {"start": ago(200), "end": ago(150)}},
    )
    assert (
        "Check when it was stopped"
        not in by_topic(run(obs("b12", 1500, 7), ended), "elevated-b12-no-supplement").detail
    )


def test_no_coeliac_screening_for_coeliac_disease_in_remission() -> None:
    """Coeliac disease recorded as in remission (clinicalStatus remission) read as no diagnosis: the
    combined-deficiency card offered to 'screen for coeliac disease' with a tTG IgA, as if it were unknown."""
    labs = (obs("b12", 150, 10), obs("ferritin", 12, 10))
    for code in ("396331005", "84568007"):
        finding = by_topic(run(*labs, condition(code, status="remission")), "combined-b12-iron-deficiency")
        offered = [c for c, _ in _orders(finding)]
        assert ("31017-7" in offered) == (code != "396331005"), code
        assert ("31444-3" in offered) == (code != "84568007"), code
    high = by_topic(
        run(obs("b12", 1500, 10), obs("ferritin", 12, 10), condition("396331005", status="remission")),
        "iron-deficiency-with-high-b12",
    )
    assert "31017-7" not in [c for c, _ in _orders(high)]
