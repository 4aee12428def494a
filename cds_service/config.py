"""Every setting of the service, read once from the environment at start.

Settings are validated eagerly so that a typo in a deployment fails at start with a message that names
the variable, rather than surfacing as odd behaviour at the first hook call. Unknown ``CDS_*`` variables
are refused for the same reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds_service.redaction import without_passwords


class ConfigError(ValueError):
    """A setting is missing, unknown or malformed; the message names the variable."""


AUTH_MODES = ("required", "off")


@dataclass(frozen=True)
class Settings:
    """The service's configuration; one immutable instance per process."""

    auth: str = "required"
    clients_file: Path | None = None
    public_base_url: str | None = None
    allowed_fhir_servers: tuple[str, ...] = ()
    fhir_budget_ms: int = 1500
    now: datetime | None = None
    feedback_db: str = "cds-feedback.sqlite3"
    state_db: str = "cds-state.sqlite3"
    redis_url: str | None = None
    site_config: Path | None = None
    max_body_bytes: int = 5 * 1024 * 1024
    run_ahead_seconds: int = 300
    log_level: str = "INFO"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, and `serve` filling in the public URL)."""
        return replace(self, **changes)

    def base_url_for(self, host: str, port: int) -> str:
        """The external base URL: the configured one, else what the server binds to."""
        return (self.public_base_url or f"http://{host}:{port}").rstrip("/")


def _parse_bool_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    value = value.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _parse_int(name: str, value: str, minimum: int, maximum: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a whole number") from None
    if not minimum <= number <= maximum:
        raise ConfigError(f"{name}={number}: expected a number from {minimum} to {maximum}")
    return number


def _parse_url(name: str, value: str) -> str:
    """An absolute http(s) URL without user or password: none is ever sent (a fhirServer with a user part
    is refused; a token's aud holds none), so one here is a mistake, and it is quoted without them."""
    value = value.strip().rstrip("/")
    shown = without_passwords(value, value)
    try:
        parts = urlsplit(value)
    except ValueError:  # a malformed IPv6 host
        raise ConfigError(f"{name}={shown!r}: expected an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={shown!r}: expected an absolute http(s) URL")
    if "@" in parts.netloc:
        raise ConfigError(f"{name}={shown!r}: the URL must not carry a user or password")
    return value


def parse_rfc3339(name: str, value: str) -> datetime:
    """An RFC 3339 date-time with an offset; a bare date means midnight UTC. RFC 3339 lets the ``T`` and the
    ``Z`` be written in lower case (section 5.6), which ``fromisoformat`` reads only for the ``T``."""
    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00Z"
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{name}={value!r}: expected an RFC 3339 date-time such as 2026-01-31T09:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ConfigError(f"{name}={value!r}: the date-time needs an offset (Z or +hh:mm)")
    return moment


def _existing_file(name: str, value: str) -> Path:
    path = Path(value.strip())
    if not path.is_file():
        raise ConfigError(f"{name}={value!r}: no such file")
    return path


def _parse_feedback_db(name: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigError(f"{name} is empty: give a SQLite path or a postgresql:// URL")
    if "://" in value and not value.startswith(("postgresql://", "postgres://")):
        # Quoted without its password: serve prints this at start-up, in logs a deployment keeps.
        shown = without_passwords(value, value)
        raise ConfigError(f"{name}={shown!r}: only SQLite paths and postgresql:// URLs are supported")
    return value


def _parse_log_level(name: str, value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{name}={value!r}: expected DEBUG, INFO, WARNING or ERROR")
    return level


_PARSERS = {
    "CDS_AUTH": ("auth", lambda n, v: _parse_bool_choice(n, v, AUTH_MODES)),
    "CDS_CLIENTS": ("clients_file", _existing_file),
    "CDS_PUBLIC_BASE_URL": ("public_base_url", _parse_url),
    "CDS_ALLOWED_FHIR_SERVERS": (
        "allowed_fhir_servers",
        lambda n, v: tuple(_parse_url(n, item) for item in v.split(",") if item.strip()),
    ),
    "CDS_FHIR_BUDGET_MS": ("fhir_budget_ms", lambda n, v: _parse_int(n, v, 50, 60_000)),
    "CDS_NOW": ("now", parse_rfc3339),
    "CDS_FEEDBACK_DB": ("feedback_db", _parse_feedback_db),
    "CDS_STATE_DB": ("state_db", lambda n, v: v.strip() or "cds-state.sqlite3"),
    "CDS_REDIS_URL": ("redis_url", lambda n, v: v.strip() or None),
    "CDS_SITE_CONFIG": ("site_config", _existing_file),
    "CDS_MAX_BODY_BYTES": ("max_body_bytes", lambda n, v: _parse_int(n, v, 1024, 512 * 1024 * 1024)),
    "CDS_RUN_AHEAD_SECONDS": ("run_ahead_seconds", lambda n, v: _parse_int(n, v, 0, 3600)),
    "CDS_LOG_LEVEL": ("log_level", _parse_log_level),
}

KNOWN_VARIABLES = tuple(_PARSERS)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``CDS_*`` variable; raise ConfigError naming the first bad one."""
    env = os.environ if environ is None else environ
    unknown = sorted(k for k in env if k.startswith("CDS_") and k not in _PARSERS)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known settings are {', '.join(KNOWN_VARIABLES)}"
        )
    values: dict[str, object] = {}
    for variable, (attribute, parse) in _PARSERS.items():
        if variable in env:
            values[attribute] = parse(variable, env[variable])
    return Settings(**values)


# A misspelt section would otherwise be ignored, and the site would run on defaults it meant to change.
SITE_SECTIONS = frozenset({"codes", "thresholds", "overrideReasons", "rulesDocUrl"})


def load_site_config(path: Path | None) -> dict[str, Any]:
    """The site's own code lists, thresholds and override reasons (`CDS_SITE_CONFIG`), or {} if none.

    Each section is validated by the module that owns it; this only checks the file is a JSON object.
    """
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"CDS_SITE_CONFIG={str(path)!r}: cannot read it as JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"CDS_SITE_CONFIG={str(path)!r}: expected a JSON object")
    unknown = sorted(set(data) - SITE_SECTIONS)
    if unknown:
        raise ConfigError(
            f"CDS_SITE_CONFIG={str(path)!r}: unknown section {', '.join(map(repr, unknown))}; "
            f"the sections are {', '.join(sorted(SITE_SECTIONS))}"
        )
    return data
