"""OCPP-J framing: decode an inbound WebSocket message before it reaches a handler.

Everything a charger can get wrong in the framing is caught here and turned into the
version's CallError code (or a counted drop when no message id can be read); payloads are
then checked against the official schemas (schemas.py) by the RPC layer (rpc.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from gridshare.ocpp_version import V16, V21, V201, OcppVersion

MAX_UNIQUE_ID_CHARS = 36
"""OCPP 2.0.1 messageId maxLength; 1.6 chargers use UUIDs too."""

_CALL_ID_RE = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"')
"""The id of something that starts like a CALL: used when the rest cannot be parsed."""

# Semantic error kind → CallError code per version. 1.6 spells FormationViolation and
# OccurenceConstraintViolation (sic); 2.0.1 added RpcFrameworkError/MessageTypeNotSupported.
ERROR_CODES: dict[OcppVersion, dict[str, str]] = {
    V16: {
        "rpc": "FormationViolation",
        "message_type": "FormationViolation",
        "format": "FormationViolation",
        "required": "ProtocolError",
        "occurrence": "OccurenceConstraintViolation",
        "type": "TypeConstraintViolation",
        "property": "PropertyConstraintViolation",
        "internal": "InternalError",
    },
    V201: {
        "rpc": "RpcFrameworkError",
        "message_type": "MessageTypeNotSupported",
        "format": "FormatViolation",
        "required": "OccurrenceConstraintViolation",
        "occurrence": "OccurrenceConstraintViolation",
        "type": "TypeConstraintViolation",
        "property": "PropertyConstraintViolation",
        "internal": "InternalError",
    },
}
ERROR_CODES[V21] = ERROR_CODES[V201]  # 2.1 keeps 2.0.1's RPC error codes

@dataclass(frozen=True, slots=True)
class InboundCall:
    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InboundResult:
    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InboundError:
    unique_id: str
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame we refuse. ``reply_id`` None means: count, log, drop (nobody to answer)."""

    reason: str
    """Counter key, e.g. "frame_invalid_json"."""
    kind: str
    """Key into ERROR_CODES."""
    description: str
    reply_id: str | None

    def code(self, version: OcppVersion) -> str:
        return ERROR_CODES[version][self.kind]


Inbound = InboundCall | InboundResult | InboundError | BadFrame


def _readable_call_id(text: str) -> str | None:
    match = _CALL_ID_RE.match(text[:200])
    return match.group(1) if match else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_UNIQUE_ID_CHARS


def decode_frame(raw: str | bytes, *, protocol: OcppVersion, max_bytes: int) -> Inbound:
    """Parse one WebSocket message into a typed OCPP-J message or a :class:`BadFrame`.

    ``protocol`` decides only what can be answered: OCPP 2.0.1 answers an unreadable frame
    with RpcFrameworkError and messageId "-1"; 1.6 has no such rule, so it is dropped.
    """
    unreadable_id = "-1" if protocol.v2 else None
    if isinstance(raw, bytes):
        return BadFrame("frame_binary", "rpc", "OCPP-J uses text frames", unreadable_id)
    size = len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return BadFrame("frame_oversized", "format",
                        f"message of {size} bytes exceeds {max_bytes}", _readable_call_id(raw))
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        return BadFrame("frame_invalid_json", "rpc", "message is not valid JSON",
                        _readable_call_id(raw) or unreadable_id)
    if not isinstance(message, list) or not message:
        return BadFrame("frame_not_array", "rpc", "message is not a non-empty JSON array",
                        unreadable_id)
    type_id = message[0]
    unique_id = message[1] if len(message) > 1 else None
    reply_id = unique_id if _valid_id(unique_id) else unreadable_id
    if not _is_int(type_id):
        return BadFrame("frame_bad_type_id", "rpc", "MessageTypeId is not an integer", reply_id)
    if type_id == 2:
        if len(message) != 4 or not _valid_id(unique_id) or not isinstance(message[2], str):
            return BadFrame("frame_bad_call", "rpc",
                            "CALL must be [2, messageId (1-36 chars), action, payload]",
                            reply_id)
        if not isinstance(message[3], dict):
            return BadFrame("frame_bad_payload", "format", "payload must be a JSON object",
                            unique_id)
        return InboundCall(unique_id, message[2], message[3])
    if type_id == 3:
        if len(message) != 3 or not _valid_id(unique_id) or not isinstance(message[2], dict):
            return BadFrame("frame_bad_callresult", "rpc", "malformed CALLRESULT", None)
        return InboundResult(unique_id, message[2])
    if type_id == 4:
        if (len(message) != 5 or not _valid_id(unique_id) or not isinstance(message[2], str)
                or not isinstance(message[3], str) or not isinstance(message[4], dict)):
            return BadFrame("frame_bad_callerror", "rpc", "malformed CALLERROR", None)
        return InboundError(unique_id, message[2], message[3], message[4])
    return BadFrame("frame_unknown_type_id", "message_type",
                    f"MessageTypeId {type_id} is not supported", reply_id)


def call_error_frame(unique_id: str, code: str, description: str,
                     details: dict[str, Any] | None = None) -> str:
    return json.dumps([4, unique_id, code, description, details or {}],
                      separators=(",", ":"), allow_nan=False)


def call_result_frame(unique_id: str, payload: dict[str, Any]) -> str:
    return json.dumps([3, unique_id, payload], separators=(",", ":"), allow_nan=False)


def payload_json(payload: dict[str, Any]) -> str:
    """A payload as sent: compact separators, no NaN allowed."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def call_frame(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    """The OCPP-J CALL frame exactly as sent."""
    return json.dumps([2, unique_id, action, payload], separators=(",", ":"),
                      allow_nan=False)


def call_frame_from_json(unique_id: str, action: str, payload: str) -> str:
    """:func:`call_frame` around an already serialised payload; ``unique_id`` and
    ``action`` are ours (digits, an action name) and need no escaping."""
    return f'[2,"{unique_id}","{action}",{payload}]'
