"""Helpers for the CSMS tests: real ``ocpp`` client ChargePoints and event recording.

Client ChargePoints validate every frame we send against the official schemas (the
package's default), so each end-to-end test also checks our responses and profiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect

from gridshare.adapters.ocpp import CentralSystem
from gridshare.events import Event

VERSIONS = ("ocpp1.6", "ocpp2.0.1")


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_iso(offset_s: float = 0.0) -> str:
    return iso(datetime.now(UTC) + timedelta(seconds=offset_s))


class Recorder:
    """The publish callback: keeps events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[Any], charger: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)
                and (charger is None or getattr(e, "charger", None) == charger)]

    async def wait_for(self, predicate: Callable[[Event], bool], within_s: float = 5.0) -> Event:
        async with asyncio.timeout(within_s):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def wait_kind(self, kind: type[Any], charger: str | None = None,
                        count: int = 1, within_s: float = 5.0) -> list[Any]:
        async with asyncio.timeout(within_s):
            while len(found := self.of(kind, charger)) < count:
                self._changed.clear()
                await self._changed.wait()
        return found


class RecordingMixin:
    """Keeps every raw frame the client receives (for wire-exact assertions)."""

    frames: list[str]

    async def route_message(self, raw_msg: str) -> None:
        self.frames.append(raw_msg)
        await super().route_message(raw_msg)  # type: ignore[misc]

    def calls(self, action: str) -> list[dict[str, Any]]:
        out = []
        for frame in self.frames:
            message = json.loads(frame)
            if message[0] == 2 and message[2] == action:
                out.append(message[3])
        return out


class Behaviour:
    """How a test charger answers smart-charging calls."""

    def __init__(self, status: str = "Accepted", delay_s: float = 0.0, hang: bool = False,
                 call_error: bool = False, schedule: dict[str, Any] | None = None,
                 delays_s: list[float] | None = None) -> None:
        self.status = status
        self.delay_s = delay_s
        self.delays_s = list(delays_s or [])
        """Per-call delays used first (then ``delay_s``)."""
        self.hang = hang
        self.call_error = call_error
        self.schedule = schedule

    async def wait(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        delay = self.delays_s.pop(0) if self.delays_s else self.delay_s
        if delay:
            await asyncio.sleep(delay)
        if self.call_error:
            from ocpp.exceptions import GenericError
            raise GenericError(description="test charger refuses")


class Client16(RecordingMixin, ChargePoint16):
    def __init__(self, cid: str, ws: ClientConnection, behaviour: Behaviour | None = None):
        super().__init__(cid, ws, response_timeout=5)
        self.ws = ws
        self.frames = []
        self.behaviour = behaviour or Behaviour()

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, **_: Any) -> Any:
        await self.behaviour.wait()
        return result16.SetChargingProfile(status=self.behaviour.status)

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(self, **_: Any) -> Any:
        await self.behaviour.wait()
        return result16.ClearChargingProfile(status=self.behaviour.status)

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(self, connector_id: int, **_: Any) -> Any:
        await self.behaviour.wait()
        if self.behaviour.schedule is None:
            return result16.GetCompositeSchedule(status="Rejected")
        return result16.GetCompositeSchedule(status="Accepted", connector_id=connector_id,
                                             schedule_start=now_iso(),
                                             charging_schedule=self.behaviour.schedule)


class Client201(RecordingMixin, ChargePoint201):
    def __init__(self, cid: str, ws: ClientConnection, behaviour: Behaviour | None = None):
        super().__init__(cid, ws, response_timeout=5)
        self.ws = ws
        self.frames = []
        self.behaviour = behaviour or Behaviour()

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, **_: Any) -> Any:
        await self.behaviour.wait()
        return result201.SetChargingProfile(status=self.behaviour.status)

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(self, **_: Any) -> Any:
        await self.behaviour.wait()
        return result201.ClearChargingProfile(status=self.behaviour.status)

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(self, evse_id: int, **_: Any) -> Any:
        await self.behaviour.wait()
        if self.behaviour.schedule is None:
            return result201.GetCompositeSchedule(status="Rejected")
        schedule = {"evseId": evse_id, "duration": 3600, "scheduleStart": now_iso(),
                    **self.behaviour.schedule}
        return result201.GetCompositeSchedule(status="Accepted", schedule=schedule)


Client = Client16 | Client201
CsmsFactory = Callable[..., Awaitable[tuple[CentralSystem, "Recorder"]]]


class Msgs:
    """Version-neutral builders of the charger's calls, so tests can be parametrised."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.v16 = version == "ocpp1.6"

    def boot(self, vendor: str = "Acme", model: str = "Wallbox") -> Any:
        if self.v16:
            return call16.BootNotification(charge_point_model=model, charge_point_vendor=vendor)
        return call201.BootNotification(
            charging_station={"model": model, "vendor_name": vendor}, reason="PowerUp")

    def heartbeat(self) -> Any:
        return call16.Heartbeat() if self.v16 else call201.Heartbeat()

    def status(self, connector: int, status: str, timestamp: str | None = None) -> Any:
        if self.v16:
            return call16.StatusNotification(connector_id=connector, error_code="NoError",
                                             status=status, timestamp=timestamp)
        return call201.StatusNotification(timestamp=timestamp or now_iso(),
                                          connector_status=status, evse_id=connector,
                                          connector_id=1)

    def sampled(self, measurand: str, value: float, unit: str,
                phase: str | None = None) -> dict[str, Any]:
        if self.v16:
            sv: dict[str, Any] = {"value": repr(value), "measurand": measurand, "unit": unit}
        else:
            sv = {"value": value, "measurand": measurand, "unitOfMeasure": {"unit": unit}}
        if phase:
            sv["phase"] = phase
        return sv

    def meter_values(self, connector: int, elements: list[tuple[str, list[dict[str, Any]]]],
                     transaction_id: int | None = None) -> Any:
        mv = [{"timestamp": ts, "sampled_value": svs} for ts, svs in elements]
        if self.v16:
            return call16.MeterValues(connector_id=connector, meter_value=mv,
                                      transaction_id=transaction_id)
        return call201.MeterValues(evse_id=connector, meter_value=mv)


@contextlib.asynccontextmanager
async def charger(csms: CentralSystem, cid: str, version: str,
                  behaviour: Behaviour | None = None, **connect_kw: Any) -> AsyncIterator[Any]:
    """A connected client ChargePoint whose receive loop runs in a task."""
    scheme = "wss" if "ssl" in connect_kw else "ws"
    async with connect(f"{scheme}://127.0.0.1:{csms.port}/{cid}", subprotocols=[version],
                       open_timeout=5, **connect_kw) as ws:
        cls = Client16 if version == "ocpp1.6" else Client201
        cp = cls(cid, ws, behaviour)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@contextlib.asynccontextmanager
async def raw_socket(csms: CentralSystem, cid: str, version: str) -> AsyncIterator[Any]:
    async with connect(f"ws://127.0.0.1:{csms.port}/{cid}", subprotocols=[version],
                       open_timeout=5, max_size=None) as ws:
        yield ws


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll a condition that no event signals (frames a client received)."""
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the condition
            await asyncio.sleep(0.005)


async def exchange(ws: ClientConnection, frame: str | bytes, within_s: float = 5.0) -> Any:
    await ws.send(frame)
    async with asyncio.timeout(within_s):
        return json.loads(await ws.recv())
