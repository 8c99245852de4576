"""A minimal, test-only central system for exercising the charger simulator.

Plain ``ocpp`` package server-side objects with the package's full (jsonschema) validation
left on, so every frame the simulator sends, and every answer it gives, is checked against
the official schemas by code that is not ours. It records what arrives and can send
requests (SetChargingProfile, GetCompositeSchedule, ...) to a connected charger.

Run as a script (``python sim_csms.py``) it serves on a free port, prints ``PORT <n>`` and
keeps only counters: the scale test runs it in a separate process so the memory it
measures is the simulator's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from websockets.asyncio.server import ServerConnection, basic_auth, serve


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True, slots=True)
class Msg:
    charger_id: str
    action: str
    payload: dict[str, Any]
    """snake_case keyword arguments as the ocpp package hands them to handlers."""
    at: float


class Central16(CP16):  # type: ignore[misc]
    csms: TestCSMS

    @on(A16.boot_notification)
    def _boot(self, **kw: Any) -> Any:
        self.csms.record(self.id, "BootNotification", kw)
        return r16.BootNotification(
            current_time=_now(), interval=self.csms.heartbeat_interval, status=self.csms.boot_status
        )

    @on(A16.heartbeat)
    def _hb(self, **kw: Any) -> Any:
        self.csms.record(self.id, "Heartbeat", kw)
        return r16.Heartbeat(current_time=_now())

    @on(A16.status_notification)
    def _status(self, **kw: Any) -> Any:
        self.csms.record(self.id, "StatusNotification", kw)
        return r16.StatusNotification()

    @on(A16.authorize)
    def _auth(self, **kw: Any) -> Any:
        self.csms.record(self.id, "Authorize", kw)
        return r16.Authorize(id_tag_info={"status": self.csms.auth_status})

    @on(A16.start_transaction)
    def _start(self, **kw: Any) -> Any:
        self.csms.record(self.id, "StartTransaction", kw)
        return r16.StartTransaction(
            transaction_id=next(self.csms.tx_ids), id_tag_info={"status": "Accepted"}
        )

    @on(A16.stop_transaction)
    def _stop(self, **kw: Any) -> Any:
        self.csms.record(self.id, "StopTransaction", kw)
        return r16.StopTransaction()

    @on(A16.meter_values)
    def _meter(self, **kw: Any) -> Any:
        self.csms.record(self.id, "MeterValues", kw)
        return r16.MeterValues()


class Central201(CP201):  # type: ignore[misc]
    csms: TestCSMS

    @on(A201.boot_notification)
    def _boot(self, **kw: Any) -> Any:
        self.csms.record(self.id, "BootNotification", kw)
        return r201.BootNotification(
            current_time=_now(), interval=self.csms.heartbeat_interval, status=self.csms.boot_status
        )

    @on(A201.heartbeat)
    def _hb(self, **kw: Any) -> Any:
        self.csms.record(self.id, "Heartbeat", kw)
        return r201.Heartbeat(current_time=_now())

    @on(A201.status_notification)
    def _status(self, **kw: Any) -> Any:
        self.csms.record(self.id, "StatusNotification", kw)
        return r201.StatusNotification()

    @on(A201.authorize)
    def _auth(self, **kw: Any) -> Any:
        self.csms.record(self.id, "Authorize", kw)
        return r201.Authorize(id_token_info={"status": self.csms.auth_status})

    @on(A201.transaction_event)
    def _tx(self, **kw: Any) -> Any:
        self.csms.record(self.id, "TransactionEvent", kw)
        return r201.TransactionEvent()

    @on(A201.meter_values)
    def _meter(self, **kw: Any) -> Any:
        self.csms.record(self.id, "MeterValues", kw)
        return r201.MeterValues()

    @on(A201.notify_ev_charging_needs)
    def _needs(self, **kw: Any) -> Any:
        self.csms.record(self.id, "NotifyEVChargingNeeds", kw)
        return r201.NotifyEVChargingNeeds(status="Accepted")


class TestCSMS:
    """Serve OCPP 1.6 and 2.0.1 on 127.0.0.1; record everything (unless ``record=False``)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        heartbeat_interval: int = 60,
        boot_status: str = "Accepted",
        auth_status: str = "Accepted",
        password: str | None = None,
        record: bool = True,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.boot_status = boot_status
        self.auth_status = auth_status
        self.password = password
        self.keep = record
        self.messages: list[Msg] = []
        self.counts: dict[str, int] = {}
        self.points: dict[str, Any] = {}
        self.sockets: dict[str, ServerConnection] = {}
        self.tx_ids = itertools.count(1000)
        self.auth_headers: dict[str, str | None] = {}
        self._server: Any = None
        self.port = 0
        self.tls = False

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def record(self, charger_id: str, action: str, payload: dict[str, Any]) -> None:
        self.counts[action] = self.counts.get(action, 0) + 1
        if self.keep:
            self.messages.append(Msg(charger_id, action, payload, time.monotonic()))

    async def start(self, port: int = 0, ssl: Any = None) -> TestCSMS:
        kwargs: dict[str, Any] = {}
        if ssl is not None:
            kwargs["ssl"] = ssl
            self.tls = True
        if self.password is not None:
            pw = self.password
            kwargs["process_request"] = basic_auth(check_credentials=lambda _u, p: p == pw)
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            port,
            subprotocols=["ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
            compression=None,
            backlog=1024,
            **kwargs,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cid = ws.request.path.strip("/").split("/")[-1]
        self.auth_headers[cid] = ws.request.headers.get("Authorization")
        if ws.subprotocol is None:
            await ws.close()
            return
        cls = Central16 if ws.subprotocol == "ocpp1.6" else Central201
        cp = cls(cid, ws)
        cp.csms = self
        self.points[cid] = cp
        self.sockets[cid] = ws
        try:
            await cp.start()
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.points.get(cid) is cp:
                del self.points[cid]
                del self.sockets[cid]

    async def drop(self, charger_id: str) -> None:
        """Close one charger's connection from the CSMS side."""
        ws = self.sockets.get(charger_id)
        if ws is not None:
            await ws.close()

    # -- queries

    def of(self, action: str, charger_id: str | None = None) -> list[Msg]:
        return [
            m
            for m in self.messages
            if m.action == action and (charger_id is None or m.charger_id == charger_id)
        ]

    async def wait_for(
        self,
        action: str,
        charger_id: str | None = None,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        count: int = 1,
        timeout_s: float = 10.0,
    ) -> list[Msg]:
        """Wait until ``count`` matching messages arrived; return them."""
        deadline = time.monotonic() + timeout_s
        while True:
            hits = [
                m for m in self.of(action, charger_id) if predicate is None or predicate(m.payload)
            ]
            if len(hits) >= count:
                return hits
            if time.monotonic() > deadline:
                seen = [(m.charger_id, m.action) for m in self.messages[-20:]]
                raise TimeoutError(f"waited for {count}x {action} from {charger_id}: {seen}")
            await asyncio.sleep(0.01)

    async def wait_point(self, charger_id: str, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while charger_id not in self.points:
            if time.monotonic() > deadline:
                raise TimeoutError(charger_id)
            await asyncio.sleep(0.01)
        return self.points[charger_id]

    async def call(self, charger_id: str, payload: Any) -> Any:
        """Send a request to a charger; raises OCPPError on a CallError."""
        cp = await self.wait_point(charger_id)
        return await cp.call(payload, suppress=False)


async def eventually(
    check: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.01
) -> None:
    """Poll ``check`` until it holds (tests against a live connection)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


async def _main() -> None:
    csms = await TestCSMS(record=False).start()
    print(f"PORT {csms.port}", flush=True)
    # serve until the parent closes our stdin (or forever if stdin is not a pipe)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        await asyncio.Event().wait()
    while await reader.readline():
        print(f"POINTS {len(csms.points)} COUNTS {csms.counts}", flush=True)
    await csms.stop()


if __name__ == "__main__":
    asyncio.run(_main())
