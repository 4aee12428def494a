"""Every way a feedback body can be wrong gets its own specific reason; every valid shape is read exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cds_service.feedback import FeedbackError, FeedbackItem, OverrideReason, parse_feedback

WHEN = "2026-03-02T10:15:00Z"
NOT_A_TIME = (
    "feedback[0].outcomeTimestamp: must be an ISO 8601 date-time such as 2026-01-31T09:00:00Z "
    "(UTC when it has no offset)"
)


def item(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "card": "9a6c2b7e-3f0d-4c55-9d61-7d5b1b0c2a11",
        "outcome": "overridden",
        "outcomeTimestamp": WHEN,
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not ...}


def refused(body: object) -> str:
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(body)
    return str(caught.value)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "the body: expected an object, got a list"),
        ("feedback", "the body: expected an object, got a string"),
        (None, "the body: expected an object, got null"),
        ({}, "the body: 'feedback' is missing"),
        ({"feedback": {"card": "x"}}, "feedback: expected a list, got an object"),
        ({"feedback": "x"}, "feedback: expected a list, got a string"),
        ({"feedback": []}, "feedback: must not be empty"),
        ({"feedback": [42]}, "feedback[0]: expected an object, got a number"),
        ({"feedback": [item(card=...)]}, "feedback[0]: 'card' is missing"),
        ({"feedback": [item(card="")]}, "feedback[0].card: must be a non-blank string"),
        ({"feedback": [item(card="   ")]}, "feedback[0].card: must be a non-blank string"),
        ({"feedback": [item(card=17)]}, "feedback[0].card: expected a string, got a number"),
        ({"feedback": [item(outcome=...)]}, "feedback[0]: 'outcome' is missing"),
        (
            {"feedback": [item(outcome="ignored")]},
            "feedback[0].outcome: 'ignored' is not one of 'accepted', 'overridden'",
        ),
        (
            {"feedback": [item(outcome="Accepted")]},
            "feedback[0].outcome: 'Accepted' is not one of 'accepted', 'overridden'",
        ),
        ({"feedback": [item(outcomeTimestamp=...)]}, "feedback[0]: 'outcomeTimestamp' is missing"),
        (
            {"feedback": [item(outcomeTimestamp="yesterday")]},
            NOT_A_TIME,
        ),
        (
            {"feedback": [item(outcomeTimestamp="2026-03-02")]},
            NOT_A_TIME,
        ),
        (
            {"feedback": [item(outcomeTimestamp=1767225600)]},
            NOT_A_TIME,
        ),
        (
            {"feedback": [item(outcomeTimestamp="2026-02-30T10:15:00Z")]},
            "feedback[0].outcomeTimestamp: '2026-02-30T10:15:00Z' is not a real date and time",
        ),
        (
            {"feedback": [item(outcomeTimestamp="2026-03-02T25:15:00Z")]},
            "feedback[0].outcomeTimestamp: '2026-03-02T25:15:00Z' is not a real date and time",
        ),
        (
            {"feedback": [item(outcomeTimestamp="9999-12-31T23:59:59-23:59")]},
            "feedback[0].outcomeTimestamp: '9999-12-31T23:59:59-23:59' is not a real date and time",
        ),
        (
            {"feedback": [item(outcomeTimestamp="2026-03-02T10:15:00Z\n")]},
            NOT_A_TIME,
        ),
        (
            {"feedback": [item(outcome="accepted")]},
            "feedback[0]: an 'accepted' outcome needs acceptedSuggestions",
        ),
        (
            {"feedback": [item(outcome="accepted", acceptedSuggestions=[])]},
            "feedback[0].acceptedSuggestions: an 'accepted' outcome needs at least one accepted suggestion",
        ),
        (
            {"feedback": [item(outcome="accepted", acceptedSuggestions={"id": "s"})]},
            "feedback[0].acceptedSuggestions: expected a list, got an object",
        ),
        (
            {"feedback": [item(outcome="accepted", acceptedSuggestions=["s-1"])]},
            "feedback[0].acceptedSuggestions[0]: expected an object, got a string",
        ),
        (
            {"feedback": [item(outcome="accepted", acceptedSuggestions=[{"uuid": "s-1"}])]},
            "feedback[0].acceptedSuggestions[0]: 'id' is missing",
        ),
        (
            {"feedback": [item(outcome="accepted", acceptedSuggestions=[{"id": 5}])]},
            "feedback[0].acceptedSuggestions[0].id: expected a string, got a number",
        ),
        (
            {"feedback": [item(overrideReason="patient declined")]},
            "feedback[0].overrideReason: expected an object, got a string",
        ),
        (
            {"feedback": [item(overrideReason={"reason": "declined"})]},
            "feedback[0].overrideReason.reason: expected an object, got a string",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"display": "Patient declined"}})]},
            "feedback[0].overrideReason.reason: 'code' is missing",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"code": ""}})]},
            "feedback[0].overrideReason.reason.code: must be a non-blank string",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"code": "x", "system": 3}})]},
            "feedback[0].overrideReason.reason.system: expected a string, got a number",
        ),
        (
            {"feedback": [item(overrideReason={"userComment": ["no"]})]},
            "feedback[0].overrideReason.userComment: expected a string, got a list",
        ),
        ({"feedback": [item()] * 1001}, "feedback: at most 1000 entries are accepted in one request"),
        (
            {"feedback": [item(), item(card="9a6c\u0000")]},
            "feedback[1].card: must not contain the NUL character (U+0000)",
        ),
        (
            {"feedback": [item(outcome="accepted", acceptedSuggestions=[{"id": "a"}, {"id": "b\u0000"}])]},
            "feedback[0].acceptedSuggestions[1].id: must not contain the NUL character (U+0000)",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"code": "x", "display": "Declined\u0000"}})]},
            "feedback[0].overrideReason.reason.display: must not contain the NUL character (U+0000)",
        ),
    ],
)
def test_each_invalid_body_gets_a_specific_reason(body: object, reason: str) -> None:
    assert refused(body).startswith(reason)


def test_the_first_bad_item_is_named() -> None:
    body = {"feedback": [item(), item(), item(outcome="maybe"), item(card=...)]}
    assert refused(body).startswith("feedback[2].outcome:")


def test_a_missing_field_is_reported_before_the_accepted_only_rule() -> None:
    assert refused({"feedback": [{"outcome": "accepted"}]}) == "feedback[0]: 'card' is missing"


def test_reasons_do_not_echo_large_values() -> None:
    reason = refused({"feedback": [item(outcome="x" * 10_000)]})
    assert len(reason) < 200


def test_the_sandbox_shape_reason_without_display_is_accepted() -> None:
    body = {
        "feedback": [
            {
                "card": "4e0f3d4a-5b2e-4a6e-9d7c-1f2a3b4c5d6e",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "already-addressed", "system": "https://example.org/override-reasons"},
                    "userComment": "Ordered last week",
                },
                "outcomeTimestamp": "2026-03-02T10:15:00.123Z",
            }
        ]
    }
    [parsed] = parse_feedback(body)
    assert parsed == FeedbackItem(
        card="4e0f3d4a-5b2e-4a6e-9d7c-1f2a3b4c5d6e",
        outcome="overridden",
        outcome_timestamp=datetime(2026, 3, 2, 10, 15, 0, 123000, tzinfo=UTC),
        override_reason=OverrideReason(
            code="already-addressed", system="https://example.org/override-reasons"
        ),
    )


def test_an_accepted_item_keeps_its_suggestion_ids_sorted_and_once() -> None:
    body = {
        "feedback": [item(outcome="accepted", acceptedSuggestions=[{"id": "b"}, {"id": "a"}, {"id": "b"}])]
    }
    [parsed] = parse_feedback(body)
    assert parsed.accepted_suggestions == ("a", "b")
    assert parsed.override_reason is None


def test_a_timestamp_without_an_offset_is_utc_as_cds_hooks_2_defines_it() -> None:
    """Clients that write datetime.utcnow().isoformat() send no offset; refused, their feedback was lost."""
    [parsed] = parse_feedback({"feedback": [item(outcomeTimestamp="2026-03-02T10:15:00")]})
    assert parsed.outcome_timestamp == datetime(2026, 3, 2, 10, 15, tzinfo=UTC)


def test_offsets_are_normalised_to_utc() -> None:
    [parsed] = parse_feedback({"feedback": [item(outcomeTimestamp="2026-03-02t12:15:00.5+02:00")]})
    assert parsed.outcome_timestamp == datetime(2026, 3, 2, 10, 15, 0, 500000, tzinfo=UTC)
    assert parsed.outcome_timestamp.utcoffset() == timedelta(0)
    assert parsed.outcome_timestamp == datetime(
        2026, 3, 2, 12, 15, 0, 500000, tzinfo=timezone(timedelta(hours=2))
    )


def test_a_reason_with_display_and_unknown_members_is_accepted() -> None:
    body = {
        "feedback": [
            item(
                overrideReason={
                    "reason": {"code": "declined", "system": "urn:x", "display": "Patient declined"}
                },
                extension={"org.example.ehr": {"screen": "orders"}},
            )
        ],
        "extension": {"org.example.ehr": True},
    }
    [parsed] = parse_feedback(body)
    assert parsed.override_reason == OverrideReason("declined", "urn:x", "Patient declined")


def test_an_override_reason_on_an_accepted_card_is_not_kept() -> None:
    body = {
        "feedback": [
            item(
                outcome="accepted",
                acceptedSuggestions=[{"id": "s"}],
                overrideReason={"reason": {"code": "x"}},
            )
        ]
    }
    assert parse_feedback(body)[0].override_reason is None


def test_an_outcome_more_than_a_day_ahead_is_refused_and_local_time_sent_as_utc_is_not() -> None:
    """A mistyped year would stand for the card's latest outcome for ever; a clock off by hours must not
    lose feedback."""
    ahead = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert refused({"feedback": [item(outcomeTimestamp=ahead)]}) == (
        f"feedback[0].outcomeTimestamp: {ahead!r} lies more than a day in the future: an outcome is "
        "reported after it happens"
    )
    soon = datetime.now(UTC) + timedelta(hours=14)
    (parsed,) = parse_feedback({"feedback": [item(outcomeTimestamp=soon.strftime("%Y-%m-%dT%H:%M:%SZ"))]})
    assert parsed.outcome_timestamp == soon.replace(microsecond=0)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"feedback": [item(card="9a6c\n")]},
            "feedback[0].card: must not contain the control character U+000A",
        ),
        (
            {"feedback": [item(outcome="accepted", acceptedSuggestions=[{"id": "a\x9b2J"}])]},
            "feedback[0].acceptedSuggestions[0].id: must not contain the control character U+009B",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"code": "x\n\nb12-iron-order-sign\n  all  999"}})]},
            "feedback[0].overrideReason.reason.code: must not contain the control character U+000A",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"code": "x", "system": "urn:x\x1b]0;pwned\x07"}})]},
            "feedback[0].overrideReason.reason.system: must not contain the control character U+001B",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"code": "x", "display": "Declined\x1b[2J"}})]},
            "feedback[0].overrideReason.reason.display: must not contain the control character U+001B",
        ),
        (
            {"feedback": [item(overrideReason={"reason": {"code": "x", "display": "Declined\t\x00"}})]},
            "feedback[0].overrideReason.reason.display: must not contain the NUL character (U+0000)",
        ),
    ],
)
def test_control_characters_that_fhir_does_not_allow_are_refused(body: object, reason: str) -> None:
    """They were stored as sent and printed in the operator's report: a code with line breaks forged
    lines of its table, escape sequences drove the terminal. A FHIR code, uri or id holds none; a
    string (a Coding's display) only tab, line feed and carriage return."""
    assert refused(body) == reason


def test_a_display_may_hold_the_line_breaks_and_tabs_of_a_fhir_string() -> None:
    display = "Declined,\r\n\tsee note"
    body = {"feedback": [item(overrideReason={"reason": {"code": "x", "display": display}})]}
    (parsed,) = parse_feedback(body)
    assert parsed.override_reason == OverrideReason("x", None, display)


def test_a_comment_that_is_not_kept_is_not_checked() -> None:
    body = {"feedback": [item(overrideReason={"reason": {"code": "x"}, "userComment": "line\nbreak\x1b"})]}
    assert parse_feedback(body)[0].override_reason == OverrideReason("x")


def cpu_seconds_to_refuse(body: object) -> tuple[float, str]:
    import time

    started = time.process_time()
    reason = refused(body)
    return time.process_time() - started, reason


def test_an_array_far_over_its_limit_is_refused_without_validating_each_entry() -> None:
    """jsonschema reports every error before the first is chosen: a 5 MB body of 2.6 million entries
    took two minutes of CPU to refuse (200,000 here: about 9 s), and 450,000 suggestions in one item 8 s."""
    spent, reason = cpu_seconds_to_refuse({"feedback": [1] * 200_000})
    assert reason == "feedback: at most 1000 entries are accepted in one request"
    assert spent < 0.5
    many = item(outcome="accepted", acceptedSuggestions=[{"id": "s"}] * 450_000)
    spent, reason = cpu_seconds_to_refuse({"feedback": [item(), many]})
    assert reason == "feedback[1].acceptedSuggestions: at most 100 entries are accepted in one request"
    assert spent < 0.5


def test_a_problem_in_an_earlier_item_is_still_named_first() -> None:
    many = item(outcome="accepted", acceptedSuggestions=[{"id": "s"}] * 5_000)
    assert refused({"feedback": [item(outcome="maybe"), many]}).startswith("feedback[0].outcome:")
    assert refused({"feedback": [many, item(outcome="maybe")]}).startswith("feedback[0].acceptedSuggestions:")


def test_a_request_holds_at_most_5000_accepted_suggestions_in_all() -> None:
    """Within the per-item (100) and per-request (1,000) limits a body of 100,000 suggestions took 5.6 s
    of CPU to validate, holding the GIL that the worker's hook calls need."""

    def batch(per_item: int) -> dict[str, Any]:
        suggestions = [{"id": f"s{i}"} for i in range(per_item)]
        items = [item(card=f"c{n}", outcome="accepted", acceptedSuggestions=suggestions) for n in range(1000)]
        return {"feedback": items}

    assert len(parse_feedback(batch(5))) == 1000
    spent, reason = cpu_seconds_to_refuse(batch(100))
    assert reason == (
        "feedback: at most 5000 accepted suggestions (all items together) are accepted in one request, "
        "not 100000; send fewer items per request"
    )
    assert spent < 0.5
