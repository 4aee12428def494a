"""Moving scenario fixtures in time: every date in a resource shifted by the same amount.

The fixtures in ``fhir_fixtures/`` are written as real dates around a reference day (2026-01-15). To
replay one on another day, shift its dates by ``now - reference day``: ages of results and courses, and
so every card, stay the same. The shifting itself is the fixture loader's (``cds_service.fhir.dates``),
so a fixture replayed here and one loaded onto a FHIR server carry the same dates.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from cds_service.fhir import dates


def shift_dates(value: Any, delta: timedelta) -> Any:
    """A copy of ``value`` (a resource, Bundle or list) with every FHIR date and dateTime moved by ``delta``.

    Fixture dates move by whole days, so a date stays a date and an instant keeps its precision and
    offset; a ``delta`` with a part of a day is refused rather than rounded.
    """
    if delta % timedelta(days=1):
        raise ValueError(f"fixture dates move by whole days, not by {delta}")
    return dates.shift_dates(value, delta.days)


def shift_to(value: Any, reference_day: date, now: datetime) -> Any:
    """``value`` moved so that its reference day falls on ``now``'s day."""
    return dates.shift_dates(value, (now.date() - reference_day).days)
