"""Fixtures for the FHIR-access tests: sekmet on loopback and a small patient to query."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cds_service.fhir.client import FhirClient
from tests.fhir.data import small_patient_bundle
from tests.support.fhir_server import SekmetServer, fhir_server, sekmet_factory, sekmet_server

__all__ = ["fhir_client", "fhir_server", "loaded_server", "sekmet_factory", "sekmet_server"]


@pytest.fixture
def loaded_server(fhir_server: SekmetServer) -> SekmetServer:
    """The session's sekmet, emptied and loaded with the small patient of ``tests.fhir.data``."""
    fhir_server.load(small_patient_bundle())
    return fhir_server


@pytest.fixture
def fhir_client() -> Iterator[FhirClient]:
    fhir = FhirClient()
    yield fhir
    fhir.close()
