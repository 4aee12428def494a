"""combined-b12-iron-deficiency: B12 and iron deficient at the same time.

A shared cause of malabsorption is likely: autoimmune gastritis (pernicious anaemia), coeliac disease,
IBD, bariatric surgery. Test for autoimmune gastritis and coeliac disease; replace B12 first.
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord
from cds_service.clinical.rules import iron_studies_after_b12
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    combined_deficiency,
    haemoglobin_line,
    shared_cause_workup,
    tsat_check,
    validity_lines,
)

TOPIC = "combined-b12-iron-deficiency"
SOURCE = f"{SOURCE_LABEL} (BSH 2014; AGA 2020)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    if focus is not None:
        return None
    found = combined_deficiency(record)
    if found is None:
        return None
    b12, basis, status = found
    workup = shared_cause_workup(record, b12)
    tsat_lines, tsat_proposals = tsat_check(record, status.ferritin)
    # This card replaces the iron-studies reminder (the deficiency is shown): it carries the recheck.
    recheck_lines, recheck = iron_studies_after_b12.carried(record, focus)
    summary = (
        f"B12 and iron deficient, on B12: treat iron too; {workup.todo}"
        if workup.on_b12
        else f"B12 and iron deficient together: replace B12 first; {workup.todo}"
    )
    lines = [
        f"Vitamin B12 **{b12.quoted()}** is deficient (compared with {basis}), and iron studies at the same "
        "time show iron deficiency:",
        "",
        *status.lines(),
        *haemoglobin_line(record, status.ferritin.when),
        "",
        "**Reasoning**",
        f"- {status.reason[0].upper()}{status.reason[1:]}.",
        *tsat_lines,
        *workup.lines,
        *_iron_on_file(record),
        *recheck_lines,
        "",
        "Sources: BSH 2014 (Devalia); AGA 2020 iron deficiency guideline.",
    ]
    return Finding(
        topic=TOPIC,
        indicator="warning",
        summary=summary,
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=workup.proposals + tsat_proposals + recheck,
        selection_behavior="any",
    )


def _iron_on_file(record: PatientRecord) -> list[str]:
    """Iron deficiency on iron therapy: adherence and absorption first (oral iron fails in autoimmune
    gastritis and coeliac disease, the causes this card tests for)."""
    iron = record.products_on_file(frozenset({codes.IRON_THERAPY}))
    if not iron:
        return []
    return [
        f"- Iron therapy on file: {literal_names(m.name for m in iron)} — check adherence and absorption; "
        "oral iron is poorly absorbed in autoimmune gastritis and coeliac disease.",
        *validity_lines(record, iron),
    ]
