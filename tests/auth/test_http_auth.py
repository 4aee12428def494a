"""Authentication as the EHR sees it: every endpoint behind a JWT, bare 401s, open health and preflight,
FHIR servers bound per client, and no token in any log line of a full run."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from cds_service.app import create_app
from tests.auth.auth_support import JwksServer, Signer, auth_settings, unsigned_parts, write_clients
from tests.builders import FIXED_NOW, SERVICE_FOR_HOOK, hook_body
from tests.live import serving
from tests.support.fhir_server import SekmetServer, sekmet_factory

__all__ = ["sekmet_factory"]

DISCOVERY = "/cds-services"
SERVICE_PATHS = [f"/cds-services/{service}" for service in SERVICE_FOR_HOOK.values()]
FEEDBACK_PATHS = [f"{path}/feedback" for path in SERVICE_PATHS]
HOOK_OF_PATH = {f"/cds-services/{service}": hook for hook, service in SERVICE_FOR_HOOK.items()}


def feedback_body() -> dict[str, Any]:
    return {
        "feedback": [
            {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-01-15T09:05:00Z"}
        ]
    }


def call(client, path: str, authorization: str | None) -> Any:
    headers = {"Authorization": authorization} if authorization else {}
    if path == DISCOVERY:
        return client.get(path, headers=headers)
    if path.endswith("/feedback"):
        return client.post(path, json=feedback_body(), headers=headers)
    return client.post(path, json=hook_body(HOOK_OF_PATH[path]), headers=headers)


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(clients: list[dict[str, Any]], **overrides: Any) -> Flask:
        settings = auth_settings(tmp_path, write_clients(tmp_path, clients), now=FIXED_NOW, **overrides)
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


@pytest.fixture
def app(make_app, ec_signer: Signer, rsa_signer: Signer) -> Flask:
    return make_app(
        [
            {"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}},
            {"iss": rsa_signer.iss, "jwks": {"keys": [rsa_signer.public_jwk()]}, "tenants": ["tenant-a"]},
        ]
    )


ALL_PATHS = [DISCOVERY, *SERVICE_PATHS, *FEEDBACK_PATHS]


@pytest.mark.parametrize("path", ALL_PATHS)
def test_without_a_token_every_endpoint_is_a_bare_401(app: Flask, path: str) -> None:
    response = call(app.test_client(), path, None)
    assert response.status_code == 401
    assert response.data == b""
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Content-Type" not in response.headers, "no content, so no type (it said text/html)"


@pytest.mark.parametrize("path", ALL_PATHS)
def test_with_a_bad_token_every_endpoint_is_a_bare_401(
    app: Flask, path: str, ec_signer, other_ec_key
) -> None:
    client = app.test_client()
    for authorization in (
        "Bearer " + ec_signer.with_key(other_ec_key).token(path),
        "Bearer " + ec_signer.token(DISCOVERY if path != DISCOVERY else SERVICE_PATHS[0]),
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
    ):
        response = call(client, path, authorization)
        assert response.status_code == 401, authorization
        assert response.data == b""


@pytest.mark.parametrize("alg", [[], ["ES384"], {"ES384": 1}, 384, None, True])
def test_a_token_whose_alg_is_not_a_string_is_a_bare_401(app: Flask, ec_signer: Signer, alg: object) -> None:
    """A JSON array or object as ``alg`` was tested for membership in a set as it was: a TypeError and
    a 500 for anyone who could reach the service, no signature needed."""
    token = unsigned_parts({"alg": alg, "kid": ec_signer.kid, "typ": "JWT"}, ec_signer.claims()) + ".c2ln"
    response = call(app.test_client(), SERVICE_PATHS[0], "Bearer " + token)
    assert response.status_code == 401
    assert response.data == b""


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("signer_name", ["ec_signer", "rsa_signer"])
def test_with_a_good_token_every_endpoint_answers(
    app: Flask, path: str, signer_name: str, request: pytest.FixtureRequest
) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    response = call(app.test_client(), path, "Bearer " + signer.token(path, tenant="tenant-a"))
    assert response.status_code == 200, response.data[:300]
    assert response.is_json


def test_a_replayed_token_is_refused_over_http(app: Flask, ec_signer: Signer) -> None:
    client = app.test_client()
    token = ec_signer.token(DISCOVERY)
    assert call(client, DISCOVERY, "Bearer " + token).status_code == 200
    assert call(client, DISCOVERY, "Bearer " + token).status_code == 401


def test_preflight_and_health_need_no_token(app: Flask) -> None:
    client = app.test_client()
    for path in ALL_PATHS:
        response = client.options(
            path,
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert response.status_code in (200, 204), path
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_refusals_are_logged_with_reason_and_path(
    app: Flask, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = ec_signer.token(DISCOVERY)
    call(app.test_client(), SERVICE_PATHS[0], "Bearer " + token)
    assert "aud does not name the endpoint called" in caplog.text
    assert SERVICE_PATHS[0] in caplog.text
    assert token not in caplog.text


def test_auth_off_needs_no_token(tmp_path: Path) -> None:
    settings = auth_settings(tmp_path, None, auth="off", now=FIXED_NOW)
    app = create_app(settings)
    try:
        assert app.test_client().get(DISCOVERY).status_code == 200
    finally:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()


# --- FHIR servers bound per client, and what reaches the logs ----------------------------------------


def fhir_authorization(access_token: str) -> dict[str, Any]:
    return {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "b12-iron-cds",
    }


def test_no_access_token_reaches_a_fhir_server_the_client_does_not_list(
    make_app, ec_signer: Signer, jwks_server: JwksServer
) -> None:
    """The global allow-list names the recording server, but this client is bound to another one."""
    recorder_url = jwks_server.url("/fhir")
    app = make_app(
        [
            {
                "iss": ec_signer.iss,
                "jwks": {"keys": [ec_signer.public_jwk()]},
                "fhir_servers": ["https://fhir.ehr.example.org/r4"],
            }
        ],
        allowed_fhir_servers=(recorder_url,),
    )
    access_token = "at-" + secrets.token_urlsafe(24)
    path = SERVICE_PATHS[0]
    body = hook_body("patient-view", prefetch=None, fhirServer=recorder_url)
    body["fhirAuthorization"] = fhir_authorization(access_token)
    response = app.test_client().post(
        path, json=body, headers={"Authorization": "Bearer " + ec_signer.token(path)}
    )
    assert response.status_code == 412
    assert jwks_server.total_hits() == 0
    assert access_token.encode() not in response.data


def test_a_listed_fhir_server_does_receive_the_access_token(
    make_app, ec_signer: Signer, jwks_server: JwksServer
) -> None:
    """The control for the test above: the same call, with the server listed for the client."""
    recorder_url = jwks_server.url("/fhir")
    app = make_app(
        [{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}, "fhir_servers": [recorder_url]}]
    )
    access_token = "at-" + secrets.token_urlsafe(24)
    path = SERVICE_PATHS[0]
    body = hook_body("patient-view", prefetch=None, fhirServer=recorder_url)
    body["fhirAuthorization"] = fhir_authorization(access_token)
    app.test_client().post(path, json=body, headers={"Authorization": "Bearer " + ec_signer.token(path)})
    assert jwks_server.total_hits() > 0
    assert set(jwks_server.authorizations) == {f"Bearer {access_token}"}


def every_logged_text(records: list[logging.LogRecord]) -> str:
    """Each record's message plus every attribute, so tokens hidden in args or extras are found too."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(repr(value) for value in vars(record).values())
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def test_a_full_authenticated_run_logs_no_token(
    make_app, sekmet_factory, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """A real server, a real FHIR server that demands the access token, and DEBUG logging everywhere."""
    access_token = "at-" + secrets.token_urlsafe(24)
    fhir: SekmetServer = sekmet_factory(tokens=[access_token])
    fhir.put({"resourceType": "Patient", "id": "pat-1", "gender": "female", "birthDate": "1960-04-02"})
    app = make_app(
        [{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}, "fhir_servers": [fhir.base_url]}]
    )
    caplog.set_level(logging.DEBUG)
    jwts: list[str] = []
    with serving(app) as base:
        for hook, service in SERVICE_FOR_HOOK.items():
            path = f"/cds-services/{service}"
            token = ec_signer.token(path)
            jwts.append(token)
            body = hook_body(hook, prefetch=None, fhirServer=fhir.base_url)
            body["fhirAuthorization"] = fhir_authorization(access_token)
            response = requests.post(
                base + path,
                data=json.dumps(body),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=30,
            )
            assert response.status_code == 200, response.text[:300]
        replayed = requests.get(base + DISCOVERY, headers={"Authorization": f"Bearer {jwts[0]}"}, timeout=10)
        assert replayed.status_code == 401
    logged = every_logged_text(caplog.records)
    assert "prefetch key patient missing" in logged, "the run went through the FHIR fetch path"
    assert access_token not in logged
    for token in jwts:
        _, claims, signature = token.split(".")
        assert token not in logged
        assert claims not in logged
        assert signature not in logged


def test_conformance_refusals_are_bare_401s_over_http_and_logged_with_their_reason(
    make_app, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refusal this audit added, through a real socket: the EHR learns nothing but 401, the log
    learns why, and no part of the token is written."""
    app = make_app(
        [{"iss": ec_signer.iss, "sub": "cds-client-1", "jwks": {"keys": [ec_signer.public_jwk()]}}]
    )
    path = SERVICE_PATHS[0]
    now = int(time.time())
    cases = {
        "aud does not name the endpoint called": ec_signer.token(
            path, sub="cds-client-1", aud="https://cds.example.test:8443" + path
        ),
        "seconds after iat, more than 300 s": ec_signer.token(
            path, sub="cds-client-1", iat=now - 3600, exp=now + 100
        ),
        "is not the client id registered": ec_signer.token(path, sub="cds-client-2"),
        "registered is 'https://sandbox.example.org'": ec_signer.token(
            path, sub="cds-client-1", iss=ec_signer.iss + "/"
        ),
    }
    caplog.set_level(logging.INFO)
    with serving(app) as base:
        for reason, token in cases.items():
            caplog.clear()
            response = requests.post(
                base + path,
                data=json.dumps(hook_body(HOOK_OF_PATH[path])),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=10,
            )
            assert response.status_code == 401, reason
            assert response.content == b""
            assert response.headers["WWW-Authenticate"] == "Bearer"
            logged = every_logged_text(caplog.records)
            assert reason in logged
            for part in token.split("."):
                assert part not in logged
        good = ec_signer.token(path, sub="cds-client-1", aud="HTTPS://CDS.Example.Test:443" + path)
        response = requests.post(
            base + path,
            data=json.dumps(hook_body(HOOK_OF_PATH[path])),
            headers={"Authorization": f"Bearer {good}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 200, response.text[:300]
