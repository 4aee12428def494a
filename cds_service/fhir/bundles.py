"""Linking the entries of a Bundle the way a FHIR server does when it stores a transaction.

Entries of a transaction Bundle refer to each other by ``fullUrl`` (usually ``urn:uuid:``), a name that
means nothing outside the Bundle. Both the fixture loader (before posting) and the offline replay (with
no server at all) turn those references into the ``Type/id`` the resources are stored under, so they
share this one rule rather than leave it to each server's interpretation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def resolve_full_urls(entries: Iterable[tuple[Any, dict[str, Any]]]) -> None:
    """Rewrite, in place, every reference to an entry's ``fullUrl`` into that entry's ``Type/id``.

    ``entries`` are (fullUrl, resource) pairs. Only a resource with a type and an id can be a target;
    references to anything else are left as they are, for a server to resolve.
    """
    entries = list(entries)
    aliases: dict[str, str] = {}
    for full_url, resource in entries:
        target = stored_as(resource)
        if target and isinstance(full_url, str) and full_url:
            aliases[full_url] = target
    if aliases:
        for _, resource in entries:
            _rewrite_references(resource, aliases)


def stored_as(resource: dict[str, Any]) -> str | None:
    """The ``Type/id`` a resource is stored under; None when it has no type or no id of its own."""
    kind, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(kind, str) and isinstance(rid, str) and rid:
        return f"{kind}/{rid}"
    return None


def _rewrite_references(node: Any, aliases: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in aliases:
            node["reference"] = aliases[ref]
        for value in node.values():
            _rewrite_references(value, aliases)
    elif isinstance(node, list):
        for value in node:
            _rewrite_references(value, aliases)
