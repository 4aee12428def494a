"""A request body that stops arriving ends in a 400 saying so, not in a thread held until the client hangs up.

gunicorn hands the app a blocking socket with no timeout, so before this a client that sent its headers
and part of its body (slowloris) kept one of the worker's four threads for as long as it kept the
connection open. Here the socket is a real one, as gunicorn gives it (``gunicorn.socket`` and the stream
the body is read from), with the idle timeout shortened.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from flask import Flask

from cds_service import app as app_module

PATH = "/cds-services/b12-iron-patient-view"


@pytest.mark.parametrize("path", [PATH, f"{PATH}/feedback"])
def test_a_body_that_stops_arriving_is_a_400_within_the_idle_timeout(
    app: Flask, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(app_module, "BODY_IDLE_TIMEOUT_S", 0.3)
    server_side, client_side = socket.socketpair()
    # Without the timeout the read waits for the client; hanging up after 5 s ends it.
    hang_up = threading.Timer(5.0, client_side.close)
    hang_up.start()
    try:
        client_side.sendall(b'{"hook": "patient-view", ')
        started = time.monotonic()
        response = app.test_client().post(
            path,
            content_type="application/json",
            environ_overrides={
                "wsgi.input": server_side.makefile("rb"),
                "gunicorn.socket": server_side,
                "CONTENT_LENGTH": "1000",
            },
        )
        elapsed = time.monotonic() - started
    finally:
        hang_up.cancel()
        client_side.close()
        server_side.close()
    assert response.status_code == 400
    assert "stopped arriving" in response.get_json()["issue"][0]["diagnostics"]
    assert elapsed < 2.0


def test_the_socket_gets_its_own_timeout_back_after_the_body_is_read(app: Flask) -> None:
    """gunicorn goes on using the socket (the response, keep-alive), as it set it."""
    server_side, client_side = socket.socketpair()
    try:
        client_side.sendall(b"[]")
        response = app.test_client().post(
            PATH,
            content_type="application/json",
            environ_overrides={
                "wsgi.input": server_side.makefile("rb"),
                "gunicorn.socket": server_side,
                "CONTENT_LENGTH": "2",
            },
        )
        assert response.status_code == 400
        assert server_side.gettimeout() is None
    finally:
        client_side.close()
        server_side.close()
