"""The `cds-service` command. Each subcommand lives in the module that owns its work."""

from __future__ import annotations

import click

from cds_service import __version__
from cds_service.devtools.fire import fire
from cds_service.devtools.replay import replay
from cds_service.feedback.command import feedback_report
from cds_service.loader import load_fixtures
from cds_service.serving import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cds-service")
def main() -> None:
    """B12–iron CDS Hooks 2.0 service: serve it, replay fixtures, load test data, report feedback."""


main.add_command(feedback_report)
main.add_command(load_fixtures)
main.add_command(replay)
main.add_command(fire)
main.add_command(serve)
