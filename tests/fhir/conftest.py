"""Fixtures for the FHIR-access tests: sekmet on loopback and a small patient to query.

The repository root is put on ``sys.path`` so ``tests.support`` imports the same way whether pytest is
run as ``pytest`` or ``python -m pytest``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.fhir.data import small_patient_bundle  # noqa: E402
from tests.support.fhir_server import SekmetServer, fhir_server, sekmet_factory, sekmet_server  # noqa: E402

__all__ = ["fhir_server", "loaded_server", "sekmet_factory", "sekmet_server"]


@pytest.fixture
def loaded_server(fhir_server: SekmetServer) -> SekmetServer:
    """The session's sekmet, emptied and loaded with the small patient of ``tests.fhir.data``."""
    fhir_server.load(small_patient_bundle())
    return fhir_server
