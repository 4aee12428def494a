"""A loopback listener that never accepts: the kernel drops new SYNs once its accept queue is full.

That is what a server looks like behind a firewall that drops packets, or when it is overloaded: a connect
neither succeeds nor fails until the client's own timeout, which is exactly what these tests measure.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def unaccepting_port() -> Iterator[int]:
    """The port of such a listener on 127.0.0.1 (Linux only: elsewhere the test is skipped)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("relies on Linux dropping SYNs to a listener whose accept queue is full")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    time.sleep(0.05)
    try:
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()
