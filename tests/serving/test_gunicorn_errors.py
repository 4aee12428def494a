"""Requests gunicorn refuses before the app sees them: raw bytes to a real `cds-service serve`, each with a
fresh token where gunicorn's own error page and log line would have quoted it; and, for the errors no
request can provoke here (TLS, PROXY protocol), the status of gunicorn's own worker beside the project's."""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
from gunicorn.http import errors
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import _DEFER, TConn, ThreadWorker

from cds_service.app import BodyTooSlow
from cds_service.config import Settings
from cds_service.gunicorn_worker import HEAD_DEADLINE_S, HEAD_TIMEOUT_REASON, BodyDeadline, JsonErrorWorker
from cds_service.serving import CdsServer, gunicorn_options
from tests.support.raw_http import answers, exchange
from tests.support.served import HOOKS_NOW, Served, hook_example

OPTIONS = gunicorn_options(Settings(), "127.0.0.1:0", 1, 1)
LINE_LIMIT, FIELDS_LIMIT, FIELD_LIMIT = (
    OPTIONS[f"limit_request_{name}"] for name in ("line", "fields", "field_size")
)
LINE_REASON = f"The request line is longer than {LINE_LIMIT} bytes."
HEADERS_REASON = (
    f"The request's header fields exceed the server's limits: at most {FIELDS_LIMIT} fields of at most"
    f" {FIELD_LIMIT} bytes each."
)


def logged(served: Served, message: str) -> list[dict[str, object]]:
    return [entry for entry in served.log_entries() if entry.get("message") == message]


def wait_for_more(served: Served, message: str, seen: int, timeout_s: float = 5) -> list[dict[str, object]]:
    """Log lines with this message, once there are more than ``seen`` (lines are written in batches)."""
    deadline = time.monotonic() + timeout_s
    while len(found := logged(served, message)) <= seen and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("gunicorn-errors"), workers=1, threads=2, CDS_NOW=HOOKS_NOW)
    yield server
    server.stop()


@pytest.fixture
def token() -> str:
    """Looks like what an EHR would send and must never be echoed."""
    return f"eyJhbGciOiJSUzM4NCJ9.{uuid.uuid4().hex}"


def request_line_too_long(token: str) -> bytes:
    return f"GET /cds-services?access_token={token}{'a' * LINE_LIMIT} HTTP/1.1\r\nHost: cds\r\n\r\n".encode()


def header_too_long(token: str) -> bytes:
    field = f"Authorization: Bearer {token}{'a' * FIELD_LIMIT}"
    return f"GET /healthz HTTP/1.1\r\nHost: cds\r\n{field}\r\n\r\n".encode()


def too_many_headers(token: str) -> bytes:
    fields = "".join(f"X-Patient-{n}: {token}\r\n" for n in range(FIELDS_LIMIT))
    return f"GET /healthz HTTP/1.1\r\nHost: cds\r\n{fields}\r\n".encode()


def invalid_header_name(token: str) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: cds\r\nAuthorization Bearer {token}: x\r\n\r\n".encode()


def header_without_colon(token: str) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: cds\r\nAuthorization Bearer {token}\r\n\r\n".encode()


def invalid_content_length(token: str) -> bytes:
    return f"POST /cds-services/x HTTP/1.1\r\nHost: cds\r\nContent-Length: {token}\r\n\r\n".encode()


def garbage_request_line(token: str) -> bytes:
    return f"Bearer {token}\r\n\r\n".encode()


def invalid_method(token: str) -> bytes:
    return f"G\x01T /cds-services/{token} HTTP/1.1\r\nHost: cds\r\n\r\n".encode()


def folded_header(token: str) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: cds\r\nX-Patient: a\r\n {token}\r\n\r\n".encode()


def chunked_and_length(token: str) -> bytes:
    """Both framings at once, the classic request-smuggling shape (RFC 9112 6.3: the server must close)."""
    head = "POST /cds-services/x HTTP/1.1\r\nHost: cds\r\nTransfer-Encoding: chunked\r\nContent-Length: 5"
    return f"{head}\r\n\r\n0\r\n\r\nGET /metrics?{token} HTTP/1.1\r\nHost: cds\r\n\r\n".encode()


REFUSED = [
    (request_line_too_long, 414, LINE_REASON, "LimitRequestLine"),
    (header_too_long, 431, HEADERS_REASON, "LimitRequestHeaders"),
    (too_many_headers, 431, HEADERS_REASON, "LimitRequestHeaders"),
    (invalid_header_name, 400, "A request header field name is not a valid token.", "InvalidHeaderName"),
    (header_without_colon, 400, "A request header is not valid.", "InvalidHeader"),
    (invalid_content_length, 400, "The request's Content-Length header is not valid.", "InvalidHeader"),
    (
        garbage_request_line,
        400,
        "The request line is not a valid HTTP/1.x request line.",
        "InvalidRequestLine",
    ),
    (invalid_method, 400, "The request method is not valid.", "InvalidRequestMethod"),
    (folded_header, 400, "A request header field uses obsolete line folding.", "ObsoleteFolding"),
    (chunked_and_length, 400, "The request's Content-Length header is not valid.", "InvalidHeader"),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("build", "status", "reason", "error"), REFUSED, ids=[c[0].__name__ for c in REFUSED]
)
def test_a_refused_request_gets_gunicorns_status_and_the_apps_json_error_quoting_none_of_it(
    served: Served, token: str, build: Callable[[str], bytes], status: int, reason: str, error: str
) -> None:
    warning = f"Invalid request from ip=127.0.0.1: {reason} ({error})"
    seen = len(logged(served, warning))

    raw = exchange(served.port, build(token))

    [answer] = answers(raw)  # one response, then the server closed the connection
    assert answer.status == status
    assert answer.headers["content-type"] == "application/fhir+json"
    assert answer.headers["connection"] == "close"
    assert answer.headers["access-control-allow-origin"] == "*"
    assert json.loads(answer.body) == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": reason}],
    }
    assert token not in raw.decode("latin-1")
    [*_, line] = wait_for_more(served, warning, seen)
    assert line["level"] == "WARNING" and line["logger"] == "gunicorn.error"
    assert token not in served.log()


@pytest.mark.integration
def test_a_malformed_chunked_body_left_unread_closes_the_connection_without_a_second_answer(
    served: Served, token: str
) -> None:
    """The app does not read a GET's body. gunicorn drained it before reusing the connection and failed
    there, after the app's 200 had gone out, and would then have written an unsolicited 400. The answer
    now closes the connection instead, and the body is never parsed."""
    warning = "Invalid request from ip=127.0.0.1 after its response: The chunked request body is malformed."
    seen = len(logged(served, warning))
    request = (
        "GET /healthz HTTP/1.1\r\nHost: cds\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{token}\r\n{{}}\r\n0\r\n\r\n"
    ).encode()

    raw = exchange(served.port, request)

    [answer] = answers(raw)
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert json.loads(answer.body) == {"status": "ok"}
    assert token not in raw.decode("latin-1")
    assert len(logged(served, warning)) == seen
    assert token not in served.log()


@pytest.mark.integration
@pytest.mark.parametrize(
    "path", ["/cds-services/b12-iron-patient-view", "/cds-services/b12-iron-patient-view/feedback"]
)
def test_a_malformed_chunked_body_the_app_reads_is_a_400_that_quotes_nothing(
    served: Served, token: str, path: str
) -> None:
    """A hook call or feedback whose chunk size is not hex: gunicorn raises while the app reads the body,
    with the body's bytes in its message. That is the caller's 400, and neither answer nor log quotes it."""
    refused = "hook call refused (400)" if path.endswith("view") else "feedback refused (400)"
    before = sum(refused in str(e.get("message")) for e in served.log_entries())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: cds\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{token}\r\n{{}}\r\n0\r\n\r\n"
    ).encode()

    raw = exchange(served.port, request)

    [answer] = answers(raw)
    assert answer.status == 400, answer.body
    assert json.loads(answer.body)["issue"][0]["diagnostics"] == (
        "The request body could not be read: its chunked framing is malformed or it ended early."
    )
    assert token not in raw.decode("latin-1")
    deadline = time.monotonic() + 5
    while sum(refused in str(e.get("message")) for e in served.log_entries()) <= before:
        assert time.monotonic() < deadline, "the refusal was not logged"
        time.sleep(0.05)
    assert token not in served.log() and "Traceback" not in served.log()


@pytest.mark.integration
def test_the_server_still_answers_calls_after_refusing_requests(served: Served, token: str) -> None:
    for build, *_ in REFUSED:
        exchange(served.port, build(token))
    with requests.Session() as session:
        assert session.get(f"{served.base}/healthz", timeout=5).json() == {"status": "ok"}
        call = session.post(
            f"{served.base}/cds-services/b12-iron-patient-view",
            json=hook_example("patient-view.json"),
            timeout=30,
        )
    assert call.status_code == 200
    assert "iron-studies-after-b12" in [card["source"]["topic"]["code"] for card in call.json()["cards"]]
    booted = [e for e in served.log_entries() if str(e.get("message", "")).startswith("Booting worker")]
    assert len(booted) == 1, "refusing a request must not cost the worker"


def test_gunicorn_runs_the_projects_gthread_worker() -> None:
    cfg = CdsServer(lambda: None, OPTIONS).cfg
    assert cfg.worker_class is JsonErrorWorker
    assert issubclass(JsonErrorWorker, ThreadWorker)


def placeholder(error: type[BaseException]) -> BaseException:
    """An instance with placeholder arguments: gunicorn chooses the status by the error's class alone."""
    if error is ssl.SSLError:
        return ssl.SSLError(1, "placeholder")
    if error.__init__ is Exception.__init__:
        return error()
    parameters = inspect.signature(error).parameters.values()
    required = [p for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    return error(*["placeholder"] * len(required))


GUNICORN_ERRORS = [
    error
    for error in vars(errors).values()
    if inspect.isclass(error) and issubclass(error, BaseException) and error.__module__ == errors.__name__
] + [ssl.SSLError]


def status_written(worker_class: type[Worker], error: BaseException) -> int:
    cfg = CdsServer(lambda: None, OPTIONS).cfg
    worker = worker_class(0, os.getpid(), [], None, 30, cfg, logging.getLogger(__name__))
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        worker.handle_error(None, server_side, ("127.0.0.1", 1), error)
        worker.tmp.close()
        return int(client_side.recv(65536).split(b" ", 2)[1])


@pytest.mark.parametrize("error", GUNICORN_ERRORS, ids=[e.__name__ for e in GUNICORN_ERRORS])
def test_every_gunicorn_error_gets_the_status_gunicorns_own_worker_gives_it(
    error: type[BaseException],
) -> None:
    """Against the installed gunicorn's ThreadWorker, so a gunicorn release that answers an error
    differently shows up here rather than as a silent mismatch."""
    instance = placeholder(error)
    assert status_written(JsonErrorWorker, instance) == status_written(ThreadWorker, instance)


@pytest.fixture(scope="module")
def served_at_debug(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("gunicorn-debug"), workers=1, threads=2, CDS_LOG_LEVEL="DEBUG")
    yield server
    server.stop()


@pytest.mark.integration
def test_a_client_hanging_up_mid_request_is_logged_without_its_bytes(
    served_at_debug: Served, token: str
) -> None:
    """gunicorn logs the half-read request at DEBUG ("No more data after: b'…'"): the class name is kept."""
    message = "Ignored premature client disconnection. NoMoreData"
    seen = len(logged(served_at_debug, message))
    with socket.create_connection(("127.0.0.1", served_at_debug.port), timeout=10) as sock:
        sock.sendall(
            f"POST /cds-services/b12-iron-patient-view HTTP/1.1\r\nAuthorization: Bearer {token}".encode()
        )
    assert len(wait_for_more(served_at_debug, message, seen)) == seen + 1
    assert token not in served_at_debug.log()


def test_a_head_is_parsed_only_once_complete_and_answered_408_past_its_deadline() -> None:
    """A connection whose head is still arriving waits on the poller (_DEFER), not in a thread; what has
    come is kept in the parser's buffer; past HEAD_DEADLINE_S from its first bytes it gets a 408."""
    cfg = CdsServer(lambda: None, OPTIONS).cfg
    worker = JsonErrorWorker(0, os.getpid(), [], None, 30, cfg, logging.getLogger(__name__))
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        conn = TConn(cfg, server_side, ("127.0.0.1", 1), ("127.0.0.1", 0))
        assert worker._head_pending(conn) is _DEFER  # nothing yet
        client_side.sendall(b"GET /healthz HTTP/1.1\r\nHost: cds\r\n")
        assert worker._head_pending(conn) is _DEFER
        client_side.sendall(b"X-More: 1\r\n\r\n")
        assert worker._head_pending(conn) is None
        assert conn.parser.unreader.buf.getvalue().endswith(b"X-More: 1\r\n\r\n")

        late = TConn(cfg, server_side, ("127.0.0.1", 1), ("127.0.0.1", 0))
        client_side.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert worker._head_pending(late) is _DEFER
        late._cds_head_since = time.monotonic() - HEAD_DEADLINE_S - 1
        client_side.sendall(b"Host: cds\r\n")
        assert worker._head_pending(late) is False
        worker.tmp.close()
        [answer] = answers(client_side.recv(65536))
    assert answer.status == 408
    assert json.loads(answer.body)["issue"][0]["diagnostics"] == HEAD_TIMEOUT_REASON


def test_a_body_reader_waits_no_later_than_the_body_deadline() -> None:
    """The idle timeout bounds each wait for the body's next bytes, not their sum: a client sending a
    byte every few seconds held a thread for as long as it went on."""
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        server_side.settimeout(10.0)  # the app's idle timeout
        reader = BodyDeadline(server_side, time.monotonic() + 0.3)
        client_side.sendall(b"x")
        assert reader.recv(10) == b"x"
        started = time.monotonic()
        with pytest.raises(BodyTooSlow):
            reader.recv(10)
        assert time.monotonic() - started < 1.0
        assert server_side.gettimeout() == 10.0, "the socket's own timeout is put back"
        with pytest.raises(BodyTooSlow):
            reader.recv(10)  # past the deadline: at once
