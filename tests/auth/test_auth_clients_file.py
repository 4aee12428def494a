"""The CDS_CLIENTS file: clear start-up errors for bad files, and the CDS Hooks Sandbox example."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from jwt.algorithms import ECAlgorithm

from cds_service.config import ConfigError, Settings
from cds_service.protocol.auth import Authenticator, AuthError
from cds_service.protocol.clients import load_clients
from tests.auth.auth_support import (
    BASE_URL,
    SIGN_PATH,
    Signer,
    auth_settings,
    ec_p384_key,
    rsa_key,
    write_clients,
)

REPO = Path(__file__).resolve().parents[2]
SANDBOX_FILE = REPO / "examples" / "clients.sandbox.json"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_JWKS_URL = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


class NoNetwork(requests.Session):
    """Behaves like a machine without internet, and remembers what was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.requested: list[str] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.requested.append(url)
        raise requests.ConnectionError(f"no route to {url}")


def config_error(tmp_path: Path, document: Any) -> str:
    path = tmp_path / "clients.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Authenticator(auth_settings(tmp_path, path))
    return str(caught.value)


def test_missing_clients_file_setting(tmp_path: Path) -> None:
    settings = Settings(auth="required", public_base_url=BASE_URL, state_db=str(tmp_path / "s.sqlite3"))
    with pytest.raises(ConfigError, match="CDS_AUTH=required needs CDS_CLIENTS"):
        Authenticator(settings)


def test_missing_public_base_url(tmp_path: Path, ec_signer: Signer) -> None:
    path = write_clients(tmp_path, [{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}}])
    with pytest.raises(ConfigError, match="CDS_PUBLIC_BASE_URL is needed"):
        Authenticator(auth_settings(tmp_path, path, public_base_url=None))


def test_clients_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        Authenticator(auth_settings(tmp_path, tmp_path / "absent.json"))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", r"not valid JSON \(line 1, column 2\)"),
        ([], r'expected \{"clients": \[...\]\}'),
        ({"clients": {}}, r'expected \{"clients": \[...\]\}'),
        ({"clients": []}, "the 'clients' list is empty"),
        ({"clients": ["https://ehr.example.org"]}, r"clients\[0\]: each client must be a JSON object"),
        ({"clients": [{"jwks_url": "https://ehr.example.org/jwks"}]}, r"clients\[0\]: 'iss' .* is required"),
        ({"clients": [{"iss": "https://ehr.example.org"}]}, "give 'jwks_url' .* and/or 'jwks'"),
        (
            {"clients": [{"iss": "https://ehr.example.org", "jwks_url": "https://e/j", "tenant": ["x"]}]},
            "unknown field.* tenant; known fields are",
        ),
        ({"clients": [{"iss": "a", "jwks_url": "ftp://ehr.example.org/j"}]}, "not an absolute http"),
        ({"clients": [{"iss": "a", "jwks_url": "http://ehr.example.org/j"}]}, "uses plain http"),
        ({"clients": [{"iss": "a", "jwks": {"keys": []}}]}, "non-empty 'keys' list"),
        ({"clients": [{"iss": "a", "jwks": {"keys": [{"kty": "EC"}]}}]}, "non-empty string 'kid'"),
        (
            {"clients": [{"iss": "a", "jwks": {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}}]},
            "symmetric",
        ),
        ({"clients": [{"iss": "a", "jwks": {"keys": [{"kty": "OKP", "kid": "k"}]}}]}, "only EC and RSA"),
        (
            {"clients": [{"iss": "a", "jwks": {"keys": [{"kty": "EC", "kid": "k", "crv": "P-384"}]}}]},
            "not a valid EC",
        ),
        ({"clients": [{"iss": "a", "jwks_url": "https://e/j", "tenants": "t1"}]}, "'tenants' must be a list"),
        (
            {"clients": [{"iss": "a", "jwks_url": "https://e/j", "fhir_servers": "x"}]},
            "'fhir_servers' must be a list",
        ),
        (
            {"clients": [{"iss": "a", "jwks_url": "https://e/j", "fhir_servers": ["fhir"]}]},
            "not an absolute http",
        ),
        *(
            (
                {"clients": [{"iss": "a", "jwks_url": "https://e/j", "max_token_lifetime_s": lifetime}]},
                "'max_token_lifetime_s' .* from 60 to 3600",
            )
            for lifetime in (True, "900", 900.5, 59, 3601, -300)
        ),
    ],
)
def test_malformed_clients_file(tmp_path: Path, document: Any, message: str) -> None:
    text = config_error(tmp_path, document)
    assert re.search(message, text), text
    assert "CDS_CLIENTS=" in text


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://keys:pa55-word@ehr.example.org/j", "not an absolute http"),
        ("http://keys:pa55-word@ehr.example.org/j", "uses plain http"),
        ("https://keys:pa55-word@[::1/j", "not an absolute http"),
    ],
)
def test_a_refused_jwks_url_is_quoted_without_its_password(tmp_path: Path, url: str, message: str) -> None:
    """The message goes to the start-up log; an unclosed IPv6 bracket was a ValueError out of the loader."""
    text = config_error(tmp_path, {"clients": [{"iss": "a", "jwks_url": url}]})
    assert message in text and "keys:***@" in text
    assert "pa55-word" not in text


def test_private_key_pasted_by_mistake(tmp_path: Path) -> None:
    private = ECAlgorithm.to_jwk(ec_p384_key(), as_dict=True) | {"kid": "oops"}
    text = config_error(tmp_path, {"clients": [{"iss": "a", "jwks": {"keys": [private]}}]})
    assert "private or symmetric key material" in text
    assert private["d"] not in text


def test_duplicate_issuer_and_kid(tmp_path: Path, ec_signer: Signer) -> None:
    jwk = ec_signer.public_jwk()
    entry = {"iss": "a", "jwks": {"keys": [jwk]}}
    assert "listed twice" in config_error(tmp_path, {"clients": [entry, entry]})
    assert "two keys share kid" in config_error(
        tmp_path, {"clients": [{"iss": "a", "jwks": {"keys": [jwk, jwk]}}]}
    )


def test_key_whose_alg_does_not_fit(tmp_path: Path, ec_signer: Signer) -> None:
    for alg in ("HS256", "RS384", "ES256", "none"):
        jwk = ec_signer.public_jwk() | {"alg": alg}
        assert "not allowed for this key" in config_error(
            tmp_path, {"clients": [{"iss": "a", "jwks": {"keys": [jwk]}}]}
        )


def test_encryption_key_refused(tmp_path: Path, ec_signer: Signer) -> None:
    jwk = ec_signer.public_jwk() | {"use": "enc"}
    assert "only signing keys" in config_error(tmp_path, {"clients": [{"iss": "a", "jwks": {"keys": [jwk]}}]})


def test_short_rsa_key_refused(tmp_path: Path) -> None:
    weak = Signer(iss="a", kid="weak", alg="RS256", private_key=rsa_key(1024))
    text = config_error(tmp_path, {"clients": [{"iss": "a", "jwks": {"keys": [weak.public_jwk()]}}]})
    assert "1024-bit RSA key" in text


def test_loopback_http_jwks_url_is_allowed(tmp_path: Path) -> None:
    path = write_clients(tmp_path, [{"iss": "a", "jwks_url": "http://127.0.0.1:9/jwks.json"}])
    assert load_clients(path)["a"].jwks_url == "http://127.0.0.1:9/jwks.json"


def test_sandbox_example_loads(tmp_path: Path) -> None:
    clients = load_clients(SANDBOX_FILE)
    sandbox = clients[SANDBOX_ISS]
    assert sandbox.jwks_url == SANDBOX_JWKS_URL
    assert set(sandbox.inline_keys) == {SANDBOX_KID}
    assert set(sandbox.inline_keys[SANDBOX_KID].by_algorithm) == {"ES384"}
    assert sandbox.tenants == ()
    assert sandbox.fhir_servers == ()
    network = NoNetwork()
    authenticator = Authenticator(auth_settings(tmp_path, SANDBOX_FILE), http=network)
    assert "1 trusted client(s) (https://sandbox.cds-hooks.org)" in authenticator.describe()


def test_token_with_the_sandbox_kid_but_another_key_is_refused_offline(tmp_path: Path) -> None:
    """Shaped exactly like a Sandbox call (iss, kid, jku, ES384), but signed by a key of our own."""
    impostor = Signer(iss=SANDBOX_ISS, kid=SANDBOX_KID, alg="ES384", private_key=ec_p384_key())
    network = NoNetwork()
    authenticator = Authenticator(auth_settings(tmp_path, SANDBOX_FILE), http=network)
    token = impostor.token(headers={"jku": SANDBOX_JWKS_URL})
    with pytest.raises(AuthError, match="signature does not verify"):
        authenticator.authenticate(f"Bearer {token}", SIGN_PATH)
    assert network.requested == [], "the inline key is used; the Sandbox's URL is never fetched"


def test_json_examples_in_the_docs_load(tmp_path: Path) -> None:
    text = (REPO / "docs" / "clients.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL) if '"clients"' in b]
    assert len(blocks) >= 2
    issuers = set()
    for index, block in enumerate(blocks):
        path = tmp_path / f"doc-{index}.json"
        path.write_text(block, encoding="utf-8")
        issuers |= set(load_clients(path))
    assert {SANDBOX_ISS, "https://ehr.example.org"} <= issuers
