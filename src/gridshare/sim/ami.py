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

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gridshare.tasks import cancel_and_wait

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
            await cancel_and_wait([self._task])
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


# --- the closed-loop demo -----------------------------------------------------------------

DEMO_HELP = """The regulation loop against a running `gridshare serve SITE.yaml`: this
process simulates the grid model (swing equation), the AMI meters of the regulation area
and its battery on the site's MQTT broker; it steps the load and later stops the meters,
printing a line per second."""


def main(argv: list[str] | None = None) -> int:
    """``python -m gridshare.sim.ami SITE.yaml [--step-kw 20] ...`` (docs/regulation.md)."""
    parser = argparse.ArgumentParser(prog="python -m gridshare.sim.ami", description=DEMO_HELP)
    parser.add_argument("site", help="the site file gridshare serves (regulation: on an "
                        "AMI feeder/substation/region)")
    parser.add_argument("--step-kw", type=float, default=20.0, help="load step, kW (20)")
    parser.add_argument("--step-at", type=float, default=15.0, help="seconds (15)")
    parser.add_argument("--stall-at", type=float, default=45.0,
                        help="seconds at which the meters stop (45; 0: never)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--inertia", type=float, default=4.0, help="H, s (4)")
    parser.add_argument("--base-kw", type=float, default=1000.0, help="S_base, kW (1000)")
    parser.add_argument("--damping", type=float, default=100.0, help="D, kW/Hz (100)")
    parser.add_argument("--battery-meter", default=None,
                        help="the area's AMI meter that measures the battery "
                             "(default: <battery id>-meter)")
    parser.add_argument("--period", type=float, default=1.0, help="meter period, s (1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_demo(args))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", flush=True)
        return 2


async def _demo(a: argparse.Namespace) -> int:
    """The demo, top to bottom: the site's pieces, the simulators, a line per second."""
    from gridshare.adapters.meters.mqtt import BrokerAddress
    from gridshare.config import ConfigError, load_site_config, regulation_area_level
    from gridshare.sim.battery import BatteryState, SimBattery
    from gridshare.sim.grid import GridModel, GridParams, GridSim

    try:
        config = load_site_config(a.site)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    reg, freq = config.regulation, config.frequency_response
    if reg is None or freq is None or config.mqtt is None:
        raise ValueError("the site needs mqtt:, frequency_response: (its batteries) and "
                         "regulation:")
    level = regulation_area_level(reg, config.topology.zones, config.ami_meters)
    if level in (None, "zone"):
        raise ValueError(f"regulation.area {reg.area!r} is no AMI feeder/substation/region")
    area = [m.id for m in config.ami_meters if getattr(m, str(level)) == reg.area]
    unit = next(u for u in freq.units if u.battery is not None
                and (reg.units is None or u.battery in reg.units))
    assert unit.setpoint_topic is not None and unit.soc_topic is not None
    bess_meter = a.battery_meter or f"{unit.battery}-meter"
    if bess_meter not in area:
        raise ValueError(f"no AMI meter {bess_meter!r} in {level} {reg.area} "
                         "(--battery-meter)")
    loads = [m for m in area if m != bess_meter]
    broker = BrokerAddress.parse(config.mqtt.url)
    site = config.topology.site
    hz_topic = (reg.frequency_topic or freq.source.mqtt_topic).replace("<site>", site)
    model = GridModel(GridParams(nominal_hz=freq.nominal_hz, inertia_s=a.inertia,
                                 base_kw=a.base_kw, damping_kw_per_hz=a.damping),
                      scheduled_kw=reg.scheduled_kw)
    battery = SimBattery(BatteryState(capacity_kwh=unit.capacity_kwh, soc=50.0,
                                      max_charge_kw=unit.max_charge_kw,
                                      max_discharge_kw=unit.max_discharge_kw,
                                      min_soc=unit.min_soc, ramp_kw_per_s=100.0),
                         broker.host, broker.port, setpoint_topic=unit.setpoint_topic,
                         soc_topic=unit.soc_topic)
    prefix = config.telemetry.ami_topic_prefix(site) if config.telemetry else None
    fleet = AmiFleet(broker.host, broker.port, site=site, prefix=prefix,
                     loads=dict.fromkeys(loads, reg.scheduled_kw / len(loads)),
                     readers={bess_meter: lambda: battery.state.power_kw},
                     period_s=a.period, load_factor=damped(model))
    grid = GridSim(model, broker.host, broker.port, site=site, frequency_topic=hz_topic,
                   storage_topics={str(unit.battery): f"{unit.setpoint_topic}/power"},
                   meter_period_s=0.1, load_readers={"ami": fleet.load_kw})
    print(f"# {len(loads)} meters + {bess_meter} on {level} {reg.area}, "
          f"{reg.scheduled_kw:g} kW scheduled; +{a.step_kw:g} kW at {a.step_at:g} s, "
          f"meters stop at {a.stall_at:g} s", flush=True)
    await battery.start()
    await grid.start()
    await fleet.start()
    start = time.monotonic()
    try:
        stepped = False
        while (t := time.monotonic() - start) < a.duration:
            if not stepped and t >= a.step_at:
                fleet.set_total_kw(fleet.load_kw() + a.step_kw)
                stepped = True
            if a.stall_at > 0 and t >= a.stall_at:
                fleet.paused = True
            row = {"t": round(t, 1), "hz": round(model.hz, 4),
                   "load_kw": round(model.load0_kw(), 1),
                   "battery_kw": round(-battery.state.power_kw, 1),
                   "soc": round(battery.state.soc, 2),
                   "meters": "stopped" if fleet.paused else "publishing"}
            if a.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"t={row['t']:6.1f} s  f={row['hz']:.4f} Hz  load={row['load_kw']:6.1f} "
                      f"kW  battery={row['battery_kw']:+6.1f} kW (+ = discharge, SoC "
                      f"{row['soc']:.1f} %)  meters {row['meters']}", flush=True)
            await asyncio.sleep(1.0 - (time.monotonic() - start) % 1.0)
    finally:
        await fleet.stop()
        await grid.stop()
        await battery.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
