"""Whether the file system under a SQLite file still has room for a commit.

A write transaction that writes nothing begins (and rolls back) on a full disk, so readiness checks of
the service's SQLite files ask the file system as well: a full disk would otherwise leave a pod in the
load balancer that refuses every token or every feedback post.
"""

from __future__ import annotations

import os
from pathlib import Path

# A commit writes a few 4 KiB pages to the WAL.
MIN_FREE_BYTES = 64 * 1024


def shortage(path: str | Path) -> str | None:
    """None while the file system holding ``path`` has MIN_FREE_BYTES free; else how much it has."""
    disk = os.statvfs(Path(path).parent)
    free = disk.f_bavail * disk.f_frsize
    if free >= MIN_FREE_BYTES:
        return None
    return f"{free // 1024} KiB free on the file system holding it"
