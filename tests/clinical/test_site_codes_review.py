"""A site's own codes and thresholds: what a deployment can get wrong, refused at start with a clear
message, and what it adds, honoured by every rule."""

from __future__ import annotations

import json

import pytest

from cds_service.clinical import codes
from cds_service.clinical.engine import load_clinical_config
from tests.clinical.builders import RXNORM, SNOMED, condition, draft_b12, med, obs, run, topics

LOCAL = "http://lab.example.org/codes"


@pytest.mark.parametrize(
    ("section", "mentions"),
    [
        # A verified ferritin code listed as B12: every ferritin of 150 would read as a B12 deficiency.
        ({"b12": ["http://loinc.org|2276-4"]}, "verified code of ferritin"),
        # A verified B12 product listed as iron therapy.
        ({"iron-therapy": [f"{RXNORM}|309594"]}, "verified code of b12-therapy"),
        # A multivitamin's ATC class listed as B12 therapy.
        ({"b12-therapy": ["http://www.whocc.no/atc|A11AA03"]}, "verified code of b12-supplement"),
        # Pernicious anaemia listed as liver disease: it would explain a high B12 away.
        ({"liver-disease": [f"{SNOMED}|84027009"]}, "verified code of b12-deficiency, pernicious-anaemia"),
        ({"chronic-kidney-disease": ["http://hl7.org/fhir/sid/icd-10-cm|K74.60"]}, "liver-disease"),
        # A LOINC code is no medicine.
        ({"b12-therapy": ["http://loinc.org|2132-9"]}, "verified code of b12"),
        # One local code in two value sets.
        ({"b12": [f"{LOCAL}|X1"], "ferritin": [f"{LOCAL}|X1"]}, "also listed in codes.b12"),
    ],
)
def test_a_site_code_that_collides_with_another_value_set_is_refused(section, mentions) -> None:
    with pytest.raises(ValueError, match=mentions):
        load_clinical_config({"codes": section})


def test_a_site_may_repeat_a_verified_code_in_its_own_value_set() -> None:
    config = load_clinical_config(
        {"codes": {"ferritin": ["http://loinc.org|2276-4"], "pernicious-anaemia": [f"{SNOMED}|84027009"]}}
    )
    classes = config.value_sets.condition_classes({"coding": [{"system": SNOMED, "code": "84027009"}]})
    # Listing pernicious anaemia's code again must not lose its other class (B12 deficiency, which explains
    # injections): the site's list used to replace the verified one.
    assert classes == {codes.B12_DEFICIENCY, codes.PERNICIOUS_ANAEMIA}
    labs = (obs("b12", 1500, 10), med({"coding": [{"system": RXNORM, "code": "309594"}]}, 3000))
    assert topics(run(*labs, condition("84027009"), config=config)) == []


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ('{"thresholds": {"b12_elevated": NaN}}', "finite"),
        ('{"thresholds": {"b12_elevated": Infinity}}', "finite"),
        ('{"thresholds": {"latest_days": Infinity}}', "finite"),
        # A finite window so long that now minus it is before year 1: every hook call raised OverflowError.
        ('{"thresholds": {"latest_days": 10000000}}', "at most 36500 days"),
        ('{"thresholds": {"tsat_low": 50}}', "tsat_low .* must be below tsat_high"),
        ('{"thresholds": {"b12_borderline_upper": 1000}}', "must be below b12_elevated"),
        ('{"thresholds": {"b12_very_high": 800}}', "b12_elevated .* must be below b12_very_high"),
        ('{"thresholds": {"ferritin_deficient_inflamed": 250}}', "must be below ferritin_high_female"),
    ],
)
def test_a_threshold_python_reads_from_json_but_no_rule_can_use_is_refused(text, mentions) -> None:
    """The site file is read with Python's json module, which accepts NaN and Infinity: NaN made every
    comparison false (no B12 ever high), and an infinite number of days raised OverflowError, a traceback
    instead of a start-up error. Thresholds out of order made one value two things at once."""
    with pytest.raises(ValueError, match=mentions):
        load_clinical_config(json.loads(text))


def test_a_site_medicine_code_is_honoured_by_the_rules() -> None:
    config = load_clinical_config({"codes": {"b12-supplement": [f"{LOCAL}|MVI-7"]}})
    product = med({"coding": [{"system": LOCAL, "code": "MVI-7"}]}, 200, kind="MedicationStatement")
    high = obs("b12", 1500, 10)
    assert topics(run(high, product, config=config)) == ["elevated-b12-supplement-review"]
    assert topics(run(high, product)) == ["elevated-b12-no-supplement"], "not without the site's code"
    draft = draft_b12({"coding": [{"system": LOCAL, "code": "INJ-B12"}]})
    b12_config = load_clinical_config({"codes": {"b12-therapy": [f"{LOCAL}|INJ-B12"]}})
    ordered = run(obs("b12", 150, 10), drafts=(draft,), hook="order-select", config=b12_config)
    assert topics(ordered) == ["iron-studies-after-b12"]


def test_a_site_local_lab_code_can_be_queried_with_its_system() -> None:
    """A local ferritin code was read when it arrived but never asked for: the prefetch lists only LOINC
    codes. `prefetch_code_tokens` gives every code with its system for the query."""
    config = load_clinical_config({"codes": {"ferritin": [f"{LOCAL}|FERR"], "crp": [f"{LOCAL}|CRP"]}})
    assert f"{LOCAL}|FERR" in codes.prefetch_code_tokens(config, "b12-iron")
    assert f"{LOCAL}|CRP" in codes.prefetch_code_tokens(config, "context")
    assert "FERR" not in codes.prefetch_loinc_codes(config, "b12-iron")
    assert "http://loinc.org|2276-4" in codes.prefetch_code_tokens(config, "b12-iron")


def test_a_site_pernicious_anaemia_code_explains_b12_injections_as_the_verified_codes_do() -> None:
    """A site listed its own pernicious anaemia code under pernicious-anaemia: the patient on injections with
    a high B12 got 'B12 therapy with no recorded indication: confirm why before stopping', with an offer to
    stop it, because only the verified codes (SNOMED 84027009, ICD-10 D51.0) also meant B12 deficiency."""
    config = load_clinical_config({"codes": {"pernicious-anaemia": ["http://hospital.example/dx|PA"]}})
    diagnosis = condition("PA", system="http://hospital.example/dx")
    treated = (obs("b12", 1500, 10), med({"coding": [{"system": RXNORM, "code": "309594"}]}, 3000))
    assert topics(run(*treated, diagnosis, config=config)) == []
    assert topics(run(*treated, condition("84027009"))) == []


def test_a_local_code_with_a_search_reserved_character_is_escaped_for_the_query() -> None:
    config = load_clinical_config({"codes": {"ferritin": [f"{LOCAL}|FER,S$1"]}})
    assert f"{LOCAL}|FER\\,S\\$1" in codes.prefetch_code_tokens(config, "b12-iron")


def test_a_threshold_the_site_changed_is_cited_as_the_site_s_not_the_published_source() -> None:
    """A site that reads ferritin below 45 ng/mL as iron deficiency (AGA 2020) and B12 below 180 as deficient:
    the cards said 'ferritin below 45 ng/mL confirms iron deficiency (UK practice; ...)' and compared the B12
    with 'the threshold', and a site's B12 upper limit was 'the default upper limit'."""
    config = load_clinical_config(
        {
            "thresholds": {
                "ferritin_deficient": 45,
                "b12_deficient": 180,
                "b12_elevated": 1000,
                "hb_anaemia_female": 11.5,
            }
        }
    )
    (combined,) = run(obs("b12", 150, 10), obs("ferritin", 40, 10), obs("hb", 11, 10), config=config)
    assert "Ferritin below 45 ng/mL confirms iron deficiency (this site's setting)" in combined.detail
    assert "compared with this site's threshold of 180 pg/mL" in combined.detail
    assert "(anaemia by this site's threshold of 11.5 g/dL)" in combined.detail
    (high,) = run(obs("b12", 1200, 10), config=config)
    assert "compared with this site's upper limit of 1000 pg/mL" in high.detail
    (default,) = run(obs("b12", 150, 10), obs("ferritin", 20, 10), obs("hb", 11, 10))
    assert "(UK practice; AGA 2020 uses 45 ng/mL)" in default.detail
    assert "compared with the threshold of 200 pg/mL" in default.detail
    assert "by the WHO threshold of 12 g/dL" in default.detail


def test_a_site_s_very_high_b12_and_tsat_limits_are_not_credited_to_the_literature() -> None:
    config = load_clinical_config({"thresholds": {"b12_very_high": 1200, "tsat_high": 50}})
    (high,) = run(obs("b12", 1250, 10), config=config)
    assert "Arendt & Nexo, PLoS One 2012)." not in high.detail.split("Sources:")[0]
    assert "is strong (this site's setting)" in high.detail
    ordered = run(
        obs("b12", 400, 10),
        obs("ferritin", 900, 10),
        obs("tsat", 60, 10),
        drafts=(draft_b12(),),
        hook="order-select",
        config=config,
    )
    (finding,) = ordered
    assert "consider HFE genotyping (this site's setting)" in finding.detail
