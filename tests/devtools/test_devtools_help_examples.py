"""The command lines the help of `replay`, `fire` and `load-fixtures` shows, and the `replay` lines of
README.md and docs/testing-with-sandboxes.md, run as written.

A developer copies them first: an example with a placeholder (`--patient ID`) or a file that does not
exist fails before it has shown anything. Each example is taken from the text itself, run from the
repository root as the text assumes; the loopback addresses the help names are swapped for the test's
own servers, and fire's key file for one registered with the served instance.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.cli import main
from cds_service.config import Settings
from tests.builders import REPO
from tests.devtools.served import serving_service
from tests.support.fhir_server import SekmetServer

HELP_SERVICE = "http://127.0.0.1:8080"
HELP_FHIR_SERVER = "http://127.0.0.1:8090/fhir"


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("FHIR_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("CDS_FEEDBACK_DB", str(tmp_path / "feedback.sqlite3"))
    monkeypatch.setenv("CDS_STATE_DB", str(tmp_path / "state.sqlite3"))
    monkeypatch.chdir(REPO)


def help_examples(command: str) -> list[list[str]]:
    """The `cds-service COMMAND ...` lines of the command's help, continuation lines joined, as argv."""
    text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
    joined = text.replace("\\\n", " ")
    examples = [
        shlex.split(line.strip())[1:]
        for line in joined.splitlines()
        if line.strip().startswith(f"cds-service {command} ")
    ]
    assert examples, text
    return examples


def run(argv: list[str]) -> Result:
    return CliRunner().invoke(main, argv)


def as_the_shell_runs_it(argv: list[str]) -> list[str]:
    """``argv`` with its globs expanded, and without a redirection of stdout (the runner captures it)."""
    if ">" in argv:
        argv = argv[: argv.index(">")]
    return [match for arg in argv for match in (sorted(glob.glob(arg)) or [arg])]


def test_every_replay_example_runs_as_written() -> None:
    for argv in help_examples("replay"):
        result = run(as_the_shell_runs_it(argv))
        assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output}"
        assert result.stdout.strip(), shlex.join(argv)


def _registered_key(tmp_path: Path, iss: str, kid: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "client.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="ES384", use="sig")
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"clients": [{"iss": iss, "jwks": {"keys": [jwk]}}]}))
    return pem, clients


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_every_fire_example_runs_as_written(fhir_server: SekmetServer, tmp_path: Path) -> None:
    examples = help_examples("fire")
    loaded = run(["load-fixtures", "--fhir-server", fhir_server.base_url])
    assert loaded.exit_code == 0, loaded.output

    signed = [argv for argv in examples if "--signing-key" in argv]
    iss, kid = (_option(signed[0], "--iss"), _option(signed[0], "--kid")) if signed else ("x", "x")
    pem, clients = _registered_key(tmp_path, iss or "x", kid or "x")

    def settings(base_url: str, **changes: object) -> Settings:
        stores = {"feedback_db": str(tmp_path / "f.sqlite3"), "state_db": str(tmp_path / "s.sqlite3")}
        return Settings(auth="off", public_base_url=base_url, **stores).with_overrides(**changes)

    with (
        serving_service(settings) as open_service,
        serving_service(lambda url: settings(url, auth="required", clients_file=clients)) as signed_service,
    ):
        for argv in examples:
            assert HELP_SERVICE in argv and HELP_FHIR_SERVER in argv, shlex.join(argv)
            service = signed_service if "--signing-key" in argv else open_service
            swapped = [
                {HELP_SERVICE: service, HELP_FHIR_SERVER: fhir_server.base_url, "client.pem": str(pem)}.get(
                    arg, arg
                )
                for arg in argv
            ]
            result = run(swapped)
            assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output}"
            assert "[WARNING]" in result.stdout or "[INFO]" in result.stdout, (
                f"{shlex.join(argv)} showed no card:\n{result.stdout}"
            )


def doc_examples(document: str, command: str) -> list[list[str]]:
    """The `cds-service COMMAND ...` lines of a document's ```sh blocks, continuations joined, comments
    dropped, as argv."""
    text = (REPO / document).read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [
        shlex.split(line, comments=True)[1:]
        for line in lines
        if line.strip().startswith(f"cds-service {command} ")
    ]


@pytest.mark.parametrize("document", ["README.md", "docs/testing-with-sandboxes.md"])
def test_every_replay_example_of_the_docs_runs_as_written(document: str) -> None:
    """The help's examples were run, the documents' own were not: the README's order-select line names
    a draft-order file of its own."""
    examples = doc_examples(document, "replay")
    assert examples, f"{document} shows no replay command line"
    for argv in examples:
        result = run(as_the_shell_runs_it(argv))
        assert result.exit_code == 0, f"{document}: {shlex.join(argv)}\n{result.output}"
        assert result.stdout.strip(), shlex.join(argv)


def test_every_load_fixtures_example_runs_as_written(fhir_server: SekmetServer) -> None:
    for argv in help_examples("load-fixtures"):
        assert HELP_FHIR_SERVER in argv, shlex.join(argv)
        expanded = as_the_shell_runs_it(argv)
        result = run([fhir_server.base_url if arg == HELP_FHIR_SERVER else arg for arg in expanded])
        assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output}"
        assert "Bundles into" in result.stderr.splitlines()[-1], result.stderr
