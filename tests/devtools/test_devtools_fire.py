"""`cds-service fire` as an EHR: a served instance of the service, the real FHIR server, real JWTs."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import orjson
import pytest
import requests
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from werkzeug.serving import make_server

from cds_service.cli import main
from cds_service.config import Settings
from cds_service.devtools import fire as fire_module
from cds_service.devtools.bundles import PatientBundle, load_patient_bundle
from cds_service.devtools.fire import Ehr
from tests.builders import FIXED_NOW, REPO, SMART_PATIENTS
from tests.devtools.checks import assert_spec_response
from tests.devtools.served import serving_service
from tests.live import serving
from tests.support.fhir_server import SekmetServer
from tests.support.processes import free_port
from tests.support.served import Served

HOOKS = REPO / "hooks"
NOW = FIXED_NOW.isoformat().replace("+00:00", "Z")
ISS = "https://ehr.test.example"


@pytest.fixture(autouse=True)
def _no_shell_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("FHIR_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("CDS_FEEDBACK_DB", str(tmp_path / "replay-feedback.sqlite3"))


def base_settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(
        auth="off",
        feedback_db=str(tmp_path / "feedback.sqlite3"),
        state_db=str(tmp_path / "state.sqlite3"),
        now=FIXED_NOW,
    ).with_overrides(**changes)


def load_example(server: SekmetServer, name: str) -> PatientBundle:
    """Put an example's record on the FHIR server under the same ids, as an EHR would hold it."""
    record = load_patient_bundle(HOOKS / name)
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in record.resources
    ]
    server.load({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return record


def topics(response: dict) -> set[str]:
    return {card["source"]["topic"]["code"] for card in response["cards"]}


def replayed_topics(name: str) -> set[str]:
    result = CliRunner().invoke(main, ["replay", str(HOOKS / name), "--now", NOW, "--json"])
    assert result.exit_code == 0, result.stderr
    return topics(orjson.loads(result.stdout))


def fire(*args: str) -> Result:
    return CliRunner().invoke(main, ["fire", *args])


def fire_for(service: str, fhir_server: SekmetServer, patient_id: str, *args: str) -> Result:
    """``fire`` at ``service`` for one patient of ``fhir_server``, the prefix most tests share."""
    return fire("--service", service, "--fhir-server", fhir_server.base_url, "--patient", patient_id, *args)


def fired_response(result: Result) -> dict:
    assert result.exit_code == 0, result.stderr
    response = orjson.loads(result.stdout)
    assert_spec_response(response)
    return response


def write_key(tmp_path: Path, private_key: object, kid: str) -> tuple[Path, Path]:
    """The private key as PEM, and a CDS_CLIENTS file registering its public half inline."""
    pem = tmp_path / f"{kid}.pem"
    pem.write_bytes(
        private_key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = private_key.public_key()  # type: ignore[attr-defined]
    algorithm = (
        jwt.algorithms.ECAlgorithm
        if isinstance(public, ec.EllipticCurvePublicKey)
        else jwt.algorithms.RSAAlgorithm
    )
    jwk = json.loads(algorithm.to_jwk(public))
    jwk["kid"] = kid
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": {"keys": [jwk]}}]}))
    return pem, clients


def test_fire_without_auth_gives_the_cards_replay_gives(fhir_server: SekmetServer, tmp_path: Path) -> None:
    record = load_example(fhir_server, "patient-view.json")
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        result = fire_for(service, fhir_server, record.patient_id, "--json")
        response = fired_response(result)
    assert topics(response)
    assert topics(response) == replayed_topics("patient-view.json")


def test_fire_human_output_shows_the_cards(fhir_server: SekmetServer, tmp_path: Path) -> None:
    record = load_example(fhir_server, "patient-view.json")
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        json_result = fire_for(service, fhir_server, record.patient_id, "--json")
        text_result = fire_for(service, fhir_server, record.patient_id)
    assert text_result.exit_code == 0, text_result.stderr
    for card in fired_response(json_result)["cards"]:
        assert card["summary"] in text_result.stdout
        assert f"[{card['indicator'].upper()}]" in text_result.stdout
        assert card["source"]["label"] in text_result.stdout


def test_fire_order_select_with_a_hooks_request_as_the_order(
    fhir_server: SekmetServer, tmp_path: Path
) -> None:
    name = "order-select-cyanocobalamin.json"
    record = load_example(fhir_server, name)
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        result = fire_for(
            service,
            fhir_server,
            record.patient_id,
            "--hook",
            "order-select",
            "--order",
            str(HOOKS / name),
            "--json",
        )
        response = fired_response(result)
    assert topics(response) == replayed_topics(name)
    assert "iron-studies-after-b12" in topics(response)


def test_fire_no_prefetch_lets_the_service_fetch_from_an_allowed_server(
    fhir_server: SekmetServer, tmp_path: Path
) -> None:
    record = load_example(fhir_server, "patient-view.json")
    settings = base_settings(tmp_path, allowed_fhir_servers=(fhir_server.base_url,))
    with serving_service(lambda _: settings) as service:
        result = fire_for(service, fhir_server, record.patient_id, "--no-prefetch", "--json")
        response = fired_response(result)
    assert topics(response) == replayed_topics("patient-view.json")


@pytest.mark.parametrize("key_type", ["ec-p384", "rsa"])
def test_fire_with_a_signed_jwt(fhir_server: SekmetServer, tmp_path: Path, key_type: str) -> None:
    private_key = (
        ec.generate_private_key(ec.SECP384R1())
        if key_type == "ec-p384"
        else rsa.generate_private_key(65537, 2048)
    )
    pem, clients = write_key(tmp_path, private_key, kid=f"{key_type}-1")
    record = load_example(fhir_server, "patient-view.json")

    def settings_for(base_url: str) -> Settings:
        return base_settings(tmp_path, auth="required", clients_file=clients, public_base_url=base_url)

    common = ["--fhir-server", fhir_server.base_url, "--patient", record.patient_id, "--json"]
    with serving_service(settings_for) as service:
        signed = fire(
            "--service", service, *common, "--signing-key", str(pem), "--iss", ISS, "--kid", f"{key_type}-1"
        )
        unsigned = fire("--service", service, *common)
        wrong_iss = fire(
            "--service",
            service,
            *common,
            "--signing-key",
            str(pem),
            "--iss",
            "https://other.example",
            "--kid",
            f"{key_type}-1",
        )
        wrong_kid = fire("--service", service, *common, "--signing-key", str(pem), "--iss", ISS)
    assert topics(fired_response(signed)) == replayed_topics("patient-view.json")
    for refused in (unsigned, wrong_iss, wrong_kid):
        assert refused.exit_code != 0
        assert "401" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert "--signing-key" in unsigned.stderr


def test_fire_reports_412_when_the_service_may_not_fetch(fhir_server: SekmetServer, tmp_path: Path) -> None:
    record = load_example(fhir_server, "patient-view.json")
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        result = fire_for(service, fhir_server, record.patient_id, "--no-prefetch")
    assert result.exit_code != 0
    assert "412 from" in result.stderr and "could not get the data it needs" in result.stderr
    # The reason names every key first; its end says what to fix, and was cut off at 500 characters.
    assert "is not one this service is allowed to query" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_long_412_reason_is_quoted_to_its_end_and_a_longer_one_says_it_was_cut() -> None:
    """fire cut the service's reason at 500 characters without a mark: a 412 for eight missing keys read
    '... and the fhirServer http://127.0.0.1:8090/fhir is not one this serv'."""
    long_reason = "Required data is missing (" + "key (not in the prefetch); " * 30 + ") END-OF-REASON"

    def service(environ: dict, start_response: Callable) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"services": [{"id": "v", "hook": "patient-view"}]}).encode()]
        issue = {"severity": "error", "code": "not-found", "diagnostics": long_reason}
        start_response("412 Precondition Failed", [("Content-Type", "application/json")])
        return [json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()]

    with serving(service) as base:
        result = fire("--service", base, "--fhir-server", "http://127.0.0.1:9/fhir", "--patient", "p",
                      "--no-prefetch")  # fmt: skip
    assert len(long_reason) > 800
    assert result.exit_code == 1
    assert result.stderr.rstrip().endswith("END-OF-REASON"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    endless = "x" * 50_000
    assert fire_module._shortened(endless).endswith(f"… (cut at {fire_module.REASON_LIMIT} characters)")
    assert len(fire_module._shortened(endless)) < fire_module.REASON_LIMIT + 40


def test_fire_reports_404_and_connection_refused(fhir_server: SekmetServer, tmp_path: Path) -> None:
    closed_port = free_port()
    refused = fire(
        "--service",
        f"http://127.0.0.1:{closed_port}",
        "--fhir-server",
        fhir_server.base_url,
        "--patient",
        "x",
    )
    assert refused.exit_code != 0
    assert "cannot connect to the CDS service" in refused.stderr
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        missing = fire(
            "--service", f"{service}/elsewhere", "--fhir-server", fhir_server.base_url, "--patient", "x"
        )
    assert missing.exit_code != 0
    assert "404" in missing.stderr


def test_fire_reports_a_patient_the_fhir_server_does_not_have(
    fhir_server: SekmetServer, tmp_path: Path
) -> None:
    """Sent as `patient: null`, a wrong --patient would come back as "no cards" with exit 0."""
    load_example(fhir_server, "patient-view.json")
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        result = fire_for(service, fhir_server, "no-such-patient")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "prefetch patient: GET Patient/no-such-patient -> 404, sent as null (not found)"
    assert lines[-1] == (
        f"Error: Patient/no-such-patient does not exist on the FHIR server {fhir_server.base_url} "
        "(HTTP 404): check --patient and --fhir-server"
    )


def test_fire_against_a_smart_patient_loaded_by_transaction(
    fhir_server: SekmetServer, tmp_path: Path
) -> None:
    """Server-assigned ids, as after `load-fixtures`: the patient is found by the id the server gave."""
    path = sorted(SMART_PATIENTS.glob("*.json"))[0]
    answer = fhir_server.load_file(path)
    locations = [e["response"]["location"].removeprefix(fhir_server.base_url + "/") for e in answer["entry"]]
    patient_id = next(loc.split("/")[1] for loc in locations if loc.startswith("Patient/"))
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        result = fire(
            "--service", service, "--fhir-server", fhir_server.base_url, "--patient", patient_id, "--json"
        )
        fired_response(result)


def test_prefetch_follows_next_links_and_leaves_out_failed_keys(fhir_server: SekmetServer) -> None:
    record = load_example(fhir_server, "patient-view-iron-deficiency-after-b12.json")
    observations = [r for r in record.resources if r["resourceType"] == "Observation"]
    assert len(observations) > 3
    ehr = Ehr("http://127.0.0.1:9", fhir_server.base_url, key=None, fhir_token=None, timeout=10)
    values = ehr.prefetch(
        {
            "labs": "Observation?patient={{context.patientId}}&_count=2",
            "patient": "Patient/{{context.patientId}}",
            "nobody": "Patient/no-such-patient",
            "broken": "NoSuchType?patient={{context.patientId}}",
        },
        {"patientId": record.patient_id},
    )
    assert {e["resource"]["id"] for e in values["labs"]["entry"]} == {o["id"] for o in observations}
    assert [link["relation"] for link in values["labs"]["link"]] == ["self"]
    assert values["patient"]["id"] == record.patient_id
    assert values["nobody"] is None
    assert "broken" not in values


def test_prefetch_cut_short_keeps_its_next_link(
    fhir_server: SekmetServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sent without its next link, a partial search would be read as the whole of it."""
    record = load_example(fhir_server, "patient-view-iron-deficiency-after-b12.json")
    monkeypatch.setattr(fire_module, "MAX_PAGES", 2)
    ehr = Ehr("http://127.0.0.1:9", fhir_server.base_url, key=None, fhir_token=None, timeout=10)
    values = ehr.prefetch(
        {"labs": "Observation?patient={{context.patientId}}&_count=1"}, {"patientId": record.patient_id}
    )
    assert len(values["labs"]["entry"]) == 2
    relations = [link["relation"] for link in values["labs"]["link"]]
    assert relations == ["self", "next"]
    assert "paging stopped after 2 pages; the search is sent as partial" in capsys.readouterr().err


def test_fire_with_a_fhir_bearer_token_like_the_smart_launcher(
    sekmet_factory: Callable[..., SekmetServer], tmp_path: Path
) -> None:
    """A FHIR server that demands a bearer token: with it, prefetch and the service's own fetch work;
    without it, the server's 401 leaves the keys out and the service answers 412, not an empty list."""
    secured = sekmet_factory(tokens=["launch-token-1"])
    record = load_example(secured, "patient-view.json")
    settings = base_settings(tmp_path, allowed_fhir_servers=(secured.base_url,))
    common = ["--fhir-server", secured.base_url, "--patient", record.patient_id, "--json"]
    with serving_service(lambda _: settings) as service:
        with_token = fire("--service", service, *common, "--fhir-token", "launch-token-1")
        fetched_by_service = fire(
            "--service", service, *common, "--fhir-token", "launch-token-1", "--no-prefetch"
        )
        without_token = fire("--service", service, *common)
    expected = replayed_topics("patient-view.json")
    assert topics(fired_response(with_token)) == expected
    assert topics(fired_response(fetched_by_service)) == expected
    assert without_token.exit_code != 0
    assert "FHIR server answered 401" in without_token.stderr
    assert "412 from" in without_token.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--service", "localhost:8080"], "is not an http(s) URL"),
        (["--service", "http://127.0.0.1:9", "--fhir-server", "http://:8080/fhir"], "is not an http(s) URL"),
        (["--service", "http://127.0.0.1:9/?x=1"], "'http://127.0.0.1:9/?x=1' has a query or a fragment"),
        (
            ["--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir?_format=json"],
            "has a query",
        ),
        (
            ["--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir#top"],
            "or a fragment",
        ),
        (["--service", "http://127.0.0.1:9", "--timeout", "-1"], "'--timeout'"),
        (["--service", "http://127.0.0.1:9", "--timeout", "0"], "'--timeout'"),
        (["--service", "http://127.0.0.1:9", "--timeout", "nan"], "'--timeout'"),
        (["--service", "http://127.0.0.1:9", "--timeout", "inf"], "'--timeout'"),
        (["--service", "http://127.0.0.1:9", "--hook", "order-sign"], "--order"),
        (["--service", "http://127.0.0.1:9", "--signing-key", "k.pem"], "--iss"),
        (["--service", "http://127.0.0.1:9", "--iss", "https://ehr.test"], "--iss without --signing-key"),
        (
            ["--service", "http://127.0.0.1:9", "--iss", "https://ehr.test", "--kid", "k1"],
            "--iss and --kid without --signing-key: no JWT would be signed",
        ),
        (["--service", "http://127.0.0.1:9", "--patient", "../../metadata"], "'--patient'"),
        (["--service", "http://127.0.0.1:9", "--patient", ""], "'--patient'"),
        (["--service", "http://127.0.0.1:9", "--patient", "a b?x=1"], "not a FHIR id"),
        (["--service", "http://127.0.0.1:9", "--user", "dr-who"], "'--user'"),
        (
            ["--service", "http://127.0.0.1:9", "--order", "o.json"],
            "--order is for the order-select and order-sign",
        ),
    ],
)
def test_fire_refuses_bad_options(extra: list[str], message: str) -> None:
    """Refused before any request: a --patient that is not a FHIR id was sent into FHIR query paths
    (Patient/../../metadata) and then refused by the service as a 400."""
    result = fire("--fhir-server", "http://127.0.0.1:9/fhir", "--patient", "p", *extra)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_fire_refuses_a_key_that_is_not_a_private_key(tmp_path: Path) -> None:
    not_a_key = tmp_path / "public.pem"
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    not_a_key.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = fire(
        "--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir", "--patient", "p",
        "--signing-key", str(not_a_key), "--iss", ISS,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "is not an unencrypted PEM private key" in result.stderr
    assert "BEGIN" not in result.stderr


def test_fire_against_cds_service_serve_with_a_signed_jwt(fhir_server: SekmetServer, tmp_path: Path) -> None:
    """The production server (gunicorn via `cds-service serve`) in its own process, JWTs required."""
    pem, clients = write_key(tmp_path, ec.generate_private_key(ec.SECP384R1()), kid="served-1")
    record = load_example(fhir_server, "patient-view.json")
    server = Served(
        tmp_path,
        workers=1,
        CDS_AUTH="required",
        CDS_CLIENTS=str(clients),
        CDS_NOW=NOW,
        CDS_ALLOWED_FHIR_SERVERS=fhir_server.base_url,
    )
    try:
        common = [
            "--service",
            server.base,
            "--fhir-server",
            fhir_server.base_url,
            "--patient",
            record.patient_id,
        ]
        signed = fire(*common, "--signing-key", str(pem), "--iss", ISS, "--kid", "served-1", "--json")
        fetched = fire(
            *common, "--signing-key", str(pem), "--iss", ISS, "--kid", "served-1", "--no-prefetch", "--json"
        )
        unsigned = fire(*common)
    finally:
        server.stop()
    expected = replayed_topics("patient-view.json")
    assert topics(fired_response(signed)) == expected
    assert topics(fired_response(fetched)) == expected
    assert unsigned.exit_code != 0 and "401 Unauthorized" in unsigned.stderr


def test_fire_refuses_an_rsa_key_the_service_would_not_accept(tmp_path: Path) -> None:
    """A 512-bit key made jwt.encode raise (a traceback); 1024 bits signed tokens every service refuses."""
    pem = tmp_path / "small.pem"
    pem.write_bytes(
        rsa.generate_private_key(65537, 1024).private_bytes(  # noqa: S505 (the point of the test)
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    result = fire(
        "--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir", "--patient", "p",
        "--signing-key", str(pem), "--iss", ISS,
    )  # fmt: skip
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"Error: {pem} is a 1024-bit RSA key; CDS Hooks services need at least 2048 bits"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--service", "http://dev:pw-S3cret@127.0.0.1:{closed}", "--fhir-server", "http://127.0.0.1:9/fhir"],
        ["--service", "{service}", "--fhir-server", "http://dev:pw-S3cret@127.0.0.1:{closed}/fhir"],
        ["--service", "http://dev:pw-S3cret@[::1", "--fhir-server", "http://127.0.0.1:9/fhir"],
        ["--service", "{service}", "--fhir-server", "ftp://dev:pw-S3cret@127.0.0.1/fhir"],
    ],
    ids=["service-down", "fhir-server-down", "malformed-service-url", "not-http"],
)
def test_fire_never_prints_the_password_of_a_url(tmp_path: Path, args: list[str]) -> None:
    """A URL's user:password@ was quoted whole in 'cannot connect' and 'is not an http(s) URL' errors."""
    closed = free_port()
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        filled = [a.format(closed=closed, service=service) for a in args]
        result = fire(*filled, "--patient", "p")
    assert result.exit_code in (1, 2)
    assert "Traceback" not in result.output
    assert "pw-S3cret" not in result.output
    assert (
        "dev:***@" in result.output or "malformed" in result.output or "not an http(s) URL" in result.output
    )


def test_fire_names_the_network_failure_instead_of_saying_connection_refused(
    fhir_server: SekmetServer, tmp_path: Path
) -> None:
    """An unknown host and https to an http port were both reported as 'connection refused'."""
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        unknown = fire("--service", "http://no-such-host.invalid", "--fhir-server", fhir_server.base_url,
                       "--patient", "p")  # fmt: skip
        tls = fire("--service", service.replace("http://", "https://"), "--fhir-server", fhir_server.base_url,
                   "--patient", "p")  # fmt: skip
        fhir_tls = fire("--service", service, "--fhir-server", fhir_server.base_url.replace("http://", "https://"),
                        "--patient", "p")  # fmt: skip
    for result, says in (
        (unknown, "host name of http://no-such-host.invalid/cds-services could not be resolved"),
        (tls, "TLS handshake with"),
        (fhir_tls, "TLS handshake with"),
    ):
        assert result.exit_code == 1
        assert says in result.stderr
        assert "refused" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_fire_says_which_queries_it_made_and_which_keys_it_sent(
    fhir_server: SekmetServer, tmp_path: Path
) -> None:
    """stderr said nothing on success: a developer could not tell what the EHR side had queried or sent."""
    record = load_example(fhir_server, "patient-view.json")
    with serving_service(lambda _: base_settings(tmp_path)) as service:
        result = fire_for(service, fhir_server, record.patient_id, "--json")
        templates = requests.get(f"{service}/cds-services", timeout=10).json()["services"]
    response = fired_response(result)
    keys = next(s["prefetch"] for s in templates if s["hook"] == "patient-view")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(keys) + 1
    for key, line in zip(keys, lines, strict=False):
        assert line.startswith(f"prefetch {key}: GET "), line
        assert " -> 200, " in line
    assert f"prefetch patient: GET Patient/{record.patient_id} -> 200, Patient/{record.patient_id}" in lines
    assert any(
        line.startswith(f"prefetch b12IronLabs: GET Observation?patient={record.patient_id}&")
        for line in lines
    )
    assert lines[-1] == f"prefetched {len(keys)} of {len(keys)} keys from {fhir_server.base_url}"
    assert topics(response)


def test_the_prefetch_log_counts_pages_and_says_why_a_key_was_left_out(
    sekmet_factory: Callable[..., SekmetServer], capsys: pytest.CaptureFixture[str]
) -> None:
    secured = sekmet_factory(tokens=["launch-token-1"])
    record = load_example(secured, "patient-view-iron-deficiency-after-b12.json")
    templates = {
        "labs": "Observation?patient={{context.patientId}}&_count=2",
        "patient": "Patient/{{context.patientId}}",
    }
    with_token = Ehr(
        "http://127.0.0.1:9", secured.base_url, key=None, fhir_token="launch-token-1", timeout=10
    )
    with_token.prefetch(templates, {"patientId": record.patient_id})
    logged = capsys.readouterr().err
    observations = [r for r in record.resources if r["resourceType"] == "Observation"]
    pages = -(-len(observations) // 2)
    assert f"-> 200, {len(observations)} entries in {pages} pages" in logged
    without = Ehr("http://127.0.0.1:9", secured.base_url, key=None, fhir_token=None, timeout=10)
    assert without.prefetch(templates, {"patientId": record.patient_id}) == {}
    logged = capsys.readouterr().err
    assert (
        "not sent (FHIR server answered 401: Authentication required; it wants a token: give --fhir-token)"
        in logged
    )
    assert "prefetched 0 of 2 keys" in logged and "not sent: labs, patient" in logged


@pytest.mark.parametrize("token", ["s3cret tok\u20acn", "s3cret token", "s3cret\ntoken"])
def test_a_fhir_token_that_cannot_be_a_bearer_token_is_a_usage_error_that_does_not_quote_it(
    token: str,
) -> None:
    """A non-Latin-1 character made requests raise UnicodeEncodeError (a traceback); a space or a newline
    reached the FHIR server or the service and came back as an InvalidHeader or a 400."""
    for given in (["--fhir-token", token], []):
        result = CliRunner(env={"FHIR_ACCESS_TOKEN": token}).invoke(
            main,
            ["fire", "--service", "http://127.0.0.1:9", "--fhir-server", "http://127.0.0.1:9/fhir",
             "--patient", "p", *given],
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "'--fhir-token'" in result.stderr
        assert "visible ASCII" in result.stderr
        assert "s3cret" not in result.output


class _OddService:
    """A CDS service that does not follow the standard: its discovery and its answer are set per test."""

    def __init__(self, discovery: dict, answer: object) -> None:
        self.discovery, self.answer = discovery, answer

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        body = self.discovery if environ["REQUEST_METHOD"] == "GET" else self.answer
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]


_VALID_PREFETCH = {"patient": "Patient/{{context.patientId}}"}
_VALID_CARD = {
    "uuid": "8f0b4a5e-2f7c-4c9e-9d7c-3a1b2c3d4e5f",
    "summary": "s",
    "indicator": "info",
    "source": {"label": "l"},
}


@pytest.mark.parametrize(
    ("prefetch", "answer", "says"),
    [
        (
            ["Patient/{{context.patientId}}"],
            {"cards": []},
            "prefetch of b12-view in its discovery is not an object",
        ),
        ({"patient": 5}, {"cards": []}, None),
        (
            _VALID_PREFETCH,
            {"cards": [{**_VALID_CARD, "suggestions": "abc"}]},
            "not a valid CDS Hooks response",
        ),
        (_VALID_PREFETCH, {"cards": [7]}, "not a valid CDS Hooks response"),
        (_VALID_PREFETCH, {"cards": [{**_VALID_CARD, "indicator": None}]}, "cards/0/indicator"),
    ],
    ids=["prefetch-a-list", "template-a-number", "suggestions-a-string", "card-a-number", "indicator-null"],
)
def test_fire_at_a_service_that_breaks_the_standard_says_what_is_wrong(
    fhir_server: SekmetServer, prefetch: object, answer: object, says: str | None
) -> None:
    """fire is how an integrator checks a service: a discovery prefetch that is not an object of strings
    or cards of the wrong shape ended in AttributeError or TypeError tracebacks."""
    record = load_example(fhir_server, "patient-view.json")
    discovery = {"services": [{"id": "b12-view", "hook": "patient-view", "prefetch": prefetch}]}
    server = make_server("127.0.0.1", 0, _OddService(discovery, answer), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = fire_for(f"http://127.0.0.1:{server.server_port}", fhir_server, record.patient_id)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if says is None:  # the key is left out, the call still made
        assert result.exit_code == 0, result.output
        assert "prefetch patient: not sent (the template is not a string)" in result.stderr
    else:
        assert result.exit_code == 1
        assert says in result.stderr.strip().splitlines()[-1]


class _PagingFhir:
    """A FHIR server whose searches answer one page and a next link given per test; records every call."""

    def __init__(self) -> None:
        self.next_url: str | None = None
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        self.seen.append(
            (environ["PATH_INFO"] + "?" + environ["QUERY_STRING"], environ.get("HTTP_AUTHORIZATION"))
        )
        entry = {"resource": {"resourceType": "Observation", "id": f"o{len(self.seen)}", "status": "final"}}
        bundle: dict = {"resourceType": "Bundle", "type": "searchset", "entry": [entry]}
        if self.next_url and environ["QUERY_STRING"] != "page=2":
            bundle["link"] = [{"relation": "next", "url": self.next_url}]
        start_response("200 OK", [("Content-Type", "application/fhir+json")])
        return [json.dumps(bundle).encode()]


def test_paging_never_carries_the_fhir_token_to_another_origin(capsys: pytest.CaptureFixture[str]) -> None:
    """fire followed any next link with the Authorization header of --fhir-token (the service itself
    refuses to), and a relative next link ended the whole run as a MissingSchema 'cannot query' error."""
    ehr_side, elsewhere = _PagingFhir(), _PagingFhir()
    with serving(ehr_side) as base, serving(elsewhere) as other:
        ehr = Ehr("http://127.0.0.1:9", f"{base}/fhir", key=None, fhir_token="launch-token-1", timeout=10)
        ehr_side.next_url = f"{other}/fhir/Observation?page=2"
        away = ehr.prefetch({"labs": "Observation?patient=p"}, {"patientId": "p"})
        ehr_side.next_url = "Observation?page=2"
        relative = ehr.prefetch({"labs": "Observation?patient=p"}, {"patientId": "p"})
    assert elsewhere.seen == []
    assert "paging stopped: the next link is to another origin, not followed" in capsys.readouterr().err
    assert [link["relation"] for link in away["labs"]["link"]] == ["next"]  # sent as partial
    assert len(relative["labs"]["entry"]) == 2
    assert ehr_side.seen[-1] == ("/fhir/Observation?page=2", "Bearer launch-token-1")


_A_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkci13aG8ifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    "answer",
    [
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
         "diagnostics": f"HTTP 401 from the FHIR server: token {_A_JWT} expired; sent launch-token-1"}]},
        f"upstream said: Bearer launch-token-1 and {_A_JWT} refused",
        {"resourceType": "OperationOutcome", "issue": 5},
    ],
    ids=["operation-outcome", "plain-text", "issue-not-a-list"],
)  # fmt: skip
def test_an_error_from_the_service_is_printed_without_tokens_or_jwts(answer: object) -> None:
    """The service's 412 quotes what the FHIR server said, and a FHIR server's 401 body may quote the token
    it refused: fire printed that, --fhir-token and any JWT included. An 'issue' that is not a list was a
    TypeError traceback."""

    def service(environ: dict, start_response: Callable) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"services": [{"id": "v", "hook": "patient-view"}]}).encode()]
        text = isinstance(answer, str)
        start_response(
            "412 Precondition Failed", [("Content-Type", "text/plain" if text else "application/json")]
        )
        return [answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()]

    with serving(service) as base:
        result = fire("--service", base, "--fhir-server", "http://127.0.0.1:9/fhir", "--patient", "p",
                      "--no-prefetch", "--fhir-token", "launch-token-1")  # fmt: skip
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "launch-token-1" not in result.output
    assert "eyJ" not in result.output
    assert result.stderr.startswith("Error: 412 from")


def test_timeout_bounds_a_whole_call_not_each_read(capsys: pytest.CaptureFixture[str]) -> None:
    """--timeout was handed to requests, which applies it to each socket read: a FHIR server sending a
    byte every 0.2 s kept a '--timeout 1' call going for as long as it liked (minutes per query)."""

    def dripping(environ: dict, start_response: Callable) -> Iterator[bytes]:
        body = json.dumps({"resourceType": "Patient", "id": "p"}).encode() + b" " * 40
        start_response(
            "200 OK", [("Content-Type", "application/fhir+json"), ("Content-Length", str(len(body)))]
        )
        for byte in body:
            time.sleep(0.2)
            yield bytes([byte])

    with serving(dripping) as base:
        ehr = Ehr("http://127.0.0.1:9", f"{base}/fhir", key=None, fhir_token=None, timeout=1)
        started = time.monotonic()
        with pytest.raises(fire_module.FireError, match=r"did not answer .* within 1 s"):
            ehr.prefetch({"patient": "Patient/{{context.patientId}}"}, {"patientId": "p"})
        assert time.monotonic() - started < 3
