"""A client's JWK Set URL that misbehaves: the refusal stays a 401, bounded in time; good keys stay usable.

The URL is the client's, registered by the operator, but what it serves is not under our control: a broken
proxy, a half-deployed key rotation or a compromised host. Whatever it answers, a token must end in a
refusal or an acceptance, never in an exception out of ``authenticate`` (a 500 with a stack trace), and
a fetch must not hold the client's key lock, and with it every worker thread authenticating that client,
for as long as the server likes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.config import ConfigError
from cds_service.protocol.auth import Authenticator, AuthError
from cds_service.protocol.clients import load_clients
from tests.auth.auth_support import SIGN_PATH, JwksServer, Signer, write_clients


def bearer(token: str) -> str:
    return f"Bearer {token}"


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
