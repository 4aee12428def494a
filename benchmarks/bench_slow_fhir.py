"""Latency without prefetch, against a FHIR server that answers every request 200 ms late.

The service must query the EHR's FHIR server for everything the prefetch lacks. Done one query after
another (as some CDS services do), eight template queries would take 8 × 200 ms; run side by side under
one budget they take about one delay. Target: median at most 1.5 × the delay (300 ms).

The FHIR server here is a small loopback server answering the searches from the same realistic patient
the HTTP benchmark uses (``request_body.py``), each answer held back by the delay; a remote EHR cannot
run on this machine. Usage: ``python benchmarks/bench_slow_fhir.py [--quick] [--delay-ms 200]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_http import (  # noqa: E402
    BENCH_NOW,
    SERVICE_PATH,
    bench_service_env,
    free_port,
    service_command,
    start_server,
)
from request_body import build_patient_view_request  # noqa: E402


class SlowFhirServer:
    """Answers Patient reads and type searches from one patient's resources, ``delay_s`` late."""

    def __init__(self, resources: list[dict[str, Any]], delay_s: float) -> None:
        by_type: dict[str, list[dict[str, Any]]] = {}
        for resource in resources:
            by_type.setdefault(resource["resourceType"], []).append(resource)
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.requests += 1
                time.sleep(delay_s)
                parts = urlsplit(self.path)
                segments = [s for s in parts.path.split("/") if s][1:]  # drop the "fhir" base segment
                if len(segments) == 2:
                    matches = [r for r in by_type.get(segments[0], []) if r["id"] == segments[1]]
                    body: dict[str, Any] = matches[0] if matches else {"resourceType": "OperationOutcome"}
                    status = 200 if matches else 404
                else:
                    found = by_type.get(segments[0], []) if segments else []
                    codes = parse_qs(parts.query).get("code")
                    if codes:
                        wanted = {c.split("|")[-1] for c in codes[0].split(",")}
                        found = [
                            r for r in found if any(c.get("code") in wanted for c in r["code"]["coding"])
                        ]
                    entries = [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in found]
                    body = {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "total": len(found),
                        "entry": entries,
                    }
                    status = 200
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowFhirServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def patient_resources(request: dict[str, Any]) -> list[dict[str, Any]]:
    resources = [request["prefetch"]["patient"]]
    for value in request["prefetch"].values():
        if value.get("resourceType") == "Bundle":
            resources += [entry["resource"] for entry in value["entry"]]
    return resources


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--delay-ms", type=int, default=200)
    args = parser.parse_args()
    calls = 10 if args.quick else 40
    delay_s = args.delay_ms / 1000

    full = build_patient_view_request(datetime.fromisoformat(BENCH_NOW.replace("Z", "+00:00")))
    with SlowFhirServer(patient_resources(full), delay_s) as fhir, tempfile.TemporaryDirectory() as tmp:
        body = {key: value for key, value in full.items() if key != "prefetch"}
        body["fhirServer"] = fhir.base_url
        workdir = Path(tmp)
        port = free_port()
        env = bench_service_env(workdir) | {"CDS_ALLOWED_FHIR_SERVERS": fhir.base_url}
        with start_server("service", service_command(port, 2, 4), env, port, workdir) as service:
            session = requests.Session()
            url = service.base_url + SERVICE_PATH
            first = session.post(url, json=body, timeout=30)
            if first.status_code != 200:
                raise RuntimeError(f"service answered {first.status_code}: {first.text[:500]}")
            queries_per_call = fhir.requests
            latencies = []
            for _ in range(calls):
                started = time.perf_counter()
                response = session.post(url, json=body, timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"service answered {response.status_code}")
    latencies.sort()
    median = statistics.median(latencies)
    target = 1.5 * args.delay_ms
    print(f"patient-view without prefetch; FHIR server {args.delay_ms} ms late on every request")
    print(
        f"FHIR queries per call: {queries_per_call}; "
        f"one after another they would take ≥ {queries_per_call * args.delay_ms} ms"
    )
    print(
        f"{calls} calls: p50 {median:.0f} ms  p90 {latencies[int(0.9 * (calls - 1))]:.0f} ms  "
        f"max {latencies[-1]:.0f} ms  "
        f"(target p50 ≤ {target:.0f} ms: {'meets' if median <= target else 'MISSES'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
