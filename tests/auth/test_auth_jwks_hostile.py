"""A client's JWK Set URL that misbehaves: the refusal stays a 401, bounded in time; good keys stay usable.

The URL is the client's, registered by the operator, but what it serves is not under our control: a broken
proxy, a half-deployed key rotation or a compromised host. Whatever it answers, a token must end in a
refusal or an acceptance, never in an exception out of ``authenticate`` (a 500 with a stack trace), and
a fetch must not hold the client's key lock, and with it every worker thread authenticating that client,
for as long as the server likes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cds_service.config import ConfigError
from cds_service.protocol import clients as clients_module
from cds_service.protocol.auth import Authenticator, AuthError
from cds_service.protocol.clients import load_clients
from tests.auth.auth_support import SIGN_PATH, JwksServer, Signer, write_clients
from tests.support.dripping_server import dripping_server


def bearer(token: str) -> str:
    return f"Bearer {token}"


def outcome_within(seconds: float, call) -> tuple[float, object]:
    """Run ``call`` in a thread; (how long it took, its result or exception). Fails if it is still
    running after ``seconds`` (the thread is left behind, a daemon)."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as error:  # reported to the test, whatever it is
            box.append(error)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return time.monotonic() - started, box[0]


def test_a_fetched_key_with_malformed_key_ops_is_skipped_and_the_others_work(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer, ec_signer: Signer
) -> None:
    """``"verify" in key_ops`` raised TypeError for a number: the whole refresh died, the good keys
    beside it were never loaded, and the call was a 500."""
    odd = ec_signer.public_jwk() | {"kid": "odd", "key_ops": 5}
    jwks_server.documents["/jwks.json"] = {"keys": [odd, rsa_signer.public_jwk()]}
    authenticator: Authenticator = make_authenticator(
        [{"iss": rsa_signer.iss, "jwks_url": jwks_server.url("/jwks.json")}]
    )
    assert authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH).iss == rsa_signer.iss
    with pytest.raises(AuthError, match="'odd' is not a known key"):
        authenticator.authenticate(bearer(rsa_signer.token(headers={"kid": "odd"})), SIGN_PATH)


@pytest.mark.parametrize("key_ops", [5, "verify", {"verify": 1}, [["verify"]], ["sign"]])
def test_an_inline_key_with_malformed_key_ops_is_a_configuration_error(
    tmp_path: Path, ec_signer: Signer, key_ops: object
) -> None:
    """A number raised TypeError at start; a string passed (``"verify" in "unverify"`` is a substring
    test). key_ops is a list of strings (RFC 7517, 4.3)."""
    jwk = ec_signer.public_jwk() | {"key_ops": key_ops}
    path = write_clients(tmp_path, [{"iss": ec_signer.iss, "jwks": {"keys": [jwk]}}])
    with pytest.raises(ConfigError, match="key_ops"):
        load_clients(path)


def test_an_inline_key_whose_key_ops_list_verify_is_accepted(tmp_path: Path, ec_signer: Signer) -> None:
    jwk = ec_signer.public_jwk() | {"key_ops": ["verify"]}
    path = write_clients(tmp_path, [{"iss": ec_signer.iss, "jwks": {"keys": [jwk]}}])
    assert set(load_clients(path)[ec_signer.iss].inline_keys) == {ec_signer.kid}


def test_a_deeply_nested_jwks_document_is_a_refusal_not_a_crash(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    """200 KB of '[' is within the size limit and made json.loads raise RecursionError, which is not a
    ValueError: it left ``authenticate`` as a 500."""
    jwks_server.raw["/jwks.json"] = b"[" * 200_000
    authenticator: Authenticator = make_authenticator(
        [{"iss": rsa_signer.iss, "jwks_url": jwks_server.url("/jwks.json")}]
    )
    with pytest.raises(AuthError, match="is not a known key"):
        authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH)


HEADERS_DRIP = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400
BODY_DRIP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


@pytest.mark.parametrize("prefix", [HEADERS_DRIP, BODY_DRIP], ids=["headers", "body"])
def test_a_dripping_jwks_url_is_given_up_at_the_fetch_deadline(
    make_authenticator, rsa_signer: Signer, monkeypatch: pytest.MonkeyPatch, prefix: bytes
) -> None:
    """The read timeout bounds each recv, not the answer: a server sending a byte now and then held the
    fetch, and the client's key lock with it, for a minute here (for ever in general), and every call of
    that client waited behind it."""
    monkeypatch.setattr(clients_module, "FETCH_DEADLINE_S", 0.5)
    with dripping_server(prefix) as (server, _):
        url = f"{server}/jwks.json"
        authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
        took, outcome = outcome_within(
            10, lambda: authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH)
        )
        assert isinstance(outcome, AuthError) and "is not a known key" in str(outcome), outcome
        assert took < 1.5
        # The lock is free again: the next call (rate-limited, so no fetch) is refused at once.
        took, outcome = outcome_within(
            10, lambda: authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH)
        )
        assert isinstance(outcome, AuthError) and took < 0.5
