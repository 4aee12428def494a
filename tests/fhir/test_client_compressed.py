"""FhirClient against FHIR servers that compress their answers: well, oddly, or as a bomb.

The loopback server is the fake EHR sending canned bytes with a ``Content-Encoding`` header, as a real
server (HAPI behind nginx, say) does when the client's Accept-Encoding allows it.
"""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import Iterator

import orjson
import pytest

from cds_service.fhir.client import FetchOutcome, FhirClient
from cds_service.fhir.decoding import PIECE_BYTES, BodyDecoder, CorruptBody
from cds_service.fhir.memory import MemoryBudget
from tests.support.fake_ehr_fhir import FakeEhrFhir

pytestmark = pytest.mark.integration

PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Zipped"}]}
SEARCH = "Observation?patient=p1"


def _entry(n: int) -> dict:
    return {
        "fullUrl": f"Observation/o{n}",
        "resource": {
            "resourceType": "Observation",
            "id": "o",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "valueQuantity": {"value": 1, "unit": "u"},
        },
    }


def _json_bomb() -> bytes:
    """About 30 MB of a searchset Bundle (the size limit was 32 MiB) in about 100 KB of gzip: one
    million small objects, seconds of ``orjson.loads`` on any machine."""
    entries = [_entry(0)] * 175_000
    plain = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})
    assert 25_000_000 < len(plain) < 32 * 1024 * 1024
    return gzip.compress(plain, compresslevel=6)


def _zeros_bomb() -> bytes:
    """A gzip body that inflates to 1 GiB, as 64 members of 16 MiB of zeros (1 MB on the wire)."""
    return gzip.compress(b"\0" * (16 << 20), compresslevel=9) * 64


@pytest.fixture
def client() -> Iterator[FhirClient]:
    # One pool thread: a worker still busy with the bomb would hold up the next fetch. No limit on size or
    # memory: these tests are about the time a body takes (test_client_memory has the memory budget's).
    fhir = FhirClient(max_workers=1, max_response_bytes=1 << 40, memory=MemoryBudget(1 << 40))
    yield fhir
    fhir.close()


def _pool_thread_is_free(client: FhirClient, ehr: FakeEhrFhir) -> float:
    """How long a plain read takes on the same client after the bomb: its single pool thread must be
    back from the bomb to answer it."""
    started = time.monotonic()
    outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=5000)["p"]
    assert outcome.ok, outcome.error
    return time.monotonic() - started


@pytest.mark.parametrize(
    "bomb", [_json_bomb, _zeros_bomb], ids=["dense-json-within-the-size-limit", "1-GiB-of-zeros"]
)
def test_a_gzip_bomb_costs_no_more_than_the_budget(client: FhirClient, bomb) -> None:
    """The dense one was read in time (30 MB inflates in ~0.1 s), then parsed for seconds holding the GIL,
    so even ``fetch_all``, only waiting for the budget to end, returned seconds late; now the parse it
    would need is estimated as the body arrives, and the body is given up when it cannot fit."""
    body = bomb()
    with FakeEhrFhir() as ehr:
        ehr.add_canned(SEARCH, 200, body, headers=(("Content-Encoding", "gzip"),))
        ehr.add_canned("Patient/p1", 200, PATIENT)
        started = time.monotonic()
        outcome = client.fetch_all(ehr.base_url, {"labs": SEARCH}, authorization=None, budget_ms=400)["labs"]
        returned = time.monotonic() - started
        assert outcome.error is not None and outcome.error.startswith("timeout after 400 ms"), outcome.error
        assert returned < 0.55, returned
        assert time.monotonic() - started + _pool_thread_is_free(client, ehr) < 0.8


def test_a_large_genuine_answer_still_fits_a_generous_budget(client: FhirClient) -> None:
    """The estimate refuses bombs, not big pages: 2,000 entries (~0.4 MB, 10 times a usual page)."""
    entries = [_entry(n) for n in range(2000)]
    body = gzip.compress(orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries}))
    with FakeEhrFhir() as ehr:
        ehr.add_canned(SEARCH, 200, body, headers=(("Content-Encoding", "gzip"),))
        outcome = client.fetch_all(ehr.base_url, {"labs": SEARCH}, authorization=None, budget_ms=1500)["labs"]
    assert outcome.ok, outcome.error
    assert len(outcome.resource["entry"]) == 1  # the same resource 2,000 times is kept once


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


PATIENT_JSON = orjson.dumps(PATIENT)


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(PATIENT_JSON)),
        ("x-gzip", gzip.compress(PATIENT_JSON)),
        ("GZIP", gzip.compress(PATIENT_JSON[:10]) + gzip.compress(PATIENT_JSON[10:])),
        ("deflate", _deflate(PATIENT_JSON, zlib.MAX_WBITS)),
        ("deflate", _deflate(PATIENT_JSON, -zlib.MAX_WBITS)),
        ("identity", PATIENT_JSON),
    ],
    ids=["gzip", "x-gzip", "two-gzip-members", "zlib-deflate", "raw-deflate", "identity"],
)
def test_every_coding_the_client_asks_for_is_read(client: FhirClient, coding: str, body: bytes) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 200, body, headers=(("Content-Encoding", coding),))
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
        sent = ehr.seen[-1]
    assert outcome.ok, outcome.error
    assert outcome.resource == PATIENT
    assert sent.path == "/baseR4/Patient/p1"


@pytest.mark.parametrize(
    ("coding", "body", "reason"),
    [
        (
            "gzip, gzip",
            gzip.compress(gzip.compress(PATIENT_JSON)),
            "Content-Encoding 'gzip, gzip' was not asked for",
        ),
        ("br", PATIENT_JSON, "Content-Encoding 'br' was not asked for"),
        ("gzip", gzip.compress(PATIENT_JSON)[:-12], "gzip body ends early"),
        ("gzip", PATIENT_JSON, "body is not valid gzip data"),
    ],
    ids=["stacked", "not-asked-for", "cut-short", "not-gzip"],
)
def test_a_body_in_a_coding_not_asked_for_or_broken_is_refused_saying_so(
    client: FhirClient, coding: str, body: bytes, reason: str
) -> None:
    """Stacked codings multiply a bomb (urllib3 before 2.6 inflated each layer whole, and pyproject allows
    urllib3 2.0); a gzip stream cut short read as "not JSON", or as JSON if the cut fell well."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 200, body, headers=(("Content-Encoding", coding),))
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
    assert outcome.error == f"response from {ehr.base_url}/Patient/p1: {reason}"


def test_the_client_asks_only_for_the_codings_it_reads(client: FhirClient) -> None:
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 200, PATIENT)
        session, _pool = client._resources()
        assert session.headers["Accept-Encoding"] == "gzip, deflate"
        assert client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"].ok


def test_the_decoder_never_hands_out_more_than_a_piece_at_a_time() -> None:
    """Whatever the ratio: a 64 KiB read of zeros inflates to 64 MiB, and must come out in pieces."""
    decoder = BodyDecoder("gzip")
    pieces = list(decoder.feed(gzip.compress(b"\0" * (8 << 20), compresslevel=9)))
    assert max(len(piece) for piece in pieces) <= PIECE_BYTES
    assert sum(len(piece) for piece in pieces) == 8 << 20
    decoder.finish()
    with pytest.raises(CorruptBody):
        cut = BodyDecoder("deflate")
        list(cut.feed(_deflate(PATIENT_JSON, zlib.MAX_WBITS)[:-6]))
        cut.finish()


def test_an_error_whose_body_cannot_be_decoded_is_still_named_by_its_status(client: FhirClient) -> None:
    """A 401 from a gateway compressing with brotli read as "Content-Encoding 'br' was not asked for",
    which hid that the token was refused."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned(
            "Patient/p1", 401, b"\x0b\x02\x80unauthorized\x03", "text/plain", (("Content-Encoding", "br"),)
        )
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=3000)["p"]
    assert outcome.status == 401
    assert outcome.error == (
        f"HTTP 401 from {ehr.base_url}/Patient/p1 (body not read: Content-Encoding 'br' was not asked for)"
    )


def _peak_bytes_of_fetch(client: FhirClient, ehr: FakeEhrFhir) -> tuple[int, FetchOutcome]:
    client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=5000)  # warm up
    tracemalloc.start()
    try:
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=5000)["p"]
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


BIG = 24 * 1024 * 1024


@pytest.mark.parametrize(
    "plain",
    [
        b'{"resourceType": "Patient", "id": "p1"' + b" " * BIG + b"}",
        b'{"resourceType": "Patient", "id": "p1", "text": {"div": "' + b"x" * BIG + b'"}}',
        b"<html>" + b"x" * BIG + b"</html>",
    ],
    ids=["whitespace", "one-long-string", "not-json"],
)
def test_a_large_body_costs_about_its_size_in_memory_not_twelve_times(
    client: FhirClient, plain: bytes
) -> None:
    """orjson allocates 12 times its input before reading it: 24 MiB of whitespace or of one string (24 KiB
    of gzip on the wire) took ~300 MiB at once, an HTML page of that size too; now about its size (three
    times for one long string: the body, the text the parser decodes, the string it makes)."""
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 200, gzip.compress(plain, 6), headers=(("Content-Encoding", "gzip"),))
        peak, outcome = _peak_bytes_of_fetch(client, ehr)
    assert peak < 3.5 * BIG, peak / BIG
    if plain.startswith(b"<"):
        assert outcome.error.startswith("not JSON from")
    else:
        assert outcome.ok, outcome.error


PADDING = b" " * (2 * 1024 * 1024)  # past the size at which the standard parser takes over


@pytest.mark.parametrize(
    ("plain", "family"),
    [
        (b'{"resourceType": "Patient", "id": "p1", "name": [{"family": "\\ud83d\\ude00"}]}', "\U0001f600"),
        (b'{"resourceType": "Patient", "id": "p1", "name": [{"family": "\\ud83d"}]}', None),
        (b'{"resourceType": "Patient", "id": "p1", "name": [{"family": NaN}]}', None),
        (b'{"resourceType": "Patient", "id": "p1", "name": [{"family": -Infinity}]}', None),
        (b'{"resourceType": "Patient", "id": "p1", "name": [{"family": "Jos\xc3\xa9"}]}', "Jos\u00e9"),
        (b'{"resourceType": "Patient", "id": "p1", "name": [{"family": "Jos\xe9"}]}', None),
        (b'{"resourceType": "Patient", "id": "p1", "name": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    ],
    ids=["surrogate-pair", "lone-surrogate", "nan", "infinity", "utf-8", "not-utf-8", "too-deep"],
)
@pytest.mark.parametrize("size", ["small", "large"])
def test_large_bodies_are_read_as_strictly_as_small_ones(
    client: FhirClient, plain: bytes, family: str | None, size: str
) -> None:
    """Either parser, the same answer: what orjson refuses (NaN, an unpaired surrogate, bytes that are not
    UTF-8, nesting past its limit) is refused in a large body too."""
    body = plain[:-1] + PADDING + b"}" if size == "large" else plain
    with FakeEhrFhir() as ehr:
        ehr.add_canned("Patient/p1", 200, body)
        outcome = client.fetch_all(ehr.base_url, {"p": "Patient/p1"}, authorization=None, budget_ms=5000)["p"]
    if family is None:
        assert outcome.error is not None and outcome.error.startswith("not JSON from"), outcome.error
    else:
        assert outcome.ok, outcome.error
        assert outcome.resource["name"][0]["family"] == family
