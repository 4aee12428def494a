"""The three CDS services: hook request → patient data → findings → cards.

This is the one place that knows both the wire format and the clinical engine. It decides which prefetch
keys are missing, fetches them from the EHR's FHIR server when that server is allowed, refuses with 412
when data cannot be had, runs the engine, and renders the cards. Nothing here imports Flask.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson

from cds_service.clinical import codes
from cds_service.clinical.engine import ClinicalConfig, evaluate, load_clinical_config
from cds_service.clinical.findings import JSON_FORMAT, Finding, findings_from_json, findings_to_json
from cds_service.config import ConfigError, Settings, load_site_config
from cds_service.fhir.client import FetchOutcome, FhirClient, fhir_server_allowed
from cds_service.fhir.medications import (
    RECORD_TYPES,
    MedicationRef,
    follow_medication_references,
    local_medication_id,
    missing_medications,
)
from cds_service.fhir.read import next_link
from cds_service.observability import CallTrace, observe_fhir_fetch
from cds_service.protocol.auth import AuthenticatedClient
from cds_service.protocol.cards import (
    DEFAULT_OVERRIDE_REASONS,
    CardStyle,
    cards_response,
    issued_cards,
    parse_override_reasons,
)
from cds_service.protocol.prefetch import (
    PrefetchItem,
    TemplateError,
    classify,
    prefetched_resources,
    render_template,
    resources_of,
    search_mode,
)
from cds_service.protocol.request import HookRequest, RequestError, validate_hook_request, without_identifiers
from cds_service.redaction import address, without_tokens
from cds_service.run_ahead import RunAheadCache

log = logging.getLogger(__name__)

# Below this, following medication references would only add a timeout to the call.
MIN_MEDICATION_BUDGET_MS = 100
# What a run-ahead entry holds (findings and the span of the clinical clock they hold for); in the key, so
# that builds storing entries of another layout in a shared Redis never read each other's.
RUN_AHEAD_ENTRY = "findings-from-until"


def wall_clock() -> datetime:
    """The clinical clock when ``CDS_NOW`` does not pin it."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class PatientData:
    """The resources a call reasons on, and whether the FHIR server was asked for any (missing prefetch
    keys, Medications the records only refer to): what it answers may change before the next call with
    the same request, so no run-ahead entry is made from it."""

    resources: list[dict]
    asked_server: bool


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]

    def discovery_entry(self, *, auth_required: bool = True) -> dict[str, Any]:
        """The service's discovery entry; ``usageRequirements`` asks for a JWT only when calls need one
        (a CDS_AUTH=off test instance told a Sandbox user to sign calls it does not check)."""
        usage = (
            "Send the prefetch (or fhirServer with fhirAuthorization so the service can fetch what is "
            "missing from an allowed server)."
        )
        if auth_required:
            usage += " Authenticate with a JWT signed by a registered client."
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": usage,
        }


def _code_list(config: ClinicalConfig, group: str) -> str:
    """Every code of the group with its system, a site's local codes included (a local ferritin code must
    be asked for, not only read when an EHR happens to send it), percent-encoded where a local code holds
    what a URL cannot (a space, ``&``, ``#``, ``+``); the FHIR search escapes are already in each token."""
    return ",".join(quote(token, safe=":/|$,") for token in codes.prefetch_code_tokens(config, group))


def prefetch_templates(config: ClinicalConfig) -> dict[str, str]:
    """The queries the engine needs, using only CDS Hooks 2.0 tokens (no dates: 2.0 has no `today()`).

    The iron/B12 panel and the context labs (CBC, CRP, liver enzymes) are separate keys so that frequent
    CBCs can never push a year-old B12 off the first page of a newest-first search.
    """
    patient = "{{context.patientId}}"
    return {
        "patient": f"Patient/{patient}",
        "b12IronLabs": (
            f"Observation?patient={patient}&code={_code_list(config, 'b12-iron')}&_sort=-date&_count=200"
        ),
        "contextLabs": (
            f"Observation?patient={patient}&code={_code_list(config, 'context')}&_sort=-date&_count=200"
        ),
        "medicationRequests": (
            f"MedicationRequest?patient={patient}&_include=MedicationRequest:medication&_count=200"
        ),
        "medicationStatements": f"MedicationStatement?patient={patient}&_count=200",
        "medicationAdministrations": f"MedicationAdministration?patient={patient}&_count=200",
        "conditions": f"Condition?patient={patient}&_count=200",
        "serviceRequests": f"ServiceRequest?patient={patient}&status=draft,active,on-hold&_count=200",
    }


def build_services(config: ClinicalConfig) -> dict[str, ServiceDefinition]:
    templates = prefetch_templates(config)
    definitions = (
        ServiceDefinition(
            id="b12-iron-patient-view",
            hook="patient-view",
            title="Vitamin B12 and iron review",
            description=(
                "On opening the chart: iron studies due after starting B12, iron deficiency unmasked by B12 "
                "therapy, a high B12 (supplement review or work-up), combined B12 and iron deficiency, "
                "ferritin with inflammation, borderline B12 without methylmalonic acid."
            ),
            prefetch=templates,
        ),
        ServiceDefinition(
            id="b12-iron-order-select",
            hook="order-select",
            title="B12 and iron order check (on selection)",
            description=(
                "When a B12 product is selected: suggests iron studies to catch iron deficiency unmasked by "
                "B12 therapy, warns when B12 is ordered for a high ferritin it cannot lower, and flags a B12 "
                "order for a patient whose B12 is already high."
            ),
            prefetch=templates,
        ),
        ServiceDefinition(
            id="b12-iron-order-sign",
            hook="order-sign",
            title="B12 and iron order check (on signing)",
            description=(
                "Before orders are signed: the same checks as on selection, over every draft order; iron "
                "studies already in the draft orders suppress the suggestion."
            ),
            prefetch=templates,
        ),
    )
    return {d.id: d for d in definitions}


class HookHandler:
    """Answers hook calls. One per process; safe to share across threads."""

    def __init__(
        self,
        settings: Settings,
        clinical_config: ClinicalConfig,
        *,
        card_style: CardStyle | None = None,
        fhir_client: FhirClient | None = None,
        run_ahead: RunAheadCache | None = None,
        on_cards: Callable[[str, Sequence[tuple[str, str]]], None] | None = None,
        site_digest: str = "",
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        """``site_digest`` names the site's codes and thresholds in the run-ahead key (`build_handler`);
        ``clock`` is the clinical clock when ``CDS_NOW`` does not pin it (tests move it by hand)."""
        self.settings = settings
        self.clock = clock
        self.clinical_config = clinical_config
        self.site_digest = site_digest
        self.services = build_services(clinical_config)
        self.services_by_hook = {s.hook: s.id for s in self.services.values()}
        self.card_style = card_style or CardStyle()
        self.fhir_client = fhir_client or FhirClient()
        self.run_ahead = run_ahead
        self.on_cards = on_cards

    def discovery_document(self) -> dict[str, Any]:
        required = self.settings.auth == "required"
        return {"services": [s.discovery_entry(auth_required=required) for s in self.services.values()]}

    def handle(
        self,
        service_id: str,
        body: Any,
        client: AuthenticatedClient | None = None,
        trace: CallTrace | None = None,
    ) -> dict[str, Any]:
        """Run one service on a decoded request body and return the response; RequestError carries the
        400/404/412 refusals."""
        trace = trace or CallTrace(service=service_id)
        service = self.services.get(service_id)
        if service is None:
            raise unknown_service(service_id)
        with trace.phase("validation"):
            request = validate_hook_request(body, service.hook, self.services_by_hook)
        response = self._answer_from_memory(request, client, trace)
        if response is None:
            data = self._patient_data(service, request, client, trace)
            with trace.phase("rules"):
                findings = self._evaluate(request, data.resources, focus_all=False)
                if request.hook == "order-select" and not data.asked_server:
                    self._run_ahead_for_sign(request, client, data.resources)
            with trace.phase("render"):
                response = cards_response(findings, self.card_style)
        if self.on_cards and response["cards"]:
            self.on_cards(service_id, issued_cards(response))
        return response

    def _now(self) -> datetime:
        return self.settings.now or self.clock()

    def _evaluate(
        self, request: HookRequest, resources: list[dict], *, focus_all: bool, at: datetime | None = None
    ) -> list[Finding]:
        if request.hook == "patient-view":
            focus = None
        elif request.hook == "order-select" and not focus_all:
            focus = request.selected_orders
        else:
            focus = request.draft_orders
        return evaluate(
            resources,
            patient_id=request.patient_id,
            now=at or self._now(),
            draft_orders=request.draft_orders,
            focus_orders=focus,
            config=self.clinical_config,
        )

    # Run-ahead: order-select also computes what order-sign will ask for, so that order-sign (which must
    # answer fast) is served from memory when the same drafts and the same prefetch come back. An entry is
    # made only from what the request itself carried (nothing fetched: the server's data may change before
    # order-sign), and only when its findings hold for its whole lifetime on the clinical clock.

    def _run_ahead_key(self, request: HookRequest, client: AuthenticatedClient | None) -> str | None:
        """Who asks (client, tenant, FHIR server) is part of the key with the prefetch: one EHR's data must
        never answer another's order-sign for a patient id that happens to be the same. So are the site's
        codes and thresholds: replicas sharing Redis while a changed site config rolls out must not answer
        with findings reached under the old one."""
        if self.run_ahead is None or request.hook == "patient-view":
            return None
        caller = [client.iss, client.tenant] if client else [None, None]
        data = {key: _search_content(value) for key, value in request.prefetch.items()}
        material = orjson.dumps(
            [*caller, request.fhir_server, RUN_AHEAD_ENTRY, JSON_FORMAT, self.site_digest, data],
            option=orjson.OPT_SORT_KEYS,
        )
        digest = hashlib.sha256(material).hexdigest()
        return self.run_ahead.key(request.patient_id, request.encounter_id, request.draft_orders, digest)

    def _run_ahead_for_sign(
        self, request: HookRequest, client: AuthenticatedClient | None, resources: list[dict]
    ) -> None:
        """Store the findings for every draft with the span of the clinical clock they were checked for.

        Findings depend on ``now``: a result leaves its window, a day ends and a suggested order is dated
        the next. So the findings at the end of the lifetime are compared with those at its start, and
        the entry is not kept when they differ. With ``CDS_NOW`` set the clinical clock stands still and
        the span is that one moment."""
        key = self._run_ahead_key(request, client)
        if key is None:
            return
        start = self._now()
        end = start if self.settings.now else start + timedelta(seconds=self.settings.run_ahead_seconds)
        findings = findings_to_json(self._evaluate(request, resources, focus_all=True, at=start))
        if end != start and findings != findings_to_json(
            self._evaluate(request, resources, focus_all=True, at=end)
        ):
            log.info(
                "run-ahead entry not kept: the findings change within its %d s",
                self.settings.run_ahead_seconds,
                extra={"hookInstance": request.hook_instance},
            )
            return
        self.run_ahead.put(key, {"from": start.isoformat(), "until": end.isoformat(), "findings": findings})

    def _answer_from_memory(
        self, request: HookRequest, client: AuthenticatedClient | None, trace: CallTrace
    ) -> dict[str, Any] | None:
        """order-sign's response from order-select's findings, or None to evaluate afresh: no entry, one
        checked for another span of the clinical clock, or one this build cannot read or render."""
        if request.hook != "order-sign":
            return None
        key = self._run_ahead_key(request, client)
        entry = self.run_ahead.get(key) if key is not None else None
        if entry is None:
            return None
        try:
            start, end, findings = _run_ahead_entry(entry)
            if not start <= self._now() <= end:
                return None
            with trace.phase("render"):
                response = cards_response(findings, self.card_style)
        except (KeyError, TypeError, ValueError) as error:
            log.warning(
                "run-ahead entry unreadable (%s); evaluating afresh",
                type(error).__name__,
                extra={"hookInstance": request.hook_instance},
            )
            return None
        trace.run_ahead_hit = True
        return response

    # Patient data: prefetch first, the FHIR server for what is missing, 412 when neither has it.

    def _patient_data(
        self,
        service: ServiceDefinition,
        request: HookRequest,
        client: AuthenticatedClient | None,
        trace: CallTrace,
    ) -> PatientData:
        with trace.phase("prefetch"):
            items = {
                key: _without_token(classify(key, template, request.prefetch, request.patient_id), request)
                for key, template in service.prefetch.items()
            }
            missing = {key: item for key, item in items.items() if item.state.is_missing}
            resources = prefetched_resources(items.values())
        for item in items.values():
            if item.reason is not None and not item.state.is_missing:
                log.warning(
                    "prefetch key %s read as sent, but %s",
                    item.key,
                    without_identifiers(item.reason, *_identifiers(request)),
                    extra={"hookInstance": request.hook_instance},
                )
        started = time.monotonic()
        if missing:
            for item in missing.values():
                log.info(
                    "prefetch key %s missing (%s): %s",
                    item.key,
                    item.state.value,
                    without_identifiers(item.reason or "", *_identifiers(request)),
                    extra={"hookInstance": request.hook_instance},
                )
            with trace.phase("fhir"):
                resources.extend(self._fetch_missing(service, request, client, missing, trace))
        if request.fhir_server and (
            missing_products := missing_medications(
                medication_records := _medication_resources(resources, request.draft_orders),
                request.fhir_server,
            )
        ):
            spent_ms = (time.monotonic() - started) * 1000.0
            with trace.phase("fhir"):
                resources.extend(
                    self._fetch_medications(
                        request, client, medication_records, missing_products, trace, spent_ms
                    )
                )
            return PatientData(resources, asked_server=True)
        if not request.fhir_server and request.draft_orders:
            _note_drafts_without_a_product(request, resources)
        return PatientData(resources, asked_server=bool(missing))

    def _may_query(self, request: HookRequest, client: AuthenticatedClient | None) -> bool:
        """Whether the request's fhirServer is one this client (or, failing that, the site) allows."""
        allowed = (
            client.fhir_servers if client and client.fhir_servers else self.settings.allowed_fhir_servers
        )
        return bool(request.fhir_server) and fhir_server_allowed(request.fhir_server, allowed)

    def _fetch_missing(
        self,
        service: ServiceDefinition,
        request: HookRequest,
        client: AuthenticatedClient | None,
        missing: Mapping[str, Any],
        trace: CallTrace,
    ) -> list[dict]:
        why = "; ".join(f"{key} ({item.reason})" for key, item in missing.items())
        if not request.fhir_server:
            reason = (
                f"Required data is missing from the prefetch and no fhirServer was given to fetch it: {why}."
            )
            raise RequestError(412, reason, without_identifiers(reason, *_identifiers(request)))
        if not self._may_query(request, client):
            raise RequestError(
                412,
                f"Required data is missing from the prefetch ({why}) and the fhirServer "
                f"{address(request.fhir_server)} is not one this service is allowed to query.",
            )
        try:
            queries = {key: render_template(service.prefetch[key], request.context) for key in missing}
        except TemplateError as error:
            # The request is valid (an optional field such as encounterId may be absent; the EHR then
            # leaves that key out too): it is the data that cannot be had, so a 412, not a 400.
            raise RequestError(
                412, f"Required data is missing from the prefetch and cannot be fetched: {error}."
            ) from None
        outcomes = self._fetch(request, queries, trace, self.settings.fhir_budget_ms)
        pages = self.fhir_client.max_pages
        outcomes = {key: _refuse_unsafe_truncation(o, queries[key], pages) for key, o in outcomes.items()}
        outcomes = {
            key: _refuse_unusable(o, service.prefetch[key], request.patient_id) for key, o in outcomes.items()
        }
        failed = self._note_failures(request, outcomes, trace)
        if failed:
            reasons = "; ".join(f"{o.key}: {o.error}" for o in failed)
            reason = f"Required data could not be fetched from {address(request.fhir_server)}: {reasons}."
            raise RequestError(412, reason, without_identifiers(reason, *_identifiers(request)))
        fetched: list[dict] = []
        for outcome in outcomes.values():
            fetched.extend(resources_of(outcome.resource))
        return fetched

    def _fetch_medications(
        self,
        request: HookRequest,
        client: AuthenticatedClient | None,
        resources: list[dict],
        missing: list[MedicationRef],
        trace: CallTrace,
        spent_ms: float,
    ) -> list[dict]:
        """The Medications that medication records (and those Medications' ingredients) refer to and
        nobody sent, from the request's server: ``fhir.medications.follow_medication_references`` reads
        a named version, follows ingredients a few levels down, and keeps to the budget left.

        Unlike a missing prefetch key this never refuses the call: a record whose product cannot be read
        stays "unidentified", which the rules already treat with care (no card claims there is no B12 on
        file while one is). So a server that is not allowed, slow or failing costs only a log line."""
        extra = {"hookInstance": request.hook_instance}
        if not self._may_query(request, client):
            log.info(
                "%d medication reference(s) name a Medication that is not in the request, and the "
                "fhirServer is not one this service may query: those records stay unidentified",
                len(missing),
                extra=extra,
            )
            return []
        budget_ms = int(self.settings.fhir_budget_ms - spent_ms)
        if budget_ms < MIN_MEDICATION_BUDGET_MS:
            log.warning(
                "%d medication reference(s) not followed: %d ms of the FHIR budget left",
                len(missing),
                max(budget_ms, 0),
                extra=extra,
            )
            return []

        def fetch(queries: dict[str, str], round_budget_ms: int) -> dict[str, FetchOutcome]:
            outcomes = self._fetch(request, queries, trace, round_budget_ms)
            self._note_failures(request, outcomes, trace)
            return outcomes

        followed = follow_medication_references(resources, request.fhir_server or "", fetch, budget_ms)
        for note in followed.notes:
            log.warning("medication references: %s", note, extra=extra)
        return followed.medications

    def _fetch(
        self, request: HookRequest, queries: dict[str, str], trace: CallTrace, budget_ms: int
    ) -> dict[str, FetchOutcome]:
        outcomes = self.fhir_client.fetch_all(
            request.fhir_server,
            queries,
            authorization=request.authorization_header,
            budget_ms=budget_ms,
        )
        trace.fhir_queries += sum(o.requests for o in outcomes.values())
        return outcomes

    def _note_failures(
        self, request: HookRequest, outcomes: Mapping[str, FetchOutcome], trace: CallTrace
    ) -> list[FetchOutcome]:
        """Metrics and log lines (identifiers removed) for every outcome; returns the failed ones."""
        private = _identifiers(request)
        extra = {"hookInstance": request.hook_instance}
        for outcome in outcomes.values():
            observe_fhir_fetch(outcome.elapsed_ms, outcome.ok)
            for warning in outcome.warnings:
                log.warning(
                    "FHIR fetch for %s: %s", outcome.key, without_identifiers(warning, *private), extra=extra
                )
        failed = [o for o in outcomes.values() if not o.ok]
        trace.fhir_errors += len(failed)
        for outcome in failed:
            log.warning(
                "FHIR fetch for %s failed: %s",
                outcome.key,
                without_identifiers(outcome.error or "", *private),
                extra=extra,
            )
        return failed


_MEDICATION_TYPES = RECORD_TYPES | {"Medication"}


def _medication_resources(resources: list[dict], drafts: list[dict]) -> list[dict]:
    """The medication records and Medications among ``resources`` and ``drafts``: all that following
    medication references reads (records name Medications; Medications are looked up and name their
    ingredients). Picked out in one pass first, it costs a call with a fhirServer a third of handing the
    follower every Observation of the patient."""
    return [r for r in (*resources, *drafts) if r.get("resourceType") in _MEDICATION_TYPES]


def _note_drafts_without_a_product(request: HookRequest, resources: list[dict]) -> None:
    """A log line for draft orders that name their product only by a reference to a Medication nobody
    sent, when there is no fhirServer to fetch it from. Such a draft is read as an unidentified medicine,
    so the call is answered without a word about it: the line tells the operator why (with a server that
    is not allowed or fails, ``_fetch_medications`` says so). A reference with a display is read by it."""
    wanted = {
        ident
        for draft in request.draft_orders
        if draft.get("resourceType") in RECORD_TYPES
        and isinstance(reference := draft.get("medicationReference"), dict)
        and not (isinstance(reference.get("display"), str) and reference["display"].strip())
        and (ident := local_medication_id(reference, "")) is not None
    }
    if not wanted:
        return
    sent = (r.get("id") for r in [*resources, *request.draft_orders] if r.get("resourceType") == "Medication")
    unread = sorted(wanted.difference(sent))
    if unread:
        log.info(
            "%d draft order(s) name their medication only by a reference to a Medication not in the "
            "request (%s), and no fhirServer was given to fetch it: read as unidentified medicines",
            len(unread),
            ", ".join(f"Medication/{ident}" for ident in unread[:5]),
            extra={"hookInstance": request.hook_instance},
        )


def _without_token(item: PrefetchItem, request: HookRequest) -> PrefetchItem:
    """``item`` with the call's access token out of its reason. A reason may quote what the EHR sent: an
    OperationOutcome in place of a search, whose diagnostics echoed the token into the 412 and the log."""
    if item.reason is None:
        return item
    return replace(item, reason=without_tokens(item.reason, request.access_token))


def _identifiers(request: HookRequest) -> tuple[str | None, ...]:
    """The identifiers a reason may carry (in a FHIR URL, a server's diagnostics) that the log must not."""
    user = request.context.get("userId")
    return (request.patient_id, request.encounter_id, user if isinstance(user, str) else None)


def unknown_service(service_id: str) -> RequestError:
    """The 404 for a service id that is not ours, quoting at most 100 characters of what was asked for."""
    shown = service_id if len(service_id) <= 100 else service_id[:100] + "…"
    # The caller sees what it asked for; the log does not, as a client that builds the URL from the
    # wrong field puts a patient's identifier there.
    return RequestError(
        404, f"There is no CDS service with id '{shown}'.", "There is no CDS service with the id in the URL."
    )


def _newest_first(query: str) -> bool:
    sort = dict(parse_qsl(query.partition("?")[2])).get("_sort", "")
    return sort.split(",", 1)[0] == "-date"


def _refuse_unsafe_truncation(outcome: FetchOutcome, query: str, pages: int) -> FetchOutcome:
    """A search cut off at the client's page limit is read in part only when it is newest first, so that
    what is left out is the oldest (and a warning is logged). In any other order the part not read could
    hold the active B12 order or the supplement a card would call absent, so the key counts as failed."""
    if not outcome.truncated or _newest_first(query):
        return outcome
    return replace(
        outcome,
        resource=None,
        error=f"more results than the {pages} pages read, in no date order, so the newest may be among "
        "those not read",
    )


def _refuse_unusable(outcome: FetchOutcome, template: str, patient_id: str) -> FetchOutcome:
    """What the FHIR server sent is held to the rules the prefetch is held to (``classify``): a resource
    of a patient other than the one in context fails the key. Read as data, it was dropped by the
    patient record without a word, so a server that ignored ``patient=`` (or answered a read with
    another Patient) made the call a 200 that had looked at nothing of this patient's."""
    if not outcome.ok:
        return outcome
    item = classify(outcome.key, template, {outcome.key: outcome.resource}, patient_id)
    if not item.state.is_missing:
        return outcome
    return replace(outcome, resource=None, error=f"the server's answer is not usable: {item.reason}")


def card_style_from_site(site: Mapping[str, Any]) -> CardStyle:
    """Override reasons and a link to the rule documentation, when the site configures them."""
    try:
        reasons = parse_override_reasons(site["overrideReasons"]) if "overrideReasons" in site else None
    except ValueError as error:
        raise ConfigError(f"CDS_SITE_CONFIG: {error}") from None
    doc_url = site.get("rulesDocUrl")
    if doc_url is not None and not (isinstance(doc_url, str) and doc_url.startswith(("https://", "http://"))):
        raise ConfigError(f"CDS_SITE_CONFIG: rulesDocUrl={doc_url!r} is not an absolute http(s) URL")
    return CardStyle(override_reasons=reasons or DEFAULT_OVERRIDE_REASONS, rules_doc_url=doc_url)


def build_handler(
    settings: Settings,
    *,
    fhir_client: FhirClient | None = None,
    run_ahead: RunAheadCache | None = None,
    on_cards: Callable[[str, Sequence[tuple[str, str]]], None] | None = None,
    clock: Callable[[], datetime] = wall_clock,
) -> HookHandler:
    """The handler as the service runs it: site config read, clinical config and card style built.

    A malformed site config stops the service at start (ConfigError), never at the first call.
    """
    site = load_site_config(settings.site_config)
    try:
        clinical_config = load_clinical_config(site)
    except ValueError as error:
        raise ConfigError(f"CDS_SITE_CONFIG: {error}") from None
    clinical_sections = {section: site.get(section) for section in ("codes", "thresholds")}
    return HookHandler(
        settings,
        clinical_config,
        card_style=card_style_from_site(site),
        fhir_client=fhir_client,
        run_ahead=run_ahead,
        on_cards=on_cards,
        clock=clock,
        site_digest=hashlib.sha256(orjson.dumps(clinical_sections, option=orjson.OPT_SORT_KEYS)).hexdigest(),
    )


def _search_content(value: Any) -> Any:
    """What a prefetch value says about the patient: a searchset Bundle's resources, in order, each with
    its search mode, and whether a next page is announced, without the rest of the envelope. An EHR runs
    the prefetch again for order-sign, and servers give every search result a new Bundle ``id``,
    ``meta.lastUpdated`` and paging URLs, so hashing the envelope would make every order-sign miss. The
    mode and the next link stay: they decide whether the key is read at all (an ``include`` is a
    Medication beside the matches, a ``match`` of another type makes the search junk; a next link makes it
    a first page only). An empty search has no ``entry`` at all (the common case for administrations or
    conditions) and reads as no resources. Any change to a resource still changes the key."""
    if isinstance(value, dict) and value.get("resourceType") == "Bundle":
        entries = value.get("entry", [])
        if isinstance(entries, list):
            content = [_entry_content(entry) for entry in entries]
            return {"entries": content, "paged": next_link(value) is not None}
    return value


def _entry_content(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    return [entry.get("resource"), search_mode(entry)]


def _run_ahead_entry(entry: Any) -> tuple[datetime, datetime, list[Finding]]:
    """The span and findings of a stored entry; KeyError, TypeError or ValueError for anything
    ``_run_ahead_for_sign`` did not write (another build, another program sharing the Redis)."""
    if not isinstance(entry, dict):
        raise TypeError("not an object")
    start, end = (datetime.fromisoformat(entry[name]) for name in ("from", "until"))
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("a moment without its offset")
    return start, end, findings_from_json(entry["findings"])
