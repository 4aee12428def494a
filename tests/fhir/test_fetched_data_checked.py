"""What the service fetches from the EHR is held to the rules the prefetch is held to.

A FHIR server that ignores ``patient=`` (or a proxy that answers from a cache keyed wrongly) sends another
patient's resources; a broken one sends entries that are not resources. The patient record drops both
without a word, so each was read as "nothing on file" and the call answered 200 having looked at nothing
of this patient's. Now the key fails and the call is a 412 that says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.fhir.client import FhirClient
from tests.builders import FIXED_NOW, hook_body
from tests.support.fake_ehr_fhir import FakeEhrFhir

pytestmark = pytest.mark.integration

PATH = "/cds-services/b12-iron-patient-view"
OTHER_PATIENTS_B12 = {
    "resourceType": "Observation",
    "id": "b12-of-someone-else",
    "status": "final",
    "subject": {"reference": "Patient/someone-else"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "2132-9"}]},
    "effectiveDateTime": "2026-01-10",
    "valueQuantity": {"value": 95, "unit": "pg/mL", "code": "pg/mL", "system": "http://unitsofmeasure.org"},
}


@pytest.fixture
def ehr() -> Iterator[FakeEhrFhir]:
    with FakeEhrFhir() as server:
        yield server


@pytest.fixture
def app(tmp_path: Path, ehr: FakeEhrFhir) -> Iterator[Flask]:
    settings = Settings(
        auth="off",
        public_base_url="http://127.0.0.1:8080",
        feedback_db=str(tmp_path / "feedback.sqlite3"),
        state_db=str(tmp_path / "state.sqlite3"),
        now=FIXED_NOW,
        allowed_fhir_servers=(ehr.base_url,),
    )
    application = create_app(settings)
    yield application
    application.extensions["cds"]["recorder"].close()
    application.extensions["cds"]["feedback"].close()


def _call(app: Flask, ehr: FakeEhrFhir, missing: str) -> tuple[int, str]:
    body = hook_body()
    del body["prefetch"][missing]
    body["fhirServer"] = ehr.base_url
    response = app.test_client().post(PATH, data=orjson.dumps(body), content_type="application/json")
    text = response.get_json()["issue"][0]["diagnostics"] if response.status_code != 200 else ""
    return response.status_code, text


def test_another_patients_search_results_fail_the_key(app: Flask, ehr: FakeEhrFhir) -> None:
    ehr.add_search("Observation", [OTHER_PATIENTS_B12], page_size=10)
    status, reason = _call(app, ehr, "b12IronLabs")
    assert status == 412
    assert "b12IronLabs: the server's answer is not usable" in reason
    assert "another patient" in reason


def test_another_patient_read_for_this_one_fails_the_key(app: Flask, ehr: FakeEhrFhir) -> None:
    ehr.add_canned("Patient/pat-1", 200, {"resourceType": "Patient", "id": "someone-else"})
    status, reason = _call(app, ehr, "patient")
    assert status == 412
    assert "patient: the server's answer is not usable" in reason


@pytest.mark.parametrize(
    "entries",
    [[None], [1, "x"], [{"resource": "<html>"}], [{"resource": {}}], [{"fullUrl": "urn:uuid:1"}]],
    ids=["null", "scalars", "string-resource", "no-resource-type", "no-resource"],
)
def test_a_page_of_entries_that_are_not_resources_fails_the_key(entries: list[Any]) -> None:
    client = FhirClient()
    try:
        with FakeEhrFhir() as ehr:
            ehr.add_canned(
                "Observation?patient=p1",
                200,
                {"resourceType": "Bundle", "type": "searchset", "entry": entries},
            )
            outcome = client.fetch_all(
                ehr.base_url, {"labs": "Observation?patient=p1"}, authorization=None, budget_ms=3000
            )["labs"]
    finally:
        client.close()
    assert outcome.resource is None
    url = f"{ehr.base_url}/Observation?patient=p1"
    assert outcome.error == f"Bundle.entry from {url} holds an entry that is not a FHIR resource"
