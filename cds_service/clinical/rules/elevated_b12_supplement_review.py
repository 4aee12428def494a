"""elevated-b12-supplement-review: a high B12 in someone taking (or being prescribed) a B12 product.

The commonest cause of a high B12 is supplementation; an unneeded supplement can be stopped and B12
re-measured after about 3 months to learn the patient's own level. Not when a B12 deficiency or
pernicious anaemia explains injections: levels are expected to be high then and do not guide dosing.
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord, number
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    b12_pmol,
    b12_very_high,
    cited,
    deficiency_explains_b12,
    elevated_latest_b12,
    fmt,
    iron_source_caution,
    supplement_review_actions,
    unexplained_b12_therapy,
    validity_lines,
)

TOPIC = "elevated-b12-supplement-review"
SOURCE = f"{SOURCE_LABEL} (ARUP/Mayo reference limits; Arendt & Nexo 2012)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    high = elevated_latest_b12(record)
    if high is None or deficiency_explains_b12(record) is not None:
        return None
    b12, basis = high
    products, proposals = supplement_review_actions(record, focus, b12)
    if not products:
        return None
    t = record.config.thresholds
    names = literal_names(p.name for p in products)
    therapy = unexplained_b12_therapy(record, focus, products)
    lines = [
        f"Vitamin B12 **{b12.quoted()}** is elevated (compared with {basis}).",
        f"B12 product(s) {'being ordered' if focus is not None else 'on file'}: {names}.",
        "",
        "**Reasoning**",
        "- Supplements and multivitamins are the commonest cause of a high B12; a high level needs no "
        "treatment but is a reason to review whether the product is needed.",
        (
            "- With B12 already high, a new B12 product adds nothing unless a deficiency is documented."
            if focus is not None
            else f"- Stopping it and re-measuring B12 after about 3 months ({t.b12_recheck_days} days) shows "
            "the patient's own level."
        ),
        "- No diagnosis of B12 deficiency or pernicious anaemia is recorded (if there is one, injections "
        "should continue: high levels are expected on treatment).",
        *iron_source_caution(record, products, reasoned=True),
        # At an order hook the draft is B12 therapy continuing a running course only by that course.
        *validity_lines(
            record, products, [record.course(codes.B12_THERAPY)] if therapy and focus is not None else []
        ),
    ]
    if therapy:
        lines.insert(
            lines.index("**Reasoning**") + 1,
            f"- {literal_names(p.name for p in therapy)} is B12 therapy, not a supplement: find out why it "
            "was started before stopping it. For pernicious anaemia or malabsorption it is lifelong, a high "
            "level on it is expected, and stopping it risks irreversible neurological damage; if so, record "
            "the diagnosis.",
        )
    if b12_very_high(record, b12):
        lines.append(
            f"- Above {fmt(t.b12_very_high)} pg/mL ({b12_pmol(t.b12_very_high)} pmol/L), a B12 is strongly "
            "associated with liver disease, alcohol misuse and cancer "
            f"({cited(record, 'b12_very_high', 'Arendt & Nexo 2012')}) — consider that "
            "if it stays high off supplements."
        )
    lines += ["", "Sources: ARUP and Mayo reference limits; Arendt & Nexo, PLoS One 2012."]
    shown = f"{b12.comparator or ''}{number(b12.value)} {b12.unit}"
    verb = "reconsider this B12 order" if focus is not None else "review B12 supplements"
    summary = f"B12 is already high ({shown}): {verb}; stop if not needed"
    if therapy:
        summary = (
            f"B12 is high ({shown}) on B12 therapy with no recorded indication: confirm why before stopping"
        )
    return Finding(
        topic=TOPIC,
        indicator="warning",
        summary=summary,
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=proposals,
        selection_behavior="at-most-one",
    )
