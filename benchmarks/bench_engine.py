"""The in-process engine on a 300-Observation patient: validation, record, rules and cards, no HTTP.

Calls the service's hook handler directly with the parsed request, many times, and prints p50 and p99 of
the whole call and the median of each phase. Baseline measured in the same run: parsing the request body
(the only work the HTTP floor does). Usage: ``python benchmarks/bench_engine.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from request_body import build_patient_view_request  # noqa: E402

SERVICE = "b12-iron-patient-view"
NOW = datetime.fromisoformat("2026-01-15T09:00:00+00:00")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    iterations = 200 if args.quick else 2000

    from cds_service.app import create_app
    from cds_service.config import Settings
    from cds_service.observability import CallTrace

    request = build_patient_view_request(NOW, b12_ferritin_count=112)
    body = orjson.dumps(request)
    observations = sum(len(request["prefetch"][key]["entry"]) for key in ("b12IronLabs", "contextLabs"))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            auth="off",
            now=NOW,
            feedback_db=str(Path(tmp) / "feedback.sqlite3"),
            state_db=str(Path(tmp) / "state.sqlite3"),
        )
        app = create_app(settings)
        handler = app.extensions["cds"]["handler"]
        totals, parses = [], []
        phases: dict[str, list[float]] = {}
        cards = 0
        for index in range(iterations + 50):
            started = time.perf_counter()
            parsed = orjson.loads(body)
            parsed_at = time.perf_counter()
            trace = CallTrace(service=SERVICE)
            outcome = handler.handle(SERVICE, parsed, None, trace)
            finished = time.perf_counter()
            if index < 50:  # warm-up
                continue
            parses.append((parsed_at - started) * 1000)
            totals.append((finished - parsed_at) * 1000)
            cards = len(outcome.response["cards"])
            for name, value in trace.phases_ms.items():
                phases.setdefault(name, []).append(value)
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()

    print(
        f"patient-view, {observations} Observations, {len(body) / 1024:.0f} KB, {cards} card(s); "
        f"{iterations} calls"
    )
    print(
        f"engine (handler, parsed body in): p50 {percentile(totals, 50):.2f} ms  "
        f"p99 {percentile(totals, 99):.2f} ms"
    )
    print(
        f"baseline (parse the body):        p50 {percentile(parses, 50):.2f} ms  "
        f"p99 {percentile(parses, 99):.2f} ms"
    )
    print("median per phase: " + "  ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in phases.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
