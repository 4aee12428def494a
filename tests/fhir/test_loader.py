"""`cds-service load-fixtures`: Bundles become transactions on a real FHIR server, dates moved to today."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from cds_service import loader
from cds_service.cli import main
from cds_service.loader import to_transaction
from tests.builders import SMART_PATIENTS
from tests.live import serving
from tests.support.fhir_server import SekmetServer

SOME_SMART_PATIENTS = sorted(SMART_PATIENTS.glob("*.json"))[:3]


def test_collection_becomes_a_transaction_keeping_ids_and_links() -> None:
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:aaa", "resource": {"resourceType": "Patient", "id": "p1"}},
            {
                "fullUrl": "urn:uuid:bbb",
                "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:aaa"}},
            },
        ],
    }
    transaction = to_transaction(collection)
    assert transaction["type"] == "transaction"
    first, second = transaction["entry"]
    assert first["request"] == {"method": "PUT", "url": "Patient/p1"}
    assert second["request"] == {"method": "POST", "url": "Observation"}
    assert second["fullUrl"] == "urn:uuid:bbb"
    assert second["resource"]["subject"] == {"reference": "Patient/p1"}


def test_not_a_bundle_is_refused() -> None:
    with pytest.raises(ValueError, match="not a FHIR Bundle"):
        to_transaction({"resourceType": "Patient"})


@pytest.mark.parametrize("entry", [5, "x", {"resource": {}}])
def test_bundle_whose_entry_is_not_a_list_is_refused(entry: object) -> None:
    with pytest.raises(ValueError, match=r"Bundle\.entry is not a list"):
        to_transaction({"resourceType": "Bundle", "type": "collection", "entry": entry})


def _get(server: SekmetServer, query: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(f"{server.base_url}/{query}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def _bundle_counts(path: Path) -> tuple[str, int]:
    bundle = json.loads(path.read_text())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    observations = sum(e["resource"]["resourceType"] == "Observation" for e in bundle["entry"])
    return patient["id"], observations


@pytest.mark.integration
def test_smart_sandbox_patients_load_and_read_back(fhir_server: SekmetServer) -> None:
    result = CliRunner().invoke(
        main,
        [
            "load-fixtures",
            "--fhir-server",
            fhir_server.base_url,
            "--no-shift",
            *map(str, SOME_SMART_PATIENTS),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "[1/3]" in result.stderr
    assert "[3/3]" in result.stderr
    for path in SOME_SMART_PATIENTS:
        patient_id, observation_count = _bundle_counts(path)
        assert _get(fhir_server, f"Patient/{patient_id}")["id"] == patient_id
        found = _get(fhir_server, f"Observation?patient={patient_id}&_count=1000&_summary=count")
        assert found["total"] == observation_count


@pytest.mark.integration
def test_loading_twice_replaces_rather_than_duplicates(fhir_server: SekmetServer) -> None:
    path = SOME_SMART_PATIENTS[0]
    for _ in range(2):
        result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", fhir_server.base_url, str(path)])
        assert result.exit_code == 0, result.output
    patient_id, observation_count = _bundle_counts(path)
    assert _get(fhir_server, f"Observation?patient={patient_id}&_summary=count")["total"] == observation_count
    assert _get(fhir_server, "Patient?_summary=count")["total"] == 1


def _dated_collection(tmp_path: Path, timestamp: str | None = None) -> Path:
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "shift-p", "birthDate": "1960-05-01"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "shift-o",
                    "status": "final",
                    "code": {"text": "a measurement"},
                    "subject": {"reference": "Patient/shift-p"},
                    "effectiveDateTime": "2025-01-10T09:30:00Z",
                }
            },
        ],
    }
    if timestamp:
        bundle["timestamp"] = timestamp
    path = tmp_path / "dated.json"
    path.write_text(json.dumps(bundle))
    return path


@pytest.mark.integration
def test_shift_days_moves_every_date(fhir_server: SekmetServer, tmp_path: Path) -> None:
    path = _dated_collection(tmp_path)
    result = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", fhir_server.base_url, "--shift-days", "45", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "dates moved +45 days" in result.stderr
    assert _get(fhir_server, "Observation/shift-o")["effectiveDateTime"] == "2025-02-24T09:30:00Z"
    assert _get(fhir_server, "Patient/shift-p")["birthDate"] == "1960-06-15"


@pytest.mark.integration
def test_bundle_timestamp_is_the_default_reference_day(fhir_server: SekmetServer, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    reference = today - timedelta(days=100)
    path = _dated_collection(tmp_path, f"{reference.isoformat()}T00:00:00Z")
    result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", fhir_server.base_url, str(path)])
    assert result.exit_code == 0, result.output
    expected = (date(2025, 1, 10) + timedelta(days=100)).isoformat()
    assert _get(fhir_server, "Observation/shift-o")["effectiveDateTime"] == f"{expected}T09:30:00Z"


@pytest.mark.integration
def test_reference_day_option(fhir_server: SekmetServer, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    path = _dated_collection(tmp_path, "2000-01-01T00:00:00Z")
    result = CliRunner().invoke(
        main,
        ["load-fixtures", "--fhir-server", fhir_server.base_url, "--reference-day", "2025-01-10", str(path)],
    )
    assert result.exit_code == 0, result.output
    assert _get(fhir_server, "Observation/shift-o")["effectiveDateTime"] == f"{today.isoformat()}T09:30:00Z"


@pytest.mark.integration
def test_token_server(sekmet_factory, tmp_path: Path) -> None:
    server = sekmet_factory(tokens=["load-token"])
    path = _dated_collection(tmp_path)
    refused = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", server.base_url, str(path)])
    accepted = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", server.base_url, "--token", "load-token", str(path)]
    )
    assert refused.exit_code == 1
    assert "FAILED" in refused.stderr
    assert "HTTP 401" in refused.stderr
    assert "Authentication required" in refused.stderr
    assert accepted.exit_code == 0, accepted.output
    assert _get(server, "Patient/shift-p", token="load-token")["id"] == "shift-p"
    assert "load-token" not in accepted.output + refused.output


@pytest.mark.integration
def test_bad_file_is_reported_and_the_rest_still_load(fhir_server: SekmetServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    good = _dated_collection(tmp_path)
    result = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", fhir_server.base_url, str(broken), str(good)]
    )
    assert result.exit_code == 1
    assert "[1/2] FAILED" in result.stderr
    assert "broken.json: not readable JSON" in result.stderr
    assert "1 of 2 Bundles were not loaded" in result.stderr
    assert _get(fhir_server, "Patient/shift-p")["id"] == "shift-p"


def test_server_down_is_a_clear_failure(tmp_path: Path) -> None:
    path = _dated_collection(tmp_path)
    result = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", str(path)]
    )
    assert result.exit_code == 1
    assert "connection refused by http://127.0.0.1:9/fhir" in result.stderr


def test_a_server_that_cannot_be_reached_stops_the_load_at_the_first_bundle(tmp_path: Path) -> None:
    """Every Bundle after the first would meet the same refused connection: one line says so, not one
    per Bundle, and the count still says none was loaded."""
    folders = [tmp_path / str(n) for n in range(4)]
    for folder in folders:
        folder.mkdir()
    paths = [_dated_collection(folder) for folder in folders]
    result = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", *map(str, paths)]
    )
    assert result.exit_code == 1
    assert result.stderr.count("connection refused") == 1, result.stderr
    assert "stopped: the other 3 Bundles were not tried" in result.stderr
    assert "4 of 4 Bundles were not loaded" in result.stderr


def test_conflicting_shift_options(tmp_path: Path) -> None:
    path = _dated_collection(tmp_path)
    result = CliRunner().invoke(
        main,
        ["load-fixtures", "--fhir-server", "http://x/fhir", "--no-shift", "--shift-days", "3", str(path)],
    )
    assert result.exit_code == 2
    assert "at most one of" in result.output


FIXTURE_JSON = sorted((Path(__file__).resolve().parents[2] / "fhir_fixtures").glob("*.json"))
FIXTURE_BUNDLES = [
    p for p in FIXTURE_JSON if json.loads(p.read_text(encoding="utf-8")).get("resourceType") == "Bundle"
]


@pytest.mark.integration
@pytest.mark.skipif(not FIXTURE_BUNDLES, reason="fhir_fixtures/ holds no Bundles yet")
def test_default_is_every_fixture_bundle(fhir_server: SekmetServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURE_BUNDLES[0].parent.parent)
    result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", fhir_server.base_url])
    assert result.exit_code == 0, result.output
    assert f"[{len(FIXTURE_BUNDLES)}/{len(FIXTURE_BUNDLES)}]" in result.stderr
    for path in set(FIXTURE_JSON) - set(FIXTURE_BUNDLES):
        assert f"skipped fhir_fixtures/{path.name} (not a Bundle)" in result.stderr
    for path in FIXTURE_BUNDLES:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            if "id" in resource:
                stored = _get(fhir_server, f"{resource['resourceType']}/{resource['id']}")
                assert stored["id"] == resource["id"]


@pytest.mark.parametrize("url", ["not-a-url", "ftp://127.0.0.1/fhir", "http:///fhir", "127.0.0.1:8090/fhir"])
def test_fhir_server_must_be_an_http_url_before_anything_loads(tmp_path: Path, url: str) -> None:
    path = _dated_collection(tmp_path)
    result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", url, str(path), str(path)])
    assert result.exit_code == 2
    assert f"Invalid value for '--fhir-server': {url!r} is not an http(s) URL" in result.stderr
    assert "FAILED" not in result.stderr
    assert "[1/2]" not in result.stderr


def test_shift_days_beyond_the_calendar_is_a_usage_error(tmp_path: Path) -> None:
    path = _dated_collection(tmp_path)
    result = CliRunner().invoke(
        main,
        ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", "--shift-days", "99999999", str(path)],
    )
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Invalid value for '--shift-days': 99999999 is not in the range" in result.stderr


@pytest.mark.parametrize(
    "shift", [["--shift-days", "3000000"], ["--shift-days", "-800000"], ["--reference-day", "9999-12-31"]]
)
def test_dates_moved_off_the_calendar_are_a_clear_failure(tmp_path: Path, shift: list[str]) -> None:
    path = _dated_collection(tmp_path)
    result = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", *shift, str(path)]
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"[1/1] FAILED {path}: moving its dates takes one outside the years 1 to 9999" in result.stderr
    assert "1 of 1 Bundles were not loaded" in result.stderr


@contextmanager
def _answering(status: str, body: bytes, content_type: str) -> Iterator[str]:
    """A loopback server that answers every request with this status, body and content type."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response(status, [("Content-Type", content_type)])
        return [body]

    with serving(app) as base:
        yield f"{base}/fhir"


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        (b"<!doctype html><html><body>Welcome to nginx</body></html>", "text/html", "text/html"),
        (b'{"status": "ok"}', "application/json", "JSON that is not a FHIR resource"),
        (b'{"resourceType": "CapabilityStatement"}', "application/fhir+json", "a CapabilityStatement"),
        (b'{"resourceType": "Bundle", "type": "searchset"}', "application/fhir+json", "type 'searchset'"),
        (b"", "text/plain", "an empty body"),
    ],
    ids=["html", "json", "capability", "searchset", "empty"],
)
def test_an_answer_that_is_not_a_transaction_response_is_a_failure(
    tmp_path: Path, body: bytes, content_type: str, named: str
) -> None:
    """A wrong URL answering 200 with an HTML page (a web server's welcome page) was counted as loaded."""
    path = _dated_collection(tmp_path)
    with _answering("200 OK", body, content_type) as url:
        result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", url, str(path)])
    assert result.exit_code == 1, result.output
    assert f"[1/1] FAILED {path}: {url} answered 200 with " in result.stderr
    assert named in result.stderr
    assert "not a FHIR transaction-response Bundle" in result.stderr
    assert "1 of 1 Bundles were not loaded" in result.stderr
    assert "loaded 1 Bundles" not in result.stderr


def test_a_transaction_response_as_plain_json_counts_as_loaded(tmp_path: Path) -> None:
    path = _dated_collection(tmp_path)
    answer = json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": []}).encode()
    with _answering("200 OK", answer, "application/json;charset=utf-8") as url:
        result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", url, str(path)])
    assert result.exit_code == 0, result.output
    assert f"loaded 1 Bundles into {url}" in result.stderr


_A_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkci13aG8ifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (f"Unauthorized: token {_A_JWT} expired; you sent load-token-1".encode(), "text/plain"),
        (
            json.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login",
                        "diagnostics": f"Bearer load-token-1 refused, expected {_A_JWT}"}]}).encode(),
            "application/fhir+json",
        ),
    ],
    ids=["plain-text", "operation-outcome"],
)  # fmt: skip
def test_a_refusal_is_printed_without_the_token_or_any_jwt(
    tmp_path: Path, body: bytes, content_type: str
) -> None:
    """A FHIR server's 401 may quote the token it refused; load-fixtures printed it as it came."""
    path = _dated_collection(tmp_path)
    with _answering("401 Unauthorized", body, content_type) as url:
        result = CliRunner().invoke(
            main, ["load-fixtures", "--fhir-server", url, "--token", "load-token-1", str(path)]
        )
    assert result.exit_code == 1, result.output
    assert f"HTTP 401 from {url}" in result.stderr
    assert "load-token-1" not in result.output
    assert "eyJ" not in result.output
    assert "[a JWT]" in result.stderr


def test_the_password_of_the_fhir_server_url_is_never_printed(tmp_path: Path) -> None:
    path = _dated_collection(tmp_path)
    down = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", "http://loader:hunter2@127.0.0.1:9/fhir", str(path)]
    )
    assert down.exit_code == 1
    assert "connection refused by http://loader:***@127.0.0.1:9/fhir" in down.stderr
    assert "hunter2" not in down.output
    answer = json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode()
    for status, body in (("401 Unauthorized", b"who are you, loader:hunter2?"), ("200 OK", answer)):
        with _answering(status, body, "application/fhir+json") as url:
            with_password = url.replace("http://", "http://loader:hunter2@")
            result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", with_password, str(path)])
        assert "hunter2" not in result.output
        assert "loader:***@127.0.0.1" in result.stderr


@pytest.mark.parametrize("token", ["s3cret tok\u20acn", "s3cret token", "s3cret\ntoken"])
def test_a_token_that_cannot_be_a_bearer_token_is_a_usage_error_that_does_not_quote_it(
    tmp_path: Path, token: str
) -> None:
    """A non-Latin-1 character made requests raise UnicodeEncodeError: a traceback."""
    path = _dated_collection(tmp_path)
    for given in (["--token", token], []):
        result = CliRunner(env={"FHIR_ACCESS_TOKEN": token}).invoke(
            main, ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", *given, str(path)]
        )
        assert result.exit_code == 2, result.output
        assert "'--token'" in result.stderr
        assert "visible ASCII" in result.stderr
        assert "s3cret" not in result.output
        assert "FAILED" not in result.stderr


def test_a_device_is_read_no_further_than_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/zero was reported as 'no such file'; a large file was read whole, however large."""
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 1000)
    large = tmp_path / "large.json"
    large.write_bytes(b" " * 1001)
    result = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", "/dev/zero", str(large)]
    )
    assert result.exit_code == 1, result.output
    assert "[1/2] FAILED /dev/zero: larger than 1000 bytes; not read" in result.stderr
    assert f"[2/2] FAILED {large}: larger than 1000 bytes; not read" in result.stderr
    missing = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", str(tmp_path / "nothing.json")]
    )
    assert missing.exit_code == 1
    assert "nothing.json: no such file or directory" in missing.stderr


def test_a_large_file_in_a_folder_is_reported_not_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 1000)
    (tmp_path / "large.json").write_bytes(b" " * 1001)
    result = CliRunner().invoke(
        main, ["load-fixtures", "--fhir-server", "http://127.0.0.1:9/fhir", str(tmp_path)]
    )
    assert result.exit_code == 1, result.output
    assert "large.json: larger than 1000 bytes; not read" in result.stderr


def test_a_server_that_redirects_in_a_loop_is_named_as_such(tmp_path: Path) -> None:
    """requests gives up after 30 redirects; the line said 'invalid request to URL: TooManyRedirects'."""
    path = _dated_collection(tmp_path)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("307 Temporary Redirect", [("Location", environ["PATH_INFO"])])
        return [b""]

    with serving(app) as base:
        result = CliRunner().invoke(main, ["load-fixtures", "--fhir-server", f"{base}/fhir", str(path)])
    assert result.exit_code == 1, result.output
    assert f"[1/1] FAILED {path}: {base}/fhir redirects in a loop (more than 30 redirects)" in result.stderr
