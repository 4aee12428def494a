"""A log handler that writes lines in batches, off the request threads.

Under load every hook call writes one INFO line. With ``logging.StreamHandler`` that is one ``write``
system call per call, made while the handler's lock is held, so the request threads of a worker queue
behind each other's writes; profiling a served worker put a sixth of its time there. This handler only
formats the line and appends it to a list on the calling thread. A background thread writes what has
gathered, in one call, a few times a second. Records of WARNING and above are written at once, together
with everything before them, so an error is never held back and lines never change order.

The price: when a worker is killed outright (SIGKILL, an out-of-memory kill), up to ``interval_s`` of
INFO lines are lost. A normal exit or a graceful shutdown writes everything, and so does a ``fork``
(gunicorn's master forks workers): buffered lines are written before it so no child inherits them.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections import deque
from typing import TextIO

FLUSH_INTERVAL_S = 0.2
# Every handler of the process, to write out before a fork and at exit.
_handlers: weakref.WeakSet[BatchingStreamHandler] = weakref.WeakSet()


class BatchingStreamHandler(logging.Handler):
    """Like ``logging.StreamHandler`` (stderr by default), but writes INFO lines in periodic batches."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self._lines: deque[str] = deque()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        # deque.append is atomic: the request thread neither waits for a write nor wakes the writer.
        self._lines.append(line)
        if record.levelno >= logging.WARNING:
            self.flush()
        else:
            self._ensure_writer()

    def flush(self) -> None:
        """Write every buffered line now, in one call."""
        with self._write_lock:
            # Only this method removes lines, under the lock; appends meanwhile wait for the next flush.
            chunk = [self._lines.popleft() for _ in range(len(self._lines))]
            if not chunk:
                return
            try:
                self.stream.write("".join(chunk))
                self.stream.flush()
            except Exception:
                # Nowhere left to report it: the same as StreamHandler when its stream is gone.
                if logging.raiseExceptions:
                    sys.stderr.write(f"--- logging: could not write {len(chunk)} log lines ---\n")

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(2 * self.interval_s + 1)
        self.flush()
        super().close()

    def _ensure_writer(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._write_lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._write_periodically, name="log-writer", daemon=True)
            self._thread.start()

    def _write_periodically(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
        self.flush()

    def _after_fork_in_child(self) -> None:
        """The parent's writer thread does not exist here; the next INFO line starts this process's own."""
        self._write_lock = threading.Lock()
        self._thread = None
        self._lines.clear()


def _flush_all() -> None:
    for handler in list(_handlers):
        handler.flush()


def _after_fork_in_child() -> None:
    for handler in list(_handlers):
        handler._after_fork_in_child()


os.register_at_fork(before=_flush_all, after_in_child=_after_fork_in_child)
atexit.register(_flush_all)
