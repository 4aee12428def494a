"""The Flask application: routes, authentication, CORS and error handling — deliberately thin.

Every error leaves as a spec-shaped answer: an OperationOutcome with a reason for 4xx (the integrator needs
to know what to fix), a bare 401 for authentication (an attacker learns nothing), and a 500 that reveals
nothing internal while the log gets the details tied to the request's hookInstance.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson
from flask import Flask, Response, g, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import WebsocketMismatch

from cds_service import observability
from cds_service.clinical.engine import TOPICS
from cds_service.clinical.rules.common import prepare_proposals
from cds_service.config import Settings
from cds_service.feedback import (
    FeedbackError,
    FeedbackStore,
    IssuedCardRecorder,
    StoreUnavailable,
    parse_feedback,
    prepare_feedback_validator,
)
from cds_service.fhir.client import FhirClient
from cds_service.protocol.auth import Authenticator, AuthError, ReplayCheckUnavailable
from cds_service.protocol.request import (
    RequestError,
    is_json_content_type,
    nesting_refusal,
    parse_json_body,
    prepare_validators,
)
from cds_service.redis_client import redis_client
from cds_service.run_ahead import RunAheadCache
from cds_service.services import build_handler, unknown_service

log = logging.getLogger(__name__)

UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# A chunked body may come in this many pieces of any size; past that, they must average this many bytes.
FREE_CHUNKS = 1024
MIN_AVERAGE_CHUNK_BYTES = 32
# How much of a request's path a log line quotes (the service ids are 21 characters).
LOGGED_PATH_CHARS = 100
# A hookInstance as the request schema requires it: only such a value is logged with a refused call.
HOOK_INSTANCE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Longest wait for the next bytes of a request body under gunicorn (nginx's client_body_timeout, shorter).
BODY_IDLE_TIMEOUT_S = 10.0
# Longest a whole body may take to arrive under gunicorn (5 MB at under 1 Mbit/s), see BodyTooSlow.
BODY_DEADLINE_S = 60.0
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "86400",
}


class BodyTooSlow(TimeoutError):
    """The request body has not all arrived BODY_DEADLINE_S after its header section (gunicorn_worker's
    BodyDeadline). The idle timeout alone bounds each wait, not the sum: a client sending a byte every 9 s
    held a thread for as long as it went on."""


class TooManyChunks(ParseException):
    """A chunked body sent in more, and smaller, pieces than any HTTP client writes (see
    gunicorn_worker.fair_chunks): gunicorn spends about 2 µs on each, so 5 MB in one-byte chunks cost a
    worker 9 s of CPU, where the same body with a Content-Length costs milliseconds."""

    def __str__(self) -> str:
        return (
            f"The chunked request body arrives in too many small chunks (more than {FREE_CHUNKS}, with"
            f" fewer than {MIN_AVERAGE_CHUNK_BYTES} bytes each on average); send larger chunks or a"
            " Content-Length."
        )


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _without_content(status: int, headers: dict[str, str]) -> Response:
    """An answer with no body, so without Flask's default Content-Type (text/html) for it."""
    answer = Response(status=status, headers=headers)
    del answer.headers["Content-Type"]
    return answer


def operation_outcome(status: int, reason: str) -> Response:
    """A FHIR OperationOutcome carrying the reason, the shape EHR integrators look for in errors."""
    code = {
        404: "not-found",
        405: "not-supported",
        412: "not-found",
        413: "too-long",
        415: "not-supported",
        503: "transient",
    }
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code.get(status, "exception" if status >= 500 else "invalid"),
                "diagnostics": reason,
            }
        ],
    }
    return Response(orjson.dumps(body), status=status, mimetype="application/fhir+json")


def logged_path(path: str | None = None) -> str:
    """A request's path (this request's by default) for a log line or a 404/405 reason, at most
    LOGGED_PATH_CHARS of it.

    Any caller chooses it, up to gunicorn's 8190-byte request line: logged whole, every refused request
    could add 8 KB to a WARNING line (written at once, not batched), and a client that puts identifiers
    in the URL would have them all kept."""
    path = request.path if path is None else path
    return path if len(path) <= LOGGED_PATH_CHARS else path[:LOGGED_PATH_CHARS] + "…"


def check_configuration(settings: Settings) -> None:
    """Raise ConfigError for what `create_app` would refuse in the files it reads (clients, site config).

    `serve` calls it once before gunicorn starts: left to the workers, one mistake is reported once per
    worker among gunicorn's shutdown lines. Nothing is opened or connected here (that stays in the
    workers, after the fork). The stores' URLs and packages are checked too, not whether their servers
    answer: a store that is down when the service starts only keeps it from being ready.
    """
    if settings.auth == "required":
        Authenticator.trusted_clients(settings)
    build_handler(settings)
    if settings.redis_url:
        redis_client(settings.redis_url, timeout_s=1.0)  # built to check the URL; it connects nothing
    FeedbackStore.check_url(settings.feedback_db)


def create_app(settings: Settings) -> Flask:
    """Build the service. Configuration problems raise ConfigError here, at start, not at the first call."""
    authenticator = Authenticator(settings) if settings.auth == "required" else None
    if authenticator is None:
        log.warning("CDS_AUTH=off: every caller is trusted. Use this only for local testing.")
    else:
        log.info("client authentication: %s", authenticator.describe())
    feedback_store = FeedbackStore.open_for_service(settings.feedback_db)
    recorder = IssuedCardRecorder(settings.feedback_db)
    run_ahead = RunAheadCache(settings)
    log.info("%s", run_ahead.describe())
    handler = build_handler(settings, fhir_client=FhirClient(), run_ahead=run_ahead, on_cards=recorder.submit)

    # No static route, and no redirect for a path with "//": werkzeug answered POST
    # /cds-services//<id> with an HTML 308 to a URL built from the Host header, which an EHR's client
    # follows with the same body (fhirAuthorization's token included) to wherever Host pointed.
    app = Flask(__name__, static_folder=None)
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["cds"] = {"handler": handler, "feedback": feedback_store, "recorder": recorder}

    @app.before_request
    def authenticate() -> Response | None:
        g.client = None
        if "HTTP_HOST" not in request.environ and request.environ.get("SERVER_PROTOCOL") == "HTTP/1.1":
            # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
            return operation_outcome(400, "An HTTP/1.1 request must carry a Host header field.")
        if request.method == "OPTIONS":
            return _without_content(204, CORS_HEADERS)
        if authenticator is None or request.path in UNAUTHENTICATED_PATHS:
            return None
        try:
            g.client = authenticator.authenticate(request.headers.get("Authorization"), request.path)
        except ReplayCheckUnavailable as error:
            observability.observe_auth_rejection()
            log.warning("authentication refused for %s %s: %s", request.method, logged_path(), error)
            return operation_outcome(
                503,
                "The service cannot check this token for reuse right now (its replay store is unavailable); "
                "nothing was processed. Send the call again shortly, with a new token.",
            )
        except AuthError as error:
            observability.observe_auth_rejection()
            log.warning("authentication refused for %s %s: %s", request.method, logged_path(), error)
            return _without_content(401, {"WWW-Authenticate": "Bearer"})
        return None

    @app.after_request
    def cors(response: Response) -> Response:
        response.headers.update(CORS_HEADERS)
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        """Ready while the replay store answers (JWTs required) and the feedback store is writable, except
        that a shared feedback database already found writable only degrades: cards do not need it
        (docs/operations.md, "PostgreSQL going away while the service runs")."""
        problems = [authenticator.unready()] if authenticator is not None else []
        degraded = []
        why_not = feedback_store.unwritable()
        if why_not:
            problem = f"the feedback store ({feedback_store.describe()}) is not writable ({why_not})"
            (degraded if feedback_store.outage_spares_readiness() else problems).append(problem)
        reason = "; ".join(problem for problem in problems if problem)
        if reason:
            return json_response({"status": "not ready", "reason": reason}, 503)
        return json_response({"status": "ready", "degraded": degraded} if degraded else {"status": "ready"})

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = observability.metrics_response()
        return Response(body, content_type=content_type)

    @app.get("/cds-services")
    def discovery() -> Response:
        return json_response(handler.discovery_document())

    def read_json_body() -> Any:
        """The decoded body, read from the server's input stream with the size checked here.

        A chunked body has no Content-Length for the framework to check and would otherwise be cut
        short silently. A body with one is read in a single call: the framework's size-capped stream
        reads 64 KB at a time and copied a 220 KB body about three times as often as needed."""
        if not is_json_content_type(request.content_type):
            raise RequestError(415, "Send the request as JSON with Content-Type: application/json.")
        environ = request.environ
        coding = environ.get("HTTP_CONTENT_ENCODING")
        if coding is not None and coding.strip(" \t").lower() not in ("", "identity"):
            # The body was read as JSON whatever its coding: a gzip body was a 400 whose reason blamed its
            # UTF-8, and a body labelled gzip but sent plain was answered as if nothing were wrong.
            raise RequestError(
                415,
                "The request body's Content-Encoding is not supported; send it without one (identity).",
                headers={"Accept-Encoding": "identity"},
            )
        framing = environ.get("HTTP_TRANSFER_ENCODING")
        if framing is not None and framing.lower() != "chunked" and not only_chunked(framing):
            # gunicorn takes the chunks off a "gzip, chunked" body and leaves the gzip to the application.
            raise RequestError(501, "The request's Transfer-Encoding is not supported.")
        limit = settings.max_body_bytes
        length = request.content_length
        if length is not None:
            if length > limit:
                raise RequestEntityTooLarge()
            raw = read_input(length)
            if len(raw) < length:
                raise RequestError(400, f"The request body ended after {len(raw)} of {length} bytes.")
            return parse_json_body(raw)
        raw = read_input(limit + 1)
        if len(raw) > limit:
            raise RequestEntityTooLarge()
        return parse_json_body(raw)

    def only_chunked(framing: str) -> bool:
        """Whether a Transfer-Encoding names no coding but chunked (and identity, which changes nothing)."""
        return all(coding.strip(" \t").lower() in ("chunked", "identity") for coding in framing.split(","))

    def read_input(size: int) -> bytes:
        """Up to ``size`` bytes of the body; a body the server cannot decode is the caller's 400.

        gunicorn decodes a chunked body while the app reads it, and raises on bad framing (a chunk size
        that is not hex, a missing terminator, a connection closed mid-body). Its message quotes the
        body's bytes, which may hold an access token, so it goes neither into the reason nor the log.

        gunicorn's sockets block without a timeout while the app reads: a client that sent its headers
        and then part of the body, or nothing more, held the thread until it hung up (slowloris; a
        worker has 4). So the socket waits at most BODY_IDLE_TIMEOUT_S for each next piece: a 400, like a
        body that ended early."""
        sock = request.environ.get("gunicorn.socket")
        previous = sock.gettimeout() if sock is not None else None
        try:
            if sock is not None:
                sock.settimeout(BODY_IDLE_TIMEOUT_S)
            return request.input_stream.read(size)
        except BodyTooSlow:
            raise RequestError(
                400, f"The request body did not arrive within {BODY_DEADLINE_S:g} s of its header section."
            ) from None
        except TimeoutError:
            raise RequestError(
                400, f"The request body stopped arriving: nothing came for {BODY_IDLE_TIMEOUT_S:g} s."
            ) from None
        except TooManyChunks as error:
            raise RequestError(400, str(error)) from None
        except (ParseException, OSError):
            raise RequestError(
                400,
                "The request body could not be read: its chunked framing is malformed or it ended early.",
            ) from None
        finally:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(previous)

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str) -> Response:
        started = time.perf_counter()
        trace = observability.CallTrace(service=service_id)
        body = None
        try:
            if service_id not in handler.services:
                raise unknown_service(service_id)
            with trace.phase("validation"):
                body = read_json_body()
            if isinstance(body, dict) and isinstance(body.get("hookInstance"), str):
                trace.hook_instance = body["hookInstance"][:64]
            answer = handler.handle(service_id, body, g.client, trace)
            trace.topics = [card["source"]["topic"]["code"] for card in answer["cards"]]
            response = json_response(answer)
        except RequestError as error:
            response = refused_call(error, trace)
        except RequestEntityTooLarge:
            response = operation_outcome(
                413, f"The request body is larger than {settings.max_body_bytes} bytes."
            )
        except Exception as error:
            too_deep = nesting_refusal(error, body)
            if too_deep is not None:
                response = refused_call(too_deep, trace)
            else:
                keep_hook_instance_if_valid(trace)
                log.exception("hook call failed", extra={"hookInstance": trace.hook_instance})
                response = operation_outcome(
                    500, "The service failed to process this request; it has been logged."
                )
        trace.status = response.status_code
        observability.finish_call(trace, (time.perf_counter() - started) * 1000.0)
        return response

    def keep_hook_instance_if_valid(trace: observability.CallTrace) -> None:
        """A refused or failed call, which may not have passed validation, logs the hookInstance only if
        it is a UUID: any other string (up to 64 characters) was the caller's free text in the service's
        log, a patient's identifier for a client that put one there. Checked only for such calls."""
        if trace.hook_instance is not None and not HOOK_INSTANCE.fullmatch(trace.hook_instance):
            trace.hook_instance = None

    def refused_call(error: RequestError, trace: observability.CallTrace) -> Response:
        keep_hook_instance_if_valid(trace)
        log.info(
            "hook call refused (%d): %s",
            error.status,
            error.log_reason,
            extra={"hookInstance": trace.hook_instance},
        )
        return refusal(error)

    def refusal(error: RequestError) -> Response:
        response = operation_outcome(error.status, error.reason)
        if error.headers:
            response.headers.update(error.headers)
        return response

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str) -> Response:
        body = None
        try:
            if service_id not in handler.services:
                raise unknown_service(service_id)
            body = read_json_body()
            items = parse_feedback(body)
        except FeedbackError as error:
            return refused_feedback(RequestError(400, str(error)))
        except RequestError as error:
            return refused_feedback(error)
        except RecursionError as error:
            too_deep = nesting_refusal(error, body)
            if too_deep is None:
                raise
            return refused_feedback(too_deep)
        try:
            new = feedback_store.add_feedback(service_id, items)
        except StoreUnavailable as error:
            log.warning("feedback not stored: %s is unavailable (%s)", feedback_store.describe(), error)
            return operation_outcome(
                503, "The feedback store is unavailable right now; nothing was stored. Send it again later."
            )
        for item, is_new in zip(items, new, strict=True):
            observability.observe_feedback(item.outcome, duplicate=not is_new)
        return json_response({"received": len(items), "stored": sum(new)})

    def refused_feedback(error: RequestError) -> Response:
        log.info("feedback refused (%d): %s", error.status, error.log_reason)
        return refusal(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        reasons = {
            404: f"Nothing is served at {logged_path()}{slash_hint() if status == 404 else ''}; the services "
            "are listed at /cds-services.",
            405: f"{request.method} is not allowed on {logged_path()}.",
            413: f"The request body is larger than {settings.max_body_bytes} bytes.",
        }
        if isinstance(error, WebsocketMismatch):  # werkzeug's text blamed "the browser (or proxy)"
            reasons[400] = "WebSocket upgrades are not served; send the request without 'Upgrade: websocket'."
        response = operation_outcome(status, reasons.get(status, error.description or error.name))
        if status == 405 and isinstance(error.valid_methods, list | tuple | set):
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return response

    def slash_hint() -> str:
        """For a path that is served without its trailing slash (an EHR configured with
        .../b12-iron-patient-view/), where to send it instead; "" otherwise."""
        path = request.path
        if len(path) < 2 or not path.endswith("/"):
            return ""
        candidate = path.rstrip("/")
        try:
            app.url_map.bind("localhost").match(candidate, method=request.method)
        except HTTPException:
            return ""
        return f" (it is served without the trailing slash: {logged_path(candidate)})"

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, logged_path())
        return operation_outcome(500, "The service failed to process this request; it has been logged.")

    prepare_for_calls(handler.services)
    return app


def prepare_for_calls(services: Iterable[str]) -> None:
    """Build now what the first calls would otherwise build, inside an EHR's time budget.

    Left to first use, schema validators, the metrics and the R4B models that proposals are checked
    against added about 50 ms to each fresh worker's first hook call (benchmarks/bench_first_call.py).
    Done here, in the worker before it accepts calls, they also land in the heap the server freezes.
    The metrics start with a zero series for each of ``services`` and card topics, so that alerts and
    dashboards have a series to evaluate before the first event.
    """
    prepare_validators()
    prepare_feedback_validator()
    observability.prepare_metrics(services, TOPICS)
    prepare_proposals()
