"""A small HTTP proxy on loopback that delays, hangs or drops requests on their way to a real server.

It stands between the service and sekmet to make the network slow in a controlled way: every request
waits ``delay_s`` before it is forwarded, so N queries finishing in about one delay prove they ran side
by side; ``hang`` holds requests without answering until the proxy stops, which is how a stuck EHR
looks; ``reset_next`` closes the connection on the next N requests without a reply, as a server
restarting or a middlebox dropping an idle keep-alive connection would.

Every request is recorded (method, path, whether it carried an Authorization header and which one), so
tests can count what reached the server. Absolute URLs in response bodies that name the upstream are
rewritten to name the proxy, so paging links lead back through it.
"""

from __future__ import annotations

import http.client
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
}


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server that takes a burst of parallel connections.

    The standard library's listen backlog is 5: the sixth of eight simultaneous connections would have
    its SYN dropped and retried a second later, which looks exactly like a slow server.
    """

    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-exchange is what many tests provoke (the service giving up on a
        slow or oversized answer): not worth the standard library's traceback in the test output."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    authorization: str | None


class DelayProxy:
    """Forward to ``upstream`` (an origin such as ``http://127.0.0.1:8090``) after a delay."""

    def __init__(self, upstream: str, *, delay_s: float = 0.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.upstream_origin = f"http://{parts.hostname}:{parts.port}"
        self.delay_s = delay_s
        self.hang = False
        self._resets_left = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._seen: list[SeenRequest] = []
        self._httpd = LoopbackHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.port = self._httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True, name=f"proxy-{self.port}"
        )

    def start(self) -> DelayProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "") -> str:
        """The proxy's URL for an upstream path, e.g. ``proxy.url("/fhir")``."""
        return f"{self.origin}{path}"

    def reset_next(self, count: int = 1) -> None:
        with self._lock:
            self._resets_left = count

    @property
    def seen(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def _record(self, request: SeenRequest) -> bool:
        """Record a request; True when it should be answered by dropping the connection."""
        with self._lock:
            self._seen.append(request)
            if self._resets_left > 0:
                self._resets_left -= 1
                return True
            return False

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle's algorithm on, the body would wait
            # for the client's delayed ACK (40 ms on Linux) and every answer would look slow.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read ``proxy.seen`` instead."""

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                seen = SeenRequest(self.command, self.path, self.headers.get("Authorization"))
                if proxy._record(seen):
                    self.close_connection = True
                    self.connection.close()
                    return
                if proxy.hang:
                    proxy._stopping.wait()
                    self.close_connection = True
                    return
                if proxy.delay_s and proxy._stopping.wait(proxy.delay_s):
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    reply_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                    status = response.status
                finally:
                    upstream.close()
                payload = payload.replace(proxy.upstream_origin.encode(), proxy.origin.encode())
                self.send_response(status)
                for key, value in reply_headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        return Handler
