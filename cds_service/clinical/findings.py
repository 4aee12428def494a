"""What a rule concludes, in clinical terms; the protocol layer turns findings into CDS Hooks cards.

A finding carries its own wording (summary and detail are written beside the rule that makes them) and
the FHIR resources it proposes, but no card uuid, no JSON shape and nothing of the CDS Hooks wire format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

Indicator = Literal["info", "warning", "critical"]
ActionType = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class ProposedAction:
    """One change to the patient's orders: create or update a resource, or delete a draft by reference."""

    type: ActionType
    description: str
    resource: dict[str, Any] | None = None
    resource_id: str | None = None


@dataclass(frozen=True)
class Proposal:
    """A set of actions the clinician can accept together (one card suggestion)."""

    label: str
    actions: tuple[ProposedAction, ...]
    is_recommended: bool = False


@dataclass(frozen=True)
class Finding:
    """One topic's conclusion about one patient at one moment."""

    topic: str
    indicator: Indicator
    summary: str
    detail: str
    source_label: str
    source_url: str | None = None
    proposals: tuple[Proposal, ...] = ()
    selection_behavior: Literal["at-most-one", "any"] = "any"


# The shape `findings_to_json` writes. Replicas of two builds share run-ahead entries in Redis during a
# rolling upgrade, and the version number need not change between builds; the shape is part of the key,
# so one build never reads the other's findings.
JSON_FORMAT: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (cls.__name__, tuple(f.name for f in fields(cls))) for cls in (Finding, Proposal, ProposedAction)
)


def findings_to_json(findings: list[Finding]) -> list[dict[str, Any]]:
    """Plain JSON for caching findings between hooks (run-ahead); card uuids are made fresh on render."""
    return [asdict(finding) for finding in findings]


def findings_from_json(items: list[dict[str, Any]]) -> list[Finding]:
    """The inverse of `findings_to_json`; KeyError, TypeError or ValueError for anything it did not write."""
    findings = []
    for item in items:
        proposals = tuple(
            Proposal(
                label=p["label"],
                actions=tuple(ProposedAction(**a) for a in p["actions"]),
                is_recommended=p["is_recommended"],
            )
            for p in item["proposals"]
        )
        findings.append(Finding(**{**item, "proposals": proposals}))
    return _well_typed(findings)


def _well_typed(findings: list[Finding]) -> list[Finding]:
    """``findings`` if every field holds what the rules put there; TypeError otherwise.

    A stored entry comes from Redis, which another build or program may have written: a field of another
    type passed the constructors above and failed only when the cards were rendered, as a 500."""
    for finding in findings:
        texts = (finding.topic, finding.summary, finding.detail, finding.source_label)
        if not all(isinstance(text, str) for text in texts) or not isinstance(finding.source_url, str | None):
            raise TypeError("a finding's text is not a string")
        if finding.indicator not in get_args(Indicator) or finding.selection_behavior not in (
            "at-most-one",
            "any",
        ):
            raise TypeError("a finding's indicator or selection behaviour is not one the rules use")
        for proposal in finding.proposals:
            if not isinstance(proposal.label, str) or not isinstance(proposal.is_recommended, bool):
                raise TypeError("a proposal's label or recommendation is of another type")
            for action in proposal.actions:
                if not (
                    action.type in get_args(ActionType)
                    and isinstance(action.description, str)
                    and isinstance(action.resource, dict | None)
                    and isinstance(action.resource_id, str | None)
                ):
                    raise TypeError(
                        "an action's type, description, resource or resource id is of another type"
                    )
    return findings
