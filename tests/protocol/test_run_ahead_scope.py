"""Run-ahead: order-sign reuses order-select's result only for the same caller and the same data."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from cds_service import services
from cds_service.config import Settings
from cds_service.observability import CallTrace
from cds_service.protocol.auth import AuthenticatedClient
from cds_service.run_ahead import RunAheadCache
from cds_service.services import HookHandler, build_handler
from tests.builders import hook_body
from tests.clinical.builders import obs

EHR_A = AuthenticatedClient(iss="https://ehr-a.example", tenant="t1", fhir_servers=())
EHR_B = AuthenticatedClient(iss="https://ehr-b.example", tenant="t1", fhir_servers=())


def sign_after_select(
    settings: Settings, select_client, sign_client, select_prefetch: dict | None = None, **sign_changes
) -> CallTrace:
    handler = build_handler(settings, run_ahead=RunAheadCache(settings))
    select = hook_body("order-select")
    if select_prefetch is not None:
        select["prefetch"] = copy.deepcopy(select_prefetch)
    handler.handle("b12-iron-order-select", select, select_client)
    sign = hook_body("order-sign")
    sign["prefetch"] = select["prefetch"]
    sign.update(sign_changes)
    trace = CallTrace(service="b12-iron-order-sign")
    handler.handle("b12-iron-order-sign", sign, sign_client, trace)
    return trace


def test_same_caller_same_data_is_answered_from_memory(settings: Settings) -> None:
    trace = sign_after_select(settings, EHR_A, EHR_A)
    assert trace.run_ahead_hit is True
    assert "prefetch" not in trace.phases_ms and "rules" not in trace.phases_ms


def test_another_client_is_never_answered_from_the_first_clients_result(settings: Settings) -> None:
    assert sign_after_select(settings, EHR_A, EHR_B).run_ahead_hit is False


def test_another_tenant_or_unauthenticated_caller_misses(settings: Settings) -> None:
    other_tenant = AuthenticatedClient(iss=EHR_A.iss, tenant="t2", fhir_servers=())
    assert sign_after_select(settings, EHR_A, other_tenant).run_ahead_hit is False
    assert sign_after_select(settings, EHR_A, None).run_ahead_hit is False


def test_another_fhir_server_or_other_prefetch_misses(settings: Settings) -> None:
    assert (
        sign_after_select(settings, None, None, fhirServer="https://fhir.example.org").run_ahead_hit is False
    )
    changed = hook_body("order-sign")["prefetch"]
    changed["patient"]["gender"] = "male"
    assert sign_after_select(settings, None, None, prefetch=changed).run_ahead_hit is False


def _searchsets(prefetch: dict) -> list[dict]:
    return [v for v in prefetch.values() if isinstance(v, dict) and v.get("resourceType") == "Bundle"]


B12_RESULT = obs("b12", 1200, 10, pid="pat-1")


def _with_results() -> dict:
    """The order-sign prefetch with a B12 result in its labs search."""
    prefetch = copy.deepcopy(hook_body("order-sign")["prefetch"])
    prefetch["b12IronLabs"]["entry"] = [
        {"fullUrl": "https://fhir.example.org/Observation/b1", "resource": copy.deepcopy(B12_RESULT)}
    ]
    return prefetch


def test_the_same_searches_run_again_by_the_ehr_are_answered_from_memory(settings: Settings) -> None:
    """Servers give each search result a new Bundle id, lastUpdated and links: none of it is patient data."""
    again = _with_results()
    for n, bundle in enumerate(_searchsets(again)):
        bundle["id"] = f"search-{n}-rerun"
        bundle["meta"] = {"lastUpdated": "2026-01-15T09:00:07.123Z"}
        bundle["link"] = [{"relation": "self", "url": f"https://fhir.example.org/Observation?_rerun={n}"}]
    trace = sign_after_select(settings, None, None, select_prefetch=_with_results(), prefetch=again)
    assert trace.run_ahead_hit is True


def test_a_changed_or_added_search_result_misses(settings: Settings) -> None:
    changed = _with_results()
    changed["b12IronLabs"]["entry"][0]["resource"]["status"] = "entered-in-error"
    trace = sign_after_select(settings, None, None, select_prefetch=_with_results(), prefetch=changed)
    assert trace.run_ahead_hit is False
    added = _with_results()
    added["b12IronLabs"]["entry"].append(copy.deepcopy(added["b12IronLabs"]["entry"][0]))
    trace = sign_after_select(settings, None, None, select_prefetch=_with_results(), prefetch=added)
    assert trace.run_ahead_hit is False


def test_an_empty_search_run_again_is_answered_from_memory(settings: Settings) -> None:
    """A search with no results has no ``entry`` at all, only its envelope, which the server makes anew."""

    def empty_searches(run: str) -> dict:
        prefetch = _with_results()
        for n, bundle in enumerate(_searchsets(prefetch)):
            if bundle is not prefetch["b12IronLabs"]:
                bundle.pop("entry", None)
                bundle["id"] = f"search-{n}-{run}"
                bundle["meta"] = {"lastUpdated": f"2026-01-15T09:00:0{len(run)}Z"}
        return prefetch

    trace = sign_after_select(
        settings, None, None, select_prefetch=empty_searches("first"), prefetch=empty_searches("again")
    )
    assert trace.run_ahead_hit is True


def _select_then_sign(
    handler: HookHandler, between: Callable[[], object] = lambda: None
) -> tuple[dict, CallTrace]:
    select = hook_body("order-select")
    select["prefetch"] = _with_results()
    handler.handle("b12-iron-order-select", select)
    between()
    sign = hook_body("order-sign")
    sign["prefetch"] = _with_results()
    trace = CallTrace(service="b12-iron-order-sign")
    return handler.handle("b12-iron-order-sign", sign, None, trace), trace


def test_findings_of_another_shape_are_evaluated_afresh_not_a_500(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry another build wrote (here: one more field) reads as a miss, with a warning."""
    cache = RunAheadCache(settings)
    stored = cache.get

    def with_a_field_added(key: str) -> dict | None:
        entry = stored(key)
        if entry is not None:
            entry["findings"] = [{**f, "added_by_another_build": 1} for f in entry["findings"]]
        return entry

    monkeypatch.setattr(cache, "get", with_a_field_added)

    with caplog.at_level(logging.WARNING, logger="cds_service.services"):
        answer, trace = _select_then_sign(build_handler(settings, run_ahead=cache))
    fresh, _ = _select_then_sign(build_handler(settings))

    assert trace.run_ahead_hit is False
    assert [c["summary"] for c in answer["cards"]] == [c["summary"] for c in fresh["cards"]]
    assert answer["cards"], "the scenario has a card, so the comparison means something"
    assert any("run-ahead entry unreadable (TypeError)" in r.getMessage() for r in caplog.records)


def test_an_entry_that_is_not_json_is_a_miss_not_a_500(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What another program sharing the Redis could leave under the key (here: not JSON at all)."""
    cache = RunAheadCache(settings)
    monkeypatch.setattr(cache._store, "get", lambda key: b"\x00not json")

    with caplog.at_level(logging.WARNING, logger="cds_service.run_ahead"):
        answer, trace = _select_then_sign(build_handler(settings, run_ahead=cache))

    assert trace.run_ahead_hit is False
    assert answer["cards"]
    assert any("run-ahead entry is not JSON" in r.getMessage() for r in caplog.records)


def test_the_shape_of_stored_findings_is_part_of_the_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def another_build() -> None:
        monkeypatch.setattr(services, "JSON_FORMAT", (*services.JSON_FORMAT, ("Finding", ("new_field",))))

    _, same = _select_then_sign(build_handler(settings, run_ahead=RunAheadCache(settings)))
    _, other = _select_then_sign(build_handler(settings, run_ahead=RunAheadCache(settings)), another_build)
    assert (same.run_ahead_hit, other.run_ahead_hit) == (True, False)


def test_the_sites_codes_and_thresholds_are_part_of_the_key(settings: Settings, tmp_path: Path) -> None:
    """Two replicas sharing one cache while a changed site config rolls out: only the same config hits."""
    cache = RunAheadCache(settings)

    def with_site(site: dict) -> Settings:
        path = tmp_path / f"site-{len(site)}-{len(str(site))}.json"
        path.write_text(json.dumps(site))
        return settings.with_overrides(site_config=path)

    old = build_handler(with_site({"thresholds": {"b12_very_high": 2000}}), run_ahead=cache)
    same = build_handler(
        with_site({"thresholds": {"b12_very_high": 2000}, "rulesDocUrl": "https://x.org"}), run_ahead=cache
    )
    new = build_handler(with_site({"thresholds": {"b12_very_high": 1800}}), run_ahead=cache)
    select = hook_body("order-select")
    select["prefetch"] = _with_results()
    old.handle("b12-iron-order-select", select)

    def sign_on(handler: HookHandler) -> bool | None:
        sign = hook_body("order-sign")
        sign["prefetch"] = _with_results()
        trace = CallTrace(service="b12-iron-order-sign")
        handler.handle("b12-iron-order-sign", sign, None, trace)
        return trace.run_ahead_hit

    assert (sign_on(same), sign_on(new)) == (True, False)
