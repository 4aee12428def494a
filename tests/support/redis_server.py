"""A real redis-server on loopback, for the stores that replicas share through Redis.

Skips (never fails) where the Debian package or the optional ``redis`` extra is missing, so the rest of
a module still runs; a server that is there but does not start fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from cds_service.protocol.auth import LEEWAY_S
from cds_service.protocol.clients import MAX_TOKEN_LIFETIME_S
from cds_service.protocol.jti_store import EPOCH_KEY
from tests.support.processes import free_port, stop

START_TIMEOUT_S = 10


@contextmanager
def running_redis(
    directory: Path,
    password: str,
    port: int | None = None,
    *,
    as_deployed: bool = False,
    in_service: bool = True,
) -> Iterator[str]:
    """A password-protected redis-server on ``port`` or a free one; yields its ``redis://`` URL.

    ``in_service``: it has held the replay store's ids for longer than any token lives, as in a running
    deployment (see :func:`mark_in_service`); otherwise it is brand new, or restarted without its data.

    It keeps nothing on disk, unless ``as_deployed``: then it runs with deploy/redis.yaml's own arguments
    (an append-only file in ``directory``, fsynced before each reply; its memory cap and noeviction) and
    is killed with SIGKILL at the end, as a crash would stop it, so that what survives is only what the
    file holds."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); Redis untested")
    redis = pytest.importorskip("redis", reason="the optional 'redis' extra is not installed")
    port = port or free_port()
    if as_deployed:
        from tests.deploy.manifests import redis_args  # reads deploy/ (PyYAML) only for these tests

        options = redis_args(password)
    else:
        options = ["--save", "", "--appendonly", "no", "--requirepass", password]
    command = [binary, *options, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:  # BusyLoadingError too, while it reads its append-only file
                if process.poll() is not None:
                    pytest.fail(f"redis-server exited at start with status {process.returncode}")
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start within {START_TIMEOUT_S} s")
                time.sleep(0.05)
        if in_service:
            mark_in_service(client)
        yield url
    finally:
        client.close()
        if as_deployed:
            process.kill()
            process.wait(timeout=10)
        stop(process, grace_s=10)


def mark_in_service(client: Any) -> None:
    """Date the replay store's epoch before any token still alive, unless Redis already holds one (a file it
    persisted). A Redis without it is new or has lost its ids, and the service then refuses every token that
    could predate it for minutes (``jti_store.EPOCH_KEY``), which only the tests of that case want."""
    older_than_any_token = MAX_TOKEN_LIFETIME_S + 2 * LEEWAY_S + 1
    client.set(EPOCH_KEY, f"{time.time() - older_than_any_token:.6f} in-service", nx=True)
