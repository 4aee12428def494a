"""Every number the rules compare with, its default and where it comes from; a site may override any.

Values are in the canonical units of ``cds_service.fhir.units`` (pg/mL, ng/mL, %, mg/L, fL, g/dL) and
windows in days. The sources are cited on the cards that use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    # BSH 2014 (Devalia et al.): serum cobalamin < 200 ng/L (148 pmol/L) indicates deficiency.
    b12_deficient: float = 200.0
    # Reflex cascades (Mayo, Labcorp): 200–300 pg/mL is borderline; methylmalonic acid decides.
    b12_borderline_upper: float = 300.0
    # ARUP and Mayo upper reference limit, used when the lab gives no range of its own.
    b12_elevated: float = 914.0
    # Arendt & Nexo 2012: > 1000 pmol/L is strongly associated with liver disease and cancer. 1000 pmol/L is
    # 1355.37 pg/mL exactly (the units table's factor): rounded to 1355, a result of exactly 1000 pmol/L
    # would read as above the limit the source sets.
    b12_very_high: float = 1355.37
    # Ferritin < 30 ng/mL confirms iron deficiency without inflammation (BSH / UK practice; AGA 2020 uses 45).
    ferritin_deficient: float = 30.0
    # With inflammation (CRP above the threshold below), ferritin < 100 ng/mL is compatible with deficiency.
    ferritin_deficient_inflamed: float = 100.0
    # EASL 2022 haemochromatosis guideline: raised ferritin > 200 (women) or > 300 ng/mL (men).
    ferritin_high_female: float = 200.0
    ferritin_high_male: float = 300.0
    ferritin_very_high: float = 1000.0
    # Transferrin saturation < 20 % supports iron deficiency; > 45 % suggests iron overload (EASL 2022).
    tsat_low: float = 20.0
    tsat_high: float = 45.0
    # CRP > 5 mg/L marks inflammation (WHO 2020 ferritin guideline; Thurnham).
    crp_inflammation: float = 5.0
    # MCV > 100 fL: macrocytosis.
    mcv_macrocytosis: float = 100.0
    # WHO anaemia thresholds, g/dL.
    hb_anaemia_female: float = 12.0
    hb_anaemia_male: float = 13.0
    # Windows (days): "latest" result, "recent" result, values taken as "the same time".
    latest_days: int = 365
    recent_days: int = 90
    same_time_days: int = 30
    # Iron studies resulted this recently need no new order when B12 is started.
    iron_studies_fresh_days: int = 14
    # Iron studies are due 4–8 weeks after starting B12 (reticulocytes peak on days 5–8, counts
    # are normal by about 8 weeks).
    iron_studies_due_min_days: int = 28
    iron_studies_followup_days: int = 56
    # A course counts as "recently started" for this long.
    course_recent_days: int = 180
    # Iron deficiency unmasked by B12: a course started within this many days.
    course_unmasking_days: int = 365
    # Two records of the same therapy less than this apart belong to one continuous course.
    course_gap_days: int = 100
    # Re-measure B12 about 3 months after stopping a supplement.
    b12_recheck_days: int = 90
    # An open lab order older than this (and not scheduled ahead) no longer counts as pending.
    pending_order_days: int = 180


DEFAULT_THRESHOLDS = Thresholds()
MAX_DAYS = 36_500
_INTEGER_FIELDS = frozenset(f.name for f in fields(Thresholds) if f.type in ("int", int))


def load_thresholds(section: Any) -> Thresholds:
    """The defaults with a site's ``thresholds`` section applied; a bad entry raises ValueError."""
    if section is None:
        return DEFAULT_THRESHOLDS
    if not isinstance(section, dict):
        raise ValueError('the "thresholds" section must be an object of name -> number')
    known = {f.name for f in fields(Thresholds)}
    changes: dict[str, Any] = {}
    for name, value in section.items():
        if name not in known:
            raise ValueError(
                f"thresholds.{name}: unknown threshold; known ones are {', '.join(sorted(known))}"
            )
        # NaN and Infinity come through Python's JSON reader: NaN compares false with everything (no value
        # would ever be high or low), and an infinite number of days is no whole number.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise ValueError(f"thresholds.{name}: expected a finite non-negative number, got {value!r}")
        if name in _INTEGER_FIELDS:
            if value != int(value):
                raise ValueError(f"thresholds.{name}: expected a whole number of days, got {value!r}")
            # Dates this far from today cannot be computed: every call would fail, not the start.
            if value > MAX_DAYS:
                raise ValueError(f"thresholds.{name}: at most {MAX_DAYS} days (100 years), got {value!r}")
            value = int(value)
        changes[name] = value
    result = replace(DEFAULT_THRESHOLDS, **changes)
    for lower, higher in _ORDERED:
        if getattr(result, lower) >= getattr(result, higher):
            raise ValueError(
                f"thresholds: {lower} ({getattr(result, lower):g}) must be below {higher} "
                f"({getattr(result, higher):g})"
            )
    return result


# Pairs that must stay in this order, or one value would be two things at once (a B12 both borderline and
# elevated, a TSAT both low and high, a ferritin both deficient and high).
_ORDERED: tuple[tuple[str, str], ...] = (
    ("b12_deficient", "b12_borderline_upper"),
    ("b12_borderline_upper", "b12_elevated"),
    ("b12_elevated", "b12_very_high"),
    ("ferritin_deficient", "ferritin_deficient_inflamed"),
    ("ferritin_deficient_inflamed", "ferritin_high_female"),
    ("ferritin_deficient_inflamed", "ferritin_high_male"),
    ("ferritin_high_female", "ferritin_very_high"),
    ("ferritin_high_male", "ferritin_very_high"),
    ("tsat_low", "tsat_high"),
    ("iron_studies_due_min_days", "iron_studies_followup_days"),
    ("iron_studies_due_min_days", "course_recent_days"),
)
