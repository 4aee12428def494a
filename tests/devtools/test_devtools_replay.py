"""`cds-service replay` run for real: over the fixtures, the SMART sandbox patients and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from cds_service.cli import main
from cds_service.devtools import bundles as bundles_module
from cds_service.devtools import replay as replay_module
from tests.builders import FIXED_NOW, REPO, SMART_PATIENTS
from tests.devtools.checks import assert_spec_response

FIXTURES = REPO / "fhir_fixtures"
HOOKS = REPO / "hooks"
NOW = FIXED_NOW.isoformat().replace("+00:00", "Z")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CDS_* setting of the developer's shell leaks in; any store the handler opens lives in tmp."""
    for name in [n for n in os.environ if n.startswith("CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CDS_FEEDBACK_DB", str(tmp_path / "feedback.sqlite3"))
    monkeypatch.setenv("CDS_STATE_DB", str(tmp_path / "state.sqlite3"))


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["replay", *args], catch_exceptions=True)


def assert_clean_failure(result: Result, *, mentions: str) -> None:
    """A non-zero exit with a one-line message, never an uncaught exception or a traceback.

    The line starts 'Error: ', as click's own do and as docs/testing-with-sandboxes.md says of a failure
    that ends the command; a lone Bundle that could not be replayed said 'error: '."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    message_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message_lines) == 1, result.stderr
    assert mentions in message_lines[0]
    assert message_lines[0].startswith("Error: "), message_lines[0]


def _fixture_expectations() -> dict:
    path = FIXTURES / "expectations.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


# --- the SMART sandbox patients --------------------------------------------------------------------------


def test_every_smart_sandbox_patient_replays_and_answers_spec_valid_cards() -> None:
    files = sorted(SMART_PATIENTS.glob("*.json"))
    assert len(files) == 32
    result = run(str(SMART_PATIENTS), "--now", NOW, "--json")
    assert result.exit_code == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert {Path(line["file"]).name for line in lines} == {f.name for f in files}
    for line in lines:
        assert_spec_response(line["response"])
    # Progress goes to stderr, one step per Bundle, so stdout stays machine-readable.
    assert result.stderr.count("[") >= len(files)
    assert f"[32/32] {SMART_PATIENTS}" in result.stderr
    assert "replayed 32 of 32 Bundle(s)" in result.stderr


def test_several_bundles_give_one_summary_line_per_patient() -> None:
    files = sorted(SMART_PATIENTS.glob("*.json"))[:3]
    result = run(*map(str, files), "--now", NOW)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, files, strict=True):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        assert f"(Patient/{patient['id']})" in line
        assert "card" in line


def test_single_bundle_json_is_exactly_the_service_response() -> None:
    path = sorted(SMART_PATIENTS.glob("*.json"))[0]
    result = run(str(path), "--now", NOW, "--json")
    assert result.exit_code == 0, result.stderr
    response = orjson.loads(result.stdout)
    assert set(response) <= {"cards", "systemActions"}
    human = run(str(path), "--now", NOW)
    assert human.exit_code == 0
    assert "\x1b[" not in human.stdout  # no colour codes when stdout is not a terminal
    assert_spec_response(response)


def test_order_select_over_a_sandbox_patient_with_a_draft_order_file(tmp_path: Path) -> None:
    order = tmp_path / "draft.json"
    order.write_text(
        json.dumps(
            {
                "resourceType": "MedicationRequest",
                "status": "draft",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "309594"}]
                },
                "subject": {"reference": "Patient/someone-else"},
            }
        )
    )
    path = sorted(SMART_PATIENTS.glob("*.json"))[1]
    for hook in ("order-select", "order-sign"):
        result = run(str(path), "--hook", hook, "--order", str(order), "--now", NOW, "--json")
        assert result.exit_code == 0, result.stderr
        assert_spec_response(orjson.loads(result.stdout))


# --- the scenario fixtures -------------------------------------------------------------------------------


@pytest.mark.skipif(not _fixture_expectations(), reason="fhir_fixtures/expectations.json is not there yet")
def test_every_fixture_shows_its_expected_topics_and_none_it_forbids() -> None:
    expectations = _fixture_expectations()
    fixtures = expectations["fixtures"]
    assert fixtures
    for name, expected in fixtures.items():
        args = [str(FIXTURES / name), "--now", expectations.get("now", NOW), "--json"]
        args += ["--hook", expected.get("hook", "patient-view")]
        if expected.get("order"):
            args += ["--order", str(FIXTURES / expected["order"])]
        result = run(*args)
        assert result.exit_code == 0, f"{name}: {result.stderr}"
        response = orjson.loads(result.stdout)
        assert_spec_response(response)
        topics = {card["source"]["topic"]["code"] for card in response["cards"]}
        wanted = set(expected["topics"])
        assert wanted <= topics, f"{name}: expected {sorted(wanted)}, got {sorted(topics)}"
        assert not topics & set(expected.get("forbid", ())), f"{name}: forbidden topics in {sorted(topics)}"


def test_replaying_the_fixture_folder_gives_one_line_per_fixture() -> None:
    """A folder: expectations.json and the orders/ files are not patient Bundles and are skipped."""
    fixtures = _fixture_expectations().get("fixtures", {})
    if not fixtures:
        pytest.skip("fhir_fixtures/expectations.json is not there yet")
    result = run(str(FIXTURES), "--now", NOW)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(list(FIXTURES.glob("*.json"))) - 1
    assert len(lines) >= len(fixtures)
    assert (
        f"replayed {len(lines)} of {len(lines)} Bundle(s) (1 other JSON file(s) passed over)" in result.stderr
    )


# --- hooks/ examples replay as they stand -----------------------------------------------------------------


def test_every_hooks_example_replays_with_its_own_hook_and_orders() -> None:
    examples = sorted(HOOKS.glob("*.json"))
    assert examples, "hooks/ has no examples"
    result = run(str(HOOKS), "--now", NOW, "--json")
    assert result.exit_code == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(examples)
    for line in lines:
        assert_spec_response(line["response"])
        assert line["response"]["cards"], f"{line['file']} shows no card"


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        ("{ this is not json", "not valid JSON"),
        (json.dumps({"resourceType": "Patient", "id": "x"}), "not a FHIR Bundle"),
        ("[1, 2]", "not a FHIR Bundle (the JSON is an array, not an object)"),
        ("null", "not a FHIR Bundle (the JSON is null, not an object)"),
        ('"Bundle"', "not a FHIR Bundle (the JSON is a string, not an object)"),
        ('{"resourceType": "Bundle", "type": {"coding": []}}', "Bundle type {'coding': []} is not one of"),
        ('{"resourceType": "Bundle", "type": ["collection"]}', "Bundle type ['collection'] is not one of"),
    ],
    ids=["not-json", "a-patient", "a-json-array", "null", "a-string", "type-an-object", "type-a-list"],
)
def test_a_file_that_is_not_a_bundle(tmp_path: Path, content: str, mentions: str) -> None:
    path = tmp_path / "input.json"
    path.write_text(content)
    assert_clean_failure(run(str(path)), mentions=mentions)


def test_bundle_without_patient(tmp_path: Path) -> None:
    path = tmp_path / "nobody.json"
    observation = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}}
    path.write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": observation}]})
    )
    assert_clean_failure(run(str(path)), mentions="no Patient")


def test_missing_file(tmp_path: Path) -> None:
    assert_clean_failure(run(str(tmp_path / "absent.json")), mentions="no such file")


def test_unreadable_path(tmp_path: Path) -> None:
    """A path that cannot be opened even by root: a file name used as a directory."""
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert_clean_failure(run(str(plain / "inside.json")), mentions="cannot read")


def test_file_without_read_permission(tmp_path: Path) -> None:
    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as a user who can read any file (root)")
    assert_clean_failure(run(str(path)), mentions="cannot read")


def test_bad_order_file(tmp_path: Path) -> None:
    order = tmp_path / "order.json"
    order.write_text(json.dumps({"resourceType": "Observation", "id": "o"}))
    bundle = sorted(SMART_PATIENTS.glob("*.json"))[0]
    assert_clean_failure(
        run(str(bundle), "--hook", "order-sign", "--order", str(order)), mentions="no draft order"
    )


@pytest.mark.parametrize("now", ["yesterday", "2026-01-15T09:00:00", "2026-02-30", ""])
def test_bad_now_is_a_usage_error(now: str) -> None:
    """Like feedback-report's --since: a malformed option is click's usage error, exit 2 (it was 1)."""
    bundle = sorted(SMART_PATIENTS.glob("*.json"))[0]
    result = run(str(bundle), "--now", now)
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.output
    assert f"--now={now!r}" in result.stderr


def test_order_hook_without_orders() -> None:
    bundle = sorted(SMART_PATIENTS.glob("*.json"))[0]
    result = run(str(bundle), "--hook", "order-select")
    assert result.exit_code != 0
    assert "--order" in result.stderr


def test_one_bad_bundle_among_good_ones_fails_the_run_but_replays_the_rest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("nope")
    good = sorted(SMART_PATIENTS.glob("*.json"))[0]
    result = run(str(good), str(bad), "--now", NOW)
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 1
    assert f"error: {bad}: not valid JSON" in result.stderr
    assert "replayed 1 of 2 Bundle(s)" in result.stderr


def test_console_script_runs_and_reports_errors_without_traceback(tmp_path: Path) -> None:
    """The installed entry point, in a fresh process: a good replay, then a bad file."""
    good = sorted(SMART_PATIENTS.glob("*.json"))[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["CDS_FEEDBACK_DB"] = str(tmp_path / "f.sqlite3")
    env["CDS_NOW"] = NOW
    command = [str(Path(sys.executable).with_name("cds-service")), "replay"]
    ok = subprocess.run([*command, str(good)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "Patient/" in ok.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("<html>")
    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().count("\n") == 0
    assert "Traceback" not in failed.stderr


def test_without_now_a_fixture_is_replayed_as_of_its_bundle_timestamp() -> None:
    """Fixtures are written relative to their Bundle timestamp; that is the clock when none is given."""
    fixtures = _fixture_expectations().get("fixtures", {})
    name, expected = next(((n, e) for n, e in fixtures.items() if e.get("topics")), (None, None))
    if name is None:
        pytest.skip("no fixture with expected topics yet")
    stamp = json.loads((FIXTURES / name).read_text(encoding="utf-8"))["timestamp"]
    args = [str(FIXTURES / name), "--hook", expected.get("hook", "patient-view")]
    if expected.get("order"):
        args += ["--order", str(FIXTURES / expected["order"])]
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert f"as of {stamp.replace('Z', '+00:00')}" in result.stdout
    shown = run(*args, "--json")
    topics = {card["source"]["topic"]["code"] for card in orjson.loads(shown.stdout)["cards"]}
    assert set(expected["topics"]) <= topics


def test_a_hook_request_file_for_a_hook_the_service_does_not_answer(tmp_path: Path) -> None:
    """The hook comes from the file, not from --hook's choices: an unknown one was a LookupError traceback."""
    path = tmp_path / "request.json"
    patient = {"resourceType": "Patient", "id": "p1"}
    path.write_text(
        json.dumps(
            {"hook": "encounter-start", "context": {"patientId": "p1"}, "prefetch": {"patient": patient}}
        )
    )
    result = run(str(path), "--now", NOW)
    assert_clean_failure(result, mentions="encounter-start")
    assert "patient-view, order-select, order-sign" in result.stderr


@pytest.mark.parametrize("source", ["/dev/zero", "file"])
def test_a_file_past_the_size_limit_is_refused_without_reading_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """/dev/zero was read to the end of memory (MemoryError traceback, or the OOM killer)."""
    monkeypatch.setattr(bundles_module, "MAX_FILE_BYTES", 1000)
    path = Path(source)
    if source == "file":
        path = tmp_path / "big.json"
        path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "note": "x" * 2000}))
    result = run(str(path), "--now", NOW)
    assert_clean_failure(result, mentions=f"{path}: larger than")
    for option in ("--order",):
        order = run(str(sorted(SMART_PATIENTS.glob("*.json"))[0]), "--hook", "order-sign", option, str(path))
        assert_clean_failure(order, mentions=f"{path}: larger than")


def test_dev_zero_as_a_signing_key_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["fire", "--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir",
         "--patient", "p", "--signing-key", "/dev/zero", "--iss", "https://ehr.example"],
    )  # fmt: skip
    assert_clean_failure(result, mentions="/dev/zero")
    assert "larger than" in result.stderr


@pytest.mark.parametrize("hook", [[], ["--hook", "patient-view"]], ids=["no-hook", "patient-view"])
def test_an_order_file_for_the_patient_view_hook_is_a_usage_error(hook: list[str]) -> None:
    """--order without an order hook was ignored: the replay ran patient-view and said nothing about it."""
    bundle = sorted(SMART_PATIENTS.glob("*.json"))[0]
    result = run(str(bundle), *hook, "--order", str(HOOKS / "order-select-cyanocobalamin.json"), "--now", NOW)
    assert result.exit_code == 2
    assert "--order is for the order-select and order-sign hooks" in result.stderr


def test_json_lines_name_a_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """orjson refuses the surrogates Python uses for such a name: a TypeError traceback mid-run."""
    source = sorted(SMART_PATIENTS.glob("*.json"))[0].read_bytes()
    (tmp_path / "plain.json").write_bytes(source)
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.json"), "wb") as odd:
        odd.write(source)
    result = run(str(tmp_path), "--now", NOW, "--json")
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert sorted(Path(line["file"]).name for line in lines) == ["caf\\xe9.json", "plain.json"]


@pytest.mark.parametrize("as_option", [False, True], ids=["bundle", "order"])
def test_json_nested_too_deep_is_refused_by_name(tmp_path: Path, as_option: bool) -> None:
    """orjson reads 1024 levels, but copying a resource 600 levels deep hit Python's recursion limit: a
    RecursionError traceback that ended a folder replay."""
    kind = "MedicationRequest" if as_option else "Patient"
    nested = '{"url": "http://example.org/x", "extension": [' * 300 + "{}" + "]}" * 300  # 600 levels
    resource = f'{{"resourceType": "{kind}", "id": "a", "extension": [{nested}]}}'
    path = tmp_path / "deep.json"
    path.write_text(
        f'{{"resourceType": "Bundle", "type": "collection", "entry": [{{"resource": {resource}}}]}}'
    )
    bundle = sorted(SMART_PATIENTS.glob("*.json"))[0]
    args = [str(bundle), "--hook", "order-sign", "--order", str(path)] if as_option else [str(path)]
    assert_clean_failure(run(*args, "--now", NOW), mentions=f"{path}: JSON nested more than 200 levels deep")


def test_encodings_a_windows_editor_leaves(tmp_path: Path) -> None:
    """A UTF-8 byte order mark was refused ('not valid JSON (UTF-8 byte order mark (BOM) is not
    supported)'), and UTF-16 was reported as 'str is not valid UTF-8: surrogates not allowed'."""
    text = sorted(SMART_PATIENTS.glob("*.json"))[0].read_text(encoding="utf-8")
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    result = run(str(with_bom), "--now", NOW)
    assert result.exit_code == 0, result.output
    utf16 = tmp_path / "utf16.json"
    utf16.write_bytes(text.encode("utf-16"))
    assert_clean_failure(run(str(utf16), "--now", NOW), mentions=f"{utf16}: UTF-16 text; FHIR JSON is UTF-8")


def test_text_in_another_encoding_is_named_where_it_is(tmp_path: Path) -> None:
    """Without a byte order mark, UTF-16 and Latin-1 were both 'str is not valid UTF-8: surrogates not
    allowed: line 1 column 1', wherever the odd byte was."""
    text = sorted(SMART_PATIENTS.glob("*.json"))[0].read_text(encoding="utf-8")
    utf16 = tmp_path / "utf16le.json"
    utf16.write_bytes(text.encode("utf-16-le"))
    assert_clean_failure(run(str(utf16), "--now", NOW), mentions=f"{utf16}: UTF-16 or UTF-32 text; FHIR JSON")
    latin1 = tmp_path / "latin1.json"
    at = text.index('"family": "') + len('"family": "')
    latin1.write_bytes(text[:at].encode() + b"M\xfcller" + text[at:].encode())
    assert_clean_failure(
        run(str(latin1), "--now", NOW),
        mentions=f"{latin1}: not UTF-8 text (byte {at + 1} is not UTF-8); FHIR JSON is UTF-8",
    )


@pytest.mark.parametrize("now", ["9999-12-31", "0001-01-01", "9999-12-31T23:59:59-23:59", "1850-06-01"])
def test_a_now_no_clinical_clock_can_use_is_a_usage_error(now: str) -> None:
    """A --now near the ends of the calendar made the engine's date windows overflow, reported as an
    'internal error in the service ... the Bundle exposes a bug'."""
    result = run(str(HOOKS / "patient-view.json"), "--now", now)
    assert result.exit_code == 2, result.output
    assert f"--now={now!r}" in result.stderr and "between 1900 and 2999" in result.stderr


def test_a_configuration_error_does_not_quote_a_store_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.py quotes a malformed CDS_FEEDBACK_DB as given, password included, and replay printed it."""
    monkeypatch.setenv("CDS_FEEDBACK_DB", "mysql://reporter:pw-S3cret@db.internal/cds")
    result = run(str(HOOKS / "patient-view.json"), "--now", NOW)
    assert_clean_failure(result, mentions="CDS_FEEDBACK_DB=")
    assert "pw-S3cret" not in result.output


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CDS_SITE_CONFIG", "/nonexistent/site.json", "CDS_SITE_CONFIG="),
        ("CDS_SITE_CONFIG", "SITE_WITH_A_BAD_LINK", "rulesDocUrl="),
        ("CDS_NOW", "yesterday", "CDS_NOW="),
        ("CDS_THRESHOLDS", "x", "unknown setting(s) CDS_THRESHOLDS"),
    ],
    ids=["missing-site-file", "bad-site-section", "bad-now", "unknown-setting"],
)
def test_a_configuration_error_is_exit_status_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, named: str
) -> None:
    """The README promises 2 for a usage or configuration error, as serve and feedback-report give; replay
    gave 1, the status of a Bundle that could not be replayed."""
    if value == "SITE_WITH_A_BAD_LINK":
        site = tmp_path / "site.json"
        site.write_text('{"rulesDocUrl": "intranet/rules"}')
        value = str(site)
    monkeypatch.setenv(variable, value)
    result = run(str(HOOKS / "patient-view.json"), "--now", NOW)
    assert_clean_failure(result, mentions=named)
    assert result.exit_code == 2, result.stderr
    assert "configuration error" in result.stderr


def test_an_order_file_that_can_be_read_once_serves_every_bundle() -> None:
    """`--order <(...)` or `--order /dev/stdin` is a pipe: the file was read once to check it and again
    for each Bundle, so every Bundle failed with 'zero-length, empty document'."""
    fixtures = _fixture_expectations().get("fixtures", {})
    ordered = [
        (name, e) for name, e in fixtures.items() if e.get("hook") == "order-select" and e.get("order")
    ]
    if len(ordered) < 2:
        pytest.skip("fewer than two order-select fixtures")
    order = (FIXTURES / ordered[0][1]["order"]).read_bytes()
    read_end, write_end = os.pipe()
    os.write(write_end, order)
    os.close(write_end)
    try:
        bundles = [str(FIXTURES / name) for name, _ in ordered[:2]]
        result = run(*bundles, "--hook", "order-select", "--order", f"/proc/self/fd/{read_end}", "--now", NOW)
    finally:
        os.close(read_end)
    assert result.exit_code == 0, result.stderr
    assert "replayed 2 of 2 Bundle(s)" in result.stderr


def test_on_a_terminal_results_and_errors_do_not_land_on_the_progress_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the progress line ('\\r[1/3] name' padded to 60 columns) was left standing, so each
    patient's line and each error was printed after it on the same line."""
    monkeypatch.setattr(replay_module, "_stderr_is_terminal", lambda: True)
    bad = tmp_path / "bad.json"
    bad.write_text("nope")
    good = sorted(SMART_PATIENTS.glob("*.json"))[:2]
    result = run(str(good[0]), str(bad), str(good[1]), "--now", NOW)
    screen = [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in result.output.split("\n")]
    shown = [line for line in screen if line.strip()]
    assert shown[0].endswith(": no cards") and shown[0].startswith(("Abdul", "Alden"))
    assert shown[1].startswith(f"error: {bad}: not valid JSON")
    assert shown[-1].startswith("replayed 2 of 3 Bundle(s)")
    assert len(shown) == 4


@pytest.mark.parametrize(
    "entry_extra",
    [{"search": "match"}, {"search": ["outcome"]}, {"request": "PUT Patient/p"}, {"request": ["x"]}],
    ids=["search-a-string", "search-a-list", "request-a-string", "request-a-list"],
)
def test_entry_members_of_the_wrong_type_do_not_break_the_replay(tmp_path: Path, entry_extra: dict) -> None:
    """An entry whose search or request is not an object raised AttributeError (found by replaying
    mangled copies of the fixtures): the member is ignored, as a server would ignore it."""
    bundle = json.loads(sorted(SMART_PATIENTS.glob("*.json"))[0].read_text(encoding="utf-8"))
    for entry in bundle["entry"]:
        entry.pop("request", None)
        entry.update(entry_extra)
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(bundle))
    result = run(str(path), "--now", NOW, "--json")
    assert result.exit_code == 0, result.output
    assert_spec_response(orjson.loads(result.stdout))


@pytest.mark.parametrize("others", [[], ["notes.json"]], ids=["one-file", "one-bundle-and-notes"])
def test_json_of_a_folder_is_json_lines_however_many_files_it_holds(
    tmp_path: Path, others: list[str]
) -> None:
    """A folder holding one file printed that file's bare response instead of a JSON Lines record, so
    `replay exports/ --json | jq .response` broke the day one export was left; with a second file that
    was not a Bundle, it gave JSON Lines again."""
    bundle = sorted(SMART_PATIENTS.glob("*.json"))[0]
    (tmp_path / bundle.name).write_bytes(bundle.read_bytes())
    for name in others:
        (tmp_path / name).write_text('{"note": "not a Bundle"}')
    result = run(str(tmp_path), "--now", NOW, "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    record = orjson.loads(lines[0])
    assert sorted(record) == ["file", "patientId", "response"]
    assert record["file"] == str(tmp_path / bundle.name)
    assert_spec_response(record["response"])
    named = run(str(tmp_path / bundle.name), "--now", NOW, "--json")  # one file named: its response alone
    assert named.exit_code == 0, named.output
    response = orjson.loads(named.stdout)
    assert "file" not in response
    assert [card["summary"] for card in response["cards"]] == [
        card["summary"] for card in record["response"]["cards"]
    ]
