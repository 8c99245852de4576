"""A simulated site meter that speaks OCPP 1.6J: a charge point with no connector of its
own that reports what a feed draws (Current.Import per phase on connector 0) every few
seconds, as a dedicated meter does for a ``source: ocpp`` meter in the site file.

Deliberately small: boot, then MeterValues and a heartbeat now and then; a CALL from the
central system (it should send none to a meter) is answered NotSupported. It reconnects
after a lost link, so a restart of the central system is survived like a real meter does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.sim.meter")

PhaseCurrents = tuple[float, float, float]


class SimSiteMeter:
    """Connects to ``url/<id>`` and reports ``read()`` (A per phase) every ``interval_s``."""

    def __init__(self, id: str, url: str, read: Callable[[], PhaseCurrents], *,
                 interval_s: float = 2.0, heartbeat_s: float = 60.0,
                 response_timeout_s: float = 10.0) -> None:
        self.id = id
        self.url = url.rstrip("/") + "/" + id
        self.read = read
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.response_timeout_s = response_timeout_s
        self.sent = 0
        """MeterValues answered by the central system."""
        self.connected = asyncio.Event()
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[object]] = {}

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sim-meter-{self.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])

    async def _run(self) -> None:
        backoff_s = 0.5
        while True:
            try:
                async with connect(self.url, subprotocols=[Subprotocol("ocpp1.6")],
                                   open_timeout=10) as ws:
                    backoff_s = 0.5
                    await self._session(ws)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                log.info("meter %s: link lost (%s); again in %.1f s", self.id, exc, backoff_s)
            finally:
                self.connected.clear()
                for future in self._waiting.values():
                    future.cancel()
                self._waiting.clear()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 10.0)

    async def _session(self, ws: ClientConnection) -> None:
        reader = asyncio.create_task(self._read(ws), name=f"sim-meter-read-{self.id}")
        try:
            await self._call(ws, "BootNotification", {"chargePointVendor": "gridshare",
                                                      "chargePointModel": "SimSiteMeter"})
            self.connected.set()
            since_heartbeat = 0.0
            while True:
                await self._call(ws, "MeterValues", self._meter_values())
                self.sent += 1
                await asyncio.sleep(self.interval_s)
                since_heartbeat += self.interval_s
                if since_heartbeat >= self.heartbeat_s:
                    await self._call(ws, "Heartbeat", {})
                    since_heartbeat = 0.0
        finally:
            await cancel_and_wait([reader], absorb=(ConnectionClosed,))

    def _meter_values(self) -> dict[str, object]:
        amps = self.read()
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        values = [{"value": f"{max(0.0, a):.2f}", "measurand": "Current.Import",
                   "phase": phase, "unit": "A", "context": "Sample.Periodic"}
                  for phase, a in zip(("L1", "L2", "L3"), amps, strict=True)]
        return {"connectorId": 0, "meterValue": [{"timestamp": now, "sampledValue": values}]}

    async def _call(self, ws: ClientConnection, action: str, payload: dict[str, object],
                    ) -> object:
        message_id = str(next(self._ids))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await ws.send(json.dumps([2, message_id, action, payload]))
        try:
            async with asyncio.timeout(self.response_timeout_s):
                return await future
        finally:
            self._waiting.pop(message_id, None)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                frame = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(frame, list) or len(frame) < 3:
                continue
            if frame[0] == 2:  # a CALL to a meter: nothing here to act on
                await ws.send(json.dumps([4, frame[1], "NotSupported",
                                          "a meter, not a charger", {}]))
            elif frame[0] in (3, 4):
                future = self._waiting.get(str(frame[1]))
                if future is not None and not future.done():
                    future.set_result(frame[2])
