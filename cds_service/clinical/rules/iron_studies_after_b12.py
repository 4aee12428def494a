"""iron-studies-after-b12: check ferritin and transferrin saturation when B12 therapy starts.

B12 restarts effective red-cell production, which draws on stored iron: ferritin falls and an iron
deficiency hidden by the megaloblastic state appears (Solmaz et al. 2015: ferritin ~190 → ~45 ng/mL,
iron deficiency 9 % → 49 % of patients after B12). Iron studies at the start and 4–8 weeks later catch it.

A card that already shows an iron deficiency (combined-b12-iron-deficiency, iron-deficiency-with-high-b12)
replaces this one and carries its suggestions (`carried`); this one replaces ferritin-inflammation-check-tsat
and carries its question about an inflamed ferritin.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cds_service.clinical import codes
from cds_service.clinical.findings import Finding, Proposal
from cds_service.clinical.markdown import literal_names
from cds_service.clinical.record import MedicationEntry, PatientRecord, Result
from cds_service.clinical.rules.common import (
    SOURCE_LABEL,
    b12_deficient,
    day,
    day_after,
    elevated_before_b12,
    fmt,
    iron_status,
    iron_studies_cover,
    order_labs,
    starting_b12,
    tsat_check,
    validity_lines,
)

TOPIC = "iron-studies-after-b12"
SOURCE = f"{SOURCE_LABEL} (Solmaz 2015; BSH 2014)"


def check(record: PatientRecord, focus: list[MedicationEntry] | None) -> Finding | None:
    t = record.config.thresholds
    if focus is None:
        course = record.course(codes.B12_THERAPY)
        if course is None:
            return None
        age = record.days_ago(course.start)
        if not t.iron_studies_due_min_days <= age <= t.course_recent_days:
            return None
        start, names, results_since = course.start, course.names, day_after(course.start)
        context = (
            f"A B12 course ({literal_names(names)}) started on {day(start)}, {age} days ago; no ferritin "
            "with transferrin saturation has been resulted after that day, or ordered or drafted."
        )
    else:
        drafts, start = starting_b12(record, focus)
        if not drafts:
            return None
        results_since = record.window_start(t.iron_studies_fresh_days)
        names = tuple(d.name for d in drafts)
        context = (
            f"This order starts B12 therapy ({literal_names(names)}); no ferritin with transferrin "
            f"saturation is drafted, pending, or resulted in the last {t.iron_studies_fresh_days} days."
        )
        if start < record.now:
            context += f" The current B12 course began on {day(start)}."
    if elevated_before_b12(record, start):
        return None
    covered, missing = iron_studies_cover(record, results_since)
    if covered:
        return None
    # The course this card dates the iron studies from (at an order hook, the one the draft continues).
    relied = [record.course(codes.B12_THERAPY)] if focus is None or start < record.now else []
    return _finding(record, start, missing, context, validity_lines(record, courses=relied))


def carried(
    record: PatientRecord, focus: list[MedicationEntry] | None
) -> tuple[list[str], tuple[Proposal, ...]]:
    """What a card replacing this one (engine.REPLACES) carries of it when it would fire: a line and the
    suggestions to check iron studies after the B12 start."""
    finding = check(record, focus)
    if finding is None or not finding.proposals:
        return ([], ())
    labels = "; ".join(p.label[0].lower() + p.label[1:] for p in finding.proposals)
    line = (
        "- B12 therapy draws on the iron stores as red-cell production restarts, so check them after the "
        f"start (Solmaz et al. 2015): {labels}."
    )
    return ([line], finding.proposals)


def _finding(
    record: PatientRecord, start: datetime, missing: list[str], context: str, validity: list[str]
) -> Finding:
    t = record.config.thresholds
    # The picture B12 was started for: injections raise B12 and bring the MCV down within weeks, so
    # results taken on treatment say nothing about it (up to the start day: the baseline drawn that morning).
    mcv = _before_treatment(record, "mcv", start)
    b12 = _before_treatment(record, "b12", start)
    ferritin = record.latest("ferritin")
    # Iron deficiency shown before the course is not something B12 will unmask: it is there to treat.
    pre_ferritin = _before_treatment(record, "ferritin", start)
    known = iron_status(record, pre_ferritin) if pre_ferritin is not None else None
    if known is not None and not known.deficient:
        known = None
    # Or shown by a ferritin taken on the course (after its first day): nothing is left to unmask either. At
    # patient-view iron-deficiency-after-b12 says so in this card's place; at an order hook it is this card's.
    shown = None
    if known is None and ferritin is not None and ferritin.when >= day_after(start):
        shown = iron_status(record, ferritin)
        if not shown.deficient:
            shown = None
    macrocytic = mcv is not None and mcv.above(t.mcv_macrocytosis)
    deficient = b12 is not None and b12_deficient(record, b12)[0]
    high_ferritin = (
        ferritin is not None
        and ferritin.comparator not in ("<", "<=")
        and ferritin.value >= t.ferritin_deficient_inflamed
    )
    warning = (macrocytic or deficient) and high_ferritin
    followup = start + timedelta(days=t.iron_studies_followup_days)
    # Due on the day 8 weeks after the start, whatever the start's time of day: the card quotes days.
    ahead = record.days_ago(followup) < 0
    recent_ferritin = record.latest("ferritin", within_days=t.recent_days)
    proposals = []
    reason = "Iron studies after starting B12 therapy (iron deficiency may be unmasked)"
    # The labels name only what the suggestion orders (a ferritin already drafted is not ordered again).
    tests = " and ".join(codes.ANALYTE_NAMES[a] for a in missing)
    if ahead:
        # The follow-up shows how the stores respond to B12, so a result from before the start (the
        # baseline a fresh ferritin is) does not stand in for it: only one on the course, or an order.
        later = iron_studies_cover(record, day_after(start))[1]
        later_tests = " and ".join(codes.ANALYTE_NAMES[a] for a in later)
        label = f"Order {later_tests} for {day(followup)} (8 weeks after B12 start)"
        proposals.extend(order_labs(record, label, later, reason, when=followup))
        if recent_ferritin is None:
            # A baseline only before treatment: weeks into a course it is simply a result now.
            label = f"Order baseline {tests} now" if start >= record.now else f"Order {tests} now"
            proposals.extend(order_labs(record, label, missing, reason, recommended=False))
    else:
        proposals.extend(order_labs(record, f"Order {tests} now", missing, reason))
    # The question ferritin-inflammation-check-tsat (which this card replaces) asks of an inflamed ferritin:
    # a TSAT now, unless one is already suggested for now.
    tsat_lines, tsat_now = tsat_check(record, ferritin) if ferritin is not None else ([], ())
    if any(
        a.resource is not None
        and "occurrenceDateTime" not in a.resource
        and a.resource["code"]["coding"][0]["code"] == codes.ORDER_CODES["tsat"]
        for p in proposals
        for a in p.actions
    ):
        tsat_now = ()
    proposals.extend(tsat_now)
    lines = [context, *validity, "", "**Values considered**"]
    for label, result, analyte in (
        ("MCV", mcv, "mcv"),
        ("Vitamin B12", b12, "b12"),
        ("Ferritin", ferritin, None),
    ):
        missing_text = "no result in the last year"
        unread = record.tested_since("ferritin", record.window_start(t.latest_days))
        if analyte is None and result is None and unread is not None:
            # A result the service could not use (a unit it cannot convert, no number) is still a result.
            missing_text = (
                f"a result on {day(unread)} that the service cannot read (see the laboratory report)"
            )
        line = f"- {label}: " + (f"**{result.quoted()}**" if result else missing_text)
        if analyte is not None:
            if result is not None:
                line += " (before B12 was started)" if start < record.now else ""
            later = record.latest(analyte)
            if later is not None and later is not result:
                line += f"; on treatment **{later.quoted()}**"
        lines.append(line)
    lines += [
        "",
        "**Reasoning**",
        (
            f"- The ferritin before B12 ({known.ferritin.quoted()}) already shows iron deficiency: "
            f"{known.reason}. Treat it now: B12 will draw on the little stored iron as red-cell production "
            "restarts (Solmaz et al. 2015), and iron studies after the start show how the stores respond."
            if known is not None
            else f"- The ferritin taken on B12 ({shown.ferritin.quoted()}) already shows iron deficiency: "
            f"{shown.reason}. Treat it and look for its cause (blood loss, malabsorption; AGA 2020); iron "
            "studies after the start show how the stores respond."
            if shown is not None
            else "- Starting B12 restarts red-cell production, which uses stored iron: ferritin falls and an "
            "iron deficiency hidden by the B12 deficiency can appear (Solmaz et al., Indian J Hematol Blood "
            "Transfus 2015: ferritin fell from about 190 to about 45 ng/mL and iron deficiency rose from 9 % "
            "to 49 %)."
        ),
        f"- Iron studies are due 4–8 weeks after the start: {day(followup)} "
        f"({t.iron_studies_followup_days} days after {day(start)})"
        + (", so a follow-up is suggested for that day." if ahead else ", so they are due now."),
    ]
    lines += tsat_lines
    if warning:
        lines.append(
            f"- Megaloblastic picture (MCV above {fmt(t.mcv_macrocytosis)} fL or B12 below "
            f"{fmt(t.b12_deficient)} pg/mL) with ferritin at or above {fmt(t.ferritin_deficient_inflamed)} "
            "ng/mL: this ferritin is likely to fall once B12 works, so the current value does not exclude "
            "iron deficiency."
        )
    lines += ["", "Sources: Solmaz et al. 2015; BSH guideline on cobalamin and folate (Devalia 2014)."]
    summary = (
        "B12 started in iron deficiency: treat the iron; recheck ferritin and transferrin saturation"
        if known is not None
        else "Iron deficiency shown on B12 treatment: treat the iron; recheck ferritin and transferrin "
        "saturation"
        if shown is not None
        else "B12 therapy started: order ferritin and transferrin saturation to catch unmasked iron "
        "deficiency"
    )
    return Finding(
        topic=TOPIC,
        indicator="warning" if warning else "info",
        summary=summary,
        detail="\n".join(lines),
        source_label=SOURCE,
        proposals=tuple(proposals),
        selection_behavior="any",
    )


def _before_treatment(record: PatientRecord, analyte: str, start: datetime) -> Result | None:
    """The latest result taken before the course (or on its first day), within the "latest" window."""
    result = record.before(analyte, day_after(start))
    if result is None or record.days_ago(result.when) > record.config.thresholds.latest_days:
        return None
    return result
