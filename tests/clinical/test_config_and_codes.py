"""Site configuration of codes and thresholds, and the value sets' code and text matching."""

from __future__ import annotations

import pytest

from cds_service.clinical import codes
from cds_service.clinical.engine import load_clinical_config
from tests.clinical.builders import CONFIG, NOW, obs, record, run, topics


def test_no_site_config_gives_the_defaults() -> None:
    config = load_clinical_config(None)
    assert config.thresholds.b12_deficient == 200
    assert load_clinical_config({"overrideReasons": [1, 2]}).thresholds == config.thresholds


@pytest.mark.parametrize(
    ("site", "mentions"),
    [
        ({"thresholds": {"b12_deficent": 180}}, "b12_deficent"),
        ({"thresholds": {"b12_deficient": "low"}}, "b12_deficient"),
        ({"thresholds": {"latest_days": 30.5}}, "whole number"),
        ({"thresholds": {"b12_deficient": 400}}, "below b12_borderline_upper"),
        ({"thresholds": []}, "thresholds"),
        ({"codes": {"b12": "http://lab|B12"}}, "codes.b12"),
        ({"codes": {"b12": ["B12-local"]}}, "system|code"),
        ({"codes": {"vitamin-d": ["http://lab|D"]}}, "unknown value set"),
        ({"codes": []}, "codes"),
    ],
)
def test_malformed_sections_raise_a_clear_value_error(site, mentions) -> None:
    with pytest.raises(ValueError, match=mentions):
        load_clinical_config(site)


def test_a_site_threshold_changes_what_fires() -> None:
    borderline = obs("b12", 340, 10)
    assert topics(run(borderline)) == []
    config = load_clinical_config({"thresholds": {"b12_borderline_upper": 400}})
    assert topics(run(borderline, config=config)) == ["borderline-b12-check-mma"]


def test_a_site_lab_code_is_read_and_queried() -> None:
    config = load_clinical_config(
        {"codes": {"b12": ["http://lab.example/codes|VB12", "http://loinc.org|99999-9"]}}
    )
    local = obs("b12", 1500, 5)
    local["code"] = {"coding": [{"system": "http://lab.example/codes", "code": "VB12"}]}
    assert topics(run(local, config=config)) == ["elevated-b12-no-supplement"]
    assert topics(run(local)) == []
    assert "99999-9" in codes.prefetch_loinc_codes(config, "b12-iron")
    assert "99999-9" not in codes.prefetch_loinc_codes(CONFIG, "b12-iron")


def test_prefetch_groups_split_the_panel_from_context_labs() -> None:
    panel = codes.prefetch_loinc_codes(CONFIG, "b12-iron")
    context = codes.prefetch_loinc_codes(CONFIG, "context")
    assert {"2132-9", "14685-2", "2276-4", "2502-3", "13964-2"} <= set(panel)
    assert {"787-2", "1988-5", "1742-6"} <= set(context)
    assert not set(panel) & set(context)
    assert "16695-9" not in panel  # B12 in whole blood is not serum B12


@pytest.mark.parametrize(
    ("concept", "expected"),
    [
        ({"coding": [{"system": codes.RXNORM, "code": "2001499"}]}, {codes.B12_THERAPY}),
        ({"text": "Hydroxocobalamin 1 mg/mL injection"}, {codes.B12_THERAPY}),
        ({"text": "Vit B12 1000mcg tab"}, {codes.B12_THERAPY}),
        ({"coding": [{"system": "http://www.whocc.no/atc", "code": "B03BA03"}]}, {codes.B12_THERAPY}),
        ({"text": "Multivitamin with B12"}, {codes.B12_SUPPLEMENT}),
        ({"text": "Prenatal vitamins"}, {codes.B12_SUPPLEMENT}),
        ({"coding": [{"system": "http://www.whocc.no/atc", "code": "A11AA03"}]}, {codes.B12_SUPPLEMENT}),
        ({"coding": [{"system": codes.RXNORM, "code": "310325"}]}, {codes.IRON_THERAPY}),
        ({"text": "Ferrous fumarate 210 mg"}, {codes.IRON_THERAPY}),
        ({"text": "Atorvastatin 20 mg"}, set()),
        ({"text": "Vitamin D3 1000 IU"}, set()),
    ],
)
def test_medicines_by_code_atc_and_text(concept, expected) -> None:
    assert set(CONFIG.value_sets.medication_classes([concept])) == expected


@pytest.mark.parametrize(
    ("coding", "text", "expected"),
    [
        (("http://snomed.info/sct", "84027009"), None, {codes.B12_DEFICIENCY, codes.PERNICIOUS_ANAEMIA}),
        (
            ("http://hl7.org/fhir/sid/icd-10-cm", "D51.0"),
            None,
            {codes.B12_DEFICIENCY, codes.PERNICIOUS_ANAEMIA},
        ),
        (("http://hl7.org/fhir/sid/icd-10-cm", "K70.31"), None, {codes.LIVER_DISEASE}),
        (("http://hl7.org/fhir/sid/icd-10-cm", "N184"), None, {codes.CKD}),
        (("http://snomed.info/sct", "2043009"), "Alcoholic gastritis", set()),
        (("http://example.org/local", "X1"), "Celiac disease", {codes.COELIAC}),
        (("http://example.org/local", "X2"), "Family history of hemochromatosis", set()),
    ],
)
def test_conditions_by_code_icd_prefix_and_text(coding, text, expected) -> None:
    concept = {"coding": [{"system": coding[0], "code": coding[1]}]}
    if text:
        concept["text"] = text
    assert CONFIG.value_sets.condition_classes(concept) == expected


def test_record_uses_the_shared_clock() -> None:
    assert record().now == NOW
