"""Moving FHIR records in time: every full date in a resource shifted by the same number of days.

Fixtures are written around a reference day; a result that is "six weeks old" must still be six weeks
old when the fixture is loaded or replayed months later, so every date moves by today minus that day.
Only values that are FHIR dates, dateTimes or instants move, each keeping its own precision and offset;
identifiers, codes, references, narrative and ``meta`` stay as written even when they look like dates.
"""

from __future__ import annotations

import copy
import re
from datetime import date, timedelta
from typing import Any

_FULL_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})((T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?)$")
# Keys whose string values are identifiers, codes or narrative, never FHIR dates, even when they look
# like one (an identifier "2024-01-15" stays as it is).
_NOT_DATES = frozenset({"id", "reference", "url", "fullUrl", "system", "code", "version", "div", "data"})


def full_date(value: str) -> date | None:
    """The calendar day of a FHIR date, dateTime or instant; None for partial dates and other text."""
    match = _FULL_DATE.match(value)
    return date.fromisoformat(match.group(1)) if match else None


def shift_date_string(value: str, days: int) -> str:
    """Move a FHIR date, dateTime or instant by whole days, keeping its precision and offset.

    Partial dates (a year, a year and month) are returned unchanged: a shift in days has no meaning
    for them and rounding would invent precision the source did not have.
    """
    match = _FULL_DATE.match(value)
    if not match or days == 0:
        return value
    moved = date.fromisoformat(match.group(1)) + timedelta(days=days)
    return moved.isoformat() + match.group(2)


def shift_dates(node: Any, days: int) -> Any:
    """A copy of a resource, Bundle or list of them with every full date moved by ``days``."""
    if isinstance(node, dict):
        return {
            key: copy.deepcopy(value) if key == "meta" or key in _NOT_DATES else shift_dates(value, days)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [shift_dates(value, days) for value in node]
    if isinstance(node, str):
        return shift_date_string(node, days)
    return node
