"""A real FHIR R4 server (sekmet-fhir) on loopback, in this process, for integration tests.

sekmet is a FastAPI app; it runs under uvicorn in a daemon thread on a socket bound before start, so the
port is known up front and written into sekmet's ``base_url`` (its paging links and ``fullUrl``s use it).
Each server gets its own temporary data directory; ``wipe()`` empties it between tests, which is far
cheaper than a restart (~20 ms against ~0.5 s).

Fixtures (import them into a conftest):
- ``sekmet_server``: one open server for the whole session.
- ``fhir_server``: that server, wiped before each test.
- ``sekmet_factory``: start more servers with options (bearer tokens, …); stopped after the test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from sekmet.config import Settings as SekmetSettings
from sekmet.main import create_app

from tests.support.processes import free_port, stop, wait_until_answers

START_TIMEOUT_S = 15.0


@dataclass
class SekmetEndpoint:
    """A running sekmet reached over HTTP: its FHIR base URL and helpers to fill it."""

    base_url: str
    tokens: tuple[str, ...]

    @property
    def origin(self) -> str:
        return self.base_url.rsplit("/fhir", 1)[0]

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        if self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens[0]}"
        return headers

    def load(self, bundle: dict) -> dict:
        """POST a transaction (or batch) Bundle over HTTP; return the response Bundle or fail loudly."""
        response = requests.post(self.base_url, data=json.dumps(bundle), headers=self._headers(), timeout=60)
        if response.status_code != 200:
            raise AssertionError(
                f"sekmet refused the Bundle: HTTP {response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def load_file(self, path: Path) -> dict:
        return self.load(json.loads(Path(path).read_text(encoding="utf-8")))

    def put(self, resource: dict) -> dict:
        """Create or replace one resource under its own id."""
        url = f"{self.base_url}/{resource['resourceType']}/{resource['id']}"
        response = requests.put(url, data=json.dumps(resource), headers=self._headers(), timeout=30)
        if response.status_code not in (200, 201):
            raise AssertionError(f"sekmet refused {url}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()


@dataclass
class SekmetServer(SekmetEndpoint):
    """sekmet in this process: it can also be emptied between tests and stopped."""

    data_dir: Path
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _app: Any = field(repr=False)

    @property
    def store(self) -> Any:
        """sekmet's own store, for assertions that must not go through HTTP."""
        return self._app.state.ctx.store

    def wipe(self) -> None:
        """Delete every resource, version and logged request."""
        self.store.reset()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def sekmet_settings(
    data_dir: Path,
    port: int,
    *,
    tokens: Sequence[str] = (),
    validation: str = "strict",
    log_inbound: bool = False,
) -> dict[str, Any]:
    """sekmet's settings for a loopback test server; with ``tokens`` it demands one as a bearer token.

    ``log_inbound`` turns on sekmet's traffic log (every request and body stored); off by default since
    it slows every request and tests count requests at a proxy instead.
    """
    auth = {"types": ["bearer"], "tokens": list(tokens)} if tokens else {"types": ["none"]}
    return {
        "host": "127.0.0.1",
        "port": port,
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "data_dir": str(data_dir),
        "simulator": {"enabled": False},
        "server_auth": auth,
        "validation": {"inbound": validation},
        "log_inbound": log_inbound,
    }


def start_sekmet(data_dir: Path, **options: Any) -> SekmetServer:
    """Start sekmet in this process on a free loopback port (options: see ``sekmet_settings``)."""
    sock = _bound_socket()
    port = sock.getsockname()[1]
    settings = SekmetSettings.model_validate(sekmet_settings(data_dir, port, **options))
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"sekmet-{port}"
    )
    thread.start()
    give_up = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            server.should_exit = True
            raise RuntimeError(f"sekmet did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    sock.close()
    return SekmetServer(
        base_url=settings.base_url,
        tokens=tuple(settings.server_auth.tokens),
        data_dir=Path(data_dir),
        _server=server,
        _thread=thread,
        _app=app,
    )


@contextmanager
def running_sekmet(**options: Any) -> Iterator[SekmetServer]:
    """A sekmet server in a fresh temporary directory, stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="sekmet-") as data_dir:
        server = start_sekmet(Path(data_dir), **options)
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def sekmet_process(**options: Any) -> Iterator[SekmetEndpoint]:
    """sekmet as its own process (``sekmet serve``), for benchmarks that must not share this process's
    GIL with the server; options as for ``sekmet_settings``."""
    with tempfile.TemporaryDirectory(prefix="sekmet-") as data_dir:
        port = free_port()
        config = Path(data_dir) / "settings.yaml"
        config.write_text(json.dumps(sekmet_settings(Path(data_dir), port, **options)), encoding="utf-8")
        command = [str(Path(sys.executable).with_name("sekmet")), "serve", "-c", str(config)]
        log = Path(data_dir) / "sekmet.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        endpoint = SekmetEndpoint(f"http://127.0.0.1:{port}/fhir", tuple(options.get("tokens", ())))
        try:
            wait_until_answers(
                f"{endpoint.base_url}/metadata",
                process,
                name="sekmet serve",
                timeout_s=START_TIMEOUT_S,
                log=log,
            )
            yield endpoint
        finally:
            stop(process, grace_s=10)


@pytest.fixture(scope="session")
def sekmet_server() -> Iterator[SekmetServer]:
    with running_sekmet() as server:
        yield server


@pytest.fixture
def fhir_server(sekmet_server: SekmetServer) -> SekmetServer:
    sekmet_server.wipe()
    return sekmet_server


@pytest.fixture
def sekmet_factory() -> Iterator[Callable[..., SekmetServer]]:
    """``sekmet_factory(tokens=["abc"])`` starts another server for this test only."""
    with tempfile.TemporaryDirectory(prefix="sekmet-") as root:
        started: list[SekmetServer] = []

        def start(**options: Any) -> SekmetServer:
            data_dir = Path(root) / str(len(started))
            server = start_sekmet(data_dir, **options)
            started.append(server)
            return server

        try:
            yield start
        finally:
            for server in started:
                server.stop()
