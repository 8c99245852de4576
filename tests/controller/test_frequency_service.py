"""The frequency service on a fake clock: a real SiteState (events folded as the
controller folds them), a fake V2X driver with an async round trip, a fake battery link and
a memory bus. Dip → discharge; recovery; safety window and stale source → safe state with
one alarm each, cleared on recovery; guards; coalescing (one in flight per charger, the
newest wins, renewals); chargers without V2X only curtailed; local mode."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridshare.adapters.frequency import SocReading, setpoint_payload
from gridshare.adapters.ocpp.v2x import curve_power_w, freq_watt_curve
from gridshare.bus import MemoryBus
from gridshare.clock import FakeClock
from gridshare.config import SiteConfig, parse_site_config
from gridshare.controller.audit import AlarmRecord
from gridshare.controller.frequency import FrequencyOptions, FrequencyService
from gridshare.controller.state import SiteState
from gridshare.core.frequency import (
    FrequencyResponder,
    FrequencySettings,
    Mode,
    UnitKind,
    UnitSpec,
    UnitState,
)
from gridshare.core.v2x_book import V2xBook
from gridshare.core.v2x_offer import V2xOffer
from gridshare.drivers import CommandOutcome, CommandResult
from gridshare.events import (
    ChargerOnline,
    ChargingNeeds,
    ConnectorCapsChanged,
    ConnectorStatus,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)

from .conftest import T0

SITE = """
site: freq
voltage: 230
mqtt: {url: "mqtt://127.0.0.1:1883"}
frequency_response:
  nominal_hz: 50
  deadband_mhz: 20
  full_activation_mhz: 200
  safety_window_hz: [49.5, 50.5]
  mode: MODE
  source: {mqtt_topic: "gridshare/<site>/grid/frequency"}
  units:
    - {charger: v1, max_discharge_kw: 11, max_charge_kw: 11, capacity_kwh: 60, min_soc: 40,
       max_cycles_per_day: 2}
    - {charger: c1, max_discharge_kw: 11, max_charge_kw: 11, capacity_kwh: 60, min_soc: 20}
    - {battery: b1, max_discharge_kw: 50, max_charge_kw: 50, capacity_kwh: 100, min_soc: 10,
       setpoint_topic: "site/b1/setpoint", soc_topic: "site/b1/soc"}
groups:
  - id: main
    max_current: GROUP_A
    chargers: [v1, c1]
chargers:
  - {id: v1, max_current: 16, phases: 3, v2x: true}
  - {id: c1, max_current: 16, phases: 3, v2x: true}
"""

KW_PER_A = 3 * 230 / 1000.0


class FakeV2x:
    """The V2xDriver of a CSMS: records every call, answers after ``rtt_s`` (real time),
    and checks that no charger ever has two commands in flight."""

    def __init__(self, capable: set[str], rtt_s: float = 0.0,
                 result: CommandResult = CommandResult.ACCEPTED) -> None:
        self.capable = capable
        self.rtt_s = rtt_s
        self.result = result
        self.setpoints: list[tuple[str, int, float, float]] = []
        self.curves: list[tuple[str, int, list[tuple[float, float]], float]] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight = 0

    def v2x_capable(self, charger: str) -> bool:
        return charger in self.capable

    async def _answer(self, charger: str) -> CommandOutcome:
        self.in_flight[charger] = self.in_flight.get(charger, 0) + 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[charger])
        try:
            await asyncio.sleep(self.rtt_s)
        finally:
            self.in_flight[charger] -= 1
        return CommandOutcome(self.result)

    async def send_v2x_setpoint(self, charger: str, connector: int, setpoint_w: float,
                                *, valid_s: float) -> CommandOutcome:
        assert charger in self.capable, "a charger without V2X was sent a V2X setpoint"
        self.setpoints.append((charger, connector, setpoint_w, valid_s))
        return await self._answer(charger)

    async def send_v2x_local_frequency(self, charger: str, connector: int,
                                       curve: Sequence[tuple[float, float]],
                                       *, valid_s: float) -> CommandOutcome:
        self.curves.append((charger, connector, list(curve), valid_s))
        return await self._answer(charger)

    def last_w(self, charger: str) -> float:
        return [w for c, _, w, _ in self.setpoints if c == charger][-1]


class FakeLink:
    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send_setpoint(self, topic: str, kw: float, at: float, valid_s: float,
                      mode: str) -> None:
        self.sent.append((topic, setpoint_payload(kw, at, valid_s, mode)))

    def last_kw(self) -> float:
        import json

        return float(json.loads(self.sent[-1][1])["setpoint_kw"])


class FakeStore:
    def __init__(self) -> None:
        self.alarms: list[AlarmRecord] = []

    def record_alarm(self, record: AlarmRecord) -> None:
        self.alarms.append(record)


class Rig:
    def __init__(self, *, mode: str = "central", rtt_s: float = 0.0, group_a: float = 63,
                 capable: set[str] | None = None, options: FrequencyOptions | None = None,
                 book: V2xBook | None = None) -> None:
        text = SITE.replace("MODE", mode).replace("GROUP_A", str(group_a))
        self.config: SiteConfig = parse_site_config(text, "freq.yaml")
        assert self.config.frequency_response is not None
        self.topology = self.config.topology
        self.clock = FakeClock(T0)
        self.bus = MemoryBus()
        self.sub = self.bus.subscribe("test")
        self.state = SiteState(self.topology)
        self.v2x = FakeV2x({"v1"} if capable is None else capable, rtt_s)
        self.link = FakeLink()
        self.store = FakeStore()
        self.svc = FrequencyService(
            self.config.frequency_response, self.topology, self.clock, bus=self.bus,
            state_view=self.state, v2x=self.v2x, batteries=self.link, store=self.store,
            options=options or FrequencyOptions(tick_s=None), book=book)

    def plug(self, charger: str, amps: float, soc: float | None = 80.0,
             power_w: float | None = None) -> None:
        now = self.clock.now()
        self.state.apply(ChargerOnline(charger, now))
        self.state.apply(StatusChanged(charger, 1, ConnectorStatus.CHARGING, now))
        self.state.apply(SessionStarted(charger, 1, f"tx-{charger}", now))
        self.meter(charger, soc, power_w)
        self.allocate(charger, amps)

    def meter(self, charger: str, soc: float | None, power_w: float | None = None) -> None:
        self.state.apply(MeterReading(charger, 1, self.clock.now(), f"tx-{charger}",
                                      soc_percent=soc, power_w=power_w))

    def allocate(self, charger: str, amps: float) -> None:
        """The controller's setpoint for the car, accepted (the allocation's value)."""
        now = self.clock.now()
        key = (charger, 1)
        cid = self.state.record_sent(key, amps, now, 300.0)
        self.state.record_outcome(key, cid, CommandOutcome(
            CommandResult.ACCEPTED, valid_to=now + timedelta(seconds=300)), now, 5.0)

    def soc(self, battery: str, soc: float) -> None:
        self.svc.on_soc(battery, SocReading(soc))

    def sample(self, hz: float, dt: float = 0.02) -> None:
        self.clock.advance(dt)
        self.svc.on_sample(None, hz)

    def caps_events(self) -> list[ConnectorCapsChanged]:
        out = []
        while (event := self.sub.get_nowait()) is not None:
            if isinstance(event, ConnectorCapsChanged):
                out.append(event)
        return out

    def unit(self, uid: str) -> dict[str, object]:
        return next(u for u in self.svc.status()["units"] if u["id"] == uid)

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)
            if not self.svc._tasks:
                return
        await asyncio.wait_for(asyncio.gather(*self.svc._tasks, return_exceptions=True), 5)


def setup_fleet(rig: Rig, *, v1_soc: float = 80.0, b1_soc: float | None = 80.0) -> None:
    rig.plug("v1", 10.0, soc=v1_soc)
    rig.plug("c1", 10.0, soc=None)
    if b1_soc is not None:
        rig.soc("b1", b1_soc)


async def test_a_dip_discharges_the_v2x_car_and_the_battery_and_curtails_the_other() -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(50.0)
    await rig.settle()
    base = 10.0 * KW_PER_A
    assert rig.v2x.last_w("v1") == pytest.approx(base * 1000, abs=1)
    assert rig.link.last_kw() == 0.0
    rig.sample(49.89)  # fraction -0.5
    await rig.settle()
    d = rig.svc.decision
    assert d is not None and d.mode is Mode.RESPONDING and d.fraction == pytest.approx(-0.5)
    assert d.request_kw == pytest.approx(-0.5 * (11 + 11 + 50))
    assert d.dispatched_kw == pytest.approx(d.request_kw)
    v1 = rig.unit("v1")
    assert v1["setpoint_kw"] < 0  # the car discharges
    assert rig.v2x.last_w("v1") == pytest.approx(float(v1["setpoint_kw"]) * 1000, abs=1)
    assert rig.link.last_kw() < 0 and rig.link.last_kw() == rig.unit("b1")["setpoint_kw"]
    assert rig.link.sent[-1][0] == "site/b1/setpoint"
    c1 = rig.unit("c1")
    assert 0 <= c1["setpoint_kw"] < base  # charges less, never discharges
    caps = [e for e in rig.caps_events() if e.source == "frequency"]
    assert caps and set(caps[-1].caps) == {("c1", 1)}
    assert caps[-1].caps[("c1", 1)] == pytest.approx(float(c1["setpoint_kw"]) / KW_PER_A,
                                                     abs=0.02)
    assert not [c for c, *_ in rig.v2x.setpoints if c == "c1"]


async def test_recovery_returns_every_unit_to_its_allocation_and_lifts_the_caps() -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.8)
    await rig.settle()
    assert rig.v2x.last_w("v1") < 0 and rig.svc.caps
    rig.caps_events()
    rig.sample(50.001)
    await rig.settle()
    assert rig.svc.decision is not None and rig.svc.decision.mode is Mode.IDLE
    assert rig.v2x.last_w("v1") == pytest.approx(10 * KW_PER_A * 1000, abs=1)
    assert rig.link.last_kw() == 0.0
    assert rig.svc.caps == {}
    assert rig.caps_events()[-1].caps == {}


async def test_outside_the_safety_window_every_unit_is_safe_with_one_alarm() -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.8)
    await rig.settle()
    for hz in (49.4, 49.3, 49.45):
        rig.sample(hz)
        await rig.settle()
        d = rig.svc.decision
        assert d is not None and d.mode is Mode.SAFE
        assert all(u.setpoint_kw >= 0 for u in d.units)  # no discharge
        assert rig.v2x.last_w("v1") == pytest.approx(10 * KW_PER_A * 1000, abs=1)
        assert rig.link.last_kw() == 0.0
    raised = [a for a in rig.store.alarms if not a.cleared]
    assert len(raised) == 1 and "safety window" in raised[0].message
    assert raised[0].kind == "frequency"
    status = rig.svc.status()
    assert status["state"] == "safe" and status["alarms"]
    # back inside: held safe for recover_after_s (5 s), then responding, alarm cleared
    for _ in range(4):
        rig.sample(49.85, dt=1.0)
        await rig.settle()
        assert rig.svc.decision is not None and rig.svc.decision.mode is Mode.SAFE
    rig.sample(49.85, dt=2.5)  # 5.5 s since the first sample back inside
    await rig.settle()
    assert rig.svc.decision is not None and rig.svc.decision.mode is Mode.RESPONDING
    assert rig.v2x.last_w("v1") < 0
    cleared = [a for a in rig.store.alarms if a.cleared]
    assert len(cleared) == 1 and cleared[0].message.startswith("cleared: ")
    assert rig.svc.status()["alarms"] == []


async def test_a_stale_source_puts_units_in_their_safe_state_until_the_next_sample() -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.8)
    await rig.settle()
    assert rig.v2x.last_w("v1") < 0
    rig.clock.advance(0.9)
    rig.svc.tick()
    assert rig.svc.decision is not None and rig.svc.decision.mode is Mode.RESPONDING
    rig.clock.advance(0.3)
    rig.svc.tick()
    rig.svc.tick()
    await rig.settle()
    assert rig.svc.decision is not None and rig.svc.decision.mode is Mode.SAFE
    assert rig.v2x.last_w("v1") >= 0 and rig.link.last_kw() == 0.0
    assert rig.svc.caps == {}
    raised = [a for a in rig.store.alarms if not a.cleared]
    assert len(raised) == 1 and "stale" in raised[0].message
    rig.sample(49.8)
    await rig.settle()
    assert rig.svc.decision is not None and rig.svc.decision.mode is Mode.RESPONDING
    assert rig.v2x.last_w("v1") < 0
    assert [a.cleared for a in rig.store.alarms] == [False, True]


async def test_guards_a_car_at_its_floor_and_a_battery_without_soc_do_not_discharge() -> None:
    rig = Rig()
    setup_fleet(rig, v1_soc=40.0, b1_soc=None)
    rig.sample(49.75)
    await rig.settle()
    v1, b1 = rig.unit("v1"), rig.unit("b1")
    assert v1["setpoint_kw"] >= 0 and "min_soc" in str(v1["held"])
    assert b1["setpoint_kw"] == 0 and "SoC unknown" in str(b1["held"])
    assert rig.v2x.last_w("v1") >= 0
    # the battery's SoC arrives: it discharges; an old reading counts as unknown again
    rig.soc("b1", 90.0)
    rig.sample(49.75)
    await rig.settle()
    assert rig.link.last_kw() < 0
    rig.clock.advance(61)
    rig.sample(49.75)
    await rig.settle()
    assert rig.unit("b1")["setpoint_kw"] == 0


async def test_above_nominal_the_battery_charges_more_but_no_charger_exceeds_its_allocation(
        ) -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(50.15)
    await rig.settle()
    base = 10 * KW_PER_A
    # the request (0.72 × 72 kW = 52 kW) goes to the one unit that can charge more: the
    # battery, to its 50 kW (it took 44.7 kW when the chargers' shares were counted and
    # then cut at their allocation)
    d = rig.svc.decision
    assert d is not None and d.request_kw == pytest.approx(72 * 0.13 / 0.18)
    assert rig.link.last_kw() == pytest.approx(50.0)
    assert d.dispatched_kw == pytest.approx(50.0)
    for uid in ("v1", "c1"):
        u = rig.unit(uid)
        assert float(u["setpoint_kw"]) <= base + 1e-9
        assert "allocation" in str(u["held"])
    assert rig.svc.caps == {}


async def test_coalescing_small_moves_are_not_sent_renewals_are() -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.9)
    await rig.settle()
    sends = len(rig.v2x.setpoints)
    published = len(rig.link.sent)
    for k in range(50):  # ±0.5 mHz: the setpoints move by a few W
        rig.sample(49.9 + (0.0005 if k % 2 else -0.0005))
        await rig.settle()
    assert len(rig.v2x.setpoints) == sends and len(rig.link.sent) == published
    rig.clock.advance(5.0)
    rig.svc.on_sample(None, 49.9)
    await rig.settle()
    assert len(rig.v2x.setpoints) == sends + 1 and len(rig.link.sent) == published + 1


async def test_the_first_sample_past_the_dead_band_reaches_every_unit_however_small(
        ) -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(50.0)
    await rig.settle()
    sends, published = len(rig.v2x.setpoints), len(rig.link.sent)
    rig.sample(49.979)  # 1 mHz past the band: v1 moves by ~0.1 kW, below the 0.2 kW step
    await rig.settle()
    delta = float(rig.unit("v1")["delta_kw"])
    assert -0.2 < delta < 0
    assert len(rig.v2x.setpoints) == sends + 1 and len(rig.link.sent) == published + 1
    assert rig.v2x.last_w("v1") == pytest.approx((10 * KW_PER_A + delta) * 1000, abs=1)
    rig.sample(49.9789)  # responding already, a smaller move: coalesced
    await rig.settle()
    assert len(rig.v2x.setpoints) == sends + 1
    rig.sample(50.0)  # the response ends: sent at once too
    await rig.settle()
    assert len(rig.v2x.setpoints) == sends + 2
    assert rig.v2x.last_w("v1") == pytest.approx(10 * KW_PER_A * 1000, abs=1)


async def test_one_setpoint_in_flight_per_charger_and_the_newest_wins() -> None:
    rig = Rig(rtt_s=0.05)
    setup_fleet(rig)
    for k in range(40):  # a sweep into the dip, faster than the charger answers
        rig.sample(49.98 - k * 0.004)
        await asyncio.sleep(0.002)
    await rig.settle()
    assert rig.v2x.most_in_flight == 1
    assert len(rig.v2x.setpoints) < 20  # coalesced, not one per sample
    newest = rig.unit("v1")["setpoint_kw"]
    assert rig.v2x.last_w("v1") == pytest.approx(float(newest) * 1000, abs=1)


async def test_a_refused_setpoint_is_sent_again_after_a_second_not_at_the_sample_rate(
        ) -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.v2x.result = CommandResult.REJECTED
    rig.sample(49.9)
    await rig.settle()
    n = len(rig.v2x.setpoints)
    rig.v2x.result = CommandResult.ACCEPTED
    for _ in range(40):  # 0.8 s at 50 Hz: nothing sent
        rig.sample(49.9)
        await rig.settle()
    assert len(rig.v2x.setpoints) == n
    rig.sample(49.9, dt=0.3)
    await rig.settle()
    assert len(rig.v2x.setpoints) == n + 1
    assert rig.unit("v1")["last_result"] == "accepted"


async def test_a_driver_that_raises_is_a_refusal_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    setup_fleet(rig)

    async def refuse(charger: str, connector: int, setpoint_w: float, *,
                     valid_s: float) -> CommandOutcome:
        raise RuntimeError(f"{charger} is connected over ocpp2.0.1, not ocpp2.1")

    rig.v2x.send_v2x_setpoint = refuse  # type: ignore[method-assign]
    for _ in range(5):
        rig.sample(49.9, dt=1.1)
        await rig.settle()
    v1 = rig.unit("v1")
    assert "not ocpp2.1" in str(v1["last_result"]) and v1["sends"] == 5
    assert len([r for r in caplog.records if "not accepted" in r.getMessage()]) == 1
    assert rig.link.last_kw() < 0  # the others go on


async def test_a_curtailed_car_is_not_curtailed_again_by_its_own_cap() -> None:
    """The controller folds the cap into the allocation; the next sample's base is the
    allocation before the cap, so the cap does not ratchet down."""
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.89)
    await rig.settle()
    cap = rig.svc.caps[("c1", 1)]
    assert cap < 10.0
    rig.allocate("c1", cap)  # the controller obeys its own new limit
    for _ in range(10):
        rig.sample(49.89)
    assert rig.svc.caps[("c1", 1)] == pytest.approx(cap, abs=0.02)
    assert rig.unit("c1")["base_kw"] == pytest.approx(10 * KW_PER_A)


async def test_a_cap_that_pauses_the_car_does_not_flap() -> None:
    """A cap below the connector's minimum makes the controller pause the car (0 A): the
    allocation then reads 0, which must not lift the cap (it would flap on and off)."""
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.75)  # full activation: c1 curtailed hard
    await rig.settle()
    cap = rig.svc.caps[("c1", 1)]
    assert cap < 6.0
    rig.allocate("c1", 0.0)  # the controller pauses it
    published = rig.svc.counters["caps_published"]
    for _ in range(20):
        rig.sample(49.75)
    assert rig.svc.caps == {("c1", 1): cap}
    assert rig.svc.counters["caps_published"] == published
    rig.sample(50.0)  # the response ends: the cap goes, the allocation is read again
    assert rig.svc.caps == {}
    rig.allocate("c1", 10.0)
    rig.sample(50.0)
    assert rig.unit("c1")["base_kw"] == pytest.approx(10 * KW_PER_A)


async def test_without_a_v2x_driver_every_charger_is_only_curtailed() -> None:
    rig = Rig(capable=set())
    setup_fleet(rig)
    rig.sample(49.8)
    await rig.settle()
    assert rig.v2x.setpoints == []
    assert set(rig.svc.caps) == {("v1", 1), ("c1", 1)}
    assert all(a >= 0 for a in rig.svc.caps.values())


async def test_the_discharge_under_a_group_stays_within_what_the_group_carries() -> None:
    rig = Rig(group_a=8, capable={"v1", "c1"})  # 8 A x 3 x 230 V = 5.52 kW
    rig.plug("v1", 4.0, soc=90)
    rig.plug("c1", 4.0, soc=90)
    rig.sample(49.75)  # full activation
    await rig.settle()
    export = -(rig.v2x.last_w("v1") + rig.v2x.last_w("c1")) / 1000
    assert export == pytest.approx(8 * KW_PER_A, abs=0.01)
    assert "group main" in str(rig.unit("v1")["held"])


async def test_bad_samples_are_counted_by_reason_and_never_acted_on() -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.8)
    await rig.settle()
    sent = len(rig.v2x.setpoints)
    now = rig.clock.now().timestamp()
    assert rig.svc.on_sample(now + 5, 50.3) is None          # future
    assert rig.svc.on_sample(now - 10, 50.3) is None         # late
    rig.svc.on_sample_rejected("payload is not JSON: 'x'")   # from the MQTT link
    assert rig.svc.on_sample(None, math.nan) is None         # nan (core)
    assert rig.svc.on_sample(None, 60.0) is None             # range (core)
    assert rig.svc.on_sample(now, 49.8) is not None
    assert rig.svc.on_sample(now - 0.01, 50.3) is None       # not after the previous
    await rig.settle()
    assert rig.svc.rejected_counts() == {"future": 1, "late": 1, "payload": 1, "nan": 1,
                                         "range": 1, "time": 1}
    assert len(rig.v2x.setpoints) == sent
    assert rig.svc.status()["last_rejected"]


async def test_local_mode_sends_the_curve_once_again_on_reconnect_and_supervises() -> None:
    rig = Rig(mode="local", options=FrequencyOptions(tick_s=None, supervise_after_s=2.0))
    setup_fleet(rig)
    rig.sample(50.0)
    await rig.settle()
    assert len(rig.v2x.curves) == 1 and rig.v2x.setpoints == []
    charger, connector, curve, _ = rig.v2x.curves[0]
    assert (charger, connector) == ("v1", 1)
    base_w = 10 * KW_PER_A * 1000
    # what the charger draws: the allocation, down to it - 11 kW at 49.8 Hz, flat above
    assert curve == [(49.8, pytest.approx(base_w - 11000)), (49.98, pytest.approx(base_w)),
                     (50.02, pytest.approx(base_w)), (50.2, pytest.approx(base_w))]
    for _ in range(5):
        rig.sample(49.9)
        rig.svc.tick()
    await rig.settle()
    assert len(rig.v2x.curves) == 1 and rig.v2x.setpoints == []
    # the charger keeps charging at its base while the curve asks for 5.5 kW less: alarm
    rig.meter("v1", 80.0, power_w=10 * KW_PER_A * 1000)
    for _ in range(4):
        rig.sample(49.9, dt=1.0)
        rig.svc.tick()
    departs = [a for a in rig.store.alarms if a.kind == "frequency_curve"]
    assert len(departs) == 1 and "v1" in departs[0].message
    rig.meter("v1", 80.0, power_w=(10 * KW_PER_A - 5.5) * 1000)
    rig.sample(49.9)
    rig.svc.tick()
    assert [a.cleared for a in rig.store.alarms if a.kind == "frequency_curve"] == [False, True]
    # the allocation moves: a new curve around it
    rig.allocate("v1", 8.0)
    rig.sample(49.9)
    rig.svc.tick()
    await rig.settle()
    assert len(rig.v2x.curves) == 2
    assert rig.v2x.curves[-1][2][1][1] == pytest.approx(8 * KW_PER_A * 1000)
    # a reconnection: the curve again
    now = rig.clock.now()
    from gridshare.events import ChargerOffline

    rig.state.apply(ChargerOffline(charger, now))
    rig.sample(49.9)
    rig.plug("v1", 10.0)
    rig.sample(49.9)
    await rig.settle()
    assert len(rig.v2x.curves) == 3


async def test_local_mode_safe_state_overrides_the_curve_then_sends_it_again() -> None:
    rig = Rig(mode="local")
    setup_fleet(rig)
    rig.sample(50.0)
    await rig.settle()
    rig.sample(49.4)
    await rig.settle()
    assert rig.v2x.last_w("v1") == pytest.approx(10 * KW_PER_A * 1000, abs=1)
    for _ in range(6):
        rig.sample(49.99, dt=1.0)
        await rig.settle()
    assert len(rig.v2x.curves) == 2
    n = len(rig.v2x.setpoints)
    for _ in range(14):
        rig.sample(49.9, dt=0.5)
        rig.svc.tick()
    await rig.settle()
    assert len(rig.v2x.setpoints) == n  # no renewals of setpoints in local mode
    assert len(rig.v2x.curves) == 2


async def test_central_mode_stands_aside_during_a_discharge_test_then_sends_again() -> None:
    # `gridshare v2g test` on a unit writes the same V2X profile id: the service's renewal
    # (every 5 s) overrode the test's discharge while the test reported it reached 90 %.
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.89)
    await rig.settle()
    assert rig.v2x.last_w("v1") < 0
    n = len([c for c, *_ in rig.v2x.setpoints if c == "v1"])
    rig.svc.testing.add(("v1", 1))  # what POST /api/v1/v2g/test does while it runs
    for _ in range(40):  # 8 s: past the renewal, and a move of the setpoint
        rig.sample(49.85, dt=0.2)
        rig.svc.tick()
    await rig.settle()
    assert len([c for c, *_ in rig.v2x.setpoints if c == "v1"]) == n
    assert rig.unit("v1")["present"] is False
    assert rig.link.last_kw() < 0  # the battery still responds
    rig.svc.testing.discard(("v1", 1))  # the test restored the normal profile
    rig.sample(49.85)
    await rig.settle()
    assert len([c for c, *_ in rig.v2x.setpoints if c == "v1"]) == n + 1
    assert rig.v2x.last_w("v1") == pytest.approx(float(rig.unit("v1")["setpoint_kw"]) * 1000,
                                                 abs=1)


@pytest.mark.parametrize("mode", ["central", "local"])
async def test_standing_aside_waits_for_a_send_in_flight(mode: str) -> None:
    """A setpoint (central) or curve (local) already on its way when a discharge test
    starts could land after the test's own profile and override it: ``stand_aside``
    returns only once the charger has answered it, and nothing is sent after."""
    rig = Rig(mode=mode, rtt_s=0.3)
    setup_fleet(rig)
    rig.sample(49.89 if mode == "central" else 50.0)
    await asyncio.sleep(0)  # the send task starts: the charger answers in 0.3 s
    assert rig.v2x.in_flight.get("v1") == 1
    started = time.monotonic()
    async with rig.svc.stand_aside(("v1", 1)):
        assert rig.v2x.in_flight.get("v1") == 0 and time.monotonic() - started >= 0.2
        sent = len(rig.v2x.setpoints) + len(rig.v2x.curves)
        for _ in range(10):
            rig.sample(49.85, dt=0.2)
            rig.svc.tick()
        await rig.settle()
        assert len(rig.v2x.setpoints) + len(rig.v2x.curves) == sent
    assert rig.svc.testing == set()  # taken back after the block


async def test_local_mode_counts_what_the_curve_does_and_the_battery_gives_the_rest(
        ) -> None:
    """In local mode the V2X car answers on its own curve (to its base − 11 kW at full
    activation), not with a headroom share: at 49.75 Hz the request (−72 kW) less the
    curve's −11 kW is shared by the battery and the curtailed car, and what the service
    reports dispatched is what the units do (it was ≈ 10 % more: the car's share counted
    at its headroom while its curve gave less)."""
    rig = Rig(mode="local")
    setup_fleet(rig)
    rig.sample(50.0)
    await rig.settle()
    assert len(rig.v2x.curves) == 1
    rig.sample(49.75)  # fraction −1
    await rig.settle()
    d = rig.svc.decision
    assert d is not None and d.request_kw == pytest.approx(-72.0)
    by = {u.id: u for u in d.units}
    base = 10 * KW_PER_A
    assert by["v1"].delta_kw == pytest.approx(-11.0)  # its curve at 49.75 Hz
    assert by["b1"].delta_kw == pytest.approx(-50.0)  # the rest, to its maximum
    assert by["c1"].delta_kw == pytest.approx(-base)  # curtailed to 0 (61 > 50 + base)
    assert d.dispatched_kw == pytest.approx(-11.0 - 50.0 - base)
    assert rig.link.last_kw() == pytest.approx(-50.0)
    curve = rig.v2x.curves[-1][2]
    assert curve_power_w(tuple(curve), 49.75) / 1000.0 == pytest.approx(base - 11.0)
    assert rig.v2x.setpoints == []  # the car still only has its curve


async def test_local_mode_sends_the_curve_again_after_a_discharge_test() -> None:
    # The test's restore clears the V2X profile by id: that is the curve too, so the
    # charger no longer followed the frequency while the service believed it did (the
    # curve was sent again only after 12 h or a reconnection).
    rig = Rig(mode="local")
    setup_fleet(rig)
    rig.sample(50.0)
    await rig.settle()
    assert len(rig.v2x.curves) == 1
    rig.svc.testing.add(("v1", 1))
    for _ in range(10):
        rig.sample(50.0, dt=0.5)
        rig.svc.tick()
    await rig.settle()
    assert len(rig.v2x.curves) == 1 and rig.v2x.setpoints == []
    rig.svc.testing.discard(("v1", 1))
    rig.sample(50.0)
    await rig.settle()
    assert len(rig.v2x.curves) == 2 and rig.unit("v1")["curve_sent"] is True


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(49.0, 51.0), st.floats(0.001, 2.0)), min_size=1,
                max_size=40),
       st.floats(0, 100), st.floats(0, 100))
def test_invariants_over_any_sample_stream(steps: list[tuple[float, float]], v1_soc: float,
                                           b1_soc: float) -> None:
    """Whatever the frequency does: no charger above its allocation; the non-V2X charger
    never discharges nor gets a V2X setpoint; in the safe state nothing discharges; at most
    one setpoint in flight per charger; nothing discharges below its floor."""

    async def run() -> None:
        rig = Rig(rtt_s=0.001)
        setup_fleet(rig, v1_soc=v1_soc, b1_soc=b1_soc)
        base = 10 * KW_PER_A
        for hz, dt in steps:
            rig.sample(hz, dt)
            if dt > 1.0:
                rig.svc.tick()
            d = rig.svc.decision
            assert d is not None
            for uid in ("v1", "c1"):
                assert float(rig.unit(uid)["setpoint_kw"]) <= base + 1e-9
            assert float(rig.unit("c1")["setpoint_kw"]) >= 0
            if d.mode is Mode.SAFE:
                assert all(u.setpoint_kw >= 0 for u in d.units)
            if v1_soc <= 40:
                assert float(rig.unit("v1")["setpoint_kw"]) >= 0
            if b1_soc <= 10:
                assert float(rig.unit("b1")["setpoint_kw"]) >= 0
            await asyncio.sleep(0)
        await rig.settle()
        assert rig.v2x.most_in_flight <= 1
        assert all(a >= 0 for a in rig.svc.caps.values())

    asyncio.run(run())


@settings(max_examples=40, deadline=None)
@given(st.floats(1.0, 63.0), st.floats(49.0, 50.0), st.floats(41, 100), st.floats(21, 100),
       st.floats(0, 16), st.floats(0, 16))
def test_the_group_guard_holds_for_any_fleet(group_a: float, hz: float, v1_soc: float,
                                             c1_soc: float, v1_a: float, c1_a: float) -> None:
    """Both chargers V2X under one group: whatever the dip and the allocations, their
    discharge together never exceeds what the group carries, and no charger is set above
    its allocation."""

    async def run() -> None:
        rig = Rig(group_a=round(group_a, 1), capable={"v1", "c1"})
        rig.plug("v1", v1_a, soc=v1_soc)
        rig.plug("c1", c1_a, soc=c1_soc)
        rig.sample(hz)
        await rig.settle()
        capacity = round(group_a, 1) * KW_PER_A
        units = {u: rig.unit(u) for u in ("v1", "c1")}
        export = sum(-float(u["setpoint_kw"]) for u in units.values()
                     if float(u["setpoint_kw"]) < 0)
        assert export <= capacity + 2e-3  # the status rounds to 1 W
        for u in units.values():
            assert float(u["setpoint_kw"]) <= max(float(u["base_kw"]), 0) + 1e-9
        sent = {c: w for c, _, w, _ in rig.v2x.setpoints}
        assert -sum(min(w, 0.0) for w in sent.values()) / 1000 <= capacity + 1e-3

    asyncio.run(run())


SITE_1PH = """
site: oneph
voltage: 230
mqtt: {url: "mqtt://127.0.0.1:1883"}
frequency_response:
  nominal_hz: 50
  deadband_mhz: 20
  full_activation_mhz: 200
  safety_window_hz: [49.5, 50.5]
  source: {mqtt_topic: "f"}
  units:
    - {charger: p1, max_discharge_kw: 3.6, max_charge_kw: 3.6, capacity_kwh: 40, min_soc: 20}
    - {charger: p2, max_discharge_kw: 3.6, max_charge_kw: 3.6, capacity_kwh: 40, min_soc: 20}
    - {charger: p3, max_discharge_kw: 3.6, max_charge_kw: 3.6, capacity_kwh: 40, min_soc: 20}
groups:
  - id: main
    max_current: 20
    chargers: [p1, p2, p3]
chargers:
  - {id: p1, max_current: 16, phases: 1, phase: L1, v2x: true}
  - {id: p2, max_current: 16, phases: 1, phase: L1, v2x: true}
  - {id: p3, max_current: 16, phases: 1, phase: L2, v2x: true}
"""


async def test_the_group_guard_counts_one_phase_chargers_on_their_line() -> None:
    """Two 1-phase cars on L1 discharging 3.6 kW each push 31 A back through a 20 A group:
    limited to 20 A on L1 (a kW-level check would allow 13.8 kW)."""
    config = parse_site_config(SITE_1PH, "oneph.yaml")
    assert config.frequency_response is not None
    clock = FakeClock(T0)
    state = SiteState(config.topology)
    v2x = FakeV2x({"p1", "p2", "p3"})
    svc = FrequencyService(config.frequency_response, config.topology, clock, bus=None,
                           state_view=state, v2x=v2x,
                           options=FrequencyOptions(tick_s=None))
    for cid in ("p1", "p2", "p3"):
        now = clock.now()
        state.apply(ChargerOnline(cid, now))
        state.apply(StatusChanged(cid, 1, ConnectorStatus.CHARGING, now))
        state.apply(SessionStarted(cid, 1, f"tx-{cid}", now))
        state.apply(MeterReading(cid, 1, now, f"tx-{cid}", soc_percent=90.0))
    clock.advance(0.1)
    svc.on_sample(None, 49.7)  # full activation: each asks -3.6 kW (base 0: nothing allocated)
    for _ in range(20):
        await asyncio.sleep(0)
    sent = {c: w for c, _, w, _ in v2x.setpoints}
    l1_amps = -(sent["p1"] + sent["p2"]) / 230
    assert l1_amps == pytest.approx(20.0, abs=0.01)
    # one scale for every discharge under the group (simple, and never more than asked)
    assert sent["p3"] == pytest.approx(sent["p1"]) and sent["p1"] == pytest.approx(sent["p2"])
    assert "group main" in str(svc.status()["units"][0]["held"])


# --- the one safe path: the shared V2xBook and check_v2x ------------------------------


async def test_every_v2x_setpoint_is_booked_in_the_shared_book() -> None:
    """What the service sends is in the app's book (the discharge test reads it too)."""
    book = V2xBook()
    rig = Rig(book=book)
    setup_fleet(rig)
    rig.sample(49.7)  # full activation
    await rig.settle()
    sent = rig.v2x.last_w("v1")
    assert sent < 0
    low, high = book.bounds(rig.clock.now())[("v1", 1)]
    assert low == high == pytest.approx(sent, abs=0.1)  # accepted: in force, alone


async def test_a_discharge_in_force_elsewhere_is_counted_by_the_guard() -> None:
    """A discharge test holds c1 at -4 kW in the shared book; the group carries 8 A
    (5.52 kW) back: v1's discharge is clipped to what is left, with an alarm."""
    book = V2xBook()
    rig = Rig(group_a=8, capable={"v1"}, book=book)
    rig.plug("v1", 6.0, soc=90)
    now = rig.clock.now()
    command = book.sent(("c1", 1), -4000.0, now, 60.0)
    book.outcome(("c1", 1), command, CommandOutcome(CommandResult.ACCEPTED))
    rig.sample(49.7)
    await rig.settle()
    sent = rig.v2x.last_w("v1")
    assert -(8 * KW_PER_A * 1000 - 4000) - 10 <= sent < 0  # within what the group has left
    assert rig.svc.counters["v2x_guard_clipped"] >= 1
    assert any("discharge guard" in a for a in rig.svc.active_alarms)
    assert "discharge guard" in str(rig.unit("v1")["held"])
    # the discharge test ends: the whole request passes again, the alarm clears
    clear = book.sent(("c1", 1), 0.0, rig.clock.now(), 60.0)
    book.outcome(("c1", 1), clear, CommandOutcome(CommandResult.ACCEPTED))
    rig.clock.advance(1.5)
    rig.sample(49.69)
    await rig.settle()
    assert rig.v2x.last_w("v1") < sent - 100
    assert not any("discharge guard" in a for a in rig.svc.active_alarms)


async def test_a_curve_is_clipped_by_the_guards_before_it_is_sent() -> None:
    """Local mode: the curve's discharge end passes the group guard (8 A group: 5.52 kW)
    and check_v2x with what is in force (a discharge test holding c1 at -4 kW)."""
    book = V2xBook()
    rig = Rig(mode="local", group_a=8, capable={"v1"}, book=book)
    rig.plug("v1", 0.0, soc=90)
    rig.sample(50.0)
    await rig.settle()
    _, _, curve, _ = rig.v2x.curves[-1]
    group_w = 8 * KW_PER_A * 1000
    assert -group_w - 10 <= min(p for _, p in curve) < -group_w + 50  # clipped, not dropped
    assert rig.svc.counters["v2x_guard_clipped"] == 0  # the group guard did it
    command = book.sent(("c1", 1), -4000.0, rig.clock.now(), 60.0)
    book.outcome(("c1", 1), command, CommandOutcome(CommandResult.ACCEPTED))
    rig.svc.units["v1"].curve_sent = False  # as after a reconnection: a new curve
    rig.sample(50.0)
    await rig.settle()
    # the old curve counts until the new one is accepted: even no discharge passes, so
    # the new curve discharges nothing (flat at the allocation: it can only lower it) ...
    _, _, curve, _ = rig.v2x.curves[-1]
    assert min(p for _, p in curve) == 0.0
    # ... and once that is in force, the retry gets what the group has left
    rig.clock.advance(1.1)
    rig.sample(50.0)
    await rig.settle()
    _, _, curve, _ = rig.v2x.curves[-1]
    assert -(group_w - 4000) - 10 <= min(p for _, p in curve) < -(group_w - 4000) + 50
    assert rig.svc.counters["v2x_guard_clipped"] == 2
    assert any("discharge guard" in a for a in rig.svc.active_alarms)


SETTINGS = st.builds(
    lambda nominal, band, full: FrequencySettings(nominal, band, full, nominal - 0.5,
                                                  nominal + 0.5, hysteresis_hz=band / 2),
    st.sampled_from([50.0, 60.0]), st.floats(0.0, 0.05), st.floats(0.06, 0.4))


@settings(max_examples=200, deadline=None)
@given(SETTINGS, st.lists(st.tuples(st.floats(0.0, 22.0), st.floats(0.5, 22.0)),
                          min_size=1, max_size=5), st.floats(-0.49, 0.49))
def test_the_local_curve_and_the_central_droop_agree(
        s: FrequencySettings, units: list[tuple[float, float]], offset: float) -> None:
    """At any frequency, the curves (what each charger does on its own in local mode)
    ask in total what the central droop dispatches (after the circuit guard: never above
    the allocation); with one unit, exactly its setpoint."""
    specs = [UnitSpec(f"u{i}", UnitKind.CHARGER, max_discharge_kw=p, max_charge_kw=p,
                      capacity_kwh=10_000.0, min_soc_pct=0.0)
             for i, (_, p) in enumerate(units)]
    responder = FrequencyResponder(s, specs, 0.0)
    states = {f"u{i}": UnitState(f"u{i}", base, 100.0, True, True)
              for i, (base, _) in enumerate(units)}
    hz = s.nominal_hz + offset
    decision = responder.sample(1.0, hz, states)
    central = [min(d.setpoint_kw, states[d.id].base_kw) for d in decision.units]
    local = [curve_power_w(freq_watt_curve(s, base_w=base * 1000.0, max_charge_w=0.0,
                                           max_discharge_w=p * 1000.0), hz) / 1000.0
             for base, p in units]
    assert sum(central) == pytest.approx(sum(local), abs=0.01)
    if len(units) == 1:
        assert central[0] == pytest.approx(local[0], abs=0.01)


# --- the car's V2X offer (OCPP 2.1 NotifyEVChargingNeeds) ------------------------------

NO_BPT = V2xOffer(modes=("AC_three_phase",), requested="AC_three_phase")


def bpt(max_discharge_w: float | None) -> V2xOffer:
    return V2xOffer(modes=("AC_three_phase", "AC_BPT"), requested="AC_BPT",
                    control_mode="DynamicControl", max_discharge_w=max_discharge_w)


def offer(rig: Rig, charger: str, what: V2xOffer) -> None:
    rig.state.apply(ChargingNeeds(charger, 1, rig.clock.now(), energy_needed_kwh=10.0,
                                  v2x_offer=what))


async def test_a_car_without_bpt_is_only_curtailed_while_a_bpt_car_discharges() -> None:
    rig = Rig(capable={"v1", "c1"})
    rig.plug("v1", 10.0, soc=80.0)
    rig.plug("c1", 10.0, soc=80.0)
    offer(rig, "v1", NO_BPT)
    offer(rig, "c1", bpt(None))
    rig.sample(50.0)
    await rig.settle()
    rig.sample(49.8)  # full activation
    await rig.settle()
    v1, c1 = rig.unit("v1"), rig.unit("c1")
    assert v1["v2x"] is False and "no bidirectional transfer" in str(v1["v2x_detail"])
    assert "AC_three_phase" in str(v1["v2x_detail"])
    assert v1["ev_offer"] == NO_BPT.json() and v1["max_discharge_kw"] == 0.0
    assert float(v1["setpoint_kw"]) >= 0  # charges less, never discharges
    assert not [c for c, *_ in rig.v2x.setpoints if c == "v1"]  # never a V2X profile
    assert ("v1", 1) in rig.svc.caps  # curtailed by a cap, like a charger without V2X
    assert c1["v2x"] is True and float(c1["setpoint_kw"]) < 0
    assert rig.v2x.last_w("c1") < 0


async def test_a_car_that_says_nothing_keeps_the_site_file_decision() -> None:
    rig = Rig()
    setup_fleet(rig)
    rig.sample(49.8)
    await rig.settle()
    v1 = rig.unit("v1")
    assert v1["v2x"] is True and v1["ev_offer"] is None and v1["max_discharge_kw"] == 11.0
    assert rig.v2x.last_w("v1") < 0


async def test_the_discharge_is_clipped_to_the_cars_max_discharge_power() -> None:
    rig = Rig()
    setup_fleet(rig)
    offer(rig, "v1", bpt(2000.0))
    rig.sample(49.7)  # beyond full activation
    await rig.settle()
    v1 = rig.unit("v1")
    assert v1["max_discharge_kw"] == 2.0
    assert float(v1["setpoint_kw"]) == pytest.approx(-2.0, abs=1e-3)
    assert rig.v2x.last_w("v1") == pytest.approx(-2000.0, abs=0.1)
    assert min(w for c, _, w, _ in rig.v2x.setpoints if c == "v1") >= -2000.0 - 0.1
    assert "maxDischargePower" in str(v1["held"])
    # the car leaves: its offer goes with it (and the next one may offer more)
    rig.state.apply(SessionStopped("v1", 1, "tx-v1", rig.clock.now()))
    assert rig.state.session_info(("v1", 1)).v2x_offer is None


async def test_local_mode_the_curve_never_discharges_beyond_the_car() -> None:
    rig = Rig(mode="local")
    setup_fleet(rig)
    offer(rig, "v1", bpt(1500.0))
    rig.sample(50.0)
    await rig.settle()
    rig.svc.tick()
    await rig.settle()
    assert rig.v2x.curves
    _, _, curve, _ = rig.v2x.curves[-1]
    assert min(p for _, p in curve) == pytest.approx(-1500.0, abs=0.01)
    assert curve_power_w(tuple(curve), 49.0) >= -1500.0 - 0.01


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["central", "local"]),
       st.lists(st.sampled_from(["AC_three_phase", "AC_BPT", "DC_BPT", "AC_DER"]),
                min_size=1, max_size=3),
       st.none() | st.floats(0, 20_000), st.floats(0, 16), st.floats(41, 100),
       st.lists(st.floats(49.0, 51.0), min_size=1, max_size=6))
def test_any_offer_the_discharge_sent_stays_within_the_car_and_the_unit(
        mode: str, modes: list[str], max_w: float | None, amps: float, soc: float,
        hzs: list[float]) -> None:
    """Whatever the car offers and the frequency does, no setpoint or curve sent discharges
    more than the car's maxDischargePower nor the unit's 11 kW; a car without BPT gets no
    V2X command at all."""

    async def run() -> None:
        rig = Rig(mode=mode)
        rig.plug("v1", amps, soc=soc)
        what = V2xOffer(modes=tuple(modes), requested=modes[0], max_discharge_w=max_w)
        offer(rig, "v1", what)
        for hz in hzs:
            rig.sample(hz, 0.5)
            rig.svc.tick()
            await rig.settle()
        most_w = 11_000.0 if max_w is None else min(11_000.0, max_w)
        lows = [w for c, _, w, _ in rig.v2x.setpoints if c == "v1"]
        lows += [min(p for _, p in curve) for c, _, curve, _ in rig.v2x.curves if c == "v1"]
        if not what.bidirectional:
            assert lows == []
        for low in lows:
            assert -low <= most_w + 0.1

    asyncio.run(run())
