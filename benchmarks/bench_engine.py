"""The in-process engine on a 300-Observation patient: validation, record, rules and cards, no HTTP.

Calls the service's hook handler directly with the parsed request, many times, and prints p50 and p99 of
the whole call and the median of each phase. Baseline measured in the same run: parsing the request body
(the only work the HTTP floor does).

Then the clinical engine alone (``evaluate``: building the PatientRecord and running every rule) over the
same resources: as sent (a card fires; its proposals are built and validated with fhir.resources) and two
years later (every result stale, nothing fires), against a baseline of merely iterating the same dicts and
reading each Observation's code. Usage: ``python benchmarks/bench_engine.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
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
            answer = handler.handle(SERVICE, parsed, None, trace)
            finished = time.perf_counter()
            if index < 50:  # warm-up
                continue
            parses.append((parsed_at - started) * 1000)
            totals.append((finished - parsed_at) * 1000)
            cards = len(answer["cards"])
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
    bench_clinical_engine(request, iterations)
    return 0


def _timed(function: Callable[[], object], iterations: int) -> list[float]:
    for _ in range(50):
        function()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _report(label: str, samples: list[float]) -> None:
    print(f"{label:<44} p50 {percentile(samples, 50):.3f} ms  p99 {percentile(samples, 99):.3f} ms")


def bench_clinical_engine(request: dict, iterations: int) -> None:
    """``evaluate`` straight on the resources, as services.py calls it: the chart as sent (a card fires and
    its proposals are built with fhir.resources) and the same chart when nothing fires."""
    from cds_service.clinical.engine import evaluate, load_clinical_config
    from cds_service.clinical.record import build_record

    config = load_clinical_config(None)
    patient_id = request["context"]["patientId"]
    resources: list[dict] = []
    for value in request["prefetch"].values():
        if value.get("resourceType") == "Bundle":
            resources.extend(entry["resource"] for entry in value.get("entry", []))
        else:
            resources.append(value)
    observations = sum(1 for r in resources if r["resourceType"] == "Observation")
    # The same chart two years on: every result is stale, so the record is built in full, every rule
    # runs, and nothing fires (no proposal is built).
    later = NOW + timedelta(days=730)

    def iterate() -> int:
        count = 0
        for resource in resources:
            if resource.get("resourceType") == "Observation":
                for coding in resource["code"]["coding"]:
                    count += len(coding["code"])
        return count

    def quiet() -> object:
        return evaluate(resources, patient_id=patient_id, now=later, config=config)

    def cards() -> object:
        return evaluate(resources, patient_id=patient_id, now=NOW, config=config)

    print()
    print(
        f"clinical engine, {observations} Observations, {len(resources)} resources; {iterations} runs each; "
        f"cards: quiet {len(quiet())}, firing {[f.topic for f in cards()]}"
    )
    _report("baseline (iterate the dicts, read codes)", _timed(iterate, iterations))
    _report(
        "build_record only",
        _timed(lambda: build_record(resources, patient_id=patient_id, now=NOW, config=config), iterations),
    )
    _report("evaluate, nothing fires (record + all rules)", _timed(quiet, iterations))
    _report("evaluate, as sent (+ the card's R4B proposals)", _timed(cards, iterations))


if __name__ == "__main__":
    sys.exit(main())
