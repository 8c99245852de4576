"""Charge planning: hand-checked cases, bad input, and invariants against an independent
re-summation and a simple greedy plan (hypothesis)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.planning import (
    CarNeed,
    ChargePlan,
    PlanError,
    plan_charging,
)
from gridshare.core.topology import (
    ALL_PHASES,
    Charger,
    Connector,
    Group,
    Phase,
    Policy,
    Topology,
)

V = 230.0
KW3 = 3 * V / 1000  # kW per A per phase, 3-phase: 0.69
KW1 = V / 1000


def charger(cid: str, group: str, *, phases: int = 3, phase: Phase | None = None,
            max_a: float = 32.0, connectors: int = 1,
            max_kw: float | None = None) -> Charger:
    return Charger(cid, phases, phase if phases == 1 else None, max_a, 6.0, 0.0, 0,
                   tuple(Connector(cid, n, max_a, 6.0) for n in range(1, connectors + 1)),
                   max_power_kw=max_kw, group=group)


def site(chargers: Sequence[Charger], *, root_a: float | None = 1000.0,
         root_kw: float | None = None, sub: dict[str, tuple[float | None, float | None]]
         | None = None) -> Topology:
    """A root group ``site`` with optional sub-groups (id -> (A, kW)) below it."""
    sub = sub or {}
    groups = {"site": Group("site", root_a, root_kw, 3, Policy.EQUAL, None,
                            groups=tuple(sub),
                            chargers=tuple(c.id for c in chargers if c.group == "site"))}
    for gid, (amps, kw) in sub.items():
        groups[gid] = Group(gid, amps, kw, 3, Policy.EQUAL, "site",
                            chargers=tuple(c.id for c in chargers if c.group == gid))
    return Topology("t", V, Policy.EQUAL, groups, {c.id: c for c in chargers}, ("site",))


# --- by hand -------------------------------------------------------------------------------


def test_the_cheap_night_period_is_used_first() -> None:
    """11.04 kWh is one hour at 16 A on 3 phases: all of it in the 0.10 hour."""
    topo = site([charger("a", "site", max_a=16)])
    plan = plan_charging(topo, [CarNeed(("a", 1), 0, 4, 11.04)], periods=4, period_h=1.0,
                         prices=[0.30, 0.25, 0.10, 0.30])
    (car,) = plan.cars
    assert car.current_a == pytest.approx((0.0, 0.0, 16.0, 0.0))
    assert car.met and car.planned_kwh == pytest.approx(11.04)
    assert plan.cost == pytest.approx(1.104)
    assert plan.setpoints == {("a", 1): pytest.approx(0.0)}


def test_need_above_one_cheap_period_spills_into_the_next_cheapest() -> None:
    topo = site([charger("a", "site", max_a=16)])
    plan = plan_charging(topo, [CarNeed(("a", 1), 0, 4, 16.56)], periods=4, period_h=1.0,
                         prices=[0.30, 0.25, 0.10, 0.30])
    assert plan.cars[0].current_a == pytest.approx((0.0, 8.0, 16.0, 0.0))
    assert plan.setpoints == {("a", 1): pytest.approx(0.0)}


def test_equal_prices_charge_early() -> None:
    topo = site([charger("a", "site", max_a=16)])
    plan = plan_charging(topo, [CarNeed(("a", 1), 0, 3, 11.04)], periods=3, period_h=1.0)
    assert plan.cars[0].current_a == pytest.approx((16.0, 0.0, 0.0))
    assert plan.setpoints == {("a", 1): pytest.approx(16.0)}


def test_a_binding_group_limit_is_shared_and_the_shortfall_reported() -> None:
    """Two 32 A cars under a 40 A circuit for one hour: 40 A x 0.69 = 27.6 kWh in all."""
    topo = site([charger("a", "c1"), charger("b", "c1")], sub={"c1": (40.0, None)})
    cars = [CarNeed(("a", 1), 0, 1, 20.0), CarNeed(("b", 1), 0, 1, 20.0)]
    plan = plan_charging(topo, cars, periods=1, period_h=1.0)
    total = sum(c.current_a[0] for c in plan.cars)
    assert total == pytest.approx(40.0)
    assert sum(c.planned_kwh for c in plan.cars) == pytest.approx(40 * KW3)
    assert plan.shortfall_kwh == pytest.approx(40.0 - 40 * KW3)
    assert all(c.current_a[0] <= 32.0 + 1e-9 for c in plan.cars)


def test_the_limit_moves_charging_to_a_dearer_period_rather_than_leave_a_need_unmet() -> None:
    """The penalty is far above any price: the 0.90 hour is used once the cheap one is full."""
    topo = site([charger("a", "site"), charger("b", "site")], root_a=32.0)
    cars = [CarNeed(("a", 1), 0, 2, 22.08), CarNeed(("b", 1), 0, 2, 22.08)]
    plan = plan_charging(topo, cars, periods=2, period_h=1.0, prices=[0.10, 0.90])
    assert plan.shortfall_kwh == pytest.approx(0.0, abs=1e-6)
    for t in range(2):
        assert sum(c.current_a[t] for c in plan.cars) == pytest.approx(32.0)


def test_an_infeasible_need_is_reported_with_its_shortfall() -> None:
    """Present two hours at 16 A on 3 phases: 22.08 kWh possible of 30 asked, 7.92 short."""
    topo = site([charger("a", "site", max_a=16)])
    plan = plan_charging(topo, [CarNeed(("a", 1), 1, 3, 30.0)], periods=4, period_h=1.0)
    (car,) = plan.cars
    assert not car.met
    assert car.planned_kwh == pytest.approx(22.08)
    assert car.shortfall_kwh == pytest.approx(7.92)
    assert car.current_a == pytest.approx((0.0, 16.0, 16.0, 0.0))


def test_uncontrolled_load_lowers_the_headroom_per_phase() -> None:
    """A 1-phase car on L2 under a 32 A group with 20 A uncontrolled on L2: 12 A left."""
    topo = site([charger("a", "site", phases=1, phase=Phase.L2)], root_a=32.0)
    plan = plan_charging(topo, [CarNeed(("a", 1), 0, 2, 100.0)], periods=2, period_h=1.0,
                         uncontrolled_a={"site": [[0.0, 20.0, 0.0], [30.0, 0.0, 30.0]]})
    assert plan.cars[0].current_a == pytest.approx((12.0, 32.0))


def test_one_phase_chargers_on_different_lines_do_not_share_a_phase_limit() -> None:
    chargers = [charger("a", "site", phases=1, phase=Phase.L1),
                charger("b", "site", phases=1, phase=Phase.L2)]
    topo = site(chargers, root_a=32.0)
    cars = [CarNeed(("a", 1), 0, 1, 100.0), CarNeed(("b", 1), 0, 1, 100.0)]
    plan = plan_charging(topo, cars, periods=1, period_h=1.0)
    assert [c.current_a[0] for c in plan.cars] == pytest.approx([32.0, 32.0])


def test_a_one_phase_car_on_a_three_phase_charger_loads_l1_at_one_phase_power() -> None:
    topo = site([charger("a", "site")], root_a=32.0)
    plan = plan_charging(topo, [CarNeed(("a", 1), 0, 1, 100.0, phases=1)], periods=1,
                         period_h=1.0)
    assert plan.cars[0].current_a == pytest.approx((32.0,))
    assert plan.cars[0].planned_kwh == pytest.approx(32 * KW1)


def test_kw_limits_of_group_car_and_charger_hold() -> None:
    chargers = [charger("a", "site"), charger("b", "site"), charger("c", "site", max_kw=6.9)]
    topo = site(chargers, root_a=None, root_kw=20.7)
    cars = [CarNeed(("a", 1), 0, 1, 100.0, max_power_kw=3.45),
            CarNeed(("b", 1), 0, 1, 100.0), CarNeed(("c", 1), 0, 1, 100.0)]
    plan = plan_charging(topo, cars, periods=1, period_h=1.0)
    a, b, c = (p.current_a[0] for p in plan.cars)
    assert a <= 5.0 + 1e-9 and c <= 10.0 + 1e-9
    assert (a + b + c) * KW3 == pytest.approx(20.7)


def test_two_connectors_share_their_charger_maximum() -> None:
    topo = site([charger("a", "site", connectors=2, max_a=32.0)])
    cars = [CarNeed(("a", 1), 0, 1, 100.0), CarNeed(("a", 2), 0, 1, 100.0)]
    plan = plan_charging(topo, cars, periods=1, period_h=1.0)
    assert sum(c.current_a[0] for c in plan.cars) == pytest.approx(32.0)


def test_a_car_partly_outside_the_horizon_is_planned_inside_it() -> None:
    topo = site([charger("a", "site", max_a=16)])
    plan = plan_charging(topo, [CarNeed(("a", 1), -2, 10, 100.0)], periods=2, period_h=0.5)
    assert plan.cars[0].current_a == pytest.approx((16.0, 16.0))
    assert plan.cars[0].shortfall_kwh == pytest.approx(100.0 - 16 * KW3)


def test_setpoints_are_period_zero_of_the_cars_plugged_in_now() -> None:
    topo = site([charger("a", "site", max_a=16), charger("b", "site", max_a=16)])
    cars = [CarNeed(("a", 1), 0, 2, 5.0), CarNeed(("b", 1), 1, 2, 5.0)]
    plan = plan_charging(topo, cars, periods=2, period_h=1.0)
    assert [c.present_now for c in plan.cars] == [True, False]
    assert plan.setpoints == {("a", 1): pytest.approx(5.0 / KW3)}
    assert [(c.first, c.stop) for c in plan.cars] == [(0, 2), (1, 2)]


def test_no_cars_is_an_empty_plan() -> None:
    plan = plan_charging(site([charger("a", "site")]), [], periods=4, period_h=0.25)
    assert plan.cars == () and plan.setpoints == {} and plan.cost == 0.0


@pytest.mark.parametrize(("cars", "kwargs", "message"), [
    ([CarNeed(("x", 1), 0, 1, 1.0)], {}, "cars[0].connector: no charger 'x'"),
    ([CarNeed(("a", 2), 0, 1, 1.0)], {}, "cars[0].connector: charger 'a' has no connector 2"),
    ([CarNeed(("a", 1), 0, 1, 1.0), CarNeed(("a", 1), 0, 1, 1.0)], {},
     "cars[1].connector: a/1 already holds cars[0]"),
    ([CarNeed(("a", 1), 2, 2, 1.0)], {}, "cars[0]: departure (2) must come after arrival"),
    ([CarNeed(("a", 1), 0, 1, -1.0)], {}, "cars[0].energy_kwh: must be a number >= 0"),
    ([CarNeed(("a", 1), 0, 1, math.nan)], {}, "cars[0].energy_kwh"),
    ([CarNeed(("a", 1), 0, 1, 1.0, phases=2)], {}, "cars[0].phases: 1 or 3"),
    ([CarNeed(("a", 1), 0, 1, 1.0, max_current_a=-1)], {}, "cars[0].max_current_a"),
    ([], {"prices": [0.1]}, "prices: one per period expected (2), got 1"),
    ([], {"prices": [0.1, math.inf]}, "prices[1]: not a finite number"),
    ([], {"uncontrolled_a": {"nope": [[0, 0, 0]]}}, "uncontrolled_a.nope: no such group"),
    ([], {"uncontrolled_a": {"site": [[0, 0]]}}, "uncontrolled_a.site: one [L1, L2, L3]"),
    ([], {"uncontrolled_a": {"site": [[0, -1, 0]]}}, "uncontrolled_a.site: currents must"),
    ([], {"periods": 0}, "periods: must be at least 1"),
    ([], {"period_h": 0.0}, "period_h: must be a number of hours > 0"),
])
def test_bad_input_is_refused_naming_what_and_where(
        cars: list[CarNeed], kwargs: dict[str, object], message: str) -> None:
    topo = site([charger("a", "site")])
    args: dict[str, object] = {"periods": 2, "period_h": 1.0, **kwargs}
    with pytest.raises(PlanError) as err:
        plan_charging(topo, cars, **args)  # type: ignore[arg-type]
    assert message in str(err.value)


# --- invariants ----------------------------------------------------------------------------


def upper_a(topo: Topology, car: CarNeed) -> tuple[float, tuple[int, int, int], float]:
    """The car's own current bound, phase vector and kW per A, from the site (independent
    of the planner's own preparation)."""
    ch = topo.chargers[car.key[0]]
    vec = ch.phase_vector if not (ch.phases == 3 and car.phases == 1) else (1, 0, 0)
    kwpa = V * sum(vec) / 1000
    top = min(ch.max_current, topo.connector(car.key).max_current)
    if car.max_current_a is not None:
        top = min(top, car.max_current_a)
    for kw in (car.max_power_kw, ch.max_power_kw):
        if kw is not None:
            top = min(top, kw / kwpa)
    return top, vec, kwpa


def group_loads(topo: Topology, cars: Sequence[CarNeed], currents: Sequence[Sequence[float]],
                t: int) -> dict[str, tuple[list[float], float]]:
    out: dict[str, tuple[list[float], float]] = {g: ([0.0, 0.0, 0.0], 0.0) for g in topo.groups}
    for car, row in zip(cars, currents, strict=True):
        _, vec, kwpa = upper_a(topo, car)
        for gid in topo.charger_groups(car.key[0]):
            amps, kw = out[gid]
            for p in ALL_PHASES:
                amps[p] += row[t] * vec[p]
            out[gid] = (amps, kw + row[t] * kwpa)
    return out


def headroom(topo: Topology, gid: str, unc: dict[str, list[list[float]]],
             t: int) -> tuple[list[float], float]:
    g = topo.groups[gid]
    rows = unc.get(gid, [[0.0, 0.0, 0.0]])
    u = rows[t] if len(rows) > 1 else rows[0]
    amps = [math.inf if g.max_current is None else max(g.max_current - u[p], 0.0)
            for p in ALL_PHASES]
    kw = math.inf if g.max_power_kw is None else max(g.max_power_kw - sum(u) * V / 1000, 0.0)
    return amps, kw


def greedy(topo: Topology, cars: Sequence[CarNeed], periods: int, period_h: float,
           unc: dict[str, list[list[float]]]) -> list[list[float]]:
    """As soon as possible, cars in order, each as much as the limits still leave."""
    plan = [[0.0] * periods for _ in cars]
    left = [c.energy_kwh for c in cars]
    for t in range(periods):
        for i, car in enumerate(cars):
            if not (car.arrival <= t < car.departure) or left[i] <= 0:
                continue
            top, vec, kwpa = upper_a(topo, car)
            loads = group_loads(topo, cars, plan, t)
            amount = min(top, left[i] / (kwpa * period_h))
            for gid in topo.charger_groups(car.key[0]):
                room_a, room_kw = headroom(topo, gid, unc, t)
                amps, kw = loads[gid]
                for p in ALL_PHASES:
                    if vec[p]:
                        amount = min(amount, room_a[p] - amps[p])
                amount = min(amount, (room_kw - kw) / kwpa)
            amount = max(amount, 0.0)
            plan[i][t] = amount
            left[i] -= amount * kwpa * period_h
    return plan


def price_cost(cars: Sequence[CarNeed], topo: Topology, currents: Sequence[Sequence[float]],
               prices: Sequence[float], period_h: float) -> tuple[float, float]:
    """(cost, shortfall kWh) of a plan."""
    cost = short = 0.0
    for car, row in zip(cars, currents, strict=True):
        kwpa = upper_a(topo, car)[2]
        energy = [a * kwpa * period_h for a in row]
        cost += sum(e * p for e, p in zip(energy, prices, strict=True))
        short += max(car.energy_kwh - sum(energy), 0.0)
    return cost, short


@st.composite
def cases(draw: st.DrawFn) -> tuple[Topology, list[CarNeed], int, list[float],
                                    dict[str, list[list[float]]]]:
    periods = draw(st.integers(1, 6))
    subs = {f"g{i}": (draw(st.sampled_from([None, 16.0, 32.0, 50.0])),
                      draw(st.sampled_from([None, 8.0, 25.0])))
            for i in range(draw(st.integers(0, 2)))}
    subs = {g: (a if a is not None or k is not None else 20.0, k) for g, (a, k) in subs.items()}
    n = draw(st.integers(1, 5))
    chargers = []
    for i in range(n):
        phases = draw(st.sampled_from([1, 3]))
        chargers.append(charger(
            f"c{i}", draw(st.sampled_from(["site", *subs])), phases=phases,
            phase=draw(st.sampled_from(ALL_PHASES)), max_a=draw(st.sampled_from([16.0, 32.0])),
            max_kw=draw(st.sampled_from([None, None, 7.4]))))
    topo = site(chargers, root_a=draw(st.sampled_from([40.0, 63.0, 1000.0])),
                root_kw=draw(st.sampled_from([None, 30.0])), sub=subs)
    cars = []
    for i in range(n):
        if not draw(st.booleans()) and i:
            continue
        arrival = draw(st.integers(0, periods - 1))
        cars.append(CarNeed((f"c{i}", 1), arrival, draw(st.integers(arrival + 1, periods + 1)),
                            draw(st.floats(0, 60, allow_nan=False)),
                            max_current_a=draw(st.sampled_from([None, 10.0, 20.0])),
                            phases=draw(st.sampled_from([None, None, 1]))))
    prices = draw(st.lists(st.floats(-0.1, 1.0, allow_nan=False), min_size=periods,
                           max_size=periods))
    unc = {g: [[draw(st.sampled_from([0.0, 5.0, 30.0])) for _ in range(3)]]
           for g in draw(st.lists(st.sampled_from(list(topo.groups)), max_size=2, unique=True))}
    return topo, cars, periods, prices, unc


PERIOD_H = 0.5


def plan_of(case: tuple[Topology, list[CarNeed], int, list[float],
                        dict[str, list[list[float]]]]) -> ChargePlan:
    topo, cars, periods, prices, unc = case
    return plan_charging(topo, cars, periods=periods, period_h=PERIOD_H, prices=prices,
                         uncontrolled_a=unc)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_every_limit_holds_in_every_period_and_nothing_outside_presence(
        case: tuple[Topology, list[CarNeed], int, list[float], dict[str, list[list[float]]]]
) -> None:
    topo, cars, periods, _, unc = case
    plan = plan_of(case)
    currents = [c.current_a for c in plan.cars]
    for car, planned in zip(cars, plan.cars, strict=True):
        top, _, kwpa = upper_a(topo, car)
        for t, value in enumerate(planned.current_a):
            assert -1e-9 <= value <= top + 1e-6
            if not car.arrival <= t < car.departure:
                assert value == 0.0
        assert planned.planned_kwh <= car.energy_kwh + 1e-6
        assert planned.shortfall_kwh == pytest.approx(car.energy_kwh - planned.planned_kwh,
                                                      abs=1e-5)
        assert planned.planned_kwh == pytest.approx(sum(planned.current_a) * kwpa * PERIOD_H,
                                                    abs=1e-5)
    for t in range(periods):
        for gid, (amps, kw) in group_loads(topo, cars, currents, t).items():
            room_a, room_kw = headroom(topo, gid, unc, t)
            for p in ALL_PHASES:
                assert amps[p] <= room_a[p] + 1e-6, (gid, t, p)
            assert kw <= room_kw + 1e-6, (gid, t)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_never_worse_than_a_greedy_feasible_plan(
        case: tuple[Topology, list[CarNeed], int, list[float], dict[str, list[list[float]]]]
) -> None:
    """Less or equal shortfall; when both meet every need, cost not above greedy's."""
    topo, cars, periods, prices, unc = case
    plan = plan_of(case)
    g_cost, g_short = price_cost(cars, topo, greedy(topo, cars, periods, PERIOD_H, unc),
                                 prices, PERIOD_H)
    assert plan.shortfall_kwh <= g_short + 1e-5
    if g_short <= 1e-9 and plan.shortfall_kwh <= 1e-9:
        assert plan.cost <= g_cost + 1e-4


@settings(max_examples=100, deadline=None)
@given(cases())
def test_energy_is_need_or_all_that_is_possible_when_limits_do_not_bind(
        case: tuple[Topology, list[CarNeed], int, list[float], dict[str, list[list[float]]]]
) -> None:
    """Without group limits that bind, each car gets min(need, its own maximum)."""
    topo, cars, periods, prices, _ = case
    free = site(list(topo.chargers.values()), root_a=None, root_kw=10_000.0,
                sub={g: (None, 10_000.0) for g in topo.groups if g != "site"})
    plan = plan_charging(free, [c for c in cars if c.key[1] == 1], periods=periods,
                         period_h=PERIOD_H, prices=prices)
    for car, planned in zip(cars, plan.cars, strict=True):
        top, _, kwpa = upper_a(free, car)
        present = min(car.departure, periods) - car.arrival
        possible = top * kwpa * PERIOD_H * present
        assert planned.planned_kwh == pytest.approx(min(car.energy_kwh, possible), abs=1e-5)
        assert planned.met == (car.energy_kwh <= possible + 1e-6)
