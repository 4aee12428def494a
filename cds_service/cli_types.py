"""Click parameter types that more than one `cds-service` command uses."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from cds_service.redaction import without_passwords


class HttpUrl(click.ParamType):
    """An http(s) base URL with a host and no query or fragment, checked when the options are read.

    A base URL without a scheme (``localhost:8080``) or with another one would otherwise fail only at the
    first request, as a library error per call; ``fire`` and ``load-fixtures`` share this so that mistake
    is one usage error before anything runs.
    """

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            parts = urlsplit(text)
            usable = (
                parts.scheme in ("http", "https")
                and bool(parts.hostname)
                and (parts.port is None or parts.port > 0)
            )
        except ValueError:  # a malformed IPv6 host, or a port that is not a number up to 65535
            usable = False
        if not usable:
            self.fail(f"{without_passwords(text, text)!r} is not an http(s) URL", param, ctx)
        if "?" in text or "#" in text:
            # Paths are appended to a base URL as text: 'http://h/fhir?x=1' would query Patient/p as
            # '?x=1/Patient/p' of http://h/fhir, and send a fhirServer no EHR would.
            self.fail(
                f"{without_passwords(text, text)!r} has a query or a fragment; give the base URL alone",
                param,
                ctx,
            )
        return text


HTTP_URL = HttpUrl()


class GivenPath(click.Path):
    """A file or folder named on the command line, refused when empty.

    click turns "" into ``Path("")``, which is ".": `cds-service replay "$BUNDLE"` with the variable unset
    replayed every JSON file of the current directory, `load-fixtures "$DIR"` posted them all to the FHIR
    server, and an empty --order or --signing-key was reported as '.: is a directory'.
    """

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value:
            self.fail("an empty path (an unset variable?)", param, ctx)
        return super().convert(value, param, ctx)


PATH = GivenPath()


# Settings whose value may carry a password; config.py quotes a malformed value as given.
_SECRET_BEARING_SETTINGS = ("CDS_FEEDBACK_DB", "CDS_REDIS_URL", "CDS_PUBLIC_BASE_URL")


class ConfigurationError(click.ClickException):
    """A malformed setting or site file: exit status 2, as `serve` and `feedback-report` give, and as the
    README promises for a usage or configuration error (1 is for a Bundle, a call or a store that failed)."""

    exit_code = 2

    def __init__(self, error: Exception) -> None:
        super().__init__(f"configuration error: {config_message(error)}")


def config_message(error: Exception) -> str:
    """A configuration error's message with the passwords of the store URLs in the environment starred."""
    text = str(error)
    for name in _SECRET_BEARING_SETTINGS:
        value = os.environ.get(name)
        if value:
            text = without_passwords(text, value)
    return text


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def bearer_token(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for a bearer-token option: a token that can travel in an Authorization header (and
    in fhirAuthorization), never quoted back.

    Anything else failed late: a non-Latin-1 character as a UnicodeEncodeError traceback from requests, a
    space or a line break as the server's refusal of every call. An empty value (an empty
    $FHIR_ACCESS_TOKEN) means no token."""
    if value and not _VISIBLE_ASCII.fullmatch(value):
        raise click.BadParameter(
            "a bearer token is visible ASCII only (no spaces, line breaks or other characters); "
            "the value is not shown",
            ctx,
            param,
        )
    return value or None
