"""Small, forgiving readers over FHIR JSON dicts: codings, text, dates, references, quantities.

The service reads resources as plain dicts because parsing them into models costs ~50x more; these
helpers keep that reading in one place and never raise on odd data (a wrong type reads as absent).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

# Zero-width characters appear in real display strings (the SMART sandbox has them); direction controls
# (embeddings, overrides, isolates, marks) would reorder whatever a card writes after a name.
_INVISIBLE = dict.fromkeys(
    map(
        ord,
        "\u200b\u200c\u200d\u2060\ufeff\u00ad\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f",
    ),
    None,
)
_SPACES = re.compile(r"\s+")


def array(value: Any) -> list[Any]:
    """``value`` when it is a JSON array, else an empty list: a repeating element of another type reads
    as absent instead of being iterated (a string by character, a number not at all)."""
    return value if isinstance(value, list) else []


def codings(concept: Any) -> Iterator[tuple[str, str]]:
    """(system, code) of every coding of a CodeableConcept; a missing system reads as ""."""
    if not isinstance(concept, dict):
        return
    items = concept.get("coding")
    if not isinstance(items, list):
        return
    for coding in items:
        if isinstance(coding, dict):
            code = coding.get("code")
            if isinstance(code, str) and code:
                system = coding.get("system")
                yield (system if isinstance(system, str) else "", code.strip())


def first_code(concept: Any) -> str | None:
    """The first coding's code (status-like CodeableConcepts such as Condition.clinicalStatus)."""
    for _, code in codings(concept):
        return code
    return None


def normalise_text(text: str) -> str:
    """Lower case, invisible characters removed, runs of whitespace collapsed."""
    return _SPACES.sub(" ", text.translate(_INVISIBLE)).strip().lower()


def concept_text(concept: Any) -> str:
    """Every human-readable string of a CodeableConcept (text and displays), normalised and joined."""
    if not isinstance(concept, dict):
        return ""
    parts = []
    text = concept.get("text")
    if isinstance(text, str):
        parts.append(text)
    items = concept.get("coding")
    if isinstance(items, list):
        parts.extend(c["display"] for c in items if isinstance(c, dict) and isinstance(c.get("display"), str))
    return normalise_text(" | ".join(parts))


def concept_label(concept: Any) -> str | None:
    """A display name for a concept, as a clinician would recognise it, without invisible characters."""
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if isinstance(text, str) and (label := clean_label(text)):
        return label
    items = concept.get("coding")
    if isinstance(items, list):
        for coding in items:
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                label = clean_label(coding["display"])
                if label:
                    return label
    return None


def clean_label(text: str) -> str:
    """A display string on one line, without invisible characters or direction controls ("" if none left)."""
    return _SPACES.sub(" ", text.translate(_INVISIBLE)).strip()


def parse_datetime(value: Any) -> datetime | None:
    """A FHIR date or dateTime (year, year-month, date, or instant) as an aware UTC datetime.

    A partial date reads as its first moment; a dateTime without offset is taken as UTC.
    """
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            parsed = datetime(int(value), 1, 1)
        elif len(value) == 7:
            parsed = datetime(int(value[:4]), int(value[5:7]), 1)
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed


def period_start(period: Any) -> datetime | None:
    return parse_datetime(period.get("start")) if isinstance(period, dict) else None


def period_end(period: Any) -> datetime | None:
    return parse_datetime(period.get("end")) if isinstance(period, dict) else None


def reference_id(reference: Any) -> tuple[str | None, str] | None:
    """(resource type or None, id) of a Reference: ``Type/id``, an absolute URL, ``urn:uuid:id`` or ``#id``.

    ``urn:uuid:`` references (transaction Bundles) carry no type; the caller decides what it may be.
    """
    if not isinstance(reference, dict):
        return None
    ref = reference.get("reference")
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
        return (None, ref[9:] if ref.startswith("urn:uuid:") else ref[8:])
    if ref.startswith("#"):
        return (None, ref)
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2:
        return (parts[-2], parts[-1])
    return (None, parts[-1])


def patient_references(patient_id: str) -> frozenset[str]:
    """The usual spellings of a reference to the patient, for a set lookup before ``refers_to`` parses:
    ``Patient/<id>``, and ``urn:uuid:<id>`` as transaction Bundles write it."""
    return frozenset({f"Patient/{patient_id}", f"urn:uuid:{patient_id}"})


def refers_to(reference: Any, resource_type: str, resource_id: str) -> bool:
    """True when the reference can point at ``resource_type/resource_id`` (``urn:uuid:`` ids match by id)."""
    target = reference_id(reference)
    if target is None:
        return False
    kind, ident = target
    return ident == resource_id and kind in (None, resource_type)


def next_link(bundle: Any) -> str | None:
    """The URL of a Bundle's ``next`` page, as given (relative or absolute, opaque); None on the last page."""
    links = bundle.get("link") if isinstance(bundle, dict) else None
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


# Quantity.comparator's code set in R4. Anything else makes the number meaningless (is "1" a digit to put
# before it?), and it would reach the card verbatim.
COMPARATORS = frozenset({"<", "<=", ">=", ">"})


def quantity(value: Any) -> tuple[float, str | None, str | None] | None:
    """(value, UCUM code or unit text, comparator) of a Quantity; None when it has no numeric value, or a
    comparator outside R4's four."""
    if not isinstance(value, dict):
        return None
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, int | float):
        return None
    unit = value.get("code")
    if not isinstance(unit, str) or not unit:
        unit = value.get("unit") if isinstance(value.get("unit"), str) else None
    comparator = value.get("comparator")
    if comparator is not None and (not isinstance(comparator, str) or comparator not in COMPARATORS):
        return None
    return (float(number), unit, comparator)


_COMPARATOR_STRING = re.compile(r"^\s*(<=|>=|<|>)?\s*(\d+(?:\.\d+)?)\s*([^\d\s].*)?$")


def comparator_string(text: Any) -> tuple[float, str | None, str | None] | None:
    """(value, unit text or None, comparator or None) of a result string like ``<150`` or ``>2000 pg/mL``."""
    if not isinstance(text, str):
        return None
    match = _COMPARATOR_STRING.match(text)
    if match is None:
        return None
    comparator, number, unit = match.groups()
    return (float(number), unit.strip() if unit else None, comparator)
