"""Redis clients for ``CDS_REDIS_URL`` (the JWT replay store and the run-ahead cache).

Building a client checks what the service can tell by itself, the optional package and the URL, and
raises ConfigError for either, so that such a mistake stops the service at start. It opens no connection:
whether the server can be reached is each user's business (the replay store asks at start, and starts
not ready if it cannot; the run-ahead cache just misses).
"""

from __future__ import annotations

from typing import Any

from cds_service.config import ConfigError
from cds_service.redaction import without_passwords


def redis_client(url: str, timeout_s: float) -> Any:
    """A ``redis.Redis`` for ``url`` whose connects and commands give up after ``timeout_s``."""
    try:
        import redis  # the optional extra: needed only when CDS_REDIS_URL is set
    except ImportError:
        raise ConfigError(
            "CDS_REDIS_URL is set but the 'redis' package is missing: pip install 'b12-iron-cds[redis]'"
        ) from None
    try:
        return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except ValueError as error:
        raise ConfigError(
            f"CDS_REDIS_URL is not a valid Redis URL: {without_passwords(str(error), url)}"
        ) from None
