"""iron-deficiency-after-b12: iron deficiency shown by iron studies taken after B12 therapy started.

Once B12 restores erythropoiesis, stored iron is used up and a deficiency masked by the megaloblastic
state appears (Solmaz 2015). It needs iron replacement and, like any iron deficiency, a cause.

When the B12 is deficient at about the time of that ferritin, this is also a combined deficiency: this card
replaces combined-b12-iron-deficiency (engine.REPLACES), so it carries that card's deficient B12, its shared
causes and its tests for autoimmune gastritis and coeliac disease.
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord, days_apart
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    b12_elevated,
    combined_deficiency,
    day,
    day_after,
    haemoglobin_line,
    iron_status,
    shared_cause_workup,
    tsat_check,
    validity_lines,
)

TOPIC = "iron-deficiency-after-b12"
SOURCE = f"{SOURCE_LABEL} (Solmaz 2015; BSH 2014; AGA 2020)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    if focus is not None:
        return None
    t = record.config.thresholds
    course = record.course(codes.B12_THERAPY)
    if course is None or record.days_ago(course.start) > t.course_unmasking_days:
        return None
    treated = day_after(course.start)
    # The latest ferritin (which a later result that cannot be read supersedes), taken after the start.
    latest = record.latest("ferritin")
    after = [latest] if latest is not None and latest.when >= treated else []
    if not after:
        return None
    status = iron_status(record, after[0])
    if not status.deficient:
        return None
    before = record.before("ferritin", treated)
    # A baseline only if it was current when B12 was started ("latest" then), never a years-old value.
    if before is not None and days_apart(course.start, before.when) > t.latest_days:
        before = None
    # Deficient before the course too: nothing was hidden, and the cause has been at work all along.
    known_before = before is not None and iron_status(record, before).deficient
    lines = [
        f"B12 therapy ({literal_names(course.names)}) started on {day(course.start)}. Iron studies taken "
        "after that day show iron deficiency:",
        "",
        *status.lines(),
        *haemoglobin_line(record, status.ferritin.when),
    ]
    if before is not None:
        lines.append(f"- Ferritin before B12 was started: **{before.quoted()}** (trend before → after)")
    combined = combined_deficiency(record)
    if combined is not None and combined[2].ferritin is not status.ferritin:
        combined = None
    b12 = record.latest("b12")
    if combined is not None:
        lines.append(f"- Vitamin B12 **{combined[0].quoted()}** is deficient (compared with {combined[1]})")
    elif b12 is not None:
        # Said when it was taken: a deficient B12 from before the course is what the course treats, not a
        # deficiency on it; a high one is high because of the treatment only when taken on it.
        if b12.when < treated:
            when = " (before B12 was started)"
        elif b12_elevated(record, b12)[0]:
            when = " (high on treatment)"
        else:
            when = " (on treatment)"
        lines.append(f"- Vitamin B12 **{b12.quoted()}**{when}")
    iron = record.products_on_file(frozenset({codes.IRON_THERAPY}))
    tsat_lines, tsat_proposals = tsat_check(record, status.ferritin)
    lines += [
        "",
        "**Reasoning**",
        f"- {status.reason[0].upper()}{status.reason[1:]}.",
        *tsat_lines,
        (
            f"- Iron deficiency was already present before B12 was started (ferritin {before.quoted()}) "
            "and persists: B12 did not unmask it. It needs iron replacement and a search for its cause."
            if known_before and before is not None
            else "- B12 restarts red-cell production, which consumes stored iron; a deficiency hidden by the "
            "megaloblastic state becomes visible (Solmaz et al. 2015)."
        ),
        "- Replace iron, and look for a cause as for any iron deficiency: blood loss, or malabsorption "
        "(autoimmune gastritis, coeliac disease) — the conditions that also cause B12 deficiency (AGA 2020).",
    ]
    workup = shared_cause_workup(record, combined[0]) if combined is not None else None
    if workup is not None:
        lines += workup.lines
    if iron:
        lines.append(
            f"- Iron therapy on file: {literal_names(m.name for m in iron)} — check adherence and absorption."
        )
    # The shared-cause work-up names the course's expired prescriptions when it relies on the course.
    lines += validity_lines(record, iron, [] if workup is not None and workup.on_b12 else [course])
    lines += ["", "Sources: Solmaz et al. 2015; BSH 2014 (Devalia); AGA 2020 iron deficiency guideline."]
    return Finding(
        topic=TOPIC,
        indicator="warning",
        summary=(
            f"Iron and B12 deficient after starting B12: treat the iron; {workup.todo}"
            if workup is not None
            else "Iron deficiency after starting B12: start iron replacement and look for blood "
            "loss or malabsorption"
        ),
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=(workup.proposals if workup is not None else ()) + tsat_proposals,
        selection_behavior="any",
    )
