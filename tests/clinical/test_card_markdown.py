"""EHR text in a card's Markdown detail renders as that text, never as links, images, HTML or formatting.

Rendered with a real CommonMark parser (markdown-it-py, with GitHub's tables and strikethrough), the
flavour the standard names for ``detail``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from cds_service.clinical.rules.common import literal, literal_names
from tests.clinical.builders import by_topic, condition, med, obs, run

MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])

HOSTILE = (
    "Vitamin B12 [renew here](https://evil.example/renew) ![](https://evil.example/pixel.png) "
    "<img src=x onerror=alert(1)> **STOP NOW** _urgent_ `code` ~~dose~~ &lt;b&gt; a | b\n# Heading\n- item"
)


def rendered(markdown: str) -> str:
    return MARKDOWN.render(markdown)


def test_a_hostile_name_renders_as_its_own_text() -> None:
    html = rendered(f"- B12 product(s): {literal(HOSTILE)}.")
    assert "<a " not in html and "<img" not in html and "<strong>" not in html and "<em>" not in html
    assert "<code>" not in html and "<s>" not in html and "<h1>" not in html and "<table>" not in html
    assert html == f"<ul>\n<li>B12 product(s): {escapeHtml(' '.join(HOSTILE.split()))}.</li>\n</ul>\n"


# Markdown's punctuation often enough to build links, emphasis and HTML; any other character too.
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("*_[]()<>!&`~|#-+=:;./\\ \nab1"),
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    )
)


@given(TEXT)
def test_any_text_renders_exactly_as_written(text: str) -> None:
    """One paragraph whose only content is the text itself (whitespace runs read as one space)."""
    shown = " ".join(("x " + text).split())
    assert rendered("x " + literal(text)) == f"<p>{escapeHtml(shown)}</p>\n"


def test_plain_names_are_left_readable() -> None:
    """Escaping only what opens Markdown keeps ordinary names as they were, for any reader of the JSON."""
    names = ["Cyanocobalamin 1000 MCG/ML Injectable Solution", "Ferrous sulfate 325 MG (65 mg iron) tablet"]
    assert literal_names(names) == ", ".join(names)


def test_a_supplement_named_with_markdown_reaches_the_card_as_text() -> None:
    statement = med({"text": HOSTILE}, 200, kind="MedicationStatement")
    finding = by_topic(run(obs("b12", 1250, 10), statement), "elevated-b12-supplement-review")
    html = rendered(finding.detail)
    assert "<a " not in html and "<img" not in html and "<h1>" not in html
    assert escapeHtml(" ".join(HOSTILE.split())) in html


@pytest.mark.parametrize("name", ["[pernicious anaemia](https://evil.example)", "<b>pernicious anaemia</b>"])
def test_a_diagnosis_named_with_markdown_reaches_the_card_as_text(name: str) -> None:
    on_injections = (obs("b12", 120, 3100), obs("b12", 1400, 10), obs("ferritin", 12, 10))
    findings = run(
        *on_injections, med({"text": "cyanocobalamin injection"}, 3000), condition("84027009", text=name)
    )
    finding = by_topic(findings, "iron-deficiency-with-high-b12")
    html = rendered(finding.detail)
    assert "<a " not in html and "<b>" not in html
    assert escapeHtml(name) in html
