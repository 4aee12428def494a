"""Claims holding a lone UTF-16 surrogate ("\\ud800" in the token's JSON): a refusal, never a 500.

JSON may escape a lone surrogate and Python's json decodes it into a str that cannot be encoded as UTF-8.
Such a jti made the replay key's ``encode()`` raise UnicodeEncodeError inside ``authenticate``; such a
tenant (from a client without a tenant list) was accepted and broke the run-ahead key (orjson refuses
it) in every order hook. Either was a 500 with a stack trace for a signed token. No identifier a client
means to send holds one.
"""

from __future__ import annotations

import pytest
from flask import Flask

from cds_service.protocol.auth import Authenticator, AuthError
from tests.auth.auth_support import SIGN_PATH, Signer
from tests.auth.test_http_auth import call, make_app

__all__ = ["make_app"]

LONE_SURROGATE = "id-\ud800"


def test_a_jti_with_a_lone_surrogate_is_refused(authenticator: Authenticator, ec_signer: Signer) -> None:
    with pytest.raises(AuthError, match="jti must be"):
        authenticator.authenticate(f"Bearer {ec_signer.token(jti=LONE_SURROGATE)}", SIGN_PATH)


def test_a_tenant_with_a_lone_surrogate_is_refused(authenticator: Authenticator, ec_signer: Signer) -> None:
    with pytest.raises(AuthError, match="tenant"):
        authenticator.authenticate(f"Bearer {ec_signer.token(tenant=LONE_SURROGATE)}", SIGN_PATH)


@pytest.mark.parametrize("claim", ["jti", "tenant"])
def test_over_http_such_a_claim_is_a_bare_401(make_app, ec_signer: Signer, claim: str) -> None:
    app: Flask = make_app([{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}}])
    token = ec_signer.token(SIGN_PATH, **{claim: LONE_SURROGATE})
    response = call(app.test_client(), SIGN_PATH, f"Bearer {token}")
    assert response.status_code == 401
    assert response.data == b""
