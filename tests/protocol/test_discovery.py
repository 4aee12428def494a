"""Discovery: each service entry and its prefetch templates, against CDS Hooks 2.0."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import pytest

from cds_service.clinical.config import ClinicalConfig
from cds_service.clinical.engine import load_clinical_config
from cds_service.config import Settings
from cds_service.protocol.prefetch import PrefetchState, classify, expected_type, render_template
from cds_service.services import build_handler, build_services
from tests.builders import empty_prefetch

SERVICES = build_services(ClinicalConfig())
TEMPLATES = {
    (service.id, key): template for service in SERVICES.values() for key, template in service.prefetch.items()
}
TOKEN = re.compile(r"\{\{(.*?)\}\}")
# "Prefetch query restrictions" (2.0): references, token equality, dates with eq/lt/gt/ge/le, _count, _sort.
RECOMMENDED = {"patient", "code", "status", "_count", "_sort"}
# The one deliberate step outside it: the Medications a patient's orders name come with the orders; a client
# that will not satisfy it leaves the key out, and the service fetches it (or its Medications) itself.
BEYOND = {("medicationRequests", "_include")}


def test_every_entry_has_what_the_standard_requires() -> None:
    assert {s.id: s.hook for s in SERVICES.values()} == {
        "b12-iron-patient-view": "patient-view",
        "b12-iron-order-select": "order-select",
        "b12-iron-order-sign": "order-sign",
    }
    for service in SERVICES.values():
        entry = service.discovery_entry()
        for field in ("hook", "id", "title", "description", "usageRequirements"):
            assert isinstance(entry[field], str) and entry[field].strip(), field
        assert entry["prefetch"] and all(isinstance(t, str) and t for t in entry["prefetch"].values())
        assert re.fullmatch(r"[A-Za-z0-9\-]+", entry["id"]), "an id goes into a URL path as it is"


@pytest.mark.parametrize(("service", "key"), list(TEMPLATES))
def test_templates_use_only_2_0_tokens_and_the_recommended_query_subset(service: str, key: str) -> None:
    template = TEMPLATES[(service, key)]
    assert TOKEN.findall(template) == ["context.patientId"], "context.patientId is required by every hook"
    resource_type, is_search = expected_type(template)
    assert re.fullmatch(r"[A-Z][A-Za-z]+", resource_type)
    if not is_search:
        assert template == f"{resource_type}/{{{{context.patientId}}}}"
        return
    for name, value in parse_qsl(template.partition("?")[2], keep_blank_values=True):
        assert value, name
        assert name in RECOMMENDED or (key, name) in BEYOND, f"{key}: {name} is outside the 2.0 subset"
        if name == "_sort":
            assert value in ("date", "-date")


@pytest.mark.parametrize(("service", "key"), list(TEMPLATES))
def test_what_a_client_sends_for_a_template_is_understood(service: str, key: str) -> None:
    """Rendered as a client renders it, and answered with 'nothing found' as a client answers it."""
    template = TEMPLATES[(service, key)]
    rendered = render_template(template, {"patientId": "pat-1", "userId": "Practitioner/dr-1"})
    assert "{{" not in rendered and "pat-1" in rendered
    assert classify(key, template, empty_prefetch(), "pat-1").state in (
        PrefetchState.USABLE,
        PrefetchState.EMPTY,
    )
    assert classify(key, template, {key: None}, "pat-1").state is PrefetchState.EMPTY


@pytest.mark.parametrize(("auth", "asks_for_a_jwt"), [("required", True), ("off", False)])
def test_usage_requirements_ask_for_a_jwt_only_when_calls_need_one(
    settings: Settings, auth: str, asks_for_a_jwt: bool
) -> None:
    document = build_handler(settings.with_overrides(auth=auth)).discovery_document()
    for entry in document["services"]:
        assert entry["usageRequirements"].startswith("Send the prefetch")
        assert ("JWT" in entry["usageRequirements"]) is asks_for_a_jwt


def test_a_site_s_local_lab_codes_are_asked_for_in_the_prefetch() -> None:
    """A site's own ferritin code was read when an EHR sent such a result unasked but never queried, so a
    hospital whose lab codes only locally had no ferritin on any prefetch-only call. The query carries it
    with its system, the FHIR search escape of its comma, and percent-encoding of what a URL cannot hold."""
    local = "http://lab.example.org/codes"
    config = load_clinical_config({"codes": {"ferritin": [f"{local}|FER,S 1&2"]}})
    template = build_services(config)["b12-iron-patient-view"].prefetch["b12IronLabs"]
    assert " " not in template and template.count("&") == 3, template  # patient, code, _sort, _count
    codes = dict(parse_qsl(template.partition("?")[2]))["code"]
    assert f"{local}|FER\\,S 1&2" in codes
    assert "http://loinc.org|2276-4" in codes, "the verified codes stay"
    default = build_services(ClinicalConfig())["b12-iron-patient-view"].prefetch["b12IronLabs"]
    assert local not in default
