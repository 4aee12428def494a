"""Start-up work for a store that could not be reached when the worker started, done when it first is.

A Redis or PostgreSQL restart must not stop the service: a worker that stopped at start because its store
was briefly away would make gunicorn exit, and Kubernetes restart every replica with a growing back-off
long after the store is back. So a store that cannot be reached at start (and only that: a malformed URL or
a missing package still stops the worker) leaves its start-up work here, logs one warning, and the worker
starts not ready. The next call that needs the store, or the readiness probe, does the work; until then
those calls get what they get during any outage of that store.

Once done, the work is never run again, and the only cost left on a call's path is reading ``done``: no
lock, since a bool read is atomic and ``done`` only ever goes from False to True, after the work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class DeferredStart:
    """The start-up work of one store (``work``), run at most once successfully, by one thread at a time."""

    def __init__(self, store: str, work: Callable[[], None], unavailable: Callable[[str], Exception]) -> None:
        """``store`` names the store and where it is, never a password: it appears in logs and /readyz.
        ``unavailable`` makes the error the store's callers already handle as an outage."""
        self.store = store
        self._work = work
        self._unavailable = unavailable
        self._lock = threading.Lock()
        self._deferred = False
        self.done = False

    def complete(self) -> None:
        """Run the work unless it has succeeded already; its errors reach the caller and leave it pending.

        A thread that arrives while another runs the work waits for that attempt and does not start one of
        its own: if the attempt failed it gets the ``unavailable`` error at once. Otherwise gunicorn's
        threads would queue behind each other's connection timeouts, each waiting for all before it."""
        if self.done:
            return
        if not self._lock.acquire(blocking=False):
            with self._lock:
                pass
            if self.done:
                return
            raise self._unavailable(f"{self.store} could not be reached by the attempt just made")
        try:
            if self.done:
                return
            self._work()
            self.done = True
        finally:
            self._lock.release()
        if self._deferred:
            log.info("%s is reachable now: its start-up work is done", self.store)

    def defer(self, reason: str) -> None:
        """Leave the work for later: the store could not be reached at start (``reason``, without secrets)."""
        self._deferred = True
        log.warning(
            "%s cannot be reached (%s); the worker starts without it and is not ready until it is reached",
            self.store,
            reason,
        )

    def unready(self) -> Exception | None:
        """None once the work is done, trying it now if not (the readiness probe); else why it failed, so
        the probe can tell an operator more than "not ready". Never raises."""
        try:
            self.complete()
        except Exception as error:
            return error
        return None
