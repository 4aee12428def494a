"""exp, iat and nbf: numbers, coherent, and a lifetime counted from iat of at most five minutes, or of what
the client is registered with (max_token_lifetime_s)."""

from __future__ import annotations

import time

import pytest

from cds_service.protocol.auth import Authenticator, AuthError
from tests.auth.auth_support import SIGN_PATH, Signer


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refused(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        authenticator.authenticate(bearer(token), SIGN_PATH)
    return str(caught.value)


@pytest.mark.parametrize("age", [600, 3000, 86_400 - 200])
def test_a_long_lived_token_is_refused_near_its_end_too(
    authenticator: Authenticator, ec_signer: Signer, age: int
) -> None:
    """Minted to last longer than five minutes, replayed in its last ones: exp is near, iat far back."""
    now = int(time.time())
    reason = refused(authenticator, ec_signer.token(iat=now - age, exp=now + 200))
    assert f"exp lies {age + 200} seconds after iat, more than 300 s" in reason


def test_the_sandboxs_rounding_is_tolerated(authenticator: Authenticator, ec_signer: Signer) -> None:
    """The Sandbox rounds iat and exp from two clock readings: exp - iat may come out 301."""
    now = int(time.time())
    token = ec_signer.token(iat=now - 1, exp=now + 300)
    assert authenticator.authenticate(bearer(token), SIGN_PATH).iss == ec_signer.iss


@pytest.mark.parametrize("lifetime", [0, -30])
def test_exp_not_after_iat_is_refused(authenticator: Authenticator, ec_signer: Signer, lifetime: int) -> None:
    now = int(time.time())
    assert "exp is not after iat" in refused(authenticator, ec_signer.token(iat=now, exp=now + lifetime))


def test_nbf_given_as_a_string_is_refused(authenticator: Authenticator, ec_signer: Signer) -> None:
    """PyJWT converts a numeric string with int(), as it does for exp and iat."""
    token = ec_signer.token(nbf=str(int(time.time()) - 10))
    assert "nbf is not a number" in refused(authenticator, token)


def test_a_past_nbf_passes(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(nbf=int(time.time()) - 10)
    assert authenticator.authenticate(bearer(token), SIGN_PATH).iss == ec_signer.iss


def test_a_client_registered_with_a_longer_lifetime_may_use_it_and_no_more(
    make_authenticator, ec_signer: Signer, rsa_signer: Signer
) -> None:
    """CDS Hooks 2.0 sets no limit on exp: an EHR that signs 15-minute tokens is registered with
    max_token_lifetime_s 900. Its tokens pass up to that; the other client keeps five minutes."""
    authenticator = make_authenticator(
        [
            {"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}},
            {"iss": rsa_signer.iss, "jwks": {"keys": [rsa_signer.public_jwk()]}, "max_token_lifetime_s": 900},
        ]
    )
    now = int(time.time())
    fifteen_minutes = rsa_signer.token(iat=now, exp=now + 900, nbf=now - 300)
    assert authenticator.authenticate(bearer(fifteen_minutes), SIGN_PATH).iss == rsa_signer.iss
    too_long = refused(authenticator, rsa_signer.token(iat=now, exp=now + 1000))
    assert "exp lies more than 960 seconds ahead" in too_long
    assert "this client's max_token_lifetime_s is 900 s" in too_long
    other = refused(authenticator, ec_signer.token(iat=now, exp=now + 900))
    assert "exp lies more than 360 seconds ahead" in other
