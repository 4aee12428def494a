"""Raw HTTP against a real `cds-service serve`: request framing, codings and charsets, and what is logged.

Every answer must be one clear, spec-shaped status with the service's OperationOutcome, read the body as
the client meant it or refuse it, and leave the worker running: after each test the server's log gains no
stack trace, no ERROR line and no new worker.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.gunicorn_worker import SEND_TIMEOUT_S
from tests.support.raw_http import Answer, answers, chunked, exchange
from tests.support.served import HOOKS_NOW, Served, hook_example

pytestmark = pytest.mark.integration

HOOK_PATH = "/cds-services/b12-iron-patient-view"
FEEDBACK_PATH = f"{HOOK_PATH}/feedback"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n"
BODY = orjson.dumps(hook_example("patient-view.json"))
FEEDBACK = orjson.dumps(
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


def one_answer(port: int, request: bytes) -> Answer:
    [answer] = [a for a in answers(exchange(port, request)) if a.status >= 200]
    return answer


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: cds", *headers]
    if not any(h.lower().startswith("content-type:") for h in headers):
        head.append("Content-Type: application/json")
    if not any(h.lower().startswith("transfer-encoding:") for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("http-attacks"), workers=1, threads=2, CDS_NOW=HOOKS_NOW)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def worker_unharmed(served: Served) -> Iterator[None]:
    """Nothing a test sends may cost a stack trace, an ERROR line or the worker. WARNING and above are
    written before the answer leaves (only INFO lines are batched), so a short wait is enough."""
    seen = len(served.log_entries())
    yield
    time.sleep(0.05)
    new = served.log_entries()[seen:]
    assert not [e for e in new if "exception" in e or e["level"] in ("ERROR", "CRITICAL")], new
    booted = [e for e in served.log_entries() if str(e.get("message", "")).startswith("Booting worker")]
    assert len(booted) == 1, "a worker was restarted"


@pytest.mark.parametrize(("path", "body"), [(HOOK_PATH, BODY), (FEEDBACK_PATH, FEEDBACK)])
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "x-unknown", "gzip, identity"])
def test_a_body_in_a_content_coding_is_a_415_naming_it_and_offering_identity(
    served: Served, path: str, body: bytes, coding: str
) -> None:
    """Before, the body was read as JSON whatever its coding: gzip was a 400 blaming its UTF-8."""
    coded = gzip.compress(body) if coding.startswith("gzip") else body
    answer = one_answer(served.port, post(path, coded, f"Content-Encoding: {coding}"))
    assert answer.status == 415
    assert "Content-Encoding" in answer.reason()
    assert answer.headers["accept-encoding"] == "identity"


def test_a_plain_body_labelled_gzip_is_refused_not_read_as_if_plain(served: Served) -> None:
    """The misread: a body that says it is gzip but is not was answered 200 with cards."""
    answer = one_answer(served.port, post(HOOK_PATH, BODY, "Content-Encoding: gzip"))
    assert answer.status == 415


@pytest.mark.parametrize("coding", ["identity", "Identity", ""])
def test_the_identity_content_coding_is_read_as_it_is(served: Served, coding: str) -> None:
    answer = one_answer(served.port, post(HOOK_PATH, BODY, f"Content-Encoding: {coding}"))
    assert answer.status == 200
    assert json.loads(answer.body)["cards"]


@pytest.mark.parametrize("codings", ["gzip, chunked", "deflate, chunked", "compress, chunked"])
@pytest.mark.parametrize("compressed", [True, False])
def test_a_transfer_coding_besides_chunked_is_a_501_not_left_in_the_body(
    served: Served, codings: str, compressed: bool
) -> None:
    """gunicorn takes the chunks off and leaves the gzip to the application, which read it as JSON: a
    plain body labelled "gzip, chunked" was answered 200, a gzip one 400 blaming its UTF-8."""
    body = gzip.compress(BODY) if compressed else BODY
    answer = one_answer(served.port, post(HOOK_PATH, chunked(body), f"Transfer-Encoding: {codings}"))
    assert answer.status == 501
    assert answer.reason() == "The request's Transfer-Encoding is not supported."


@pytest.mark.parametrize(
    "framed",
    [
        chunked(BODY),
        b"%x;name=value\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),  # a chunk extension
        b"%x\r\n%s\r\n0\r\nX-Checksum: abc\r\n\r\n" % (len(BODY), BODY),  # a trailer field
        chunked(BODY, 16),  # 464 small chunks: a body of up to 1024 passes whatever their sizes
    ],
    ids=["plain", "extension", "trailer", "small-chunks"],
)
@pytest.mark.parametrize("codings", ["chunked", "Chunked", "identity, chunked"])
def test_a_chunked_body_is_read_whole(served: Served, framed: bytes, codings: str) -> None:
    answer = one_answer(
        served.port,
        post(HOOK_PATH, framed, "Content-Type: application/json", f"Transfer-Encoding: {codings}"),
    )
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["cards"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/fhir+json; charset=utf-8",
        # RFC 8259 11: no charset is defined for JSON and one "has no effect on compliant recipients"
        "application/json; charset=iso-8859-1",
    ],
)
def test_json_is_read_as_utf8_whatever_charset_is_named(served: Served, content_type: str) -> None:
    body = hook_example("patient-view.json")
    body["context"]["userId"] = "Practitioner/ärztin-ø"  # non-ASCII, in UTF-8
    answer = one_answer(served.port, post(HOOK_PATH, orjson.dumps(body), f"Content-Type: {content_type}"))
    assert answer.status in (200, 400), answer.body
    assert answer.status == 200 or "userId" in answer.reason()


@pytest.mark.parametrize(
    ("content_type", "raw", "why"),
    [
        (
            "application/json; charset=iso-8859-1",
            BODY.replace(b'"patient-view"', b'"patient-vi\xe9w"'),
            "is not UTF-8",
        ),
        ("application/json; charset=utf-16", BODY.decode().encode("utf-16"), "UTF-16 or UTF-32"),
        ("application/json", BODY.decode().encode("utf-16-le"), "UTF-16 or UTF-32"),
        ("application/json", BODY.replace(b"{", b"{\xff", 1), "byte 1 is not UTF-8"),
    ],
    ids=["latin-1", "utf-16-with-bom", "utf-16-le", "stray-byte"],
)
def test_a_body_that_is_not_utf8_is_a_400_saying_so(
    served: Served, content_type: str, raw: bytes, why: str
) -> None:
    """orjson's own message said "surrogates not allowed" at column 1, whatever and wherever the bytes."""
    answer = one_answer(served.port, post(HOOK_PATH, raw, f"Content-Type: {content_type}"))
    assert answer.status == 400
    assert "is not UTF-8 text" in answer.reason() and why in answer.reason()


def test_a_body_after_a_utf8_byte_order_mark_is_read(served: Served) -> None:
    """RFC 8259 lets a parser ignore it, and .NET writers add one by default (78389a3)."""
    answer = one_answer(served.port, post(HOOK_PATH, b"\xef\xbb\xbf" + BODY))
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["cards"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/cds-services//b12-iron-patient-view"),
        ("POST", "/cds-services//b12-iron-patient-view/feedback"),
        ("POST", "/cds-services/b12-iron-patient-view//feedback"),
        ("GET", "/cds-services//"),
        ("GET", "/static//x"),
    ],
)
def test_a_path_with_doubled_slashes_is_a_404_not_a_redirect_to_the_host_header(
    served: Served, method: str, path: str
) -> None:
    """werkzeug merged the slashes with an HTML 308 to http://<Host header>/cds-services/…, which an EHR
    client follows with the same body, fhirAuthorization's access token included. (Leading slashes are
    another matter: werkzeug reads "//cds-services" as "/cds-services", without a redirect.)"""
    request = post(path, BODY, "Host: evil.example") if method == "POST" else b""
    if method == "GET":
        request = f"GET {path} HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode()
    answer = one_answer(served.port, request.replace(b"Host: cds\r\n", b""))
    assert answer.status == 404
    assert "location" not in answer.headers
    assert answer.reason().startswith("Nothing is served at")


@pytest.mark.parametrize(("method", "path"), [("GET", "/healthz"), ("POST", HOOK_PATH)])
def test_a_websocket_upgrade_is_a_400_saying_so(served: Served, method: str, path: str) -> None:
    """werkzeug refuses it with "The browser (or proxy) sent a request that this server could not
    understand", which pointed an integrator nowhere."""
    headers = ("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13")
    request = (
        post(path, BODY, *headers)
        if method == "POST"
        else ("\r\n".join([f"GET {path} HTTP/1.1", "Host: cds", *headers]) + "\r\n\r\n").encode()
    )
    answer = one_answer(served.port, request)
    assert answer.status == 400
    assert "WebSocket upgrades are not served" in answer.reason()


def test_a_deeply_nested_draft_order_is_a_400_on_the_served_instance(served: Served) -> None:
    """A worker thread's stack is not pytest's: the same refusal, not a 500, under gunicorn too."""
    sign = hook_example("order-select-cyanocobalamin.json") | {"hook": "order-sign"}
    del sign["context"]["selections"]
    sign["context"]["draftOrders"]["entry"][0]["resource"]["note"] = "__nested__"
    raw = orjson.dumps(sign).replace(b'"__nested__"', b"[" * 1000 + b"]" * 1000)
    answer = one_answer(served.port, post("/cds-services/b12-iron-order-sign", raw))
    assert answer.status == 400
    assert "levels deep" in answer.reason()


def test_requests_pipelined_after_refusals_are_each_answered_in_order(served: Served) -> None:
    """A refused request whose body was read (or drained) leaves the connection usable for the next."""
    requests = [
        post(HOOK_PATH, b"{not json"),
        b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n",
        post(HOOK_PATH, BODY, "Content-Type: text/plain"),
        post("/cds-services/nope", BODY),
        post(HOOK_PATH, BODY, "Content-Encoding: gzip"),
        b"PUT " + HOOK_PATH.encode() + b" HTTP/1.1\r\nHost: cds\r\nContent-Length: 5\r\n\r\nabcde",
        post(FEEDBACK_PATH, b'{"feedback": 1}'),
        post(HOOK_PATH, chunked(b"[1, 2]"), "Transfer-Encoding: chunked"),
        post(HOOK_PATH, BODY, "Expect: 100-continue"),
        post(HOOK_PATH, BODY),
    ]
    replies = [a for a in answers(exchange(served.port, b"".join(requests))) if a.status >= 200]
    assert [a.status for a in replies] == [400, 200, 415, 404, 415, 405, 400, 400, 200, 200]
    assert all(json.loads(a.body) for a in replies)


def test_a_request_whose_framing_is_broken_ends_the_connection_after_its_answer(served: Served) -> None:
    """Where the next request would start is unknown, so nothing after it is read as a request."""
    broken = b"POST " + HOOK_PATH.encode() + b" HTTP/1.1\r\nHost: cds\r\nContent-Type: application/json\r\n"
    broken += b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: cds\r\n\r\n"
    replies = answers(exchange(served.port, broken + smuggled))
    assert [a.status for a in replies] == [400]
    assert replies[0].headers["connection"] == "close", "the answer promised to keep the connection"


# The statuses a clear refusal may have; never 500, never an HTML page, never silence.
CLEAR = {200, 204, 400, 404, 405, 412, 413, 414, 415, 417, 431, 501}
METHODS = [
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "FOO",
    "get",
    "pOST",
    "G\tT",
]
TARGETS = [
    "/healthz",
    "/cds-services",
    HOOK_PATH,
    FEEDBACK_PATH,
    "/cds-services/b12-iron-order-sign",
    "/cds-services/nope",
    "/cds-services/%ff%fe%00",
    "/cds-services/%2e%2e/%2e%2e/etc/passwd",
    "//cds-services",
    "/cds-services//x",
    "*",
    "http://evil.example/cds-services",
    "cds-services",
    "/x?" + "q" * 300,
    "/" + "p" * 9000,
    "",
]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "http/1.1", "HTTP/0.9", ""]
FIELDS = [
    "Content-Type: application/json",
    "Content-Type: text/plain",
    "Content-Type: application/json; charset=utf-16",
    "Content-Length: 2",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Content-Encoding: gzip",
    "Expect: 100-continue",
    "Connection: close",
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Upgrade: h2c",
    "Authorization: Bearer eyJhbGciOiJSUzM4NCJ9.secret-token-for-fuzz.sig",
]
# Each alone makes gunicorn refuse the request.
BAD_FIELDS = [
    "Content-Length: 2\r\nContent-Length: 2",
    "Content-Length: 3\r\nTransfer-Encoding: chunked",
    "Content-Length: -1",
    "Content-Length: 99999999999999999999",
    "Transfer-Encoding: xchunked",
    "Expect: teapot",
    "Host: other",
    "X-Folded: a\r\n b",
    "No colon here",
    "Bad Name: x",
    "X-Long: " + "l" * 9000,
    "X-Nul: a\x00b",
]
BODIES = [b"", b"{}", b"{not json", BODY, chunked(BODY), b"zz\r\n{}\r\n0\r\n\r\n", b"\xff\xfe\x00", FEEDBACK]


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Mostly well-formed requests with one odd part, sometimes several; the body's Content-Length is
    usually right."""

    def usually(common: list[str], odd: list[str]) -> str:
        return draw(st.sampled_from(odd if draw(st.integers(0, 4)) == 0 else common))

    method = usually(["GET", "POST", "POST"], METHODS)
    target = usually([HOOK_PATH, FEEDBACK_PATH, "/healthz"], TARGETS)
    version = usually(["HTTP/1.1"], VERSIONS)
    body = draw(st.sampled_from([BODY, FEEDBACK]) | st.sampled_from(BODIES))
    fields = ["Host: cds", *draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True))]
    if "Transfer-Encoding" not in " ".join(fields) and draw(st.integers(0, 4)):
        fields.append(f"Content-Length: {len(body)}")
    if draw(st.integers(0, 3)) == 0:
        fields.append(draw(st.sampled_from(BAD_FIELDS)))
    if draw(st.integers(0, 7)) == 0:
        fields += [f"X-Many-{n}: {n}" for n in range(draw(st.integers(90, 110)))]
    line = " ".join(part for part in (method, target, version) if part)
    return (line + "\r\n" + "".join(f"{field}\r\n" for field in fields) + "\r\n").encode("latin-1") + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pipeline=st.lists(raw_requests(), min_size=1, max_size=3))
def test_any_request_gets_a_clear_status_and_the_services_json_error(
    served: Served, pipeline: list[bytes]
) -> None:
    started = time.monotonic()
    raw = exchange(served.port, b"".join(pipeline))
    assert time.monotonic() - started < 12, "the server held the connection"
    replies = [a for a in answers(raw) if a.status >= 200]
    assert replies, "no answer"
    for reply in replies:
        assert reply.status in CLEAR, reply
        if reply.status >= 400:
            assert reply.reason(), reply
    assert b"secret-token-for-fuzz" not in raw


def test_a_body_in_thousands_of_tiny_chunks_is_refused_before_it_costs_seconds(served: Served) -> None:
    """gunicorn spends about 2 µs per chunk: 5 MB in one-byte chunks held a worker for 9 s of CPU."""
    padded = hook_example("patient-view.json") | {"extension": {"padding": "p" * 400_000}}
    started = time.monotonic()
    answer = one_answer(
        served.port, post(HOOK_PATH, chunked(orjson.dumps(padded), 1), "Transfer-Encoding: chunked")
    )
    assert answer.status == 400
    assert "too many small chunks" in answer.reason()
    assert time.monotonic() - started < 1.0


def test_a_large_body_in_chunks_of_64_bytes_is_read(served: Served) -> None:
    padded = hook_example("patient-view.json") | {"extension": {"padding": "p" * 100_000}}
    framed = chunked(orjson.dumps(padded), 64)
    assert framed.count(b"\r\n") > 2 * 1024
    answer = one_answer(served.port, post(HOOK_PATH, framed, "Transfer-Encoding: chunked"))
    assert answer.status == 200, answer.body


def test_tiny_chunks_after_a_refusal_are_not_drained_for_long(served: Served) -> None:
    """A 404 leaves the body unread; gunicorn drains it before reusing the connection, chunk by chunk."""
    framed = chunked(b"x" * 60_000, 1)
    request = post("/cds-services/nope", framed, "Transfer-Encoding: chunked")
    replies = answers(exchange(served.port, request + b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n"))
    assert [a.status for a in replies] == [404]


def test_slow_and_silent_connections_do_not_hold_the_workers_threads(served: Served) -> None:
    """gthread gave each new connection a thread that waited up to 5 s for its first byte, and read a head
    that had begun to arrive with no time limit: twelve connections sending a header line every few seconds
    kept /healthz unanswered (this server has 2 threads) for as long as they went on."""
    slow = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(8)]
    silent = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: cds\r\n")
        for round_ in range(3):
            for sock in slow:
                sock.sendall(b"X-Slow: %d\r\n" % round_)
            started = time.monotonic()
            [answer] = answers(exchange(served.port, b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n"))
            assert answer.status == 200
            assert time.monotonic() - started < 1.0, "a thread was held by a slow or silent connection"
        for sock in slow:  # a head that completes in the end is answered as usual
            sock.sendall(b"\r\n")
            assert answers(sock.recv(65536))[0].status == 200
    finally:
        for sock in slow + silent:
            sock.close()


def test_clients_that_keep_their_socket_open_after_a_closing_answer_do_not_stall_the_worker(
    served: Served,
) -> None:
    """gunicorn lingered up to 2 s per such connection on the worker's main loop: five of them kept every
    other call on the worker waiting about 10 s."""
    held = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(5)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: cds\r\nConnection: close\r\n\r\n")
        for sock in held:  # each gets its answer, then the server's end of the stream
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            assert [a.status for a in answers(received)] == [200]
        started = time.monotonic()
        [answer] = answers(exchange(served.port, b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n"))
        assert answer.status == 200
        assert time.monotonic() - started < 1.0
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    "request_head",
    [
        "POST /cds-services/nope HTTP/1.1\r\nHost: cds\r\nContent-Type: application/json\r\n",
        f"POST {HOOK_PATH} HTTP/1.1\r\nHost: cds\r\nContent-Type: text/plain\r\n",
        "GET /healthz HTTP/1.1\r\nHost: cds\r\n",
    ],
    ids=["404", "415", "200"],
)
def test_a_declared_body_that_never_comes_does_not_hold_a_thread_after_the_answer(
    served: Served, request_head: str
) -> None:
    """gunicorn drains a body the app left unread before it reuses the connection, on the request's thread,
    for up to 5 s: four connections that announced a body and sent none kept /healthz (this server has 2
    threads) waiting 10 s, and any caller could, since a 404 or a 401 leaves the body unread. Such an
    answer now closes the connection instead (lingering off the threads)."""
    held = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(f"{request_head}Content-Length: 1000\r\n\r\n".encode())
        time.sleep(0.3)
        started = time.monotonic()
        [answer] = answers(exchange(served.port, b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n"))
        assert answer.status == 200
        assert time.monotonic() - started < 1.0, "a thread was held draining a body that never came"
        for sock in held:
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            [refused] = answers(received)
            assert refused.headers["connection"] == "close"
    finally:
        for sock in held:
            sock.close()


def test_clients_that_stop_reading_their_answers_do_not_hold_the_workers_threads(served: Served) -> None:
    """A client that sends requests and never reads the answers fills the socket's buffers, and gunicorn's
    write of the next answer then blocked without a time limit: two such connections (this server has 2
    threads) kept /healthz unanswered for as long as they stayed open. A write not done within
    SEND_TIMEOUT_S now ends its connection."""
    stalled = []
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", served.port))
        sock.settimeout(5)
        sock.sendall(b"GET /cds-services HTTP/1.1\r\nHost: cds\r\n\r\n" * 2000)
        stalled.append(sock)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        [answer] = answers(exchange(served.port, b"GET /healthz HTTP/1.1\r\nHost: cds\r\n\r\n", timeout_s=30))
        assert answer.status == 200
        assert time.monotonic() - started < SEND_TIMEOUT_S + 5
    finally:
        for sock in stalled:
            sock.close()
    assert "stopped reading" in served.log()


@pytest.mark.parametrize(
    "fields",
    [
        "Connection: TE, close\r\nTE: trailers",
        "Connection: keep-alive, close",
        "Connection: Close , X-Other",
        "Connection: keep-alive\r\nConnection: close",
    ],
)
def test_a_close_option_among_others_ends_the_connection_after_its_answer(
    served: Served, fields: str
) -> None:
    """RFC 9112 9.6: a server that receives the "close" connection option must close the connection after
    answering. gunicorn looked only at a first Connection field equal to "close", so "Connection: TE, close"
    (as some clients send it) was answered keep-alive and the request pipelined behind it served too."""
    first = f"GET /healthz HTTP/1.1\r\nHost: cds\r\n{fields}\r\n\r\n".encode()
    replies = answers(exchange(served.port, first + b"GET /metrics HTTP/1.1\r\nHost: cds\r\n\r\n"))
    assert [a.status for a in replies] == [200]
    assert replies[0].headers["connection"] == "close"


HEAD_STATUS = {
    "/healthz": 200,
    "/readyz": 200,
    "/metrics": 200,
    "/cds-services": 200,
    HOOK_PATH: 405,
    FEEDBACK_PATH: 405,
    "/cds-services/nope": 405,  # the hook route's pattern matches, for POST only
    "/nope": 404,
}


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
@pytest.mark.parametrize("path", list(HEAD_STATUS))
def test_head_and_options_on_each_route_are_answered_without_a_body_on_a_kept_connection(
    served: Served, method: str, path: str
) -> None:
    """A HEAD answer carries the GET's Content-Length but no body, so nothing may come between it and the
    answer to the request pipelined behind it; OPTIONS is the CORS preflight's 204 on every path."""
    raw = exchange(served.port, f"{method} {path} HTTP/1.1\r\nHost: cds\r\n\r\n".encode() + HEALTHZ)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert int(head.split(b" ")[1]) == (HEAD_STATUS[path] if method == "HEAD" else 204)
    assert b"\r\nConnection: keep-alive\r\n" in head
    [health] = answers(rest)  # the next answer starts right after the head
    assert health.status == 200


def test_a_head_that_stops_arriving_is_answered_408_when_its_connection_is_dropped(served: Served) -> None:
    """gthread drops a connection whose head has not completed after the keep-alive timeout (5 s) without
    a word: only a head still trickling in got the worker's 408, at HEAD_DEADLINE_S."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: cds\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    [answer] = answers(received)
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert "stopped arriving" in answer.reason()


@pytest.mark.parametrize(
    ("field", "request_line", "body"),
    [
        ("SCRIPT_NAME: /elsewhere", "GET /healthz", b""),
        ("SCRIPT_NAME: /cds-services", f"POST {HOOK_PATH}", BODY),
        ("PATH_INFO: /metrics", "GET /healthz", b""),
    ],
    ids=["script-name-outside-the-path", "script-name-prefix", "path-info"],
)
def test_script_name_and_path_info_fields_do_not_reroute_a_request(
    served: Served, field: str, request_line: str, body: bytes
) -> None:
    """gunicorn takes SCRIPT_NAME and PATH_INFO header fields from a peer in forwarded_allow_ips (loopback
    by default, so any proxy beside the service in its pod) as the request's mount point and path: a
    SCRIPT_NAME the path did not start with was a 500, and one it did moved the call to another route.
    The service is mounted at the root; those fields are now dropped like any other with an underscore."""
    head = f"{request_line} HTTP/1.1\r\nHost: cds\r\n{field}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    answer = one_answer(served.port, (head + "\r\n").encode() + body)
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["cards" if body else "status"]


def test_a_client_still_sending_its_body_after_a_refusal_gets_to_read_it(served: Served) -> None:
    """A refusal given before the body arrived closes the connection; a client that sends its whole body
    before reading (http.client, urllib3) was still sending when the close's linger ended after 2 s, was
    reset, and never read its 404 (or 401). The linger lasts as long as a body may take to arrive."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(
            b"POST /cds-services/nope HTTP/1.1\r\nHost: cds\r\nContent-Type: application/json\r\n"
            b"Content-Length: 40960\r\n\r\n"
        )
        for _ in range(40):  # 4 s
            time.sleep(0.1)
            sock.sendall(b"x" * 1024)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    [answer] = answers(received)
    assert answer.status == 404


@pytest.mark.parametrize("path", ["/healthz", HOOK_PATH])
def test_an_http_1_1_request_without_host_is_a_400(served: Served, path: str) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host; it was served (200 on
    /healthz, a hook call answered). HTTP/1.0, where Host is optional, is still served."""
    request = post(path, BODY) if path == HOOK_PATH else f"GET {path} HTTP/1.1\r\nHost: cds\r\n\r\n".encode()
    answer = one_answer(served.port, request.replace(b"Host: cds\r\n", b""))
    assert answer.status == 400
    assert "Host header" in answer.reason()
    old = one_answer(served.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert old.status == 200
