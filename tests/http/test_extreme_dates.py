"""Legal but extreme FHIR dates in a hook request must not make a 500.

Found by mutating the example hook requests: a draft or a medication record dated 9999-12-31 started a
B12 course whose "day after" (clinical/rules/common.day_after) was past datetime's range, an OverflowError
and a 500 (fixed by 4d98ac4: dates outside 1800-2200 are read as undated).
"""

from __future__ import annotations

import copy
import json

import pytest
from flask.testing import FlaskClient

from tests.builders import REPO, SERVICE_FOR_HOOK, assert_valid_response


def _example(name: str) -> dict:
    return json.loads((REPO / "hooks" / f"{name}.json").read_text())


def _draft(body: dict) -> dict:
    return body["context"]["draftOrders"]["entry"][0]["resource"]


def _first_medication_request(body: dict) -> dict:
    return next(e["resource"] for e in body["prefetch"]["medicationRequests"]["entry"])


CASES = [
    pytest.param("order-select-cyanocobalamin", _draft, "9999-12-31", id="draft-9999-12-31"),
    pytest.param("order-select-cyanocobalamin", _draft, "9999-12", id="draft-9999-12"),
    pytest.param(
        "patient-view-iron-deficiency-after-b12",
        _first_medication_request,
        "9999-12-31T23:59:59Z",
        id="on-file-9999-12-31T23:59:59Z",
    ),
    pytest.param("order-select-cyanocobalamin", _draft, "0001-01-01", id="draft-0001-01-01"),
    pytest.param(
        "patient-view-iron-deficiency-after-b12", _first_medication_request, "0001", id="on-file-0001"
    ),
]


@pytest.mark.parametrize(("example", "record", "authored"), CASES)
def test_an_extreme_authored_date_is_answered(
    client: FlaskClient, example: str, record, authored: str
) -> None:
    body = copy.deepcopy(_example(example))
    record(body)["authoredOn"] = authored
    response = client.post(f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}", json=body)
    assert response.status_code in (200, 412), response.get_data(as_text=True)[:300]
    if response.status_code == 200:
        assert_valid_response(response.get_json())
