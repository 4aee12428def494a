"""URLs without their passwords (store URLs, a caller's fhirServer), for logs, error messages and /readyz.

``CDS_REDIS_URL`` and ``CDS_FEEDBACK_DB`` may carry credentials, and the libraries that use them quote the
URL in some of their errors (psycopg does, for a URL it cannot parse). Whatever the service prints about a
store goes through here first.

A password holding an unencoded '/', '?' or '#' (generated passwords often hold a '/') ends the URL's
authority early for every parser: ``redis://:Ab3/xYz@host`` is host '' with port 'Ab3' and path
'/xYz@host', and the libraries quote those pieces in their errors. So every piece of such a misplaced
password is redacted too.

Bearer tokens a server quotes back (``without_tokens``) are starred the same way, with anything shaped like
a JWT.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

_DELIMITERS = re.compile(r"[/?#]")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def address(url: str) -> str:
    """Scheme, host, port and path of ``url``: where the server is, without user or password."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a malformed host or port: say no more than the scheme
        return f"{url.partition('://')[0]}://(malformed)"
    if "@" in parts.path:  # a password with a '/' in it, read as the start of the path
        return f"{parts.scheme}://(malformed)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def passwords_in(url: str) -> list[str]:
    """Every form a password of ``url`` may be echoed in, longest first: from the user part and from a
    ``password=`` query parameter, raw and percent-decoded. Read by hand rather than with urlsplit, which
    refuses the malformed URLs whose errors quote them.

    When the authority (up to the first '/', '?' or '#') holds no '@' but the rest of the URL does, the
    text before that '@' is read as a user part whose password held a delimiter, and each piece of that
    password between delimiters counts as well. A URL whose query has an '@' in a value
    (``?user=me@corp``) may so lose its port or database name to redaction: the lesser harm."""
    rest = url.partition("://")[2]
    authority = _DELIMITERS.split(rest, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    raw = [userinfo.partition(":")[2]] if at and ":" in userinfo else []
    if not at and "@" in rest:
        misplaced = rest.rpartition("@")[0].partition(":")[2]
        raw += [misplaced, *_pieces(misplaced)]
    for pair in rest.partition("?")[2].split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) == "password" and value:
            raw += [value, *_pieces(value)]
    found = {form for value in raw if value for form in (value, unquote(value))}
    return sorted(found, key=len, reverse=True)


def _pieces(password: str) -> list[str]:
    """The parts of a password between '/', '?' and '#', as parsers cut it up. A single character is left
    out: replacing every '0' of a message would leave nothing readable, for one character of secret."""
    return [piece for piece in _DELIMITERS.split(password) if len(piece) > 1]


def without_passwords(text: str, url: str) -> str:
    """``text`` with every password of ``url`` replaced by ``***``."""
    for password in passwords_in(url):
        text = text.replace(password, "***")
    return text


def token_forms(token: str) -> list[str]:
    """The ways a server may write ``token`` back, longest first: as sent, with JSON's escaped solidus
    (PHP's json_encode and some Java writers turn every '/' into '\\/'), and percent-encoded (a URL it
    quotes). Base64 tokens hold '/' and '+', so starring only the token as sent let such a server's
    ``{"error_description": "Bearer abc\\/def expired"}`` through whole."""
    return sorted({token, token.replace("/", "\\/"), quote(token, safe="")}, key=len, reverse=True)


def without_tokens(text: str, token: str | None = None) -> str:
    """A server's words without ``token`` in any of its ``token_forms`` (starred) or anything shaped like
    a JWT ('[a JWT]'): a FHIR server's 401 may quote the bearer token it refused, and the developer tools
    print what servers say."""
    if token:
        for form in token_forms(token):
            text = text.replace(form, "***")
    return _JWT.sub("[a JWT]", text)
