"""Charge planning: the least-cost currents per car and period that meet energy needs.

A linear program over the periods of a horizon (e.g. 96 periods of 15 minutes). Each car
present on a connector gets a current (A per phase) in every period it is there; every
group limit of the site (A per phase and kW, less the uncontrolled load expected there),
every charger maximum and every car maximum holds in every period. The objective is the
energy cost under a time-of-use price per period plus a shortfall penalty far above any
price, so a need is met whenever the limits allow it and the cheapest periods are used
first. Pure: no clock, no I/O; periods are indices, the caller maps them to times.

The LP is a relaxation of what a charger can do: a current between 0 and a connector's
``min_current`` may be planned (the live allocation still enforces minimums).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highspy
import numpy as np
import numpy.typing as npt

from gridshare.core.topology import ALL_PHASES, ConnectorKey, Topology

FloatArray = npt.NDArray[np.float64]

PENALTY_FACTOR = 1000.0
"""Shortfall penalty per kWh: this many times the largest absolute price (plus one)."""
EARLY_WEIGHT = 1e-6
"""Cost per kWh and period index added so that among equal prices earlier charging wins
(a car that leaves early is fuller); far below any price difference that matters."""
TOLERANCE_KWH = 1e-6
"""Shortfalls below this are rounding of the solver, reported as met."""


class PlanError(ValueError):
    """The planning input is inconsistent (names what and where); nothing is planned."""


@dataclass(frozen=True, slots=True)
class CarNeed:
    """One car to plan for: where it is plugged, when, and what it needs."""

    key: ConnectorKey
    arrival: int
    """First period it is present (0 = the current period)."""
    departure: int
    """First period it is gone; present in ``arrival <= t < departure``."""
    energy_kwh: float
    max_current_a: float | None = None
    """A per phase the car accepts (None: the connector's maximum)."""
    max_power_kw: float | None = None
    """kW the car accepts (None: no limit of its own)."""
    phases: int | None = None
    """1 or 3 phases the car charges on (None: the charger's); a 1-phase car on a
    3-phase charger loads L1."""


@dataclass(frozen=True, slots=True)
class CarPlan:
    key: ConnectorKey
    need_kwh: float
    planned_kwh: float
    shortfall_kwh: float
    current_a: tuple[float, ...]
    """A per phase in every period of the horizon (0 while absent)."""
    first: int = 0
    """First period of the horizon the car is present in."""
    stop: int = 0
    """First period of the horizon it is gone (``first == stop``: never present in it)."""

    @property
    def present_now(self) -> bool:
        """Plugged in during period 0, the one the live allocation is in."""
        return self.first == 0 < self.stop

    @property
    def met(self) -> bool:
        return self.shortfall_kwh <= TOLERANCE_KWH


@dataclass(frozen=True, slots=True)
class ChargePlan:
    periods: int
    period_h: float
    cars: tuple[CarPlan, ...]
    cost: float
    """Energy cost of the plan at the given prices (penalty not included)."""

    @property
    def setpoints(self) -> dict[ConnectorKey, float]:
        """What the live allocation should aim for now: period 0's current per car
        plugged in now."""
        return {c.key: c.current_a[0] for c in self.cars if c.present_now}

    @property
    def shortfall_kwh(self) -> float:
        return sum(c.shortfall_kwh for c in self.cars)


@dataclass(frozen=True, slots=True)
class _Car:
    """A car with what the topology says about it, ready for the LP."""

    index: int
    need: CarNeed
    phase_vector: tuple[int, int, int]
    kw_per_amp: float
    upper_a: float
    start: int
    stop: int


def plan_charging(
    topology: Topology,
    cars: Sequence[CarNeed],
    *,
    periods: int,
    period_h: float,
    prices: Sequence[float] | None = None,
    uncontrolled_a: Mapping[str, Sequence[Sequence[float]]] | None = None,
) -> ChargePlan:
    """The least-cost plan; raise PlanError on bad input (before solving anything).

    ``prices``: per kWh, one per period (None: flat). ``uncontrolled_a``: per group id, A
    per phase of load we do not control, either one row ``[L1, L2, L3]`` for the whole
    horizon or one row per period.
    """
    if periods < 1:
        raise PlanError(f"periods: must be at least 1 (got {periods})")
    if not (period_h > 0 and math.isfinite(period_h)):
        raise PlanError(f"period_h: must be a number of hours > 0 (got {period_h})")
    price = _prices(prices, periods)
    base = _uncontrolled(topology, uncontrolled_a, periods)
    prepared = _prepare(topology, cars, periods)
    if not prepared:
        return ChargePlan(periods, period_h, (), 0.0)
    x = _solve(topology, prepared, periods, period_h, price, base)
    plans: list[CarPlan] = []
    cost = 0.0
    for car, col in zip(prepared, x, strict=True):
        row = np.zeros(periods)
        row[car.start:car.stop] = col
        energy = row * car.kw_per_amp * period_h
        planned = min(float(energy.sum()), car.need.energy_kwh)
        short = max(car.need.energy_kwh - planned, 0.0)
        cost += float(energy @ price)
        plans.append(CarPlan(car.need.key, car.need.energy_kwh, planned,
                             short if short > TOLERANCE_KWH else 0.0,
                             tuple(float(v) for v in row), car.start, car.stop))
    return ChargePlan(periods, period_h, tuple(plans), cost)


def _prices(prices: Sequence[float] | None, periods: int) -> FloatArray:
    if prices is None:
        return np.zeros(periods)
    price = np.asarray(prices, dtype=float)
    if price.shape != (periods,):
        raise PlanError(f"prices: one per period expected ({periods}), got {len(price)}")
    bad = np.flatnonzero(~np.isfinite(price))
    if bad.size:
        raise PlanError(f"prices[{int(bad[0])}]: not a finite number")
    return price


def _uncontrolled(topology: Topology, given: Mapping[str, Sequence[Sequence[float]]] | None,
                  periods: int) -> dict[str, FloatArray]:
    out: dict[str, FloatArray] = {}
    for gid, rows in (given or {}).items():
        if gid not in topology.groups:
            raise PlanError(f"uncontrolled_a.{gid}: no such group in the site")
        arr = np.asarray(rows, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] not in (1, periods):
            raise PlanError(f"uncontrolled_a.{gid}: one [L1, L2, L3] row, or one per period "
                            f"({periods}), expected")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise PlanError(f"uncontrolled_a.{gid}: currents must be finite and >= 0")
        out[gid] = np.broadcast_to(arr, (periods, 3))
    return out


def _prepare(topology: Topology, cars: Sequence[CarNeed], periods: int) -> list[_Car]:
    out: list[_Car] = []
    seen: dict[ConnectorKey, int] = {}
    for i, car in enumerate(cars):
        where = f"cars[{i}]"
        if car.key[0] not in topology.chargers:
            raise PlanError(f"{where}.connector: no charger {car.key[0]!r} in the site")
        try:
            conn = topology.connector(car.key)
        except KeyError:
            raise PlanError(f"{where}.connector: charger {car.key[0]!r} has no connector "
                            f"{car.key[1]}") from None
        if car.key in seen:
            raise PlanError(f"{where}.connector: {car.key[0]}/{car.key[1]} already holds "
                            f"cars[{seen[car.key]}]")
        seen[car.key] = i
        if not (math.isfinite(car.energy_kwh) and car.energy_kwh >= 0):
            raise PlanError(f"{where}.energy_kwh: must be a number >= 0 (got {car.energy_kwh})")
        if car.departure <= car.arrival:
            raise PlanError(f"{where}: departure ({car.departure}) must come after arrival "
                            f"({car.arrival})")
        for name, value in (("max_current_a", car.max_current_a),
                            ("max_power_kw", car.max_power_kw)):
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise PlanError(f"{where}.{name}: must be a number >= 0 (got {value})")
        if car.phases not in (None, 1, 3):
            raise PlanError(f"{where}.phases: 1 or 3 (got {car.phases})")
        charger = topology.chargers[car.key[0]]
        vector = charger.phase_vector
        if charger.phases == 3 and car.phases == 1:
            vector = (1, 0, 0)
        kw_per_amp = topology.voltage * sum(vector) / 1000.0
        upper = min(conn.max_current, charger.max_current)
        if car.max_current_a is not None:
            upper = min(upper, car.max_current_a)
        for kw in (car.max_power_kw, charger.max_power_kw, charger.max_station_kw):
            if kw is not None:
                upper = min(upper, kw / kw_per_amp)
        start, stop = max(car.arrival, 0), min(car.departure, periods)
        if stop <= start:
            # present only outside the horizon: nothing can be planned for it here
            start = stop = max(min(start, periods), 0)
        out.append(_Car(len(out), car, vector, kw_per_amp, max(upper, 0.0), start, stop))
    return out


@dataclass(frozen=True, slots=True)
class _Row:
    """One limit, repeated in every period: which cars it sums and with what weight."""

    rhs: FloatArray
    """Per period: what the controlled load may reach (>= 0)."""
    weights: dict[int, float]
    """Car index -> coefficient (1 for A rows, kW per A for kW rows)."""


def _rows(topology: Topology, cars: list[_Car], periods: int,
          base: dict[str, FloatArray]) -> list[_Row]:
    """Every limit that some car counts against: group A per phase and kW, charger A per
    phase and kW when several of its connectors hold cars."""
    rows: list[_Row] = []
    by_group: dict[str, list[_Car]] = {}
    by_charger: dict[str, list[_Car]] = {}
    for car in cars:
        cid = car.need.key[0]
        by_charger.setdefault(cid, []).append(car)
        for gid in topology.charger_groups(cid):
            by_group.setdefault(gid, []).append(car)
    volts = topology.voltage / 1000.0
    for gid, members in by_group.items():
        group = topology.groups[gid]
        unc = base.get(gid, np.zeros((periods, 3)))
        if group.max_current is not None:
            for phase in ALL_PHASES:
                weights = {c.index: 1.0 for c in members if c.phase_vector[phase]}
                if weights:
                    rhs = np.maximum(group.max_current - unc[:, phase], 0.0)
                    rows.append(_Row(rhs, weights))
        if group.max_power_kw is not None:
            rhs = np.maximum(group.max_power_kw - unc.sum(axis=1) * volts, 0.0)
            rows.append(_Row(rhs, {c.index: c.kw_per_amp for c in members}))
    for cid, members in by_charger.items():
        if len(members) < 2:
            continue
        charger = topology.chargers[cid]
        for phase in ALL_PHASES:
            weights = {c.index: 1.0 for c in members if c.phase_vector[phase]}
            if len(weights) > 1:
                rows.append(_Row(np.full(periods, charger.max_current), weights))
        for kw in (charger.max_power_kw, charger.max_station_kw):
            if kw is not None:
                rows.append(_Row(np.full(periods, kw), {c.index: c.kw_per_amp
                                                        for c in members}))
    return rows


def _solve(topology: Topology, cars: list[_Car], periods: int, period_h: float,
           price: FloatArray, base: dict[str, FloatArray]) -> list[FloatArray]:
    """Per car, its current in each period it is present (columns of the LP)."""
    rows = _rows(topology, cars, periods, base)
    n_rows = len(rows)
    rows_of: list[list[tuple[int, float]]] = [[] for _ in cars]
    for r, row in enumerate(rows):
        for ci, w in row.weights.items():
            rows_of[ci].append((r, w))
    penalty = PENALTY_FACTOR * (float(np.max(np.abs(price))) + 1.0)
    energy_row0 = n_rows * periods
    starts: list[int] = [0]
    index: list[npt.NDArray[np.int64]] = []
    value: list[FloatArray] = []
    cost: list[FloatArray] = []
    upper: list[FloatArray] = []
    early = EARLY_WEIGHT * np.arange(periods)
    for car in cars:
        span = np.arange(car.start, car.stop)
        kwh = car.kw_per_amp * period_h
        pairs = sorted(rows_of[car.index])
        r_idx = np.array([r for r, _ in pairs], dtype=np.int64)
        r_val = np.array([w for _, w in pairs], dtype=float)
        idx = np.empty((span.size, r_idx.size + 1), dtype=np.int64)
        val = np.empty((span.size, r_idx.size + 1))
        idx[:, :-1] = span[:, None] * n_rows + r_idx[None, :]
        val[:, :-1] = r_val[None, :]
        idx[:, -1] = energy_row0 + car.index
        val[:, -1] = kwh
        index.append(idx.ravel())
        value.append(val.ravel())
        per_col = r_idx.size + 1
        first = starts[-1]
        starts.extend(first + per_col * (k + 1) for k in range(span.size))
        cost.append((price[span] + early[span]) * kwh)
        upper.append(np.full(span.size, car.upper_a))
    # shortfall columns: one per car, only in its energy row
    n_x = sum(c.stop - c.start for c in cars)
    for car in cars:
        index.append(np.array([energy_row0 + car.index], dtype=np.int64))
        value.append(np.ones(1))
        starts.append(starts[-1] + 1)
    needs = np.array([c.need.energy_kwh for c in cars])
    cost.append(np.full(len(cars), penalty))
    upper.append(needs)

    lp = highspy.HighsLp()
    lp.num_col_ = n_x + len(cars)
    lp.num_row_ = energy_row0 + len(cars)
    lp.col_cost_ = np.concatenate(cost)
    lp.col_lower_ = np.zeros(lp.num_col_)
    lp.col_upper_ = np.concatenate(upper)
    limit_rhs = (np.stack([row.rhs for row in rows], axis=1).ravel() if rows
                 else np.zeros(0))
    lp.row_lower_ = np.concatenate([np.full(energy_row0, -highspy.kHighsInf), needs])
    lp.row_upper_ = np.concatenate([limit_rhs, needs])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_ = lp.num_col_
    lp.a_matrix_.num_row_ = lp.num_row_
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.concatenate(index).astype(np.int32)
    lp.a_matrix_.value_ = np.concatenate(value)
    solver = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: untyped __init__
    solver.setOptionValue("output_flag", False)
    solver.setOptionValue("threads", 1)
    if solver.passModel(lp) != highspy.HighsStatus.kOk:
        raise RuntimeError("charge plan LP refused by the solver")
    solver.run()
    status = solver.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        # x = 0 with full shortfall is always feasible and the cost is bounded, so this
        # is a solver failure, not a property of the input
        raise RuntimeError(f"charge plan LP not solved: {solver.modelStatusToString(status)}")
    col = np.clip(np.asarray(solver.getSolution().col_value[:n_x], dtype=float), 0.0, None)
    out: list[FloatArray] = []
    at = 0
    for car in cars:
        width = car.stop - car.start
        out.append(np.minimum(col[at:at + width], car.upper_a))
        at += width
    return out


__all__ = ["CarNeed", "CarPlan", "ChargePlan", "PlanError", "plan_charging"]
