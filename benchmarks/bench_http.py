"""HTTP benchmark: the served patient-view service against a floor that only parses the same request.

Both run under the same gunicorn options with 2 workers on 127.0.0.1 and are loaded by the same wrk
script, alternately, in the same run, so the ratios hold on whatever machine runs this. It prints:

* throughput and latency percentiles at 16 connections (target: service ≥ 0.8 × floor requests/s);
* median latency at 1 connection (target: within 1 ms of the floor);
* resident memory of each service worker after 10,000 calls and after 20,000 (target: no growth).

With ``--engine-free`` a third server runs beside them: the service with its hook handler's work done
once and its answer reused (``engine_free_app.py``), the best any faster engine could reach.

Usage: ``python benchmarks/bench_http.py [--quick] [--floor-only] [--engine-free]``; needs ``wrk``
(Debian: apt-get install wrk). Every phase has a time limit; servers are stopped on exit, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from request_body import build_patient_view_request  # noqa: E402

SERVICE_PATH = "/cds-services/b12-iron-patient-view"
BENCH_NOW = "2026-01-15T09:00:00Z"
START_TIMEOUT_SECONDS = 60
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    requests_per_second: float
    requests: int
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: str = ""
    cpu_ms_per_call: float = 0.0
    connections_per_worker: list[int] = field(default_factory=list)


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    base_url: str
    calls: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """The figures this benchmark uses from wrk's --latency report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rps or not total:
        raise RuntimeError(f"could not read wrk output:\n{output}")
    result = WrkResult(float(rps.group(1)), int(total.group(1)))
    block = output.split("Latency Distribution", 1)[-1]
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", block, re.MULTILINE):
        result.percentiles_ms[pct] = _to_ms(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result.non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors:(.*)", output)
    result.socket_errors = errors.group(1).strip() if errors else ""
    return result


def run_wrk(server: Server, body_file: Path, connections: int, seconds: float) -> WrkResult:
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{math.ceil(seconds)}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(HERE / "post_body.lua"),
        server.base_url + SERVICE_PATH,
    ]
    env = dict(os.environ, BENCH_BODY=str(body_file))
    cpu_before = server_cpu_seconds(server.process.pid)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as wrk:
        time.sleep(min(1.0, seconds / 2))
        split = connections_per_worker(server)
        out, err = wrk.communicate(timeout=seconds + 60)
    if wrk.returncode:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {err[-2000:]}")
    result = parse_wrk(out)
    result.connections_per_worker = split
    result.cpu_ms_per_call = (
        (server_cpu_seconds(server.process.pid) - cpu_before) * 1000 / max(result.requests, 1)
    )
    server.calls += result.requests
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(
            f"{server.name}: {result.non_2xx} non-2xx responses, socket errors {result.socket_errors!r}"
        )
    return result


def _wait_healthy(server: Server, log_file: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited at start:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.base_url + "/healthz", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not become healthy in {START_TIMEOUT_SECONDS} s")


@contextlib.contextmanager
def start_server(
    name: str, command: list[str], env: dict[str, str], port: int, workdir: Path
) -> Iterator[Server]:
    log_file = workdir / f"{name}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, process, f"http://127.0.0.1:{port}")
    try:
        _wait_healthy(server, log_file)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CDS_") and key not in ("PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY")
    }


def bench_service_env(workdir: Path, prefix: str = "") -> dict[str, str]:
    """The service's environment in a benchmark: no authentication, the request's fixed clock (its results
    stay recent), and its databases in the run's own directory."""
    return clean_env() | {
        "CDS_AUTH": "off",
        "CDS_NOW": BENCH_NOW,
        "CDS_FEEDBACK_DB": str(workdir / f"{prefix}feedback.sqlite3"),
        "CDS_STATE_DB": str(workdir / f"{prefix}state.sqlite3"),
    }


def service_command(port: int, workers: int, threads: int) -> list[str]:
    executable = Path(sys.executable).with_name("cds-service")
    return [
        str(executable),
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


def _script_command(script: str, port: int, workers: int, threads: int) -> list[str]:
    return [
        sys.executable,
        str(HERE / script),
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


def floor_command(port: int, workers: int, threads: int) -> list[str]:
    return _script_command("floor_app.py", port, workers, threads)


def engine_free_command(port: int, workers: int, threads: int) -> list[str]:
    return _script_command("engine_free_app.py", port, workers, threads)


def _children(master_pid: int) -> list[Path]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master_pid:
                    found.append(entry)
    return found


def connections_per_worker(server: Server) -> list[int]:
    """How many of the load generator's connections each worker holds, largest first.

    gthread workers share one listening socket and keep a keep-alive connection for its whole life: when
    wrk opens its connections in one burst, one worker can take all of them and serve them on one CPU
    while the other idles, which halves requests/s and inflates CPU per call (its threads contend for one
    GIL). A round whose split is lopsided measures that, not the code; the split is printed beside it."""
    port = int(server.base_url.rsplit(":", 1)[1])
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    established.add(f"socket:[{fields[9]}]")
    counts = []
    for worker in _children(server.process.pid):
        held = 0
        with contextlib.suppress(OSError):
            for fd in (worker / "fd").iterdir():
                with contextlib.suppress(OSError):
                    held += os.readlink(fd) in established
        counts.append(held)
    return sorted(counts, reverse=True)


def server_cpu_seconds(master_pid: int) -> float:
    """CPU time (user + system) used so far by the master and its workers.

    CPU per call is the figure least disturbed by other work on the machine, unlike requests/s.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in [Path(f"/proc/{master_pid}"), *_children(master_pid)]:
        with contextlib.suppress(OSError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def worker_rss_mb(master_pid: int) -> list[float]:
    """Resident memory of each direct child (gunicorn worker) of the master, in MiB."""
    sizes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
        rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if ppid and rss and int(ppid.group(1)) == master_pid:
            sizes.append(int(rss.group(1)) / 1024)
    return sorted(sizes)


def check_answer(server: Server, body: bytes) -> str:
    request = urllib.request.Request(  # noqa: S310
        server.base_url + SERVICE_PATH, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer = json.loads(response.read())
    server.calls += 1
    cards = answer.get("cards")
    if not isinstance(cards, list):
        raise RuntimeError(f"{server.name} answered without a cards list")
    topics = sorted({card.get("source", {}).get("topic", {}).get("code", "?") for card in cards})
    return f"{len(cards)} card(s) {topics}"


def drive_calls(server: Server, body_file: Path, until: int, rate: float) -> None:
    """Load the server at 16 connections until it has answered at least ``until`` calls in this run.

    wrk always runs for its whole duration, so each run is sized from the rate measured so far.
    """
    while server.calls < until:
        seconds = max(1, math.ceil((until - server.calls) / max(rate, 1.0)))
        rate = run_wrk(server, body_file, 16, seconds).requests_per_second


def machine_description() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    import gunicorn

    return (
        f"{model}, {os.cpu_count()} CPUs; Linux {platform.release()}; Python {platform.python_version()}; "
        f"gunicorn {gunicorn.__version__}; {wrk_version.split(' [')[0]}"
    )


def _fmt_percentiles(result: WrkResult) -> str:
    return "  ".join(
        f"p{p} {result.percentiles_ms.get(p, float('nan')):7.2f}" for p in ("50", "75", "90", "99")
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    parser.add_argument("--floor-only", action="store_true", help="measure the floor alone (harness check)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="gunicorn threads per worker (serve's default)"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--engine-free",
        action="store_true",
        help="also measure the service with its handler's work done once (engine_free_app.py)",
    )
    args = parser.parse_args()

    from cds_service.serving import DEFAULT_THREADS

    threads = args.threads or DEFAULT_THREADS
    seconds = 5 if args.quick else 15
    latency_seconds = 5 if args.quick else 10
    rounds = 1 if args.quick else 2
    memory_calls = 2_000 if args.quick else 10_000

    request = build_patient_view_request(datetime.fromisoformat(BENCH_NOW.replace("Z", "+00:00")))
    body = json.dumps(request, separators=(",", ":")).encode()
    observations = len(request["prefetch"]["b12IronLabs"]["entry"]) + len(
        request["prefetch"]["contextLabs"]["entry"]
    )
    print(f"machine: {machine_description()}")
    print(
        f"request: patient-view, {len(body) / 1024:.0f} KB, {observations} Observations; "
        f"gunicorn gthread, {args.workers} workers × {threads} threads; wrk {args.connections} connections"
    )

    with tempfile.TemporaryDirectory(prefix="cds-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        body_file = workdir / "body.json"
        body_file.write_bytes(body)
        env = clean_env()
        floor_port = free_port()
        floor = stack.enter_context(
            start_server("floor", floor_command(floor_port, args.workers, threads), env, floor_port, workdir)
        )
        servers = [floor]
        service_env = env
        if not args.floor_only:
            service_env = bench_service_env(workdir)
            service_port = free_port()
            service = stack.enter_context(
                start_server(
                    "service",
                    service_command(service_port, args.workers, threads),
                    service_env,
                    service_port,
                    workdir,
                )
            )
            servers.append(service)
            if args.engine_free:
                engine_free_port = free_port()
                command = engine_free_command(engine_free_port, args.workers, threads)
                servers.append(
                    stack.enter_context(
                        start_server("engine-free", command, service_env, engine_free_port, workdir)
                    )
                )
        for server in servers:
            print(f"{server.name} answers: {check_answer(server, body)}")
            run_wrk(server, body_file, args.connections, 3)

        throughput: dict[str, list[WrkResult]] = {s.name: [] for s in servers}
        single: dict[str, list[WrkResult]] = {s.name: [] for s in servers}
        for _ in range(rounds):
            for server in servers:
                throughput[server.name].append(run_wrk(server, body_file, args.connections, seconds))
        for _ in range(rounds):
            for server in servers:
                single[server.name].append(run_wrk(server, body_file, 1, latency_seconds))

        def mean_rps(name: str) -> float:
            return sum(r.requests_per_second for r in throughput[name]) / len(throughput[name])

        def median_1c(name: str) -> float:
            values = sorted(r.percentiles_ms["50"] for r in single[name])
            return (
                values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1 :][:2]) / 2
            )

        print(
            f"\n{args.connections} connections, {seconds} s × {rounds} round(s) each, alternating"
            " (latency in ms)"
        )
        width = max(len(server.name) for server in servers)
        for server in servers:
            for index, result in enumerate(throughput[server.name], 1):
                print(
                    f"  {server.name:{width}} round {index}: {result.requests_per_second:8.0f} req/s  "
                    f"server CPU {result.cpu_ms_per_call:5.2f} ms/call  "
                    + _fmt_percentiles(result)
                    + f"  connections per worker {'/'.join(map(str, result.connections_per_worker))}"
                )
        floor_rps = mean_rps("floor")
        print(f"  {'floor':{width}} mean: {floor_rps:8.0f} req/s")

        def cpu(name: str) -> float:
            return sum(r.cpu_ms_per_call for r in throughput[name]) / len(throughput[name])

        for server in servers[1:]:
            rps = mean_rps(server.name)
            verdict = "meets" if rps >= 0.8 * floor_rps else "MISSES"
            print(
                f"  {server.name:{width}} mean: {rps:8.0f} req/s  "
                f"ratio {rps / floor_rps:.2f} ({verdict} ≥ 0.80); server CPU per call "
                f"{cpu(server.name):.2f} ms against the floor's {cpu('floor'):.2f}, "
                f"CPU-bound ratio {cpu('floor') / cpu(server.name):.2f}"
            )
        print(f"  (load average now {os.getloadavg()[0]:.1f})")

        print(f"\n1 connection, {latency_seconds} s × {rounds} round(s) each: median latency (ms)")
        for server in servers:
            print(
                f"  {server.name:{width}} median of rounds {median_1c(server.name):6.2f}; last round: "
                + _fmt_percentiles(single[server.name][-1])
            )
        for server in servers[1:]:
            gap = median_1c(server.name) - median_1c("floor")
            verdict = "meets" if gap <= 1.0 else "MISSES"
            print(f"  {server.name} − floor: {gap:+.2f} ms ({verdict} ≤ 1 ms)")

        # Memory on a fresh instance, so "after N calls" counts every call the workers have served.
        name = "floor" if args.floor_only else "service"
        rate = sum(r.requests_per_second for r in throughput[name]) / rounds
        stack.close()
        command = service_command if name == "service" else floor_command
        memory_port = free_port()
        memory_env = service_env if name == "service" else env
        with start_server(
            f"{name}-memory", command(memory_port, args.workers, threads), memory_env, memory_port, workdir
        ) as target:
            print(f"\nresident memory per {name} worker (MiB), fresh instance")
            drive_calls(target, body_file, memory_calls, rate)
            rss_first = worker_rss_mb(target.process.pid)
            print(f"  after {target.calls:6d} calls: {', '.join(f'{v:.1f}' for v in rss_first)}")
            drive_calls(target, body_file, target.calls + memory_calls, rate)
            rss_second = worker_rss_mb(target.process.pid)
            print(f"  after {target.calls:6d} calls: {', '.join(f'{v:.1f}' for v in rss_second)}")
        growth = max((b - a for a, b in zip(rss_first, rss_second, strict=False)), default=0.0)
        print(f"  largest growth between the two: {growth:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
