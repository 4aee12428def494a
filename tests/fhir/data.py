"""A small made-up patient for the FHIR-access tests.

The codes are placeholders in an example.org system on purpose: this layer knows nothing clinical,
and these tests only need enough resources to page through and something for ``_include`` to pull in.
"""

from __future__ import annotations

PATIENT_ID = "fetch-test-patient"
CODE_SYSTEM = "http://example.org/fhir-access-tests"
OBSERVATION_COUNT = 5
MEDICATION_REQUEST_COUNT = 4


def _entry(resource: dict) -> dict:
    return {
        "fullUrl": f"{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def small_patient_bundle() -> dict:
    """A transaction: one Patient, five Observations, two Medications shared by four MedicationRequests."""
    subject = {"reference": f"Patient/{PATIENT_ID}"}
    resources: list[dict] = [
        {"resourceType": "Patient", "id": PATIENT_ID, "name": [{"family": "Fetch", "given": ["Test"]}]}
    ]
    for n in range(OBSERVATION_COUNT):
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"fetch-obs-{n}",
                "status": "final",
                "code": {"coding": [{"system": CODE_SYSTEM, "code": "measure-a"}]},
                "subject": subject,
                "effectiveDateTime": f"2026-0{n + 1}-15T08:00:00Z",
                "valueQuantity": {"value": 100 + n, "unit": "u"},
            }
        )
    for n in range(2):
        resources.append(
            {
                "resourceType": "Medication",
                "id": f"fetch-med-{n}",
                "code": {"coding": [{"system": CODE_SYSTEM, "code": f"product-{n}"}]},
            }
        )
    for n in range(MEDICATION_REQUEST_COUNT):
        resources.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"fetch-mr-{n}",
                "status": "active",
                "intent": "order",
                "subject": subject,
                "medicationReference": {"reference": f"Medication/fetch-med-{n % 2}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": [_entry(r) for r in resources]}
