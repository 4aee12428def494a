"""Medication resources that medication records point at but that nobody sent.

EHRs that keep their products as Medication resources write ``medicationReference`` on every order,
statement and administration. The prefetch asks for the Medications with ``_include`` on
MedicationRequest only, and an EHR may fill a prefetch key without them, so a record can arrive naming
its product by nothing but a reference. The record reads that as "a medicine we cannot identify", which
is safe but blind: a B12 injection goes unseen. These helpers find the references worth following and
fetch their targets: ``follow_medication_references`` asks for the version a reference names
(``Medication/m/_history/2``, a FHIR version read) and follows ``ingredient.itemReference`` Medications a
few levels down, each Medication once, within a cap on what it asks for and one time budget.
``MedicationIndex`` and ``ingredient_concepts`` read them back the same way for the clinical record.

Only references to the request's own FHIR server are followed (relative, or absolute under its base
URL): the EHR's access token must never be sent anywhere else, and a reference to another server may
not be readable with it anyway.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .read import array

# The medication records the service reads whose ``medicationReference`` names the product (R4).
RECORD_TYPES = frozenset({"MedicationRequest", "MedicationStatement", "MedicationAdministration"})
# R4's id type; anything else in a reference could smuggle search parameters into the query.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Ids per search: about 3.5 KB of URL at the longest ids, well inside what servers and proxies accept.
IDS_PER_QUERY = 50
# A patient with more unknown products than this is unusual; the rest stay unidentified, and say so.
MAX_IDS = 200


@dataclass(frozen=True)
class MedicationRef:
    """A Medication on the request's server, and the version a reference names (None: the current one)."""

    ident: str
    version: str | None = None

    def read_query(self) -> str:
        """The FHIR read of this Medication: a version read (``_history/vid``) when a version is named."""
        if self.version is None:
            return f"Medication/{self.ident}"
        return f"Medication/{self.ident}/_history/{self.version}"

    def matches(self, medication: Any) -> bool:
        """Whether ``medication`` is the one named: same id, and the named version when the Medication
        says which version it is (one without ``meta.versionId`` cannot be told apart, and counts)."""
        if not isinstance(medication, dict) or medication.get("resourceType") != "Medication":
            return False
        if medication.get("id") != self.ident:
            return False
        held = version_of(medication)
        return self.version is None or held is None or held == self.version


def version_of(resource: Any) -> str | None:
    """``meta.versionId`` of a resource, or None."""
    meta = resource.get("meta") if isinstance(resource, dict) else None
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version else None


def dangling_medication_ids(resources: Iterable[Any], fhir_server: str) -> list[str]:
    """Ids of the Medications on ``fhir_server`` that medication records refer to and that are not
    among ``resources``, in the order first referred to.

    Contained (``#id``), ``urn:uuid:`` and other servers' references are not followed."""
    present: set[str] = set()
    wanted: dict[str, None] = {}
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if kind == "Medication":
            if isinstance(resource.get("id"), str):
                present.add(resource["id"])
        elif kind in RECORD_TYPES:
            ident = local_medication_id(resource.get("medicationReference"), fhir_server)
            if ident is not None:
                wanted[ident] = None
    return [ident for ident in wanted if ident not in present]


def local_medication_id(reference: Any, fhir_server: str) -> str | None:
    """The Medication id a Reference names on ``fhir_server`` (``Medication/id``, with or without a
    version, or the same under the server's base URL); None for anything else."""
    named = local_medication_reference(reference, fhir_server)
    return named.ident if named is not None else None


def local_medication_reference(reference: Any, fhir_server: str) -> MedicationRef | None:
    """The Medication (and version, if it names one) a Reference names on ``fhir_server``:
    ``Medication/id``, ``Medication/id/_history/vid``, or either under the server's base URL. None for
    anything else, a version that is not a FHIR id among them."""
    if not isinstance(reference, dict):
        return None
    target = reference.get("reference")
    if not isinstance(target, str):
        return None
    target, history, version = target.partition("/_history/")
    base = fhir_server.rstrip("/") + "/"
    if target.startswith(base):
        target = target[len(base) :]
    kind, _, ident = target.partition("/")
    if kind != "Medication" or not _FHIR_ID.fullmatch(ident):
        return None
    if history and not _FHIR_ID.fullmatch(version):
        return None
    return MedicationRef(ident, version if history else None)


def medication_queries(ids: Sequence[str]) -> dict[str, str]:
    """Searches by ``_id`` for the first ``MAX_IDS`` of ``ids``, keyed ``medications-1``, ``-2``, …;
    each asks for as many results as it names ids, so no answer needs a second page."""
    ids = list(ids)[:MAX_IDS]
    chunks = [ids[start : start + IDS_PER_QUERY] for start in range(0, len(ids), IDS_PER_QUERY)]
    return {
        f"medications-{n}": f"Medication?_id={','.join(chunk)}&_count={len(chunk)}"
        for n, chunk in enumerate(chunks, start=1)
    }


# Ingredient references are followed this many Medications deep below the record's own (a product whose
# ingredient is a product whose ingredient is B12 is two levels down); deeper chains are left unread.
MAX_INGREDIENT_DEPTH = 3
# Version reads are one request each (a search cannot ask for a version); more are left unidentified.
MAX_VERSION_READS = 20
# Notes on what was left unfollowed, for the log, at most (each says something different).
MAX_NOTES = 10
# A round of fetching is not started with less of the budget left than this.
MIN_ROUND_BUDGET_MS = 50

# (queries by key, budget in ms) -> outcomes by key: ``FhirClient.fetch_all`` for the request's server
# and token, with whatever the caller counts and logs around it.
Fetch = Callable[[dict[str, str], int], Mapping[str, Any]]


class MedicationIndex:
    """Medications by id, every version kept, to look a Reference up the way the server would have read
    it: a versioned reference finds that version (or a copy that does not say its version), an unversioned
    one the first copy given as current (the prefetch's before any fetched), never one fetched by version."""

    def __init__(self, resources: Iterable[Any] = ()) -> None:
        # First copy wins everywhere, the prefetch's before any fetched; each lookup is one dict look-up,
        # however many copies of one id a request carries.
        self._current: dict[str, dict] = {}
        self._exact: dict[tuple[str, str], dict] = {}
        self._exact_read: dict[tuple[str, str], dict] = {}
        self._unsaid: dict[str, dict] = {}
        for resource in resources:
            self.add(resource)

    def add(self, resource: Any, *, by_version: bool = False) -> None:
        """Hold a Medication; ``by_version`` when it was read as a named version, not as the current one."""
        if not isinstance(resource, dict) or resource.get("resourceType") != "Medication":
            return
        ident = resource.get("id")
        if not isinstance(ident, str) or not ident:
            return
        if not by_version:
            self._current.setdefault(ident, resource)
        version = version_of(resource)
        if version is None:
            self._unsaid.setdefault(ident, resource)
        else:
            (self._exact_read if by_version else self._exact).setdefault((ident, version), resource)

    def find(self, named: MedicationRef) -> dict | None:
        if named.version is None:
            return self._current.get(named.ident)
        key = (named.ident, named.version)
        return self._exact.get(key) or self._exact_read.get(key) or self._unsaid.get(named.ident)

    def resolve(self, reference: Any, contained: Iterable[Any] = ()) -> dict | None:
        """The Medication a Reference from a record or an ingredient names: ``#id`` among ``contained``,
        else ``Medication/id`` (``/_history/vid``), relative or absolute, among the Medications held."""
        target = reference.get("reference") if isinstance(reference, dict) else None
        if not isinstance(target, str) or not target:
            return None
        if target.startswith("#"):
            for item in contained:
                if isinstance(item, dict) and item.get("id") == target[1:]:
                    return item if item.get("resourceType") == "Medication" else None
            return None
        path, history, version = target.partition("/_history/")
        kind, _, ident = path.rstrip("/").rpartition("/")
        if kind.rpartition("/")[2] != "Medication" or not _FHIR_ID.fullmatch(ident):
            return None
        if history and not _FHIR_ID.fullmatch(version):
            return None
        return self.find(MedicationRef(ident, version if history else None))


def ingredient_concepts(
    medication: dict, index: MedicationIndex, *, max_depth: int = MAX_INGREDIENT_DEPTH
) -> list[Any]:
    """The concepts naming what ``medication`` is made of, its ingredients' ingredients included: each
    ``itemCodeableConcept``, and the ``code`` of each Medication an ``itemReference`` leads to (contained
    in the Medication or held by ``index``), down to ``max_depth`` Medications below ``medication`` and
    each Medication once, so a cycle ends where it closes."""
    found: list[Any] = []
    seen = {id(medication)}
    level = [medication]
    for _depth in range(max_depth):
        below = []
        for current in level:
            contained = array(current.get("contained"))
            for ingredient in array(current.get("ingredient")):
                if not isinstance(ingredient, dict):
                    continue
                if "itemCodeableConcept" in ingredient:
                    found.append(ingredient["itemCodeableConcept"])
                    continue
                inner = index.resolve(ingredient.get("itemReference"), contained)
                if inner is not None and id(inner) not in seen:
                    seen.add(id(inner))
                    found.append(inner.get("code"))
                    below.append(inner)
        level = below
    return found


def ingredient_references(medication: Any, fhir_server: str) -> list[MedicationRef]:
    """The Medications on ``fhir_server`` that ``medication``'s ingredients name by reference."""
    ingredients = array(medication.get("ingredient")) if isinstance(medication, dict) else []
    named = (
        local_medication_reference(ingredient.get("itemReference"), fhir_server)
        for ingredient in ingredients
        if isinstance(ingredient, dict)
    )
    return [reference for reference in named if reference is not None]


@dataclass
class FollowedMedications:
    """What following the references fetched, and why anything was left unfollowed (for the log)."""

    medications: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rounds: int = 0
    asked: int = 0

    def note(self, text: str) -> None:
        """Keep ``text`` for the log, once, and no more than ``MAX_NOTES`` notes in all: a Medication is
        the server's to give ten thousand ingredients that each lead back to it."""
        if text in self.notes or len(self.notes) > MAX_NOTES:
            return
        self.notes.append(text if len(self.notes) < MAX_NOTES else "(more notes left out)")


def follow_medication_references(
    resources: Sequence[Any],
    fhir_server: str,
    fetch: Fetch,
    budget_ms: float,
    *,
    max_depth: int = MAX_INGREDIENT_DEPTH,
) -> FollowedMedications:
    """Fetch the Medications that medication records, and those Medications' ingredients, name on
    ``fhir_server`` and that are not among ``resources``, in as few rounds as the chain needs.

    A record's Medication is level 1, its ingredients' level 2, and so on to ``max_depth`` ingredient
    levels below it. Each round asks for every Medication the last one revealed at once: ``_id`` searches
    for current versions, a version read (``_history/vid``) each for a named version, which only counts
    when the server answers with that version. Each Medication is asked for once (a cycle ends there),
    ``MAX_IDS`` in all and ``MAX_VERSION_READS`` of them by version, within ``budget_ms`` in all; what is
    left unfollowed stays an unidentified product, and a note says why."""
    started = time.monotonic()
    index = MedicationIndex(resources)
    result = FollowedMedications()
    visited: set[MedicationRef] = set()
    pending = _record_references(resources, fhir_server)
    version_reads = 0
    read_by_version: set[int] = set()
    while pending:
        missing = _walk(pending, index, visited, fhir_server, max_depth, result)
        if not missing:
            break
        if result.asked + len(missing) > MAX_IDS:
            allowed = max(MAX_IDS - result.asked, 0)
            result.note(f"{len(missing) - allowed} Medication(s) not fetched: {MAX_IDS} asked for already")
            missing = dict(list(missing.items())[:allowed])
        by_version = [named for named in missing if named.version is not None]
        if version_reads + len(by_version) > MAX_VERSION_READS:
            allowed = max(MAX_VERSION_READS - version_reads, 0)
            result.note(
                f"{len(by_version) - allowed} versioned Medication reference(s) not read: "
                f"{MAX_VERSION_READS} version reads at most"
            )
            for dropped in by_version[allowed:]:
                del missing[dropped]
        left_ms = budget_ms - (time.monotonic() - started) * 1000
        if not missing:
            break
        if left_ms < MIN_ROUND_BUDGET_MS:
            result.note(
                f"{len(missing)} Medication(s) not fetched: {max(left_ms, 0):.0f} ms of the budget left"
            )
            break
        result.rounds += 1
        result.asked += len(missing)
        version_reads += sum(1 for named in missing if named.version is not None)
        queries = _round_queries(list(missing), result.rounds)
        outcomes = fetch(queries, int(left_ms))
        # By id: a server may answer with far more than it was asked for, and each of up to MAX_IDS
        # references looking through all of it was seconds of CPU.
        fetched: dict[Any, list[dict]] = {}
        for outcome in outcomes.values():
            if getattr(outcome, "ok", False):
                for resource in _resources_of(outcome.resource):
                    fetched.setdefault(resource.get("id"), []).append(resource)
        for named, (depth, chain) in missing.items():
            # A version read must answer with that version (or say none): a server that ignores
            # ``_history`` answers with the current one, a product the record may not have meant.
            medication = next((m for m in fetched.get(named.ident, ()) if named.matches(m)), None)
            if medication is None:
                continue
            index.add(medication, by_version=named.version is not None)
            result.medications.append(medication)
            if named.version is not None:
                read_by_version.add(id(medication))
            pending.extend(_below(medication, named, depth, chain, fhir_server, max_depth, result))
    # Current versions first: a reader that keeps the first copy of an id (``MedicationIndex`` without
    # ``by_version``) then reads an unversioned reference as the current product.
    result.medications.sort(key=lambda medication: id(medication) in read_by_version)
    return result


_Pending = deque[tuple[MedicationRef, int, tuple[str, ...]]]


def missing_medications(
    resources: Sequence[Any], fhir_server: str, *, max_depth: int = MAX_INGREDIENT_DEPTH
) -> list[MedicationRef]:
    """The Medications ``follow_medication_references`` would ask for first: named on ``fhir_server`` by
    a medication record (in the version named), or by an ingredient of a Medication among ``resources``
    that a record leads to, and not among ``resources``. Empty when there is nothing to fetch."""
    pending = _record_references(resources, fhir_server)
    found = _walk(pending, MedicationIndex(resources), set(), fhir_server, max_depth, FollowedMedications())
    return list(found)


def _record_references(resources: Sequence[Any], fhir_server: str) -> _Pending:
    pending: _Pending = deque()
    for resource in resources:
        if isinstance(resource, dict) and resource.get("resourceType") in RECORD_TYPES:
            named = local_medication_reference(resource.get("medicationReference"), fhir_server)
            if named is not None:
                pending.append((named, 1, ()))
    return pending


def _walk(
    pending: _Pending,
    index: MedicationIndex,
    visited: set[MedicationRef],
    fhir_server: str,
    max_depth: int,
    result: FollowedMedications,
) -> dict[MedicationRef, tuple[int, tuple[str, ...]]]:
    """Follow ``pending`` references through the Medications held, as far as they go; returns those not
    held (with their depth and the chain above them), to be fetched."""
    missing: dict[MedicationRef, tuple[int, tuple[str, ...]]] = {}
    while pending:
        named, depth, chain = pending.popleft()
        if named.ident in chain:
            result.note(f"ingredients of Medication/{chain[-1]} lead back to Medication/{named.ident}")
            continue
        if named in visited:
            continue
        visited.add(named)
        medication = index.find(named)
        if medication is None:
            missing[named] = (depth, chain)
        else:
            pending.extend(_below(medication, named, depth, chain, fhir_server, max_depth, result))
    return missing


def _below(
    medication: dict,
    named: MedicationRef,
    depth: int,
    chain: tuple[str, ...],
    fhir_server: str,
    max_depth: int,
    result: FollowedMedications,
) -> list[tuple[MedicationRef, int, tuple[str, ...]]]:
    """The ingredient references of a Medication found at ``depth``, to look for next."""
    inner = ingredient_references(medication, fhir_server)
    if inner and depth > max_depth:
        result.note(
            f"ingredients of Medication/{named.ident} not followed: {max_depth} ingredient levels at most"
        )
        return []
    return [(reference, depth + 1, (*chain, named.ident)) for reference in inner]


def _round_queries(missing: list[MedicationRef], round_number: int) -> dict[str, str]:
    """The searches and version reads of one round, keyed ``medications-N`` and ``medication-version-N``
    in the first round and with ``-round-R`` added in later ones."""
    suffix = "" if round_number == 1 else f"-round-{round_number}"
    current = [named.ident for named in missing if named.version is None]
    queries = {f"{key}{suffix}": query for key, query in medication_queries(current).items()}
    versioned = [named for named in missing if named.version is not None]
    for n, named in enumerate(versioned, start=1):
        queries[f"medication-version-{n}{suffix}"] = named.read_query()
    return queries


def _resources_of(value: Any) -> list[dict]:
    """The resource fetched, or a searchset's entries."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") != "Bundle":
        return [value]
    entries = array(value.get("entry"))
    return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
