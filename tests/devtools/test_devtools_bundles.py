"""Loading records and draft orders from files: the three order forms, hook request files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from cds_service.devtools.bundles import (
    BundleError,
    NotABundleError,
    load_draft_orders,
    load_patient_bundle,
    patient_name,
)
from cds_service.devtools.render import render_response, summary_line
from tests.builders import REPO

HOOKS = REPO / "hooks"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _draft(order_id: str | None = "d1", subject: str = "Patient/elsewhere") -> dict:
    draft = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "309594"}]},
        "subject": {"reference": subject},
    }
    if order_id:
        draft["id"] = order_id
    return draft


def _write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_a_single_resource_becomes_a_one_entry_draft_bundle_for_the_patient(tmp_path: Path) -> None:
    drafts = load_draft_orders(_write(tmp_path, "order.json", _draft(order_id=None)), "p7")
    (entry,) = drafts.bundle["entry"]
    order = entry["resource"]
    assert order["id"]
    assert order["subject"] == {"reference": "Patient/p7"}
    assert drafts.selections == (f"MedicationRequest/{order['id']}",)
    assert drafts.bundle["resourceType"] == "Bundle"


def test_a_bundle_keeps_supporting_resources_but_selects_only_orders(tmp_path: Path) -> None:
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "cyanocobalamin"}}
    order = _draft("d2")
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": "urn:uuid:5b9a6c0e-0000-4000-8000-000000000001"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:5b9a6c0e-0000-4000-8000-000000000001", "resource": medication},
            {"resource": order},
        ],
    }
    drafts = load_draft_orders(_write(tmp_path, "orders.json", bundle), "p7")
    kinds = [e["resource"]["resourceType"] for e in drafts.bundle["entry"]]
    assert kinds == ["Medication", "MedicationRequest"]
    assert drafts.selections == ("MedicationRequest/d2",)
    assert drafts.bundle["entry"][1]["resource"]["medicationReference"] == {"reference": "Medication/m1"}
    assert "subject" not in drafts.bundle["entry"][0]["resource"]


def test_a_hook_request_gives_its_draft_orders_and_selections() -> None:
    drafts = load_draft_orders(HOOKS / "order-select-cyanocobalamin.json", "someone")
    request = json.loads((HOOKS / "order-select-cyanocobalamin.json").read_text())
    assert list(drafts.selections) == request["context"]["selections"]
    assert all(e["resource"]["subject"] == {"reference": "Patient/someone"} for e in drafts.bundle["entry"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"resourceType": "Observation", "id": "o"}, "no draft order"),
        ({"hook": "patient-view", "context": {"patientId": "p"}}, "no context.draftOrders"),
        ({"id": "x"}, "no resourceType"),
        ([_draft()], "expected a FHIR resource"),
        ({"resourceType": "Bundle", "type": "transaction", "entry": "nope"}, "Bundle.entry"),
    ],
)
def test_bad_order_files_are_refused_in_one_line(tmp_path: Path, content: object, message: str) -> None:
    with pytest.raises(BundleError) as error:
        load_draft_orders(_write(tmp_path, "order.json", content), "p")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_hook_request_file_replays_with_its_hook_orders_and_records() -> None:
    record = load_patient_bundle(HOOKS / "order-sign.json")
    request = json.loads((HOOKS / "order-sign.json").read_text())
    assert record.hook == "order-sign"
    assert record.patient_id == request["context"]["patientId"]
    assert record.draft_orders is not None
    observations = {
        e["resource"]["id"]
        for key in ("b12IronLabs", "contextLabs")
        for e in request["prefetch"][key].get("entry", [])
    }
    assert observations <= {r["id"] for r in record.resources if r["resourceType"] == "Observation"}


def test_bundles_with_two_patients_or_a_bad_type_are_refused(tmp_path: Path) -> None:
    two = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient", "id": i}} for i in ("a", "b")],
    }
    with pytest.raises(BundleError, match="2 Patients"):
        load_patient_bundle(_write(tmp_path, "two.json", two))
    with pytest.raises(BundleError, match="Bundle type 'history'"):
        load_patient_bundle(_write(tmp_path, "h.json", {"resourceType": "Bundle", "type": "history"}))


def test_bundle_timestamp_is_kept_as_the_reference_day(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": "2025-06-30T10:00:00+02:00",
        "entry": [{"resource": {"resourceType": "Patient", "id": "a"}}],
    }
    record = load_patient_bundle(_write(tmp_path, "b.json", bundle))
    assert record.timestamp is not None and record.timestamp.isoformat() == "2025-06-30T08:00:00+00:00"


def test_json_that_is_neither_a_bundle_nor_a_hook_request_is_told_apart(tmp_path: Path) -> None:
    """Replay passes over such files in folders, so they raise their own kind of error."""
    with pytest.raises(NotABundleError):
        load_patient_bundle(_write(tmp_path, "expectations.json", {"fixture.json": {"topics": []}}))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(BundleError) as error:
        load_patient_bundle(broken)
    assert not isinstance(error.value, NotABundleError)  # reported even in a folder, never passed over
    with pytest.raises(BundleError) as error:
        load_patient_bundle(_write(tmp_path, "b.json", {"resourceType": "Bundle", "type": "collection"}))
    assert not isinstance(error.value, NotABundleError)
    request = json.loads((HOOKS / "order-sign.json").read_text())
    request["context"]["draftOrders"] = {"resourceType": "MedicationRequest"}
    with pytest.raises(BundleError) as error:
        load_patient_bundle(_write(tmp_path, "hook.json", request))
    assert "context.draftOrders" in str(error.value)
    assert not isinstance(error.value, NotABundleError)


def test_patient_name_prefers_official_and_text() -> None:
    assert (
        patient_name(
            {
                "name": [
                    {"use": "nickname", "given": ["Bo"]},
                    {"use": "official", "given": ["Ro", "Al"], "family": "Ek"},
                ]
            }
        )
        == "Ro Al Ek"
    )
    assert patient_name({"name": [{"text": " Dr Ann Lee "}]}) == "Dr Ann Lee"
    assert patient_name({}) == ""


def test_rendering_shows_what_an_ehr_shows() -> None:
    card = {
        "uuid": "u1",
        "summary": "Order ferritin and TSAT in 8 weeks",
        "indicator": "warning",
        "detail": "B12 **138 pg/mL** on 2025-11-03.\n\n- ferritin 184 ng/mL\n- see [BSH 2014](https://example.org/bsh)",
        "source": {"label": "BSH 2014", "topic": {"code": "iron-studies-after-b12"}},
        "selectionBehavior": "at-most-one",
        "suggestions": [
            {
                "label": "Order iron studies",
                "uuid": "s1",
                "isRecommended": True,
                "actions": [
                    {
                        "type": "create",
                        "description": "Ferritin",
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "status": "draft",
                            "code": {"coding": [{"code": "2276-4", "display": "Ferritin"}]},
                        },
                    },
                    {
                        "type": "delete",
                        "description": "Remove the draft",
                        "resourceId": "MedicationRequest/d1",
                    },
                ],
            }
        ],
        "overrideReasons": [{"code": "x", "display": "Already addressed"}],
    }
    styled = render_response({"cards": [card]}, heading="Ann (Patient/a)")
    assert "\x1b[" in styled  # colour for a terminal; click.echo strips it when stdout is not one
    text = click.unstyle(styled)
    for expected in (
        "[WARNING] Order ferritin and TSAT in 8 weeks",
        "B12 138 pg/mL on 2025-11-03.",
        "- ferritin 184 ng/mL",
        "BSH 2014 <https://example.org/bsh>",
        "Suggestions (choose at most one):",
        "Order iron studies",
        "create ServiceRequest [2276-4 Ferritin] (status draft): Ferritin",
        "delete MedicationRequest/d1: Remove the draft",
        "Source: BSH 2014",
        "topic iron-studies-after-b12",
        "Override reasons: Already addressed",
    ):
        assert expected in text, expected
    assert render_response({"cards": []}).endswith("nothing to say for this patient.")
    assert summary_line("Ann (Patient/a)", {"cards": [card, card]}) == (
        "Ann (Patient/a): 2 cards: iron-studies-after-b12 (warning), iron-studies-after-b12 (warning)"
    )
    assert summary_line("Bo", {"cards": []}) == "Bo: no cards"


def test_rendering_shows_the_ehr_s_own_words_without_markdown_escapes() -> None:
    """The cards escape an EHR's names for Markdown (a medicine '[oral] *tablet*' must not become a link or
    emphasis), and the terminal showed the escapes: 'Vitamin B12 \\[oral\\] \\*tablet\\* 1\\_000 mcg', which
    no EHR shows. An escaped '**' closes no emphasis."""
    card = {
        "summary": "B12 is already high",
        "indicator": "warning",
        "detail": "Being ordered: Vitamin B12 \\[oral\\] \\*tablet\\* 1\\_000 mcg, see https\\://x.example.\n\n"
        "- **B12 \\*\\* 1100 pg/mL** on 2025-12-06, and [BSH \\[2014\\]](https://example.org/bsh)",
        "source": {"label": "rules"},
    }
    text = click.unstyle(render_response({"cards": [card]}))
    assert "Being ordered: Vitamin B12 [oral] *tablet* 1_000 mcg, see https://x.example." in text
    assert "- B12 ** 1100 pg/mL on 2025-12-06, and BSH [2014] <https://example.org/bsh>" in text
    assert "\\" not in text


@pytest.mark.parametrize(
    "patient",
    [
        {"name": None},
        {"name": "Ann Lee"},
        {"name": [{"given": None, "family": 5}]},
        {"name": [{"given": "Ann"}]},
    ],
    ids=["name-null", "name-a-string", "given-null", "given-a-string"],
)
def test_patient_name_of_malformed_names_is_empty_not_an_exception(patient: dict) -> None:
    """`"name": null` in a Bundle's Patient raised TypeError in the summary line of a folder replay: a
    traceback after the Bundle had been replayed. A string where a list belongs was read by character."""
    assert patient_name(patient) in ("", "Ann")
    assert patient_name(patient) != "A n n"
