"""The "stop this medicine" update copies the EHR's own resource, so it is checked against R4B; that check
is done once per distinct resource, and each card still gets a copy of its own."""

from __future__ import annotations

import logging

import pytest

from cds_service.clinical.rules import common
from tests.clinical.builders import by_topic, med, obs, run

MULTIVITAMIN = {"text": "Multivitamin tablet"}
TOPIC = "elevated-b12-supplement-review"


def stop_update(findings: list) -> dict | None:
    finding = by_topic(findings, TOPIC)
    updates = [a for p in finding.proposals for a in p.actions if a.type == "update"]
    return updates[0].resource if updates else None


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    common._validated_json.cache_clear()


def test_the_same_resource_is_validated_once_and_each_card_gets_its_own_copy() -> None:
    statement = med(MULTIVITAMIN, 200, kind="MedicationStatement")
    first = stop_update(run(obs("b12", 1250, 10), statement))
    second = stop_update(run(obs("b12", 1250, 10), statement))
    info = common._validated_json.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert first == second and first["status"] == "stopped"
    first["status"] = "changed by a caller"
    assert second["status"] == "stopped"
    third = stop_update(run(obs("b12", 1250, 10), statement))
    assert third["status"] == "stopped"


def test_a_changed_resource_is_validated_again() -> None:
    statement = med(MULTIVITAMIN, 200, kind="MedicationStatement")
    stop_update(run(obs("b12", 1250, 10), statement))
    changed = dict(statement, note=[{"text": "taken with breakfast"}])
    update = stop_update(run(obs("b12", 1250, 10), changed))
    assert common._validated_json.cache_info().misses == 2
    assert update["note"] == [{"text": "taken with breakfast"}]


def test_an_invalid_resource_gets_no_update_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    broken = med(MULTIVITAMIN, 200, kind="MedicationStatement", dosage="twice a day")
    with caplog.at_level(logging.WARNING, logger="cds_service.clinical.rules.common"):
        findings = run(obs("b12", 1250, 10), broken)
    assert stop_update(findings) is None
    assert any("not valid R4B" in r.getMessage() for r in caplog.records)
    # The B12 re-check is still proposed without the update.
    finding = by_topic(findings, TOPIC)
    assert [a.type for p in finding.proposals for a in p.actions] == ["create"]


def test_a_resource_that_cannot_be_json_gets_no_update(caplog: pytest.LogCaptureFixture) -> None:
    odd = med(MULTIVITAMIN, 200, kind="MedicationStatement", note=[{"text": "x", "count": 2**70}])
    with caplog.at_level(logging.WARNING, logger="cds_service.clinical.rules.common"):
        findings = run(obs("b12", 1250, 10), odd)
    assert stop_update(findings) is None
    assert any("cannot propose stopping" in r.getMessage() for r in caplog.records)
