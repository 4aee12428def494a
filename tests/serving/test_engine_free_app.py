"""The benchmark's engine-free server must answer what the service answers, from its first computation.

`benchmarks/engine_free_app.py` patches the hook handler; if the handler's signature or behaviour moved
on, the benchmark would silently measure something else (or fail every call), so its patch is checked
against the real handler here. Its speed is the benchmark's business, not the test suite's.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from benchmarks.engine_free_app import answer_once
from cds_service.services import HookHandler
from tests.support.served import hook_example

VIEW = "/cds-services/b12-iron-patient-view"


def test_the_first_answer_is_the_real_one_and_later_calls_reuse_it(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = hook_example("patient-view.json")
    real = client.post(VIEW, json=body).get_json()
    calls: list[Any] = []
    counted = HookHandler.handle

    def counting(self: HookHandler, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(args[0])
        return counted(self, *args, **kwargs)

    monkeypatch.setattr(HookHandler, "handle", counting)
    answer_once(HookHandler)
    first = client.post(VIEW, json=body).get_json()
    again = client.post(VIEW, json=body).get_json()

    assert real["cards"], "the example should raise a card for this comparison to mean anything"
    assert [card["source"]["topic"]["code"] for card in first["cards"]] == [
        card["source"]["topic"]["code"] for card in real["cards"]
    ]
    assert first["cards"][0]["summary"] == real["cards"][0]["summary"]
    assert again == first
    assert calls == ["b12-iron-patient-view"]
