"""Keys are made once per session (RSA generation is the slow part); everything else per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service.protocol.auth import Authenticator
from tests.auth.auth_support import JwksServer, Signer, auth_settings, ec_p384_key, rsa_key, write_clients

EHR_ISS = "https://ehr.example.org"
SANDBOX_LIKE_ISS = "https://sandbox.example.org"


@pytest.fixture(scope="session")
def ec_signer() -> Signer:
    return Signer(iss=SANDBOX_LIKE_ISS, kid="ec-key-1", alg="ES384", private_key=ec_p384_key())


@pytest.fixture(scope="session")
def rsa_signer() -> Signer:
    return Signer(iss=EHR_ISS, kid="rsa-key-1", alg="RS384", private_key=rsa_key())


@pytest.fixture(scope="session")
def other_ec_key() -> Any:
    return ec_p384_key()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer().start()
    yield server
    server.stop()


@pytest.fixture
def make_authenticator(tmp_path: Path):
    """Build an Authenticator over a clients file written from the given entries."""

    def make(clients: list[dict[str, Any]], **overrides: Any) -> Authenticator:
        path = write_clients(tmp_path, clients)
        return Authenticator(auth_settings(tmp_path, path, **overrides))

    return make


@pytest.fixture
def authenticator(make_authenticator, ec_signer: Signer, rsa_signer: Signer) -> Authenticator:
    """Two inline-key clients: an ES384 one and an RS384 one with a tenant list and FHIR servers."""
    return make_authenticator(
        [
            {"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}},
            {
                "iss": rsa_signer.iss,
                "jwks": {"keys": [rsa_signer.public_jwk(with_alg=False)]},
                "tenants": ["tenant-a", "tenant-b"],
                "fhir_servers": ["https://fhir.example.org/r4/"],
            },
        ]
    )
