"""A Unix-socket forwarder that holds back what the client sends, so a test can count round trips.

The private PostgreSQL cluster of the tests answers in tens of microseconds, where one round trip more or
less per row cannot be told from noise; a database across a network answers in about a millisecond. Put
between a client and the server's socket, this forwarder waits ``delay_s`` before passing on each piece the
client writes: a conversation of N round trips then takes at least N × ``delay_s``, which a test can bound.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType


class SlowUnixLink:
    """Listens at ``directory/name`` and forwards every connection to the socket at ``target``."""

    def __init__(self, target: Path, name: str, delay_s: float) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="cds-slow-"))
        self._path = self.directory / name
        self._target = target
        self._delay_s = delay_s
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self._path))
        self._listener.listen(16)
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()

    def __enter__(self) -> SlowUnixLink:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._path.unlink(missing_ok=True)
        self.directory.rmdir()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(str(self._target))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self._delay_s), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        try:
            while chunk := source.recv(65536):
                if delay_s:
                    time.sleep(delay_s)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
