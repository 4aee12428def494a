"""The JSON Schemas of the wire format, loaded once and compiled into validators."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

_SCHEMA_FILES = (
    "defs",
    "hook-request",
    "context-patient-view",
    "context-order-select",
    "context-order-sign",
    "response",
)


def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema file ``<name>.json`` shipped in this package."""
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def registry() -> Registry:
    """Every schema of the package by its ``$id``: the validators and the request module's inlining of
    ``$ref`` resolve references through it."""
    schemas = [load_schema(name) for name in _SCHEMA_FILES]
    return Registry().with_resources((schema["$id"], Resource.from_contents(schema)) for schema in schemas)


@cache
def validator(name: str) -> Draft202012Validator:
    """A compiled validator for one schema, with cross-file ``$ref`` resolved through the registry."""
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry())
