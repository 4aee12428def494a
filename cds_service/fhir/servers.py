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

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """Scheme, lower-case host and explicit port: what a browser would call the origin."""

    scheme: str
    host: str
    port: int


class BaseUrl(NamedTuple):
    origin: Origin
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


def normalise_base_url(url: str) -> BaseUrl | None:
    """A comparable form of a FHIR base URL, or None when it is not a plain absolute http(s) base.

    Userinfo, a query, a fragment, dot segments, backslashes and whitespace are refused rather than
    normalised: none belongs in a FHIR base URL, and each is a known way to make two URLs look alike to
    one parser and different to another.
    """
    if not isinstance(url, str) or not url or any(ch.isspace() or ch == "\\" for ch in url):
        return None
    origin = origin_of(url)
    if origin is None:
        return None
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return None
    if "@" in parts.netloc or url.endswith(("?", "#")):
        return None
    path = parts.path.rstrip("/")
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return BaseUrl(origin, path)


def fhir_server_allowed(url: str, allowed: Sequence[str]) -> bool:
    """True when ``url`` is exactly one of the ``allowed`` base URLs (https, or http listed explicitly).

    The scheme is part of the comparison, so plain HTTP is possible only for a server whose ``http://``
    URL is itself in the list.
    """
    wanted = normalise_base_url(url)
    if wanted is None:
        return False
    return any(normalise_base_url(entry) == wanted for entry in allowed)
