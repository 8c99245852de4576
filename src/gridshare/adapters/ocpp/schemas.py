"""The one loader of the official OCPP JSON schemas (shipped with the ``ocpp`` package).

Each schema is compiled once with fastjsonschema (~20 µs a message instead of ~320 µs for
jsonschema); every validation in the adapter goes through :func:`schema_violation`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp

from gridshare.ocpp_version import OcppVersion

_SCHEMA_DIRS = {OcppVersion.V16: "v16", OcppVersion.V201: "v201", OcppVersion.V21: "v21"}

SCHEMA_RULE_KIND = {
    "type": "type",
    "required": "required",
    "additionalProperties": "format",
    "minItems": "occurrence",
    "maxItems": "occurrence",
    "enum": "property",
    "maxLength": "property",
    "minLength": "property",
    "minimum": "property",
    "maximum": "property",
    "exclusiveMinimum": "property",
    "exclusiveMaximum": "property",
    "pattern": "property",
    "multipleOf": "property",
    "format": "property",
}
"""A failed schema rule → the semantic error kind (a key of frames.ERROR_CODES)."""


def _strip_multiple_of(node: Any) -> Any:
    """Drop ``multipleOf``: binary floats fail it (21.4 / 0.1 ≠ 214) and we accept any
    precision a charger sends; our own outbound 1.6 limits are rounded by the builders."""
    if isinstance(node, dict):
        return {k: _strip_multiple_of(v) for k, v in node.items() if k != "multipleOf"}
    if isinstance(node, list):
        return [_strip_multiple_of(v) for v in node]
    return node


def schema_path(version: OcppVersion, action: str, *, response: bool) -> Path:
    """Where the package keeps the official schema of ``action`` (request or response)."""
    if response:
        name = f"{action}Response"
    else:
        name = action if version is OcppVersion.V16 else f"{action}Request"
    return Path(ocpp.__file__).parent / _SCHEMA_DIRS[version] / "schemas" / f"{name}.json"


def load_schema(version: OcppVersion, action: str, *, response: bool) -> Any | None:
    """The schema as published (None when the action has none in this version)."""
    try:
        with schema_path(version, action, response=response).open(encoding="utf-8-sig") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@functools.cache
def _compiled(version: OcppVersion, action: str, response: bool) -> Callable[[Any], Any] | None:
    schema = load_schema(version, action, response=response)
    if schema is None:
        return None
    validate: Callable[[Any], Any] = fastjsonschema.compile(_strip_multiple_of(schema),
                                                            use_formats=False)
    return validate


def schema_violation(version: OcppVersion, action: str, payload: Any, *,
                     response: bool = False) -> tuple[str, str] | None:
    """None when ``payload`` is valid; otherwise (error kind, description).

    Unknown actions have no schema and pass: routing answers NotImplemented. Date-time
    formats are not checked here (many chargers omit the zone); the handlers parse
    timestamps themselves and reject what they cannot read.
    """
    validate = _compiled(version, action, response)
    if validate is None:
        return None
    try:
        validate(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        return SCHEMA_RULE_KIND.get(exc.rule or "", "format"), exc.message
    return None
