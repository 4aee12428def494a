"""The engine over every scenario fixture (per fhir_fixtures/expectations.json) and the 32 SMART patients."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from cds_service.clinical.engine import TOPICS, evaluate, load_clinical_config
from cds_service.clinical.fixtures import shift_to

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fhir_fixtures"
SMART = REPO / "tests" / "data" / "smart-sandbox-r4"
EXPECTATIONS = json.loads((FIXTURES / "expectations.json").read_text(encoding="utf-8"))
REFERENCE_DAY = date.fromisoformat(EXPECTATIONS["referenceDay"])
NOW = datetime.fromisoformat(EXPECTATIONS["now"].replace("Z", "+00:00"))
CONFIG = load_clinical_config(None)


def resources_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    if data.get("resourceType") == "Bundle":
        return [entry["resource"] for entry in data.get("entry", [])]
    return [data]


def run_fixture(name: str, spec: dict[str, Any], now: datetime) -> list[str]:
    bundle = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    drafts: list[dict[str, Any]] = []
    if spec.get("order"):
        drafts = resources_of(json.loads((FIXTURES / spec["order"]).read_text(encoding="utf-8")))
    if now != NOW:
        bundle, drafts = shift_to(bundle, REFERENCE_DAY, now), shift_to(drafts, REFERENCE_DAY, now)
    resources = resources_of(bundle)
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    for draft in drafts:
        draft["subject"] = {"reference": f"Patient/{patient_id}"}
    hook = spec["hook"]
    focus = None if hook == "patient-view" else (drafts if hook == "order-sign" else drafts[:1])
    findings = evaluate(
        resources, patient_id=patient_id, now=now, draft_orders=drafts, focus_orders=focus, config=CONFIG
    )
    return [f.topic for f in findings]


FIXTURE_ITEMS = sorted(EXPECTATIONS["fixtures"].items())


def test_every_topic_has_a_positive_fixture_and_the_files_are_valid_r4b() -> None:
    covered = {topic for _, spec in FIXTURE_ITEMS for topic in spec["topics"]}
    assert covered == set(TOPICS)
    for name, spec in FIXTURE_ITEMS:
        Bundle.model_validate(json.loads((FIXTURES / name).read_text(encoding="utf-8")))
        assert set(spec["topics"]).isdisjoint(spec["forbid"]), name
        assert set(spec["topics"]) | set(spec["forbid"]) == set(TOPICS), name


@pytest.mark.parametrize(("name", "spec"), FIXTURE_ITEMS, ids=[n for n, _ in FIXTURE_ITEMS])
def test_fixture_gives_exactly_its_expected_topics(name: str, spec: dict[str, Any]) -> None:
    topics = run_fixture(name, spec, NOW)
    assert sorted(topics) == sorted(spec["topics"]), spec["why"]
    assert not set(topics) & set(spec["forbid"])


@pytest.mark.parametrize(("name", "spec"), FIXTURE_ITEMS[::3], ids=[n for n, _ in FIXTURE_ITEMS[::3]])
def test_fixture_shifted_to_another_day_gives_the_same_topics(name: str, spec: dict[str, Any]) -> None:
    later = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)
    assert sorted(run_fixture(name, spec, later)) == sorted(spec["topics"])


def test_unshifted_fixtures_replayed_a_year_later_go_stale() -> None:
    spec = EXPECTATIONS["fixtures"]["elevated-b12-no-supplement.json"]
    bundle = json.loads((FIXTURES / "elevated-b12-no-supplement.json").read_text(encoding="utf-8"))
    resources = resources_of(bundle)
    later = datetime(2027, 3, 1, tzinfo=UTC)
    assert spec["topics"] == ["elevated-b12-no-supplement"]
    assert evaluate(resources, patient_id=resources[0]["id"], now=later, config=CONFIG) == []


# --- the SMART sandbox patients --------------------------------------------------------------------------

# The 13 patients with an active `Vitamin B 12 5 MG/ML Injectable Solution` order (RxNorm 2001499),
# every one started between 1950 and 2017: maintenance therapy, not a start.
ON_B12_MAINTENANCE = {
    "Andy_Schaden",
    "Britany_Reynolds",
    "Catherine_Turner",
    "Jill_Tillman",
    "Loma_Johns",
    "Marcos_Delagarza",
    "Matt_Runte",
    "Oretha_Langworth",
    "Reuben_Lind",
    "Silvana_Cremin",
    "Stanford_Windler",
    "Suzan_Sanford",
    "Twanda_Rippin",
}
SMART_FILES = sorted(SMART.glob("*.json"))
NEW_B12 = {
    "resourceType": "MedicationRequest",
    "id": "draft-b12",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "309594"}]
    },
}


def smart_patient(path: Path) -> tuple[str, list[dict[str, Any]]]:
    resources = resources_of(json.loads(path.read_text(encoding="utf-8")))
    return next(r["id"] for r in resources if r["resourceType"] == "Patient"), resources


def short_name(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


def test_there_are_32_smart_patients_and_13_on_b12() -> None:
    assert len(SMART_FILES) == 32
    assert {short_name(p) for p in SMART_FILES} >= ON_B12_MAINTENANCE


@pytest.mark.parametrize("path", SMART_FILES, ids=short_name)
def test_smart_patient_view_gives_no_card(path: Path) -> None:
    """No B12, ferritin or iron result, and B12 courses started years ago: nothing justifies a card."""
    patient_id, resources = smart_patient(path)
    assert evaluate(resources, patient_id=patient_id, now=NOW, config=CONFIG) == []


@pytest.mark.parametrize("path", SMART_FILES, ids=short_name)
def test_smart_order_select_new_b12(path: Path) -> None:
    """A new B12 order: iron studies for patients not on B12 (no iron studies on file, no megaloblastic
    picture: info); nothing for the 13 on decades-long maintenance, for whom the order is a renewal."""
    patient_id, resources = smart_patient(path)
    draft = {**NEW_B12, "subject": {"reference": f"Patient/{patient_id}"}}
    findings = evaluate(
        resources, patient_id=patient_id, now=NOW, draft_orders=[draft], focus_orders=[draft], config=CONFIG
    )
    if short_name(path) in ON_B12_MAINTENANCE:
        assert findings == []
    else:
        assert [(f.topic, f.indicator) for f in findings] == [("iron-studies-after-b12", "info")]


def test_smart_patient_shortly_after_the_b12_start_gets_the_iron_studies_reminder() -> None:
    """At the time the data describe (60 days after Twanda Rippin's B12 order), the reminder is justified."""
    path = next(p for p in SMART_FILES if short_name(p) == "Twanda_Rippin")
    patient_id, resources = smart_patient(path)
    then = datetime(2017, 4, 14, 9, 0, tzinfo=UTC)
    findings = evaluate(resources, patient_id=patient_id, now=then, config=CONFIG)
    assert [f.topic for f in findings] == ["iron-studies-after-b12"]
    assert "Vitamin B 12 5 MG/ML Injectable Solution" in findings[0].detail
    assert "\u200b" not in findings[0].detail
