"""Building hook requests the way an EHR does, shared by ``replay`` and ``fire``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from cds_service.devtools.bundles import DraftOrders

HOOKS = ("patient-view", "order-select", "order-sign")
ORDER_HOOKS = ("order-select", "order-sign")

# Who "the clinician" is in a replayed or fired call; the service's templates use no user token, but a
# CDS Hooks context always names the user.
DEFAULT_USER = "Practitioner/cds-devtools"


def hook_context(
    hook: str, patient_id: str, drafts: DraftOrders | None, user_id: str = DEFAULT_USER
) -> dict[str, Any]:
    """The context of the CDS Hooks Library: patient-view; order-select with selections; order-sign."""
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if hook in ORDER_HOOKS:
        if drafts is None:
            raise ValueError(f"the {hook} hook needs draft orders")
        context["draftOrders"] = drafts.bundle
        if hook == "order-select":
            context["selections"] = list(drafts.selections)
    return context


def hook_request(
    hook: str,
    context: Mapping[str, Any],
    prefetch: Mapping[str, Any] | None = None,
    fhir_server: str | None = None,
    fhir_authorization: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The request body; optional members are left out rather than sent empty, as the standard asks."""
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": dict(context)}
    if fhir_server:
        body["fhirServer"] = fhir_server
    if fhir_authorization:
        body["fhirAuthorization"] = dict(fhir_authorization)
    if prefetch is not None:
        body["prefetch"] = dict(prefetch)
    return body


def service_for_hook(services: Mapping[str, Any], hook: str) -> str:
    """The id of the service answering ``hook``; services are discovery entries or ServiceDefinitions."""
    for service_id, service in services.items():
        service_hook = service.get("hook") if isinstance(service, Mapping) else getattr(service, "hook", None)
        if service_hook == hook:
            return service_id
    raise LookupError(f"no service answers the {hook} hook")
