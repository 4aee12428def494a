"""Which results a rule may read, and which count as a test done: the review of staleness and usability.

Each test is data seen in real feeds that made a card from a value it should not have used, or silenced a
card with a test that gave no result.
"""

from __future__ import annotations

from typing import Any

from tests.clinical.builders import CYANO, ago, draft_b12, med, obs, record, run, topics

FAILED = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}


def _undated(resource: dict[str, Any], **times: Any) -> dict[str, Any]:
    del resource["effectiveDateTime"]
    resource.update(times)
    return resource


# --- when a result was taken -------------------------------------------------------------------------


def test_an_old_sample_reissued_recently_is_dated_by_its_sample_not_its_release() -> None:
    """effectiveInstant was not read, so the result fell back to ``issued``: a B12 drawn 500 days ago and
    re-issued last week made a card quoting it as last week's."""
    reissued = _undated(obs("b12", 1500, 0), effectiveInstant=ago(500), issued=ago(5))
    assert topics(run(reissued)) == []
    assert record(reissued).results["b12"][0].when.date().isoformat() == ago(500)[:10]
    recent = _undated(obs("b12", 1500, 0), effectiveInstant=ago(5), issued=ago(4))
    assert topics(run(recent)) == ["elevated-b12-no-supplement"]


def test_an_effective_time_that_cannot_be_read_does_not_fall_back_to_issued() -> None:
    for effective in (
        {"effectivePeriod": {"end": ago(500)}},
        {"effectiveTiming": {"event": [ago(500)]}},
    ):
        result = _undated(obs("b12", 1500, 0), issued=ago(5), **effective)
        assert topics(run(result)) == [], effective
    # A period with only its end is dated by that end.
    assert record(_undated(obs("b12", 1500, 0), effectivePeriod={"end": ago(7)})).results["b12"]


def test_issued_alone_still_dates_a_result() -> None:
    assert topics(run(_undated(obs("b12", 1500, 0), issued=ago(5)))) == ["elevated-b12-no-supplement"]


# --- a test that gave no result -------------------------------------------------------------------------


def test_a_failed_mma_does_not_silence_the_borderline_b12_card() -> None:
    """An MMA reported with dataAbsentReason (haemolysed, insufficient sample) counted as resulted, so the
    card asking for one disappeared although no MMA value exists."""
    borderline = obs("b12", 250, 10)
    failed = obs("mma", None, 5, dataAbsentReason=FAILED)
    assert topics(run(borderline, failed)) == ["borderline-b12-check-mma"]
    assert topics(run(borderline, obs("mma", None, 5))) == ["borderline-b12-check-mma"], "empty result"
    assert topics(run(borderline, obs("mma", 300, 5))) == []
    # A qualitative or flag-only result is a result.
    flagged = obs("mma", None, 5, interpretation=[{"coding": [{"code": "H"}]}])
    assert topics(run(borderline, flagged)) == []


def test_failed_iron_studies_do_not_count_as_checked_after_starting_b12() -> None:
    course = (med(CYANO, 40), obs("b12", 150, 45))
    failed = (
        obs("ferritin", None, 5, dataAbsentReason={"text": "haemolysed"}),
        obs("tsat", None, 5, dataAbsentReason={"text": "haemolysed"}),
    )
    assert topics(run(*course, *failed)) == ["iron-studies-after-b12"]
    assert topics(run(*course, obs("ferritin", 80, 5), obs("tsat", 25, 5))) == []


def test_a_value_beside_a_data_absent_reason_is_not_read() -> None:
    contradictory = obs("b12", 1500, 5, dataAbsentReason=FAILED)
    assert "b12" not in record(contradictory).results
    assert topics(run(contradictory)) == []


# --- a value superseded by a later one -----------------------------------------------------------------


def test_a_later_b12_that_cannot_be_read_supersedes_the_earlier_one() -> None:
    """A B12 of last week in a unit the service cannot convert left a deficient B12 of 200 days ago as
    "the latest": the card called the patient B12 and iron deficient from a value the lab has since
    replaced (by 900 nmol/L, say, which the clinician can read and the card could not)."""
    old = (obs("b12", 150, 200), obs("ferritin", 12, 200))
    assert topics(run(*old)) == ["combined-b12-iron-deficiency"]
    flag_only = obs("b12", None, 10, interpretation=[{"coding": [{"code": "H"}]}])
    for later in (obs("b12", 900, 10, unit="nmol/L"), obs("b12", -1, 10), flag_only):
        assert topics(run(*old, later)) == [], later
        assert record(*old, later).latest("b12") is None
    # A failed later test replaces nothing; an unreadable duplicate of the same day does not either.
    failed = obs("b12", None, 10, dataAbsentReason=FAILED)
    assert topics(run(*old, failed)) == ["combined-b12-iron-deficiency"]
    same_day = obs("b12", 110, 200, unit="nmol/L")
    assert topics(run(*old, same_day)) == ["combined-b12-iron-deficiency"]


def test_a_deficiency_measured_years_before_a_course_does_not_explain_it() -> None:
    """A B12 of 150 pg/mL seven years ago, then a B12 course started 200 days ago with no diagnosis on
    file, and a B12 of 1500 now: the old value silenced the review of the course as 'explained'."""
    now_high = (med(CYANO, 200), obs("b12", 1500, 10))
    assert topics(run(obs("b12", 150, 2500), *now_high)) == ["elevated-b12-supplement-review"]
    # A deficiency measured just before the course still explains it.
    assert topics(run(obs("b12", 150, 215), *now_high)) == []


# --- how old a value may be ------------------------------------------------------------------------------


def test_no_saturation_is_ordered_now_to_settle_a_ferritin_of_months_ago() -> None:
    """A ferritin of 60 ng/mL with a CRP of 20 mg/L, both 300 days ago: the card ordered a transferrin
    saturation now to settle them, though a saturation drawn now does not pair with a ferritin of ten months
    ago and the inflammation may be long gone."""
    old = (obs("ferritin", 60, 300), obs("crp", 20, 298))
    assert topics(run(*old)) == []
    recent = (obs("ferritin", 60, 60), obs("crp", 20, 58))
    assert topics(run(*recent)) == ["ferritin-inflammation-check-tsat"]
    # A card calling an old inflamed ferritin iron deficiency keeps the doubt but orders no saturation alone.
    combined = run(obs("b12", 150, 300), *old)
    (finding,) = combined
    assert "recheck ferritin, transferrin saturation and CRP together" in finding.detail
    assert "2502-3" not in [
        a.resource["code"]["coding"][0]["code"] for p in finding.proposals for a in p.actions if a.resource
    ]


# --- a test under way ------------------------------------------------------------------------------------


def test_a_test_under_way_is_not_ordered_again_nor_read() -> None:
    """A preliminary MMA (the EHR exposing results but not its orders): the borderline card asked for an
    MMA already in the laboratory. A preliminary or registered result is still never read as a value."""
    borderline = obs("b12", 250, 10)
    for status in ("preliminary", "registered"):
        running = obs("mma", 300 if status == "preliminary" else None, 2, status=status)
        assert topics(run(borderline, running)) == [], status
        assert "mma" not in record(running).results
    # One of another patient, or long abandoned, orders nothing.
    assert topics(run(borderline, obs("mma", 300, 2, status="preliminary", pid="p2"))) == [
        "borderline-b12-check-mma"
    ]
    assert topics(run(borderline, obs("mma", 300, 400, status="preliminary"))) == ["borderline-b12-check-mma"]
    # Nor is a preliminary B12 a value for any card.
    assert topics(run(obs("b12", 1500, 5, status="preliminary"))) == []


def test_a_result_dated_to_the_month_is_quoted_to_the_month() -> None:
    """A B12 dated '2025-12' was quoted 'on 2025-12-01', a day no one recorded (it is read as the 1st only
    to measure its age, which errs older)."""
    monthly = obs("b12", 1500, 0, effectiveDateTime="2025-12")
    (finding,) = run(monthly)
    assert "**1500 pg/mL on 2025-12**" in finding.detail
    assert "2025-12-01" not in finding.detail
    assert "on 2026-01-05**" in run(obs("b12", 1500, 10))[0].detail


def test_an_unmasked_iron_deficiency_is_not_read_from_a_superseded_ferritin() -> None:
    course = (med(CYANO, 100), obs("ferritin", 200, 105))
    assert topics(run(*course, obs("ferritin", 15, 40))) == ["iron-deficiency-after-b12"]
    # A ferritin of last week the service cannot read (the clinician can): the 15 is no longer the latest.
    # Only the reminder that no transferrin saturation was taken on the course is left.
    later = obs("ferritin", 80, 10, unit="pmol/L")
    assert topics(run(*course, obs("ferritin", 15, 40), later)) == ["iron-studies-after-b12"]


# --- dates no clinical record carries -------------------------------------------------------------------


def test_a_medicine_or_result_dated_in_year_9999_or_0001_is_read_as_undated() -> None:
    """A B12 draft or a course authored 9999-12-31 made an OverflowError (a 500) where a rule adds a day or a
    window to the start (tests/http/test_extreme_dates.py); one authored 0001-01-01 did the same where a
    window is taken from it. Such a date is a data error: the record is read as undated."""
    for authored in ("9999-12-31", "9999-12", "9999-12-31T23:59:59Z", "0001-01-01", "0001"):
        drafted = draft_b12()
        drafted["authoredOn"] = authored
        drafted["dosageInstruction"] = [{"timing": {"repeat": {"boundsPeriod": {"start": authored}}}}]
        run(obs("b12", 1500, 10), obs("ferritin", 400, 10), drafts=(drafted,), hook="order-select")
        on_file = med(CYANO, 0, authoredOn=authored)
        assert record(on_file).medications[0].start is None, authored
        run(on_file, obs("b12", 1500, 10), obs("b12", 150, 400), obs("ferritin", 12, 10))
    ancient = obs("b12", 1500, 0, effectiveDateTime="0001-01-01T00:00:00Z")
    assert "b12" not in record(ancient).results


def test_a_month_written_loosely_is_quoted_from_the_parsed_date_not_as_written() -> None:
    """The reader accepts any character between year and month ('2025*12'); quoted as written, the '*'
    would reach the card's Markdown inside its bold value."""
    (finding,) = run(obs("b12", 1500, 0, effectiveDateTime="2025*12"))
    assert "2025*12" not in finding.detail
    assert "on 2025-12-01**" in finding.detail
