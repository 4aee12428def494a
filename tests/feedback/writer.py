"""A separate process that posts feedback batches to a store and prints each batch once it is committed.

Run as `python writer.py URL SERVICE WORKER BATCHES BATCH_SIZE`. Card uuids are `w<worker>-b<batch>-<i>`,
so the parent can tell exactly which items a printed line promises are stored.
"""

from __future__ import annotations

import sys

from cds_service.feedback import FeedbackStore, parse_feedback


def main(url: str, service: str, worker: int, batches: int, size: int) -> None:
    store = FeedbackStore.open(url)
    for batch in range(batches):
        entries = [
            {
                "card": f"w{worker}-b{batch}-{i}",
                "outcome": "overridden" if i % 3 == 0 else "accepted",
                "acceptedSuggestions": [{"id": f"s-{i}"}],
                "overrideReason": {"reason": {"code": f"r{i % 2}", "system": "urn:test"}},
                "outcomeTimestamp": "2026-03-02T09:00:00Z",
            }
            for i in range(size)
        ]
        store.add_feedback(service, parse_feedback({"feedback": entries}))
        print(f"committed {worker} {batch}", flush=True)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
