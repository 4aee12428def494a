"""``Expect: 100-continue`` against a real `cds-service serve`: a request the service refuses gets its final
status instead of ``100 Continue`` (RFC 9110 10.1.1), so the client never sends a body that would only be
thrown away; a request it accepts gets the 100, then its answer, with a Content-Length or a chunked body.

gunicorn answers the expectation itself, before the application has looked at the request; the worker
(cds_service.gunicorn_worker) holds that 100 back until the application first reads the body. A request
refused from its head alone, with or without the expectation, closes its connection rather than wait on
a thread for a body that may never come.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from cds_service.config import Settings
from cds_service.serving import CdsServer, gunicorn_options
from tests.auth.auth_support import Signer, ehr_signer, serve_requiring_jwts
from tests.support.raw_http import Answer, Connection, chunked
from tests.support.served import HOOKS_NOW, Served, hook_example

HOOK_PATH = "/cds-services/b12-iron-patient-view"
FEEDBACK_PATH = f"{HOOK_PATH}/feedback"
BODY = orjson.dumps(hook_example("patient-view.json"))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_BODY_BYTES = Settings().max_body_bytes
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n"


def head(method: str, path: str, *fields: str, length: int | None = len(BODY)) -> bytes:
    """A request head expecting 100-continue: JSON with this Content-Length unless ``fields`` say
    otherwise (a Transfer-Encoding takes the Content-Length's place)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: cds", "Expect: 100-continue", *fields]
    if not any(f.lower().startswith("content-type:") for f in fields):
        lines.append("Content-Type: application/json")
    if length is not None and not any(f.lower().startswith("transfer-encoding:") for f in fields):
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("expect"), workers=1, threads=2, CDS_NOW=HOOKS_NOW)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return ehr_signer()


@pytest.fixture(scope="module")
def served_with_jwts(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("expect-jwt")
    server = Served(workdir, workers=1, threads=2, **serve_requiring_jwts(workdir, signer), CDS_NOW=HOOKS_NOW)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def worker_unharmed(request: pytest.FixtureRequest) -> Iterator[None]:
    """No stack trace, no ERROR line and no restarted worker on whichever server the test used."""
    servers = [
        request.getfixturevalue(name)
        for name in ("served", "served_with_jwts")
        if name in request.fixturenames
    ]
    seen = [len(server.log_entries()) for server in servers]
    yield
    time.sleep(0.05)
    for server, before in zip(servers, seen, strict=True):
        entries = server.log_entries()
        assert not [e for e in entries[before:] if "exception" in e or e["level"] in ("ERROR", "CRITICAL")]
        assert sum(str(e.get("message", "")).startswith("Booting worker") for e in entries) == 1


def refused_without_continue(port: int, request_head: bytes) -> Answer:
    """The server's first answer to a head expecting 100-continue, which must be final and close."""
    with Connection(port) as conn:
        conn.send(request_head)
        answer = conn.next_answer()
        assert answer.status >= 200, "the server asked for a body it then refused"
        assert answer.headers["connection"] == "close", answer.headers
        assert conn.closed_by_server(), "the server kept a connection whose body it never asked for"
    return answer


REFUSED = [
    (head("POST", HOOK_PATH, "Content-Type: text/plain"), 415),
    (head("POST", HOOK_PATH, "Content-Encoding: gzip"), 415),
    (head("POST", HOOK_PATH, "Content-Type: text/plain", "Transfer-Encoding: chunked"), 415),
    (head("POST", HOOK_PATH, "Transfer-Encoding: gzip, chunked"), 501),
    (head("POST", "/cds-services/nope"), 404),
    (head("POST", "/cds-services/nope/feedback"), 404),
    (head("POST", "/elsewhere"), 404),
    (head("PUT", HOOK_PATH), 405),
    (head("GET", FEEDBACK_PATH), 405),
    (head("POST", HOOK_PATH, length=MAX_BODY_BYTES + 1), 413),
    (head("POST", FEEDBACK_PATH, length=MAX_BODY_BYTES + 1), 413),
    (head("OPTIONS", HOOK_PATH), 204),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("request_head", "status"), REFUSED, ids=[f"{s}-{n}" for n, (_, s) in enumerate(REFUSED)]
)
def test_a_request_the_service_refuses_gets_its_final_status_instead_of_100_continue(
    served: Served, request_head: bytes, status: int
) -> None:
    """Before, gunicorn sent 100 Continue at once and the client sent its body (up to 5 MB) to be thrown
    away. The connection closes after the answer: the client may or may not send the body yet."""
    answer = refused_without_continue(served.port, request_head)
    assert answer.status == status
    if status >= 400:
        assert json.loads(answer.body)["resourceType"] == "OperationOutcome"


@pytest.mark.integration
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "wrong-path"])
def test_a_request_without_a_valid_token_gets_its_401_instead_of_100_continue(
    served_with_jwts: Served, signer: Signer, authorization: str | None
) -> None:
    if authorization == "wrong-path":
        authorization = f"Bearer {signer.token('/cds-services/b12-iron-order-sign')}"
    fields = [f"Authorization: {authorization}"] if authorization else []
    answer = refused_without_continue(served_with_jwts.port, head("POST", HOOK_PATH, *fields))
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def accepted_after_continue(conn: Connection, request_head: bytes, body: bytes) -> Answer:
    conn.send(request_head)
    interim = conn.next_answer()
    assert interim.status == 100, interim
    conn.send(body)
    return conn.next_answer()


@pytest.mark.integration
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(("path", "body"), [(HOOK_PATH, BODY), (FEEDBACK_PATH, None)])
def test_a_request_the_service_accepts_gets_100_continue_then_its_answer_on_a_kept_connection(
    served: Served, framing: str, path: str, body: bytes | None
) -> None:
    if body is None:
        body = orjson.dumps(
            {
                "feedback": [
                    {
                        "card": "7c2b3f4e-1d5a-4b6c-8e9f-0a1b2c3d4e5f",
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-01-15T09:00:00Z",
                    }
                ]
            }
        )
    if framing == "chunked":
        request_head, sent = head("POST", path, "Transfer-Encoding: chunked"), chunked(body)
    else:
        request_head, sent = head("POST", path, length=len(body)), body
    with Connection(served.port) as conn:
        answer = accepted_after_continue(conn, request_head, sent)
        assert answer.status == 200, answer.body
        assert answer.headers["connection"] == "keep-alive"
        conn.send(HEALTHZ)
        assert conn.next_answer().status == 200


@pytest.mark.integration
def test_a_call_with_a_valid_token_gets_100_continue_then_its_cards(
    served_with_jwts: Served, signer: Signer
) -> None:
    with Connection(served_with_jwts.port) as conn:
        request_head = head("POST", HOOK_PATH, f"Authorization: Bearer {signer.token(HOOK_PATH)}")
        answer = accepted_after_continue(conn, request_head, BODY)
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["cards"]


@pytest.mark.integration
def test_a_body_sent_anyway_after_the_refusal_is_never_read_as_a_request(served: Served) -> None:
    """A client may stop waiting and send its body: here one that holds a request of its own. Had the
    server kept the connection to drain the body, a client that took the refusal at its word (no body
    follows) and sent its next request would have had that request read as the body instead."""
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: cds\r\n\r\n"
    with Connection(served.port) as conn:
        conn.send(head("POST", HOOK_PATH, "Content-Type: text/plain", length=len(smuggled)))
        assert conn.next_answer().status == 415
        conn.send(smuggled)
        assert conn.closed_by_server()


@pytest.mark.integration
@pytest.mark.parametrize("accepted", [True, False])
def test_a_client_that_sends_its_body_without_waiting_keeps_its_connection(
    served: Served, accepted: bool
) -> None:
    """The whole body has arrived with the head: there is nothing to ask for, and nothing left unknown
    about where the next request starts, so pipelined requests behind it are answered."""
    fields = [] if accepted else ["Content-Type: text/plain"]
    with Connection(served.port) as conn:
        conn.send(head("POST", HOOK_PATH, *fields) + BODY + HEALTHZ)
        answer = conn.next_answer()
        if answer.status == 100:  # not needed, but allowed
            answer = conn.next_answer()
        assert answer.status == (200 if accepted else 415)
        assert conn.next_answer().status == 200


@pytest.mark.integration
@pytest.mark.parametrize("fields", [(), ("Content-Length: 0",)])
def test_a_request_without_a_body_is_answered_without_100_continue(
    served: Served, fields: tuple[str, ...]
) -> None:
    """RFC 9110 10.1.1: a server may omit the 100 when the framing says there is no content."""
    with Connection(served.port) as conn:
        conn.send(head("GET", "/healthz", *fields, length=None))
        answer = conn.next_answer()
        assert answer.status == 200
        conn.send(HEALTHZ)
        assert conn.next_answer().status == 200


def test_gunicorn_still_marks_the_expectation_where_the_worker_takes_it_over() -> None:
    """The worker relies on two gunicorn internals: the parser's ``_expected_100_continue`` and
    wsgi.create answering it. A gunicorn release that renames or moves them fails here by name (and the
    served tests above would see a 100 before each refusal again)."""
    cfg = CdsServer(lambda: None, gunicorn_options(Settings(), "127.0.0.1:0", 1, 1)).cfg
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        client_side.sendall(head("POST", HOOK_PATH))
        req = next(RequestParser(cfg, server_side, ("127.0.0.1", 1)))
        assert req._expected_100_continue is True
        req._expected_100_continue = False
        wsgi.create(req, server_side, ("127.0.0.1", 1), ("127.0.0.1", 0), cfg)
        client_side.setblocking(False)
        with pytest.raises(BlockingIOError):
            client_side.recv(100)
        req._expected_100_continue = True
        wsgi.create(req, server_side, ("127.0.0.1", 1), ("127.0.0.1", 0), cfg)
        assert client_side.recv(100) == CONTINUE


@pytest.mark.integration
def test_callers_without_a_token_who_never_send_their_body_do_not_hold_a_thread(
    served_with_jwts: Served,
) -> None:
    """Without Expect too, a 401 leaves the body unread. gunicorn drained it on the request's thread for up
    to 5 s, so four connections announcing a body and sending none, with no credentials at all, kept
    /healthz (this server has 2 threads) waiting 10 s. The 401 now closes the connection instead."""
    held = [Connection(served_with_jwts.port) for _ in range(4)]
    try:
        for conn in held:
            conn.send(f"POST {HOOK_PATH} HTTP/1.1\r\nHost: cds\r\nContent-Length: 1000\r\n\r\n".encode())
        time.sleep(0.3)
        started = time.monotonic()
        with Connection(served_with_jwts.port) as probe:
            probe.send(HEALTHZ)
            assert probe.next_answer().status == 200
        assert time.monotonic() - started < 1.0, "a thread was held draining a body that never came"
        for conn in held:
            answer = conn.next_answer()
            assert (answer.status, answer.headers["connection"]) == (401, "close")
    finally:
        for conn in held:
            conn.sock.close()
