"""elevated-b12-no-supplement: a high B12 that no supplement explains.

Without supplements, a high B12 — especially above 1000 pmol/L and with a high ferritin — is associated
with liver disease (hepatitis, cirrhosis, liver cancer), inflammation, kidney disease and myeloproliferative
disorders (Arendt & Nexo 2012). Liver enzymes and CRP are the first step.
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal, literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord, day_start, days_apart
from cds_service.clinical.rules.common import (
    B12_PRODUCTS,
    SOURCE_LABEL,
    b12_pmol,
    b12_products_by_test_time,
    b12_very_high,
    cited,
    day,
    day_after,
    elevated_latest_b12,
    ferritin_high,
    fmt,
    not_recently_done,
    order_labs,
    suggested_tests_line,
)

TOPIC = "elevated-b12-no-supplement"
SOURCE = f"{SOURCE_LABEL} (Arendt & Nexo 2012)"
EXPLAINING = (codes.LIVER_DISEASE, codes.LIVER_CANCER, codes.CKD, codes.MPN)


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    if focus is not None:
        return None
    high = elevated_latest_b12(record)
    if high is None:
        return None
    b12, basis = high
    t = record.config.thresholds
    # Only a product taken when the B12 was drawn, or in the weeks before, can explain it: one started
    # afterwards cannot, and must not silence the work-up.
    taken, later = b12_products_by_test_time(record, b12)
    if taken:
        return None
    # Nor one taken in the weeks before it: any course (not only the latest) running in that time.
    exposure_window = day_start(b12.when, t.recent_days)
    if record.taking(B12_PRODUCTS, exposure_window, day_after(b12.when)) is not None:
        return None
    for cls in (*EXPLAINING, codes.B12_DEFICIENCY):
        if record.has_condition(cls, include_controlled=cls == codes.B12_DEFICIENCY):
            return None
    very_high = b12_very_high(record, b12)
    wanted = not_recently_done(record, ["alt", "ast", "crp"], t.recent_days)
    proposals = order_labs(
        record, "Order liver enzymes and CRP", wanted, "High B12 without supplements: look for liver disease"
    )
    unknown = [
        m
        for m in record.unidentified_medications
        if m.active or m.start is None or (m.end or m.start) >= exposure_window
    ]
    lines = [
        f"Vitamin B12 **{b12.quoted()}** is elevated (compared with {basis}). No B12 product or "
        f"B12-containing supplement is {'identified' if unknown else 'on file'} or was taken in the "
        f"{t.recent_days} days before the test, and no recorded liver disease, kidney disease or "
        "myeloproliferative neoplasm explains it."
        if not later
        else f"Vitamin B12 **{b12.quoted()}** is elevated (compared with {basis}). No B12 product or "
        f"B12-containing supplement {'identified' if unknown else 'on file'} was being taken then or in "
        f"the {t.recent_days} days before, and no recorded liver disease, kidney disease or "
        "myeloproliferative neoplasm explains it.",
        "",
    ]
    if unknown:
        lines += [
            f"**Check the medication list first:** {len(unknown)} medication record(s) of that time name no "
            f"medicine the service can read ({literal_names(sorted({m.name for m in unknown}))}; usually a "
            "reference to a Medication the EHR did not send). If one is a B12 product or a multivitamin, it "
            "explains the high B12 and this card does not apply.",
            "",
        ]
    # A B12 product stopped or completed with no recorded end: when it was last taken is not known.
    open_ended = [
        m
        for m in record.medications
        if m.classes & B12_PRODUCTS
        and not m.active
        and m.end is None
        and m.start is not None
        and m.start < day_after(b12.when)
        and m.resource_type != "MedicationAdministration"
    ]
    if open_ended:
        lines += [
            "**Check when it was stopped:** "
            + "; ".join(
                f"{literal(m.name)} (from {day(m.start)}, now {literal(m.status)})" for m in open_ended
            )
            + " has no recorded end. If it was still taken in the "
            f"{t.recent_days} days before this B12 was measured, it explains the high B12 and this card does "
            "not apply.",
            "",
        ]
    if later:
        lines += [
            "- Started after this B12 was measured, so not its cause: "
            + "; ".join(
                f"{literal(m.name)} (from {day(m.start)})" if m.start else literal(m.name) for m in later
            )
            + ".",
        ]
    ferritin = record.latest("ferritin")
    if ferritin is not None:
        is_high, fbasis = ferritin_high(record, ferritin)
        # Read together with the B12 only when taken at about the same time.
        together = days_apart(ferritin.when, b12.when) <= t.same_time_days
        if is_high and together:
            comment = (
                f": also high (compared with {fbasis}) — together they point to liver disease or "
                "inflammation."
            )
        elif is_high:
            comment = (
                f": high (compared with {fbasis}), but more than {t.same_time_days} days from the B12, so "
                "not read together with it."
            )
        else:
            comment = "."
        lines.append(f"- Ferritin **{ferritin.quoted()}**{comment}")
    for analyte, label in (("alt", "ALT"), ("ast", "AST"), ("crp", "CRP")):
        result = record.latest(analyte, within_days=t.recent_days)
        if result is not None:
            lines.append(f"- {label} **{result.quoted()}**")
    lines += [
        "",
        "**Reasoning**",
        "- A high B12 needs no treatment, but without supplements it needs an explanation: liver disease "
        "(hepatitis, cirrhosis, liver cancer), inflammation, kidney disease or a myeloproliferative "
        "disorder.",
    ]
    if very_high:
        lines.append(
            f"- Above {fmt(t.b12_very_high)} pg/mL ({b12_pmol(t.b12_very_high)} pmol/L) the association with "
            "liver disease, alcohol misuse and cancer is strong "
            f"({cited(record, 'b12_very_high', 'Arendt & Nexo, PLoS One 2012')})."
        )
    lines += suggested_tests_line(wanted, t.recent_days)
    lines += ["", "Sources: Arendt & Nexo, PLoS One 2012; ARUP and Mayo reference limits."]
    return Finding(
        topic=TOPIC,
        indicator="warning" if very_high else "info",
        summary="High B12 without supplements: check liver enzymes and CRP for liver disease or inflammation",
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=proposals,
        selection_behavior="any",
    )
