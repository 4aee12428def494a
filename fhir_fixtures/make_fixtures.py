"""Writes the scenario Bundles, draft orders and expectations.json of this folder.

Run ``python fhir_fixtures/make_fixtures.py`` after changing a scenario; the JSON files are committed so
that anyone can read and replay them without running this. Every date is a real date written as an
offset from the reference day 2026-01-15 (see README.md).
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REFERENCE_DAY = date(2026, 1, 15)
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"

LABS = {
    "b12": ("2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma", "pg/mL"),
    "b12-molar": ("14685-2", "Cobalamin (Vitamin B12) [Moles/volume] in Serum or Plasma", "pmol/L"),
    "ferritin": ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL"),
    "tsat": ("2502-3", "Iron saturation [Mass Fraction] in Serum or Plasma", "%"),
    "crp": ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L"),
    "mcv": ("787-2", "MCV [Entitic volume] by Automated count", "fL"),
    "mma": ("13964-2", "Methylmalonate [Moles/volume] in Serum or Plasma", "nmol/L"),
}
CYANOCOBALAMIN = {
    "coding": [
        {"system": RXNORM, "code": "309594", "display": "cyanocobalamin 1000 MCG/ML Injectable Solution"}
    ],
    "text": "cyanocobalamin 1000 mcg/mL injection",
}


def day(offset: int) -> str:
    return (REFERENCE_DAY + timedelta(days=offset)).isoformat()


class Scenario:
    def __init__(self, name: str, gender: str = "female") -> None:
        self.pid = f"fx-{name}"
        self.resources: list[dict[str, Any]] = [
            {
                "resourceType": "Patient",
                "id": self.pid,
                "gender": gender,
                "birthDate": "1961-03-08",
                "name": [{"family": name.replace("-", " ").title(), "given": ["Fixture"]}],
            }
        ]
        self.count = 0

    def _id(self, kind: str) -> str:
        self.count += 1
        return f"{self.pid}-{kind}-{self.count}"

    def lab(
        self, analyte: str, value: float | str, offset: int, *, status: str = "final", **extra: Any
    ) -> None:
        code, display, unit = LABS[analyte]
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "status": status,
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
            "subject": {"reference": f"Patient/{self.pid}"},
            "effectiveDateTime": day(offset) + "T08:30:00Z",
        }
        if isinstance(value, str):
            obs["valueString"] = value
        else:
            obs["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        obs.update(extra)
        self.resources.append(obs)

    def medication_request(self, concept: dict[str, Any], offset: int, status: str = "active") -> None:
        self.resources.append(
            {
                "resourceType": "MedicationRequest",
                "id": self._id("mr"),
                "status": status,
                "intent": "order",
                "medicationCodeableConcept": concept,
                "subject": {"reference": f"Patient/{self.pid}"},
                "authoredOn": day(offset),
            }
        )

    def medication_statement(self, text: str, offset: int) -> None:
        self.resources.append(
            {
                "resourceType": "MedicationStatement",
                "id": self._id("ms"),
                "status": "active",
                "medicationCodeableConcept": {"text": text},
                "subject": {"reference": f"Patient/{self.pid}"},
                "effectivePeriod": {"start": day(offset)},
                "dateAsserted": day(offset),
            }
        )

    def condition(self, code: str, display: str, offset: int) -> None:
        self.resources.append(
            {
                "resourceType": "Condition",
                "id": self._id("cond"),
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                            "code": "confirmed",
                        }
                    ]
                },
                "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
                "subject": {"reference": f"Patient/{self.pid}"},
                "onsetDateTime": day(offset),
            }
        )

    def bundle(self) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": day(0) + "T09:00:00Z",
            "entry": [
                {"fullUrl": f"https://fixtures.invalid/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                for r in self.resources
            ],
        }


def b12_draft(order_id: str = "draft-b12", concept: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept or CYANOCOBALAMIN,
        "subject": {"reference": "Patient/placeholder"},
        "authoredOn": day(0),
    }


def lab_draft(order_id: str, analyte: str) -> dict[str, Any]:
    code, display, _ = LABS[analyte]
    return {
        "resourceType": "ServiceRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": "Patient/placeholder"},
        "authoredOn": day(0),
    }


def collection(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


ALL_TOPICS = (
    "iron-studies-after-b12",
    "iron-deficiency-after-b12",
    "elevated-b12-supplement-review",
    "elevated-b12-no-supplement",
    "iron-deficiency-with-high-b12",
    "combined-b12-iron-deficiency",
    "b12-not-for-high-ferritin",
    "ferritin-inflammation-check-tsat",
    "borderline-b12-check-mma",
)


def scenarios() -> list[tuple[str, Scenario, dict[str, Any]]]:
    out: list[tuple[str, Scenario, dict[str, Any]]] = []

    def add(
        name: str,
        s: Scenario,
        topics: list[str],
        why: str,
        hook: str = "patient-view",
        order: str | None = None,
    ) -> None:
        item: dict[str, Any] = {
            "hook": hook,
            "topics": topics,
            "forbid": [t for t in ALL_TOPICS if t not in topics],
            "why": why,
        }
        if order:
            item["order"] = order
        out.append((name, s, item))

    s = Scenario("b12-started-8-weeks-ago")
    s.lab("b12", 150, -62)
    s.lab("mcv", 108, -62)
    s.lab("ferritin", 180, -62)
    s.medication_request(CYANOCOBALAMIN, -56)
    add(
        "iron-studies-after-b12.json",
        s,
        ["iron-studies-after-b12"],
        "B12 course started 56 days ago for a deficient B12 with macrocytosis; ferritin 180 before it; "
        "no iron studies since: warning (ferritin likely to fall).",
    )

    s = Scenario("b12-maintenance-for-decades")
    s.medication_request(
        {
            "coding": [
                {"system": RXNORM, "code": "2001499", "display": "Vitamin B 12 5 MG/ML Injectable Solution"}
            ]
        },
        -9000,
    )
    add(
        "near-miss-decades-old-b12-course.json",
        s,
        [],
        "An active B12 order started 25 years ago is maintenance, not a start: no iron-studies card.",
    )

    s = Scenario("b12-started-iron-studies-done")
    s.medication_request(CYANOCOBALAMIN, -60)
    s.lab("ferritin", 140, -10)
    s.lab("tsat", 31, -10)
    add(
        "near-miss-iron-studies-already-resulted.json",
        s,
        [],
        "B12 started 60 days ago, ferritin and TSAT resulted 10 days ago (normal): nothing to add.",
    )

    s = Scenario("b12-order-megaloblastic")
    s.lab("b12", 170, -20)
    s.lab("mcv", 111, -20)
    s.lab("ferritin", 260, -20)
    add(
        "order-b12-megaloblastic.json",
        s,
        ["iron-studies-after-b12"],
        "A B12 order for a deficient B12 with macrocytosis and ferritin 260: iron studies 8 weeks after the "
        "start (warning); no baseline now, since that ferritin is 20 days old.",
        hook="order-select",
        order="orders/b12-draft.json",
    )
    add(
        "order-sign-b12-with-iron-studies.json",
        s,
        [],
        "The same patient at order-sign with ferritin and TSAT already in the draft orders (an accepted "
        "suggestion): no card again.",
        hook="order-sign",
        order="orders/b12-with-iron-studies.json",
    )
    add(
        "order-sign-b12-with-ferritin-only.json",
        s,
        ["iron-studies-after-b12"],
        "A ferritin alone drafted beside the B12 order does not count as iron studies: the card still fires "
        "and suggests only the transferrin saturation.",
        hook="order-sign",
        order="orders/b12-with-ferritin-only.json",
    )

    s = Scenario("iron-deficiency-unmasked")
    s.lab("b12", 160, -125)
    s.lab("ferritin", 165, -125)
    s.medication_request(CYANOCOBALAMIN, -120)
    s.lab("ferritin", 18, -10)
    s.lab("tsat", 12, -10)
    s.lab("b12", 640, -10)
    add(
        "iron-deficiency-after-b12.json",
        s,
        ["iron-deficiency-after-b12"],
        "Ferritin 165 before B12, 18 with TSAT 12 % 110 days after starting it: unmasked iron deficiency.",
    )

    s = Scenario("after-b12-iron-fine")
    s.lab("b12", 160, -125)
    s.lab("ferritin", 165, -125)
    s.medication_request(CYANOCOBALAMIN, -120)
    s.lab("ferritin", 85, -10)
    s.lab("tsat", 28, -10)
    add(
        "near-miss-after-b12-iron-replete.json",
        s,
        [],
        "After B12, ferritin 85 with TSAT 28 % and no inflammation: not iron deficient.",
    )

    s = Scenario("high-b12-on-multivitamin")
    s.lab("b12", 1250, -10)
    s.lab("ferritin", 90, -10)
    s.medication_statement("Multivitamin with minerals tablet", -400)
    add(
        "elevated-b12-supplement-review.json",
        s,
        ["elevated-b12-supplement-review"],
        "B12 1250 pg/mL while taking a multivitamin: review it (stop, re-measure B12 in 3 months).",
    )

    s = Scenario("high-b12-pernicious-anaemia")
    s.lab("b12", 1400, -10)
    s.lab("ferritin", 90, -10)
    s.condition("84027009", "Pernicious anemia", -3000)
    s.medication_request(CYANOCOBALAMIN, -2900)
    add(
        "near-miss-high-b12-pernicious-anaemia.json",
        s,
        [],
        "High B12 on injections for pernicious anaemia is expected: no supplement review, no work-up.",
    )

    s = Scenario("iron-deficient-on-b12-for-pernicious-anaemia")
    s.lab("b12", 1500, -10)
    s.lab("ferritin", 12, -10)
    s.condition("84027009", "Pernicious anemia", -3000)
    s.medication_request(CYANOCOBALAMIN, -2900)
    add(
        "iron-deficiency-on-b12-for-pernicious-anaemia.json",
        s,
        ["iron-deficiency-with-high-b12"],
        "Ferritin 12 beside a B12 of 1500 on injections for pernicious anaemia: the card says keep B12 "
        "(the high level is expected) and proposes nothing to stop; it asks for the cause of the iron "
        "deficiency.",
    )

    s = Scenario("high-b12-orders-more-b12")
    s.lab("b12", 1100, -40)
    add(
        "order-b12-when-b12-high.json",
        s,
        ["elevated-b12-supplement-review"],
        "An oral B12 order (text only, no code) for a patient whose B12 is already 1100: suggest removing "
        "the draft; no iron-studies card.",
        hook="order-select",
        order="orders/oral-b12-text-draft.json",
    )

    s = Scenario("very-high-b12-no-supplement", gender="male")
    s.lab("b12", 1600, -14)
    s.lab("ferritin", 450, -14)
    add(
        "elevated-b12-no-supplement.json",
        s,
        ["elevated-b12-no-supplement"],
        "B12 1600 pg/mL (> 1355) and ferritin 450 in a man, no supplements: liver enzymes and CRP (warning).",
    )

    s = Scenario("high-b12-cirrhosis", gender="male")
    s.lab("b12", 1600, -14)
    s.lab("ferritin", 450, -14)
    s.condition("19943007", "Cirrhosis of liver", -800)
    add(
        "near-miss-high-b12-cirrhosis.json",
        s,
        [],
        "The same values with cirrhosis on the problem list: already explained.",
    )

    s = Scenario("stale-high-b12", gender="male")
    s.lab("b12", 1600, -400)
    add("near-miss-stale-high-b12.json", s, [], "B12 1600 pg/mL but 400 days old: stale, no card.")

    s = Scenario("iron-deficient-high-b12")
    s.lab("b12", 1150, -12)
    s.lab("ferritin", 14, -12)
    s.medication_statement("Vitamin B-Complex capsule", -300)
    add(
        "iron-deficiency-with-high-b12.json",
        s,
        ["iron-deficiency-with-high-b12"],
        "Ferritin 14 with B12 1150 on a B-complex: one card replaces both elevated-B12 cards.",
    )

    s = Scenario("combined-deficiency")
    s.lab("b12", 140, -7)
    s.lab("ferritin", 12, -7)
    s.lab("mcv", 92, -7)
    add(
        "combined-b12-iron-deficiency.json",
        s,
        ["combined-b12-iron-deficiency"],
        "B12 140 and ferritin 12 the same day: gastric antibodies, gastrin and tTG IgA.",
    )

    s = Scenario("deficiencies-months-apart")
    s.lab("b12", 140, -100)
    s.lab("ferritin", 12, -7)
    add(
        "near-miss-deficiencies-months-apart.json",
        s,
        [],
        "B12 140 three months before a ferritin of 12: not the same time, no combined card.",
    )

    s = Scenario("b12-for-high-ferritin", gender="male")
    s.lab("b12", 480, -20)
    s.lab("ferritin", 650, -20)
    s.lab("tsat", 52, -20)
    add(
        "order-b12-for-high-ferritin.json",
        s,
        ["b12-not-for-high-ferritin"],
        "B12 ordered with a normal B12 (480), ferritin 650, TSAT 52 %: B12 will not help; find the cause.",
        hook="order-select",
        order="orders/b12-draft.json",
    )

    s = Scenario("b12-low-ferritin-high", gender="male")
    s.lab("b12", 150, -20)
    s.lab("ferritin", 650, -20)
    add(
        "near-miss-b12-deficient-high-ferritin.json",
        s,
        ["iron-studies-after-b12"],
        "B12 ordered for a deficient B12 (150) with ferritin 650: B12 is indicated, so no "
        "b12-not-for-high-ferritin; iron studies are suggested instead.",
        hook="order-select",
        order="orders/b12-draft.json",
    )

    s = Scenario("ferritin-inflamed")
    s.lab("ferritin", 65, -5)
    s.lab("crp", 22, -5)
    add(
        "ferritin-inflammation-check-tsat.json",
        s,
        ["ferritin-inflammation-check-tsat"],
        "Ferritin 65 with CRP 22 and no TSAT: order transferrin saturation.",
    )

    s = Scenario("ferritin-inflamed-tsat-known")
    s.lab("ferritin", 65, -5)
    s.lab("crp", 22, -5)
    s.lab("tsat", 25, -4)
    add(
        "near-miss-ferritin-inflammation-tsat-known.json",
        s,
        [],
        "The same with a TSAT of 25 % the next day: nothing to add.",
    )

    s = Scenario("borderline-b12")
    s.lab("b12-molar", 170, -30)
    add(
        "borderline-b12-check-mma.json",
        s,
        ["borderline-b12-check-mma"],
        "B12 170 pmol/L (230 pg/mL after conversion): borderline, no MMA: order methylmalonic acid.",
    )

    s = Scenario("borderline-b12-mma-done")
    s.lab("b12", 245, -30)
    s.lab("mma", 210, -20)
    add(
        "near-miss-borderline-b12-mma-done.json",
        s,
        [],
        "Borderline B12 with a methylmalonic acid resulted after it: settled.",
    )

    s = Scenario("preliminary-and-odd-units", gender="male")
    s.lab("b12", 1500, -3, status="preliminary")
    s.lab("b12", ">2000", -2, status="entered-in-error")
    s.lab("ferritin", 12, -3, valueQuantity={"value": 12, "unit": "mmol/L"})
    add(
        "near-miss-unusable-results.json",
        s,
        [],
        "A preliminary high B12, an entered-in-error one, a ferritin in an unconvertible unit: none used.",
    )

    s = Scenario("b12-comparator-string")
    s.lab("b12", ">2000 pg/mL", -6)
    s.lab("ferritin", 95, -6)
    add(
        "elevated-b12-comparator-string.json",
        s,
        ["elevated-b12-no-supplement"],
        'B12 reported as the string ">2000 pg/mL" keeps its comparator: very high (warning).',
    )
    return out


def write() -> None:
    expectations: dict[str, Any] = {
        "referenceDay": REFERENCE_DAY.isoformat(),
        "now": day(0) + "T09:00:00Z",
        "fixtures": {},
    }
    for name, scenario, item in scenarios():
        (HERE / name).write_text(json.dumps(scenario.bundle(), indent=1) + "\n", encoding="utf-8")
        expectations["fixtures"][name] = item
    orders = HERE / "orders"
    orders.mkdir(exist_ok=True)
    drafts = {
        "b12-draft.json": b12_draft(),
        "b12-with-iron-studies.json": collection(
            b12_draft(), lab_draft("draft-ferritin", "ferritin"), lab_draft("draft-tsat", "tsat")
        ),
        "b12-with-ferritin-only.json": collection(b12_draft(), lab_draft("draft-ferritin", "ferritin")),
        "oral-b12-text-draft.json": b12_draft("draft-oral-b12", {"text": "Vitamin B12 1000 mcg oral tablet"}),
    }
    for name, resource in drafts.items():
        (orders / name).write_text(json.dumps(resource, indent=1) + "\n", encoding="utf-8")
    (HERE / "expectations.json").write_text(json.dumps(expectations, indent=1) + "\n", encoding="utf-8")
    write_readme(expectations["fixtures"])


README_HEAD = """# Scenario fixtures

FHIR R4 `collection` Bundles, one patient each: a positive scenario for every card topic of the catalogue
and near misses that must stay silent. They are written by `make_fixtures.py` (run it after changing a
scenario; the JSON files are committed so they can be read and replayed without it).

## Dates: a reference day

Every date is a real date placed relative to the **reference day 2026-01-15** (`referenceDay` in
`expectations.json`); the clinical clock of every expectation is `2026-01-15T09:00:00Z` (`now`).

- Replay as written: `cds-service replay fhir_fixtures/iron-studies-after-b12.json --now 2026-01-15T09:00:00Z`
  (or `CDS_NOW=2026-01-15T09:00:00Z`).
- Replay on another day: shift every date by `now - reference day` with
  `cds_service.clinical.fixtures.shift_to(bundle, date(2026, 1, 15), now)` (or `shift_dates(bundle, delta)`);
  results keep their age, so the cards stay the same. Replayed unshifted with a later clock, results go
  stale (older than 365 days) and cards disappear — on purpose.

## Expectations

`expectations.json` is machine-readable: `fixtures` maps each Bundle file to `hook` (`patient-view`,
`order-select` or `order-sign`), `order` (for order hooks: a file in `orders/` with the draft order(s);
at order-select the first draft is the selected one, at order-sign all are), `topics` (exactly the card
topics expected) and `forbid` (every other catalogue topic), plus `why`. The drafts in `orders/` point at a
placeholder patient; point `subject` at the fixture's patient before use (`cds-service replay` does).

| fixture | hook | order | expected topics | why |
|---|---|---|---|---|
"""


def write_readme(fixtures: dict[str, Any]) -> None:
    rows = []
    for name, item in fixtures.items():
        topics = ", ".join(f"`{t}`" for t in item["topics"]) or "none"
        order = f"`{item['order']}`" if item.get("order") else ""
        rows.append(f"| `{name}` | {item['hook']} | {order} | {topics} | {item['why']} |")
    (HERE / "README.md").write_text(README_HEAD + "\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
