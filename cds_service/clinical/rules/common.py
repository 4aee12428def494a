"""What several rules share: the clinical states (iron deficiency, B12 deficient/high), iron-studies
coverage, and the FHIR resources a card proposes, built and validated with fhir.resources R4B models."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from cds_service.clinical import codes
from cds_service.clinical.config import ClinicalConfig
from cds_service.clinical.findings import Proposal, ProposedAction
from cds_service.clinical.markdown import literal, literal_names
from cds_service.clinical.record import (
    Course,
    MedicationEntry,
    PatientRecord,
    Result,
    day_start,
    days_apart,
    number,
)
from cds_service.clinical.thresholds import DEFAULT_THRESHOLDS
from cds_service.fhir.units import unit_factor

log = logging.getLogger(__name__)

B12_PRODUCTS = frozenset({codes.B12_THERAPY, codes.B12_SUPPLEMENT})
SOURCE_LABEL = "B12–iron CDS rules"


def day(moment: datetime) -> str:
    return moment.date().isoformat()


def fmt(value: float) -> str:
    return f"{value:g}"


def b12_pmol(value: float) -> str:
    """A B12 threshold in pg/mL as pmol/L, for quoting beside it (200 → 147.56, 1355.37 → 1000).

    Not to the whole number: a B12 reported as 147.8 pmol/L (200.32 pg/mL) is borderline, and a band quoted
    as "148–221 pmol/L" beside it would say it was below the band, that is deficient."""
    factor = unit_factor("b12", "pmol/L")
    return number(value / factor[0]) if factor else "?"


def day_after(moment: datetime) -> datetime:
    """The first moment of the day after ``moment``'s.

    A course start is often a date alone (``authoredOn``), read as midnight: a ferritin drawn later that
    day is the baseline taken before the first dose, not a result of the treatment.
    """
    return day_start(moment, -1)


# --- clinical states ----------------------------------------------------------------------------------


def derived_tsat(record: PatientRecord, when: datetime) -> Result | None:
    """TSAT from serum iron and TIBC of one draw (same day), when no TSAT result was reported.

    Only from exact values: the ratio of a censored iron or TIBC (``<10``, ``>450``) is not a number.
    """
    iron = record.near("iron", when)
    if iron is None or iron.comparator is not None:
        return None
    for tibc in record.results.get("tibc", ()):
        if tibc.when.date() == iron.when.date() and tibc.value > 0 and tibc.comparator is None:
            return Result("tsat", iron.value / tibc.value * 100.0, None, iron.when, {})
    return None


def tsat_near(record: PatientRecord, when: datetime) -> tuple[Result | None, bool]:
    """(TSAT within the "same time" window, whether it was calculated from iron/TIBC)."""
    reported = record.near("tsat", when)
    if reported is not None:
        return (reported, False)
    derived = derived_tsat(record, when)
    return (derived, derived is not None)


@dataclass(frozen=True)
class IronStatus:
    ferritin: Result
    deficient: bool
    tsat: Result | None
    tsat_derived: bool
    crp: Result | None
    inflamed: bool
    reason: str

    def lines(self) -> list[str]:
        """Markdown bullet lines quoting every value the conclusion used."""
        out = [f"- Ferritin **{self.ferritin.quoted()}**"]
        if self.tsat is not None:
            how = " (calculated from serum iron / TIBC of the same draw)" if self.tsat_derived else ""
            out.append(f"- Transferrin saturation **{self.tsat.quoted()}**{how}")
        if self.crp is not None:
            out.append(f"- CRP **{self.crp.quoted()}**")
        return out


def iron_status(record: PatientRecord, ferritin: Result) -> IronStatus:
    """Iron deficiency by ferritin, read with CRP and TSAT taken at about the same time.

    Ferritin < 30 ng/mL (or the lab's low flag); < 100 with inflammation (CRP > 5 mg/L); 30–100 with
    TSAT < 20 %. A ferritin reported as ``>n`` or ``>=n`` is never deficient; a censored CRP or TSAT counts
    only for what its bound proves (``<=10`` mg/L is not inflammation).
    """
    t = record.config.thresholds
    tsat, derived = tsat_near(record, ferritin.when)
    crp = record.near("crp", ferritin.when)
    inflamed = crp is not None and crp.above(t.crp_inflammation)
    value = ferritin.value
    reason = ""
    if ferritin.comparator in (">", ">="):
        deficient = False
    elif ferritin.below(t.ferritin_deficient):
        deficient = True
        reason = (
            f"ferritin below {fmt(t.ferritin_deficient)} ng/mL confirms iron deficiency "
            f"({cited(record, 'ferritin_deficient', 'UK practice; AGA 2020 uses 45 ng/mL')})"
        )
    elif ferritin.lab_flag() == "L":
        deficient = True
        reason = "the laboratory flags this ferritin as low, which indicates iron deficiency"
    elif inflamed and ferritin.below(t.ferritin_deficient_inflamed):
        deficient = True
        reason = (
            f"with inflammation (CRP above {fmt(t.crp_inflammation)} mg/L) a ferritin below "
            f"{fmt(t.ferritin_deficient_inflamed)} ng/mL is compatible with iron deficiency "
            f"({cited(record, 'ferritin_deficient_inflamed', 'UK practice')})"
        )
    elif value <= t.ferritin_deficient_inflamed and tsat is not None and tsat.below(t.tsat_low):
        deficient = True
        reason = (
            f"an equivocal ferritin ({fmt(t.ferritin_deficient)}–{fmt(t.ferritin_deficient_inflamed)} ng/mL) "
            f"with transferrin saturation below {fmt(t.tsat_low)} % supports iron deficiency"
        )
    else:
        deficient = False
    return IronStatus(ferritin, deficient, tsat, derived, crp, inflamed, reason)


def tsat_would_settle(record: PatientRecord, ferritin: Result) -> Result | None:
    """The CRP that leaves ``ferritin`` equivocal, when no transferrin saturation settles it; else None.

    A ferritin of 30–100 ng/mL (no comparator) with a CRP above 5 mg/L within 30 days of it, and no TSAT
    (reported, or calculable from iron/TIBC) within 30 days of it, resulted since, or ordered.
    """
    t = record.config.thresholds
    if ferritin.comparator is not None:
        return None
    if not t.ferritin_deficient <= ferritin.value <= t.ferritin_deficient_inflamed:
        return None
    crp = record.near("crp", ferritin.when)
    if crp is None or not crp.above(t.crp_inflammation):
        return None
    if tsat_near(record, ferritin.when)[0] is not None or record.ordered("tsat") is not None:
        return None
    if record.tested_since("tsat", ferritin.when) is not None:
        return None
    return crp


def tsat_check(record: PatientRecord, ferritin: Result) -> tuple[list[str], tuple[Proposal, ...]]:
    """What a card reading ``ferritin`` (as iron deficiency) adds when inflammation leaves it equivocal and no
    TSAT settles it: the uncertainty, and a transferrin saturation to order. Such a card replaces
    ferritin-inflammation-check-tsat (engine.REPLACES), which would ask the same of the same ferritin."""
    if tsat_would_settle(record, ferritin) is None:
        return ([], ())
    t = record.config.thresholds
    line = (
        "- Inflammation raises ferritin, so this reading is uncertain: a transferrin saturation below "
        f"{fmt(t.tsat_low)} % would support iron deficiency, and none was taken within "
        f"{t.same_time_days} days of this ferritin (WHO 2020; AGA 2020)."
    )
    if record.days_ago(ferritin.when) > t.recent_days:
        # A saturation drawn now says nothing of the iron of a ferritin taken months ago, nor is an old CRP
        # today's inflammation: the pair has to be measured again together.
        line = line[:-1] + (
            f"; this ferritin is more than {t.recent_days} days old, so recheck ferritin, transferrin "
            "saturation and CRP together rather than a saturation alone."
        )
        return ([line], ())
    proposals = order_labs(
        record,
        "Order transferrin saturation to confirm the iron deficiency",
        ["tsat"],
        "Equivocal ferritin with inflammation",
    )
    return ([line], proposals)


def haemoglobin_line(record: PatientRecord, when: datetime) -> list[str]:
    """A bullet quoting the haemoglobin taken at about ``when``, and whether it is anaemic (WHO)."""
    hb = record.near("hb", when)
    if hb is None:
        return []
    if not (record.female or record.male):
        return [f"- Haemoglobin **{hb.quoted()}** ({_anaemia_either_sex(record, hb)})"]
    t = record.config.thresholds
    name = "hb_anaemia_female" if record.female else "hb_anaemia_male"
    limit = getattr(t, name)
    who = "this site's" if site_set(record, name) else "the WHO"
    verdict = _anaemia(hb, limit)
    if verdict is None:
        return [f"- Haemoglobin **{hb.quoted()}** ({who} anaemia threshold: {fmt(limit)} g/dL)"]
    return [f"- Haemoglobin **{hb.quoted()}** ({verdict} by {who} threshold of {fmt(limit)} g/dL)"]


def _anaemia(hb: Result, limit: float) -> str | None:
    """ "anaemia", "no anaemia", or None when a censored value's bound does not decide ("<13" is anaemia
    against 13 g/dL; "<14" says neither)."""
    if hb.below(limit):
        return "anaemia"
    if hb.comparator in (None, ">", ">=") and hb.value >= limit:
        return "no anaemia"
    return None


def _anaemia_either_sex(record: PatientRecord, hb: Result) -> str:
    """The anaemia verdict for a patient whose sex is not recorded: only where the women's and the men's
    thresholds agree. Between them (12.5 g/dL) it is anaemia in a man and not in a woman, and reading it as
    either would rest the card on a guessed sex."""
    t = record.config.thresholds
    women, men = t.hb_anaemia_female, t.hb_anaemia_male
    changed = site_set(record, "hb_anaemia_female") or site_set(record, "hb_anaemia_male")
    who = "this site's" if changed else "the WHO"
    both = f"{fmt(women)} g/dL for women and {fmt(men)} g/dL for men"
    lower, upper = (_anaemia(hb, limit) for limit in (min(women, men), max(women, men)))
    if lower == upper == "anaemia" or lower == upper == "no anaemia":
        return f"{lower} by {who} thresholds of {both}"
    if lower == "no anaemia" and upper == "anaemia":
        high_sex, low_sex = ("men", "women") if men >= women else ("women", "men")
        return (
            f"sex not recorded: anaemia by {who} threshold of {fmt(max(women, men))} g/dL for {high_sex}, "
            f"not {fmt(min(women, men))} g/dL for {low_sex}"
        )
    return f"sex not recorded; {who} anaemia thresholds: {both}"


def site_set(record: PatientRecord, name: str) -> bool:
    """Whether this site changed the threshold ``name``: a card then cites the site, not the published
    source of the default (a site's ferritin limit of 45 is not 'UK practice')."""
    return bool(getattr(record.config.thresholds, name) != getattr(DEFAULT_THRESHOLDS, name))


def cited(record: PatientRecord, name: str, source: str) -> str:
    """``source`` for a default threshold, or this site's setting for one the site changed."""
    return "this site's setting" if site_set(record, name) else source


def b12_deficient(record: PatientRecord, b12: Result) -> tuple[bool, str]:
    return b12.is_low(record.config.thresholds.b12_deficient, site=site_set(record, "b12_deficient"))


def b12_elevated(record: PatientRecord, b12: Result) -> tuple[bool, str]:
    return b12.is_high(record.config.thresholds.b12_elevated, site=site_set(record, "b12_elevated"))


def b12_very_high(record: PatientRecord, b12: Result) -> bool:
    """Certainly above Arendt & Nexo's 1000 pmol/L: ``>1000 pmol/L`` is, ``<2000 pg/mL`` is not."""
    return b12.above(record.config.thresholds.b12_very_high)


def ferritin_high(record: PatientRecord, ferritin: Result) -> tuple[bool, str]:
    t = record.config.thresholds
    name = "ferritin_high_female" if record.female else "ferritin_high_male"
    return ferritin.is_high(getattr(t, name), site=site_set(record, name))


def deficiency_explains_b12(record: PatientRecord) -> str | None:
    """Why B12 treatment is expected for this patient (a diagnosis, or a deficient B12 before the course).

    High B12 levels are expected on injections for a true deficiency, and levels do not monitor them. A
    deficient result (drawn before the course or on its first day) explains only the course it preceded
    while that course runs: once it has ended, a high B12 comes from something else (a supplement), and an
    old deficiency must not silence the review.
    """
    names = record.has_condition(codes.B12_DEFICIENCY, include_controlled=True)
    if names:
        # The class of diagnosis, and the condition as recorded (its text, display, or code and system).
        return f"a recorded diagnosis of B12 deficiency or pernicious anaemia ({literal(names[0])})"
    course = record.course(codes.B12_THERAPY)
    if course is not None and course.ongoing:
        # Up to the end of the start day: a start is often a date alone (midnight), and the B12 drawn that
        # morning is the very result the course treats.
        before = record.before("b12", day_after(course.start))
        # Current when the course began ("latest" then): a deficiency measured years before it, with no
        # diagnosis recorded since, does not show why this course was started.
        if (
            before is not None
            and days_apart(course.start, before.when) > record.config.thresholds.latest_days
        ):
            before = None
        if before is not None and b12_deficient(record, before)[0]:
            return f"a deficient B12 of {before.quoted()}, before B12 therapy started"
    return None


def validity_lines(
    record: PatientRecord,
    products: Iterable[MedicationEntry] = (),
    courses: Iterable[Course | None] = (),
) -> list[str]:
    """A line for each active prescription a card relies on (among ``products``, or in ``courses``) whose
    validity period has ended: it still counts as taken, since its status is the prescriber's word, but the
    clinician should know nothing more may be dispensed on it. One line per medicine, with its latest end."""
    ends: dict[str, datetime] = {}
    found = [(p.name, p.validity_ended(record.now)) for p in products]
    found += [item for course in courses if course is not None for item in course.expired]
    for name, end in found:
        if end is not None and (name not in ends or end > ends[name]):
            ends[name] = end
    return [
        f"- The prescription for {literal(name)} is active, but its validity period ended on {day(end)}: "
        "nothing more can be dispensed on it, so confirm it is still being taken."
        for name, end in ends.items()
    ]


def focus_products(focus: Iterable[MedicationEntry] | None, classes: frozenset[str]) -> list[MedicationEntry]:
    return [entry for entry in focus or () if entry.classes & classes]


def starting_b12(
    record: PatientRecord, focus: list[MedicationEntry] | None
) -> tuple[list[MedicationEntry], datetime]:
    """Draft orders that start B12 therapy, and the start date of the course they begin or continue.

    A draft B12 order for a patient on a continuous course that began more than ``course_recent_days``
    ago renews maintenance therapy; it starts nothing, so it returns no drafts.
    """
    drafts = focus_products(focus, frozenset({codes.B12_THERAPY}))
    if not drafts:
        return ([], record.now)
    course = record.course(codes.B12_THERAPY)
    if course is not None and course.ongoing:
        if record.days_ago(course.start) > record.config.thresholds.course_recent_days:
            return ([], record.now)
        return (drafts, course.start)
    starts = [d.start for d in drafts if d.start is not None and d.start > record.now]
    return (drafts, min(starts) if starts else record.now)


def iron_studies_cover(record: PatientRecord, results_since: datetime) -> tuple[bool, list[str]]:
    """Whether ferritin with TSAT (or iron + TIBC) is drafted, pending or resulted since ``results_since``.

    Returns (covered, analytes to suggest): a ferritin alone does not count.
    """

    def done(analyte: str) -> bool:
        return record.ordered(analyte) is not None or record.tested_since(analyte, results_since) is not None

    ferritin = done("ferritin")
    saturation = done("tsat") or (done("iron") and done("tibc"))
    missing = [a for a, ok in (("ferritin", ferritin), ("tsat", saturation)) if not ok]
    return (not missing, missing)


def not_recently_done(record: PatientRecord, analytes: Iterable[str], days: int) -> list[str]:
    """The analytes neither resulted within ``days`` nor already ordered."""
    since = record.window_start(days)
    return [a for a in analytes if record.tested_since(a, since) is None and record.ordered(a) is None]


def suggested_tests_line(wanted: Sequence[str], days: int) -> list[str]:
    """The card line naming the tests a card suggests (those `not_recently_done` kept); none when empty."""
    if not wanted:
        return []
    names = ", ".join(codes.ANALYTE_NAMES[a] for a in wanted)
    return [f"- Suggested: {names} (none resulted in {days} days or already on order)."]


def done_tests_line(record: PatientRecord, analytes: Iterable[str], days: int) -> list[str]:
    """The card line naming the tests left out because they were resulted within ``days`` (with the date),
    so a card that does not order them says why; none when there are none."""
    since = record.window_start(days)
    done = [(a, record.tested_since(a, since)) for a in analytes]
    shown = [f"{codes.ANALYTE_NAMES[a]} on {day(when)}" for a, when in done if when is not None]
    if not shown:
        return []
    return [f"- Already resulted (see the laboratory report): {', '.join(shown)}."]


# --- proposed resources -------------------------------------------------------------------------------


def lab_order(record: PatientRecord, analyte: str, when: datetime | None, reason: str) -> dict[str, Any]:
    """A draft ServiceRequest for one lab (LOINC), validated as R4B; ``when`` None: as soon as possible."""
    # The coding carries no display: only the codes are verified, so the name goes in code.text.
    code = codes.ORDER_CODES[analyte]
    data: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "category": [{"text": "Laboratory"}],
        "code": {
            "coding": [{"system": codes.LOINC, "code": code}],
            "text": codes.ANALYTE_NAMES[analyte],
        },
        "subject": {"reference": f"Patient/{record.patient_id}"},
        "authoredOn": day(record.now),
        "reasonCode": [{"text": reason}],
    }
    if when is not None:
        data["occurrenceDateTime"] = day(when)
    _check_lab_order_shape(analyte, when is not None, data)
    return data


_VALIDATED_LAB_ORDER_SHAPES: set[tuple[str, bool]] = set()


def _check_lab_order_shape(analyte: str, timed: bool, data: dict[str, Any]) -> None:
    """Validate a lab order as R4B the first time each shape is built in a process.

    Only the patient id (already checked against the FHIR id pattern by the request schema), dates this
    module formats, and free text change between two orders of one shape, so validating every order again
    would cost ~1 ms a card on the hot path and catch nothing new. A shape that fails raises: that is a
    bug in this module, and the tests build every shape.
    """
    shape = (analyte, timed)
    if shape not in _VALIDATED_LAB_ORDER_SHAPES:
        ServiceRequest.model_validate(data)
        _VALIDATED_LAB_ORDER_SHAPES.add(shape)


def lab_actions(
    record: PatientRecord, analytes: Iterable[str], when: datetime | None, reason: str
) -> tuple[ProposedAction, ...]:
    label = "on " + day(when) if when is not None else "now"
    return tuple(
        ProposedAction(
            type="create",
            description=f"Order {codes.ANALYTE_NAMES[a]} (LOINC {codes.ORDER_CODES[a]}) {label}",
            resource=lab_order(record, a, when, reason),
        )
        for a in analytes
    )


def order_labs(
    record: PatientRecord,
    label: str,
    analytes: Iterable[str],
    reason: str,
    *,
    when: datetime | None = None,
    recommended: bool = True,
) -> tuple[Proposal, ...]:
    """One suggestion ordering ``analytes`` (on ``when``, or now); none when there is nothing to order."""
    actions = lab_actions(record, analytes, when, reason)
    return (Proposal(label=label, actions=actions, is_recommended=recommended),) if actions else ()


_MODELS = {"MedicationRequest": MedicationRequest, "MedicationStatement": MedicationStatement}
# Distinct medication resources seen recently; a chart is opened, then ordered on, then signed, so the
# same EHR resource comes back several times within minutes.
_VALIDATED_CACHE_SIZE = 1024


def stop_action(entry: MedicationEntry, reason: str) -> ProposedAction | None:
    """An ``update`` of a MedicationRequest/Statement to status ``stopped``; None if it cannot be."""
    if entry.resource_type not in _MODELS or not entry.resource_id:
        return None
    data = dict(entry.resource)
    data["status"] = "stopped"
    # The server sets meta (version, lastUpdated) on the update; what it held before is not ours to send.
    data.pop("meta", None)
    data["statusReason"] = (
        [{"text": reason}] if entry.resource_type == "MedicationStatement" else {"text": reason}
    )
    try:
        content = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as error:
        # Only a resource read by something other than orjson can hold such a value (an integer past
        # 64 bits, say); it could not be sent back to the EHR either.
        log.warning("cannot propose stopping a %s: %s", entry.resource_type, error)
        return None
    validated = _validated_json(entry.resource_type, content)
    if validated is None:
        return None
    return ProposedAction(type="update", description=f"Stop {entry.name}", resource=orjson.loads(validated))


@functools.lru_cache(maxsize=_VALIDATED_CACHE_SIZE)
def _validated_json(resource_type: str, data: bytes) -> bytes | None:
    """The resource, pruned and checked against R4B, as JSON; None (logged once) when it is not valid.

    Validation is a pure function of the resource's content, and with pydantic it costs more than the
    rest of a hook call, so each distinct resource is validated once per process; callers get a fresh
    copy from the bytes, which nothing can mutate."""
    model = _MODELS[resource_type]
    try:
        checked = model.model_validate(_pruned(orjson.loads(data)))
        resource = checked.model_dump(mode="json", exclude_none=True)
    except ValidationError as error:
        log.warning(
            "cannot propose stopping a %s: it is not valid R4B (%d errors)",
            resource_type,
            error.error_count(),
        )
        return None
    return orjson.dumps(_pruned(resource))


def _pruned(value: Any) -> Any:
    """The value without empty strings, lists or objects (an EHR's copy may hold some; cards may not)."""
    if isinstance(value, dict):
        items = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in ("", [], {}, None)}
    if isinstance(value, list):
        items = [_pruned(v) for v in value]
        return [v for v in items if v not in ("", [], {}, None)]
    return value


# What an EHR's B12 or iron order typically holds (codes left out: only the fields' types matter here).
_DOSAGE = {
    "text": "1 tablet by mouth once daily",
    "timing": {
        "repeat": {"boundsPeriod": {"start": "2026-01-01"}, "frequency": 1, "period": 1, "periodUnit": "d"}
    },
    "route": {"text": "oral"},
    "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
}
_TYPICAL_MEDICATIONS = (
    {
        "resourceType": "MedicationRequest",
        "status": "stopped",
        "statusReason": {"text": "start-up check"},
        "intent": "order",
        "medicationCodeableConcept": {"text": "cyanocobalamin 1000 microgram oral tablet"},
        "subject": {"reference": "Patient/start-up-check"},
        "authoredOn": "2026-01-01",
        "requester": {"display": "start-up check"},
        "dosageInstruction": [_DOSAGE],
        "dispenseRequest": {
            "validityPeriod": {"start": "2026-01-01", "end": "2026-07-01"},
            "numberOfRepeatsAllowed": 5,
        },
        "note": [{"text": "start-up check"}],
    },
    {
        "resourceType": "MedicationStatement",
        "status": "stopped",
        "statusReason": [{"text": "start-up check"}],
        "medicationCodeableConcept": {"text": "ferrous sulfate 200 mg oral tablet"},
        "subject": {"reference": "Patient/start-up-check"},
        "effectivePeriod": {"start": "2026-01-01"},
        "dateAsserted": "2026-01-01",
        "dosage": [_DOSAGE],
    },
)


@functools.cache
def prepare_proposals() -> None:
    """Check every lab-order shape against R4B, and load the models stop updates are checked with, at start.

    fhir.resources imports a model's field types the first time they are validated, which would cost a
    worker's first card about 20 ms; and a lab-order shape that is not valid R4B (a bug in this module)
    stops the worker at boot rather than failing a clinician's call.
    """
    record = PatientRecord(patient_id="start-up-check", now=datetime.now(UTC), config=ClinicalConfig())
    try:
        for analyte in codes.ORDER_CODES:
            for when in (None, record.now):
                lab_order(record, analyte, when, "start-up check")
        for resource in _TYPICAL_MEDICATIONS:
            _MODELS[resource["resourceType"]].model_validate(resource)
    except ValidationError as error:
        raise RuntimeError(f"a resource this service proposes is not valid R4B: {error}") from error


def delete_action(entry: MedicationEntry) -> ProposedAction | None:
    if not entry.reference:
        return None
    return ProposedAction(
        type="delete", description=f"Remove the draft order for {entry.name}", resource_id=entry.reference
    )


def elevated_before_b12(record: PatientRecord, start: datetime) -> bool:
    """Whether the latest B12 taken before a B12 course (or the day of its start) was already elevated.

    Starting B12 then treats no deficiency and unmasks nothing. A B12 measured on treatment is high
    because of the treatment, so it must not count here: that patient still needs iron studies.
    """
    b12 = record.before("b12", day_after(start))
    if b12 is None or record.days_ago(b12.when) > record.config.thresholds.latest_days:
        return False
    return b12_elevated(record, b12)[0]


def elevated_latest_b12(record: PatientRecord) -> tuple[Result, str] | None:
    """The latest B12 (within the "latest" window) when it is elevated, with the basis of that call."""
    b12 = record.latest("b12")
    if b12 is None:
        return None
    high, basis = b12_elevated(record, b12)
    return (b12, basis) if high else None


def iron_deficiency_near(record: PatientRecord, b12: Result) -> IronStatus | None:
    """Iron deficiency shown by the latest ferritin, when it was taken at about the time of ``b12``."""
    ferritin = record.latest("ferritin")
    if ferritin is None:
        return None
    if days_apart(ferritin.when, b12.when) > record.config.thresholds.same_time_days:
        return None
    status = iron_status(record, ferritin)
    return status if status.deficient else None


GASTRITIS_TESTS = ("intrinsic-factor-ab", "parietal-cell-ab", "gastrin")


def combined_deficiency(record: PatientRecord) -> tuple[Result, str, IronStatus] | None:
    """The latest B12 when it is deficient (with the basis of that call), and the iron deficiency shown by
    the latest ferritin taken at about the same time: a combined B12 and iron deficiency."""
    b12 = record.latest("b12")
    if b12 is None:
        return None
    low, basis = b12_deficient(record, b12)
    if not low:
        return None
    status = iron_deficiency_near(record, b12)
    return None if status is None else (b12, basis, status)


@dataclass(frozen=True)
class SharedCauseWorkup:
    """What a combined B12 and iron deficiency asks for: tests for autoimmune gastritis and coeliac disease
    (those not known, resulted or ordered), and how B12 replacement stands."""

    lines: list[str]
    proposals: tuple[Proposal, ...]
    todo: str
    on_b12: bool


def shared_cause_workup(record: PatientRecord, b12: Result) -> SharedCauseWorkup:
    """The reasoning, suggestions and summary clause every card about a combined deficiency carries.

    Gastric tests unless autoimmune gastritis or pernicious anaemia is recorded, tTG IgA unless coeliac
    disease is, each only if not resulted or ordered in the "latest" window. "Replace B12 first" only when
    no B12 course is running; on one, the iron is what is left (and, for a B12 measured after the course
    began, whether B12 is taken and absorbed).
    """
    t = record.config.thresholds
    gastritis_known = bool(
        record.has_condition(codes.AUTOIMMUNE_GASTRITIS, include_controlled=True)
        or record.has_condition(codes.PERNICIOUS_ANAEMIA, include_controlled=True)
    )
    gastric = [] if gastritis_known else not_recently_done(record, GASTRITIS_TESTS, t.latest_days)
    # A diagnosis in remission is still a diagnosis: the tests that would make it are not asked for again.
    coeliac_known = record.has_condition(codes.COELIAC, include_controlled=True)
    ttg = [] if coeliac_known else not_recently_done(record, ["ttg-iga"], t.latest_days)
    wanted = gastric + ttg
    todo = (
        "test for autoimmune gastritis and coeliac disease"
        if gastric and ttg
        else "test for autoimmune gastritis"
        if gastric
        else "screen for coeliac disease"
        if ttg
        else "look for blood loss or malabsorption"
    )
    proposals = order_labs(
        record,
        "Test for autoimmune gastritis and coeliac disease",
        wanted,
        "Combined B12 and iron deficiency",
    )
    iv_iron = (
        "In autoimmune gastritis intravenous iron corrects iron deficiency more reliably than oral iron."
    )
    course = record.course(codes.B12_THERAPY)
    on_b12 = course is not None and course.ongoing
    if course is None or not course.ongoing:
        treatment = f"- Replace B12 first. {iv_iron}"
    elif course.start.date() >= b12.when.date():
        names = literal_names(course.names)
        treatment = (
            f"- B12 therapy started on {day(course.start)} ({names}): treat the iron deficiency too. "
            + iv_iron
        )
    else:
        names = literal_names(course.names)
        treatment = (
            f"- B12 therapy has been on file since {day(course.start)} ({names}), yet this B12 is "
            "deficient: check adherence, and absorption if it is oral. Treat the iron deficiency too. "
            + iv_iron
        )
    lines = [
        "- Both deficiencies together suggest a shared cause of malabsorption: autoimmune gastritis "
        "(pernicious anaemia), coeliac disease, inflammatory bowel disease or bariatric surgery.",
        treatment,
        *(validity_lines(record, courses=[course]) if on_b12 else []),
    ]
    if gastritis_known:
        lines.append(
            "- Autoimmune gastritis or pernicious anaemia is already recorded: no gastric antibody "
            "tests suggested."
        )
    lines += suggested_tests_line(wanted, t.latest_days)
    lines += done_tests_line(record, [*GASTRITIS_TESTS, "ttg-iga"], t.latest_days)
    return SharedCauseWorkup(lines, proposals, todo, on_b12)


def b12_products_by_test_time(
    record: PatientRecord, b12: Result
) -> tuple[list[MedicationEntry], list[MedicationEntry]]:
    """B12 products on file split into those that were being taken when ``b12`` was drawn and those first
    started after it, which cannot explain it.

    Taken: no known start, a start up to the test day, or part of a continuous course (of its class) that
    began by then, so a renewal written after the test of a course running before it still counts.
    """
    cutoff = day_after(b12.when)
    taken: list[MedicationEntry] = []
    later: list[MedicationEntry] = []
    for product in record.products_on_file(B12_PRODUCTS):
        courses = [record.course(cls) for cls in sorted(product.classes & B12_PRODUCTS)]
        if (
            product.start is None
            or product.start < cutoff
            or any(c is not None and c.start < cutoff for c in courses)
        ):
            taken.append(product)
        else:
            later.append(product)
    return (taken, later)


def unexplained_b12_therapy(
    record: PatientRecord, focus: list[MedicationEntry] | None, products: list[MedicationEntry]
) -> list[MedicationEntry]:
    """The B12 therapy (not supplements) among ``products`` that a patient is already being given.

    Called only when no diagnosis explains B12 treatment. Long courses of B12 injections are given for
    pernicious anaemia or malabsorption far more often than the diagnosis is coded, and a high level is
    expected on them, so stopping them is not the obvious step it is for a multivitamin: at patient-view
    every B12 therapy on file; at order hooks a B12 therapy draft that continues a running course.
    """
    therapy = [p for p in products if codes.B12_THERAPY in p.classes]
    if focus is not None:
        course = record.course(codes.B12_THERAPY)
        if course is None or not course.ongoing:
            return []
    return therapy


def iron_deficiency_shown(record: PatientRecord) -> tuple[str, str] | None:
    """What shows this patient to be iron deficient now, as a card quotes it, and why that is iron deficiency
    (the threshold and its source; empty for a diagnosis): the latest ferritin read as iron deficiency
    (`iron_status`), else a recorded iron deficiency anaemia; None when nothing does."""
    ferritin = record.latest("ferritin")
    if ferritin is not None:
        status = iron_status(record, ferritin)
        if status.deficient:
            return (f"the ferritin of {ferritin.quoted()}", f"{status.reason[0].upper()}{status.reason[1:]}.")
    names = record.has_condition(codes.IRON_DEFICIENCY_ANAEMIA)
    if names:
        return (f"the recorded {literal(names[0])}", "")
    return None


# Products that may hold iron: a multivitamin, B-complex or prenatal product (often with minerals), or one
# read as iron therapy too. A B12-only product holds none.
MAY_HOLD_IRON = frozenset({codes.B12_SUPPLEMENT, codes.IRON_THERAPY})


def iron_source_caution(
    record: PatientRecord, products: Iterable[MedicationEntry], *, reasoned: bool = False
) -> list[str]:
    """The card line saying why stopping or removing ``products`` is not recommended, when the patient is iron
    deficient and one of them may hold iron (the record does not say what a multivitamin contains); none
    otherwise. `supplement_review_actions` marks its proposal not recommended in the same case.

    ``reasoned`` for a card that does not show the iron deficiency otherwise: the line then also says why
    the ferritin is iron deficiency (threshold and source)."""
    holding = [p for p in products if p.classes & MAY_HOLD_IRON]
    if not holding:
        return []
    found = iron_deficiency_shown(record)
    if found is None:
        return []
    shown, reason = found
    line = (
        f"- Stopping {literal_names(p.name for p in holding)} is offered but not recommended: the patient is "
        f"iron deficient ({shown}), and a multivitamin or B-complex product may contain iron, which the "
        "record does not show. Check its ingredients first, and keep or replace the iron it provides."
    )
    return [f"{line} {reason}" if reasoned and reason else line]


def supplement_review_actions(
    record: PatientRecord, focus: list[MedicationEntry] | None, b12: Result
) -> tuple[list[MedicationEntry], tuple[Proposal, ...]]:
    """The B12 products to review and the proposal: delete the drafts (order hooks) or stop what is on file
    and was being taken when ``b12`` was drawn, and re-measure B12 in about 3 months (patient-view).
    Stopping B12 therapy a patient is already on is offered but not recommended (see
    `unexplained_b12_therapy`), nor is stopping a product that may hold iron in iron deficiency (see
    `iron_source_caution`: a card using this proposal adds that line)."""
    if focus is not None:
        drafts = focus_products(focus, B12_PRODUCTS)
        actions = tuple(a for a in (delete_action(d) for d in drafts) if a is not None)
        continuing = bool(unexplained_b12_therapy(record, focus, drafts))
        iron = bool(iron_source_caution(record, drafts))
        label = _conditional("Remove the B12 draft order", indication=continuing, iron=iron, items="it holds")
        proposals = (Proposal(label=label, actions=actions, is_recommended=not (continuing or iron)),)
        return (drafts, proposals if actions else ())
    products = b12_products_by_test_time(record, b12)[0]
    if not products:
        return ([], ())
    therapy = unexplained_b12_therapy(record, focus, products)
    stops = []
    for product in products:
        reason = (
            "B12 level above the reference range; no indication for B12 therapy found"
            if product in therapy
            else "B12 level above the reference range; supplement not needed"
        )
        action = stop_action(product, reason)
        if action is not None:
            stops.append(action)
    recheck = record.now + timedelta(days=record.config.thresholds.b12_recheck_days)
    # A B12 ordered after this result (a re-check accepted at an earlier visit, whose stop was not) is the
    # re-check: another would be a duplicate. The order that produced this result predates it.
    rechecked = any(
        "b12" in order.analytes and (order.draft or (order.when is not None and order.when > b12.when))
        for order in record.orders
    )
    if rechecked:
        actions = tuple(stops)
        label = "Stop the B12 product(s) (a B12 re-check is already ordered)"
    else:
        actions = (*stops, *lab_actions(record, ["b12"], recheck, "Re-measure B12 off supplements"))
        label = "Stop the B12 product(s) and re-check B12 on " + day(recheck)
    if not actions:
        return (products, ())
    iron = bool(iron_source_caution(record, products))
    label = _conditional(label, indication=bool(therapy), iron=iron, items="they hold")
    proposal = Proposal(label=label, actions=actions, is_recommended=not (therapy or iron))
    return (products, (proposal,))


def _conditional(label: str, *, indication: bool, iron: bool, items: str) -> str:
    """``label`` with the checks to make first when its proposal is not recommended."""
    checks = [
        text
        for text, wanted in (("no indication is found", indication), (f"{items} no iron", iron))
        if wanted
    ]
    if not checks:
        return label
    return f"If {' and '.join(checks)}: {label[0].lower()}{label[1:]}"
