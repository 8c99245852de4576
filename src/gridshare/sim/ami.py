"""A simulated fleet of AMI (utility) meters on MQTT, for the telemetry ingest.

Each meter publishes, every ``period_s``, on ``<prefix>/<meter id>`` (default prefix
``gridshare/<site>/ami``) the reading shape the ingest takes (docs/telemetry.md)::

    {"meter_id": "m-07", "ts": 1796040000.25, "power_w": 10000.0, "energy_wh": 12.5}

The meters are staggered over the period (meter i at ``i/N`` of it), as a real fleet's
clocks are, so every demand window holds one reading per meter and the ingest's
watermark moves on smoothly.

What a meter reads: its share of the fleet's load (:meth:`AmiFleet.set_total_kw` spreads a
total over the load meters in proportion to their base loads), times ``load_factor()``
when given (the grid model's load damping: :func:`damped` of a
:class:`~gridshare.sim.grid.GridModel`), or, for a meter given a ``reader``, what that
function says now (kW; e.g. a battery's connection meter, negative when it discharges).
:meth:`AmiFleet.load_kw` is the load at nominal frequency the grid model takes in
(``GridSim(load_readers={"ami": fleet.load_kw})``). ``paused`` stops every meter (a
stalled stream, for tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gridshare.sim.grid import GridModel

log = logging.getLogger("gridshare.sim.ami")


class AmiFleet:
    """Load meters (base kW each) and reader meters, published every ``period_s``."""

    def __init__(self, host: str, port: int, *, site: str, loads: Mapping[str, float],
                 readers: Mapping[str, Callable[[], float]] | None = None,
                 period_s: float = 1.0, prefix: str | None = None,
                 load_factor: Callable[[], float] | None = None) -> None:
        if not period_s > 0:
            raise ValueError("period_s must be > 0")
        self.host, self.port = host, port
        self.prefix = prefix or f"gridshare/{site}/ami"
        self.base = dict(loads)
        """Load meters' kW at nominal frequency."""
        self.readers = dict(readers or {})
        self.period_s = period_s
        self.load_factor = load_factor
        self.paused = False
        self.published = 0
        self.energy_wh = dict.fromkeys([*self.base, *self.readers], 0.0)
        self._task: asyncio.Task[None] | None = None

    @property
    def meter_ids(self) -> list[str]:
        return [*self.base, *self.readers]

    def load_kw(self) -> float:
        """The load meters' total at nominal frequency (what the grid model takes in)."""
        return sum(self.base.values())

    def set_total_kw(self, kw: float) -> None:
        """Spread ``kw`` over the load meters in proportion to their present loads
        (evenly when they are all 0)."""
        now = self.load_kw()
        n = len(self.base)
        for mid, base in self.base.items():
            self.base[mid] = kw * (base / now if now else 1.0 / n)

    def reading_kw(self, meter_id: str) -> float:
        """What one meter reads now."""
        read = self.readers.get(meter_id)
        if read is not None:
            return float(read())
        factor = 1.0 if self.load_factor is None else self.load_factor()
        return self.base[meter_id] * factor

    def payload(self, meter_id: str, ts: float) -> bytes:
        kw = self.reading_kw(meter_id)
        self.energy_wh[meter_id] += max(kw, 0.0) * self.period_s / 3.6
        return json.dumps({"meter_id": meter_id, "ts": round(ts, 3),
                           "power_w": round(kw * 1000.0, 3),
                           "energy_wh": round(self.energy_wh[meter_id], 3)}).encode()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gridshare-sim-ami")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        import aiomqtt

        ids = self.meter_ids
        gap = self.period_s / max(len(ids), 1)
        async with aiomqtt.Client(self.host, self.port,
                                  identifier=f"simami-{id(self)}") as client:
            due = time.monotonic()
            i = 0
            while True:
                await asyncio.sleep(max(due - time.monotonic(), 0.0))
                if not self.paused:
                    mid = ids[i]
                    try:
                        body = self.payload(mid, time.time())
                    except Exception:  # a reader that fails: that meter skips a reading
                        log.exception("ami: reading meter %s failed", mid)
                    else:
                        await client.publish(f"{self.prefix}/{mid}", body, qos=1)
                        self.published += 1
                i = (i + 1) % len(ids)
                due += gap


def damped(model: GridModel) -> Callable[[], float]:
    """A ``load_factor`` for the fleet: the grid model's load damping (the load falls by
    ``D`` kW per Hz below nominal), as a factor on each meter's nominal load."""

    def factor() -> float:
        load0 = model.load0_kw()
        return model.load_kw() / load0 if load0 > 0 else 1.0

    return factor
