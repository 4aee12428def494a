"""The clinical engine: resources → PatientRecord → every rule → findings, most important first.

Which topics a hook shows follows from ``focus_orders``: ``None`` (patient-view) lets every rule look at
the whole record; a list (order-select: the selected drafts; order-sign: all drafts) lets only the rules
about orders speak, and only about those orders. Other draft orders still count as "already ordered".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from cds_service.clinical.config import ClinicalConfig, load_clinical_config
from cds_service.clinical.findings import Finding
from cds_service.clinical.record import MedicationEntry, PatientRecord, build_record
from cds_service.clinical.rules import (
    b12_not_for_high_ferritin,
    borderline_b12_check_mma,
    combined_b12_iron_deficiency,
    elevated_b12_no_supplement,
    elevated_b12_supplement_review,
    ferritin_inflammation_check_tsat,
    iron_deficiency_after_b12,
    iron_deficiency_with_high_b12,
    iron_studies_after_b12,
)

__all__ = ["ClinicalConfig", "evaluate", "load_clinical_config"]

Rule = Callable[[PatientRecord, list[MedicationEntry] | None], Finding | None]

# Most important first: deficiencies found, then orders that may be wrong, then tests to add.
RULES: tuple[tuple[str, Rule], ...] = (
    (combined_b12_iron_deficiency.TOPIC, combined_b12_iron_deficiency.check),
    (iron_deficiency_after_b12.TOPIC, iron_deficiency_after_b12.check),
    (iron_deficiency_with_high_b12.TOPIC, iron_deficiency_with_high_b12.check),
    (b12_not_for_high_ferritin.TOPIC, b12_not_for_high_ferritin.check),
    (elevated_b12_supplement_review.TOPIC, elevated_b12_supplement_review.check),
    (iron_studies_after_b12.TOPIC, iron_studies_after_b12.check),
    (elevated_b12_no_supplement.TOPIC, elevated_b12_no_supplement.check),
    (ferritin_inflammation_check_tsat.TOPIC, ferritin_inflammation_check_tsat.check),
    (borderline_b12_check_mma.TOPIC, borderline_b12_check_mma.check),
)
TOPICS: tuple[str, ...] = tuple(topic for topic, _ in RULES)

# A topic that fires silences these: one card tells the story instead of two that half-repeat it.
REPLACES: dict[str, frozenset[str]] = {
    # With a deficient B12 beside the ferritin it carries the combined card's work-up (see its module).
    iron_deficiency_after_b12.TOPIC: frozenset(
        {
            combined_b12_iron_deficiency.TOPIC,
            iron_deficiency_with_high_b12.TOPIC,
            iron_studies_after_b12.TOPIC,
            elevated_b12_supplement_review.TOPIC,
            elevated_b12_no_supplement.TOPIC,
            ferritin_inflammation_check_tsat.TOPIC,
        }
    ),
    # Each card that calls an inflamed ferritin iron deficiency carries the TSAT that would confirm it.
    # A card that shows the iron deficiency carries the iron-studies recheck (iron_studies_after_b12.carried).
    combined_b12_iron_deficiency.TOPIC: frozenset(
        {ferritin_inflammation_check_tsat.TOPIC, iron_studies_after_b12.TOPIC}
    ),
    b12_not_for_high_ferritin.TOPIC: frozenset(
        {iron_studies_after_b12.TOPIC, elevated_b12_supplement_review.TOPIC}
    ),
    iron_deficiency_with_high_b12.TOPIC: frozenset(
        {
            elevated_b12_supplement_review.TOPIC,
            elevated_b12_no_supplement.TOPIC,
            ferritin_inflammation_check_tsat.TOPIC,
            iron_studies_after_b12.TOPIC,
        }
    ),
    iron_studies_after_b12.TOPIC: frozenset({ferritin_inflammation_check_tsat.TOPIC}),
}
_INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}


def _focus(record: PatientRecord, focus_orders: Sequence[dict] | None) -> list[MedicationEntry] | None:
    if focus_orders is None:
        return None
    wanted_ids = {
        (o.get("resourceType"), o.get("id"))
        for o in focus_orders
        if isinstance(o, dict) and isinstance(o.get("id"), str) and isinstance(o.get("resourceType"), str)
    }
    wanted_objects = {id(o) for o in focus_orders}
    return [
        entry
        for entry in record.drafts
        if id(entry.resource) in wanted_objects or (entry.resource_type, entry.resource_id) in wanted_ids
    ]


def evaluate(
    resources: Iterable[dict],
    *,
    patient_id: str,
    now: datetime,
    draft_orders: Sequence[dict] = (),
    focus_orders: Sequence[dict] | None = None,
    config: ClinicalConfig,
) -> list[Finding]:
    """Findings for one patient at ``now``: at most one per topic, warnings before information."""
    record = build_record(resources, patient_id=patient_id, now=now, config=config, draft_orders=draft_orders)
    focus = _focus(record, focus_orders)
    findings: list[Finding] = []
    silenced: set[str] = set()
    for topic, rule in RULES:
        if topic in silenced:
            continue
        finding = rule(record, focus)
        if finding is not None:
            findings.append(finding)
            silenced |= REPLACES.get(topic, frozenset())
    findings = [f for f in findings if f.topic not in silenced]
    findings.sort(key=lambda f: _INDICATOR_RANK[f.indicator])
    return findings
