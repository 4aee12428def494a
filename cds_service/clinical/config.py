"""The clinical configuration: value sets and thresholds, built once at start from a site's config file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.clinical.codes import ValueSets, build_value_sets
from cds_service.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds, load_thresholds


@dataclass(frozen=True)
class ClinicalConfig:
    value_sets: ValueSets = field(default_factory=lambda: build_value_sets(None))
    thresholds: Thresholds = DEFAULT_THRESHOLDS


def load_clinical_config(site: Mapping[str, Any] | None) -> ClinicalConfig:
    """Value sets and thresholds from a site config's ``codes`` and ``thresholds`` sections.

    Other top-level keys belong to other modules and are ignored here. A malformed section raises
    ValueError naming the entry, so a bad deployment fails at start rather than at the first patient.
    """
    if site is None:
        return ClinicalConfig()
    if not isinstance(site, Mapping):
        raise ValueError("the site configuration must be a JSON object")
    return ClinicalConfig(
        value_sets=build_value_sets(site.get("codes")),
        thresholds=load_thresholds(site.get("thresholds")),
    )
