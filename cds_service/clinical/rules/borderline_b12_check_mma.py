"""borderline-b12-check-mma: a borderline B12 without a methylmalonic acid to settle it.

Serum B12 of 200–300 pg/mL neither confirms nor excludes deficiency; a raised methylmalonic acid
confirms it (BSH 2014; the Mayo and Labcorp reflex cascades).
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    b12_deficient,
    b12_pmol,
    day,
    day_after,
    fmt,
    order_labs,
    validity_lines,
)

TOPIC = "borderline-b12-check-mma"
SOURCE = f"{SOURCE_LABEL} (BSH 2014)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    if focus is not None:
        return None
    t = record.config.thresholds
    b12 = record.latest("b12")
    if b12 is None or b12.comparator is not None or b12_deficient(record, b12)[0]:
        return None
    if not t.b12_deficient <= b12.value <= t.b12_borderline_upper:
        return None
    if record.tested_since("mma", b12.when) is not None or record.ordered("mma") is not None:
        return None
    # Drawn on B12 therapy (after the day a running course started): the deficiency is not the question,
    # whether the treatment is taken and enough is.
    course = record.course(codes.B12_THERAPY)
    on_therapy = course is not None and course.ongoing and day_after(course.start) <= b12.when
    lines = [
        f"- Vitamin B12 **{b12.quoted()}**: borderline ({fmt(t.b12_deficient)}–{fmt(t.b12_borderline_upper)} "
        f"pg/mL, {b12_pmol(t.b12_deficient)}–{b12_pmol(t.b12_borderline_upper)} pmol/L)",
        "- No methylmalonic acid resulted since then",
        "",
        "**Reasoning**",
        (
            f"- Measured on B12 therapy ({literal_names(course.names)}, since {day(course.start)}): check "
            "adherence, the dose and, for oral B12, absorption; a raised methylmalonic acid shows that "
            "tissue B12 is still short (BSH 2014)."
            if on_therapy and course is not None
            else "- A borderline serum B12 neither confirms nor excludes deficiency; a raised methylmalonic "
            "acid confirms tissue B12 deficiency (BSH 2014; reflex cascades of Mayo Clinic and Labcorp)."
        ),
        *(validity_lines(record, courses=[course]) if on_therapy else []),
        "",
        "Sources: BSH 2014 (Devalia); Mayo Clinic and Labcorp B12 reflex cascades.",
    ]
    return Finding(
        topic=TOPIC,
        indicator="info",
        summary=(
            "Borderline B12 on B12 therapy: check adherence and dose; order methylmalonic acid"
            if on_therapy
            else "Borderline B12: order methylmalonic acid to confirm or exclude B12 deficiency"
        ),
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=order_labs(record, "Order methylmalonic acid", ["mma"], "Borderline vitamin B12"),
        selection_behavior="any",
    )
