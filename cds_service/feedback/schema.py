"""Validate a CDS Hooks 2.0 feedback body into `FeedbackItem`s, or say exactly what is wrong with it.

The JSON Schema (`protocol/schemas/feedback.json`) is the single statement of what is accepted; this
module turns its first error into a sentence that names the item and the field, because the reader of a
400 is an integrator with a log line and nothing else. The free-text `overrideReason.userComment` is
accepted but not kept: it may name the patient, and the store holds no patient data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cds_service.protocol.schemas import load_schema

OUTCOMES = ("accepted", "overridden")


class FeedbackError(ValueError):
    """A feedback body the service refuses; the message is the reason given in the 400."""


@dataclass(frozen=True)
class OverrideReason:
    """The Coding a clinician chose when dismissing a card; `system` and `display` may be absent."""

    code: str
    system: str | None = None
    display: str | None = None


@dataclass(frozen=True)
class FeedbackItem:
    """One validated feedback entry. `outcome_timestamp` is in UTC; suggestion ids are sorted."""

    card: str
    outcome: str
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...] = ()
    override_reason: OverrideReason | None = None


@cache
def _validator() -> Draft202012Validator:
    schema = load_schema("feedback")
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


FUTURE_ALLOWANCE = timedelta(days=1)


def prepare_feedback_validator() -> None:
    """Compile the feedback validator at start rather than on a worker's first feedback call."""
    _validator()


# Accepted suggestions in one request, all its items together. The schema allows 100 per item and 1,000
# items, and jsonschema spends about 60 µs of CPU (holding the GIL, so the worker's hook calls wait too) on
# each: a 1.6 MB body of 100,000 took 5.6 s to validate. Cards carry a few suggestions; 5 per item at the
# largest batch is generous, and bounds validation to about half a second.
MAX_SUGGESTIONS_PER_REQUEST = 5000


@cache
def _limits() -> tuple[int, int]:
    """(items per request, accepted suggestions per item), as the schema states them."""
    schema = load_schema("feedback")
    suggestions = schema["$defs"]["item"]["properties"]["acceptedSuggestions"]
    return schema["properties"]["feedback"]["maxItems"], suggestions["maxItems"]


def _bounded(body: object) -> object:
    """The body to validate, such that validating it costs a bounded time; FeedbackError at once for an
    array too long to be worth validating.

    jsonschema reports every error before the first one can be chosen: a 5 MB `{"feedback": [1, 1, ...]}`
    (2.6 million items) took two minutes of CPU to refuse, and 450,000 suggestions in one item 8 s. An
    array longer than the schema allows is refused now, with the schema's own message; it would be the
    first error reported (an error at an array sorts before those inside it). Suggestions past one more
    than an item's limit are not validated: the limit's error sorts before theirs."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        return body
    most_items, most_suggestions = _limits()
    items = body["feedback"]
    if len(items) > most_items:
        raise FeedbackError(f"feedback: at most {most_items} entries are accepted in one request")
    bounded = []
    total = 0
    for item in items:
        suggestions = item.get("acceptedSuggestions") if isinstance(item, dict) else None
        if isinstance(suggestions, list):
            if len(suggestions) > most_suggestions + 1:
                suggestions = suggestions[: most_suggestions + 1]
                item = {**item, "acceptedSuggestions": suggestions}
            total += len(suggestions)
        bounded.append(item)
    if total > MAX_SUGGESTIONS_PER_REQUEST:
        raise FeedbackError(
            f"feedback: at most {MAX_SUGGESTIONS_PER_REQUEST} accepted suggestions (all items together) are "
            f"accepted in one request, not {total}; send fewer items per request"
        )
    return {**body, "feedback": bounded}


def parse_feedback(body: object) -> list[FeedbackItem]:
    """The feedback items of a request body; raises FeedbackError naming the first problem found."""
    error = min(_validator().iter_errors(_bounded(body)), key=_first_to_report, default=None)
    if error is not None:
        raise FeedbackError(_describe(error))
    return [_item(index, raw) for index, raw in enumerate(body["feedback"])]  # type: ignore[index]


def _first_to_report(error: ValidationError) -> tuple[object, ...]:
    """The first bad item's outermost problem; a missing field before the accepted-only rule."""
    path = tuple((0, step, "") if isinstance(step, int) else (1, 0, str(step)) for step in error.path)
    return (path, "then" in error.absolute_schema_path)


_UUID = re.compile("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _canonical(identifier: str) -> str:
    """A card or suggestion id as the service issued it: a UUID in lower case, anything else as sent.

    UUIDs are case-insensitive on input (RFC 4122) and some EHRs keep them in upper case (SQL Server's
    uniqueidentifier, .NET's "X" formats): such feedback matched no issued card (topic 'unknown'), and the
    same item sent again in lower case was stored and counted a second time."""
    return identifier.lower() if _UUID.fullmatch(identifier) else identifier


# The most bytes a card id and its accepted suggestion ids may take as stored. They are part of the key
# that makes a resent item a duplicate, a unique index, and PostgreSQL refuses an index entry over 2,704
# bytes ("index row size exceeds btree version 4 maximum"): 100 UUID suggestions, which the schema
# allows, were a 503 on PostgreSQL for ever (the EHR resent them, and the batch's other items with them)
# and stored on SQLite. 2,000 leaves room for the service id, outcome and time: about 50 UUIDs.
MAX_KEY_BYTES = 2000


def suggestions_text(suggestions: tuple[str, ...]) -> str:
    """Accepted suggestion ids as the store keeps them (and compares them, to find a resent item)."""
    return json.dumps(list(suggestions))


def _item(index: int, raw: dict[str, Any]) -> FeedbackItem:
    accepted = raw["outcome"] == "accepted"
    suggestions = (
        tuple(sorted({_canonical(s["id"]) for s in raw.get("acceptedSuggestions", ())})) if accepted else ()
    )
    reason = (raw.get("overrideReason") or {}).get("reason")
    _no_controls(f"feedback[{index}].card", raw["card"])
    for position, suggestion in enumerate(raw.get("acceptedSuggestions", ()) if accepted else ()):
        _no_controls(f"feedback[{index}].acceptedSuggestions[{position}].id", suggestion["id"])
    for field in ("code", "system", "display") if reason and not accepted else ():
        where = f"feedback[{index}].overrideReason.reason.{field}"
        _no_controls(where, reason.get(field), allowed=_TEXT_BREAKS if field == "display" else "")
    size = len(_canonical(raw["card"]).encode()) + len(suggestions_text(suggestions).encode())
    if size > MAX_KEY_BYTES:
        raise FeedbackError(
            f"feedback[{index}]: the card id and accepted suggestion ids take {size} bytes as stored; "
            f"at most {MAX_KEY_BYTES} are accepted (about 50 UUIDs)"
        )
    return FeedbackItem(
        card=_canonical(raw["card"]),
        outcome=raw["outcome"],
        outcome_timestamp=_timestamp(index, raw["outcomeTimestamp"]),
        accepted_suggestions=suggestions,
        override_reason=(
            OverrideReason(reason["code"], reason.get("system"), reason.get("display") or None)
            if reason and not accepted
            else None
        ),
    )


# C0 controls, DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# The controls a FHIR string may hold (a Coding's display); a code, a uri or an id holds none.
_TEXT_BREAKS = "\t\n\r"


def _no_controls(where: str, value: str | None, allowed: str = "") -> None:
    """A kept value holds no control character that FHIR does not allow there: a 400, the client's mistake.

    PostgreSQL text cannot hold U+0000: a kept value with one was a 500 there (and stored on SQLite), so
    the same body got different answers from the two stores. Any other was stored and printed in the
    report as sent: an override reason code with line breaks forged lines of the operator's report, and
    escape sequences drove their terminal."""
    if value is None:
        return
    for found in _CONTROL.finditer(value):
        if found.group() == "\x00":
            raise FeedbackError(f"{where}: must not contain the NUL character (U+0000)")
        if found.group() not in allowed:
            raise FeedbackError(f"{where}: must not contain the control character U+{ord(found.group()):04X}")


def _timestamp(index: int, text: str) -> datetime:
    """The schema checked the shape; this checks the calendar (no 2026-02-30), normalises to UTC, and
    refuses a time more than FUTURE_ALLOWANCE ahead: a card's latest outcome is the one with the latest
    time, so a mistyped 2062 would have stood for that card's outcome for ever. The allowance covers a
    clock that is off, or local time sent as UTC (at most 14 hours ahead)."""
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        # CDS Hooks 2.0 calls the field a timestamp "in UTC": one without an offset is UTC, not server time.
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves 9999-12-31 past year 9999
        raise FeedbackError(
            f"feedback[{index}].outcomeTimestamp: {text!r} is not a real date and time"
        ) from None
    if moment > datetime.now(UTC) + FUTURE_ALLOWANCE:
        raise FeedbackError(
            f"feedback[{index}].outcomeTimestamp: {text!r} lies more than a day in the future: an outcome "
            "is reported after it happens"
        )
    return moment


_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}
_EXPECTED = {"object": "an object", "array": "a list", "string": "a string"}


def _location(error: ValidationError) -> str:
    parts = ["body"]
    for step in error.absolute_path:
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    text = "".join(parts)
    return text.removeprefix("body.") if text != "body" else "the body"


def _describe(error: ValidationError) -> str:
    """A one-line reason; never echoes more than a short excerpt of the offending value."""
    where = _location(error)
    custom = error.schema.get("x-reason") if isinstance(error.schema, dict) else None
    keyword = error.validator
    if keyword == "required":
        missing = next((name for name in error.validator_value if name not in error.instance), "?")
        if custom:
            return f"{where}: {custom}"
        return f"{where}: '{missing}' is missing"
    if custom:
        return f"{where}: {custom}"
    if keyword == "type":
        expected = _EXPECTED.get(error.validator_value, error.validator_value)
        return f"{where}: expected {expected}, got {_JSON_TYPES.get(type(error.instance), 'something else')}"
    if keyword == "enum":
        return f"{where}: {_excerpt(error.instance)} is not one of {', '.join(map(repr, OUTCOMES))}"
    if keyword == "minItems":
        return f"{where}: must not be empty"
    if keyword == "maxItems":
        return f"{where}: at most {error.validator_value} entries are accepted in one request"
    if keyword in ("minLength", "pattern"):
        return f"{where}: must be a non-blank string"
    if keyword == "maxLength":
        return f"{where}: longer than {error.validator_value} characters"
    return f"{where}: {error.message[:200]}"


def _excerpt(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
