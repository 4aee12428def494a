"""Resident memory of each service worker over a long run: is there growth past the first readings?

``bench_http.py`` reads memory twice, after 10,000 and 20,000 calls, as the target asks. Between two such
readings resident memory moves by a MiB or two either way (the allocator takes and returns arenas), so
one pair cannot tell a slow leak from noise. This serves the same request to the same ``cds-service
serve`` under wrk's 16 connections for ``--calls`` calls and prints each worker's VmRSS every ``--step``
calls, with the floor's workers read the same way after the same number of calls as the baseline.

Usage: ``python benchmarks/bench_memory.py [--calls 300000] [--step 20000]``; needs ``wrk``. At about
700 calls a second on two cores, 300,000 calls take some eight minutes for the service.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_http import (  # noqa: E402
    BENCH_NOW,
    bench_service_env,
    check_answer,
    clean_env,
    drive_calls,
    floor_command,
    free_port,
    machine_description,
    run_wrk,
    service_command,
    start_server,
    worker_rss_mb,
)
from request_body import build_patient_view_request  # noqa: E402


def readings(
    name: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    args: argparse.Namespace,
    workdir: Path,
    body_file: Path,
) -> list[tuple[int, list[float]]]:
    """(calls so far, MiB per worker) after every step, on a fresh instance."""
    taken: list[tuple[int, list[float]]] = []
    with start_server(name, command, env, port, workdir) as server:
        print(f"{name}: {check_answer(server, body_file.read_bytes())}")
        rate = run_wrk(server, body_file, 16, 2).requests_per_second
        while server.calls < args.calls:
            drive_calls(server, body_file, min(server.calls + args.step, args.calls), rate)
            sizes = worker_rss_mb(server.process.pid)
            taken.append((server.calls, sizes))
            print(f"  {name} after {server.calls:7d} calls: {mib(sizes)}")
    return taken


def summary(name: str, taken: list[tuple[int, list[float]]], settled_after: int) -> str:
    """Each worker's highest reading in the first and in the second half of the readings taken after
    ``settled_after`` calls: memory that grows shows a higher top in the second half. Single readings
    move by a MiB either way as the allocator takes and returns memory, so tops are compared, not ends."""
    later = [sizes for calls, sizes in taken if calls >= settled_after]
    if len(later) < 4:
        return f"{name}: too few readings after {settled_after:,} calls to compare halves"
    half = len(later) // 2
    first, second = later[:half], later[half:]
    tops = [
        (max(sizes[w] for sizes in first), max(sizes[w] for sizes in second)) for w in range(len(later[0]))
    ]
    growth = max(b - a for a, b in tops)
    return (
        f"{name}: {len(later)} readings from {settled_after:,} to {taken[-1][0]:,} calls; highest per worker "
        f"in the first half {mib([a for a, _ in tops])}, in the second {mib([b for _, b in tops])}: "
        f"largest growth {growth:+.1f} MiB"
    )


def mib(sizes: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in sizes) + " MiB"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300_000, help="calls per server (default 300,000)")
    parser.add_argument("--step", type=int, default=20_000, help="calls between readings (default 20,000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-floor", action="store_true", help="measure the service only")
    args = parser.parse_args()

    request = build_patient_view_request(datetime.fromisoformat(BENCH_NOW.replace("Z", "+00:00")))
    body = json.dumps(request, separators=(",", ":")).encode()
    print(f"machine: {machine_description()}")
    print(f"{args.calls:,} calls per server, readings every {args.step:,}; ", end="")
    print(f"gunicorn gthread, {args.workers} workers × {args.threads} threads; wrk 16 connections")
    results = {}
    with tempfile.TemporaryDirectory(prefix="cds-memory-") as tmp:
        workdir = Path(tmp)
        body_file = workdir / "body.json"
        body_file.write_bytes(body)
        port = free_port()
        command = service_command(port, args.workers, args.threads)
        results["service"] = readings(
            "service", command, bench_service_env(workdir), port, args, workdir, body_file
        )
        if not args.no_floor:
            port = free_port()
            command = floor_command(port, args.workers, args.threads)
            results["floor"] = readings("floor", command, clean_env(), port, args, workdir, body_file)
    print()
    for name, taken in results.items():
        print(summary(name, taken, settled_after=min(40_000, args.calls // 4)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
