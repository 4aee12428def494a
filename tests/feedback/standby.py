"""A real hot standby of a private PostgreSQL cluster: what a failover to a read-only replica leaves the
service talking to. Made with the machine's own ``pg_basebackup`` from the primary's Unix socket, in its
own temporary directory and socket (no TCP port), and deleted afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.postgres_server import PG_PORT, PostgresCluster


class Standby:
    """A hot standby streaming from ``primary`` (a running PostgresCluster); it answers reads only."""

    def __init__(self, primary: PostgresCluster) -> None:
        self._primary = primary
        self.base = Path(tempfile.mkdtemp(prefix="cds-pg-standby-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.base, account.pw_uid, account.pw_gid)
        self._data = self.base / "data"
        socket = str(primary.base)
        options = f"-c listen_addresses='' -c unix_socket_directories={self.base} -p {PG_PORT} -c fsync=off"
        try:
            # -R: a standby that follows the primary; -c fast: no wait for a spread checkpoint (minutes).
            self._run(
                "pg_basebackup", "-D", str(self._data), "-R", "-c", "fast", "-h", socket, "-p", str(PG_PORT)
            )
            self._run(
                "pg_ctl", "-D", str(self._data), "-o", options, "-l", str(self.base / "log"), "-w", "start"
            )
        except BaseException:
            self.remove()
            raise

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.base}&port={PG_PORT}"

    def remove(self) -> None:
        subprocess.run(
            [str(self._primary._bindir / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "-w", "stop"],
            user=self._primary._owner,
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, program: str, *arguments: str) -> None:
        subprocess.run(
            [str(self._primary._bindir / program), *arguments],
            user=self._primary._owner,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
