"""The jti replay store: shared by Authenticators in one process, by separate processes, and via Redis."""

from __future__ import annotations

import logging
import multiprocessing
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cds_service.config import ConfigError
from cds_service.protocol import jti_store
from cds_service.protocol.auth import Authenticator, AuthError, ReplayCheckUnavailable
from cds_service.protocol.jti_store import RedisReplayStore, SQLiteReplayStore, open_replay_store
from cds_service.sqlite_cache import CACHE_KIB
from tests.auth.auth_support import (
    SIGN_PATH,
    Signer,
    auth_settings,
    authenticate_in_process,
    write_clients,
)
from tests.support.processes import free_port
from tests.support.redis_server import running_redis
from tests.support.tiny_filesystem import fill, tiny_filesystem

STORE_LOG = jti_store.__name__


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture
def clients_file(tmp_path: Path, ec_signer: Signer) -> Path:
    return write_clients(tmp_path, [{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}}])


def test_replay_seen_by_a_second_authenticator_on_the_same_state_db(
    tmp_path: Path, clients_file: Path, ec_signer: Signer
) -> None:
    """Two Authenticators over one state_db stand for two gunicorn workers."""
    first = Authenticator(auth_settings(tmp_path, clients_file))
    second = Authenticator(auth_settings(tmp_path, clients_file))
    token = ec_signer.token()
    assert first.authenticate(bearer(token), SIGN_PATH).iss == ec_signer.iss
    with pytest.raises(AuthError, match="already used"):
        second.authenticate(bearer(token), SIGN_PATH)


def test_a_sqlite_replay_store_on_a_full_disk_makes_the_worker_unready(
    tmp_path: Path, clients_file: Path, ec_signer: Signer
) -> None:
    """Every signed call needs its jti recorded; on a full disk none can be, so readiness says so (it
    said ready whatever the disk held) and the call is refused as the service's fault."""
    with tiny_filesystem(1024) as disk:
        state = disk / "state.sqlite3"
        authenticator = Authenticator(auth_settings(tmp_path, clients_file, state_db=str(state)))
        assert authenticator.unready() is None
        assert authenticator.authenticate(bearer(ec_signer.token()), SIGN_PATH).iss == ec_signer.iss
        fill(disk)
        reason = authenticator.unready()
        assert reason is not None
        assert reason.startswith(f"the JWT replay store (SQLite file {state}) has ")
        assert reason.endswith("KiB free on the file system holding it")
        for _ in range(50):  # enough new ids to need a page the disk no longer has
            try:
                authenticator.authenticate(bearer(ec_signer.token()), SIGN_PATH)
            except ReplayCheckUnavailable:
                break
        else:
            pytest.fail("every token was recorded on a full disk")


def test_separate_state_dbs_do_not_share(tmp_path: Path, clients_file: Path, ec_signer: Signer) -> None:
    """The control for the test above: the refusal comes from the shared file, not from the token."""
    first = Authenticator(auth_settings(tmp_path, clients_file))
    other = Authenticator(auth_settings(tmp_path, clients_file, state_db=str(tmp_path / "other.sqlite3")))
    token = ec_signer.token()
    first.authenticate(bearer(token), SIGN_PATH)
    assert other.authenticate(bearer(token), SIGN_PATH).iss == ec_signer.iss


def run_workers(settings, tokens: list[str], workers: int) -> list[list[int]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(target=authenticate_in_process, args=(settings, tokens, barrier, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    accepted = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    return accepted


def test_replay_across_real_processes(tmp_path: Path, clients_file: Path, ec_signer: Signer) -> None:
    """Three processes race to use the same 15 tokens: each token is accepted exactly once overall."""
    tokens = [ec_signer.token() for _ in range(15)]
    accepted = run_workers(auth_settings(tmp_path, clients_file), tokens, workers=3)
    counts = [sum(index in worker for worker in accepted) for index in range(len(tokens))]
    assert counts == [1] * len(tokens)
    # And a token used in another process is refused here too.
    here = Authenticator(auth_settings(tmp_path, clients_file))
    with pytest.raises(AuthError, match="already used"):
        here.authenticate(bearer(tokens[0]), SIGN_PATH)


def test_sqlite_store_expiry_and_purge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.sqlite3"
    store = SQLiteReplayStore(path)
    now = time.time()
    assert store.claim("live", now + 300)
    assert not store.claim("live", now + 300)
    assert store.claim("old", now - 1)
    assert store.claim("old", now + 300), "an id whose token has expired may be used by a new token"

    assert store.claim("stale", now - 1)
    monkeypatch.setattr(jti_store, "PURGE_INTERVAL_S", 0.0)
    store._next_purge = 0.0
    store.claim("trigger", now + 300)
    with sqlite3.connect(path) as connection:
        keys = {row[0] for row in connection.execute("SELECT key FROM jwt_jti_seen")}
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert keys == {"live", "old", "trigger"}
    assert mode == "wal"


def test_sqlite_store_connections_keep_a_small_page_cache(tmp_path: Path) -> None:
    """Each request thread has its own connection; each must not grow a 2 MiB cache in the worker."""
    store = SQLiteReplayStore(str(tmp_path / "state.sqlite3"))
    connection = store._connection()  # the calling thread's own connection, as a request thread's
    assert connection.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB


def test_sqlite_store_refuses_memory_and_unwritable_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="in-memory"):
        SQLiteReplayStore(":memory:")
    with pytest.raises(ConfigError, match="cannot open the state database"):
        SQLiteReplayStore(tmp_path / "no-such-dir" / "state.sqlite3")


def test_store_failure_refuses_the_token(tmp_path: Path, clients_file: Path, ec_signer: Signer) -> None:
    authenticator = Authenticator(auth_settings(tmp_path, clients_file))
    state = tmp_path / "state.sqlite3"
    with sqlite3.connect(state) as connection:
        connection.execute("DROP TABLE jwt_jti_seen")
    # This thread's connection still believes the table exists; a missing table is a store failure.
    with pytest.raises(AuthError, match="cannot check jti for replay"):
        authenticator.authenticate(bearer(ec_signer.token()), SIGN_PATH)


# --- Redis: a real redis-server on loopback, when the Debian package is installed ---------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis"), "s3cret-pass") as url:
        yield url


def test_redis_store_claims_once_and_expires(redis_url: str) -> None:
    store = RedisReplayStore(redis_url, loss_window_s=420)
    key = f"test-{time.time_ns()}"
    assert store.claim(key, time.time() + 0.3)
    assert not store.claim(key, time.time() + 300)
    time.sleep(0.5)
    assert store.claim(key, time.time() + 300), "Redis forgets the id when its token has expired"


def test_redis_shared_by_two_authenticators_with_separate_files(
    tmp_path: Path, clients_file: Path, ec_signer: Signer, redis_url: str
) -> None:
    """Two replicas: different machines (different state_db files), one Redis."""
    first = Authenticator(auth_settings(tmp_path, clients_file, redis_url=redis_url))
    second = Authenticator(
        auth_settings(tmp_path, clients_file, redis_url=redis_url, state_db=str(tmp_path / "other.sqlite3"))
    )
    token = ec_signer.token()
    first.authenticate(bearer(token), SIGN_PATH)
    with pytest.raises(AuthError, match="already used"):
        second.authenticate(bearer(token), SIGN_PATH)
    assert "Redis at redis://127.0.0.1:" in first.describe()
    assert "s3cret-pass" not in first.describe()


def test_redis_across_real_processes(
    tmp_path: Path, clients_file: Path, ec_signer: Signer, redis_url: str
) -> None:
    tokens = [ec_signer.token() for _ in range(10)]
    accepted = run_workers(auth_settings(tmp_path, clients_file, redis_url=redis_url), tokens, workers=2)
    assert [sum(i in worker for worker in accepted) for i in range(len(tokens))] == [1] * len(tokens)


def test_a_redis_down_at_start_fails_closed_until_it_is_reached(
    tmp_path: Path, clients_file: Path, ec_signer: Signer
) -> None:
    """A Redis restart must not stop the worker: the Authenticator is built, says the store cannot be
    reached (never the password), refuses tokens as in any Redis outage, and uses Redis once it is back."""
    port = free_port()
    authenticator = Authenticator(
        auth_settings(tmp_path, clients_file, redis_url=f"redis://:hidden-pass@127.0.0.1:{port}/0")
    )
    expected = (
        f"the JWT replay store (Redis at redis://127.0.0.1:{port}/0) cannot be reached "
        f"(Error 111 connecting to 127.0.0.1:{port}. Connection refused.)"
    )
    assert authenticator.unready() == expected
    with pytest.raises(AuthError, match="cannot check jti for replay") as refused:
        authenticator.authenticate(bearer(ec_signer.token()), SIGN_PATH)
    assert "hidden-pass" not in str(refused.value)
    with running_redis(tmp_path, "hidden-pass", port=port):
        token = ec_signer.token()
        assert authenticator.authenticate(bearer(token), SIGN_PATH).iss == ec_signer.iss
        with pytest.raises(AuthError, match="already used"):
            authenticator.authenticate(bearer(token), SIGN_PATH)
        assert authenticator.unready() is None


def test_a_redis_first_reached_after_start_that_refuses_the_credentials_is_named_so(
    tmp_path: Path, clients_file: Path
) -> None:
    """No retry fixes a changed password: readiness must not call that "cannot be reached"."""
    port = free_port()
    authenticator = Authenticator(
        auth_settings(tmp_path, clients_file, redis_url=f"redis://:old-pass@127.0.0.1:{port}/0")
    )
    with running_redis(tmp_path, "new-pass", port=port):
        reason = authenticator.unready()
    assert reason == (
        f"the JWT replay store (Redis at redis://127.0.0.1:{port}/0): Redis refused the credentials "
        "(invalid username-password pair or user is disabled.)"
    )


def test_credentials_redis_refuses_stop_the_start(tmp_path: Path, redis_url: str) -> None:
    """Unlike an unreachable server, a refused password will not pass by itself."""
    wrong = redis_url.replace("s3cret-pass", "wrong-pass")
    with pytest.raises(ConfigError, match="Redis refused the credentials") as caught:
        RedisReplayStore(wrong, loss_window_s=420)
    assert "wrong-pass" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["redis://:hidden-pass@127.0.0.1:not-a-port/0", "http://:hidden-pass@127.0.0.1/0"]
)
def test_a_malformed_redis_url_stops_the_start_without_showing_the_password(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="CDS_REDIS_URL is not a valid Redis URL") as caught:
        open_replay_store(auth_settings(tmp_path, tmp_path / "unused.json", redis_url=url), loss_window_s=420)
    assert "hidden-pass" not in str(caught.value)


def test_a_missing_redis_package_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` meets without the extra
    url = "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match=re.escape("pip install 'b12-iron-cds[redis]'")):
        open_replay_store(auth_settings(tmp_path, tmp_path / "unused.json", redis_url=url), loss_window_s=420)


def test_readiness_asks_redis_at_every_probe_not_only_until_it_was_first_reached(
    tmp_path: Path, clients_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Redis every call is refused (fail closed): a pod that cannot reach it has nothing to serve,
    so it leaves the load balancer until Redis answers again. One warning per outage, not per probe."""
    port = free_port()
    authenticator = Authenticator(
        auth_settings(tmp_path, clients_file, redis_url=f"redis://:probe-pass@127.0.0.1:{port}/0")
    )
    with running_redis(tmp_path, "probe-pass", port=port):
        assert authenticator.unready() is None
    with caplog.at_level(logging.INFO, logger="cds_service.protocol.jti_store"):
        for _ in range(3):
            assert authenticator.unready() == (
                f"the JWT replay store (Redis at redis://127.0.0.1:{port}/0) cannot be reached "
                f"(Error 111 connecting to 127.0.0.1:{port}. Connection refused.)"
            )
        with running_redis(tmp_path, "probe-pass", port=port):
            assert authenticator.unready() is None
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if "stopped answering" in line] == [
        f"the JWT replay store (Redis at redis://127.0.0.1:{port}/0) stopped answering (Error 111 connecting "
        f"to 127.0.0.1:{port}. Connection refused.): client JWTs are refused and the worker is not ready "
        "until it answers"
    ]
    assert [line for line in lines if "answers again" in line]
    assert "probe-pass" not in caplog.text


def test_a_redis_restarted_without_its_ids_does_not_let_a_used_token_be_replayed(
    tmp_path: Path, clients_file: Path, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis kept in memory only (or deploy/redis.yaml's moved to another node) forgets every jti. A
    token used before the restart is refused after it, by the replica that notices and by every other
    one, new ones included, until such a token could no longer pass; a token certainly issued after the
    restart (exp the longest allowed) is accepted."""
    port = free_port()
    url = f"redis://:loss-pass@127.0.0.1:{port}/0"
    replica_a = Authenticator(auth_settings(tmp_path, clients_file, redis_url=url))
    replica_b = Authenticator(auth_settings(tmp_path, clients_file, redis_url=url))
    used_on_a, used_on_b = ec_signer.token(), ec_signer.token()
    with running_redis(tmp_path, "loss-pass", port=port):
        replica_a.authenticate(bearer(used_on_a), SIGN_PATH)
        replica_b.authenticate(bearer(used_on_b), SIGN_PATH)
    restarted = running_redis(tmp_path, "loss-pass", port=port, in_service=False)
    with restarted, caplog.at_level(logging.WARNING, logger=STORE_LOG):
        with pytest.raises(AuthError, match="holds no ids of tokens used before"):
            replica_a.authenticate(bearer(used_on_a), SIGN_PATH)
        started_after = Authenticator(
            auth_settings(tmp_path, clients_file, redis_url=url, state_db=str(tmp_path / "c.sqlite3"))
        )
        with pytest.raises(AuthError, match="holds no ids of tokens used before"):
            started_after.authenticate(bearer(used_on_b), SIGN_PATH)
        with pytest.raises(AuthError, match="holds no ids"):
            replica_b.authenticate(bearer(ec_signer.token()), SIGN_PATH)  # exp 300 s: may predate it
        time.sleep(1.1)  # exp is whole seconds
        fresh = ec_signer.token(exp=int(time.time()) + 360)
        assert started_after.authenticate(bearer(fresh), SIGN_PATH).iss == ec_signer.iss
        with pytest.raises(AuthError, match="already used"):
            replica_b.authenticate(bearer(fresh), SIGN_PATH)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, "one line from each replica that had used the lost ids, none from the new one"
    assert errors[0] == errors[1]
    assert errors[0].startswith(
        f"the JWT replay store (Redis at redis://127.0.0.1:{port}/0) lost the ids of tokens already used"
    )
    warnings = [r.getMessage() for r in caplog.records if (r.levelno, r.name) == (logging.WARNING, STORE_LOG)]
    assert len(warnings) == 1 and "it is new, or it lost them" in warnings[0], warnings


def test_every_worker_restarting_with_redis_still_refuses_a_used_token(
    tmp_path: Path, clients_file: Path, ec_signer: Signer
) -> None:
    """A node failure that takes the pods and an in-memory Redis together: no process remembers the
    epoch Redis had, yet a token used before is refused, because the new epoch says since when the
    ids are held. A token issued after it, with the longest lifetime, passes."""
    port = free_port()
    url = f"redis://:node-pass@127.0.0.1:{port}/0"
    used = ec_signer.token()
    with running_redis(tmp_path, "node-pass", port=port):
        Authenticator(auth_settings(tmp_path, clients_file, redis_url=url)).authenticate(
            bearer(used), SIGN_PATH
        )
    with running_redis(tmp_path, "node-pass", port=port, in_service=False):
        restarted = Authenticator(
            auth_settings(tmp_path, clients_file, redis_url=url, state_db=str(tmp_path / "new.sqlite3"))
        )
        refusal = r"cannot check jti for replay, refusing: .* holds no ids of tokens used"
        with pytest.raises(AuthError, match=refusal):
            restarted.authenticate(bearer(used), SIGN_PATH)
        time.sleep(1.1)  # exp is whole seconds
        fresh = ec_signer.token(exp=int(time.time()) + 360)
        assert restarted.authenticate(bearer(fresh), SIGN_PATH).iss == ec_signer.iss


def test_a_readiness_probe_dates_the_epoch_of_an_empty_redis(
    tmp_path: Path, clients_file: Path, ec_signer: Signer
) -> None:
    """A probe writes the epoch of an empty Redis (new or restarted), so the refusal window counts from
    the probe rather than from the first call; it never moves an epoch Redis already holds."""
    import redis

    with running_redis(tmp_path, "probe-epoch-pass", in_service=False) as url:
        admin = redis.Redis.from_url(url)
        authenticator = Authenticator(auth_settings(tmp_path, clients_file, redis_url=url))
        before = time.time()
        assert authenticator.unready() is None
        epoch = admin.get(jti_store.EPOCH_KEY)
        assert epoch is not None and before <= float(epoch.split()[0]) <= time.time()
        time.sleep(0.05)
        assert authenticator.unready() is None
        assert admin.get(jti_store.EPOCH_KEY) == epoch
        with pytest.raises(AuthError, match="holds no ids of tokens used before"):
            authenticator.authenticate(bearer(ec_signer.token()), SIGN_PATH)


def test_a_redis_run_as_deployed_keeps_the_used_ids_through_a_crash(
    tmp_path: Path, clients_file: Path, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """deploy/redis.yaml fsyncs its append-only file before each reply: after a SIGKILL and a restart on
    the same directory a used token is still refused as used, nothing is declared lost, and a token
    issued before the crash but not yet used is accepted (no refusal window)."""
    port = free_port()
    url = f"redis://:aof-pass@127.0.0.1:{port}/0"
    authenticator = Authenticator(auth_settings(tmp_path, clients_file, redis_url=url))
    used, unused = ec_signer.token(), ec_signer.token()
    with running_redis(tmp_path, "aof-pass", port=port, as_deployed=True):
        authenticator.authenticate(bearer(used), SIGN_PATH)
    with running_redis(tmp_path, "aof-pass", port=port, as_deployed=True), caplog.at_level(logging.ERROR):
        with pytest.raises(AuthError, match="already used"):
            authenticator.authenticate(bearer(used), SIGN_PATH)
        assert authenticator.authenticate(bearer(unused), SIGN_PATH).iss == ec_signer.iss
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]


def test_a_redis_flushed_while_running_does_not_let_a_used_token_be_replayed(
    tmp_path: Path, clients_file: Path, ec_signer: Signer
) -> None:
    """No restart, so Redis's uptime says nothing of when the ids went: refused from the moment it is
    noticed, the safe bound."""
    import redis

    with running_redis(tmp_path, "flush-pass") as url:
        authenticator = Authenticator(auth_settings(tmp_path, clients_file, redis_url=url))
        used = ec_signer.token()
        authenticator.authenticate(bearer(used), SIGN_PATH)
        redis.Redis.from_url(url).flushall()
        with pytest.raises(AuthError, match="holds no ids"):
            authenticator.authenticate(bearer(used), SIGN_PATH)
        time.sleep(1.1)
        fresh = ec_signer.token(exp=int(time.time()) + 360)
        assert authenticator.authenticate(bearer(fresh), SIGN_PATH).iss == ec_signer.iss


def test_the_loss_window_covers_the_longest_token_any_client_may_use(
    tmp_path: Path, ec_signer: Signer, rsa_signer: Signer
) -> None:
    """A token used at L carries exp + LEEWAY_S at most lifetime + 2 * LEEWAY_S after L, lifetime being its
    client's max_token_lifetime_s: after a loss, a token used before it by the client whose tokens live 15
    minutes is still refused when one of 5 minutes would no longer be."""
    from cds_service.protocol.auth import LEEWAY_S

    clients = write_clients(
        tmp_path,
        [
            {"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}},
            {"iss": rsa_signer.iss, "jwks": {"keys": [rsa_signer.public_jwk()]}, "max_token_lifetime_s": 900},
        ],
        name="two-lifetimes.json",
    )
    with running_redis(tmp_path, "window-pass", in_service=False) as url:
        authenticator = Authenticator(auth_settings(tmp_path, clients, redis_url=url))
        assert authenticator.unready() is None  # the probe writes the epoch: the loss is dated now
        now = int(time.time())
        # Used five minutes ago and valid for eight more: past a 420 s window, inside this one.
        used_before = rsa_signer.token(iat=now - 300, exp=now + 500)
        assert now + 500 + LEEWAY_S > now + 420, "a window for 5-minute tokens would let it pass"
        with pytest.raises(ReplayCheckUnavailable, match="holds no ids of tokens used before"):
            authenticator.authenticate(bearer(used_before), SIGN_PATH)


def test_readiness_fails_when_redis_answers_but_cannot_record_a_jti(
    tmp_path: Path, clients_file: Path, ec_signer: Signer
) -> None:
    """A Redis that answers PING but refuses writes (full under noeviction, as deploy/redis.yaml runs it;
    a replica after a failover) refuses every claim: the pod has nothing to serve and must say so."""
    import redis

    with running_redis(tmp_path, "full-pass") as url:
        authenticator = Authenticator(auth_settings(tmp_path, clients_file, redis_url=url))
        assert authenticator.unready() is None
        admin = redis.Redis.from_url(url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            with pytest.raises(AuthError, match="cannot check jti for replay"):
                authenticator.authenticate(bearer(ec_signer.token()), SIGN_PATH)
            reason = authenticator.unready()
            assert reason is not None and reason.startswith(
                "the JWT replay store (Redis at redis://127.0.0.1:"
            )
            assert "command not allowed when used memory" in reason, reason
        finally:
            admin.config_set("maxmemory", "0")
        assert authenticator.unready() is None
