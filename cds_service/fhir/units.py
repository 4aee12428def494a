"""Unit normalisation for the analytes the service reads: fixed factors, derived once, looked up per value.

Each analyte has one canonical unit and a short table of accepted units with their factor to it. The
factors come from molar masses and SI prefixes (B12 1355.37 g/mol, iron 55.845 g/mol) and are written
out here rather than computed by a UCUM library per request (parsing a unit costs milliseconds; a
dictionary lookup costs nanoseconds). Unit spellings are normalised (case, micro sign, ``mcg``, ``[IU]``)
before the lookup; a unit not in the table is not converted — the caller drops the value, never guesses.
"""

from __future__ import annotations

from functools import lru_cache

# analyte -> (canonical unit as displayed, {normalised accepted unit: factor to canonical})
UNIT_TABLES: dict[str, tuple[str, dict[str, float]]] = {
    "b12": ("pg/mL", {"pg/ml": 1.0, "ng/l": 1.0, "pmol/l": 1.35537}),
    "ferritin": ("ng/mL", {"ng/ml": 1.0, "ug/l": 1.0}),
    "tsat": ("%", {"%": 1.0, "1": 100.0}),
    "iron": ("ug/dL", {"ug/dl": 1.0, "umol/l": 5.5845}),
    "tibc": ("ug/dL", {"ug/dl": 1.0, "umol/l": 5.5845}),
    "transferrin": ("mg/dL", {"mg/dl": 1.0, "g/l": 100.0}),
    "crp": ("mg/L", {"mg/l": 1.0, "mg/dl": 10.0}),
    "mcv": ("fL", {"fl": 1.0, "um3": 1.0}),
    "hb": ("g/dL", {"g/dl": 1.0, "g/l": 0.1, "mmol/l": 1.611}),
    "mma": ("nmol/L", {"nmol/l": 1.0, "umol/l": 1000.0}),
    "alt": ("U/L", {"u/l": 1.0, "iu/l": 1.0}),
    "ast": ("U/L", {"u/l": 1.0, "iu/l": 1.0}),
}

# A fraction cannot exceed 1: a TSAT "fraction" above it is a mislabelled percentage, so it is refused.
FRACTION_UNITS = frozenset({"1"})


@lru_cache(maxsize=512)
def normalise_unit(unit: str) -> str:
    """One spelling per unit: ``mcg/L``, ``µg/L`` and ``ug/l`` read ``ug/l``; ``[IU]/L`` reads ``iu/l``."""
    text = unit.strip().lower().replace(" ", "")
    text = text.replace("µ", "u").replace("μ", "u").replace("mcg", "ug").replace("[iu]", "iu")
    text = text.replace("[", "").replace("]", "")
    if text in ("{ratio}", "ratio", "{fraction}"):
        return "1"
    return text


def canonical_unit(analyte: str) -> str:
    return UNIT_TABLES[analyte][0]


@lru_cache(maxsize=1024)
def unit_factor(analyte: str, unit: str) -> tuple[float, bool] | None:
    """(factor to the canonical unit, whether the unit is a fraction), or None if not convertible."""
    table = UNIT_TABLES.get(analyte)
    if table is None:
        return None
    key = normalise_unit(unit)
    factor = table[1].get(key)
    return None if factor is None else (factor, key in FRACTION_UNITS)


def to_canonical(analyte: str, value: float, unit: str | None) -> float | None:
    """``value`` in the analyte's canonical unit, or None when the unit is missing or not convertible."""
    if not isinstance(unit, str):
        return None
    found = unit_factor(analyte, unit)
    if found is None or (found[1] and value > 1.0):
        return None
    return value * found[0]
