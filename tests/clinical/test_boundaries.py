"""A systematic boundary pass over the clinical engine: every threshold of the catalogue at exactly its value
and one step either side, in every unit the service accepts; every time window at its edge (date-only values,
time zones, results dated ahead of ``now``); sex-dependent thresholds with sex missing; results that conflict
or repeat at one time. Each row states the catalogue's rule it checks, so a failure names what broke.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.clinical.findings import Finding
from cds_service.clinical.record import number
from tests.clinical.builders import (
    CONFIG,
    NOW,
    PID,
    by_topic,
    evaluate,
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
