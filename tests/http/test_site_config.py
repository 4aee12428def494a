"""A site's own configuration (CDS_SITE_CONFIG) reaches the cards; a bad one stops the service at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import ConfigError, Settings, load_settings
from cds_service.devtools.bundles import load_patient_bundle
from cds_service.devtools.hookrequest import hook_context, hook_request
from cds_service.devtools.offline import OfflineFhirServer
from cds_service.protocol.prefetch import render_template
from tests.builders import REPO, assert_valid_response

FIXTURE = REPO / "fhir_fixtures" / "elevated-b12-no-supplement.json"  # B12 1600 pg/mL: a warning by default


def patient_view_card(client: FlaskClient) -> dict[str, Any]:
    record = load_patient_bundle(FIXTURE)
    context = hook_context("patient-view", record.patient_id, None)
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    queries = {
        k: render_template(t, context) for k, t in services["b12-iron-patient-view"]["prefetch"].items()
    }
    body = hook_request("patient-view", context, OfflineFhirServer(record.resources).prefetch(queries))
    response = client.post("/cds-services/b12-iron-patient-view", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_response(response.get_json())
    (card,) = response.get_json()["cards"]
    return card


def app_with_site(settings: Settings, tmp_path: Path, site: object) -> FlaskClient:
    path = tmp_path / "site.json"
    path.write_text(json.dumps(site))
    return create_app(settings.with_overrides(site_config=path)).test_client()


def test_defaults(client: FlaskClient) -> None:
    card = patient_view_card(client)
    assert card["indicator"] == "warning"
    assert {r["code"] for r in card["overrideReasons"]} >= {"already-addressed", "patient-declined"}
    assert "links" not in card


def test_site_reasons_threshold_and_doc_link(settings: Settings, tmp_path: Path) -> None:
    site = {
        "overrideReasons": [
            {"code": "haem-review", "display": "Haematology is reviewing", "system": "urn:site:x"}
        ],
        "thresholds": {"b12_very_high": 2000},
        "rulesDocUrl": "https://intranet.example.org/cds/clinical-rules",
    }
    card = patient_view_card(app_with_site(settings, tmp_path, site))
    assert card["indicator"] == "info", "1600 pg/mL is under the site's own very-high line"
    assert card["overrideReasons"] == [
        {"system": "urn:site:x", "code": "haem-review", "display": "Haematology is reviewing"}
    ]
    assert (
        card["links"][0]["url"]
        == "https://intranet.example.org/cds/clinical-rules#elevated-b12-no-supplement"
    )


@pytest.mark.parametrize(
    "site",
    [
        ["not", "an", "object"],
        {"overrideReasons": [{"code": "x"}]},
        {"thresholds": {"no_such_threshold": 1}},
        {"thresholds": {"b12_elevated": "high"}},
        {"codes": {"no-such-value-set": ["http://loinc.org|2132-9"]}},
        {"rulesDocUrl": "intranet/rules"},
        {"thresholdz": {"b12_elevated": 1000}},
    ],
)
def test_bad_site_config_fails_at_start(settings: Settings, tmp_path: Path, site: object) -> None:
    path = tmp_path / "site.json"
    path.write_text(json.dumps(site))
    with pytest.raises(ConfigError, match="CDS_SITE_CONFIG"):
        create_app(settings.with_overrides(site_config=path))


def test_site_config_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    path.write_text("{broken")
    settings = load_settings({"CDS_SITE_CONFIG": str(path), "CDS_AUTH": "off"})
    with pytest.raises(ConfigError, match="cannot read it as JSON"):
        create_app(settings)
