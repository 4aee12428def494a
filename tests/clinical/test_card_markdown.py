"""EHR text in a card's Markdown detail renders as that text, never as links, images, HTML or formatting.

Rendered by cmark-gfm (GitHub's own renderer, with its extensions: autolinks, tables, strikethrough), the
flavour CDS Hooks names for ``detail``, with raw HTML let through so that any that escaped would show.
"""

from __future__ import annotations

import html
import re

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options
from hypothesis import given
from hypothesis import strategies as st

from cds_service.clinical.markdown import literal, literal_names
from cds_service.fhir.read import clean_label
from tests.clinical.builders import by_topic, condition, med, obs, run

HOSTILE = (
    "Vitamin B12 [renew here](https://evil.example/renew) ![](https://evil.example/pixel.png) "
    "<img src=x onerror=alert(1)> **STOP NOW** _urgent_ `code` ~~dose~~ &lt;b&gt; a | b "
    "https://evil.example/bare www.evil.example/bare\n# Heading\n- item"
)
# GitHub links an e-mail address whatever is escaped (markdown.py says so); it fetches nothing.
MAILTO = re.compile(r'<a href="(?:mailto|xmpp):[^"]*">(.*?)</a>')


def rendered(markdown: str) -> str:
    return cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE)


def as_text(text: str) -> str:
    """How cmark writes plain text into HTML."""
    return html.escape(text, quote=False).replace('"', "&quot;")


def test_a_hostile_name_renders_as_its_own_text() -> None:
    page = rendered(f"- B12 product(s): {literal(HOSTILE)}.")
    for tag in ("<a ", "<img", "<strong>", "<em>", "<code>", "<del>", "<h1>", "<table>"):
        assert tag not in page
    assert page == f"<ul>\n<li>B12 product(s): {as_text(' '.join(HOSTILE.split()))}.</li>\n</ul>\n"


def test_bidirectional_controls_are_dropped() -> None:
    """A right-to-left override in a name would reverse the dates and values the service writes after it."""
    assert literal("Cyano\u202ecobalamin\u2066 x\u2069\u200f") == "Cyanocobalamin x"


# Markdown's punctuation and link openers often enough to build links, emphasis and HTML; any other
# character too.
TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            [*"*_[]()<>!&`~|#-+=:;./\\@ \nabw1", "https://", "www.", "ftp://", "\u202e", "&amp;", "<b>"]
        ),
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    )
).map("".join)


@given(TEXT)
def test_any_text_renders_exactly_as_written(text: str) -> None:
    """One paragraph whose only content is the text itself as ``clean_label`` leaves it (one line, no
    invisible or direction-control characters), e-mail links aside."""
    expected = f"x {clean_label(text)}".strip()
    assert MAILTO.sub(r"\1", rendered("x " + literal(text))) == f"<p>{as_text(expected)}</p>\n"


def test_plain_names_are_left_readable() -> None:
    """Escaping only what opens Markdown keeps ordinary names as they were, for any reader of the JSON."""
    names = ["Cyanocobalamin 1000 MCG/ML Injectable Solution", "Ferrous sulfate 325 MG (65 mg iron) tablet"]
    assert literal_names(names) == ", ".join(names)


def test_a_supplement_named_with_markdown_reaches_the_card_as_text() -> None:
    statement = med({"text": HOSTILE}, 200, kind="MedicationStatement")
    finding = by_topic(run(obs("b12", 1250, 10), statement), "elevated-b12-supplement-review")
    page = rendered(finding.detail)
    assert "<a " not in page and "<img" not in page and "<h1>" not in page
    assert as_text(" ".join(HOSTILE.split())) in page


@pytest.mark.parametrize("name", ["[pernicious anaemia](https://evil.example)", "<b>pernicious anaemia</b>"])
def test_a_diagnosis_named_with_markdown_reaches_the_card_as_text(name: str) -> None:
    on_injections = (obs("b12", 120, 3100), obs("b12", 1400, 10), obs("ferritin", 12, 10))
    findings = run(
        *on_injections, med({"text": "cyanocobalamin injection"}, 3000), condition("84027009", text=name)
    )
    finding = by_topic(findings, "iron-deficiency-with-high-b12")
    page = rendered(finding.detail)
    assert "<a " not in page and "<b>" not in page
    assert as_text(name) in page


@pytest.mark.parametrize("comparator", ["![](https://evil.example/p.png)", "1", 5, ""])
def test_a_comparator_outside_r4s_four_makes_the_result_unusable(comparator: object) -> None:
    """A comparator is written before the number on the card: "1" would show 2000 as 12000."""
    odd = obs("b12", None, 10, valueQuantity={"value": 2000, "comparator": comparator, "unit": "pg/mL"})
    assert run(odd) == []
    assert run(obs("b12", None, 10, valueQuantity={"value": 2000, "comparator": ">", "unit": "pg/mL"}))
