"""A real HTTP server on loopback around an app (werkzeug's threaded WSGI server), for tests that must
cross a socket: chunked bodies, real headers, CORS preflight as a browser sends it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import Flask
from werkzeug.serving import make_server


@contextmanager
def serving(app: Flask | Callable) -> Iterator[str]:
    """Serve `app` (a Flask app or any WSGI callable) on 127.0.0.1 on a free port; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
