"""Raw HTTP/1.1 over a socket, for tests of what a real server does with bytes no HTTP library sends."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def reason(self) -> str:
        outcome = json.loads(self.body)
        assert outcome["resourceType"] == "OperationOutcome", outcome
        return outcome["issue"][0]["diagnostics"]


def chunked(body: bytes, size: int | None = None) -> bytes:
    """``body`` in chunked transfer coding: one chunk, or chunks of ``size`` bytes."""
    size = size or max(len(body), 1)
    pieces = (body[start : start + size] for start in range(0, len(body), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def exchange(port: int, request: bytes, *, timeout_s: float = 10) -> bytes:
    """Send ``request``, close the sending side (so a keep-alive server answers and then sees the end),
    and return everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def answers(raw: bytes) -> list[Answer]:
    """The responses in ``raw``, in order, each framed by its Content-Length (1xx have no body)."""
    found = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        assert separator, f"not an HTTP response: {raw[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1."), status_line
        headers = {name.strip().lower(): value.strip() for name, value in (x.split(":", 1) for x in lines)}
        status = int(status_line.split()[1])
        length = 0 if status < 200 or status in (204, 304) else int(headers["content-length"])
        found.append(Answer(status, headers, rest[:length]))
        raw = rest[length:]
    return found


class Connection:
    """One client connection read a response at a time, for exchanges that must wait on the server: send a
    head, see what comes back (a 100 Continue, a final status), then decide what to send next."""

    def __init__(self, port: int, *, timeout_s: float = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._pending = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_answer(self) -> Answer:
        """The next response (a 1xx included), waiting for it up to the socket's timeout."""
        while b"\r\n\r\n" not in self._pending:
            self._receive()
        head = self._pending.partition(b"\r\n\r\n")[0]
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, value in (x.split(":", 1) for x in lines)}
        status = int(status_line.split()[1])
        length = 0 if status < 200 or status in (204, 304) else int(headers["content-length"])
        start = len(head) + 4
        while len(self._pending) < start + length:
            self._receive()
        body, self._pending = self._pending[start : start + length], self._pending[start + length :]
        return Answer(status, headers, body)

    def closed_by_server(self) -> bool:
        """Whether the server ends the connection (a reset counts) within the socket's timeout, with
        nothing more to read. Bytes sent meanwhile are kept for next_answer and make the answer False."""
        if self._pending:
            return False
        try:
            received = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        self._pending += received
        return not received

    def _receive(self) -> None:
        received = self.sock.recv(65536)
        if not received:
            raise ConnectionError(f"the server closed the connection; unanswered: {self._pending[:200]!r}")
        self._pending += received
