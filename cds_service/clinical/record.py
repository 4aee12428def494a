"""PatientRecord: one patient's usable results, therapy courses, products on file, conditions and orders.

Built from FHIR JSON dicts in one pass, whatever their origin (prefetch, fetched pages, a Bundle). The
pass is the hot path of every hook call, so it touches only what the rules use: an Observation whose code
is none of ours costs one dictionary lookup (and one more to see it has no components). Interpretation flags
and reference ranges are read lazily, for the few results a rule actually compares.

A panel sent as one Observation whose components carry the analytes (an iron panel, a CBC) gives one
result per component of our codes, by the rules of a result sent on its own (`_component_views`).
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from itertools import chain
from operator import attrgetter
from typing import Any

from cds_service.clinical.config import ClinicalConfig
from cds_service.clinical.markdown import literal
from cds_service.fhir.medications import MedicationIndex, MedicationRef, ingredient_concepts
from cds_service.fhir.read import (
    COMPARATORS,
    array,
    clean_label,
    codings,
    comparator_string,
    concept_label,
    concept_text,
    first_code,
    parse_datetime,
    patient_references,
    period_end,
    period_start,
    quantity,
    reference_id,
)
from cds_service.fhir.units import canonical_unit, to_canonical, unit_factor

log = logging.getLogger(__name__)

# A FHIR date of year or year-month precision, as a card may quote it (parse_datetime accepts looser forms).
_PARTIAL_DATE = re.compile(r"\d{4}(-\d{2})?")
USABLE_OBSERVATION = frozenset({"final", "amended", "corrected"})
# A test under way: never a value, but the test is ordered (many EHRs expose results and not their orders).
IN_PROGRESS_OBSERVATION = frozenset({"registered", "preliminary"})
ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
# A B12 deficiency kept in remission by injections still explains injections (and a high B12).
CONTROLLED_CONDITION = frozenset({"remission"})
REFUTED_CONDITION = frozenset({"refuted", "entered-in-error"})
# A suspicion, not a diagnosis: it must not silence the tests that would confirm it (gastric antibodies for
# a suspected pernicious anaemia) nor explain a result away (a provisional cirrhosis and a high B12).
UNCONFIRMED_CONDITION = frozenset({"unconfirmed", "provisional", "differential"})
OPEN_ORDER = frozenset({"draft", "active", "on-hold"})
ACTIVE_MEDICATION = {
    "MedicationRequest": frozenset({"active", "on-hold"}),
    "MedicationStatement": frozenset({"active", "intended"}),
    "MedicationAdministration": frozenset(),
}
VOID_MEDICATION = {
    "MedicationRequest": frozenset({"draft", "entered-in-error", "cancelled"}),
    "MedicationStatement": frozenset({"entered-in-error", "not-taken"}),
    "MedicationAdministration": frozenset({"entered-in-error", "not-done"}),
}
# A prescription or statement that has certainly ended (`MedicationEntry.ended`). Not an administration: a
# completed one is a dose given, and a course of injections is a series of them.
ENDED_MEDICATION = {
    "MedicationRequest": frozenset({"completed", "stopped", "cancelled", "entered-in-error"}),
    "MedicationStatement": frozenset({"completed", "stopped", "entered-in-error"}),
    "MedicationAdministration": frozenset(),
}
MEDICATION_TYPES = frozenset(ACTIVE_MEDICATION)
HIGH_FLAGS = frozenset({"H", "HH", "HU"})
LOW_FLAGS = frozenset({"L", "LL", "LU"})


def number(value: float, decimals: int = 2) -> str:
    """A value as a card quotes it: up to two decimals (or ``decimals``), trailing zeros dropped (``147.5``,
    ``1250``).

    A value that is not whole is never shown as whole: 147.56 pmol/L is 199.9984 pg/mL, which two decimals
    would show as ``200`` beside "deficient (compared with the threshold of 200 pg/mL)". The thresholds are
    whole numbers but for a few, so such a value gets the decimals that keep it off them (``199.998``).
    """
    rounded = round(value, decimals)
    if rounded == int(rounded) and abs(value - rounded) > _FLOAT_NOISE:
        for digits in range(decimals + 1, decimals + 8):
            if round(value, digits) != rounded:
                return f"{round(value, digits):.12g}"
    return f"{rounded:.12g}"


# What a unit conversion's floating point adds to a value (0.45 x 100 can be 45.00000000000001): not a digit.
_FLOAT_NOISE = 1e-9


@dataclass(slots=True)
class Result:
    """One usable numeric result in its analyte's canonical unit."""

    analyte: str
    value: float
    comparator: str | None
    when: datetime
    resource: dict[str, Any]

    @property
    def unit(self) -> str:
        return canonical_unit(self.analyte)

    def quoted(self) -> str:
        """``1250 pg/mL on 2025-11-02``, or ``199.92 pg/mL (reported as 147.5 pmol/L) on ...``: the form
        every card quotes a value in.

        Two decimals at most, and no rounding to whole numbers: a card must never show a value equal to
        the threshold it says the value is below. A converted value also shows what the lab reported.
        """
        reported = self._reported()
        also = f" (reported as {reported})" if reported else ""
        return f"{self.comparator or ''}{number(self.value)} {self.unit}{also} on {self.day()}"

    def day(self) -> str:
        """The day the result was taken, as precise as the laboratory gave it: a result dated ``2025-11``
        (read as the 1st for its age) is quoted as ``2025-11``, never as a day nobody recorded."""
        stamp = _effective_stamp(self.resource) if self.resource else None
        if isinstance(stamp, str) and _PARTIAL_DATE.fullmatch(stamp):
            return stamp
        return self.when.date().isoformat()

    def _reported(self) -> str | None:
        """The lab's own value and unit, when the result was converted to the canonical unit."""
        reading = _observation_value(self.resource) if self.resource else None
        if reading is None or not isinstance(reading[1], str):
            return None
        factor = unit_factor(self.analyte, reading[1])
        if factor is None or factor[0] == 1.0:
            return None
        # As precise as the canonical value beside it: two decimals of a fraction would show a TSAT of 0.4501
        # (45.01 %, above 45 %) as 0.45.
        shown = f"{reading[2] or ''}{number(reading[0], 2 + max(0, math.ceil(math.log10(factor[0]))))}"
        if factor[1]:
            # UCUM's unit "1" is a fraction; printed after the number ("0.45 1") it reads as a digit.
            return f"the fraction {shown}"
        return f"{shown} {literal(reading[1])}"

    def lab_flag(self) -> str | None:
        """The lab's own high/low interpretation: "H", "L" or None."""
        items = self.resource.get("interpretation")
        for concept in items if isinstance(items, list) else ():
            code = first_code(concept)
            if code in HIGH_FLAGS:
                return "H"
            if code in LOW_FLAGS:
                return "L"
        return None

    def reference_range(self) -> tuple[float | None, float | None]:
        """The lab's range converted to the canonical unit; a bound in a unit we cannot convert is None."""
        ranges = self.resource.get("referenceRange")
        if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], dict):
            return (None, None)
        bounds = []
        for key in ("low", "high"):
            q = quantity(ranges[0].get(key))
            bounds.append(None if q is None else to_canonical(self.analyte, q[0], q[1]))
        return (bounds[0], bounds[1])

    def is_high(self, default: float, *, site: bool = False) -> tuple[bool, str]:
        """High by the lab's flag, else its range, else ``default`` (``site``: a limit this site set, not the
        project's default); with the basis for the card."""
        flag = self.lab_flag()
        if flag is not None:
            return (flag == "H", "the laboratory's own high flag" if flag == "H" else "the laboratory's flag")
        high = self.reference_range()[1]
        if high is not None:
            return (self.above(high), f"the laboratory's upper reference limit of {number(high)} {self.unit}")
        whose = "this site's" if site else "the default"
        return (self.above(default), f"{whose} upper limit of {number(default)} {self.unit}")

    def is_low(self, default: float, *, site: bool = False) -> tuple[bool, str]:
        """Low by the lab's flag, else its range, else ``default`` (``site``: as for `is_high`); with the
        basis for the card."""
        flag = self.lab_flag()
        if flag is not None:
            return (flag == "L", "the laboratory's own low flag" if flag == "L" else "the laboratory's flag")
        low = self.reference_range()[0]
        if low is not None:
            return (self.below(low), f"the laboratory's lower reference limit of {number(low)} {self.unit}")
        whose = "this site's threshold" if site else "the threshold"
        return (self.below(default), f"{whose} of {number(default)} {self.unit}")

    def above(self, limit: float) -> bool:
        """Whether the true value is certainly above ``limit`` (in the canonical unit).

        A comparator bounds the value on one side only: ``<2000`` says the value is below 2000, which never
        proves it high; ``>n`` proves it above ``limit`` when n is at least the limit, ``>=n`` when n is
        above it.
        """
        if self.comparator in ("<", "<="):
            return False
        if self.comparator == ">":
            return self.value >= limit
        return self.value > limit

    def below(self, limit: float) -> bool:
        """Whether the true value is certainly below ``limit``: ``>100`` never proves a value low."""
        if self.comparator in (">", ">="):
            return False
        if self.comparator == "<":
            return self.value <= limit
        return self.value < limit


@dataclass(slots=True)
class MedicationEntry:
    """One medication record of a class we care about (request, statement, administration or draft)."""

    resource_type: str
    resource_id: str | None
    classes: frozenset[str]
    name: str
    status: str
    start: datetime | None
    end: datetime | None
    active: bool
    resource: dict[str, Any]
    # Certainly no longer taken: a request or statement completed, stopped, cancelled or entered in error, or
    # a statement whose effective period ended before today (whatever its status says). Never active.
    ended: bool = False

    @property
    def reference(self) -> str | None:
        return f"{self.resource_type}/{self.resource_id}" if self.resource_id else None

    def validity_ended(self, now: datetime) -> datetime | None:
        """The end of an active prescription's validity period when it is before ``now``'s day, else None.

        The prescription still counts as taken (its status is the prescriber's word), but no more may be
        dispensed on it: a card that relies on it says so."""
        if (
            self.resource_type == "MedicationRequest"
            and self.status in ACTIVE_MEDICATION["MedicationRequest"]
            and self.end is not None
            and self.end.date() < now.date()
        ):
            return self.end
        return None


@dataclass(slots=True)
class Order:
    """An open lab order: the analytes it covers and when it was written or is due.

    ``draft`` marks a draft of this hook call (``draftOrders``): it counts however it is dated. An order on
    file, a draft included, counts within the pending window (see `PatientRecord.ordered`).
    """

    analytes: frozenset[str]
    when: datetime | None
    draft: bool


@dataclass(frozen=True, slots=True)
class Course:
    """A continuous course of one therapy class: first start, last activity, still running.

    ``expired``: the active prescriptions of the course whose validity period has ended (name, end), which
    a card relying on the course names (`MedicationEntry.validity_ended`)."""

    start: datetime
    end: datetime
    ongoing: bool
    names: tuple[str, ...]
    expired: tuple[tuple[str, datetime], ...] = ()


@dataclass
class PatientRecord:
    patient_id: str
    now: datetime
    config: ClinicalConfig
    female: bool = False
    # Recorded as male: with neither, a sex-dependent threshold must not be read as one sex's.
    male: bool = False
    results: dict[str, list[Result]] = field(default_factory=dict)
    tested: dict[str, list[datetime]] = field(default_factory=dict)
    medications: list[MedicationEntry] = field(default_factory=list)
    # Medication records that name no medicine the service can read (see `medication_entry`).
    unidentified_medications: list[MedicationEntry] = field(default_factory=list)
    drafts: list[MedicationEntry] = field(default_factory=list)
    draft_order_resources: list[dict[str, Any]] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    conditions: dict[str, list[str]] = field(default_factory=dict)
    controlled_conditions: dict[str, list[str]] = field(default_factory=dict)

    # --- results --------------------------------------------------------------------------------------

    def latest(self, analyte: str, *, within_days: int | None = None) -> Result | None:
        """The newest usable result, or None when there is none within the window (default: "latest").

        None too when a later day's result of the analyte could not be used (a unit that cannot be
        converted, a negative placeholder, no patient named, two readings of one moment that disagree): the
        usable one is no longer the latest, and a card quoting it as such would rest on a superseded value.
        A failed test (`_reports_something`) does not supersede anything.
        """
        days = self.config.thresholds.latest_days if within_days is None else within_days
        items = self.results.get(analyte)
        if not items:
            return None
        newest = items[0]
        if self.days_ago(newest.when) > days:
            return None
        times = self.tested.get(analyte)
        if times and times[0].date() > newest.when.date():
            return None
        return newest

    def near(self, analyte: str, when: datetime, *, days: int | None = None) -> Result | None:
        """The result closest in time to ``when`` within the "same time" window (`days_apart`)."""
        window = self.config.thresholds.same_time_days if days is None else days
        best: Result | None = None
        for item in self.results.get(analyte, ()):
            gap = abs(item.when - when)
            if days_apart(item.when, when) <= window and (best is None or gap < abs(best.when - when)):
                best = item
        return best

    # --- windows ------------------------------------------------------------------------------------------

    def days_ago(self, moment: datetime) -> int:
        """Calendar days from ``moment``'s date, as written, to today (``now``'s date): negative ahead.

        Every window counts days this way. A card quotes dates, not times, so "within 365 days" must mean
        what a clinician counting from those dates gets: a date alone (read as midnight) and a time later
        or earlier in the day than ``now`` all fall on the same side of an edge.
        """
        return (self.now.date() - moment.date()).days

    def window_start(self, days: int) -> datetime:
        """The first moment of the day ``days`` days before today: anything from then on is within ``days``
        days (`days_ago`)."""
        return datetime.combine(self.now.date() - timedelta(days=days), time.min, self.now.tzinfo)

    def since(self, analyte: str, moment: datetime) -> list[Result]:
        """Usable results taken at or after ``moment``, newest first."""
        return [item for item in self.results.get(analyte, ()) if item.when >= moment]

    def before(self, analyte: str, moment: datetime) -> Result | None:
        for item in self.results.get(analyte, ()):
            if item.when < moment:
                return item
        return None

    def tested_since(self, analyte: str, moment: datetime) -> datetime | None:
        """When the analyte was last tested (any final result, numeric or not) at or after ``moment``."""
        for when in self.tested.get(analyte, ()):
            if when >= moment:
                return when
        return None

    # --- orders -----------------------------------------------------------------------------------------

    def ordered(self, analyte: str) -> Order | None:
        """A draft of this hook, or an open order on file (draft, active, on hold) written within
        ``pending_order_days`` or due ahead, covering the analyte.

        A draft on file is held to the same window as an active order: one abandoned on the server years
        ago proves nothing is pending, and counting it would silence a reminder for good.
        """
        days = self.config.thresholds.pending_order_days
        for order in self.orders:
            if analyte in order.analytes and (
                order.draft or order.when is None or self.days_ago(order.when) <= days
            ):
                return order
        return None

    # --- medicines ------------------------------------------------------------------------------------

    def products_on_file(self, classes: frozenset[str]) -> list[MedicationEntry]:
        return [m for m in self.medications if m.active and m.classes & classes]

    def courses(self, cls: str) -> list[Course]:
        """Every continuous course of a therapy class (records with gaps shorter than ``course_gap_days``),
        oldest first. A record with no date belongs to none; an active one runs until now.

        A course is ongoing while one of its records is active, or ended within ``course_gap_days`` without
        having certainly ended (an administration, a prescription of unknown status: the next record may
        not be written yet). A record that certainly ended (`MedicationEntry.ended`) keeps nothing running.
        """
        gap = timedelta(days=self.config.thresholds.course_gap_days)
        horizon = self.now - gap
        spans = sorted(
            (
                (m.start, m.end or m.start, m.active, m.name, m)
                for m in self.medications
                if cls in m.classes and m.start is not None
            ),
            key=_span_order,
        )
        runs: list[list[Any]] = []
        for start, end, active, name, entry in spans:
            end = self.now if active else max(end, start)
            live = active or (not entry.ended and end >= horizon)
            expired = entry.validity_ended(self.now)
            current = runs[-1] if runs else None
            # Less than ``course_gap_days`` apart by the calendar: a record exactly that long after the
            # last one begins a new course.
            if current is not None and (start.date() - current[1].date()).days < gap.days:
                current[1] = max(current[1], end)
                current[2] = current[2] or live
                if name not in current[3]:
                    current[3].append(name)
            else:
                current = [start, end, live, [name], []]
                runs.append(current)
            if expired is not None:
                current[4].append((name, expired))
        return [
            Course(start=start, end=end, ongoing=live, names=tuple(names), expired=tuple(expired))
            for start, end, live, names, expired in runs
        ]

    def course(self, cls: str) -> Course | None:
        """The most recent continuous course of a therapy class (see `courses`)."""
        found = self.courses(cls)
        return found[-1] if found else None

    def taking(self, classes: frozenset[str], start: datetime, end: datetime) -> Course | None:
        """A course of one of ``classes`` that ran at some time from ``start`` up to (not including) ``end``:
        whether the patient was taking it then, by courses rather than single records, since a course
        covers the gaps between its records."""
        for cls in sorted(classes):
            for found in self.courses(cls):
                if found.start < end and found.end >= start:
                    return found
        return None

    # --- conditions -----------------------------------------------------------------------------------

    def has_condition(self, cls: str, *, include_controlled: bool = False) -> list[str]:
        names = list(self.conditions.get(cls, ()))
        if include_controlled:
            names.extend(self.controlled_conditions.get(cls, ()))
        return names


# --- building -----------------------------------------------------------------------------------------


def _names_patient(resource: dict[str, Any], patient_id: str, own: frozenset[str]) -> bool | None:
    """Whether the resource's ``subject`` (or ``patient``) reference is this patient: True; False for a
    reference to anyone or anything else, or one that cannot be read; None when it names no patient at all
    (no such element, or one without a reference, such as a display alone)."""
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and "reference" in ref:
            if isinstance(ref["reference"], str) and ref["reference"] in own:
                return True
            target = reference_id(ref)
            return target is not None and target[1] == patient_id and target[0] in (None, "Patient")
    return None


def _subject_matches(resource: dict[str, Any], patient_id: str, own: frozenset[str] = frozenset()) -> bool:
    """False only when the resource names a different patient.

    A medicine, diagnosis or order that names no patient is kept: it came from a patient-scoped search
    (a prefetch key or the service's own query), and these records mostly silence cards (a diagnosis of
    pernicious anaemia explains injections; a pending order is not ordered again), so dropping them would
    make cards say that nothing is on file. An Observation naming no patient is handled in `build_record`.
    """
    return _names_patient(resource, patient_id, own) is not False


def _analyte(concept: Any, analyte_codes: Any) -> str | None:
    """The analyte of an Observation code: the hot path's first test, so plain lookups only."""
    items = concept.get("coding") if type(concept) is dict else None
    if type(items) is not list:
        return None
    for coding in items:
        if type(coding) is dict:
            code = coding.get("code")
            if type(code) is str:
                system = coding.get("system")
                analyte = analyte_codes.get((system if type(system) is str else "", code))
                if analyte is not None:
                    return analyte
    return None


def _effective_stamp(obs: dict[str, Any]) -> Any:
    """The string `_observation_time` dates a result by (see there), or None."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        if obs.get(key) is not None:
            return obs[key]
    period = obs.get("effectivePeriod")
    if period is not None:
        if not isinstance(period, dict):
            return None
        return period.get("start") if period.get("start") is not None else period.get("end")
    if obs.get("effectiveTiming") is not None:
        return None
    return obs.get("issued")


def _observation_time(obs: dict[str, Any]) -> datetime | None:
    """When the specimen was taken: ``effectiveDateTime``, ``effectivePeriod`` (its start, else its end) or
    ``effectiveInstant``; ``issued`` only for a result that carries no effective time at all.

    ``issued`` is when the report was released, which for an amended or re-issued result can be years after
    the sample: a result whose effective time is given but cannot be read (or is an ``effectiveTiming``) is
    undated, not dated by its release, or an old value would be quoted as new.
    """
    return parse_datetime(_effective_stamp(obs))


def _reports_something(obs: dict[str, Any]) -> bool:
    """Whether a result holds an outcome: a value of any type, an interpretation or members, and no
    ``dataAbsentReason`` (which R4 allows only when there is no value).

    Components are not the Observation's own outcome: each is a result of its own code (`_component_views`),
    so a ferritin Observation with no value and an iron component reports iron, not ferritin."""
    if obs.get("dataAbsentReason") is not None:
        return False
    for key, value in obs.items():
        if key.startswith("value") and value not in (None, "", {}, []):
            return True
    return any(array(obs.get(key)) for key in ("interpretation", "hasMember"))


# What a component shares with its panel (R4: "the same attributes"): who, when and how final. Everything
# else of a component's result is its own; a panel's value, flags, range or dataAbsentReason are the panel's.
_PANEL_SHARED = (
    "status",
    "subject",
    "patient",
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "effectiveTiming",
    "issued",
)
_COMPONENT_OWN = frozenset({"code", "dataAbsentReason", "interpretation", "referenceRange"})


def _component_views(panel: dict[str, Any], analyte_codes: Any, out: list[dict[str, Any]]) -> None:
    """Append to ``out`` one Observation for each component of ``panel`` whose code is one of our analytes:
    the component's code, value, dataAbsentReason, interpretation and reference range, with the panel's
    status, subject and times. `build_record` reads each as it reads an Observation that was sent, by the
    same rules, so a component is a result of its own code only."""
    items = panel["component"]
    if type(items) is not list:
        return
    shared: dict[str, Any] | None = None
    for component in items:
        if type(component) is not dict or _analyte(component.get("code"), analyte_codes) is None:
            continue
        if shared is None:
            shared = {key: panel[key] for key in _PANEL_SHARED if key in panel}
            shared["resourceType"] = "Observation"
        view = dict(shared)
        for key, value in component.items():
            if key in _COMPONENT_OWN or key.startswith("value"):
                view[key] = value
        out.append(view)


def _observation_value(obs: dict[str, Any]) -> tuple[float, str | None, str | None] | None:
    if "valueQuantity" in obs:
        return quantity(obs["valueQuantity"])
    if "valueString" in obs:
        return comparator_string(obs["valueString"])
    return None


def _medication_concepts(
    resource: dict[str, Any], medications: MedicationIndex
) -> tuple[list[Any], str | None]:
    """The concepts that name what a medication record is about, and a display name for the card.

    ``medicationReference`` is followed as the server would read it (`MedicationIndex.resolve`: a contained
    Medication, or ``Medication/id`` among the resources, the version a ``/_history/`` reference names), or
    by id for a ``urn:uuid:`` reference (transaction Bundles); that Medication's ingredients are read too,
    down to ingredients of ingredients (`ingredient_concepts`).
    """
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return ([concept], concept_label(concept))
    ref = resource.get("medicationReference")
    if not isinstance(ref, dict):
        return ([], None)
    found: list[Any] = []
    raw_display = ref.get("display")
    display = (clean_label(raw_display) or None) if isinstance(raw_display, str) else None
    if display:
        found.append(display.lower())
    target = ref.get("reference")
    if isinstance(target, str) and target.startswith("urn:"):
        named = reference_id(ref)
        medication = medications.find(MedicationRef(named[1])) if named is not None else None
    else:
        medication = medications.resolve(ref, array(resource.get("contained")))
    if isinstance(medication, dict):
        found.append(medication.get("code"))
        display = display or concept_label(medication.get("code"))
        found.extend(ingredient_concepts(medication, medications))
    return (found, display)


def _dosage_start(resource: dict[str, Any]) -> datetime | None:
    starts = []
    for dosage in array(resource.get("dosageInstruction") or resource.get("dosage")):
        timing = dosage.get("timing") if isinstance(dosage, dict) else None
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        if isinstance(repeat, dict):
            start = _plausible(period_start(repeat.get("boundsPeriod")))
            if start is not None:
                starts.append(start)
    return min(starts) if starts else None


# Dates a clinical record can carry. FHIR allows years 0001–9999, but a course starting in 9999 (or in 0001)
# is a data error, and the windows the rules add to such a date fall outside what a datetime can hold.
MIN_YEAR = 1800
MAX_YEAR = 2200


def _plausible(moment: datetime | None) -> datetime | None:
    """``moment`` when a clinical record could carry it (years MIN_YEAR–MAX_YEAR), else None: unreadable."""
    return moment if moment is not None and MIN_YEAR <= moment.year <= MAX_YEAR else None


def _medication_span(resource: dict[str, Any], kind: str) -> tuple[datetime | None, datetime | None]:
    """(start, end) of what one medication record says about when the medicine was (to be) taken; a date
    outside MIN_YEAR–MAX_YEAR is read as absent."""
    if kind == "MedicationRequest":
        dispense = resource.get("dispenseRequest")
        validity = dispense.get("validityPeriod") if isinstance(dispense, dict) else None
        candidates = [
            _dosage_start(resource),
            _plausible(period_start(validity)),
            _plausible(parse_datetime(resource.get("authoredOn"))),
        ]
        starts = [c for c in candidates if c is not None]
        return (min(starts) if starts else None, _plausible(period_end(validity)))
    if "effectivePeriod" in resource:
        period = resource["effectivePeriod"]
        start = _plausible(period_start(period))
        end = _plausible(period_end(period))
        return (start, end or (start if kind == "MedicationAdministration" else None))
    when = _plausible(parse_datetime(resource.get("effectiveDateTime")))
    if when is None and kind == "MedicationStatement":
        # Not dateAsserted: that is when the statement was recorded (often a medicines reconciliation
        # years into a course), and taking it for a start would announce a course as new.
        when = _dosage_start(resource)
    return (when, when)


def _span_order(span: tuple[Any, ...]) -> tuple[Any, ...]:
    """Records by start, then end, active and name (never the entry, which does not compare)."""
    return span[:4]


def medication_entry(
    resource: dict[str, Any],
    config: ClinicalConfig,
    medications: MedicationIndex,
    *,
    draft: bool,
    now: datetime | None = None,
) -> MedicationEntry | None:
    """A medication record of a class we track, or None for any other medicine or a void record.

    A record that names no medicine at all (no text, no display, no code we know: typically a
    ``medicationReference`` to a Medication the EHR did not send) comes back with no classes. It could be
    a B12 product, so a rule that concludes "none on file" must not ignore it."""
    kind = resource.get("resourceType")
    status = resource.get("status") if isinstance(resource.get("status"), str) else "unknown"
    if kind not in MEDICATION_TYPES:
        return None
    if not draft and status in VOID_MEDICATION[kind]:
        return None
    concepts, name = _medication_concepts(resource, medications)
    classes = config.value_sets.medication_classes(concepts)
    if not classes and (name is not None or _names_anything(concepts)):
        return None
    start, end = _medication_span(resource, kind)
    # A statement's end in the past is the patient's word that it was stopped, whatever the status says
    # ("active" is often left on a list that nobody reconciled). A prescription's end is its validity period:
    # an active one past it is still the prescriber's (`MedicationEntry.validity_ended`).
    ended = not draft and (status in ENDED_MEDICATION[kind] or _statement_ended(resource, kind, now))
    active = draft or (status in ACTIVE_MEDICATION.get(kind, ()) and not ended)
    ident = resource.get("id") if isinstance(resource.get("id"), str) else None
    return MedicationEntry(
        resource_type=kind,
        resource_id=ident,
        classes=classes,
        name=name or coded_name(concepts, "an unnamed medicine"),
        status=status,
        start=start,
        end=end,
        active=active,
        resource=resource,
        ended=ended,
    )


def _statement_ended(resource: dict[str, Any], kind: str, now: datetime | None) -> bool:
    """Whether a MedicationStatement's effective period ended before ``now``'s day. Only a period's end: an
    effectiveDateTime is when the medicine was taken, not when it was stopped."""
    if kind != "MedicationStatement" or now is None:
        return False
    end = _plausible(period_end(resource.get("effectivePeriod")))
    return end is not None and end.date() < now.date()


def _names_anything(concepts: list[Any]) -> bool:
    """Whether the concepts give the medicine a name a person could read (text or a coding's display)."""
    return any((isinstance(c, str) and c.strip()) or bool(concept_text(c)) for c in concepts)


def coded_name(concepts: Iterable[Any], unnamed: str) -> str:
    """A name for something known only by code, e.g. ``RxNorm 309594`` or ``SNOMED CT 84027009``: the first
    coding of a system a clinician knows by name, else the first coding (``code LIV7``), else ``unnamed``."""
    first: str | None = None
    for concept in concepts:
        for system, code in codings(concept):
            if system in SYSTEM_NAMES:
                return f"{SYSTEM_NAMES[system]} {code}"
            first = first or f"code {code}"
    return first or unnamed


SYSTEM_NAMES = {
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.whocc.no/atc": "ATC",
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
}


class _UnitProblems:
    """Collects the results one build does not use — unconvertible units, each (analyte, unit) once, and
    results naming no patient, counted by analyte — and logs them: no patient data."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.unattributed: dict[str, int] = {}
        self.conflicts: dict[str, int] = {}

    def disagree(self, analyte: str, moments: int) -> None:
        self.conflicts[analyte] = self.conflicts.get(analyte, 0) + moments

    def no_patient(self, analyte: str) -> None:
        self.unattributed[analyte] = self.unattributed.get(analyte, 0) + 1

    def add(self, analyte: str, unit: str | None) -> None:
        """Units are the sender's text: at most 40 characters of one reach the log."""
        shown = unit if unit is None or len(unit) <= 40 else unit[:40] + "…"
        self.seen.add((analyte, shown or "(none)"))

    def report(self) -> None:
        for analyte, count in sorted(self.conflicts.items()):
            log.warning(
                "%s results of one moment disagree (%d moment(s)): counted as done, not read as values",
                analyte,
                count,
            )
        for analyte, count in sorted(self.unattributed.items()):
            log.warning(
                "%d %s result(s) name no patient (no subject reference): counted as done, not read as values",
                count,
                analyte,
            )
        for analyte, unit in sorted(self.seen):
            log.warning(
                "%s result with unit %r not used: the unit cannot be converted to %s",
                analyte,
                unit,
                canonical_unit(analyte),
            )


def _service_request_time(resource: dict[str, Any]) -> datetime | None:
    """When the order is due, else when it was written, else when the server last changed it: an open
    order on file with no date of its own would otherwise count as pending for ever and silence reminders.
    """
    meta = resource.get("meta")
    return (
        _plausible(parse_datetime(resource.get("occurrenceDateTime")))
        or _plausible(period_start(resource.get("occurrencePeriod")))
        or _plausible(parse_datetime(resource.get("authoredOn")))
        or (_plausible(parse_datetime(meta.get("lastUpdated"))) if isinstance(meta, dict) else None)
    )


def build_record(
    resources: Iterable[dict[str, Any]],
    *,
    patient_id: str,
    now: datetime,
    config: ClinicalConfig,
    draft_orders: Sequence[dict[str, Any]] = (),
) -> PatientRecord:
    """One pass over the resources; anything of another patient, unusable or irrelevant is skipped."""
    record = PatientRecord(patient_id=patient_id, now=now, config=config)
    value_sets = config.value_sets
    analyte_codes = value_sets.analyte_codes
    fromisoformat = datetime.fromisoformat
    own = patient_references(patient_id)
    units = _UnitProblems()
    medications = MedicationIndex()
    medication_records: list[dict[str, Any]] = []
    # Filled per analyte while the loop runs, then handed to the record as plain dicts.
    results: defaultdict[str, list[Result]] = defaultdict(list)
    tested: defaultdict[str, list[datetime]] = defaultdict(list)
    latest_allowed = now + timedelta(days=1)
    seen_ids: set[tuple[str, str]] = set()
    draft_ids = {
        (d.get("resourceType"), d.get("id"))
        for d in draft_orders
        if isinstance(d, dict) and isinstance(d.get("id"), str) and isinstance(d.get("resourceType"), str)
    }
    # Results a panel carries in its components, each read as an Observation of its own (`_component_views`)
    # once the resources sent are read: the list grows while the loop runs, and the chain reaches it last.
    components: list[dict[str, Any]] = []
    for resource in chain(resources, components):
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if type(kind) is not str:
            continue
        if kind == "Observation":
            if "component" in resource:
                _component_views(resource, analyte_codes, components)
            # Fast path: the first coding is ours (true of everything the prefetch queries return).
            try:
                first = resource["code"]["coding"][0]
                analyte = analyte_codes.get((first["system"], first["code"]))
            except (KeyError, IndexError, TypeError):
                analyte = None
            if analyte is None:
                analyte = _analyte(resource.get("code"), analyte_codes)
            status = resource.get("status")
            if analyte is None or type(status) is not str or status not in USABLE_OBSERVATION:
                if analyte is not None and type(status) is str and status in IN_PROGRESS_OBSERVATION:
                    _add_in_progress(record, resource, analyte, patient_id, own)
                continue
            # Fast path: ``subject.reference`` is a usual spelling of the patient; anything else (another
            # spelling, another patient, no subject, a value of the wrong type) is read by `_names_patient`.
            try:
                attributed: bool | None = resource["subject"]["reference"] in own
            except (KeyError, TypeError):
                attributed = False
            if not attributed:
                attributed = _names_patient(resource, patient_id, own)
                if attributed is False:
                    continue
            stamp = resource.get("effectiveDateTime")
            when = None
            if type(stamp) is str and len(stamp) > 10:
                try:
                    when = fromisoformat(stamp)
                except ValueError:
                    pass
                else:
                    if when.tzinfo is None:
                        when = when.replace(tzinfo=UTC)
            if when is None:
                when = _observation_time(resource)
            if when is None or when > latest_allowed or when.year < MIN_YEAR:
                continue
            if "dataAbsentReason" in resource or "valueQuantity" not in resource:
                reports = _reports_something(resource)
            else:
                reports = True
            if not reports:
                # A test that failed (dataAbsentReason: haemolysed, insufficient sample) or a result with
                # nothing in it: it neither counts as done, which would silence the order that repeats
                # it, nor replaces an earlier result.
                continue
            tested[analyte].append(when)
            if attributed is None:
                # Nothing shows this result is the patient's: it makes no card (one read from someone
                # else's result would be about the wrong person), but the test counts as done, and the log
                # says it was not used, as for a unit that cannot be converted.
                units.no_patient(analyte)
                continue
            if analyte not in _NUMERIC_ANALYTES:
                continue
            value_quantity = resource.get("valueQuantity")
            number = value_quantity.get("value") if type(value_quantity) is dict else None
            if type(number) is float or type(number) is int:
                unit = value_quantity.get("code")
                if type(unit) is not str or not unit:  # as fhir.read.quantity: the text when no code
                    unit = value_quantity.get("unit")
                comparator = value_quantity.get("comparator")
                if comparator is not None and (type(comparator) is not str or comparator not in COMPARATORS):
                    continue
            else:
                reading = _observation_value(resource)
                if reading is None:
                    continue
                number, unit, comparator = reading
            if not 0 <= number < _INFINITY:
                # Below zero (or not a number) is a data error or an interface's placeholder, not a level:
                # a B12 of -1 is no deficiency. The test was still done (``tested`` above).
                continue
            found = unit_factor(analyte, unit) if isinstance(unit, str) else None
            if found is None or (found[1] and number > 1.0):
                units.add(analyte, unit if isinstance(unit, str) else None)
                continue
            value = number * found[0]
            if value == _INFINITY:  # a finite number past what its unit conversion can hold: no level
                continue
            results[analyte].append(Result(analyte, value, comparator, when, resource))
        elif kind in MEDICATION_TYPES:
            ident = resource.get("id") if isinstance(resource.get("id"), str) else None
            if (kind, ident) in draft_ids or (ident and (kind, ident) in seen_ids):
                continue
            if ident:
                seen_ids.add((kind, ident))
            if _subject_matches(resource, patient_id, own):
                medication_records.append(resource)
        elif kind == "Medication":
            if isinstance(resource.get("id"), str):
                medications.add(resource)
        elif kind == "Condition":
            if _subject_matches(resource, patient_id, own):
                _add_condition(record, resource)
        elif kind == "ServiceRequest":
            ident = resource.get("id") if isinstance(resource.get("id"), str) else None
            if (kind, ident) in draft_ids or not _subject_matches(resource, patient_id, own):
                continue
            status = resource.get("status")
            if isinstance(status, str) and status in OPEN_ORDER and resource.get("intent") != "proposal":
                analytes = value_sets.order_analytes(resource.get("code"))
                if analytes:
                    record.orders.append(Order(frozenset(analytes), _service_request_time(resource), False))
        elif kind == "Patient" and resource.get("id") == patient_id:
            record.female = resource.get("gender") == "female"
            record.male = resource.get("gender") == "male"
    for analyte, items in results.items():
        items.sort(key=_by_time, reverse=True)
        conflicts = _conflicting_moments(items)
        if conflicts:
            items[:] = [item for item in items if item.when not in conflicts]
            units.disagree(analyte, len(conflicts))
    for times in tested.values():
        times.sort(reverse=True)
    record.results = dict(results)
    record.tested = dict(tested)
    # A draft order may name a Medication that travels beside it in the draftOrders Bundle.
    for resource in draft_orders:
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "Medication"
            and isinstance(resource.get("id"), str)
        ):
            medications.add(resource)
    for resource in medication_records:
        entry = medication_entry(resource, config, medications, draft=False, now=now)
        if entry is not None:
            (record.medications if entry.classes else record.unidentified_medications).append(entry)
    for resource in draft_orders:
        if not isinstance(resource, dict):
            continue
        record.draft_order_resources.append(resource)
        kind = resource.get("resourceType")
        if type(kind) is not str:
            continue
        if kind == "ServiceRequest":
            analytes = value_sets.order_analytes(resource.get("code"))
            if analytes:
                record.orders.append(Order(frozenset(analytes), _service_request_time(resource), True))
        elif kind in MEDICATION_TYPES:
            entry = medication_entry(resource, config, medications, draft=True, now=now)
            if entry is not None and entry.classes:
                record.drafts.append(entry)
    units.report()
    return record


def _add_in_progress(
    record: PatientRecord, resource: dict[str, Any], analyte: str, patient_id: str, own: frozenset[str]
) -> None:
    """A registered or preliminary result of the patient: its test counts as ordered (within the pending
    window, like an order on file), so no card asks for a test already under way."""
    if _names_patient(resource, patient_id, own) is not True:
        return
    when = _plausible(_observation_time(resource))
    if when is not None:
        record.orders.append(Order(frozenset({analyte}), when, False))


# A C-level sort key: a Python one cost a call per result.
_by_time = attrgetter("when")


def _conflicting_moments(items: list[Result]) -> set[datetime]:
    """The moments at which two results of one analyte give different readings; ``items`` sorted by time.

    Two results of one specimen (the same moment) under two ids are one result when they agree, whatever
    the unit; when they disagree (a ferritin of 12 and of 250 ng/mL), nothing says which is right, and which
    one a card read depended on the order the server returned them. Neither is used: like a result whose
    unit cannot be converted, they count as done and leave no latest value (`PatientRecord.latest`).

    Sorted, one moment's results are side by side, so each is compared with the first of its run: no
    datetime is hashed (an aware one asks its tzinfo for the offset through a method call each time).
    """
    moments: set[datetime] = set()
    first: Result | None = None
    for item in items:
        if first is None or item.when != first.when:
            first = item
        elif not _same_reading(first, item):
            moments.add(item.when)
    return moments


def _same_reading(one: Result, other: Result) -> bool:
    return one.comparator == other.comparator and abs(one.value - other.value) <= _FLOAT_NOISE * max(
        1.0, abs(one.value)
    )


def days_apart(first: datetime, second: datetime) -> int:
    """Calendar days between two dates as written (results "at the same time" are at most
    ``same_time_days`` apart), whatever their times of day."""
    return abs((first.date() - second.date()).days)


def day_start(moment: datetime, days_before: int = 0) -> datetime:
    """The first moment of the day ``days_before`` days before ``moment``'s date, in its offset."""
    return datetime.combine(moment.date() - timedelta(days=days_before), time.min, moment.tzinfo)


_INFINITY = float("inf")
_NUMERIC_ANALYTES = frozenset(
    {"b12", "ferritin", "tsat", "iron", "tibc", "transferrin", "crp", "mcv", "hb", "mma", "alt", "ast"}
)


def _add_condition(record: PatientRecord, resource: dict[str, Any]) -> None:
    verification = first_code(resource.get("verificationStatus"))
    if verification in REFUTED_CONDITION or verification in UNCONFIRMED_CONDITION:
        return
    clinical = first_code(resource.get("clinicalStatus"))
    if clinical is None:
        clinical = "active" if not any(k.startswith("abatement") for k in resource) else "resolved"
    if clinical in ACTIVE_CONDITION:
        target = record.conditions
    elif clinical in CONTROLLED_CONDITION:
        target = record.controlled_conditions
    else:
        return
    concept = resource.get("code")
    classes = record.config.value_sets.condition_classes(concept)
    if not classes:
        return
    # Named as a medicine is: its text or a display, else its code and system (classes come from one).
    label = concept_label(concept) or coded_name([concept], "an unnamed condition")
    for cls in classes:
        target.setdefault(cls, []).append(label)
