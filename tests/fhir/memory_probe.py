"""How much memory one process's FhirClient takes when a FHIR server answers large searchsets to several
hook calls at once: the measurement behind ``cds_service.fhir.memory``.

Run ``python -m tests.fhir.memory_probe`` (options: ``--help``). The fake EHR runs in this process and
answers every query with the same canned searchset of about ``--mib`` MiB; a child process (the
"worker") runs ``--calls`` threads, each one ``fetch_all`` of ``--keys`` queries, all at once, as a
gunicorn worker's threads would, then prints its peak resident set (VmHWM) before and after, and what
became of the keys. The server's copy of the body is in this process, so it is not counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

from tests.support.fake_ehr_fhir import FakeEhrFhir

_CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from collections import Counter
    from cds_service.fhir import client as client_module
    from cds_service.fhir.client import FhirClient

    base, calls, keys, budget_ms, max_response = sys.argv[1:6]
    calls, keys, budget_ms = int(calls), int(keys), int(budget_ms)

    def hwm_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    kwargs = {"max_response_bytes": int(max_response)} if max_response != "default" else {}
    fhir = FhirClient(**kwargs)
    # Warm up: the session, the pool and the parsers, on a small answer.
    fhir.fetch_all(base, {"p": "Patient/small"}, authorization=None, budget_ms=5000)
    before = hwm_kib()
    results = []
    barrier = threading.Barrier(calls)

    def one_call(n):
        queries = {f"key{k}": f"Observation?patient=big&call={n}&key={k}" for k in range(keys)}
        barrier.wait()
        outcomes = fhir.fetch_all(base, queries, authorization=None, budget_ms=budget_ms)
        results.append(Counter("ok" if o.ok else o.error.split(":")[0][:60] for o in outcomes.values()))
        del outcomes

    threads = [threading.Thread(target=one_call, args=(n,)) for n in range(calls)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = sum(results, Counter())
    memory = getattr(client_module, "PROCESS_MEMORY", None)  # before the budget: none
    held = memory.held if memory is not None else None
    print(json.dumps({"before_mib": before / 1024, "peak_mib": hwm_kib() / 1024, "seconds": elapsed,
                      "outcomes": dict(total), "held_after": held}))
    fhir.close()
    """
)


def searchset_of_about(mib: float) -> bytes:
    """A searchset of Observations shaped like a lab server's, about ``mib`` MiB of compact JSON."""
    entry = {
        "fullUrl": "http://ehr.example/baseR4/Observation/{n}",
        "resource": {
            "resourceType": "Observation",
            "id": "{n}",
            "meta": {"versionId": "1", "lastUpdated": "2026-01-02T03:04:05.000+00:00"},
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                            "display": "laboratory",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "718-7",
                        "display": "Hemoglobin [Mass/volume] in Blood",
                    }
                ],
                "text": "Hemoglobin",
            },
            "subject": {"reference": "Patient/big"},
            "effectiveDateTime": "2025-03-04T05:06:07+00:00",
            "valueQuantity": {
                "value": 13.2,
                "unit": "g/dL",
                "system": "http://unitsofmeasure.org",
                "code": "g/dL",
            },
        },
        "search": {"mode": "match"},
    }
    one = len(json.dumps(entry)) + 8
    count = int(mib * 1024 * 1024 / one)
    entries = []
    for n in range(count):
        item = json.loads(json.dumps(entry).replace("{n}", f"obs-{n}"))
        entries.append(item)
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": count, "entry": entries}
    return json.dumps(bundle, separators=(",", ":")).encode()


def measure(
    *, mib: float, calls: int, keys: int, budget_ms: int = 60_000, max_response: str = "default"
) -> dict:
    body = searchset_of_about(mib)
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/small", 200, {"resourceType": "Patient", "id": "small"})
        for n in range(calls):
            for k in range(keys):
                ehr.add_canned(f"Observation?patient=big&call={n}&key={k}", 200, body)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, ehr.base_url, str(calls), str(keys), str(budget_ms), max_response],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["body_mib"] = len(body) / 1024 / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=24.0, help="size of each answer, MiB")
    parser.add_argument("--calls", type=int, default=4, help="hook calls at once (a worker's threads)")
    parser.add_argument("--keys", type=int, default=8, help="queries per call")
    parser.add_argument("--budget-ms", type=int, default=60_000)
    parser.add_argument("--max-response", default="default", help="max_response_bytes, or 'default'")
    args = parser.parse_args()
    print(
        json.dumps(
            measure(
                mib=args.mib,
                calls=args.calls,
                keys=args.keys,
                budget_ms=args.budget_ms,
                max_response=args.max_response,
            )
        )
    )


if __name__ == "__main__":
    main()
