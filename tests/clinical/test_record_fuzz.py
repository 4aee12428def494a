"""Fuzzing the clinical engine with real-shaped resources: any element, at any depth, of any JSON type.

The service reads resources as plain dicts; a wrong type must read as absent (`cds_service.fhir.read`),
never crash the call (the Flask handler would answer 500 and the clinician would get no card at all). The
top-level fuzz in `tests/http/test_fuzz.py` replaces whole fields of one resource; these tests go inside:
dosage timing, dispense requests, contained Medications and their ingredients, references, quantities,
reference ranges.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.clinical.engine import evaluate
from tests.clinical.builders import (
    CONFIG,
    LOINC,
    NOW,
    PID,
    RXNORM,
    ago,
    condition,
    draft_b12,
    draft_lab,
    med,
    obs,
)
from tests.support.json_values import json_values

ROOT = Path(__file__).resolve().parents[2] / "fhir_fixtures"

# Odd values of every JSON type, each put in place of every element in turn.
ODD_VALUES: tuple[Any, ...] = (None, True, 0, -1.5, "", "x", "2026-13-45", [], [1], ["x"], [{}], {}, {"x": 1})


def _medication_with_everything() -> dict[str, Any]:
    """A B12 order that fills every element the engine reads on a medication record."""
    return med(
        None,
        60,
        medicationReference={"reference": "#b12", "display": "Cyanocobalamin injection"},
        contained=[
            {
                "resourceType": "Medication",
                "id": "b12",
                "code": {"coding": [{"system": RXNORM, "code": "309594"}], "text": "cyanocobalamin"},
                "ingredient": [
                    {"itemCodeableConcept": {"text": "cyanocobalamin"}},
                    {"itemReference": {"reference": "Medication/other"}},
                ],
            }
        ],
        dosageInstruction=[{"timing": {"repeat": {"boundsPeriod": {"start": ago(60), "end": ago(-30)}}}}],
        dispenseRequest={"validityPeriod": {"start": ago(60), "end": ago(-300)}},
    )


def _everything() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A patient and drafts that fill every element the engine reads, and make several rules fire."""
    resources = [
        {"resourceType": "Patient", "id": PID, "gender": "female"},
        obs("b12", 150, 90),
        obs(
            "b12",
            1400,
            5,
            interpretation=[{"coding": [{"code": "H"}]}],
            referenceRange=[
                {"low": {"value": 200, "unit": "pg/mL"}, "high": {"value": 900, "unit": "pg/mL"}}
            ],
        ),
        obs("b12", ">2000 pg/mL", 3),
        obs("ferritin", 12, 6, effectivePeriod={"start": ago(6)}, issued=ago(5)),
        obs("ferritin", 250, 95),
        obs("tsat", None, 6, valueQuantity={"value": 0.12, "unit": "1", "comparator": "<"}),
        obs("mcv", 104, 91),
        obs("crp", 8, 6),
        # A panel whose components carry the analytes (read as results of their own codes).
        obs(
            "ferritin",
            None,
            6,
            code={"text": "Iron panel"},
            component=[
                {
                    "code": {"coding": [{"system": LOINC, "code": "2502-3"}]},
                    "valueQuantity": {"value": 15, "unit": "%"},
                    "interpretation": [{"coding": [{"code": "L"}]}],
                    "referenceRange": [{"low": {"value": 20, "unit": "%"}}],
                },
                {"code": {"coding": [{"system": LOINC, "code": "2498-4"}]}, "valueString": "<10 ug/dL"},
            ],
        ),
        _medication_with_everything(),
        {"resourceType": "Medication", "id": "other", "code": {"text": "multivitamin with B12"}},
        med({"text": "multivitamin"}, 30, kind="MedicationStatement", dosage=[{"timing": {"repeat": {}}}]),
        med({"text": "ferrous sulfate"}, 20, kind="MedicationAdministration"),
        condition("84027009", text="Pernicious anaemia"),
        draft_lab("ferritin", status="active", occurrencePeriod={"start": ago(2)}, authoredOn=ago(3)),
    ]
    drafts = [draft_b12(), draft_lab("tsat", occurrenceDateTime=ago(-7))]
    return resources, drafts


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to an element below a resource (the resource itself excluded)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _replace(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = resource
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _evaluate_every_hook(resources: list[dict[str, Any]], drafts: list[dict[str, Any]], pid: str) -> None:
    for focus in (None, drafts[:1], drafts):
        findings = evaluate(
            resources, patient_id=pid, now=NOW, draft_orders=drafts, focus_orders=focus, config=CONFIG
        )
        assert len({f.topic for f in findings}) == len(findings)


def test_the_full_patient_fires_cards_to_fuzz() -> None:
    """The fuzz below is only worth something if the unmutated patient reaches the card builders."""
    resources, drafts = _everything()
    patient_view = evaluate(resources, patient_id=PID, now=NOW, draft_orders=drafts, config=CONFIG)
    order_sign = evaluate(
        resources, patient_id=PID, now=NOW, draft_orders=drafts, focus_orders=drafts, config=CONFIG
    )
    assert patient_view and order_sign


@pytest.mark.parametrize("which", range(len(_everything()[0]) + len(_everything()[1])))
def test_every_element_replaced_by_every_odd_value(which: int) -> None:
    template_resources, template_drafts = _everything()
    template = (template_resources + template_drafts)[which]
    for path in list(_paths(template)):
        for value in ODD_VALUES:
            resources, drafts = copy.deepcopy((template_resources, template_drafts))
            _replace((resources + drafts)[which], path, value)
            try:
                _evaluate_every_hook(resources, drafts, PID)
            except Exception as error:
                pytest.fail(f"{template['resourceType']} {'.'.join(map(str, path))} = {value!r}: {error!r}")


# --- random, deeper changes to the fixture patients ----------------------------------------------------

JSON_VALUES = json_values(max_leaves=12, text_size=20, key_size=10)


def _load(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    return [entry["resource"] for entry in data["entry"]] if data["resourceType"] == "Bundle" else [data]


PATIENTS = {path.stem: _load(path) for path in sorted(ROOT.glob("*.json")) if path.stem != "expectations"}
DRAFTS = [_load(path) for path in sorted((ROOT / "orders").glob("*.json"))]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_element_of_a_fixture_patient_replaced_by_anything(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PATIENTS)), label="fixture")
    resources = copy.deepcopy(PATIENTS[name])
    pid = next(r["id"] for r in resources if r.get("resourceType") == "Patient")
    drafts = copy.deepcopy(data.draw(st.sampled_from([[], *DRAFTS]), label="drafts"))
    targets = resources + drafts
    target = targets[data.draw(st.integers(0, len(targets) - 1), label="resource")]
    path = data.draw(st.sampled_from(list(_paths(target))), label="path")
    _replace(target, path, data.draw(JSON_VALUES, label="value"))
    _evaluate_every_hook(resources, drafts, pid)
