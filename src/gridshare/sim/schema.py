"""The official OCPP JSON schemas, compiled once, for the simulator's frames.

The schema files are the ones shipped with the ``ocpp`` package (the package is used for
its schema files only, never for its RPC engine). They are compiled here rather than
through the CSMS adapter's loader on purpose: the simulator is the CSMS's independent
counterpart, so it checks the CSMS's frames strictly (date-time formats, 1.6's one-decimal
limits) instead of sharing the adapter's lenient choices for what real chargers send.

``jsonschema`` takes ≈ 0.4 ms per frame, measured; ``fastjsonschema`` compiles each schema
once into a function that takes ≈ 0.02 ms, which matters when one process simulates
thousands of chargers.
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

_SCHEMA_ROOT = Path(ocpp.__file__).parent


class SchemaViolation(Exception):
    """A payload breaks its action's schema; ``rule`` is the JSON-schema keyword that failed
    (``type``, ``required``, ``enum``, ...), which decides the OCPP error code."""

    def __init__(self, action: str, rule: str, message: str) -> None:
        super().__init__(f"{action}: {message}")
        self.action = action
        self.rule = rule


def _schema_path(version: OcppVersion, action: str, response: bool) -> Path:
    folder = {"ocpp1.6": "v16", "ocpp2.0.1": "v201", "ocpp2.1": "v21"}[version]
    suffix = "Response" if response else ("" if version == "ocpp1.6" else "Request")
    return _SCHEMA_ROOT / folder / "schemas" / f"{action}{suffix}.json"


@functools.cache
def _validator(version: OcppVersion, action: str, response: bool) -> Callable[[Any], Any]:
    schema = json.loads(_schema_path(version, action, response).read_text(encoding="utf-8-sig"))
    return fastjsonschema.compile(schema)


@functools.cache
def actions(version: OcppVersion) -> frozenset[str]:
    """Every action ``version`` defines: those with an official request schema. (Listing
    the files is cheap; importing the package's Action enums costs ~0.15 s.)"""
    folder = _schema_path(version, "", response=False).parent
    suffix = "" if version == "ocpp1.6" else "Request"
    names = (p.stem for p in folder.glob("*.json") if not p.stem.endswith("Response"))
    return frozenset(n.removesuffix(suffix) for n in names if n.endswith(suffix))


def validate(version: OcppVersion, action: str, payload: Any, *, response: bool) -> None:
    """Raise :class:`SchemaViolation` unless ``payload`` fits the official schema of
    ``action`` (its request, or with ``response`` its response)."""
    check = _validator(version, action, response)
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as e:
        raise SchemaViolation(action, str(e.rule or ""), e.message) from e


@functools.cache
def checker(version: OcppVersion, action: str, response: bool) -> Callable[[Any], None]:
    """:func:`validate` bound to one schema, for a caller that checks many frames of the
    same action (one cache lookup instead of one per frame)."""
    check = _validator(version, action, response)
    error = fastjsonschema.JsonSchemaValueException

    def run(payload: Any) -> None:
        try:
            check(payload)
        except error as e:
            raise SchemaViolation(action, str(e.rule or ""), e.message) from e

    return run


_KNOWN_VALID_MAX = 4096
_known_valid: set[tuple[str, str, bool, str]] = set()


def validate_serialized(
    version: OcppVersion, action: str, payload: Any, text: str, *, response: bool
) -> None:
    """:func:`validate` for a payload whose JSON text ``text`` is at hand: a text already
    found valid for the same schema is not checked again. (A charger answers the same
    few payloads, ``{"status":"Accepted"}``, thousands of times; equal JSON text is an
    equal JSON value, so the verdict is the same.)"""
    key = (version, action, response, text)
    if key in _known_valid:
        return
    checker(version, action, response)(payload)
    if len(_known_valid) < _KNOWN_VALID_MAX:
        _known_valid.add(key)
