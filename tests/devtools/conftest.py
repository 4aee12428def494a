"""The real FHIR server (sekmet on loopback) for the developer-tool tests."""

from __future__ import annotations

from tests.support.fhir_server import fhir_server, sekmet_factory, sekmet_server

__all__ = ["fhir_server", "sekmet_factory", "sekmet_server"]
