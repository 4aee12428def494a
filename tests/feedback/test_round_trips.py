"""A feedback post costs the database a few round trips, not one per item.

Across a network each round trip to PostgreSQL costs about a millisecond, and a post may carry 1,000
items (the schema's maximum): one INSERT per item, each waiting for its answer, held the request's thread
and the transaction's locks for a second or more, where a pipeline sends them together. The private test
cluster answers too fast to tell, so the link to it is slowed (tests/support/slow_socket.py): every piece
the client writes waits ``DELAY_S``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cds_service.feedback import FeedbackStore, parse_feedback
from cds_service.feedback.schema import FeedbackItem
from tests.support.slow_socket import SlowUnixLink

SERVICE = "b12-iron-patient-view"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DELAY_S = 0.02
ITEMS = 1000
# The pipelined post takes about 25 delays here (0.5 s); one round trip per item would be at least 1,000
# (20 s). The bound sits between them with room for a loaded CI machine, where the client's writes reach
# the link in more, smaller pieces and each piece waits DELAY_S: 100 (2 s) was four times the idle figure.
MOST_ROUND_TRIPS = 400


def items(first: int, count: int) -> list[FeedbackItem]:
    entries = [
        {
            "card": f"card-{n}",
            "outcome": "overridden",
            "outcomeTimestamp": (T0 + timedelta(seconds=n)).isoformat(),
        }
        for n in range(first, first + count)
    ]
    return parse_feedback({"feedback": entries})


def test_a_full_post_to_postgresql_takes_a_few_round_trips_and_says_which_items_were_new(
    postgres_url: str,
) -> None:
    FeedbackStore.open(postgres_url).close()  # the tables, made over the fast link
    socket_dir = parse_qs(urlsplit(postgres_url).query)["host"][0]
    socket_name = ".s.PGSQL.5432"
    with SlowUnixLink(Path(socket_dir) / socket_name, socket_name, DELAY_S) as link:
        store = FeedbackStore.open(postgres_url.replace(f"host={socket_dir}", f"host={link.directory}"))
        try:
            store.add_feedback(SERVICE, items(0, 10))  # connected; ten items stored already
            started = time.monotonic()
            new = store.add_feedback(SERVICE, items(0, ITEMS))
            elapsed = time.monotonic() - started
        finally:
            store.close()
    assert new == [False] * 10 + [True] * (ITEMS - 10)
    assert elapsed < MOST_ROUND_TRIPS * DELAY_S, (
        f"{ITEMS} items took {elapsed:.1f} s over a link that holds each write {DELAY_S * 1000:.0f} ms: "
        f"about {elapsed / DELAY_S:.0f} round trips"
    )
    report = FeedbackStore.open_for_reading(postgres_url).report()
    assert report["services"][SERVICE]["topics"]["unknown"]["overridden"] == ITEMS
