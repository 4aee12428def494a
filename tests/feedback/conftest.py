"""Fixtures for the feedback store: a fresh SQLite file, and a throwaway PostgreSQL cluster when one can run.

The PostgreSQL cluster is made with the machine's own `initdb` in a temporary directory, listens only on a
Unix socket in that directory (no TCP port at all), and is stopped and deleted after the session. Each
test gets its own database in it. When the server binaries or psycopg are missing the PostgreSQL tests
are skipped with the reason; `apt-get install postgresql` and `pip install -e '.[test,postgres]'` enable
them.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_PORT = 5432  # only names the socket file inside a private directory; nothing listens on TCP
_database_numbers = itertools.count()


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


def _run_as(owner: str | None, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, user=owner, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """The base URL (without database name) of a private PostgreSQL cluster for this test session."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test,postgres]'")
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) found: apt-get install postgresql")
    owner = None
    if os.geteuid() == 0:
        # initdb refuses to run as root; the Debian package's `postgres` user owns the cluster instead.
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to own a test cluster")
        owner = account.pw_name
    base = Path(tempfile.mkdtemp(prefix="cds-pg-"))
    if owner:
        os.chown(base, account.pw_uid, account.pw_gid)
    data = base / "data"
    try:
        _run_as(
            owner,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        options = f"-c listen_addresses='' -c unix_socket_directories={base} -p {PG_PORT} -c fsync=off"
        _run_as(
            owner,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(base / "log"),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    except subprocess.CalledProcessError as error:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start a PostgreSQL test cluster: {error.stderr or error.stdout}")
    try:
        yield f"postgresql://postgres@/{{database}}?host={base}&port={PG_PORT}"
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            user=owner,
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: str) -> str:
    """A fresh, empty database in the session's cluster."""
    import psycopg

    name = f"feedback_{os.getpid()}_{next(_database_numbers)}"
    with psycopg.connect(postgres_cluster.format(database="postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_cluster.format(database=name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return str(tmp_path / "feedback.sqlite3")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs once on a SQLite file and once on a real PostgreSQL database."""
    return request.getfixturevalue(f"{request.param}_url")
