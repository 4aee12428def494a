"""Reading FHIR Bundles and draft orders from files for the developer tools.

Fixtures and real exports arrive as Bundles of any type that carries resources (transaction, batch,
collection, searchset, document or message). A transaction Bundle
links its entries with ``urn:uuid:`` full URLs that only a FHIR server would turn into ``Type/id``
references; the offline replay has no server, so it does that rewriting itself, by the same rule as the
fixture loader (``cds_service.fhir.bundles``). Every problem with a file becomes a ``BundleError`` whose
message is one line naming the file, because the commands print it as is.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cds_service.devtools.offline import parse_fhir_instant
from cds_service.fhir.bundles import resolve_full_urls
from cds_service.fhir.read import array

BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset", "document", "message"})

# Resource types an EHR puts in draftOrders; anything else in an order file (a Medication, say) travels
# along as a supporting resource but is never selected or re-pointed at the patient.
ORDER_TYPES = frozenset(
    {
        "MedicationRequest",
        "ServiceRequest",
        "DeviceRequest",
        "NutritionOrder",
        "VisionPrescription",
        "CommunicationRequest",
        "ImmunizationRecommendation",
    }
)


# The largest file a replay reads (a Synthea record of a long life is tens of MB; parsed, a file takes about
# ten times its size in memory). Reading stops one byte past it, so /dev/zero or a multi-GB export is
# refused at once instead of being read until memory runs out.
MAX_FILE_BYTES = 256 * 1024 * 1024
# orjson reads JSON nested up to 1024 levels, but copying and answering it recurses (Python stops near 1000
# frames, orjson writes at most 254 levels): refused by name rather than as a RecursionError traceback.
MAX_NESTING = 200


class BundleError(ValueError):
    """A file cannot be used as asked; the message is one line and names the file."""


class NotABundleError(BundleError):
    """Valid JSON that is neither a Bundle nor a hook request: named on the command line it is an
    error, found in a folder (an expectations file, say) it is simply not a record to replay."""


@dataclass(frozen=True)
class PatientBundle:
    """One patient's record as loaded from a Bundle, references already resolved.

    Loaded from a hook request file (``hooks/``), it also carries that request's hook and draft orders,
    so an example can be replayed as it stands. ``timestamp`` is the Bundle's own: fixtures are written
    relative to that day, so it is the natural clinical "now" for replaying them.
    """

    path: Path
    patient: dict[str, Any]
    resources: tuple[dict[str, Any], ...]
    hook: str | None = None
    draft_orders: DraftOrders | None = None
    timestamp: datetime | None = None

    @property
    def patient_id(self) -> str:
        return str(self.patient["id"])

    @property
    def display_name(self) -> str:
        return patient_name(self.patient) or f"Patient/{self.patient_id}"


@dataclass(frozen=True)
class DraftOrders:
    """What an EHR sends as ``context.draftOrders`` (and ``selections`` for order-select)."""

    bundle: dict[str, Any]
    selections: tuple[str, ...]


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning every failure into a one-line BundleError."""
    try:
        data = read_at_most(path, MAX_FILE_BYTES)
    except FileTooLargeError as error:
        raise BundleError(f"{path}: larger than {size_text(error.limit)}; not read") from None
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: is a directory, expected a JSON file") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return parse_json(data)
    except JsonSyntaxError as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    except JsonFileError as error:
        raise BundleError(f"{path}: {error}") from None


class JsonFileError(ValueError):
    """A file's bytes are not JSON that the tools can read: another encoding, or nested too deep."""


class JsonSyntaxError(JsonFileError):
    """UTF-8 text that is not JSON; the message is the parser's, where it stopped."""


_UTF8_BOM = b"\xef\xbb\xbf"
_SAVE_AS_UTF8 = "FHIR JSON is UTF-8 (save the file as UTF-8)"


# Where the NULs of JSON's first two ASCII characters fall in UTF-32BE, UTF-16BE, UTF-32LE and UTF-16LE
# (RFC 4627, section 3): how a file without a byte order mark is told from UTF-8.
_WIDE_NULS = ((1, 1, 1, 0), (1, 0, 1, 0), (0, 1, 1, 1), (0, 1, 0, 1))


def _unmarked_utf16_or_32(head: bytes) -> bool:
    return len(head) == 4 and tuple(int(byte == 0) for byte in head) in _WIDE_NULS


def parse_json(data: bytes) -> Any:
    """A file's bytes as JSON, read as replay and load-fixtures both read files.

    A UTF-8 byte order mark, as Windows editors leave, is skipped. orjson reports any byte that is not
    UTF-8 as "str is not valid UTF-8: surrogates not allowed" at column 1, wherever it is: the error names
    the encoding or the byte instead. JSON nested deeper than MAX_NESTING is refused by name.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise JsonFileError(f"UTF-16 text; {_SAVE_AS_UTF8}")
    if _unmarked_utf16_or_32(data[:4]):
        raise JsonFileError(f"UTF-16 or UTF-32 text; {_SAVE_AS_UTF8}")
    text = data.removeprefix(_UTF8_BOM)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        try:
            text.decode()
        except UnicodeDecodeError as bad:
            offset = bad.start + len(data) - len(text)  # counted in the file, its byte order mark included
            raise JsonFileError(f"not UTF-8 text (byte {offset} is not UTF-8); {_SAVE_AS_UTF8}") from None
        raise JsonSyntaxError(str(exc).splitlines()[0] if str(exc) else "invalid JSON") from None
    if nested_deeper_than(parsed, MAX_NESTING):
        raise JsonFileError(
            f"JSON nested more than {MAX_NESTING} levels deep; FHIR resources need fewer than 20"
        )
    return parsed


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds objects or arrays nested more than ``limit`` levels (iterative, any depth)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


class FileTooLargeError(OSError):
    """A file (or device, or pipe) holds more than the reader's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


def read_at_most(path: Path, limit: int) -> bytes:
    """The file's bytes, or FileTooLargeError once more than ``limit`` of them have been read."""
    with path.open("rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(limit)
    return data


def size_text(count: int) -> str:
    """A byte count as a person reads it: 256 MiB, 64 KiB, 1000 bytes."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:g} {unit}"
    return f"{count} bytes"


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (not Python's 'NoneType' or 'str')."""
    if value is None:
        return "null"
    kinds = ((bool, "a boolean"), (int | float, "a number"), (str, "a string"), (list, "an array"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "an object")


def check_bundle(data: Any, where: str) -> None:
    """Raise BundleError unless ``data`` is a Bundle whose entries hold resources."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: not a FHIR Bundle (the JSON is {json_kind(data)}, not an object)")
    kind = data.get("resourceType")
    if kind != "Bundle":
        shown = f"a {kind}" if isinstance(kind, str) else "no resourceType"
        raise BundleError(f"{where}: not a FHIR Bundle ({shown})")
    if not isinstance(data.get("type"), str) or data["type"] not in BUNDLE_TYPES:
        raise BundleError(
            f"{where}: Bundle type {data.get('type')!r} is not one of {', '.join(sorted(BUNDLE_TYPES))}"
        )
    entries = data.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BundleError(f"{where}: Bundle.entry is not a list of entries")


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The Bundle's resources as a server would store them: every one with an id, references as Type/id.

    OperationOutcome entries of a searchset (``search.mode = outcome``) are messages about the search,
    not part of the record, and are left out.
    """
    entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    entries = [e for e in entries if _member(e, "search").get("mode") != "outcome"]
    resources = [copy.deepcopy(e["resource"]) for e in entries]
    for entry, resource in zip(entries, resources, strict=True):
        if isinstance(resource.get("resourceType"), str):
            resource["id"] = _entry_id(entry, resource)
    resolve_full_urls(
        (entry.get("fullUrl"), resource) for entry, resource in zip(entries, resources, strict=True)
    )
    return [r for r in resources if isinstance(r.get("resourceType"), str)]


def _member(entry: dict[str, Any], name: str) -> dict[str, Any]:
    """An entry's ``search`` or ``request`` when it is an object, else an empty one (ignored)."""
    value = entry.get(name)
    return value if isinstance(value, dict) else {}


def _entry_id(entry: dict[str, Any], resource: dict[str, Any]) -> str:
    """The id a server would keep: the resource's own, a PUT's, the urn:uuid, the URL's last segment."""
    if isinstance(resource.get("id"), str) and resource["id"]:
        return resource["id"]
    request_url = _member(entry, "request").get("url")
    if isinstance(request_url, str) and request_url.count("/") == 1 and "?" not in request_url:
        return request_url.split("/")[1]
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str):
        if full_url.startswith("urn:uuid:"):
            return full_url.removeprefix("urn:uuid:")
        if full_url.rstrip("/").count("/") >= 1 and not full_url.startswith("urn:"):
            return full_url.rstrip("/").rsplit("/", 1)[1]
    return str(uuid.uuid4())


def load_patient_bundle(path: Path) -> PatientBundle:
    """Load a Bundle that holds exactly one Patient and that patient's record, or a hook request file."""
    data = read_json(path)
    if isinstance(data, dict) and "hook" in data and "resourceType" not in data:
        return _load_hook_request(path, data)
    try:
        check_bundle(data, str(path))
    except BundleError as error:
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            raise NotABundleError(str(error)) from None
        raise
    resources = bundle_resources(data)
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    if not patients:
        raise BundleError(f"{path}: the Bundle holds no Patient resource")
    if len({p["id"] for p in patients}) > 1:
        raise BundleError(f"{path}: the Bundle holds {len(patients)} Patients; give one patient per Bundle")
    stamp = data.get("timestamp")
    timestamp = parse_fhir_instant(stamp) if isinstance(stamp, str) else None
    return PatientBundle(path=path, patient=patients[0], resources=tuple(resources), timestamp=timestamp)


def _load_hook_request(path: Path, request: dict[str, Any]) -> PatientBundle:
    """The record a hook request carries in its prefetch (each value a resource or a searchset Bundle)."""
    context = request.get("context")
    prefetch = request.get("prefetch")
    if not isinstance(context, dict) or not isinstance(context.get("patientId"), str):
        raise BundleError(f"{path}: the hook request has no context.patientId")
    if not isinstance(prefetch, dict) or not prefetch:
        raise BundleError(f"{path}: the hook request has no prefetch to replay")
    entries: list[dict[str, Any]] = []
    for key, value in prefetch.items():
        if value is None or (isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"):
            continue  # nothing found, or the client failed on this key: no record either way
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise BundleError(f"{path}: prefetch {key!r} is not a FHIR resource")
        if value["resourceType"] == "Bundle":
            check_bundle(value, f"{path} (prefetch {key!r})")
            entries.extend(e for e in value.get("entry", []) if isinstance(e.get("resource"), dict))
        else:
            entries.append({"resource": value})
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in bundle_resources({"resourceType": "Bundle", "type": "collection", "entry": entries}):
        unique[(resource["resourceType"], resource["id"])] = resource
    patient = unique.get(("Patient", context["patientId"]))
    if patient is None:
        raise BundleError(f"{path}: the prefetch holds no Patient/{context['patientId']}")
    drafts = None
    if isinstance(context.get("draftOrders"), dict):
        drafts = load_draft_orders(path, context["patientId"], request)
    hook = request["hook"] if isinstance(request["hook"], str) else None
    return PatientBundle(path, patient, tuple(unique.values()), hook=hook, draft_orders=drafts)


def patient_name(patient: dict[str, Any]) -> str:
    """A human name for a summary line: the official name if marked, else the first."""
    names = [n for n in array(patient.get("name")) if isinstance(n, dict)]
    if not names:
        return ""
    name = next((n for n in names if n.get("use") == "official"), names[0])
    if isinstance(name.get("text"), str) and name["text"].strip():
        return name["text"].strip()
    given = [g for g in array(name.get("given")) if isinstance(g, str)]
    family = name.get("family") if isinstance(name.get("family"), str) else ""
    return " ".join([*given, family]).strip()


def iter_bundle_files(paths: list[Path]) -> Iterator[tuple[Path, bool]]:
    """Expand directories into the JSON files directly inside them (sorted; subfolders are not entered,
    so a fixtures folder's ``orders/`` of draft-order Bundles stays out).

    Yields (path, explicit): files named on the command line are explicit; files found in a directory
    are not, so the caller may pass over the ones that are not Bundles (``NotABundleError``).
    """
    for path in paths:
        if path.is_dir():
            for child in sorted(path.glob("*.json")):
                if child.is_file():
                    yield child, False
        else:
            yield path, True


def load_draft_orders(path: Path, patient_id: str, data: Any = None) -> DraftOrders:
    """Draft orders from a resource file, a Bundle, or a hook request file (its context.draftOrders).

    The orders are re-pointed at ``patient_id`` so that one example order can be replayed against any
    patient; resources without an id get one, as an EHR's draft orders always have ids. ``data`` is the
    file's parsed JSON when it has been read already: a pipe (``--order <(...)``) can be read only once.
    """
    if data is None:
        data = read_json(path)
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a FHIR resource, a Bundle or a hook request object")
    requested: list[str] | None = None
    if "hook" in data and isinstance(data.get("context"), dict):
        draft = data["context"].get("draftOrders")
        if draft is None:
            raise BundleError(f"{path}: the hook request has no context.draftOrders")
        check_bundle(draft, f"{path} (context.draftOrders)")
        resources = bundle_resources(draft)
        selections = data["context"].get("selections")
        if isinstance(selections, list) and all(isinstance(s, str) for s in selections):
            requested = selections
    elif data.get("resourceType") == "Bundle":
        check_bundle(data, str(path))
        resources = bundle_resources(data)
    elif isinstance(data.get("resourceType"), str):
        resources = bundle_resources(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": data}]}
        )
    else:
        raise BundleError(f"{path}: not a FHIR resource (no resourceType)")

    orders = [r for r in resources if r["resourceType"] in ORDER_TYPES]
    if not orders:
        raise BundleError(f"{path}: no draft order in it (expected one of {', '.join(sorted(ORDER_TYPES))})")
    for order in orders:
        field = "patient" if "patient" in order or order["resourceType"] == "NutritionOrder" else "subject"
        order[field] = {"reference": f"Patient/{patient_id}"}
    refs = [f"{o['resourceType']}/{o['id']}" for o in orders]
    selections = tuple(s for s in requested if s in refs) if requested else tuple(refs)
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    return DraftOrders(bundle=bundle, selections=selections or tuple(refs))
