"""Fixtures for the feedback store: a fresh SQLite file, and a throwaway PostgreSQL cluster when one can run.

The PostgreSQL cluster is made with the machine's own `initdb` in a temporary directory, listens only on a
Unix socket in that directory (no TCP port at all), and is stopped and deleted after the session. Each
test gets its own database in it. When the server binaries or psycopg are missing the PostgreSQL tests
are skipped with the reason; `apt-get install postgresql` and `pip install -e '.[test,postgres]'` enable
them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres_server import PostgresCluster

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """The URL template (``{database}`` to fill in) of a private PostgreSQL cluster for this session."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster.url("{database}")
    finally:
        cluster.remove()


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


@pytest.fixture(scope="session")
def standby() -> Iterator[str]:
    """The URL of database 'feedback' on a real hot standby (read-only, as after a failover), whose
    primary has the store's tables, one card issued (c1, iron-after-b12) and it overridden."""
    from datetime import UTC, datetime

    import psycopg

    from cds_service.feedback import FeedbackStore, parse_feedback
    from tests.feedback.standby import Standby

    primary = PostgresCluster()
    try:
        primary.start()
        with psycopg.connect(primary.url("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE feedback")
        store = FeedbackStore.open(primary.url("feedback"))
        store.record_issued(
            "b12-iron-patient-view", [("c1", "iron-after-b12")], datetime(2026, 3, 2, tzinfo=UTC)
        )
        item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-03-02T09:01:00Z"}
        store.add_feedback("b12-iron-patient-view", parse_feedback({"feedback": [item]}))
        store.close()
        replica = Standby(primary)
        try:
            yield replica.url("feedback")
        finally:
            replica.remove()
    finally:
        primary.remove()
