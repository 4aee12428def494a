"""The served log handler: INFO lines written in batches by a background thread, warnings at once, in
order, and nothing lost or repeated on close or fork."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from cds_service.batched_log import BatchingStreamHandler


class RecordingStream(io.StringIO):
    """Remembers which thread made each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[str] = []

    def write(self, text: str) -> int:
        self.writers.append(threading.current_thread().name)
        return super().write(text)


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger(f"test.batched.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def attach(log: logging.Logger, stream: io.TextIOBase, interval_s: float = 0.05) -> BatchingStreamHandler:
    handler = BatchingStreamHandler(stream, interval_s=interval_s)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_info_lines_are_written_in_one_batch_by_the_writer_thread(logger: logging.Logger) -> None:
    stream = RecordingStream()
    handler = attach(logger, stream, interval_s=0.3)
    for n in range(50):
        logger.info("call %d", n)
    assert stream.getvalue() == ""
    wait_for(lambda: stream.getvalue().count("\n") == 50)
    assert stream.getvalue().splitlines() == [f"INFO call {n}" for n in range(50)]
    assert stream.writers == ["log-writer"]
    handler.close()


def test_a_warning_is_written_at_once_after_the_lines_before_it(logger: logging.Logger) -> None:
    stream = RecordingStream()
    handler = attach(logger, stream, interval_s=60)
    logger.info("first")
    logger.warning("second")
    assert stream.getvalue().splitlines() == ["INFO first", "WARNING second"]
    assert stream.writers == [threading.current_thread().name]
    handler.close()


def test_close_writes_what_is_buffered(logger: logging.Logger) -> None:
    stream = RecordingStream()
    handler = attach(logger, stream, interval_s=60)
    logger.info("last words")
    handler.close()
    assert stream.getvalue() == "INFO last words\n"


def test_a_fork_neither_repeats_nor_loses_lines(logger: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    with path.open("a", buffering=1) as stream:
        handler = attach(logger, stream, interval_s=60)
        logger.info("before the fork")
        pid = os.fork()
        if pid == 0:  # the child: its own line, written when it closes the handler
            try:
                logger.info("from the child")
                handler.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        logger.info("from the parent")
        handler.close()
    lines = path.read_text().splitlines()
    assert sorted(lines) == ["INFO before the fork", "INFO from the child", "INFO from the parent"]
    assert lines[0] == "INFO before the fork"


def test_a_broken_stream_does_not_raise_into_the_caller(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = io.StringIO()
    handler = attach(logger, stream, interval_s=60)
    stream.close()
    logger.info("goes nowhere")
    logger.warning("nor does this")
    handler.close()
    assert "could not write 2 log lines" in capsys.readouterr().err
