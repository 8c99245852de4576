"""OCPP-J RPC for a simulated charger: CALL / CALLRESULT / CALLERROR over one websocket.

The simulator owns this small layer instead of driving the ``ocpp`` package's RPC engine
through its private members: the package is used only for its enums and schema files. What
OCPP-J asks of a peer, and what this does:

* every CALL carries a unique id, and a charger has at most one CALL of its own in flight;
  an answer that does not come within the response timeout raises :class:`TimeoutError`;
* CALLs from the CSMS are routed by action through a handler table, one at a time in the
  order they arrive; an action the OCPP version does not define is answered
  ``NotImplemented``, one it defines but the charger does not handle ``NotSupported``
  (OCPP-J 1.6 §4.2.3, 2.0.1 part 4 §4.3);
* every frame is checked against the official schemas (:mod:`gridshare.sim.schema`) in
  both directions, and a bad one is answered with the matching error code.

Fault injection lives here too because only this layer sits between *applying* a request
and *answering* it: :class:`AnswerFate` lets the charger close its link, or lose the
answer on a half-open link, after the handler has already applied the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from enum import Enum, IntEnum
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gridshare.ocpp_version import OcppVersion
from gridshare.sim.schema import SchemaViolation, checker, validate_serialized

WIRE_LOG = logging.getLogger("gridshare.sim.wire")
"""Every frame of the simulated chargers at DEBUG, apart from any CSMS logger in the same
process."""

_encode = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(x, separators=(",", ":"))`` without building an encoder per frame."""

Payload = dict[str, Any]
Handler = Callable[[Payload], Payload]
"""Applies a request from the CSMS (its JSON payload, camelCase as on the wire) and returns
the response payload; raises :class:`CallError` to answer with a CALLERROR instead."""


class MessageType(IntEnum):
    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4


class CallError(Exception):
    """A CALLERROR: received from the CSMS for our CALL, or raised by a handler to send."""

    def __init__(self, code: str, description: str = "", details: Payload | None = None) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details or {}


class LinkClosed(ConnectionError):
    """The websocket closed while a CALL waited for its answer: its outcome is unknown."""


class AnswerFate(Enum):
    """What happens to the answer of a request the charger has just applied."""

    SEND = "send"
    """The normal case: the CALLRESULT goes out."""
    CLOSE_LINK = "close_link"
    """The link closes before the CALLRESULT is sent."""
    LOSE = "lose"
    """Half-open link: the CALLRESULT and every later frame in either direction are lost
    until a timeout (ours on a later CALL, or the CSMS's) ends the connection."""


def _violation_code(version: OcppVersion, rule: str) -> str:
    """OCPP-J error code for a payload that breaks a schema keyword."""
    if rule in ("type", "maxLength"):
        return "TypeConstraintViolation"
    if rule == "required":
        return "ProtocolError"  # "payload for action is incomplete"
    if rule in ("additionalProperties", "propertyNames"):
        return "FormationViolation" if version == "ocpp1.6" else "FormatViolation"
    if rule in ("minItems", "maxItems"):
        if version == "ocpp1.6":
            return "OccurenceConstraintViolation"  # sic: 1.6 spells it with one "r"
        return "OccurrenceConstraintViolation"
    return "PropertyConstraintViolation"


def _formation_code(version: OcppVersion) -> str:
    return "FormationViolation" if version == "ocpp1.6" else "FormatViolation"


class RpcConnection:
    """One websocket to the CSMS, seen as OCPP-J RPC. :meth:`serve` must run (one task)
    for answers and CSMS requests to arrive."""

    def __init__(
        self,
        ws: ClientConnection,
        version: OcppVersion,
        handlers: Mapping[str, Handler],
        *,
        known_actions: Collection[str],
        response_timeout_s: float,
        answer_fate: Callable[[str], AnswerFate] | None = None,
        answered: Callable[[str], None] | None = None,
        round_trip: Callable[[str, float], None] | None = None,
        new_id: Callable[[], str] | None = None,
        name: str = "",
    ) -> None:
        self.ws = ws
        self.version: OcppVersion = version
        self.handlers = handlers
        self.known_actions = known_actions
        self.response_timeout_s = response_timeout_s
        self.answer_fate = answer_fate
        self.answered = answered
        """Told the action once a request was applied and its CALLRESULT written (or lost
        to a fault): what must follow the answer (a reset's reboot) happens then."""
        self.round_trip = round_trip
        """Told ``(action, seconds)`` for every CALL of ours that got its CALLRESULT."""
        self.new_id = new_id or (lambda: str(uuid.uuid4()))
        self.name = name
        self.muted = False
        """Half-open: nothing goes out and whatever comes in is lost."""
        self._in_flight = asyncio.Lock()
        self._waiting: tuple[str, str, asyncio.Future[Payload]] | None = None

    # ------------------------------------------------------------------ our calls

    async def call(self, action: str, payload: Payload) -> Payload:
        """Send a CALL and return the CALLRESULT payload. Raises :class:`CallError` for a
        CALLERROR (or an answer that breaks the schema), :class:`TimeoutError` when no
        answer comes in time, :class:`LinkClosed` when the link closes first."""
        started = time.perf_counter()
        checker(self.version, action, False)(payload)  # our own bug if it fails
        async with self._in_flight:
            uid = self.new_id()
            answer: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
            self._waiting = (uid, action, answer)
            try:
                await self._send([MessageType.CALL, uid, action, payload])
                async with asyncio.timeout(self.response_timeout_s):
                    result = await answer
            except ConnectionClosed as e:
                raise LinkClosed(f"{action}: link closed") from e
            finally:
                self._waiting = None
        if self.round_trip is not None:
            self.round_trip(action, time.perf_counter() - started)
        return result

    def _resolve(self, frame: list[Any]) -> None:
        waiting = self._waiting
        if waiting is None or len(frame) < 3 or frame[1] != waiting[0]:
            WIRE_LOG.debug("%s: answer to no call in flight: %s", self.name, frame)
            return
        _, action, answer = waiting
        if answer.done():
            return
        if frame[0] == MessageType.CALLERROR:
            code = str(frame[2])
            description = str(frame[3]) if len(frame) > 3 else ""
            details = frame[4] if len(frame) > 4 and isinstance(frame[4], dict) else None
            answer.set_exception(CallError(code, description, details))
            return
        payload = frame[2]
        try:
            checker(self.version, action, True)(payload)
        except SchemaViolation as e:
            answer.set_exception(CallError(_violation_code(self.version, e.rule), str(e)))
            return
        answer.set_result(payload)

    # ------------------------------------------------------------------ receiving

    async def serve(self) -> None:
        """Read frames until the link closes; answers go to the waiting call, requests to
        their handlers."""
        try:
            async for raw in self.ws:
                if self.muted:
                    continue
                if WIRE_LOG.isEnabledFor(logging.DEBUG):
                    WIRE_LOG.debug("%s <- %s", self.name, raw)
                await self._receive(raw)
        except ConnectionClosed:
            pass
        finally:
            waiting = self._waiting
            if waiting is not None and not waiting[2].done():
                waiting[2].set_exception(LinkClosed(f"{waiting[1]}: link closed"))

    async def _receive(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            WIRE_LOG.warning("%s: frame is not JSON: %.200r", self.name, raw)
            return
        if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
            WIRE_LOG.warning("%s: not an OCPP-J frame: %.200r", self.name, raw)
            return
        kind = frame[0]
        if kind in (MessageType.CALLRESULT, MessageType.CALLERROR):
            self._resolve(frame)
            # let the caller act on its answer before the next frame (a CALL right behind a
            # StartTransaction result must find the transaction id), as frames arrived
            await asyncio.sleep(0)
        elif kind == MessageType.CALL:
            await self._answer(frame)
        else:
            code = "FormationViolation" if self.version == "ocpp1.6" else "MessageTypeNotSupported"
            await self._send_error(frame[1], CallError(code, f"message type {kind!r}"))

    async def _answer(self, frame: list[Any]) -> None:
        uid = frame[1]
        if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
            await self._send_error(uid, CallError(_formation_code(self.version), "bad CALL"))
            return
        action, payload = frame[2], frame[3]
        try:
            text = self._apply(action, payload)
        except CallError as e:
            await self._send_error(uid, e)
            return
        fate = self.answer_fate(action) if self.answer_fate is not None else AnswerFate.SEND
        if fate is AnswerFate.CLOSE_LINK:
            WIRE_LOG.info("%s: %s applied, link closes before its answer", self.name, action)
            await self.ws.close()
        elif fate is AnswerFate.LOSE:
            WIRE_LOG.info("%s: %s applied, its answer is lost (half-open link)", self.name, action)
            self.muted = True
        else:
            # what _send([CALLRESULT, uid, result]) would write, the result already encoded
            await self._send_text(f"[{MessageType.CALLRESULT:d},{_encode(uid)},{text}]")
        if self.answered is not None:
            self.answered(action)

    def _apply(self, action: str, payload: Payload) -> str:
        """Validate, handle and return the JSON text of the response payload."""
        handler = self.handlers.get(action)
        if handler is None:
            if action in self.known_actions:
                raise CallError("NotSupported", f"{action} is not supported by this charger")
            raise CallError("NotImplemented", f"{action} is not an OCPP {self.version} action")
        try:
            checker(self.version, action, False)(payload)
        except SchemaViolation as e:
            raise CallError(_violation_code(self.version, e.rule), str(e)) from e
        try:
            result = handler(payload)
            text = _encode(result)
            validate_serialized(self.version, action, result, text, response=True)
        except CallError:
            raise
        except Exception as e:
            WIRE_LOG.exception("%s: handling %s failed", self.name, action)
            raise CallError("InternalError", f"{action}: {type(e).__name__}") from e
        return text

    # ------------------------------------------------------------------ sending

    async def _send_error(self, uid: str, error: CallError) -> None:
        await self._send([MessageType.CALLERROR, uid, error.code, error.description, error.details])

    async def _send(self, frame: list[Any]) -> None:
        await self._send_text(_encode(frame))

    async def _send_text(self, text: str) -> None:
        if self.muted:
            return
        if WIRE_LOG.isEnabledFor(logging.DEBUG):
            WIRE_LOG.debug("%s -> %s", self.name, text)
        await self.ws.send(text)


__all__ = [
    "WIRE_LOG",
    "AnswerFate",
    "CallError",
    "Handler",
    "LinkClosed",
    "MessageType",
    "Payload",
    "RpcConnection",
]
