"""`cds-service serve` whose Redis, PostgreSQL or SQLite disk fails while it runs, end to end through HTTP.

Real servers on loopback (redis-server, a private PostgreSQL cluster, a tiny tmpfs for SQLite), nothing
mocked. Every failure must give a spec-shaped answer: cards where the store is not needed for them, a 503
OperationOutcome where a signed JWT cannot be checked for replay (never a replayed token accepted) and for
feedback, a log line naming the store, never a 500 or a stack trace, and every answer within a bound.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.auth.auth_support import ehr_signer, serve_requiring_jwts
from tests.support.postgres_server import PostgresCluster
from tests.support.processes import free_port
from tests.support.redis_server import mark_in_service
from tests.support.served import HOOKS_NOW, Served, hook_example
from tests.support.tiny_filesystem import fill, tiny_filesystem

pytestmark = pytest.mark.integration

SECRET = "mid-run-secret-9c1d"
SELECT = "/cds-services/b12-iron-order-select"
SIGN = "/cds-services/b12-iron-order-sign"
VIEW = "/cds-services/b12-iron-patient-view"
FEEDBACK = f"{VIEW}/feedback"


# --- helpers ---------------------------------------------------------------------------------------------


class RedisProcess:
    """A password-protected redis-server on a fixed loopback port, keeping nothing on disk, that a test may
    stop (SIGTERM), kill (SIGKILL) and start again on the same port: a restart loses every key."""

    def __init__(self, directory: Path, port: int) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (apt-get install -y redis-server); Redis untested")
        self.redis = pytest.importorskip("redis", reason="the optional 'redis' extra is not installed")
        self.directory = directory
        self.port = port
        self.url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, *, in_service: bool = False) -> None:
        """``in_service``: as in a running deployment (see ``mark_in_service``); otherwise empty."""
        command = [self.binary or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        command += ["--requirepass", SECRET]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    break
                except self.redis.ConnectionError:
                    if time.monotonic() > deadline:
                        pytest.fail("redis-server did not start within 10 s")
                    time.sleep(0.05)
            if in_service:
                mark_in_service(client)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    def keys(self, pattern: str) -> list[bytes]:
        client = self.redis.Redis.from_url(self.url)
        try:
            return list(client.scan_iter(pattern))
        finally:
            client.close()


@contextmanager
def redis_process(directory: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(directory, free_port())
    server.start(in_service=True)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def silent_listener(port: int) -> Iterator[list[socket.socket]]:
    """What a hung Redis looks like to a client: connections are accepted, nothing is ever answered."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield accepted
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def select_and_sign_bodies() -> tuple[dict[str, Any], dict[str, Any]]:
    select = hook_example("order-select-cyanocobalamin.json")
    sign = json.loads(json.dumps(select))
    sign["hook"] = "order-sign"
    sign["hookInstance"] = "0d7f3c52-6a4b-4f1e-8c2d-9b5a7e6f4c3d"
    del sign["context"]["selections"]
    return select, sign


def topics(answer: requests.Response) -> list[str]:
    return [card["source"]["topic"]["code"] for card in answer.json()["cards"]]


def readiness(base: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    answer = requests.get(f"{base}/readyz", timeout=15)
    return answer.status_code, answer.json(), time.monotonic() - started


def messages(server: Served, text: str, level: str | None = None) -> list[str]:
    return [
        entry["message"]
        for entry in server.log_entries()
        if text in entry["message"] and (level is None or entry["level"] == level)
    ]


def call_lines(server: Served, hook_instance: str) -> list[dict[str, Any]]:
    server.wait_for_log(hook_instance)
    return [e for e in server.log_entries() if e.get("hookInstance") == hook_instance and "status" in e]


def assert_clean_log(server: Served) -> None:
    """No stack trace, no 500, no password, whatever failed."""
    text = server.log()
    assert "Traceback" not in text
    assert SECRET not in text
    assert not [e for e in server.log_entries() if e.get("status") == 500]


def replay_check_unavailable(answer: requests.Response) -> bool:
    """The service's own outage, said as one: a 503 OperationOutcome (transient), not a 401 that would send
    the EHR's integrators after their keys."""
    if answer.status_code != 503:
        return False
    issue = answer.json()["issue"][0]
    return issue["code"] == "transient" and "cannot check this token for reuse" in issue["diagnostics"]


def timed_post(base: str, path: str, body: Any, token: str | None = None) -> tuple[requests.Response, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    answer = requests.post(base + path, json=body, headers=headers, timeout=30)
    return answer, time.monotonic() - started


# --- Redis -----------------------------------------------------------------------------------------------


def test_redis_restarted_between_order_select_and_order_sign_with_jwts_required(tmp_path: Path) -> None:
    """Redis holds both the replay store and the run-ahead cache. While it is down, calls fail closed
    (a 503) at once and /readyz says why; once it is back, calls work without a restart of the service, the
    run-ahead entry lost with Redis is computed afresh, and a token used before the restart is refused
    although the restarted Redis no longer holds its jti."""
    signer = ehr_signer()
    select, sign = select_and_sign_bodies()
    with redis_process(tmp_path) as redis_server:
        where = f"Redis at redis://127.0.0.1:{redis_server.port}/0"
        server = Served(
            tmp_path,
            workers=1,
            **serve_requiring_jwts(tmp_path, signer),
            CDS_REDIS_URL=redis_server.url,
            CDS_NOW=HOOKS_NOW,
        )
        try:
            used = signer.token(VIEW)
            assert (
                timed_post(server.base, VIEW, hook_example("patient-view.json"), used)[0].status_code == 200
            )
            selected, _ = timed_post(server.base, SELECT, select, signer.token(SELECT))
            assert selected.status_code == 200 and topics(selected), selected.text
            assert redis_server.keys("cds:run-ahead:*"), "order-select left its result in Redis"

            redis_server.stop()
            refused, took = timed_post(server.base, SIGN, sign, signer.token(SIGN))
            assert replay_check_unavailable(refused), "fails closed while Redis is down"
            assert took < 1.5, f"a refused connection costs milliseconds, not seconds ({took:.2f} s)"
            status, body, _ = readiness(server.base)
            assert status == 503, body
            assert body["reason"].startswith(f"the JWT replay store ({where}) cannot be reached ("), body
            assert requests.get(f"{server.base}/healthz", timeout=5).json() == {"status": "ok"}

            redis_server.start()  # the same port, and empty: every jti and run-ahead entry is gone
            assert readiness(server.base)[:2] == (200, {"status": "ready"})  # the probe dates the loss
            time.sleep(1.1)  # exp is whole seconds

            replayed, _ = timed_post(server.base, VIEW, hook_example("patient-view.json"), used)
            assert replay_check_unavailable(replayed), "a token used before Redis lost its jti is refused"
            # A fresh token that could have been issued before the restart is refused as well, for as long
            # as such a token can live (exp up to 360 s ahead): here its exp is only 300 s ahead.
            assert replay_check_unavailable(timed_post(server.base, SIGN, sign, signer.token(SIGN))[0])
            # One with the longest lifetime accepted was certainly issued after the restart.
            fresh = signer.token(SIGN, exp=int(time.time()) + 360)
            signed, _ = timed_post(server.base, SIGN, sign, fresh)
            assert signed.status_code == 200, signed.text
            assert topics(signed) == topics(selected), "computed afresh, the same cards"
            assert call_lines(server, sign["hookInstance"])[-1]["run_ahead_hit"] is False
            assert timed_post(server.base, SIGN, sign, fresh)[0].status_code == 401, "and used once"
        finally:
            server.stop()
    refusals = messages(server, "cannot check jti for replay")
    assert refusals and all(where.removeprefix("Redis at ") in message for message in refusals), refusals
    lost = messages(server, "lost the ids of tokens", level="ERROR")
    assert len(lost) == 1 and where in lost[0], lost
    assert_clean_log(server)


def test_redis_stopped_between_order_select_and_order_sign_costs_the_run_ahead_hit_only(
    tmp_path: Path,
) -> None:
    """Without client JWTs Redis holds only the run-ahead cache, an optimisation: order-sign is computed
    afresh with the same cards, the log names the Redis it could not use, and the pod stays ready."""
    select, sign = select_and_sign_bodies()
    with redis_process(tmp_path) as redis_server:
        where = f"Redis at redis://127.0.0.1:{redis_server.port}/0"
        server = Served(tmp_path, workers=1, CDS_REDIS_URL=redis_server.url, CDS_NOW=HOOKS_NOW)
        try:
            selected, _ = timed_post(server.base, SELECT, select)
            assert selected.status_code == 200 and topics(selected)
            redis_server.stop()
            signed, took = timed_post(server.base, SIGN, sign)
            assert signed.status_code == 200, signed.text
            assert topics(signed) == topics(selected)
            assert took < 1.5
            assert call_lines(server, sign["hookInstance"])[-1]["run_ahead_hit"] is False
            assert readiness(server.base)[:2] == (200, {"status": "ready"}), (
                "run-ahead never makes a pod unready"
            )

            redis_server.start()
            assert timed_post(server.base, SELECT, select)[0].status_code == 200
            sign["hookInstance"] = "1e8a4d63-7b5c-4a2f-9d3e-0c6b8f7a5d4e"
            signed, _ = timed_post(server.base, SIGN, sign)
            assert topics(signed) == topics(selected)
            assert call_lines(server, sign["hookInstance"])[-1]["run_ahead_hit"] is True, "Redis used again"
        finally:
            server.stop()
    failures = messages(server, "run-ahead cache")
    failures = [message for message in failures if "failed" in message]
    assert failures and all(where in message for message in failures), failures
    assert_clean_log(server)


@pytest.mark.parametrize("auth", ["required", "off"])
def test_redis_killed_while_calls_are_in_flight(tmp_path: Path, auth: str) -> None:
    """SIGKILL under a stream of concurrent calls: each is answered, quickly, with cards (200) or, where a
    JWT must be checked, with a 503 OperationOutcome; none is a 500."""
    signer = ehr_signer()
    select, sign = select_and_sign_bodies()
    with redis_process(tmp_path) as redis_server:
        settings = {"CDS_REDIS_URL": redis_server.url, "CDS_NOW": HOOKS_NOW, "CDS_AUTH": auth}
        if auth == "required":
            settings |= serve_requiring_jwts(tmp_path, signer)
        server = Served(tmp_path, workers=2, **settings)

        def one(index: int) -> tuple[int, float, bool]:
            path, body = (SELECT, select) if index % 2 else (SIGN, sign)
            token = signer.token(path) if auth == "required" else None
            answer, took = timed_post(server.base, path, body, token)
            return answer.status_code, took, bool(answer.status_code == 200 and topics(answer))

        try:
            with ThreadPoolExecutor(max_workers=6) as pool:
                futures = [pool.submit(one, index) for index in range(120)]
                time.sleep(0.3)
                redis_server.stop(signal.SIGKILL)
                results = [future.result() for future in futures]
            after = [one(index) for index in range(4)]
        finally:
            server.stop()
    allowed = {200} if auth == "off" else {200, 503}
    assert {status for status, _, _ in results} <= allowed, results
    assert all(with_cards for status, _, with_cards in results if status == 200)
    assert max(took for _, took, _ in results) < 5, results
    expected = 200 if auth == "off" else 503
    assert [status for status, _, _ in after] == [expected] * 4
    assert_clean_log(server)


def test_a_redis_that_accepts_connections_but_never_answers_costs_a_bounded_time(tmp_path: Path) -> None:
    """A hung Redis (or one behind a stalled network): calls needing the replay store are refused within
    a second, the run-ahead cache costs a fraction of one, and /readyz answers within the probe's 2 s
    timeout, naming the store, rather than being cut off by the kubelet without a reason."""
    signer = ehr_signer()
    select, sign = select_and_sign_bodies()
    with redis_process(tmp_path) as redis_server:
        where = f"Redis at redis://127.0.0.1:{redis_server.port}/0"
        common = {"CDS_REDIS_URL": redis_server.url, "CDS_NOW": HOOKS_NOW}
        (tmp_path / "secured").mkdir()
        (tmp_path / "open").mkdir()
        secured = Served(
            tmp_path / "secured",
            workers=1,
            **serve_requiring_jwts(tmp_path / "secured", signer),
            **common,
        )
        open_server = Served(tmp_path / "open", workers=1, **common)
        try:
            assert timed_post(open_server.base, SELECT, select)[0].status_code == 200
            redis_server.stop()
            with silent_listener(redis_server.port) as accepted:
                refused, took = timed_post(secured.base, SIGN, sign, signer.token(SIGN))
                assert replay_check_unavailable(refused)
                assert took < 1.0, f"the replay store waited {took:.2f} s for a Redis that never answers"
                assert accepted, "the service did reach the silent listener"

                status, body, took = readiness(secured.base)
                assert status == 503, body
                assert body["reason"].startswith(f"the JWT replay store ({where}) cannot be reached ("), body
                assert took < 2.0, f"/readyz took {took:.2f} s: the kubelet gives up after 2 s"

                signed, took = timed_post(open_server.base, SIGN, sign)
                assert signed.status_code == 200 and topics(signed)
                assert took < 1.0, f"the run-ahead cache cost {took:.2f} s"
                assert readiness(open_server.base)[:2] == (200, {"status": "ready"})
        finally:
            secured.stop()
            open_server.stop()
    assert_clean_log(secured)
    assert_clean_log(open_server)


# --- PostgreSQL ------------------------------------------------------------------------------------------


def feedback_item(card: str) -> dict[str, Any]:
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-01-15T09:05:00Z"}


def test_postgres_restarted_between_feedback_posts(tmp_path: Path) -> None:
    """Feedback during the outage is a 503 OperationOutcome saying nothing was stored; the same items sent
    again afterwards are stored, on a new connection, without a restart of the service. Hook calls
    keep their cards throughout and the pod stays in the load balancer: feedback is not what clinicians
    wait for, and every replica shares the one database."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        server = Served(
            tmp_path, workers=1, CDS_FEEDBACK_DB=cluster.url("postgres", password=SECRET), CDS_NOW=HOOKS_NOW
        )
        where = f"PostgreSQL database postgres on {cluster.base}"
        try:
            first, _ = timed_post(server.base, FEEDBACK, {"feedback": [feedback_item("before")]})
            assert first.json() == {"received": 1, "stored": 1}, first.text

            cluster.stop()
            during, took = timed_post(server.base, FEEDBACK, {"feedback": [feedback_item("during")]})
            assert during.status_code == 503, during.text
            assert during.headers["Content-Type"].startswith("application/fhir+json")
            (issue,) = during.json()["issue"]
            assert (issue["severity"], issue["code"]) == ("error", "transient")
            assert "nothing was stored" in issue["diagnostics"]
            assert took < 5
            hook, _ = timed_post(server.base, VIEW, hook_example("patient-view.json"))
            assert hook.status_code == 200 and hook.json()["cards"], "cards do not wait for feedback"
            status, body, _ = readiness(server.base)
            assert status == 200, body
            assert body["status"] == "ready"
            assert body["degraded"][0].startswith(f"the feedback store ({where}) is not writable ("), body

            cluster.start()
            again, _ = timed_post(server.base, FEEDBACK, {"feedback": [feedback_item("during")]})
            assert again.json() == {"received": 1, "stored": 1}, again.text
            resent, _ = timed_post(server.base, FEEDBACK, {"feedback": [feedback_item("before")]})
            assert resent.json() == {"received": 1, "stored": 0}
            assert readiness(server.base)[:2] == (200, {"status": "ready"})
        finally:
            server.stop()
    finally:
        cluster.remove()
    assert messages(server, f"feedback not stored: {where} is unavailable")
    assert_clean_log(server)


# --- SQLite on a disk that fills up -------------------------------------------------------------------------


def test_sqlite_feedback_on_a_full_disk_is_a_503_and_cards_are_still_served(tmp_path: Path) -> None:
    """The feedback file on its own tiny file system, filled while the service runs. (Remounting it
    read-only is refused while the service holds the file open for writing, so that case is not made.)"""
    with tiny_filesystem(1024) as disk:
        database = disk / "feedback.sqlite3"
        server = Served(tmp_path, workers=1, CDS_FEEDBACK_DB=str(database), CDS_NOW=HOOKS_NOW)
        try:
            first, _ = timed_post(server.base, FEEDBACK, {"feedback": [feedback_item("before")]})
            assert first.json() == {"received": 1, "stored": 1}
            fill(disk)
            big = {"feedback": [feedback_item(f"card-{i}-" + "x" * 200) for i in range(1000)]}
            refused, _ = timed_post(server.base, FEEDBACK, big)
            assert refused.status_code == 503, refused.text
            (issue,) = refused.json()["issue"]
            assert (issue["code"], "nothing was stored" in issue["diagnostics"]) == ("transient", True)
            hook, _ = timed_post(server.base, VIEW, hook_example("patient-view.json"))
            assert hook.status_code == 200 and hook.json()["cards"]
            # The pod's own disk: only this pod leaves the load balancer, saying why. A write transaction
            # that writes nothing still begins on a full disk, so readiness asks the file system.
            status, body, _ = readiness(server.base)
            assert status == 503, body
            assert body["reason"].startswith(f"the feedback store (SQLite file {database}) is not writable (")
            assert "free on the file system holding it" in body["reason"]
            time.sleep(1)  # the issued-card writer tries its batch
        finally:
            server.stop()
    assert messages(server, f"feedback not stored: SQLite file {database} is unavailable")
    assert_clean_log(server)
