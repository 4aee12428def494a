"""Turn what went wrong talking to a FHIR server into one short sentence a person can act on.

These reasons end up in the 412 OperationOutcome that tells an EHR integrator why the service could not
get its data, so they name the server's own words (an OperationOutcome's diagnostics, the first part of a
text body) and the kind of network failure, and never carry request headers.
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
from collections.abc import Iterator

import requests
import urllib3.exceptions

from .read import array

TEXT_EXCERPT_CHARS = 200


def is_failed_search(outcome: object) -> bool:
    """An OperationOutcome in a searchset with an error or fatal issue: the search failed and its entries
    are not the whole answer (warnings and information do not count)."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    return any(
        isinstance(issue, dict) and issue.get("severity") in ("error", "fatal") for issue in array(issues)
    )


def operation_outcome_text(body: object) -> str | None:
    """The human text of an OperationOutcome (``diagnostics``, else ``details.text``), or None."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None
    texts = []
    for item in array(body.get("issue")):
        if not isinstance(item, dict):
            continue
        details = item.get("details") if isinstance(item.get("details"), dict) else {}
        text = item.get("diagnostics") or details.get("text")
        if not text:
            codings = details.get("coding") if isinstance(details.get("coding"), list) else []
            text = next((c.get("display") for c in codings if isinstance(c, dict) and c.get("display")), None)
        text = text or item.get("code")
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    return "; ".join(texts) if texts else "(no diagnostics given)"


def text_excerpt(raw: bytes | bytearray) -> str:
    """The first characters of a body, on one line, for quoting in a reason."""
    text = raw.decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    if len(text) > TEXT_EXCERPT_CHARS:
        return text[:TEXT_EXCERPT_CHARS] + "…"
    return text


def http_error_reason(status: int, url: str, parsed: object, raw: bytes | bytearray) -> str:
    """Why an HTTP error status means no data, quoting the server."""
    prefix = f"HTTP {status} from {url}"
    outcome = operation_outcome_text(parsed)
    if outcome is not None:
        return f"{prefix}: OperationOutcome: {outcome}"
    excerpt = text_excerpt(raw)
    if excerpt:
        return f"{prefix}: {excerpt}"
    if status == 404:
        return f"{prefix}: 404 not found"
    return prefix


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (``__cause__``, ``__context__``, urllib3's ``reason``)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += [arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)]
        stack.extend(item for item in nested if isinstance(item, BaseException))


def is_connection_reset(exc: BaseException) -> bool:
    """A dropped connection after it was open: the one failure worth a single retry of a GET.

    A reused keep-alive connection the server has closed shows up this way too; a refused connection does
    not (the server is down and a retry would only spend the budget).
    """
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout):
        return False
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError | socket.gaierror):
            return False
    return any(
        isinstance(cause, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected)
        or (isinstance(cause, OSError) and cause.errno in (errno.ECONNRESET, errno.EPIPE))
        for cause in _causes(exc)
    )


def exception_reason(exc: BaseException, url: str) -> str:
    """Why a request raised instead of answering."""
    causes = list(_causes(exc))
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return f"connection refused by {url}"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return f"host name of {url} could not be resolved"
    if any(isinstance(c, ssl.SSLError | requests.exceptions.SSLError) for c in causes):
        return f"TLS handshake with {url} failed"
    if is_connection_reset(exc):
        return f"connection reset by {url}"
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        limit = requests.models.DEFAULT_REDIRECT_LIMIT
        return f"{url} redirects in a loop (more than {limit} redirects)"
    if isinstance(exc, requests.exceptions.InvalidURL):
        return f"invalid request to {url}: {type(exc).__name__}"
    # What went wrong is the server's answer, not the network: say so, instead of "ConnectionError".
    # A malformed chunk is an IncompleteRead to urllib3, so it is asked about first.
    if any(isinstance(c, urllib3.exceptions.InvalidChunkLength) for c in causes):
        return f"the answer from {url} is not valid HTTP (a malformed chunk)"
    if any(isinstance(c, urllib3.exceptions.IncompleteRead | http.client.IncompleteRead) for c in causes):
        return f"the answer from {url} ended before the length it announced"
    if any(isinstance(c, http.client.LineTooLong) for c in causes):
        return f"the answer from {url} is not valid HTTP (a header or status line too long)"
    if any(isinstance(c, http.client.BadStatusLine) for c in causes):
        return f"the answer from {url} is not valid HTTP (no status line)"
    if any(isinstance(c, http.client.HTTPException | urllib3.exceptions.InvalidHeader) for c in causes):
        return f"the answer from {url} is not valid HTTP (its headers)"
    return f"request to {url} failed: {type(exc).__name__}"
