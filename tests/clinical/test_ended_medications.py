"""Medication records that have ended: not taken now; an active prescription past its validity still is.

What the record did before: a MedicationStatement left 'active' (or 'intended') whose effective period ended
months ago was on file and ran a course until today, so the supplement review offered to stop a product
the patient no longer took; a request or statement completed or stopped within the last 100 days (the gap
allowed between two records of one course) still made its course ongoing, so a borderline B12 drawn after
the stop was read as 'on B12 therapy'. A record that has certainly ended (a statement's period ended before
today; completed, stopped, cancelled or entered-in-error) now keeps no course running. An active
MedicationRequest whose dispenseRequest.validityPeriod ended long ago stays taken (its status is the
prescriber's word), and a card relying on it says when its validity ended.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cds_service.clinical import codes
from tests.clinical.builders import CYANO, NOW, ago, by_topic, draft_b12, med, obs, record, run, topics

B12 = frozenset({codes.B12_THERAPY})
MULTIVITAMIN = {"text": "Multivitamin tablet"}


def statement(concept: dict[str, Any], status: str = "active", **extra: Any) -> dict[str, Any]:
    resource = med(concept, 400, kind="MedicationStatement", status=status)
    del resource["effectivePeriod"]
    resource.update(extra)
    return resource


def taken_now(resource: dict[str, Any], cls: str = codes.B12_THERAPY) -> tuple[bool, bool, bool]:
    """(on file, latest course ongoing, taken in the last 10 days) for one record."""
    rec = record(resource)
    course = rec.course(cls)
    return (
        bool(rec.products_on_file(frozenset({cls}))),
        course is not None and course.ongoing,
        rec.taking(frozenset({cls}), NOW - timedelta(days=10), NOW) is not None,
    )


# --- certainly ended: not taken now -----------------------------------------------------------------


@pytest.mark.parametrize("status", ["active", "intended", "completed", "stopped"])
def test_a_statement_whose_period_ended_is_not_taken_now(status: str) -> None:
    ended = statement(CYANO, status, effectivePeriod={"start": ago(400), "end": ago(200)})
    assert taken_now(ended) == (False, False, False)
    # Ended 20 days ago, within the gap two records of one course may leave: still ended.
    recent = statement(CYANO, status, effectivePeriod={"start": ago(400), "end": ago(20)})
    assert taken_now(recent) == (False, False, False)
    course = record(recent).course(codes.B12_THERAPY)
    assert course is not None and course.end.date().isoformat() == ago(20)[:10]


def test_a_statement_ending_today_or_later_is_still_taken() -> None:
    today = statement(CYANO, effectivePeriod={"start": ago(400), "end": NOW.date().isoformat()})
    later = statement(CYANO, effectivePeriod={"start": ago(400), "end": ago(-30)})
    assert taken_now(today) == (True, True, True)
    assert taken_now(later) == (True, True, True)


def test_an_active_statement_dated_long_ago_is_still_taken() -> None:
    # An effectiveDateTime says when it was taken, not that it stopped: 'active' is the last word.
    assert taken_now(statement(CYANO, effectiveDateTime=ago(900))) == (True, True, True)


@pytest.mark.parametrize(
    "resource",
    [
        statement(CYANO, "completed", effectiveDateTime=ago(40)),
        statement(CYANO, "completed", effectiveDateTime=ago(400)),
        med(CYANO, 30, status="completed"),
        med(CYANO, 30, status="stopped"),
    ],
    ids=["statement-completed-40d", "statement-completed-400d", "request-completed", "request-stopped"],
)
def test_a_completed_or_stopped_record_keeps_no_course_running(resource: dict[str, Any]) -> None:
    assert taken_now(resource) == (False, False, False)


def test_an_administration_still_carries_its_course_over_the_gap() -> None:
    # A dose given a month ago ('completed' is an administration's normal status): the next may be due.
    assert taken_now(med(CYANO, 30, kind="MedicationAdministration", status="completed"))[1]


def test_a_later_active_record_still_runs_the_course_an_ended_one_began() -> None:
    rec = record(
        med(CYANO, 300, status="stopped"),
        statement(CYANO, effectivePeriod={"start": ago(250)}),
    )
    course = rec.course(codes.B12_THERAPY)
    assert course is not None and course.ongoing and course.start.date().isoformat() == ago(300)[:10]


def test_a_supplement_statement_that_ended_is_not_reviewed_as_taken() -> None:
    """A multivitamin statement left 'active' whose period ended 200 days ago, and a B12 of 1500 last week:
    the card asked to stop the multivitamin; nothing was taken in the 90 days before the test."""
    ended = statement(MULTIVITAMIN, effectivePeriod={"start": ago(700), "end": ago(200)})
    findings = run(obs("b12", 1500, 7), ended)
    assert topics(findings) == ["elevated-b12-no-supplement"]


def test_a_borderline_b12_after_b12_was_stopped_is_not_read_as_on_therapy() -> None:
    findings = run(obs("b12", 250, 10), med(CYANO, 60, status="stopped"))
    finding = by_topic(findings, "borderline-b12-check-mma")
    assert "on B12 therapy" not in finding.summary
    # While the prescription is active, it is.
    active = by_topic(run(obs("b12", 250, 10), med(CYANO, 60)), "borderline-b12-check-mma")
    assert "on B12 therapy" in active.summary


def test_a_deficient_b12_after_a_completed_course_says_to_replace_b12_not_to_check_adherence() -> None:
    completed = statement(CYANO, "completed", effectiveDateTime=ago(40))
    (finding,) = run(obs("b12", 140, 5), obs("ferritin", 12, 5), completed)
    assert finding.topic == "iron-deficiency-after-b12"
    assert "- Replace B12 first." in finding.detail
    assert "check adherence" not in finding.detail


# --- an active prescription past its validity: still taken, and said so ---------------------------------


def expired(concept: dict[str, Any], ended_days: float = 300, **extra: Any) -> dict[str, Any]:
    validity = {"start": ago(700), "end": ago(ended_days)}
    return med(concept, 700, dispenseRequest={"validityPeriod": validity}, **extra)


def test_an_active_prescription_past_its_validity_is_still_taken() -> None:
    rec = record(expired(CYANO))
    assert taken_now(expired(CYANO)) == (True, True, True)
    course = rec.course(codes.B12_THERAPY)
    assert course is not None and [(n, e.date().isoformat()) for n, e in course.expired] == [
        ("RxNorm 309594", ago(300)[:10])
    ]
    # A validity that has not ended, or a stopped prescription, is not named.
    assert record(expired(CYANO, ended_days=-30)).course(codes.B12_THERAPY).expired == ()
    assert record(expired(CYANO, status="stopped")).course(codes.B12_THERAPY).expired == ()


def _says_expired(detail: str, name: str, days: float = 300) -> bool:
    return (
        f"- The prescription for {name} is active, but its validity period ended on {ago(days)[:10]}"
        in detail
    )


def test_the_supplement_review_says_the_prescription_s_validity_ended() -> None:
    finding = by_topic(run(obs("b12", 1500, 7), expired(MULTIVITAMIN)), "elevated-b12-supplement-review")
    assert _says_expired(finding.detail, "Multivitamin tablet")
    # A prescription still valid is not mentioned.
    valid = by_topic(
        run(obs("b12", 1500, 7), expired(MULTIVITAMIN, ended_days=-30)), "elevated-b12-supplement-review"
    )
    assert "validity period" not in valid.detail


def test_cards_relying_on_a_course_say_its_prescription_s_validity_ended() -> None:
    injection = expired(CYANO)
    combined = by_topic(
        run(obs("b12", 140, 5), obs("ferritin", 12, 5), injection), "combined-b12-iron-deficiency"
    )
    assert "on B12" in combined.summary and _says_expired(combined.detail, "RxNorm 309594")
    borderline = by_topic(run(obs("b12", 250, 10), injection), "borderline-b12-check-mma")
    assert "on B12 therapy" in borderline.summary and _says_expired(borderline.detail, "RxNorm 309594")
    iron = expired({"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "310325"}]})
    with_iron = by_topic(
        run(obs("b12", 140, 5), obs("ferritin", 12, 5), iron), "combined-b12-iron-deficiency"
    )
    assert _says_expired(with_iron.detail, "RxNorm 310325")


def test_iron_studies_after_b12_names_the_expired_prescription_of_its_course() -> None:
    # A course started 60 days ago on a prescription whose validity ended 10 days ago.
    short = med(CYANO, 60, dispenseRequest={"validityPeriod": {"start": ago(60), "end": ago(10)}})
    finding = by_topic(run(obs("b12", 150, 61), obs("ferritin", 190, 61), short), "iron-studies-after-b12")
    assert _says_expired(finding.detail, "RxNorm 309594", days=10)


def test_iron_deficiency_with_high_b12_names_an_expired_prescription_it_reviews_or_is_explained_by() -> None:
    labs = (obs("b12", 1150, 10), obs("ferritin", 14, 10))
    reviewed = by_topic(run(*labs, expired(MULTIVITAMIN)), "iron-deficiency-with-high-b12")
    assert _says_expired(reviewed.detail, "Multivitamin tablet")
    # A deficient B12 before a course still running on an expired prescription explains the high B12.
    course = expired(CYANO, ended_days=100)
    explained = by_topic(run(obs("b12", 150, 710), *labs, course), "iron-deficiency-with-high-b12")
    assert "keep B12" in explained.summary
    assert _says_expired(explained.detail, "RxNorm 309594", days=100)


def test_an_order_continuing_a_course_on_an_expired_prescription_says_so() -> None:
    course = expired(CYANO, ended_days=100)
    draft = draft_b12(CYANO, order_id="renewal")
    finding = by_topic(
        run(obs("b12", 1500, 7), course, drafts=(draft,), hook="order-select"),
        "elevated-b12-supplement-review",
    )
    assert finding.summary.startswith("B12 is high (1500 pg/mL) on B12 therapy")
    assert _says_expired(finding.detail, "RxNorm 309594", days=100)


def test_b12_not_for_high_ferritin_names_the_expired_prescription_of_the_course_a_draft_continues() -> None:
    running = med(CYANO, 100, dispenseRequest={"validityPeriod": {"start": ago(100), "end": ago(10)}})
    draft = draft_b12(CYANO, order_id="renewal")
    findings = run(
        obs("b12", 1400, 5), obs("ferritin", 450, 5), running, drafts=(draft,), hook="order-select"
    )
    finding = by_topic(findings, "b12-not-for-high-ferritin")
    (removal,) = [p for p in finding.proposals if any(a.type == "delete" for a in p.actions)]
    assert removal.label.startswith("If no indication is found")
    assert _says_expired(finding.detail, "RxNorm 309594", days=10)
