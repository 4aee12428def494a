"""`cds-service serve` (gunicorn master and workers) as a real process on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, stop, wait_until_answers

COMMAND = str(Path(sys.executable).with_name("cds-service"))
HOOKS = Path(__file__).resolve().parents[2] / "hooks"
HOOKS_NOW = "2026-01-15T09:00:00Z"
START_TIMEOUT_S = 60
STOP_GRACE_S = 40


def clean_env(**settings: str) -> dict[str, str]:
    """The test's environment without stray service settings, plus the given ones."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CDS_") and key not in ("PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY")
    }
    return env | settings


def hook_example(name: str) -> dict[str, Any]:
    return json.loads((HOOKS / name).read_text())


def serve_to_its_end(workdir: Path, *arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`cds-service serve ARGUMENTS` run until it exits, for a start the service must refuse before any
    worker starts; its stores and metric files are under ``workdir``, where a test can see that nothing
    was opened."""
    stores = {
        "CDS_FEEDBACK_DB": str(workdir / "feedback.sqlite3"),
        "CDS_STATE_DB": str(workdir / "state.sqlite3"),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
    }
    return subprocess.run(
        [COMMAND, "serve", *arguments],
        env=clean_env(**(stores | settings)),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )


class Served:
    """One server started with ``start_new_session``, its stores and metrics under ``workdir``.

    Authentication is off unless ``settings`` says otherwise (``CDS_AUTH="required"``).
    """

    def __init__(
        self,
        workdir: Path,
        workers: int = 2,
        threads: int | None = None,
        *,
        port: int | None = None,
        **settings: str,
    ) -> None:
        """``port``: for a test that must name the URL in the settings (``CDS_PUBLIC_BASE_URL``)."""
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_parent = workdir / "metrics"
        defaults = {
            "CDS_AUTH": "off",
            "CDS_FEEDBACK_DB": str(workdir / "feedback.sqlite3"),
            "CDS_STATE_DB": str(workdir / "state.sqlite3"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_parent),
        }
        env = clean_env(**(defaults | settings))
        command = [
            COMMAND,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        if threads is not None:
            command += ["--threads", str(threads)]
        self.log_path = workdir / f"serve-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until_answers(
                f"{self.base}/healthz",
                self.process,
                name="cds-service serve",
                timeout_s=START_TIMEOUT_S,
                log=self.log_path,
            )
        except RuntimeError:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        """The log's JSON lines, parsed (gunicorn's own lines before logging is configured are not JSON)."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def wait_for_log(self, text: str, timeout_s: float = 5) -> None:
        """Give a worker time to write the line of a call it has already answered."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log() and time.monotonic() < deadline:
            time.sleep(0.05)

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.metrics_parent.glob("cds-metrics-*"))

    def terminate(self) -> None:
        """SIGTERM to the gunicorn master only, as Kubernetes and Docker send it."""
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the master and every worker at once, as a crashed machine stops them."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop(self.process, grace_s=STOP_GRACE_S)
