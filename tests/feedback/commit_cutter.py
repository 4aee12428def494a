"""A Unix-socket proxy in front of a PostgreSQL server that can lose the answer to a COMMIT.

Armed, it forwards the server's answer to the next COMMIT to nobody: it closes both connections instead,
after the server has committed. That is a connection dropped between the commit and its acknowledgement
(a failover, a network cut, a server killed at that moment), made on demand with a real server. Each
arming cuts one COMMIT; connections opened after it pass everything.

Stalled, it forwards nothing in either direction, on open connections and new ones alike (which it still
accepts): a server that has stopped answering without closing anything, as behind a stalled network.
`release` ends the stall by closing every connection.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

# CommandComplete ('C', length 11, "COMMIT\0"): what the server sends once a COMMIT has been done.
COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"
PG_SOCKET = ".s.PGSQL.5432"


class CommitCutter:
    def __init__(self, server_socket_dir: Path) -> None:
        self._target = str(server_socket_dir / PG_SOCKET)
        self.directory = Path(tempfile.mkdtemp(prefix="cds-cut-"))
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.directory / PG_SOCKET))
        self._listener.listen(16)
        self._armed = threading.Event()
        self._stalled = threading.Event()
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.directory}&port=5432"

    def arm(self) -> None:
        """Lose the server's answer to the next COMMIT that passes."""
        self._armed.set()

    def stall(self) -> None:
        self._stalled.set()

    def release(self) -> None:
        """End a stall: every connection is closed, so whoever waited on one gets an error at once."""
        self._stalled.clear()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self._target)
            self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        try:
            while data := source.recv(65536):
                while self._stalled.is_set():
                    time.sleep(0.01)
                if from_server and COMMIT_DONE in data and self._armed.is_set():
                    self._armed.clear()
                    self.cuts += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> CommitCutter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
