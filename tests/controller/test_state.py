"""SiteState: events folded into snapshots, on an explicit timeline (no clock read)."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridshare.controller.state import Impact, SiteState, StateSettings, _site_phase_currents
from gridshare.core import guard
from gridshare.core.allocation import allocate
from gridshare.core.snapshot import LimitSource, Snapshot
from gridshare.core.topology import Topology
from gridshare.core.v2x_offer import V2xOffer
from gridshare.drivers import CommandOutcome, CommandResult
from gridshare.events import (
    ChargerBooted,
    ChargerOffline,
    ChargerOnline,
    ChargingNeeds,
    ConnectorStatus,
    Event,
    GroupMeterReading,
    LimitChanged,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)

from .conftest import t


def boot_all(state: SiteState, at_s: float = 0.0) -> None:
    """Boot every charger and hold its idle connectors at 0 A, as the controller does (an
    idle connector is otherwise reserved at its failsafe: a car may arrive)."""
    for cid in state.topology.chargers:
        state.apply(ChargerBooted(cid, t(at_s), "ocpp1.6"))
    for conn in state.topology.connectors():
        record(state, conn.key, 0.0, CommandResult.ACCEPTED, t(at_s), 600)


def record(state: SiteState, key: tuple[str, int], amps: float, result: CommandResult,
           at: datetime, lease_s: float) -> Impact:
    """Send one command at ``at`` and get its answer at once; the impact of the answer."""
    command_id = state.record_sent(key, amps, at, lease_s)
    outcome = CommandOutcome(result, sent=result is not CommandResult.OFFLINE)
    return state.record_outcome(key, command_id, outcome, at, settle_s=0.0)[1]


def plug(state: SiteState, charger: str, at_s: float, connector: int = 1) -> Impact:
    return state.apply(StatusChanged(charger, connector, ConnectorStatus.CHARGING, t(at_s)))


def test_chargers_never_heard_from_count_at_failsafe(topology: Topology) -> None:
    state = SiteState(topology)
    snap = state.to_snapshot(t(0))
    assert all(not snap.demand(c.key).online for c in topology.connectors())
    assert state.apply(ChargerBooted("a1", t(1), "ocpp1.6")) is Impact.CHANGED
    assert state.to_snapshot(t(1)).demand(("a1", 1)).online


@pytest.mark.parametrize(("status", "active"), [
    (ConnectorStatus.AVAILABLE, False),
    (ConnectorStatus.PREPARING, True),
    (ConnectorStatus.CHARGING, True),
    (ConnectorStatus.SUSPENDED_EV, True),
    (ConnectorStatus.SUSPENDED_EVSE, True),
    (ConnectorStatus.FINISHING, False),
    (ConnectorStatus.FAULTED, False),
    (ConnectorStatus.UNAVAILABLE, False),
], ids=str)
def test_status_decides_demand(topology: Topology, status: ConnectorStatus,
                               active: bool) -> None:
    state = SiteState(topology)
    boot_all(state)
    state.apply(StatusChanged("a1", 1, status, t(3)))
    demand = state.to_snapshot(t(3)).demand(("a1", 1))
    assert demand.active is active
    assert (demand.arrival == t(3)) is active


def test_session_lifecycle_and_charging_needs(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    assert state.apply(SessionStarted("a2", 1, "tx-1", t(3))) is Impact.CHANGED
    assert state.command_keys() == [("a2", 1)]
    state.apply(ChargingNeeds("a2", 1, t(4), energy_needed_kwh=20.0, departure=t(3600),
                              max_current=16.0))
    d = state.to_snapshot(t(5)).demand(("a2", 1))
    assert (d.active, d.max_current, d.energy_needed_kwh, d.departure, d.arrival) == \
        (True, 16.0, 20.0, t(3600), t(3))
    # 2.0.1 reports Occupied while a transaction runs: still active.
    state.apply(StatusChanged("a2", 1, ConnectorStatus.OCCUPIED, t(6)))
    assert state.active(("a2", 1))
    assert state.apply(SessionStopped("a2", 1, "tx-1", t(7))) is Impact.CHANGED
    d = state.to_snapshot(t(8)).demand(("a2", 1))
    assert not d.active and d.max_current is None and d.arrival is None


def test_a_start_without_its_register_counts_energy_from_the_first_reading(
        topology: Topology) -> None:
    """An OCPP 2.x Started event without a meter value: the session's energy counts from
    its first reading, never from the register's zero (a 40 MWh register is not the
    session's energy); another transaction's reading does not set it."""
    state = SiteState(topology)
    boot_all(state)
    key = ("a2", 1)
    state.apply(SessionStarted("a2", 1, "tx-1", t(3), meter_start_wh=None))
    assert state.session_info(key).energy_wh is None
    state.apply(MeterReading("a2", 1, t(4), energy_wh=39_000_000.0, transaction_id="tx-0"))
    assert state.session_info(key).energy_wh is None
    state.apply(MeterReading("a2", 1, t(5), energy_wh=40_000_000.0, transaction_id="tx-1"))
    state.apply(MeterReading("a2", 1, t(6), energy_wh=40_000_600.0, transaction_id="tx-1"))
    assert state.session_info(key).energy_wh == 600.0
    state.apply(SessionStarted("a2", 1, "tx-2", t(7), meter_start_wh=40_000_700.0))
    state.apply(MeterReading("a2", 1, t(8), energy_wh=40_001_000.0, transaction_id="tx-2"))
    assert state.session_info(key).energy_wh == 300.0  # a register given is kept


@pytest.mark.parametrize("leaves", ["stopped", "available", "offline", "reconnect"])
def test_a_cars_v2x_offer_is_kept_while_it_is_plugged_in(topology: Topology,
                                                         leaves: str) -> None:
    """The 2.1 offer (NotifyEVChargingNeeds) lives as long as its car: forgotten at the end
    of the transaction, when the EVSE is Available, and with the connection."""
    state = SiteState(topology)
    boot_all(state)
    key = ("a2", 1)
    offer = V2xOffer(modes=("AC_three_phase", "AC_BPT"), max_discharge_w=7400.0)
    state.apply(SessionStarted("a2", 1, "tx-1", t(3)))
    state.apply(ChargingNeeds("a2", 1, t(4), energy_needed_kwh=20.0, v2x_offer=offer))
    assert state.session_info(key).v2x_offer == offer
    # needs without an offer (an app, 2.0.1) leave it as it is
    state.apply(ChargingNeeds("a2", 1, t(5), energy_needed_kwh=15.0))
    assert state.session_info(key).v2x_offer == offer
    event: Event = {
        "stopped": SessionStopped("a2", 1, "tx-1", t(6)),
        "available": StatusChanged("a2", 1, ConnectorStatus.AVAILABLE, t(6)),
        "offline": ChargerOffline("a2", t(6)),
        "reconnect": ChargerOnline("a2", t(6)),
    }[leaves]
    state.apply(event)
    assert state.session_info(key).v2x_offer is None


def test_stopped_session_with_stale_charging_status_is_over(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    plug(state, "a1", 1)
    state.apply(SessionStarted("a1", 1, "tx", t(1)))
    state.apply(SessionStopped("a1", 1, "tx", t(9)))
    assert not state.active(("a1", 1))


def test_offline_charger_counted_at_failsafe_and_urgent(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    plug(state, "a1", 1)
    assert state.apply(ChargerOffline("a1", t(2), "closed")) is Impact.URGENT
    d = state.to_snapshot(t(2)).demand(("a1", 1))
    assert not d.online
    assert state.command_keys() == []
    # A stale reading queued before the disconnect does not bring it back.
    state.apply(MeterReading("a1", 1, t(1.5), current_a=(5.0, 5.0, 5.0)))
    assert not state.online("a1")
    # Something it says after the disconnect does.
    state.apply(MeterReading("a1", 1, t(30), current_a=(5.0, 5.0, 5.0)))
    assert state.online("a1")


def test_silent_charger_goes_offline_when_configured(topology: Topology) -> None:
    state = SiteState(topology, StateSettings(offline_after_s=30))
    boot_all(state)
    assert state.refresh(t(20)) is Impact.NONE
    assert state.refresh(t(31)) is Impact.URGENT
    assert state.online_count() == 0


def test_meter_includes_chargers_subtracts_their_measured_current(metered: Topology) -> None:
    state = SiteState(metered)
    boot_all(state)
    # Read once the boots and idle holds at t = 0 have settled (5 s): a quiet meter.
    state.apply(MeterReading("m1", 1, t(6), current_a=(10.0, 9.0, None)))
    state.apply(GroupMeterReading("main", t(7), (25.0, 12.0, 8.0)))
    cond = state.to_snapshot(t(7)).conditions("main")
    # m1's missing L3 counts as its largest phase; never below zero; the deadband (0.5 A)
    # is counted on top, in reserve.
    assert state.metered_uncontrolled("main") == pytest.approx((15.0, 3.0, 0.0))
    assert cond.uncontrolled == pytest.approx((15.5, 3.5, 0.5))
    assert not cond.meter_stale
    state.apply(GroupMeterReading("main", t(8), (25.0, 12.0, 8.0), includes_chargers=False))
    assert state.to_snapshot(t(8)).conditions("main").uncontrolled == (25.5, 12.5, 8.5)


def test_meter_rise_is_urgent_and_fall_is_not(metered: Topology) -> None:
    state = SiteState(metered)
    assert state.apply(GroupMeterReading("main", t(1), (10.0, 10.0, 10.0))) is Impact.URGENT
    assert state.apply(GroupMeterReading("main", t(2), (10.2, 10.0, 10.0))) is Impact.NONE
    assert state.apply(GroupMeterReading("main", t(3), (5.0, 5.0, 5.0))) is Impact.CHANGED
    assert state.apply(GroupMeterReading("main", t(4), (6.0, 5.0, 5.0))) is Impact.URGENT


def test_meter_staleness_fails_closed(metered: Topology) -> None:
    state = SiteState(metered, StateSettings(meter_stale_after_s=30))
    # Never reported: stale from the start.
    assert state.to_snapshot(t(0)).conditions("main").meter_stale
    state.apply(GroupMeterReading("main", t(10), (5.0, 5.0, 5.0)))
    assert state.refresh(t(10)) is Impact.NONE
    assert not state.to_snapshot(t(39)).conditions("main").meter_stale
    assert state.refresh(t(41)) is Impact.URGENT
    assert state.refresh(t(42)) is Impact.NONE  # reported once
    assert state.to_snapshot(t(41)).conditions("main").meter_stale
    assert state.apply(GroupMeterReading("main", t(45), (5.0, 5.0, 5.0))) is Impact.CHANGED
    assert not state.to_snapshot(t(45)).conditions("main").meter_stale


def test_extra_limits_tighten_urgently_and_expire(topology: Topology) -> None:
    state = SiteState(topology)
    cut = LimitChanged("main", t(0), "demand_response", max_current=40.0, until=t(60),
                       reason="DR event")
    assert state.apply(cut) is Impact.URGENT
    (lim,) = state.to_snapshot(t(1)).conditions("main").limits
    assert (lim.source, lim.max_current, lim.reason) == (LimitSource.DEMAND_RESPONSE, 40.0,
                                                        "DR event")
    # Same source, looser: a change, not urgent.
    assert state.apply(LimitChanged("main", t(2), "demand_response", max_current=50.0,
                                    until=t(60))) is Impact.CHANGED
    # Another source stacks: the tightest wins.
    assert state.apply(LimitChanged("main", t(3), "operator", max_power_kw=10.0)) is \
        Impact.URGENT
    assert len(state.to_snapshot(t(3)).conditions("main").limits) == 2
    assert state.refresh(t(61)) is Impact.CHANGED
    (left,) = state.to_snapshot(t(61)).conditions("main").limits
    assert left.source is LimitSource.OPERATOR
    assert state.apply(LimitChanged("main", t(62), "operator")) is Impact.CHANGED
    assert not state.to_snapshot(t(62)).conditions("main").limits


def test_unknown_ids_are_counted_not_fatal(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    assert state.apply(ChargerBooted("nope", t(0), "ocpp1.6")) is Impact.NONE
    assert state.apply(LimitChanged("nope", t(0), "operator", max_current=1.0)) is Impact.NONE
    assert state.apply(StatusChanged("a1", 7, ConnectorStatus.CHARGING, t(0))) is Impact.NONE
    assert state.counters.rejected == {"unknown charger": 1, "unknown group": 1,
                                       "unknown connector": 1}


def _charging(state: SiteState, charger: str, setpoint_a: float, at_s: float) -> None:
    plug(state, charger, at_s)
    record(state, (charger, 1), setpoint_a, CommandResult.ACCEPTED, t(at_s), 180)


def test_violator_flagged_after_grace_and_reserved(topology: Topology) -> None:
    state = SiteState(topology, StateSettings(verify_tolerance_a=1.0, verify_grace_s=10.0))
    boot_all(state)
    _charging(state, "a1", 10.0, 1)
    _charging(state, "a2", 10.0, 1)
    state.apply(MeterReading("a1", 1, t(5), current_a=(16.0, 16.0, 16.0)))
    assert state.violators(t(14)) == []  # inside the grace period
    (v,) = state.violators(t(15))
    assert (v.key, v.allowed_a, v.measured_a, v.since) == (("a1", 1), 10.0, 16.0, t(5))
    assert state.refresh(t(15)) is Impact.URGENT
    snap = state.to_snapshot(t(15))
    # Counted at what it draws (in every group above it), and no longer given power.
    assert not snap.demand(("a1", 1)).active
    assert snap.conditions("c1").uncontrolled == (16.0, 16.0, 16.0)
    assert snap.conditions("main").uncontrolled == (16.0, 16.0, 16.0)
    assert snap.conditions("c2").uncontrolled == (0.0, 0.0, 0.0)
    # Paused at 0 A it stays flagged while it still draws...
    record(state, ("a1", 1), 0.0, CommandResult.ACCEPTED, t(16), 180)
    assert [v.key for v in state.violators(t(17))] == [("a1", 1)]
    # ...and is released once it complies.
    state.apply(MeterReading("a1", 1, t(20), current_a=(0.0, 0.0, 0.0)))
    assert state.violators(t(20)) == []
    assert state.to_snapshot(t(20)).demand(("a1", 1)).active


def test_grace_restarts_when_the_setpoint_is_lowered(topology: Topology) -> None:
    state = SiteState(topology, StateSettings(verify_tolerance_a=1.0, verify_grace_s=10.0))
    boot_all(state)
    _charging(state, "a1", 16.0, 1)
    state.apply(MeterReading("a1", 1, t(2), current_a=(20.0, 20.0, 20.0)))  # over from t=2
    record(state, ("a1", 1), 8.0, CommandResult.ACCEPTED, t(10), 180)
    state.apply(MeterReading("a1", 1, t(12), current_a=(15.0, 15.0, 15.0)))
    assert state.violators(t(19)) == []  # still settling after the decrease at t=10
    assert [v.key for v in state.violators(t(20))] == [("a1", 1)]


def test_failed_command_reserves_what_the_charger_may_draw(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    _charging(state, "a1", 20.0, 1)
    assert record(state, ("a1", 1), 10.0, CommandResult.TIMEOUT, t(5), 180) is \
        Impact.URGENT
    assert state.believed_a(("a1", 1)) == 20.0
    snap = state.to_snapshot(t(5))
    assert snap.demand(("a1", 1)).active
    assert snap.conditions("c1").uncontrolled == (20.0, 20.0, 20.0)
    record(state, ("a1", 1), 10.0, CommandResult.ACCEPTED, t(6), 180)
    assert state.believed_a(("a1", 1)) == 10.0
    assert "c1" not in state.to_snapshot(t(6)).groups


def test_offline_result_marks_charger_offline(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    _charging(state, "b1", 10.0, 1)
    assert record(state, ("b1", 1), 6.0, CommandResult.OFFLINE, t(2), 180) is \
        Impact.URGENT
    assert not state.to_snapshot(t(2)).demand(("b1", 1)).online


def test_lease_lapse_falls_back_to_failsafe(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    plug(state, "a1", 1)
    record(state, ("a1", 1), 0.0, CommandResult.ACCEPTED, t(1), 60)
    assert state.in_force_a(("a1", 1), t(30)) == 0.0
    # Not renewed: at 61 s the charger is back at its 6 A failsafe, more than we counted.
    assert state.refresh(t(61)) is Impact.URGENT
    assert state.believed_a(("a1", 1)) == 6.0
    assert state.in_force_a(("a1", 1), t(61)) is None


def test_boot_forgets_live_setpoints(topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    _charging(state, "a1", 20.0, 1)
    state.apply(ChargerBooted("a1", t(5), "ocpp2.0.1"))
    assert state.believed_a(("a1", 1)) == 6.0
    assert state.protocol("a1") == "ocpp2.0.1"


@pytest.mark.parametrize(("charger", "currents", "power_w", "expected"), [
    ("a1", (10.0, 11.0, 12.0), None, (10.0, 11.0, 12.0)),
    ("a1", (10.0, None, None), None, (10.0, 10.0, 10.0)),
    ("a1", (-1.0, 2.0, 3.0), None, (0.0, 2.0, 3.0)),
    ("b1", (7.0, None, None), None, (0.0, 7.0, 0.0)),
    ("b1", (7.0, 0.0, 0.0), None, (0.0, 7.0, 0.0)),
    ("b1", (None, None, None), 2300.0, (0.0, 10.0, 0.0)),
    ("a1", (None, None, None), 6900.0, (10.0, 10.0, 10.0)),
    ("a1", (None, None, None), None, None),
], ids=["3ph", "3ph-missing", "3ph-negative", "1ph-own-L1-to-site-L2", "1ph-zeros",
        "1ph-power", "3ph-power", "nothing"])
def test_reading_to_site_phases(topology: Topology, charger: str,
                                currents: tuple[float | None, float | None, float | None],
                                power_w: float | None,
                                expected: tuple[float, float, float] | None) -> None:
    reading = MeterReading(charger, 1, t(0), current_a=currents, power_w=power_w)
    got = _site_phase_currents(topology.chargers[charger], reading, 230.0)
    assert got == (pytest.approx(expected) if expected is not None else None)


# --- invariant: whatever happened, the allocation from the snapshot is safe -------------

CHARGERS = ["a1", "a2", "a3", "b1", "b2"]
STATUSES = list(ConnectorStatus)


def event_strategy() -> st.SearchStrategy[tuple[float, str, str, float]]:
    return st.tuples(st.floats(0, 5), st.sampled_from(
        ["boot", "offline", "status", "start", "stop", "meter", "limit", "result"]),
        st.sampled_from(CHARGERS), st.floats(0, 40))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event_strategy(), max_size=40), st.sampled_from(STATUSES))
def test_any_history_gives_a_snapshot_the_allocation_keeps_safe(
        topology: Topology, steps: list[tuple[float, str, str, float]],
        status: ConnectorStatus) -> None:
    state = SiteState(topology, StateSettings(verify_grace_s=1.0))
    now = 0.0
    for dt, kind, charger, amps in steps:
        now += dt
        event: Event | None = None
        if kind == "boot":
            event = ChargerBooted(charger, t(now), "ocpp1.6")
        elif kind == "offline":
            event = ChargerOffline(charger, t(now))
        elif kind == "status":
            event = StatusChanged(charger, 1, status, t(now))
        elif kind == "start":
            event = SessionStarted(charger, 1, "tx", t(now))
        elif kind == "stop":
            event = SessionStopped(charger, 1, "tx", t(now))
        elif kind == "meter":
            event = MeterReading(charger, 1, t(now), current_a=(amps, amps, amps))
        elif kind == "limit":
            event = LimitChanged("c1", t(now), "operator", max_current=amps)
        else:
            record(state, (charger, 1), amps, CommandResult.TIMEOUT, t(now), 60)
        if event is not None:
            state.apply(event)
        state.refresh(t(now))
    snapshot = state.to_snapshot(t(now))
    allocation = allocate(topology, snapshot)
    verdict = guard.assess(topology, snapshot, allocation.setpoints)
    assert not verdict.violations, verdict.violations
    # Only offline chargers alone may break a limit; then nothing online below it charges.
    for alarm in verdict.overloads:
        offline_only = drawn_offline(topology, snapshot, alarm.group)
        assert alarm.load <= offline_only + 1e-6, alarm
        for cid in topology.subtree_chargers(alarm.group):
            for conn in topology.chargers[cid].connectors:
                if snapshot.demand(conn.key).online:
                    assert allocation.setpoints[conn.key] == 0.0, alarm
    for key in state.command_keys():
        assert snapshot.demand(key).online


def drawn_offline(topology: Topology, snapshot: Snapshot, group: str) -> float:
    """Highest per-phase current the offline chargers under ``group`` draw at failsafe."""
    amps = [0.0, 0.0, 0.0]
    for cid in topology.subtree_chargers(group):
        charger = topology.chargers[cid]
        for conn in charger.connectors:
            if not snapshot.demand(conn.key).online:
                for p, on in enumerate(charger.phase_vector):
                    amps[p] += on * charger.failsafe_current
    return max(amps)


def test_offline_charger_counts_at_its_live_setpoint_until_the_lease_ends(
        topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    plug(state, "a1", 1)
    record(state, ("a1", 1), 20.0, CommandResult.ACCEPTED, t(1), 60)
    state.apply(ChargerOffline("a1", t(2)))
    snap = state.to_snapshot(t(2))
    assert not snap.demand(("a1", 1)).online  # counted at its 6 A failsafe...
    assert snap.conditions("c1").uncontrolled == (14.0, 14.0, 14.0)  # ...plus 14 A more
    assert state.refresh(t(61)) is Impact.NONE  # lease over, but the car follows within
    assert state.to_snapshot(t(61)).conditions("c1").uncontrolled == (14.0, 14.0, 14.0)
    assert state.refresh(t(66)) is Impact.CHANGED  # failsafe only
    assert "c1" not in state.to_snapshot(t(66)).groups


def test_a_setpoint_outlives_the_session_and_the_idle_connector_is_reserved(
        topology: Topology) -> None:
    state = SiteState(topology)
    boot_all(state)
    plug(state, "a1", 1)
    record(state, ("a1", 1), 12.5, CommandResult.ACCEPTED, t(1), 60)
    state.apply(StatusChanged("a1", 1, ConnectorStatus.AVAILABLE, t(5)))
    # A connector profile sent before the transaction was known still applies to the next
    # car: keep counting it, reserved in every group above (the allocation counts an idle
    # connector at 0), until it is released (the decision holds it at 0 A).
    assert state.believed_a(("a1", 1), t(5)) == 12.5
    assert state.to_snapshot(t(5)).conditions("c1").uncontrolled == (12.5, 12.5, 12.5)
    assert state.to_snapshot(t(5), commands=False).conditions("c1").uncontrolled == \
        (0.0, 0.0, 0.0)
    record(state, ("a1", 1), 0.0, CommandResult.ACCEPTED, t(6), 60)
    assert "c1" not in state.to_snapshot(t(6)).groups
    # Lease over without a car: the 6 A failsafe applies again, reserved (a car may come).
    assert state.refresh(t(70)) is Impact.URGENT
    assert state.believed_a(("a1", 1), t(70)) == 6.0
    assert state.to_snapshot(t(70)).conditions("c1").uncontrolled == (6.0, 6.0, 6.0)


def test_live_reading_is_what_session_info_says_of_power_and_soc(topology: Topology) -> None:
    """The frequency service's per-sample read: the same two fields, with or without a
    car, before and after its meter value, and once the session is over."""
    state = SiteState(topology)
    boot_all(state)
    key = ("a1", 1)

    def same() -> None:
        info = state.session_info(key)
        assert state.live_reading(key) == (info.power_w, info.soc_percent)

    same()
    plug(state, "a1", 1)
    state.apply(SessionStarted("a1", 1, "tx-1", t(1)))
    same()
    state.apply(MeterReading("a1", 1, t(2), "tx-1", soc_percent=55.0, power_w=7000.0))
    same()
    assert state.live_reading(key) == (7000.0, 55.0)
    state.apply(SessionStopped("a1", 1, "tx-1", t(3)))
    state.apply(StatusChanged("a1", 1, ConnectorStatus.AVAILABLE, t(3)))
    same()
    assert state.live_reading(key) == (None, None)

