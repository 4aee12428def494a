"""Cards, suggestions and actions: the one place the response's invariants are enforced.

Whatever a rule returns, the JSON that leaves the service has a uuid on every card and suggestion, a
summary under 140 characters, a valid indicator, a topic Coding, a valid `selectionBehavior` whenever there
are suggestions (and at most one recommended one with "at-most-one"), override reasons with a display, and
no null or empty value anywhere.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.clinical.findings import Finding, Proposal

log = logging.getLogger(__name__)

TOPIC_SYSTEM = "urn:b12-iron-cds:card-topic"
OVERRIDE_REASON_SYSTEM = "urn:b12-iron-cds:override-reason"
SUMMARY_LIMIT = 139
INDICATORS = ("info", "warning", "critical")
SELECTION_BEHAVIORS = ("at-most-one", "any")

# Same system as a site's own reasons, so every Coding a client echoes back in feedback is qualified.
DEFAULT_OVERRIDE_REASONS: tuple[Mapping[str, str], ...] = tuple(
    {"system": OVERRIDE_REASON_SYSTEM, "code": code, "display": display}
    for code, display in (
        ("already-addressed", "Already addressed"),
        ("patient-declined", "Patient declined"),
        ("not-clinically-relevant", "Not clinically relevant for this patient"),
        ("data-inaccurate", "Results or medication list are inaccurate"),
    )
)


class CardError(ValueError):
    """A finding cannot be turned into a valid card (a bug in a rule, never the caller's fault)."""


@dataclass(frozen=True)
class CardStyle:
    """Site-level presentation: override reasons offered on every card, and where rule docs live."""

    override_reasons: tuple[Mapping[str, str], ...] = DEFAULT_OVERRIDE_REASONS
    rules_doc_url: str | None = None


def parse_override_reasons(raw: Any) -> tuple[Mapping[str, str], ...]:
    """A site's own override reasons (the `overrideReasons` list of the site config): code + display."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("overrideReasons must be a non-empty list of {code, display[, system]} objects")
    reasons = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"overrideReasons[{index}] must be an object")
        code, display = item.get("code"), item.get("display")
        if not (isinstance(code, str) and code.strip() and isinstance(display, str) and display.strip()):
            raise ValueError(f"overrideReasons[{index}] needs a non-empty code and display")
        system = item.get("system", OVERRIDE_REASON_SYSTEM)
        if not isinstance(system, str) or not system.strip():
            raise ValueError(f"overrideReasons[{index}].system must be a non-empty string")
        reasons.append({"system": system, "code": code, "display": display})
    return tuple(reasons)


def find_empty_values(value: Any, path: str = "") -> list[str]:
    """Paths of every null, empty string, empty list or empty object (the standard forbids them)."""
    found: list[str] = []
    if value is None or value == "" or value == [] or value == {}:
        return [path or "/"]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(find_empty_values(item, f"{path}/{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(find_empty_values(item, f"{path}/{index}"))
    return found


def _holds_empty(value: Any) -> bool:
    """Whether `find_empty_values` would find anything, without building a path for every value (a card
    holds a hundred or so, and a path is needed only for the rare card that fails)."""
    if isinstance(value, dict):
        return not value or any(map(_holds_empty, value.values()))
    if isinstance(value, list):
        return not value or any(map(_holds_empty, value))
    return value is None or value == ""


def _new_uuid() -> str:
    """A random (version 4) UUID from the process's generator, not os.urandom.

    Card and suggestion uuids only have to be unique, not secret; uuid4() makes a system call per uuid,
    which showed as a tenth of a served call's CPU. `random` reseeds itself in every forked worker.
    """
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _suggestion(proposal: Proposal) -> dict[str, Any]:
    actions = []
    for action in proposal.actions:
        item: dict[str, Any] = {"type": action.type, "description": action.description}
        if action.type in ("create", "update"):
            if not action.resource:
                raise CardError(f"a {action.type} action needs a resource")
            item["resource"] = action.resource
        elif action.type == "delete":
            if not action.resource_id:
                raise CardError("a delete action needs a resourceId")
            item["resourceId"] = action.resource_id
        else:
            raise CardError(f"unknown action type {action.type!r}")
        actions.append(item)
    if not actions:
        raise CardError(f"suggestion {proposal.label!r} has no actions")
    suggestion: dict[str, Any] = {"label": proposal.label, "uuid": _new_uuid(), "actions": actions}
    if proposal.is_recommended:
        suggestion["isRecommended"] = True
    return suggestion


def _summary(finding: Finding) -> str:
    summary = " ".join(finding.summary.split())
    if len(summary) <= SUMMARY_LIMIT:
        return summary
    log.warning("summary of topic %s is %d characters; shortened", finding.topic, len(summary))
    return summary[: SUMMARY_LIMIT - 1].rsplit(" ", 1)[0] + "…"


def _check_selection(finding: Finding) -> None:
    """A client that does not know the selectionBehavior "MUST treat the card as an error", and only
    with "any" may more than one suggestion be recommended (CDS Hooks 2.0, Card and Suggestion)."""
    behavior = finding.selection_behavior
    if behavior not in SELECTION_BEHAVIORS:
        raise CardError(
            f"topic {finding.topic}: selectionBehavior {behavior!r} is not one of {SELECTION_BEHAVIORS}"
        )
    if behavior == "at-most-one" and sum(p.is_recommended for p in finding.proposals) > 1:
        raise CardError(f"topic {finding.topic}: more than one suggestion recommended with at-most-one")


def card_from_finding(finding: Finding, style: CardStyle) -> dict[str, Any]:
    """One card, with fresh uuids; raises CardError if the finding cannot make a valid card."""
    if finding.indicator not in INDICATORS:
        raise CardError(f"topic {finding.topic}: indicator {finding.indicator!r} is not one of {INDICATORS}")
    if not finding.summary.strip() or not finding.source_label.strip():
        raise CardError(f"topic {finding.topic}: summary and source label are required")
    source: dict[str, Any] = {
        "label": finding.source_label,
        "topic": {"system": TOPIC_SYSTEM, "code": finding.topic, "display": finding.topic.replace("-", " ")},
    }
    if finding.source_url:
        source["url"] = finding.source_url
    card: dict[str, Any] = {
        "uuid": _new_uuid(),
        "summary": _summary(finding),
        "indicator": finding.indicator,
        "source": source,
    }
    if finding.detail.strip():
        card["detail"] = finding.detail
    if finding.proposals:
        _check_selection(finding)
        card["suggestions"] = [_suggestion(p) for p in finding.proposals]
        card["selectionBehavior"] = finding.selection_behavior
    card["overrideReasons"] = [dict(reason) for reason in style.override_reasons]
    if style.rules_doc_url:
        card["links"] = [
            {
                "label": "How this card decides",
                "url": f"{style.rules_doc_url}#{finding.topic}",
                "type": "absolute",
            }
        ]
    if _holds_empty(card):
        empty = find_empty_values(card)
        raise CardError(f"topic {finding.topic}: empty values at {', '.join(empty[:5])}")
    return card


def cards_response(findings: Iterable[Finding], style: CardStyle) -> dict[str, Any]:
    """The service response: one card per topic (first finding wins), `{"cards": []}` when none."""
    seen: set[str] = set()
    cards = []
    for finding in findings:
        if finding.topic in seen:
            log.warning("second finding for topic %s dropped", finding.topic)
            continue
        seen.add(finding.topic)
        cards.append(card_from_finding(finding, style))
    return {"cards": cards}


def issued_cards(response: Mapping[str, Any]) -> Sequence[tuple[str, str]]:
    """(card uuid, topic) pairs: what the feedback store needs, and nothing about the patient."""
    return [(card["uuid"], card["source"]["topic"]["code"]) for card in response.get("cards", ())]
