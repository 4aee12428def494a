"""The call log line and the in-process metrics (the served, multi-worker case is in test_served.py)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service import observability
from cds_service.observability import CallTrace, JsonFormatter, finish_call


def sample(name: str, **labels: str) -> float:
    return observability._get_metrics().registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def call_log() -> Iterator[io.StringIO]:
    """Capture the calls logger's output through the service's JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(observability.CALL_LOGGER)
    saved = (logger.handlers[:], logger.propagate, logger.level, logging.root.manager.disable)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logging.disable(logging.NOTSET)
    logger.setLevel(logging.INFO)  # setLevel, not assignment: it also clears the enabled-for cache
    yield stream
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
    logging.disable(saved[3])


def test_phases_accumulate_time_per_name() -> None:
    trace = CallTrace(service="b12-iron-patient-view")
    with trace.phase("rules"):
        pass
    first = trace.phases_ms["rules"]
    with trace.phase("rules"):
        sum(range(10_000))
    assert trace.phases_ms["rules"] > first >= 0.0
    assert set(trace.phases_ms) == {"rules"}


def test_a_phase_is_recorded_even_when_its_block_raises() -> None:
    trace = CallTrace(service="s")
    with pytest.raises(ValueError), trace.phase("fhir"):
        raise ValueError("FHIR server down")
    assert "fhir" in trace.phases_ms


def test_one_call_writes_one_json_line_with_its_fields(call_log: io.StringIO) -> None:
    trace = CallTrace(
        service="b12-iron-order-sign",
        hook_instance="0b8d5a8e-4f8c-4a57-9d55-1f1f8f2f0c11",
        phases_ms={"validation": 1.25, "rules": 2.5},
        topics=["iron-studies-after-b12", "b12-not-for-high-ferritin"],
        fhir_queries=3,
        fhir_errors=1,
        status=200,
        run_ahead_hit=True,
    )
    finish_call(trace, 12.3456)
    lines = call_log.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["logger"] == "cds_service.calls"
    assert entry["level"] == "INFO"
    assert entry["time"].endswith("+00:00")
    assert entry["service"] == "b12-iron-order-sign"
    assert entry["hookInstance"] == "0b8d5a8e-4f8c-4a57-9d55-1f1f8f2f0c11"
    assert entry["status"] == 200
    assert entry["latency_ms"] == 12.346
    assert entry["phases_ms"] == {"validation": 1.25, "rules": 2.5}
    assert entry["topics"] == ["iron-studies-after-b12", "b12-not-for-high-ferritin"]
    assert entry["cards"] == 2
    assert (entry["fhir_queries"], entry["fhir_errors"], entry["run_ahead_hit"]) == (3, 1, True)


def test_the_call_line_carries_only_the_trace_fields(call_log: io.StringIO) -> None:
    """Nothing but what CallTrace holds can reach the log: no request body, patient id or token."""
    finish_call(CallTrace(service="b12-iron-patient-view", hook_instance="h-1"), 1.0)
    entry = json.loads(call_log.getvalue())
    expected = {"time", "level", "logger", "message", "service", "hookInstance", "status", "latency_ms"}
    expected |= {"phases_ms", "cards", "topics", "fhir_queries", "fhir_errors", "run_ahead_hit"}
    assert set(entry) == expected


def test_finish_call_updates_the_request_metrics() -> None:
    service = "metrics-test-service"
    before_count = sample("cds_hook_request_duration_seconds_count", service=service)
    before_200 = sample("cds_hook_requests_total", service=service, status="200")
    before_cards = sample("cds_cards_total", service=service, topic="iron-studies-after-b12")
    before_hits = sample("cds_run_ahead_hits_total", service=service)
    trace = CallTrace(service=service, topics=["iron-studies-after-b12"] * 2, run_ahead_hit=True)
    finish_call(trace, 40.0)
    finish_call(CallTrace(service=service, status=400), 2.0)
    assert sample("cds_hook_request_duration_seconds_count", service=service) == before_count + 2
    assert sample("cds_hook_requests_total", service=service, status="200") == before_200 + 1
    assert sample("cds_hook_requests_total", service=service, status="400") >= 1
    assert sample("cds_cards_total", service=service, topic="iron-studies-after-b12") == before_cards + 2
    assert sample("cds_run_ahead_hits_total", service=service) == before_hits + 1


def test_service_labels_a_caller_chooses_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh bound, so that this test's junk labels do not crowd out other tests' real service ids.
    monkeypatch.setattr(observability._get_metrics(), "service_label", observability._BoundedLabel())
    finish_call(CallTrace(service="no such service/../x", status=400), 1.0)
    assert sample("cds_hook_requests_total", service="invalid", status="400") >= 1
    for index in range(200):
        finish_call(CallTrace(service=f"random-{index}", status=400), 1.0)
    label_values = {
        s.labels["service"]
        for metric in observability._get_metrics().registry.collect()
        if metric.name == "cds_hook_requests"
        for s in metric.samples
    }
    assert len({value for value in label_values if value.startswith("random-")}) == 64
    assert "other" in label_values


def test_calls_to_services_that_do_not_exist_share_one_label() -> None:
    before = sample("cds_hook_requests_total", service="unknown", status="404")
    for index in range(5):
        finish_call(CallTrace(service=f"made-up-{index}", status=404), 1.0)
    assert sample("cds_hook_requests_total", service="unknown", status="404") == before + 5
    assert sample("cds_hook_requests_total", service="made-up-0", status="404") == 0.0


def test_fhir_auth_and_feedback_counters() -> None:
    errors = sample("cds_fhir_fetch_errors_total")
    ok_count = sample("cds_fhir_fetch_duration_seconds_count", outcome="ok")
    rejections = sample("cds_auth_rejections_total", status="401")
    accepted = sample("cds_feedback_total", outcome="accepted")
    other = sample("cds_feedback_total", outcome="other")
    duplicates = sample("cds_feedback_duplicates_total")
    observability.observe_fhir_fetch(120.0, ok=True)
    observability.observe_fhir_fetch(1500.0, ok=False)
    observability.observe_auth_rejection()
    observability.observe_feedback("accepted", 3)
    observability.observe_feedback("made-up-outcome")
    observability.observe_feedback("accepted", duplicate=True)
    assert sample("cds_fhir_fetch_errors_total") == errors + 1
    assert sample("cds_fhir_fetch_duration_seconds_count", outcome="ok") == ok_count + 1
    assert sample("cds_auth_rejections_total", status="401") == rejections + 1
    assert sample("cds_feedback_total", outcome="accepted") == accepted + 3
    assert sample("cds_feedback_total", outcome="other") == other + 1
    assert sample("cds_feedback_duplicates_total") == duplicates + 1


def test_prepare_metrics_creates_the_known_series_at_zero() -> None:
    """Present with value 0.0, not merely absent (which ``sample`` would also read as 0.0)."""
    observability.prepare_metrics(["prepared-service"], ["prepared-topic"])
    registry = observability._get_metrics().registry
    fresh = [
        ("cds_hook_requests_total", {"service": "prepared-service", "status": "500"}),
        ("cds_cards_total", {"service": "prepared-service", "topic": "prepared-topic"}),
        ("cds_run_ahead_hits_total", {"service": "prepared-service"}),
        ("cds_hook_request_duration_seconds_count", {"service": "prepared-service"}),
    ]
    assert [registry.get_sample_value(name, labels) for name, labels in fresh] == [0.0] * len(fresh)
    # Other tests of this process may have counted these already: they must exist, at whatever value.
    shared = [
        ("cds_hook_requests_total", {"service": "unknown", "status": "404"}),
        ("cds_hook_phase_duration_seconds_count", {"phase": "fhir"}),
        ("cds_fhir_fetch_duration_seconds_count", {"outcome": "error"}),
        ("cds_feedback_total", {"outcome": "overridden"}),
    ]
    assert [registry.get_sample_value(name, labels) is not None for name, labels in shared] == [True] * 4
    no_such = {"service": "prepared-service", "status": "404"}
    assert registry.get_sample_value("cds_hook_requests_total", no_such) is None


def test_metrics_response_is_the_prometheus_text_format() -> None:
    finish_call(CallTrace(service="exposition-test"), 3.0)
    body, content_type = observability.metrics_response()
    assert content_type.startswith("text/plain")
    assert b'cds_hook_request_duration_seconds_count{service="exposition-test"} 1.0' in body
    assert b"# TYPE cds_hook_request_duration_seconds histogram" in body


def test_the_formatter_keeps_extra_fields_and_exceptions() -> None:
    logger = logging.getLogger("cds_service.test-formatter")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    record.hookInstance = "h-2"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed here"
    assert entry["hookInstance"] == "h-2"
    assert "RuntimeError: boom" in entry["exception"]


def test_a_metrics_failure_never_fails_the_call(
    call_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise OSError("metrics directory gone")

    monkeypatch.setattr(observability, "_get_metrics", broken)
    finish_call(CallTrace(service="b12-iron-patient-view", hook_instance="h-3"), 2.0)
    observability.observe_fhir_fetch(10.0, ok=True)
    observability.observe_auth_rejection()
    observability.observe_feedback("accepted")
    assert json.loads(call_log.getvalue())["hookInstance"] == "h-3"


@settings(max_examples=200, deadline=None)
@given(message=st.text(max_size=40), field=st.text(max_size=40))
def test_a_log_line_is_one_line_whatever_text_it_carries(message: str, field: str) -> None:
    """orjson leaves NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR raw, which split a line for Python's
    splitlines and other Unicode-aware readers; a caller's path reached the log that way."""
    record = logging.makeLogRecord({"name": "cds_service.test", "levelname": "INFO", "msg": message})
    record.service = field
    line = JsonFormatter().format(record)
    assert line.splitlines() == [line]
    assert not set(line) & {"\x85", "\u2028", "\u2029", "\x7f", "\x9b"}
    entry = json.loads(line)
    assert (entry["message"], entry["service"]) == (message, field)


def test_line_breaks_beyond_ascii_are_written_as_escapes() -> None:
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "a\x85b\u2028c\u2029d"})
    assert '"message":"a\\u0085b\\u2028c\\u2029d"' in JsonFormatter().format(record)


def test_help_texts_name_units_and_where_the_calls_they_leave_out_are_counted() -> None:
    """An operator reads HELP on a dashboard or in the scrape: a metric another one's help refers to is
    named as exposed (with ``_total``), a duration says seconds, and the request metrics say that calls
    refused by authentication are not in them."""
    body, _ = observability.metrics_response()
    helps = dict(re.findall(r"^# HELP (cds_\w+) (.*)$", body.decode(), re.MULTILINE))
    types = dict(re.findall(r"^# TYPE (cds_\w+) (\w+)$", body.decode(), re.MULTILINE))
    # The in-process registry's _created gauges (not written in multiprocess mode, the served one).
    helps = {name: text for name, text in helps.items() if not name.endswith("_created")}
    types = {name: kind for name, kind in types.items() if not name.endswith("_created")}
    assert helps and set(helps) == set(types)
    for name, kind in types.items():
        assert name.endswith("_seconds" if kind == "histogram" else "_total"), name
        if kind == "histogram":
            assert "seconds" in helps[name].lower(), name
        for mentioned in re.findall(r"\bcds_\w+", helps[name]):
            assert mentioned in types, f"{name}'s help names {mentioned}, which is not exposed"
    for name in ("cds_hook_requests_total", "cds_hook_request_duration_seconds"):
        assert "cds_auth_rejections_total" in helps[name], name
