"""What a hook call's fhirAuthorization makes the service send to the EHR's FHIR server, end to end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from tests.builders import hook_body
from tests.support.fake_ehr_fhir import FakeEhrFhir

TOKEN = "opaque-ehr-token"


@pytest.fixture
def ehr() -> Iterator[FakeEhrFhir]:
    """A FHIR server that answers only ``Authorization: Bearer <TOKEN>``, as the scheme is spelled in
    RFC 6750, and has no conditions on file."""
    with FakeEhrFhir(token=TOKEN) as server:
        server.add_search("Condition", [], page_size=200)
        yield server


def _call_missing_conditions(client: FlaskClient, ehr: FakeEhrFhir, authorization: dict) -> int:
    body = hook_body(fhirServer=ehr.base_url, fhirAuthorization=authorization)
    del body["prefetch"]["conditions"]
    return client.post("/cds-services/b12-iron-patient-view", json=body).status_code


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
def test_the_token_goes_to_the_server_as_a_bearer_token(
    served: FlaskClient, ehr: FakeEhrFhir, token_type: str
) -> None:
    """ "bearer" was sent on as the scheme, which this server (like others that match "Bearer ")
    refused: the key could not be fetched and the call was a 412."""
    authorization = {
        "access_token": TOKEN,
        "token_type": token_type,
        "expires_in": 300,
        "scope": "s",
        "subject": "c",
    }
    assert _call_missing_conditions(served, ehr, authorization) == 200
    assert [seen.authorization for seen in ehr.seen] == [f"Bearer {TOKEN}"]


def test_a_token_without_its_informative_fields_is_still_used(served: FlaskClient, ehr: FakeEhrFhir) -> None:
    """The CDS Hooks Sandbox sent no expires_in when its authorization server gave none."""
    assert _call_missing_conditions(served, ehr, {"access_token": TOKEN, "token_type": "Bearer"}) == 200
    assert [seen.authorization for seen in ehr.seen] == [f"Bearer {TOKEN}"]
