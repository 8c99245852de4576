"""Smart-charging rules of the simulated charger, without a network (ManualClock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.sim import EV, ChargingProfile, ManualClock, Period, Purpose, SimCharger
from gridshare.sim.profiles import ProfileStore

T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)


def prof(
    pid: int,
    purpose: Purpose,
    limit: float | list[tuple[int, float]],
    *,
    connector: int = 0,
    level: int = 0,
    unit: str = "A",
    duration_s: int | None = None,
    kind: str = "Relative",
    start: datetime | None = None,
    tx: str | None = None,
    phases: int | None = None,
    installed: datetime = T0,
    **kw: Any,
) -> ChargingProfile:
    periods = [(0, limit)] if isinstance(limit, int | float) else limit
    return ChargingProfile(
        id=pid,
        connector=connector,
        purpose=purpose,
        stack_level=level,
        kind=kind,
        unit=unit,
        periods=tuple(Period(s, float(v), phases) for s, v in periods),
        installed_at=installed,
        duration_s=duration_s,
        start_schedule=start,
        transaction_id=tx,
        **kw,
    )


def charger(clock: ManualClock, **kw: Any) -> SimCharger:
    kw.setdefault("max_current_a", 32)
    return SimCharger("CP", "ws://127.0.0.1:1", clock=clock, **kw)


def plug_offline(ch: SimCharger, connector: int = 1, lag_s: float = 0.0, **ev: Any) -> None:
    ev.setdefault("max_current_a", 32)
    ch.plug_nowait(connector, EV(capacity_kwh=60, soc=0.3, setpoint_lag_s=lag_s, **ev))
    ch.transaction(connector).id = "42"  # type: ignore[union-attr]


def run(ch: SimCharger, clock: ManualClock, seconds: float, dt: float = 0.5) -> None:
    for _ in range(round(seconds / dt)):
        clock.advance(dt)
        ch.step(dt)


# ---------------------------------------------------------------- ProfileStore


def test_highest_stack_level_wins_until_its_duration_ends() -> None:
    store = ProfileStore()
    store.install(prof(1, Purpose.TX_DEFAULT, 16, level=0))
    store.install(prof(2, Purpose.TX_DEFAULT, 8, level=1, duration_s=60, kind="Absolute", start=T0))
    lim = store.limits(1, T0 + timedelta(seconds=10), tx_id=None, tx_start=None)
    assert lim.tx is not None and lim.tx.value == 8
    assert lim.next_change == T0 + timedelta(seconds=60)
    lim = store.limits(1, T0 + timedelta(seconds=60), tx_id=None, tx_start=None)
    assert lim.tx is not None and lim.tx.value == 16


def test_tx_profile_overrides_defaults_and_connector_default_overrides_station_default() -> None:
    store = ProfileStore()
    store.install(prof(1, Purpose.TX_DEFAULT, 20, connector=0, level=5))
    store.install(prof(2, Purpose.TX_DEFAULT, 12, connector=1, level=0))
    store.install(prof(3, Purpose.TX, 7, connector=1, tx="9"))
    store.install(prof(4, Purpose.MAX, 25, connector=0))
    at = T0 + timedelta(seconds=5)
    lim1 = store.limits(1, at, tx_id="9", tx_start=T0)
    assert lim1.tx is not None and lim1.tx.value == 7
    assert lim1.max is not None and lim1.max.value == 25
    other_tx = store.limits(1, at, tx_id="10", tx_start=T0)
    assert other_tx.tx is not None and other_tx.tx.value == 12
    lim2 = store.limits(2, at, tx_id="11", tx_start=T0)
    assert lim2.tx is not None and lim2.tx.value == 20


def test_same_purpose_and_level_replaces_and_clear_by_criteria() -> None:
    store = ProfileStore()
    store.install(prof(1, Purpose.TX_DEFAULT, 20))
    store.install(prof(2, Purpose.TX_DEFAULT, 10))  # same purpose, level, connector
    assert [p.id for p in store.all] == [2]
    store.install(prof(3, Purpose.MAX, 30, level=1))
    assert store.clear(purpose=Purpose.MAX) == 1
    assert store.clear(profile_id=99) == 0
    assert store.clear(profile_id=2) == 1 and len(store) == 0


def test_absolute_multi_period_recurring_and_valid_to() -> None:
    store = ProfileStore()
    start = T0 - timedelta(days=3, hours=1)  # daily, started an hour into today's cycle
    store.install(
        prof(
            1,
            Purpose.TX_DEFAULT,
            [(0, 6), (1800, 10), (7200, 16)],
            kind="Recurring",
            start=start,
            recurrency="Daily",
            valid_to=T0 + timedelta(hours=5),
        )
    )
    assert store.limits(1, T0, tx_id=None, tx_start=None).tx.value == 10  # type: ignore[union-attr]
    later = T0 + timedelta(hours=1)
    lim = store.limits(1, later, tx_id=None, tx_start=None)
    assert lim.tx is not None and lim.tx.value == 16
    assert store.limits(1, T0 + timedelta(hours=6), tx_id=None, tx_start=None).tx is None


# ---------------------------------------------------------------- charger rules


def test_no_profile_offers_charger_max_and_idle_connector_offers_nothing() -> None:
    clock = ManualClock(T0)
    ch = charger(clock)
    assert ch.offered_a(1) == 0
    plug_offline(ch)
    assert ch.offered_a(1) == 32


def test_min_of_max_profile_tx_profile_and_charger_max() -> None:
    clock = ManualClock(T0)
    ch = charger(clock)
    plug_offline(ch)
    assert ch.install_profile(prof(1, Purpose.MAX, 20, installed=clock.now()))[0]
    assert ch.offered_a(1) == 20
    assert ch.install_profile(prof(2, Purpose.TX, 12, connector=1, tx="42"))[0]
    assert ch.offered_a(1) == 12
    assert ch.install_profile(prof(3, Purpose.TX, 40, connector=1, tx="42"))[0]  # replaces 2
    assert ch.offered_a(1) == 20
    ch.clear_profiles(purpose=Purpose.MAX)
    assert ch.offered_a(1) == 32


def test_install_rules() -> None:
    clock = ManualClock(T0)
    ch = charger(clock, connectors=2)
    ok = ch.install_profile
    assert ok(prof(1, Purpose.MAX, 20, connector=1)) == (False, "Max profile only on connector 0")
    assert not ok(prof(2, Purpose.TX, 10, connector=1))[0]  # no transaction
    plug_offline(ch)
    assert not ok(prof(3, Purpose.TX, 10, connector=1, tx="other"))[0]
    assert not ok(prof(4, Purpose.TX, 10, connector=0))[0]
    assert not ok(prof(5, Purpose.TX_DEFAULT, 10, connector=3))[0]
    assert not ok(prof(6, Purpose.TX_DEFAULT, [(5, 10)]))[0]  # first period must start at 0
    assert ok(prof(7, Purpose.TX, 10, connector=1))[0]  # 1.6: missing tx id = current tx


def test_pilot_below_six_amps_pauses_and_resolution_is_a_tenth() -> None:
    clock = ManualClock(T0)
    ch = charger(clock)
    plug_offline(ch)
    ch.install_profile(prof(1, Purpose.TX_DEFAULT, 5.5))
    assert ch.offered_a(1) == 0
    run(ch, clock, 2)
    assert ch.status(1).value == "SuspendedEVSE"
    ch.install_profile(prof(1, Purpose.TX_DEFAULT, 7.37))
    assert ch.offered_a(1) == 7.3


def test_watt_profiles_convert_with_the_phases_in_use() -> None:
    clock = ManualClock(T0)
    three = charger(clock)
    plug_offline(three)
    three.install_profile(prof(1, Purpose.TX_DEFAULT, 6900, unit="W"))
    assert three.offered_a(1) == 10.0  # 6900 W / (230 V × 3)
    one_phase_car = charger(clock)
    plug_offline(one_phase_car, phases=1)
    one_phase_car.install_profile(prof(1, Purpose.TX_DEFAULT, 4600, unit="W"))
    assert one_phase_car.offered_a(1) == 20.0  # 4600 W / 230 V on one phase
    single = charger(clock, phases=1, phase="L2")
    plug_offline(single)
    single.install_profile(prof(1, Purpose.TX_DEFAULT, 2300, unit="W"))
    assert single.offered_a(1) == 10.0
    run(single, clock, 1)
    assert single.drawn_a(1) == (0.0, 10.0, 0.0)
    limited = charger(clock)
    plug_offline(limited)
    limited.install_profile(prof(1, Purpose.TX_DEFAULT, 16, phases=1))  # numberPhases=1
    run(limited, clock, 1)
    assert limited.drawn_a(1) == (16.0, 0.0, 0.0)


def test_max_profile_is_shared_between_connectors() -> None:
    clock = ManualClock(T0)
    ch = charger(clock, connectors=2)
    plug_offline(ch, 1)
    plug_offline(ch, 2, max_current_a=8)
    ch.install_profile(prof(1, Purpose.MAX, 24))
    # the charger does not know what each car takes: equal shares of the Max limit
    assert (ch.offered_a(1), ch.offered_a(2)) == (12.0, 12.0)
    ch.install_profile(prof(2, Purpose.TX, 5, connector=2))
    # 5 A is below the 6 A pilot minimum: connector 2 pauses and takes no share
    assert (ch.offered_a(1), ch.offered_a(2)) == (24.0, 0.0)
    ch.install_profile(prof(1, Purpose.MAX, 11))
    assert (ch.offered_a(1), ch.offered_a(2)) == (11.0, 0.0)


def test_setpoint_lag_and_drawn_never_above_recent_offer() -> None:
    clock = ManualClock(T0)
    ch = charger(clock)
    history: list[tuple[float, float]] = []
    ch.on_setpoint(lambda c, a: history.append((clock.time(), a)))
    plug_offline(ch, lag_s=3.0)
    run(ch, clock, 5)
    assert ch.drawn_a(1)[0] == 32
    changed_at = clock.time()
    ch.install_profile(prof(1, Purpose.TX, 10, connector=1, installed=clock.now()))
    assert ch.offered_a(1) == 10
    for _ in range(20):
        clock.advance(0.25)
        ch.step(0.25)
        now = clock.time()
        drawn = ch.drawn_a(1)[0]
        recent = [a for t, a in history if t > now - 3.0]
        before = [a for t, a in history if t <= now - 3.0]
        assert drawn <= max(recent + before[-1:]) + 1e-9
        if now - changed_at < 3.0 - 1e-9:
            assert drawn == 32  # the car has not reacted yet
        else:
            assert drawn == 10
    assert [a for _, a in history] == [32.0, 10.0]


def test_lag_is_deterministic_per_seeded_ev() -> None:
    import random

    lags = [EV.random(random.Random(3)).setpoint_lag_s for _ in range(2)]
    assert lags[0] == lags[1]


def test_offline_without_profile_uses_failsafe_current_only_then() -> None:
    clock = ManualClock(T0)
    ch = charger(clock, failsafe_current_a=8)
    plug_offline(ch)
    assert not ch.connected
    assert ch.offered_a(1) == 8  # offline, never received a profile
    ch.install_profile(prof(1, Purpose.TX_DEFAULT, 16))
    assert ch.offered_a(1) == 16  # a profile was received: the profiles rule
    ch.clear_profiles()
    assert ch.offered_a(1) == 32  # cleared: no limit at all, as OCPP says


def test_tx_profile_expires_to_tx_default_and_ends_with_transaction() -> None:
    clock = ManualClock(T0)
    ch = charger(clock)
    plug_offline(ch)
    ch.install_profile(prof(1, Purpose.TX_DEFAULT, 8))
    ch.install_profile(prof(2, Purpose.TX, 16, connector=1, duration_s=30))  # relative to tx
    assert ch.offered_a(1) == 16
    run(ch, clock, 29)
    assert ch.offered_a(1) == 16
    run(ch, clock, 1.5)
    assert ch.offered_a(1) == 8
    ch.install_profile(prof(3, Purpose.TX, 12, connector=1))
    ch.stop_transaction(1)
    assert [p.id for p in ch.profiles] == [1, 2][:1]  # TxProfiles go with the transaction
    assert ch.offered_a(1) == 0 and ch.status(1).value == "Finishing"


def test_composite_schedule_matches_offered_and_future_changes() -> None:
    clock = ManualClock(T0)
    ch = charger(clock)
    plug_offline(ch)
    ch.install_profile(prof(1, Purpose.TX_DEFAULT, 16))
    ch.install_profile(prof(2, Purpose.TX, 10, connector=1, duration_s=60))
    ch.install_profile(
        prof(3, Purpose.MAX, [(0, 32), (90, 12)], kind="Absolute", start=clock.now())
    )
    start, unit, periods = ch.composite_schedule(1, 300)
    assert start == clock.now() and unit == "A"
    assert periods[0].limit == ch.offered_a(1) == 10
    assert [(p.start_s, p.limit) for p in periods] == [(0, 10), (60, 16), (90, 12)]
    _, unit, watts = ch.composite_schedule(1, 300, "W")
    assert unit == "W" and watts[0].limit == 6900
    _, _, station = ch.composite_schedule(0, 300)
    assert [(p.start_s, p.limit) for p in station] == [(0, 32), (90, 12)]
    run(ch, clock, 61)
    assert ch.offered_a(1) == 16


@pytest.mark.parametrize("soc", [0.5, 1.0])
def test_status_follows_the_car(soc: float) -> None:
    clock = ManualClock(T0)
    ch = charger(clock)
    ch.plug_nowait(1, EV(capacity_kwh=50, soc=soc, setpoint_lag_s=1))
    assert ch.status(1).value == "Preparing" or ch.transaction(1).active  # type: ignore[union-attr]
    run(ch, clock, 2)
    assert ch.status(1).value == ("Charging" if soc < 1 else "SuspendedEV")
    ch.unplug_nowait(1)
    assert ch.status(1).value == "Available" and ch.drawn_a(1) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- as the spec says


@settings(deadline=None)
@given(
    tx_limit=st.integers(6, 32),
    default_limit=st.one_of(st.none(), st.integers(6, 32)),
    valid_for_s=st.integers(1, 3600),
    protocol=st.sampled_from(["ocpp1.6", "ocpp2.0.1"]),
)
def test_accepted_tx_profile_applies_offline_until_its_valid_to_then_the_default(
    tx_limit: int, default_limit: int | None, valid_for_s: int, protocol: str
) -> None:
    clock = ManualClock(T0)
    ch = charger(clock, protocol=protocol, failsafe_current_a=0)
    plug_offline(ch)
    if default_limit is not None:
        assert ch.install_profile(prof(1, Purpose.TX_DEFAULT, default_limit))[0]
    valid_to = T0 + timedelta(seconds=valid_for_s)
    assert ch.install_profile(
        prof(2, Purpose.TX, tx_limit, connector=1, tx="42", valid_to=valid_to)
    )[0]
    assert not ch.connected
    clock.advance(valid_for_s - 0.5)
    assert ch.offered_a(1) == tx_limit  # offline, and still in force
    clock.advance(0.5)
    # ended: the TxDefault failsafe, or with no profile left in force the full rating
    assert ch.offered_a(1) == (default_limit if default_limit is not None else 32)


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_tx_profile_for_a_transaction_the_charger_does_not_know_is_rejected(
    protocol: str,
) -> None:
    clock = ManualClock(T0)
    ch = charger(clock, protocol=protocol)
    plug_offline(ch)
    assert ch.install_profile(prof(1, Purpose.TX, 10, connector=1, tx="7")) == (
        False,
        "transaction id mismatch",
    )
    ch.stop_transaction(1)
    assert ch.install_profile(prof(2, Purpose.TX, 10, connector=1, tx="42")) == (
        False,
        "no transaction",
    )
    assert ch.profiles == ()
