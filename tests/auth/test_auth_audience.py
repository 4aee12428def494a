"""aud against the endpoint called: URLs compared as URLs (RFC 3986), never loosely enough that a token
made for another endpoint, host, port or scheme passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.config import ConfigError
from cds_service.protocol.auth import Authenticator, AuthError
from tests.auth.auth_support import BASE_URL, SIGN_PATH, VIEW_PATH, Signer, auth_settings, write_clients


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refused(authenticator: Authenticator, token: str, path: str = SIGN_PATH) -> str:
    with pytest.raises(AuthError) as caught:
        authenticator.authenticate(bearer(token), path)
    return str(caught.value)


@pytest.fixture
def es_client(ec_signer: Signer) -> list[dict]:
    return [{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}}]


@pytest.mark.parametrize(
    "aud",
    [
        "HTTPS://CDS.EXAMPLE.TEST" + SIGN_PATH,
        "https://Cds.Example.Test" + SIGN_PATH + "/",
        "https://cds.example.test:443" + SIGN_PATH,
        ["https://elsewhere.example", "https://cds.example.test:443" + SIGN_PATH],
    ],
)
def test_an_aud_equal_as_a_url_passes(authenticator: Authenticator, ec_signer: Signer, aud: object) -> None:
    """Scheme and host are case-insensitive and :443 is https's own port (RFC 3986, 6.2.2-6.2.3): an EHR
    whose administrator typed the URL so, or whose library writes the port, names this endpoint."""
    assert authenticator.authenticate(bearer(ec_signer.token(aud=aud)), SIGN_PATH).iss == ec_signer.iss


@pytest.mark.parametrize(
    "aud",
    [
        "http://cds.example.test" + SIGN_PATH,  # another scheme
        "https://cds.example.test:8443" + SIGN_PATH,  # another port
        "https://cds.example.test:80" + SIGN_PATH,  # http's port on https
        "https://cds.example.test.evil.example" + SIGN_PATH,  # a longer host
        "https://someone@cds.example.test" + SIGN_PATH,  # a user part
        "https://cds.example.test" + SIGN_PATH + "?x=1",
        "https://cds.example.test" + SIGN_PATH + "#x",
        "https://cds.example.test" + SIGN_PATH.upper(),  # the path is case-sensitive
        "https://cds.example.test" + SIGN_PATH + "//",
        "https://cds.example.test" + SIGN_PATH + "/feedback",
        "https://cds.example.test/cds-services/x/../" + SIGN_PATH.rsplit("/", 1)[1],
        "https://cds.example.test:notaport" + SIGN_PATH,
        "cds.example.test" + SIGN_PATH,
        SIGN_PATH,
        "https://cds.example.test/cds-services",  # discovery does not name a service
        "https://cds.example.test",
    ],
)
def test_an_aud_for_anything_else_is_refused(
    authenticator: Authenticator, ec_signer: Signer, aud: str
) -> None:
    assert "aud does not name the endpoint called" in refused(authenticator, ec_signer.token(aud=aud))


def test_a_services_token_does_not_open_its_feedback_endpoint(
    authenticator: Authenticator, ec_signer: Signer
) -> None:
    reason = refused(authenticator, ec_signer.token(), SIGN_PATH + "/feedback")
    assert "aud does not name the endpoint called" in reason
    feedback = ec_signer.token(aud=BASE_URL + SIGN_PATH + "/feedback")
    assert authenticator.authenticate(bearer(feedback), SIGN_PATH + "/feedback").iss == ec_signer.iss


@pytest.mark.parametrize("aud", [42, ["https://cds.example.test" + SIGN_PATH, 42], {"url": BASE_URL}])
def test_an_aud_that_is_not_strings_is_refused(authenticator: Authenticator, ec_signer: Signer, aud) -> None:
    assert "aud is not a string or a list of strings" in refused(authenticator, ec_signer.token(aud=aud))


@pytest.mark.parametrize("aud", ["", [], [""]])
def test_an_empty_aud_is_a_missing_aud(authenticator: Authenticator, ec_signer: Signer, aud) -> None:
    assert "lacks the required claim 'aud'" in refused(authenticator, ec_signer.token(aud=aud))


def test_the_refusal_says_what_aud_was_sent(authenticator: Authenticator, ec_signer: Signer) -> None:
    """The usual cause is a CDS_PUBLIC_BASE_URL that is not the URL the EHR was given: the log line shows
    both, so the operator sees which differs."""
    reason = refused(authenticator, ec_signer.token(aud="https://cds.internal:8080" + SIGN_PATH))
    assert f"({BASE_URL}{SIGN_PATH})" in reason
    assert "https://cds.internal:8080" + SIGN_PATH in reason


@pytest.mark.parametrize(
    "base",
    ["https://Proxy.Example.Test:443/cds-prefix", "https://proxy.example.test/cds-prefix/"],
)
def test_a_base_url_with_a_path_prefix_behind_a_proxy(
    tmp_path: Path, ec_signer: Signer, es_client: list[dict], base: str
) -> None:
    """The proxy strips /cds-prefix, so the service sees /cds-services/...; the EHR signs the public URL."""
    settings = auth_settings(tmp_path, write_clients(tmp_path, es_client), public_base_url=base)
    authenticator = Authenticator(settings)
    public = "https://proxy.example.test/cds-prefix" + VIEW_PATH
    assert authenticator.authenticate(bearer(ec_signer.token(VIEW_PATH, aud=public)), VIEW_PATH)
    unprefixed = ec_signer.token(VIEW_PATH, aud="https://proxy.example.test" + VIEW_PATH)
    assert "aud does not name the endpoint called" in refused(authenticator, unprefixed, VIEW_PATH)


@pytest.mark.parametrize(
    "base", ["https://cds.example.test?tenant=a", "ftp://cds.example.test", "https://cds.example.test:x"]
)
def test_a_base_url_no_aud_could_equal_stops_the_start(
    tmp_path: Path, es_client: list[dict], base: str
) -> None:
    settings = auth_settings(tmp_path, write_clients(tmp_path, es_client), public_base_url=base)
    with pytest.raises(ConfigError, match=r"CDS_PUBLIC_BASE_URL=.* cannot be compared with a token's aud"):
        Authenticator.trusted_clients(settings)


def test_serve_on_an_ipv6_host_without_a_public_base_url_says_to_set_it(
    tmp_path: Path, es_client: list[dict]
) -> None:
    """serve's default base URL is http://{host}:{port}: with --host :: it is no URL at all."""
    settings = auth_settings(tmp_path, write_clients(tmp_path, es_client), public_base_url=None)
    settings = settings.with_overrides(public_base_url=settings.base_url_for("::", 8080))
    with pytest.raises(ConfigError, match="set it to the URL clients call"):
        Authenticator.trusted_clients(settings)
