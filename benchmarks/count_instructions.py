"""Instructions per served call, for the service and the floor, counted by valgrind's callgrind.

On a shared or virtual machine requests/s and CPU time move by ±30 % from one minute to the next
(benchmarks/bench_http.py shows it: the floor alone gave 589 and 1,185 req/s in two rounds of one run).
Instruction counts do not: each server runs under callgrind with one worker, answers
``--calls`` requests on one kept-alive connection, and the worker's count with no calls (start-up and
shutdown only) is taken from the count with calls. What is left is the work per call, repeatable to
well under 1 %, which is what an optimisation should be judged by; bench_http.py then says what it is
worth in time on a given machine. Cache misses and system calls cost time but not instructions, so the
two together show where a gap comes from.

``--engine-free`` counts a third server, the service with its hook handler's work done once per worker
(``engine_free_app.py``): what the service costs around its engine.

Usage: ``python benchmarks/count_instructions.py [--calls 100] [--engine-free] [--keep DIR]``; needs
``valgrind`` (Debian: apt-get install valgrind). Takes about two minutes on two cores, three with
``--engine-free``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_http import BENCH_NOW, SERVICE_PATH, bench_service_env, free_port  # noqa: E402
from request_body import build_patient_view_request  # noqa: E402

WARM_UP_CALLS = 5
START_TIMEOUT_SECONDS = 600
SCRIPTS = {"floor": "floor_app.py", "engine-free": "engine_free_app.py"}


def server_command(name: str, port: int) -> list[str]:
    if name in SCRIPTS:
        return [sys.executable, str(HERE / SCRIPTS[name]), "--port", str(port), "--workers", "1"]
    executable = Path(sys.executable).with_name("cds-service")
    return [str(executable), "serve", "--port", str(port), "--workers", "1"]


@contextmanager
def connection(port: int, process: subprocess.Popen) -> Iterator[http.client.HTTPConnection]:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        yield conn
    finally:
        conn.close()


def worker_instructions(name: str, calls: int, body: bytes, workdir: Path) -> int:
    """Instructions the worker process executed in its whole life, answering ``calls`` calls."""
    port = free_port()
    out = workdir / f"{name}-{calls}"
    env = bench_service_env(workdir, prefix=f"{name}-{calls}-")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={out}.%p",
        *server_command(name, port),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with connection(port, process) as conn:
            for _ in range(WARM_UP_CALLS + calls):
                conn.request("POST", SERVICE_PATH, body=body, headers={"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{name} answered {answer.status}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=START_TIMEOUT_SECONDS)
    totals = []
    for path in workdir.glob(f"{out.name}.*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                totals.append(int(line.split()[1]))
                break
    if len(totals) < 2:
        raise RuntimeError(f"expected callgrind output for the master and a worker, found {len(totals)}")
    # The master only starts and stops; the worker, which imports and builds the app, counts more.
    return max(totals)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100, help="calls counted per server (default 100)")
    parser.add_argument(
        "--engine-free",
        action="store_true",
        help="also count the service with its handler's work done once (engine_free_app.py)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="write the callgrind profiles to DIR (new or empty) for callgrind_annotate, not a temporary one",
    )
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(
            f"--keep {args.keep}: the folder is not empty (an earlier run's profiles would be counted)"
        )
    request = build_patient_view_request(datetime.fromisoformat(BENCH_NOW.replace("Z", "+00:00")))
    body = json.dumps(request, separators=(",", ":")).encode()
    print(f"request: patient-view, {len(body) / 1024:.0f} KB; 1 worker each; {args.calls} calls")
    names = ("floor", "service", "engine-free") if args.engine_free else ("floor", "service")
    runs = [(name, calls) for name in names for calls in (0, args.calls)]
    with ExitStack() as stack:
        if args.keep is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cds-instructions-")))
        else:
            workdir = args.keep
            workdir.mkdir(parents=True, exist_ok=True)
        pool = stack.enter_context(ThreadPoolExecutor(2))
        counted = pool.map(lambda run: worker_instructions(*run, body, workdir), runs)
        counts = dict(zip(runs, counted, strict=True))
    per_call = {name: (counts[(name, args.calls)] - counts[(name, 0)]) / args.calls for name in names}
    for name, value in per_call.items():
        ratio = per_call["floor"] / value
        print(f"  {name:11} {value / 1e6:7.2f} M instructions per call (floor / this: {ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
