"""Parse and validate a CDS Hooks request into a `HookRequest`, or say exactly why it is refused.

Every refusal is a `RequestError` with an HTTP status and a reason meant for the integrator reading the
400; nothing here may raise anything else for any input, which the fuzz tests check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from cds_service.protocol.schemas import registry, validator

HOOKS = ("patient-view", "order-select", "order-sign")
# The request's optional fields, of the envelope and of every hook's context: null is read as absent.
OPTIONAL_FIELDS = ("fhirServer", "fhirAuthorization", "prefetch", "extension")
OPTIONAL_CONTEXT_FIELDS = ("encounterId",)
UTF8_BOM = b"\xef\xbb\xbf"
# Deepest nesting of a request body the service is sure to process (orjson writes at most 254 levels, and
# the service wraps parts of a request in a few more); FHIR resources need fewer than 20.
MAX_NESTING = 200


def prepare_validators() -> None:
    """Compile the request and context validators at start: left to first use, they cost a worker's
    first hook call about 10 ms."""
    _request_validator("hook-request")
    for hook in HOOKS:
        _request_validator(f"context-{hook}")


@cache
def _request_validator(name: str) -> Draft202012Validator:
    """`validator` for ``name`` with every ``$ref`` replaced by the schema it names, once at start.

    jsonschema looks a reference up in its registry at every use, which was two thirds of the context
    check's cost. An error found through an inlined reference is the same error (the same keyword at the
    same instance path, in the same order, its subschema holding the same ``x-reason``), so every 400
    reads as before; the request schemas hold no recursive reference."""
    compiled = validator(name)
    resolver = registry().resolver(base_uri=compiled.schema.get("$id", ""))
    return compiled.evolve(schema=_inlined(compiled.schema, resolver))


def _inlined(schema: Any, resolver: Any) -> Any:
    """``schema`` with each object that is only a ``$ref`` replaced by what it names, resolved in turn
    (``resolver``: a ``referencing`` resolver based at the document ``schema`` comes from)."""
    if isinstance(schema, dict):
        if schema.keys() == {"$ref"}:
            resolved = resolver.lookup(schema["$ref"])
            return _inlined(resolved.contents, resolved.resolver)
        return {key: _inlined(value, resolver) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inlined(value, resolver) for value in schema]
    return schema


class RequestError(Exception):
    """A request the service refuses; `status` is the HTTP status, `reason` is safe to show the caller.

    `log_reason` is what the service's own log may keep: the caller may see its patient's identifiers
    (in a FHIR URL, say), the log must not. `headers` go into the answer (Accept-Encoding with a 415 for a
    content coding, as RFC 9110 asks).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        log_reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.log_reason = reason if log_reason is None else log_reason
        self.headers = headers


def without_identifiers(text: str, *identifiers: str | None) -> str:
    """``text`` with each identifier (patient, encounter, user) replaced by a placeholder, for the log."""
    for identifier in sorted(filter(None, identifiers), key=len, reverse=True):
        text = text.replace(identifier, "<id>")
    return text


@dataclass(frozen=True)
class HookRequest:
    """A validated hook call. Holds the raw context and prefetch; prefetch values are classified later."""

    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    prefetch: Mapping[str, Any]
    fhir_server: str | None
    fhir_authorization: Mapping[str, Any] | None

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]

    @property
    def encounter_id(self) -> str | None:
        return self.context.get("encounterId")

    @property
    def draft_orders(self) -> list[dict[str, Any]]:
        """The resources of `draftOrders` (order hooks, where the schema has checked its shape); empty for
        patient-view, whose context the standard gives no draftOrders, whatever a client puts there."""
        if self.hook == "patient-view":
            return []
        return [entry["resource"] for entry in self.context["draftOrders"].get("entry", ())]

    @property
    def selected_orders(self) -> list[dict[str, Any]]:
        """The draft orders named by `selections` (order-select); validated to exist at parse time."""
        wanted = set(self.context.get("selections", ()))
        return [r for r in self.draft_orders if _reference_of(r) in wanted]

    @property
    def authorization_header(self) -> str | None:
        """The header value for the EHR's FHIR server, or None when the call carries no token."""
        if not self.fhir_authorization:
            return None
        # The one token type there is, spelled as RFC 6750 writes it: a client may send "bearer" (OAuth 2.0
        # token types are case-insensitive), but some FHIR servers only take the scheme spelled "Bearer".
        return f"Bearer {self.access_token}"

    @property
    def access_token(self) -> str | None:
        """The FHIR access token the call carries (to keep it out of reasons and the log), or None."""
        return self.fhir_authorization["access_token"] if self.fhir_authorization else None


def _reference_of(resource: Mapping[str, Any]) -> str | None:
    """``Type/id`` of a draft order, which ``selections`` names it by; None for a draft without an id
    (read as ``MedicationRequest/None``, it was selected by a selection of that name)."""
    ident = resource.get("id")
    return f"{resource['resourceType']}/{ident}" if isinstance(ident, str) and ident else None


def is_json_content_type(content_type: str | None) -> bool:
    """application/json, any application/*+json, or application/json+fhir (FHIR DSTU2's JSON type, which
    older FHIR-minded clients still send), parameters ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "application/json+fhir") or (
        media.startswith("application/") and media.endswith("+json")
    )


def nesting_refusal(error: BaseException, body: Any) -> RequestError | None:
    """The 400 for a body nested too deeply to process, when that is why processing it failed; else None.

    orjson reads JSON nested up to 1024 levels but writes back at most 254 (the run-ahead key and the
    responses are written with it), and jsonschema quotes an invalid value with ``repr``, which Python's
    recursion limit stops near 1000 levels: a body nested that deep made a 500 with a stack trace of a
    thousand frames. Looking for the depth only once such an error has happened costs a normal call
    nothing; an error that a body of ordinary depth provokes stays the service's own (None)."""
    if isinstance(error, RecursionError | orjson.JSONEncodeError) and nested_deeper_than(body, MAX_NESTING):
        return RequestError(
            400,
            f"The request body nests JSON more than {MAX_NESTING} levels deep; this service refuses that.",
        )
    return None


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds objects or arrays nested more than ``limit`` levels deep (the outermost is
    level 1). Iterative, so any depth can be measured."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def parse_json_body(raw: bytes) -> Any:
    """Decode a JSON body. orjson refuses nesting deeper than 1024 levels instead of overflowing the stack."""
    if not raw.strip():
        raise RequestError(400, "The request body is empty; a CDS Hooks request is a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if raw.startswith(UTF8_BOM):
            # RFC 8259 8.1: a parser may ignore it, and .NET writers put one by default. Looked for only
            # once parsing has failed, so a body without one costs nothing more.
            return parse_json_body(raw[len(UTF8_BOM) :])
        raise RequestError(400, _not_json_reason(raw, error)) from None


def _not_json_reason(raw: bytes, error: orjson.JSONDecodeError) -> str:
    """Why the body is not JSON. orjson reports bytes that are not UTF-8 (Latin-1 text, UTF-16) as "str is
    not valid UTF-8: surrogates not allowed" at column 1, wherever they are; the reason says where instead.
    JSON is exchanged as UTF-8 whatever charset the Content-Type names (RFC 8259 8.1 and 11)."""
    not_utf8 = "The request body is not valid JSON: it is not UTF-8 text ({}); JSON must be sent as UTF-8,"
    not_utf8 += " whatever charset the Content-Type names."
    if b"\x00" in raw[:4]:  # how RFC 4627 told UTF-16 and UTF-32 from UTF-8: ASCII text has no NUL
        return not_utf8.format("UTF-16 or UTF-32, it seems")
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        return not_utf8.format(f"byte {bad.start} is not UTF-8")
    return f"The request body is not valid JSON: {error}"


def _schema_reason(where: str, errors: list[Any]) -> str:
    """Where the request breaks the schema and which rule it breaks, never the value found there.

    jsonschema's own messages quote the offending value; a reason is shown to the caller and logged, and
    the value may be an access token (a malformed ``fhirAuthorization``) or patient data.
    """
    error = best_match(errors)
    path = "/".join(str(p) for p in error.absolute_path)
    location = f"{where}/{path}" if path else where
    return f"Invalid {location}: {_rule(error)}"


def _rule(error: Any) -> str:
    if isinstance(error.schema, dict) and isinstance(error.schema.get("x-reason"), str):
        return error.schema["x-reason"]  # the schema's own wording, where the rule alone reads badly
    expected = error.validator_value
    match error.validator:
        case "required" | "additionalProperties" | "dependentRequired":
            return error.message  # names only the properties, which come from the schema or are keys
        case "type":
            return f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}"
        case "enum":
            return "must be one of " + ", ".join(map(repr, expected))
        case "const":
            return f"must be {expected!r}"
        case "pattern":
            return f"must match the pattern {expected}"
        case "minLength" | "minItems" | "minProperties":
            return f"is too short (at least {expected})"
        case "maxLength" | "maxItems" | "maxProperties":
            return f"is too long (at most {expected})"
        case _:
            return f"does not satisfy the schema's '{error.validator}' rule"


def _without_nulls(fields: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    """``fields`` without the optional members that are null (a copy when there are any).

    The standard forbids null, but for an optional field it can only mean "not given", and clients send
    it: ``"encounterId": null`` from a chart opened outside an encounter made every such call a 400, which
    an EHR shows nobody, so those charts silently got no cards."""
    if all(fields.get(name, fields) is not None for name in optional):
        return fields
    return {name: value for name, value in fields.items() if value is not None or name not in optional}


def validate_hook_request(
    body: Any, expected_hook: str, services_by_hook: Mapping[str, str] | None = None
) -> HookRequest:
    """Check the envelope, the hook name, and the hook's context; return the typed request.

    ``services_by_hook`` (hook → service id) lets a request for another hook be told where to go."""
    if not isinstance(body, dict):
        raise RequestError(400, f"The request body must be a JSON object, not {type(body).__name__}.")
    body = _without_nulls(body, OPTIONAL_FIELDS)
    if "prefetch" in body and not isinstance(body["prefetch"], dict):
        raise RequestError(400, "'prefetch' must be an object mapping prefetch keys to FHIR resources.")
    errors = list(_request_validator("hook-request").iter_errors(body))
    if errors:
        raise RequestError(400, _schema_reason("request", errors))
    if body["hook"] != expected_hook:
        reason = f"This service answers the '{expected_hook}' hook, but the request is for '{body['hook']}'."
        if services_by_hook and body["hook"] in services_by_hook:
            reason += f" That hook is answered at /cds-services/{services_by_hook[body['hook']]}."
        raise RequestError(400, reason)
    context = _without_nulls(body["context"], OPTIONAL_CONTEXT_FIELDS)
    errors = list(_request_validator(f"context-{expected_hook}").iter_errors(context))
    if errors:
        raise RequestError(400, _schema_reason("context", errors))
    if expected_hook == "order-select":
        drafts = {_reference_of(entry["resource"]) for entry in context["draftOrders"].get("entry", ())}
        unknown = [s for s in context["selections"] if s not in drafts]
        if unknown:
            raise RequestError(
                400,
                f"context.selections names {', '.join(unknown[:5])}, which is not in context.draftOrders.",
            )
    if "fhirAuthorization" in body and "fhirServer" not in body:
        raise RequestError(400, "'fhirAuthorization' was sent without 'fhirServer'.")
    return HookRequest(
        hook=body["hook"],
        hook_instance=body["hookInstance"],
        context=context,
        prefetch=body.get("prefetch", {}),
        fhir_server=body.get("fhirServer", "").rstrip("/") or None,
        fhir_authorization=body.get("fhirAuthorization"),
    )
