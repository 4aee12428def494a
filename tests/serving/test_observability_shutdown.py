"""A graceful stop (SIGTERM to the master, as Kubernetes sends it) writes every call's line, once.

INFO lines wait up to 0.2 s in each worker's buffer (``batched_log``): calls answered just before the
signal, and calls still in flight when it comes (they finish within the graceful timeout), must all have
their line in the log when the server has exited, none twice; and the counters had counted each.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cds_service.observability import CALL_LOGGER
from tests.support.delay_proxy import DelayProxy
from tests.support.fake_ehr_fhir import FakeEhrFhir
from tests.support.served import HOOKS_NOW, Served, hook_example

pytestmark = pytest.mark.integration

VIEW = "/cds-services/b12-iron-patient-view"
QUICK_CALLS = 48
SLOW_CALLS = 3


def test_sigterm_writes_the_line_of_every_call_answered_or_in_flight_exactly_once(tmp_path: Path) -> None:
    with FakeEhrFhir() as fhir, DelayProxy(fhir.origin, delay_s=1.0) as proxy:
        labs = hook_example("patient-view.json")["prefetch"]["b12IronLabs"]["entry"]
        fhir.add_search("Observation", [entry["resource"] for entry in labs], page_size=10)
        fhir_server = proxy.url("/baseR4")
        served = Served(
            tmp_path, workers=2, threads=4, CDS_NOW=HOOKS_NOW, CDS_ALLOWED_FHIR_SERVERS=fhir_server
        )
        try:
            answered: dict[str, int] = {}

            def call(slow: bool) -> None:
                body = hook_example("patient-view.json")
                body["hookInstance"] = str(uuid.uuid4())
                if slow:  # its labs come from the FHIR server, a second away
                    del body["prefetch"]["b12IronLabs"]
                    body["fhirServer"] = fhir_server
                status = requests.post(f"{served.base}{VIEW}", json=body, timeout=30).status_code
                answered[body["hookInstance"]] = status

            slow = [threading.Thread(target=call, args=(True,)) for _ in range(SLOW_CALLS)]
            for thread in slow:
                thread.start()
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(call, [False] * QUICK_CALLS))
            metrics = requests.get(f"{served.base}/metrics", timeout=5).text
            time.sleep(0.05)
            assert len(proxy.seen) >= 1 and len(answered) == QUICK_CALLS, "the slow calls are in flight"
            served.terminate()  # within the log writer's 0.2 s of the last quick answer
            for thread in slow:
                thread.join(timeout=30)
            assert served.process.wait(timeout=35) == 0
        finally:
            served.stop()

    assert len(answered) == QUICK_CALLS + SLOW_CALLS
    assert set(answered.values()) == {200}
    lines = [entry for entry in served.log_entries() if entry["logger"] == CALL_LOGGER]
    seen = Counter(line["hookInstance"] for line in lines)
    assert set(seen) == set(answered), "a call's line was lost"
    assert set(seen.values()) == {1}, "a call's line was written twice"
    assert sorted(line["fhir_queries"] for line in lines if line["fhir_queries"]) == [1] * SLOW_CALLS
    # The counters had the quick calls before the stop (the slow ones were still running).
    assert (
        f'cds_hook_requests_total{{service="b12-iron-patient-view",status="200"}} {QUICK_CALLS}.0' in metrics
    )
    exits = [e for e in served.log_entries() if str(e.get("message", "")).startswith("Worker exiting")]
    assert len(exits) == 2
