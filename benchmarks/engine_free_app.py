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

import threading
from typing import Any

from cds_service.services import HookHandler
from cds_service.serving import serve


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
    """`cds-service serve` itself, with its options, after the patch (the workers fork with it)."""
    answer_once(HookHandler)
    serve.main(prog_name="engine_free_app.py")


if __name__ == "__main__":
    main()
