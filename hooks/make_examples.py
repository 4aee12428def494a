"""Writes the example hook requests of this folder.

Run ``python hooks/make_examples.py`` after changing a scenario or the service's prefetch templates; the
JSON files are committed so that anyone can read, curl and replay them without running this. Each
example is a small invented record; its ``prefetch`` is what the service's own templates return over that
record (evaluated by the offline FHIR evaluator of ``cds-service replay``), so the examples cannot drift
from the templates unnoticed: ``tests/devtools`` checks every key. Dates are written for a clinical "now"
of 2026-01-15T09:00:00Z.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds_service.clinical.engine import load_clinical_config
from cds_service.devtools.bundles import DraftOrders
from cds_service.devtools.hookrequest import hook_context
from cds_service.devtools.offline import OfflineFhirServer
from cds_service.protocol.prefetch import render_template
from cds_service.services import prefetch_templates

HERE = Path(__file__).resolve().parent
EHR_FHIR_BASE = "https://ehr.example.org/fhir"
CLINICIAN = "Practitioner/example-clinician"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

LABS = {
    "b12": ("2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma", "pg/mL"),
    "ferritin": ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL"),
    "tsat": ("2502-3", "Iron saturation [Mass Fraction] in Serum or Plasma", "%"),
    "mcv": ("787-2", "MCV [Entitic volume] by Automated count", "fL"),
    "hb": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL"),
    "crp": ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L"),
}
CYANOCOBALAMIN = {
    "coding": [
        {"system": RXNORM, "code": "309594", "display": "cyanocobalamin 1000 MCG/ML Injectable Solution"}
    ],
    "text": "cyanocobalamin 1000 MCG/ML Injectable Solution",
}
B12_DOSAGE = [{"text": "1 mL (1000 micrograms) intramuscularly weekly for 4 weeks, then monthly"}]


@dataclass(frozen=True)
class Example:
    file: str
    hook: str
    record: list[dict[str, Any]]
    draft: dict[str, Any] | None = None


def patient(pid: str, given: str, family: str, gender: str, born: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": born,
    }


def lab(pid: str, key: str, value: float, when: str, n: int = 1) -> dict[str, Any]:
    code, display, unit = LABS[key]
    return {
        "resourceType": "Observation",
        "id": f"{pid}-{key}-{n}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{when}T08:15:00Z",
        "issued": f"{when}T14:40:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def b12_order(pid: str, authored_on: str, *, draft: bool = False) -> dict[str, Any]:
    """A cyanocobalamin course on the record, or (``draft``) the one the clinician is ordering now."""
    return {
        "resourceType": "MedicationRequest",
        "id": "draft-cyanocobalamin" if draft else f"{pid}-cyanocobalamin",
        "status": "draft" if draft else "active",
        "intent": "order",
        "medicationCodeableConcept": CYANOCOBALAMIN,
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": authored_on,
        "dosageInstruction": B12_DOSAGE,
    }


def supplement(pid: str, text: str, started: str) -> dict[str, Any]:
    """A patient-reported product, as free text: no code is invented for it."""
    return {
        "resourceType": "MedicationStatement",
        "id": f"{pid}-supplement",
        "status": "active",
        "medicationCodeableConcept": {"text": text},
        "subject": {"reference": f"Patient/{pid}"},
        "effectivePeriod": {"start": started},
        "dateAsserted": "2026-01-06",
        "informationSource": {"reference": f"Patient/{pid}"},
    }


def examples() -> list[Example]:
    p1, p2, p3 = "example-b12-started", "example-b12-order", "example-b12-high-ferritin"
    p4, p5, p6 = (
        "example-iron-deficiency-after-b12",
        "example-high-b12-supplement",
        "example-high-b12-no-supplement",
    )
    p7, p8 = "example-combined-deficiency", "example-iron-deficiency-high-b12"
    p9, p10 = "example-ferritin-inflammation", "example-borderline-b12"
    return [
        Example(
            "patient-view.json",
            "patient-view",
            [
                patient(p1, "Maren", "Lindqvist", "female", "1957-03-14"),
                lab(p1, "b12", 138, "2025-11-03"),
                lab(p1, "mcv", 109, "2025-11-03"),
                lab(p1, "hb", 10.2, "2025-11-03"),
                lab(p1, "ferritin", 184, "2025-11-03"),
                lab(p1, "tsat", 41, "2025-11-03"),
                b12_order(p1, "2025-11-10"),
            ],
        ),
        Example(
            "order-select-cyanocobalamin.json",
            "order-select",
            [
                patient(p2, "Tomas", "Okafor", "male", "1949-08-22"),
                lab(p2, "b12", 164, "2026-01-08"),
                lab(p2, "mcv", 104, "2026-01-08"),
                lab(p2, "hb", 11.8, "2026-01-08"),
            ],
            b12_order(p2, "2026-01-15", draft=True),
        ),
        Example(
            "order-sign.json",
            "order-sign",
            [
                patient(p3, "Ilse", "Brandauer", "female", "1962-05-30"),
                lab(p3, "b12", 436, "2026-01-06"),
                lab(p3, "ferritin", 712, "2026-01-06"),
                lab(p3, "mcv", 93, "2026-01-06"),
                lab(p3, "hb", 12.6, "2026-01-06"),
            ],
            b12_order(p3, "2026-01-15", draft=True),
        ),
        Example(
            "patient-view-iron-deficiency-after-b12.json",
            "patient-view",
            [
                patient(p4, "Rosalind", "Achterberg", "female", "1968-11-02"),
                lab(p4, "b12", 129, "2025-08-14"),
                lab(p4, "mcv", 112, "2025-08-14"),
                lab(p4, "hb", 9.8, "2025-08-14"),
                lab(p4, "ferritin", 192, "2025-08-14"),
                b12_order(p4, "2025-08-20"),
                lab(p4, "ferritin", 21, "2025-12-16", 2),
                lab(p4, "tsat", 11, "2025-12-16", 2),
                lab(p4, "mcv", 88, "2025-12-16", 2),
                lab(p4, "hb", 11.4, "2025-12-16", 2),
            ],
        ),
        Example(
            "patient-view-elevated-b12-supplement.json",
            "patient-view",
            [
                patient(p5, "Henrik", "Salonen", "male", "1971-02-09"),
                lab(p5, "b12", 1480, "2026-01-06"),
                lab(p5, "ferritin", 96, "2026-01-06"),
                supplement(p5, "Vitamin B12 1000 mcg oral tablet, one daily", "2024-06-01"),
            ],
        ),
        Example(
            "patient-view-elevated-b12-no-supplement.json",
            "patient-view",
            [
                patient(p6, "Dariusz", "Wolski", "male", "1955-07-19"),
                lab(p6, "b12", 1620, "2026-01-07"),
                lab(p6, "ferritin", 548, "2026-01-07"),
            ],
        ),
        Example(
            "patient-view-combined-deficiency.json",
            "patient-view",
            [
                patient(p7, "Aoife", "Gallagher", "female", "1984-04-27"),
                lab(p7, "b12", 151, "2026-01-05"),
                lab(p7, "ferritin", 11, "2026-01-05"),
                lab(p7, "tsat", 9, "2026-01-05"),
                lab(p7, "hb", 10.4, "2026-01-05"),
                lab(p7, "mcv", 95, "2026-01-05"),
            ],
        ),
        Example(
            "patient-view-iron-deficiency-high-b12.json",
            "patient-view",
            [
                patient(p8, "Priya", "Raman", "female", "1979-09-12"),
                lab(p8, "b12", 1260, "2026-01-07"),
                lab(p8, "ferritin", 9, "2026-01-07"),
                lab(p8, "tsat", 8, "2026-01-07"),
                lab(p8, "hb", 10.9, "2026-01-07"),
                supplement(p8, "Multivitamin with minerals tablet, one daily", "2023-03-01"),
            ],
        ),
        Example(
            "patient-view-ferritin-inflammation.json",
            "patient-view",
            [
                patient(p9, "Walter", "Eichhorn", "male", "1951-12-03"),
                lab(p9, "ferritin", 64, "2026-01-09"),
                lab(p9, "crp", 28, "2026-01-09"),
                lab(p9, "hb", 12.1, "2026-01-09"),
            ],
        ),
        Example(
            "patient-view-borderline-b12.json",
            "patient-view",
            [
                patient(p10, "Noor", "Haddad", "female", "1990-06-21"),
                lab(p10, "b12", 246, "2026-01-02"),
                lab(p10, "mcv", 97, "2026-01-02"),
            ],
        ),
    ]


def hook_request_for(example: Example, templates: dict[str, str]) -> dict[str, Any]:
    """The request an EHR would send, with ids derived from the file name so reruns are stable."""
    pid = example.record[0]["id"]
    drafts = None
    if example.draft is not None:
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": example.draft}]}
        drafts = DraftOrders(bundle=bundle, selections=(f"MedicationRequest/{example.draft['id']}",))
    context = hook_context(example.hook, pid, drafts, user_id=CLINICIAN)
    context["encounterId"] = f"{pid}-visit"
    server = OfflineFhirServer(example.record, base_url=EHR_FHIR_BASE)
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        result = server.query(render_template(template, context))
        if isinstance(result, dict) and result.get("resourceType") == "Bundle":
            result.pop("meta", None)
            result["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{example.file}/{key}"))
        prefetch[key] = result
    return {
        "hook": example.hook,
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hooks/{example.file}")),
        "context": context,
        "prefetch": prefetch,
    }


def main() -> None:
    templates = prefetch_templates(load_clinical_config({}))
    for example in examples():
        request = hook_request_for(example, templates)
        (HERE / example.file).write_text(
            json.dumps(request, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(example.file)


if __name__ == "__main__":
    main()
