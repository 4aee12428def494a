"""Every status code the service promises, driven through real HTTP on loopback."""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest
import requests

from cds_service.app import create_app
from cds_service.config import Settings
from tests.builders import SERVICE_FOR_HOOK, assert_valid_response, hook_body
from tests.live import serving

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def small_settings(settings: Settings) -> Settings:
    return settings.with_overrides(max_body_bytes=64 * 1024)


@pytest.fixture
def base(small_settings: Settings) -> Iterator[str]:
    app = create_app(small_settings)
    with serving(app) as url:
        yield url
    app.extensions["cds"]["recorder"].close()


def post(base: str, path: str, body: object, **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes | str) else orjson.dumps(body)
    headers = kwargs.pop("headers", JSON)
    return requests.post(f"{base}{path}", data=data, headers=headers, timeout=10, **kwargs)


def outcome_text(response: requests.Response) -> str:
    """Every refusal with a body is an OperationOutcome with a diagnostics reason."""
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["diagnostics"]
    return issue["diagnostics"]


def test_discovery_lists_the_three_services(base: str) -> None:
    response = requests.get(f"{base}/cds-services", timeout=10)
    assert response.status_code == 200
    services = {s["id"]: s for s in response.json()["services"]}
    assert {s: services[s]["hook"] for s in services} == {v: k for k, v in SERVICE_FOR_HOOK.items()}
    for service in services.values():
        assert service["title"] and service["description"] and service["usageRequirements"]
        assert set(service["prefetch"]) >= {"patient", "b12IronLabs", "medicationRequests", "conditions"}
        for template in service["prefetch"].values():
            assert "{{context.patientId}}" in template
            assert template.count("{{") == 1, "CDS Hooks 2.0 templates may only use context tokens"


@pytest.mark.parametrize("hook", SERVICE_FOR_HOOK)
def test_each_service_answers_a_valid_call(base: str, hook: str) -> None:
    response = post(base, f"/cds-services/{SERVICE_FOR_HOOK[hook]}", hook_body(hook))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert_valid_response(response.json())


def test_nothing_to_say_is_an_empty_card_list(base: str) -> None:
    response = post(base, "/cds-services/b12-iron-patient-view", hook_body())
    assert response.json() == {"cards": []}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"[" * 20_000 + b"]" * 20_000, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400(base: str, body: bytes, fragment: str) -> None:
    response = post(base, "/cds-services/b12-iron-patient-view", body)
    assert response.status_code == 400
    assert fragment in outcome_text(response)


def test_schema_violation_is_400_naming_the_field(base: str) -> None:
    body = hook_body()
    del body["context"]["patientId"]
    response = post(base, "/cds-services/b12-iron-patient-view", body)
    assert response.status_code == 400
    assert "patientId" in outcome_text(response)


def test_hook_mismatch_is_400(base: str) -> None:
    response = post(base, "/cds-services/b12-iron-patient-view", hook_body("order-sign"))
    assert response.status_code == 400
    assert "order-sign" in outcome_text(response)
    assert "answered at /cds-services/b12-iron-order-sign" in outcome_text(response)


def test_prefetch_not_an_object_is_400(base: str) -> None:
    response = post(base, "/cds-services/b12-iron-patient-view", hook_body(prefetch="<html>oops</html>"))
    assert response.status_code == 400
    assert "prefetch" in outcome_text(response)


def test_unknown_service_is_404(base: str) -> None:
    for path in ("/cds-services/nope", "/cds-services/nope/feedback", "/elsewhere"):
        response = post(base, path, hook_body())
        assert response.status_code == 404, path
        assert outcome_text(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/cds-services/b12-iron-patient-view"),
        ("PUT", "/cds-services/b12-iron-patient-view"),
        ("DELETE", "/cds-services"),
        ("GET", "/cds-services/b12-iron-patient-view/feedback"),
    ],
)
def test_wrong_method_is_405(base: str, method: str, path: str) -> None:
    response = requests.request(method, f"{base}{path}", timeout=10)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"] or "GET" in response.headers["Allow"]
    assert outcome_text(response)


def test_body_past_the_limit_is_413(base: str) -> None:
    body = hook_body()
    body["extension"] = {"padding": "x" * 70_000}
    response = post(base, "/cds-services/b12-iron-patient-view", body)
    assert response.status_code == 413
    assert "larger than" in outcome_text(response)


def test_chunked_body_past_the_limit_is_413(base: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"hook": "patient-view", "extension": {"padding": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}}'

    response = requests.post(
        f"{base}/cds-services/b12-iron-patient-view", data=chunks(), headers=JSON, timeout=10
    )
    assert response.status_code == 413


def test_small_chunked_body_is_read_whole(base: str) -> None:
    payload = orjson.dumps(hook_body())

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 100):
            yield payload[start : start + 100]

    response = requests.post(
        f"{base}/cds-services/b12-iron-patient-view", data=chunks(), headers=JSON, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


def test_body_shorter_than_its_content_length_is_400(base: str) -> None:
    """A client that stops sending (and closes its side) before Content-Length bytes gets a reason."""
    payload = orjson.dumps(hook_body())
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            b"POST /cds-services/b12-iron-patient-view HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(payload) + 500}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert (
        f"ended after {len(payload)} of {len(payload) + 500} bytes"
        in orjson.loads(body)["issue"][0]["diagnostics"]
    )


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(base: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = post(base, "/cds-services/b12-iron-patient-view", hook_body(), headers=headers)
    assert response.status_code == 415
    assert "application/json" in outcome_text(response)


def test_missing_prefetch_without_fhir_server_is_412(base: str) -> None:
    body = hook_body()
    del body["prefetch"]["b12IronLabs"]
    body["prefetch"]["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "timed out"}],
    }
    response = post(base, "/cds-services/b12-iron-patient-view", body)
    assert response.status_code == 412
    reason = outcome_text(response)
    assert "b12IronLabs" in reason and "conditions" in reason and "issue codes: timeout" in reason


def test_fhir_server_not_allowed_is_412(base: str) -> None:
    response = post(
        base, "/cds-services/b12-iron-patient-view", hook_body(prefetch={}, fhirServer="https://evil.example")
    )
    assert response.status_code == 412
    assert "not one this service is allowed" in outcome_text(response)


def test_unexpected_failure_is_a_500_that_reveals_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail /srv/app/engine.py")

    monkeypatch.setattr("cds_service.services.evaluate", explode)
    app = create_app(settings)
    body = hook_body()
    with serving(app) as base, caplog.at_level(logging.ERROR):
        response = post(base, "/cds-services/b12-iron-patient-view", body)
    app.extensions["cds"]["recorder"].close()
    assert response.status_code == 500
    text = outcome_text(response)
    assert "secret" not in text and "engine.py" not in text and "Traceback" not in response.text
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(getattr(r, "hookInstance", None) == body["hookInstance"] for r in failures)


@pytest.mark.parametrize(
    "path", ["/cds-services", "/cds-services/b12-iron-order-sign", "/cds-services/x/feedback"]
)
def test_cors_preflight(base: str, path: str) -> None:
    response = requests.options(
        f"{base}{path}",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert response.status_code == 204
    assert "Content-Type" not in response.headers, "a 204 has no content to have a type"
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_headers_on_answers_and_errors(base: str) -> None:
    assert requests.get(f"{base}/cds-services", timeout=10).headers["Access-Control-Allow-Origin"] == "*"
    assert post(base, "/cds-services/nope", {}).headers["Access-Control-Allow-Origin"] == "*"


def test_health_and_readiness(base: str) -> None:
    assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{base}/readyz", timeout=10).status_code == 200


def test_readiness_fails_when_the_feedback_store_is_not_writable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails under SQLite cannot be made here on demand (tests run as root), so the dialect's
    write probe raises what sqlite3 raises then; the store and the route must turn it into a 503."""
    app = create_app(settings)
    store = app.extensions["cds"]["feedback"]

    def failing_probe(conn: object) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store._dialect, "writable", failing_probe)
    with serving(app) as base:
        response = requests.get(f"{base}/readyz", timeout=10)
    app.extensions["cds"]["recorder"].close()
    assert response.status_code == 503
    assert "feedback store" in response.json()["reason"]


@pytest.mark.parametrize(
    ("method", "path", "hint"),
    [
        ("GET", "/cds-services/", "/cds-services"),
        ("POST", "/cds-services/b12-iron-patient-view/", "/cds-services/b12-iron-patient-view"),
        (
            "POST",
            "/cds-services/b12-iron-order-sign/feedback//",
            "/cds-services/b12-iron-order-sign/feedback",
        ),
    ],
)
def test_a_trailing_slash_is_a_404_that_says_where_the_service_is(
    base: str, method: str, path: str, hint: str
) -> None:
    response = requests.request(method, f"{base}{path}", data=b"{}", headers=JSON, timeout=10)
    assert response.status_code == 404
    assert f"(it is served without the trailing slash: {hint})" in outcome_text(response)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nothing/"), ("GET", "/cds-services/b12-iron-patient-view/")]
)
def test_no_slash_hint_where_nothing_would_be_served(base: str, method: str, path: str) -> None:
    response = requests.request(method, f"{base}{path}", timeout=10)
    assert response.status_code == 404
    assert "trailing slash" not in outcome_text(response)
