"""The production server, driven as an operator would: a real `cds-service serve` with 2 workers."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.delay_proxy import DelayProxy
from tests.support.fhir_server import running_sekmet
from tests.support.processes import free_port
from tests.support.served import COMMAND, HOOKS_NOW, Served, clean_env, hook_example, serve_to_its_end

pytestmark = pytest.mark.integration

PATIENT_VIEW = "/cds-services/b12-iron-patient-view"
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def metric(body: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for match in _SAMPLE.finditer(body):
        if match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match["value"])
    return total


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("served"), workers=2, threads=4, CDS_NOW=HOOKS_NOW)
    yield server
    server.stop()


def test_healthz_and_readyz_answer(served: Served) -> None:
    health = requests.get(f"{served.base}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = requests.get(f"{served.base}/readyz", timeout=5)
    assert ready.status_code == 200


def test_metrics_add_up_across_both_workers(served: Served) -> None:
    body = hook_example("patient-view.json")
    before = requests.get(f"{served.base}/metrics", timeout=5).text
    count_before = metric(before, "cds_hook_request_duration_seconds_count", service="b12-iron-patient-view")
    calls = 0

    def call(_: int) -> int:
        # A new connection per call, so the kernel spreads them over both workers' listeners.
        return requests.post(f"{served.base}{PATIENT_VIEW}", json=body, timeout=30).status_code

    [metrics_dir] = served.metrics_dirs()
    with ThreadPoolExecutor(max_workers=8) as pool:
        while calls < 400:
            statuses = list(pool.map(call, range(16)))
            assert statuses == [200] * 16
            calls += 16
            pids = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("histogram_*.db")}
            if len(pids) >= 2 and calls >= 32:
                break
    assert len(pids) >= 2, "every call reached the same worker; cannot check aggregation"

    after = requests.get(f"{served.base}/metrics", timeout=5).text
    service = {"service": "b12-iron-patient-view"}
    assert metric(after, "cds_hook_request_duration_seconds_count", **service) == count_before + calls
    assert metric(after, "cds_hook_requests_total", status="200", **service) >= calls
    assert metric(after, "cds_cards_total", topic="iron-studies-after-b12", **service) >= calls
    assert "# TYPE cds_hook_request_duration_seconds histogram" in after
    assert metric(after, "cds_hook_phase_duration_seconds_count", phase="validation") >= calls


def test_every_log_line_is_json_and_each_call_has_one_line(served: Served) -> None:
    body = hook_example("patient-view.json")
    body["hookInstance"] = "7d3f0c8e-5b7a-4d1e-9a77-0f6a3c2b1e55"
    assert requests.post(f"{served.base}{PATIENT_VIEW}", json=body, timeout=30).status_code == 200
    served.wait_for_log(body["hookInstance"])
    entries = [json.loads(line) for line in served.log().splitlines() if line.strip()]
    calls = [e for e in entries if e.get("hookInstance") == body["hookInstance"]]
    assert len(calls) == 1
    [line] = calls
    assert line["logger"] == "cds_service.calls"
    assert line["service"] == "b12-iron-patient-view"
    assert line["status"] == 200
    assert "iron-studies-after-b12" in line["topics"]
    assert {"validation", "rules"} <= set(line["phases_ms"])
    assert body["context"]["patientId"] not in served.log()
    assert any(e["logger"].startswith("gunicorn") for e in entries)
    # No access log beside the call line: gunicorn would otherwise add one line per request.
    assert not [e for e in entries if e["logger"] == "gunicorn.access"]


def test_order_sign_is_answered_from_the_order_select_result(served: Served) -> None:
    """One keep-alive connection, as an EHR's HTTP client keeps it: both calls reach the same worker,
    whose in-process run-ahead cache holds the order-select result (Redis shares it across workers)."""
    select = hook_example("order-select-cyanocobalamin.json")
    sign = json.loads(json.dumps(select))
    sign["hook"] = "order-sign"
    sign["hookInstance"] = "5b0f6c1e-2d7a-4c8e-9f3b-7a6d5e4c3b2a"
    del sign["context"]["selections"]
    hits_before = metric(
        requests.get(f"{served.base}/metrics", timeout=5).text,
        "cds_run_ahead_hits_total",
        service="b12-iron-order-sign",
    )
    with requests.Session() as session:
        selected = session.post(f"{served.base}/cds-services/b12-iron-order-select", json=select, timeout=30)
        signed = session.post(f"{served.base}/cds-services/b12-iron-order-sign", json=sign, timeout=30)
    assert selected.status_code == signed.status_code == 200
    topics = [card["source"]["topic"]["code"] for card in signed.json()["cards"]]
    assert topics == [card["source"]["topic"]["code"] for card in selected.json()["cards"]]
    assert "iron-studies-after-b12" in topics
    metrics = requests.get(f"{served.base}/metrics", timeout=5).text
    assert metric(metrics, "cds_run_ahead_hits_total", service="b12-iron-order-sign") == hits_before + 1
    served.wait_for_log(sign["hookInstance"])
    [line] = [json.loads(x) for x in served.log().splitlines() if sign["hookInstance"] in x]
    assert line["run_ahead_hit"] is True
    assert line["fhir_queries"] == 0


def test_sigterm_lets_a_call_in_flight_finish_then_exits_cleanly(tmp_path: Path) -> None:
    """The service's FHIR queries reach sekmet through a proxy that holds each one for a second."""
    body = hook_example("patient-view.json")
    body.pop("prefetch")
    result: dict[str, object] = {}
    with running_sekmet() as sekmet, DelayProxy(sekmet.origin, delay_s=1.0) as proxy:
        sekmet.put({"resourceType": "Patient", "id": body["context"]["patientId"]})
        body["fhirServer"] = proxy.url("/fhir")
        served = Served(
            tmp_path,
            workers=2,
            threads=4,
            CDS_NOW=HOOKS_NOW,
            CDS_ALLOWED_FHIR_SERVERS=body["fhirServer"],
            CDS_FHIR_BUDGET_MS="4000",
        )
        try:

            def call() -> None:
                started = time.monotonic()
                response = requests.post(f"{served.base}{PATIENT_VIEW}", json=body, timeout=30)
                result["status"], result["json"] = response.status_code, response.json()
                result["seconds"] = time.monotonic() - started

            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(0.4)
            [metrics_dir] = served.metrics_dirs()
            served.terminate()
            caller.join(timeout=30)
            assert served.process.wait(timeout=35) == 0
        finally:
            served.stop()
    assert result.get("status") == 200, result
    assert isinstance(result["json"], dict) and "cards" in result["json"]
    assert result["seconds"] >= 1.0
    assert not metrics_dir.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{served.base}/healthz", timeout=2)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CDS_FHIR_BUDGET_MS", "abc"), ("CDS_FOO", "1"), ("CDS_AUTH", "maybe")],
)
def test_a_bad_setting_stops_serve_with_one_line_naming_it(variable: str, value: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [COMMAND, "serve", "--port", "1"],
        env=clean_env(**{variable: value}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "content"),
    [
        ("CDS_CLIENTS", '{"clients": [{"jwks": {"keys": []}}]}'),
        ("CDS_SITE_CONFIG", '{"thresholdz": {"b12_elevated": 1000}}'),
    ],
)
def test_a_bad_configuration_file_stops_serve_with_one_line_before_any_worker_starts(
    variable: str, content: str, tmp_path: Path
) -> None:
    """Checked once in the master, not once per worker among gunicorn's shutdown lines."""
    path = tmp_path / "config.json"
    path.write_text(content)
    done = serve_to_its_end(
        tmp_path,
        *("--port", str(free_port()), "--workers", "2"),
        **{variable: str(path)},
        **({} if variable == "CDS_CLIENTS" else {"CDS_AUTH": "off"}),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"cds-service: configuration error: {variable}")
    assert not (tmp_path / "feedback.sqlite3").exists(), "nothing is opened before the check"
    assert not (tmp_path / "metrics").exists() or list((tmp_path / "metrics").iterdir()) == []


@pytest.mark.parametrize(("value", "message"), [("abc", "WEB_CONCURRENCY='abc'"), ("0", "WEB_CONCURRENCY=0")])
def test_a_bad_web_concurrency_is_a_usage_error_naming_it(value: str, message: str, tmp_path: Path) -> None:
    """gunicorn reads WEB_CONCURRENCY with int() when imported: it must not crash every command."""
    env = clean_env(WEB_CONCURRENCY=value)
    helped = subprocess.run(
        [COMMAND, "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    done = subprocess.run(
        [COMMAND, "serve", "--port", "1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
