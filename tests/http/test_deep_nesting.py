"""JSON nested deeper than the service can process is the caller's 400, wherever it sits, never a 500.

orjson reads bodies nested up to 1024 levels, but writes back at most 254 (the run-ahead key of the order
hooks is written with it), and jsonschema quotes an invalid value with ``repr``, which Python's recursion
limit stops near 1000 levels. Before, either made a 500 whose log line held a thousand-frame stack trace.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.protocol.request import MAX_NESTING, nested_deeper_than
from tests.support.served import hook_example

ORDER_SELECT = hook_example("order-select-cyanocobalamin.json")
ORDER_SIGN = copy.deepcopy(ORDER_SELECT) | {"hook": "order-sign"}
del ORDER_SIGN["context"]["selections"]
BODIES = {
    "b12-iron-patient-view": hook_example("patient-view.json"),
    "b12-iron-order-select": ORDER_SELECT,
    "b12-iron-order-sign": ORDER_SIGN,
}
FEEDBACK = {
    "feedback": [
        {
            "card": "7c2b3f4e-1d5a-4b6c-8e9f-0a1b2c3d4e5f",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-01-15T09:00:00Z",
            "overrideReason": {
                "reason": {"code": "x", "system": "urn:x", "display": "x"},
                "userComment": "c",
            },
        }
    ]
}
DEEP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ORJSON_DEPTH_LIMIT = 1024
# Past what orjson writes (254) and near where Python's recursion limit stops repr (about 990), and between.
LEVELS = st.sampled_from([255, 300, 990, 1000, ORJSON_DEPTH_LIMIT]) | st.integers(
    MAX_NESTING + 1, ORJSON_DEPTH_LIMIT
)


def paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every place in ``value`` a member or item can be replaced (the first two items of each array)."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:2]):
            yield from paths(item, (*path, index))


def with_nested(body: Any, path: tuple[str | int, ...], levels: int, as_object: bool) -> bytes:
    """``body`` as JSON with the value at ``path`` replaced by ``levels`` nested arrays or objects, written
    as text (orjson and json cannot write such depths), within what orjson reads."""
    body = copy.deepcopy(body)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = "__nested__"
    levels = min(levels, ORJSON_DEPTH_LIMIT - len(path) - 1)
    nested = '{"a":' * levels + '"x"' + "}" * levels if as_object else "[" * levels + '"x"' + "]" * levels
    return orjson.dumps(body).replace(b'"__nested__"', nested.encode())


def diagnostics(response: Any) -> str:
    return response.get_json()["issue"][0]["diagnostics"]


@DEEP
@given(
    case=st.sampled_from([(service, path) for service, body in BODIES.items() for path in paths(body)]),
    levels=LEVELS,
    as_object=st.booleans(),
)
def test_a_deeply_nested_value_anywhere_in_a_hook_call_is_never_a_500(
    client: FlaskClient, case: tuple[str, tuple[str | int, ...]], levels: int, as_object: bool
) -> None:
    service, path = case
    raw = with_nested(BODIES[service], path, levels, as_object)
    response = client.post(f"/cds-services/{service}", data=raw, content_type="application/json")
    assert response.status_code in (200, 400, 412), response.get_data(as_text=True)


@DEEP
@given(
    path=st.sampled_from(list(paths(FEEDBACK))),
    levels=LEVELS,
    as_object=st.booleans(),
)
def test_a_deeply_nested_value_anywhere_in_feedback_is_never_a_500(
    client: FlaskClient, path: tuple[str | int, ...], levels: int, as_object: bool
) -> None:
    raw = with_nested(FEEDBACK, path, levels, as_object)
    response = client.post(
        "/cds-services/b12-iron-patient-view/feedback", data=raw, content_type="application/json"
    )
    assert response.status_code in (200, 400), response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("b12-iron-order-sign", ("context", "draftOrders", "entry", 0, "resource", "extension")),
        ("b12-iron-order-select", ("prefetch", "patient", "name")),
        ("b12-iron-patient-view", ("hook",)),
        ("b12-iron-patient-view", ("context", "patientId")),
    ],
)
def test_what_used_to_fail_is_a_400_saying_why_and_logs_no_stack_trace(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, service: str, path: tuple[str | int, ...]
) -> None:
    """A draft order or prefetch value past orjson's writing limit (the order hooks' run-ahead key), and
    an invalid value deep enough to stop jsonschema's repr."""
    raw = with_nested(BODIES[service], path, 1000, as_object=False)
    with caplog.at_level(logging.INFO):
        response = client.post(f"/cds-services/{service}", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert f"more than {MAX_NESTING} levels deep" in diagnostics(response)
    assert not [record for record in caplog.records if record.exc_info]


def test_deeply_nested_feedback_is_a_400_saying_why(client: FlaskClient) -> None:
    raw = with_nested(FEEDBACK, ("feedback", 0, "card"), 1000, as_object=True)
    response = client.post(
        "/cds-services/b12-iron-patient-view/feedback", data=raw, content_type="application/json"
    )
    assert response.status_code == 400
    assert f"more than {MAX_NESTING} levels deep" in diagnostics(response)


def test_a_recursion_error_of_the_services_own_is_still_a_500(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a body that is in fact nested that deep is blamed on the caller."""

    def runaway(*args: object, **kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("cds_service.services.evaluate", runaway)
    response = client.post(
        "/cds-services/b12-iron-patient-view",
        data=orjson.dumps(BODIES["b12-iron-patient-view"]),
        content_type="application/json",
    )
    assert response.status_code == 500


@pytest.mark.parametrize(
    ("value", "deeper_than_2"),
    [(1, False), ([], False), ([[]], False), ([[[]]], True), ({"a": [1, {}]}, True), ({"a": [1]}, False)],
)
def test_nested_deeper_than_counts_levels_of_objects_and_arrays(value: Any, deeper_than_2: bool) -> None:
    assert nested_deeper_than(value, 2) is deeper_than_2


def test_nested_deeper_than_measures_any_depth() -> None:
    value = orjson.loads("[" * 1024 + "]" * 1024)
    assert nested_deeper_than(value, 1023) and not nested_deeper_than(value, 1024)
