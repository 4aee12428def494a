"""A multivitamin or B-complex product in iron deficiency: stopping or removing it is not recommended.

Such products often hold iron, and the record does not say whether this one does; a card reviewing B12
products for a high B12 cannot tell that stopping it would not take away the iron an iron-deficient patient
needs. Each rule that proposes a delete or a stop (the supplement review, carried by
elevated-b12-supplement-review, iron-deficiency-with-high-b12 and b12-not-for-high-ferritin) says so.
"""

from __future__ import annotations

from cds_service.clinical.findings import Finding, Proposal
from tests.clinical.builders import CYANO, ago, by_topic, condition, draft_b12, med, obs, run

MULTIVITAMIN = {"text": "Multivitamin with minerals tablet"}
B_COMPLEX = {"text": "Vitamin B-complex capsule"}


def stop_or_remove(finding: Finding) -> Proposal:
    (proposal,) = [p for p in finding.proposals if any(a.type in ("update", "delete") for a in p.actions)]
    return proposal


def test_removing_a_multivitamin_draft_in_iron_deficiency_is_not_recommended() -> None:
    labs = (obs("b12", 1400, 20), obs("ferritin", 10, 20))
    draft = draft_b12(MULTIVITAMIN)
    finding = by_topic(run(*labs, drafts=(draft,), hook="order-select"), "iron-deficiency-with-high-b12")
    proposal = stop_or_remove(finding)
    assert [a.type for a in proposal.actions] == ["delete"]
    assert not proposal.is_recommended
    assert proposal.label == "If it holds no iron: remove the B12 draft order"
    assert (
        "- Stopping Multivitamin with minerals tablet is offered but not recommended: the patient is iron "
        f"deficient (the ferritin of 10 ng/mL on {ago(20)[:10]})"
    ) in finding.detail
    assert "may contain iron" in finding.detail


def test_stopping_a_b_complex_on_file_in_iron_deficiency_is_not_recommended() -> None:
    labs = (obs("b12", 1150, 10), obs("ferritin", 14, 10))
    finding = by_topic(
        run(*labs, med(B_COMPLEX, 200, kind="MedicationStatement")), "iron-deficiency-with-high-b12"
    )
    proposal = stop_or_remove(finding)
    assert {a.type for a in proposal.actions} == {"update", "create"}
    assert not proposal.is_recommended
    assert proposal.label.startswith("If they hold no iron: stop the B12 product(s)")
    assert "- Stopping Vitamin B-complex capsule is offered but not recommended" in finding.detail


def test_the_supplement_review_holds_back_too_when_the_iron_deficiency_is_on_another_day() -> None:
    # Ferritin 60 days from the B12: not "the same time", so iron-deficiency-with-high-b12 does not fire,
    # but the patient is iron deficient all the same.
    labs = (obs("b12", 1500, 10), obs("ferritin", 12, 70))
    findings = run(*labs, med(MULTIVITAMIN, 200, kind="MedicationStatement"))
    finding = by_topic(findings, "elevated-b12-supplement-review")
    assert not stop_or_remove(finding).is_recommended
    assert f"iron deficient (the ferritin of 12 ng/mL on {ago(70)[:10]})" in finding.detail
    # This card shows no iron studies otherwise: the line says why the ferritin is iron deficiency.
    assert (
        "keep or replace the iron it provides. Ferritin below 30 ng/mL confirms iron deficiency "
        "(UK practice; AGA 2020 uses 45 ng/mL)."
    ) in finding.detail


def test_a_recorded_iron_deficiency_anaemia_holds_it_back() -> None:
    findings = run(
        obs("b12", 1500, 10), med(MULTIVITAMIN, 200, kind="MedicationStatement"), condition("87522002")
    )
    finding = by_topic(findings, "elevated-b12-supplement-review")
    assert not stop_or_remove(finding).is_recommended
    assert "iron deficient (the recorded SNOMED CT 87522002)" in finding.detail


def test_b12_not_for_high_ferritin_holds_back_removing_a_multivitamin_draft_in_iron_deficiency() -> None:
    # A high ferritin beside a recorded iron deficiency anaemia (inflammation can hide one behind the other).
    labs = (obs("b12", 1400, 20), obs("ferritin", 450, 20), condition("87522002"))
    drafts = (draft_b12(CYANO), draft_b12(MULTIVITAMIN, order_id="draft-multi"))
    finding = by_topic(run(*labs, drafts=drafts, hook="order-sign"), "b12-not-for-high-ferritin")
    proposal = stop_or_remove(finding)
    assert [a.resource_id for a in proposal.actions] == [
        "MedicationRequest/draft-b12",
        "MedicationRequest/draft-multi",
    ]
    assert not proposal.is_recommended
    assert "- Stopping Multivitamin with minerals tablet is offered but not recommended" in finding.detail


def test_without_iron_deficiency_or_for_a_b12_only_product_the_stop_stays_recommended() -> None:
    # No iron deficiency: the multivitamin review is recommended as before, with no caution.
    replete = (obs("b12", 1500, 10), obs("ferritin", 150, 10))
    finding = by_topic(
        run(*replete, med(MULTIVITAMIN, 200, kind="MedicationStatement")), "elevated-b12-supplement-review"
    )
    assert stop_or_remove(finding).is_recommended
    assert "not recommended" not in finding.detail
    # A B12-only draft holds no iron: removing it stays recommended in iron deficiency.
    labs = (obs("b12", 1400, 20), obs("ferritin", 10, 20))
    only_b12 = draft_b12({"text": "Cyanocobalamin 1000 microgram oral tablet"})
    finding = by_topic(run(*labs, drafts=(only_b12,), hook="order-select"), "iron-deficiency-with-high-b12")
    assert stop_or_remove(finding).is_recommended
    assert "may contain iron" not in finding.detail
