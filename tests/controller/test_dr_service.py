"""The demand-response service on a fake clock: caps from the zone's baseline, one
publication per change, compliance from the meter values, escalation and alerts,
persistence across a restart (in memory and on SQLite through the app)."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridshare.app import ServeOptions, build_app
from gridshare.bus import MemoryBus
from gridshare.clock import FakeClock, SystemClock
from gridshare.config import DemandResponseSpec, parse_site
from gridshare.controller.audit import AlarmRecord
from gridshare.controller.dr import Baseline, DrService
from gridshare.controller.loop import ControllerSettings
from gridshare.controller.state import SiteState
from gridshare.core.dr import (
    CurtailPolicy,
    DrPriority,
    DrSignal,
    EventState,
    SignalConflict,
    SignalType,
    Submitted,
)
from gridshare.core.topology import ConnectorKey, Topology
from gridshare.events import (
    ChargerOnline,
    ConnectorCapsChanged,
    ConnectorStatus,
    MeterReading,
    SessionStarted,
    StatusChanged,
)

from .conftest import T0, t

SITE = """
site: drtest
voltage: 230
zones:
  - {id: Z1, capacity_kw: 100}
  - {id: Z2}
groups:
  - id: main
    max_current: 250
    chargers: [s1, s2, s3, s4]
chargers:
  - {id: s1, max_current: 32, phases: 3, zone: Z1, priority: 1}
  - {id: s2, max_current: 32, phases: 3, zone: Z1, priority: 2, contract_max_kw: 15}
  - {id: s3, max_current: 16, phases: 3, zone: Z1, priority: 3}
  - {id: s4, max_current: 32, phases: 3, zone: Z2}
"""

KW_PER_A = 3 * 230 / 1000.0
"""kW of one A per phase on a 3-phase 230 V charger."""


class FakeStore:
    """The DrStore part of gridshare.store.Store, in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.alarms: list[AlarmRecord] = []
        self.writes = 0

    def record_dr_event(self, row: dict[str, Any]) -> None:
        self.writes += 1
        self.rows[row["signal_id"]] = dict(row)

    def record_alarm(self, record: AlarmRecord) -> None:
        self.alarms.append(record)

    async def dr_events(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows.values()]


class Site:
    """A DrService on a bare SiteState, a memory bus and a fake clock."""

    def __init__(self, policy: CurtailPolicy = CurtailPolicy.PROPORTIONAL,
                 store: FakeStore | None = None) -> None:
        self.topology: Topology = parse_site(SITE, "dr-site")
        self.clock = FakeClock(T0)
        self.bus = MemoryBus()
        self.sub = self.bus.subscribe("test")
        self.state = SiteState(self.topology)
        self.store = store if store is not None else FakeStore()
        self.dr = DrService(self.topology, DemandResponseSpec(policy=policy), self.bus,
                            self.clock, store=self.store, state_view=self.state, tick_s=None)
        self.alerts: list[dict[str, Any]] = []
        self.dr.on_alert(self.alerts.append)

    def plug(self, charger: str, amps: float) -> None:
        now = self.clock.now()
        self.state.apply(ChargerOnline(charger, now))
        self.state.apply(StatusChanged(charger, 1, ConnectorStatus.CHARGING, now))
        self.state.apply(SessionStarted(charger, 1, f"tx-{charger}", now))
        self.draw(charger, amps)

    def draw(self, charger: str, amps: float) -> None:
        self.state.apply(MeterReading(charger, 1, self.clock.now(), f"tx-{charger}",
                                      current_a=(amps, amps, amps)))

    def follow(self, *, ignore: tuple[str, ...] = (), default_a: dict[str, float]) -> None:
        """Every station draws its cap (or, uncapped, ``default_a``); ``ignore`` keep
        drawing their default whatever the cap."""
        caps = self.dr.caps
        for cid, amps in default_a.items():
            cap = caps.get((cid, 1))
            self.draw(cid, amps if cap is None or cid in ignore else min(cap, amps))

    def published(self) -> list[ConnectorCapsChanged]:
        out = []
        while (event := self.sub.get_nowait()) is not None:
            if isinstance(event, ConnectorCapsChanged):
                out.append(event)
        return out

    def signal(self, signal_id: str = "E1", *, zone: str = "Z1", kw: float = 10.0,
               start_s: float = 0.0, minutes: float = 60.0,
               kind: SignalType = SignalType.CURTAIL,
               priority: DrPriority = DrPriority.ECONOMIC) -> DrSignal:
        start = t(start_s)
        return DrSignal(signal_id, zone, kind, kw, start, start + timedelta(minutes=minutes),
                        priority, self.clock.now())

    def tick(self, seconds: float, *, default_a: dict[str, float],
             ignore: tuple[str, ...] = ()) -> None:
        """``seconds`` one by one: the cars follow their caps, a cycle each second."""
        for _ in range(int(seconds)):
            self.clock.advance(1.0)
            self.follow(default_a=default_a, ignore=ignore)
            self.dr.cycle()


LOADS = {"s1": 32.0, "s2": 20.0, "s3": 16.0}
"""s1 22.08 kW, s2 13.8 kW, s3 11.04 kW: Z1 draws 46.92 kW."""


def caps_kw(caps: dict[ConnectorKey, float], zone: str = "Z1") -> float:
    return sum(a * KW_PER_A for k, a in caps.items() if k[0] != "s4" or zone == "Z2")


@pytest.fixture
def site() -> Site:
    s = Site()
    for cid, amps in LOADS.items():
        s.plug(cid, amps)
    s.plug("s4", 32.0)
    return s


def test_active_signal_sends_one_publication_of_proportional_caps(site: Site) -> None:
    outcome, event = site.dr.submit(site.signal(kw=10.0))
    assert outcome is Submitted.CREATED
    assert event.state(site.clock.now()) is EventState.ACTIVE
    [published] = site.published()
    assert published.source == "demand_response"
    caps = dict(published.caps)
    assert set(caps) == {("s1", 1), ("s2", 1), ("s3", 1)}  # Z2 untouched
    baseline = sum(LOADS.values()) * KW_PER_A
    assert caps_kw(caps) <= baseline - 10.0 + 1e-6
    assert caps_kw(caps) == pytest.approx(baseline - 10.0, abs=0.05)
    # Proportional: each station sheds its share of the zone's load.
    for cid, amps in LOADS.items():
        share = 10.0 * amps / sum(LOADS.values())
        assert caps[(cid, 1)] * KW_PER_A == pytest.approx(amps * KW_PER_A - share, abs=0.01)
    assert site.dr.baseline("Z1") is not None
    assert site.dr.baseline("Z1").kw == pytest.approx(baseline)  # type: ignore[union-attr]
    # Nothing changed: a cycle publishes nothing, a redelivery neither.
    site.clock.advance(1.0)
    site.dr.cycle()
    again, same = site.dr.submit(site.signal(kw=10.0))
    assert again is Submitted.REDELIVERED and same is event
    assert site.published() == []


def test_conflicting_signal_and_unknown_zone_change_nothing(site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0))
    site.published()
    with pytest.raises(SignalConflict):
        site.dr.submit(site.signal(kw=20.0))
    with pytest.raises(ValueError, match="zone_id: unknown zone 'Z9'"):
        site.dr.submit(site.signal("E2", zone="Z9"))
    assert [e.signal.signal_id for e in site.dr.events()] == ["E1"]
    assert site.published() == []
    assert site.dr.get("E1").signal.target_reduction_kw == 10.0  # type: ignore[union-attr]


def test_scheduled_event_caps_from_its_start_and_restores_at_its_end(site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0, start_s=5.0, minutes=1.0))
    assert site.published() == []
    assert site.dr.event_json(site.dr.events()[0])["state"] == "scheduled"
    site.tick(5, default_a=LOADS)
    [first] = site.published()
    assert first.caps
    site.tick(60, default_a=LOADS)
    published = site.published()
    assert published and published[-1].caps == {}
    assert site.dr.caps == {}
    record = site.dr.record("E1")
    assert record is not None and record.verdict == "met"
    assert record.finished_at == t(65)


def test_met_from_the_meter_values_and_recorded(site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0, minutes=2.0))
    record = site.dr.record("E1")
    assert record is not None and record.met_at is None
    assert record.baseline_kw == pytest.approx(sum(LOADS.values()) * KW_PER_A)
    site.tick(3, default_a=LOADS)
    assert record.met_at == t(1)
    assert record.achieved_kw() == pytest.approx(10.0, abs=0.1)
    assert site.alerts == []
    body = site.dr.event_json(site.dr.events()[0])
    assert body["id"] == "E1" and body["state"] == "active" and body["target_kw"] == 10.0
    assert body["compliance"]["met_at"] == "2025-03-01T12:00:01Z"
    json.dumps(body)  # the API can send it as it is
    site.tick(120, default_a=LOADS)
    assert site.dr.record("E1").verdict == "met"  # type: ignore[union-attr]
    assert json.loads(site.store.rows["E1"]["compliance"])["verdict"] == "met"


def test_station_ignoring_its_cap_escalates_once_per_window_with_an_alert(site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0))
    [first] = site.published()
    site.tick(29, default_a=LOADS, ignore=("s1",))
    assert site.alerts == [] and site.published() == []
    site.tick(1, default_a=LOADS, ignore=("s1",))
    [alert] = site.alerts
    assert alert["kind"] == "dr_not_met" and alert["zone"] == "Z1"
    # s1 keeps 22.08 kW: the zone fell only by what s2 and s3 shed.
    fell = (LOADS["s2"] - first.caps[("s2", 1)] + LOADS["s3"] - first.caps[("s3", 1)]) \
        * KW_PER_A
    assert alert["message"] == (
        f"dr event E1 not met: zone Z1 fell {fell:.1f} kW of 10.0 kW after 30 s — "
        f"shedding {10.0 - fell:.1f} kW more")
    [second] = site.published()
    assert caps_kw(dict(second.caps)) < caps_kw(dict(first.caps)) - (10.0 - fell) + 0.05
    assert site.store.alarms[-1].message == alert["message"]
    assert site.store.alarms[-1].kind == "dr_not_met"
    assert site.dr.record("E1").escalations == 1  # type: ignore[union-attr]
    # The others shed s1's share too: met from the meters, no further alert.
    site.tick(40, default_a=LOADS, ignore=("s1",))
    assert len(site.alerts) == 1
    assert site.dr.record("E1").met_at is not None  # type: ignore[union-attr]


def test_target_beyond_the_zone_pauses_all_and_says_so_once(site: Site) -> None:
    site.dr.submit(site.signal(kw=40.0))
    [first] = site.published()
    # Every share leaves a connector below its minimum: all pause. s1 ignores its cap, so
    # the target is never met; with nothing left to shed that is said once, not every 30 s.
    assert set(first.caps.values()) == {0.0}
    site.tick(95, default_a=LOADS, ignore=("s1",))
    assert set(site.dr.caps.values()) == {0.0}
    [alert] = site.alerts
    assert alert["message"] == ("dr event E1 not met: zone Z1 fell 24.8 kW of 40.0 kW after "
                                "30 s — every station is paused already")
    assert site.dr.record("E1").escalations == 3  # type: ignore[union-attr]


def test_priority_policy_sheds_the_lowest_priority_first() -> None:
    site = Site(CurtailPolicy.PRIORITY)
    for cid, amps in LOADS.items():
        site.plug(cid, amps)
    site.dr.submit(site.signal(kw=10.0))
    caps = site.dr.caps
    # s1 has priority 1 (the lowest): it alone sheds 10 kW; the others keep their load.
    assert caps[("s1", 1)] * KW_PER_A == pytest.approx(LOADS["s1"] * KW_PER_A - 10.0,
                                                       abs=0.01)
    assert caps[("s2", 1)] == pytest.approx(LOADS["s2"], abs=0.01)
    assert caps[("s3", 1)] == pytest.approx(LOADS["s3"], abs=0.01)


def test_shed_pauses_whole_stations_and_restore_lifts_them(site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0, kind=SignalType.SHED))
    caps = site.dr.caps
    assert sorted(a for a in caps.values() if a == 0.0) == [0.0]  # the largest load, s1
    assert caps[("s1", 1)] == 0.0
    site.published()
    site.clock.advance(10)
    restore = DrSignal("R1", "Z1", SignalType.RESTORE, 0.0, site.clock.now(),
                       site.clock.now() + timedelta(minutes=1), DrPriority.ECONOMIC,
                       site.clock.now())
    site.dr.submit(restore)
    [lifted] = site.published()
    assert lifted.caps == {}
    event = site.dr.get("E1")
    assert event is not None and event.ended_at == t(10)
    assert site.store.rows["E1"]["ended_at"] == t(10)
    assert site.dr.record("E1").finished_at == t(10)  # type: ignore[union-attr]


def test_economic_restore_leaves_an_emergency(site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0, priority=DrPriority.EMERGENCY))
    site.clock.advance(5)
    site.dr.submit(DrSignal("R1", "Z1", SignalType.RESTORE, 0.0, site.clock.now(),
                            site.clock.now() + timedelta(minutes=1), DrPriority.ECONOMIC,
                            site.clock.now()))
    assert site.dr.caps  # still curtailed
    assert site.dr.get("E1").ended_at is None  # type: ignore[union-attr]


def test_contract_breach_alerts_once_per_condition(site: Site) -> None:
    site.draw("s2", 24.0)  # 16.56 kW above 15 kW
    for _ in range(5):
        site.clock.advance(1)
        site.dr.cycle()
    [alert] = site.alerts
    assert alert["message"] == "station s2 draws 16.6 kW above its contract 15.0 kW"
    assert alert["kind"] == "contract" and alert["station"] == "s2"
    site.draw("s2", 20.0)
    site.dr.cycle()
    site.draw("s2", 24.0)
    site.dr.cycle()
    assert len(site.alerts) == 2
    assert [a["kind"] for a in site.dr.alerts()] == ["contract", "contract"]


def test_an_event_over_before_its_first_escalation_alerts_with_its_verdict(
        site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0, minutes=20 / 60))
    site.tick(25, default_a=LOADS, ignore=("s1", "s2", "s3"))
    assert site.dr.record("E1").verdict == "not met"  # type: ignore[union-attr]
    [alert] = site.alerts
    assert alert["message"] == "dr event E1 not met: zone Z1 fell 0.0 kW of 10.0 kW by its end"
    site.tick(5, default_a=LOADS)
    assert len(site.alerts) == 1


def test_contract_breach_and_its_end_are_recorded_as_alarms(site: Site) -> None:
    site.draw("s2", 24.0)
    site.dr.cycle()
    site.draw("s2", 20.0)
    site.dr.cycle()
    raised, cleared = site.store.alarms
    assert (raised.kind, raised.cleared, raised.group) == ("contract", False, "main")
    assert cleared.cleared and cleared.message == \
        "cleared: station s2 is back within its contract 15.0 kW (13.8 kW)"


def test_a_failing_alert_listener_does_not_stop_the_others(site: Site) -> None:
    def broken(alert: dict[str, Any]) -> None:
        raise RuntimeError("listener down")

    site.dr.on_alert(broken)
    got: list[dict[str, Any]] = []
    site.dr.on_alert(got.append)
    site.draw("s2", 30.0)
    site.dr.cycle()
    assert len(got) == 1


async def test_events_survive_a_restart_with_their_baseline_and_record() -> None:
    store = FakeStore()
    first = Site(store=store)
    for cid, amps in LOADS.items():
        first.plug(cid, amps)
    await first.dr.start()
    first.dr.submit(first.signal(kw=10.0, minutes=10.0))
    first.dr.submit(first.signal("later", kw=5.0, start_s=3600.0))
    first.tick(5, default_a=LOADS)
    caps = first.dr.caps
    record = first.dr.record("E1")
    assert record is not None and record.met_at is not None
    await first.dr.stop()

    second = Site(store=store)
    second.clock.set(first.clock.now() + timedelta(seconds=2))
    for cid, amps in LOADS.items():  # the cars still draw their caps
        second.plug(cid, caps[(cid, 1)] if amps else amps)
    await second.dr.start()
    try:
        assert [e.signal.signal_id for e in second.dr.events()] == ["E1", "later"]
        # The same caps from the stored baseline, not from the curtailed draw.
        [published] = second.published()
        assert dict(published.caps) == caps
        resumed = second.dr.record("E1")
        assert resumed is not None and resumed.met_at == record.met_at
        assert resumed.baseline_kw == record.baseline_kw
        assert second.dr.event_json(second.dr.events()[1])["state"] == "scheduled"
    finally:
        await second.dr.stop()


def test_baseline_round_trip_and_damaged_rows() -> None:
    base = Baseline(T0, {("s1", 1): 22.08, ("s2", 1): 0.0})
    assert Baseline.from_json(json.loads(json.dumps(base.to_json()))) == base
    with pytest.raises(ValueError, match="not a DR baseline"):
        Baseline.from_json({"at": "yesterday", "loads": []})


GOOD_SIGNAL = json.dumps({
    "signal_id": "x", "zone_id": "Z1", "signal_type": "CURTAIL", "target_reduction_kw": 5.0,
    "start_ts": "2025-03-01T12:00:00Z", "end_ts": "2025-03-01T13:00:00Z", "priority": 2,
    "received_ts": "2025-03-01T12:00:00Z", "source": "rest"})


@pytest.mark.parametrize(("column", "text", "reason"), [
    ("signal", "{not json", "dr_events row 'x': Expecting property name"),
    ("signal", "[1, 2]", "dr_events row 'x': signal is not a JSON object"),
    ("compliance", "{}", "dr_events row 'x': not a compliance record"),
    ("baseline", '{"at": "now"}', "dr_events row 'x': not a DR baseline"),
])
async def test_a_damaged_stored_event_refuses_to_start(column: str, text: str,
                                                        reason: str) -> None:
    store = FakeStore()
    store.rows["x"] = {"signal_id": "x", "zone_id": "Z1", "signal": GOOD_SIGNAL,
                       "ended_at": None, "compliance": None, "baseline": None, column: text}
    site = Site(store=store)
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        await site.dr.start()
    assert site.dr.events() == [] and site.dr.record("x") is None


async def test_a_good_stored_event_loads() -> None:
    store = FakeStore()
    store.rows["x"] = {"signal_id": "x", "zone_id": "Z1", "signal": GOOD_SIGNAL,
                       "ended_at": None, "compliance": None, "baseline": None}
    site = Site(store=store)
    await site.dr.start()
    try:
        assert [e.signal.signal_id for e in site.dr.events()] == ["x"]
    finally:
        await site.dr.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loads=st.lists(st.floats(0.0, 32.0), min_size=3, max_size=3),
       target=st.floats(0.0, 60.0),
       policy=st.sampled_from(list(CurtailPolicy)), shed=st.booleans())
def test_caps_never_exceed_the_baseline_and_meet_a_reachable_target(
        loads: list[float], target: float, policy: CurtailPolicy, shed: bool) -> None:
    site = Site(policy)
    for cid, amps in zip(("s1", "s2", "s3"), loads, strict=True):
        site.plug(cid, amps)
    kind = SignalType.SHED if shed else SignalType.CURTAIL
    site.dr.submit(site.signal(kw=target, kind=kind))
    caps = site.dr.caps
    baseline = sum(loads) * KW_PER_A
    for cid, amps in zip(("s1", "s2", "s3"), loads, strict=True):
        cap = caps[(cid, 1)]
        assert cap <= amps + 1e-6  # never above what it drew
        assert cap == 0.0 or cap >= 6.0 - 1e-9  # paused or at least its minimum
    if target <= baseline:
        assert caps_kw(caps) <= baseline - target + 0.05
    assert all(math.isfinite(a) for a in caps.values())


async def test_app_builds_dr_only_with_zones_and_keeps_events_on_sqlite(
        tmp_path: Path) -> None:
    from gridshare.api.metrics import site_metrics
    from gridshare.config import parse_site as parse

    plain = build_app(parse("site: x\nvoltage: 230\ngroups: [{id: g, max_current: 10}]\n",
                            "x"), ServeOptions(api_port=None, db_url="none", ocpp_port=0))
    assert plain.dr is None
    topology = parse(SITE, "dr-site")
    clock = FakeClock(T0)
    options = ServeOptions(host="127.0.0.1", api_port=None, ocpp_port=0,
                           db_url=f"sqlite:///{tmp_path / 'gs.db'}",
                           controller=ControllerSettings(tick_s=None))

    async def run(check: Any) -> Any:
        app = build_app(topology, options, clock=clock)
        await app.start()
        try:
            assert app.dr is not None
            return await check(app)
        finally:
            await app.stop()

    async def first(app: Any) -> dict[ConnectorKey, float]:
        now = clock.now()
        for cid, amps in LOADS.items():
            for event in (ChargerOnline(cid, now),
                          StatusChanged(cid, 1, ConnectorStatus.CHARGING, now),
                          SessionStarted(cid, 1, f"tx-{cid}", now),
                          MeterReading(cid, 1, now, f"tx-{cid}", current_a=(amps,) * 3)):
                app.controller.handle(event)
        app.dr.submit(DrSignal("E1", "Z1", SignalType.CURTAIL, 10.0, now,
                               now + timedelta(hours=1), DrPriority.ECONOMIC, now))
        await _delivered(app)
        assert app.controller.state.caps_of(("s1", 1)) == app.dr.caps[("s1", 1)]
        # The cars follow; the meter values prove it, and the metric says so.
        clock.advance(5)
        for cid in LOADS:
            app.controller.handle(MeterReading(cid, 1, clock.now(), f"tx-{cid}",
                                               current_a=(app.dr.caps[(cid, 1)],) * 3))
        app.dr.cycle()
        scraped = site_metrics(app).render()[0].decode()
        [line] = [x for x in scraped.splitlines()
                  if x.startswith("gridshare_dr_compliance_ratio{")]
        assert line.startswith('gridshare_dr_compliance_ratio{event="E1",group="Z1"} ')
        assert float(line.split()[-1]) == pytest.approx(1.0, abs=0.01)
        # The audit log keeps the caps event too (connector keys as "charger/connector").
        await app.store.flush()
        [row] = [r for r in await app.store.rows("events")
                 if r["kind"] == "ConnectorCapsChanged"]
        assert json.loads(row["payload"])["caps"]["s1/1"] == app.dr.caps[("s1", 1)]
        assert app.store.failed_events == 0
        return dict(app.dr.caps)

    caps = await run(first)
    clock.advance(60)

    async def second(app: Any) -> None:
        [event] = app.dr.events()
        assert event.state(clock.now()) is EventState.ACTIVE
        assert app.dr.caps == caps
        await _delivered(app)
        assert app.controller.state.caps_of(("s2", 1)) == caps[("s2", 1)]
        rows = await app.store.dr_events()
        assert [r["signal_id"] for r in rows] == ["E1"]

    await run(second)


async def _delivered(app: Any) -> None:
    """Let the controller's bus consumer take what was published."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_times_are_utc(site: Site) -> None:
    site.dr.submit(site.signal(kw=1.0))
    body = site.dr.event_json(site.dr.events()[0])
    assert body["start_ts"].endswith("Z")
    assert isinstance(datetime.fromisoformat(body["start_ts"]), datetime)


async def test_meter_values_on_the_bus_wake_the_service(site: Site) -> None:
    await site.dr.start()
    try:
        assert site.alerts == []
        reading = MeterReading("s2", 1, site.clock.now(), "tx-s2", current_a=(30.0,) * 3)
        site.state.apply(reading)  # what the controller folds in from the same bus
        site.bus.publish(reading)
        for _ in range(200):
            if site.alerts:
                break
            await asyncio.sleep(0.005)
        [alert] = site.alerts
        assert alert["kind"] == "contract" and alert["station"] == "s2"
        # A reading of a station the service does not watch wakes nothing.
        cycles = site.dr.counters["cycles"]
        site.bus.publish(MeterReading("nobody", 1, site.clock.now(), current_a=(1.0,) * 3))
        await asyncio.sleep(0.1)
        assert site.dr.counters["cycles"] == cycles
    finally:
        await site.dr.stop()


def test_a_car_that_leaves_during_an_event_counts_as_drawing_nothing(site: Site) -> None:
    site.dr.submit(site.signal(kw=10.0))
    # s1's car leaves; its last reading (22 kW) is still recent, but nothing draws there.
    site.state.apply(StatusChanged("s1", 1, ConnectorStatus.AVAILABLE, site.clock.now()))
    site.tick(3, default_a={"s2": LOADS["s2"], "s3": LOADS["s3"]})
    assert site.dr.zone_load_kw("Z1") == pytest.approx(
        (site.dr.caps[("s2", 1)] + site.dr.caps[("s3", 1)]) * KW_PER_A)
    assert site.dr.record("E1").met_at is not None  # type: ignore[union-attr]


def test_overlapping_events_take_the_largest_target_from_one_baseline(site: Site) -> None:
    site.dr.submit(site.signal("eco", kw=10.0, minutes=10.0))
    site.tick(5, default_a=LOADS)
    baseline = site.dr.baseline("Z1")
    assert baseline is not None
    site.dr.submit(site.signal("emergency", kw=15.0, start_s=5.0, minutes=1.0,
                               priority=DrPriority.EMERGENCY))
    total = sum(LOADS.values()) * KW_PER_A
    assert caps_kw(site.dr.caps) == pytest.approx(total - 15.0, abs=0.05)
    # The second event measures from the same baseline, not from the curtailed draw.
    assert site.dr.record("emergency").baseline_kw == pytest.approx(total)  # type: ignore[union-attr]
    site.tick(65, default_a=LOADS)
    assert site.dr.baseline("Z1") is baseline
    assert caps_kw(site.dr.caps) == pytest.approx(total - 10.0, abs=0.05)
    assert site.dr.record("emergency").verdict == "met"  # type: ignore[union-attr]


def test_zones_are_curtailed_independently(site: Site) -> None:
    site.dr.submit(site.signal("z2", zone="Z2", kw=5.0))
    assert set(site.dr.caps) == {("s4", 1)}
    assert site.dr.caps[("s4", 1)] * KW_PER_A == pytest.approx(32 * KW_PER_A - 5.0, abs=0.01)
    site.dr.submit(site.signal("z1", kw=10.0))
    assert set(site.dr.caps) == {("s1", 1), ("s2", 1), ("s3", 1), ("s4", 1)}
    [published_z1] = site.published()[-1:]
    assert ("s4", 1) in published_z1.caps  # one publication holds every zone's caps


def test_priority_escalation_moves_to_the_next_station() -> None:
    site = Site(CurtailPolicy.PRIORITY)
    for cid, amps in LOADS.items():
        site.plug(cid, amps)
    site.dr.submit(site.signal(kw=10.0))
    first = site.dr.caps
    assert first[("s2", 1)] == pytest.approx(LOADS["s2"], abs=0.01)
    # s1 (lowest priority) ignores its cap: at the escalation s2 (next) sheds the 10 kW:
    # 13.8 - 10 kW is below its minimum (6 A, 4.14 kW), so it pauses; s3 keeps its load.
    site.tick(31, default_a=LOADS, ignore=("s1",))
    caps = site.dr.caps
    assert caps[("s1", 1)] == first[("s1", 1)]
    assert caps[("s2", 1)] == 0.0
    assert caps[("s3", 1)] == pytest.approx(LOADS["s3"], abs=0.01)
    site.tick(5, default_a=LOADS, ignore=("s1",))
    assert site.dr.record("E1").met_at is not None  # type: ignore[union-attr]


async def test_the_running_service_acts_at_an_events_start_and_end_by_itself() -> None:
    site = Site()
    clock = SystemClock()
    site.dr = DrService(site.topology, DemandResponseSpec(), site.bus, clock,
                        store=site.store, state_view=site.state, tick_s=5.0)
    for cid, amps in LOADS.items():
        site.plug(cid, amps)
    now = clock.now()
    site.dr.submit(DrSignal("soon", "Z1", SignalType.CURTAIL, 10.0,
                            now + timedelta(seconds=0.3), now + timedelta(seconds=0.6),
                            DrPriority.ECONOMIC, now))
    assert site.dr.caps == {}
    await site.dr.start()
    try:
        # Woken at the start and at the end by the times the book names (the 5 s tick
        # would come too late for either).
        await _until(lambda: site.dr.caps != {}, 3.0)
        await _until(lambda: site.dr.caps == {}, 3.0)
        record = site.dr.record("soon")
        assert record is not None and record.finished_at is not None
        assert [bool(p.caps) for p in site.published()] == [True, False]
    finally:
        await site.dr.stop()


async def _until(cond: Any, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
