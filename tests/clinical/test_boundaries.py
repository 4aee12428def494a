"""A systematic boundary pass over the clinical engine: every threshold of the catalogue at exactly its value
and one step either side, in every unit the service accepts; every time window at its edge (date-only values,
time zones, results dated ahead of ``now``); sex-dependent thresholds with sex missing; results that conflict
or repeat at one time. Each row states the catalogue's rule it checks, so a failure names what broke.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cds_service.clinical.findings import Finding
from cds_service.clinical.record import number
from tests.clinical.builders import (
    CONFIG,
    CYANO,
    NOW,
    PID,
    by_topic,
    draft_b12,
    evaluate,
    med,
    obs,
    run,
    topics,
)

COMBINED = "combined-b12-iron-deficiency"
BORDERLINE = "borderline-b12-check-mma"
NO_SUPPLEMENT = "elevated-b12-no-supplement"
NOT_FOR_FERRITIN = "b12-not-for-high-ferritin"
STUDIES = "iron-studies-after-b12"
TSAT_CARD = "ferritin-inflammation-check-tsat"


def with_sex(
    gender: str | None, *resources: dict[str, Any], drafts: tuple[dict[str, Any], ...] = ()
) -> list[Finding]:
    """The engine over ``resources`` for a patient of ``gender`` (None: no gender recorded, or no Patient)."""
    person: dict[str, Any] = {"resourceType": "Patient", "id": PID}
    if gender is not None:
        person["gender"] = gender
    focus = list(drafts[:1]) if drafts else None
    return evaluate(
        [person, *resources], patient_id=PID, now=NOW, draft_orders=drafts, focus_orders=focus, config=CONFIG
    )


# --- B12: deficient < 200, borderline 200-300, elevated > 914, very high > 1355.37 pg/mL (1000 pmol/L) ------

# (value, unit, expected topics at patient-view with nothing else on file). pmol/L x 1.35537 = pg/mL.
B12_ROWS = [
    (199.99, "pg/mL", []),  # deficient: no card on its own (no catalogue card for B12 deficiency alone)
    (200, "pg/mL", [BORDERLINE]),  # not < 200: the band starts here
    (200, "ng/L", [BORDERLINE]),
    (147.56, "pmol/L", []),  # 199.998 pg/mL: deficient
    (147.57, "pmol/L", [BORDERLINE]),  # 200.012 pg/mL
    (300, "pg/mL", [BORDERLINE]),  # the band is 200-300 inclusive
    (300.01, "pg/mL", []),
    (221.34, "pmol/L", [BORDERLINE]),  # 299.998 pg/mL
    (221.35, "pmol/L", []),  # 300.011 pg/mL
    (914, "pg/mL", []),  # elevated is > 914
    (914.01, "pg/mL", [NO_SUPPLEMENT]),
    (674.36, "pmol/L", [NO_SUPPLEMENT]),  # 914.007 pg/mL
    (674.35, "pmol/L", []),  # 913.994 pg/mL
]


@pytest.mark.parametrize(("value", "unit", "expected"), B12_ROWS)
def test_b12_bands_at_their_edges_in_every_accepted_unit(
    value: float, unit: str, expected: list[str]
) -> None:
    assert topics(run(obs("b12", value, 10, unit=unit))) == expected


@pytest.mark.parametrize(
    ("value", "unit", "indicator"),
    [
        (1355.37, "pg/mL", "info"),  # > 1000 pmol/L is very high; exactly 1000 pmol/L is not
        (1355.38, "pg/mL", "warning"),
        (1355.38, "ng/L", "warning"),
        (1000, "pmol/L", "info"),
        (1000.01, "pmol/L", "warning"),
        (">1355.37 pg/mL", None, "warning"),  # a lower bound at the limit proves the value above it
        (">=1355.37 pg/mL", None, "info"),  # the value may be the limit itself
        ("<5000 pg/mL", None, None),  # an upper bound never proves a value high
    ],
)
def test_very_high_b12_at_1000_pmol_per_litre(value: Any, unit: str | None, indicator: str | None) -> None:
    findings = run(obs("b12", value, 10, unit=unit))
    if indicator is None:
        assert NO_SUPPLEMENT not in topics(findings)
    else:
        assert by_topic(findings, NO_SUPPLEMENT).indicator == indicator


def test_a_converted_b12_is_never_quoted_onto_the_threshold_it_is_compared_with() -> None:
    """147.56 pmol/L is 199.9984 pg/mL: rounded to two decimals the card read '200 pg/mL ... is deficient
    (compared with the threshold of 200 pg/mL)'."""
    finding = by_topic(run(obs("b12", 147.56, 5, unit="pmol/L"), obs("ferritin", 12, 5)), COMBINED)
    assert "**199.998 pg/mL (reported as 147.56 pmol/L) on " in finding.detail
    assert "**200 pg/mL" not in finding.detail


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (199.9983972, "199.998"),
        (299.9975958, "299.998"),
        (200.0000004, "200.0000004"),
        (199.99999999999997, "200"),  # floating-point noise of a conversion is no digit
        (230.4129, "230.41"),
        (914.0073132, "914.01"),
        (147.5, "147.5"),
        (1250.0, "1250"),
        (0.0, "0"),
    ],
)
def test_number_keeps_two_decimals_but_never_makes_a_value_look_whole(value: float, shown: str) -> None:
    assert number(value) == shown


def test_the_molar_band_beside_a_borderline_b12_contains_the_value_reported_in_it() -> None:
    """A B12 of 147.8 pmol/L (200.32 pg/mL) is borderline; the band was quoted as '148–221 pmol/L', which
    put the laboratory's own value below it, i.e. deficient."""
    finding = by_topic(run(obs("b12", 147.8, 10, unit="pmol/L")), BORDERLINE)
    assert "**200.32 pg/mL (reported as 147.8 pmol/L) on " in finding.detail
    assert "borderline (200–300 pg/mL, 147.56–221.34 pmol/L)" in finding.detail
    top = by_topic(run(obs("b12", 221.34, 10, unit="pmol/L")), BORDERLINE)
    assert "(reported as 221.34 pmol/L)" in top.detail and "–221.34 pmol/L)" in top.detail


# --- time windows: counted in calendar days, from the dates a card quotes ----------------------------------
# NOW is 2026-01-15T09:00Z. "Within N days" means dated on or after the day N days before today, whatever the
# time of day and whether the time is given: a clinician counting from the dates on a card must reach the
# decision the service reached.


def at(day: str, analyte: str, value: Any, **extra: Any) -> dict[str, Any]:
    """A result dated ``day`` as written (a date alone, or a date-time with its offset)."""
    return obs(analyte, value, 0, effectiveDateTime=day, **extra)


@pytest.mark.parametrize(
    ("stamp", "fires"),
    [
        ("2025-01-15", True),  # a date alone, exactly 365 days before 2026-01-15: still the latest
        ("2025-01-15T08:59:00Z", True),  # the same day, earlier in the day than now
        ("2025-01-15T23:59:00Z", True),
        ("2025-01-14", False),  # 366 days
        ("2025-01-14T23:59:00Z", False),
        ("2025-01-15T01:00:00+05:00", True),  # dated the 15th where it was taken
    ],
)
def test_latest_means_dated_within_365_days(stamp: str, fires: bool) -> None:
    assert (BORDERLINE in topics(run(at(stamp, "b12", 250)))) is fires


def test_latest_window_counts_from_a_configured_now_with_an_offset() -> None:
    """CDS_NOW may carry an offset: today is its own date there (2026-01-16 in Sydney at 08:00+11:00)."""
    sydney = datetime(2026, 1, 16, 8, 0, tzinfo=timezone(timedelta(hours=11)))
    person = {"resourceType": "Patient", "id": PID, "gender": "female"}

    def fired(stamp: str) -> bool:
        found = evaluate([person, at(stamp, "b12", 250)], patient_id=PID, now=sydney, config=CONFIG)
        return BORDERLINE in topics(found)

    assert fired("2025-01-16") and not fired("2025-01-15")


@pytest.mark.parametrize(
    ("authored", "fires", "age"),
    [
        ("2025-12-19", False, None),  # 27 days
        ("2025-12-18", True, 28),  # 28 days: iron studies are due from 4 weeks
        ("2025-12-18T21:00:00Z", True, 28),  # later in the day than now: still 28 days by the calendar
        ("2025-07-19", True, 180),
        ("2025-07-19T23:00:00Z", True, 180),
        ("2025-07-18T21:00:00Z", False, None),  # 181 days by the calendar (the card said '180 days ago')
        ("2025-07-18", False, None),
    ],
)
def test_patient_view_course_age_is_28_to_180_calendar_days(
    authored: str, fires: bool, age: int | None
) -> None:
    course = med(CYANO, 0, authoredOn=authored)
    findings = run(at("2025-07-01", "b12", 150), course)
    assert (STUDIES in topics(findings)) is fires
    if age is not None:
        assert f"started on {authored[:10]}, {age} days ago" in by_topic(findings, STUDIES).detail


@pytest.mark.parametrize(
    ("authored", "due_now"),
    [
        ("2025-11-20", True),  # 56 days: due today
        ("2025-11-20T14:00:00Z", True),  # later in the day than now: due today all the same
        ("2025-11-21", False),  # 55 days: a follow-up dated tomorrow
    ],
)
def test_iron_studies_fall_due_on_the_day_eight_weeks_after_the_start(authored: str, due_now: bool) -> None:
    finding = by_topic(run(at("2025-11-14", "b12", 150), med(CYANO, 0, authoredOn=authored)), STUDIES)
    assert ("so they are due now" in finding.detail) is due_now
    dated = [a.resource.get("occurrenceDateTime") for p in finding.proposals for a in p.actions]
    assert (dated == [None, None]) is due_now, dated


@pytest.mark.parametrize(
    ("ferritin_day", "same_time"),
    [
        ("2025-12-16", True),  # 30 days after the B12 of 2025-11-16
        ("2025-12-16T23:00:00Z", True),
        ("2025-12-17", False),  # 31 days
        ("2025-10-17T01:00:00Z", True),  # 30 days before it
        ("2025-10-16T23:00:00Z", False),
    ],
)
def test_same_time_means_dated_within_30_days_of_each_other(ferritin_day: str, same_time: bool) -> None:
    b12 = at("2025-11-16T08:00:00Z", "b12", 140)
    findings = run(b12, at(ferritin_day, "ferritin", 12))
    assert (COMBINED in topics(findings)) is same_time


@pytest.mark.parametrize(
    ("stamp", "fresh"),
    [
        ("2026-01-01", True),  # 14 days: iron studies this recent need no new order
        ("2026-01-01T00:30:00Z", True),
        ("2025-12-31T23:30:00Z", False),  # 15 days
    ],
)
def test_iron_studies_resulted_within_14_days_cover_a_new_b12_order(stamp: str, fresh: bool) -> None:
    labs = [at(stamp, "b12", 150), at(stamp, "ferritin", 150), at(stamp, "tsat", 25)]
    findings = run(*labs, drafts=(draft_b12(),), hook="order-select")
    assert (STUDIES not in topics(findings)) is fresh


@pytest.mark.parametrize(
    ("authored", "pending"),
    [
        ("2025-07-19", True),  # 180 days: still pending
        ("2025-07-19T01:00:00Z", True),
        ("2025-07-18T23:00:00Z", False),  # 181 days
        ("2026-03-01", True),  # scheduled ahead
    ],
)
def test_an_open_order_counts_as_pending_for_180_days(authored: str, pending: bool) -> None:
    orders = [
        {
            "resourceType": "ServiceRequest",
            "id": f"sr-{analyte}",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{PID}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "authoredOn": authored,
        }
        for analyte, code in (("ferritin", "2276-4"), ("tsat", "2502-3"))
    ]
    findings = run(at("2025-11-14", "b12", 150), med(CYANO, 40), *orders)
    assert (STUDIES not in topics(findings)) is pending


@pytest.mark.parametrize(
    ("authored", "fires"),
    [
        ("2025-01-15", True),  # 365 days: iron deficiency after a course started within 365 days
        ("2025-01-15T20:00:00Z", True),
        ("2025-01-14T20:00:00Z", False),
    ],
)
def test_iron_deficiency_after_b12_reads_courses_started_within_365_days(authored: str, fires: bool) -> None:
    findings = run(med(CYANO, 0, authoredOn=authored), at("2026-01-10", "ferritin", 12))
    assert ("iron-deficiency-after-b12" in topics(findings)) is fires


@pytest.mark.parametrize(
    ("ended", "explains"),
    [
        ("2025-10-07", True),  # 90 days before the B12 of 2026-01-05: taken in the 90 days before the test
        ("2025-10-06T23:00:00Z", False),  # 91 days
    ],
)
def test_a_supplement_taken_in_the_90_days_before_a_high_b12_explains_it(ended: str, explains: bool) -> None:
    multivitamin = med({"text": "Multivitamin tablet"}, 400, kind="MedicationStatement", status="completed")
    multivitamin["effectivePeriod"] = {"start": "2024-11-01", "end": ended}
    findings = run(at("2026-01-05T10:00:00Z", "b12", 1000), multivitamin)
    assert (NO_SUPPLEMENT not in topics(findings)) is explains


# --- sex-dependent thresholds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gender", "value", "high"),
    [
        ("female", 200, False),  # high ferritin: > 200 ng/mL in women (EASL 2022)
        ("female", 200.01, True),
        ("male", 300, False),  # > 300 in men
        ("male", 300.01, True),
        ("male", 200.01, False),
        ("unknown", 300, False),  # and in anyone whose sex is not recorded as female
        ("unknown", 300.01, True),
        ("other", 200.01, False),
        (None, 300, False),
        (None, 300.01, True),
    ],
)
def test_high_ferritin_by_sex_with_sex_missing(gender: str | None, value: float, high: bool) -> None:
    findings = with_sex(gender, obs("b12", 480, 5), obs("ferritin", value, 5), drafts=(draft_b12(),))
    assert (NOT_FOR_FERRITIN in topics(findings)) is high


@pytest.mark.parametrize(
    ("gender", "value", "unit", "verdict"),
    [
        ("female", 12, "g/dL", "(no anaemia by the WHO threshold of 12 g/dL)"),
        ("female", 11.99, "g/dL", "(anaemia by the WHO threshold of 12 g/dL)"),
        ("female", 119.9, "g/L", "(anaemia by the WHO threshold of 12 g/dL)"),
        ("male", 12.99, "g/dL", "(anaemia by the WHO threshold of 13 g/dL)"),
        ("male", 130, "g/L", "(no anaemia by the WHO threshold of 13 g/dL)"),
        ("male", 8.07, "mmol/L", "(no anaemia by the WHO threshold of 13 g/dL)"),  # 13.0 g/dL
        # Sex not recorded: a value between the two thresholds is anaemia in a man and not in a woman.
        (
            None,
            12.5,
            "g/dL",
            "(sex not recorded: anaemia by the WHO threshold of 13 g/dL for men, not 12 g/dL",
        ),
        (None, 11.9, "g/dL", "(anaemia by the WHO thresholds of 12 g/dL for women and 13 g/dL for men)"),
        (
            "unknown",
            13,
            "g/dL",
            "(no anaemia by the WHO thresholds of 12 g/dL for women and 13 g/dL for men)",
        ),
    ],
)
def test_anaemia_by_sex_and_no_verdict_on_a_guessed_sex(
    gender: str | None, value: float, unit: str, verdict: str
) -> None:
    findings = with_sex(gender, obs("b12", 140, 5), obs("ferritin", 12, 5), obs("hb", value, 5, unit=unit))
    line = next(line for line in by_topic(findings, COMBINED).detail.splitlines() if "Haemoglobin" in line)
    assert verdict in line


# --- results that repeat or conflict ------------------------------------------------------------------------


def twin(first: dict[str, Any], value: Any, **extra: Any) -> dict[str, Any]:
    """Another result of ``first``'s analyte, under another id, taken at the same moment."""
    other = {**first, "id": first["id"] + "-twin", **extra}
    other["valueQuantity"] = {**first["valueQuantity"], "value": value}
    return other


@pytest.mark.parametrize("order", ["low first", "high first"])
def test_two_different_values_taken_at_one_moment_are_neither_used(order: str) -> None:
    """Which of two ferritins (12 and 250 ng/mL) of one moment was read depended on the order the server
    returned them: a combined-deficiency warning or nothing. Neither can be preferred without a guess."""
    low = obs("ferritin", 12, 5)
    pair = [low, twin(low, 250)]
    if order == "high first":
        pair.reverse()
    assert topics(run(obs("b12", 140, 5), *pair)) == []


def test_a_conflict_also_leaves_an_older_result_superseded() -> None:
    low = obs("ferritin", 12, 5)
    assert topics(run(obs("b12", 140, 8), obs("ferritin", 10, 8), low, twin(low, 250))) == []


@pytest.mark.parametrize("order", ["low first", "high first"])
def test_a_conflicting_tsat_pair_does_not_decide_an_equivocal_ferritin(order: str) -> None:
    low = obs("tsat", 15, 5)
    pair = [low, twin(low, 30)]
    if order == "high first":
        pair.reverse()
    assert COMBINED not in topics(run(obs("b12", 140, 5), obs("ferritin", 60, 5), *pair))


@pytest.mark.parametrize(
    "second",
    [
        {"value": 12},  # the same result under two ids
        {"value": 12, "unit": "ug/L"},  # the same value in an equivalent unit
    ],
)
def test_one_result_under_two_ids_is_one_result(second: dict[str, Any]) -> None:
    first = obs("ferritin", 12, 5)
    copy = {**first, "id": first["id"] + "-copy", "valueQuantity": {**first["valueQuantity"], **second}}
    finding = by_topic(run(obs("b12", 140, 5), first, copy), COMBINED)
    assert finding.detail.count("- Ferritin **12 ng/mL on ") == 1


@pytest.mark.parametrize(("later", "fires"), [(12, True), (250, False)])
def test_two_results_on_one_day_at_different_times_read_the_later(later: float, fires: bool) -> None:
    morning = at("2026-01-10T08:00:00Z", "ferritin", 262 - later)
    evening = at("2026-01-10T17:00:00Z", "ferritin", later)
    assert (COMBINED in topics(run(obs("b12", 140, 5), morning, evening))) is fires


# --- TSAT: < 20 % low, > 45 % high; a fraction (unit 1) x 100 -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "hfe"),
    [
        (45, "%", False),
        (45.01, "%", True),
        (0.45, "1", False),
        (0.4501, "1", True),
        (0.46, "{ratio}", True),
        (46, "1", None),  # a "fraction" above 1 is a mislabelled percentage: not used
    ],
)
def test_high_tsat_at_45_percent_in_either_unit(value: float, unit: str, hfe: bool | None) -> None:
    findings = run(
        obs("b12", 480, 5),
        obs("ferritin", 650, 5),
        obs("tsat", value, 5, unit=unit),
        drafts=(draft_b12(),),
        hook="order-select",
    )
    detail = by_topic(findings, NOT_FOR_FERRITIN).detail
    assert ("consider HFE genotyping" in detail) is bool(hfe)
    assert ("Transferrin saturation **" in detail) is (hfe is not None)


def test_a_fraction_is_quoted_as_a_fraction_not_with_the_unit_1() -> None:
    """The card read 'Transferrin saturation **45.01 % (reported as 0.4501 1)**': UCUM's unit '1' means a
    fraction, and printed after the number it reads as a digit; and to two decimals the fraction read 0.45,
    the very limit the 45.01 % is above."""
    findings = run(
        obs("b12", 480, 5),
        obs("ferritin", 650, 5),
        obs("tsat", 0.4501, 5, unit="1"),
        drafts=(draft_b12(),),
        hook="order-select",
    )
    assert "**45.01 % (reported as the fraction 0.4501) on " in by_topic(findings, NOT_FOR_FERRITIN).detail


@pytest.mark.parametrize(
    ("tsat", "deficient"),
    [
        (19.99, True),  # ferritin 30-100 with TSAT < 20 % supports iron deficiency
        (20, False),
        (0.1999, True),
        (0.2, False),
    ],
)
def test_low_tsat_beside_an_equivocal_ferritin(tsat: float, deficient: bool) -> None:
    unit = "%" if tsat >= 1 else "1"
    findings = run(obs("b12", 140, 5), obs("ferritin", 100, 5), obs("tsat", tsat, 5, unit=unit))
    assert (COMBINED in topics(findings)) is deficient


@pytest.mark.parametrize(
    ("analyte", "value", "unit", "quoted"),
    [
        ("b12", 147.5, "pmol/L", "199.92 pg/mL (reported as 147.5 pmol/L)"),
        ("crp", 0.505, "mg/dL", "5.05 mg/L (reported as 0.505 mg/dL)"),  # 0.51 mg/dL would be 5.1
        ("tsat", 0.1999, "1", "19.99 % (reported as the fraction 0.1999)"),
        ("iron", 10, "umol/L", "55.84 ug/dL (reported as 10 umol/L)"),  # 55.845, a float just under
        ("hb", 7.45, "mmol/L", "12.002 g/dL (reported as 7.45 mmol/L)"),  # 12.00195: not shown as 12
        ("hb", 119.9, "g/L", "11.99 g/dL (reported as 119.9 g/L)"),
        ("ferritin", 12, "ug/L", "12 ng/mL"),  # the same unit under another name: nothing to add
    ],
)
def test_a_converted_value_is_quoted_with_what_the_lab_reported_as_precisely(
    analyte: str, value: float, unit: str, quoted: str
) -> None:
    from tests.clinical.builders import record

    assert record(obs(analyte, value, 5, unit=unit)).results[analyte][0].quoted() == f"{quoted} on 2026-01-10"


# --- ferritin with inflammation: 30-100 ng/mL, CRP > 5 mg/L, read only while recent -------------------------


@pytest.mark.parametrize(
    ("ferritin", "crp", "crp_unit", "fires"),
    [
        (30, 20, "mg/L", True),  # the equivocal band is 30-100 inclusive
        (100, 20, "mg/L", True),
        (100.01, 20, "mg/L", False),
        (65, 5, "mg/L", False),  # inflammation is CRP > 5 mg/L
        (65, 5.01, "mg/L", True),
        (65, 0.5, "mg/dL", False),  # 5 mg/L
        (65, 0.501, "mg/dL", True),
        (65, "<=10 mg/L", None, False),  # a bound that does not prove inflammation
        (65, ">5 mg/L", None, True),
    ],
)
def test_ferritin_inflammation_band_and_crp_threshold(
    ferritin: float, crp: Any, crp_unit: Any, fires: bool
) -> None:
    findings = run(obs("ferritin", ferritin, 5), obs("crp", crp, 5, unit=crp_unit))
    assert (TSAT_CARD in topics(findings)) is fires


@pytest.mark.parametrize(("days", "fires"), [(90, True), (91, False)])
def test_ferritin_inflammation_check_reads_a_ferritin_of_the_last_90_days(days: int, fires: bool) -> None:
    """A saturation drawn now does not pair with a ferritin and CRP of months ago (docs/clinical-rules.md)."""
    findings = run(obs("ferritin", 65, days), obs("crp", 22, days))
    assert (TSAT_CARD in topics(findings)) is fires


# --- ferritin: < 30 ng/mL deficient; < 100 with inflammation; very high > 1000 ------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "deficient"),
    [
        (29.99, "ng/mL", True),
        (30, "ng/mL", False),
        (29.99, "ug/L", True),
        (29.99, "µg/L", True),
        (29.99, "mcg/L", True),
        (29.99, "ng/ml", True),
        (12, "pmol/L", False),  # not an accepted ferritin unit: never guessed
        ("<30 ng/mL", None, True),  # below 30 whatever it is
        ("<=30 ng/mL", None, False),  # may be 30
        (">10 ng/mL", None, False),
    ],
)
def test_iron_deficiency_by_ferritin_in_every_accepted_unit(value: Any, unit: Any, deficient: bool) -> None:
    findings = run(obs("b12", 140, 5), obs("ferritin", value, 5, unit=unit))
    assert (COMBINED in topics(findings)) is deficient


@pytest.mark.parametrize(("crp", "deficient"), [(5, False), (5.01, True)])
def test_an_inflamed_ferritin_below_100_reads_as_iron_deficiency(crp: float, deficient: bool) -> None:
    findings = run(obs("b12", 140, 5), obs("ferritin", 99.99, 5), obs("crp", crp, 5))
    assert (COMBINED in topics(findings)) is deficient
    assert (COMBINED in topics(run(obs("b12", 140, 5), obs("ferritin", 100, 5), obs("crp", crp, 5)))) is False


@pytest.mark.parametrize(("value", "very"), [(1000, False), (1000.01, True)])
def test_very_high_ferritin_above_1000(value: float, very: bool) -> None:
    findings = run(obs("b12", 480, 5), obs("ferritin", value, 5), drafts=(draft_b12(),), hook="order-select")
    assert ("above 1000 ng/mL: very high" in by_topic(findings, NOT_FOR_FERRITIN).detail) is very


# --- iron-studies-after-b12: warning when megaloblastic (MCV > 100 or B12 < 200) and ferritin >= 100 --------


@pytest.mark.parametrize(
    ("mcv", "b12", "ferritin", "indicator"),
    [
        (100.01, 250, 100, "warning"),
        (100, 250, 100, "info"),  # macrocytosis is MCV > 100 fL
        (90, 199.99, 100, "warning"),
        (90, 200, 100, "info"),
        (100.01, 250, 99.99, "info"),  # ferritin >= 100: likely to fall and hide iron deficiency
        (100.01, 250, "<150", "info"),  # a ferritin that may be under 100 does not show it
    ],
)
def test_iron_studies_reminder_indicator_at_its_edges(
    mcv: float, b12: float, ferritin: Any, indicator: str
) -> None:
    value = f"{ferritin} ng/mL" if isinstance(ferritin, str) else ferritin
    labs = [obs("mcv", mcv, 60), obs("b12", b12, 60), obs("ferritin", value, 60)]
    assert by_topic(run(*labs, med(CYANO, 40)), STUDIES).indicator == indicator


# --- results dated ahead of now -----------------------------------------------------------------------------


def test_a_result_up_to_a_day_ahead_of_now_is_read_and_one_further_ahead_is_not() -> None:
    """A day's slack for clocks and offsets (a sample dated tomorrow in UTC may be today where it was taken);
    a result dated further ahead cannot have been taken and is not used."""
    assert topics(run(obs("b12", 250, -0.5))) == [BORDERLINE]
    assert topics(run(obs("b12", 250, -2))) == []


# --- courses: records less than 100 days apart are one continuous course ------------------------------------


@pytest.mark.parametrize(("gap", "new_course"), [(99, False), (100, True)])
def test_a_course_resumed_100_days_after_the_last_record_is_a_new_course(gap: int, new_course: bool) -> None:
    """'Records closer than 100 days form one course' (thresholds.course_gap_days): a record exactly 100 days
    after the last one starts a new course, so its iron-studies reminder is due."""
    earlier = med(CYANO, 100 + gap, status="completed")
    findings = run(obs("b12", 150, 102), earlier, med(CYANO, 100))
    assert (STUDIES in topics(findings)) is new_course


@pytest.mark.parametrize(("started", "starts"), [("2025-07-19", True), ("2025-07-18", False)])
def test_a_b12_order_starts_therapy_within_180_days_of_the_course_start(started: str, starts: bool) -> None:
    """A draft for a patient whose course began 180 days ago still starts B12 (the reminder fires); one
    whose course began 181 days ago renews maintenance and starts nothing."""
    course = med(CYANO, 0, authoredOn=started)
    findings = run(at("2025-07-01", "b12", 150), course, drafts=(draft_b12(),), hook="order-select")
    assert (STUDIES in topics(findings)) is starts
