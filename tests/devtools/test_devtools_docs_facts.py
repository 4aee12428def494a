"""Facts the operator documents quote from files other engineers change: they must still hold.

Each case reads the file the fact comes from and the document that quotes it, so a change to one without
the other fails here, naming the document to update.
"""

from __future__ import annotations

import re

from cds_service.config import KNOWN_VARIABLES, Settings
from tests.builders import REPO


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_operations_md_gives_the_command_in_the_header_of_image_constraints() -> None:
    header = (REPO / "image-constraints.txt").read_text(encoding="utf-8")
    command = re.search(r"^#\s+(pip-compile .+)$", header, re.M)
    assert command, "image-constraints.txt has no pip-compile command in its header"
    operations = _flat((REPO / "docs" / "operations.md").read_text(encoding="utf-8"))
    assert f"`{_flat(command.group(1))}`" in operations, (
        f"docs/operations.md (Upgrades) should quote the command that regenerates image-constraints.txt: "
        f"{command.group(1)}"
    )


def test_operations_md_gives_the_paths_the_image_sets() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for name in ("CDS_FEEDBACK_DB", "CDS_STATE_DB", "PROMETHEUS_MULTIPROC_DIR"):
        value = re.search(rf"\b{name}=(\S+)", dockerfile)
        assert value, f"the Dockerfile no longer sets {name}"
        assert f"the image sets `{value.group(1)}`" in operations, (
            f"docs/operations.md should say the image sets {name} to {value.group(1)}"
        )


def test_every_setting_is_in_the_configuration_tables_with_its_default() -> None:
    defaults = Settings()
    documents = {
        name: (REPO / name).read_text(encoding="utf-8") for name in ("README.md", "docs/operations.md")
    }
    for name, text in documents.items():
        rows = {m[1]: m[2] for m in re.finditer(r"^\| `(CDS_[A-Z_]+)` \|.*\| ([^|]+) \|$", text, re.M)}
        assert set(rows) == set(KNOWN_VARIABLES), (name, sorted(set(KNOWN_VARIABLES) ^ set(rows)))
        for variable, shown in [
            ("CDS_FHIR_BUDGET_MS", str(defaults.fhir_budget_ms)),
            ("CDS_FEEDBACK_DB", defaults.feedback_db),
            ("CDS_STATE_DB", defaults.state_db),
            ("CDS_RUN_AHEAD_SECONDS", str(defaults.run_ahead_seconds)),
            ("CDS_LOG_LEVEL", defaults.log_level),
            ("CDS_AUTH", defaults.auth),
        ]:
            assert shown in rows[variable], (
                f"{name}: {variable}'s default is {shown}, the table says {rows[variable]}"
            )
