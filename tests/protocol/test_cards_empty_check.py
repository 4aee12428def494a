"""A card is checked for empty values by a quick walk (`_holds_empty`) before any path is built; it must
find an empty value exactly when `find_empty_values` does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from cds_service.protocol.cards import _holds_empty, find_empty_values
from tests.support.json_values import json_values


@settings(max_examples=500, deadline=None)
@given(value=json_values(max_leaves=12, text_size=3, key_size=3))
def test_the_quick_walk_finds_an_empty_value_exactly_when_the_full_one_does(value: Any) -> None:
    assert _holds_empty(value) is bool(find_empty_values(value))


@pytest.mark.parametrize(
    ("value", "empty"),
    [
        ({"a": [1, {"b": "x"}], "c": False, "d": 0}, False),
        ({"a": [1, {"b": ""}]}, True),
        ({"a": [1, {}]}, True),
        ({"a": [[], 1]}, True),
        ({"a": None}, True),
        ([0, 0.0, False, " "], False),
    ],
)
def test_false_zero_and_blank_are_values_and_null_or_empty_ones_are_not(value: Any, empty: bool) -> None:
    assert _holds_empty(value) is empty
