"""The `cds-service` command as a shell runs it: a closed output pipe, Ctrl-C, and how fast it starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cds_service.cli import main
from tests.builders import FIXED_NOW, SMART_PATIENTS
from tests.live import serving

NOW = FIXED_NOW.isoformat().replace("+00:00", "Z")
COMMAND = str(Path(sys.executable).with_name("cds-service"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["CDS_FEEDBACK_DB"] = str(tmp_path / "feedback.sqlite3")
    env["CDS_STATE_DB"] = str(tmp_path / "state.sqlite3")
    return env


def test_output_to_a_closed_pipe_ends_with_one_line_saying_so(tmp_path: Path) -> None:
    """`cds-service replay folder/ | head -1`: click left with status 1 and said nothing, so a replay cut
    short looked like one that had failed on a Bundle, without a word."""
    process = subprocess.Popen(
        [COMMAND, "replay", str(SMART_PATIENTS), "--json", "--now", NOW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
    )
    assert process.stdout is not None
    process.stdout.close()  # the reader has gone, as after `| head -1`
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    lines = [line for line in err.decode().splitlines() if not line.startswith("[")]
    assert "Traceback" not in err.decode()
    assert lines == ["Error: the output was closed before the command finished (broken pipe)"]


def test_ctrl_c_ends_with_one_line_and_status_130(tmp_path: Path) -> None:
    """Ctrl-C printed click's bare 'Aborted!' with status 1, the status of a failed replay."""
    process = subprocess.Popen(
        [COMMAND, "replay", *[str(SMART_PATIENTS)] * 10, "--now", NOW],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the first progress line: the replay is under way
    assert first.startswith(b"[1/320]"), first
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read().decode()
    process.wait(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in rest
    assert [line for line in rest.splitlines() if not line.startswith("[")] == ["Error: interrupted (Ctrl-C)"]


def test_the_command_module_imports_no_subcommand(tmp_path: Path) -> None:
    """Importing cds_service.cli pulled in every subcommand (requests, jwt, gunicorn, the schemas): a
    Ctrl-C in those 0.2 s, before click had started, printed a traceback; --version paid for it too."""
    code = (
        "import sys, cds_service.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('cds_service.', 'requests', 'gunicorn'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "['cds_service.cli']"


def test_every_command_is_registered_by_name() -> None:
    """`main.commands` must still name them all (tests/feedback/test_served.py skips itself on it), and
    each resolves to its command object."""
    from cds_service.cli import main

    assert sorted(main.commands) == ["feedback-report", "fire", "load-fixtures", "replay", "serve"]
    assert "serve" in main.commands
    assert all(main.commands[name].name == name for name in main.commands)


def _a_fixture_bundle_in(folder: Path) -> None:
    bundle = sorted(SMART_PATIENTS.glob("*.json"))[0]
    (folder / bundle.name).write_bytes(bundle.read_bytes())


@pytest.mark.parametrize(
    "args",
    [
        ["replay", ""],
        ["replay", "", "--now", NOW],
        ["replay", "x.json", "--hook", "order-select", "--order", ""],
        ["fire", "--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir",
         "--patient", "p", "--signing-key", "", "--iss", "https://ehr.test"],
        ["fire", "--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir",
         "--patient", "p", "--hook", "order-sign", "--order", ""],
    ],
    ids=["replay", "replay-now", "replay-order", "fire-signing-key", "fire-order"],
)  # fmt: skip
def test_an_empty_path_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """click read "" as ".": `cds-service replay "$BUNDLE"` with the variable unset replayed every Bundle
    of the current directory and exited 0; an empty --order or --signing-key said '.: is a directory'."""
    _a_fixture_bundle_in(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env=_env(tmp_path)).invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "an empty path (an unset variable?)" in result.stderr
    assert "Traceback" not in result.output


def test_load_fixtures_of_an_empty_path_posts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`load-fixtures --fhir-server URL "$DIR"` with the variable unset posted every Bundle of the current
    directory to the FHIR server."""
    posted: list[str] = []

    def fhir(environ: dict, start_response: Callable) -> list[bytes]:
        posted.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/fhir+json")])
        return [b'{"resourceType": "Bundle", "type": "transaction-response"}']

    _a_fixture_bundle_in(tmp_path)
    monkeypatch.chdir(tmp_path)
    with serving(fhir) as base:
        result = CliRunner(env=_env(tmp_path)).invoke(main, ["load-fixtures", "--fhir-server", base, ""])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '[BUNDLES]...': an empty path (an unset variable?)" in result.stderr
    assert posted == []


def test_a_replay_started_with_stderr_closed_still_prints_every_patient(tmp_path: Path) -> None:
    """With `2>&-`, Python has no sys.stderr: asking it whether it was a terminal raised AttributeError
    at the first progress line, so the replay printed nothing and exited 1 with no word anywhere."""
    done = subprocess.run(
        ["bash", "-c", 'exec "$0" replay "$1" --now "$2" 2>&-', COMMAND, str(SMART_PATIENTS), NOW],
        stdout=subprocess.PIPE,
        env=_env(tmp_path),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0
    lines = done.stdout.decode().splitlines()
    assert len(lines) == len(list(SMART_PATIENTS.glob("*.json")))
    assert all("(Patient/" in line for line in lines)
