"""iron-deficiency-with-high-b12: iron deficiency next to a high B12.

Iron deficiency does not raise B12; a high B12 beside it usually means supplements, and iron deficiency
in someone taking supplements points to ongoing blood loss or malabsorption. This card replaces the two
elevated-B12 cards for the patient and carries the supplement review when products exist.
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding, Proposal
from cds_service.clinical.markdown import literal, literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord
from cds_service.clinical.rules import iron_studies_after_b12
from cds_service.clinical.rules.common import (
    B12_PRODUCTS,
    SOURCE_LABEL,
    b12_products_by_test_time,
    deficiency_explains_b12,
    done_tests_line,
    elevated_latest_b12,
    focus_products,
    haemoglobin_line,
    iron_deficiency_near,
    iron_source_caution,
    not_recently_done,
    order_labs,
    supplement_review_actions,
    tsat_check,
    unexplained_b12_therapy,
    validity_lines,
)

TOPIC = "iron-deficiency-with-high-b12"
SOURCE = f"{SOURCE_LABEL} (AGA 2020; BSH 2014)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    high = elevated_latest_b12(record)
    if high is None:
        return None
    b12, basis = high
    status = iron_deficiency_near(record, b12)
    if status is None:
        return None
    if focus is not None and not focus_products(focus, B12_PRODUCTS):
        return None
    explained = deficiency_explains_b12(record)
    raising = [
        name
        for cls in (codes.LIVER_DISEASE, codes.LIVER_CANCER, codes.CKD, codes.MPN)
        for name in record.has_condition(cls)
    ]
    proposals: list[Proposal] = []
    products: list[MedicationEntry] = []
    therapy: list[MedicationEntry] = []
    if explained is None:
        products, review = supplement_review_actions(record, focus, b12)
        proposals.extend(review)
    # What the patient was taking when the B12 was drawn, which can explain it (at an order hook `products`
    # are the drafts, which cannot).
    taken = products if focus is None else b12_products_by_test_time(record, b12)[0]
    coeliac_known = record.has_condition(codes.COELIAC, include_controlled=True)
    ttg = (
        [] if coeliac_known else not_recently_done(record, ["ttg-iga"], record.config.thresholds.latest_days)
    )
    # The TSAT card is a patient-view card: only there is its question this card's to carry.
    tsat_lines, tsat_proposals = tsat_check(record, status.ferritin) if focus is None else ([], ())
    proposals.extend(tsat_proposals)
    if focus is None:
        proposals.extend(
            order_labs(
                record,
                "Screen for coeliac disease (tTG IgA)",
                ttg,
                "Iron deficiency: screen for coeliac disease",
                recommended=False,
            )
        )
    lines = [
        f"Vitamin B12 **{b12.quoted()}** is elevated (compared with {basis}), and iron studies at the same "
        "time show iron deficiency:",
        "",
        *status.lines(),
        *haemoglobin_line(record, status.ferritin.when),
        "",
        "**Reasoning**",
        f"- {status.reason[0].upper()}{status.reason[1:]}.",
        *tsat_lines,
    ]
    if explained is not None:
        lines += [
            f"- Iron deficiency does not raise B12; here the B12 treatment does, for {explained}. A high "
            "level is expected on injections and does not guide their dose: keep B12 therapy.",
            "- Autoimmune gastritis also impairs iron absorption; intravenous iron works better than oral "
            "iron there.",
        ]
    elif raising and not taken:
        # No supplement, but a recorded condition that raises B12 itself (Arendt & Nexo 2012).
        lines.append(
            f"- Iron deficiency does not raise B12, but the recorded {literal(raising[0])} can: liver "
            "disease, kidney disease and myeloproliferative disorders raise B12 (Arendt & Nexo 2012)."
        )
    else:
        lines.append(
            "- Iron deficiency does not raise B12. A high B12 beside iron deficiency usually reflects "
            "supplements."
        )
        if focus is not None and products:
            # A draft is not yet taken: it cannot explain the B12, and there is nothing to re-measure.
            lines.append(
                f"- Being ordered: {literal_names(p.name for p in products)}. With B12 already high, its B12 "
                "adds nothing unless a deficiency is documented."
            )
            if taken:
                lines.append(
                    f"- On file: {literal_names(p.name for p in taken)}, the likely source of the high B12."
                )
        elif products:
            lines.append(
                "- B12 product(s): "
                + literal_names(p.name for p in products)
                + ". Review them: stop if not needed and "
                "re-measure B12 in about 3 months."
            )
        therapy = unexplained_b12_therapy(record, focus, products)
        if therapy:
            lines.append(
                f"- {literal_names(p.name for p in therapy)} is B12 therapy, not a supplement: find out why "
                "it was started before stopping it (lifelong in pernicious anaemia or malabsorption, where a "
                "high level is expected)."
            )
    # The review's stop or removal is not recommended for a product that may be the patient's iron.
    lines += iron_source_caution(record, products)
    if explained is None and not taken:
        # Nothing on file shows an intake, so the card cannot reason from one: it asks for it instead.
        lines += [
            "- No B12 product is on file: ask about over-the-counter vitamins and supplements.",
            "- Investigate the cause of the iron deficiency: ongoing blood loss or malabsorption (coeliac "
            "disease, autoimmune gastritis, IBD, bariatric surgery) (AGA 2020).",
        ]
    else:
        lines.append(
            "- Iron deficiency in someone taking B12 suggests ongoing blood loss or malabsorption (coeliac "
            "disease, autoimmune gastritis, IBD, bariatric surgery): investigate the cause (AGA 2020)."
        )
    if focus is None and not coeliac_known:
        lines += done_tests_line(record, ["ttg-iga"], record.config.thresholds.latest_days)
    # Iron deficiency on iron therapy changes the question: is it taken, absorbed, outpaced by a loss?
    iron = record.products_on_file(frozenset({codes.IRON_THERAPY}))
    if iron:
        lines.append(
            f"- Iron therapy on file: {literal_names(m.name for m in iron)} — check adherence and "
            "absorption; iron deficiency despite it makes ongoing blood loss more likely."
        )
    # A course explains the B12 (no diagnosis does) or makes a draft continued therapy: the card relies on it.
    diagnosed = record.has_condition(codes.B12_DEFICIENCY, include_controlled=True)
    by_course = (explained is not None and not diagnosed) or bool(therapy and focus is not None)
    lines += validity_lines(
        record, [*products, *taken, *iron], [record.course(codes.B12_THERAPY)] if by_course else []
    )
    # This card replaces the iron-studies reminder (the deficiency is shown): it carries the recheck.
    recheck_lines, recheck = iron_studies_after_b12.carried(record, focus)
    lines += recheck_lines
    proposals.extend(recheck)
    lines += ["", "Sources: AGA 2020 iron deficiency guideline; BSH 2014 (Devalia)."]
    return Finding(
        topic=TOPIC,
        indicator="warning",
        summary=(
            "Iron deficient on B12 treatment: keep B12; treat the iron deficiency and look for blood loss "
            "or malabsorption"
            if explained is not None
            else "Iron deficient with a high B12 on B12 therapy: confirm its indication; investigate blood "
            "loss or malabsorption"
            if therapy
            else "Iron deficient with a high B12: reconsider this B12 order; investigate blood loss or "
            "malabsorption"
            if focus is not None
            else "Iron deficient with a high B12: review B12 supplements and investigate blood "
            "loss or malabsorption"
        ),
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=tuple(proposals),
        selection_behavior="any",
    )
