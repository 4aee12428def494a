"""Shifting fixture dates keeps every interval and every date format, as the fixture loader does."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from cds_service.clinical.fixtures import shift_dates, shift_to


def test_dates_and_datetimes_move_and_other_strings_do_not() -> None:
    bundle = {
        "entry": [
            {
                "resource": {
                    "id": "2026-01-01",
                    "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
                    "authoredOn": "2026-01-01",
                    "effectiveDateTime": "2025-12-01T08:30:00Z",
                    "issued": "2025-12-01T10:00:00.250+02:00",
                    "code": {"coding": [{"code": "2132-9"}], "text": "2025-12 is not a date here? 12"},
                    "valueString": ">2000",
                }
            }
        ]
    }
    moved = shift_dates(bundle, timedelta(days=10))["entry"][0]["resource"]
    assert moved["authoredOn"] == "2026-01-11"
    assert moved["effectiveDateTime"] == "2025-12-11T08:30:00Z"
    assert moved["issued"] == "2025-12-11T10:00:00.250+02:00", "the precision is the source's"
    assert moved["id"] == "2026-01-01", "an id that looks like a date is still an id"
    assert moved["meta"] == bundle["entry"][0]["resource"]["meta"]
    assert moved["code"] == bundle["entry"][0]["resource"]["code"]
    assert moved["valueString"] == ">2000"
    assert bundle["entry"][0]["resource"]["authoredOn"] == "2026-01-01"


def test_a_shift_by_part_of_a_day_is_refused() -> None:
    with pytest.raises(ValueError, match="whole days"):
        shift_dates({"authoredOn": "2026-01-01"}, timedelta(days=1, hours=6))


def test_shift_to_puts_the_reference_day_on_now() -> None:
    now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert shift_to({"d": "2026-01-15"}, date(2026, 1, 15), now) == {"d": "2026-03-01"}
    assert shift_to([{"d": "2026-01-15T23:30:00.5-05:00"}], date(2026, 1, 15), now) == [
        {"d": "2026-03-01T23:30:00.5-05:00"}
    ]
