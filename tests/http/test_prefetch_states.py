"""Which prefetch values make the service ask the EHR's FHIR server, end to end.

CDS Hooks 2.0, "Prefetch Template": a key the client chose not to satisfy, or failed on, is left out (or,
since FHIR-34274, holds an OperationOutcome); a key for which the client *has no data* is null. So null is
an answer ("nothing on file"), not a failure: it is neither fetched again nor a 412.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask.testing import FlaskClient

from cds_service.config import Settings
from cds_service.protocol.request import RequestError
from cds_service.services import build_handler
from tests.builders import hook_body
from tests.support.fake_ehr_fhir import FakeEhrFhir

FAILED = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
ABSENT = object()


@pytest.fixture
def ehr() -> Iterator[FakeEhrFhir]:
    with FakeEhrFhir() as server:
        server.add_search("Condition", [], page_size=200)
        yield server


def _call(client: FlaskClient, conditions: object, fhir_server: str | None) -> int:
    body = hook_body(fhirServer=fhir_server)
    if conditions is ABSENT:
        del body["prefetch"]["conditions"]
    else:
        body["prefetch"]["conditions"] = conditions
    return client.post("/cds-services/b12-iron-patient-view", json=body).status_code


@pytest.mark.parametrize(
    ("conditions", "fetched"),
    [(None, False), (ABSENT, True), (FAILED, True)],
    ids=["null", "absent", "outcome"],
)
def test_only_a_key_the_client_did_not_answer_is_fetched(
    served: FlaskClient, ehr: FakeEhrFhir, conditions: object, fetched: bool
) -> None:
    assert _call(served, conditions, ehr.base_url) == 200
    assert [seen.path.split("?")[0] for seen in ehr.seen] == (["/baseR4/Condition"] if fetched else [])


@pytest.mark.parametrize(
    ("conditions", "status"), [(None, 200), (ABSENT, 412), (FAILED, 412)], ids=["null", "absent", "outcome"]
)
def test_without_a_server_only_a_key_the_client_did_not_answer_is_a_412(
    served: FlaskClient, conditions: object, status: int
) -> None:
    assert _call(served, conditions, None) == status


def test_a_search_the_client_cut_short_is_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = hook_body()
    body["prefetch"]["conditions"]["total"] = 340
    with caplog.at_level(logging.WARNING, logger="cds_service.services"):
        assert client.post("/cds-services/b12-iron-patient-view", json=body).status_code == 200
    [line] = [r for r in caplog.records if "read as sent" in r.getMessage()]
    assert line.getMessage() == (
        "prefetch key conditions read as sent, but the search counted 340 matches and the client sent 0, "
        "with no next link"
    )
    assert line.hookInstance == body["hookInstance"]


def test_a_template_whose_token_cannot_be_filled_is_a_412_naming_the_token(
    settings: Settings, ehr: FakeEhrFhir
) -> None:
    """A template on an optional context field (here encounterId, for a chart opened outside an
    encounter): the client leaves the key out, and the service cannot build the query either. The
    request is valid, so not a 400: the data cannot be had, a 412 that says which token."""
    handler = build_handler(settings.with_overrides(allowed_fhir_servers=(ehr.base_url,)))
    service = handler.services["b12-iron-patient-view"]
    templates = {**service.prefetch, "encounter": "Encounter/{{context.encounterId}}"}
    handler.services["b12-iron-patient-view"] = replace(service, prefetch=templates)
    with pytest.raises(RequestError) as refused:
        handler.handle("b12-iron-patient-view", hook_body(fhirServer=ehr.base_url))
    assert refused.value.status == 412
    assert "{{context.encounterId}}" in refused.value.reason
    assert ehr.seen == [], "nothing is fetched for a call that cannot be answered"
