"""The served service with its per-call work taken away: an upper bound for what a faster engine could give.

Everything a call pays around the engine stays real: gunicorn with the service's options, Flask, the
body read and parsed, the call log line, the metrics in multiprocess mode. Only the hook handler's work
(request validation, prefetch classification, the patient record, the rules, the cards and the
issued-card record) is done once per worker and its answer returned for every later call.

If this server meets a throughput or latency target and the real service does not, the difference is
the handler's own work; if even this one misses, no engine could close the gap. `bench_http.py
--engine-free` runs it beside the floor and the service.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
from typing import Any

from cds_service.config import load_settings
from cds_service.observability import MULTIPROC_ENV
from cds_service.services import HookHandler
from cds_service.serving import DEFAULT_THREADS, CdsServer, fresh_metrics_dir, gunicorn_options


def answer_once(handler_class: type[HookHandler]) -> None:
    """Make ``handle`` compute each service's first answer and return it from then on."""
    real_handle = handler_class.handle
    answers: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def handle(self: HookHandler, service_id: str, body: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        answer = answers.get(service_id)
        if answer is None:
            with lock:
                if service_id not in answers:
                    answers[service_id] = real_handle(self, service_id, body, *args, **kwargs)
                answer = answers[service_id]
        return answer

    handler_class.handle = handle  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args()
    settings = load_settings()
    os.environ[MULTIPROC_ENV] = metrics_dir = fresh_metrics_dir()
    answer_once(HookHandler)

    from cds_service.app import create_app

    options = gunicorn_options(
        settings, f"{args.host}:{args.port}", args.workers, args.threads, metrics_dir=metrics_dir
    )
    master_pid = os.getpid()
    try:
        CdsServer(lambda: create_app(settings), options).run()
    finally:
        if os.getpid() == master_pid:  # workers leave through this frame too
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
