"""The run-ahead cache: lifetime, size bound, key stability, thread safety, and the Redis backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cds_service.config import Settings
from cds_service.run_ahead import MAX_ENTRY_BYTES, RunAheadCache
from tests.support.processes import free_port
from tests.support.redis_server import running_redis

DRAFT_B12 = {
    "resourceType": "MedicationRequest",
    "id": "draft-1",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "309594"}]
    },
    "subject": {"reference": "Patient/p1"},
}
DRAFT_LAB = {"resourceType": "ServiceRequest", "id": "draft-2", "status": "draft", "intent": "order"}
FINDINGS = [{"topic": "iron-studies-after-b12", "values": [{"loinc": "2276-4", "value": 184.0}]}]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def memory_cache(seconds: int = 60, max_entries: int = 100, clock: FakeClock | None = None) -> RunAheadCache:
    return RunAheadCache(
        Settings(run_ahead_seconds=seconds), clock=clock or FakeClock(), max_entries=max_entries
    )


def test_a_stored_value_comes_back_until_its_lifetime_ends() -> None:
    clock = FakeClock()
    cache = memory_cache(seconds=30, clock=clock)
    key = cache.key("p1", "e1", [DRAFT_B12], "digest-1")
    cache.put(key, FINDINGS)
    clock.now += 29.9
    assert cache.get(key) == FINDINGS
    clock.now += 0.2
    assert cache.get(key) is None


def test_a_hit_is_a_copy_the_caller_may_change() -> None:
    cache = memory_cache()
    cache.put("k", FINDINGS)
    first = cache.get("k")
    assert first is not None
    first[0]["topic"] = "changed"
    assert cache.get("k") == FINDINGS


def test_the_entry_that_expires_soonest_goes_first_past_the_bound() -> None:
    """A hit does not lengthen an entry's life, so the oldest entry goes first, read or not."""
    clock = FakeClock()
    cache = memory_cache(max_entries=3, clock=clock)
    for name in ("a", "b", "c"):
        cache.put(name, [{"n": name}])
        clock.now += 1
    assert cache.get("a") == [{"n": "a"}]
    cache.put("d", [{"n": "d"}])
    assert cache.get("a") is None
    assert [cache.get(name) for name in ("b", "c", "d")] == [[{"n": "b"}], [{"n": "c"}], [{"n": "d"}]]


def test_an_entry_stored_again_lives_from_then_and_is_counted_once() -> None:
    clock = FakeClock()
    cache = memory_cache(seconds=30, max_entries=2, clock=clock)
    cache.put("a", [{"n": 1}])
    cache.put("b", [{"n": "b"}])
    clock.now += 20
    cache.put("a", [{"n": 2}])
    clock.now += 15
    assert (cache.get("a"), cache.get("b")) == ([{"n": 2}], None)
    assert len(cache._store) == 1


def test_expired_entries_leave_memory_at_the_next_call_whatever_its_key() -> None:
    """A patient's findings are not kept past their lifetime because nobody asked for them again."""
    clock = FakeClock()
    cache = memory_cache(seconds=30, clock=clock)
    for n in range(5):
        cache.put(f"patient-{n}", FINDINGS)
    clock.now += 30
    cache.get("someone-else")
    assert len(cache._store) == 0
    assert cache._store.bytes == 0


def test_the_bytes_held_stay_within_the_bound() -> None:
    entry = [{"text": "x" * 10_000}]
    cache = memory_cache(max_entries=1000)
    cache._store.max_bytes = 100_000
    for n in range(50):
        cache.put(f"k{n}", entry)
        assert cache._store.bytes <= 100_000
    held = [n for n in range(50) if cache.get(f"k{n}") is not None]
    assert held == list(range(50 - len(held), 50)) and 5 <= len(held) < 10, "the newest, as many as fit"


def test_an_entry_larger_than_the_limit_is_not_kept() -> None:
    cache = memory_cache()
    cache.put("small", FINDINGS)
    cache.put("large", [{"text": "x" * MAX_ENTRY_BYTES}])
    assert cache.get("large") is None
    assert cache.get("small") == FINDINGS


def test_zero_seconds_turns_the_cache_off() -> None:
    cache = memory_cache(seconds=0)
    cache.put("k", FINDINGS)
    assert cache.get("k") is None
    assert "off" in cache.describe()


def test_the_key_ignores_the_order_of_json_keys_but_not_of_drafts() -> None:
    """Cards name the drafts, and suggest removing them, in the order the EHR sent them."""
    reordered_b12 = dict(reversed(list(DRAFT_B12.items())))
    reordered_b12["medicationCodeableConcept"] = {
        "coding": [dict(reversed(list(DRAFT_B12["medicationCodeableConcept"]["coding"][0].items())))]
    }
    one = RunAheadCache.key("p1", "e1", [DRAFT_B12, DRAFT_LAB], "d")
    assert RunAheadCache.key("p1", "e1", [reordered_b12, DRAFT_LAB], "d") == one
    assert RunAheadCache.key("p1", "e1", [DRAFT_LAB, DRAFT_B12], "d") != one
    assert len(one) == 64


@pytest.mark.parametrize(
    "changed",
    [
        ("p2", "e1", [DRAFT_B12], "d"),
        ("p1", "e2", [DRAFT_B12], "d"),
        ("p1", None, [DRAFT_B12], "d"),
        ("p1", "e1", [DRAFT_B12, DRAFT_LAB], "d"),
        ("p1", "e1", [{**DRAFT_B12, "status": "active"}], "d"),
        ("p1", "e1", [DRAFT_B12], "d2"),
    ],
)
def test_the_key_changes_with_anything_the_answer_depends_on(changed: tuple) -> None:
    assert RunAheadCache.key("p1", "e1", [DRAFT_B12], "d") != RunAheadCache.key(*changed)


def test_many_threads_share_one_cache_without_losing_entries() -> None:
    cache = memory_cache(max_entries=10_000)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(300):
                key = f"{thread}-{i}"
                cache.put(key, [{"thread": thread, "i": i}])
                assert cache.get(key) == [{"thread": thread, "i": i}]
                cache.get(f"{(thread + 1) % 8}-{i}")
        except BaseException as error:  # collected for the main thread's assertion
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(cache.get(f"{t}-{i}") == [{"thread": t, "i": i}] for t in range(8) for i in range(300))


def test_describe_says_where_entries_live() -> None:
    assert "memory" in memory_cache(seconds=45).describe()
    assert "45 s" in memory_cache(seconds=45).describe()


# --- Redis: a real redis-server on loopback ------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis"), "run-ahead-pass") as url:
        yield url


@pytest.mark.integration
def test_two_replicas_share_entries_through_redis(redis_url: str) -> None:
    settings = Settings(run_ahead_seconds=30, redis_url=redis_url)
    replica_a, replica_b = RunAheadCache(settings), RunAheadCache(settings)
    key = RunAheadCache.key("p1", "e1", [DRAFT_B12], "digest")
    replica_a.put(key, FINDINGS)
    assert replica_b.get(key) == FINDINGS
    description = replica_a.describe()
    assert "Redis" in description
    assert "run-ahead-pass" not in description


@pytest.mark.integration
def test_redis_expires_entries_after_their_lifetime(redis_url: str) -> None:
    cache = RunAheadCache(Settings(run_ahead_seconds=1, redis_url=redis_url))
    cache.put("short-lived", FINDINGS)
    assert cache.get("short-lived") == FINDINGS
    time.sleep(1.3)
    assert cache.get("short-lived") is None


def test_an_unreachable_redis_is_a_miss_not_an_error_and_is_used_once_it_is_back(tmp_path: Path) -> None:
    """Down when the worker starts too: the cache is built without reaching Redis, and uses it later."""
    pytest.importorskip("redis", reason="the optional 'redis' extra is not installed")
    port = free_port()
    cache = RunAheadCache(Settings(run_ahead_seconds=30, redis_url=f"redis://:pass@127.0.0.1:{port}/0"))
    cache.put("k", FINDINGS)
    assert cache.get("k") is None
    with running_redis(tmp_path, "pass", port=port):
        cache.put("k", FINDINGS)
        assert cache.get("k") == FINDINGS
