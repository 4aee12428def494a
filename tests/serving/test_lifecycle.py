"""A real `cds-service serve` across the signals an operator or a terminal sends it.

SIGTERM and the metrics of killed workers have their own files (test_observability_shutdown.py,
test_metrics_dead_workers.py, test_served.py); here: Ctrl-C and SIGQUIT, SIGHUP under load, a worker killed
or stalled, and starts that race an earlier server.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.observability import CALL_LOGGER
from tests.auth.auth_support import Signer, ec_p384_key, ehr_signer, serve_requiring_jwts, write_clients
from tests.serving.test_metrics_dead_workers import scraped, wait_for_workers, worker_pids
from tests.support.delay_proxy import DelayProxy
from tests.support.fake_ehr_fhir import FakeEhrFhir
from tests.support.served import HOOKS_NOW, Served, hook_example

pytestmark = pytest.mark.integration

VIEW = "/cds-services/b12-iron-patient-view"
# How long the slow FHIR server holds each query: long enough for a signal to arrive while calls wait.
FHIR_DELAY_S = 3.0
# Well inside gunicorn's 25 s graceful timeout, after which the master SIGKILLs what is left.
QUICK_EXIT_S = 15


class SlowEhr:
    """A served instance whose FHIR server answers its Observation search only after FHIR_DELAY_S."""

    def __init__(self, served: Served, fhir_server: str, proxy: DelayProxy) -> None:
        self.served = served
        self.fhir_server = fhir_server
        self.proxy = proxy
        self.answers: dict[str, Any] = {}

    def call(self, slow: bool) -> None:
        """One patient-view call; a slow one has its labs fetched from the FHIR server."""
        body = hook_example("patient-view.json")
        body["hookInstance"] = str(uuid.uuid4())
        if slow:
            del body["prefetch"]["b12IronLabs"]
            body["fhirServer"] = self.fhir_server
        try:
            answer = requests.post(f"{self.served.base}{VIEW}", json=body, timeout=60)
            self.answers[body["hookInstance"]] = answer.status_code, len(answer.json()["cards"])
        except (requests.RequestException, ValueError) as error:
            self.answers[body["hookInstance"]] = type(error).__name__, 0

    def start_slow_calls(self, count: int) -> list[threading.Thread]:
        """``count`` slow calls, returned once each is waiting on the FHIR server."""
        callers = [threading.Thread(target=self.call, args=(True,)) for _ in range(count)]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 30
        while len(self.proxy.seen) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.proxy.seen) == count, "the slow calls did not reach the FHIR server"
        return callers


@contextmanager
def served_with_slow_ehr(workdir: Path, delay_s: float = FHIR_DELAY_S, **settings: str) -> Iterator[SlowEhr]:
    with FakeEhrFhir() as fhir, DelayProxy(fhir.origin, delay_s=delay_s) as proxy:
        labs = hook_example("patient-view.json")["prefetch"]["b12IronLabs"]["entry"]
        fhir.add_search("Observation", [entry["resource"] for entry in labs], page_size=10)
        fhir_server = proxy.url("/baseR4")
        served = Served(
            workdir,
            workers=2,
            threads=4,
            CDS_NOW=HOOKS_NOW,
            CDS_ALLOWED_FHIR_SERVERS=fhir_server,
            CDS_FHIR_BUDGET_MS=str(int(delay_s * 1000) + 3000),
            **settings,
        )
        try:
            yield SlowEhr(served, fhir_server, proxy)
        finally:
            served.stop()


def issued_rows(workdir: Path) -> int:
    with sqlite3.connect(workdir / "feedback.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM cds_issued_card").fetchone()[0]


def assert_every_call_finished_and_recorded(served: Served, ehr: SlowEhr, workdir: Path) -> None:
    """Every call answered 200, one call line each, its cards recorded, and a log of JSON lines only."""
    assert {status for status, _ in ehr.answers.values()} == {200}, ehr.answers
    text = served.log()
    assert [line for line in text.splitlines() if not line.startswith("{")] == [], "a traceback in the log"
    lines = Counter(e["hookInstance"] for e in served.log_entries() if e["logger"] == CALL_LOGGER)
    assert set(lines) == set(ehr.answers) and set(lines.values()) == {1}
    assert issued_rows(workdir) == sum(cards for _, cards in ehr.answers.values())


def test_ctrl_c_lets_calls_being_handled_finish_and_exits_0(tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to every process of the group, and the master then sends each
    worker SIGQUIT, up to a second later (it reads its signals from a queue): two quick-stop signals per
    worker. Before the worker took only the first, the second ran gunicorn's handler again inside the
    first: in the thread pool's shutdown it waited for good on the lock the first held (the master
    SIGKILLed the worker 25 s later, with its call lines and issued-card records), and later it raised
    SystemExit again in the middle of the worker's exit, which cut off the call still being handled."""
    with served_with_slow_ehr(tmp_path) as ehr:
        served = ehr.served
        workers = wait_for_workers(served, set())  # both booted: a worker still booting just exits
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(ehr.call, [False] * 12))
        callers = ehr.start_slow_calls(2)
        stopped_at = time.monotonic()
        os.killpg(served.process.pid, signal.SIGINT)
        time.sleep(0.3)  # the master's SIGQUIT, as late as it may come, while the workers are exiting
        for pid in workers:
            with_exited_ignored(pid, signal.SIGQUIT)
        assert served.process.wait(timeout=QUICK_EXIT_S + 10) == 0
        assert time.monotonic() - stopped_at < QUICK_EXIT_S, "a worker was left to the graceful timeout"
        for caller in callers:
            caller.join(timeout=30)
    assert_every_call_finished_and_recorded(served, ehr, tmp_path)
    exits = [e for e in served.log_entries() if str(e["message"]).startswith("Worker exiting")]
    assert len(exits) == len(workers)
    assert served.metrics_dirs() == []


def with_exited_ignored(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` unless it has already exited."""
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def test_after_sigterm_new_connections_are_refused_at_once_and_a_new_server_may_take_the_port(
    tmp_path: Path,
) -> None:
    """SIGTERM "stops accepting connections": the master closed its listening socket, but each worker
    kept its copy open until its last call had finished, so the kernel still completed new connections
    and queued them where no one would accept them. A client (or a load balancer still sending there)
    waited until the last call ended, up to the graceful timeout, and was then reset; a server started
    on the same port meanwhile (a restart by hand) was refused it. Now the connection is refused at once,
    and the new server starts, over the same stores and metrics directory, while the old call finishes."""
    with served_with_slow_ehr(tmp_path, delay_s=10) as ehr:
        old = ehr.served
        callers = ehr.start_slow_calls(1)
        old.terminate()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and refused_or_none(old.base) is None:
            time.sleep(0.05)
        assert refused_or_none(old.base) == "refused", "a new connection is left waiting"
        new = Served(tmp_path, workers=1, port=old.port, CDS_NOW=HOOKS_NOW)
        try:
            assert old.process.poll() is None, "the old server's call was still being handled"
            assert requests.get(f"{new.base}/readyz", timeout=10).status_code == 200
            for caller in callers:
                caller.join(timeout=30)
            assert old.process.wait(timeout=30) == 0
            assert [status for status, _ in ehr.answers.values()] == [200]
            assert len(new.metrics_dirs()) == 1
            body = hook_example("patient-view.json")
            assert requests.post(f"{new.base}{VIEW}", json=body, timeout=30).status_code == 200
        finally:
            new.stop()
    assert new.process.returncode == 0
    assert issued_rows(tmp_path) == 2


def refused_or_none(base: str) -> str | None:
    """ "refused" when a connection to ``base`` is refused at once; None when it is accepted or waits."""
    try:
        requests.get(f"{base}/healthz", timeout=(1, 1))
    except requests.ConnectionError as error:
        if isinstance(error.__context__, ConnectionRefusedError) or "refused" in str(error):
            return "refused"
    except requests.Timeout:
        pass
    return None


@pytest.mark.parametrize("stop", ["SIGTERM to the master", "Ctrl-C"])
def test_a_stopped_server_leaves_its_feedback_store_whole_in_its_file(tmp_path: Path, stop: str) -> None:
    """After a stop the SQLite feedback file holds everything, its -wal empty or gone: a file copied once
    the service has stopped (a backup, a move to another host) is the whole store. Each worker left its
    connection open at exit, so SQLite never checkpointed, and the issued-card records and feedback (the
    tables themselves, on a first run) were only in the -wal file."""
    served = Served(tmp_path, workers=2, threads=4, CDS_NOW=HOOKS_NOW)
    try:
        cards = []
        for _ in range(6):
            answer = requests.post(f"{served.base}{VIEW}", json=hook_example("patient-view.json"), timeout=30)
            cards += [card["uuid"] for card in answer.json()["cards"]]
        feedback = {"card": cards[0], "outcome": "overridden", "outcomeTimestamp": "2026-01-15T09:05:00Z"}
        posted = requests.post(f"{served.base}{VIEW}/feedback", json={"feedback": [feedback]}, timeout=30)
        assert posted.status_code == 200, posted.text
        if stop == "Ctrl-C":
            os.killpg(served.process.pid, signal.SIGINT)
        else:
            served.terminate()
        assert served.process.wait(timeout=30) == 0
    finally:
        served.stop()
    wal = tmp_path / "feedback.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    copy = tmp_path / "copy" / "feedback.sqlite3"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "feedback.sqlite3").read_bytes())
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT COUNT(*) FROM cds_issued_card").fetchone()[0] == len(cards)
        assert db.execute("SELECT COUNT(*) FROM cds_feedback").fetchone()[0] == 1


def test_workers_killed_outright_are_replaced_and_a_token_used_before_stays_refused(tmp_path: Path) -> None:
    """Both workers SIGKILLed (the out-of-memory killer) just after answering a signed call: the master
    starts new ones, which serve /readyz and /metrics with the dead workers' counts, refuse the token used
    before the kill (the SQLite replay store committed its id before the answer went out) and accept a
    fresh one."""
    signer = ehr_signer()
    served = Served(
        tmp_path, workers=2, threads=2, CDS_NOW=HOOKS_NOW, **serve_requiring_jwts(tmp_path, signer)
    )
    try:
        path = "/cds-services/b12-iron-patient-view"
        body = hook_example("patient-view.json")
        token = signer.token(path)
        before = wait_for_workers(served, set())

        def call(bearer: str) -> int:
            headers = {"Authorization": f"Bearer {bearer}"}
            return requests.post(f"{served.base}{path}", json=body, headers=headers, timeout=30).status_code

        assert call(token) == 200
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        wait_for_workers(served, before)
        assert requests.get(f"{served.base}/readyz", timeout=10).status_code == 200
        assert call(token) == 401, "a token used before the kill was accepted again"
        assert call(signer.token(path)) == 200
        assert scraped(served) == (2.0, 2.0)
    finally:
        served.stop()
    assert served.process.returncode == 0


def test_sighup_reads_the_clients_file_again_and_refuses_one_with_an_error(tmp_path: Path) -> None:
    """SIGHUP starts new workers, which read CDS_CLIENTS again: a client added to the file is trusted
    after it. A file with an error (an operator's typo before the reload) made every new worker fail to
    boot, and gunicorn then stopped the whole server, the workers that were serving included (exit 3). It
    is now checked before the reload; a bad one is refused with one ERROR line and the workers keep
    serving with what they read before."""
    signer, newcomer = ehr_signer(), Signer("https://other-ehr.example.test", "k2", "ES384", ec_p384_key())
    settings = serve_requiring_jwts(tmp_path, signer)
    served = Served(tmp_path, workers=2, threads=2, CDS_NOW=HOOKS_NOW, **settings)
    try:

        def call(by: Signer) -> int:
            headers = {"Authorization": f"Bearer {by.token(VIEW)}"}
            answer = requests.post(
                f"{served.base}{VIEW}", json=hook_example("patient-view.json"), headers=headers, timeout=30
            )
            return answer.status_code

        first = wait_for_workers(served, set())
        Path(settings["CDS_CLIENTS"]).write_text('{"clients": [{"jwks": {"keys": []}}]}')
        served.process.send_signal(signal.SIGHUP)
        served.wait_for_log("reload refused", timeout_s=30)
        assert served.process.poll() is None, "a bad clients file stopped the server"
        assert [call(signer) for _ in range(4)] == [200] * 4
        assert worker_pids(served.process.pid) == first
        [refusal] = [e for e in served.log_entries() if "reload refused" in str(e["message"])]
        assert (
            refusal["level"] == "ERROR"
            and "CDS_CLIENTS" in refusal["message"]
            and "'iss'" in refusal["message"]
        )

        write_clients(
            tmp_path, [{"iss": s.iss, "jwks": {"keys": [s.public_jwk()]}} for s in (signer, newcomer)]
        )
        assert call(newcomer) == 401
        served.process.send_signal(signal.SIGHUP)
        wait_for_workers(served, first)
        assert [call(newcomer) for _ in range(4)] == [200] * 4
    finally:
        served.stop()
    assert served.process.returncode == 0
