"""The acceptance report: counts from the store shaped into JSON, and that JSON laid out as a table.

Definitions, stated once so the numbers can be trusted:
- issued: cards recorded as issued (each card uuid once);
- accepted / overridden: cards whose latest feedback has that outcome (each card once, however many
  times it was reported);
- acceptanceRate: accepted / (accepted + overridden), the share of answered cards that clinicians
  accepted; null when no card was answered. EHRs do not send feedback for cards nobody acted on, so
  dividing by `issued` would mix "ignored" with "not reported";
- topOverrideReasons: the most frequent override reason codes among the overridden cards. Clients may
  send a reason without its `display` (the CDS Hooks Sandbox does) or without its `system`; a reason
  the cards offered (the site's or the default override reasons) is counted once under the Coding the
  cards offered, display included, whatever display the client echoed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

UNKNOWN_TOPIC = "unknown"
OUTCOMES = ("accepted", "overridden")
TOP_REASONS = 5


class IssuedCount(NamedTuple):
    service_id: str
    topic: str
    count: int


class OutcomeCount(NamedTuple):
    service_id: str
    topic: str | None
    outcome: str
    reason_system: str | None
    reason_code: str | None
    reason_display: str | None
    count: int


def _empty() -> dict[str, Any]:
    return {"issued": 0, "accepted": 0, "overridden": 0, "acceptanceRate": None}


def _rate(counts: dict[str, Any]) -> float | None:
    answered = counts["accepted"] + counts["overridden"]
    return round(counts["accepted"] / answered, 4) if answered else None


OfferedReasons = Mapping[tuple[str | None, str], Mapping[str, str]]
"""(system, code) as a client may echo an override reason -> the Coding the cards offered."""


def offered_reasons(
    offered: Iterable[Mapping[str, str]], own_system: str | None = None
) -> dict[tuple[str | None, str], Mapping[str, str]]:
    """The lookup for `build_report` from override reason Codings as the cards offer them.

    A reason offered without a system, or with the service's own, is found under either: clients echo
    the Coding back with or without the system, and both are the same reason. A reason offered under
    another system (a site's own) is found by its code alone too, the first offered with that code
    winning (a site's reasons come before the defaults): else a client that echoed only the code split
    it in two, one half without its display.
    """
    lookup: dict[tuple[str | None, str], Mapping[str, str]] = {}
    for reason in offered:
        system = reason.get("system")
        systems = {None, own_system} if system in (None, own_system) else {None, system}
        for each in systems:
            lookup.setdefault((each, reason["code"]), reason)
    return lookup


def build_report(
    issued: Iterable[IssuedCount],
    outcomes: Iterable[OutcomeCount],
    since: datetime | None = None,
    offered: OfferedReasons | None = None,
    warnings: Iterable[str] = (),
) -> dict[str, Any]:
    """The report as JSON-ready dicts, services and topics in name order; `warnings` (present only when
    there are any) say why its numbers may not be the whole story."""
    services: dict[str, dict[str, Any]] = {}
    reasons: dict[tuple[str, str], dict[tuple[str | None, str], dict[str, Any]]] = {}
    others: dict[str, int] = {}

    def topic_of(service_id: str, topic: str) -> dict[str, Any]:
        service = services.setdefault(service_id, {**_empty(), "topics": {}})
        return service["topics"].setdefault(topic, {**_empty(), "topOverrideReasons": []})

    for row in issued:
        topic_of(row.service_id, row.topic)["issued"] += row.count
    for row in outcomes:
        if row.outcome not in OUTCOMES:
            # Written by another version of the service or by hand: counted apart, never as a third column
            # of a table whose rate is defined over accepted and overridden only.
            others[str(row.outcome)] = others.get(str(row.outcome), 0) + row.count
            continue
        topic = row.topic or UNKNOWN_TOPIC
        topic_of(row.service_id, topic)[row.outcome] += row.count
        if row.outcome == "overridden" and row.reason_code:
            coding = (offered or {}).get((row.reason_system, row.reason_code), {})
            system = coding.get("system", row.reason_system)
            tally = reasons.setdefault((row.service_id, topic), {}).setdefault(
                (system, row.reason_code),
                {"system": system, "code": row.reason_code, "display": coding.get("display"), "count": 0},
            )
            tally["count"] += row.count
            if row.reason_display and not coding:
                tally.setdefault("displays", {}).setdefault(row.reason_display, 0)
                tally["displays"][row.reason_display] += row.count

    for service_id, service in services.items():
        for topic, counts in service["topics"].items():
            counts["acceptanceRate"] = _rate(counts)
            ranked = sorted(reasons.get((service_id, topic), {}).values(), key=_reason_order)
            counts["topOverrideReasons"] = [_without_nulls(r) for r in ranked[:TOP_REASONS]]
            for field in ("issued", "accepted", "overridden"):
                service[field] += counts[field]
        service["acceptanceRate"] = _rate(service)
        service["topics"] = dict(sorted(service["topics"].items()))
    report: dict[str, Any] = {
        "since": since.isoformat() if since else None,
        "services": dict(sorted(services.items())),
    }
    if others:
        report["otherOutcomes"] = dict(sorted(others.items()))
    if warnings := list(warnings):
        report["warnings"] = warnings
    return report


def _reason_order(reason: dict[str, Any]) -> tuple[int, str, str]:
    return (-reason["count"], reason["code"], reason["system"] or "")


def _without_nulls(reason: dict[str, Any]) -> dict[str, Any]:
    """The reason as reported. A reason the cards did not offer is named by the display clients sent
    most often (ties: the first in code-point order), so the name does not depend on the order in which
    a database returns rows, nor on its collation: SQLite and PostgreSQL give the same report."""
    displays = reason.pop("displays", {})
    if displays and reason["display"] is None:
        reason["display"] = min(displays, key=lambda display: (-displays[display], display))
    return {key: value for key, value in reason.items() if value is not None}


_COLUMNS = ("issued", "accepted", "overridden", "accept %")

# What the table must not print as is: control characters (line breaks and terminal escapes included),
# the line and paragraph separators, and the bidirectional controls that reorder what a terminal shows.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _shown(text: object) -> str:
    """`text` safe for one line of the operator's terminal. Override reasons come from the EHR, and an
    EHR's `"code": "x\\n\\nsome-service\\n  all topics  999 ..."` printed a forged table in the report, as
    `\\x1b` sequences in a display cleared the screen or hid lines; other rows may have been written by
    hand. Each such character is shown as its escape (`\\n`, `\\x1b`, `\\u202e`); JSON output escapes
    them already."""
    return _UNPRINTABLE.sub(lambda found: repr(found.group())[1:-1], str(text))


def format_text(report: dict[str, Any]) -> str:
    """A table per service, one line per topic, then the top override reasons of each topic."""
    since = report.get("since")
    lines = [f"Card feedback {'since ' + since if since else 'for all time'}"]
    lines += [f"Warning: {warning}" for warning in report.get("warnings", ())]
    others = report.get("otherOutcomes") or {}
    if others:
        count = sum(others.values())
        kinds = ", ".join(f"{_shown(outcome)} ×{n}" for outcome, n in others.items())
        item = "feedback item with another outcome" if count == 1 else "feedback items with other outcomes"
        lines.append(f"{count} {item} ({kinds}) {'is' if count == 1 else 'are'} not counted")
    if not report["services"]:
        lines.append("No cards issued and no feedback received in this period.")
        return "\n".join(lines) + "\n"
    for service_id, service in report["services"].items():
        width = max(len("all topics"), *(len(_shown(t)) for t in service["topics"]))
        header = "  " + "topic".ljust(width) + "".join(f"{c:>12}" for c in _COLUMNS)
        lines += ["", _shown(service_id), header]
        for topic, counts in service["topics"].items():
            lines.append(_row(_shown(topic), counts, width))
        lines.append(_row("all topics", service, width))
        for topic, counts in service["topics"].items():
            if counts["topOverrideReasons"]:
                lines.append(f"  top override reasons, {_shown(topic)}:")
                lines += [f"    {r['count']:>6}  {_reason_label(r)}" for r in counts["topOverrideReasons"]]
    return "\n".join(lines) + "\n"


def _row(label: str, counts: dict[str, Any], width: int) -> str:
    rate = counts["acceptanceRate"]
    cells = [str(counts["issued"]), str(counts["accepted"]), str(counts["overridden"])]
    cells.append("-" if rate is None else f"{rate * 100:.1f}")
    return "  " + label.ljust(width) + "".join(f"{cell:>12}" for cell in cells)


def _reason_label(reason: dict[str, Any]) -> str:
    label = _shown(reason["code"])
    if reason.get("display"):
        label += f" ({_shown(reason['display'])})"
    if reason.get("system"):
        label += f"  [{_shown(reason['system'])}]"
    return label
