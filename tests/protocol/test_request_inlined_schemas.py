"""The request validators run on schemas whose ``$ref`` are inlined at start (`_request_validator`); every
error they find, and so every 400 reason, must be the one the schemas as written give."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.protocol.request import HOOKS, _request_validator, _schema_reason
from cds_service.protocol.schemas import validator
from tests.support.json_values import json_values

NAMES = ("hook-request", *(f"context-{hook}" for hook in HOOKS))
GOOD_DRAFT = {"resourceType": "MedicationRequest", "id": "d1"}
# Values near valid ones, so the fuzz reaches the inner keywords (patterns, nested drafts), not only types.
NEAR_VALUES = st.sampled_from(
    [
        "Practitioner/u1",
        "Practitioner/u 1",
        "Device/u1",
        "p1",
        "p1\n",
        "",
        "x" * 65,
        "MedicationRequest/d1",
        "medicationRequest/d1",
        ["MedicationRequest/d1"],
        [],
        [5],
        {"resourceType": "Bundle"},
        {"resourceType": "Bundle", "entry": [{"resource": GOOD_DRAFT}]},
        {"resourceType": "Bundle", "entry": [{"resource": {"id": "d1"}}]},
        {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "medication request"}}]},
        {"resourceType": "Bundle", "entry": [{}, 5]},
        {"resourceType": "Batch", "entry": "x"},
        {"access_token": "abc", "token_type": "Bearer"},
        {"access_token": "a b", "token_type": "bearer", "expires_in": -1},
        "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "https://ehr.example/fhir",
    ]
)
KEYS = st.sampled_from(
    [
        "userId",
        "patientId",
        "encounterId",
        "selections",
        "draftOrders",
        "hook",
        "hookInstance",
        "fhirServer",
        "fhirAuthorization",
        "context",
        "prefetch",
        "other",
    ]
)
OBJECTS = st.dictionaries(KEYS, NEAR_VALUES | json_values(max_leaves=6), max_size=7)


def errors(compiled: Any, instance: Any) -> list[tuple[Any, ...]]:
    """What a reason is made of: keyword, instance path, message, the keyword's value and ``x-reason``."""
    return [
        (e.validator, list(e.absolute_path), e.message, e.validator_value, e.schema.get("x-reason"))
        for e in compiled.iter_errors(instance)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_no_reference_is_left_to_look_up(name: str) -> None:
    assert "$ref" not in json.dumps(_request_validator(name).schema)


@settings(max_examples=300, deadline=None)
@given(instance=OBJECTS | json_values(max_leaves=8), name=st.sampled_from(NAMES))
def test_the_inlined_schemas_find_the_errors_the_written_ones_find(instance: Any, name: str) -> None:
    found = errors(_request_validator(name), instance)
    assert found == errors(validator(name), instance)
    if found:
        written = _schema_reason("context", list(validator(name).iter_errors(instance)))
        assert _schema_reason("context", list(_request_validator(name).iter_errors(instance))) == written
