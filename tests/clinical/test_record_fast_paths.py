"""`build_record`'s fast paths read a result exactly as the general readers do.

The Observation loop takes shortcuts for the common shapes (``subject.reference`` of the usual spelling,
an ``effectiveDateTime`` with a time, a numeric ``valueQuantity``) and finds results of one moment by
sorting rather than hashing times. These cases hold each shortcut to what the slow path decides for the
shapes beside it: another spelling, the wrong JSON type, one moment written in two offsets.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.clinical.builders import PID, obs, record

TWIN_MOMENTS = ("2026-01-10T10:00:00+01:00", "2026-01-10T09:00:00Z")


def test_one_moment_written_in_two_offsets_is_one_moment() -> None:
    """10:00+01:00 and 09:00Z are one specimen: two readings of it that disagree leave no value."""
    first = obs("ferritin", 12, 5, effectiveDateTime=TWIN_MOMENTS[0])
    second = obs("ferritin", 250, 5, effectiveDateTime=TWIN_MOMENTS[1])
    built = record(first, second)
    assert built.results.get("ferritin") == []
    assert len(built.tested["ferritin"]) == 2


def test_one_moment_in_two_offsets_that_agree_is_one_value() -> None:
    first = obs("ferritin", 12, 5, effectiveDateTime=TWIN_MOMENTS[0])
    second = obs(
        "ferritin", 12, 5, effectiveDateTime=TWIN_MOMENTS[1], valueQuantity={"value": 12, "unit": "ug/L"}
    )
    assert [r.value for r in record(first, second).results["ferritin"]] == [12, 12]


def test_a_disagreeing_twin_sent_apart_from_its_moment_is_found() -> None:
    """Twins separated in the request by other results (and a third reading that agrees with the first)."""
    low = obs("ferritin", 12, 5)
    others = [obs("ferritin", 40, days) for days in (1, 9, 20)]
    twins = [
        {**low, "id": "twin-a"},
        {**low, "id": "twin-b", "valueQuantity": {"value": 250, "unit": "ng/mL"}},
    ]
    built = record(low, *others[:2], twins[1], others[2], twins[0])
    assert sorted(r.value for r in built.results["ferritin"]) == [40, 40, 40]


@pytest.mark.parametrize(
    ("subject", "used", "counted"),
    [
        ({"reference": f"Patient/{PID}"}, True, True),
        ({"reference": f"urn:uuid:{PID}"}, True, True),
        ({"reference": f"https://ehr.example.org/fhir/Patient/{PID}"}, True, True),
        ({"reference": f"Patient/{PID}/_history/3"}, True, True),
        ({"reference": "Patient/someone-else"}, False, False),
        ({"reference": f"Group/{PID}"}, False, False),
        ({"reference": ["Patient/p1"]}, False, False),
        ({"reference": 5}, False, False),
        ({"display": "the patient"}, False, True),
        ([{"reference": f"Patient/{PID}"}], False, True),
        (f"Patient/{PID}", False, True),
        (None, False, True),
    ],
)
def test_a_result_is_attributed_by_its_subject_whatever_its_shape(
    subject: Any, used: bool, counted: bool
) -> None:
    """The patient's result is read; another's is skipped; one naming nobody counts as done, unread."""
    result = obs("b12", 300, 5)
    if subject is None:
        del result["subject"]
    else:
        result["subject"] = subject
    built = record(result)
    assert ("b12" in built.results) is used
    assert ("b12" in built.tested) is counted


@pytest.mark.parametrize(
    ("quantity", "value"),
    [
        ({"value": 300, "unit": "pg/mL"}, 300),
        ({"value": 300.5, "code": "pg/mL"}, 300.5),
        # A code that is not a text gives way to the unit text, as fhir.read.quantity has it.
        ({"value": 300, "code": ["pg/mL"], "unit": "pg/mL"}, 300),
        ({"value": 300, "code": 5, "unit": "pg/mL"}, 300),
        ({"value": 300, "code": "", "unit": "pg/mL"}, 300),
        ({"value": 300, "code": ["pg/mL"]}, None),
        ({"value": 221.4, "unit": "pmol/L"}, 221.4 * 1.35537),
        ({"value": True, "unit": "pg/mL"}, None),
        ({"value": "300", "unit": "pg/mL"}, None),
        ({"value": None, "unit": "pg/mL"}, None),
        ({"value": 300, "unit": "pg/mL", "comparator": "=="}, None),
        ({"value": -1, "unit": "pg/mL"}, None),
        ({"value": 300}, None),
        ("300 pg/mL", None),
    ],
)
def test_a_quantity_is_read_only_when_it_holds_a_number_in_a_known_unit(
    quantity: Any, value: float | None
) -> None:
    result = obs("b12", None, 5, valueQuantity=quantity)
    built = record(result)
    assert [r.value for r in built.results.get("b12", [])] == (
        [] if value is None else [pytest.approx(value)]
    )


@pytest.mark.parametrize(
    ("stamp", "day"),
    [
        ("2026-01-10T08:30:00Z", "2026-01-10"),
        ("2026-01-10T08:30:00", "2026-01-10"),  # no offset: read as UTC
        ("2026-01-10T23:30:00-05:00", "2026-01-10"),  # the day as written
        ("2026-01-10", "2026-01-10"),
        ("2026-01", "2026-01"),
        ("2026-01-10T25:00:00Z", None),
        (20260110, None),
    ],
)
def test_a_result_is_dated_by_its_effective_time_whatever_its_form(stamp: Any, day: str | None) -> None:
    built = record(obs("b12", 300, 5, effectiveDateTime=stamp))
    assert [r.day() for r in built.results.get("b12", [])] == ([] if day is None else [day])
