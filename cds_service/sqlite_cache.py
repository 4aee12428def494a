"""How much page cache each of the service's SQLite connections may keep in the worker's memory.

SQLite's default (2,000 KiB per connection) lives in the process heap and fills as the file grows: the
issued-card writer, appending to a table that grows with every call, took a served worker's resident
memory up by as much as 2 MiB over its first 20,000–40,000 calls before it levelled off. A worker's
connections only append rows and read single keys, and the feedback report's scans read each page about
once; the kernel's page cache already holds the file, so a small cache costs them a few page reads from
the kernel (for the issued-card writer, off the request path).
"""

from __future__ import annotations

CACHE_KIB = 256
# A negative cache_size is a size in KiB rather than in pages.
CACHE_SIZE_PRAGMA = f"PRAGMA cache_size = -{CACHE_KIB}"
