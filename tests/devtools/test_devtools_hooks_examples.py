"""Every hooks/ example answers 200 from a served instance, carries the prefetch the templates ask for,
and is documented in hooks/README.md."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import requests

from cds_service.clinical.engine import load_clinical_config
from cds_service.config import Settings
from cds_service.devtools.bundles import load_patient_bundle
from cds_service.devtools.offline import OfflineFhirServer
from cds_service.protocol.prefetch import render_template
from cds_service.services import build_services
from tests.builders import FIXED_NOW, REPO, SERVICE_FOR_HOOK
from tests.devtools.checks import assert_spec_response
from tests.devtools.served import serving_service

HOOKS = REPO / "hooks"
EXAMPLES = sorted(HOOKS.glob("*.json"))
REQUIRED = ("patient-view.json", "order-select-cyanocobalamin.json", "order-sign.json")


def test_the_required_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= set(REQUIRED)


def test_every_example_answers_200_with_cards_from_a_served_instance(tmp_path: Path) -> None:
    settings = Settings(
        auth="off",
        feedback_db=str(tmp_path / "feedback.sqlite3"),
        state_db=str(tmp_path / "state.sqlite3"),
        now=FIXED_NOW,
    )
    documented = readme_topics()
    with serving_service(lambda _: settings) as base:
        for path in EXAMPLES:
            body = json.loads(path.read_text(encoding="utf-8"))
            response = requests.post(
                f"{base}/cds-services/{SERVICE_FOR_HOOK[body['hook']]}",
                data=path.read_bytes(),
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            assert response.status_code == 200, f"{path.name}: {response.status_code} {response.text[:300]}"
            answer = response.json()
            assert_spec_response(answer)
            shown = {card["source"]["topic"]["code"] for card in answer["cards"]}
            assert shown >= documented[path.name], (
                f"{path.name}: README says {documented[path.name]}, got {shown}"
            )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_prefetch_is_what_the_templates_return(path: Path) -> None:
    """Each key of the service's templates is there, and holds exactly what a FHIR server would return
    for that query over the example's own record (so no resource is filed under the wrong key)."""
    body = json.loads(path.read_text(encoding="utf-8"))
    templates = build_services(load_clinical_config({}))[SERVICE_FOR_HOOK[body["hook"]]].prefetch
    assert set(body["prefetch"]) == set(templates)
    server = OfflineFhirServer(load_patient_bundle(path).resources)
    for key, template in templates.items():
        expected = server.query(render_template(template, body["context"]))
        sent = body["prefetch"][key]
        if expected is None or expected.get("resourceType") != "Bundle":
            assert sent == expected, key
            continue
        assert sent["type"] == "searchset" and sent["total"] == expected["total"], key
        got = [
            (e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
            for e in sent.get("entry", [])
        ]
        want = [
            (e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
            for e in expected.get("entry", [])
        ]
        assert got == want, key


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_consistent(path: Path) -> None:
    body = json.loads(path.read_text(encoding="utf-8"))
    context = body["context"]
    assert body["prefetch"]["patient"]["id"] == context["patientId"]
    if body["hook"] != "patient-view":
        drafts = [e["resource"] for e in context["draftOrders"]["entry"]]
        assert all(d["status"] == "draft" for d in drafts)
        assert all(d["subject"]["reference"] == f"Patient/{context['patientId']}" for d in drafts)
    if body["hook"] == "order-select":
        references = {f"{d['resourceType']}/{d['id']}" for d in drafts}
        assert context["selections"] and set(context["selections"]) <= references
    for key, value in body["prefetch"].items():
        for entry in (value or {}).get("entry", []):
            subject = entry["resource"].get("subject")
            if subject:
                assert subject["reference"] == f"Patient/{context['patientId']}", (path.name, key)


def readme_topics() -> dict[str, set[str]]:
    """The topics hooks/README.md says each example shows (backticked codes in its "what it shows" cell)."""
    topics: dict[str, set[str]] = {}
    for line in (HOOKS / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 4 and cells[1].startswith("`") and cells[1].endswith(".json`"):
            topics[cells[1].strip("`")] = set(re.findall(r"`([a-z0-9]+(?:-[a-z0-9]+)+)`", cells[3]))
    return topics


def test_readme_names_at_least_one_topic_per_example() -> None:
    documented = readme_topics()
    assert set(documented) == {p.name for p in EXAMPLES}
    assert all(documented.values()), documented


def test_readme_documents_every_example_with_curl_and_replay() -> None:
    readme = (HOOKS / "README.md").read_text(encoding="utf-8")
    for path in EXAMPLES:
        body = json.loads(path.read_text(encoding="utf-8"))
        rows = [line for line in readme.splitlines() if f"`{path.name}`" in line and line.startswith("|")]
        assert rows, f"{path.name} is not in the hooks/README.md table"
        row = rows[0]
        assert f"cds-services/{SERVICE_FOR_HOOK[body['hook']]}" in row
        assert f"cds-service replay hooks/{path.name}" in row


def test_examples_are_what_make_examples_writes_today(monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed files match their generator run against today's templates (rerun it if not)."""
    spec = importlib.util.spec_from_file_location("make_examples", HOOKS / "make_examples.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_examples", generator)  # dataclasses look their module up
    spec.loader.exec_module(generator)
    templates = generator.prefetch_templates(load_clinical_config({}))
    written = {
        example.file: generator.hook_request_for(example, templates) for example in generator.examples()
    }
    assert set(written) == {p.name for p in EXAMPLES}
    for name, request in written.items():
        committed = json.loads((HOOKS / name).read_text(encoding="utf-8"))
        assert committed == request, f"hooks/{name} is stale: run python hooks/make_examples.py"
