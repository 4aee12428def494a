"""A tiny in-memory FHIR server: just the search subset the service's prefetch templates use.

``replay`` must run the real hook handler without a FHIR server, so the prefetch an EHR would send is
computed here from the resources of a Bundle. The answers have the shape a FHIR server gives — an
instance read returns the resource or ``None`` (prefetch ``null``), a search returns a ``searchset``
Bundle with ``total``, ``self``/``next`` links, ``search.mode`` match/include entries and ``_count``
paging — so the service sees exactly what it would see from an EHR. A query outside the subset raises
``OfflineQueryError`` naming the parameter, rather than quietly matching everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from cds_service.fhir.read import array, parse_datetime

# A base URL under the reserved .invalid domain: paging links look real but can never reach a host.
OFFLINE_BASE_URL = "https://offline.invalid/fhir"

Resource = dict[str, Any]


class OfflineQueryError(ValueError):
    """A prefetch query uses something the offline evaluator does not implement."""


# --- how each search parameter reads a resource -------------------------------------------------------


def _codeable(*fields: str) -> Callable[[Resource], list[tuple[str | None, str]]]:
    """(system, code) pairs of the CodeableConcept(s) in ``fields``; a coding without system gives ""."""

    def read(resource: Resource) -> list[tuple[str | None, str]]:
        pairs: list[tuple[str | None, str]] = []
        for field in fields:
            value = resource.get(field)
            for concept in value if isinstance(value, list) else [value]:
                if not isinstance(concept, dict):
                    continue
                for coding in array(concept.get("coding")):
                    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                        system = coding.get("system")
                        pairs.append((system if isinstance(system, str) else "", coding["code"]))
        return pairs

    return read


def _code(field: str) -> Callable[[Resource], list[tuple[str | None, str]]]:
    """A plain ``code`` element: it has no system of its own, marked by ``None``."""

    def read(resource: Resource) -> list[tuple[str | None, str]]:
        value = resource.get(field)
        return [(None, value)] if isinstance(value, str) else []

    return read


def _dates(*fields: str) -> Callable[[Resource], list[str]]:
    """FHIR date/dateTime strings from choice fields such as effectiveDateTime or effectivePeriod.start."""

    def read(resource: Resource) -> list[str]:
        found: list[str] = []
        for field in fields:
            value = resource.get(field)
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, dict) and isinstance(value.get("start"), str):
                found.append(value["start"])
        return found

    return read


def _references(*fields: str) -> Callable[[Resource], list[str]]:
    def read(resource: Resource) -> list[str]:
        refs: list[str] = []
        for field in fields:
            value = resource.get(field)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and isinstance(item.get("reference"), str):
                    refs.append(item["reference"])
        return refs

    return read


_MEDICATION_CODE = _codeable("medicationCodeableConcept")
_SUBJECT = _references("subject")

TOKEN_PARAMS: dict[str, dict[str, Callable[[Resource], list[tuple[str | None, str]]]]] = {
    "Observation": {
        "code": _codeable("code"),
        "status": _code("status"),
        "category": _codeable("category"),
    },
    "Condition": {
        "code": _codeable("code"),
        "clinical-status": _codeable("clinicalStatus"),
        "verification-status": _codeable("verificationStatus"),
        "category": _codeable("category"),
    },
    "MedicationRequest": {
        "code": _MEDICATION_CODE,
        "status": _code("status"),
        "intent": _code("intent"),
    },
    "MedicationStatement": {"code": _MEDICATION_CODE, "status": _code("status")},
    "MedicationAdministration": {"code": _MEDICATION_CODE, "status": _code("status")},
    "ServiceRequest": {
        "code": _codeable("code"),
        "status": _code("status"),
        "intent": _code("intent"),
        "category": _codeable("category"),
    },
    "Procedure": {"code": _codeable("code"), "status": _code("status")},
    "Medication": {"code": _codeable("code")},
    "DiagnosticReport": {"code": _codeable("code"), "status": _code("status")},
}

DATE_PARAMS: dict[str, dict[str, Callable[[Resource], list[str]]]] = {
    "Observation": {"date": _dates("effectiveDateTime", "effectivePeriod", "effectiveInstant")},
    "Condition": {
        "onset-date": _dates("onsetDateTime", "onsetPeriod"),
        "recorded-date": _dates("recordedDate"),
    },
    "MedicationRequest": {"authoredon": _dates("authoredOn")},
    "MedicationStatement": {"effective": _dates("effectiveDateTime", "effectivePeriod")},
    "MedicationAdministration": {"effective-time": _dates("effectiveDateTime", "effectivePeriod")},
    "ServiceRequest": {"authored": _dates("authoredOn")},
    "Procedure": {"date": _dates("performedDateTime", "performedPeriod")},
    "DiagnosticReport": {"date": _dates("effectiveDateTime", "effectivePeriod")},
}

# Reference parameters usable both as search filters (patient=) and as _include targets.
REFERENCE_PARAMS: dict[str, dict[str, Callable[[Resource], list[str]]]] = {
    "Observation": {"patient": _SUBJECT, "subject": _SUBJECT},
    "Condition": {"patient": _SUBJECT, "subject": _SUBJECT},
    "MedicationRequest": {
        "patient": _SUBJECT,
        "subject": _SUBJECT,
        "medication": _references("medicationReference"),
    },
    "MedicationStatement": {
        "patient": _SUBJECT,
        "subject": _SUBJECT,
        "medication": _references("medicationReference"),
    },
    "MedicationAdministration": {
        "patient": _SUBJECT,
        "subject": _SUBJECT,
        "medication": _references("medicationReference"),
    },
    "ServiceRequest": {"patient": _SUBJECT, "subject": _SUBJECT},
    "Procedure": {"patient": _SUBJECT, "subject": _SUBJECT},
    "DiagnosticReport": {"patient": _SUBJECT, "subject": _SUBJECT, "result": _references("result")},
    "Encounter": {"patient": _SUBJECT, "subject": _SUBJECT},
}

# Which resource type a bare id given to a reference parameter names.
_REFERENCE_TARGET = {"patient": "Patient", "subject": "Patient", "medication": "Medication"}


# --- dates ----------------------------------------------------------------------------------------------


def parse_fhir_instant(value: str) -> datetime | None:
    """The first instant a FHIR date/dateTime covers, in UTC, read as the clinical rules read it."""
    moment = parse_datetime(value.strip())
    return moment.astimezone(UTC) if moment else None


_DATE_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb", "ap")


def _date_matches(values: Iterable[str], criterion: str) -> bool:
    prefix, text = "eq", criterion
    if criterion[:2] in _DATE_PREFIXES and not criterion[:2].isdigit():
        prefix, text = criterion[:2], criterion[2:]
    if prefix not in ("eq", "lt", "le", "gt", "ge"):
        raise OfflineQueryError(f"date prefix {prefix!r} is not supported offline (use eq, lt, le, gt, ge)")
    bound = parse_fhir_instant(text)
    if bound is None:
        raise OfflineQueryError(f"date value {criterion!r} is not a FHIR date")
    for raw in values:
        moment = parse_fhir_instant(raw)
        if moment is None:
            continue
        if prefix == "eq" and raw.startswith(text):
            return True
        if (
            (prefix == "lt" and moment < bound)
            or (prefix == "le" and moment <= bound)
            or (prefix == "gt" and moment > bound)
            or (prefix == "ge" and moment >= bound)
        ):
            return True
    return False


# --- the server -----------------------------------------------------------------------------------------


class OfflineFhirServer:
    """Read and search over a fixed set of resources, answering like a FHIR R4 server."""

    def __init__(self, resources: Iterable[Resource], base_url: str = OFFLINE_BASE_URL) -> None:
        self.base_url = base_url.rstrip("/")
        self._by_type: dict[str, dict[str, Resource]] = {}
        for resource in resources:
            kind, rid = resource.get("resourceType"), resource.get("id")
            if isinstance(kind, str) and isinstance(rid, str):
                self._by_type.setdefault(kind, {})[rid] = resource

    def read(self, kind: str, rid: str) -> Resource | None:
        return self._by_type.get(kind, {}).get(rid)

    def query(self, relative_url: str) -> Resource | None:
        """Answer a relative URL as a server would: ``Type/id`` reads, ``Type?params`` searches."""
        path, _, query = relative_url.strip().lstrip("/").partition("?")
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and not query:
            return self.read(parts[0], parts[1])
        if len(parts) == 1:
            return self.search(parts[0], parse_qsl(query, keep_blank_values=True))
        raise OfflineQueryError(
            f"{relative_url!r}: only Type/id reads and Type?params searches are supported"
        )

    def search(self, kind: str, params: Sequence[tuple[str, str]]) -> Resource:
        """A searchset Bundle of the matches (first ``_count`` of them) and what ``_include`` pulls in."""
        filters: list[tuple[str, str]] = []
        sort: list[str] = []
        count: int | None = None
        includes: list[str] = []
        for name, value in params:
            if name == "_sort":
                sort.extend(v for v in value.split(",") if v)
            elif name == "_count":
                if not value.isdigit():
                    raise OfflineQueryError(f"_count={value!r} is not a whole number")
                count = int(value)
            elif name == "_include":
                includes.append(value)
            else:
                filters.append((name, value))

        matches = [r for r in self._by_type.get(kind, {}).values() if self._matches(kind, r, filters)]
        matches = self._sorted(kind, matches, sort)
        total = len(matches)
        page = matches if count is None else matches[:count]
        included = self._included(kind, page, includes)

        entries = [self._entry(r, "match") for r in page] + [self._entry(r, "include") for r in included]
        bundle: Resource = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": datetime.now(UTC).isoformat(timespec="seconds")},
            "type": "searchset",
            "total": total,
            "link": self._links(kind, params, count, total),
        }
        if entries:
            bundle["entry"] = entries
        return bundle

    # --- matching -------------------------------------------------------------------------------------

    def _matches(self, kind: str, resource: Resource, filters: list[tuple[str, str]]) -> bool:
        return all(self._matches_one(kind, resource, name, value) for name, value in filters)

    def _matches_one(self, kind: str, resource: Resource, name: str, value: str) -> bool:
        if ":" in name:
            raise OfflineQueryError(f"{kind}?{name}: search modifiers are not supported offline")
        alternatives = [v for v in value.split(",") if v]
        if name == "_id":
            return resource.get("id") in alternatives
        if name in TOKEN_PARAMS.get(kind, {}):
            pairs = TOKEN_PARAMS[kind][name](resource)
            return any(_token_matches(pairs, alt) for alt in alternatives)
        if name in REFERENCE_PARAMS.get(kind, {}):
            refs = REFERENCE_PARAMS[kind][name](resource)
            return any(_reference_matches(refs, alt, _REFERENCE_TARGET.get(name)) for alt in alternatives)
        if name in DATE_PARAMS.get(kind, {}):
            return _date_matches(DATE_PARAMS[kind][name](resource), value)
        raise OfflineQueryError(f"{kind}?{name}=: this search parameter is not supported offline")

    def _sorted(self, kind: str, resources: list[Resource], sort: list[str]) -> list[Resource]:
        ordered = list(resources)
        for key in reversed(sort):
            descending = key.startswith("-")
            name = key.lstrip("-")
            if name == "_id":
                ordered.sort(key=lambda r: str(r.get("id")), reverse=descending)
                continue
            reader = DATE_PARAMS.get(kind, {}).get(name)
            if reader is None:
                raise OfflineQueryError(f"{kind}?_sort={key}: only date parameters and _id sort offline")
            dated = [(r, _first_instant(reader(r))) for r in ordered]
            present = [pair for pair in dated if pair[1] is not None]
            missing = [r for r, moment in dated if moment is None]
            present.sort(key=lambda pair: pair[1], reverse=descending)
            ordered = [r for r, _ in present] + missing
        return ordered

    def _included(self, kind: str, page: list[Resource], includes: list[str]) -> list[Resource]:
        seen = {(r["resourceType"], r["id"]) for r in page}
        included: list[Resource] = []
        for spec in includes:
            source, _, param = spec.partition(":")
            param, _, target = param.partition(":")
            reader = REFERENCE_PARAMS.get(source, {}).get(param)
            if source != kind or reader is None:
                raise OfflineQueryError(f"{kind}?_include={spec}: not supported offline")
            for resource in page:
                for ref in reader(resource):
                    ref_kind, _, rid = ref.rpartition("/")
                    ref_kind = ref_kind.rsplit("/", 1)[-1]
                    if target and ref_kind != target:
                        continue
                    found = self.read(ref_kind, rid)
                    if found is not None and (ref_kind, rid) not in seen:
                        seen.add((ref_kind, rid))
                        included.append(found)
        return included

    # --- output ---------------------------------------------------------------------------------------

    def _entry(self, resource: Resource, mode: str) -> Resource:
        return {
            "fullUrl": f"{self.base_url}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": mode},
        }

    def _links(
        self, kind: str, params: Sequence[tuple[str, str]], count: int | None, total: int
    ) -> list[Resource]:
        kept = [(k, v) for k, v in params if k != "_count"]

        def url(offset: int) -> str:
            query = kept + ([("_count", str(count)), ("_offset", str(offset))] if count is not None else [])
            return f"{self.base_url}/{kind}?{urlencode(query)}" if query else f"{self.base_url}/{kind}"

        links = [{"relation": "self", "url": url(0)}]
        if count is not None and 0 < count < total:
            links.append({"relation": "next", "url": url(count)})
        return links

    # --- prefetch -------------------------------------------------------------------------------------

    def prefetch(self, queries: Mapping[str, str]) -> dict[str, Resource | None]:
        """Evaluate already-rendered prefetch queries: key -> resource, searchset Bundle or None.

        Searches are answered whole, as an EHR that follows the paging sends them: the service refuses
        a first page with a next link as incomplete, and this server cannot answer the link itself."""
        return {key: self.query(_whole_search(url)) for key, url in queries.items()}


def _whole_search(relative_url: str) -> str:
    """The query without ``_count``, so that a search returns every match on one page."""
    path, mark, query = relative_url.partition("?")
    if not mark:
        return relative_url
    kept = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True) if name != "_count"]
    return f"{path}?{urlencode(kept)}" if kept else path


def _first_instant(values: list[str]) -> datetime | None:
    moments = [m for m in (parse_fhir_instant(v) for v in values) if m is not None]
    return min(moments) if moments else None


def _token_matches(pairs: list[tuple[str | None, str]], criterion: str) -> bool:
    """FHIR token semantics: ``system|code``, ``|code`` (no system), ``system|`` (any code), ``code``."""
    if "|" not in criterion:
        return any(code == criterion for _, code in pairs)
    system, _, code = criterion.partition("|")
    for pair_system, pair_code in pairs:
        if pair_system is None:
            # A plain code element (status) has no system; a server matches it on the code alone.
            if pair_code == code:
                return True
        elif pair_system == system and (not code or pair_code == code):
            return True
    return False


def _reference_matches(refs: list[str], criterion: str, default_type: str | None) -> bool:
    wanted = criterion if "/" in criterion or default_type is None else f"{default_type}/{criterion}"
    return any(ref == wanted or ref.endswith(f"/{wanted}") for ref in refs)
