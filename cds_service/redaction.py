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
from urllib.parse import unquote, urlsplit

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


def token_pattern(token: str) -> re.Pattern[str]:
    """``token`` however a server may write it back: each character that is not a letter, a digit or one
    of ``-._~`` as sent, JSON-escaped (``\\u002B``, and ``\\/`` for '/') or percent-encoded (``%2B``),
    in either case of hex. Base64 tokens hold '/' and '+': PHP's json_encode writes '/' as ``\\/``, .NET's
    System.Text.Json writes '+' as ``\\u002B``, and a URL quoting the token percent-encodes both, so
    starring only the token as sent let each of those through whole. ``.pattern`` works on bytes too."""
    pieces = []
    for char in token:
        if char.isascii() and (char.isalnum() or char in "-._~"):
            pieces.append(re.escape(char))
            continue
        code = f"{ord(char):04X}"
        forms = [re.escape(char), _any_case(rf"\\u{code}")]
        if ord(char) < 0x80:
            forms.append(_any_case(f"%{code[2:]}"))
        if char == "/":
            forms.append(r"\\/")
        pieces.append("(?:" + "|".join(forms) + ")")
    return re.compile("".join(pieces))


def _any_case(text: str) -> str:
    """A regular expression for ``text`` (ASCII, regex-safe but for its letters) with its letters in
    either case."""
    return "".join(f"[{ch.upper()}{ch.lower()}]" if ch.isalpha() and ch != "u" else ch for ch in text)


def without_tokens(text: str, token: str | None = None) -> str:
    """A server's words without ``token`` in any form of ``token_pattern`` (starred) or anything shaped like
    a JWT ('[a JWT]'): a FHIR server's 401 may quote the bearer token it refused, and the developer tools
    print what servers say."""
    if token:
        text = token_pattern(token).sub("***", text)
    return _JWT.sub("[a JWT]", text)
