"""``cds-service load-fixtures``: put fixture patients on a FHIR server so the service can fetch them.

Fixtures are written with dates relative to a reference day; a patient whose B12 result is "six weeks
old" must still be six weeks old when it is loaded months later, so every full date in every resource
moves by the same number of days (today minus the reference day). The reference day comes from
``--reference-day``, else from the Bundle's own ``timestamp``; ``--shift-days`` gives the number
directly.

Any Bundle becomes a transaction. Resources keep their ids (``PUT Type/id``) so hook requests written
for a fixture patient find it, loading twice replaces rather than duplicates, and ``urn:uuid:`` links
between entries are rewritten to ``Type/id`` here rather than left to each server's interpretation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import requests
from urllib3.exceptions import NewConnectionError

from cds_service.cli_types import HTTP_URL, PATH, bearer_token
from cds_service.devtools.bundles import (
    MAX_FILE_BYTES,
    FileTooLargeError,
    JsonFileError,
    JsonSyntaxError,
    parse_json,
    read_at_most,
    size_text,
)
from cds_service.fhir.bundles import resolve_full_urls, stored_as
from cds_service.fhir.dates import full_date, shift_dates
from cds_service.fhir.errors import exception_reason, http_error_reason, text_excerpt
from cds_service.redaction import without_passwords, without_tokens

DEFAULT_FIXTURES = Path("fhir_fixtures")
TIMEOUT_S = 120
MAX_SHIFT_DAYS = (date.max - date.min).days
"""A larger shift moves every date off the calendar (years 1 to 9999), whatever the Bundle holds."""
MAX_RESPONSE_BYTES = 256 * 1024 * 1024  # as for a Bundle file; a wrong URL may answer anything


class LoadError(click.ClickException):
    """A file or the server refused; the message names the file."""


class ServerUnreachable(LoadError):
    """No connection to the FHIR server at all: every Bundle after this one would fail the same way."""


def _no_connection(error: requests.RequestException) -> bool:
    """Whether no connection could be made at all (refused, no such host, no answer to the connect), as
    against one that broke during a Bundle's exchange, which the next Bundle may not meet."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    return isinstance(getattr(error.args[0] if error.args else None, "reason", None), NewConnectionError)


def days_since(reference_day: date, today: date) -> int:
    return (today - reference_day).days


def _reference_day_of(bundle: dict) -> date | None:
    stamp = bundle.get("timestamp")
    return full_date(stamp) if isinstance(stamp, str) else None


def to_transaction(bundle: dict, *, days: int = 0) -> dict:
    """A transaction Bundle that stores every resource of ``bundle`` under its own id, dates shifted.

    A resource without an id is POSTed and keeps its ``fullUrl`` so the server links references to it.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError("not a FHIR Bundle")
    if not isinstance(bundle.get("entry", []), list):
        raise ValueError("Bundle.entry is not a list")
    entries = [
        e for e in bundle.get("entry", []) if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    resources = [shift_dates(entry["resource"], days) for entry in entries]
    resolve_full_urls(
        (entry.get("fullUrl"), resource) for entry, resource in zip(entries, resources, strict=True)
    )
    out_entries = []
    for entry, resource in zip(entries, resources, strict=True):
        target = stored_as(resource)
        if target:
            out_entries.append(
                {"fullUrl": target, "resource": resource, "request": {"method": "PUT", "url": target}}
            )
        else:
            out = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
            if isinstance(entry.get("fullUrl"), str):
                out["fullUrl"] = entry["fullUrl"]
            out_entries.append(out)
    return {"resourceType": "Bundle", "type": "transaction", "entry": out_entries}


@dataclass(frozen=True)
class Loaded:
    path: Path
    resources: int
    days: int


def _read(path: Path) -> bytes:
    """The file's bytes, read no further than MAX_FILE_BYTES (/dev/zero, a multi-GB export)."""
    try:
        return read_at_most(path, MAX_FILE_BYTES)
    except FileTooLargeError as error:
        raise LoadError(f"{path}: larger than {size_text(error.limit)}; not read") from None


def _read_json(path: Path) -> Any:
    """The file's JSON, read as replay reads it (a byte order mark skipped, another encoding or JSON
    nested too deep for the date shift's recursion refused by name); LoadError naming the file."""
    try:
        return parse_json(_read(path))
    except OSError as error:
        raise LoadError(f"{path}: cannot read it ({error.strerror or error})") from None
    except JsonSyntaxError as error:
        raise LoadError(f"{path}: not readable JSON ({error})") from None
    except JsonFileError as error:
        raise LoadError(f"{path}: {error}") from None


def _is_bundle_file(path: Path) -> bool:
    """True for a JSON file holding a Bundle; a folder may also hold expectations or notes as JSON."""
    try:
        data = _read_json(path)
    except LoadError:
        return True  # let the load report what is wrong with it
    return isinstance(data, dict) and data.get("resourceType") == "Bundle"


def bundle_files(paths: tuple[Path, ...]) -> tuple[list[Path], list[Path]]:
    """The files to load and the JSON files of a folder that are not Bundles (skipped).

    Files named on the command line are always loaded (and refused if they are not Bundles); a folder,
    ``fhir_fixtures/`` by default, contributes its ``*.json`` Bundles.
    """
    if not paths:
        if not DEFAULT_FIXTURES.is_dir():
            raise LoadError(f"no Bundle files given and no {DEFAULT_FIXTURES}/ directory here")
        paths = (DEFAULT_FIXTURES,)
    files: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if path.is_dir():
            # Regular files only, as replay reads a folder: a subfolder named *.json is not a Bundle, and
            # reading a FIFO would wait for a writer that never comes.
            for candidate in sorted(c for c in path.glob("*.json") if c.is_file()):
                (files if _is_bundle_file(candidate) else skipped).append(candidate)
        elif path.exists():  # a file, or a device or pipe named on purpose (/dev/stdin); read bounded
            files.append(path)
        else:
            raise LoadError(f"{path}: no such file or directory")
    if not files:
        raise LoadError(f"no Bundle files in {', '.join(str(p) for p in paths)}")
    return files, skipped


class FixtureLoader:
    """Posts transaction Bundles to one FHIR server, with an optional bearer token."""

    def __init__(self, fhir_server: str, token: str | None = None) -> None:
        self.base_url = fhir_server.rstrip("/")
        self.token = token
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers.update(
            {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
        )
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def load(self, path: Path, *, days: int | None, reference_day: date | None, today: date) -> Loaded:
        """Load one Bundle file; ``days`` wins over ``reference_day``, then the Bundle timestamp."""
        bundle = _read_json(path)
        if days is None:
            day = reference_day or (_reference_day_of(bundle) if isinstance(bundle, dict) else None)
            days = days_since(day, today) if day else 0
        try:
            transaction = to_transaction(bundle, days=days)
        except ValueError as error:
            raise LoadError(f"{path}: {error}") from None
        try:
            status, content_type, body = self._post(orjson.dumps(transaction))
        except requests.RequestException as error:
            failed = ServerUnreachable if _no_connection(error) else LoadError
            raise failed(f"{path}: {exception_reason(error, self.base_url)}") from None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if status != 200:
            reason = http_error_reason(status, self.base_url, parsed, body)
            raise LoadError(f"{path}: {without_tokens(reason, self.token)}")
        if not (
            isinstance(parsed, dict)
            and parsed.get("resourceType") == "Bundle"
            and parsed.get("type") == "transaction-response"
        ):
            what = without_tokens(_what_came_back(content_type, parsed, body), self.token)
            raise LoadError(
                f"{path}: {self.base_url} answered 200 with {what}, not a FHIR transaction-response "
                "Bundle: is --fhir-server the FHIR base URL?"
            )
        return Loaded(path, len(transaction["entry"]), days)

    def _post(self, data: bytes) -> tuple[int, str, bytes]:
        """POST to the base URL: the status, the Content-Type and the body, read no further than
        MAX_RESPONSE_BYTES (past it, the body is cut there: a transaction's answer is far smaller)."""
        with self.session.post(self.base_url, data=data, timeout=TIMEOUT_S, stream=True) as response:
            chunks: list[bytes] = []
            size = 0
            # iter_content, not raw.read: a connection dropped mid-body stays a requests exception.
            for chunk in response.iter_content(64 * 1024):
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_RESPONSE_BYTES:
                    break
            body = b"".join(chunks)[:MAX_RESPONSE_BYTES]
            return response.status_code, response.headers.get("Content-Type", ""), body


def _what_came_back(content_type: str, parsed: object, body: bytes) -> str:
    """What a server answered instead of a transaction-response, in a few words."""
    if isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str):
        kind = parsed["resourceType"]
        if kind == "Bundle":
            return f"a Bundle of type {parsed.get('type')!r}"
        return f"a {kind}"
    if parsed is not None:
        return "JSON that is not a FHIR resource"
    if not body.strip():
        return "an empty body"
    kind = content_type.split(";")[0].strip() or "no Content-Type"
    return f"{kind} ({text_excerpt(body)[:80]})"


@click.command("load-fixtures")
@click.option(
    "--fhir-server",
    type=HTTP_URL,
    required=True,
    help="FHIR base URL to load into, e.g. http://127.0.0.1:8090/fhir",
)
@click.option(
    "--token",
    envvar="FHIR_ACCESS_TOKEN",
    callback=bearer_token,
    help="bearer token for the server (or $FHIR_ACCESS_TOKEN)",
)
@click.option(
    "--reference-day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="YYYY-MM-DD",
    help="the day the fixture dates were written for (default: each Bundle's timestamp)",
)
@click.option(
    "--shift-days",
    type=click.IntRange(-MAX_SHIFT_DAYS, MAX_SHIFT_DAYS),
    metavar="N",
    help="move every date by exactly this many days instead",
)
@click.option("--no-shift", is_flag=True, help="load the dates as written")
@click.argument("bundles", nargs=-1, type=PATH)
def load_fixtures(
    fhir_server: str,
    token: str | None,
    reference_day: datetime | None,
    shift_days: int | None,
    no_shift: bool,
    bundles: tuple[Path, ...],
) -> None:
    """Post fixture Bundles (files or folders; default: fhir_fixtures/) to a FHIR server as transactions.

    Every resource keeps its id (PUT Type/id), so loading again replaces it. Dates move by the days from
    the Bundle's reference day (its timestamp, or --reference-day) to today, so that a result written as
    six weeks old is six weeks old once loaded; --shift-days moves them by exactly N days, --no-shift not
    at all. A folder's JSON files that are not Bundles are skipped.

    \b
    Examples:
      cds-service load-fixtures --fhir-server http://127.0.0.1:8090/fhir
      cds-service load-fixtures --fhir-server http://127.0.0.1:8090/fhir \\
          tests/data/smart-sandbox-r4/Abdul_Koepp_*.json --no-shift

    One line per Bundle on stderr, then the count loaded. Exit status: 0 when every Bundle loaded, 1 when
    one could not, 2 for a usage error.
    """
    if (
        sum(option is not None and option is not False for option in (reference_day, shift_days, no_shift))
        > 1
    ):
        raise click.UsageError("give at most one of --reference-day, --shift-days and --no-shift")
    files, skipped = bundle_files(bundles)
    for path in skipped:
        click.echo(f"skipped {path} (not a Bundle)", err=True)
    days = 0 if no_shift else shift_days
    day = reference_day.date() if reference_day else None
    today = datetime.now(UTC).date()
    loader = FixtureLoader(fhir_server, token)
    failures = 0
    try:
        for number, path in enumerate(files, 1):
            progress = f"[{number}/{len(files)}]"
            try:
                loaded = loader.load(path, days=days, reference_day=day, today=today)
            except LoadError as error:
                failures += 1
                # The message may quote the URL: a user:password@ in --fhir-server stays out.
                click.echo(f"{progress} FAILED {without_passwords(error.message, fhir_server)}", err=True)
                if isinstance(error, ServerUnreachable) and number < len(files):
                    failures += len(files) - number
                    click.echo(f"stopped: the other {len(files) - number} Bundles were not tried", err=True)
                    break
                continue
            except OverflowError:
                failures += 1
                click.echo(
                    f"{progress} FAILED {path}: moving its dates takes one outside the years 1 to 9999; "
                    "check --shift-days, --reference-day or the Bundle's timestamp",
                    err=True,
                )
                continue
            click.echo(
                f"{progress} {path.name}: {loaded.resources} resources, dates moved {loaded.days:+d} days",
                err=True,
            )
    finally:
        loader.close()
    if failures:
        raise LoadError(f"{failures} of {len(files)} Bundles were not loaded")
    shown = without_passwords(loader.base_url, fhir_server)
    click.echo(f"loaded {len(files)} Bundles into {shown}", err=True)
