"""A realistic patient-view request for the HTTP benchmark.

A real SMART sandbox patient (Synthea) on long-term B12 injections, with two years of B12, ferritin and
iron-panel results added (B12 climbing above the range on injections while iron stores run down, so one
card fires and every layer, rendering included, does its work), answered as a FHIR server would answer
the service's own prefetch templates: one searchset Bundle per key, references as ``Type/id``, newest
results first.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cds_service.clinical.codes import prefetch_loinc_codes
from cds_service.clinical.config import load_clinical_config
from cds_service.services import prefetch_templates

REPO = Path(__file__).resolve().parent.parent
PATIENT_FILE = REPO / "tests/data/smart-sandbox-r4/Silvana_Cremin_77b69f66-3e4b-4ffd-8157-1e2364f44fc4.json"
# The context labs a FHIR server would return for the service's own ``contextLabs`` query.
CONTEXT_LOINC = frozenset(prefetch_loinc_codes(load_clinical_config(None), "context"))
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
# (LOINC, display, UCUM unit, low, high, value at start, value at end, results per two years)
SERIES = (
    ("2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma", "pg/mL", 232, 1245, 150, 1400, 52),
    ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL", 30, 400, 180, 22, 52),
    ("2502-3", "Iron saturation [Mass Fraction] in Serum or Plasma", "%", 20, 50, 32, 12, 24),
    ("2498-4", "Iron [Mass/volume] in Serum or Plasma", "ug/dL", 60, 170, 95, 40, 24),
    ("2500-7", "Iron binding capacity [Mass/volume] in Serum or Plasma", "ug/dL", 250, 450, 300, 360, 24),
)
_NAMESPACE = uuid.UUID("6f1e0a52-4d0e-4d6c-9a57-1b12f3e5c0de")


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"http://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
        ],
    }


def _relink(value: Any, references: dict[str, str]) -> Any:
    """Replace transaction-style ``urn:uuid:`` references with the ``Type/id`` a server returns."""
    if isinstance(value, dict):
        return {
            key: references.get(item, item) if key == "reference" else _relink(item, references)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_relink(item, references) for item in value]
    return value


def _lab_series(patient_id: str, now: datetime, b12_ferritin_count: int) -> list[dict[str, Any]]:
    results = []
    for code, display, unit, low, high, start, end, count in SERIES:
        if code in ("2132-9", "2276-4"):
            count = b12_ferritin_count
        for index in range(count):
            fraction = index / (count - 1)
            when = now - timedelta(days=730 * (1 - fraction)) - timedelta(hours=8 + index % 7)
            value = round(start + (end - start) * fraction + 0.04 * start * math.sin(index), 1)
            flag = "L" if value < low else "H" if value > high else "N"
            results.append(
                {
                    "resourceType": "Observation",
                    "id": str(uuid.uuid5(_NAMESPACE, f"{code}/{index}")),
                    "meta": {"lastUpdated": when.isoformat()},
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                    "display": "Laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {
                        "coding": [{"system": LOINC, "code": code, "display": display}],
                        "text": display,
                    },
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "effectiveDateTime": when.isoformat(),
                    "issued": (when + timedelta(hours=6)).isoformat(),
                    "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
                    "interpretation": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                    "code": flag,
                                }
                            ]
                        }
                    ],
                    "referenceRange": [
                        {
                            "low": {"value": low, "unit": unit, "system": UCUM, "code": unit},
                            "high": {"value": high, "unit": unit, "system": UCUM, "code": unit},
                        }
                    ],
                }
            )
    results.sort(key=lambda r: r["effectiveDateTime"], reverse=True)
    return results


def build_patient_view_request(
    now: datetime, patient_file: Path = PATIENT_FILE, b12_ferritin_count: int = 52
) -> dict[str, Any]:
    """The hook request: context, and a prefetch with every template key filled.

    ``b12_ferritin_count`` results each of B12 and ferritin over two years (fortnightly by default), plus
    monthly TSAT, iron and TIBC.
    """
    bundle = json.loads(patient_file.read_text())
    resources = [entry["resource"] for entry in bundle["entry"]]
    references = {
        entry["fullUrl"]: f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
        for entry in bundle["entry"]
    }
    resources = _relink(resources, references)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    patient = by_type["Patient"][0]
    context_labs = [
        r
        for r in by_type.get("Observation", [])
        if any(c.get("code") in CONTEXT_LOINC for c in r["code"].get("coding", []))
    ]
    context_labs.sort(key=lambda r: r.get("effectiveDateTime", ""), reverse=True)
    prefetch = {
        "patient": patient,
        "b12IronLabs": _searchset(_lab_series(patient["id"], now, b12_ferritin_count)),
        "contextLabs": _searchset(context_labs),
        "medicationRequests": _searchset(by_type.get("MedicationRequest", [])),
        "medicationStatements": _searchset([]),
        "medicationAdministrations": _searchset([]),
        "conditions": _searchset(by_type.get("Condition", [])),
        "serviceRequests": _searchset([]),
    }
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": patient["id"]},
        # Every key of the service's templates, in their order (a KeyError if the service gains one).
        "prefetch": {key: prefetch[key] for key in prefetch_templates(load_clinical_config(None))},
    }
