"""combined-b12-iron-deficiency: B12 and iron deficient at the same time.

A shared cause of malabsorption is likely: autoimmune gastritis (pernicious anaemia), coeliac disease,
IBD, bariatric surgery. Test for autoimmune gastritis and coeliac disease; replace B12 first.
"""

from __future__ import annotations

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    b12_deficient,
    day,
    haemoglobin_line,
    iron_deficiency_near,
    not_recently_done,
    order_labs,
    suggested_tests_line,
)

TOPIC = "combined-b12-iron-deficiency"
SOURCE = f"{SOURCE_LABEL} (BSH 2014; AGA 2020)"
GASTRITIS_TESTS = ("intrinsic-factor-ab", "parietal-cell-ab", "gastrin")


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    if focus is not None:
        return None
    b12 = record.latest("b12")
    if b12 is None:
        return None
    low, basis = b12_deficient(record, b12)
    if not low:
        return None
    status = iron_deficiency_near(record, b12)
    if status is None:
        return None
    t = record.config.thresholds
    gastritis_known = bool(
        record.has_condition(codes.AUTOIMMUNE_GASTRITIS)
        or record.has_condition(codes.PERNICIOUS_ANAEMIA, include_controlled=True)
    )
    wanted = [] if gastritis_known else not_recently_done(record, GASTRITIS_TESTS, t.latest_days)
    if not record.has_condition(codes.COELIAC):
        wanted += not_recently_done(record, ["ttg-iga"], t.latest_days)
    proposals = order_labs(
        record,
        "Test for autoimmune gastritis and coeliac disease",
        wanted,
        "Combined B12 and iron deficiency",
    )
    course = record.course(codes.B12_THERAPY)
    iv_iron = (
        "In autoimmune gastritis intravenous iron corrects iron deficiency more reliably than oral iron."
    )
    if course is None or not course.ongoing:
        treatment_line = f"- Replace B12 first. {iv_iron}"
        summary = (
            "B12 and iron deficient together: replace B12 first; test for autoimmune gastritis and "
            "coeliac disease"
        )
    else:
        # B12 is already being replaced: what is left to do is the iron (and, if the B12 was measured on
        # the course, whether the B12 is taken and absorbed).
        names = literal_names(course.names)
        if course.start.date() >= b12.when.date():
            treatment_line = (
                f"- B12 therapy started on {day(course.start)} ({names}): treat the iron deficiency too."
            )
        else:
            treatment_line = (
                f"- B12 therapy has been on file since {day(course.start)} ({names}), yet this B12 is "
                "deficient: check adherence, and absorption if it is oral. Treat the iron deficiency too."
            )
        treatment_line += f" {iv_iron}"
        summary = (
            "B12 and iron deficient, on B12: treat iron too; test for autoimmune gastritis and "
            "coeliac disease"
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
        "- Both deficiencies together suggest a shared cause of malabsorption: autoimmune gastritis "
        "(pernicious anaemia), coeliac disease, inflammatory bowel disease or bariatric surgery.",
        treatment_line,
    ]
    if gastritis_known:
        lines.append(
            "- Autoimmune gastritis or pernicious anaemia is already recorded: no gastric antibody "
            "tests suggested."
        )
    lines += suggested_tests_line(wanted, t.latest_days)
    lines += ["", "Sources: BSH 2014 (Devalia); AGA 2020 iron deficiency guideline."]
    return Finding(
        topic=TOPIC,
        indicator="warning",
        summary=summary,
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=proposals,
        selection_behavior="any",
    )
