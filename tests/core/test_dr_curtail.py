"""Curtailment split: stations by policy, then connectors by minimum and type limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core.dr.curtail import (
    ConnectorLoad,
    CurtailPolicy,
    StationLoad,
    connector_caps,
    split_reduction,
)
from gridshare.core.topology import Charger, Connector, station_kw_to_amps

P, PR = CurtailPolicy.PROPORTIONAL, CurtailPolicy.PRIORITY


def station(sid: str, *loads: float, priority: int = 0, min_kw: float = 0.0,
            max_kw: float = 350.0, max_station_kw: float | None = None) -> StationLoad:
    """A station with one connector per load (all with the same minimum and maximum)."""
    conns = tuple(ConnectorLoad((sid, n), load, min_kw, max_kw)
                  for n, load in enumerate(loads, start=1))
    return StationLoad(sid, sum(loads), priority, conns, max_station_kw)


def dc_plaza_station(sid: str, ccs_kw: float, chademo_kw: float, *,
                     priority: int = 0) -> StationLoad:
    """A CCS 150 kW + CHAdeMO 50 kW station (minimums 10 and 5 kW)."""
    return StationLoad(sid, ccs_kw + chademo_kw, priority, (
        ConnectorLoad((sid, 1), ccs_kw, 10.0, 150.0),
        ConnectorLoad((sid, 2), chademo_kw, 5.0, 50.0)), max_station_kw=200.0)


def reduction(stations: list[StationLoad], allowed: dict[str, float]) -> float:
    return sum(s.load_kw - allowed[s.station] for s in stations)


def test_proportional_sheds_each_its_share() -> None:
    stations = [station("a", 100), station("b", 50), station("c", 0)]
    allowed = split_reduction(stations, 30, P)
    assert allowed == pytest.approx({"a": 80, "b": 40, "c": 0})


def test_proportional_pauses_below_the_minimum_and_the_others_shed_less() -> None:
    stations = [station("a", 100, min_kw=10), station("c", 10, min_kw=8)]
    assert split_reduction(stations, 22, P) == pytest.approx({"a": 80, "c": 8})
    # c's share (3 kW) would leave it at 7 kW, below its 8 kW minimum: it pauses and
    # sheds 10 kW, so a sheds 23 kW instead of 30
    allowed = split_reduction(stations, 33, P)
    assert allowed == pytest.approx({"a": 77, "c": 0})
    assert reduction(stations, allowed) == pytest.approx(33)


def test_proportional_with_dc_connector_type_limits() -> None:
    s1 = dc_plaza_station("dc-1", 140, 40)
    s2 = dc_plaza_station("dc-2", 100, 0)
    allowed = split_reduction([s1, s2], 70, P)  # 180 : 100 of 280 kW
    assert allowed == pytest.approx({"dc-1": 135, "dc-2": 75})
    caps = connector_caps(s1, allowed["dc-1"])
    # minimums first (10 + 5), the rest by load above the minimum (130 : 35)
    assert caps == pytest.approx({("dc-1", 1): 10 + 120 * 130 / 165,
                                  ("dc-1", 2): 5 + 120 * 35 / 165})
    assert connector_caps(s2, allowed["dc-2"]) == pytest.approx({("dc-2", 1): 75,
                                                                  ("dc-2", 2): 0})


def test_connector_type_limits_cap_each_connector() -> None:
    s = dc_plaza_station("dc", 140, 40)
    # more than it draws (max_station_kw 200): the CCS side stops at 150 kW, the rest goes
    # to CHAdeMO, which stops at 50; what is left is not handed out
    caps = connector_caps(s, 195)
    assert caps == pytest.approx({("dc", 1): 150, ("dc", 2): 45})
    assert connector_caps(s, 500) == pytest.approx({("dc", 1): 150, ("dc", 2): 50})
    # the minimums do not fit: the connector drawing least pauses, the other takes it all;
    # below the larger one's minimum, the one whose minimum fits keeps charging
    assert connector_caps(s, 12) == pytest.approx({("dc", 1): 12, ("dc", 2): 0})
    assert connector_caps(s, 9) == pytest.approx({("dc", 1): 0, ("dc", 2): 9})
    assert connector_caps(s, 4) == pytest.approx({("dc", 1): 0, ("dc", 2): 0})


def test_max_station_kw_bounds_the_caps() -> None:
    s = station("s", 60, 60, max_station_kw=100)
    assert sum(connector_caps(s, 120).values()) == pytest.approx(100)


def test_idle_connectors_get_nothing_unless_no_connector_reports_load() -> None:
    s = station("s", 30, 0)
    assert connector_caps(s, 20) == {("s", 1): 20, ("s", 2): 0}
    unknown = StationLoad("u", 40, 0, (ConnectorLoad(("u", 1), 0, 0, 50),
                                       ConnectorLoad(("u", 2), 0, 0, 50)))
    assert connector_caps(unknown, 40) == pytest.approx({("u", 1): 20, ("u", 2): 20})
    assert connector_caps(unknown, 0) == {("u", 1): 0, ("u", 2): 0}


def test_priority_sheds_lowest_priority_first() -> None:
    stations = [station("high", 100, priority=5), station("low", 50, priority=0),
                station("mid", 80, priority=1)]
    allowed = split_reduction(stations, 100, PR)
    assert allowed == pytest.approx({"low": 0, "mid": 30, "high": 100})


def test_priority_ties_take_the_larger_load_first() -> None:
    stations = [station("small", 20), station("big", 60)]
    assert split_reduction(stations, 50, PR) == pytest.approx({"big": 10, "small": 20})


def test_priority_with_minimums_pauses_and_counts_it() -> None:
    stations = [station("low", 50, priority=0, min_kw=6),
                station("mid", 80, priority=1, min_kw=40),
                station("high", 100, priority=5, min_kw=6)]
    # mid would go to 30 kW, below its 40 kW minimum: it pauses (sheds 80), high untouched
    allowed = split_reduction(stations, 100, PR)
    assert allowed == pytest.approx({"low": 0, "mid": 0, "high": 100})
    assert reduction(stations, allowed) >= 100


def test_priority_on_a_dc_plaza() -> None:
    stations = [dc_plaza_station("dc-1", 140, 40, priority=0),
                dc_plaza_station("dc-2", 150, 0, priority=3)]
    allowed = split_reduction(stations, 90, PR)
    assert allowed == pytest.approx({"dc-1": 90, "dc-2": 150})
    caps = connector_caps(stations[0], 90)
    assert caps[("dc-1", 1)] <= 150 and caps[("dc-1", 2)] <= 50
    assert sum(caps.values()) == pytest.approx(90)


@pytest.mark.parametrize(("policy", "expected"), [
    (P, {"a": 100, "b": 0, "c": 20}),   # the largest first: b alone meets 60
    (PR, {"a": 0, "b": 110, "c": 0}),   # the lowest priority first: c (20), then a (100)
])
def test_shed_pauses_whole_stations_in_policy_order(policy: CurtailPolicy,
                                                    expected: dict[str, float]) -> None:
    stations = [station("a", 100, priority=1), station("b", 110, priority=3),
                station("c", 20, priority=0)]
    assert split_reduction(stations, 60, policy, shed=True) == pytest.approx(expected)


def test_target_beyond_the_zone_sends_everyone_to_zero() -> None:
    stations = [station("a", 100), station("b", 50, min_kw=10)]
    for policy in (P, PR):
        for shed in (False, True):
            assert split_reduction(stations, 500, policy, shed=shed) == {"a": 0, "b": 0}
            assert split_reduction(stations, 150, policy, shed=shed) == {"a": 0, "b": 0}


def test_zero_load_and_zero_target() -> None:
    idle = [station("a", 0), station("b", 0)]
    assert split_reduction(idle, 10, P) == {"a": 0, "b": 0}
    assert split_reduction(idle, 0, PR) == {"a": 0, "b": 0}
    assert split_reduction([], 10, P) == {}
    stations = [station("a", 100), station("b", 40)]
    for policy in (P, PR):
        assert split_reduction(stations, 0, policy) == pytest.approx({"a": 100, "b": 40})


@pytest.mark.parametrize(("stations", "target", "match"), [
    ([station("a", 10)], -1, "target_kw must be a finite number"),
    ([station("a", 10)], math.nan, "target_kw"),
    ([station("a", 10), station("a", 5)], 1, "station 'a' given twice"),
    ([StationLoad("a", -3, 0, ())], 1, "a: load_kw"),
    ([StationLoad("a", 5, 0, (ConnectorLoad(("a", 1), math.inf, 0, 9),))], 1, "a/1: load_kw"),
])
def test_bad_input_is_refused(stations: list[StationLoad], target: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_reduction(stations, target, P)


def test_station_kw_to_amps() -> None:
    three = Charger("c", 3, None, 300, 0, 0, 0, (Connector("c", 1, 300, 0),))
    assert station_kw_to_amps(three, 69, 230) == pytest.approx(100)
    assert station_kw_to_amps(three, 0, 230) == 0


# --- properties ---------------------------------------------------------------------------

@st.composite
def zones(draw: st.DrawFn) -> list[StationLoad]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        conns = []
        for n in range(1, draw(st.integers(1, 3)) + 1):
            max_kw = draw(st.sampled_from([7.4, 22.0, 50.0, 150.0, 350.0]))
            min_kw = draw(st.floats(0, min(20.0, max_kw)))
            load = draw(st.one_of(st.just(0.0), st.floats(0, max_kw)))
            conns.append(ConnectorLoad((f"s{i}", n), load, min_kw, max_kw))
        limit = draw(st.one_of(st.none(), st.floats(10, 400)))
        out.append(StationLoad(f"s{i}", sum(c.load_kw for c in conns),
                               draw(st.integers(0, 3)), tuple(conns), limit))
    return out


@given(zones(), st.floats(0, 1.3), st.sampled_from(list(CurtailPolicy)), st.booleans())
def test_split_properties(stations: list[StationLoad], fraction: float,
                          policy: CurtailPolicy, shed: bool) -> None:
    total = sum(s.load_kw for s in stations)
    target = fraction * total
    allowed = split_reduction(stations, target, policy, shed=shed)
    assert set(allowed) == {s.station for s in stations}
    assert sum(allowed.values()) <= total + 1e-6
    for s in stations:
        assert 0 <= allowed[s.station] <= s.load_kw + 1e-9  # no station above its load
        caps = connector_caps(s, allowed[s.station])
        assert set(caps) == {c.key for c in s.connectors}
        assert sum(caps.values()) <= allowed[s.station] + 1e-6
        for c in s.connectors:
            cap = caps[c.key]
            assert cap == 0 or cap >= c.min_kw - 1e-9, (c, cap)  # never in (0, min)
            assert cap <= c.max_kw + 1e-9
    if target <= total:  # reachable: pausing everything gives the whole load
        assert reduction(stations, allowed) >= target - 1e-6


@given(zones(), st.floats(0, 500))
def test_connector_caps_properties(stations: list[StationLoad], allowed_kw: float) -> None:
    for s in stations:
        caps = connector_caps(s, allowed_kw)
        limit = allowed_kw if s.max_station_kw is None else min(allowed_kw, s.max_station_kw)
        assert sum(caps.values()) <= limit + 1e-6
        for c in s.connectors:
            assert caps[c.key] == 0 or c.min_kw - 1e-9 <= caps[c.key] <= c.max_kw + 1e-9
