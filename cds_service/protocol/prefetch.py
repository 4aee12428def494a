"""Prefetch templates and what arrived for them.

The standard distinguishes a key the client did not satisfy (absent), a query that found nothing (null, or
an empty searchset), and a query the client failed on (an OperationOutcome). Clients in the wild also send
things that are not FHIR at all (an HTML error page has been seen). This module sorts every key into one of
those states so the service fetches exactly what is missing and treats "nothing found" as data.

A search can also arrive paged: a Bundle holding its first page and a ``next`` link. The rules reason
about what is *not* on file (no supplement, no iron studies since B12 was started), so a first page is
not an answer: the key is fetched whole from the FHIR server, or the call is refused with 412.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl

from cds_service.fhir.errors import is_failed_search
from cds_service.fhir.read import next_link, patient_references, refers_to

_TOKEN = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class TemplateError(ValueError):
    """A template uses a token that CDS Hooks 2.0 does not define, or one the context cannot fill."""


class PrefetchState(Enum):
    ABSENT = "absent"
    EMPTY = "empty"
    OUTCOME = "operation-outcome"
    JUNK = "junk"
    PAGED = "first-page-only"
    USABLE = "usable"

    @property
    def is_missing(self) -> bool:
        """Absent, failed, junk and first-page-only keys must be fetched; empty ones are an answer."""
        return self in (PrefetchState.ABSENT, PrefetchState.OUTCOME, PrefetchState.JUNK, PrefetchState.PAGED)


@dataclass(frozen=True)
class PrefetchItem:
    key: str
    state: PrefetchState
    resource: Mapping[str, Any] | None = None
    reason: str | None = None


def render_template(template: str, context: Mapping[str, Any], user_id: str | None = None) -> str:
    """Fill a template the way a CDS Hooks 2.0 client does: context root primitives and user tokens only."""
    user_type, _, user_ref_id = (user_id or context.get("userId") or "").partition("/")

    def substitute(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            name = token.removeprefix("context.")
            value = context.get(name)
            if "." in name or not isinstance(value, str | int | float) or isinstance(value, bool):
                raise TemplateError(f"the token {{{{{token}}}}} needs a primitive context field '{name}'")
            return str(value)
        if token in _USER_TOKENS:
            if user_type != _USER_TOKENS[token] or not user_ref_id:
                raise TemplateError(f"the token {{{{{token}}}}} does not match the user {user_id!r}")
            return user_ref_id
        raise TemplateError(f"the token {{{{{token}}}}} is not a CDS Hooks 2.0 prefetch token")

    return _TOKEN.sub(substitute, template)


def expected_type(template: str) -> tuple[str, bool]:
    """The resource type a template asks for, and whether it is a search (a Bundle comes back)."""
    path = template.split("?", 1)[0].strip("/")
    resource_type = path.split("/", 1)[0]
    is_search = "?" in template or "/" not in path
    return resource_type, is_search


@functools.lru_cache(maxsize=256)
def _template_shape(template: str) -> tuple[str, bool, bool]:
    """``expected_type`` and whether the search asks for resources besides its matches (``_include``,
    ``_revinclude``); a service has a handful of templates, so this is worked out once for each."""
    resource_type, is_search = expected_type(template)
    names = (name for name, _ in parse_qsl(template.partition("?")[2], keep_blank_values=True))
    return resource_type, is_search, any(n.split(":", 1)[0] in ("_include", "_revinclude") for n in names)


# FHIR's IssueType codes are lower-case words joined by hyphens ('not-found', 'too-costly').
_ISSUE_CODE = re.compile(r"[a-z]+(?:-[a-z]+)*")


def _outcome_reason(outcome: Mapping[str, Any]) -> str:
    """Names the outcome's issue codes only. Its free text is the EHR's FHIR server's: diagnostics that
    quoted the EHR's own access token and the patient went into the service's log and back in the 412,
    and the service cannot recognise a token it was never given."""
    issues = outcome.get("issue")
    codes = []
    if isinstance(issues, list):
        for issue in issues[:3]:
            code = issue.get("code") if isinstance(issue, dict) else None
            codes.append(code if isinstance(code, str) and _ISSUE_CODE.fullmatch(code) else "unspecified")
    return f"the client sent an OperationOutcome (issue codes: {', '.join(codes) or 'none'})"


def classify(key: str, template: str, prefetch: Mapping[str, Any], patient_id: str) -> PrefetchItem:
    """Sort one prefetch key into absent / empty / OperationOutcome / junk / paged / usable.

    A search that reports an error, or that holds another patient's resources, is not an answer: read
    as data it would tell the rules that nothing is on file for this patient.
    """
    if key not in prefetch:
        return PrefetchItem(key, PrefetchState.ABSENT, reason="not in the request's prefetch")
    value = prefetch[key]
    if value is None:
        return PrefetchItem(key, PrefetchState.EMPTY)
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return PrefetchItem(key, PrefetchState.JUNK, reason=f"not a FHIR resource ({type(value).__name__})")
    resource_type = value["resourceType"]
    if resource_type == "OperationOutcome":
        return PrefetchItem(key, PrefetchState.OUTCOME, reason=_outcome_reason(value))
    wanted, is_search, others_asked = _template_shape(template)
    if not is_search:
        if resource_type != wanted:
            return PrefetchItem(key, PrefetchState.JUNK, reason=f"expected {wanted}, got {resource_type}")
        if not _belongs_to(value, patient_id, patient_references(patient_id)):
            return PrefetchItem(key, PrefetchState.JUNK, reason=f"the {wanted} is not the patient in context")
        return PrefetchItem(key, PrefetchState.USABLE, resource=value)
    if resource_type != "Bundle":
        return PrefetchItem(key, PrefetchState.JUNK, reason=f"expected a Bundle, got {resource_type}")
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        return PrefetchItem(key, PrefetchState.JUNK, reason="Bundle.entry is not a list of entries")
    own = patient_references(patient_id)
    found = False
    matches = 0
    for entry in entries:
        if not isinstance(entry, dict):
            return PrefetchItem(key, PrefetchState.JUNK, reason="Bundle.entry is not a list of entries")
        resource = entry.get("resource")
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(kind, str):
            # Skipped, such entries made a search of nothing but junk read as "nothing on file".
            return PrefetchItem(key, PrefetchState.JUNK, reason="a Bundle entry is not a FHIR resource")
        if kind == "OperationOutcome":
            if is_failed_search(resource):
                return PrefetchItem(key, PrefetchState.OUTCOME, reason=_outcome_reason(resource))
            continue
        if kind == wanted:
            matches += 1
        elif not others_asked or search_mode(entry) == "match":
            # As the FHIR client holds a server's answer: a Condition among an Observation search's
            # matches, or a Bundle a client forgot to unwrap, would be read as what it claims to be, or
            # skipped while the key counted as answered.
            reason = f"the {wanted} search holds a resource of type {kind} among its results"
            return PrefetchItem(key, PrefetchState.JUNK, reason=reason)
        try:
            # The common case of `_belongs_to` in one subscript: the usual spelling of the patient.
            mine = kind != "Patient" and resource["subject"]["reference"] in own
        except (KeyError, TypeError):
            mine = False
        if not mine and not _belongs_to(resource, patient_id, own):
            reason = f"the search holds a resource of another patient ({kind})"
            return PrefetchItem(key, PrefetchState.JUNK, reason=reason)
        found = True
    if next_link(value) is not None:
        reason = f"only the first page of a paged search was sent: {len(entries)} entries and a next link"
        return PrefetchItem(key, PrefetchState.PAGED, reason=reason)
    state = PrefetchState.USABLE if found else PrefetchState.EMPTY
    total = value.get("total")
    if type(total) is int and total > matches:
        # A client that cut the search at _count and, told to send no next link, dropped it: read as it
        # is (servers' totals are not always exact, as the FHIR client found), but the log says so.
        reason = f"the search counted {total} matches and the client sent {matches}, with no next link"
        return PrefetchItem(key, state, resource=value, reason=reason)
    return PrefetchItem(key, state, resource=value)


def search_mode(entry: Mapping[str, Any]) -> Any:
    """A search entry's ``search.mode`` (match, include, outcome), or None."""
    search = entry.get("search")
    return search.get("mode") if isinstance(search, dict) else None


def _belongs_to(resource: Mapping[str, Any], patient_id: str, own: frozenset[str]) -> bool:
    """False when the resource is, or names as its subject, a patient other than ``patient_id``.

    The common reference (``Patient/<id>``) is a set lookup; only other spellings are parsed. A resource that
    names no patient does not make the search junk: the search is still an answer, and the clinical record
    decides what such a resource may be used for (an Observation naming no patient is not read as a value).
    """
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient_id
    for element in ("subject", "patient"):
        reference = resource.get(element)
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            return reference["reference"] in own or refers_to(reference, "Patient", patient_id)
    return True


def prefetched_resources(items: Iterable[PrefetchItem]) -> list[Mapping[str, Any]]:
    """The resources the prefetch delivered: those of every usable key (an empty search adds none)."""
    resources: list[Mapping[str, Any]] = []
    for item in items:
        if item.state in (PrefetchState.USABLE, PrefetchState.EMPTY):
            resources.extend(resources_of(item.resource))
    return resources


def resources_of(value: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The resources a prefetch value holds: the resource itself, or a Bundle's entries (search outcomes
    and other OperationOutcome entries left out). A list built in one comprehension: a generator cost a
    resumption per resource."""
    if not value:
        return []
    if value.get("resourceType") != "Bundle":
        return [value]
    return [
        resource
        for entry in value.get("entry", ())
        if isinstance(entry, dict)
        and isinstance(resource := entry.get("resource"), dict)
        and isinstance(kind := resource.get("resourceType"), str)
        and kind != "OperationOutcome"
    ]
