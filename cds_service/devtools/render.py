"""Cards for a terminal, laid out the way an EHR shows them to a clinician.

The point is review: a developer or a clinician reading replayed cards should see what the EHR would
show — the indicator first, the summary, the detail, the suggested actions, where the advice comes from
and the override reasons — without reading JSON. Colour goes through ``click.style``; ``click.echo``
drops it when the output is not a terminal, so piped output stays plain text.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import click

_INDICATOR_STYLE = {
    "critical": {"fg": "red", "bold": True},
    "warning": {"fg": "yellow", "bold": True},
    "info": {"fg": "blue", "bold": True},
}
_WIDTH = 100
_INDENT = "    "


def card_topic(card: Mapping[str, Any]) -> str:
    """The card's topic code (what reports key on), or '-' when the card has none."""
    topic = (card.get("source") or {}).get("topic") or {}
    return str(topic.get("code") or "-")


def render_response(response: Mapping[str, Any], heading: str | None = None) -> str:
    """The whole response as text: a heading line, then each card, then any system actions."""
    cards = response.get("cards") or []
    lines: list[str] = []
    if heading:
        lines.append(click.style(heading, bold=True))
    if not cards:
        lines.append("No cards: the service has nothing to say for this patient.")
    for index, card in enumerate(cards, start=1):
        lines.extend(render_card(card, index, len(cards)))
    for action in response.get("systemActions") or []:
        lines.append(f"System action: {_action_text(action)}")
    return "\n".join(lines)


def render_card(card: Mapping[str, Any], index: int = 1, count: int = 1) -> list[str]:
    """One card as lines of text."""
    indicator = str(card.get("indicator", "info"))
    badge = click.style(f"[{indicator.upper()}]", **_INDICATOR_STYLE.get(indicator, {}))
    lines = ["", f"{badge} {click.style(str(card.get('summary', '')), bold=True)}  ({index}/{count})"]
    detail = card.get("detail")
    if isinstance(detail, str) and detail.strip():
        lines.extend(_markdown_lines(detail))
    suggestions = card.get("suggestions") or []
    if suggestions:
        behaviour = card.get("selectionBehavior")
        how = {"at-most-one": "choose at most one", "any": "choose any"}.get(str(behaviour), str(behaviour))
        lines.append(f"{_INDENT}Suggestions ({how}):")
        for suggestion in suggestions:
            lines.extend(_suggestion_lines(suggestion))
    for link in card.get("links") or []:
        lines.append(
            f"{_INDENT}Link: {link.get('label', '')} <{link.get('url', '')}> ({link.get('type', '')})"
        )
    lines.append(f"{_INDENT}{_source_text(card.get('source') or {})}")
    reasons = [r.get("display") or r.get("code") for r in card.get("overrideReasons") or []]
    if reasons:
        lines.append(f"{_INDENT}Override reasons: " + "; ".join(str(r) for r in reasons))
    return lines


def summary_line(name: str, response: Mapping[str, Any]) -> str:
    """One line per patient for a multi-Bundle replay: who, how many cards, which topics."""
    cards: Sequence[Mapping[str, Any]] = response.get("cards") or []
    if not cards:
        return f"{name}: no cards"
    topics = ", ".join(f"{card_topic(c)} ({c.get('indicator', '?')})" for c in cards)
    return f"{name}: {len(cards)} card{'s' if len(cards) != 1 else ''}: {topics}"


# What the renderer reads of inline Markdown, left to right: a backslash escape (CommonMark: any ASCII
# punctuation character), strong emphasis, a link. The cards escape the EHR's own words (clinical/markdown.py)
# so that a medicine named "B12 [oral] *tablet*" stays text in the EHR; an escaped "**" closes no emphasis.
_INLINE = re.compile(
    r"\\([!-/:-@\[-`{-~])"
    r"|\*\*((?:\\.|[^\\])+?)\*\*|__((?:\\.|[^\\])+?)__"
    r"|\[((?:\\.|[^\\\]])+)\]\(([^)\s]+)\)"
)


def _unescaped(text: str) -> str:
    """Markdown's emphasis and links read and its escapes undone: the text an EHR shows."""

    def plain(match: re.Match[str]) -> str:
        escaped, strong, underscored, label, url = match.groups()
        if escaped is not None:
            return escaped
        if label is not None:
            return f"{_unescaped(label)} <{url}>"
        return _unescaped(strong if strong is not None else underscored)

    return _INLINE.sub(plain, text)


def _markdown_lines(markdown: str) -> list[str]:
    """Markdown made readable in a terminal: emphasis markers dropped, escapes undone, paragraphs and lists
    wrapped."""
    lines: list[str] = []
    for raw in markdown.strip().splitlines():
        text = _unescaped(raw.rstrip())
        if not text.strip():
            lines.append("")
            continue
        if text.lstrip().startswith("|"):
            lines.append(_INDENT + text.strip())
            continue
        bullet = re.match(r"^(\s*)([-*+]|\d+\.)\s+", text)
        if bullet:
            lead = _INDENT + bullet.group(1) + bullet.group(2) + " "
            body = text[bullet.end() :]
            lines.extend(
                textwrap.wrap(body, _WIDTH, initial_indent=lead, subsequent_indent=" " * len(lead)) or [lead]
            )
        else:
            lines.extend(
                textwrap.wrap(text.strip(), _WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT)
            )
    return lines


def _suggestion_lines(suggestion: Mapping[str, Any]) -> list[str]:
    star = click.style("★ ", fg="green") if suggestion.get("isRecommended") else "  "
    lines = [f"{_INDENT}  {star}{suggestion.get('label', '')}"]
    for action in suggestion.get("actions") or []:
        lines.append(f"{_INDENT}      - {_action_text(action)}")
    return lines


def _action_text(action: Mapping[str, Any]) -> str:
    kind = str(action.get("type", "?"))
    description = action.get("description") or ""
    resource = action.get("resource")
    target = ""
    if isinstance(resource, dict):
        target = str(resource.get("resourceType", "resource"))
        codes = _codes_of(resource)
        if codes:
            target += f" {codes}"
        if resource.get("status"):
            target += f" (status {resource['status']})"
    elif action.get("resourceId"):
        target = str(action["resourceId"])
    text = f"{kind} {target}".strip()
    return f"{text}: {description}" if description else text


def _codes_of(resource: Mapping[str, Any]) -> str:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return ""
    shown = [
        f"{c.get('code')} {c.get('display', '')}".strip()
        for c in codings
        if isinstance(c, dict) and c.get("code")
    ]
    return "[" + "; ".join(shown) + "]" if shown else ""


def _source_text(source: Mapping[str, Any]) -> str:
    text = f"Source: {source.get('label', '(no label)')}"
    if source.get("url"):
        text += f" <{source['url']}>"
    topic = source.get("topic") or {}
    if topic.get("code"):
        text += f"  · topic {topic['code']}"
    return text
