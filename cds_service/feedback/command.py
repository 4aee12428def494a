"""`cds-service feedback-report`: the acceptance report from the feedback store, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cds_service.config import ConfigError, load_settings, parse_rfc3339
from cds_service.feedback.report import format_text
from cds_service.feedback.store import FeedbackStore


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
        url = db or load_settings().feedback_db
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    if "://" not in url and not Path(url).is_file():
        raise click.ClickException(f"no feedback store at {url} (set CDS_FEEDBACK_DB or pass --db)")
    store = FeedbackStore.open(url)
    try:
        report = store.report(since=start)
    finally:
        store.close()
    click.echo(json.dumps(report, indent=2) if as_json else format_text(report), nl=as_json)
