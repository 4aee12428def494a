"""The first hook call a fresh worker answers, against the calls after it.

Every worker gunicorn starts (at a deploy, a restart, a scale-out, or after ``max_requests``) meets its
first hook call cold unless it prepared at start: schema validators, metric objects and the FHIR models
that proposals are checked against are otherwise built on that first call, inside an EHR's time budget.
Each round starts ``cds-service serve`` with one worker, waits until ``/healthz`` answers (so the
framework itself has served once), then sends the realistic patient-view call of ``bench_http.py``
``1 + --calls`` times on one kept-alive connection. The baseline is the same worker's own median over
the later calls, measured in the same round.

Usage: ``python benchmarks/bench_first_call.py [--quick] [--rounds 5] [--calls 30]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

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


def call_times_ms(base_url: str, body: bytes, calls: int) -> list[float]:
    """Wall time of each of ``calls`` hook calls on one kept-alive connection, in order."""
    address = urlsplit(base_url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    times = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            conn.request("POST", SERVICE_PATH, body=body, headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            times.append((time.perf_counter() - started) * 1000.0)
            if answer.status != 200:
                raise RuntimeError(f"the service answered {answer.status}")
    finally:
        conn.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of --rounds")
    parser.add_argument("--rounds", type=int, default=5, help="fresh servers started (default 5)")
    parser.add_argument("--calls", type=int, default=30, help="calls after the first, per round (default 30)")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    request = build_patient_view_request(datetime.fromisoformat(BENCH_NOW.replace("Z", "+00:00")))
    body = json.dumps(request, separators=(",", ":")).encode()
    print(f"patient-view, {len(body) / 1024:.0f} KB; {rounds} fresh servers, 1 worker each")
    print(f"{'round':>5}  {'first call':>10}  {'later median':>12}  {'excess':>8}")
    excess = []
    with tempfile.TemporaryDirectory(prefix="cds-first-call-") as tmp:
        for number in range(1, rounds + 1):
            port = free_port()
            env = bench_service_env(Path(tmp), prefix=f"round{number}-")
            command = service_command(port, 1, 1)
            with start_server(f"service-{number}", command, env, port, Path(tmp)) as server:
                times = call_times_ms(server.base_url, body, 1 + args.calls)
            later = statistics.median(times[1:])
            excess.append(times[0] - later)
            print(f"{number:>5}  {times[0]:>7.1f} ms  {later:>9.1f} ms  {excess[-1]:>5.1f} ms")
    print(f"median excess of a fresh worker's first call: {statistics.median(excess):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
