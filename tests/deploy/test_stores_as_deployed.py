"""deploy/'s Redis and PostgreSQL, run for real with what the manifests give them.

Redis: redis-server started with deploy/redis.yaml's own arguments (the password expanded as the kubelet
expands ``$(VAR)``; tests/auth/test_auth_replay.py runs the same through a crash), refusing writes when
full rather than forgetting token ids, and its readiness probe run as written. PostgreSQL: the init script the
StatefulSet mounts, run by psql as the image's entrypoint runs it, then the feedback store working under
the role and URL the Secret gives the service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cds_service.feedback import FeedbackStore, parse_feedback
from cds_service.protocol.jti_store import RedisReplayStore, ReplayStoreError
from tests.deploy.manifests import (
    DEPLOY,
    container,
    container_env,
    find,
    kustomization,
    quantity,
    redis_args,
    redis_bytes,
    secret,
)
from tests.support.postgres_server import PG_PORT, PostgresCluster
from tests.support.redis_server import running_redis

LOSS_WINDOW_S = 420.0


# --- Redis ----------------------------------------------------------------------------------------


def redis_workload() -> dict:
    return find("Deployment", "cds-redis")


def redis_password() -> str:
    return container_env(redis_workload(), "redis")["REDIS_PASSWORD"]


@pytest.fixture
def deployed_redis(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A client of redis-server run with deploy/redis.yaml's own arguments, and its URL; the replay store's
    epoch is in place, as in a running deployment."""
    redis = pytest.importorskip("redis", reason="the optional 'redis' extra is not installed")
    with running_redis(tmp_path, redis_password(), as_deployed=True) as url:
        client = redis.Redis.from_url(url)
        try:
            yield client, url
        finally:
            client.close()


def test_redis_runs_with_the_persistence_and_eviction_the_replay_store_needs(
    deployed_redis: tuple[Any, str],
) -> None:
    """What survives a crash is what the append-only file holds (tests/auth/test_auth_replay.py restarts
    this Redis after a SIGKILL); a full Redis refuses writes rather than forgetting token ids."""
    client, _ = deployed_redis
    config = {key: client.config_get(key)[key] for key in ("appendonly", "appendfsync", "save")}
    assert config == {"appendonly": "yes", "appendfsync": "always", "save": ""}
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_the_redis_data_set_has_room_below_the_containers_memory_limit(
    deployed_redis: tuple[Any, str],
) -> None:
    """Past the container's limit the kernel kills Redis before noeviction refuses a write, and the
    restarted Redis loads the same full data set: maxmemory leaves half the limit for fragmentation,
    buffers and the fork that rewrites the append-only file."""
    client, _ = deployed_redis
    maxmemory = int(client.config_get("maxmemory")["maxmemory"])
    args = redis_args()
    assert maxmemory == redis_bytes(args[args.index("--maxmemory") + 1]) > 0
    limit = quantity(container(redis_workload(), "redis")["resources"]["limits"]["memory"])
    assert maxmemory <= limit / 2


def test_a_full_redis_refuses_new_ids_and_keeps_the_old_ones(deployed_redis: tuple[Any, str]) -> None:
    """noeviction, exercised: with the memory cap lowered to what Redis already uses, a claim fails (the
    service refuses the token and readiness says why) and no id already recorded is dropped."""
    client, url = deployed_redis
    store = RedisReplayStore(url, LOSS_WINDOW_S)
    expires = time.time() + 300
    assert store.claim("https://ehr.example.org|before", expires)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]))
    with pytest.raises(ReplayStoreError, match="maxmemory"):
        store.claim("https://ehr.example.org|after", expires)
    assert "refuses to record token ids" in (store.unready() or "")
    assert client.exists(RedisReplayStore.PREFIX + "https://ehr.example.org|before")


# The server is killed whatever happens: a probe that times out raised past the kill, and the orphaned
# redis-server kept the captured stderr open, so the test waited out its own 60 s and left the server running.
_PROBE_IN_NAMESPACE = """
import json, os, subprocess, sys, time
redis_args, probe, password = json.loads(sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
server = subprocess.Popen(["redis-server", *redis_args], stdout=subprocess.DEVNULL)
def probe_with(secret):
    env = dict(os.environ, REDIS_PASSWORD=secret)
    return subprocess.run(probe, env=env, capture_output=True, timeout=10).returncode
try:
    deadline = time.monotonic() + 10
    ready = probe_with(password)
    while ready != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        ready = probe_with(password)
    wrong = probe_with(password + "-wrong")
finally:
    server.kill()
    server.wait()
print(json.dumps({"ready": ready, "wrong": wrong}))
"""


def test_the_redis_readiness_probe_passes_with_the_password_only(tmp_path: Path) -> None:
    """The probe as written talks to the default port; Redis runs with the manifest's arguments on it, in a
    network namespace of its own (so no other Redis on this machine is asked)."""
    for program in ("unshare", "ip", "redis-server", "redis-cli"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed")
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("this machine does not let the test make a network namespace (unshare -rn)")
    probe = container(redis_workload(), "redis")["readinessProbe"]["exec"]["command"]
    payload = json.dumps([redis_args(), probe, redis_password()])
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", _PROBE_IN_NAMESPACE, payload],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ready"] == 0, "the probe never passed against a Redis that answers"
    assert result["wrong"] != 0, "the probe passed with a wrong password"


def test_only_one_redis_runs_at_a_time() -> None:
    """Two Redis pods behind the Service during a rolling update would split the token ids between them."""
    spec = redis_workload()["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


# --- PostgreSQL -----------------------------------------------------------------------------------


def postgres_env() -> dict[str, str]:
    return container_env(find("StatefulSet", "cds-postgres"), "postgres")


def init_scripts() -> list[Path]:
    """The files the StatefulSet mounts at /docker-entrypoint-initdb.d, from the ConfigMap generator."""
    statefulset = find("StatefulSet", "cds-postgres")
    spec = container(statefulset, "postgres")
    (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d"]
    (volume,) = [v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    (generator,) = [
        g for g in kustomization()["configMapGenerator"] if g["name"] == volume["configMap"]["name"]
    ]
    return [DEPLOY / name for name in generator["files"]]


@pytest.fixture
def image_database() -> Iterator[PostgresCluster]:
    """A cluster holding what the postgres image makes on an empty volume: POSTGRES_USER, a superuser,
    owning the database POSTGRES_DB."""
    import psycopg

    cluster = PostgresCluster()
    try:
        cluster.start()
        env = postgres_env()
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE ROLE "{env["POSTGRES_USER"]}" LOGIN SUPERUSER')
            admin.execute(f'CREATE DATABASE "{env["POSTGRES_DB"]}" OWNER "{env["POSTGRES_USER"]}"')
        yield cluster
    finally:
        cluster.remove()


def run_init_scripts(cluster: PostgresCluster) -> None:
    """As docker-entrypoint.sh runs each .sql file: psql, stopping at the first error, as POSTGRES_USER on
    POSTGRES_DB, with the container's environment."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    env = postgres_env()
    for script in init_scripts():
        assert script.suffix == ".sql"
        done = subprocess.run(
            [psql, "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--no-password", "-h", str(cluster.base), "-p",
             str(PG_PORT), "-U", env["POSTGRES_USER"], "-d", env["POSTGRES_DB"], "-f", str(script)],
            env=os.environ | env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def service_feedback_url(cluster: PostgresCluster) -> str:
    """The Secret's CDS_FEEDBACK_DB with its user, password and database, on this cluster's socket."""
    parts = urlsplit(secret()["CDS_FEEDBACK_DB"])
    assert (parts.hostname, parts.port) == ("cds-postgres", 5432)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return f"postgresql://{credentials}@{parts.path}?host={cluster.base}&port={PG_PORT}"


def test_the_service_role_creates_and_writes_the_feedback_tables_and_is_no_superuser(
    image_database: PostgresCluster,
) -> None:
    import psycopg

    run_init_scripts(image_database)
    store = FeedbackStore.open_for_service(service_feedback_url(image_database))
    try:
        assert store.unwritable() is None
        item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-03-02T09:01:00Z"}
        assert store.add_feedback("b12-iron-patient-view", parse_feedback({"feedback": [item]})) == [True]
    finally:
        store.close()
    role = urlsplit(secret()["CDS_FEEDBACK_DB"]).username
    admin_url = image_database.url(postgres_env()["POSTGRES_DB"])
    with psycopg.connect(admin_url) as admin:
        (superuser, has_password) = admin.execute(
            "SELECT rolsuper, rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone()
        schemas = admin.execute(
            "SELECT DISTINCT table_schema FROM information_schema.tables WHERE table_name LIKE 'cds_%%'"
        ).fetchall()
    assert not superuser and has_password
    assert schemas == [(role,)]
