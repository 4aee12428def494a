"""What order-sign does with a run-ahead entry it did not write: a value of an older layout, or one another
program sharing the Redis left under the key. Each is a miss with a warning and the fresh answer, never
a 500 (rendering such findings raised AttributeError, TypeError or CardError out of the call)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from cds_service.config import Settings
from cds_service.observability import CallTrace
from cds_service.run_ahead import RunAheadCache
from cds_service.services import HookHandler, build_handler
from tests.builders import card_summaries, select_and_sign
from tests.clinical.builders import obs

SELECT = "b12-iron-order-select"
SIGN = "b12-iron-order-sign"


def _bodies() -> tuple[dict, dict]:
    return select_and_sign([obs("b12", 1200, 10, pid="pat-1")])


def _finding(**changes: Any) -> dict:
    finding = {
        "topic": "elevated-b12-supplement-review",
        "indicator": "warning",
        "summary": "From another program",
        "detail": "",
        "source_label": "another program",
        "source_url": None,
        "proposals": [],
        "selection_behavior": "any",
    }
    return {**finding, **changes}


def _action(**changes: Any) -> dict:
    return {
        "type": "delete",
        "description": "Remove",
        "resource": None,
        "resource_id": "MedicationRequest/x",
        **changes,
    }


def _proposal(*actions: dict, **changes: Any) -> dict:
    return {"label": "Do it", "actions": list(actions), "is_recommended": False, **changes}


def _entry(*findings: dict, **changes: Any) -> dict:
    return {
        "from": "2026-01-15T09:00:00+00:00",
        "until": "2026-01-15T09:00:00+00:00",
        "findings": list(findings),
        **changes,
    }


ENTRIES = {
    "the layout before spans (a list of findings)": [_finding()],
    "a number": 7,
    "no span": {"findings": [_finding()]},
    "a span without offsets": _entry(
        _finding(), **{"from": "2026-01-15T09:00:00", "until": "2026-01-15T09:00:00"}
    ),
    "a span that is not a date": _entry(_finding(), until="soon"),
    "a span that is a number": _entry(_finding(), until=1768467600),
    "findings that are an object": _entry(**{"findings": {"topic": "x"}}),
    "a finding that is a string": _entry("elevated-b12-supplement-review"),
    "a finding with a field missing": _entry({k: v for k, v in _finding().items() if k != "summary"}),
    "a summary that is a number": _entry(_finding(summary=5)),
    "a topic that is a list": _entry(_finding(topic=["a"])),
    "an indicator of no card": _entry(_finding(indicator="urgent")),
    "an empty summary": _entry(_finding(summary=" ")),
    "a selection behaviour of no card": _entry(
        _finding(selection_behavior="all", proposals=[_proposal(_action())])
    ),
    "an action type of no card": _entry(_finding(proposals=[_proposal(_action(type="replace"))])),
    "an action resource that is a string": _entry(
        _finding(proposals=[_proposal(_action(type="create", resource="Patient/1"))])
    ),
    "a resource id that is a number": _entry(_finding(proposals=[_proposal(_action(resource_id=3))])),
    "a recommendation that is a string": _entry(
        _finding(proposals=[_proposal(_action(), is_recommended="yes")])
    ),
    "a proposal without actions": _entry(_finding(proposals=[_proposal()])),
}


@pytest.mark.parametrize("stored", list(ENTRIES.values()), ids=list(ENTRIES))
def test_an_entry_this_build_did_not_write_is_a_miss_with_the_fresh_answer(
    settings: Settings, stored: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RunAheadCache(settings)
    select, sign = _bodies()
    handler: HookHandler = build_handler(settings, run_ahead=cache)
    handler.handle(SELECT, copy.deepcopy(select))
    [key] = cache._store._entries  # the entry order-select made, overwritten as another program would
    cache.put(key, stored)

    trace = CallTrace(service=SIGN)
    with caplog.at_level(logging.WARNING, logger="cds_service.services"):
        answer = handler.handle(SIGN, copy.deepcopy(sign), None, trace)

    assert trace.run_ahead_hit is False
    assert card_summaries(answer) == card_summaries(build_handler(settings).handle(SIGN, copy.deepcopy(sign)))
    assert "From another program" not in str(answer)
    assert any("run-ahead entry unreadable" in record.getMessage() for record in caplog.records)


def test_an_entry_this_build_wrote_is_a_hit(settings: Settings) -> None:
    """The same handler and entry as above, left as order-select wrote it: the misses above mean something."""
    cache = RunAheadCache(settings)
    select, sign = _bodies()
    handler = build_handler(settings, run_ahead=cache)
    handler.handle(SELECT, copy.deepcopy(select))
    trace = CallTrace(service=SIGN)
    answer = handler.handle(SIGN, copy.deepcopy(sign), None, trace)
    assert trace.run_ahead_hit is True
    assert card_summaries(answer) == card_summaries(build_handler(settings).handle(SIGN, copy.deepcopy(sign)))
