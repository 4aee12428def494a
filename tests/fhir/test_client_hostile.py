"""FhirClient against a FHIR server that answers a byte at a time: the budget bounds the whole answer.

The read timeout bounds each ``recv``, so a server that keeps sending a little (the status line and
headers, or the body) never trips it. The hook call was answered in time anyway, but the pool thread kept
reading for as long as the server liked, and once every pool thread was held so, every later call of the
worker waited in the queue and timed out, whatever server it asked.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cds_service.fhir.client import FhirClient
from tests.support.fake_ehr_fhir import FakeEhrFhir

pytestmark = pytest.mark.integration

HEADERS_DRIP = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400
BODY_DRIP = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n"


@contextmanager
def dripping_server(prefix: bytes, *, every_s: float = 0.1) -> Iterator[tuple[str, list[float]]]:
    """A FHIR base whose every answer is ``prefix`` then one byte per ``every_s``, for up to a minute.

    Yields the base URL and, per connection, how long it was held before the client let it go."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[float] = []
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        started = time.monotonic()
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(prefix[:20])
                for byte in [prefix[i : i + 1] for i in range(20, len(prefix))] + [b" "] * 600:
                    if stop.wait(every_s):
                        return
                    conn.sendall(byte)
            except OSError:
                held.append(time.monotonic() - started)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir", held
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("prefix", [HEADERS_DRIP, BODY_DRIP], ids=["headers", "body"])
def test_a_dripping_server_holds_no_pool_thread_past_the_budget(prefix: bytes) -> None:
    client = FhirClient(max_workers=2)
    try:
        with dripping_server(prefix) as (slow_base, held), FakeEhrFhir() as healthy:
            healthy.add_canned("Patient/p1", 200, {"resourceType": "Patient", "id": "p1"})
            started = time.monotonic()
            slow = client.fetch_all(
                slow_base, {"a": "Patient/p1", "b": "Patient/p2"}, authorization=None, budget_ms=300
            )
            assert time.monotonic() - started < 0.6
            assert all(o.error.startswith("timeout after 300 ms") for o in slow.values())

            fast = client.fetch_all(healthy.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=1000)
            assert fast["p"].ok, fast["p"].error
            deadline = time.monotonic() + 2
            while len(held) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(held) == 2 and max(held) < 1.0, held
    finally:
        client.close()


def test_a_next_link_that_is_not_a_url_fails_its_key_without_a_stack_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``urljoin`` raises ValueError on "http://[::1": it reached the catch-all, which logged a stack
    trace and gave the integrator "unexpected error … ValueError"."""
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": "http://[::1"}],
    }
    client = FhirClient()
    try:
        with FakeEhrFhir() as ehr:
            ehr.add_canned("Observation?patient=p1", 200, page)
            ehr.add_canned("Patient/p1", 302, b"", "text/plain", headers=(("Location", "http://[::1/x"),))
            outcomes = client.fetch_all(
                ehr.base_url,
                {"labs": "Observation?patient=p1", "patient": "Patient/p1"},
                authorization=None,
                budget_ms=3000,
            )
    finally:
        client.close()
    assert outcomes["labs"].error == f"next link of {ehr.base_url}/Observation?patient=p1 is not a valid URL"
    assert outcomes["patient"].error == (
        f"HTTP 302 from {ehr.base_url}/Patient/p1: redirect to a malformed Location not followed"
    )
    assert not [record for record in caplog.records if record.exc_info]
