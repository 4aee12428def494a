"""What a caller controls reaches the log bounded: the request path in the refusal and error lines, and
the hookInstance of a refused call.

The path can be as long as gunicorn's request line (8190 bytes); logged whole, each unauthenticated request
added that much to a WARNING line, which is written at once rather than batched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service import observability
from cds_service.app import HOOK_INSTANCE, LOGGED_PATH_CHARS, create_app
from cds_service.config import Settings
from tests.auth.auth_support import Signer, auth_settings, ec_p384_key, write_clients
from tests.builders import hook_body

# What a logged path may add to the line's fixed text: the kept characters and the ellipsis.
MOST = LOGGED_PATH_CHARS + 1
LOG = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PATH_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="?#", exclude_categories=("Cs",)), max_size=3000
)


@pytest.fixture
def authenticating_app(tmp_path: Path) -> Iterator[Flask]:
    signer = Signer("https://ehr.example.org", "k1", "ES384", ec_p384_key())
    clients = write_clients(tmp_path, [{"iss": signer.iss, "jwks": {"keys": [signer.public_jwk()]}}])
    app = create_app(auth_settings(tmp_path, clients))
    yield app
    app.extensions["cds"]["recorder"].close()


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("authentication refused")]


def test_an_unauthenticated_request_logs_at_most_the_start_of_a_long_path(
    authenticating_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Patient-4711-Smith-Jane"
    path = "/cds-services/" + "p" * 8000 + secret
    with caplog.at_level(logging.WARNING):
        response = authenticating_app.test_client().get(path)
    assert response.status_code == 401 and response.data == b""
    [line] = refusal_lines(caplog)
    assert line == f"authentication refused for GET {path[:LOGGED_PATH_CHARS]}…: no Authorization header"
    assert secret not in line


@LOG
@given(segment=PATH_TEXT)
def test_the_refusal_line_is_bounded_whatever_the_path(
    authenticating_app: Flask, caplog: pytest.LogCaptureFixture, segment: str
) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        response = authenticating_app.test_client().post(f"/cds-services/{segment}", data=b"{}")
    assert response.status_code == 401
    [line] = refusal_lines(caplog)
    fixed = len("authentication refused for POST : no Authorization header")
    assert len(line) <= fixed + MOST


def test_an_unexpected_error_logs_at_most_the_start_of_a_long_path(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call line's metrics failing past the call's own handler: Flask's last-resort handler logs."""

    def broken(*args: object) -> None:
        raise RuntimeError("metrics gone")

    app = create_app(settings)
    monkeypatch.setattr(observability, "finish_call", broken)
    path = "/cds-services/" + "x" * 5000
    with caplog.at_level(logging.ERROR):
        response = app.test_client().post(path, data=b"{}", content_type="application/json")
    app.extensions["cds"]["recorder"].close()
    assert response.status_code == 500
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unexpected error")]
    assert line == f"unexpected error on POST {path[:LOGGED_PATH_CHARS]}…"


def call_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "hook call" or "hook call refused" in r.msg]


@LOG
@given(hook_instance=st.text(max_size=80) | st.uuids().map(str))
def test_a_refused_call_logs_its_hook_instance_only_when_it_is_a_uuid(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, hook_instance: str
) -> None:
    """Before, the first 64 characters of whatever the caller sent were logged with a refused call."""
    body = hook_body()
    body["hookInstance"] = hook_instance
    del body["context"]["patientId"]  # refused whatever the hookInstance
    caplog.clear()
    with caplog.at_level(logging.INFO):
        response = client.post(
            "/cds-services/b12-iron-patient-view", data=orjson.dumps(body), content_type="application/json"
        )
    assert response.status_code == 400
    lines = call_lines(caplog)
    assert len(lines) == 2  # the refusal and the call line
    valid = HOOK_INSTANCE.fullmatch(hook_instance) is not None
    assert [getattr(r, "hookInstance", None) for r in lines] == [hook_instance if valid else None] * 2


def test_a_patient_identifier_sent_as_hook_instance_is_not_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = hook_body()
    body["hookInstance"] = "MRN 00471142 Jane Smith"
    with caplog.at_level(logging.INFO):
        response = client.post(
            "/cds-services/b12-iron-patient-view", data=orjson.dumps(body), content_type="application/json"
        )
    assert response.status_code == 400
    assert "hookInstance" in response.get_json()["issue"][0]["diagnostics"]
    assert "00471142" not in caplog.text


@pytest.mark.parametrize(
    ("method", "prefix", "status"), [("GET", "/nothing-here/", 404), ("PUT", "/cds-services/", 405)]
)
def test_a_404_or_405_quotes_at_most_the_start_of_a_long_path(
    tmp_path: Path, method: str, prefix: str, status: int
) -> None:
    """The reason quoted the whole path back, up to 8 KB of whatever the caller sent."""
    app = create_app(auth_settings(tmp_path, None, auth="off"))
    secret = "Patient-4711-Smith-Jane"
    path = prefix + "p" * 8000 + secret
    try:
        response = app.test_client().open(path, method=method)
    finally:
        app.extensions["cds"]["recorder"].close()
    assert response.status_code == status
    reason = response.get_json()["issue"][0]["diagnostics"]
    assert f"{path[:LOGGED_PATH_CHARS]}…" in reason
    assert secret not in reason and len(reason) < LOGGED_PATH_CHARS + 100
