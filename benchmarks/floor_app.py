"""The benchmark's floor: a Flask endpoint that only parses the hook request and answers no cards.

It runs under exactly the gunicorn options the service uses (``cds_service.serving.gunicorn_options``),
so the ratio between the two measures the service's own work, not the server's.
"""

from __future__ import annotations

import argparse

import orjson
from flask import Flask, Response, request

from cds_service.config import Settings
from cds_service.serving import DEFAULT_THREADS, CdsServer, gunicorn_options


def create_floor_app() -> Flask:
    app = Flask("floor")

    @app.post("/cds-services/<service_id>")
    def call(service_id: str) -> Response:
        body = orjson.loads(request.get_data())
        if not isinstance(body, dict):
            return Response(b'{"error": "not an object"}', status=400, mimetype="application/json")
        return Response(orjson.dumps({"cards": []}), mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status": "ok"}', mimetype="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args()
    options = gunicorn_options(Settings(), f"{args.host}:{args.port}", args.workers, args.threads)
    CdsServer(create_floor_app, options).run()


if __name__ == "__main__":
    main()
