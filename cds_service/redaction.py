"""Store URLs without their passwords, for log lines, error messages and /readyz.

``CDS_REDIS_URL`` and ``CDS_FEEDBACK_DB`` may carry credentials, and the libraries that use them quote the
URL in some of their errors (psycopg does, for a URL it cannot parse). Whatever the service prints about a
store goes through here first.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


def address(url: str) -> str:
    """Scheme, host, port and path of ``url``: where the server is, without user or password."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a malformed host or port: say no more than the scheme
        return f"{url.partition('://')[0]}://(malformed)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def passwords_in(url: str) -> list[str]:
    """Every form a password of ``url`` may be echoed in, longest first: from the user part and from a
    ``password=`` query parameter, raw and percent-decoded. Read by hand rather than with urlsplit, which
    refuses the malformed URLs whose errors quote them."""
    rest = url.partition("://")[2]
    authority, _, query = rest.partition("?")
    userinfo, at, _ = authority.split("/", 1)[0].rpartition("@")
    raw = [userinfo.partition(":")[2]] if at and ":" in userinfo else []
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) == "password" and value:
            raw.append(value)
    found = {form for value in raw if value for form in (value, unquote(value))}
    return sorted(found, key=len, reverse=True)


def without_passwords(text: str, url: str) -> str:
    """``text`` with every password of ``url`` replaced by ``***``."""
    for password in passwords_in(url):
        text = text.replace(password, "***")
    return text
