"""Verifies the JWT a CDS client sends with every call (CDS Hooks 2.0, "Trusting CDS Clients").

Without this check anyone who can reach the service could feed it made-up patients, read what it
concludes and, worse, make it send an EHR access token to a FHIR server of their choosing. So every
token must be signed with an asymmetric key of a client we were told to trust, be addressed to the very
endpoint called, be fresh, and be used once. Failures raise AuthError, whose message is meant for the
log: it explains the refusal but never contains the token.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from cds_service.config import ConfigError, Settings
from cds_service.protocol.clients import ALLOWED_ALGORITHMS, ClientConfig, ClientKeys, load_clients
from cds_service.protocol.jti_store import ReplayStoreError, open_replay_store
from cds_service.redaction import without_passwords

log = logging.getLogger(__name__)

LEEWAY_S = 60
MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 256
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# What a refused Authorization scheme may be quoted as (see _scheme_shown): letters only, as the schemes in
# use are named, and short; a credential has digits or is long.
_SCHEME_NAME = re.compile(r"[A-Za-z]{1,12}")

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat lies in the future)"),
    (jwt.InvalidSignatureError, "the signature does not verify with the client's key"),
    (jwt.InvalidIssuedAtError, "iat is not a number"),
    (InvalidJTIError, f"jti must be a string of 1 to {MAX_JTI_CHARS} characters"),
    (jwt.InvalidIssuerError, "iss does not match the client"),
    (InvalidSubjectError, "sub is not a string"),
    (jwt.InvalidAlgorithmError, "the algorithm is not allowed for this key"),
    (jwt.DecodeError, "the token is malformed"),
)


@dataclass(frozen=True)
class AuthenticatedClient:
    """Who called: the issuer, its tenant, and the FHIR servers its access tokens may be sent to."""

    iss: str
    tenant: str | None
    fhir_servers: tuple[str, ...]


class AuthError(Exception):
    """The call is not authenticated. ``str(e)`` is the reason for the log; it never holds the token."""


class ReplayCheckUnavailable(AuthError):
    """A correctly signed token whose jti cannot be checked: the replay store is away or has lost the ids
    it held. The token is refused (fail closed), but the fault is the service's, not the caller's
    credentials: a 503 says so, where a 401 sent the EHR's integrators after their keys."""


def _shown(value: object, limit: int = 80) -> str:
    """A caller-supplied value made safe for one log line (escaped, shortened)."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Authenticator:
    """Checks ``Authorization: Bearer <JWT>`` against the trusted clients of ``CDS_CLIENTS``."""

    def __init__(self, settings: Settings, *, http: requests.Session | None = None) -> None:
        clients = self.trusted_clients(settings)
        self._base_url = settings.public_base_url.rstrip("/")
        session = http if http is not None else requests.Session()
        self._keys = {iss: ClientKeys(client, session) for iss, client in clients.items()}
        # A token used just before Redis lost its ids can be presented until its exp + LEEWAY_S, which lies
        # at most the client's lifetime + LEEWAY_S after its use (iat may be LEEWAY_S ahead of our clock).
        longest = max(client.max_token_lifetime_s for client in clients.values())
        self._replay = open_replay_store(settings, loss_window_s=longest + 2 * LEEWAY_S)

    @staticmethod
    def trusted_clients(settings: Settings) -> dict[str, ClientConfig]:
        """The clients of ``CDS_CLIENTS``, or ConfigError when authentication cannot be set up; reads files
        only, so ``serve`` can check it once before any worker starts."""
        if settings.clients_file is None:
            raise ConfigError(
                "CDS_AUTH=required needs CDS_CLIENTS, the JSON file of trusted clients "
                "(see docs/clients.md); use CDS_AUTH=off for local testing only"
            )
        if not settings.public_base_url:
            raise ConfigError(
                "CDS_PUBLIC_BASE_URL is needed with CDS_AUTH=required: tokens are checked against "
                "the URL the client called (their 'aud' claim)"
            )
        if _comparable_url(settings.public_base_url) is None:
            shown = without_passwords(settings.public_base_url, settings.public_base_url)
            raise ConfigError(
                f"CDS_PUBLIC_BASE_URL={shown!r} cannot be compared with a token's aud: "
                "set it to the URL clients call, an absolute http(s) URL with a host and no user, query or "
                "fragment (unset, it is http://{host}:{port} of serve, which an IPv6 host such as :: spoils)"
            )
        return load_clients(settings.clients_file)

    def describe(self) -> str:
        issuers = ", ".join(sorted(self._keys))
        return (
            f"JWT authentication required: {len(self._keys)} trusted client(s) ({issuers}); "
            f"audience base {self._base_url}; jti replay store: {self._replay.describe()}"
        )

    def unready(self) -> str | None:
        """For /readyz: the replay store when it has not been reached since start (else None)."""
        return self._replay.unready()

    def authenticate(self, authorization: str | None, path: str) -> AuthenticatedClient:
        """The verified caller of ``path``, or AuthError saying why the call is refused."""
        token = _bearer_token(authorization)
        header, unverified = _unverified_parts(token)
        alg, kid = header.get("alg"), header.get("kid")
        # A JSON array or object as alg is unhashable: tested for membership as it is, it raised TypeError
        # (a 500) instead of a refusal.
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthError(
                f"alg {_shown(alg)} is not allowed; accepted are ES256/384/512, RS256/384/512 and "
                "PS256/384/512 (never none or an HMAC)"
            )
        if not isinstance(kid, str) or not kid:
            raise AuthError("the token header has no kid")
        typ = header.get("typ")
        # RFC 7515 4.1.9: a media type, compared without regard to case, whose "application/" may be left out.
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ("jwt", "application/jwt")):
            raise AuthError(f"typ {_shown(typ)} is not JWT")
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise AuthError(f"jku {_shown(jku)} is not a URL")

        iss = unverified.get("iss")
        keys = self._keys.get(iss) if isinstance(iss, str) else None
        if keys is None:
            raise AuthError(f"iss {_shown(iss)} is not a trusted client{self._near_issuer(iss)}")
        client = keys.client
        # A jku is never fetched: keys come only from what the client registered. With a jwks_url it must
        # name that URL; with keys given inline only, it points at a copy of what we hold (the Sandbox
        # sends one on every call) and is ignored.
        if jku is not None and client.jwks_url is not None and not _same_url(jku, client.jwks_url):
            raise AuthError(f"jku {_shown(jku)} is not the jwks_url registered for {client.iss}; not fetched")

        key = keys.find(kid)
        if key is None:
            raise AuthError(f"kid {_shown(kid)} is not a known key of {client.iss} ({keys.why_unknown()})")
        verifier = key.by_algorithm.get(alg)
        if verifier is None:
            raise AuthError(f"alg {alg} does not match key {_shown(kid)} of {client.iss}")

        audience = (self._base_url + "/" + path.lstrip("/")).rstrip("/")
        claims = _verified_claims(token, verifier, alg, client.iss)
        _check_audience(claims["aud"], audience)
        _check_lifetime(claims, client.max_token_lifetime_s)
        if client.sub is not None and claims.get("sub") != client.sub:
            raise AuthError(
                f"sub {_shown(claims.get('sub'))} is not the client id registered for {client.iss}"
            )
        tenant = _checked_tenant(claims.get("tenant"), client.tenants, client.iss)
        self._use_once(client.iss, claims)
        log.debug("authenticated %s", client.iss)  # not the path: a wrong one can hold a patient id
        return AuthenticatedClient(iss=client.iss, tenant=tenant, fhir_servers=client.fhir_servers)

    def _near_issuer(self, iss: object) -> str:
        """A hint for the log when ``iss`` differs from a registered issuer only by case or a trailing
        slash (the spec's own example ends in one): iss is matched exactly (RFC 7519 StringOrURI), so the
        registration, not the matching, is what to change."""
        if not isinstance(iss, str):
            return ""
        folded = iss.rstrip("/").lower()
        for registered in sorted(self._keys):
            if registered.rstrip("/").lower() == folded:
                return f" (registered is {registered!r}: iss is matched exactly)"
        return ""

    def _use_once(self, iss: str, claims: dict[str, Any]) -> None:
        """Record the jti until the token could no longer pass; refuse it if it was seen before."""
        jti = claims["jti"]
        if not _is_text(jti) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise AuthError(f"jti must be a string of 1 to {MAX_JTI_CHARS} characters")
        key = hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()
        try:
            first_use = self._replay.claim(key, float(claims["exp"]) + LEEWAY_S)
        except ReplayStoreError as error:
            raise ReplayCheckUnavailable(f"cannot check jti for replay, refusing: {error}") from None
        if not first_use:
            raise AuthError(f"jti {_shown(jti)} of {iss} was already used (replay)")


def _bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise AuthError("no Authorization header")
    if len(authorization) > MAX_TOKEN_CHARS:
        raise AuthError("the Authorization header is too long")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(f"Authorization scheme {_scheme_shown(scheme, token)} is not Bearer")
    token = token.strip()
    if not _COMPACT_JWS.fullmatch(token):
        raise AuthError("the bearer token is not a signed JWT (three base64url parts)")
    return token


def _scheme_shown(scheme: str, credentials: str) -> str:
    """The scheme of a refused Authorization header for the log, when it reads as a scheme's name (Basic,
    Digest, Negotiate). A header holding a credential alone (an API key, a JWT without "Bearer ") has no
    scheme: its first word is the credential, and its first 17 characters were logged as the scheme."""
    if credentials.strip() and _SCHEME_NAME.fullmatch(scheme):
        return repr(scheme)
    return "(withheld: not a scheme's name followed by credentials)"


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification: only to pick the client and key, never trusted as such."""
    try:
        decoded = jwt.decode_complete(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise AuthError("the token is malformed") from None
    return decoded["header"], decoded["payload"]


def _verified_claims(token: str, key: jwt.PyJWK, alg: str, iss: str) -> dict[str, Any]:
    """The claims of a token whose signature verifies, with iss, exp, iat and nbf checked; aud is left to
    _check_audience, which compares URLs as URLs."""
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[alg],
            issuer=iss,
            leeway=LEEWAY_S,
            options={"require": list(REQUIRED_CLAIMS), "verify_aud": False},
        )
    except jwt.MissingRequiredClaimError as error:
        raise AuthError(f"the token lacks the required claim {error.claim!r}") from None
    except jwt.InvalidTokenError as error:
        for kind, reason in _REASONS:
            if isinstance(error, kind):
                raise AuthError(reason) from None
        raise AuthError(f"the token is invalid ({type(error).__name__})") from None


def _comparable_url(url: str, *, query: bool = False) -> tuple[str, str, str, str] | None:
    """An http(s) URL as (scheme, authority, path, query) to compare as URLs are equal (RFC 3986,
    6.2.2-6.2.3): scheme and host in lower case, the scheme's default port dropped, one trailing slash
    ignored. The path stays as written (case, percent-encoding, dot segments). None for what cannot be
    compared so: not http(s), no host, a user part, a fragment, a port that is not a number, and a query
    unless ``query`` (an endpoint's URL has none; a JWK Set's may)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if parts.fragment or "#" in url or (not query and (parts.query or "?" in url)):
        return None
    if ":" in host:  # an IPv6 literal, which hostname gives without its brackets
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    return scheme, host, path, parts.query


def _same_url(url: str, registered: str) -> bool:
    """``url`` names ``registered`` (a jku its client's jwks_url), written the same or equal as a URL."""
    if url == registered:
        return True
    comparable = _comparable_url(url, query=True)
    return comparable is not None and comparable == _comparable_url(registered, query=True)


def _check_audience(aud: object, audience: str) -> None:
    """aud (a string or a list of strings, RFC 7519 4.1.3) must name ``audience``, the URL of the endpoint
    called. The URLs are compared as URLs: ``HTTPS://CDS.example.org:443/cds-services/x/`` names
    ``https://cds.example.org/cds-services/x``, but another scheme, host, port or path does not (the
    discovery URL does not name a service, nor a service's URL its feedback endpoint)."""
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise AuthError("aud is not a string or a list of strings")
    if not any(values):
        raise AuthError("the token lacks the required claim 'aud'")
    expected = _comparable_url(audience)
    if expected is None or not any(_comparable_url(value) == expected for value in values):
        raise AuthError(f"aud does not name the endpoint called ({audience}): it is {_shown(aud, 160)}")


def _check_lifetime(claims: dict[str, Any], lifetime_s: int) -> None:
    """exp, iat (and nbf when sent) as JSON numbers; exp after iat, at most the client's lifetime after it
    and from now, each with LEEWAY_S of tolerance.

    PyJWT has already refused an expired or future-issued token, but it also takes ``"exp": "1764000000"``
    (a string) and any expiry however distant. Bounding exp from now alone let a long-lived token in
    once its end drew near: one minted for a day was refused for 23 h 54 min, then accepted."""
    for claim in ("exp", "iat", "nbf"):
        value = claims.get(claim)
        if claim == "nbf" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuthError(f"{claim} is not a number (NumericDate)")
    exp, iat = claims["exp"], claims["iat"]
    limit = f"tokens must be short-lived (this client's max_token_lifetime_s is {lifetime_s} s)"
    if exp > time.time() + lifetime_s + LEEWAY_S:
        raise AuthError(
            f"exp lies more than {lifetime_s + LEEWAY_S} seconds ahead ({lifetime_s} s and {LEEWAY_S} s of "
            f"clock skew): {limit}"
        )
    if exp <= iat:
        raise AuthError("exp is not after iat")
    if exp - iat > lifetime_s + LEEWAY_S:
        raise AuthError(
            f"exp lies {_shown(exp - iat, 24)} seconds after iat, more than {lifetime_s} s (and {LEEWAY_S} s "
            f"of tolerance): {limit}"
        )


def _checked_tenant(tenant: object, allowed: tuple[str, ...], iss: str) -> str | None:
    if allowed and tenant not in allowed:
        raise AuthError(f"tenant {_shown(tenant)} is not one listed for {iss}")
    if isinstance(tenant, str) and not _is_text(tenant):
        raise AuthError(f"tenant {_shown(tenant)} is not valid Unicode text")
    return tenant if isinstance(tenant, str) else None


def _is_text(value: object) -> bool:
    """A str that is valid Unicode text. JSON can escape a lone UTF-16 surrogate ("\\ud800"), which json
    decodes into a str that no UTF-8 encoder takes: as a jti it raised UnicodeEncodeError out of
    authenticate(), as a tenant it broke the run-ahead key later on (both 500s)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
