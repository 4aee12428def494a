"""`cds-service load-fixtures` given files a person may really have: another encoding, a byte order mark,
JSON nested too deep, a folder holding more than regular files. It reads them as `replay` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cds_service.cli import main
from tests.support.fhir_server import SekmetServer

COMMAND = str(Path(sys.executable).with_name("cds-service"))
DOWN = "http://127.0.0.1:9/fhir"  # nothing listens: a file refused before any request says so first


def _bundle(patient_id: str = "enc-p", family: str = "Muller") -> dict:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient", "id": patient_id, "name": [{"family": family}]}}],
    }


def _load(*args: str, server: str = DOWN) -> Result:
    return CliRunner().invoke(main, ["load-fixtures", "--fhir-server", server, "--no-shift", *args])


def _one_failure(result: Result) -> str:
    """The FAILED line of a load of one file, after checking it ended as a failure should."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "1 of 1 Bundles were not loaded" in result.stderr
    return next(line for line in result.stderr.splitlines() if line.startswith("[1/1] FAILED"))


def test_json_nested_too_deep_is_refused_by_name(tmp_path: Path) -> None:
    """Moving the dates recursed once per level: 900 levels (orjson reads 1024) ended in a RecursionError
    traceback before anything was posted."""
    bundle = _bundle()
    bundle["entry"][0]["resource"]["extension"] = json.loads("[" * 900 + "]" * 900)
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(bundle))
    failed = _one_failure(_load(str(path)))
    assert (
        failed
        == f"[1/1] FAILED {path}: JSON nested more than 200 levels deep; FHIR resources need fewer than 20"
    )


@pytest.mark.parametrize(
    ("encode", "named"),
    [
        (lambda text: text.encode("utf-16"), "UTF-16 text; FHIR JSON is UTF-8 (save the file as UTF-8)"),
        (lambda text: text.encode("utf-16-le"), "UTF-16 or UTF-32 text; FHIR JSON is UTF-8"),
        (lambda text: text.encode("latin-1"), "not UTF-8 text (byte 137 is not UTF-8); FHIR JSON is UTF-8"),
    ],
    ids=["utf-16", "utf-16-le-unmarked", "latin-1"],
)
def test_text_in_another_encoding_is_named(
    tmp_path: Path, encode: Callable[[str], bytes], named: str
) -> None:
    """orjson's message for all three was 'str is not valid UTF-8: surrogates not allowed', at column 1."""
    text = json.dumps(_bundle(family="M\u00fcller"), ensure_ascii=False)
    assert text.index("\u00fc") == 137  # a Latin-1 byte stands where the \u00fc is
    path = tmp_path / "other.json"
    path.write_bytes(encode(text))
    failed = _one_failure(_load(str(path)))
    assert failed.startswith(f"[1/1] FAILED {path}: {named}"), failed
    assert "surrogates" not in failed


@pytest.mark.integration
def test_a_bundle_after_a_utf8_byte_order_mark_loads(fhir_server: SekmetServer, tmp_path: Path) -> None:
    """A Windows editor's byte order mark: replay read such a file, load-fixtures refused it."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_bundle("bom-p")).encode())
    result = _load(str(path), server=fhir_server.base_url)
    assert result.exit_code == 0, result.output
    assert f"loaded 1 Bundles into {fhir_server.base_url}" in result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_folder_is_read_for_its_regular_files_only(tmp_path: Path) -> None:
    """A subfolder named *.json counted as a Bundle that failed, and a named pipe named *.json was read,
    waiting for a writer for ever. replay has always passed over both."""
    (tmp_path / "patient.json").write_text(json.dumps(_bundle()))
    (tmp_path / "drafts.json").mkdir()
    os.mkfifo(tmp_path / "pipe.json")
    done = subprocess.run(
        [COMMAND, "load-fixtures", "--fhir-server", DOWN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr
    assert (
        done.stderr.splitlines()[0]
        == f"[1/1] FAILED {tmp_path / 'patient.json'}: connection refused by {DOWN}"
    )
    assert "drafts.json" not in done.stderr
    assert "pipe.json" not in done.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/fhir?_format=json", "http://127.0.0.1:9/fhir#top"])
def test_a_base_url_with_a_query_or_fragment_is_a_usage_error(tmp_path: Path, url: str) -> None:
    """Loaded as given, the Bundles went to whatever the query or fragment made of the URL."""
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(_bundle()))
    result = _load(str(path), server=url)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--fhir-server': {url!r} has a query or a fragment" in result.stderr
    assert "FAILED" not in result.stderr
