"""A private PostgreSQL cluster made with the machine's own ``initdb``, which a test may stop and start.

It lives in a temporary directory and listens only on a Unix socket there (no TCP port at all). When the
server binaries or psycopg are missing the test is skipped with the reason; `apt-get install postgresql`
and `pip install -e '.[test,postgres]'` enable it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_PORT = 5432  # only names the socket file inside a private directory; nothing listens on TCP


def _postgres_bindir() -> Path | None:
    candidates = []
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


class PostgresCluster:
    """An initialised cluster, not yet running; `start` and `stop` it as often as a test needs."""

    def __init__(self) -> None:
        pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test,postgres]'")
        bindir = _postgres_bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) found: apt-get install postgresql")
        self._bindir = bindir
        self._owner = None
        if os.geteuid() == 0:
            # initdb refuses to run as root; the Debian package's `postgres` user owns the cluster instead.
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to own a test cluster")
            self._owner = account.pw_name
        self.base = Path(tempfile.mkdtemp(prefix="cds-pg-"))
        if self._owner:
            os.chown(self.base, account.pw_uid, account.pw_gid)
        self._data = self.base / "data"
        try:
            self._run(
                "initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
            )
        except subprocess.CalledProcessError as error:
            self.remove()
            pytest.fail(f"could not create a PostgreSQL test cluster: {error.stderr or error.stdout}")

    def url(self, database: str, *, password: str | None = None) -> str:
        """A URL of ``database`` on this cluster's socket; a ``password`` is sent only if asked for
        (the cluster trusts local connections), so a test can check it is never shown."""
        user = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{user}@/{database}?host={self.base}&port={PG_PORT}"

    def start(self) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories={self.base} -p {PG_PORT} -c fsync=off"
        log = str(self.base / "log")
        try:
            self._run("pg_ctl", "-D", str(self._data), "-o", options, "-l", log, "-w", "-t", "30", "start")
        except subprocess.CalledProcessError as error:
            pytest.fail(f"could not start the PostgreSQL test cluster: {error.stderr or error.stdout}")

    def stop(self) -> None:
        subprocess.run(
            [str(self._bindir / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "-w", "stop"],
            user=self._owner,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        if self._data.is_dir():
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, program: str, *arguments: str) -> None:
        subprocess.run(
            [str(self._bindir / program), *arguments],
            user=self._owner,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
