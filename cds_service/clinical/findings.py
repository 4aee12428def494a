"""What a rule concludes, in clinical terms; the protocol layer turns findings into CDS Hooks cards.

A finding carries its own wording (summary and detail are written beside the rule that makes them) and
the FHIR resources it proposes, but no card uuid, no JSON shape and nothing of the CDS Hooks wire format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

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
    return findings
