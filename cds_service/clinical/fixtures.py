"""Moving scenario fixtures in time: every date in a resource shifted by the same amount.

The fixtures in ``fhir_fixtures/`` are written as real dates around a reference day (2026-01-15). To
replay one on another day, shift its dates by ``now - reference day``: ages of results and courses, and
so every card, stay the same.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def shift_dates(value: Any, delta: timedelta) -> Any:
    """A copy of ``value`` (a resource, Bundle or list) with every FHIR date and dateTime moved by ``delta``.

    Whole days keep a date a date; a datetime keeps its own form (``Z`` or offset).
    """
    if isinstance(value, dict):
        return {key: shift_dates(item, delta) for key, item in value.items()}
    if isinstance(value, list):
        return [shift_dates(item, delta) for item in value]
    if isinstance(value, str):
        if _DATE.match(value):
            return (date.fromisoformat(value) + timedelta(days=delta.days)).isoformat()
        if _DATETIME.match(value):
            moved = datetime.fromisoformat(value.replace("Z", "+00:00")) + delta
            text = moved.isoformat()
            return text.replace("+00:00", "Z") if value.endswith("Z") else text
    return value


def shift_to(value: Any, reference_day: date, now: datetime) -> Any:
    """``value`` moved so that its reference day falls on ``now``'s day."""
    return shift_dates(value, timedelta(days=(now.date() - reference_day).days))
