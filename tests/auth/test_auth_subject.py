"""sub: checked against the client id a client registers as its 'sub', and only then."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.config import ConfigError
from cds_service.protocol.auth import Authenticator, AuthError
from tests.auth.auth_support import SIGN_PATH, Signer, auth_settings, write_clients

CLIENT_ID = "b12-iron-cds-at-north-hospital"


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture
def with_sub(make_authenticator, ec_signer: Signer) -> Authenticator:
    return make_authenticator(
        [{"iss": ec_signer.iss, "sub": CLIENT_ID, "jwks": {"keys": [ec_signer.public_jwk()]}}]
    )


def test_the_registered_sub_passes(with_sub: Authenticator, ec_signer: Signer) -> None:
    assert with_sub.authenticate(bearer(ec_signer.token(sub=CLIENT_ID)), SIGN_PATH).iss == ec_signer.iss


@pytest.mark.parametrize("sub", ["someone-else", CLIENT_ID.upper(), CLIENT_ID + " ", None])
def test_another_or_no_sub_is_refused(with_sub: Authenticator, ec_signer: Signer, sub: str | None) -> None:
    with pytest.raises(AuthError, match="is not the client id registered for"):
        with_sub.authenticate(bearer(ec_signer.token(sub=sub)), SIGN_PATH)


def test_a_refused_sub_does_not_burn_the_jti(with_sub: Authenticator, ec_signer: Signer) -> None:
    with pytest.raises(AuthError):
        with_sub.authenticate(bearer(ec_signer.token(sub="someone-else", jti="kept")), SIGN_PATH)
    assert with_sub.authenticate(bearer(ec_signer.token(sub=CLIENT_ID, jti="kept")), SIGN_PATH)


def test_without_a_registered_sub_any_string_sub_passes(
    authenticator: Authenticator, ec_signer: Signer
) -> None:
    """CDS Hooks 2.0 does not list sub; the Sandbox sends its SMART client id, other clients none."""
    for sub in ("48163c5e-88b5-4cb3-92d3-23b800caa927", None):
        assert authenticator.authenticate(bearer(ec_signer.token(sub=sub)), SIGN_PATH).iss == ec_signer.iss


@pytest.mark.parametrize("sub", [42, ["a"], {"id": "a"}])
def test_a_sub_that_is_not_a_string_is_refused(authenticator: Authenticator, ec_signer: Signer, sub) -> None:
    with pytest.raises(AuthError, match="sub is not a string"):
        authenticator.authenticate(bearer(ec_signer.token(sub=sub)), SIGN_PATH)


@pytest.mark.parametrize("sub", ["", "  ", 42, ["a"]])
def test_a_registered_sub_must_be_a_non_empty_string(tmp_path: Path, ec_signer: Signer, sub: object) -> None:
    path = write_clients(
        tmp_path, [{"iss": ec_signer.iss, "sub": sub, "jwks": {"keys": [ec_signer.public_jwk()]}}]
    )
    with pytest.raises(ConfigError, match=r"'sub' .* must be a non-empty string"):
        Authenticator.trusted_clients(auth_settings(tmp_path, path))
