"""The run-ahead cache in a real Redis shared by two replicas: a hit where a fresh evaluation agrees, a full
Redis (``noeviction``, as deploy/redis.yaml runs it) and a value another program left under the key."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cds_service.config import Settings
from cds_service.observability import CallTrace
from cds_service.run_ahead import KEY_PREFIX, RunAheadCache
from cds_service.services import build_handler
from tests.builders import card_summaries, select_and_sign
from tests.clinical.builders import obs
from tests.support.redis_server import running_redis

pytestmark = pytest.mark.integration

SELECT = "b12-iron-order-select"
SIGN = "b12-iron-order-sign"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with running_redis(tmp_path, "run-ahead-redis-pass") as url:
        yield url


def _bodies() -> tuple[dict, dict]:
    return select_and_sign([obs("b12", 1200, 10, pid="pat-1")])


def _sign_on_another_replica(settings: Settings) -> tuple[dict, CallTrace, dict]:
    select, sign = _bodies()
    build_handler(settings, run_ahead=RunAheadCache(settings)).handle(SELECT, select)
    trace = CallTrace(service=SIGN)
    answer = build_handler(settings, run_ahead=RunAheadCache(settings)).handle(
        SIGN, copy.deepcopy(sign), None, trace
    )
    return answer, trace, build_handler(settings).handle(SIGN, copy.deepcopy(sign))


def test_a_replica_answers_order_sign_from_the_entry_another_made(settings: Settings, redis_url: str) -> None:
    answer, trace, fresh = _sign_on_another_replica(settings.with_overrides(redis_url=redis_url))
    assert trace.run_ahead_hit is True
    assert card_summaries(answer) == card_summaries(fresh) and answer["cards"]


def test_a_full_redis_costs_the_hit_only(
    settings: Settings, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses every write once past maxmemory with noeviction (OOM): order-select still answers,
    order-sign computes afresh, and the log names the Redis and the error."""
    redis = pytest.importorskip("redis")
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # any write now exceeds it
    try:
        with caplog.at_level(logging.WARNING, logger="cds_service.run_ahead"):
            answer, trace, fresh = _sign_on_another_replica(settings.with_overrides(redis_url=redis_url))
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    assert trace.run_ahead_hit is False
    assert card_summaries(answer) == card_summaries(fresh) and answer["cards"]
    failures = [r.getMessage() for r in caplog.records if "run-ahead cache write failed" in r.getMessage()]
    assert failures, "the refused write is logged"
    assert "OutOfMemoryError" in failures[0], failures
    assert "run-ahead-redis-pass" not in " ".join(failures)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\xff\xfe not json", id="not JSON"),
        pytest.param(b'{"from": "2026-01-15T09:00:00+00:00"}', id="an object of another shape"),
        pytest.param(b"[" * 2000 + b"]" * 2000, id="nested deeper than orjson reads"),
    ],
)
def test_a_value_another_program_left_under_the_key_is_a_miss(
    settings: Settings, redis_url: str, value: bytes
) -> None:
    redis = pytest.importorskip("redis")
    shared = settings.with_overrides(redis_url=redis_url)
    select, sign = _bodies()
    build_handler(shared, run_ahead=RunAheadCache(shared)).handle(SELECT, select)
    admin = redis.Redis.from_url(redis_url)
    try:
        [key] = admin.keys(f"{KEY_PREFIX}*")
        admin.set(key, value)
    finally:
        admin.close()
    trace = CallTrace(service=SIGN)
    answer = build_handler(shared, run_ahead=RunAheadCache(shared)).handle(
        SIGN, copy.deepcopy(sign), None, trace
    )
    assert trace.run_ahead_hit is False
    assert card_summaries(answer) == card_summaries(build_handler(settings).handle(SIGN, copy.deepcopy(sign)))
