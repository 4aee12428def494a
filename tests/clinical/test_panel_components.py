"""Lab panels sent as one Observation whose components carry the analytes (an iron panel, a CBC).

A component whose code is one of ours (or a site's) is a result of that analyte: the panel's time, status
and subject, the component's own value, unit, interpretation and reference range, read by the same rules as
a result sent on its own. A component is never a result of the panel's own code, nor the panel's value one
of a component's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cds_service.clinical.engine import load_clinical_config
from cds_service.clinical.record import build_record
from tests.clinical.builders import (
    CODES,
    CYANO,
    LOINC,
    NOW,
    PID,
    ago,
    by_topic,
    obs,
    patient,
    record,
    run,
    topics,
)

# A site's own panel code (no LOINC is claimed for the panel: none is verified in the knowledge file).
PANEL_CODE = {
    "coding": [{"system": "http://lab.example.org/panels", "code": "IRON-PANEL"}],
    "text": "Iron panel",
}
FAILED = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}


def component(analyte: str, value: Any, unit: str | None = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"code": {"coding": [{"system": LOINC, "code": CODES[analyte]}]}}
    if isinstance(value, str):
        item["valueString"] = value
    elif value is not None:
        item["valueQuantity"] = {"value": value, "unit": unit}
    item.update(extra)
    return item


def panel(
    *components: dict[str, Any], days: float = 5, status: str = "final", **extra: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "panel-1",
        "status": status,
        "code": PANEL_CODE,
        "subject": {"reference": f"Patient/{PID}"},
        "effectiveDateTime": ago(days),
        "component": list(components),
    }
    resource.update(extra)
    return resource


def iron_panel(days: float = 5, **extra: Any) -> dict[str, Any]:
    return panel(
        component("ferritin", 12, "ng/mL"),
        component("tsat", 9, "%"),
        component("iron", 5.4, "umol/L"),
        component("tibc", 80, "umol/L"),
        days=days,
        **extra,
    )


# --- read as results of their own codes --------------------------------------------------------------


def test_each_component_of_our_codes_is_a_result_dated_by_the_panel() -> None:
    rec = record(iron_panel(days=5))
    assert {a: [r.value for r in items] for a, items in rec.results.items()} == {
        "ferritin": [12],
        "tsat": [9],
        "iron": [pytest.approx(5.4 * 5.5845)],
        "tibc": [pytest.approx(80 * 5.5845)],
    }
    ferritin = rec.latest("ferritin")
    assert ferritin is not None and ferritin.day() == ago(5)[:10]
    # A converted component shows what the laboratory reported, as a result sent on its own does.
    assert rec.latest("iron").quoted() == f"30.16 ug/dL (reported as 5.4 umol/L) on {ago(5)[:10]}"
    assert rec.tested_since("tsat", NOW - timedelta(days=6)) is not None


def test_a_card_is_made_and_quoted_from_panel_components() -> None:
    findings = run(obs("b12", 150, 5), iron_panel(days=5))
    finding = by_topic(findings, "combined-b12-iron-deficiency")
    assert f"Ferritin **12 ng/mL on {ago(5)[:10]}**" in finding.detail
    assert f"Transferrin saturation **9 % on {ago(5)[:10]}**" in finding.detail


def test_a_cbc_panel_gives_haemoglobin_and_mcv() -> None:
    cbc = panel(component("hb", 10.1, "g/dL"), component("mcv", 108, "fL"), days=3)
    rec = record(cbc)
    assert (rec.latest("hb").value, rec.latest("mcv").value) == (10.1, 108)


def test_a_site_code_on_a_component_is_read() -> None:
    config = load_clinical_config({"codes": {"ferritin": ["http://lab.example.org/codes|FERR"]}})
    local = {"code": {"coding": [{"system": "http://lab.example.org/codes", "code": "FERR"}]}}
    local["valueQuantity"] = {"value": 15, "unit": "ug/L"}
    rec = build_record([patient(), panel(local)], patient_id=PID, now=NOW, config=config)
    assert rec.latest("ferritin").value == 15


def test_components_of_codes_not_ours_are_ignored() -> None:
    blood_pressure = panel(
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
        }
    )
    rec = record(blood_pressure)
    assert rec.results == {} and rec.tested == {}


# --- the component's own value, flags and range; the panel's time, status and subject -----------------


def test_a_component_is_judged_by_its_own_flag_and_range_not_the_panel_s() -> None:
    flagged = panel(
        component(
            "ferritin",
            40,
            "ng/mL",
            interpretation=[{"coding": [{"code": "L"}]}],
            referenceRange=[{"low": {"value": 50, "unit": "ng/mL"}}],
        ),
        component("b12", 950, "pg/mL", referenceRange=[{"high": {"value": 1000, "unit": "pg/mL"}}]),
        interpretation=[{"coding": [{"code": "H"}]}],
        referenceRange=[{"low": {"value": 1, "unit": "ng/mL"}, "high": {"value": 2, "unit": "ng/mL"}}],
    )
    rec = record(flagged)
    ferritin, b12 = rec.latest("ferritin"), rec.latest("b12")
    assert ferritin.lab_flag() == "L" and ferritin.reference_range() == (50, None)
    assert b12.lab_flag() is None and b12.reference_range() == (None, 1000)
    assert b12.is_high(914) == (False, "the laboratory's upper reference limit of 1000 pg/mL")


def test_the_panel_time_dates_a_component_not_a_time_the_component_claims() -> None:
    stray = component("ferritin", 12, "ng/mL", effectiveDateTime=ago(1))
    rec = record(panel(stray, days=400))
    # The panel was taken 400 days ago: stale, whatever its component says.
    assert rec.latest("ferritin") is None
    assert rec.results["ferritin"][0].day() == ago(400)[:10]


def test_the_panel_status_applies_to_its_components() -> None:
    for status in ("cancelled", "entered-in-error", "unknown"):
        rec = record(iron_panel(status=status))
        assert rec.results == {} and rec.tested == {} and rec.orders == [], status
    preliminary = record(iron_panel(status="preliminary"))
    assert preliminary.results == {}
    # A panel under way counts as ordered for its analytes, as a result under way does.
    assert preliminary.ordered("ferritin") is not None and preliminary.ordered("tsat") is not None
    assert "iron-studies-after-b12" not in topics(
        run(
            iron_panel(status="registered", days=1),
            obs("b12", 150, 60),
            {
                "resourceType": "MedicationRequest",
                "id": "inj",
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{PID}"},
                "medicationCodeableConcept": CYANO,
                "authoredOn": ago(40),
            },
        )
    )


def test_a_panel_of_another_patient_is_not_read_and_one_naming_none_only_counts_as_done() -> None:
    other = record(iron_panel(subject={"reference": "Patient/someone-else"}))
    assert other.results == {} and other.tested == {}
    unnamed = iron_panel()
    del unnamed["subject"]
    rec = record(unnamed)
    assert rec.results == {} and set(rec.tested) == {"ferritin", "tsat", "iron", "tibc"}


def test_a_component_with_a_data_absent_reason_is_not_a_test_done() -> None:
    rec = record(
        panel(
            component("ferritin", None, dataAbsentReason=FAILED),
            component("tsat", 30, "%"),
        )
    )
    assert "ferritin" not in rec.tested and rec.latest("tsat").value == 30
    # And a value beside the component's dataAbsentReason is not read, as on a result of its own.
    rec = record(panel(component("ferritin", 12, "ng/mL", dataAbsentReason=FAILED)))
    assert rec.results == {} and rec.tested == {}


def test_a_panel_level_data_absent_reason_is_about_the_panel_s_own_value() -> None:
    rec = record(iron_panel(dataAbsentReason=FAILED))
    assert rec.latest("ferritin").value == 12


def test_censored_and_unconvertible_components_follow_the_usual_rules() -> None:
    rec = record(panel(component("ferritin", "<5 ng/mL"), component("b12", 400, "mmol/L"), days=2))
    ferritin = rec.latest("ferritin")
    assert (ferritin.comparator, ferritin.value) == ("<", 5)
    # A unit that cannot be converted: no value, but the test was done and supersedes an older B12.
    assert record(obs("b12", 150, 20), panel(component("b12", 400, "mmol/L"), days=2)).latest("b12") is None
    assert record(panel(component("b12", -1, "pg/mL"))).results == {}


# --- never the panel's analyte, nor the panel's value a component's ------------------------------------


def test_a_component_is_not_a_result_of_the_observation_s_own_code() -> None:
    # A ferritin Observation with no value of its own: its iron component is iron, and no ferritin was
    # reported (it neither counts as done nor supersedes the earlier ferritin).
    carrier = obs("ferritin", None, 2, component=[component("iron", 40, "ug/dL")])
    rec = record(obs("ferritin", 20, 30), carrier)
    assert "ferritin" in rec.results and rec.latest("ferritin").value == 20
    assert rec.tested["ferritin"] == [rec.results["ferritin"][0].when]
    assert rec.latest("iron").value == 40


def test_an_observation_with_a_value_and_components_gives_each_its_own() -> None:
    tsat = obs("tsat", 15, 3, component=[component("iron", 40, "ug/dL"), component("tibc", 400, "ug/dL")])
    rec = record(tsat)
    assert [r.value for r in rec.results["tsat"]] == [15]
    assert (rec.latest("iron").value, rec.latest("tibc").value) == (40, 400)
    # Each result reads its own unit: the iron is not the TSAT's %, nor the TSAT an iron in ug/dL.
    assert rec.latest("iron").unit == "ug/dL" and rec.latest("tsat").unit == "%"
