"""An independent model of a site's constraints, for asserting what any allocation must do.

Written from the spec, not from the engine or the guard: every group gives one constraint
per phase (A) and one in kW, every charger one on the sum of its connectors. A constraint
is a linear form: each connector contributes ``coef × drawn current`` (1 per A on a loaded
phase; V × phases / 1000 kW per A for kW limits). Offline connectors draw their charger's
failsafe current whatever the setpoint says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ALL_PHASES, ConnectorKey, Phase, Topology

EPS = 1e-6


@dataclass(frozen=True)
class Constraint:
    name: str
    group: str | None
    """None for a charger's own maximum."""
    phase: Phase | None
    capacity: float
    coef: Mapping[ConnectorKey, float] = field(repr=False)

    def load(self, drawn: Mapping[ConnectorKey, float]) -> float:
        return sum(c * drawn.get(k, 0.0) for k, c in self.coef.items())

    def headroom(self, drawn: Mapping[ConnectorKey, float]) -> float:
        return self.capacity - self.load(drawn)


def constraints(topology: Topology, snapshot: Snapshot) -> list[Constraint]:
    out: list[Constraint] = []
    for gid, group in topology.groups.items():
        lim = effective_limit(group, snapshot.conditions(gid), topology.voltage)
        keys = [(cid, topology.chargers[cid]) for cid in topology.subtree_chargers(gid)]
        for phase in ALL_PHASES:
            coef = {conn.key: 1.0 for _, ch in keys if ch.loads(phase)
                    for conn in ch.connectors}
            out.append(Constraint(f"group {gid} {phase.name}", gid, phase,
                                  lim.available[phase], coef))
        kw_coef = {conn.key: topology.power_kw_per_amp(ch) for _, ch in keys
                   for conn in ch.connectors}
        out.append(Constraint(f"group {gid} kW", gid, None, lim.available_power_kw, kw_coef))
    for charger in topology.chargers.values():
        out.append(Constraint(f"charger {charger.id}", None, None, charger.max_current,
                              {c.key: 1.0 for c in charger.connectors}))
    return out


@dataclass
class Model:
    """Everything the assertions need about one (topology, snapshot) pair."""

    topology: Topology
    snapshot: Snapshot
    constraints: list[Constraint]
    of: dict[ConnectorKey, list[Constraint]]
    online: set[ConnectorKey]
    offline: set[ConnectorKey]
    failsafe: dict[ConnectorKey, float]
    infeasible: set[str]
    """Groups whose offline connectors alone break a limit: they cannot be saved."""
    under_infeasible: set[ConnectorKey]
    """Online connectors that load a limit (group and phase, or kW) offline ones break."""
    lost: list[Constraint]
    """The limits offline connectors alone break."""

    @classmethod
    def build(cls, topology: Topology, snapshot: Snapshot) -> Model:
        cons = constraints(topology, snapshot)
        of: dict[ConnectorKey, list[Constraint]] = {c.key: [] for c in topology.connectors()}
        for con in cons:
            for key in con.coef:
                of[key].append(con)
        online = {c.key for c in topology.connectors() if snapshot.demand(c.key).online}
        offline = {c.key for c in topology.connectors()} - online
        failsafe = {c.key: topology.chargers[c.charger_id].failsafe_current
                    for c in topology.connectors()}
        base = {k: (failsafe[k] if k in offline else 0.0) for k in failsafe}
        lost = [con for con in cons if con.group is not None and con.headroom(base) < -EPS]
        infeasible = {con.group for con in lost if con.group is not None}
        under = {k for k in online if any(k in con.coef for con in lost)}
        return cls(topology, snapshot, cons, of, online, offline, failsafe, infeasible, under,
                   lost)

    # -- per-connector bounds -------------------------------------------------------------

    @property
    def res(self) -> float:
        return self.topology.resolution_a

    def ceil_res(self, amps: float) -> float:
        return math.ceil(amps / self.res - 1e-9) * self.res

    def floor_res(self, amps: float) -> float:
        return math.floor(amps / self.res + 1e-9) * self.res

    def upper(self, key: ConnectorKey) -> float:
        """min(connector max, charger max, EV max): the most this connector may get."""
        charger = self.topology.chargers[key[0]]
        top = min(self.topology.connector(key).max_current, charger.max_current)
        ev = self.snapshot.demand(key).max_current
        return top if ev is None else min(top, ev)

    def top(self, key: ConnectorKey) -> float:
        """The largest setpoint on the resolution grid."""
        return self.floor_res(self.upper(key))

    def start(self, key: ConnectorKey) -> float:
        """The smallest non-zero setpoint on the resolution grid: the least a charging
        connector can be squeezed to without pausing it (one step if its minimum is 0)."""
        return max(self.ceil_res(self.topology.connector(key).min_current), self.res)

    def active(self, key: ConnectorKey) -> bool:
        return self.snapshot.demand(key).active

    def wants(self, key: ConnectorKey) -> bool:
        """Online, active, able to charge at all, and not under an unsavable group."""
        return (key in self.online and self.active(key) and key not in self.under_infeasible
                and self.start(key) <= self.top(key) + EPS)

    def priority(self, key: ConnectorKey) -> int:
        p = self.snapshot.demand(key).priority
        return p if p is not None else self.topology.chargers[key[0]].priority

    def arrival(self, key: ConnectorKey) -> datetime | None:
        return self.snapshot.demand(key).arrival

    # -- loads ----------------------------------------------------------------------------

    def drawn(self, setpoints: Mapping[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        return {k: (self.failsafe[k] if k in self.offline else setpoints.get(k, 0.0))
                for k in self.failsafe}

    def violations(self, setpoints: Mapping[ConnectorKey, float], *,
                   include_infeasible: bool = False) -> list[str]:
        """Group and charger limits broken by ``setpoints`` (infeasible groups skipped)."""
        drawn = self.drawn(setpoints)
        out = []
        for con in self.constraints:
            if not include_infeasible and any(con is lost for lost in self.lost):
                continue
            load = con.load(drawn)
            if load > con.capacity + EPS:
                out.append(f"{con.name}: {load:.6f} > {con.capacity:.6f}")
        return out

    def blocked(self, key: ConnectorKey, drawn: Mapping[ConnectorKey, float],
                need_a: float) -> Constraint | None:
        """A constraint over ``key`` without room for ``need_a`` more (in this connector's A);
        borderline float noise counts as blocked, in the engine's favour."""
        for con in self.of[key]:
            if con.headroom(drawn) < con.coef[key] * need_a + EPS:
                return con
        return None

    def tight(self, key: ConnectorKey, drawn: Mapping[ConnectorKey, float]) -> list[Constraint]:
        """Constraints over ``key`` that leave it less than one resolution step."""
        return [con for con in self.of[key]
                if con.headroom(drawn) < con.coef[key] * self.res + EPS]


def laxity_s(model: Model, key: ConnectorKey, now: datetime) -> float:
    """Seconds of slack before the car must charge flat out to meet its departure; inf when
    it has no deadline. Flat out = its top setpoint (A) on all its phases."""
    demand = model.snapshot.demand(key)
    if demand.departure is None or demand.energy_needed_kwh is None:
        return math.inf
    charger = model.topology.chargers[key[0]]
    rate_kw = model.top(key) * model.topology.power_kw_per_amp(charger)
    needed_s = math.inf if rate_kw <= 0 else demand.energy_needed_kwh / rate_kw * 3600.0
    return (demand.departure - now).total_seconds() - needed_s


# -- the invariants, each returning what is wrong (empty when it holds) --------------------


def on_grid(model: Model, amps: float) -> bool:
    steps = amps / model.res
    return abs(steps - round(steps)) * model.res < EPS


def safety_problems(model: Model, setpoints: Mapping[ConnectorKey, float],
                    alarm_groups: set[str]) -> list[str]:
    """Invariant 1: every savable limit holds; a limit that offline chargers alone break
    cannot be saved: every online connector that loads it pauses, and an alarm names the
    group. (A 1-phase charger on another phase of that group adds nothing to it.)"""
    out = model.violations(setpoints)
    for con in model.lost:
        running = [k for k in con.coef if k in model.online and setpoints.get(k, 0.0) != 0.0]
        if running:
            out.append(f"{con.name} is overloaded by offline chargers alone but online "
                       f"{sorted(running)} still get current")
    for gid in sorted(model.infeasible):
        if gid not in alarm_groups:
            out.append(f"group {gid} is overloaded by offline chargers alone; no alarm names it")
    return out


def bound_problems(model: Model, setpoints: Mapping[ConnectorKey, float]) -> list[str]:
    """Invariant 2: 0 or within [min, upper]; idle gets 0; on the resolution grid; offline
    connectors reported at their failsafe current."""
    out = []
    for key in sorted(model.failsafe):
        s = setpoints.get(key)
        if s is None:
            out.append(f"{key}: no setpoint")
            continue
        if key in model.offline:
            if abs(s - model.failsafe[key]) > EPS:
                out.append(f"{key}: offline, setpoint {s} != failsafe {model.failsafe[key]}")
            continue
        if not model.active(key) and s != 0.0:
            out.append(f"{key}: idle but setpoint {s}")
        if s != 0.0:
            low = model.topology.connector(key).min_current
            if not low - EPS <= s <= model.upper(key) + EPS:
                out.append(f"{key}: {s} outside [{low}, {model.upper(key)}]")
            if not on_grid(model, s):
                out.append(f"{key}: {s} not a multiple of {model.res}")
    return out


def conservation_problems(model: Model, setpoints: Mapping[ConnectorKey, float]) -> list[str]:
    """Invariant 3: nobody is held below its maximum while every limit above it has room
    for it: for its minimum if paused, for one more step if charging (in its own A, so
    in a kW row a 1-phase car's step costs a third of a 3-phase car's)."""
    drawn = model.drawn(setpoints)
    out = []
    for key in sorted(model.failsafe):
        if not model.wants(key):
            continue
        s = setpoints[key]
        if s >= model.top(key) - EPS:
            continue
        need = model.start(key) if s == 0.0 else model.res
        if model.blocked(key, drawn, need) is None:
            rooms = ", ".join(f"{c.name} {c.headroom(drawn) / c.coef[key]:.3f} A"
                              for c in model.of[key])
            out.append(f"{key}: at {s} A (top {model.top(key)}) could take {need} A more: "
                       f"{rooms}")
    return out


def utilisation(model: Model, setpoints: Mapping[ConnectorKey, float],
                con: Constraint) -> float:
    return con.load(model.drawn(setpoints)) / con.capacity if con.capacity > 0 else 1.0


def _fair_problems(model: Model, setpoints: Mapping[ConnectorKey, float],
                   weight: dict[ConnectorKey, float], label: str) -> list[str]:
    """Weighted max-min fairness on the setpoint grid: every connector x below its top has
    a bottleneck, a constraint full for x, in which no connector y (charging, above its own
    minimum) could give x one more step by dropping whole steps of its own and still stay
    at or above x's new level s/w. With equal coefficients that is "within one step"; in a
    kW row a 3-phase y must drop one step to free one for a 1-phase x, but a 1-phase y must
    drop three for a 3-phase x."""
    drawn = model.drawn(setpoints)
    res = model.res
    out = []
    for x in sorted(model.failsafe):
        sx = setpoints[x]
        if not model.wants(x) or sx == 0.0 or sx >= model.top(x) - EPS:
            continue
        best: tuple[str, float] | None = None
        ok = False
        for con in model.tight(x, drawn):
            short = con.coef[x] * res - con.headroom(drawn)
            worst = -math.inf
            who = ""
            for y in con.coef:
                if y == x or not model.wants(y):
                    continue
                sy = setpoints[y]
                if sy == 0.0 or sy <= model.start(y) + EPS:
                    continue
                drop = res * max(1, math.ceil(short / (con.coef[y] * res) - 1e-9))
                if sy - drop < model.start(y) - EPS:
                    continue  # y cannot free that much without pausing
                excess = (sy - drop) / weight[y] - (sx + res) / weight[x]
                if excess > worst:
                    worst, who = excess, f"{y} at {sy}"
            if worst < -1e-9:  # no y could swap a step to x and stay at or above it
                ok = True
                break
            if best is None or worst < best[1]:
                best = (f"{con.name}: {who}", worst)
        if not ok:
            where = best[0] if best else "no full constraint at all"
            out.append(f"{label}: {x} at {sx} (top {model.top(x)}) is below others sharing "
                       f"every bottleneck ({where})")
    return out


def equal_problems(model: Model, setpoints: Mapping[ConnectorKey, float]) -> list[str]:
    return _fair_problems(model, setpoints, dict.fromkeys(model.failsafe, 1.0), "equal")


def proportional_problems(model: Model,
                          setpoints: Mapping[ConnectorKey, float]) -> list[str]:
    weight = {k: max(model.top(k), model.res) for k in model.failsafe}
    return _fair_problems(model, setpoints, weight, "proportional")


def maximal_admission_problems(model: Model,
                               setpoints: Mapping[ConnectorKey, float]) -> list[str]:
    """A paused car would not fit even with every charging car squeezed to its minimum."""
    squeezed = {k: (model.start(k) if setpoints.get(k, 0.0) > 0 else 0.0)
                for k in model.online}
    drawn = model.drawn(squeezed)
    out = []
    for x in sorted(model.failsafe):
        if model.wants(x) and setpoints[x] == 0.0 \
                and model.blocked(x, drawn, model.start(x)) is None:
            out.append(f"{x} paused, yet fits at {model.start(x)} A with every charging "
                       f"connector at its minimum")
    return out


def _shares_group(model: Model, a: ConnectorKey, b: ConnectorKey) -> bool:
    return bool(set(model.topology.charger_groups(a[0]))
                & set(model.topology.charger_groups(b[0])))


def _could_take(model: Model, setpoints: Mapping[ConnectorKey, float], x: ConnectorKey,
                y: ConnectorKey) -> bool:
    """Whether x could rise (start, or one step) if y were paused."""
    without = dict(setpoints)
    without[y] = 0.0
    need = model.start(x) if setpoints[x] == 0.0 else model.res
    return model.blocked(x, model.drawn(without), need) is None


def priority_problems(model: Model, setpoints: Mapping[ConnectorKey, float]) -> list[str]:
    """A lower priority never draws current a higher one below its top could take."""
    out = []
    charging = [y for y in sorted(model.online) if setpoints.get(y, 0.0) > 0]
    for x in sorted(model.failsafe):
        if not model.wants(x) or setpoints[x] >= model.top(x) - EPS:
            continue
        for y in charging:
            if model.priority(y) < model.priority(x) and _shares_group(model, x, y) \
                    and _could_take(model, setpoints, x, y):
                out.append(f"{y} (priority {model.priority(y)}) at {setpoints[y]} A while "
                           f"{x} (priority {model.priority(x)}) at {setpoints[x]} A "
                           f"(top {model.top(x)}) could take it")
                break
    return out


def deadline_problems(model: Model, setpoints: Mapping[ConnectorKey, float]) -> list[str]:
    """A paused car never has less laxity than a charging one whose pause would make room."""
    now = model.snapshot.now
    out = []
    charging = [y for y in sorted(model.online) if setpoints.get(y, 0.0) > 0]
    for x in sorted(model.failsafe):
        if not model.wants(x) or setpoints[x] != 0.0:
            continue
        lx = laxity_s(model, x, now)
        for y in charging:
            ly = laxity_s(model, y, now)
            if ly > lx + 1.0 and _shares_group(model, x, y) \
                    and _could_take(model, setpoints, x, y):
                out.append(f"{x} (laxity {lx:.0f} s) paused while {y} (laxity {ly:.0f} s) "
                           f"charges at {setpoints[y]} A")
                break
    return out
