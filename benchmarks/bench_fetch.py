"""FHIR fetch benchmark: eight prefetch queries behind a slow network, in parallel and under a budget.

A real FHIR server (sekmet, as its own process) holds one SMART sandbox patient; a small proxy delays every
request by D = 200 ms. The script measures, in the same run:

* the eight queries one after another (the sequential baseline, about 8 × D);
* the eight queries through ``FhirClient.fetch_all`` (target: p95 ≤ 1.5 × D);
* a server that never answers (target: ``fetch_all`` returns within the budget + 100 ms).

Usage: ``python benchmarks/bench_fetch.py [--runs N] [--delay-ms D] [--budget-ms B]``. Exits 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cds_service.fhir.client import FhirClient  # noqa: E402
from cds_service.loader import to_transaction  # noqa: E402
from tests.support.delay_proxy import DelayProxy  # noqa: E402
from tests.support.fhir_server import sekmet_process  # noqa: E402

PATIENT_FILE = REPO / "tests/data/smart-sandbox-r4/Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json"
PATIENT_ID = "018f428e-34f6-4707-8009-5ad742f901e7"


def prefetch_like_queries(patient_id: str) -> dict[str, str]:
    """Eight queries shaped like the service's prefetch: one read and seven single-page searches."""
    each = f"patient={patient_id}&_count=500"
    return {
        "patient": f"Patient/{patient_id}",
        "b12IronLabs": f"Observation?{each}&category=laboratory&_sort=-date",
        "contextLabs": f"Observation?{each}&category=vital-signs&_sort=-date",
        "medicationRequests": f"MedicationRequest?{each}&_include=MedicationRequest:medication",
        "medicationStatements": f"MedicationStatement?{each}",
        "medicationAdministrations": f"MedicationAdministration?{each}",
        "conditions": f"Condition?{each}",
        "serviceRequests": f"ServiceRequest?{each}",
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def timed(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def parallel_fetch(client: FhirClient, base: str, queries: dict[str, str]) -> Callable[[], None]:
    def fetch() -> None:
        outcomes = client.fetch_all(base, queries, authorization=None, budget_ms=10_000)
        failed = {key: outcome.error for key, outcome in outcomes.items() if not outcome.ok}
        if failed:
            raise RuntimeError(f"fetch failed: {failed}")

    return fetch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="parallel fetches to time (default 40)")
    parser.add_argument("--delay-ms", type=int, default=200, help="delay the proxy adds per request")
    parser.add_argument("--budget-ms", type=int, default=1500, help="budget for the hanging-server test")
    args = parser.parse_args()
    delay_s = args.delay_ms / 1000

    with sekmet_process() as server, DelayProxy(server.origin) as proxy:
        server.load(to_transaction(json.loads(PATIENT_FILE.read_text(encoding="utf-8"))))
        queries = prefetch_like_queries(PATIENT_ID)
        base = proxy.url("/fhir")
        client = FhirClient()
        try:
            check = client.fetch_all(base, queries, authorization=None, budget_ms=10_000)
            failed = {k: o.error for k, o in check.items() if not o.ok}
            if failed:
                print(f"setup failed: {failed}")
                return 1
            pages = sum(o.requests for o in check.values())
            entries = sum(len(o.resource.get("entry", [])) for o in check.values() if "entry" in o.resource)
            print(
                f"{len(queries)} queries, {pages} requests, {entries} search entries; "
                f"proxy delay {args.delay_ms} ms"
            )

            undelayed = timed(parallel_fetch(client, base, queries), args.runs)
            proxy.delay_s = delay_s

            def sequential() -> None:
                for key, query in queries.items():
                    client.fetch_all(base, {key: query}, authorization=None, budget_ms=10_000)

            parallel = parallel_fetch(client, base, queries)
            timed(parallel, 2)
            baseline = timed(sequential, max(3, args.runs // 10))
            fetches = timed(parallel, args.runs)

            proxy.hang = True
            hang_times = timed(
                lambda: client.fetch_all(base, queries, authorization=None, budget_ms=args.budget_ms), 5
            )
        finally:
            client.close()
            proxy.hang = False

    target_parallel = 1.5 * args.delay_ms
    target_hang = args.budget_ms + 100
    p50, p95 = percentile(fetches, 0.5), percentile(fetches, 0.95)
    print(
        f"sequential baseline ({len(baseline)} runs): p50 {statistics.median(baseline):7.1f} ms"
        f"   ({len(queries)} x D = {len(queries) * args.delay_ms} ms)"
    )
    print(
        f"fetch_all, 8 keys   ({len(fetches)} runs): p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
        f"max {max(fetches):7.1f} ms"
        f"   target p95 <= 1.5 x D = {target_parallel:.0f} ms"
    )
    print(f"speed-up over sequential (p50): {statistics.median(baseline) / p50:.1f}x")
    print(
        f"same fetch without the delay ({len(undelayed)} runs): p50 {percentile(undelayed, 0.5):7.1f} ms  "
        f"p95 {percentile(undelayed, 0.95):7.1f} ms   (server and client work, no network wait)"
    )
    print(
        f"hanging server, budget {args.budget_ms} ms (5 runs): "
        f"min {min(hang_times):7.1f} ms  max {max(hang_times):7.1f} ms   target <= {target_hang} ms"
    )
    ok = p95 <= target_parallel and max(hang_times) <= target_hang
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
