"""b12-not-for-high-ferritin: B12 ordered for a patient whose B12 is not low and whose ferritin is high.

B12 lowers ferritin only when a megaloblastic anaemia raised it. It does nothing for a ferritin raised by
inflammation, liver disease or haemochromatosis, and prescribing it may delay finding the real cause.

With B12 already high as well (liver disease raises both) the supplement review would warn about the same
draft; this card replaces it (engine.REPLACES), so it carries that review's reasoning and its offer to
remove the draft.
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    b12_deficient,
    b12_elevated,
    cited,
    deficiency_explains_b12,
    ferritin_high,
    fmt,
    iron_source_caution,
    not_recently_done,
    order_labs,
    starting_b12,
    supplement_review_actions,
    tsat_near,
    unexplained_b12_therapy,
    validity_lines,
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
    # The card says the B12 is not deficient: a lower bound under the threshold (">150") does not show it.
    if b12.comparator is not None and b12.value < t.b12_deficient:
        return None
    high, basis = ferritin_high(record, ferritin)
    if not high:
        return None
    wanted = not_recently_done(record, ["crp", "tsat", "iron", "tibc", "alt", "ast"], t.recent_days)
    # A transferrin saturation is what the iron panel is for: one resulted or ordered needs no serum iron
    # and TIBC beside it, and serum iron with TIBC give the saturation.
    if "tsat" not in wanted:
        wanted = [a for a in wanted if a not in ("iron", "tibc")]
    elif "iron" not in wanted and "tibc" not in wanted:
        wanted.remove("tsat")
    # The label names only what is ordered (a TSAT resulted last month is no "iron panel" to order).
    groups = [
        name
        for name, members in (
            ("CRP", ("crp",)),
            ("transferrin saturation" if wanted == ["tsat"] else "iron panel", ("tsat", "iron", "tibc")),
            ("liver enzymes", ("alt", "ast")),
        )
        if any(a in wanted for a in members)
    ]
    named = ", ".join(groups[:-1]) + " and " + groups[-1] if len(groups) > 1 else "".join(groups)
    proposals = order_labs(
        record,
        f"Order {named} to find the cause of the high ferritin",
        wanted,
        "High ferritin: look for its cause",
    )
    tsat, _ = tsat_near(record, ferritin.when)
    elevated, elevated_basis = b12_elevated(record, b12)
    reviewed: list[MedicationEntry] = []
    borderline = b12.comparator is None and t.b12_deficient <= b12.value <= t.b12_borderline_upper
    if borderline and record.tested_since("mma", b12.when) is None and record.ordered("mma") is None:
        proposals += order_labs(
            record, "Order methylmalonic acid", ["mma"], "Borderline vitamin B12", recommended=False
        )
    if elevated:
        b12_line = f"- Vitamin B12 **{b12.quoted()}** is already high (compared with {elevated_basis})."
        b12_reason = (
            "with B12 already high, more B12 will not bring this ferritin down, and a new B12 product adds "
            "nothing unless a deficiency is documented. No diagnosis of B12 deficiency or pernicious "
            "anaemia is recorded (if there is one, B12 should continue: high levels are expected on it)."
        )
        reviewed, review = supplement_review_actions(record, focus, b12)
        proposals += review
    elif borderline:
        b12_line = (
            f"- Vitamin B12 **{b12.quoted()}** is borderline ({fmt(t.b12_deficient)}–"
            f"{fmt(t.b12_borderline_upper)} pg/mL): not deficient by the threshold of "
            f"{fmt(t.b12_deficient)} pg/mL, but a tissue deficiency is not excluded."
        )
        b12_reason = (
            "a borderline B12 makes that unlikely but does not exclude it: a raised methylmalonic acid would "
            "show a tissue deficiency that B12 treats (BSH 2014)."
        )
    else:
        b12_line = f"- Vitamin B12 **{b12.quoted()}** is not deficient (compared with {b12_basis})."
        b12_reason = "with a B12 that is not low it will not bring this ferritin down."
    lines = [
        f"This order starts B12 ({literal_names(d.name for d in drafts)}), but:",
        "",
        b12_line,
        f"- Ferritin **{ferritin.quoted()}** is high (compared with {basis})"
        + (
            f", above {fmt(t.ferritin_very_high)} ng/mL: very high."
            if ferritin.above(t.ferritin_very_high)
            else "."
        ),
    ]
    if tsat is not None:
        lines.append(f"- Transferrin saturation **{tsat.quoted()}**")
    # The results that make an order unnecessary are quoted: the card asks to look for inflammation and
    # liver disease, and a CRP or ALT it does not order is one the clinician should see.
    for analyte, label in (("crp", "CRP"), ("alt", "ALT"), ("ast", "AST")):
        result = record.latest(analyte, within_days=t.recent_days)
        if result is None:
            continue
        comment = (
            f" (inflammation: above {fmt(t.crp_inflammation)} mg/L)"
            if analyte == "crp" and result.above(t.crp_inflammation)
            else ""
        )
        lines.append(f"- {label} **{result.quoted()}**{comment}")
    lines += [
        "",
        "**Reasoning**",
        f"- B12 lowers ferritin only when B12-deficient megaloblastic anaemia raised it; {b12_reason}",
        "- Look for the real cause: inflammation (CRP), liver disease (ALT/AST), metabolic syndrome, or iron "
        f"overload — haemochromatosis is likely when transferrin saturation is above {fmt(t.tsat_high)} % "
        f"({cited(record, 'tsat_high', 'EASL 2022')}).",
    ]
    # A cause already recorded is named, and no genotyping is suggested for a known haemochromatosis.
    # Haemochromatosis kept in remission by venesection is still the diagnosis.
    haemochromatosis = record.has_condition(codes.HAEMOCHROMATOSIS, include_controlled=True)
    known = [
        *haemochromatosis,
        *record.has_condition(codes.LIVER_DISEASE),
        *record.has_condition(codes.LIVER_CANCER),
    ]
    if known:
        lines.append(f"- Recorded: {literal_names(known)}, a known cause of a high ferritin.")
    if elevated:
        lines += iron_source_caution(record, reviewed, reasoned=True)
        # A draft continuing a running course is not simply removed: the card relies on that course.
        if unexplained_b12_therapy(record, focus, reviewed):
            lines += validity_lines(record, courses=[record.course(codes.B12_THERAPY)])
    if tsat is not None and tsat.above(t.tsat_high) and not haemochromatosis:
        lines.append(
            f"- Transferrin saturation is above {fmt(t.tsat_high)} %: consider HFE genotyping "
            f"({cited(record, 'tsat_high', 'EASL 2022')})."
        )
    lines += ["", "Sources: EASL 2022 haemochromatosis guideline; BSH 2014 (Devalia)."]
    if borderline:
        summary = (
            "B12 unlikely to lower this high ferritin (B12 borderline): check MMA; look for inflammation, "
            "liver disease, iron overload"
        )
    elif elevated:
        summary = (
            "B12 already high and will not lower this high ferritin: reconsider the order; look for "
            "inflammation, liver disease, iron overload"
        )
    else:
        summary = (
            "B12 will not lower this high ferritin (B12 not low): look for inflammation, liver disease or "
            "iron overload"
        )
    return Finding(
        topic=TOPIC,
        indicator="warning",
        summary=summary,
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=proposals,
        selection_behavior="any",
    )
