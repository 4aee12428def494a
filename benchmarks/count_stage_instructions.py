"""Instructions per hook call, stage by stage, counted by valgrind's callgrind inside one process.

``count_instructions.py`` says how much more a served call costs than the floor's; this says where the
difference goes. Each stage is the call's pipeline cut one step later than the stage before it, from
parsing the body (all the floor does) to the whole Flask app: every stage is run ``--calls`` times on a
fresh parse of the benchmark request under callgrind, and a run of the same process with no calls is
taken away. The difference between two neighbouring stages is what that step costs. Instruction counts
repeat to well under 1 % on a shared machine, where times move by ±30 %.

The app is loaded as a gunicorn worker loads it (start-up heap frozen, the same collector threshold);
the last stage runs the app under Flask's test client rather than gunicorn, so it leaves out the
server's socket work, which the floor pays as well.

Usage: ``python benchmarks/count_stage_instructions.py [--calls 50]``; needs ``valgrind``. About four
minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_http import BENCH_NOW, SERVICE_PATH, bench_service_env  # noqa: E402
from request_body import build_patient_view_request  # noqa: E402

from cds_service.app import create_app  # noqa: E402
from cds_service.clinical.engine import evaluate  # noqa: E402
from cds_service.clinical.record import build_record  # noqa: E402
from cds_service.config import load_settings  # noqa: E402
from cds_service.protocol.cards import cards_response  # noqa: E402
from cds_service.protocol.prefetch import classify, prefetched_resources  # noqa: E402
from cds_service.protocol.request import validate_hook_request  # noqa: E402
from cds_service.serving import CdsServer, gunicorn_options  # noqa: E402

SERVICE_ID = SERVICE_PATH.rsplit("/", 1)[1]
WARM_UP_CALLS = 10
STAGE_NAMES = ("parse", "validate", "prefetch", "record", "rules", "cards", "handler", "flask")
DESCRIPTIONS = {
    "parse": "orjson parses the body (the floor's whole job)",
    "validate": "request and context checked against the JSON Schemas",
    "prefetch": "prefetch keys classified, their resources listed",
    "record": "the patient record built from the resources",
    "rules": "the rules run on the record",
    "cards": "cards rendered from the findings",
    "handler": "the hook handler: traces, issued-card record",
    "flask": "Flask: routing, body read, call log line, metrics",
}


def request_body() -> bytes:
    request = build_patient_view_request(datetime.fromisoformat(BENCH_NOW.replace("Z", "+00:00")))
    return json.dumps(request, separators=(",", ":")).encode()


def build_stages(app: Any, body: bytes) -> dict[str, Callable[[], Any]]:
    """Each stage's pipeline, built from the same public functions the hook handler runs, in its order."""
    handler = app.extensions["cds"]["handler"]
    service = handler.services[SERVICE_ID]
    now = handler.settings.now or datetime.now(UTC)
    client = app.test_client()

    def validate() -> Any:
        return validate_hook_request(orjson.loads(body), service.hook)

    def prefetch() -> tuple[Any, list[Any]]:
        request = validate()
        items = (
            classify(key, template, request.prefetch, request.patient_id)
            for key, template in service.prefetch.items()
        )
        return request, prefetched_resources(items)

    def on_patient(step: Callable[..., Any]) -> Any:
        """``step`` (building the record, or the whole rule evaluation) on the prefetched resources."""
        request, resources = prefetch()
        return step(
            resources,
            patient_id=request.patient_id,
            now=now,
            draft_orders=request.draft_orders,
            config=handler.clinical_config,
        )

    def cards() -> dict[str, Any]:
        return cards_response(on_patient(evaluate), handler.card_style)

    def flask() -> dict[str, Any]:
        answer = client.post(SERVICE_PATH, data=body, content_type="application/json")
        if answer.status_code != 200:
            raise RuntimeError(f"the service answered {answer.status_code}: {answer.get_data(as_text=True)}")
        return answer.get_json()

    return {
        "parse": lambda: orjson.loads(body),
        "validate": validate,
        "prefetch": prefetch,
        "record": lambda: on_patient(build_record),
        "rules": lambda: on_patient(evaluate),
        "cards": cards,
        "handler": lambda: handler.handle(SERVICE_ID, orjson.loads(body)),
        "flask": flask,
    }


def child(stage: str, calls: int) -> None:
    """Runs under callgrind: load the app as a gunicorn worker does, warm every path, then run one stage
    ``calls`` times."""
    settings = load_settings()
    worker = CdsServer(lambda: create_app(settings), gunicorn_options(settings, "127.0.0.1:0", 1, 1))
    stages = build_stages(worker.load(), request_body())
    for _ in range(WARM_UP_CALLS):
        for run in stages.values():
            run()
    run = stages[stage]
    for _ in range(calls):
        run()


def instructions(stage: str, calls: int, workdir: Path) -> int:
    out = workdir / f"{stage}-{calls}.callgrind"
    env = bench_service_env(workdir, prefix=f"{stage}-{calls}-")
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        stage,
        "--calls",
        str(calls),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} failed under valgrind:\n{done.stderr[-2000:]}")
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=50, help="calls counted per stage (default 50)")
    parser.add_argument("--child", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls)
        return 0
    print(f"request: patient-view, {len(request_body()) / 1024:.0f} KB; {args.calls} calls per stage")
    runs = [(STAGE_NAMES[0], 0)] + [(stage, args.calls) for stage in STAGE_NAMES]
    with tempfile.TemporaryDirectory(prefix="cds-stages-") as tmp, ThreadPoolExecutor(os.cpu_count()) as pool:
        counts = list(pool.map(lambda run: instructions(*run, Path(tmp)), runs))
    baseline = counts[0]
    print(f"  {'stage':9} {'to here':>9} {'this step':>10}   M instructions per call")
    before = 0.0
    for stage, total in zip(STAGE_NAMES, counts[1:], strict=True):
        per_call = (total - baseline) / args.calls / 1e6
        print(f"  {stage:9} {per_call:9.2f} {per_call - before:+10.2f}   {DESCRIPTIONS[stage]}")
        before = per_call
    return 0


if __name__ == "__main__":
    sys.exit(main())
