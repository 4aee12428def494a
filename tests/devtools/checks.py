"""What every response a developer-tool test sees must satisfy."""

from __future__ import annotations

from typing import Any

from cds_service.protocol.cards import find_empty_values
from cds_service.protocol.schemas import validator

SUMMARY_LIMIT = 140


def assert_spec_response(response: Any) -> None:
    """The response schema, the no-empty-values rule inside every card (``{"cards": []}`` itself is the
    standard's answer when there is nothing to say), and the card fields an EHR cannot do without."""
    errors = sorted(validator("response").iter_errors(response), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    assert isinstance(response["cards"], list)
    for card in response["cards"]:
        assert find_empty_values(card) == [], card
        assert card["uuid"]
        assert len(card["summary"]) < SUMMARY_LIMIT
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
