"""How much memory a worker process may hold in FHIR answers at once, shared by all its threads.

Each hook call may run several queries at once, each answer may be megabytes and pages, and a worker
runs several calls at once: without a bound, a FHIR server answering large bodies to a few calls at the
same time took a worker past the pod's memory limit, and the OOM kill ended every call in flight on
the pod. So every body the client reads is first counted against one budget per process
(``PROCESS_MEMORY``), at what holding and parsing it costs (``parse_need``); a body that would take the
process past the budget is not read, and its key fails like an over-size answer (a 412 naming it, or a
Medication left unidentified). Nothing waits for room: a refusal is immediate.

What is counted, and when it is given back (``FhirClient``): each body, once it is read (an ordinary
page, in one reservation before it is parsed) or as it arrives (a larger one), until its key's answer
leaves the client (``fetch_all`` returns it to the caller), or until the key fails; a key cut off by the
call's time budget gives its share back when its thread stops, a key never started holds nothing.

Measured (``tests/fhir/memory_probe.py``, CPython 3.11): FHIR JSON parses to about 5 times its size in
Python objects (4.8 for the SMART sandbox's Observation pages, 2.9 when pretty-printed), and the peak
while parsing adds the body and, for the standard library's parser (bodies over 1 MiB), the text it
decodes. Bodies built to be expensive parse to more per byte (``[{},{},…]``, 24 times its size), but
not per structural token: at most about 72 bytes each, whatever the shape.
"""

from __future__ import annotations

import os
import threading

__all__ = [
    "DEFAULT_FETCH_MEMORY_BYTES",
    "PROCESS_MEMORY",
    "MemoryBudget",
    "Reservation",
    "parse_need",
]

# The process-wide budget. The SMART sandbox's densest chart (tests/data/smart-sandbox-r4, Fletcher
# Hyatt) needs 1.7 MiB by this count for its largest page (200 Observations, 190 KB of JSON) and 7 MiB for
# a whole call's answers, every Observation on both Observation keys (``test_client_memory``); a long
# chart paged to the client's 10 pages on two Observation keys would need about 35 MiB. 64 MiB holds a
# worker's four threads with such a chart twice over, or one of those long charts beside ordinary
# calls; three workers' worth (the deployment's default with one CPU) is a quarter of the 768 MiB pod
# limit, beside about 75 MiB a worker needs to run at all.
DEFAULT_FETCH_MEMORY_BYTES = 64 * 1024 * 1024
# Bytes held per byte of body while it is read and parsed: the body, the text the standard library's
# parser decodes it to, and the string values made from it (a body of one long string: 3 times).
_BYTES_PER_BYTE = 3
# Bytes of Python objects per structural token (``{ [ , :``): 72 measured at worst (objects of one key),
# 51 on real FHIR pages.
_BYTES_PER_TOKEN = 64


def parse_need(size: int, tokens: int) -> int:
    """The memory a body of ``size`` bytes holding ``tokens`` structural tokens takes while it is read
    and parsed, from above (about 9 times its size for FHIR JSON, which measures 6 to 7)."""
    return size * _BYTES_PER_BYTE + tokens * _BYTES_PER_TOKEN


class MemoryBudget:
    """Bytes that FHIR answers may hold at once in this process, and how many they hold now."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError("a memory budget cannot be negative")
        self.limit = limit_bytes
        self._held = 0
        # Reservations refused since the process started: for a metric, and an operator wondering why.
        self.refused = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, at_least: int, up_to: int) -> int:
        """Reserve as much of ``up_to`` bytes as is free, and no less than ``at_least``; returns what was
        reserved, 0 when not even ``at_least`` is free (nothing is reserved then)."""
        with self._lock:
            free = self.limit - self._held
            if at_least > free:
                self.refused += 1
                return 0
            granted = min(up_to, free)
            self._held += granted
            return granted

    def give_back(self, amount: int) -> None:
        if amount:
            with self._lock:
                self._held -= amount

    def _after_fork(self) -> None:
        """In a forked child no fetch is running (threads do not survive a fork): what the parent held is
        not the child's, and a lock the parent's threads held at the fork would never be released."""
        self._held = 0
        self._lock = threading.Lock()


PROCESS_MEMORY = MemoryBudget(DEFAULT_FETCH_MEMORY_BYTES)
os.register_at_fork(after_in_child=PROCESS_MEMORY._after_fork)


class Reservation:
    """What one key's fetch holds of a budget: grown body by body, given back at once by ``release``.

    Used by one thread at a time (the key's pool thread while it runs, then whoever takes its answer),
    so it needs no lock of its own."""

    __slots__ = ("amount", "budget")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.amount = 0

    def take(self, at_least: int, up_to: int) -> int:
        granted = self.budget.take(at_least, up_to)
        self.amount += granted
        return granted

    def give_back(self, amount: int) -> None:
        amount = min(amount, self.amount)
        self.amount -= amount
        self.budget.give_back(amount)

    def release(self) -> None:
        """Give back everything; harmless to call again."""
        self.give_back(self.amount)
