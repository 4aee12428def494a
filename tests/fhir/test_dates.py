"""Shifting FHIR dates by whole days: only real dates move, each keeping its precision and offset."""

from __future__ import annotations

from datetime import date

import pytest

from cds_service.fhir.dates import full_date, shift_date_string, shift_dates


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("2025-12-30", 3, "2026-01-02"),
        ("2025-12-30T08:15:00Z", 3, "2026-01-02T08:15:00Z"),
        ("2024-03-01T23:59:59.123+05:30", -1, "2024-02-29T23:59:59.123+05:30"),
        ("2025-06-01T10:00+01:00", 10, "2025-06-11T10:00+01:00"),
        ("2025", 400, "2025"),
        ("2025-06", 400, "2025-06"),
        ("2025-06-01", 0, "2025-06-01"),
        ("not a date", 5, "not a date"),
        ("2025-06-01 extra", 5, "2025-06-01 extra"),
    ],
)
def test_shift_date_string(value: str, days: int, expected: str) -> None:
    assert shift_date_string(value, days) == expected


def test_shift_dates_moves_dates_everywhere_but_ids_codes_and_meta() -> None:
    resource = {
        "resourceType": "MedicationRequest",
        "id": "2025-01-01",
        "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
        "authoredOn": "2025-01-01",
        "identifier": [{"system": "urn:x", "value": "2025-01-01"}],
        "code": {"coding": [{"code": "2025-01-01"}]},
        "dosageInstruction": [{"timing": {"event": ["2025-01-02", "2025-01-03T08:00:00Z"]}}],
        "dispenseRequest": {"validityPeriod": {"start": "2025-01-01", "end": "2025-02-01"}},
        "subject": {"reference": "Patient/2025-01-01"},
    }
    shifted = shift_dates(resource, 31)
    assert shifted["id"] == "2025-01-01"
    assert shifted["meta"] == resource["meta"]
    assert shifted["code"] == resource["code"]
    assert shifted["subject"] == resource["subject"]
    assert shifted["authoredOn"] == "2025-02-01"
    assert shifted["dosageInstruction"][0]["timing"]["event"] == ["2025-02-02", "2025-02-03T08:00:00Z"]
    assert shifted["dispenseRequest"]["validityPeriod"] == {"start": "2025-02-01", "end": "2025-03-04"}
    assert resource["authoredOn"] == "2025-01-01", "the input is left alone"


def test_a_bare_date_string_and_a_list_of_resources_move_too() -> None:
    assert shift_dates("2025-01-01T08:00:00.5Z", 1) == "2025-01-02T08:00:00.5Z"
    assert shift_dates([{"authoredOn": "2025-01-01"}, {"id": "2025-01-01"}], 1) == [
        {"authoredOn": "2025-01-02"},
        {"id": "2025-01-01"},
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-12-30", date(2025, 12, 30)),
        ("2025-12-30T08:15:00.123+05:30", date(2025, 12, 30)),
        ("2025-12", None),
        ("2025-12-30 and more", None),
    ],
)
def test_full_date(value: str, expected: date | None) -> None:
    assert full_date(value) == expected
