"""b12-not-for-high-ferritin: B12 ordered for a patient whose B12 is not low and whose ferritin is high.

B12 lowers ferritin only when a megaloblastic anaemia raised it. It does nothing for a ferritin raised by
inflammation, liver disease or haemochromatosis, and prescribing it may delay finding the real cause.
"""

from __future__ import annotations

from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    b12_deficient,
    deficiency_explains_b12,
    ferritin_high,
    fmt,
    not_recently_done,
    order_labs,
    starting_b12,
    tsat_near,
)

TOPIC = "b12-not-for-high-ferritin"
SOURCE = f"{SOURCE_LABEL} (EASL 2022; BSH 2014)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    if focus is None:
        return None
    drafts, _ = starting_b12(record, focus)
    if not drafts or deficiency_explains_b12(record) is not None:
        return None
    b12 = record.latest("b12")
    ferritin = record.latest("ferritin")
    if b12 is None or ferritin is None:
        return None
    low, b12_basis = b12_deficient(record, b12)
    if low or b12.comparator in ("<", "<="):
        return None
    t = record.config.thresholds
    high, basis = ferritin_high(record, ferritin)
    if not high:
        return None
    wanted = not_recently_done(record, ["crp", "tsat", "iron", "tibc", "alt", "ast"], t.recent_days)
    proposals = order_labs(
        record,
        "Order CRP, iron panel and liver enzymes to find the cause of the high ferritin",
        wanted,
        "High ferritin: look for its cause",
    )
    tsat, _ = tsat_near(record, ferritin.when)
    lines = [
        f"This order starts B12 ({literal_names(d.name for d in drafts)}), but:",
        "",
        f"- Vitamin B12 **{b12.quoted()}** is not deficient (compared with {b12_basis}).",
        f"- Ferritin **{ferritin.quoted()}** is high (compared with {basis})"
        + (
            f", above {fmt(t.ferritin_very_high)} ng/mL: very high."
            if ferritin.above(t.ferritin_very_high)
            else "."
        ),
    ]
    if tsat is not None:
        lines.append(f"- Transferrin saturation **{tsat.quoted()}**")
    lines += [
        "",
        "**Reasoning**",
        "- B12 lowers ferritin only when B12-deficient megaloblastic anaemia raised it; with a normal B12 it "
        "will not bring this ferritin down.",
        "- Look for the real cause: inflammation (CRP), liver disease (ALT/AST), metabolic syndrome, or iron "
        f"overload — haemochromatosis is likely when transferrin saturation is above {fmt(t.tsat_high)} % "
        "(EASL 2022).",
    ]
    if tsat is not None and tsat.above(t.tsat_high):
        lines.append(
            f"- Transferrin saturation is above {fmt(t.tsat_high)} %: consider HFE genotyping (EASL 2022)."
        )
    lines += ["", "Sources: EASL 2022 haemochromatosis guideline; BSH 2014 (Devalia)."]
    return Finding(
        topic=TOPIC,
        indicator="warning",
        summary=(
            "B12 will not lower this high ferritin (B12 not low): look for inflammation, "
            "liver disease or iron overload"
        ),
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=proposals,
        selection_behavior="any",
    )
