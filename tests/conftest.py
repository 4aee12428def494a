"""Fixtures shared by every test: settings on temporary files, the app and its test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Settings
from tests.builders import FIXED_NOW


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Authentication off and every file under tmp_path, so tests never touch the working directory."""
    return Settings(
        auth="off",
        public_base_url="http://127.0.0.1:8080",
        feedback_db=str(tmp_path / "feedback.sqlite3"),
        state_db=str(tmp_path / "state.sqlite3"),
        now=FIXED_NOW,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    yield application
    application.extensions["cds"]["recorder"].close()
    application.extensions["cds"]["feedback"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
