"""Censored results ("<n", ">=n") and impossible values: read only for what they prove.

A comparator bounds the true value on one side only. "<2000 pg/mL" says the B12 is below 2000, which proves
nothing about it being high; ">100 pg/mL" proves nothing about it being low. A negative concentration is a
data error, not a deficiency.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.clinical.rules.common import b12_very_high, derived_tsat, iron_status
from tests.clinical.builders import by_topic, draft_b12, med, obs, record, run, topics


def _quantity(analyte: str, value: float, unit: str, comparator: str, days: float) -> dict[str, Any]:
    return obs(analyte, None, days, valueQuantity={"value": value, "unit": unit, "comparator": comparator})


# --- a bound on the wrong side proves nothing --------------------------------------------------------


@pytest.mark.parametrize(
    "b12",
    [
        obs("b12", "<2000 pg/mL", 5),
        _quantity("b12", 2000, "pg/mL", "<", 5),
        _quantity("b12", 2000, "pg/mL", "<=", 5),
    ],
    ids=["string", "quantity-lt", "quantity-le"],
)
def test_a_b12_below_a_high_bound_is_not_read_as_high(b12: dict[str, Any]) -> None:
    rec = record(b12)
    result = rec.results["b12"][0]
    assert not result.is_high(914)[0]
    assert not b12_very_high(rec, result)
    assert run(b12, med({"text": "multivitamin"}, 30, kind="MedicationStatement")) == []
    assert run(b12) == []


def test_a_b12_below_a_bound_under_the_lab_upper_limit_is_still_not_high() -> None:
    ranged = obs("b12", "<2000 pg/mL", 5, referenceRange=[{"high": {"value": 900, "unit": "pg/mL"}}])
    assert not record(ranged).results["b12"][0].is_high(914)[0]


@pytest.mark.parametrize(
    "b12",
    [obs("b12", ">100 pg/mL", 5), _quantity("b12", 100, "pg/mL", ">=", 5)],
    ids=["string-gt", "quantity-ge"],
)
def test_a_b12_above_a_low_bound_is_not_read_as_deficient(b12: dict[str, Any]) -> None:
    assert not record(b12).results["b12"][0].is_low(200)[0]
    assert "combined-b12-iron-deficiency" not in topics(run(b12, obs("ferritin", 10, 5)))


def test_a_bound_on_the_right_side_still_decides() -> None:
    rec = record(obs("b12", ">2000 pg/mL", 5), obs("b12", "<150 pg/mL", 6), obs("b12", ">=914 pg/mL", 7))
    gt, lt, ge = rec.results["b12"]
    assert gt.is_high(914)[0] and b12_very_high(rec, gt)
    assert lt.is_low(200)[0]
    assert not ge.is_high(914)[0]  # ">=914" may be exactly 914, which is not above the limit


def test_a_ferritin_of_at_least_n_is_not_iron_deficient() -> None:
    findings = run(obs("b12", 150, 5), _quantity("ferritin", 10, "ng/mL", ">=", 5))
    assert "combined-b12-iron-deficiency" not in topics(findings)


def test_a_ferritin_below_the_threshold_is_iron_deficient() -> None:
    rec = record(obs("ferritin", "<30 ng/mL", 5))
    assert iron_status(rec, rec.results["ferritin"][0]).deficient
    assert "combined-b12-iron-deficiency" in topics(run(obs("b12", 150, 5), obs("ferritin", "<30 ng/mL", 5)))


def test_a_crp_of_at_most_n_is_not_inflammation() -> None:
    resources = (obs("b12", 150, 5), obs("ferritin", 60, 5), obs("crp", "<=10 mg/L", 5))
    rec = record(*resources)
    assert not iron_status(rec, rec.results["ferritin"][0]).inflamed
    assert topics(run(*resources)) == []


def test_a_tsat_below_a_bound_is_not_called_above_45_percent() -> None:
    findings = run(
        obs("b12", 480, 5),
        obs("ferritin", 650, 5),
        obs("tsat", "<50 %", 5),
        drafts=(draft_b12(),),
        hook="order-select",
    )
    detail = by_topic(findings, "b12-not-for-high-ferritin").detail
    assert "consider HFE genotyping" not in detail


def test_a_tsat_is_not_calculated_from_a_censored_iron_or_tibc() -> None:
    rec = record(obs("iron", ">200 ug/dL", 5), obs("tibc", 250, 5))
    assert derived_tsat(rec, rec.results["iron"][0].when) is None
    rec = record(obs("iron", 60, 5), obs("tibc", "<300 ug/dL", 5))
    assert derived_tsat(rec, rec.results["iron"][0].when) is None
    rec = record(obs("iron", 60, 5), obs("tibc", 300, 5))
    assert derived_tsat(rec, rec.results["iron"][0].when).value == pytest.approx(20.0)


# --- impossible values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("analyte", ["b12", "ferritin", "tsat", "crp"])
def test_a_negative_value_is_not_used_but_counts_as_tested(analyte: str) -> None:
    rec = record(obs(analyte, -5, 5))
    assert rec.results.get(analyte) is None
    assert rec.tested[analyte]


def test_a_negative_b12_and_ferritin_make_no_deficiency_card() -> None:
    assert run(obs("b12", -1, 5), obs("ferritin", -1, 5)) == []


def test_a_zero_is_a_value() -> None:
    """CRP is commonly reported as 0; only a value below zero is impossible."""
    assert record(obs("crp", 0, 5)).results["crp"][0].value == 0
