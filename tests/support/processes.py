"""Servers the tests start as child processes: a free loopback port, waiting until one answers, stopping it.

Every server a test starts must be reaped even when the test fails, and a server that dies while starting
must fail the test at once with its log rather than after the whole start timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests


def free_port() -> int:
    """A loopback port nothing listens on right now (for a child that binds it itself, or for a refusal)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answers(
    url: str, process: subprocess.Popen, *, name: str, timeout_s: float, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer {url} within {timeout_s} s")


def stop(process: subprocess.Popen, *, grace_s: float) -> None:
    """SIGTERM, as an orchestrator stops a server; SIGKILL after ``grace_s``, to the whole process group
    when the server leads one (``start_new_session``), so no worker outlives the test."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=10)
