"""`cds-service serve` as a real process on a free loopback port, for the serving tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

COMMAND = str(Path(sys.executable).with_name("cds-service"))
HOOKS = Path(__file__).resolve().parents[2] / "hooks"
HOOKS_NOW = "2026-01-15T09:00:00Z"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


class Served:
    """One server process (gunicorn master and its workers) started with ``start_new_session``."""

    def __init__(self, workdir: Path, workers: int = 2, **settings: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_parent = workdir / "metrics"
        env = clean_env(
            CDS_AUTH="off",
            CDS_NOW=HOOKS_NOW,
            CDS_FEEDBACK_DB=str(workdir / "feedback.sqlite3"),
            CDS_STATE_DB=str(workdir / "state.sqlite3"),
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics_parent),
            **settings,
        )
        self.log_path = workdir / f"serve-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [COMMAND, "serve", "--port", str(self.port), "--workers", str(workers), "--threads", "4"],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"serve did not become healthy within {START_TIMEOUT_S} s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.metrics_parent.glob("cds-metrics-*"))

    def terminate(self) -> None:
        """SIGTERM to the gunicorn master only, as Kubernetes and Docker send it."""
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
