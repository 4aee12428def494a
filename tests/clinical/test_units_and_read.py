"""Unit conversion per analyte and the FHIR dict readers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cds_service.fhir.read import (
    comparator_string,
    concept_label,
    concept_text,
    parse_datetime,
    reference_id,
    refers_to,
)
from cds_service.fhir.units import normalise_unit, to_canonical


@pytest.mark.parametrize(
    ("analyte", "value", "unit", "expected"),
    [
        ("b12", 148, "pmol/L", 200.6),
        ("b12", 350, "ng/L", 350),
        ("b12", 350, "pg/ml", 350),
        ("ferritin", 45, "ug/L", 45),
        ("ferritin", 45, "mcg/L", 45),
        ("ferritin", 45, "µg/L", 45),
        ("tsat", 0.18, "1", 18),
        ("tsat", 18, "%", 18),
        ("iron", 10, "umol/L", 55.845),
        ("tibc", 60, "µmol/L", 335.07),
        ("crp", 1.2, "mg/dL", 12),
        ("hb", 125, "g/L", 12.5),
        ("hb", 8, "mmol/L", 12.888),
        ("mma", 0.4, "umol/L", 400),
        ("transferrin", 2.5, "g/L", 250),
        ("alt", 40, "[IU]/L", 40),
    ],
)
def test_every_accepted_unit_converts_to_the_canonical_one(analyte, value, unit, expected) -> None:
    assert to_canonical(analyte, value, unit) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    ("analyte", "value", "unit"),
    [
        ("ferritin", 45, "mmol/L"),
        ("b12", 300, None),
        ("b12", 300, "mg/dL"),
        ("tsat", 25, "1"),
        ("crp", 3, "g"),
    ],
)
def test_unconvertible_units_give_no_value(analyte, value, unit) -> None:
    assert to_canonical(analyte, value, unit) is None


def test_unit_spellings_normalise_once() -> None:
    assert normalise_unit(" MCG/L ") == normalise_unit("µg/L") == "ug/l"
    assert normalise_unit("[IU]/L") == "iu/l"


def test_dates_partial_naive_and_offsets() -> None:
    assert parse_datetime("2025") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_datetime("2025-03") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_datetime("2025-03-04") == datetime(2025, 3, 4, tzinfo=UTC)
    assert parse_datetime("2025-03-04T10:00:00Z") == datetime(2025, 3, 4, 10, tzinfo=UTC)
    assert parse_datetime("2025-03-04T12:00:00+02:00") == datetime(2025, 3, 4, 10, tzinfo=UTC)
    assert parse_datetime("yesterday") is None
    assert parse_datetime(20250304) is None


def test_references_of_every_shape() -> None:
    assert reference_id({"reference": "Patient/p1"}) == ("Patient", "p1")
    assert reference_id({"reference": "https://ehr.example/fhir/Patient/p1/_history/3"}) == ("Patient", "p1")
    assert reference_id({"reference": "urn:uuid:abc"}) == (None, "abc")
    assert reference_id({"reference": "#med1"}) == (None, "#med1")
    assert reference_id({"display": "no reference"}) is None
    assert refers_to({"reference": "urn:uuid:p1"}, "Patient", "p1")
    assert not refers_to({"reference": "Group/p1"}, "Patient", "p1")


def test_comparator_strings_keep_their_comparator() -> None:
    assert comparator_string("<150") == (150.0, None, "<")
    assert comparator_string(">2000 pg/mL") == (2000.0, "pg/mL", ">")
    assert comparator_string("245") == (245.0, None, None)
    assert comparator_string("see comment") is None


def test_zero_width_spaces_do_not_break_text() -> None:
    concept = {"coding": [{"display": "Vitamin\u200b B 12 5 MG/ML"}]}
    assert concept_text(concept) == "vitamin b 12 5 mg/ml"
    assert concept_label(concept) == "Vitamin B 12 5 MG/ML"
