"""The gunicorn configuration the project owns, checked against what gunicorn itself accepts."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cds_service.config import Settings
from cds_service.gunicorn_worker import JsonErrorWorker
from cds_service.serving import (
    MAX_DEFAULT_WORKERS,
    CdsServer,
    ServiceLogger,
    available_cpus,
    default_workers,
    gunicorn_options,
)


@pytest.mark.parametrize("budget_ms", [50, 1500, 60_000])
def test_the_worker_timeout_outlasts_the_fhir_budget(budget_ms: int) -> None:
    options = gunicorn_options(Settings(fhir_budget_ms=budget_ms), "127.0.0.1:0", 2, 4)
    assert options["timeout"] >= budget_ms / 1000 + 30


def test_gunicorn_accepts_every_option_as_configured() -> None:
    options = gunicorn_options(Settings(log_level="WARNING"), "127.0.0.1:0", 3, 6, metrics_dir="/tmp/m")
    server = CdsServer(lambda: None, options)
    cfg = server.cfg
    assert cfg.worker_class is JsonErrorWorker  # gthread, answering its own refusals in the app's shape
    assert (cfg.workers, cfg.threads) == (3, 6)
    assert cfg.graceful_timeout <= 25  # inside Kubernetes' default 30 s termination grace period
    assert cfg.preload_app is False
    assert cfg.accesslog is None
    assert cfg.logger_class is ServiceLogger and cfg.logger_class(cfg).access_log_enabled is False
    assert cfg.loglevel == "warning"
    assert cfg.limit_request_line == 8190
    assert cfg.control_socket_disable is True
    assert cfg.child_exit is options["child_exit"]  # marks dead workers in the metrics store


def test_default_workers_follow_the_cpus_within_bounds() -> None:
    cpus = available_cpus()
    assert cpus >= 1
    assert default_workers() == min(2 * cpus + 1, MAX_DEFAULT_WORKERS)


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_a_worker_freezes_its_start_up_heap_and_keeps_the_default_collection_thresholds() -> None:
    """Each call's parsed body must not make the collector rescan the worker's permanent heap, and the
    young generation must stay small: the cycles every call leaves (werkzeug's URL matcher) are freed
    promptly instead of piling up and ratcheting the worker's memory upwards."""
    app = object()
    thresholds = gc.get_threshold()
    server = CdsServer(lambda: app, gunicorn_options(Settings(), "127.0.0.1:0", 1, 1))
    assert gc.get_freeze_count() == 0
    assert server.load() is app
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold() == thresholds
