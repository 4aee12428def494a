"""No secret and no patient datum leaves a served instance where it must not, whatever path a call takes.

A real ``cds-service serve`` (gunicorn, two workers, client JWTs required, DEBUG logging so that every
logger speaks) answers a matrix of calls. Each case plants its own distinctive markers: the
``fhirAuthorization.access_token``, the EHR's signed JWT, a password in a URL, the patient's id, names,
MRN, birth date, a free-text note and a result value in the resources, the encounter id, the
hookInstance and, for feedback, card ids and a clinician's comment. A loopback FHIR server answers the
service's fetches as the case asks: data (plain, paged, gzip), 401 with a text body quoting the token,
403, 404, 429 and 500 with OperationOutcomes quoting it and another JWT, a body quoting it with JSON's
escaped slash, a stall past the budget, redirects and paging links to another origin.

Where each marker must not appear:

- secrets (tokens, JWTs, passwords): no answer's body or headers, no log line, no metric;
- patient data (ids, names, MRN, birth date, note, value, encounter, a hookInstance that is not a UUID,
  a clinician's comment): no log line, no metric (answers may carry them: the caller sent them);
- a valid hookInstance and card ids: no metric (the log names a call by its hookInstance).

Each case checks its answers and the log as soon as its lines are written; the last test stops the
server, so every buffered line is out, and reads the whole log and /metrics for every case's markers,
and for anything shaped like a JWT. Besides the calls: the commands that take a token or a URL (fire,
load-fixtures, feedback-report) must print none of their secrets, and a second instance whose Redis and
PostgreSQL are named with passwords and down, and whose client's jwks_url has one, must name them without
it in /readyz, its 503s and its log.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from tests.auth.auth_support import (
    BASE_URL,
    JwksServer,
    Signer,
    ec_p384_key,
    ehr_signer,
    serve_requiring_jwts,
    write_clients,
)
from tests.support.delay_proxy import LoopbackHTTPServer
from tests.support.processes import free_port
from tests.support.raw_http import exchange
from tests.support.served import COMMAND, HOOKS_NOW, Served, clean_env, hook_example

pytestmark = pytest.mark.integration

VIEW = "/cds-services/b12-iron-patient-view"
FEEDBACK = f"{VIEW}/feedback"
# The keys the service fetches in the cases that give it a fhirServer (the rest are sent as prefetch).
FETCHED = ("patient", "b12IronLabs")
BUDGET_MS = 800
# Three base64url parts, the first a JSON object's start: a JWT, whoever made it.
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# A JWT a FHIR server quotes besides the token it was sent (a session's, a proxy's).
ECHOED_JWT = Signer("https://idp.example.test", "s1", "ES384", ec_p384_key()).token(sub="session-user")


@dataclass(frozen=True)
class Marks:
    """One case's markers, each distinctive enough that finding it anywhere is a leak of it."""

    tag: str
    number: int

    @property
    def access_token(self) -> str:
        # Visible ASCII with '/' and '+', as base64 tokens from OAuth servers are.
        return f"AT{self.tag}/Kq9+Zr3w{self.tag}LeakTok"

    @property
    def password(self) -> str:
        return f"PW{self.tag}LeakPass"

    @property
    def patient_id(self) -> str:
        return f"pid-{self.tag}-leak"

    @property
    def encounter_id(self) -> str:
        return f"enc-{self.tag}-leak"

    @property
    def family(self) -> str:
        return f"Family{self.tag}Leak"

    @property
    def given(self) -> str:
        return f"Given{self.tag}Leak"

    @property
    def mrn(self) -> str:
        return f"MRN{self.tag}77Leak"

    @property
    def birth_date(self) -> str:
        return f"19{self.number:02d}-03-17"

    @property
    def note(self) -> str:
        return f"Note{self.tag}Leak lives alone"

    @property
    def value(self) -> str:
        return f"1{self.number:02d}.4817"

    @property
    def hook_instance(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"no-leaks/{self.tag}"))

    @property
    def card_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"no-leaks/card/{self.tag}"))

    @property
    def comment(self) -> str:
        return f"Comment{self.tag}Leak spoke with daughter"

    def secrets(self) -> dict[str, str]:
        """The access token also by its start and its end, which stay as they are when it is quoted cut
        short or written with its '/' escaped (once or twice) or percent-encoded."""
        token = self.access_token
        return {
            "access token": token,
            "access token start": token.partition("/")[0],
            "access token end": token.rpartition("+")[2],
            "URL password": self.password,
        }

    def patient_data(self) -> dict[str, str]:
        return {
            "patient id": self.patient_id,
            "encounter id": self.encounter_id,
            "family name": self.family,
            "given name": self.given,
            "MRN": self.mrn,
            "birth date": self.birth_date,
            "note": self.note,
            "result value": self.value,
            "comment": self.comment,
            "non-UUID hookInstance": f"hi-{self.mrn}",
        }

    def call_ids(self) -> dict[str, str]:
        return {"hookInstance": self.hook_instance, "card id": self.card_id}


def jwt_marks(token: str) -> dict[str, str]:
    """A JWT and the parts of it that would betray it cut short: the signature and its middle."""
    signature = token.rpartition(".")[2]
    return {"JWT": token, "JWT signature": signature, "JWT signature middle": signature[20:40]}


# Patient data -------------------------------------------------------------------------------------------


def marked_patient(marks: Marks) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": marks.patient_id,
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": marks.mrn}],
        "name": [{"family": marks.family, "given": [marks.given]}],
        "gender": "female",
        "birthDate": marks.birth_date,
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{marks.note}</div>',
        },
    }


def marked_labs(marks: Marks) -> list[dict[str, Any]]:
    """The example's labs, of this case's patient, the first with the marked value and a note."""
    labs = [
        entry["resource"] for entry in hook_example("patient-view.json")["prefetch"]["b12IronLabs"]["entry"]
    ]
    marked = []
    for index, lab in enumerate(labs):
        lab = json.loads(json.dumps(lab))
        lab["id"] = f"lab-{marks.number}-{index}"
        lab["subject"] = {
            "reference": f"Patient/{marks.patient_id}",
            "display": f"{marks.given} {marks.family}",
        }
        lab["note"] = [{"text": marks.note}]
        if index == 0:
            lab["valueQuantity"]["value"] = float(marks.value)
        marked.append(lab)
    return marked


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def repointed(resource: Any, marks: Marks) -> Any:
    """``resource`` with every reference to the example patient pointing at this case's patient."""
    text = json.dumps(resource)
    text = text.replace('"Patient/example-b12-started"', json.dumps(f"Patient/{marks.patient_id}"))
    return json.loads(text)


def hook_body(marks: Marks, *, fetch: bool = False, hook_instance: str | None = None) -> dict[str, Any]:
    """The example patient-view call for this case's marked patient; with ``fetch``, the keys of FETCHED
    are left for the service to fetch (the case then names a fhirServer)."""
    body = hook_example("patient-view.json")
    body["hookInstance"] = hook_instance or marks.hook_instance
    body["context"] = {
        "userId": "Practitioner/example-clinician",
        "patientId": marks.patient_id,
        "encounterId": marks.encounter_id,
    }
    prefetch = {key: repointed(value, marks) for key, value in body["prefetch"].items()}
    prefetch["patient"] = marked_patient(marks)
    prefetch["b12IronLabs"] = searchset(marked_labs(marks))
    if fetch:
        for key in FETCHED:
            del prefetch[key]
    body["prefetch"] = prefetch
    return body


# The FHIR server ----------------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    authorization: str | None


@dataclass
class MarkedEhr:
    """A loopback FHIR server whose behaviour for a patient is the case's (``plan``): the patient's id in
    the path (``Patient/<id>``) or the query (``patient=<id>``) picks it. ``other`` is a second origin,
    for redirects and paging links away from the server, which must never be sent the token."""

    plans: dict[str, tuple[str, Marks]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    other_seen: list[Seen] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> MarkedEhr:
        self._httpd = LoopbackHTTPServer(("127.0.0.1", 0), self._handler(self.seen, self._answer))
        self._other = LoopbackHTTPServer(("127.0.0.1", 0), self._handler(self.other_seen, self._elsewhere))
        for server in (self._httpd, self._other):
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/baseR4"
        self.other_origin = f"http://127.0.0.1:{self._other.server_address[1]}"
        return self

    def stop(self) -> None:
        self.stopping.set()
        for server in (self._httpd, self._other):
            server.shutdown()
            server.server_close()

    def plan(self, marks: Marks, behaviour: str) -> None:
        self.plans[marks.patient_id] = (behaviour, marks)

    @staticmethod
    def _handler(seen: list[Seen], answer: Callable[[BaseHTTPRequestHandler], None]) -> type:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                seen.append(Seen(self.path, self.headers.get("Authorization")))
                try:
                    answer(self)
                except OSError:  # the service gave up on the answer (its budget)
                    self.close_connection = True

            def do_POST(self) -> None:
                """A transaction (load-fixtures): refused, quoting the token."""
                seen.append(Seen(self.path, self.headers.get("Authorization")))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                text = f"Unauthorized: {self.headers.get('Authorization')} is not valid here"
                _send(self, 401, text.encode(), "text/plain")

        return Handler

    def _elsewhere(self, handler: BaseHTTPRequestHandler) -> None:
        _send(handler, 200, json.dumps(searchset([])).encode())

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        if "_getpages" in query:  # a HAPI-style page link back to the base
            patient_id, offset = query["_getpages"][0], int(query["_getpagesoffset"][0])
        else:
            path = parts.path.removeprefix("/baseR4/")
            patient_id = (
                path.removeprefix("Patient/")
                if path.startswith("Patient/")
                else query.get("patient", [""])[0]
            )
            offset = 0
        behaviour, marks = self.plans.get(patient_id, ("missing", Marks("zz", 0)))
        authorization = handler.headers.get("Authorization") or ""
        resource_type = parts.path.removeprefix("/baseR4/").split("/")[0] or "Observation"
        BEHAVIOURS[behaviour](self, handler, marks, authorization, resource_type, offset)

    # What the server answers, by behaviour.

    def data(self, handler: Any, marks: Marks, _auth: str, kind: str, offset: int, *, page: int = 0) -> None:
        """The marked patient or labs; a page of ``page`` entries with a HAPI-style next link."""
        if kind == "Patient":
            return _send(handler, 200, json.dumps(marked_patient(marks)).encode())
        resources = marked_labs(marks) if kind == "Observation" else []
        if not page:
            return _send(handler, 200, json.dumps(searchset(resources)).encode())
        bundle = searchset(resources[offset : offset + page])
        bundle["total"] = len(resources)
        if offset + page < len(resources):
            link = (
                f"{self.base_url}?_getpages={marks.patient_id}&_getpagesoffset={offset + page}&_count={page}"
            )
            bundle["link"] = [{"relation": "next", "url": link}]
        _send(handler, 200, json.dumps(bundle).encode())

    def paged(self, handler: Any, marks: Marks, auth: str, kind: str, offset: int) -> None:
        self.data(handler, marks, auth, kind, offset, page=1)

    def gzipped(self, handler: Any, marks: Marks, _auth: str, kind: str, _offset: int) -> None:
        resource = marked_patient(marks) if kind == "Patient" else searchset(marked_labs(marks))
        body = gzip.compress(json.dumps(resource).encode())
        _send(handler, 200, body, headers={"Content-Encoding": "gzip"})

    def text_401(self, handler: Any, marks: Marks, auth: str, _kind: str, _offset: int) -> None:
        text = f"Unauthorized: '{auth}' is not valid here (token {auth.removeprefix('Bearer ')} expired)"
        _send(handler, 401, text.encode(), "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})

    def escaped_401(self, handler: Any, marks: Marks, auth: str, _kind: str, _offset: int) -> None:
        """JSON that escapes '/' (PHP's json_encode does by default, as do some Java writers)."""
        body = json.dumps({"error": "invalid_token", "error_description": f"{auth} expired"})
        _send(handler, 401, body.replace("/", "\\/").encode())

    def escaped_plus_401(self, handler: Any, marks: Marks, auth: str, _kind: str, _offset: int) -> None:
        """JSON that escapes '+' (.NET's System.Text.Json does by default)."""
        body = json.dumps({"error": "invalid_token", "error_description": f"{auth} expired"})
        _send(handler, 401, body.replace("+", "\\u002B").encode())

    def outcome(self, status: int) -> Callable[..., None]:
        def answer(handler: Any, marks: Marks, auth: str, _kind: str, _offset: int) -> None:
            text = f"refused {auth} for Patient/{marks.patient_id} (session {ECHOED_JWT})"
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "security", "diagnostics": text}],
            }
            headers = {"Retry-After": "0"} if status == 429 else {}
            _send(handler, status, json.dumps(outcome).encode(), headers=headers)

        return answer

    def warning_in_search(self, handler: Any, marks: Marks, auth: str, kind: str, offset: int) -> None:
        """A searchset holding an OperationOutcome warning that quotes the token and the patient."""
        if kind == "Patient":
            return self.data(handler, marks, auth, kind, offset)
        text = f"{auth} may read only part of Patient/{marks.patient_id}; session {ECHOED_JWT}"
        warning = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "informational", "diagnostics": text}],
        }
        bundle = searchset(marked_labs(marks))
        bundle["entry"].append({"resource": warning, "search": {"mode": "outcome"}})
        _send(handler, 200, json.dumps(bundle).encode())

    def stall(self, handler: Any, _marks: Marks, _auth: str, _kind: str, _offset: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b'{"resourceType": ')
        handler.wfile.flush()
        self.stopping.wait(5 * BUDGET_MS / 1000)

    def redirect(self, handler: Any, marks: Marks, _auth: str, _kind: str, _offset: int) -> None:
        port = self.other_origin.rpartition(":")[2]
        where = f"http://u:{marks.password}@127.0.0.1:{port}/baseR4/Patient/{marks.patient_id}?access_token={marks.access_token}"
        _send(handler, 302, b"", "text/plain", {"Location": where})

    def next_elsewhere(self, handler: Any, marks: Marks, _auth: str, kind: str, _offset: int) -> None:
        if kind == "Patient":
            return _send(handler, 200, json.dumps(marked_patient(marks)).encode())
        bundle = searchset(marked_labs(marks)[:1])
        port = self.other_origin.rpartition(":")[2]
        link = (
            f"http://u:{marks.password}@127.0.0.1:{port}/baseR4?_getpages=x&access_token={marks.access_token}"
        )
        bundle["link"] = [{"relation": "next", "url": link}]
        _send(handler, 200, json.dumps(bundle).encode())

    def next_other_origin(self, handler: Any, marks: Marks, _auth: str, kind: str, _offset: int) -> None:
        if kind == "Patient":
            return _send(handler, 200, json.dumps(marked_patient(marks)).encode())
        bundle = searchset(marked_labs(marks)[:1])
        link = f"{self.other_origin}/baseR4?_getpages={marks.patient_id}&access_token={marks.access_token}"
        bundle["link"] = [{"relation": "next", "url": link}]
        _send(handler, 200, json.dumps(bundle).encode())

    def html_200(self, handler: Any, marks: Marks, auth: str, _kind: str, _offset: int) -> None:
        page = f"<html><body>Session for {marks.given} {marks.family} ({auth}) has ended</body></html>"
        _send(handler, 200, page.encode(), "text/html")

    def other_patient(self, handler: Any, marks: Marks, auth: str, kind: str, offset: int) -> None:
        """Another patient's data, named: the service must refuse it without quoting it."""
        other = Marks(marks.tag + "x", marks.number)
        self.data(handler, other, auth, kind, offset)

    def missing(self, handler: Any, *_args: object) -> None:
        _send(handler, 404, b"{}")


def _send(
    handler: Any,
    status: int,
    body: bytes,
    content_type: str = "application/fhir+json",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


BEHAVIOURS: dict[str, Callable[..., None]] = {
    "data": MarkedEhr.data,
    "paged": MarkedEhr.paged,
    "gzip": MarkedEhr.gzipped,
    "401 text": MarkedEhr.text_401,
    "401 escaped": MarkedEhr.escaped_401,
    "401 escaped plus": MarkedEhr.escaped_plus_401,
    "403": lambda ehr, *args: ehr.outcome(403)(*args),
    "404": lambda ehr, *args: ehr.outcome(404)(*args),
    "429": lambda ehr, *args: ehr.outcome(429)(*args),
    "500": lambda ehr, *args: ehr.outcome(500)(*args),
    "warning": MarkedEhr.warning_in_search,
    "stall": MarkedEhr.stall,
    "redirect": MarkedEhr.redirect,
    "next with password": MarkedEhr.next_elsewhere,
    "next to another origin": MarkedEhr.next_other_origin,
    "html 200": MarkedEhr.html_200,
    "other patient": MarkedEhr.other_patient,
    "missing": MarkedEhr.missing,
}


# The served instance ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Signer:
    return ehr_signer()


@pytest.fixture(scope="module")
def ehr() -> Iterator[MarkedEhr]:
    server = MarkedEhr().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, signer: Signer, ehr: MarkedEhr) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("no-leaks")
    # Its own URL is the JWTs' audience (fire signs for the URL it calls): the port is chosen first.
    port = free_port()
    settings = serve_requiring_jwts(workdir, signer) | {"CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    server = Served(
        workdir,
        workers=2,
        threads=4,
        port=port,
        CDS_NOW=HOOKS_NOW,
        CDS_LOG_LEVEL="DEBUG",
        CDS_FHIR_BUDGET_MS=str(BUDGET_MS),
        CDS_MAX_BODY_BYTES=str(200_000),
        CDS_ALLOWED_FHIR_SERVERS=ehr.base_url,
        **settings,
    )
    yield server
    server.stop()


@dataclass
class Answer:
    """One answer as the caller sees it: status line, headers and body, as text to look through."""

    status: int
    text: str

    @classmethod
    def of(cls, response: requests.Response) -> Answer:
        head = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        return cls(
            response.status_code, f"{response.status_code} {response.reason}\n{head}\n\n{response.text}"
        )

    @classmethod
    def raw(cls, received: bytes) -> Answer:
        status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else 0
        return cls(status, received.decode("latin-1"))


@dataclass
class Case:
    """What a case did: its answers and the secrets it sent besides its markers' (JWTs, credentials).

    Its log lines are all written once its call line is (``call_line``: the body was read and its
    hookInstance is a UUID), or else once one more line holds ``evidence`` (a refusal's words)."""

    answers: list[Answer]
    secrets: dict[str, str] = field(default_factory=dict)
    call_line: bool = False
    evidence: str | None = None


@dataclass
class Caller:
    """Sends a case's calls to the served instance."""

    served: Served
    ehr: MarkedEhr
    signer: Signer

    def post(
        self,
        body: Any,
        *,
        path: str = VIEW,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[Answer, str]:
        """POST ``body`` (or raw ``data``) signed with a fresh JWT for ``path`` unless ``token`` is given;
        returns the answer and the JWT sent."""
        token = token if token is not None else self.token(path)
        sent = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"} | (headers or {})
        payload = data if data is not None else json.dumps(body).encode()
        response = requests.post(f"{self.served.base}{path}", data=payload, headers=sent, timeout=30)
        return Answer.of(response), token

    def hook(self, body: dict[str, Any], *, evidence: str | None = None, **options: Any) -> Case:
        """A hook call, whose call line carries the case's hookInstance unless ``evidence`` is given."""
        answer, token = self.post(body, **options)
        return Case([answer], jwt_marks(token), evidence is None, evidence)

    def fetching(self, marks: Marks, behaviour: str, *, access_token: str | None = None) -> Case:
        """A call that leaves FETCHED to the FHIR server, which answers as ``behaviour`` says."""
        self.ehr.plan(marks, behaviour)
        body = hook_body(marks, fetch=True)
        body["fhirServer"] = self.ehr.base_url
        body["fhirAuthorization"] = {
            "access_token": access_token or marks.access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
        }
        return self.hook(body)

    def token(self, path: str, **claims: Any) -> str:
        """A fresh JWT of the registered client, addressed to ``path`` of the served instance."""
        return self.signer.token(path, **({"aud": self.served.base + path} | claims))

    def raw(self, request: bytes) -> Answer:
        return Answer.raw(exchange(self.served.port, request))


def fetching(behaviour: str, status: int) -> tuple[Callable[[Caller, Marks], Case], tuple[int, ...]]:
    return (lambda caller, marks: caller.fetching(marks, behaviour)), (status,)


# Cases: each a function of the caller and the case's markers, and the statuses its answers must have.


def good_call(caller: Caller, marks: Marks) -> Case:
    return caller.hook(hook_body(marks))


def order_select_then_sign(caller: Caller, marks: Marks) -> Case:
    """A B12 draft with a note for this patient, selected, then signed."""
    draft = hook_example("order-select-cyanocobalamin.json")["context"]["draftOrders"]["entry"][0]["resource"]
    draft = draft | {"subject": {"reference": f"Patient/{marks.patient_id}"}, "note": [{"text": marks.note}]}
    answers, secrets = [], {}
    for hook, hook_instance in (("order-select", str(uuid.uuid4())), ("order-sign", marks.hook_instance)):
        body = hook_body(marks, hook_instance=hook_instance) | {"hook": hook}
        body["context"]["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
        if hook == "order-select":
            body["context"]["selections"] = [f"MedicationRequest/{draft['id']}"]
        answer, token = caller.post(body, path=f"/cds-services/b12-iron-{hook}")
        answers.append(answer)
        secrets |= {f"{hook} {name}": mark for name, mark in jwt_marks(token).items()}
    return Case(answers, secrets, call_line=True)


def access_token_is_a_jwt(caller: Caller, marks: Marks) -> Case:
    """A SMART server's access token is often a JWT itself; the FHIR server quotes it in its 401."""
    token = Signer("https://auth.example.test", "a1", "ES384", ec_p384_key()).token(sub=marks.patient_id)
    case = caller.fetching(marks, "401 text", access_token=token)
    case.secrets |= {f"access token {name}": mark for name, mark in jwt_marks(token).items()}
    return case


def fhir_server_with_a_password(caller: Caller, marks: Marks) -> Case:
    body = hook_body(marks, fetch=True)
    port = urlsplit(caller.ehr.base_url).port
    body["fhirServer"] = f"http://cds:{marks.password}@127.0.0.1:{port}/baseR4"
    body["fhirAuthorization"] = {"access_token": marks.access_token, "token_type": "Bearer"}
    return caller.hook(body)


def prefetch_outcome_quoting_the_token(caller: Caller, marks: Marks) -> Case:
    """The EHR's own prefetch query failed and it sends the FHIR server's OperationOutcome for the key, as
    CDS Hooks 2.0 allows: that server quoted the token and the patient."""
    body = hook_body(marks)
    text = f"token {marks.access_token} expired reading Patient/{marks.patient_id} ({marks.family})"
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "security", "diagnostics": text}],
    }
    body["prefetch"]["b12IronLabs"] = outcome
    return caller.hook(body)


def malformed_json(caller: Caller, marks: Marks) -> Case:
    text = json.dumps(hook_body(marks) | {"fhirAuthorization": {"access_token": marks.access_token}})
    answer, token = caller.post(None, data=text[: len(text) // 2].encode() + b"\x01 ]")
    return Case([answer], jwt_marks(token), evidence="hook call refused (400)")


def access_token_not_visible_ascii(caller: Caller, marks: Marks) -> Case:
    body = hook_body(marks)
    body["fhirServer"] = caller.ehr.base_url
    body["fhirAuthorization"] = {"access_token": f"{marks.access_token} é", "token_type": "Bearer"}
    return caller.hook(body)


def token_type_wrong_and_hook_instance_an_mrn(caller: Caller, marks: Marks) -> Case:
    body = hook_body(marks, hook_instance=f"hi-{marks.mrn}")
    body["fhirServer"] = caller.ehr.base_url
    body["fhirAuthorization"] = {
        "access_token": marks.access_token,
        "token_type": f"MAC {marks.access_token}",
    }
    return caller.hook(body, evidence="hook call refused (400)")


def context_missing_patient(caller: Caller, marks: Marks) -> Case:
    body = hook_body(marks)
    body["context"] = {
        "userId": marks.access_token,
        "encounterId": marks.encounter_id,
        "patient": marks.patient_id,
    }
    return caller.hook(body)


def too_large(caller: Caller, marks: Marks) -> Case:
    body = hook_body(marks)
    body["prefetch"]["patient"]["text"]["div"] = f"<div>{marks.note} {marks.access_token * 12000}</div>"
    return caller.hook(body, evidence='"message":"hook call"')


def gzip_body(caller: Caller, marks: Marks) -> Case:
    data = gzip.compress(json.dumps(hook_body(marks)).encode())
    answer, token = caller.post(None, data=data, headers={"Content-Encoding": "gzip"})
    return Case([answer], jwt_marks(token), evidence="hook call refused (415)")


def deeply_nested(caller: Caller, marks: Marks) -> Case:
    body = hook_body(marks)
    body["prefetch"]["patient"]["extension"] = json.loads("[" * 300 + json.dumps(marks.note) + "]" * 300)
    return caller.hook(body)


def unknown_service_named_by_an_mrn(caller: Caller, marks: Marks) -> Case:
    path = f"/cds-services/{marks.mrn}"
    return caller.hook(hook_body(marks), path=path, evidence="hook call refused (404)")


def broken_chunked_body(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW)
    body = json.dumps(hook_body(marks) | {"note": marks.access_token}).encode()
    head = (
        f"POST {VIEW} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = caller.raw(head + b"%x\r\n%s\r\nzz-not-hex\r\n" % (len(body), body))
    return Case([answer], jwt_marks(token), evidence="hook call refused (400)")


# Authentication: the EHR's JWT and what callers put where it belongs.


def refused(caller: Caller, marks: Marks, authorization: str | None, **jwts: str) -> Case:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = requests.post(
        f"{caller.served.base}{VIEW}", json=hook_body(marks), headers=headers, timeout=30
    )
    found = {
        f"{name} {part}": mark for name, token in jwts.items() for part, mark in jwt_marks(token).items()
    }
    return Case([Answer.of(response)], found, evidence="authentication refused")


def no_authorization(caller: Caller, marks: Marks) -> Case:
    return refused(caller, marks, None)


def credential_without_a_scheme(caller: Caller, marks: Marks) -> Case:
    """An API key sent as the whole header value, as some gateways are configured."""
    return refused(caller, marks, marks.access_token)


def jwt_without_a_scheme(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW)
    return refused(caller, marks, token, jwt=token)


def signed_by_another_key(caller: Caller, marks: Marks) -> Case:
    token = caller.signer.with_key(ec_p384_key()).token(VIEW, aud=caller.served.base + VIEW)
    return refused(caller, marks, f"Bearer {token}", jwt=token)


def expired(caller: Caller, marks: Marks) -> Case:
    now = int(time.time())
    token = caller.token(VIEW, iat=now - 900, exp=now - 600)
    return refused(caller, marks, f"Bearer {token}", jwt=token)


def addressed_elsewhere(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW, aud="https://elsewhere.example.test/cds-services/b12-iron-patient-view")
    return refused(caller, marks, f"Bearer {token}", jwt=token)


def replayed(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW)
    first, _ = caller.post(hook_body(marks), token=token)
    second, _ = caller.post(hook_body(marks), token=token)
    return Case([first, second], jwt_marks(token), evidence="authentication refused")


def basic_credentials(caller: Caller, marks: Marks) -> Case:
    encoded = base64.b64encode(f"cds:{marks.password}".encode()).decode()
    case = refused(caller, marks, f"Basic {encoded}")
    case.secrets["Basic credentials"] = encoded
    return case


def jwt_in_the_query(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW)
    url = f"{caller.served.base}{VIEW}?access_token={token}&password={marks.password}"
    response = requests.post(url, json=hook_body(marks), timeout=30)
    return Case([Answer.of(response)], jwt_marks(token), evidence="authentication refused")


def malformed_request_line(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW)
    answer = caller.raw(f"POST {VIEW}?t={token} {marks.access_token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return Case([answer], jwt_marks(token), evidence="Invalid request from ip")


def control_character_in_the_authorization(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW)
    answer = caller.raw(
        f"POST {VIEW} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n".encode()
    )
    return Case([answer], jwt_marks(token), evidence="Invalid request from ip")


def token_in_a_header_name(caller: Caller, marks: Marks) -> Case:
    answer = caller.raw(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX {marks.access_token}: 1\r\n\r\n".encode())
    return Case([answer], evidence="Invalid request from ip")


def header_too_long(caller: Caller, marks: Marks) -> Case:
    token = caller.token(VIEW)
    padding = "x" * 9000
    answer = caller.raw(
        f"POST {VIEW} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}{padding}\r\n\r\n".encode()
    )
    return Case([answer], jwt_marks(token), evidence="Invalid request from ip")


# Feedback: card ids and a clinician's words.


def feedback_item(marks: Marks, **changes: Any) -> dict[str, Any]:
    item = {
        "card": marks.card_id,
        "outcome": "overridden",
        "outcomeTimestamp": "2026-01-15T09:05:00Z",
        "overrideReason": {"reason": {"code": "patient-declined"}, "userComment": marks.comment},
    }
    return {key: value for key, value in (item | changes).items() if value is not None}


def feedback(caller: Caller, marks: Marks) -> Case:
    answer, token = caller.post({"feedback": [feedback_item(marks)]}, path=FEEDBACK)
    return Case([answer], jwt_marks(token))


def feedback_refused(caller: Caller, marks: Marks) -> Case:
    items = [feedback_item(marks, outcomeTimestamp=None), feedback_item(marks, card=marks.comment)]
    answer, token = caller.post({"feedback": items}, path=FEEDBACK)
    return Case([answer], jwt_marks(token), evidence="feedback refused (400)")


def feedback_bad_outcome(caller: Caller, marks: Marks) -> Case:
    item = feedback_item(marks, outcome="overridden", overrideReason={"userComment": {"text": marks.comment}})
    answer, token = caller.post({"feedback": [item]}, path=FEEDBACK)
    return Case([answer], jwt_marks(token), evidence="feedback refused (400)")


def feedback_to_an_unknown_service(caller: Caller, marks: Marks) -> Case:
    path = f"/cds-services/{marks.mrn}/feedback"
    answer, token = caller.post({"feedback": [feedback_item(marks)]}, path=path)
    return Case([answer], jwt_marks(token), evidence="feedback refused (404)")


# The commands that take a token or a URL: each returns its arguments and environment.


def private_key_file(directory: Path, signer: Signer) -> Path:
    path = directory / "client.pem"
    key = signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(key)
    return path


def fire_refused_by_the_fhir_server(caller: Caller, marks: Marks, directory: Path) -> list[str]:
    """fire prefetches from a server that refuses the token quoting it and a JWT, then the service
    fetches from it too and quotes it in its 412."""
    caller.ehr.plan(marks, "403")
    key = private_key_file(directory, caller.signer)
    return [
        *("fire", "--service", caller.served.base, "--fhir-server", caller.ehr.base_url),
        *("--patient", marks.patient_id, "--fhir-token", marks.access_token),
        *("--signing-key", str(key), "--iss", caller.signer.iss, "--kid", caller.signer.kid),
    ]


def fire_to_servers_named_with_passwords(caller: Caller, marks: Marks, directory: Path) -> list[str]:
    """The FHIR server, named with a password, is down: fire says so, and sends the hook with it as
    fhirServer, which the service refuses to query (a 412)."""
    fhir = f"http://cds:{marks.password}@127.0.0.1:{free_port()}/baseR4"
    key = private_key_file(directory, caller.signer)
    return [
        *("fire", "--service", caller.served.base, "--fhir-server", fhir, "--patient", marks.patient_id),
        *("--fhir-token", marks.access_token),
        *("--signing-key", str(key), "--iss", caller.signer.iss, "--kid", caller.signer.kid),
    ]


def fire_to_a_service_named_with_a_password(caller: Caller, marks: Marks, directory: Path) -> list[str]:
    service = caller.served.base.replace("://", f"://cds:{marks.password}@")
    return ["fire", "--service", service, "--fhir-server", caller.ehr.base_url, "--patient", marks.patient_id]


def load_fixtures_refused(caller: Caller, marks: Marks, directory: Path) -> list[str]:
    bundle = str(Path(__file__).resolve().parents[2] / "fhir_fixtures" / "combined-b12-iron-deficiency.json")
    return ["load-fixtures", "--fhir-server", caller.ehr.base_url, "--token", marks.access_token, bundle]


def load_fixtures_to_a_server_named_with_a_password(
    caller: Caller, marks: Marks, directory: Path
) -> list[str]:
    bundle = str(Path(__file__).resolve().parents[2] / "fhir_fixtures" / "combined-b12-iron-deficiency.json")
    fhir = f"http://cds:{marks.password}@127.0.0.1:{free_port()}/baseR4"
    return ["load-fixtures", "--fhir-server", fhir, "--token", marks.access_token, bundle]


def feedback_report_from_a_database_named_with_a_password(
    caller: Caller, marks: Marks, directory: Path
) -> list[str]:
    return ["feedback-report", "--db", f"postgresql://cds:{marks.password}@127.0.0.1:{free_port()}/cds"]


COMMANDS: dict[str, tuple[Callable[[Caller, Marks, Path], list[str]], int]] = {
    "fire, the FHIR server refusing the token": (fire_refused_by_the_fhir_server, 1),
    "fire to a FHIR server named with a password": (fire_to_servers_named_with_passwords, 1),
    "fire to a service named with a password": (fire_to_a_service_named_with_a_password, 1),
    "load-fixtures, the FHIR server refusing the token": (load_fixtures_refused, 1),
    "load-fixtures to a server named with a password": (load_fixtures_to_a_server_named_with_a_password, 1),
    "feedback-report from a database named with a password": (
        feedback_report_from_a_database_named_with_a_password,
        1,
    ),
}


CASES: dict[str, tuple[Callable[[Caller, Marks], Case], tuple[int, ...]]] = {
    "good call, full prefetch": (good_call, (200,)),
    "order-select then order-sign": (order_select_then_sign, (200, 200)),
    "fetch: data": fetching("data", 200),
    "fetch: paged search": fetching("paged", 200),
    "fetch: gzip": fetching("gzip", 200),
    "fetch: 401 text quoting the token": fetching("401 text", 412),
    "fetch: 401 JSON quoting the token with escaped slashes": fetching("401 escaped", 412),
    "fetch: 401 JSON quoting the token with '+' as \\u002B": fetching("401 escaped plus", 412),
    "fetch: 403 OperationOutcome quoting the token and a JWT": fetching("403", 412),
    "fetch: 404 OperationOutcome quoting the token and a JWT": fetching("404", 412),
    "fetch: 429 OperationOutcome quoting the token, Retry-After 0": fetching("429", 412),
    "fetch: 500 OperationOutcome quoting the token and a JWT": fetching("500", 412),
    "fetch: a search warning quoting the token, a JWT and the patient": fetching("warning", 200),
    "fetch: a body that stalls past the budget": fetching("stall", 412),
    "fetch: redirect to another origin with a password and the token": fetching("redirect", 412),
    "fetch: next link with a password and the token": fetching("next with password", 412),
    "fetch: next link to another origin with the token": fetching("next to another origin", 412),
    "fetch: an HTML page with 200 quoting the token and the patient": fetching("html 200", 412),
    "fetch: another patient's data": fetching("other patient", 412),
    "fetch: the access token is a JWT, 401 text quoting it": (access_token_is_a_jwt, (412,)),
    "fhirServer with a password": (fhir_server_with_a_password, (412,)),
    "prefetch OperationOutcome quoting the token and the patient": (
        prefetch_outcome_quoting_the_token,
        (412,),
    ),
    "malformed JSON around the token": (malformed_json, (400,)),
    "access_token not visible ASCII": (access_token_not_visible_ascii, (400,)),
    "token_type wrong, hookInstance an MRN": (token_type_wrong_and_hook_instance_an_mrn, (400,)),
    "context without patientId, the token as userId": (context_missing_patient, (400,)),
    "body too large": (too_large, (413,)),
    "gzip request body": (gzip_body, (415,)),
    "JSON nested 300 deep where it is not read": (deeply_nested, (200,)),
    "unknown service named by an MRN": (
        unknown_service_named_by_an_mrn,
        (404,),
    ),
    "malformed chunked body": (broken_chunked_body, (400,)),
    "no Authorization": (no_authorization, (401,)),
    "a credential without a scheme": (credential_without_a_scheme, (401,)),
    "a JWT without a scheme": (jwt_without_a_scheme, (401,)),
    "JWT signed by another key": (signed_by_another_key, (401,)),
    "expired JWT": (expired, (401,)),
    "JWT addressed elsewhere": (addressed_elsewhere, (401,)),
    "replayed JWT": (replayed, (200, 401)),
    "Basic credentials": (basic_credentials, (401,)),
    "JWT and password in the query string": (jwt_in_the_query, (401,)),
    "malformed request line quoting the JWT and the token": (malformed_request_line, (400,)),
    "control character after the JWT": (control_character_in_the_authorization, (400,)),
    "the token in a header name": (token_in_a_header_name, (400,)),
    "Authorization header too long": (header_too_long, (431,)),
    "feedback with a comment": (feedback, (200,)),
    "feedback refused": (feedback_refused, (400,)),
    "feedback with a comment that is not text": (feedback_bad_outcome, (400,)),
    "feedback to an unknown service named by an MRN": (
        feedback_to_an_unknown_service,
        (404,),
    ),
}
MARKS = {name: Marks(f"q{index:02d}", index) for index, name in enumerate(CASES, start=1)}
MARKS |= {name: Marks(f"k{index:02d}", 80 + index) for index, name in enumerate(COMMANDS, start=1)}
# What every case has done, for the sweep of the whole log and /metrics at the end.
DONE: dict[str, Case] = {}


def forms(mark: str) -> set[str]:
    """A marker as it may be written: as is, with JSON's escaped slash, percent-encoded."""
    from urllib.parse import quote

    return {mark, mark.replace("/", "\\/"), quote(mark, safe="")}


def found(text: str, marks: dict[str, str]) -> list[str]:
    return sorted(name for name, mark in marks.items() if any(form in text for form in forms(mark)))


def secrets_of(name: str) -> dict[str, str]:
    return MARKS[name].secrets() | DONE[name].secrets | {"echoed JWT": ECHOED_JWT}


def wait_for_call_line(served: Served, marks: Marks) -> None:
    """Wait until the call's own line is written: it is its worker's last line for the call, and a worker
    writes its lines in order."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in served.log().splitlines():
            if f'"hookInstance":"{marks.hook_instance}"' in line and '"message":"hook call"' in line:
                return
        time.sleep(0.05)
    raise AssertionError(f"no call line for {marks.hook_instance}")


def wait_for_more(served: Served, evidence: str, before: int) -> None:
    """Wait until the log holds ``evidence`` more than ``before`` times."""
    deadline = time.monotonic() + 10
    while served.log().count(evidence) <= before:
        assert time.monotonic() < deadline, f"no new line with {evidence!r}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("name", "run", "statuses"), [pytest.param(name, *case, id=name) for name, case in CASES.items()]
)
def test_no_marker_leaves_where_it_must_not(
    served: Served, ehr: MarkedEhr, signer: Signer, name: str, run: Any, statuses: tuple[int, ...]
) -> None:
    marks = MARKS[name]
    before = served.log()
    case = run(Caller(served, ehr, signer), marks)
    DONE[name] = case
    assert [answer.status for answer in case.answers] == list(statuses), [a.text[:600] for a in case.answers]
    for answer in case.answers:
        assert not found(answer.text, secrets_of(name)), answer.text[:2000]
    if case.call_line:
        wait_for_call_line(served, marks)
    elif case.evidence is not None:
        wait_for_more(served, case.evidence, before.count(case.evidence))
    log = served.log()
    leaked = found(log, secrets_of(name) | marks.patient_data())
    assert not leaked, [
        line for line in log.splitlines() if found(line, secrets_of(name) | marks.patient_data())
    ]
    assert not [seen for seen in ehr.other_seen if seen.authorization], "a token went to another origin"


@pytest.mark.parametrize("name", COMMANDS)
def test_the_commands_print_no_secret(
    served: Served, ehr: MarkedEhr, signer: Signer, tmp_path: Path, name: str
) -> None:
    """What the commands print (stdout, stderr) quotes no token, JWT or password they were given or that
    a server sent back; what they made the service do is swept with the cases."""
    marks = MARKS[name]
    arguments, status = COMMANDS[name]
    command = [COMMAND, *arguments(Caller(served, ehr, signer), marks, tmp_path)]
    env = clean_env(CDS_FEEDBACK_DB=str(tmp_path / "feedback.sqlite3"))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    DONE[name] = Case([])
    printed = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == status, printed
    assert not found(printed, marks.secrets() | {"echoed JWT": ECHOED_JWT}), printed
    assert not JWT_SHAPED.findall(printed), printed


# The key server's password, in the client's jwks_url (CDS_CLIENTS).
JWKS_PASSWORD = "PWjwksLeakPass"


@pytest.fixture(scope="module")
def stores_down(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[tuple[Served, Marks]]:
    """A second instance whose Redis (replay store) and PostgreSQL (feedback) are named with passwords
    and cannot be reached, and whose client's keys are fetched from a jwks_url with a password."""
    marks = Marks("sd", 99)
    workdir = tmp_path_factory.mktemp("no-leaks-stores-down")
    keys = JwksServer().start()
    jwks_url = keys.publish("/jwks.json", signer).replace("://", f"://keys:{JWKS_PASSWORD}@")
    clients = write_clients(workdir, [{"iss": signer.iss, "jwks_url": jwks_url}])
    try:
        server = Served(
            workdir,
            workers=1,
            threads=2,
            CDS_AUTH="required",
            CDS_CLIENTS=str(clients),
            CDS_PUBLIC_BASE_URL=BASE_URL,
            CDS_REDIS_URL=f"redis://:{marks.password}@127.0.0.1:{free_port()}/0",
            CDS_FEEDBACK_DB=f"postgresql://cds:{marks.password}@127.0.0.1:{free_port()}/cds",
        )
        yield server, marks
        server.stop()
    finally:
        keys.stop()


def signed_call(served: Served, signer: Signer, marks: Marks) -> tuple[Answer, str]:
    token = signer.token(VIEW)
    headers = {"Authorization": f"Bearer {token}"}
    response = requests.post(f"{served.base}{VIEW}", json=hook_body(marks), headers=headers, timeout=30)
    return Answer.of(response), token


def test_a_jwks_url_is_logged_without_its_password(stores_down: tuple[Served, Marks], signer: Signer) -> None:
    served, marks = stores_down
    signed_call(served, signer, marks)
    served.wait_for_log("key(s) for")
    assert "key(s) for" in served.log()
    assert JWKS_PASSWORD not in served.log()


def test_stores_down_are_named_without_their_passwords(
    stores_down: tuple[Served, Marks], signer: Signer
) -> None:
    """/readyz, a signed call the replay store cannot check (503), and everything the instance logs from
    start to stop."""
    served, marks = stores_down
    answers = [Answer.of(requests.get(f"{served.base}/readyz", timeout=30))]
    answer, token = signed_call(served, signer, marks)
    answers.append(answer)
    assert [answer.status for answer in answers] == [503, 503], [answer.text for answer in answers]
    for answer in answers:
        assert not found(answer.text, marks.secrets() | jwt_marks(token) | {"jwks": JWKS_PASSWORD}), (
            answer.text
        )
    served.stop()
    log = served.log()
    assert "cannot be reached" in log
    assert not found(log, marks.secrets() | jwt_marks(token) | marks.patient_data()), log[-3000:]
    assert not JWT_SHAPED.findall(log)


def test_the_whole_log_and_metrics_hold_no_marker(served: Served) -> None:
    """After every case: /metrics, then the whole log once the server has stopped and written it all."""
    if not DONE:
        pytest.skip("no case ran: this sweeps what the cases left")
    metrics = requests.get(f"{served.base}/metrics", timeout=10).text
    served.stop()
    log = served.log()
    leaks = {}
    for name in DONE:
        marks = MARKS[name]
        everything = secrets_of(name) | marks.patient_data() | marks.call_ids()
        if in_metrics := found(metrics, everything):
            leaks[f"{name}: /metrics"] = in_metrics
        if in_log := found(log, secrets_of(name) | marks.patient_data()):
            leaks[f"{name}: log"] = in_log
    assert not leaks, leaks
    assert not JWT_SHAPED.findall(log), "a JWT in the log"
