"""Request validation: every refusal is a RequestError with a reason, never another exception."""

from __future__ import annotations

import copy

import pytest

from cds_service.protocol.request import (
    RequestError,
    is_json_content_type,
    parse_json_body,
    validate_hook_request,
)
from tests.builders import hook_body


def refused(body: object, hook: str = "patient-view") -> RequestError:
    with pytest.raises(RequestError) as caught:
        validate_hook_request(body, hook)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_valid_requests_parse(hook: str) -> None:
    request = validate_hook_request(hook_body(hook), hook)
    assert request.hook == hook
    assert request.patient_id == "pat-1"
    if hook == "patient-view":
        assert request.draft_orders == []
    else:
        assert [r["id"] for r in request.draft_orders] == ["draft-b12"]
    if hook == "order-select":
        assert [r["id"] for r in request.selected_orders] == ["draft-b12"]


@pytest.mark.parametrize("body", [[], "text", 3, None, True])
def test_body_must_be_an_object(body: object) -> None:
    assert "JSON object" in refused(body).reason


def test_prefetch_must_be_an_object() -> None:
    assert "prefetch" in refused(hook_body(prefetch=["not", "an", "object"])).reason


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("hook", None, "hook"),
        ("hookInstance", None, "hookInstance"),
        ("hookInstance", "not-a-uuid", "hookInstance"),
        ("context", None, "context"),
        ("context", "patient 1", "context"),
        ("fhirServer", "ftp://fhir.example.org", "fhirServer"),
        ("fhirAuthorization", {"access_token": "x"}, "fhirAuthorization"),
    ],
)
def test_envelope_violations_name_the_field(field: str, value: object, fragment: str) -> None:
    body = hook_body(**{field: value}) if value is not None else hook_body(**{field: None})
    assert fragment in refused(body).reason


SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln"


@pytest.mark.parametrize(
    "auth",
    [
        f"Bearer {SECRET}",
        [SECRET],
        {
            "access_token": {"value": SECRET},
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "x",
            "subject": "s",
        },
        {
            "access_token": SECRET,
            "token_type": f"MAC {SECRET}",
            "expires_in": 300,
            "scope": "x",
            "subject": "s",
        },
    ],
)
def test_a_malformed_fhir_authorization_is_refused_without_repeating_the_token(auth: object) -> None:
    """A reason is shown to the caller and logged: it says what is wrong, never what was sent."""
    reason = refused(hook_body(fhirServer="https://fhir.example.org", fhirAuthorization=auth)).reason
    assert "fhirAuthorization" in reason
    assert "c2VjcmV0" not in reason


@pytest.mark.parametrize(
    "token",
    ["abc\r\nX-Injected: 1", "tok€n", "tok\x00en", "two words", "c2VjcmV0\n", "ünïcode"],
    ids=["crlf", "euro", "nul", "space", "trailing-newline", "latin-1"],
)
def test_an_access_token_that_cannot_be_a_header_value_is_a_400(token: str) -> None:
    """It is sent as ``Authorization: Bearer <token>``. A line break failed every fetch as an invalid
    header (a 412 blaming the data), a character outside Latin-1 raised UnicodeEncodeError in the fetch
    (logged with a stack trace), a NUL or a space went to the server as it was."""
    auth = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "x", "subject": "s"}
    error = refused(hook_body(fhirServer="https://fhir.example.org", fhirAuthorization=auth))
    assert error.status == 400
    assert "fhirAuthorization/access_token" in error.reason
    assert token not in error.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hookInstance", "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea\n"),
        ("fhirServer", "https://fhir.example.org\n"),
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_value(field: str, value: str) -> None:
    assert field in refused(hook_body(**{field: value})).reason


def test_a_patient_id_with_a_trailing_newline_is_refused() -> None:
    body = hook_body()
    body["context"]["patientId"] = "pat-1\n"
    assert "patientId" in refused(body).reason


def test_hook_must_match_the_service() -> None:
    reason = refused(hook_body("order-sign"), "patient-view").reason
    assert "'patient-view'" in reason and "'order-sign'" in reason


def test_a_request_for_another_hook_is_told_which_service_answers_it() -> None:
    """An EHR registered with the wrong service id sends every order-sign to patient-view's URL."""
    services = {"patient-view": "pv", "order-sign": "b12-iron-order-sign"}
    with pytest.raises(RequestError) as caught:
        validate_hook_request(hook_body("order-sign"), "patient-view", services)
    assert caught.value.reason.endswith("That hook is answered at /cds-services/b12-iron-order-sign.")
    body = hook_body()
    body["hook"] = "appointment-book"
    with pytest.raises(RequestError) as caught:
        validate_hook_request(body, "patient-view", services)
    assert "answered at" not in caught.value.reason


@pytest.mark.parametrize(
    ("hook", "mutate", "fragment"),
    [
        ("patient-view", lambda c: c.pop("patientId"), "patientId"),
        ("patient-view", lambda c: c.update(patientId="has spaces"), "patientId"),
        ("patient-view", lambda c: c.update(userId="dr-1"), "userId"),
        ("order-select", lambda c: c.pop("selections"), "selections"),
        ("order-select", lambda c: c.update(selections=[]), "selections"),
        ("order-select", lambda c: c.pop("draftOrders"), "draftOrders"),
        ("order-sign", lambda c: c.update(draftOrders={"resourceType": "Patient"}), "draftOrders"),
        (
            "order-sign",
            lambda c: c.update(draftOrders={"resourceType": "Bundle", "entry": [{}]}),
            "draftOrders",
        ),
    ],
)
def test_context_violations_name_the_field(hook: str, mutate, fragment: str) -> None:
    body = hook_body(hook)
    mutate(body["context"])
    assert fragment in refused(body, hook).reason


def test_selection_must_point_into_draft_orders() -> None:
    body = hook_body("order-select")
    body["context"]["selections"] = ["MedicationRequest/elsewhere"]
    assert "MedicationRequest/elsewhere" in refused(body, "order-select").reason


def test_fhir_authorization_needs_a_fhir_server() -> None:
    auth = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "s",
    }
    assert "fhirServer" in refused(hook_body(fhirAuthorization=auth)).reason


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
def test_the_token_type_is_read_in_any_case_and_sent_as_bearer(token_type: str) -> None:
    """OAuth 2.0 token types are case-insensitive (RFC 6749 5.1); "BEARER" was a 400, and "bearer" went to
    the FHIR server as the scheme, which servers that match "Bearer " refuse."""
    auth = {"access_token": "abc", "token_type": token_type, "expires_in": 300, "scope": "s", "subject": "c"}
    body = hook_body(fhirServer="https://fhir.example.org/r4", fhirAuthorization=auth)
    assert validate_hook_request(body, "patient-view").authorization_header == "Bearer abc"


@pytest.mark.parametrize("token_type", ["MAC", "DPoP", "Bearer ", "Basic", ""])
def test_a_token_type_other_than_bearer_is_a_400_saying_what_is_expected(token_type: str) -> None:
    auth = {"access_token": "abc", "token_type": token_type, "expires_in": 300, "scope": "s", "subject": "c"}
    reason = refused(hook_body(fhirServer="https://fhir.example.org", fhirAuthorization=auth)).reason
    assert reason.startswith("Invalid request/fhirAuthorization/token_type: must be 'Bearer'")


@pytest.mark.parametrize("left_out", ["expires_in", "scope", "subject"])
def test_fhir_authorization_without_its_informative_fields_is_used(left_out: str) -> None:
    """The service uses none of them; the Sandbox sent no expires_in when its authorization server gave
    none (cds-hooks/sandbox#65), and a 400 threw the whole call away for it."""
    auth = {"access_token": "abc", "token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "c"}
    del auth[left_out]
    body = hook_body(fhirServer="https://fhir.example.org/r4", fhirAuthorization=auth)
    assert validate_hook_request(body, "patient-view").authorization_header == "Bearer abc"


@pytest.mark.parametrize(
    ("field", "value"), [("expires_in", "300"), ("expires_in", -5), ("scope", ""), ("subject", 7)]
)
def test_fhir_authorization_informative_fields_are_still_checked_when_sent(field: str, value: object) -> None:
    auth = {"access_token": "abc", "token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "c"}
    auth[field] = value
    reason = refused(hook_body(fhirServer="https://fhir.example.org", fhirAuthorization=auth)).reason
    assert f"fhirAuthorization/{field}" in reason


@pytest.mark.parametrize("left_out", ["access_token", "token_type"])
def test_fhir_authorization_needs_its_token_and_type(left_out: str) -> None:
    auth = {"access_token": "abc", "token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "c"}
    del auth[left_out]
    reason = refused(hook_body(fhirServer="https://fhir.example.org", fhirAuthorization=auth)).reason
    assert "fhirAuthorization" in reason and left_out in reason


def test_authorization_header_uses_the_token_type() -> None:
    auth = {"access_token": "abc", "token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "c"}
    request = validate_hook_request(
        hook_body(fhirServer="https://fhir.example.org/r4/", fhirAuthorization=auth), "patient-view"
    )
    assert request.authorization_header == "Bearer abc"
    assert request.fhir_server == "https://fhir.example.org/r4"
    assert validate_hook_request(hook_body(), "patient-view").authorization_header is None


def test_validation_does_not_mutate_the_body() -> None:
    body = hook_body("order-select")
    before = copy.deepcopy(body)
    validate_hook_request(body, "order-select")
    assert body == before


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/fhir+json", True),
        ("application/json+fhir", True),  # DSTU2's; a 415 for it blamed the body's type for a name
        ("application/json+fhir; charset=utf-8", True),
        ("application/xml+fhir", False),
        ("APPLICATION/JSON", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        (None, False),
        ("", False),
    ],
)
def test_json_content_types(content_type: str | None, ok: bool) -> None:
    assert is_json_content_type(content_type) is ok


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"{", b"{'a': 1}", b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b'{"a": NaN}'],
)
def test_bad_json_is_a_400_with_a_reason(raw: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_json_body(raw)
    assert caught.value.status == 400
    assert caught.value.reason


def test_a_selection_cannot_name_a_draft_without_an_id() -> None:
    """A draft with no id was known as ``MedicationRequest/None``, so that selection selected it."""
    body = hook_body("order-select")
    del body["context"]["draftOrders"]["entry"][0]["resource"]["id"]
    body["context"]["selections"] = ["MedicationRequest/None"]
    assert "MedicationRequest/None" in refused(body, "order-select").reason


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_a_null_encounter_id_is_read_as_absent(hook: str) -> None:
    """A chart opened outside an encounter: a 400 for it meant no cards for such charts, and no one told."""
    body = hook_body(hook)
    body["context"]["encounterId"] = None
    request = validate_hook_request(body, hook)
    assert request.encounter_id is None
    assert "encounterId" not in request.context
    assert body["context"]["encounterId"] is None, "the caller's body is left as it was"


def test_null_optional_envelope_fields_are_read_as_absent() -> None:
    body = hook_body()
    body.update(fhirServer=None, fhirAuthorization=None, extension=None, prefetch=None)
    request = validate_hook_request(body, "patient-view")
    assert request.fhir_server is None
    assert request.authorization_header is None
    assert request.prefetch == {}


def test_null_is_still_refused_where_a_field_is_required() -> None:
    body = hook_body()
    body["hookInstance"] = None
    assert "hookInstance" in refused(body).reason
    body = hook_body()
    body["context"]["patientId"] = None
    assert "patientId" in refused(body).reason
    body = hook_body("order-sign")
    body["context"]["draftOrders"] = None
    assert "draftOrders" in refused(body, "order-sign").reason


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    """RFC 8259 lets a parser ignore it, and .NET writers add one; it was a 400."""
    assert parse_json_body(b'\xef\xbb\xbf{"hook": "patient-view"}') == {"hook": "patient-view"}
    with pytest.raises(RequestError) as caught:
        parse_json_body(b"\xef\xbb\xbf{not json")
    assert caught.value.status == 400
    with pytest.raises(RequestError):
        parse_json_body(b"\xef\xbb\xbf")


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_fields_the_standard_does_not_define_are_tolerated(hook: str) -> None:
    """Extensions, 3.0 additions and vendor fields anywhere: a service must not refuse them."""
    body = hook_body(hook, fhirServer="https://fhir.example.org")
    body.update(hookVersion="1.0", extension={"com.example.flag": True}, vendorField=[1])
    body["fhirAuthorization"] = {
        "access_token": "abc",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "s",
        "subject": "c",
        "patient": "pat-1",
        "id_token": "x",
    }
    body["context"]["com.example.context"] = {"x": 1}
    if hook != "patient-view":
        body["context"]["draftOrders"]["id"] = "bundle-1"
        body["context"]["draftOrders"]["entry"][0]["fullUrl"] = "urn:uuid:0b6e5c3a-8f1e-4a55-9d8b"
    request = validate_hook_request(body, hook)
    assert request.authorization_header == "Bearer abc"
    assert request.patient_id == "pat-1"


def _set_context(field: str, value: object, hook: str = "patient-view") -> dict:
    body = hook_body(hook)
    body["context"][field] = value
    return body


@pytest.mark.parametrize(
    ("body", "hook", "expected"),
    [
        (_set_context("userId", "dr-1"), "patient-view", "context/userId: must name the user as "),
        (_set_context("patientId", "a b"), "patient-view", "context/patientId: must be a FHIR id"),
        (hook_body(hookInstance="abc"), "patient-view", "request/hookInstance: must be a UUID"),
        (hook_body(fhirServer="fhir.example.org"), "patient-view", "request/fhirServer: must be the FHIR"),
        (
            _set_context("selections", ["draft-b12"], "order-select"),
            "order-select",
            "context/selections/0: must be a relative reference such as MedicationRequest/123",
        ),
    ],
    ids=["userId", "patientId", "hookInstance", "fhirServer", "selections"],
)
def test_a_malformed_identifier_is_explained_in_words(body: dict, hook: str, expected: str) -> None:
    """The reason quoted the regular expression (with its (?!\\n) guard), which integrators had to decode."""
    reason = refused(body, hook).reason
    assert expected in reason
    assert "pattern" not in reason and "(?!" not in reason
