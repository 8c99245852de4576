"""Status topics -> events, and the claim a setpoint becomes: pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gridshare.adapters.meters.parse import Rejected
from gridshare.adapters.openevse.driver import claim_body, target_obeys, whole_amps
from gridshare.adapters.openevse.status import BoxStatus, connector_status
from gridshare.events import (
    ChargerOffline,
    ChargerOnline,
    ConnectorStatus,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)
from gridshare.sim.openevse import Claim, SimOpenEvse

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_claim_whole_amps_rounded_down() -> None:
    assert claim_body(16.9) == {"state": "active", "charge_current": 16, "max_current": 16,
                                "auto_release": False}
    assert claim_body(6.0)["charge_current"] == 6
    assert claim_body(32.0)["charge_current"] == 32


def test_claim_below_six_amps_pauses() -> None:
    for amps in (0.0, 5.99, 3.0, -1.0, float("nan")):
        assert claim_body(amps)["state"] == "disabled"


@given(st.floats(min_value=0, max_value=100, allow_nan=False))
def test_claim_never_above_the_setpoint(amps: float) -> None:
    body = claim_body(amps)
    if body["state"] == "active":
        assert 6 <= body["charge_current"] <= amps + 1e-6
        assert body["charge_current"] == whole_amps(amps) > amps - 1
    else:
        assert amps < 6


def test_target_read_back() -> None:
    active = claim_body(16)
    assert target_obeys({"properties": {"state": "active", "charge_current": 16}}, active) is None
    assert target_obeys({"properties": {"state": "active", "charge_current": 10,
                                        "max_current": 32}}, active) is None
    assert target_obeys({"properties": {"state": "disabled"}}, active) is None
    why = target_obeys({"properties": {"state": "active", "charge_current": 32},
                        "claims": {"charge_current": 65537}}, active)
    assert why is not None and "32" in why
    assert target_obeys({"properties": {"state": "active"}}, active) is not None
    assert target_obeys({"properties": {"state": "active"}}, claim_body(0)) is not None
    assert target_obeys([], active) is not None


def test_connector_status() -> None:
    assert connector_status(1, False) is ConnectorStatus.AVAILABLE
    assert connector_status(3, True) is ConnectorStatus.CHARGING
    assert connector_status(254, True) is ConnectorStatus.SUSPENDED_EVSE
    assert connector_status(2, True) is ConnectorStatus.SUSPENDED_EV
    assert connector_status(6, True) is ConnectorStatus.FAULTED


def test_topics_become_charger_events() -> None:
    box = BoxStatus("oe-1")
    out = box.message("state", b"1", T0)
    assert out == [ChargerOnline("oe-1", T0)]
    assert box.message("total_energy", b"12.5", T0) == [
        MeterReading("oe-1", 1, T0, None, energy_wh=12500.0)]
    out = box.message("vehicle", b"1", T0)
    assert isinstance(out, list)
    started, status = out
    assert isinstance(started, SessionStarted) and started.meter_start_wh == 12500.0
    assert status == StatusChanged("oe-1", 1, ConnectorStatus.SUSPENDED_EV, T0)
    assert box.message("state", b"3", T0) == [
        StatusChanged("oe-1", 1, ConnectorStatus.CHARGING, T0)]
    (reading,) = box.message("amp", b"16000", T0)  # type: ignore[misc]
    assert reading == MeterReading("oe-1", 1, T0, started.transaction_id,
                                   current_a=(16.0, None, None))
    assert box.message("power", b"3680", T0) == [
        MeterReading("oe-1", 1, T0, started.transaction_id, power_w=3680.0)]
    later = T0 + timedelta(hours=1)
    stopped, available = box.message("vehicle", b"0", later)  # type: ignore[misc]
    assert stopped == SessionStopped("oe-1", 1, started.transaction_id, later,
                                     meter_stop_wh=12500.0, reason="EVDisconnected")
    assert available == StatusChanged("oe-1", 1, ConnectorStatus.AVAILABLE, later)
    assert box.message("status", b"offline", later) == [
        ChargerOffline("oe-1", later, "the box's MQTT will: offline")]
    assert box.message("status", b"online", later) == [ChargerOnline("oe-1", later)]


def test_a_plug_in_before_the_total_energy_has_no_meter_start() -> None:
    # total_energy not heard yet: the start register is unknown (None), never 0 Wh
    box = BoxStatus("oe-1")
    box.message("state", b"1", T0)
    started = box.message("vehicle", b"1", T0)[0]
    assert isinstance(started, SessionStarted) and started.meter_start_wh is None


def test_each_plug_in_is_a_new_session() -> None:
    box = BoxStatus("oe-1")
    ids = []
    for i in range(3):
        at = T0 + timedelta(seconds=i)
        out = box.message("vehicle", b"1", at)
        assert isinstance(out, list)
        ids += [e.transaction_id for e in out if isinstance(e, SessionStarted)]
        box.message("vehicle", b"0", at)
    assert len(set(ids)) == 3


def test_bad_values_rejected_and_change_nothing() -> None:
    box = BoxStatus("oe-1")
    box.message("state", b"3", T0)
    for sub, payload in (("amp", b"NaN"), ("amp", b"-5"), ("amp", b"abc"),
                         ("amp", b"1e400"), ("amp", b"\"16\""), ("voltage", b"99999"),
                         ("state", b"42"), ("state", b"3.5"), ("vehicle", b"2"),
                         ("status", b"maybe"), ("amp", b"\xff\xfe")):
        assert isinstance(box.message(sub, payload, T0), Rejected), (sub, payload)
    assert box.state == 3 and box.vehicle is None


claims = st.lists(st.tuples(
    st.sampled_from([10, 50, 100, 200, 1000, 1100, 5000]),
    st.sampled_from([None, "active", "disabled"]),
    st.one_of(st.none(), st.integers(6, 40)),
    st.one_of(st.none(), st.integers(6, 40))), max_size=4)


@given(claims, st.floats(min_value=0, max_value=40, allow_nan=False))
def test_an_accepted_read_back_bounds_what_the_box_draws(
        others: list[tuple[int, str | None, int | None, int | None]], amps: float) -> None:
    """Whatever other claims a box holds, a target the driver accepts (evaluated the
    firmware's way by the simulator) never lets the car draw more than the setpoint."""
    box = SimOpenEvse("b", "127.0.0.1", 1, shaper_enabled=False)
    for i, (prio, state, charge, most) in enumerate(others):
        box.claims[100 + i] = Claim(prio, state, charge, most)
    body = claim_body(amps)
    box.claims[18259] = Claim(500, body["state"], body["charge_current"], body["max_current"])
    box.plug(40.0)
    props, won = box.target()
    if target_obeys({"properties": props, "claims": won}, body) is None:
        assert box.amps() <= (whole_amps(amps) if body["state"] == "active" else 0.0)
