"""The service under werkzeug's real WSGI server on loopback, with settings that may name its own URL.

JWT audiences are checked against ``CDS_PUBLIC_BASE_URL``, so the settings must know the port before
the app is built: the socket is bound first, then the app is created for that URL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server

from cds_service.app import create_app
from cds_service.config import Settings


@contextmanager
def serving_service(settings_for: Callable[[str], Settings]) -> Iterator[str]:
    """Serve the real app on 127.0.0.1; ``settings_for(base_url)`` builds its settings; yields the URL."""
    holder: dict[str, Any] = {}

    def dispatch(environ: dict, start_response: Callable) -> Any:
        return holder["app"](environ, start_response)

    server = make_server("127.0.0.1", 0, dispatch, threaded=True)
    base_url = f"http://127.0.0.1:{server.server_port}"
    app = create_app(settings_for(base_url))
    holder["app"] = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base_url
    finally:
        server.shutdown()
        thread.join(timeout=5)
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()
