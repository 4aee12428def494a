"""Cards: whatever a rule returns, what leaves the service is valid CDS Hooks 2.0."""

from __future__ import annotations

import pytest

from cds_service.clinical.findings import Finding, Proposal, ProposedAction
from cds_service.protocol.cards import (
    CardError,
    CardStyle,
    card_from_finding,
    cards_response,
    find_empty_values,
    issued_cards,
    parse_override_reasons,
)
from tests.builders import assert_valid_response

ORDER = {
    "resourceType": "ServiceRequest",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/p"},
}


def finding(**changes) -> Finding:
    values = {
        "topic": "iron-studies-after-b12",
        "indicator": "info",
        "summary": "Order ferritin and transferrin saturation 8 weeks after starting B12.",
        "detail": "B12 started on 2026-01-10.",
        "source_label": "B12–iron rules (Solmaz 2015)",
        "proposals": (Proposal("Order iron studies", (ProposedAction("create", "Ferritin", ORDER),), True),),
    }
    values.update(changes)
    return Finding(**values)


def test_card_has_every_invariant() -> None:
    response = cards_response([finding()], CardStyle(rules_doc_url="https://docs.example.org/rules"))
    assert_valid_response(response)
    card = response["cards"][0]
    assert card["selectionBehavior"] == "any"
    assert card["suggestions"][0]["isRecommended"] is True
    assert card["source"]["topic"]["code"] == "iron-studies-after-b12"
    assert all(reason["display"] for reason in card["overrideReasons"])
    assert {reason["system"] for reason in card["overrideReasons"]} == {"urn:b12-iron-cds:override-reason"}
    assert card["links"][0]["url"] == "https://docs.example.org/rules#iron-studies-after-b12"
    assert issued_cards(response) == [(card["uuid"], "iron-studies-after-b12")]


def test_uuids_are_fresh_every_render() -> None:
    first = card_from_finding(finding(), CardStyle())
    second = card_from_finding(finding(), CardStyle())
    assert first["uuid"] != second["uuid"]
    assert first["suggestions"][0]["uuid"] != second["suggestions"][0]["uuid"]


def test_long_summary_is_cut_below_140() -> None:
    card = card_from_finding(finding(summary="word " * 60), CardStyle())
    assert len(card["summary"]) < 140
    assert card["summary"].endswith("…")


def test_one_card_per_topic() -> None:
    response = cards_response([finding(), finding(indicator="warning")], CardStyle())
    assert len(response["cards"]) == 1
    assert response["cards"][0]["indicator"] == "info"


def test_no_findings_is_an_empty_card_list() -> None:
    assert cards_response([], CardStyle()) == {"cards": []}


def test_no_suggestions_means_no_selection_behavior_and_no_links_unless_configured() -> None:
    card = card_from_finding(finding(proposals=(), detail=" "), CardStyle())
    assert "suggestions" not in card and "selectionBehavior" not in card and "links" not in card
    assert "detail" not in card
    assert_valid_response({"cards": [card]})


@pytest.mark.parametrize(
    "bad",
    [
        {"indicator": "hard-stop"},
        {"summary": "  "},
        {"source_label": ""},
        {"proposals": (Proposal("Nothing", ()),)},
        {"proposals": (Proposal("Create", (ProposedAction("create", "x"),)),)},
        {"proposals": (Proposal("Delete", (ProposedAction("delete", "x"),)),)},
        {"proposals": (Proposal("Create", (ProposedAction("create", "x", {**ORDER, "note": []}),)),)},
        {"selection_behavior": "all"},
        {
            "selection_behavior": "at-most-one",
            "proposals": (
                Proposal("Now", (ProposedAction("create", "Ferritin now", ORDER),), True),
                Proposal("Later", (ProposedAction("create", "Ferritin later", ORDER),), True),
            ),
        },
    ],
)
def test_invalid_findings_are_refused(bad: dict) -> None:
    with pytest.raises(CardError):
        card_from_finding(finding(**bad), CardStyle())


def test_several_recommended_suggestions_are_allowed_with_any() -> None:
    both = tuple(Proposal(label, (ProposedAction("create", label, ORDER),), True) for label in ("A", "B"))
    card = card_from_finding(finding(proposals=both), CardStyle())
    assert [s["isRecommended"] for s in card["suggestions"]] == [True, True]
    assert_valid_response({"cards": [card]})


def test_delete_action_carries_the_reference() -> None:
    delete = Proposal(
        "Cancel the B12 order",
        (ProposedAction("delete", "Remove draft", resource_id="MedicationRequest/d1"),),
    )
    card = card_from_finding(finding(proposals=(delete,)), CardStyle())
    assert card["suggestions"][0]["actions"] == [
        {"type": "delete", "description": "Remove draft", "resourceId": "MedicationRequest/d1"}
    ]


def test_find_empty_values() -> None:
    assert find_empty_values({"a": [1, {"b": ""}], "c": None, "d": {}, "e": 0, "f": False}) == [
        "/a/1/b",
        "/c",
        "/d",
    ]


def test_site_override_reasons() -> None:
    reasons = parse_override_reasons([{"code": "pharmacy", "display": "Pharmacy will review"}])
    card = card_from_finding(finding(), CardStyle(override_reasons=reasons))
    assert card["overrideReasons"] == [
        {"system": "urn:b12-iron-cds:override-reason", "code": "pharmacy", "display": "Pharmacy will review"}
    ]
    for bad in ([], [{"code": "x"}], ["x"], [{"code": "x", "display": "y", "system": ""}], {"code": "x"}):
        with pytest.raises(ValueError):
            parse_override_reasons(bad)
