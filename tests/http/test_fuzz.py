"""Fuzzing the service endpoint: no input, however odd, gets a 500 or crashes the worker."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builders import SERVICE_FOR_HOOK, hook_body
from tests.support.json_values import json_values

JSON_VALUES = json_values(max_leaves=25)

PATHS = [
    ("hook",),
    ("hookInstance",),
    ("context",),
    ("context", "patientId"),
    ("context", "userId"),
    ("context", "selections"),
    ("context", "draftOrders"),
    ("context", "draftOrders", "entry"),
    ("prefetch",),
    ("prefetch", "patient"),
    ("prefetch", "b12IronLabs"),
    ("prefetch", "b12IronLabs", "entry"),
    ("prefetch", "medicationRequests"),
    ("prefetch", "conditions"),
    ("fhirServer",),
    ("fhirAuthorization",),
]

ACCEPTABLE = {200, 400, 412}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _set(body: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target: Any = body
    for key in path[:-1]:
        if not isinstance(target, dict):
            return
        target = target.setdefault(key, {})
    if isinstance(target, dict):
        target[path[-1]] = value


@FUZZ
@given(value=JSON_VALUES)
def test_arbitrary_json_bodies(client: FlaskClient, value: Any) -> None:
    response = client.post(
        "/cds-services/b12-iron-patient-view", data=orjson.dumps(value), content_type="application/json"
    )
    assert response.status_code in ACCEPTABLE
    assert response.status_code != 200 or isinstance(value, dict)


@FUZZ
@given(hook=st.sampled_from(list(SERVICE_FOR_HOOK)), path=st.sampled_from(PATHS), value=JSON_VALUES)
def test_one_field_replaced_by_anything(
    client: FlaskClient, hook: str, path: tuple[str, ...], value: Any
) -> None:
    body = copy.deepcopy(hook_body(hook))
    _set(body, path, value)
    response = client.post(
        f"/cds-services/{SERVICE_FOR_HOOK[hook]}", data=orjson.dumps(body), content_type="application/json"
    )
    assert response.status_code in ACCEPTABLE, response.get_data(as_text=True)


@FUZZ
@given(
    resource=st.dictionaries(
        st.sampled_from(
            [
                "resourceType",
                "id",
                "status",
                "code",
                "valueQuantity",
                "subject",
                "effectiveDateTime",
                "medicationCodeableConcept",
                "authoredOn",
                "clinicalStatus",
            ]
        ),
        JSON_VALUES,
        max_size=8,
    )
)
def test_odd_resources_inside_prefetch_bundles(client: FlaskClient, resource: dict[str, Any]) -> None:
    body = hook_body()
    resource.setdefault("resourceType", "Observation")
    for key in ("b12IronLabs", "medicationRequests", "conditions", "serviceRequests"):
        body["prefetch"][key]["entry"] = [{"resource": resource}]
    response = client.post(
        "/cds-services/b12-iron-patient-view", data=orjson.dumps(body), content_type="application/json"
    )
    assert response.status_code in ACCEPTABLE, response.get_data(as_text=True)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(client: FlaskClient, raw: bytes) -> None:
    response = client.post("/cds-services/b12-iron-order-sign", data=raw, content_type="application/json")
    assert response.status_code in ACCEPTABLE


def test_huge_but_legal_request_does_not_crash(client: FlaskClient) -> None:
    body = hook_body()
    body["prefetch"]["b12IronLabs"]["entry"] = [
        {"resource": {"resourceType": "Observation", "id": str(i)}} for i in range(20_000)
    ]
    response = client.post(
        "/cds-services/b12-iron-patient-view", data=orjson.dumps(body), content_type="application/json"
    )
    assert response.status_code == 200
