"""A Hypothesis strategy for any JSON value, shared by the fuzz tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(*, max_leaves: int, text_size: int = 30, key_size: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value: null, booleans, integers within JSON's safe range, finite floats, text, and lists
    and objects of them, up to ``max_leaves`` scalars."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=text_size),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=key_size), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )
