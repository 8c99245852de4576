"""Following a live meter: per-meter max age, the stale-meter alarm, and a stable estimate
of the uncontrolled load while our own chargers (which the meter also measures) change.

The model test at the end drives the real Controller on a fake clock against modeled cars
that follow their setpoints after a lag, a modeled meter (uncontrolled load + what the cars
draw) and charger MeterValues every few seconds, with random steps of the uncontrolled
load: the group never exceeds its limit beyond what the step itself causes, and the
setpoints settle after each step.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridshare.adapters.ocpp import CentralSystem, ChargerCredentials, CsmsConfig
from gridshare.adapters.ocpp.meter import OcppMeter, meter_sample
from gridshare.clock import FakeClock
from gridshare.controller.loop import Controller, ControllerSettings
from gridshare.controller.state import (
    Impact,
    MeterInfo,
    SiteState,
    StateSettings,
    estimate_uncontrolled,
)
from gridshare.core.topology import Topology
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest
from gridshare.events import (
    ChargerBooted,
    ChargerOnline,
    ConnectorStatus,
    MeterReading,
    MeterSample,
    StatusChanged,
)

from .charger_model import Rig
from .conftest import T0, RecordingDriver, t

HOUSE = MeterInfo("house", "ocpp", "ocpp house-meter connector 0", 10.0)
ALARM = "meter house: no reading for 10 s (ocpp house-meter connector 0) — group main at 0 A " \
        "headroom"
SINCE_START = "meter house: no reading since start-up (ocpp house-meter connector 0) — group " \
              "main at 0 A headroom"


def metered_state(metered: Topology, settle_s: float = 5.0) -> SiteState:
    state = SiteState(metered, StateSettings(meters=(HOUSE,)), settle_s=settle_s)
    for cid in metered.chargers:
        state.apply(ChargerBooted(cid, t(0), "ocpp1.6"))
        accept(state, cid, 0.0, 0)  # idle connectors held at 0 A, as the controller does
    return state


def plug(state: SiteState, charger: str, at_s: float) -> None:
    state.apply(StatusChanged(charger, 1, ConnectorStatus.CHARGING, t(at_s)))


def accept(state: SiteState, charger: str, amps: float, at_s: float) -> None:
    key = (charger, 1)
    cid = state.record_sent(key, amps, t(at_s), 600)
    state.record_outcome(key, cid, CommandOutcome(CommandResult.ACCEPTED, valid_to=t(at_s + 600)),
                         t(at_s), 5.0)


def reading(charger: str, amps: float, at_s: float) -> MeterReading:
    return MeterReading(charger, 1, t(at_s), current_a=(amps, amps, amps))


# --- the estimator ------------------------------------------------------------------------


def test_quiet_estimate_is_meter_minus_what_ours_draw() -> None:
    est, held = estimate_uncontrolled((30.0, 20.0, 5.0), (16.0, 16.0, 16.0), (0.0, 0.0, 0.0),
                                      quiet=True, held_a=(1.0, 1.0, 1.0))
    assert est == held == (14.0, 4.0, 0.0)


def test_transition_holds_the_last_quiet_value_unless_the_floor_is_higher() -> None:
    # A car slowed down: its lagging reading would make the meter look emptier than it is.
    est, held = estimate_uncontrolled((20.0, 20.0, 20.0), (16.0, 16.0, 16.0),
                                      (4.0, 12.0, 4.0), quiet=False,
                                      held_a=(10.0, 10.0, 10.0))
    assert est == held == (10.0, 12.0, 10.0)  # what the floor lifted stays lifted:
    est, held = estimate_uncontrolled((20.0, 20.0, 20.0), (16.0, 16.0, 16.0),
                                      (4.0, 4.0, 4.0), quiet=False, held_a=held)
    assert est == held == (10.0, 12.0, 10.0)  # a dip of the floor (settling) lowers nothing
    # The meter reads less than what is held: everything it counts could be other load,
    # never more.
    est, held = estimate_uncontrolled((8.0, 20.0, 20.0), (16.0, 16.0, 16.0),
                                      (0.0, 0.0, 0.0), quiet=False,
                                      held_a=(10.0, 10.0, 10.0))
    assert est == held == (8.0, 10.0, 10.0)
    # Nothing held yet: the whole meter (safe; corrected at the first quiet moment).
    est, held = estimate_uncontrolled((20.0, 20.0, 20.0), (16.0, 16.0, 16.0),
                                      (4.0, 6.0, 4.0), quiet=False, held_a=None)
    assert est == held == (20.0, 20.0, 20.0)


# --- the state ----------------------------------------------------------------------------


def test_each_meter_has_its_own_max_age(metered: Topology) -> None:
    state = metered_state(metered)
    assert state.stale_groups(t(0)) == ["main"]  # nothing since start-up: fail closed
    state.apply(MeterSample("house", t(1), (5.0, 5.0, 5.0)))
    assert state.refresh(t(1)) is Impact.NONE
    assert state.stale_groups(t(11)) == []
    assert state.refresh(t(11.5)) is Impact.URGENT  # its 10 s, not the default 60 s
    assert state.to_snapshot(t(11.5)).conditions("main").meter_stale
    assert state.meter_alarms(t(11.5)) == {"house": ALARM}
    assert state.apply(MeterSample("house", t(12), (5.0, 5.0, 5.0))) is Impact.CHANGED
    assert state.meter_alarms(t(12)) == {}
    assert state.meter_sample("house") == ((5.0, 5.0, 5.0), t(12))


def test_no_reading_since_start_up_is_reported_after_max_age(metered: Topology) -> None:
    state = metered_state(metered)
    state.refresh(t(0))
    assert state.meter_alarms(t(9)) == {}  # fails closed, but a source may still connect
    assert state.meter_alarms(t(10)) == {"house": SINCE_START}


def test_a_car_slowing_down_does_not_lower_the_uncontrolled_load(metered: Topology) -> None:
    state = metered_state(metered)
    plug(state, "m1", 0)
    accept(state, "m1", 20.0, 0)
    state.apply(reading("m1", 20.0, 6))
    state.apply(MeterSample("house", t(7), (30.0, 30.0, 30.0)))
    assert state.metered_uncontrolled("main") == (10.0, 10.0, 10.0)  # quiet
    # Cut to 10 A: the car follows in a few seconds, its own reading later still.
    accept(state, "m1", 10.0, 8)
    state.apply(MeterSample("house", t(10), (20.0, 20.0, 20.0)))  # it already slowed down
    # Meter − stale reading would say 0 A of other load: the quiet 10 A holds.
    assert state.metered_uncontrolled("main") == (10.0, 10.0, 10.0)
    state.apply(reading("m1", 10.0, 14))
    state.apply(MeterSample("house", t(14), (20.0, 20.0, 20.0)))  # read back, settled
    assert state.metered_uncontrolled("main") == (10.0, 10.0, 10.0)


def test_other_loads_rising_during_a_transition_are_seen(metered: Topology) -> None:
    state = metered_state(metered)
    plug(state, "m1", 0)
    accept(state, "m1", 16.0, 0)
    state.apply(reading("m1", 16.0, 6))
    state.apply(MeterSample("house", t(7), (26.0, 26.0, 26.0)))
    assert state.metered_uncontrolled("main") == (10.0, 10.0, 10.0)
    accept(state, "m1", 14.0, 8)  # in transition from here
    # A heater starts (+12 A): the meter minus m1's worst case (16 A, settling) shows it.
    assert state.apply(MeterSample("house", t(9), (38.0, 38.0, 38.0))) is Impact.URGENT
    assert state.metered_uncontrolled("main") == (22.0, 22.0, 22.0)


def test_a_car_arriving_is_a_transition(metered: Topology) -> None:
    state = metered_state(metered)
    plug(state, "m1", 0)
    accept(state, "m1", 16.0, 0)
    state.apply(reading("m1", 16.0, 6))
    state.apply(MeterSample("house", t(7), (26.0, 26.0, 26.0)))
    plug(state, "m2", 8)
    state.apply(reading("m2", 0.0, 9))  # held at 0 A until it gets its share
    accept(state, "m2", 16.0, 10)
    # It draws 16 A at once; its own reading still says 0 A: meter − readings would take
    # its 16 A for other load (and take them back from both cars next time).
    assert state.apply(MeterSample("house", t(11), (42.0, 42.0, 42.0))) is Impact.NONE
    assert state.metered_uncontrolled("main") == (10.0, 10.0, 10.0)
    state.apply(reading("m2", 16.0, 16))
    assert state.apply(MeterSample("house", t(16), (42.0, 42.0, 42.0))) is Impact.NONE


def test_meter_noise_within_the_deadband_changes_nothing(metered: Topology) -> None:
    state = metered_state(metered)
    assert state.apply(MeterSample("house", t(1), (10.0, 10.0, 10.0))) is Impact.URGENT
    assert state.apply(MeterSample("house", t(2), (10.4, 9.6, 10.0))) is Impact.NONE
    assert state.metered_uncontrolled("main") == (10.0, 10.0, 10.0)
    assert state.apply(MeterSample("house", t(3), (11.0, 10.0, 10.0))) is Impact.URGENT


# --- the loop: alarms and status ------------------------------------------------------------


FAST = ControllerSettings(tick_s=None, debounce_s=0.0, settle_s=5.0,
                          state=StateSettings(meters=(HOUSE,)))


async def test_a_quiet_meter_pauses_its_group_with_one_clear_alarm(
        metered: Topology, driver: RecordingDriver, clock: FakeClock) -> None:
    c = Controller(metered, driver, clock, settings=FAST)
    await c.start()
    try:
        for cid in metered.chargers:
            c.handle(ChargerBooted(cid, clock.now(), "ocpp1.6"))
        c.handle(StatusChanged("m1", 1, ConnectorStatus.CHARGING, clock.now()))
        c.handle(StatusChanged("m2", 1, ConnectorStatus.CHARGING, clock.now()))
        await c.settle()
        clock.advance(10)
        await c.tick()
        await c.settle()
        messages = [a.message for a in c.recent_alarms]
        assert messages == [SINCE_START]  # not 'offline chargers alone draw ...'
        assert c.status().meters[0].stale and c.status().meters[0].age_s is None
        for _ in range(12):  # the cars draw what they are given, at once
            ours = sum(c.in_force().values())
            c.handle(MeterSample("house", clock.now(), (10 + ours, 10 + ours, 10 + ours)))
            await c.tick()
            await c.settle()
            clock.advance(1)
        # 40 A less 10 A of other load and the 0.5 A deadband kept in reserve
        assert sorted((driver.last("m1"), driver.last("m2"))) == [14.7, 14.8]
        view = c.status().to_dict()["meters"][0]
        assert view == {"id": "house", "source": "ocpp",
                        "where": "ocpp house-meter connector 0",
                        "current": [39.5, 39.5, 39.5], "age_s": 1.0, "stale": False,
                        "groups": ["main"]}
        assert c.recent_alarms[-1].cleared
        clock.advance(10)
        await c.tick()
        await c.settle()
        assert driver.last("m1") == driver.last("m2") == 0.0
        assert c.recent_alarms[-1].message == ALARM
        assert [a.kind for a in c.recent_alarms] == ["meter", "meter", "meter"]
    finally:
        await c.stop()


# --- the model: a meter that sees what the modeled cars draw ---------------------------------

LIMIT_A = 40.0
CHARGER_READ_S = 7
"""Charger MeterValues period (each charger at its own offset)."""
SETTLE_S = 5.0
MODEL = ControllerSettings(lease_s=120.0, settle_s=SETTLE_S, tick_s=None, debounce_s=0.0,
                           state=StateSettings(meters=(MeterInfo("house", "ocpp", "", 30.0),),
                                               reading_max_age_s=60.0))
TRANSIENT_S = SETTLE_S + CHARGER_READ_S + 4
"""How long a step of the other loads may show above the limit: a sample (1 s), the cut,
the car's lag, and, when the step lands in one of our transitions, the read-back."""

steps = st.lists(
    st.tuples(st.integers(min_value=30, max_value=70),
              st.tuples(*[st.floats(min_value=0.0, max_value=30.0).map(lambda x: round(x, 1))
                          for _ in range(3)])),
    min_size=1, max_size=4)


def run_model(metered: Topology, plan: list[tuple[int, tuple[float, float, float]]]) -> None:
    asyncio.run(_model(metered, plan))


async def _model(metered: Topology, plan: list[tuple[int, tuple[float, float, float]]],
                 ) -> None:
    clock = FakeClock(T0)
    rig = Rig(metered, MODEL, clock)
    for cid in metered.chargers:
        rig.boot(cid)
    rig.driver.chargers["m1"].restarting_until = None
    rig.driver.chargers["m2"].restarting_until = None
    rig.plug("m1")
    rig.plug("m2")
    other = (5.0, 5.0, 5.0)
    starts: list[tuple[int, tuple[float, float, float], tuple[float, float, float]]] = []
    schedule: dict[int, tuple[float, float, float]] = {}
    at = 40  # the cars settle on the first value first
    for gap, value in plan:
        schedule[at] = value
        at += gap
    end = at + 40
    sent: dict[str, list[tuple[int, float]]] = {"m1": [], "m2": []}
    last: dict[str, float | None] = {"m1": None, "m2": None}
    seen = 0
    for second in range(end):
        if second in schedule:
            starts.append((second, other, schedule[second]))
            other = schedule[second]
        draw = rig.driver.group_draw(metered, "main")
        rig.controller.handle(MeterSample("house", clock.now(), (
            other[0] + draw[0], other[1] + draw[1], other[2] + draw[2])))
        for i, cid in enumerate(("m1", "m2")):
            if (second + 3 * i) % CHARGER_READ_S == 0:
                amps = rig.driver.chargers[cid].draws(1, clock.now())
                rig.controller.handle(MeterReading(cid, 1, clock.now(),
                                                   current_a=(amps, amps, amps)))
        await rig.answer_all()
        for request in rig.driver.submitted[seen:]:
            sent[request.charger].append((second, request.current_a))
        seen = len(rig.driver.submitted)
        # The invariant: what really flows, against the limit plus the rises of the other
        # loads that are still within their transient.
        rises = sum(max(0.0, *(new[p] - old[p] for p in range(3)))
                    for s, old, new in starts if second - s < TRANSIENT_S)
        draw = rig.driver.group_draw(metered, "main")
        total = max(other[p] + draw[p] for p in range(3))
        if second >= 40:
            fits = max(other) <= LIMIT_A
            assert not fits or total <= LIMIT_A + rises + 0.05, \
                f"t={second}: {total:.1f} A > {LIMIT_A} A + {rises:.1f} A (plan {plan})"
        clock.advance(1)
    # Settling: after each step, each connector's setpoint changes a bounded number of
    # times (no sustained oscillation), and nothing changes in the last 30 s.
    bounds = [s for s, _, _ in starts] + [end]
    for cid, values in sent.items():
        changes: list[int] = []
        for second, amps in values:
            if last[cid] is None or abs(amps - (last[cid] or 0.0)) > 1e-9:
                changes.append(second)
            last[cid] = amps
        for begin, stop in itertools.pairwise(bounds):
            within = [s for s in changes if begin <= s < stop]
            assert len(within) <= 3, f"{cid}: changes at {within} after the step at {begin}"
        assert not [s for s in changes if s >= end - 30], f"{cid} still moving: {changes}"


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=steps)
def test_meter_following_is_safe_and_settles(metered: Topology,
                                             plan: list[tuple[int, tuple[float, float, float]]],
                                             ) -> None:
    run_model(metered, plan)


@pytest.mark.parametrize("plan", [
    [(60, (10.0, 10.0, 10.0))],  # 40 A, 10 A other: 15 A each
    [(40, (25.0, 2.0, 2.0)), (40, (2.0, 2.0, 2.0))],  # up a lot on L1, then down
    [(30, (0.0, 0.0, 0.0)), (30, (30.0, 30.0, 30.0)), (40, (12.5, 0.0, 7.0))],
], ids=["steady", "up-down", "swings"])
def test_meter_following_cases(metered: Topology,
                               plan: list[tuple[int, tuple[float, float, float]]]) -> None:
    run_model(metered, plan)


def test_model_steady_state_shares_what_the_meter_leaves(metered: Topology) -> None:
    """40 A house, 10 A of other load: both cars at 15 A once settled."""
    async def body() -> None:
        clock = FakeClock(T0)
        rig = Rig(metered, MODEL, clock)
        for cid in metered.chargers:
            rig.boot(cid)
            rig.driver.chargers[cid].restarting_until = None
        rig.plug("m1")
        rig.plug("m2")
        for second in range(60):
            draw = rig.driver.group_draw(metered, "main")
            rig.controller.handle(MeterSample("house", clock.now(),
                                              (10 + draw[0], 10 + draw[1], 10 + draw[2])))
            if second % 5 == 0:
                for cid in ("m1", "m2"):
                    amps = rig.driver.chargers[cid].draws(1, clock.now())
                    rig.controller.handle(MeterReading(cid, 1, clock.now(),
                                                       current_a=(amps, amps, amps)))
            await rig.answer_all()
            clock.advance(1)
        # 40 A less 10 A of other load and the 0.5 A deadband kept in reserve
        assert sorted(rig.driver.chargers[cid].draws(1, clock.now())
                      for cid in ("m1", "m2")) == [14.7, 14.8]
        assert clock.now() - T0 == timedelta(seconds=60)

    asyncio.run(body())


# --- the OCPP meter source ------------------------------------------------------------------


def test_ocpp_meter_reads_currents_per_phase_or_splits_power() -> None:
    meter = OcppMeter("house", "meter-1", 0, phases=3, dedicated=True)
    at = t(1)

    def sample(**kw: object) -> MeterSample | None:
        return meter_sample(MeterReading("meter-1", 0, at, **kw),  # type: ignore[arg-type]
                            meter, voltage_v=230.0)

    assert sample(current_a=(12.0, 7.5, 3.0)) == MeterSample("house", at, (12.0, 7.5, 3.0))
    # A phase it leaves out counts as its largest: never less headroom-eating than it says.
    assert sample(current_a=(12.0, None, 3.0)) == MeterSample("house", at, (12.0, 12.0, 3.0))
    assert sample(power_w=6900.0) == MeterSample("house", at, (10.0, 10.0, 10.0))
    assert sample(energy_wh=5.0) is None
    one = OcppMeter("flat", "meter-1", 0, phases=1)
    assert meter_sample(MeterReading("meter-1", 0, at, power_w=2300.0), one,
                        voltage_v=230.0) == MeterSample("flat", at, (10.0, 0.0, 0.0))


def test_csms_publishes_a_meters_samples_and_nothing_else_of_a_dedicated_meter() -> None:
    published: list[object] = []
    csms = CentralSystem(CsmsConfig(chargers={"cp-1": ChargerCredentials(),
                                              "meter-1": ChargerCredentials()}),
                         published.append, meters=[
                             OcppMeter("house", "meter-1", 0, dedicated=True),
                             OcppMeter("garage", "cp-1", 0)])
    csms.emit(ChargerOnline("meter-1", t(0)))
    meters_reading = MeterReading("meter-1", 0, t(1), current_a=(20.0, 20.0, 20.0))
    csms.emit(meters_reading)
    assert published == [MeterSample("house", t(1), (20.0, 20.0, 20.0))]
    published.clear()
    # A charger's connector 0 is its whole supply: a meter, and still the charger's reading.
    reading = MeterReading("cp-1", 0, t(2), current_a=(16.0, 16.0, 16.0))
    csms.emit(reading)
    assert published == [MeterSample("garage", t(2), (16.0, 16.0, 16.0)), reading]
    published.clear()
    other = MeterReading("cp-1", 1, t(3), current_a=(16.0, 16.0, 16.0))
    csms.emit(other)
    assert published == [other]
    # What a NATS gateway waits for JetStream to acknowledge: exactly what emit publishes.
    assert csms.published_as([meters_reading, reading, other]) == [
        MeterSample("house", t(1), (20.0, 20.0, 20.0)),
        MeterSample("garage", t(2), (16.0, 16.0, 16.0)), reading, other]
    no_numbers = MeterReading("meter-1", 0, t(4), energy_wh=5.0)
    assert csms.published_as([no_numbers]) == []
    assert "meter_no_current_or_power" not in csms.counters.rejected  # counted by emit only
    csms.emit(no_numbers)
    assert csms.counters.rejected["meter_no_current_or_power"] == 1


async def test_a_dedicated_meter_is_never_sent_a_profile() -> None:
    csms = CentralSystem(CsmsConfig(chargers={"meter-1": ChargerCredentials()}),
                         lambda _e: None,
                         meters=[OcppMeter("house", "meter-1", 0, dedicated=True)])
    (outcome,) = csms.submit_setpoints([SetpointRequest("meter-1", 1, 16.0, 60.0)])
    assert (await outcome).result is CommandResult.REJECTED
    assert (await csms.apply_failsafe("meter-1", 0.0)).result is CommandResult.REJECTED
    assert (await csms.apply_charger_cap("meter-1", 10.0)).result is CommandResult.REJECTED


def test_app_accepts_a_dedicated_meter_as_a_charge_point() -> None:
    from gridshare.app import ServeOptions, build_app
    from gridshare.config import parse_site_config

    config = parse_site_config("""
site: house
meters:
  - {id: house, source: ocpp, charger: meter-1, max_age: 12}
  - {id: garage, source: ocpp, charger: cp-1, connector: 0}
groups:
  - {id: main, max_current: 40, meter: house, chargers: [cp-1]}
chargers:
  - {id: cp-1, max_current: 32, phases: 3, failsafe_current: 0}
""", "house.yaml")
    app = build_app(config.topology, ServeOptions(api_port=None, db_url="none",
                                                  meters=config.meters))
    assert set(app.csms.config.chargers) == {"cp-1", "meter-1"}
    assert app.meter_sources is None  # no mqtt or http meter
    state = app.controller.state
    assert state.max_age_s("house") == 12.0
    assert [state.meter_info(m) for m in state.meter_ids()] == [
        MeterInfo("house", "ocpp", "ocpp meter-1 connector 0", 12.0),
        MeterInfo("garage", "ocpp", "ocpp cp-1 connector 0", 30.0)]
