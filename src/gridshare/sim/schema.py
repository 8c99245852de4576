"""Fast JSON-schema validation of OCPP frames for the simulator.

The ``ocpp`` package validates every frame with ``jsonschema`` in a thread pool (≈ 0.4 ms
each, measured). A simulator running thousands of chargers sends and receives a lot of
frames, so it validates against the *same* official schema files shipped with the package,
compiled once with ``fastjsonschema`` (≈ 0.02 ms each), and tells the package to skip its
own pass. Invalid frames raise the same :class:`ocpp.exceptions.OCPPError` subclasses the
package would raise.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp
from ocpp.exceptions import (
    FormatViolationError,
    OCPPError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.exceptions import (
    NotImplementedError as OCPPNotImplementedError,
)

_SCHEMAS = Path(ocpp.__file__).parent


@functools.cache
def _validator(version: str, action: str, response: bool) -> Callable[[Any], Any]:
    folder = "v16" if version == "1.6" else "v201"
    suffix = "Response" if response else ("" if version == "1.6" else "Request")
    path = _SCHEMAS / folder / "schemas" / f"{action}{suffix}.json"
    schema = json.loads(path.read_text(encoding="utf-8-sig"))
    return fastjsonschema.compile(schema)


def validate(version: str, action: str, payload: Any, *, response: bool) -> None:
    """Raise the OCPPError the ocpp package would raise if ``payload`` is invalid."""
    try:
        check = _validator(version, action, response)
    except OSError as e:
        raise OCPPNotImplementedError(
            details={"cause": f"No schema for {action} in OCPP {version}"}
        ) from e
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as e:
        raise _as_ocpp_error(e, action) from e


def _as_ocpp_error(e: fastjsonschema.JsonSchemaValueException, action: str) -> OCPPError:
    details = {"cause": f"{action}: {e.message}"}
    if e.rule in ("type", "maxLength"):
        return TypeConstraintViolationError(details=details)
    if e.rule == "required":
        return ProtocolError(details=details)
    return FormatViolationError(details=details)
