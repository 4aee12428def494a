"""EHR text made literal for a card's Markdown ``detail``.

Names and units come from the EHR's records and reach the clinician inside Markdown that the EHR renders
(GitHub-flavoured, as CDS Hooks says). Unescaped, a medicine named ``[renew](https://…)`` or
``![](https://…)`` would render as a link, or as an image fetched from anywhere when the card is opened;
``<…>`` as HTML; ``*`` or ``_`` as emphasis the service never wrote; a bare ``https://…`` or ``www.…`` as a
link; a line break could start a heading or a list item; and a right-to-left override would reverse the
service's own dates and values that follow. An e-mail address is still linked (as ``mailto:``) by GitHub's
renderer whatever is escaped; it fetches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cds_service.fhir.read import clean_label

# What opens inline Markdown in running text: links and images, emphasis, code, raw HTML and autolinks,
# entities, strikethrough and table cells.
_SPECIAL = re.compile(r"([\\`*_\[\]<>&~|])")
# GitHub's extended autolinks, which ignore the escapes above: a backslash before the ":" of a scheme or
# the "." after "www" is the escape GitHub's renderer honours.
_AUTOLINK = re.compile(r"(?i)(https?|ftp)(:)|(www)(\.)")


def literal(text: str) -> str:
    """``text`` as Markdown that shows exactly that text, on one line (``clean_label``: without invisible
    or direction-control characters)."""
    escaped = _SPECIAL.sub(r"\\\1", clean_label(text))
    return _AUTOLINK.sub(lambda m: f"{m[1] or m[3]}\\{m[2] or m[4]}", escaped)


def literal_names(names: Iterable[str]) -> str:
    """Several EHR names, each made literal, comma-separated."""
    return ", ".join(literal(name) for name in names)
