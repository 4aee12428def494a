"""Which FHIR servers the service may query, and what counts as "the same server".

The service sends an EHR's access token to ``fhirServer``; a loose comparison here would hand that token
to whoever can get a look-alike URL into a hook request. So the rules are strict and exact: a base URL is
allowed only when it equals an allowed entry after normalising the harmless differences (scheme and host
case, a default port, a trailing slash). ``https://fhir.example.org.evil.com`` and
``https://fhir.example.org/r4/../other`` never match ``https://fhir.example.org/r4``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """Scheme, lower-case host and explicit port: what a browser would call the origin."""

    scheme: str
    host: str
    port: int


class BaseUrl(NamedTuple):
    origin: Origin
    connected: Origin
    path: str


def origin_of(url: str) -> Origin | None:
    """The origin of an absolute http(s) URL, or None when the URL is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme])


class Target(NamedTuple):
    """Where a request to a URL goes, as read by ``urlsplit`` and by urllib3 (what requests connects to).

    The two parsers disagree on some URLs: urllib3 ends the authority at a backslash, ``urlsplit`` does
    not, so ``http://OTHER\\@EHR/x`` is EHR to one and OTHER to the other. A URL is on a base's server
    only when *both* read it as on the origin they read the base on.
    """

    urlsplit: Origin
    urllib3: Origin


def _has_unsafe_characters(url: str) -> bool:
    """Whitespace, a control character or a backslash up to the end of the authority (the first '/', '?'
    or '#' after the scheme): never needed there, and read differently by different parsers (``urlsplit``
    drops tabs and line breaks, urllib3 ends the authority at a backslash). Past that point both parsers
    agree the authority has ended, and requests percent-encodes what it must."""
    scheme, separator, rest = url.partition("://")
    ends = [index for index in (rest.find(ch) for ch in "/?#") if index >= 0]
    head = scheme + separator + rest[: min(ends, default=len(rest))]
    return any(ch.isspace() or ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in head)


def _urllib3_origin(url: str) -> Origin | None:
    try:
        parts = parse_url(url)
    except (LocationParseError, ValueError):
        return None
    scheme = (parts.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or not parts.host or parts.auth is not None:
        return None
    return Origin(scheme, parts.host.lower(), parts.port or _DEFAULT_PORTS[scheme])


def target_of(url: str) -> Target | None:
    """Where a request to ``url`` goes, or None when ``url`` is not a plain absolute http(s) URL: one with
    userinfo, with whitespace, a control character or a backslash before its path, or one either parser
    cannot read."""
    if not isinstance(url, str) or _has_unsafe_characters(url):
        return None
    origin = origin_of(url)
    if origin is None:
        return None
    parts = urlsplit(url)
    if parts.username is not None or "@" in parts.netloc:
        return None
    connected = _urllib3_origin(url)
    if connected is None:
        return None
    return Target(origin, connected)


def normalise_base_url(url: str) -> BaseUrl | None:
    """A comparable form of a FHIR base URL, or None when it is not a plain absolute http(s) base.

    Userinfo, a query, a fragment, dot segments, backslashes and whitespace are refused rather than
    normalised: none belongs in a FHIR base URL, and each is a known way to make two URLs look alike to
    one parser and different to another.
    """
    if not isinstance(url, str) or any(ch.isspace() or ch == "\\" or ord(ch) < 0x20 for ch in url):
        return None
    target = target_of(url)
    if target is None:
        return None
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return None
    path = parts.path.rstrip("/")
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return BaseUrl(target.urlsplit, target.urllib3, path)


def fhir_server_allowed(url: str, allowed: Sequence[str]) -> bool:
    """True when ``url`` is exactly one of the ``allowed`` base URLs (https, or http listed explicitly).

    The scheme is part of the comparison, so plain HTTP is possible only for a server whose ``http://``
    URL is itself in the list.
    """
    wanted = normalise_base_url(url)
    if wanted is None:
        return False
    return any(normalise_base_url(entry) == wanted for entry in allowed)
