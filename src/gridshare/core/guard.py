"""The safety guard: an independent second opinion on every setpoint before it leaves the core.

Runtime assurance: the allocator may be clever, the guard must be obviously right. It adds
every connector's current into its charger and its innermost group, then every group into
its parent, phase by phase and in kW, with its own plain loops over the Topology, and
compares each sum with the limit in force (:func:`gridshare.core.limits.effective_limit`,
the one definition of a limit). It imports nothing from the allocator and shares no cached
arrays with it, so a bug there cannot hide here.

One rule for alarms, applied in one place (:func:`assess`): a limit exceeded while some
online connector loading it has a setpoint above 0 is a *violation* of the allocation (a
command can fix it); a limit exceeded only by what no command can change (offline chargers
at their failsafe current, uncontrolled load, every online connector under it at 0 on that
phase) is an *overload*, reported but not held against the allocation.

Entry points: :func:`check` (the violations, ``[]`` on a safe allocation), :func:`assess`
(violations and overloads), :func:`review` / :func:`enforce` (the one pass per cycle that
passes an allocation or substitutes failsafes), and :func:`check_plan` (one send step,
counted at its worst while in flight).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from gridshare.core.decision import Alarm, Allocation, GroupLoad, RotationState
from gridshare.core.limits import EffectiveLimit, effective_limit
from gridshare.core.snapshot import ConnectorDemand, GroupConditions, Snapshot
from gridshare.core.topology import ALL_PHASES, ConnectorKey, Phase, Topology

EPS = 1e-6
"""Float noise tolerated on a sum before it counts as above its limit (A or kW)."""

_CACHE_KEY = "guard.site"


class _Connector(NamedTuple):
    """One connector, flattened for the summing loop (a tuple unpacks fastest)."""

    key: ConnectorKey
    charger: int
    """Index into _Site.charger_ids."""
    group: int
    """Index of its innermost group into _Site.group_ids."""
    phases: tuple[int, ...]
    """The phases its current flows on: (p,) for 1-phase, (0, 1, 2) for 3-phase."""
    kw_per_amp: float
    upper: float
    """min(connector maximum, charger maximum): the most it may get before the EV's say."""
    min_current: float
    failsafe: float
    chain: frozenset[int]
    """Every group it counts against, its innermost group up to the root: who loads what."""


@dataclass(frozen=True, slots=True)
class _Site:
    """The guard's own view of a topology, built once by the guard's own code."""

    group_ids: tuple[str, ...]
    """Children before parents, so one pass in index order carries sums up the tree."""
    group_index: Mapping[str, int]
    parent: tuple[int, ...]
    """Per group: index of its parent, -1 for a root."""
    static_limits: tuple[EffectiveLimit, ...]
    """Per group: its limit with no live conditions (the static configuration)."""
    connectors: tuple[_Connector, ...]
    index: Mapping[ConnectorKey, int]
    charger_ids: tuple[str, ...]
    charger_max: tuple[float, ...]
    charger_group: tuple[int, ...]
    """Per charger: index of its innermost group, named in alarms about the charger."""


def _site(topology: Topology) -> _Site:
    cached = topology._cache.get(_CACHE_KEY)
    if isinstance(cached, _Site):
        return cached
    site = _build_site(topology)
    topology._cache[_CACHE_KEY] = site
    return site


def _build_site(topology: Topology) -> _Site:
    group_ids = tuple(sorted(topology.groups,
                             key=lambda gid: -len(topology.group_chain(gid))))
    position = {gid: i for i, gid in enumerate(group_ids)}
    parent = tuple(-1 if (up := topology.groups[gid].parent) is None else position[up]
                   for gid in group_ids)
    no_conditions = GroupConditions()
    static = tuple(effective_limit(topology.groups[gid], no_conditions, topology.voltage)
                   for gid in group_ids)
    connectors: list[_Connector] = []
    for ci, charger in enumerate(topology.chargers.values()):
        phases = tuple(p for p in range(3) if charger.phase_vector[p])
        chain = frozenset(position[g] for g in topology.charger_groups(charger.id))
        for conn in charger.connectors:
            connectors.append(_Connector(
                conn.key, ci, position[charger.group], phases,
                topology.power_kw_per_amp(charger), min(conn.max_current, charger.max_current),
                conn.min_current, charger.failsafe_current, chain))
    return _Site(
        group_ids=group_ids, group_index=position, parent=parent, static_limits=static,
        connectors=tuple(connectors), index={c.key: i for i, c in enumerate(connectors)},
        charger_ids=tuple(topology.chargers),
        charger_max=tuple(c.max_current for c in topology.chargers.values()),
        charger_group=tuple(position[c.group] for c in topology.chargers.values()))


def _limits(topology: Topology, site: _Site, snapshot: Snapshot) -> list[EffectiveLimit]:
    """Every group's limit in force: static, unless the snapshot has live conditions."""
    limits = list(site.static_limits)
    for gid, cond in snapshot.groups.items():
        group = site.group_index.get(gid)
        if group is not None:
            limits[group] = effective_limit(topology.groups[gid], cond, topology.voltage)
    return limits


# -- summing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Totals:
    """Sums per group (A per phase at ``3 * group + phase``, and kW) and per charger, and
    which of those rows a flagged connector loads (see :func:`_add_up`)."""

    amps: list[float]
    kw: list[float]
    charger_amps: list[float]
    flagged_amps: list[bool]
    flagged_kw: list[bool]
    flagged_charger: list[bool]


def _add_up(site: _Site, drawn: list[float], flagged: list[bool]) -> _Totals:
    """Add each connector's current into its charger and every group above it, and mark
    every row that a flagged connector loads (a connector a command can lower)."""
    n_groups = len(site.group_ids)
    amps = [0.0] * (3 * n_groups)
    kw = [0.0] * n_groups
    charger_amps = [0.0] * len(site.charger_ids)
    flagged_amps = [False] * (3 * n_groups)
    flagged_kw = [False] * n_groups
    flagged_charger = [False] * len(site.charger_ids)
    for conn, amps_drawn, flag in zip(site.connectors, drawn, flagged, strict=True):
        if amps_drawn == 0.0 and not flag:
            continue
        group = conn.group
        base = 3 * group
        charger_amps[conn.charger] += amps_drawn
        kw[group] += amps_drawn * conn.kw_per_amp
        for phase in conn.phases:
            amps[base + phase] += amps_drawn
        if flag:
            flagged_charger[conn.charger] = True
            flagged_kw[group] = True
            for phase in conn.phases:
                flagged_amps[base + phase] = True
    # Children come before parents: by the time a group is reached it holds its subtree.
    for group, up in enumerate(site.parent):
        if up < 0:
            continue
        kw[up] += kw[group]
        flagged_kw[up] = flagged_kw[up] or flagged_kw[group]
        for phase in range(3):
            amps[3 * up + phase] += amps[3 * group + phase]
            flagged_amps[3 * up + phase] = (flagged_amps[3 * up + phase]
                                            or flagged_amps[3 * group + phase])
    return _Totals(amps, kw, charger_amps, flagged_amps, flagged_kw, flagged_charger)


@dataclass(frozen=True, slots=True)
class _Breach:
    """A limit a sum exceeds; ``flagged`` when a flagged connector loads it."""

    group: int
    """Index of the group whose limit it is, or of the charger's innermost group."""
    phase: Phase | None
    """None for a kW limit or a charger's maximum."""
    charger: int | None
    """Index of the charger when the limit is its own maximum."""
    load: float
    limit: float
    flagged: bool

    def loaded_by(self, conn: _Connector) -> bool:
        """Whether current drawn by ``conn`` counts in this limit."""
        if self.charger is not None:
            return conn.charger == self.charger
        return self.group in conn.chain and (self.phase is None or self.phase in conn.phases)

    def alarm(self, site: _Site, why: str = "") -> Alarm:
        gid = site.group_ids[self.group]
        if self.charger is not None:
            text = (f"charger {site.charger_ids[self.charger]}: {self.load:.2f} A above its "
                    f"{self.limit:g} A")
        elif self.phase is not None:
            text = (f"group {gid} {self.phase.name}: {self.load:.2f} A above the "
                    f"{self.limit:.2f} A available")
        else:
            text = f"group {gid}: {self.load:.2f} kW above the {self.limit:.2f} kW available"
        return Alarm(gid, self.phase, self.load, self.limit, text + why)


def _breaches(site: _Site, limits: list[EffectiveLimit], totals: _Totals) -> list[_Breach]:
    """Every group phase, group kW and charger maximum the totals exceed."""
    out: list[_Breach] = []
    for group, limit in enumerate(limits):
        for phase in ALL_PHASES:
            load = totals.amps[3 * group + phase]
            if load > limit.available[phase] + EPS:
                out.append(_Breach(group, phase, None, load, limit.available[phase],
                                   totals.flagged_amps[3 * group + phase]))
        if totals.kw[group] > limit.available_power_kw + EPS:
            out.append(_Breach(group, None, None, totals.kw[group], limit.available_power_kw,
                               totals.flagged_kw[group]))
    for charger, load in enumerate(totals.charger_amps):
        if load > site.charger_max[charger] + EPS:
            out.append(_Breach(site.charger_group[charger], None, charger, load,
                               site.charger_max[charger], totals.flagged_charger[charger]))
    return out


def _loaders(connectors: Iterable[_Connector],
             breaches: list[_Breach]) -> list[list[_Connector]]:
    """For each breach, which of ``connectors`` load it: one pass over the connectors, a
    look-up per group above each (not a scan of every connector per breach)."""
    out: list[list[_Connector]] = [[] for _ in breaches]
    by_group: dict[int, list[int]] = {}
    by_charger: dict[int, list[int]] = {}
    for i, breach in enumerate(breaches):
        if breach.charger is None:
            by_group.setdefault(breach.group, []).append(i)
        else:
            by_charger.setdefault(breach.charger, []).append(i)
    for conn in connectors:
        for i in by_charger.get(conn.charger, ()):
            out[i].append(conn)
        for group in conn.chain:
            for i in by_group.get(group, ()):
                if breaches[i].loaded_by(conn):
                    out[i].append(conn)
    return out


def _top(conn: _Connector, demand: ConnectorDemand | None) -> float:
    """The most this connector may get now: its own and its charger's maximum, and the EV's."""
    if demand is None or demand.max_current is None:
        return conn.upper
    return min(conn.upper, demand.max_current)


def _within_bounds(conn: _Connector, amps: float, top: float) -> bool:
    """0, or within [min, top]; NaN and infinities are never within."""
    return amps == 0.0 or conn.min_current - EPS <= amps <= top + EPS


def _bound_alarm(site: _Site, conn: _Connector, amps: float, top: float, what: str) -> Alarm:
    return Alarm(site.group_ids[site.charger_group[conn.charger]], None, amps, top,
                 f"{conn.key[0]}/{conn.key[1]}: {what} {amps:.2f} A outside 0 or "
                 f"[{conn.min_current:g}, {top:g}] A")


def _summable(amps: float) -> float:
    """A value that cannot be trusted (NaN, ±inf) counts as unlimited: fail closed."""
    return amps if math.isfinite(amps) else math.inf


# -- the check of an allocation --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """One guard pass over a set of setpoints."""

    violations: tuple[Alarm, ...]
    """Setpoints outside a connector's bounds, and broken limits a command can fix."""
    overloads: tuple[Alarm, ...]
    """Limits broken only by what no command can change; every online connector under
    them is at 0 on that phase, so they are reported, not held against the allocation."""

    @property
    def passed(self) -> bool:
        return not self.violations


@dataclass(frozen=True, slots=True)
class _Judgement:
    """What one pass found, by index, for :func:`assess` to name and the fallback to use."""

    out_of_bounds: list[tuple[int, float, float]]
    """(connector index, its setpoint, the most it may get)."""
    breaches: list[_Breach]
    """``flagged`` when some online connector loading the limit has a setpoint above 0."""
    totals: _Totals
    limits: list[EffectiveLimit]


def _judge(topology: Topology, snapshot: Snapshot,
           setpoints: Mapping[ConnectorKey, float]) -> _Judgement:
    """The one pass: bounds of every online connector, then every sum against its limit,
    with offline connectors drawing their failsafe current whatever their setpoint says."""
    site = _site(topology)
    demands = snapshot.connectors
    out_of_bounds: list[tuple[int, float, float]] = []
    drawn: list[float] = []
    lowerable: list[bool] = []
    for i, conn in enumerate(site.connectors):
        demand = demands.get(conn.key)
        if demand is not None and not demand.online:
            drawn.append(conn.failsafe)
            lowerable.append(False)
            continue
        amps = setpoints.get(conn.key, 0.0)
        if amps == 0.0:
            drawn.append(0.0)
            lowerable.append(False)
            continue
        top = _top(conn, demand)
        if not _within_bounds(conn, amps, top):
            out_of_bounds.append((i, amps, top))
            amps = _summable(amps)
        drawn.append(amps)
        lowerable.append(amps > 0.0)
    totals = _add_up(site, drawn, lowerable)
    limits = _limits(topology, site, snapshot)
    return _Judgement(out_of_bounds, _breaches(site, limits, totals), totals, limits)


def _verdict(site: _Site, found: _Judgement) -> Verdict:
    """The one rule for alarms: a breach is a violation when some online connector loading
    it has a setpoint above 0, an overload otherwise; a connector out of bounds always is."""
    violations = [_bound_alarm(site, site.connectors[i], amps, top, "setpoint")
                  for i, amps, top in found.out_of_bounds]
    overloads: list[Alarm] = []
    for breach in found.breaches:
        if breach.flagged:
            violations.append(breach.alarm(site))
        else:
            overloads.append(breach.alarm(
                site, "; drawn by what no command can change (offline chargers at their "
                      "failsafe current, uncontrolled load): every online connector under "
                      "it is at 0 A"))
    return Verdict(tuple(violations), tuple(overloads))


def assess(topology: Topology, snapshot: Snapshot,
           setpoints: Mapping[ConnectorKey, float]) -> Verdict:
    """Check ``setpoints`` against every limit: each online connector's bounds (0 or
    [min, max], at most the EV's maximum), each charger's maximum, and each group's A per
    phase and kW in force, offline connectors counted at their failsafe current. A missing
    setpoint is 0 A."""
    return _verdict(_site(topology), _judge(topology, snapshot, setpoints))


def check(topology: Topology, snapshot: Snapshot,
          setpoints: Mapping[ConnectorKey, float]) -> list[Alarm]:
    """The violations :func:`assess` finds: empty exactly when the setpoints are safe, also
    when offline chargers alone overload a limit that every online connector under it has
    given up."""
    return list(assess(topology, snapshot, setpoints).violations)


def _group_loads(topology: Topology, snapshot: Snapshot,
                 found: _Judgement) -> dict[str, GroupLoad]:
    site = _site(topology)
    amps, kw = found.totals.amps, found.totals.kw
    out: dict[str, GroupLoad] = {}
    for group, gid in enumerate(site.group_ids):
        limit = found.limits[group]
        base = 3 * group
        out[gid] = GroupLoad(gid, (amps[base], amps[base + 1], amps[base + 2]),
                             snapshot.conditions(gid).uncontrolled, limit.current,
                             limit.available, kw[group], limit.power_kw)
    return out


def group_loads(topology: Topology, snapshot: Snapshot,
                setpoints: Mapping[ConnectorKey, float]) -> dict[str, GroupLoad]:
    """Per-phase and kW load of every group as the guard sums it (offline at failsafe)."""
    return _group_loads(topology, snapshot, _judge(topology, snapshot, setpoints))


# -- the fallback ----------------------------------------------------------------------------


def failsafe_setpoints(topology: Topology, snapshot: Snapshot) -> dict[ConnectorKey, float]:
    """A safe substitute for setpoints the guard rejected, decided without the allocator:
    online active connectors at their failsafe current (what they would draw if we were
    gone), idle ones at 0, offline ones at their failsafe current (they draw it anyway);
    then 0 A for every online connector whose failsafe current is outside its bounds or
    that loads a limit those failsafes break."""
    site = _site(topology)
    setpoints: dict[ConnectorKey, float] = {}
    online: list[bool] = []
    for conn in site.connectors:
        demand = snapshot.connectors.get(conn.key)
        is_online = demand is None or demand.online
        online.append(is_online)
        charging = demand is not None and (demand.active or not is_online)
        setpoints[conn.key] = conn.failsafe if charging else 0.0
    found = _judge(topology, snapshot, setpoints)
    broken = [breach for breach in found.breaches if breach.flagged]
    for i, _, _ in found.out_of_bounds:
        setpoints[site.connectors[i].key] = 0.0
    online_connectors = (c for c, is_online in zip(site.connectors, online, strict=True)
                         if is_online)
    for under in _loaders(online_connectors, broken):
        for conn in under:
            setpoints[conn.key] = 0.0
    return setpoints


@dataclass(frozen=True, slots=True)
class Review:
    """The outcome of the one guard pass of a cycle."""

    allocation: Allocation
    """The allocation itself when it passed, else the safe substitute (``guarded``)."""
    violations: tuple[Alarm, ...]
    """What the policy's answer broke; empty when it passed."""
    overloads: tuple[Alarm, ...]
    """Limits broken by what no command can change, under the allocation returned."""


def review(topology: Topology, snapshot: Snapshot, allocation: Allocation) -> Review:
    """One guard pass: ``allocation`` itself when it passes; otherwise a safe substitute
    (:func:`failsafe_setpoints`), marked ``guarded``, with the rotation state reset, its
    own group loads, and an alarm for every violation naming group, phase, load and limit.
    Overloads are reported for the allocation returned, for the caller to raise."""
    site = _site(topology)
    verdict = _verdict(site, _judge(topology, snapshot, allocation.setpoints))
    if verdict.passed:
        return Review(allocation, (), verdict.overloads)
    substitute = failsafe_setpoints(topology, snapshot)
    found = _judge(topology, snapshot, substitute)
    offline = frozenset(conn.key for conn in site.connectors
                        if not snapshot.demand(conn.key).online)
    guarded = Allocation(
        setpoints=substitute,
        offline=offline,
        groups=_group_loads(topology, snapshot, found),
        rotation=RotationState(),
        alarms=allocation.alarms + verdict.violations,
        guarded=True,
    )
    return Review(guarded, verdict.violations, _verdict(site, found).overloads)


def enforce(topology: Topology, snapshot: Snapshot, allocation: Allocation) -> Allocation:
    """:func:`review`'s allocation: ``allocation`` itself when it passes the guard, else
    the safe substitute."""
    return review(topology, snapshot, allocation).allocation


# -- the check of one send step ---------------------------------------------------------------


def check_plan(topology: Topology, snapshot: Snapshot, counted: Mapping[ConnectorKey, float],
               sends: Mapping[ConnectorKey, float]) -> list[Alarm]:
    """Whether one send step is safe at every moment while it is in flight; empty if so.

    ``counted`` is what each connector may be drawing right now in the worst case (A per
    phase, every connector, offline ones at what they are counted at; a connector missing
    from it is taken at its failsafe current when offline in ``snapshot``, else at 0 A).
    ``sends`` are the values about to be sent in this step. Any subset of the step's
    commands may have been applied at any moment, so each connector is counted at
    max(counted, send). The step is refused (alarms returned) when that worst-case sum
    exceeds a group's A on some phase or its kW in force (limit minus the snapshot's
    uncontrolled load), or a charger's maximum, *and* the step raises some connector under
    that limit: a step that raises nothing is always allowed, since it can only help. It
    is also refused for any send outside its connector's bounds (negative, NaN, between 0
    and the minimum, above the connector's, charger's or EV's maximum) or to a connector
    the site does not have.
    """
    site = _site(topology)
    alarms = [Alarm("", None, amps, 0.0,
                    f"{key[0]}/{key[1]}: send {amps} A to a connector the site does not have")
              for key, amps in sends.items() if key not in site.index]
    demands = snapshot.connectors
    worst: list[float] = []
    raised: list[bool] = []
    for conn in site.connectors:
        now = counted.get(conn.key)
        send = sends.get(conn.key)
        if now is None:
            demand = demands.get(conn.key)
            now = conn.failsafe if demand is not None and not demand.online else 0.0
        now = _summable(now)
        if send is None:
            worst.append(now)
            raised.append(False)
            continue
        top = _top(conn, demands.get(conn.key))
        if not _within_bounds(conn, send, top):
            alarms.append(_bound_alarm(site, conn, send, top, "send"))
        send = _summable(send)
        worst.append(max(now, send))
        raised.append(send > now + EPS)
    if not any(raised):
        return alarms
    totals = _add_up(site, worst, raised)
    raised_connectors = (c for c, up in zip(site.connectors, raised, strict=True) if up)
    refused = [b for b in _breaches(site, _limits(topology, site, snapshot), totals)
               if b.flagged]
    for breach, under in zip(refused, _loaders(raised_connectors, refused), strict=True):
        shown = ", ".join(f"{c.key[0]}/{c.key[1]}" for c in under[:5])
        more = f" and {len(under) - 5} more" if len(under) > 5 else ""
        alarms.append(breach.alarm(site, " if every command in flight and in this step took "
                                         f"effect; the step raises {shown}{more} under it"))
    return alarms


# -- V2X: discharge setpoints ------------------------------------------------------------------


def check_v2x(topology: Topology, snapshot: Snapshot, counted: Mapping[ConnectorKey, float],
              v2x_w: Mapping[ConnectorKey, float], *,
              in_force_w: Mapping[ConnectorKey, float] | None = None) -> list[Alarm]:
    """Whether V2X setpoints (W, + = charge, − = discharge) are safe in both directions;
    empty if so.

    A discharging car pushes current *back* through its circuit: it frees capacity for the
    loads beside it, but never more than the circuit can carry the other way. So:

    * **reverse**: on every group phase and kW, and every charger, the discharges under it
      (|W| → A per phase at the charger's phases) must stay within the limit in force
      (:func:`effective_limit` ``current`` / ``power_kw``: the conductors' rating, not what
      is left after uncontrolled load). Counted at their worst: every other load at 0 (a
      charging car may stop, a machine may switch off at any moment), so nothing else is
      credited against the reverse flow.
    * **forward**: a V2X charge setpoint is checked as a send by :func:`check_plan`, each
      connector at max(``counted``, its charge in A); a discharge is never credited against
      forward load here (the car may stop discharging at any moment, and after the
      profile's validTo the connector returns to its counted current) — the capacity it
      frees reaches the allocator through the meters, fail closed.
    * a discharge to a charger not declared ``v2x`` is refused, as is any non-finite value
      or a key the site does not have.

    ``in_force_w``: V2X setpoints that may still be in force (accepted and not past their
    validTo, or sent and unanswered: an unknown outcome). Like a current setpoint in
    flight, each counts at the larger of old and new in each direction until its validTo:
    the reverse sum takes max(|old discharge|, |new discharge|), the forward check
    max(old charge, new charge); a connector with an old value and no new one keeps it.
    """
    if in_force_w:
        # Two passes, each connector at its worst in one direction: the larger charge
        # (forward), the larger discharge (reverse); each pass checks both directions,
        # the other direction's values there being the milder of the two.
        charge_side: dict[ConnectorKey, float] = dict(in_force_w)
        discharge_side: dict[ConnectorKey, float] = dict(in_force_w)
        for key, new in v2x_w.items():
            old = in_force_w.get(key)
            if old is None or not math.isfinite(new):
                charge_side[key] = discharge_side[key] = new
            elif not math.isfinite(old):  # an unreadable old value stays: refused
                continue
            else:
                charge_side[key], discharge_side[key] = max(old, new), min(old, new)
        found = check_v2x(topology, snapshot, counted, charge_side)
        seen = {a.message for a in found}
        found.extend(a for a in check_v2x(topology, snapshot, counted, discharge_side)
                     if a.message not in seen)
        return found
    site = _site(topology)
    alarms: list[Alarm] = []
    reverse = [0.0] * len(site.connectors)
    charge_a: dict[ConnectorKey, float] = {}
    chargers = list(topology.chargers.values())
    for key, watts in v2x_w.items():
        index = site.index.get(key)
        if index is None:
            alarms.append(Alarm("", None, watts, 0.0, f"{key[0]}/{key[1]}: V2X setpoint "
                                f"{watts} W to a connector the site does not have"))
            continue
        conn = site.connectors[index]
        gid = site.group_ids[conn.group]
        if not math.isfinite(watts):
            alarms.append(Alarm(gid, None, watts, 0.0,
                                f"{key[0]}/{key[1]}: V2X setpoint {watts} W is not a number"))
            continue
        amps = abs(watts) / 1000.0 / conn.kw_per_amp
        if watts < 0:
            if not chargers[conn.charger].v2x:
                alarms.append(Alarm(gid, None, watts, 0.0,
                                    f"{key[0]}/{key[1]}: discharge {watts:.0f} W to a charger "
                                    "not declared v2x"))
                continue
            reverse[index] = amps
        elif watts > 0:
            charge_a[key] = amps
    if charge_a:
        alarms.extend(check_plan(topology, snapshot, counted, charge_a))
    if any(reverse):
        flagged = [amps > 0 for amps in reverse]
        totals = _add_up(site, reverse, flagged)
        limits = _limits(topology, site, snapshot)
        for group, limit in enumerate(limits):
            gid = site.group_ids[group]
            for phase in ALL_PHASES:
                load = totals.amps[3 * group + phase]
                if load > limit.current + EPS:
                    alarms.append(Alarm(gid, phase, load, limit.current,
                                        f"group {gid} {phase.name}: {load:.2f} A discharged "
                                        f"back through it, above its {limit.current:.2f} A"))
            if totals.kw[group] > limit.power_kw + EPS:
                alarms.append(Alarm(gid, None, totals.kw[group], limit.power_kw,
                                    f"group {gid}: {totals.kw[group]:.2f} kW discharged back "
                                    f"through it, above its {limit.power_kw:.2f} kW"))
        for charger, load in enumerate(totals.charger_amps):
            if load > site.charger_max[charger] + EPS:
                gid = site.group_ids[site.charger_group[charger]]
                alarms.append(Alarm(gid, None, load, site.charger_max[charger],
                                    f"charger {site.charger_ids[charger]}: discharging "
                                    f"{load:.2f} A, above its {site.charger_max[charger]:g} A"))
    return alarms
