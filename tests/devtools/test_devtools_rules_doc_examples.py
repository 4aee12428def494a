"""The example cards of docs/clinical-rules.md are what the engine says for their fixtures.

Each topic's section shows a card "produced by the engine from a scenario fixture"; clinicians review the
rules from that document, so a rule whose wording or suggestions change must change its example too.
Every example is replayed (fixture, hook and clock as its heading names them, the order file from
fhir_fixtures/expectations.json) and each line it quotes must be a line of the real card: the summary and
indicator, every line of the detail it shows, and every suggestion with its actions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cds_service.cli import main
from tests.builders import REPO

DOC = REPO / "docs" / "clinical-rules.md"
FIXTURES = REPO / "fhir_fixtures"
_HEADING = re.compile(
    r"Example \(fixture `(?P<fixture>[^`]+)`, (?P<hook>[a-z-]+), now (?P<day>\d{4}-\d\d-\d\d)\):"
)
_SUMMARY = re.compile(r"\*\*\[(?P<indicator>\w+)\] (?P<summary>.+)\*\*")


def _examples() -> list[tuple[str, str, str, list[str]]]:
    """(fixture, hook, day, the quoted lines without their '> ') for every example of the document."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    found = []
    for index, line in enumerate(lines):
        heading = _HEADING.fullmatch(line.strip())
        if not heading:
            continue
        quoted = []
        for following in lines[index + 1 :]:
            if following.startswith(">"):
                quoted.append(following[1:].strip())
            elif quoted:
                break
        found.append((heading["fixture"], heading["hook"], heading["day"], [q for q in quoted if q]))
    return found


EXAMPLES = _examples()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CDS_FEEDBACK_DB", str(tmp_path / "feedback.sqlite3"))
    monkeypatch.setenv("CDS_STATE_DB", str(tmp_path / "state.sqlite3"))


def test_the_document_has_an_example_for_every_topic_it_describes() -> None:
    topics = re.findall(r"^## ([a-z0-9]+(?:-[a-z0-9]+)+)$", DOC.read_text(encoding="utf-8"), re.M)
    assert len(topics) >= 9
    assert len(EXAMPLES) == len(topics), (topics, [e[0] for e in EXAMPLES])


def _suggestion_lines(card: dict) -> list[str]:
    lines = []
    for suggestion in card.get("suggestions", []):
        recommended = "*Suggestion (recommended):*" if suggestion.get("isRecommended") else "*Suggestion:*"
        lines.append(f"{recommended} {suggestion['label']}")
        lines.extend(f"- {a['type']}: {a['description']}" for a in suggestion.get("actions", []))
    return lines


@pytest.mark.parametrize(("fixture", "hook", "day", "quoted"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_each_example_card_is_what_the_engine_says(
    fixture: str, hook: str, day: str, quoted: list[str]
) -> None:
    args = ["replay", str(FIXTURES / fixture), "--hook", hook, "--now", f"{day}T09:00:00Z", "--json"]
    if hook != "patient-view":
        expectations = json.loads((FIXTURES / "expectations.json").read_text(encoding="utf-8"))
        args += ["--order", str(FIXTURES / expectations["fixtures"][fixture]["order"])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cards = orjson.loads(result.stdout)["cards"]

    heading = _SUMMARY.fullmatch(quoted[0])
    assert heading, f"{fixture}: the example does not start with **[indicator] summary**: {quoted[0]!r}"
    card = next((c for c in cards if c["summary"] == heading["summary"]), None)
    assert card is not None, (
        f"docs/clinical-rules.md, example of {fixture}: no card reads {heading['summary']!r}; "
        f"the engine says {[c['summary'] for c in cards]}"
    )
    assert card["indicator"] == heading["indicator"], fixture

    suggestions = _suggestion_lines(card)
    detail = {line.strip() for line in card.get("detail", "").splitlines() if line.strip()}
    stale = [line for line in quoted[1:] if line not in detail and line not in suggestions]
    assert not stale, (
        f"docs/clinical-rules.md, example of {fixture}: these lines are not in the card the engine gives "
        f"now; update the example:\n"
        + "\n".join(stale)
        + "\n--- the card's detail:\n"
        + card.get("detail", "")
        + "\n--- its suggestions:\n"
        + "\n".join(suggestions)
    )
    quoted_suggestions = [line for line in quoted if line.startswith("*Suggestion")]
    assert len(quoted_suggestions) == len(card.get("suggestions", [])), (
        f"docs/clinical-rules.md, example of {fixture}: it shows {len(quoted_suggestions)} suggestion(s), "
        f"the card has {len(card.get('suggestions', []))}:\n" + "\n".join(suggestions)
    )
