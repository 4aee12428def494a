"""Fixtures shared by the app-level tests that fetch from a fake EHR FHIR server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Settings
from tests.support.fake_ehr_fhir import FakeEhrFhir


@pytest.fixture
def served(settings: Settings, ehr: FakeEhrFhir) -> Iterator[FlaskClient]:
    """The app, allowed to fetch from the module's fake EHR (``ehr``, which each module sets up)."""
    app: Flask = create_app(settings.with_overrides(allowed_fhir_servers=(ehr.base_url,)))
    yield app.test_client()
    app.extensions["cds"]["recorder"].close()
    app.extensions["cds"]["feedback"].close()
