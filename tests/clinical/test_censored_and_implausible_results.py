"""Censored results ("<n", ">=n"), impossible values and unconfirmed diagnoses: read only for what they prove.

A comparator bounds the true value on one side only. "<2000 pg/mL" says the B12 is below 2000, which proves
nothing about it being high; ">100 pg/mL" proves nothing about it being low. A negative concentration is a
data error, not a deficiency. A diagnosis recorded as unconfirmed, provisional or differential is a
suspicion: it must not silence the tests that would confirm it, nor explain away a finding.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.clinical import codes
from cds_service.clinical.rules.common import b12_very_high, derived_tsat, iron_status
from tests.clinical.builders import by_topic, condition, draft_b12, med, obs, record, run, topics


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


def test_a_value_that_overflows_its_unit_conversion_is_not_used_but_counts_as_tested() -> None:
    """1.5e308 pmol/L is a finite number, but times 1.35537 it is infinity: a card quoted 'inf pg/mL'."""
    rec = record(obs("b12", 1.5e308, 5, unit="pmol/L"))
    assert rec.results.get("b12") is None
    assert rec.tested["b12"]
    assert run(obs("b12", 1.5e308, 5, unit="pmol/L"), obs("ferritin", 12, 5)) == run(obs("ferritin", 12, 5))


def test_a_zero_is_a_value() -> None:
    """CRP is commonly reported as 0; only a value below zero is impossible."""
    assert record(obs("crp", 0, 5)).results["crp"][0].value == 0


# --- suspected diagnoses --------------------------------------------------------------------------------


@pytest.mark.parametrize("verification", ["unconfirmed", "provisional", "differential"])
def test_an_unconfirmed_diagnosis_is_not_a_known_condition(verification: str) -> None:
    rec = record(
        condition("84027009", verification=verification), condition("19943007", verification=verification)
    )
    assert not rec.has_condition(codes.PERNICIOUS_ANAEMIA, include_controlled=True)
    assert not rec.has_condition(codes.B12_DEFICIENCY, include_controlled=True)
    assert not rec.has_condition(codes.LIVER_DISEASE)


def test_suspected_pernicious_anaemia_does_not_silence_the_antibody_tests() -> None:
    findings = run(
        obs("b12", 150, 5), obs("ferritin", 10, 5), condition("84027009", verification="unconfirmed")
    )
    card = by_topic(findings, "combined-b12-iron-deficiency")
    ordered = {a.resource["code"]["coding"][0]["code"] for p in card.proposals for a in p.actions}
    assert {"31444-3", "40960-7", "2333-3"} <= ordered


def test_suspected_cirrhosis_does_not_explain_a_high_b12() -> None:
    findings = run(obs("b12", 1600, 5), condition("19943007", verification="provisional"))
    assert topics(findings) == ["elevated-b12-no-supplement"]


def test_a_differential_diagnosis_of_b12_deficiency_does_not_silence_the_supplement_review() -> None:
    findings = run(
        obs("b12", 1600, 5),
        med({"text": "multivitamin"}, 30, kind="MedicationStatement"),
        condition("84027009", verification="differential"),
    )
    assert topics(findings) == ["elevated-b12-supplement-review"]


def test_a_confirmed_or_unstated_verification_still_counts() -> None:
    unstated = condition("84027009")
    del unstated["verificationStatus"]
    for item in (condition("84027009"), unstated):
        assert record(item).has_condition(codes.PERNICIOUS_ANAEMIA)


def test_a_b12_above_a_bound_under_the_threshold_is_not_called_not_deficient() -> None:
    """B12 ordered for a high ferritin, with the latest B12 reported as '>150 pg/mL': the card said
    '>150 pg/mL is not deficient (compared with the threshold of 200 pg/mL)', which the value does not
    show; a true B12 of 160 is deficient and B12 would be the right order."""
    ferritin = obs("ferritin", 800, 10)
    for shown in (">150 pg/mL", ">=199 pg/mL"):
        found = run(obs("b12", shown, 10), ferritin, drafts=(draft_b12(),), hook="order-select")
        assert "b12-not-for-high-ferritin" not in topics(found), shown
    for shown in (">=200 pg/mL", ">250 pg/mL"):
        found = run(obs("b12", shown, 10), ferritin, drafts=(draft_b12(),), hook="order-select")
        assert "b12-not-for-high-ferritin" in topics(found), shown


def test_a_censored_haemoglobin_is_called_anaemia_only_when_its_bound_shows_it() -> None:
    labs = (obs("b12", 150, 10), obs("ferritin", 12, 10))
    for shown, verdict in (
        ("<13 g/dL", "(anaemia by"),
        ("<14 g/dL", "(the WHO anaemia threshold: 13 g/dL)"),
        (">13 g/dL", "(no anaemia by"),
        ("12.5 g/dL", "(anaemia by"),
    ):
        (finding,) = run(*labs, obs("hb", shown, 10), gender="male")
        (line,) = [x for x in finding.detail.splitlines() if x.startswith("- Haemoglobin")]
        assert verdict in line, (shown, line)
