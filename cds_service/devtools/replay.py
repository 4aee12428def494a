"""``cds-service replay``: run a hook offline over FHIR Bundles and show the cards.

The real HookHandler answers, exactly as it does behind HTTP; only the EHR is simulated: the prefetch
is what the service's own templates return when evaluated over the Bundle's resources (``offline.py``),
so a replay exercises the same code paths as a call whose prefetch was complete. Nothing is fetched.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from cds_service.cli_types import PATH, ConfigurationError, config_message
from cds_service.config import ConfigError, Settings, load_settings, parse_rfc3339
from cds_service.devtools.bundles import (
    BundleError,
    NotABundleError,
    PatientBundle,
    iter_bundle_files,
    load_draft_orders,
    load_patient_bundle,
    read_json,
)
from cds_service.devtools.hookrequest import HOOKS, ORDER_HOOKS, hook_context, hook_request, service_for_hook
from cds_service.devtools.offline import OfflineFhirServer, OfflineQueryError
from cds_service.devtools.render import card_topic, render_response, summary_line
from cds_service.protocol.prefetch import TemplateError, render_template
from cds_service.protocol.request import RequestError

if TYPE_CHECKING:
    from cds_service.services import HookHandler


CLOCK_YEARS = (1900, 2999)


class ReplayError(Exception):
    """One Bundle could not be replayed; the message is one line."""


@dataclass(frozen=True)
class ReplayResult:
    bundle: PatientBundle
    request: dict[str, Any]
    response: dict[str, Any]
    now: datetime | None


def offline_prefetch(
    handler: HookHandler, service_id: str, context: dict[str, Any], server: OfflineFhirServer
) -> dict:
    """What a complete EHR prefetch would hold: each template rendered, then answered offline."""
    templates = handler.services[service_id].prefetch
    queries = {key: render_template(template, context) for key, template in templates.items()}
    return server.prefetch(queries)


class Replayer:
    """Replays Bundles through the real handler, one handler per clinical clock.

    The clock is ``--now`` (or CDS_NOW) when given, else each Bundle's own ``timestamp`` (the day a
    fixture's relative dates were written for), else the real clock.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._handlers: dict[datetime | None, HookHandler] = {}
        self.handler(settings.now)

    def handler(self, now: datetime | None) -> HookHandler:
        if now not in self._handlers:
            # Imported here, not at the top, so that ``cds-service --help`` does not load the engine.
            from cds_service.services import build_handler

            self._handlers[now] = build_handler(self.settings.with_overrides(now=now))
        return self._handlers[now]

    def replay(
        self, path: Path, hook: str | None, order_file: Path | None, orders: Any = None
    ) -> ReplayResult:
        """Replay one Bundle; every expected failure becomes a one-line ReplayError or BundleError.

        A hook request file brings its own hook and draft orders; ``hook`` and ``order_file`` win.
        ``orders`` is the order file's parsed JSON, read once for the whole run.
        """
        record = load_patient_bundle(path)
        now = self.settings.now or record.timestamp
        handler = self.handler(now)
        hook = hook or record.hook or "patient-view"
        drafts = (
            load_draft_orders(order_file, record.patient_id, orders) if order_file else record.draft_orders
        )
        if hook in ORDER_HOOKS and drafts is None:
            raise ReplayError(f"{path}: the {hook} hook needs draft orders: give --order FILE")
        try:
            service_id = service_for_hook(handler.services, hook)
        except LookupError:
            raise ReplayError(
                f"{path}: the hook {hook!r} is not one this service answers ({', '.join(HOOKS)})"
            ) from None
        context = hook_context(hook, record.patient_id, drafts)
        server = OfflineFhirServer(record.resources)
        try:
            prefetch = offline_prefetch(handler, service_id, context, server)
        except (OfflineQueryError, TemplateError) as error:
            raise ReplayError(f"{path}: cannot evaluate the prefetch offline: {error}") from None
        request = hook_request(hook, context, prefetch)
        try:
            response = handler.handle(service_id, request)
        except RequestError as error:
            raise ReplayError(f"{path}: the service answered {error.status}: {error.reason}") from None
        except Exception as error:
            # Served, this call would be a 500; one Bundle the engine cannot digest must not end a
            # replay of hundreds, and the developer needs the exception's name, not a stack of frames.
            first_line = (str(error).splitlines() or [""])[0][:200]
            raise ReplayError(
                f"{path}: internal error in the service ({type(error).__name__}: {first_line}); "
                "the Bundle exposes a bug, please report it"
            ) from None
        return ReplayResult(bundle=record, request=request, response=response, now=now)


def _settings(now: str | None) -> Settings:
    """The settings a replay runs under; a malformed --now is a usage error (exit 2), as --since is."""
    try:
        clock: datetime | None = parse_rfc3339("--now", now) if now is not None else None
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    if clock is not None and not CLOCK_YEARS[0] <= clock.year <= CLOCK_YEARS[1]:
        # The rules reach years around "now" (a course's start, a result's age): near the ends of the
        # calendar those dates do not exist, and the failure looked like a bug the Bundle exposed.
        raise click.UsageError(
            f"--now={now!r}: give a clinical 'now' between {CLOCK_YEARS[0]} and {CLOCK_YEARS[1]}"
        )
    try:
        settings = load_settings()
    except ConfigError as error:
        raise ConfigurationError(error) from None
    return settings.with_overrides(now=clock or settings.now, auth="off")


def _collect(paths: Sequence[Path]) -> list[tuple[Path, bool]]:
    files = list(iter_bundle_files(list(paths)))
    if not files:
        raise click.ClickException("no JSON files found in " + ", ".join(str(p) for p in paths))
    return files


def _stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()  # None when started with stderr closed (2>&-)


_CLEAR_LINE = "\r\x1b[K"


def _progress(index: int, total: int, path: Path) -> None:
    """One step per Bundle on stderr: rewritten in place on a terminal, one line each otherwise."""
    if _stderr_is_terminal():
        click.echo(f"{_CLEAR_LINE}[{index}/{total}] {path.name[:60]}", err=True, nl=False)
    else:
        click.echo(f"[{index}/{total}] {path}", err=True)


def _clear_progress(several: bool) -> None:
    """On a terminal, take the progress line away before a result or an error is printed in its place."""
    if several and _stderr_is_terminal():
        click.echo(_CLEAR_LINE, err=True, nl=False)


@click.command("replay")
@click.argument("bundles", nargs=-1, required=True, type=PATH)
@click.option(
    "--hook",
    type=click.Choice(HOOKS),
    help="Which hook to simulate. Default: patient-view, or the hook of a hooks/ request file.",
)
@click.option(
    "--order",
    "order_file",
    type=PATH,
    help="Draft orders: a resource, a Bundle, or a hooks/ request file (its context.draftOrders).",
)
@click.option(
    "--now",
    help="Clinical 'now' (RFC 3339), e.g. 2026-01-31T09:00:00Z. "
    "Default: CDS_NOW, else the Bundle's timestamp, else the clock.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the service response as JSON (JSON Lines for a folder or several files).",
)
def replay(
    bundles: tuple[Path, ...], hook: str | None, order_file: Path | None, now: str | None, as_json: bool
) -> None:
    """Run a hook offline over FHIR R4 Bundles (files or folders) and print the cards.

    Each Bundle (transaction, batch, collection, searchset, document or message) must hold one Patient;
    a hooks/ request file works too (its prefetch is the record). The prefetch sent to the service is
    what its templates return over that record; draft orders are re-pointed at the patient.

    \b
    Examples:
      cds-service replay fhir_fixtures/ --now 2026-01-15T09:00:00Z
      cds-service replay hooks/patient-view.json --now 2026-01-15T09:00:00Z
      cds-service replay tests/data/smart-sandbox-r4/Abdul_Koepp_*.json \\
          --hook order-select --order hooks/order-select-cyanocobalamin.json
      cds-service replay tests/data/smart-sandbox-r4/ --json > responses.jsonl

    One Bundle prints its cards; several print one line per patient, with progress and a tally on
    stderr; --json prints the response of one Bundle file, or JSON Lines of {"file", "patientId",
    "response"} for a folder or several files.
    Exit status: 0 when every Bundle replayed, 1 when one could not, 2 for a usage or
    configuration error.
    """
    if order_file is not None and hook not in ORDER_HOOKS:
        raise click.UsageError(
            f"--order is for the order-select and order-sign hooks; give --hook order-select or order-sign "
            f"(without it the replay would be {hook or 'patient-view'} and the orders unused)"
        )
    try:
        replayer = Replayer(_settings(now))
        orders = None
        if order_file is not None:  # read once: a pipe (--order <(...)) has nothing left a second time
            orders = read_json(order_file)
            load_draft_orders(order_file, "order-file-check", orders)
    except ConfigError as error:  # CDS_SITE_CONFIG, read when the first handler is built
        raise ConfigurationError(error) from None
    except BundleError as error:
        raise click.ClickException(str(error)) from None
    files = _collect(bundles)
    several = len(files) > 1
    # What --json prints depends on the command line, not on how many files a folder holds today: a
    # script reading `replay exports/ --json` as JSON Lines got a bare response when one was left.
    json_lines = several or any(not explicit for _, explicit in files)
    failures = passed_over = 0
    topics: Counter[str] = Counter()
    for index, (path, explicit) in enumerate(files, start=1):
        if several:
            _progress(index, len(files), path)
        try:
            result = replayer.replay(path, hook, order_file, orders)
        except NotABundleError as error:
            if not explicit:
                passed_over += 1
                continue
            failures += 1
            _clear_progress(several)
            _failed(str(error), several)
            continue
        except (BundleError, ReplayError, ConfigError) as error:
            failures += 1
            _clear_progress(several)
            _failed(config_message(error), several)
            continue
        topics.update(card_topic(card) for card in result.response["cards"])
        _clear_progress(several)
        _print(result, several, as_json, json_lines)
    _clear_progress(several)
    attempted = len(files) - passed_over
    if several:
        tally = ", ".join(f"{topic} ×{count}" for topic, count in topics.most_common()) or "no cards"
        others = f" ({passed_over} other JSON file(s) passed over)" if passed_over else ""
        click.echo(f"replayed {attempted - failures} of {attempted} Bundle(s){others}: {tally}", err=True)
    if attempted == 0:
        raise click.ClickException("no Bundle or hook request files in " + ", ".join(map(str, bundles)))
    if failures:
        sys.exit(1)


def _failed(message: str, several: bool) -> None:
    """One Bundle that could not be replayed: a line among the others of a run ('error: ...'), or, when it
    was the only one, the command's failure, worded as click words every other ('Error: ...')."""
    click.echo(f"{'error' if several else 'Error'}: {message}", err=True)


def _print(result: ReplayResult, several: bool, as_json: bool, json_lines: bool) -> None:
    name = f"{result.bundle.display_name} (Patient/{result.bundle.patient_id})"
    if as_json and json_lines:
        line = {
            # A name that is not UTF-8 holds surrogates, which JSON cannot carry: its odd bytes as \xNN.
            "file": os.fsencode(result.bundle.path).decode("utf-8", "backslashreplace"),
            "patientId": result.bundle.patient_id,
            "response": result.response,
        }
        click.echo(orjson.dumps(line).decode())
    elif as_json:
        click.echo(orjson.dumps(result.response, option=orjson.OPT_INDENT_2).decode())
    elif several:
        click.echo(summary_line(name, result.response))
    else:
        when = f" — as of {result.now.isoformat()}" if result.now else ""
        click.echo(render_response(result.response, heading=f"{name} — {result.request['hook']}{when}"))
