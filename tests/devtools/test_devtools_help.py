"""What `--help` tells a developer or an operator: an example to start from, and the defaults."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cds_service.cli import main


@pytest.mark.parametrize(
    ("command", "wanted"),
    [
        ("replay", ["Examples:", "cds-service replay fhir_fixtures/ --now 2026-01-15T09:00:00Z",
                    "--hook order-select --order hooks/order-select-cyanocobalamin.json",
                    "JSON Lines", "stderr", "Exit status"]),
        ("fire", ["Examples:", "--service http://127.0.0.1:8080 --fhir-server http://127.0.0.1:8090/fhir",
                  "--signing-key client.pem --iss", "FHIR_ACCESS_TOKEN", "stderr",
                  "docs/testing-with-sandboxes.md"]),
        ("load-fixtures", ["Examples:", "cds-service load-fixtures --fhir-server http://127.0.0.1:8090/fhir",
                           "--no-shift", "Exit status", "stderr", "YYYY-MM-DD"]),
        ("feedback-report", ["Examples:", "cds-service feedback-report --since 2026-03-01",
                             "--db postgresql://", "cds-feedback.sqlite3", "docs/feedback.md"]),
    ],
)  # fmt: skip
def test_help_gives_examples_and_defaults(command: str, wanted: list[str]) -> None:
    """The help said what each option is but showed no command line to start from, and feedback-report's
    --db did not say which file CDS_FEEDBACK_DB defaults to."""
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    missing = [w for w in wanted if " ".join(w.split()) not in text]
    assert not missing, result.output
