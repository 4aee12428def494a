"""A loopback server that answers as slowly as it can without tripping a per-read timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def dripping_server(prefix: bytes, *, every_s: float = 0.1) -> Iterator[tuple[str, list[float]]]:
    """A server whose every answer is ``prefix`` then one byte per ``every_s`` (each wait within a read
    timeout), for up to a minute.

    Yields its base URL and, per connection, how long it was held before the client let it go."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[float] = []
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        started = time.monotonic()
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(prefix[:20])
                for byte in [prefix[i : i + 1] for i in range(20, len(prefix))] + [b" "] * 600:
                    if stop.wait(every_s):
                        return
                    conn.sendall(byte)
            except OSError:
                held.append(time.monotonic() - started)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", held
    finally:
        stop.set()
        listener.close()
