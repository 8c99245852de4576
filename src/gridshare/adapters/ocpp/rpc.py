"""The OCPP-J RPC layer we own: routing of inbound calls, correlation of our own calls,
and one writer for the frames of every connection.

- Routing: an action this version does not define is answered ``NotImplemented``, one it
  defines but we do not handle ``NotSupported`` (OCPP-J 1.6 §4.2.3, 2.0.1 part 4 §4.3; the
  ``ocpp`` package 2.1.0 swaps the two). Payloads are validated with the official schemas.
- Correlation: one call in flight per charger (OCPP-J), matched by message id, with a
  timeout from the event loop's timer (no task per call).
- Writing: :class:`FrameWriter` writes the queued frames of many connections from one task
  per event-loop pass, so a batch of 1,000 setpoints costs no task hop and no lock per
  charger; a connection whose socket is backed up drains in its own task.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ocpp.v16.enums import Action as Action16
from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action as Action201
from websockets.exceptions import ConnectionClosed

from gridshare.ocpp_version import OcppVersion

from .frames import ERROR_CODES, InboundCall
from .handlers import HANDLERS, Handler
from .schemas import schema_violation

LOG = logging.getLogger("gridshare.ocpp")

KNOWN_ACTIONS: Mapping[OcppVersion, frozenset[str]] = {
    OcppVersion.V16: frozenset(a.value for a in Action16),
    OcppVersion.V201: frozenset(a.value for a in Action201),
    OcppVersion.V21: frozenset(a.value for a in Action21),
}
"""Every action the version defines, in either direction."""

NOT_IMPLEMENTED = "NotImplemented"
"""OCPP-J: the requested action is not known by the receiver."""
NOT_SUPPORTED = "NotSupported"
"""OCPP-J: the requested action is recognised but not supported by the receiver."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an inbound call gets a CALLERROR instead of reaching a handler."""

    code: str
    description: str
    counter: str
    """Counter key for the operator (EventCounters)."""


@dataclass(frozen=True, slots=True)
class Routed:
    """A valid call and its handler; ``payload`` with snake_case keys."""

    handler: Handler
    payload: dict[str, Any]


_WORD = re.compile(r"(.)([A-Z][a-z]+)")
_HUMP = re.compile(r"([a-z0-9])([A-Z])(?=\S)")


@functools.lru_cache(maxsize=4096)
def snake_key(key: str) -> str:
    """camelCase → snake_case as the ``ocpp`` package spells it (``evseId`` → ``evse_id``);
    cached, since the schemas allow only a few hundred keys."""
    key = key.replace("ocppCSMSURL", "ocpp_csms_url").replace("V2X", "_v2x")
    key = key.replace("V2G", "_v2g")
    return _HUMP.sub(r"\1_\2", _WORD.sub(r"\1_\2", key)).lower()


def snake_keys(data: Any) -> Any:
    """``data`` with every object key in snake_case (what the handlers read)."""
    if isinstance(data, dict):
        return {snake_key(k): snake_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [snake_keys(v) for v in data]
    return data


def route(version: OcppVersion, call: InboundCall) -> Routed | Refusal:
    """The handler of a call, or the CALLERROR it gets (unknown, unhandled, invalid)."""
    handler = HANDLERS[version].get(call.action)
    if handler is None:
        if call.action in KNOWN_ACTIONS[version]:
            return Refusal(NOT_SUPPORTED, f"{call.action} is not supported",
                           f"call_{NOT_SUPPORTED}")
        return Refusal(NOT_IMPLEMENTED, f"unknown action {call.action[:64]!r}",
                       f"call_{NOT_IMPLEMENTED}")
    violation = schema_violation(version, call.action, call.payload)
    if violation is not None:
        kind, description = violation
        return Refusal(ERROR_CODES[version][kind], description, f"schema_{kind}")
    return Routed(handler, snake_keys(call.payload))


# --- our own calls ------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class PendingCall:
    """The one call in flight on a connection, waiting for its answer or its timeout."""

    unique_id: str
    action: str
    sent_at: float
    """perf_counter() when it was queued for writing (for the latency statistics)."""
    written: bool = False
    """Its frame reached the socket: from then on the charger may have applied it."""


Outgoing = tuple[str, PendingCall | None]
"""A frame to write, and the call it starts (None for answers to the charger's calls)."""


class Deadlines:
    """Call timeouts on one event-loop timer per time slot instead of one per call.

    A batch of 1,000 setpoints arms one timer, not 1,000. A callback fires up to
    ``slot_s`` late; callbacks are never cancelled, so each must ignore a call that was
    settled in the meantime.
    """

    def __init__(self, slot_s: float = 0.05) -> None:
        self.slot_s = slot_s
        self._slots: dict[int, list[Callable[[], None]]] = {}

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + delay_s) / self.slot_s)
        callbacks = self._slots.get(slot)
        if callbacks is None:
            callbacks = self._slots[slot] = []
            loop.call_at(slot * self.slot_s, self._fire, slot)
        callbacks.append(callback)

    def _fire(self, slot: int) -> None:
        for callback in self._slots.pop(slot, ()):
            try:
                callback()
            except Exception:  # one call's bug must not keep the others from timing out
                LOG.exception("call timeout handler failed")


# --- writing --------------------------------------------------------------------------------


class Outlet(Protocol):
    """What the writer needs from a connection: its socket and its queue of frames."""

    outbox: deque[Outgoing]
    draining: bool

    async def send_now(self, frame: str) -> None: ...
    def backed_up(self) -> bool: ...
    def spawn_drain(self) -> None: ...


class FrameWriter:
    """Writes queued frames of many connections from one task per event-loop pass."""

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
                 ) -> None:
        self._spawn = spawn
        self._ready: dict[Outlet, None] = {}
        self._task: asyncio.Task[Any] | None = None

    def ready(self, outlet: Outlet) -> None:
        """``outlet`` has frames in its outbox: write them on the next loop pass."""
        self._ready[outlet] = None
        if self._task is None:
            self._task = self._spawn(self._flush(), "ocpp-writer")

    async def _flush(self) -> None:
        try:
            while self._ready:
                batch = list(self._ready)
                self._ready.clear()
                for outlet in batch:
                    await drain(outlet)
        finally:
            self._task = None


async def drain(outlet: Outlet) -> None:
    """Write ``outlet``'s queued frames in order. A connection whose socket is backed up is
    handed to a task of its own (which then owns its outbox), so it delays no other."""
    if outlet.draining:
        return
    while outlet.outbox:
        if outlet.backed_up():
            outlet.spawn_drain()
            return
        if not await write_next(outlet):
            return


async def write_next(outlet: Outlet) -> bool:
    """Write the oldest queued frame; False when the connection is closed (its receive
    loop sees the close and settles every call, unwritten ones as never sent)."""
    frame, call = outlet.outbox.popleft()
    try:
        await outlet.send_now(frame)
    except ConnectionClosed:
        outlet.outbox.clear()
        return False
    except Exception:  # a bug must not stop the frames of every other charger; the calls
        # whose frames are dropped time out: an unknown outcome, the safe side
        LOG.exception("writing a frame failed; dropping this connection's queued frames")
        outlet.outbox.clear()
        return False
    if call is not None:
        call.written = True
    return True
