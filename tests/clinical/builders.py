"""Small FHIR resource builders for the clinical unit tests; dates are days before the fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cds_service.clinical.engine import evaluate, load_clinical_config
from cds_service.clinical.findings import Finding
from cds_service.clinical.record import PatientRecord, build_record

NOW = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
PID = "p1"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
CODES = {
    "b12": "2132-9",
    "ferritin": "2276-4",
    "tsat": "2502-3",
    "iron": "2498-4",
    "tibc": "2500-7",
    "crp": "1988-5",
    "mcv": "787-2",
    "hb": "718-7",
    "mma": "13964-2",
    "alt": "1742-6",
    "ast": "1920-8",
    "ttg-iga": "31017-7",
    "intrinsic-factor-ab": "31444-3",
}
UNITS = {
    "b12": "pg/mL",
    "ferritin": "ng/mL",
    "tsat": "%",
    "iron": "ug/dL",
    "tibc": "ug/dL",
    "crp": "mg/L",
    "mcv": "fL",
    "hb": "g/dL",
    "mma": "nmol/L",
    "alt": "U/L",
    "ast": "U/L",
}
CONFIG = load_clinical_config(None)
_counter = iter(range(1, 1_000_000))


def ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def patient(gender: str = "female", pid: str = PID) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender}


def obs(
    analyte: str,
    value: Any,
    days: float,
    *,
    unit: str | None = None,
    status: str = "final",
    pid: str = PID,
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"o{next(_counter)}",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": CODES[analyte]}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": ago(days),
    }
    if isinstance(value, str):
        resource["valueString"] = value
    elif value is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit or UNITS[analyte]}
    resource.update(extra)
    return resource


def med(
    concept: dict[str, Any] | None = None,
    days: float = 60,
    *,
    kind: str = "MedicationRequest",
    status: str = "active",
    pid: str = PID,
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": kind,
        "id": f"m{next(_counter)}",
        "status": status,
        "subject": {"reference": f"Patient/{pid}"},
    }
    if concept is not None:
        resource["medicationCodeableConcept"] = concept
    if kind == "MedicationRequest":
        resource["intent"] = "order"
        resource["authoredOn"] = ago(days)
    else:
        resource["effectiveDateTime" if kind == "MedicationAdministration" else "effectivePeriod"] = (
            ago(days) if kind == "MedicationAdministration" else {"start": ago(days)}
        )
    resource.update(extra)
    return resource


CYANO = {"coding": [{"system": RXNORM, "code": "309594"}]}


def draft_b12(concept: dict[str, Any] | None = None, order_id: str = "draft-b12") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{PID}"},
        "medicationCodeableConcept": concept or CYANO,
    }


def draft_lab(analyte: str, order_id: str | None = None, **extra: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "ServiceRequest",
        "id": order_id or f"sr{next(_counter)}",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{PID}"},
        "code": {"coding": [{"system": LOINC, "code": CODES[analyte]}]},
    }
    resource.update(extra)
    return resource


def condition(
    code: str,
    *,
    system: str = SNOMED,
    status: str = "active",
    verification: str = "confirmed",
    text: str | None = None,
) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code}]}
    if text:
        concept["text"] = text
    return {
        "resourceType": "Condition",
        "id": f"c{next(_counter)}",
        "subject": {"reference": f"Patient/{PID}"},
        "clinicalStatus": {"coding": [{"code": status}]},
        "verificationStatus": {"coding": [{"code": verification}]},
        "code": concept,
    }


def record(*resources: dict[str, Any], drafts: tuple[dict[str, Any], ...] = ()) -> PatientRecord:
    return build_record([patient(), *resources], patient_id=PID, now=NOW, config=CONFIG, draft_orders=drafts)


def run(
    *resources: dict[str, Any],
    drafts: tuple[dict[str, Any], ...] = (),
    hook: str = "patient-view",
    gender: str = "female",
    config: Any = CONFIG,
) -> list[Finding]:
    focus = None if hook == "patient-view" else (list(drafts) if hook == "order-sign" else list(drafts[:1]))
    return evaluate(
        [patient(gender), *resources],
        patient_id=PID,
        now=NOW,
        draft_orders=drafts,
        focus_orders=focus,
        config=config,
    )


def topics(findings: list[Finding]) -> list[str]:
    return [f.topic for f in findings]


def by_topic(findings: list[Finding], topic: str) -> Finding:
    matches = [f for f in findings if f.topic == topic]
    assert len(matches) == 1, topics(findings)
    return matches[0]
