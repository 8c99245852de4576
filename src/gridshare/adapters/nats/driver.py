"""Charger commands across processes: the controller's driver and the gateway's server, over
NATS request/reply on ``gridshare.<site>.cmd`` (core NATS, not stored: a setpoint is only
worth sending while it is fresh).

Request: ``{"op": "setpoint", "charger", "connector", "current_a", "lease_s"}``,
``{"op": "failsafe", "charger", "current_a"}`` or ``{"op": "cap", "charger",
"current_a"|null}``. Reply: the :class:`gridshare.drivers.CommandOutcome` as ``{"result",
"sent", "valid_to", "answer_seq", "detail"}``.

A request no gateway answers in time is an *unknown* outcome (``timeout``, sent): the
gateway may have sent the profile to the charger, and the controller's ledger counts an
unknown outcome at the larger of old and new. When no gateway listens at all (NATS says
"no responders"), nothing was sent: ``offline``, not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from gridshare.adapters.nats import codec
from gridshare.adapters.nats.bus import NatsBus
from gridshare.drivers import ChargerDriver, CommandOutcome, CommandResult, SetpointRequest
from gridshare.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 35.0
"""Longer than the gateway's own OCPP timeout and retries, so a normal answer comes back."""


def outcome_to_json(outcome: CommandOutcome) -> bytes:
    return json.dumps({
        "result": outcome.result.value, "sent": outcome.sent,
        "valid_to": outcome.valid_to.isoformat() if outcome.valid_to else None,
        "answer_seq": outcome.answer_seq, "detail": outcome.detail},
        separators=(",", ":")).encode()


def outcome_from_json(payload: bytes) -> CommandOutcome:
    data = json.loads(payload)
    valid_to = data.get("valid_to")
    return CommandOutcome(CommandResult(data["result"]), sent=bool(data.get("sent", True)),
                          valid_to=datetime.fromisoformat(valid_to) if valid_to else None,
                          answer_seq=data.get("answer_seq"), detail=str(data.get("detail", "")))


class NatsChargerDriver:
    """:class:`gridshare.drivers.ChargerDriver` for a controller in another process than
    the site's OCPP gateway."""

    def __init__(self, bus: NatsBus, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.bus = bus
        self.subject = codec.command_subject(bus.site)
        self.timeout_s = timeout_s
        self.sent = 0
        self.unknown = 0

    async def _request(self, body: dict[str, Any]) -> CommandOutcome:
        await self.bus.connect()
        nc = self.bus._nc
        assert nc is not None
        self.sent += 1
        try:
            reply = await nc.request(self.subject, json.dumps(body).encode(),
                                     timeout=self.timeout_s)
        except nats.errors.NoRespondersError:
            return CommandOutcome(CommandResult.OFFLINE, sent=False,
                                  detail="no OCPP gateway serves this site")
        except (nats.errors.TimeoutError, TimeoutError):
            self.unknown += 1
            return CommandOutcome(CommandResult.TIMEOUT, detail="no answer from the gateway")
        except Exception as exc:
            # The request may have left before the link broke: unknown, not "not sent".
            self.unknown += 1
            return CommandOutcome(CommandResult.LOST, detail=f"NATS: {exc!r}")
        try:
            return outcome_from_json(reply.data)
        except (ValueError, KeyError, TypeError) as exc:
            self.unknown += 1
            return CommandOutcome(CommandResult.LOST, detail=f"bad gateway answer: {exc}")

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        return [asyncio.ensure_future(self.apply_setpoint(r.charger, r.connector, r.current_a,
                                                          r.lease_s)) for r in requests]

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        return await self._request({"op": "setpoint", "charger": charger,
                                    "connector": connector, "current_a": current_a,
                                    "lease_s": lease_s})

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        return await self._request({"op": "failsafe", "charger": charger,
                                    "current_a": current_a})

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        return await self._request({"op": "cap", "charger": charger, "current_a": current_a})


class CommandServer:
    """The gateway's side: runs each request on its local driver (the CSMS) and answers
    with the outcome. Requests are served concurrently (one charger's slow answer does not
    hold up another's); a bad request is answered ``rejected`` with the reason."""

    def __init__(self, bus: NatsBus, driver: ChargerDriver) -> None:
        self.bus = bus
        self.driver = driver
        self.subject = codec.command_subject(bus.site)
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.served = 0
        self.bad = 0

    async def start(self) -> None:
        await self.bus.connect()
        nc = self.bus._nc
        assert nc is not None
        # A queue group: several gateways of one site (behind a load balancer) answer each
        # command once.
        self._sub = await nc.subscribe(self.subject, queue="gateway", cb=self._on_msg)
        await nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        await cancel_and_wait(list(self._tasks), swallow_errors=True)

    async def _on_msg(self, msg: Msg) -> None:
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        try:
            outcome = await self._run(json.loads(msg.data))
        except (ValueError, KeyError, TypeError) as exc:
            self.bad += 1
            outcome = CommandOutcome(CommandResult.REJECTED, sent=False,
                                     detail=f"bad command: {exc}")
        self.served += 1
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(outcome_to_json(outcome))

    async def _run(self, body: dict[str, Any]) -> CommandOutcome:
        op = body["op"]
        charger = str(body["charger"])
        current: Any = body.get("current_a")
        if op == "setpoint":
            return await self.driver.apply_setpoint(charger, int(body["connector"]),
                                                    float(current), float(body["lease_s"]))
        if op == "failsafe":
            return await self.driver.apply_failsafe(charger, float(current))
        if op == "cap":
            return await self.driver.apply_charger_cap(
                charger, None if current is None else float(current))
        raise ValueError(f"unknown op {op!r}")
