"""The production server: gunicorn, configured by the project rather than by each deployment.

Why these choices (docs/operations.md has the sizing advice):

* ``gthread`` workers with several threads: a hook call may wait up to the FHIR budget on a slow EHR
  server; threads let the worker serve other calls meanwhile, while processes give CPU parallelism.
* The worker timeout is the FHIR budget plus a generous margin, so gunicorn never kills a worker that
  is only waiting for a slow FHIR server within budget.
* The graceful timeout fits inside Kubernetes' default 30 s termination grace period.
* Modules are imported in the master before forking (shared, copy-on-write memory and fast worker
  start), but the Flask app itself is built in each worker: it owns database connections, HTTP sessions
  and locks, which must not cross a ``fork``.
* No access log: the service writes one JSON line per hook call with more useful fields; gunicorn's own
  messages go through the same JSON formatter, and INFO lines are written in batches off the request
  threads (``batched_log``).
* The garbage collector's start-up heap is frozen (see ``CdsServer.load``), so the collections each
  call's parsed body triggers scan only young objects. Its thresholds stay CPython's: every call leaves a
  few objects in a reference cycle (werkzeug's URL matcher is a recursive closure), and a rarer young
  collection let them pile up by the thousand between collections, which raised a worker's resident
  memory step by step (docs/performance.md).
* Prometheus multiprocess mode: a fresh directory per server start, named in
  ``PROMETHEUS_MULTIPROC_DIR`` before any worker exists; dead workers are marked so.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import logging
import math
import os
import shutil
import socket
import sqlite3
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import click

from cds_service.config import ConfigError, Settings, load_settings
from cds_service.observability import MULTIPROC_ENV, fresh_metrics_dir

# gunicorn's config module runs int(WEB_CONCURRENCY) when it is imported, so a value that is not a number
# would crash every cds-service command, --help included. Hidden for that import only, the variable is
# then read by `serve --workers`, which refuses a bad value with a usage error naming it.
_web_concurrency = os.environ.pop("WEB_CONCURRENCY", None)
try:
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter
    from gunicorn.errors import HaltServer
    from gunicorn.glogging import Logger as GunicornLogger
finally:
    if _web_concurrency is not None:
        os.environ["WEB_CONCURRENCY"] = _web_concurrency

MAX_DEFAULT_WORKERS = 8
MAX_WORKERS = 64
DEFAULT_THREADS = 4
GRACEFUL_TIMEOUT_SECONDS = 25
KEEPALIVE_SECONDS = 5
WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR
# Worker heartbeats touch a file every second; shared memory keeps that off slow or read-only disks.
_SHM = Path("/dev/shm")  # noqa: S108 (only the heartbeat file, which gunicorn creates safely)


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, further limited by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_workers() -> int:
    """gunicorn's classic 2 × cores + 1, capped: each worker also has threads and its own memory."""
    return min(2 * available_cpus() + 1, MAX_DEFAULT_WORKERS)


class ServiceLogger(GunicornLogger):
    """gunicorn's logger without its access log: the service writes its own, richer line per hook call.

    Setting ``accesslog`` to None is not enough: gunicorn turns the access log on whenever a logging
    configuration is given, and builds each line's fields (every header and environ entry) even when
    its logger would drop the line."""

    access_log_enabled = False


def _log_config(level: str) -> dict[str, Any]:
    """Route gunicorn's own loggers through the service's JSON formatter on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "cds_service.observability.JsonFormatter"}},
        "filters": {"without_request_bytes": {"()": "cds_service.gunicorn_worker.WithoutRequestBytes"}},
        "handlers": {
            "stderr": {
                "class": "cds_service.batched_log.BatchingStreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {
                "level": level,
                "handlers": [],
                "propagate": True,
                "filters": ["without_request_bytes"],
            },
        },
    }


def _pre_request(_worker: object, _request: object) -> None:
    """Nothing. gunicorn's default logs each request's method and path at DEBUG, and a path can carry a
    patient's identifier (a client that builds the service's URL from an MRN); the service's own call
    line says what an operator needs without it."""


def gunicorn_options(
    settings: Settings, bind: str, workers: int, threads: int, *, metrics_dir: str | None = None
) -> dict[str, Any]:
    """The gunicorn settings the service runs under (the benchmark's floor app reuses them)."""

    def child_exit(_server: object, worker: Any) -> None:
        from cds_service.observability import mark_worker_dead

        mark_worker_dead(worker.pid)

    options: dict[str, Any] = {
        "bind": [bind],
        "workers": workers,
        "worker_class": "cds_service.gunicorn_worker.JsonErrorWorker",
        "threads": threads,
        "timeout": math.ceil(settings.fhir_budget_ms / 1000) + 30,
        "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
        "keepalive": KEEPALIVE_SECONDS,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        # gunicorn's default takes SCRIPT_NAME and PATH_INFO header fields from a peer in
        # forwarded_allow_ips (loopback, so a proxy beside the service in its pod) as the app's mount
        # point: a client's SCRIPT_NAME moved a call to another route, or was a 500. The service is
        # mounted at the root; such fields are dropped (header_map) like any other with an underscore.
        "forwarder_headers": "",
        "preload_app": False,
        "accesslog": None,
        "logger_class": ServiceLogger,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "logconfig_dict": _log_config(settings.log_level),
        "proc_name": "cds-service",
        # gunicorn ≥ 25 opens a control socket under $HOME by default: not wanted on a read-only
        # file system, and two servers on one host would contend for the same path.
        "control_socket_disable": True,
        "pre_request": _pre_request,
    }
    if _SHM.is_dir() and os.access(_SHM, os.W_OK):
        options["worker_tmp_dir"] = str(_SHM)
    if metrics_dir:
        options["child_exit"] = child_exit
    return options


class _Arbiter(Arbiter):
    """gunicorn's master, except that SIGHUP first checks what the new workers will read.

    A reload starts new workers, which read the CDS_CLIENTS and CDS_SITE_CONFIG files again, and stops the
    old ones at once, before the new ones have booted. A file with an error (a typo in a client added for
    the reload) made every new worker fail to boot, and gunicorn then stopped the whole server."""

    def handle_hup(self) -> None:
        try:
            self.app.check()
        except ConfigError as error:
            # As text: gunicorn's log filter names an exception argument by its class only.
            self.log.error("reload refused, the workers keep running: configuration error: %s", str(error))
            return
        super().handle_hup()


class CdsServer(BaseApplication):
    """gunicorn serving a WSGI app built by a factory in each worker, with options given in code.

    ``check`` raises ConfigError for a configuration the factory would refuse; a reload (SIGHUP) runs it
    first."""

    def __init__(self, app_factory: Any, options: dict[str, Any], check: Any = None) -> None:
        self._factory = app_factory
        self._options = options
        self.check = check or (lambda: None)
        super().__init__()

    def run(self) -> None:
        """BaseApplication.run, with the project's master."""
        try:
            _Arbiter(self).run()
        except RuntimeError as error:
            print(f"\nError: {error}\n", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)

    def load_config(self) -> None:
        known = self.cfg.settings
        for name, value in self._options.items():
            if name in known and value is not None:
                self.cfg.set(name, value)
            elif name == "accesslog":
                self.cfg.set(name, None)

    def load(self) -> Any:
        try:
            app = self._factory()
        except ValueError as error:
            # Settings that parse but do not hold together (a clients file without an issuer, a site
            # config with an unknown code) surface here, in each worker. One line names the problem;
            # exit status 3 makes gunicorn stop the whole server ("Worker failed to boot").
            logging.getLogger("cds_service.serving").error("configuration error: %s", error)
            sys.exit(WORKER_BOOT_ERROR)
        # Everything built so far (imported modules, schemas, value sets) lives as long as the worker.
        # Freezing it keeps the garbage collector from re-scanning that large, permanent heap every time a
        # hook call's thousands of parsed JSON objects trigger a collection.
        gc.collect()
        gc.freeze()
        return app


def _close_feedback_store(app: Any, url: str) -> None:
    """Write the worker's pending issued-card records, close its feedback store and, for SQLite, move what
    the -wal file holds into the database file, as the worker exits: atexit runs once the calls still
    running have ended (the interpreter joins the request threads first).

    Connections left open at exit are never checkpointed: a server stopped gracefully left its issued-card
    records and feedback (on a first run, the tables themselves) in the -wal file only, so a copy of the
    file alone, taken once the service had stopped (a backup, a move), was missing them. Closing is not
    enough when workers exit together: SQLite checkpoints on the last connection's close only, and two
    closing at once each saw the other."""
    from cds_service.feedback.dialects import SQLiteDialect, dialect_for

    cds = getattr(app, "extensions", {}).get("cds", {})
    for part in (cds.get("recorder"), cds.get("feedback")):
        if part is not None:
            part.close()
    dialect = dialect_for(url)
    if isinstance(dialect, SQLiteDialect):
        _checkpoint(dialect.path)


def _checkpoint(path: Path) -> None:
    """Copy a SQLite WAL database's committed pages into its file and empty the -wal (never creating a
    database at ``path``: one moved away while the service ran stays moved)."""
    try:
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=rw"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as error:
        logging.getLogger("cds_service.serving").warning(
            "feedback store %s: not checkpointed at exit (%s); its -wal file holds the latest writes",
            path,
            error,
        )


def _worker_count(given: str, value: str) -> int:
    try:
        workers = int(value)
    except ValueError:
        raise click.BadParameter(f"{given}={value!r} is not a whole number of workers") from None
    if not 1 <= workers <= MAX_WORKERS:
        raise click.BadParameter(f"{given}={workers} is outside 1 to {MAX_WORKERS}")
    return workers


def _workers(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """--workers, else WEB_CONCURRENCY, as a number of workers; an error names whichever was given.

    The variable is read here rather than through click's envvar: click before 8.5 records where a
    value came from only after its callback has run, so the error could not say which one was wrong."""
    if value is not None:
        return _worker_count("--workers", value)
    from_environment = os.environ.get("WEB_CONCURRENCY")
    return _worker_count("WEB_CONCURRENCY", from_environment) if from_environment else None


def _host(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--host, refused when empty: gunicorn reads ":8080" as every interface, so an unset ``$HOST`` in a
    start script opened the service to the network (unauthenticated, with CDS_AUTH=off)."""
    if not value.strip():
        raise click.BadParameter("empty; give an address such as 127.0.0.1, or 0.0.0.0 for every interface")
    return value.strip()


def _bind(host: str, port: int) -> str:
    """gunicorn's spelling of the address: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_problem(host: str, port: int) -> str | None:
    """Why ``host``:``port`` cannot be listened on, in one line; None when it can. A host that does not
    resolve is a usage error (BadParameter).

    gunicorn tries to bind five times, a second apart, and then stops with five log lines and no error of
    its own; a host that does not resolve ended the same way. Tried here once, with gunicorn's own
    SO_REUSEADDR, so a port held only by connections closing (TIME_WAIT) is not called busy."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else "not a host name"
        problem = f"{host!r} does not resolve to an address ({reason})"
        raise click.BadParameter(problem, param_hint="'--host'") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            busy = " (the port is in use)" if error.errno == errno.EADDRINUSE else ""
            return f"cds-service: cannot listen on {_bind(host, port)}: {error.strerror}{busy}"
    return None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, callback=_host, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option(
    "--workers",
    callback=_workers,
    help=f"Worker processes [default: 2 × CPUs + 1, at most {MAX_DEFAULT_WORKERS}; env WEB_CONCURRENCY].",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=DEFAULT_THREADS,
    show_default=True,
    help="Threads per worker (calls waiting on a FHIR server do not block the worker).",
)
def serve(host: str, port: int, workers: int | None, threads: int) -> None:
    """Run the service under gunicorn (the production server)."""
    try:
        settings = load_settings()
    except ConfigError as error:
        click.echo(f"cds-service: configuration error: {error}", err=True)
        sys.exit(2)
    settings = settings.with_overrides(public_base_url=settings.base_url_for(host, port))
    problem = _listen_problem(host, port)
    if problem is not None:
        click.echo(problem, err=True)
        sys.exit(1)

    from cds_service.app import check_configuration, create_app

    try:
        check_configuration(settings)
    except ConfigError as error:
        click.echo(f"cds-service: configuration error: {error}", err=True)
        sys.exit(2)
    # A new, empty directory (stale files would be summed in); those of servers killed outright go first.
    os.environ[MULTIPROC_ENV] = metrics_dir = fresh_metrics_dir(os.environ.get(MULTIPROC_ENV) or None)

    options = gunicorn_options(
        settings,
        _bind(host, port),
        workers or default_workers(),
        threads,
        metrics_dir=metrics_dir,
    )

    def worker_app() -> Any:
        app = create_app(settings)
        atexit.register(_close_feedback_store, app, settings.feedback_db)
        return app

    master_pid = os.getpid()
    try:
        CdsServer(worker_app, options, check=lambda: check_configuration(settings)).run()
    except HaltServer as halt:
        # When several workers fail to boot at once, gunicorn raises HaltServer again while halting,
        # past its own handler; stop with its reason and status instead of a traceback.
        logging.getLogger("cds_service.serving").error("server stopped: %s", halt.reason)
        sys.exit(halt.exit_status)
    finally:
        # Workers are forks of this frame and leave through it too; only the master owns the directory.
        if os.getpid() == master_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)
