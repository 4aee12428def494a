"""A request body that stops arriving ends in a 400 saying so, not in a thread held until the client hangs up.

gunicorn hands the app a blocking socket with no timeout, so before this a client that sent its headers
and part of its body (slowloris) kept one of the worker's four threads for as long as it kept the
connection open. Here the socket is a real one, as gunicorn gives it (``gunicorn.socket`` and the stream
the body is read from), with the idle timeout shortened.
"""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from cds_service import app as app_module
from cds_service.app import BodyTooSlow

PATH = "/cds-services/b12-iron-patient-view"


def post_over_a_socket(
    app: Flask, path: str, sent: bytes, length: int
) -> tuple[TestResponse, float, float | None]:
    """POST ``sent`` as the first bytes of a ``length``-byte body, read from a real socket as gunicorn gives
    it; the response, the seconds it took, and the socket's timeout afterwards. The client hangs up after
    5 s, which is what ends a read that has no timeout."""
    server_side, client_side = socket.socketpair()
    hang_up = threading.Timer(5.0, client_side.close)
    hang_up.start()
    try:
        client_side.sendall(sent)
        started = time.monotonic()
        response = app.test_client().post(
            path,
            content_type="application/json",
            environ_overrides={
                "wsgi.input": server_side.makefile("rb"),
                "gunicorn.socket": server_side,
                "CONTENT_LENGTH": str(length),
            },
        )
        return response, time.monotonic() - started, server_side.gettimeout()
    finally:
        hang_up.cancel()
        client_side.close()
        server_side.close()


@pytest.mark.parametrize("path", [PATH, f"{PATH}/feedback"])
def test_a_body_that_stops_arriving_is_a_400_within_the_idle_timeout(
    app: Flask, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(app_module, "BODY_IDLE_TIMEOUT_S", 0.3)
    response, elapsed, _ = post_over_a_socket(app, path, b'{"hook": "patient-view", ', 1000)
    assert response.status_code == 400
    assert "stopped arriving" in response.get_json()["issue"][0]["diagnostics"]
    assert elapsed < 2.0


def test_the_socket_gets_its_own_timeout_back_after_the_body_is_read(app: Flask) -> None:
    """gunicorn goes on using the socket (the response, keep-alive), as it set it."""
    response, _, timeout_after = post_over_a_socket(app, PATH, b"[]", 2)
    assert response.status_code == 400
    assert timeout_after is None


class _NeverInTime(io.RawIOBase):
    """A body stream whose reader ran out of time, as gunicorn_worker.BodyDeadline makes it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        raise BodyTooSlow()


@pytest.mark.parametrize("path", [PATH, f"{PATH}/feedback"])
def test_a_body_past_its_deadline_is_a_400_saying_so(app: Flask, path: str) -> None:
    response = app.test_client().post(
        path,
        content_type="application/json",
        environ_overrides={"wsgi.input": io.BufferedReader(_NeverInTime()), "CONTENT_LENGTH": "1000"},
    )
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["diagnostics"] == (
        f"The request body did not arrive within {app_module.BODY_DEADLINE_S:g} s of its header section."
    )
