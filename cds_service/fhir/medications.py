"""Medication resources that medication records point at but that nobody sent.

EHRs that keep their products as Medication resources write ``medicationReference`` on every order,
statement and administration. The prefetch asks for the Medications with ``_include`` on
MedicationRequest only, and an EHR may fill a prefetch key without them, so a record can arrive naming
its product by nothing but a reference. The record reads that as "a medicine we cannot identify", which
is safe but blind: a B12 injection goes unseen. These helpers find the references worth following and
the searches that fetch their targets in one round trip.

Only references to the request's own FHIR server are followed (relative, or absolute under its base
URL): the EHR's access token must never be sent anywhere else, and a reference to another server may
not be readable with it anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

# The medication records the service reads whose ``medicationReference`` names the product (R4).
RECORD_TYPES = frozenset({"MedicationRequest", "MedicationStatement", "MedicationAdministration"})
# R4's id type; anything else in a reference could smuggle search parameters into the query.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Ids per search: about 3.5 KB of URL at the longest ids, well inside what servers and proxies accept.
IDS_PER_QUERY = 50
# A patient with more unknown products than this is unusual; the rest stay unidentified, and say so.
MAX_IDS = 200


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
    if not isinstance(reference, dict):
        return None
    target = reference.get("reference")
    if not isinstance(target, str):
        return None
    target = target.split("/_history/", 1)[0]
    base = fhir_server.rstrip("/") + "/"
    if target.startswith(base):
        target = target[len(base) :]
    kind, _, ident = target.partition("/")
    if kind != "Medication" or not _FHIR_ID.fullmatch(ident):
        return None
    return ident


def medication_queries(ids: Sequence[str]) -> dict[str, str]:
    """Searches by ``_id`` for the first ``MAX_IDS`` of ``ids``, keyed ``medications-1``, ``-2``, …;
    each asks for as many results as it names ids, so no answer needs a second page."""
    ids = list(ids)[:MAX_IDS]
    chunks = [ids[start : start + IDS_PER_QUERY] for start in range(0, len(ids), IDS_PER_QUERY)]
    return {
        f"medications-{n}": f"Medication?_id={','.join(chunk)}&_count={len(chunk)}"
        for n, chunk in enumerate(chunks, start=1)
    }
