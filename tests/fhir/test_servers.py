"""Which fhirServer URLs the service may send a token to."""

from __future__ import annotations

import pytest

from cds_service.fhir.client import fhir_server_allowed, merge_search_pages

ALLOWED = ("https://fhir.example.org/r4", "http://127.0.0.1:8090/fhir")


@pytest.mark.parametrize(
    "url",
    [
        "https://fhir.example.org/r4",
        "https://fhir.example.org/r4/",
        "HTTPS://FHIR.Example.ORG/r4",
        "https://fhir.example.org:443/r4",
        "http://127.0.0.1:8090/fhir",
        "http://127.0.0.1:8090/fhir/",
    ],
)
def test_same_base_url_in_another_spelling_is_allowed(url: str) -> None:
    assert fhir_server_allowed(url, ALLOWED)


@pytest.mark.parametrize(
    "url",
    [
        "https://fhir.example.org.evil.com/r4",
        "https://fhir.example.org/r4.evil",
        "https://fhir.example.org/r4/more",
        "https://fhir.example.org/R4",
        "https://fhir.example.org",
        "https://evil.com/https://fhir.example.org/r4",
        "https://fhir.example.org@evil.com/r4",
        "https://user:pw@fhir.example.org/r4",
        "https://fhir.example.org:8443/r4",
        "http://fhir.example.org/r4",
        "https://fhir.example.org/r4?x=1",
        "https://fhir.example.org/r4#frag",
        "https://fhir.example.org/r4/../r4",
        "https://fhir.example.org/r4\\",
        " https://fhir.example.org/r4",
        "https://127.0.0.1:8090/fhir",
        "http://127.0.0.1:8091/fhir",
        "http://localhost:8090/fhir",
        "ftp://fhir.example.org/r4",
        "fhir.example.org/r4",
        "",
        "https://fhir.example.org:99999/r4",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    assert not fhir_server_allowed(url, ALLOWED)


def test_nothing_is_allowed_by_an_empty_list() -> None:
    assert not fhir_server_allowed("https://fhir.example.org/r4", ())


def test_plain_http_needs_its_own_entry() -> None:
    assert fhir_server_allowed("https://fhir.example.org/r4", ["https://fhir.example.org/r4"])
    assert not fhir_server_allowed("http://fhir.example.org/r4", ["https://fhir.example.org/r4"])
    assert fhir_server_allowed("http://fhir.example.org/r4", ["http://fhir.example.org/r4"])


def test_merge_keeps_order_drops_duplicates_and_outcomes() -> None:
    med = {"resourceType": "Medication", "id": "m1"}
    pages = [
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 3,
            "link": [{"relation": "next", "url": "https://x/next"}],
            "entry": [
                {"resource": {"resourceType": "MedicationRequest", "id": "a"}, "search": {"mode": "match"}},
                {"resource": med, "search": {"mode": "include"}},
                {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
            ],
        },
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": {"resourceType": "MedicationRequest", "id": "b"}, "search": {"mode": "match"}},
                {"resource": med, "search": {"mode": "include"}},
                {"resource": {"resourceType": "MedicationRequest", "id": "c"}, "search": {"mode": "match"}},
            ],
        },
    ]
    merged = merge_search_pages(pages)
    assert merged == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 3,
        "entry": [pages[0]["entry"][0], pages[0]["entry"][1], pages[1]["entry"][0], pages[1]["entry"][2]],
    }


def test_merge_of_an_empty_search() -> None:
    assert merge_search_pages([{"resourceType": "Bundle", "type": "searchset", "total": 0}]) == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "entry": [],
    }
