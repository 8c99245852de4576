"""Hypothesis strategies for sites and demand snapshots, built from the core dataclasses.

Trees are 1-4 levels deep with 1-2 roots, 1-40 chargers (1-phase on L1/L2/L3 and 3-phase,
some with two connectors), limits in A and/or kW (a child may be above its parent), and
snapshots with uncontrolled loads, extra limit sources, stale meters, offline chargers, EV
maxima, priorities, arrivals, departures and energy needs. Every A figure of a connector is
a multiple of the topology's resolution so that a valid setpoint always exists between its
minimum and maximum; group limits and loads are arbitrary.

Chargers are drawn as one list of (charger, its demand) drafts so that hypothesis shrinks a
failure by deleting whole chargers: reproducers come out small.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gridshare.core.snapshot import (
    ConnectorDemand,
    GroupConditions,
    GroupLimit,
    LimitSource,
    Snapshot,
)
from gridshare.core.topology import (
    Charger,
    Connector,
    ConnectorKey,
    Group,
    Phase,
    Policy,
    Topology,
)

BASE_TIME = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
POLICIES: tuple[Policy, ...] = tuple(Policy)

EXAMPLES_FACTOR = int(os.environ.get("GRIDSHARE_EXAMPLES_FACTOR", "1"))
"""``scripts/test --deep`` multiplies every property test's example budget by this."""


def examples(n: int) -> int:
    """A test's example budget: ``n`` on ordinary runs, more on deep ones."""
    return n * EXAMPLES_FACTOR


CORE_SETTINGS = settings(
    deadline=None,
    max_examples=examples(50),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
"""Shared by every property test in tests/core: no deadline (the engine may be slow on the
first call), a modest example count so the whole directory stays under 90 s."""


@functools.cache
def tenths(low: float, high: float) -> st.SearchStrategy[float]:
    """A float with one decimal in [low, high]: shrinks to round numbers."""
    return st.integers(round(low * 10), round(high * 10)).map(lambda n: n / 10)


@dataclass(frozen=True)
class Case:
    topology: Topology
    snapshot: Snapshot


@dataclass(frozen=True)
class Options:
    """What a drawn snapshot may contain."""

    p_active: float | None = None
    """Share of connectors with a car that wants power; None draws 30-100 %."""
    allow_offline: bool = True
    p_offline: float = 0.1
    """Chance that a charger cannot hear us (when offline chargers are allowed)."""
    allow_conditions: bool = True
    allow_stale: bool = True
    ev_limits: bool = True
    deadlines: bool = True
    uniform_priority: bool = False
    """Every car gets session priority 1: one priority class."""


_TENTH = st.integers(0, 9)


# -- drafts: a charger or a charger's demand before ids and times are known ------------------


@dataclass(frozen=True)
class ChargerDraft:
    group_index: int
    phases: int
    phase: Phase | None
    max_current: float
    connectors: tuple[tuple[float, float], ...]
    """(max, min) per connector."""
    failsafe: float
    priority: int


@dataclass(frozen=True)
class SessionDraft:
    state: str
    """"absent", "idle" or "active"."""
    ev_max: float | None
    priority: int | None
    arrival_s: int | None
    energy_kwh: float | None
    departure_s: int | None


@dataclass(frozen=True)
class DemandDraft:
    online: bool
    sessions: tuple[SessionDraft, SessionDraft]
    """Enough for two connectors; a 1-connector charger uses the first."""


def _templates(small_mins: bool) -> list[tuple[int, float, tuple[tuple[float, float], ...],
                                                 float]]:
    """(phases, charger max, ((connector max, min), ...), failsafe) combinations; drawing
    one of these is a single choice, which keeps generation fast and shrinking simple."""
    mins = [0.0, 0.2, 0.4] if small_mins else [6.0, 0.0, 1.0, 10.0]
    out = []
    for phases in (3, 1):
        for top in (16.0, 32.0, 6.0, 63.0):
            layouts: list[tuple[tuple[float, float], ...]] = [
                ((top, lo),) for lo in mins if lo <= top]
            layouts.append(((top, mins[0]), (top, mins[0])))
            layouts.append(((min(top, 16.0), mins[0]), (top, mins[-1] if mins[-1] <= top
                                                          else mins[0])))
            for conns in layouts:
                for failsafe in (0.0, 6.0):
                    cap = min(*(c[0] for c in conns), top / len(conns))
                    out.append((phases, top, conns, min(failsafe, cap)))
    return out


@functools.cache
def _template_choice(small_mins: bool, phases: int | None,
                     positive_mins: bool = False) -> st.SearchStrategy[
        tuple[int, float, tuple[tuple[float, float], ...], float]]:
    return st.sampled_from([t for t in _templates(small_mins)
                            if (phases is None or t[0] == phases)
                            and not (positive_mins and min(c[1] for c in t[2]) <= 0)])


_PHASE = st.sampled_from(list(Phase))
_GROUP_INDEX = st.integers(0, 15)
_PRIORITY = st.integers(0, 3)


@st.composite
def charger_drafts(draw: st.DrawFn, *, phases: int | None = None,
                   small_mins: bool = False, resolution: float = 0.1,
                   positive_mins: bool = False) -> ChargerDraft:
    n_phases, top, conns, failsafe = draw(_template_choice(small_mins, phases,
                                                           positive_mins))
    conns = tuple((mx, round(round(mn / resolution) * resolution, 6)) for mx, mn in conns)
    phase = None if n_phases == 3 else draw(_PHASE)
    return ChargerDraft(draw(_GROUP_INDEX), n_phases, phase, top, conns, failsafe,
                        draw(_PRIORITY))


_EV_MAX = [None, None, None, 16.0, 0.0, 5.0, 13.3, 20.5, 32.0]
_DEADLINES: list[tuple[float | None, int | None]] = [
    (None, None), (20.0, 4 * 3600), (60.0, 3 * 3600), (5.0, 8 * 3600), (0.0, 3600),
    (40.0, -600), (80.0, 12 * 3600), (12.3, 2 * 3600)]


def _sessions(options: Options) -> list[SessionDraft]:
    """Every active session the options allow, simplest first (one draw picks one)."""
    evs = _EV_MAX if options.ev_limits else [None]
    prios: list[int | None] = [1] if options.uniform_priority else [None, 0, 1, 2, 5]
    deadlines = _DEADLINES if options.deadlines else [(None, None)]
    return [SessionDraft("active", ev, prio, arrival, energy, departure)
            for energy, departure in deadlines
            for ev in evs
            for prio in prios
            for arrival in (None, 0, 60, 3600, 600, 36_000)]


@functools.cache
def _session_choice(options: Options) -> st.SearchStrategy[SessionDraft]:
    """Built once: hypothesis hashes a sampled_from's elements every time one is made."""
    return st.sampled_from(_sessions(options))


_IDLE = st.sampled_from(["absent", "idle"])
_PERCENT = st.integers(0, 99)


@st.composite
def session_drafts(draw: st.DrawFn, options: Options) -> SessionDraft:
    pct = round(options.p_active * 100) if options.p_active is not None else 70
    if draw(_PERCENT) >= pct:
        return SessionDraft(draw(_IDLE), None, None, None, None, None)
    return draw(_session_choice(options))


@st.composite
def demand_drafts(draw: st.DrawFn, options: Options, connectors: int = 2) -> DemandDraft:
    online = not options.allow_offline or draw(_PERCENT) >= round(options.p_offline * 100)
    first = draw(session_drafts(options))
    second = draw(session_drafts(options)) if connectors > 1 else first
    return DemandDraft(online, (first, second))


def demands_of(charger: Charger, draft: DemandDraft, now: datetime) -> list[ConnectorDemand]:
    out = []
    for conn, s in zip(charger.connectors, draft.sessions, strict=False):
        if s.state == "absent" and draft.online:
            continue  # absent: idle and online
        active = s.state == "active"
        out.append(ConnectorDemand(
            charger=charger.id, connector=conn.number, active=active,
            max_current=s.ev_max, priority=s.priority,
            arrival=None if s.arrival_s is None else now - timedelta(seconds=s.arrival_s),
            online=draft.online, energy_needed_kwh=s.energy_kwh,
            departure=None if s.departure_s is None else now + timedelta(seconds=s.departure_s),
        ))
    return out


# -- topologies ------------------------------------------------------------------------------


def _group_tree(depth: int, n_roots: int, extra_parents: list[int]) -> dict[str, str | None]:
    """Group id -> parent id. One chain reaches ``depth``; every extra group hangs under an
    earlier group (by index, wrapped) that is still above the deepest level."""
    parents: dict[str, str | None] = {f"g{i}": None for i in range(n_roots)}
    level = dict.fromkeys(parents, 1)
    prev = "g0"
    for d in range(2, depth + 1):
        gid = f"g{len(parents)}"
        parents[gid], level[gid], prev = prev, d, gid
    for pick in extra_parents:
        candidates = [g for g in parents if level[g] < depth]
        if not candidates:
            break
        parent = candidates[pick % len(candidates)]
        gid = f"g{len(parents)}"
        parents[gid], level[gid] = parent, level[parent] + 1
    return parents


def build_topology(
    parents: dict[str, str | None],
    drafts: list[ChargerDraft],
    limits: dict[str, tuple[float | None, float | None]],
    policies: dict[str, Policy],
    *,
    site_policy: Policy,
    voltage: float = 230.0,
    rotation_interval_s: float = 900.0,
    resolution_a: float = 0.1,
) -> Topology:
    """A consistent Topology: charger i is ``cp{i}`` in group ``group_index`` (wrapped)."""
    group_ids = list(parents)
    chargers: dict[str, Charger] = {}
    members: dict[str, list[str]] = {g: [] for g in group_ids}
    for i, d in enumerate(drafts):
        cid = f"cp{i}"
        gid = group_ids[d.group_index % len(group_ids)]
        conns = tuple(Connector(cid, n, mx, mn) for n, (mx, mn) in enumerate(d.connectors, 1))
        chargers[cid] = Charger(
            id=cid, phases=d.phases, phase=d.phase, max_current=d.max_current,
            min_current=min(c.min_current for c in conns), failsafe_current=d.failsafe,
            priority=d.priority, connectors=conns, group=gid)
        members[gid].append(cid)
    groups = {
        gid: Group(id=gid, max_current=limits[gid][0], max_power_kw=limits[gid][1], phases=3,
                   policy=policies[gid], parent=parents[gid],
                   groups=tuple(g for g in group_ids if parents[g] == gid),
                   chargers=tuple(members[gid]))
        for gid in group_ids
    }
    return Topology(site="site", voltage=voltage, policy=site_policy, groups=groups,
                    chargers=chargers, roots=tuple(g for g in group_ids if parents[g] is None),
                    rotation_interval_s=rotation_interval_s, resolution_a=resolution_a)


_LIMIT_KIND = st.sampled_from(["A", "A", "kW", "both"])
_THIRD = st.integers(0, 2)
_SOURCE = st.sampled_from([LimitSource.METER, LimitSource.DEMAND_RESPONSE,
                           LimitSource.OPERATOR])
_EXTRA_A = st.none() | tenths(0, 200)
_EXTRA_KW = st.none() | tenths(0, 120)


@st.composite
def group_limits(draw: st.DrawFn, scale: float = 1.0) -> tuple[float | None, float | None]:
    kind = draw(_LIMIT_KIND)
    max_a = draw(tenths(0, 250 * scale)) if kind in ("A", "both") else None
    max_kw = draw(tenths(0, 150 * scale)) if kind in ("kW", "both") else None
    return max_a, max_kw


@st.composite
def _site(draw: st.DrawFn, *, min_chargers: int, max_chargers: int, max_depth: int,
          policy: Policy | None, mixed_policies: bool, phases: int | None,
          small_mins: bool, resolution_a: float | None,
          options: Options | None, limit_scale: float = 1.0,
          positive_mins: bool = False) -> tuple[Topology, list[DemandDraft]]:
    resolution = resolution_a if resolution_a is not None else draw(
        st.sampled_from([0.1, 0.1, 0.1, 1.0]))
    site_policy = policy if policy is not None else draw(st.sampled_from(POLICIES))
    parents = _group_tree(draw(st.integers(1, max_depth)), draw(st.integers(1, 2)),
                          draw(st.lists(st.integers(0, 20), max_size=7)))
    @st.composite
    def element(draw: st.DrawFn) -> tuple[ChargerDraft, DemandDraft | None]:
        charger = draw(charger_drafts(phases=phases, small_mins=small_mins,
                                      resolution=resolution, positive_mins=positive_mins))
        if options is None:
            return charger, None
        return charger, draw(demand_drafts(options, len(charger.connectors)))

    pairs = draw(st.lists(element(), min_size=min_chargers, max_size=max_chargers))
    limits = {gid: draw(group_limits(limit_scale)) for gid in parents}
    policies = {gid: (policy if policy is not None
                      else draw(st.sampled_from(POLICIES)) if mixed_policies else site_policy)
                for gid in parents}
    topology = build_topology(
        parents, [c for c, _ in pairs], limits, policies, site_policy=site_policy,
        voltage=draw(st.sampled_from([230.0, 230.0, 120.0])),
        rotation_interval_s=float(draw(st.sampled_from([900, 900, 300, 60]))),
        resolution_a=resolution)
    return topology, [d for _, d in pairs if d is not None]


def topologies(*, min_chargers: int = 1, max_chargers: int = 40, max_depth: int = 4,
               policy: Policy | None = None, mixed_policies: bool = True,
               phases: int | None = None, small_mins: bool = False,
               resolution_a: float | None = None) -> st.SearchStrategy[Topology]:
    """A random consistent site. ``policy`` fixes every group's policy; otherwise groups
    draw their own (when ``mixed_policies``) or share the site's."""
    return _site(min_chargers=min_chargers, max_chargers=max_chargers, max_depth=max_depth,
                 policy=policy, mixed_policies=mixed_policies,
                 phases=phases, small_mins=small_mins,
                 resolution_a=resolution_a, options=None).map(lambda pair: pair[0])


# -- snapshots -------------------------------------------------------------------------------


@st.composite
def conditions(draw: st.DrawFn, topology: Topology,
               options: Options) -> dict[str, GroupConditions]:
    out: dict[str, GroupConditions] = {}
    if not options.allow_conditions:
        return out
    for gid in topology.groups:
        if draw(_THIRD) != 0:
            continue
        unc = (draw(tenths(0, 40)), draw(tenths(0, 40)), draw(tenths(0, 40)))
        limits = tuple(
            GroupLimit(
                source=draw(_SOURCE),
                max_current=draw(_EXTRA_A),
                max_power_kw=draw(_EXTRA_KW),
            )
            for _ in range(draw(_THIRD))
        )
        stale = options.allow_stale and draw(_TENTH) == 0
        out[gid] = GroupConditions(uncontrolled=unc, limits=limits, meter_stale=stale)
    return out


def _snapshot(topology: Topology, drafts: list[DemandDraft], now: datetime,
              groups: dict[str, GroupConditions]) -> Snapshot:
    connectors: dict[ConnectorKey, ConnectorDemand] = {}
    for charger, draft in zip(topology.chargers.values(), drafts, strict=True):
        for demand in demands_of(charger, draft, now):
            connectors[demand.key] = demand
    return Snapshot(now=now, connectors=connectors, groups=groups)


@st.composite
def snapshots(draw: st.DrawFn, topology: Topology, options: Options = Options()) -> Snapshot:
    """Random demand and conditions for a given ``topology``. Online-ness is per charger
    (a charger either hears us or not); absent connectors are idle and online."""
    now = BASE_TIME + timedelta(seconds=draw(st.integers(0, 86_400)))
    drafts = [draw(demand_drafts(options, len(c.connectors)))
              for c in topology.chargers.values()]
    return _snapshot(topology, drafts, now, draw(conditions(topology, options)))


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    policy: Policy | None = None,
    mixed_policies: bool = True,
    min_chargers: int = 1,
    max_chargers: int = 40,
    options: Options = Options(),
    limit_scale: float = 1.0,
    positive_mins: bool = False,
) -> Case:
    """A site with its demand. ``limit_scale`` < 1 draws tighter group limits: more
    contention, more pauses; ``positive_mins`` leaves out connectors with a 0 A minimum."""
    topology, drafts = draw(_site(
        min_chargers=min_chargers, max_chargers=max_chargers, max_depth=4, policy=policy,
        mixed_policies=mixed_policies, phases=None, small_mins=False,
        resolution_a=None, options=options, limit_scale=limit_scale,
        positive_mins=positive_mins))
    now = BASE_TIME + timedelta(seconds=draw(st.integers(0, 86_400)))
    return Case(topology, _snapshot(topology, drafts, now,
                                    draw(conditions(topology, options))))


def describe(case: Case) -> str:
    """A compact, copy-pasteable picture of a case for failure notes and reports."""
    t, s = case.topology, case.snapshot
    lines = [f"voltage={t.voltage} resolution={t.resolution_a} interval={t.rotation_interval_s}"
             f" site_policy={t.policy.value} roots={t.roots} now={s.now.isoformat()}"]
    for g in t.groups.values():
        cond = s.groups.get(g.id)
        lines.append(f"  group {g.id} parent={g.parent} A={g.max_current} kW={g.max_power_kw} "
                     f"policy={g.policy.value} chargers={list(g.chargers)}"
                     + (f" cond={cond}" if cond else ""))
    for c in t.chargers.values():
        conns = [(k.number, k.max_current, k.min_current) for k in c.connectors]
        lines.append(f"  charger {c.id} in {c.group}: phases={c.phases} "
                     f"phase={c.phase.name if c.phase is not None else '-'} max={c.max_current} "
                     f"failsafe={c.failsafe_current} prio={c.priority} conns={conns}")
    for d in s.connectors.values():
        lines.append(f"  demand {d}")
    return "\n".join(lines)
