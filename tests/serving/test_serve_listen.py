"""`serve` refuses an address it cannot or should not listen on with one line, before any worker starts.

An empty --host (an unset ``$HOST`` in a start script) reached gunicorn as ":8080", which it binds on every
interface: with CDS_AUTH=off, an unauthenticated service open to the network. A host that does not resolve,
or a port another process holds, gave five of gunicorn's JSON log lines over five seconds and no error.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import free_port
from tests.support.served import serve_to_its_end


def serve(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return serve_to_its_end(tmp_path, *arguments, CDS_AUTH="off")


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error line of click's usage message (usage, hint, blank line, error), as for any bad option."""
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("Usage: cds-service serve") and len(lines) == 4, done.stderr
    assert lines[-1].startswith("Error: Invalid value for '--host'")
    return lines[-1]


@pytest.mark.parametrize("host", ["", " ", "\t"])
def test_an_empty_host_is_a_usage_error_not_every_interface(host: str, tmp_path: Path) -> None:
    line = usage_error(serve(tmp_path, "--host", host, "--port", str(free_port())))
    assert "--host" in line and "empty" in line
    assert "0.0.0.0" in line, "the message says how to ask for every interface on purpose"  # noqa: S104


def test_a_host_that_does_not_resolve_is_a_usage_error(tmp_path: Path) -> None:
    line = usage_error(serve(tmp_path, "--host", "no-such-host.invalid", "--port", str(free_port())))
    assert "no-such-host.invalid" in line


def test_a_port_in_use_stops_serve_at_once_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = serve(tmp_path, "--port", str(port))
    assert done.returncode == 1
    line = one_line(done)
    assert f"127.0.0.1:{port}" in line and "in use" in line
    assert not (tmp_path / "feedback.sqlite3").exists(), "nothing is opened before the check"
