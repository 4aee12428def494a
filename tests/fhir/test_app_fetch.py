"""The service fetching what the prefetch lacks, end to end: the real app, sekmet, a delaying proxy.

Every example hook request in ``hooks/`` is replayed twice: once as written (with prefetch), once with
the prefetch removed and the same resources on sekmet. The cards must be the same. The proxy between the
service and sekmet counts what reached the server and can slow or stall it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.devtools.bundles import load_patient_bundle
from cds_service.devtools.offline import OfflineFhirServer
from cds_service.fhir.client import FhirClient
from cds_service.fhir.memory import PROCESS_MEMORY, Reservation
from cds_service.loader import to_transaction
from cds_service.observability import CallTrace
from cds_service.protocol.prefetch import render_template
from cds_service.protocol.request import RequestError
from cds_service.run_ahead import RunAheadCache
from cds_service.services import build_handler
from tests.builders import REPO, SERVICE_FOR_HOOK, SMART_PATIENTS, assert_valid_response, cyanocobalamin_draft
from tests.live import serving
from tests.support.delay_proxy import DelayProxy
from tests.support.fhir_server import SekmetServer
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

HOOK_EXAMPLES = sorted((REPO / "hooks").glob("*.json"))
PATIENT_RECORDS = [
    path
    for path in sorted((REPO / "fhir_fixtures").glob("*.json"))
    if json.loads(path.read_text(encoding="utf-8")).get("resourceType") == "Bundle"
] + sorted(SMART_PATIENTS.glob("*.json"))[:2]
PREFETCH_KEYS = (
    "patient",
    "b12IronLabs",
    "contextLabs",
    "medicationRequests",
    "medicationStatements",
    "medicationAdministrations",
    "conditions",
    "serviceRequests",
)
TOKEN = "ehr-access-token-for-tests"


@pytest.fixture
def proxy(fhir_server: SekmetServer) -> Iterator[DelayProxy]:
    with DelayProxy(fhir_server.origin) as running:
        yield running


@pytest.fixture
def fhir_base(proxy: DelayProxy) -> str:
    return proxy.url("/fhir")


@pytest.fixture
def settings(settings: Settings, fhir_base: str) -> Settings:
    """The shared test settings, with the proxied sekmet as the one allowed FHIR server."""
    return settings.with_overrides(allowed_fhir_servers=(fhir_base,), fhir_budget_ms=3000)


def _example(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _prefetch_resources(prefetch: dict[str, Any]) -> list[dict]:
    resources = []
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            resources.extend(
                e["resource"] for e in value.get("entry", []) if isinstance(e.get("resource"), dict)
            )
        else:
            resources.append(value)
    return resources


def _put_on_server(server: SekmetServer, resources: list[dict]) -> None:
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    server.load(to_transaction(collection))


def _without_prefetch(body: dict[str, Any], fhir_base: str, *, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["hookInstance"] = str(uuid.uuid4())
    changed["prefetch"] = {k: v for k, v in body.get("prefetch", {}).items() if k in keep}
    if not changed["prefetch"]:
        del changed["prefetch"]
    changed["fhirServer"] = fhir_base
    return changed


def _with_token(body: dict[str, Any], token: str) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["fhirAuthorization"] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "b12-iron-cds",
    }
    return changed


def _comparable(node: Any) -> Any:
    """Cards without the uuids the service makes up for each response."""
    if isinstance(node, dict):
        return {k: _comparable(v) for k, v in node.items() if k != "uuid"}
    if isinstance(node, list):
        return [_comparable(v) for v in node]
    return node


def _call(client: FlaskClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}", json=body)
    return response.status_code, response.get_json(force=True)


def _assert_cards_response(body: dict[str, Any]) -> None:
    """A valid response; ``{"cards": []}`` is one too (the shared check is for responses with cards)."""
    if body.get("cards"):
        assert_valid_response(body)
    else:
        assert body == {"cards": []}, body


def _diagnostics(outcome: dict[str, Any]) -> str:
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return " ".join(issue.get("diagnostics", "") for issue in outcome["issue"])


@pytest.mark.parametrize("path", HOOK_EXAMPLES, ids=[p.stem for p in HOOK_EXAMPLES])
def test_example_gives_the_same_cards_without_prefetch(
    path: Path, client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    body = _example(path)
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]))

    status_with, with_prefetch = _call(client, body)
    status_without, fetched = _call(client, _without_prefetch(body, fhir_base))

    assert (status_with, status_without) == (200, 200), fetched
    _assert_cards_response(fetched)
    assert with_prefetch["cards"], "every example is written to produce a card (hooks/README.md)"
    assert _comparable(fetched["cards"]) == _comparable(with_prefetch["cards"])
    assert len(proxy.seen) == len(PREFETCH_KEYS), "one request per key, all on the first page"


def _context(hook: str, patient_id: str) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": patient_id}
    if hook == "order-select":
        draft = cyanocobalamin_draft(patient_id=patient_id)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
        context["selections"] = [f"MedicationRequest/{draft['id']}"]
    return context


@pytest.mark.parametrize("path", PATIENT_RECORDS, ids=[p.stem[:40] for p in PATIENT_RECORDS])
def test_patient_record_gives_the_same_cards_without_prefetch(
    path: Path, settings: Settings, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """A fixture patient on sekmet, called once with the prefetch a complete EHR would send (the
    templates answered offline over the same record) and once with none: the same cards."""
    record = load_patient_bundle(path)
    _put_on_server(fhir_server, list(record.resources))
    application = create_app(settings.with_overrides(now=record.timestamp or settings.now))
    try:
        client = application.test_client()
        services = {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}
        for hook in ("patient-view", "order-select"):
            context = _context(hook, record.patient_id)
            queries = {k: render_template(t, context) for k, t in services[hook]["prefetch"].items()}
            prefetch = OfflineFhirServer(record.resources).prefetch(queries)
            base = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
            status_with, with_prefetch = _call(client, {**base, "prefetch": prefetch})
            status_without, fetched = _call(client, {**base, "fhirServer": fhir_base})
            assert (status_with, status_without) == (200, 200), (hook, fetched)
            assert _comparable(fetched["cards"]) == _comparable(with_prefetch["cards"]), hook
    finally:
        application.extensions["cds"]["recorder"].close()
        application.extensions["cds"]["feedback"].close()
    assert len(proxy.seen) == 2 * len(PREFETCH_KEYS)


def test_partial_prefetch_fetches_only_what_is_missing(
    client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    body = _example(REPO / "hooks" / "patient-view-iron-deficiency-after-b12.json")
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]))
    keep = tuple(k for k in PREFETCH_KEYS if k not in ("b12IronLabs", "medicationRequests"))

    status, partial = _call(client, _without_prefetch(body, fhir_base, keep=keep))
    _, full = _call(client, body)

    assert status == 200, partial
    assert _comparable(partial["cards"]) == _comparable(full["cards"])
    assert full["cards"], "the scenario has something to say, so the comparison means something"
    paths = sorted(r.path.split("?")[0] for r in proxy.seen)
    assert paths == ["/fhir/MedicationRequest", "/fhir/Observation"]


def test_searches_longer_than_a_page_are_fetched_whole(
    client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """250 older haemoglobin results push contextLabs past one 200-entry page: the service follows the
    next link and decides on everything, as it does when the EHR sends the whole search."""
    body = _example(REPO / "hooks" / "patient-view.json")
    labs = body["prefetch"]["contextLabs"]
    template = next(e["resource"] for e in labs["entry"] if e["resource"]["id"] == "example-b12-started-hb-1")
    for n in range(250):
        older = copy.deepcopy(template)
        older["id"] = f"older-hb-{n}"
        older["effectiveDateTime"] = f"{2000 + n // 12}-{n % 12 + 1:02d}-10T08:00:00Z"
        labs["entry"].append({"resource": older, "search": {"mode": "match"}})
    labs["total"] = len(labs["entry"])
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]))

    _, full = _call(client, body)
    status, fetched = _call(client, _without_prefetch(body, fhir_base))

    assert status == 200, fetched
    assert full["cards"]
    assert _comparable(fetched["cards"]) == _comparable(full["cards"])
    observation_requests = [r for r in proxy.seen if r.path.startswith("/fhir/Observation")]
    assert len(observation_requests) == 3, "b12IronLabs in one page, contextLabs in two"
    assert len(proxy.seen) == len(PREFETCH_KEYS) + 1


def _topics(cards: list[dict[str, Any]]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in cards]


SUPPLEMENT_FIXTURE = REPO / "fhir_fixtures" / "elevated-b12-supplement-review.json"


def _other_medicines(patient_id: str, count: int) -> list[dict[str, Any]]:
    """Statements of a medicine with nothing to do with B12 or iron, to push others to a later page."""
    return [
        {
            "resourceType": "MedicationStatement",
            "id": f"other-medicine-{n}",
            "status": "active",
            "medicationCodeableConcept": {"text": "Paracetamol 500 mg tablet"},
            "subject": {"reference": f"Patient/{patient_id}"},
            "effectivePeriod": {"start": "2025-01-01"},
        }
        for n in range(count)
    ]


def _older_haemoglobins(patient_id: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Observation",
            "id": f"older-hb-{n}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "effectiveDateTime": f"{1990 + n // 12}-{n % 12 + 1:02d}-10T08:00:00Z",
            "valueQuantity": {
                "value": 13.5,
                "unit": "g/dL",
                "system": "http://unitsofmeasure.org",
                "code": "g/dL",
            },
        }
        for n in range(count)
    ]


def test_a_search_cut_at_the_page_limit_is_read_only_when_newest_first(
    settings: Settings,
    fhir_server: SekmetServer,
    proxy: DelayProxy,
    fhir_base: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a one-page limit, 201 old haemoglobins leave the newest-first contextLabs cut short: read,
    with a warning (what is missing is the oldest). 201 medication statements in no date order may hide
    the supplement that explains the high B12: that key fails and the call is refused with 412."""
    record = load_patient_bundle(SUPPLEMENT_FIXTURE)
    handler = build_handler(
        settings.with_overrides(now=record.timestamp), fhir_client=FhirClient(max_pages=1)
    )
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": _context("patient-view", record.patient_id),
        "fhirServer": fhir_base,
    }
    try:
        _put_on_server(fhir_server, [*_older_haemoglobins(record.patient_id, 201), *record.resources])
        labs_cut = handler.handle("b12-iron-patient-view", body)
        cut_warnings = [r.getMessage() for r in caplog.records if "stopped after 1 pages" in r.getMessage()]
        _put_on_server(fhir_server, _other_medicines(record.patient_id, 201))
        with pytest.raises(RequestError) as refused:
            handler.handle("b12-iron-patient-view", {**body, "hookInstance": str(uuid.uuid4())})
    finally:
        handler.fhir_client.close()

    assert _topics(labs_cut["cards"]) == ["elevated-b12-supplement-review"]
    assert cut_warnings == ["FHIR fetch for contextLabs: stopped after 1 pages; the server has more results"]
    assert refused.value.status == 412
    assert (
        "medicationStatements: more results than the 1 pages read, in no date order" in refused.value.reason
    )
    assert "contextLabs" not in refused.value.reason


def test_a_first_page_in_the_prefetch_is_not_taken_for_the_whole_search(
    settings: Settings, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """The multivitamin that explains a high B12 is on the second page of medicationStatements. Read as
    the whole search, the first page says "no supplement" and asks for a work-up; the service instead
    fetches the key whole from the FHIR server, and refuses with 412 when there is none to ask."""
    record = load_patient_bundle(SUPPLEMENT_FIXTURE)
    resources = [*_other_medicines(record.patient_id, 200), *record.resources]
    _put_on_server(fhir_server, resources)
    application = create_app(settings.with_overrides(now=record.timestamp))
    try:
        client = application.test_client()
        templates = client.get("/cds-services").get_json()["services"][0]["prefetch"]
        context = _context("patient-view", record.patient_id)
        queries = {k: render_template(t, context) for k, t in templates.items()}
        prefetch = OfflineFhirServer(resources).prefetch(queries)
        statements = prefetch["medicationStatements"]
        statements["entry"].sort(key=lambda e: e["resource"]["id"].startswith("fx-"))
        first_page = {
            **statements,
            "entry": statements["entry"][:200],
            "link": [{"relation": "next", "url": f"{fhir_base}?_getpages=first-page-only&_offset=200"}],
        }
        as_if_whole = {key: value for key, value in first_page.items() if key != "link"}
        base = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context}

        status_whole, whole = _call(client, {**base, "prefetch": prefetch})
        assert status_whole == 200, whole
        _, misread = _call(client, {**base, "prefetch": {**prefetch, "medicationStatements": as_if_whole}})
        paged = {**prefetch, "medicationStatements": first_page}
        status_fetched, fetched = _call(client, {**base, "prefetch": paged, "fhirServer": fhir_base})
        status_refused, refused = _call(client, {**base, "prefetch": paged})
    finally:
        application.extensions["cds"]["recorder"].close()
        application.extensions["cds"]["feedback"].close()

    assert _topics(whole["cards"]) == ["elevated-b12-supplement-review"]
    assert _topics(misread["cards"]) == ["elevated-b12-no-supplement"], "the first page alone misleads"
    assert status_fetched == 200, fetched
    assert _comparable(fetched["cards"]) == _comparable(whole["cards"])
    statement_requests = [r for r in proxy.seen if r.path.startswith("/fhir/MedicationStatement")]
    assert len(statement_requests) == 2, "the key fetched whole (two pages of 200), its own query"
    assert len(proxy.seen) == 2, "nothing but the paged key is fetched"
    assert status_refused == 412
    reason = _diagnostics(refused)
    assert "medicationStatements" in reason
    assert "only the first page of a paged search was sent: 200 entries and a next link" in reason


def test_operation_outcome_and_junk_values_are_fetched_again(
    client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    body = _example(REPO / "hooks" / "patient-view.json")
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]))
    _, full = _call(client, body)
    damaged = _without_prefetch(body, fhir_base, keep=PREFETCH_KEYS)
    damaged["prefetch"]["b12IronLabs"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "query timed out"}],
    }
    damaged["prefetch"]["contextLabs"] = "<html><body>502 Bad Gateway</body></html>"

    status, answer = _call(client, damaged)

    assert status == 200, answer
    assert _comparable(answer["cards"]) == _comparable(full["cards"])
    assert sorted(r.path.split("?")[0] for r in proxy.seen) == ["/fhir/Observation", "/fhir/Observation"]


def test_smart_sandbox_patient_without_prefetch(
    client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    path = SMART_PATIENTS / "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json"
    fhir_server.load(to_transaction(json.loads(path.read_text(encoding="utf-8"))))
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": "018f428e-34f6-4707-8009-5ad742f901e7"},
        "fhirServer": fhir_base,
    }
    status, answer = _call(client, body)
    assert status == 200, answer
    _assert_cards_response(answer)
    assert len(proxy.seen) == len(PREFETCH_KEYS)
    assert {r.authorization for r in proxy.seen} == {None}


@pytest.fixture
def token_server(sekmet_factory) -> Iterator[tuple[SekmetServer, DelayProxy]]:
    server = sekmet_factory(tokens=[TOKEN])
    with DelayProxy(server.origin) as proxy:
        yield server, proxy


@pytest.fixture
def token_app(settings: Settings, token_server: tuple[SekmetServer, DelayProxy]) -> Iterator[Flask]:
    _, proxy = token_server
    application = create_app(settings.with_overrides(allowed_fhir_servers=(proxy.url("/fhir"),)))
    yield application
    application.extensions["cds"]["recorder"].close()
    application.extensions["cds"]["feedback"].close()


def test_server_that_demands_a_token(
    token_app: Flask, token_server: tuple[SekmetServer, DelayProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, proxy = token_server
    body = _example(REPO / "hooks" / "patient-view.json")
    _put_on_server(server, _prefetch_resources(body["prefetch"]))
    client = token_app.test_client()
    request = _without_prefetch(body, proxy.url("/fhir"))

    right_status, right = _call(client, _with_token(request, TOKEN))
    none_status, without = _call(client, request)
    wrong_status, wrong = _call(client, _with_token(request, "not-the-token"))

    assert right_status == 200, right
    _assert_cards_response(right)
    assert (none_status, wrong_status) == (412, 412)
    for refusal in (without, wrong):
        reason = _diagnostics(refusal)
        assert "HTTP 401" in reason
        for key in PREFETCH_KEYS:
            assert key in reason
    sent = {r.authorization for r in proxy.seen}
    assert sent == {f"Bearer {TOKEN}", None, "Bearer not-the-token"}
    assert TOKEN not in caplog.text
    assert TOKEN not in json.dumps([right, without, wrong])


def test_a_refusal_names_the_patient_to_the_caller_but_not_in_the_log(
    token_app: Flask, token_server: tuple[SekmetServer, DelayProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """The 412 quotes the failed FHIR URLs (the caller's own data); the INFO log keeps them without ids."""
    caplog.set_level(logging.INFO)
    _, proxy = token_server
    body = _without_prefetch(_example(REPO / "hooks" / "patient-view.json"), proxy.url("/fhir"))
    patient_id = body["context"]["patientId"]
    status, refusal = _call(token_app.test_client(), body)
    assert status == 412
    assert patient_id in _diagnostics(refusal)
    assert "HTTP 401" in caplog.text and "<id>" in caplog.text
    assert patient_id not in caplog.text


def test_a_template_needing_an_absent_optional_field_is_a_412_not_a_400(settings: Settings) -> None:
    """encounterId is optional in order-select: a request without it is valid, and a key whose template
    needs it can be neither prefetched by the EHR nor fetched here, which is a 412 naming the token."""
    handler = build_handler(settings.with_overrides(allowed_fhir_servers=("https://fhir.example.org",)))
    service = handler.services["b12-iron-order-select"]
    handler.services["b12-iron-order-select"] = dataclasses.replace(
        service, prefetch={**service.prefetch, "encounter": "Encounter/{{context.encounterId}}"}
    )
    body = _example(REPO / "hooks" / "order-select-cyanocobalamin.json")
    body["context"].pop("encounterId", None)
    body.pop("prefetch", None)
    body["fhirServer"] = "https://fhir.example.org"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    try:
        with pytest.raises(RequestError) as refused:
            handler.handle("b12-iron-order-select", body)
    finally:
        handler.fhir_client.close()
    assert refused.value.status == 412
    assert "{{context.encounterId}} needs a primitive context field 'encounterId'" in refused.value.reason


def test_server_that_is_down_gives_a_quick_412(settings: Settings) -> None:
    down = f"http://127.0.0.1:{free_port()}/fhir"
    application = create_app(settings.with_overrides(allowed_fhir_servers=(down,)))
    try:
        body = _without_prefetch(_example(REPO / "hooks" / "patient-view.json"), down)
        started = time.monotonic()
        status, answer = _call(application.test_client(), body)
        elapsed = time.monotonic() - started
    finally:
        application.extensions["cds"]["recorder"].close()
        application.extensions["cds"]["feedback"].close()
    assert status == 412
    assert "connection refused" in _diagnostics(answer)
    assert elapsed < settings.fhir_budget_ms / 1000


def test_a_worker_whose_fhir_memory_is_taken_refuses_with_a_412_saying_why(
    client: FlaskClient, fhir_server: SekmetServer, fhir_base: str
) -> None:
    """Answers the worker has no memory left for are a 412 naming each key and why, never a 500; and the
    call gives back all it took, so the next one, with room again, is answered."""
    body = _example(REPO / "hooks" / "patient-view.json")
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]))
    other_calls = Reservation(PROCESS_MEMORY)
    other_calls.take(1, PROCESS_MEMORY.limit)
    try:
        status, refusal = _call(client, _without_prefetch(body, fhir_base))
        assert PROCESS_MEMORY.held == other_calls.amount
    finally:
        other_calls.release()
    assert status == 412
    reason = _diagnostics(refusal)
    assert "not read: the FHIR answers this worker holds at once would need more than its 64 MiB" in reason
    for key in PREFETCH_KEYS:
        assert key in reason
    assert _call(client, _without_prefetch(body, fhir_base))[0] == 200
    assert PROCESS_MEMORY.held == 0


def test_server_not_allowed_is_never_contacted(client: FlaskClient, proxy: DelayProxy) -> None:
    body = _with_token(_example(REPO / "hooks" / "patient-view.json"), TOKEN)
    elsewhere = proxy.url("/other-fhir")
    status, answer = _call(client, _without_prefetch(body, elsewhere))
    assert status == 412
    assert "not one this service is allowed to query" in _diagnostics(answer)
    assert proxy.seen == []


def test_credentials_in_a_refused_fhir_server_are_neither_echoed_nor_logged(
    client: FlaskClient, proxy: DelayProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The request schema lets a fhirServer carry ``user:password@``; the allowlist refuses it, and the
    refusal names the server by where it is, so the password reaches neither the log nor the answer."""
    caplog.set_level(logging.INFO)
    body = _with_token(_example(REPO / "hooks" / "patient-view.json"), TOKEN)
    with_password = proxy.url("/fhir").replace("http://", "http://ehr-user:S3cret-pw@")
    status, answer = _call(client, _without_prefetch(body, with_password))
    assert status == 412
    assert "not one this service is allowed to query" in _diagnostics(answer)
    assert proxy.url("/fhir") in _diagnostics(answer)
    assert "S3cret-pw" not in json.dumps(answer)
    assert "S3cret-pw" not in caplog.text and "ehr-user" not in caplog.text
    assert proxy.seen == []


def test_served_instance_fetches_in_parallel_and_keeps_its_budget(
    settings: Settings, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """Over a real socket: eight keys behind a 200 ms delay take far less than 8 x 200 ms, and a
    stalled server is cut off at the budget with a 412 that says so."""
    body = _example(REPO / "hooks" / "patient-view.json")
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]))
    application = create_app(settings.with_overrides(fhir_budget_ms=600))
    try:
        with serving(application) as base_url:
            url = f"{base_url}/cds-services/{SERVICE_FOR_HOOK['patient-view']}"
            proxy.delay_s = 0.2
            started = time.monotonic()
            slow = requests.post(url, json=_without_prefetch(body, fhir_base), timeout=10)
            slow_elapsed = time.monotonic() - started

            proxy.hang = True
            started = time.monotonic()
            stalled = requests.post(url, json=_without_prefetch(body, fhir_base), timeout=10)
            stalled_elapsed = time.monotonic() - started
            proxy.hang = False
    finally:
        application.extensions["cds"]["recorder"].close()
        application.extensions["cds"]["feedback"].close()

    assert slow.status_code == 200, slow.text
    assert slow_elapsed < len(PREFETCH_KEYS) * 0.2 / 2
    assert stalled.status_code == 412
    assert "timeout after 600 ms" in _diagnostics(stalled.json())
    assert 0.6 <= stalled_elapsed < 0.6 + 0.5


def _ehr_prefetch(templates: dict[str, str], context: dict[str, Any], fhir_base: str) -> dict[str, Any]:
    """What an EHR sends: each prefetch template rendered and run against its FHIR server, as answered."""
    prefetch = {}
    for key, template in templates.items():
        answer = requests.get(f"{fhir_base}/{render_template(template, context)}", timeout=30)
        assert answer.status_code == 200, (key, answer.text[:300])
        prefetch[key] = answer.json()
    return prefetch


def test_order_sign_after_order_select_is_answered_from_memory_through_a_real_server(
    settings: Settings, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """Run-ahead end to end: the EHR runs the prefetch searches against sekmet for order-select and
    again for order-sign. The server answers the second time with new searchset envelopes; the resources
    are the same, so order-sign is answered from memory with the cards a fresh evaluation gives. A result
    added in between is a miss."""
    record = load_patient_bundle(SUPPLEMENT_FIXTURE)
    _put_on_server(fhir_server, list(record.resources))
    at = settings.with_overrides(now=record.timestamp)
    handler = build_handler(at, run_ahead=RunAheadCache(at))
    fresh = build_handler(at)
    templates = {entry["hook"]: entry["prefetch"] for entry in handler.discovery_document()["services"]}
    select_context = _context("order-select", record.patient_id)
    sign_context = {k: v for k, v in select_context.items() if k != "selections"}

    def call(hook: str, context: dict[str, Any], on: Any = handler) -> tuple[dict[str, Any], CallTrace, dict]:
        prefetch = _ehr_prefetch(templates[hook], context, fhir_base)
        body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "fhirServer": fhir_base, "context": context}
        trace = CallTrace(service=SERVICE_FOR_HOOK[hook])
        return on.handle(SERVICE_FOR_HOOK[hook], {**body, "prefetch": prefetch}, trace=trace), trace, prefetch

    selected, _, select_prefetch = call("order-select", select_context)
    signed, sign_trace, sign_prefetch = call("order-sign", sign_context)
    expected, _, _ = call("order-sign", sign_context, on=fresh)

    assert _topics(selected["cards"]) == ["elevated-b12-supplement-review"]
    assert {select_prefetch[k].get("id") for k in ("b12IronLabs", "conditions")}.isdisjoint(
        {sign_prefetch[k].get("id") for k in ("b12IronLabs", "conditions")}
    ), "sekmet gives each search a new Bundle id, so the hit below is not a byte-for-byte match"
    assert sign_trace.run_ahead_hit is True
    assert _comparable(signed["cards"]) == _comparable(expected["cards"])
    assert _topics(signed["cards"]) == ["elevated-b12-supplement-review"]

    ferritin = {
        "resourceType": "Observation",
        "id": "ferritin-added-after-select",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
        "subject": {"reference": f"Patient/{record.patient_id}"},
        "effectiveDateTime": (record.timestamp - timedelta(hours=1)).isoformat(),
        "valueQuantity": {
            "value": 8,
            "unit": "ng/mL",
            "system": "http://unitsofmeasure.org",
            "code": "ng/mL",
        },
    }
    _put_on_server(fhir_server, [ferritin])
    changed, changed_trace, _ = call("order-sign", sign_context)
    assert changed_trace.run_ahead_hit is False
    assert "iron-deficiency-with-high-b12" in _topics(changed["cards"])


# Medications the prefetch only refers to: EHRs that keep products as Medication resources send orders
# with a medicationReference, and may fill the prefetch without the Medications themselves.

MEDICATION_EXAMPLES = [
    path
    for path in HOOK_EXAMPLES
    if any(
        r["resourceType"].startswith("Medication") for r in _prefetch_resources(_example(path)["prefetch"])
    )
    or _example(path)["hook"] != "patient-view"
]


def _products_by_reference(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """The request with every medication record's product moved into a Medication that is not sent (no
    display either, so nothing but the Medication names it), and those Medications."""
    changed = copy.deepcopy(body)
    changed["hookInstance"] = str(uuid.uuid4())
    records = _prefetch_resources(changed["prefetch"]) + [
        entry["resource"] for entry in changed["context"].get("draftOrders", {}).get("entry", [])
    ]
    products = []
    for n, resource in enumerate(r for r in records if "medicationCodeableConcept" in r):
        products.append(
            {
                "resourceType": "Medication",
                "id": f"product-{n}",
                "code": resource.pop("medicationCodeableConcept"),
            }
        )
        resource["medicationReference"] = {"reference": f"Medication/product-{n}"}
    assert products, "the example has a medication record to move"
    return changed, products


def _card_text(cards: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """What a clinician reads. Suggestions are left out: a "stop" suggestion copies the EHR's own order,
    which now names its product by reference."""
    return [(c["summary"], c["indicator"], c["detail"]) for c in cards]


@pytest.mark.parametrize("path", MEDICATION_EXAMPLES, ids=[p.stem for p in MEDICATION_EXAMPLES])
def test_a_medication_the_prefetch_only_refers_to_is_fetched_and_read(
    path: Path, client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    original = _example(path)
    body, products = _products_by_reference(original)
    _put_on_server(fhir_server, products)

    _, expected = _call(client, original)
    status_blind, blind = _call(client, body)
    status, fetched = _call(client, {**body, "fhirServer": fhir_base})

    assert (status_blind, status) == (200, 200), fetched
    _assert_cards_response(fetched)
    assert _card_text(fetched["cards"]) == _card_text(expected["cards"])
    assert _card_text(blind["cards"]) != _card_text(expected["cards"]), (
        "without the Medications the product is unknown, so the comparison above means something"
    )
    [request] = proxy.seen
    path_part, _, query = request.path.partition("?")
    assert path_part == "/fhir/Medication"
    assert parse_qs(query)["_id"] == [",".join(p["id"] for p in products)]


def test_a_failed_medication_fetch_leaves_the_product_unidentified_and_still_answers(
    client: FlaskClient,
    fhir_server: SekmetServer,
    proxy: DelayProxy,
    fhir_base: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The prefetch was complete, so the call is answered as if no server had been given, with a log
    line (no patient id in it) that says which fetch failed."""
    original = _example(REPO / "hooks" / "patient-view-iron-deficiency-after-b12.json")
    body, products = _products_by_reference(original)
    _put_on_server(fhir_server, products)
    _, blind = _call(client, body)

    proxy.reset_next(4)
    with caplog.at_level(logging.WARNING, logger="cds_service.services"):
        status, answer = _call(client, {**body, "fhirServer": fhir_base})

    assert status == 200, answer
    assert _card_text(answer["cards"]) == _card_text(blind["cards"])
    assert proxy.seen and all(r.path.startswith("/fhir/Medication?") for r in proxy.seen)
    failures = [r.getMessage() for r in caplog.records if "medications-1 failed" in r.getMessage()]
    assert failures, [r.getMessage() for r in caplog.records]
    assert all(body["context"]["patientId"] not in line for line in failures)


def test_a_medication_on_a_server_that_is_not_allowed_is_not_fetched(
    client: FlaskClient, fhir_server: SekmetServer, proxy: DelayProxy
) -> None:
    body, products = _products_by_reference(_example(REPO / "hooks" / "patient-view.json"))
    _put_on_server(fhir_server, products)
    status, answer = _call(client, _with_token({**body, "fhirServer": proxy.url("/other-fhir")}, TOKEN))
    assert status == 200, answer
    assert proxy.seen == []


@pytest.mark.parametrize(
    ("name", "medication_searches"),
    [("patient-view-iron-deficiency-after-b12", 0), ("patient-view-elevated-b12-supplement", 1)],
)
def test_without_prefetch_products_come_with_their_orders_or_in_one_more_search(
    name: str,
    medication_searches: int,
    client: FlaskClient,
    fhir_server: SekmetServer,
    proxy: DelayProxy,
    fhir_base: str,
) -> None:
    """The MedicationRequest search brings its Medications with ``_include``; statements and
    administrations are searched without one, so their products take one search more."""
    original = _example(REPO / "hooks" / f"{name}.json")
    body, products = _products_by_reference(original)
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]) + products)

    _, expected = _call(client, original)
    status, fetched = _call(client, _without_prefetch(body, fhir_base))

    assert status == 200, fetched
    assert _card_text(fetched["cards"]) == _card_text(expected["cards"])
    searched = [r.path.split("?")[0] for r in proxy.seen]
    assert len(searched) == len(PREFETCH_KEYS) + medication_searches
    assert searched.count("/fhir/Medication") == medication_searches


def test_following_medication_references_stays_inside_the_fhir_budget(
    settings: Settings, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """The second round gets what the first left of the budget: behind a slow server the products stay
    unidentified, and the call still answers on time."""
    original = _example(REPO / "hooks" / "patient-view-elevated-b12-supplement.json")
    body, products = _products_by_reference(original)
    _put_on_server(fhir_server, _prefetch_resources(body["prefetch"]) + products)
    application = create_app(settings.with_overrides(fhir_budget_ms=1000))
    try:
        client = application.test_client()
        _, blind = _call(client, body)
        proxy.delay_s = 0.7
        started = time.monotonic()
        status, answer = _call(client, _without_prefetch(body, fhir_base))
        elapsed = time.monotonic() - started
    finally:
        application.extensions["cds"]["recorder"].close()
        application.extensions["cds"]["feedback"].close()

    assert status == 200, answer
    assert _card_text(answer["cards"]) == _card_text(blind["cards"])
    assert elapsed < 1.0 + 0.3


def test_a_site_s_local_lab_codes_are_fetched_and_read(
    settings: Settings, tmp_path: Path, fhir_server: SekmetServer, proxy: DelayProxy, fhir_base: str
) -> None:
    """A hospital whose lab codes its ferritin and TSAT only locally lists them in its site file: without
    prefetch the service asks the FHIR server for them (a space and an ampersand in the codes travel
    percent-encoded), and the iron studies done since the B12 start stop the reminder that asks for them.
    Without the site file the same results are not the service's to read, and the reminder stays."""
    local, UCUM = "http://lab.example.org/codes", "http://unitsofmeasure.org"
    body = _example(REPO / "hooks" / "patient-view.json")
    patient = body["context"]["patientId"]

    def result(id: str, code: str, value: float, unit: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": id,
            "status": "final",
            "code": {"coding": [{"system": local, "code": code}]},
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": "2026-01-05T08:00:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        }

    _put_on_server(
        fhir_server,
        [
            *_prefetch_resources(body["prefetch"]),
            result("local-ferritin", "FER 1", 35, "ng/mL"),
            result("local-tsat", "TSAT&1", 24, "%"),
        ],
    )
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"codes": {"ferritin": [f"{local}|FER 1"], "tsat": [f"{local}|TSAT&1"]}}))
    topics = {}
    for name, configured in (("site", settings.with_overrides(site_config=site)), ("default", settings)):
        with create_app(configured).test_client() as client:
            status, answer = _call(client, _without_prefetch(body, fhir_base))
        assert status == 200, answer
        topics[name] = _topics(answer["cards"])
    assert "iron-studies-after-b12" in topics["default"]
    assert "iron-studies-after-b12" not in topics["site"], topics
    asked = [seen.path for seen in proxy.seen if "code=" in seen.path]
    assert any("FER%201" in path and "TSAT%261" in path for path in asked), asked
