"""Settings: read once, and a typo fails at start with a message naming the variable."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.config import ConfigError, Settings, load_settings, parse_rfc3339


def test_defaults_match_the_public_interface() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.auth == "required" and settings.fhir_budget_ms == 1500
    assert settings.base_url_for("127.0.0.1", 8080) == "http://127.0.0.1:8080"


def test_every_variable_parses(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    clients.write_text("{}")
    settings = load_settings(
        {
            "CDS_AUTH": "OFF",
            "CDS_CLIENTS": str(clients),
            "CDS_PUBLIC_BASE_URL": "https://cds.example.org/",
            "CDS_ALLOWED_FHIR_SERVERS": "https://fhir.example.org/r4, http://127.0.0.1:8090/fhir",
            "CDS_FHIR_BUDGET_MS": "900",
            "CDS_NOW": "2026-01-15T09:00:00Z",
            "CDS_FEEDBACK_DB": "postgresql://cds@db/cds",
            "CDS_MAX_BODY_BYTES": "65536",
            "CDS_LOG_LEVEL": "debug",
        }
    )
    assert settings.auth == "off" and settings.clients_file == clients
    assert settings.public_base_url == "https://cds.example.org"
    assert settings.allowed_fhir_servers == ("https://fhir.example.org/r4", "http://127.0.0.1:8090/fhir")
    assert settings.now == datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    assert settings.base_url_for("10.1.2.3", 80) == "https://cds.example.org"
    assert (settings.fhir_budget_ms, settings.max_body_bytes, settings.log_level) == (900, 65536, "DEBUG")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CDS_AUTH": "maybe"}, "CDS_AUTH"),
        ({"CDS_FHIR_BUDGET_MS": "fast"}, "CDS_FHIR_BUDGET_MS"),
        ({"CDS_FHIR_BUDGET_MS": "0"}, "CDS_FHIR_BUDGET_MS"),
        ({"CDS_NOW": "yesterday"}, "CDS_NOW"),
        ({"CDS_NOW": "2026-01-15T09:00:00"}, "CDS_NOW"),
        ({"CDS_PUBLIC_BASE_URL": "cds.example.org"}, "CDS_PUBLIC_BASE_URL"),
        ({"CDS_ALLOWED_FHIR_SERVERS": "https://ok.example, ftp://no"}, "CDS_ALLOWED_FHIR_SERVERS"),
        ({"CDS_CLIENTS": "/no/such/file.json"}, "CDS_CLIENTS"),
        ({"CDS_FEEDBACK_DB": "mysql://db"}, "CDS_FEEDBACK_DB"),
        ({"CDS_LOG_LEVEL": "loud"}, "CDS_LOG_LEVEL"),
        ({"CDS_BUDGET_MS": "100"}, "CDS_BUDGET_MS"),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(environ)


def test_other_variables_are_ignored() -> None:
    assert load_settings({"PATH": "/bin", "HOME": "/root"}) == Settings()


@pytest.mark.parametrize(
    "url",
    ["mysql://reporter:s3cr3t-pw@db/cds", "sqlite://reporter:s3cr3t-pw@db/x", "mysql://:s3cr3t/pw@db/cds"],
)
def test_an_unsupported_store_url_is_quoted_without_its_password(url: str) -> None:
    """The message quoted CDS_FEEDBACK_DB as given, password included, and serve printed it at start-up."""
    with pytest.raises(ConfigError) as raised:
        load_settings({"CDS_FEEDBACK_DB": url})
    message = str(raised.value)
    assert "s3cr3t" not in message
    assert "only SQLite paths and postgresql:// URLs are supported" in message
    assert "***" in message and "@db/" in message

    result = CliRunner(env={"CDS_FEEDBACK_DB": url}).invoke(main, ["serve", "--port", "59997"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("cds-service: configuration error: CDS_FEEDBACK_DB=")
    assert "s3cr3t" not in result.output


@pytest.mark.parametrize("name", ["CDS_PUBLIC_BASE_URL", "CDS_ALLOWED_FHIR_SERVERS"])
@pytest.mark.parametrize(
    "url", ["https://svc:s3cr3t-pw@fhir.example.org/r4", "ftp://svc:s3cr3t-pw@fhir.example.org/r4"]
)
def test_a_service_url_with_credentials_is_refused_without_quoting_them(name: str, url: str) -> None:
    """Credentials in these URLs are never used (fhirServer with a user part is refused, a token's aud
    holds none), so such a value is a mistake; the message that says so must not print the password."""
    with pytest.raises(ConfigError, match=name) as raised:
        load_settings({name: url})
    message = str(raised.value)
    assert "s3cr3t" not in message
    assert "***" in message


@pytest.mark.parametrize(
    "written", ["2026-01-15T09:00:00Z", "2026-01-15t09:00:00z", "2026-01-15T10:00:00+01:00"]
)
def test_an_rfc_3339_time_is_read_in_either_case(written: str) -> None:
    """RFC 3339 section 5.6 allows a lower-case t and z; a --since written so was refused."""
    assert parse_rfc3339("CDS_NOW", written) == datetime(2026, 1, 15, 9, tzinfo=UTC)
