"""Fetch what the prefetch lacked from the EHR's FHIR server: all queries at once, under one time budget.

A hook call has a deadline measured in hundreds of milliseconds, and each missing prefetch key is a
separate query, so the queries run side by side in a thread pool and the call gives up on whatever is
still outstanding when the budget runs out. Each key's answer is either the data (a resource, or a
searchset Bundle with every page merged) or one sentence saying why not, which the service turns into
a 412 that names the missing data.

The access token goes only to the origin of the base URL the caller already vetted with
``fhir_server_allowed``: a paging link that points anywhere else is not followed, redirects are not
followed, and nothing here logs a header.

What a server sends is held to the budget and to FHIR's rules, whoever the server is: bodies are
decompressed and parsed only as far as the time left allows (``decoding``); a search's entries must be of
the type searched for, or included because it asked; a next link back to a page already read fails the
key; a 429 or 503 is asked once more only when the wait it names fits the budget. And to the memory
of the process: every body is counted against one budget for the worker's FHIR answers held at once
(``memory``), and one with no room left fails its key instead of taking the worker past its limit.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import parse_qsl, urljoin, urlsplit

import orjson
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from cds_service.redaction import address, token_pattern, without_tokens

from .decoding import (
    ACCEPT_ENCODING,
    BodyDecoder,
    CorruptBody,
    UnsupportedCoding,
    parse_cost_s,
    structural_tokens,
)
from .errors import (
    exception_reason,
    http_error_reason,
    is_connection_reset,
    is_failed_search,
    operation_outcome_text,
)
from .memory import PROCESS_MEMORY, MemoryBudget, Reservation, parse_need
from .read import next_link
from .servers import Target, fhir_server_allowed, target_of

__all__ = [
    "FetchOutcome",
    "FhirClient",
    "fhir_server_allowed",
    "merge_search_pages",
]

log = logging.getLogger(__name__)
# urllib3 writes every request's URL at DEBUG ('"GET /baseR4/Observation?patient=123&…" 200'), and every
# FHIR query names the patient: with CDS_LOG_LEVEL=DEBUG each fetch put the patient's id in the service's
# log. Its lines say nothing the service's own do not (the debug line per key, the warning per failure).
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

FHIR_JSON = "application/fhir+json"
DEFAULT_CONNECT_TIMEOUT_S = 1.0
DEFAULT_MAX_WORKERS = 16
# 20 times the largest page of the SMART sandbox's densest chart (190 KB, 200 Observations). A FHIR page
# this large needs about 38 MiB to be read and parsed (``memory.parse_need``), which leaves room in the
# process's budget for ordinary calls beside it; at 32 MiB, anything over about 7 MiB could never be read
# at all, and was refused only after taking the whole budget from every other call of the worker.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# A body's memory is counted against the process's budget (``memory``) once it is read, or as it is read
# once it needs more than this: the one reservation of an ordinary page (1.7 MiB for the SMART sandbox's
# largest, 200 Observations), and at most this much uncounted per fetch while a larger body arrives.
_UNCOUNTED_BYTES = 2 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024
# Starting a request with less time than this left cannot succeed; call it a timeout straight away.
_MIN_ATTEMPT_S = 0.002
# A busy server's Retry-After is waited for only when this much of the budget is left after the wait.
_MIN_RETRY_ANSWER_S = 0.1


@dataclass(frozen=True)
class FetchOutcome:
    """What became of one prefetch key: the data, or why there is none."""

    key: str
    url: str
    resource: dict | None
    error: str | None
    status: int | None
    requests: int
    elapsed_ms: float
    warnings: tuple[str, ...] = ()
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.resource is not None


class _Failure(Exception):
    """A key cannot be had; ``reason`` is the sentence that ends up in the 412."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _Retryable(Exception):
    """The connection was reset; the GET may be sent once more."""


class _Busy(Exception):
    """A 429 or 503 whose server asks to be asked again after ``after_s``, which fits the budget."""

    def __init__(self, after_s: float, failure: _Failure) -> None:
        super().__init__(failure.reason)
        self.after_s = after_s
        self.failure = failure


@dataclass
class _Progress:
    """Shared between a worker and the waiting caller, so a key cut off by the budget still reports
    how many requests it made, and so the caller can cut off the worker's connection when the budget
    ends (``abort``). ``memory`` is what the key's bodies hold of the process's memory budget: the
    worker gives it back when the key fails, the caller once the answer has left the client
    (``memory_released``, a done callback of the key's future, whichever ends last)."""

    memory: Reservation
    requests: int = 0
    status: int | None = None
    aborted: bool = False
    _socket: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, sock: socket.socket | None) -> None:
        """Note the socket the worker waits on now (None when it waits on none); shut it at once if the
        key was already cut off."""
        with self._lock:
            self._socket = sock
            if not self.aborted or sock is None:
                return
        _shut(sock)

    def memory_released(self, _future: object = None) -> None:
        """Give back what the key's answer holds of the memory budget (a done callback of its future)."""
        self.memory.release()

    def abort(self) -> None:
        """End the worker's wait now. The read timeout bounds each ``recv``, not the whole answer: a
        server sending a byte now and then (headers or body) kept a pool thread for as long as it liked,
        and 16 such keys left every later call of the worker timing out in the queue.

        Only the socket of the request in flight is shut. In the instant after its answer was read and
        before the worker notes so, that socket may already be back in the pool and taken by another
        fetch, which then sees a reset connection and retries once."""
        with self._lock:
            self.aborted = True
            sock = self._socket
        if sock is not None:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Shut a socket another thread may be blocked on (its ``recv`` returns at once); never ``close`` it
    here, which could close a descriptor number already reused by another connection."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# The key a pool thread is fetching, for the connections below to report their sockets to.
_fetching = threading.local()


class _WatchedConnection(HTTPConnection):
    """A connection that hands its socket to the ``_Progress`` of the key being fetched on this thread,
    whether the socket is new (``_new_conn``, before any TLS handshake) or reused from the pool."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        if self.sock is not None:
            _watch(self.sock)
        super().request(*args, **kwargs)  # type: ignore[arg-type]


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _watch(sock: socket.socket) -> None:
    progress = getattr(_fetching, "progress", None)
    if progress is not None:
        progress.watch(sock)


class _Session(requests.Session):
    def get_redirect_target(self, resp: requests.Response) -> str | None:
        """None: redirects are never followed (``_interpret`` reports them). With ``allow_redirects``
        off, requests still prepared the next request from every 3xx's Location, and a malformed one
        ("http://[::1/x") raised ValueError out of ``get``."""
        return None


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}


@dataclass(frozen=True)
class _Call:
    base: str
    target: Target
    headers: Mapping[str, str]
    deadline: float
    budget_ms: int
    # The credential of the Authorization header in any form a server may write it back
    # (``redaction.token_pattern``), kept out of every reason (see ``_without_credentials``).
    secret: re.Pattern[bytes] | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout_reason(self, url: str) -> str:
        return f"timeout after {self.budget_ms} ms waiting for {url}"


@dataclass
class _Page:
    status: int
    body: dict = field(default_factory=dict)


def merge_search_pages(pages: Sequence[dict]) -> dict:
    """One searchset Bundle holding every entry of ``pages`` in order, without paging links.

    A resource that appears twice (an ``_include``d Medication shared by orders on two pages, or a row
    that shifted between offset pages) is kept once. Outcome entries (``search.mode = outcome``) are
    left out: they are warnings about the search, not data.
    """
    merged: dict = {"resourceType": "Bundle", "type": "searchset"}
    if pages and type(pages[0].get("total")) is int and pages[0]["total"] >= 0:
        merged["total"] = pages[0]["total"]
    entries: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for page in pages:
        for entry in page.get("entry") or []:
            if not isinstance(entry, dict) or _is_outcome_entry(entry):
                continue
            resource = entry.get("resource")
            identity = _identity(resource)
            if identity is not None:
                if identity in seen:
                    continue
                seen.add(identity)
            entries.append(entry)
    merged["entry"] = entries
    return merged


def _identity(resource: object) -> tuple[str, str] | None:
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        return (str(resource.get("resourceType")), resource["id"])
    return None


def _is_outcome_entry(entry: dict) -> bool:
    search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
    resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
    return search.get("mode") == "outcome" or resource.get("resourceType") == "OperationOutcome"


def _outcome_warnings(page: dict, url: str) -> list[str]:
    """The server's warnings about a search page; an error or fatal issue fails the key instead."""
    warnings = []
    for entry in page.get("entry") or []:
        if isinstance(entry, dict) and _is_outcome_entry(entry):
            text = operation_outcome_text(entry.get("resource"))
            if is_failed_search(entry.get("resource")):
                raise _Failure(f"the search {url} reported an error: {text}")
            if text:
                warnings.append(f"server said: {text}")
    return warnings


def _check_entries(page: dict, url: str) -> None:
    """A page whose ``entry`` is not a list, or holds an entry that is not a FHIR resource (``null``, a
    string, an object without a ``resourceType``), is refused: merging skipped such entries, so a page
    of them read as "no entries" and told the rules that nothing is on file."""
    entries = page.get("entry", [])
    if not isinstance(entries, list):
        raise _Failure(f"Bundle.entry from {url} is not a list")
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise _Failure(f"Bundle.entry from {url} holds an entry that is not a FHIR resource")


def _raw_stream(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, not decompressed, with urllib3's errors turned into the requests errors
    ``iter_content`` raised (and ``_attempt`` sorts)."""
    try:
        yield from response.raw.stream(_CHUNK_BYTES, decode_content=False)
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a busy server asks for: ``x-ms-retry-after-ms`` (Azure API for FHIR), else ``Retry-After``
    in seconds or as an HTTP date; None when it names none (or nonsense)."""
    milliseconds = headers.get("x-ms-retry-after-ms", "").strip()
    if milliseconds.isdigit():
        return int(milliseconds) / 1000
    value = headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(int(value))
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _searched_type(query: str) -> str | None:
    """The resource type a search asks for: ``Observation?…``, ``Observation/_search``, or a compartment
    search (``Patient/123/Observation``); None for a read (``Patient/123``, ``…/_history/2``) or a search
    of the whole server."""
    segments = [segment for segment in query.split("?", 1)[0].split("/") if segment]
    if segments and segments[-1] == "_search":
        segments.pop()
    if len(segments) in (1, 3) and segments[-1][:1].isupper() and segments[-1].isalpha():
        return segments[-1]
    return None


def _includes_others(query: str) -> bool:
    """Whether a search asks for resources besides its matches (``_include``, ``_revinclude``)."""
    names = (name for name, _ in parse_qsl(query.partition("?")[2], keep_blank_values=True))
    return any(name.split(":", 1)[0] in ("_include", "_revinclude") for name in names)


def _check_entry_types(
    pages: Sequence[dict], searched: str, others_asked: bool, url: str, truncated: bool
) -> list[str]:
    """A search's entries are of the type searched for, or included because the search asked for more
    (``search.mode`` include): a Condition among the matches of an Observation search, or a
    MedicationStatement no ``_include`` asked for, would be read by the rules as what it claims to be.
    Returns a warning when the server counted more matches (``total``) than it sent over every page."""
    matches = 0
    for page in pages:
        for entry in page.get("entry") or []:
            kind = entry["resource"]["resourceType"]  # _check_entries made sure of both
            if kind == searched:
                matches += 1
                continue
            if kind == "OperationOutcome":
                continue
            search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
            if not others_asked or search.get("mode") == "match":
                raise _Failure(f"the search {url} answered with a {kind} among its {searched} results")
    total = pages[0].get("total") if pages else None
    if not truncated and type(total) is int and total > matches:
        return [f"the server counted {total} matches and sent {matches}"]
    return []


# A header value quoted in a reason is cut here: it is the server's to make 8 KB long.
_MAX_QUOTED_HEADER_CHARS = 100
# Bodies larger than this are parsed by the standard library, not orjson (see ``_loads``).
_ORJSON_MAX_BYTES = 1024 * 1024
_PARSE_ERRORS = (ValueError, RecursionError)  # orjson's and json's decode errors are ValueErrors
_STARTS_AS_JSON = re.compile(rb"[ \t\r\n]*[\[{]")
# What a body whose bytes are not UTF-8 JSON may be decoded as instead, by its byte order mark.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _json(raw: bytes | bytearray, content_type: str | None) -> object:
    """The JSON of a body, or None. UTF-8 first, whatever the header says: a Java server that labels UTF-8
    as ISO-8859-1 is common, and decoding as labelled would turn every "é" into "Ã©". Only when the bytes
    are not UTF-8 JSON are a byte order mark (.NET servers write one) and the declared charset (UTF-16,
    Latin-1) tried; both made the whole answer "not JSON". A body that does not start as an object or
    array (an HTML error page) is not handed to a parser at all."""
    if not raw:
        return None
    if _STARTS_AS_JSON.match(raw):
        try:
            return _loads(raw)
        except _PARSE_ERRORS:
            pass
    encoding = next((codec for bom, codec in _BOMS if raw.startswith(bom)), None) or _charset(content_type)
    if encoding is None:
        return None
    try:
        return _loads(raw.decode(encoding))
    except (LookupError, UnicodeError, *_PARSE_ERRORS):
        return None


def _loads(data: bytes | bytearray | str) -> object:
    """orjson for a body up to ``_ORJSON_MAX_BYTES``, the standard library's parser beyond.

    orjson allocates twelve times the size of its input before it reads a byte (then frees it), so a
    32 MiB body, which a server sends as 32 KiB of gzip, took 400 MiB for an instant, on every key that
    received one; the standard parser needs the output and about the input's size. It is as fast on
    FHIR-shaped JSON (the garbage collector dominates both), and made as strict here: NaN and Infinity
    are refused, and a body with a UTF-16 surrogate escape is left to orjson, which refuses an unpaired
    one (a str holding it fails later, when the service writes a card)."""
    if len(data) <= _ORJSON_MAX_BYTES or _has_surrogate_escape(data):
        return orjson.loads(data)
    return json.loads(data, parse_constant=_no_constant)


def _has_surrogate_escape(data: bytes | bytearray | str) -> bool:
    if isinstance(data, str):
        return "\\ud" in data or "\\uD" in data
    return b"\\ud" in data or b"\\uD" in data


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _charset(content_type: str | None) -> str | None:
    """The charset a Content-Type declares, when it is a text encoding other than UTF-8."""
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            try:
                info = codecs.lookup(charset)
            except LookupError:
                return None
            # Binary transforms (base64, zlib, rot13) are codecs too, and not what a charset means.
            is_text = getattr(info, "_is_text_encoding", True)
            return info.name if is_text and info.name != "utf-8" else None
    return None


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"


def _shown_location(url: str, response: requests.Response) -> str:
    """Where a redirect points, for a reason: scheme, host, port and path, never userinfo or a query (a
    Location may carry credentials or a token in either)."""
    try:
        target = urlsplit(urljoin(url, response.headers.get("Location", "")))
        host = target.hostname or ""
        port = f":{target.port}" if target.port is not None else ""
    except ValueError:
        return "a malformed Location"
    host = f"[{host}]" if ":" in host else host
    return f"{target.scheme}://{host}{port}{target.path[:_MAX_QUOTED_HEADER_CHARS]}"


def _unread_body_reason(url: str, status: int, why: Exception) -> str:
    """Why a body could not be decoded; for an error status, the status first: a 401 whose body was in
    an unexpected coding is a 401 to whoever reads the reason."""
    if 200 <= status < 300:
        return f"response from {url}: {why}"
    return f"HTTP {status} from {url} (body not read: {why})"


def _is_search_query(query: str) -> bool:
    """``Observation?…`` or ``Observation`` is a search; ``Patient/123`` is a read. An operation
    (``Patient/123/$everything``) answers with a searchset too, and is paged like one."""
    path = query.split("?", 1)[0].strip("/")
    return "/" not in path or path.endswith("/_search") or path.rpartition("/")[2].startswith("$")


def _read_type(query: str) -> str:
    return query.split("?", 1)[0].strip("/").split("/", 1)[0]


# Shorter credentials are not looked for in reasons: they would be ordinary words ("expired") as often as
# echoed tokens. Real access tokens are far longer.
_MIN_SECRET_CHARS = 8


def _credential(authorization: str | None) -> str | None:
    """The token of an Authorization header value (``Bearer abc`` → ``abc``), if long enough to look for."""
    if not authorization:
        return None
    token = authorization.strip().partition(" ")[2].strip() or authorization.strip()
    return token if len(token) >= _MIN_SECRET_CHARS else None


def _without_credentials(outcome: FetchOutcome, token: str | None) -> FetchOutcome:
    """The outcome with the access token replaced by ``***``, and anything shaped like a JWT by
    ``[a JWT]``, in its reason and warnings.

    They quote the server's own words (an OperationOutcome's diagnostics, the start of a text body), end
    up in the service log and in the 412, and a server may echo the token it was sent ("token eyJ… is not
    valid") or quote another (a session's, a proxy's). Error bodies are cleaned of the access token
    before they are quoted (``_attempt``); this catches the rest."""
    if outcome.error is None and not outcome.warnings:
        return outcome
    return replace(
        outcome,
        error=without_tokens(outcome.error, token) if outcome.error is not None else None,
        warnings=tuple(without_tokens(warning, token) for warning in outcome.warnings),
    )


class FhirClient:
    """One per worker process: a pooled requests.Session, shared across threads."""

    def __init__(
        self,
        *,
        max_pages: int = 10,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        memory: MemoryBudget | None = None,
    ) -> None:
        """``memory`` is the budget of bytes the answers may hold at once; the process's own
        (``memory.PROCESS_MEMORY``), shared by every client and thread, unless one is given."""
        if max_pages < 1 or max_workers < 1:
            raise ValueError("max_pages and max_workers must be at least 1")
        self.max_pages = max_pages
        self.connect_timeout_s = connect_timeout_s
        self.max_workers = max_workers
        self.max_response_bytes = max_response_bytes
        self.memory = memory if memory is not None else PROCESS_MEMORY
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._session: requests.Session | None = None
        self._pool: ThreadPoolExecutor | None = None

    def _resources(self) -> tuple[requests.Session, ThreadPoolExecutor]:
        """The session and pool of this process, made on first use.

        Made lazily and per process id because a server that loads the app before forking workers
        would otherwise share one connection pool, and a thread pool that does not survive the fork.
        """
        with self._lock:
            if self._pid != os.getpid() or self._session is None or self._pool is None:
                self._session = self._new_session()
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="fhir-fetch")
                self._pid = os.getpid()
            return self._session, self._pool

    def _new_session(self) -> requests.Session:
        session = _Session()
        # Proxies and credentials from the environment or ~/.netrc must not change where patient data
        # goes or what is sent; cookies from one EHR must not ride along to the next call.
        session.trust_env = False
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        adapter = _WatchedAdapter(pool_connections=8, pool_maxsize=self.max_workers, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        # Exactly the codings ``decoding`` reads, whatever optional modules (brotli, zstandard) requests
        # would otherwise advertise.
        session.headers.update(
            {"Accept": FHIR_JSON, "Accept-Encoding": ACCEPT_ENCODING, "User-Agent": "b12-iron-cds"}
        )
        return session

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            if self._session is not None:
                self._session.close()
            self._pool = None
            self._session = None
            self._pid = None

    def fetch_all(
        self,
        base_url: str,
        queries: Mapping[str, str],
        *,
        authorization: str | None,
        budget_ms: int,
    ) -> dict[str, FetchOutcome]:
        """Run every query against ``base_url`` at once and return within ``budget_ms`` (plus a few ms).

        ``queries`` maps a prefetch key to a rendered relative query (``Patient/123``,
        ``Observation?patient=123&code=…``). ``authorization`` is the whole header value
        (``Bearer abc``) or None for an open server. A key not finished when the budget ends is reported
        as a timeout and nobody waits for it; its worker gives up at its next read.
        """
        started = time.monotonic()
        base = base_url.rstrip("/")
        target = target_of(base)
        if target is None:
            reason = f"FHIR server {base_url!r} is not an absolute http(s) URL"
            return {key: FetchOutcome(key, q, None, reason, None, 0, 0.0) for key, q in queries.items()}
        headers = {"Authorization": authorization} if authorization else {}
        secret = _credential(authorization)
        pattern = re.compile(token_pattern(secret).pattern.encode()) if secret else None
        call = _Call(base, target, headers, started + budget_ms / 1000, budget_ms, pattern)
        _session, pool = self._resources()
        running: dict[str, tuple[str, _Progress, Future[FetchOutcome]]] = {}
        outcomes: dict[str, FetchOutcome] = {}
        try:
            for key, query in queries.items():
                url = f"{base}/{query.lstrip('/')}"
                progress = _Progress(Reservation(self.memory))
                future = pool.submit(self._fetch_key, call, key, query, url, progress)
                running[key] = (url, progress, future)
            wait([future for _, _, future in running.values()], timeout=max(0.0, call.remaining()))
            for key, (url, progress, future) in running.items():
                if future.done():
                    outcomes[key] = future.result()
                    continue
                future.cancel()
                progress.abort()
                elapsed = (time.monotonic() - started) * 1000
                outcomes[key] = FetchOutcome(
                    key, url, None, call.timeout_reason(url), progress.status, progress.requests, elapsed
                )
        finally:
            # The answers leave the client here: each key's memory is given back now, or when its thread
            # stops if it still runs (cut off by the budget), or at once if it never started (cancelled).
            for _url, progress, future in running.values():
                future.add_done_callback(progress.memory_released)
        outcomes = {key: _without_credentials(outcome, secret) for key, outcome in outcomes.items()}
        for outcome in outcomes.values():
            # The server and the key, not the URL: every query names the patient (``patient=123``,
            # ``Patient/123``), and so may a reason; services.py logs a failure's reason without them.
            log.debug(
                "FHIR fetch %s from %s: %s after %d request(s), %.0f ms",
                outcome.key,
                address(base),
                "ok" if outcome.ok else f"failed (HTTP {outcome.status or 'no answer'})",
                outcome.requests,
                outcome.elapsed_ms,
            )
        return outcomes

    def _fetch_key(self, call: _Call, key: str, query: str, url: str, progress: _Progress) -> FetchOutcome:
        started = time.monotonic()
        warnings: list[str] = []
        truncated = False
        resource: dict | None = None
        error: str | None = None
        try:
            if target_of(url) != call.target:
                raise _Failure(f"query {query!r} does not stay on {call.base}")
            first = self._get(call, url, progress)
            searched = _searched_type(query)
            body = first.body
            is_searchset = body.get("resourceType") == "Bundle" and body.get("type") == "searchset"
            if is_searchset and (searched is not None or _is_search_query(query)):
                pages, truncated = self._follow_pages(call, url, first.body, progress)
                if searched is not None:
                    warnings += _check_entry_types(pages, searched, _includes_others(query), url, truncated)
                for page in pages:
                    warnings += _outcome_warnings(page, url)
                if truncated:
                    warnings.append(f"stopped after {self.max_pages} pages; the server has more results")
                resource = merge_search_pages(pages)
            elif _is_search_query(query) or searched is not None:
                got = first.body.get("resourceType")
                raise _Failure(f"expected a searchset Bundle from {url}, got {got}")
            elif first.body.get("resourceType") != _read_type(query):
                got = first.body.get("resourceType")
                raise _Failure(f"expected a {_read_type(query)} from {url}, got {got}")
            else:
                resource = first.body
        except _Failure as failure:
            error = failure.reason
            progress.status = failure.status if failure.status is not None else progress.status
        except Exception as exc:  # any surprise still becomes a reason, never a crashed hook call
            log.exception("unexpected error fetching prefetch key %s", key)
            error = f"unexpected error fetching {url}: {type(exc).__name__}"
        finally:
            if error is not None or resource is None:
                # Nothing of the answer is kept: its memory is free now, not when the call ends.
                progress.memory.release()
        elapsed = (time.monotonic() - started) * 1000
        return FetchOutcome(
            key,
            url,
            resource if error is None else None,
            error,
            progress.status,
            progress.requests,
            elapsed,
            tuple(warnings),
            truncated,
        )

    def _follow_pages(
        self, call: _Call, first_url: str, first: dict, progress: _Progress
    ) -> tuple[list[dict], bool]:
        _check_entries(first, first_url)
        pages = [first]
        fetched = {first_url}
        current_url = first_url
        while (link := next_link(pages[-1])) is not None:
            try:
                # Without its fragment, which is never sent: "page#2" is the page already read.
                next_url = urljoin(current_url, link).partition("#")[0]
                where = urlsplit(next_url)
            except ValueError:  # "http://[::1", say: the link is the server's to write
                raise _Failure(f"next link of {first_url} is not a valid URL") from None
            target = target_of(next_url)
            if target is None:
                # Userinfo, a backslash, whitespace: read as this server by one parser and as another
                # by the one that connects (``http://OTHER\\@EHR/``), the page and its token went to OTHER.
                raise _Failure(f"next link of {first_url} is not a plain http(s) URL; not followed")
            if target != call.target:
                raise _Failure(
                    f"next link to another origin ({where.scheme}://{where.netloc}) not followed "
                    f"while paging {first_url}"
                )
            if next_url in fetched:
                raise _Failure(f"next link of {first_url} repeats an earlier page")
            if len(pages) >= self.max_pages:
                return pages, True
            page = self._get(call, next_url, progress).body
            if page.get("resourceType") != "Bundle":
                raise _Failure(f"page {len(pages) + 1} of {first_url} is not a Bundle")
            _check_entries(page, next_url)
            pages.append(page)
            fetched.add(next_url)
            current_url = next_url
        return pages, False

    def _get(self, call: _Call, url: str, progress: _Progress) -> _Page:
        """One GET, sent once more if the connection was reset, or if the server was busy (429, 503) and
        asked to be asked again after a wait that leaves time for the answer (``Retry-After``, or Azure's
        ``x-ms-retry-after-ms``). Rate limits are real on cloud FHIR services, and a short wait was
        cheaper than a 412."""
        held_before = progress.memory.amount
        try:
            return self._attempt(call, url, progress)
        except _Retryable:
            progress.memory.give_back(progress.memory.amount - held_before)
            return self._attempt(call, url, progress, retrying=True)
        except _Busy as busy:
            progress.memory.give_back(progress.memory.amount - held_before)
            time.sleep(busy.after_s)
            if call.remaining() < _MIN_ATTEMPT_S:
                raise busy.failure from None
            return self._attempt(call, url, progress, retrying=True)

    def _attempt(self, call: _Call, url: str, progress: _Progress, *, retrying: bool = False) -> _Page:
        session, _pool = self._resources()
        remaining = call.remaining()
        if remaining < _MIN_ATTEMPT_S:
            raise _Failure(call.timeout_reason(url))
        progress.requests += 1
        _fetching.progress = progress
        try:
            response = session.get(
                url,
                headers=call.headers,
                timeout=(min(self.connect_timeout_s, remaining), remaining),
                stream=True,
                allow_redirects=False,
            )
            try:
                raw = self._read_body(call, url, response, progress.memory)
            finally:
                response.close()
        except requests.exceptions.ConnectTimeout:
            # The connect timeout is shorter than the budget: a server that never accepts is a different
            # fault (down, firewalled, overloaded) from one that accepts and then answers too slowly.
            if call.remaining() <= _MIN_ATTEMPT_S:
                raise _Failure(call.timeout_reason(url)) from None
            raise _Failure(f"no connection to {url} within {self.connect_timeout_s * 1000:.0f} ms") from None
        except (requests.exceptions.Timeout, TimeoutError):
            raise _Failure(call.timeout_reason(url)) from None
        except requests.exceptions.RequestException as exc:
            if call.remaining() <= 0:
                raise _Failure(call.timeout_reason(url)) from None
            if not retrying and is_connection_reset(exc):
                raise _Retryable from exc
            raise _Failure(exception_reason(exc, url)) from None
        finally:
            _fetching.progress = None
            progress.watch(None)
        progress.status = response.status_code
        if call.secret is not None and not 200 <= response.status_code < 300:
            raw = call.secret.sub(b"***", raw)  # before the reason quotes it, maybe cut short
        try:
            return self._interpret(url, response, raw)
        except _Failure as failure:
            if response.status_code not in (429, 503):
                raise
            after = _retry_after_s(response.headers)
            if after is None:
                raise
            if not retrying and after + _MIN_RETRY_ANSWER_S <= call.remaining():
                raise _Busy(after, failure) from None
            reason = f"{failure.reason} (the server asks to wait {after:g} s)"
            raise _Failure(reason, failure.status) from None

    def _read_body(
        self, call: _Call, url: str, response: requests.Response, memory: Reservation
    ) -> bytearray:
        """The decoded body, read and decompressed a piece at a time, each piece followed by the checks:
        size, the clock, and whether parsing what has come so far would still fit the time left (see
        ``decoding``). requests' ``iter_content`` left decompressing to urllib3 and parsing unchecked: a
        small gzip body inflating to 20 MB of nested arrays was read in time, then held the GIL in
        ``orjson.loads`` for seconds, and ``fetch_all`` (waiting for the budget to end) woke that late.

        The memory the body will take once parsed is reserved in ``memory`` before the parser has it
        (one reservation for an ordinary page), and as the body arrives once it needs more than
        ``_UNCOUNTED_BYTES``; a body the process's budget has no room for is not read further."""
        try:
            decoder = BodyDecoder(response.headers.get("Content-Encoding"))
        except UnsupportedCoding as refused:
            raise _Failure(
                _unread_body_reason(url, response.status_code, refused), response.status_code
            ) from None
        # One buffer grown in place: a list of pieces joined at the end held the body twice.
        body = bytearray()
        size = 0
        tokens = 0
        reserved = 0  # of ``memory``, for this body
        try:
            for chunk in _raw_stream(response):
                for piece in decoder.feed(chunk):
                    size += len(piece)
                    if size > self.max_response_bytes:
                        raise _Failure(f"response from {url} is larger than {self.max_response_bytes} bytes")
                    body += piece
                    tokens += structural_tokens(piece)
                    need = parse_need(size, tokens)
                    if need > reserved + _UNCOUNTED_BYTES:
                        # At least doubled each time: a large body takes a few reservations, not one a piece.
                        reserved += self._reserve(
                            url, memory, need - reserved, max(need, 2 * reserved) - reserved
                        )
                    remaining = call.remaining()
                    if remaining <= 0:
                        raise _Failure(call.timeout_reason(url))
                    if parse_cost_s(tokens) > remaining:
                        raise _Failure(
                            f"{call.timeout_reason(url)}: its answer would not be read in the time left"
                        )
            decoder.finish()
        except CorruptBody as corrupt:
            raise _Failure(
                _unread_body_reason(url, response.status_code, corrupt), response.status_code
            ) from None
        need = parse_need(size, tokens)
        if need > reserved:
            self._reserve(url, memory, need - reserved, need - reserved)
        elif reserved > need:
            memory.give_back(reserved - need)
        return body

    def _reserve(self, url: str, memory: Reservation, at_least: int, up_to: int) -> int:
        granted = memory.take(at_least, up_to)
        if not granted:
            budget = memory.budget
            raise _Failure(
                f"response from {url} not read: the FHIR answers this worker holds at once would need "
                f"more than its {_mib(budget.limit)} of memory ({_mib(budget.held)} held now)"
            )
        return granted

    def _interpret(self, url: str, response: requests.Response, raw: bytes | bytearray) -> _Page:
        status = response.status_code
        parsed = _json(raw, response.headers.get("Content-Type"))
        if 300 <= status < 400:
            raise _Failure(
                f"HTTP {status} from {url}: redirect to {_shown_location(url, response)} not followed", status
            )
        if status >= 400 or status < 200:
            raise _Failure(http_error_reason(status, url, parsed, raw), status)
        if parsed is None:
            content_type = response.headers.get("Content-Type", "no Content-Type")[:_MAX_QUOTED_HEADER_CHARS]
            raise _Failure(f"not JSON from {url} (HTTP {status}, {content_type})", status)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("resourceType"), str):
            raise _Failure(f"not a FHIR resource from {url} (JSON without a resourceType)", status)
        outcome = operation_outcome_text(parsed)
        if outcome is not None:
            raise _Failure(f"HTTP {status} from {url}: OperationOutcome: {outcome}", status)
        return _Page(status, parsed)
