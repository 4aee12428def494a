"""``cds-service fire``: act as an EHR against a running CDS service and a FHIR server.

This is how an integrator checks a deployment end to end without an EHR: the command reads discovery,
renders the chosen service's prefetch templates, runs them against the FHIR server (following paging
links), signs a fresh client JWT for every call when given a key (as the CDS Hooks security model asks:
``aud`` is the exact endpoint URL), sends the hook and prints the cards. Every failure an integrator can
meet — connection refused, 401, 404, 412 — is reported in one line that says what to check.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import click
import jwt
import orjson
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cds_service.cli_types import HTTP_URL, PATH, bearer_token
from cds_service.devtools.bundles import (
    BundleError,
    FileTooLargeError,
    load_draft_orders,
    read_at_most,
    size_text,
)
from cds_service.devtools.hookrequest import HOOKS, ORDER_HOOKS, hook_context, hook_request, service_for_hook
from cds_service.devtools.render import render_response
from cds_service.fhir.errors import exception_reason
from cds_service.fhir.read import array, next_link
from cds_service.fhir.servers import target_of
from cds_service.protocol.clients import MIN_RSA_BITS
from cds_service.protocol.prefetch import TemplateError, render_template
from cds_service.redaction import without_passwords, without_tokens

TOKEN_LIFETIME_S = 300
MAX_PAGES = 50
MAX_TIMEOUT_S = 86_400.0
MAX_RESPONSE_BYTES = 256 * 1024 * 1024  # as for a Bundle file (bundles.MAX_FILE_BYTES)
MAX_KEY_BYTES = 64 * 1024  # a PEM RSA 16384-bit key is about 13 KB
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_FHIR_HEADERS = {"Accept": "application/fhir+json"}


class FireError(click.ClickException):
    """A one-line failure of the simulated EHR call."""


class _TooSlow(Exception):
    """The whole of one HTTP call took longer than --timeout."""


class _TooLarge(Exception):
    """An answer held more than MAX_RESPONSE_BYTES."""


class Seconds(click.FloatRange):
    """A timeout in seconds: above zero and at most a day.

    requests hands the value to urllib3 and the socket, which refuse zero, negatives, NaN and infinity
    with a traceback; NaN needs its own check because it passes every range comparison.
    """

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True, max=MAX_TIMEOUT_S)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return float(seconds)


# The request schema's patterns (protocol/schemas/defs.json): a value outside them is a 400 from the service,
# after fire has already put it into the FHIR query paths (Patient/../../metadata).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_USER_REFERENCE = re.compile(r"(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}")


def _patient_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _FHIR_ID.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not a FHIR id (1 to 64 letters, digits, '-' or '.')", ctx, param
        )
    return value


def _user_reference(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _USER_REFERENCE.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not a reference such as Practitioner/123 "
            "(Practitioner, PractitionerRole, Patient or RelatedPerson)",
            ctx,
            param,
        )
    return value


@dataclass(frozen=True)
class SigningKey:
    """A client's private key, the JWS algorithm it signs with, and the ``kid`` the service knows it by."""

    private_key: Any
    algorithm: str
    kid: str
    iss: str

    def token(self, audience: str) -> str:
        """A fresh JWT for one call: ``aud`` is the exact URL called, valid five minutes, unique ``jti``."""
        now = int(time.time())
        claims = {
            "iss": self.iss,
            "aud": audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_S,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(
            claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid, "typ": "JWT"}
        )


def public_jwk(private_key: Any, kid: str | None = None) -> dict[str, Any]:
    """The public JWK of a key (for a CDS_CLIENTS ``jwks`` entry), with its ``kid`` and intended ``alg``."""
    algorithm = signing_algorithm(private_key)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk = orjson.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    else:
        jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    jwk["kid"] = kid or jwk_thumbprint(jwk)
    jwk["alg"] = algorithm
    jwk["use"] = "sig"
    return jwk


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint: a stable default ``kid`` derived from the public key itself."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = orjson.dumps({m: jwk[m] for m in members}, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def signing_algorithm(private_key: Any) -> str:
    """ES384 for a P-384 key (ES256/ES512 for the other NIST curves), RS384 for RSA."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        algorithm = _EC_ALGORITHMS.get(private_key.curve.name)
        if algorithm is None:
            raise FireError(f"EC curve {private_key.curve.name} is not usable for JWTs; use P-384")
        return algorithm
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RS384"
    raise FireError(
        f"{type(private_key).__name__} keys cannot sign CDS Hooks JWTs; use an EC P-384 or RSA key"
    )


def load_signing_key(path: Path, iss: str, kid: str | None) -> SigningKey:
    """Read a PEM private key; the error never shows the file's content."""
    try:
        data = read_at_most(path, MAX_KEY_BYTES)
    except FileTooLargeError:
        raise FireError(f"{path}: larger than {size_text(MAX_KEY_BYTES)}, not a PEM private key") from None
    except OSError as error:
        raise FireError(f"cannot read the signing key {path}: {error.strerror or error}") from None
    try:
        private_key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise FireError(f"{path} is not an unencrypted PEM private key") from None
    algorithm = signing_algorithm(private_key)
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < MIN_RSA_BITS:
        # Smaller keys sign tokens every service refuses (a 512-bit one cannot even hold an RS384 signature).
        raise FireError(
            f"{path} is a {private_key.key_size}-bit RSA key; "
            f"CDS Hooks services need at least {MIN_RSA_BITS} bits"
        )
    return SigningKey(private_key, algorithm, kid or public_jwk(private_key)["kid"], iss)


class Ehr:
    """The simulated EHR: one HTTP session, the CDS service base, the FHIR server, an optional key."""

    def __init__(
        self,
        service_base: str,
        fhir_server: str,
        key: SigningKey | None,
        fhir_token: str | None,
        timeout: float,
    ) -> None:
        base = service_base.rstrip("/")
        self.service_base = base.removesuffix("/cds-services")
        self.fhir_server = fhir_server.rstrip("/")
        self.key = key
        self.fhir_token = fhir_token
        self.timeout = timeout
        self.session = requests.Session()

    # --- the CDS service ------------------------------------------------------------------------------

    def _service_headers(self, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key.token(url)}"
        return headers

    def _send(self, method: str, url: str, **options: Any) -> requests.Response:
        """One HTTP call, its whole answer read within --timeout.

        requests applies a timeout to the connection and to each read, so a server sending a byte at a
        time held a call for as long as it kept sending; the body is read here against one deadline, and
        no further than MAX_RESPONSE_BYTES."""
        deadline = time.monotonic() + self.timeout
        response = self.session.request(method, url, timeout=self.timeout, stream=True, **options)
        chunks: list[bytes] = []
        size = 0
        try:
            # read1 returns what has arrived (iter_content would wait for a whole chunk of 64 KiB).
            while chunk := response.raw.read1(64 * 1024, decode_content=True):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise _TooLarge
                if time.monotonic() > deadline:
                    raise _TooSlow
        finally:
            response.close()
        response._content = b"".join(chunks)  # what response.content would have read
        return response

    def _service_call(self, method: str, url: str, body: Any = None) -> requests.Response:
        headers = self._service_headers(url)
        try:
            if body is None:
                return self._send(method, url, headers=headers)
            headers["Content-Type"] = "application/json"
            return self._send(method, url, data=orjson.dumps(body), headers=headers)
        except _TooLarge:
            raise FireError(
                f"the CDS service at {url} answered more than {size_text(MAX_RESPONSE_BYTES)}"
            ) from None
        except (requests.Timeout, _TooSlow):  # before ConnectionError: a connect timeout is both
            raise FireError(f"the CDS service at {url} did not answer within {self.timeout:g} s") from None
        except requests.RequestException as error:
            reason = exception_reason(error, url)
            hint = " (is it running?)" if reason.startswith("connection refused") else ""
            raise FireError(f"cannot connect to the CDS service: {reason}{hint}") from None

    def discovery(self) -> list[dict[str, Any]]:
        url = f"{self.service_base}/cds-services"
        response = self._service_call("GET", url)
        self._raise_for_service(response, url)
        try:
            services = response.json()["services"]
        except (ValueError, KeyError, TypeError):
            raise FireError(f"{url} did not answer with a CDS Hooks discovery document") from None
        if not isinstance(services, list):
            raise FireError(f"{url}: 'services' is not a list")
        return [s for s in services if isinstance(s, dict)]

    def call(self, service_id: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.service_base}/cds-services/{service_id}"
        response = self._service_call("POST", url, body)
        self._raise_for_service(response, url)
        try:
            answer = response.json()
        except ValueError:
            raise FireError(f"{url} answered 200 but not with JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("cards"), list):
            raise FireError(f"{url} answered 200 without a 'cards' list")
        # fire is how an integrator checks a service: a response an EHR could not show is reported as such
        # (the first problem, where it is), not rendered into a traceback.
        from cds_service.protocol.schemas import validator

        problems = sorted(validator("response").iter_errors(answer), key=lambda e: list(e.absolute_path))
        if problems:
            where = "/".join(str(part) for part in problems[0].absolute_path) or "(the response)"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise FireError(
                f"{url} answered 200 with a response that is not a valid CDS Hooks response "
                f"(as checked by protocol/schemas/response.json): {where}: {problems[0].message[:200]}{more}"
            )
        return answer

    def _raise_for_service(self, response: requests.Response, url: str) -> None:
        status = response.status_code
        if status == 200:
            return
        if status == 401:
            hint = (
                "the signed JWT was refused: check --iss, --kid and the key in the service's CDS_CLIENTS, "
                "and that --service is the URL the service expects as the audience (its CDS_PUBLIC_BASE_URL)"
                if self.key is not None
                else "the service requires a signed JWT: give --signing-key PEM --iss ISS"
            )
            raise FireError(f"401 Unauthorized from {url}: {hint}")
        if status == 404:
            raise FireError(f"404 Not Found from {url}: check the --service base URL and the service id")
        reason = _shortened(self._scrub(_outcome_text(response)))
        if status == 412:
            raise FireError(f"412 from {url}: the service could not get the data it needs: {reason}")
        raise FireError(f"HTTP {status} from {url}: {reason}")

    # --- the FHIR server ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """A server's words without the --fhir-token or anything shaped like a JWT: a FHIR server's 401 may
        quote the token it refused, and the service's 412 quotes the FHIR server."""
        return without_tokens(text, self.fhir_token)

    def _fhir_get(self, url: str) -> requests.Response:
        headers = dict(_FHIR_HEADERS)
        if self.fhir_token:
            headers["Authorization"] = f"Bearer {self.fhir_token}"
        try:
            return self._send("GET", url, headers=headers)
        except _TooLarge:
            raise FireError(
                f"the FHIR server answered {url} with more than {size_text(MAX_RESPONSE_BYTES)}"
            ) from None
        except (requests.Timeout, _TooSlow):  # before ConnectionError: a connect timeout is both
            raise FireError(f"the FHIR server did not answer {url} within {self.timeout:g} s") from None
        except requests.RequestException as error:
            raise FireError(f"cannot query the FHIR server: {exception_reason(error, url)}") from None

    def prefetch(self, templates: Mapping[str, str], context: Mapping[str, Any]) -> dict[str, Any]:
        """Run each rendered template like an EHR; keys whose query fails are left out, never sent as junk.

        Each query and what it found is one line on stderr, then which keys are sent, so a developer sees
        what the EHR side did (stdout keeps only the cards). A read that finds nothing is sent as null,
        except the read of the context's own patient: the service would answer a missing patient with no
        cards, which looks like "nothing to say" when the real problem is the --patient id or the FHIR
        server."""
        values: dict[str, Any] = {}
        patient = f"Patient/{context['patientId']}" if context.get("patientId") else None
        for key, template in templates.items():
            if not isinstance(template, str):
                click.echo(f"prefetch {key}: not sent (the template is not a string)", err=True)
                continue
            try:
                query = render_template(template, context)
            except TemplateError as error:
                click.echo(f"prefetch {key}: not sent ({error})", err=True)
                continue
            found, ok = self._run_query(key, query, patient)
            if ok:
                values[key] = found
        left_out = [key for key in templates if key not in values]
        summary = f"prefetched {len(values)} of {len(templates)} keys from {self.fhir_server}"
        if left_out:
            summary += f"; not sent: {', '.join(left_out)} (the service fetches these itself if it may)"
        click.echo(summary, err=True)
        return values

    def _run_query(self, key: str, query: str, patient: str | None = None) -> tuple[Any, bool]:
        url = f"{self.fhir_server}/{query.lstrip('/')}"
        shown = f"prefetch {key}: GET {query.lstrip('/')} -> "
        response = self._fhir_get(url)
        is_read = "?" not in query and query.strip("/").count("/") == 1
        if is_read and response.status_code in (404, 410):
            click.echo(f"{shown}{response.status_code}, sent as null (not found)", err=True)
            if patient is not None and query.strip("/") == patient:
                raise FireError(
                    f"{patient} does not exist on the FHIR server {self.fhir_server} "
                    f"(HTTP {response.status_code}): check --patient and --fhir-server"
                )
            return None, True
        if response.status_code != 200:
            click.echo(f"{shown}not sent (FHIR server answered {self._status_reason(response)})", err=True)
            return None, False
        try:
            found = response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "no Content-Type").split(";")[0]
            click.echo(
                f"{shown}not sent (the FHIR server's answer is not JSON but {kind}: "
                "is --fhir-server the FHIR base URL?)",
                err=True,
            )
            return None, False
        if not isinstance(found, dict) or not isinstance(found.get("resourceType"), str):
            click.echo(f"{shown}not sent (the FHIR server's answer is not a FHIR resource)", err=True)
            return None, False
        pages = 1
        if not is_read and found["resourceType"] == "Bundle":
            found, pages = self._all_pages(found, url)
        click.echo(f"{shown}200, {_found_text(found, pages)}", err=True)
        return found, True

    def _status_reason(self, response: requests.Response) -> str:
        """The status, the OperationOutcome's words if there are any, and what to check for a 401/403."""
        text = str(response.status_code)
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            text += f": {_shortened(self._scrub(_outcome_text(response)))}"
        if response.status_code in (401, 403):
            text += "; check --fhir-token" if self.fhir_token else "; it wants a token: give --fhir-token"
        return text

    def _all_pages(self, bundle: dict[str, Any], url: str) -> tuple[dict[str, Any], int]:
        """Follow ``next`` links (opaque URLs, relative ones read against the page they came from) and
        merge their entries into one Bundle.

        Only links to the --fhir-server's own origin are followed, as the service itself does: the
        requests carry the --fhir-token, which must not go to a host a server's answer names. When paging
        stops early, the merged Bundle keeps the ``next`` link it did not follow, so the service sees a
        partial search as partial (and fetches that key itself) rather than as complete."""
        merged = dict(bundle)
        entries = list(array(bundle.get("entry")))
        page = bundle
        pages = 1
        fetched = {url}
        home = target_of(self.fhir_server)
        while (link := next_link(page)) is not None:
            try:
                next_url = urljoin(url, link)
            except ValueError:
                next_url = link
            if pages >= MAX_PAGES:
                click.echo(f"paging stopped after {MAX_PAGES} pages; the search is sent as partial", err=True)
                break
            target = target_of(next_url)
            if target is None or target != home:
                where = "not a plain http(s) URL" if target is None else "to another origin"
                click.echo(
                    f"paging stopped: the next link is {where}, not followed (it would carry the "
                    "FHIR token); the search is sent as partial",
                    err=True,
                )
                break
            if next_url in fetched:
                click.echo("paging stopped: the next link repeats an earlier page", err=True)
                break
            response = self._fhir_get(next_url)
            if response.status_code != 200:
                click.echo(f"paging stopped: the FHIR server answered {response.status_code}", err=True)
                break
            try:
                next_page = response.json()
            except ValueError:
                click.echo("paging stopped: a page of the search is not JSON", err=True)
                break
            if not isinstance(next_page, dict):
                click.echo("paging stopped: a page of the search is not a FHIR resource", err=True)
                break
            page = next_page
            pages += 1
            fetched.add(next_url)
            url = next_url
            entries.extend(array(page.get("entry")))
        else:
            next_url = None
        merged["link"] = [
            link
            for link in array(bundle.get("link"))
            if isinstance(link, dict) and link.get("relation") == "self"
        ]
        if next_url is not None:
            merged["link"].append({"relation": "next", "url": next_url})
        if entries:
            merged["entry"] = entries
        return merged, pages


def _found_text(found: Mapping[str, Any], pages: int) -> str:
    """What a query brought back, for the prefetch log: a resource, or a search's entries and pages."""
    if found.get("resourceType") != "Bundle":
        return (
            f"{found['resourceType']}/{found.get('id')}"
            if isinstance(found.get("id"), str)
            else found["resourceType"]
        )
    entries = array(found.get("entry"))
    text = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    if pages > 1:
        text += f" in {pages} pages"
    if next_link(found) is not None:
        text += ", sent as partial (paging stopped)"
    return text


# How much of a server's reason an error line quotes. The service's 412 names every key it could not
# have and then why (a fhirServer it may not query, a server's status): cut at 500 characters, a 412 for
# eight missing keys lost its last words, the ones that say what to fix.
REASON_LIMIT = 2000


def _outcome_text(response: requests.Response) -> str:
    """What an error answer says: the first line of a text body, or an OperationOutcome's diagnostics
    (at most ten times REASON_LIMIT, so that starring tokens never scans megabytes)."""
    try:
        body = response.json()
    except ValueError:
        text = (response.text or "").strip()
        return text.splitlines()[0][: 10 * REASON_LIMIT] if text else (response.reason or "no details")
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [
            str(i.get("diagnostics") or i.get("code"))
            for i in array(body.get("issue"))
            if isinstance(i, dict)
        ]
        return "; ".join(texts)[: 10 * REASON_LIMIT] or "no details"
    return str(body)[: 10 * REASON_LIMIT]


def _shortened(text: str) -> str:
    """A reason cut to REASON_LIMIT characters, saying so. Cut after the tokens are starred: a JWT cut in
    two would no longer look like one."""
    return text if len(text) <= REASON_LIMIT else f"{text[:REASON_LIMIT]}… (cut at {REASON_LIMIT} characters)"


def _urls_without_passwords(command: Callable[..., None]) -> Callable[..., None]:
    """Messages quote the URLs called: a user:password@ in --service or --fhir-server stays out of them."""

    @functools.wraps(command)
    def run(**options: Any) -> None:
        try:
            command(**options)
        except FireError as error:
            message = without_passwords(error.message, options["service_url"])
            error.message = without_passwords(message, options["fhir_server"])
            raise

    return run


@click.command("fire")
@click.option(
    "--service",
    "service_url",
    type=HTTP_URL,
    required=True,
    help="Base URL of the CDS service (its /cds-services).",
)
@click.option(
    "--fhir-server",
    type=HTTP_URL,
    required=True,
    help="FHIR base URL the EHR prefetches from (sent as fhirServer).",
)
@click.option(
    "--patient", "patient_id", required=True, callback=_patient_id, help="Patient id on that FHIR server."
)
@click.option("--hook", type=click.Choice(HOOKS), default="patient-view", show_default=True)
@click.option(
    "--order",
    "order_file",
    type=PATH,
    help="Draft orders: a resource, a Bundle, or a hooks/ request file.",
)
@click.option("--signing-key", type=PATH, help="PEM private key (EC P-384 or RSA) to sign JWTs.")
@click.option("--iss", help="JWT issuer the service knows the key by (required with --signing-key).")
@click.option("--kid", help="JWT key id (default: the key's RFC 7638 thumbprint).")
@click.option(
    "--fhir-token",
    envvar="FHIR_ACCESS_TOKEN",
    callback=bearer_token,
    help="Bearer token for the FHIR server, also sent to the service as fhirAuthorization "
    "(or $FHIR_ACCESS_TOKEN).",
)
@click.option(
    "--prefetch/--no-prefetch", default=True, show_default=True, help="Send the prefetch, or none at all."
)
@click.option(
    "--user",
    "user_id",
    default="Practitioner/cds-devtools",
    show_default=True,
    callback=_user_reference,
    help="context.userId.",
)
@click.option("--timeout", type=Seconds(), default=30.0, show_default=True, help="Seconds per HTTP call.")
@click.option("--json", "as_json", is_flag=True, help="Print the service response as JSON.")
@_urls_without_passwords
def fire(
    service_url: str,
    fhir_server: str,
    patient_id: str,
    hook: str,
    order_file: Path | None,
    signing_key: Path | None,
    iss: str | None,
    kid: str | None,
    fhir_token: str | None,
    prefetch: bool,
    user_id: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Call a running CDS service as an EHR would, with data from a FHIR server, and print the cards.

    Reads discovery, runs the service's prefetch queries against --fhir-server (one line per query on
    stderr), signs a fresh JWT per call when given --signing-key, sends the hook and prints the cards.

    Examples: the patients are fixtures that `cds-service load-fixtures` put on the FHIR server.

    \b
      cds-service fire --service http://127.0.0.1:8080 --fhir-server http://127.0.0.1:8090/fhir \\
          --patient fx-b12-started-8-weeks-ago
      cds-service fire --service http://127.0.0.1:8080 --fhir-server http://127.0.0.1:8090/fhir \\
          --patient fx-b12-order-megaloblastic --hook order-select \\
          --order hooks/order-select-cyanocobalamin.json
      cds-service fire --service http://127.0.0.1:8080 --fhir-server http://127.0.0.1:8090/fhir \\
          --patient fx-b12-started-8-weeks-ago --signing-key client.pem --iss https://ehr.local.test \\
          --kid local-1

    The last signs JWTs with a key the service has registered (CDS_CLIENTS). A FHIR server that wants a
    token (the SMART launcher): --fhir-token or $FHIR_ACCESS_TOKEN. Step by step, the key included, and
    for HAPI, SMART and the CDS Hooks Sandbox: docs/testing-with-sandboxes.md.
    """
    if hook in ORDER_HOOKS and order_file is None:
        raise click.UsageError(f"--hook {hook} needs draft orders: give --order FILE")
    if hook not in ORDER_HOOKS and order_file is not None:
        raise click.UsageError(
            f"--order is for the order-select and order-sign hooks; give --hook order-select or order-sign "
            f"(with --hook {hook} the orders would be unused)"
        )
    if signing_key is not None and not iss:
        raise click.UsageError("--signing-key needs --iss (the issuer registered with the service)")
    if signing_key is None and (iss or kid):
        # Ignored, they sent every call unsigned: a 401 from a service that wants a JWT, or, from one that
        # does not, cards that looked like a check of the client's registration.
        given = " and ".join(name for name, value in (("--iss", iss), ("--kid", kid)) if value)
        raise click.UsageError(
            f"{given} without --signing-key: no JWT would be signed; give --signing-key PEM"
        )
    key = load_signing_key(signing_key, iss, kid) if signing_key is not None and iss else None
    try:
        drafts = load_draft_orders(order_file, patient_id) if order_file else None
    except BundleError as error:
        raise FireError(str(error)) from None

    ehr = Ehr(service_url, fhir_server, key, fhir_token, timeout)
    services = {s["id"]: s for s in ehr.discovery() if isinstance(s.get("id"), str)}
    try:
        service_id = service_for_hook(services, hook)
    except LookupError:
        raise FireError(f"the service at {ehr.service_base} offers no service for the {hook} hook") from None
    context = hook_context(hook, patient_id, drafts, user_id)
    templates = services[service_id].get("prefetch") or {}
    if not isinstance(templates, dict):
        raise FireError(
            f"the prefetch of {service_id} in its discovery is not an object of named query templates"
        )
    values = ehr.prefetch(templates, context) if prefetch else None
    authorization = None
    if fhir_token:
        authorization = {
            "access_token": fhir_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
            "scope": "patient/*.read",
            "subject": user_id,
            "patient": patient_id,
        }
    body = hook_request(hook, context, values, fhir_server=ehr.fhir_server, fhir_authorization=authorization)
    response = ehr.call(service_id, body)
    if as_json:
        click.echo(orjson.dumps(response, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_response(response, heading=f"Patient/{patient_id} — {hook} — {service_id}"))
