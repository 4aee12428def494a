"""A loopback imitation of the two public FHIR servers whose behaviour sekmet does not reproduce.

- HAPI FHIR pages a search with opaque links back to the *base* URL: ``next`` is
  ``{base}?_getpages=<uuid>&_getpagesoffset=2&_count=2&_bundletype=searchset``, which has no resource
  type in it and means nothing to a client except "GET this".
- The SMART launcher's FHIR proxy answers a missing or bad token with ``401`` and a ``text/plain``
  sentence instead of an OperationOutcome.

Any other path can be given a canned answer (status, body, content type) to imitate odd servers: an
HTML error page with status 200, a 500 with an OperationOutcome that only has ``details.text``, a
redirect, a body that stops halfway for a while (``stall_after``). Every request is recorded with its
Authorization header.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.support.delay_proxy import LoopbackHTTPServer, SeenRequest

SMART_LAUNCHER_401_TEXT = "Unauthorized: the access token is missing, expired or not valid for this server"


@dataclass(frozen=True)
class Canned:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    # Send this many bytes of the body, then wait ``stall_s`` (or until the fake stops) before the rest.
    stall_after: int | None = None
    stall_s: float = 0.0


class FakeEhrFhir:
    """A FHIR base at ``{origin}/baseR4`` serving canned answers and HAPI-style paged searches."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._canned: dict[str, Canned] = {}
        self._searches: dict[str, tuple[list[dict], int, str | None]] = {}
        self._pages: dict[str, tuple[str, int]] = {}
        self._stopping = threading.Event()
        self._httpd = LoopbackHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.port = self._httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.origin}/baseR4"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True, name=f"fake-{self.port}"
        )

    def __enter__(self) -> FakeEhrFhir:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def seen(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def add_search(
        self, resource_type: str, resources: list[dict], *, page_size: int, next_origin: str | None = None
    ) -> None:
        """Answer any search on ``resource_type`` with ``resources`` in HAPI-style pages.

        ``next_origin`` puts the paging links on another origin, as a misconfigured proxy or a hostile
        server might.
        """
        self._searches[resource_type] = (resources, page_size, next_origin)

    def add_canned(
        self,
        path_and_query: str,
        status: int,
        body: bytes | dict,
        content_type: str = "application/fhir+json",
        headers: tuple[tuple[str, str], ...] = (),
        *,
        stall_after: int | None = None,
        stall_s: float = 0.0,
    ) -> None:
        """Answer exactly ``/baseR4/{path_and_query}`` with this status and body; with ``stall_after``, send
        that many bytes of the body, then nothing for ``stall_s`` seconds, then the rest."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        canned = Canned(status, raw, content_type, headers, stall_after, stall_s)
        self._canned[f"/baseR4/{path_and_query.lstrip('/')}"] = canned

    def _page(self, resource_type: str, offset: int) -> dict:
        resources, page_size, next_origin = self._searches[resource_type]
        chunk = resources[offset : offset + page_size]
        bundle: dict = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(resources),
            "link": [{"relation": "self", "url": f"{self.base_url}/{resource_type}"}],
            "entry": [
                {
                    "fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in chunk
            ],
        }
        if offset + page_size < len(resources):
            page_id = str(uuid.uuid4())
            with self._lock:
                self._pages[page_id] = (resource_type, offset + page_size)
            origin = next_origin or self.origin
            bundle["link"].append(
                {
                    "relation": "next",
                    "url": f"{origin}/baseR4?_getpages={page_id}&_getpagesoffset={offset + page_size}"
                    f"&_count={page_size}&_pretty=true&_bundletype=searchset",
                }
            )
        return bundle

    def _answer(self, path: str, query: str) -> Canned:
        full = f"{path}?{query}" if query else path
        if full in self._canned:
            return self._canned[full]
        if path == "/baseR4" and "_getpages" in parse_qs(query):
            page_id = parse_qs(query)["_getpages"][0]
            with self._lock:
                known = self._pages.get(page_id)
            if known is None:
                return _outcome(410, f"Search id {page_id} not found or expired")
            return _json(200, self._page(*known))
        resource_type = path.removeprefix("/baseR4/")
        if resource_type in self._searches:
            return _json(200, self._page(resource_type, 0))
        return _outcome(404, f"Unknown resource path {path}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle's algorithm on, the body would wait
            # for the client's delayed ACK (40 ms on Linux) and every answer would look slow.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read ``fake.seen`` instead."""

            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization")
                with fake._lock:
                    fake._seen.append(SeenRequest("GET", self.path, authorization))
                if fake.token is not None and authorization != f"Bearer {fake.token}":
                    answer = Canned(401, SMART_LAUNCHER_401_TEXT.encode(), "text/plain; charset=utf-8")
                else:
                    parts = urlsplit(self.path)
                    answer = fake._answer(parts.path, parts.query)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                for key, value in answer.headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                try:
                    if answer.stall_after is None:
                        self.wfile.write(answer.body)
                        return
                    self.wfile.write(answer.body[: answer.stall_after])
                    if fake._stopping.wait(answer.stall_s):
                        return
                    self.wfile.write(answer.body[answer.stall_after :])
                except OSError:  # the client gave up on the answer (too large, too late): not a fault here
                    self.close_connection = True

        return Handler


def _json(status: int, body: dict) -> Canned:
    return Canned(status, json.dumps(body).encode(), "application/fhir+json")


def _outcome(status: int, text: str) -> Canned:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    return _json(status, body)
