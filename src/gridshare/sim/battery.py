"""A simulated stationary battery on MQTT: follows its setpoint topic, reports SoC and power.

It reads ``{"ts", "setpoint_kw", "valid_s", "source"}`` (+ = charging) on its setpoint
topic, moves its power towards the setpoint at ``ramp_kw_per_s`` within its limits and its
state of charge (no discharge at ``min_soc``, no charge at 100 %), falls back to 0 kW when a
setpoint's ``valid_s`` runs out without a newer one, and publishes its SoC (%) on its SoC
topic (``{"ts", "soc"}``) and its actual power on ``<setpoint_topic>/power``
(``{"ts", "kw"}``, + = charging), which the grid model takes in.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from gridshare.tasks import cancel_and_wait


@dataclass(slots=True)
class BatteryState:
    capacity_kwh: float
    soc: float
    """%."""
    max_charge_kw: float
    max_discharge_kw: float
    min_soc: float = 0.0
    ramp_kw_per_s: float = 1e9
    power_kw: float = 0.0
    target_kw: float = 0.0
    valid_until: float = 0.0

    def advance(self, now: float, dt: float) -> None:
        """Move ``dt`` seconds at monotonic time ``now``."""
        target = self.target_kw if now <= self.valid_until else 0.0
        target = min(max(target, -self.max_discharge_kw), self.max_charge_kw)
        if self.soc <= self.min_soc:
            target = max(target, 0.0)
        if self.soc >= 100.0:
            target = min(target, 0.0)
        step = self.ramp_kw_per_s * dt
        self.power_kw += min(max(target - self.power_kw, -step), step)
        self.soc = min(max(self.soc + self.power_kw * dt / 3600 / self.capacity_kwh * 100,
                           0.0), 100.0)


class SimBattery:
    def __init__(self, state: BatteryState, host: str, port: int, *, setpoint_topic: str,
                 soc_topic: str, tick_s: float = 0.05) -> None:
        self.state = state
        self.host, self.port = host, port
        self.setpoint_topic = setpoint_topic
        self.soc_topic = soc_topic
        self.power_topic = f"{setpoint_topic}/power"
        self.tick_s = tick_s
        self.setpoints: list[dict[str, object]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sim-battery-{self.soc_topic}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    def _take(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload.decode("utf-8"), parse_constant=lambda _: None)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(doc, dict):
            return
        kw, valid = doc.get("setpoint_kw"), doc.get("valid_s", 10)
        if isinstance(kw, bool) or not isinstance(kw, int | float) or not math.isfinite(kw):
            return
        if isinstance(valid, bool) or not isinstance(valid, int | float) or valid <= 0:
            return
        self.setpoints.append(doc)
        self.state.target_kw = float(kw)
        self.state.valid_until = time.monotonic() + float(valid)

    async def _run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client(self.host, self.port,
                                  identifier=f"simbatt-{id(self)}") as client:
            await client.subscribe(self.setpoint_topic)

            async def read() -> None:
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes):
                        self._take(payload)

            reader = asyncio.create_task(read())
            try:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(self.tick_s)
                    now = time.monotonic()
                    self.state.advance(now, now - last)
                    last = now
                    ts = datetime.now(UTC).isoformat()
                    await client.publish(self.power_topic, json.dumps(
                        {"ts": ts, "kw": round(self.state.power_kw, 4)}))
                    await client.publish(self.soc_topic, json.dumps(
                        {"ts": ts, "soc": round(self.state.soc, 4)}))
            finally:
                await cancel_and_wait([reader])
