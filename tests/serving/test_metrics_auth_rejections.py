"""Authentication refusals by status: the caller's credentials (401) or the service's replay store (503).

Both were counted alike in ``cds_auth_rejections_total``, so a Redis outage, which refuses every
correctly signed token with a 503, read on a dashboard like a client whose keys had rotated.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from cds_service import observability
from cds_service.app import create_app
from tests.auth.auth_support import VIEW_PATH, Signer, auth_settings, ec_p384_key, write_clients
from tests.support.processes import free_port


def rejections(status: str) -> float:
    registry = observability._get_metrics().registry
    return registry.get_sample_value("cds_auth_rejections_total", {"status": status}) or 0.0


@pytest.fixture
def signer() -> Signer:
    return Signer(iss="https://ehr.example.test", kid="k1", alg="ES384", private_key=ec_p384_key())


@pytest.fixture
def app(tmp_path: Path, signer: Signer) -> Iterator[Flask]:
    """Client JWTs required, the replay store a Redis that nothing answers at."""
    clients = write_clients(tmp_path, [{"iss": signer.iss, "jwks": {"keys": [signer.public_jwk()]}}])
    settings = auth_settings(tmp_path, clients, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(settings)
    yield app
    app.extensions["cds"]["recorder"].close()
    app.extensions["cds"]["feedback"].close()


def test_refusals_are_counted_by_the_status_they_were_answered_with(app: Flask, signer: Signer) -> None:
    client = app.test_client()
    before = {status: rejections(status) for status in ("401", "503")}
    unsigned = client.post(VIEW_PATH, json={})
    signed = client.post(VIEW_PATH, json={}, headers={"Authorization": f"Bearer {signer.token(VIEW_PATH)}"})
    assert (unsigned.status_code, signed.status_code) == (401, 503)
    assert rejections("401") == before["401"] + 1
    assert rejections("503") == before["503"] + 1


def test_both_statuses_have_a_series_from_start() -> None:
    observability.prepare_metrics([], [])
    registry = observability._get_metrics().registry
    for status in ("401", "503"):
        assert registry.get_sample_value("cds_auth_rejections_total", {"status": status}) is not None
