"""Metrics directories of servers that are gone are removed when the next server starts.

The gunicorn master removes its directory when it exits, not when it is killed outright (a container's
PID 1 killed for memory): the restarted container finds the old directory in the same ``/tmp``, an
``emptyDir`` that Kubernetes keeps across container restarts, in memory. Each such restart left one more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cds_service import observability
from tests.support.served import Served, clean_env

# Makes a directory as `serve` does, prints it, then: exits at once, waits (holding it), or forks a child
# that keeps holding it and exits itself (a master killed while its workers still run).
_OWNER = textwrap.dedent(
    """
    import os, sys, time
    from cds_service.observability import fresh_metrics_dir

    directory = fresh_metrics_dir(sys.argv[1])
    (open(os.path.join(directory, "counter_1.db"), "wb")).write(b"x" * 1000)
    if sys.argv[2] == "fork" and os.fork() == 0:
        print(directory, os.getpid(), flush=True)
        time.sleep(60)
        os._exit(0)
    if sys.argv[2] != "fork":
        print(directory, os.getpid(), flush=True)
    if sys.argv[2] == "wait":
        time.sleep(60)
    os._exit(0)  # as a SIGKILL leaves it: nothing cleaned up
    """
)


def owner(parent: Path, mode: str) -> tuple[subprocess.Popen, Path, int]:
    """The owner process, its directory, and the pid of the process that holds the directory."""
    process = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(parent), mode], stdout=subprocess.PIPE, text=True, env=clean_env()
    )
    assert process.stdout is not None
    directory, holder = process.stdout.readline().split()
    return process, Path(directory), int(holder)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has closed its files, so its locks are released)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_new_server_removes_only_the_directories_whose_server_is_gone(tmp_path: Path) -> None:
    gone, gone_dir, _ = owner(tmp_path, "exit")
    gone.wait(timeout=30)
    unlocked = tmp_path / "cds-metrics-older-version"
    unlocked.mkdir()
    unrelated = tmp_path / "other"
    unrelated.mkdir()
    assert gone_dir.is_dir()
    running, running_dir, _ = owner(tmp_path, "wait")
    assert not gone_dir.exists(), "the next server's start removes it"
    orphaned_master, workers_dir, worker = owner(tmp_path, "fork")
    orphaned_master.wait(timeout=30)
    try:
        assert observability.remove_abandoned_metrics_dirs(str(tmp_path)) == []
        assert running_dir.is_dir() and (running_dir / "counter_1.db").exists()
        assert workers_dir.is_dir(), "its master is gone, but a worker still writes there"
        assert unlocked.is_dir() and unrelated.is_dir()
    finally:
        running.kill()
        running.wait(timeout=10)
        os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    # Both killed now: the next start removes their directories, and still nothing else.
    removed = observability.remove_abandoned_metrics_dirs(str(tmp_path))
    assert removed == sorted([str(running_dir), str(workers_dir)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cds-metrics-older-version", "other"]


def test_fresh_metrics_dir_makes_a_new_held_directory(tmp_path: Path) -> None:
    process, first, _ = owner(tmp_path, "wait")
    try:
        second = Path(observability.fresh_metrics_dir(str(tmp_path / "nested")))
        assert second.parent == tmp_path / "nested" and second.name.startswith("cds-metrics-")
        assert [p.name for p in second.iterdir()] == [".owner.lock"]
        assert observability.remove_abandoned_metrics_dirs(str(second.parent)) == []
        assert first.is_dir()
    finally:
        process.kill()
        process.wait(timeout=10)


def test_serve_removes_the_directory_of_a_server_killed_outright(tmp_path: Path) -> None:
    """`cds-service serve` itself: a server SIGKILLed with its workers leaves its directory; the next one
    started over the same parent removes it and keeps only its own."""
    first = Served(tmp_path, workers=1)
    try:
        (left,) = first.metrics_dirs()
    finally:
        first.kill()
    assert left.exists(), "a server killed outright cannot remove its own directory"
    second = Served(tmp_path, workers=1)
    try:
        assert not left.exists()
        assert len(second.metrics_dirs()) == 1
    finally:
        second.stop()
    assert second.metrics_dirs() == [], "a server stopped gracefully removes its own"
