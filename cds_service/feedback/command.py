"""`cds-service feedback-report`: the acceptance report from the feedback store, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cds_service.config import load_settings, load_site_config, parse_rfc3339
from cds_service.feedback.report import format_text, offered_reasons
from cds_service.feedback.store import FeedbackStore
from cds_service.protocol.cards import (
    DEFAULT_OVERRIDE_REASONS,
    OVERRIDE_REASON_SYSTEM,
    parse_override_reasons,
)


@click.command("feedback-report")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--since",
    metavar="DATE",
    help="Count only cards issued and feedback given from this date or RFC 3339 date-time on.",
)
@click.option(
    "--db",
    metavar="PATH_OR_URL",
    help="The feedback store (a SQLite path or a postgresql:// URL); default: CDS_FEEDBACK_DB.",
)
def feedback_report(as_json: bool, since: str | None, db: str | None) -> None:
    """Per service and topic: cards issued, accepted, overridden, acceptance rate, top override reasons."""
    try:
        start = parse_rfc3339("--since", since) if since else None
        settings = load_settings()
        site = load_site_config(settings.site_config)
        offered = list(DEFAULT_OVERRIDE_REASONS)
        if "overrideReasons" in site:
            offered = [*parse_override_reasons(site["overrideReasons"]), *offered]
    except ValueError as error:  # ConfigError included
        raise click.UsageError(str(error)) from None
    url = db or settings.feedback_db
    if "://" not in url and not Path(url).is_file():
        raise click.ClickException(f"no feedback store at {url} (set CDS_FEEDBACK_DB or pass --db)")
    store = FeedbackStore.open(url)
    try:
        report = store.report(since=start, offered=offered_reasons(offered, OVERRIDE_REASON_SYSTEM))
    finally:
        store.close()
    click.echo(json.dumps(report, indent=2) if as_json else format_text(report), nl=as_json)
