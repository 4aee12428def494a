"""ferritin-inflammation-check-tsat: an equivocal ferritin during inflammation without a TSAT.

Ferritin rises with inflammation, so 30–100 ng/mL with a raised CRP neither proves nor excludes iron
deficiency; a transferrin saturation below 20 % supports it (WHO 2020; AGA 2020).

A card that calls the same ferritin iron deficiency (combined-b12-iron-deficiency, iron-deficiency-after-b12,
iron-deficiency-with-high-b12) replaces this one and carries its suggestion (common.tsat_check).
"""

from __future__ import annotations

from cds_service.clinical.findings import Finding
from cds_service.clinical.record import MedicationEntry, PatientRecord
from cds_service.clinical.rules.common import SOURCE_LABEL, fmt, order_labs, tsat_would_settle

TOPIC = "ferritin-inflammation-check-tsat"
SOURCE = f"{SOURCE_LABEL} (WHO 2020; AGA 2020)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    if focus is not None:
        return None
    t = record.config.thresholds
    # Recent only: inflammation comes and goes, and a saturation drawn now does not pair with a ferritin and
    # CRP of months ago (the pair is read within the "same time" window).
    ferritin = record.latest("ferritin", within_days=t.recent_days)
    if ferritin is None:
        return None
    crp = tsat_would_settle(record, ferritin)
    if crp is None:
        return None
    lines = [
        f"- Ferritin **{ferritin.quoted()}** (equivocal band {fmt(t.ferritin_deficient)}–"
        f"{fmt(t.ferritin_deficient_inflamed)} ng/mL)",
        f"- CRP **{crp.quoted()}** (inflammation: above {fmt(t.crp_inflammation)} mg/L)",
        f"- No transferrin saturation within {t.same_time_days} days of the ferritin",
        "",
        "**Reasoning**",
        "- Ferritin is an acute-phase protein: inflammation raises it, so this value can hide iron "
        "deficiency.",
        f"- A transferrin saturation below {fmt(t.tsat_low)} % supports iron deficiency.",
        "",
        "Sources: WHO 2020 guideline on ferritin; AGA 2020 iron deficiency guideline.",
    ]
    return Finding(
        topic=TOPIC,
        indicator="info",
        summary=(
            "Ferritin is equivocal with inflammation: order transferrin saturation to check "
            "for iron deficiency"
        ),
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=order_labs(
            record, "Order transferrin saturation", ["tsat"], "Equivocal ferritin with inflammation"
        ),
        selection_behavior="any",
    )
