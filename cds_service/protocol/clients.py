"""The trusted CDS clients (the ``CDS_CLIENTS`` file) and the public keys they sign with.

The file is read once at start and checked strictly, so that a typo in an issuer or a private key pasted
by mistake stops the service at start instead of silently refusing (or accepting) every call later.
Keys come from the file itself (``jwks``) or from the client's published JWK Set (``jwks_url``); the
latter is fetched lazily, cached for ``KEYS_LIFETIME_S`` and refreshed on an unknown ``kid`` no more
than once per ``REFRESH_INTERVAL_S``, so a caller sending random key ids cannot make us hammer the URL.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from cds_service.config import ConfigError
from cds_service.redaction import address, without_passwords

log = logging.getLogger(__name__)

# Asymmetric signature algorithms only: never "none", never HMAC (a shared secret would let anyone
# holding the "public" key forge tokens).
EC_ALGORITHMS = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
ALLOWED_ALGORITHMS = frozenset((*EC_ALGORITHMS, *RSA_ALGORITHMS))
MIN_RSA_BITS = 2048

KEYS_LIFETIME_S = 3600.0
REFRESH_INTERVAL_S = 30.0
FETCH_TIMEOUT_S = (3.05, 5.0)
# The whole fetch (connect, headers, body): the read timeout bounds each recv only, so a server sending a
# byte every few seconds held the fetch, and with it the client's key lock, for as long as it liked.
FETCH_DEADLINE_S = 8.0
MAX_JWKS_BYTES = 256 * 1024
_READ_CHUNK_BYTES = 16 * 1024

_CLIENT_FIELDS = frozenset(
    {"iss", "sub", "jwks_url", "jwks", "tenants", "fhir_servers", "max_token_lifetime_s"}
)
# How long after its iat a client's token may expire. CDS Hooks 2.0 sets no limit; five minutes is what the
# CDS Hooks Sandbox signs and SMART Backend Services asks, and a longer-lived token widens the window in
# which a stolen one works. An EHR that signs longer-lived tokens is registered with its own limit, up to an
# hour (the replay store keeps each jti, and refuses tokens after a Redis loss, for as long).
DEFAULT_TOKEN_LIFETIME_S = 300
MAX_TOKEN_LIFETIME_S = 3600
MIN_TOKEN_LIFETIME_S = 60
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_LOOPBACK_NAMES = ("localhost",)


class UnusableKeyError(ValueError):
    """A JWK that cannot be used to verify client tokens; the message says why (never the key)."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key, ready to verify each algorithm it may be used with."""

    kid: str
    by_algorithm: Mapping[str, PyJWK]


def parse_verification_key(jwk: object) -> VerificationKey:
    """Check one public JWK and prepare it; raise UnusableKeyError for a key we must not trust.

    A key that names its ``alg`` is used with that algorithm only; an RSA key without one may verify
    any RS*/PS* algorithm, an EC key only the algorithm of its curve.
    """
    if not isinstance(jwk, dict):
        raise UnusableKeyError("a key must be a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise UnusableKeyError("a key needs a non-empty string 'kid'")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise UnusableKeyError(
            f"key {kid!r} holds private or symmetric key material; give the public key only"
        )
    if jwk.get("use", "sig") != "sig":
        raise UnusableKeyError(
            f"key {kid!r} has use={jwk.get('use')!r}; only signing keys ('sig') are accepted"
        )
    key_ops = jwk.get("key_ops")
    # A list of strings (RFC 7517, 4.3). Tested as it came, a number raised TypeError (a fetched set was
    # lost whole, and the call was a 500) and a string passed on a substring ("unverify").
    if key_ops is not None and (
        not isinstance(key_ops, list) or not all(isinstance(op, str) for op in key_ops)
    ):
        raise UnusableKeyError(f"key {kid!r} has key_ops that is not a list of strings")
    if key_ops is not None and "verify" not in key_ops:
        raise UnusableKeyError(f"key {kid!r} has key_ops without 'verify'")
    kty = jwk.get("kty")
    if kty == "EC":
        candidates = [alg for alg, crv in EC_ALGORITHMS.items() if crv == jwk.get("crv")]
    elif kty == "RSA":
        candidates = list(RSA_ALGORITHMS)
    else:
        raise UnusableKeyError(f"key {kid!r} has kty={kty!r}; only EC and RSA keys are accepted")
    declared = jwk.get("alg")
    if declared is not None:
        if declared not in candidates:
            raise UnusableKeyError(
                f"key {kid!r} declares alg={declared!r}, which is not allowed for this key"
            )
        candidates = [declared]
    if not candidates:
        raise UnusableKeyError(f"key {kid!r} is on an unsupported curve {jwk.get('crv')!r}")
    try:
        by_algorithm = {alg: PyJWK(jwk, algorithm=alg) for alg in candidates}
    except (PyJWTError, ValueError, TypeError) as error:
        raise UnusableKeyError(
            f"key {kid!r} is not a valid {kty} public key ({type(error).__name__})"
        ) from None
    if kty == "RSA":
        bits = next(iter(by_algorithm.values())).key.key_size
        if bits < MIN_RSA_BITS:
            raise UnusableKeyError(
                f"key {kid!r} is a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are required"
            )
    return VerificationKey(kid=kid, by_algorithm=by_algorithm)


def parse_key_set(jwks: object, *, where: str) -> dict[str, VerificationKey]:
    """Strictly parse an inline JWK Set from the configuration: any bad key is a configuration error."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ConfigError(f"{where}: 'jwks' must be a JWK Set object with a non-empty 'keys' list")
    keys: dict[str, VerificationKey] = {}
    for jwk in jwks["keys"]:
        try:
            key = parse_verification_key(jwk)
        except UnusableKeyError as error:
            raise ConfigError(f"{where}: {error}") from None
        if key.kid in keys:
            raise ConfigError(f"{where}: two keys share kid {key.kid!r}")
        keys[key.kid] = key
    return keys


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: object, *, where: str, what: str, allow_http: bool) -> str:
    """The URL, stripped; a ConfigError that quotes it with any password starred otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{what}' must be a non-empty URL string")
    shown = without_passwords(repr(value), value)
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # an unclosed '[' of an IPv6 address
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: '{what}'={shown} is not an absolute http(s) URL")
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"{where}: '{what}'={shown} uses plain http; keys must be fetched over https "
            "(http is accepted for loopback addresses only)"
        )
    return value.strip()


@dataclass(frozen=True)
class ClientConfig:
    """One trusted client, as written in the ``CDS_CLIENTS`` file."""

    iss: str
    jwks_url: str | None
    inline_keys: Mapping[str, VerificationKey]
    tenants: tuple[str, ...]
    fhir_servers: tuple[str, ...]
    # The client id its tokens carry as sub, when registered (CDS Hooks 1.0 asked services to allow-list
    # iss, jku and sub; 2.0 leaves sub out of the claims, so it is only checked when given).
    sub: str | None = None
    max_token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S


def _parse_client(entry: object, index: int, source: str) -> ClientConfig:
    where = f"{source}: clients[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each client must be a JSON object")
    unknown = sorted(set(entry) - _CLIENT_FIELDS)
    if unknown:
        known = ", ".join(sorted(_CLIENT_FIELDS))
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known fields are {known}")
    iss = entry.get("iss")
    if not isinstance(iss, str) or not iss.strip():
        raise ConfigError(f"{where}: 'iss' (the issuer the client puts in its tokens) is required")
    where = f"{source}: client {iss!r}"
    sub = entry.get("sub")
    if sub is not None and (not isinstance(sub, str) or not sub.strip()):
        raise ConfigError(f"{where}: 'sub' (the client id its tokens carry) must be a non-empty string")
    lifetime = entry.get("max_token_lifetime_s", DEFAULT_TOKEN_LIFETIME_S)
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int)
        or not MIN_TOKEN_LIFETIME_S <= lifetime <= MAX_TOKEN_LIFETIME_S
    ):
        raise ConfigError(
            f"{where}: 'max_token_lifetime_s' (how long after iat its tokens may expire) must be a whole "
            f"number of seconds from {MIN_TOKEN_LIFETIME_S} to {MAX_TOKEN_LIFETIME_S}"
        )
    if "jwks_url" not in entry and "jwks" not in entry:
        raise ConfigError(f"{where}: give 'jwks_url' (its published JWK Set) and/or 'jwks' (its keys inline)")
    jwks_url = None
    if "jwks_url" in entry:
        jwks_url = _check_url(entry["jwks_url"], where=where, what="jwks_url", allow_http=False)
    inline_keys = parse_key_set(entry["jwks"], where=where) if "jwks" in entry else {}
    tenants = entry.get("tenants", [])
    if not isinstance(tenants, list) or not all(isinstance(t, str) and t for t in tenants):
        raise ConfigError(f"{where}: 'tenants' must be a list of non-empty strings")
    servers = entry.get("fhir_servers", [])
    if not isinstance(servers, list):
        raise ConfigError(f"{where}: 'fhir_servers' must be a list of base URLs")
    fhir_servers = tuple(
        _check_url(url, where=where, what="fhir_servers", allow_http=True).rstrip("/") for url in servers
    )
    return ClientConfig(
        iss=iss,
        jwks_url=jwks_url,
        inline_keys=inline_keys,
        tenants=tuple(tenants),
        fhir_servers=fhir_servers,
        sub=sub,
        max_token_lifetime_s=lifetime,
    )


def load_clients(path: Path) -> dict[str, ClientConfig]:
    """Read the ``CDS_CLIENTS`` file; raise ConfigError naming the file and the first problem."""
    source = f"CDS_CLIENTS={str(path)!r}"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: cannot be read ({type(error).__name__})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: not valid JSON (line {error.lineno}, column {error.colno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("clients"), list):
        raise ConfigError(f'{source}: expected {{"clients": [...]}}')
    clients: dict[str, ClientConfig] = {}
    for index, entry in enumerate(document["clients"]):
        client = _parse_client(entry, index, source)
        if client.iss in clients:
            raise ConfigError(f"{source}: issuer {client.iss!r} is listed twice")
        clients[client.iss] = client
    if not clients:
        raise ConfigError(f"{source}: the 'clients' list is empty, so no caller could ever be accepted")
    return clients


@dataclass
class _Fetched:
    keys: dict[str, VerificationKey] = field(default_factory=dict)
    fetched_at: float | None = None
    attempted_at: float | None = None
    failed: bool = False  # the last attempt failed (the keys, if any, are from an earlier one)


class ClientKeys:
    """The keys of one client: inline ones, plus its JWK Set from ``jwks_url`` cached with a lifetime.

    Thread-safe: concurrent requests that need a fetch wait for one fetch rather than each making one.
    """

    def __init__(
        self,
        client: ClientConfig,
        http: requests.Session,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched = _Fetched()
        self._downloader: threading.Thread | None = None

    def find(self, kid: str) -> VerificationKey | None:
        """The key with this id; fetches the JWK Set when it is stale or does not know the id yet."""
        key = self.client.inline_keys.get(kid)
        url = self.client.jwks_url
        if key is not None or url is None:
            return key
        state = self._fetched
        if kid in state.keys and not self._is_stale(state):
            return state.keys[kid]
        with self._lock:
            now = self._clock()
            state = self._fetched
            stale = self._is_stale(state)
            unknown = kid not in state.keys
            may_fetch = state.attempted_at is None or now - state.attempted_at >= REFRESH_INTERVAL_S
            if (stale or unknown) and may_fetch:
                self._refresh(url, now)
            return self._fetched.keys.get(kid)

    def why_unknown(self) -> str:
        """For the log, after ``find`` returned None: where this client's keys come from and when they
        were last fetched, so that a key rotation not picked up yet reads as such."""
        url = self.client.jwks_url
        if url is None:
            return "its keys are given inline only: add the new key to the clients file"
        url = address(url)
        state, now = self._fetched, self._clock()
        if state.fetched_at is None:
            return f"its JWK Set could not be fetched from {url} (see the warning logged then)"
        ago = f"its JWK Set from {url} was fetched {now - state.fetched_at:.0f} s ago"
        if state.failed:
            ago += " and the last attempt failed (see the warning logged then)"
        return (
            f"{ago}; it is fetched again for an unknown kid at most every {REFRESH_INTERVAL_S:g} s, so a "
            "new key works once published there"
        )

    def _is_stale(self, state: _Fetched) -> bool:
        return state.fetched_at is None or self._clock() - state.fetched_at >= KEYS_LIFETIME_S

    def _refresh(self, url: str, now: float) -> None:
        self._fetched.attempted_at = now
        try:
            document = self._download_within_deadline(url)
        except (requests.RequestException, ValueError) as error:
            self._fetched.failed = True
            log.warning(
                "could not fetch the JWK Set of %s from %s (%s); keeping %d cached key(s)",
                self.client.iss,
                address(url),
                without_passwords(str(error), url),
                len(self._fetched.keys),
            )
            return
        keys: dict[str, VerificationKey] = {}
        for jwk in document.get("keys", []):
            try:
                key = parse_verification_key(jwk)
            except UnusableKeyError as error:
                log.warning("ignoring a key in the JWK Set of %s: %s", self.client.iss, error)
                continue
            earlier = keys.get(key.kid)
            if earlier is not None:
                # RFC 7517 and CDS Hooks want a kid unique in the set, but a set may list one key once
                # per alg under the same kid: each algorithm verifies with the first key offering it.
                log.warning("the JWK Set of %s lists kid %r more than once", self.client.iss, key.kid)
                key = VerificationKey(kid=key.kid, by_algorithm={**key.by_algorithm, **earlier.by_algorithm})
            keys[key.kid] = key
        self._fetched = _Fetched(keys=keys, fetched_at=now, attempted_at=now)
        log.info("fetched %d key(s) for %s from %s", len(keys), self.client.iss, address(url))

    def _download_within_deadline(self, url: str) -> dict[str, Any]:
        """``_download`` on a helper thread, given up after FETCH_DEADLINE_S so that the lock (and every
        call of this client waiting on it) is released in time whatever the server does.

        A helper given up on stops at its next chunk of body; one stuck in the headers stays until the
        server lets go. So at most one helper per client may exist: while it does, a refresh fails at
        once instead of starting another."""
        previous = self._downloader
        if previous is not None and previous.is_alive():
            raise ValueError("an earlier fetch is still waiting for the server")
        stop = threading.Event()
        outcome: list[dict[str, Any] | BaseException] = []

        def run() -> None:
            try:
                outcome.append(self._download(url, stop))
            except BaseException as error:  # handed to the waiting thread, which raises it
                outcome.append(error)

        helper = threading.Thread(target=run, name="jwks-fetch", daemon=True)
        self._downloader = helper
        helper.start()
        helper.join(FETCH_DEADLINE_S)
        if helper.is_alive():
            stop.set()
            raise ValueError(f"no complete answer within {FETCH_DEADLINE_S:g} s")
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _download(self, url: str, stop: threading.Event) -> dict[str, Any]:
        with self._http.get(
            url,
            timeout=FETCH_TIMEOUT_S,
            allow_redirects=False,
            stream=True,
            headers={"Accept": "application/json"},
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = _read_limited(response.raw, stop)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("JWK Set too large")
        # orjson refuses nesting deeper than 1024 levels with a ValueError; json.loads raised RecursionError
        # (200 KB of '[' fits the size limit), which went out of authenticate() as a 500.
        document = orjson.loads(body)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK Set")
        return document


def _read_limited(raw: Any, stop: threading.Event) -> bytes:
    """Up to MAX_JWKS_BYTES + 1 bytes of body (decoded), in chunks as they arrive, until ``stop`` is set.

    ``read1`` returns what has arrived; ``read(n)`` waits for all n bytes, which a dripping server made
    last for ever."""
    read = getattr(raw, "read1", raw.read)
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_JWKS_BYTES:
        if stop.is_set():
            raise ValueError("given up")
        chunk = read(min(_READ_CHUNK_BYTES, MAX_JWKS_BYTES + 1 - size), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
