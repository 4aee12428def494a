"""Store URLs in what the service prints: no part of a password may show, however the URL is written.

Generated passwords often hold '/', and sometimes '?' or '#'. Left unencoded in ``CDS_REDIS_URL`` (a
common slip), they end the URL's authority early for every URL parser: the part of the password before
them is read as the port, and Redis's URL parser quotes it in its error.
"""

from __future__ import annotations

import re

import pytest

from cds_service.config import ConfigError
from cds_service.redaction import address, passwords_in, token_pattern, without_passwords, without_tokens
from cds_service.redis_client import redis_client

SECRET_PARTS = ("Ab3", "xYz9")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Ab3/xYz9@localhost:6379/0",
        "redis://cds:Ab3?xYz9@localhost:6379/0",
        "redis://cds:Ab3#xYz9@localhost:6379/0",
    ],
)
def test_a_password_with_an_unencoded_delimiter_is_not_quoted_by_the_redis_url_error(url: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(ConfigError) as refused:
        redis_client(url, timeout_s=1.0)
    message = str(refused.value)
    assert "CDS_REDIS_URL is not a valid Redis URL" in message
    assert not [part for part in SECRET_PARTS if part in message], message


@pytest.mark.parametrize(
    "url",
    [
        "redis://:12/xYz9@localhost:6379/0",
        "redis://:Ab3/xYz9@localhost:6379/0",
        "postgresql://cds:12?xYz9@db.internal/feedback",
    ],
)
def test_address_never_shows_a_password_read_as_a_path(url: str) -> None:
    """``redis://:12/xYz9@localhost:6379/0`` parses as host '' port 12 and path '/xYz9@localhost…':
    the address printed at start (``describe``) showed the password's end in that path."""
    shown = address(url)
    assert "xYz9" not in shown and "Ab3" not in shown, shown


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("redis://:Ab3/xYz9@localhost:6379/0", "Port could not be cast to integer value as 'Ab3'"),
        ("redis://cds:12/xYz9@localhost:6379/0", "Error connecting to cds:12. db '/xYz9@localhost:6379/0'"),
        ("redis://cds:Ab3#xYz9@localhost/0", "port 'Ab3', fragment 'xYz9@localhost/0'"),
    ],
)
def test_every_piece_of_a_misplaced_password_is_redacted(url: str, text: str) -> None:
    redacted = without_passwords(text, url)
    assert not [part for part in SECRET_PARTS if part in redacted], redacted
    assert "12" not in redacted.replace("6379", "")


def test_well_formed_urls_keep_their_usual_redaction() -> None:
    assert passwords_in("redis://:s%2Fecret@cache:6379/0") == ["s%2Fecret", "s/ecret"]
    assert passwords_in("postgresql://cds:pw@db/feedback?password=other") == ["other", "pw"]
    assert passwords_in("redis://cache:6379/0") == []
    assert address("redis://:pw@cache:6379/0") == "redis://cache:6379/0"
    assert without_passwords("could not connect to cache:6379", "redis://:pw@cache:6379/0") == (
        "could not connect to cache:6379"
    )


def test_single_characters_are_not_redacted_everywhere() -> None:
    """An '@' in a query value makes the URL look like one with a misplaced password; its one-character
    pieces ('0', the database) would otherwise be starred out of every message."""
    url = "redis://cache:6379/0?password=a@b"
    assert "0" not in passwords_in(url)
    assert without_passwords("Error 111 connecting to cache:6379/0.", url).endswith("/0.")


@pytest.mark.parametrize(
    "quoted",
    [
        "Bearer Ab3/xYz9+Qw7_token expired",
        '{"error_description": "Bearer Ab3\\/xYz9+Qw7_token expired"}',
        '{"error_description": "Bearer Ab3/xYz9\\u002BQw7_token expired"}',
        '{"error_description": "Bearer Ab3\\u002fxYz9\\u002bQw7_token expired"}',
        "GET /fhir/Patient?access_token=Ab3%2FxYz9%2bQw7_token",
    ],
)
def test_a_token_is_starred_however_a_server_writes_it_back(quoted: str) -> None:
    """A base64 token holds '/' and '+'; a server may quote it with JSON's escaped solidus (PHP's
    json_encode), '+' as \\u002B (.NET's System.Text.Json), or percent-encoded in a URL. Only the token
    as sent was starred."""
    shown = without_tokens(quoted, "Ab3/xYz9+Qw7_token")
    assert "xYz9" not in shown and "Qw7_token" not in shown, shown
    assert "Bearer ***" in shown or "access_token=***" in shown, shown


def test_the_token_pattern_matches_the_token_alone() -> None:
    pattern = token_pattern("a/b+c")
    assert (
        pattern.fullmatch("a/b+c") and pattern.fullmatch("a\\/b\\u002bc") and pattern.fullmatch("a%2Fb%2Bc")
    )
    assert not pattern.search("a b c") and not pattern.search("A/B+C") and not pattern.search("a/b+d")
    assert re.compile(pattern.pattern.encode()).sub(b"*", b"x a\\/b+c y") == b"x * y"
