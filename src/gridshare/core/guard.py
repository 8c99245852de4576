"""The safety guard: the last check before any setpoint leaves the core.

Deliberately naive: it adds every connector's current into every group above it, phase
by phase, and compares each sum with the limit in force. It shares no code with the
policies beyond the definition of a limit and the array form of the topology, so a bug in
a clever policy cannot hide here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gridshare.core.arrays import FloatArray, TopologyArrays, demand_arrays, topology_arrays
from gridshare.core.decision import Alarm, Allocation, RotationState, TransitionPlan
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Phase, Topology

EPS = 1e-6


@dataclass(frozen=True, slots=True)
class Sums:
    group_amps: FloatArray
    """Shape (groups, 3): A per phase in every group."""
    group_kw: FloatArray
    charger_amps: FloatArray


def drawn_array(ta: TopologyArrays, online: FloatArray | np.ndarray,
                setpoints: Mapping[tuple[str, int], float]) -> FloatArray:
    """What each connector may draw: its setpoint, or its failsafe current if offline."""
    values = np.fromiter((setpoints.get(k, 0.0) for k in ta.keys), dtype=float,
                         count=len(ta.keys))
    return np.where(online, values, ta.failsafe)


def sums(ta: TopologyArrays, drawn: FloatArray) -> Sums:
    """Add each connector's current into its charger and every group above it."""
    n_groups = len(ta.group_ids)
    per_phase = drawn[:, None] * ta.phases
    power = drawn * ta.kw_per_amp
    amps = np.zeros((n_groups, 3))
    kw = np.zeros(n_groups)
    for level in range(ta.chain.shape[1]):
        groups = ta.chain[:, level]
        there = groups >= 0
        g = groups[there]
        for phase in range(3):
            amps[:, phase] += np.bincount(g, weights=per_phase[there, phase], minlength=n_groups)
        kw += np.bincount(g, weights=power[there], minlength=n_groups)
    chargers = np.bincount(ta.charger_of, weights=drawn, minlength=len(ta.charger_ids))
    return Sums(amps, kw, chargers.astype(float))


def drawn_current(topology: Topology, snapshot: Snapshot,
                  setpoints: Mapping[tuple[str, int], float]) -> dict[tuple[str, int], float]:
    ta = topology_arrays(topology)
    drawn = drawn_array(ta, demand_arrays(ta, snapshot).online, setpoints)
    return dict(zip(ta.keys, drawn.tolist(), strict=True))


def check(topology: Topology, snapshot: Snapshot,
          setpoints: Mapping[tuple[str, int], float]) -> list[Alarm]:
    """Every limit the setpoints break: connector bounds, charger and group, per phase."""
    ta = topology_arrays(topology)
    values = np.fromiter((setpoints.get(k, 0.0) for k in ta.keys), dtype=float,
                         count=len(ta.keys))
    return check_array(topology, snapshot, values)


def check_array(topology: Topology, snapshot: Snapshot, setpoints: FloatArray) -> list[Alarm]:
    """:func:`check` for setpoints already aligned with the topology's connector order."""
    ta = topology_arrays(topology)
    demand = demand_arrays(ta, snapshot)
    drawn = np.where(demand.online, setpoints, ta.failsafe)
    alarms: list[Alarm] = []
    top = np.minimum(ta.max_current, demand.ev_max)
    bad = demand.online & (drawn != 0.0) & (
        (drawn < ta.min_current - EPS) | (drawn > top + EPS) | ~np.isfinite(drawn))
    for i in np.flatnonzero(bad).tolist():
        charger, conn = ta.keys[i]
        alarms.append(Alarm(topology.chargers[charger].group, None, float(drawn[i]),
                            float(top[i]),
                            f"{charger}/{conn}: setpoint {drawn[i]:.2f} A outside 0 or "
                            f"[{ta.min_current[i]:g}, {top[i]:g}] A"))
    total = sums(ta, drawn)
    for c in np.flatnonzero(total.charger_amps > ta.charger_max + EPS).tolist():
        cid = ta.charger_ids[c]
        alarms.append(Alarm(topology.chargers[cid].group, None, float(total.charger_amps[c]),
                            float(ta.charger_max[c]),
                            f"charger {cid}: {total.charger_amps[c]:.2f} A above its "
                            f"{ta.charger_max[c]:g} A"))
    # Groups without live conditions are held to their static limit as configured.
    available = np.repeat(ta.group_max_current[:, None], 3, axis=1)
    available_kw = ta.group_max_kw.copy()
    for gid, cond in snapshot.groups.items():
        if gid in ta.group_index:
            lim = effective_limit(topology.groups[gid], cond, topology.voltage)
            available[ta.group_index[gid]] = lim.available
            available_kw[ta.group_index[gid]] = lim.available_power_kw
    over_amps = total.group_amps > available + EPS
    for gi, phase in zip(*np.nonzero(over_amps), strict=True):
        gid, load, room = ta.group_ids[gi], total.group_amps[gi, phase], available[gi, phase]
        alarms.append(Alarm(gid, Phase(int(phase)), float(load), float(room),
                            f"group {gid} {Phase(int(phase)).name}: {load:.2f} A above the "
                            f"{room:.2f} A available"))
    for gi in np.flatnonzero(total.group_kw > available_kw + EPS).tolist():
        gid, load, room = ta.group_ids[gi], total.group_kw[gi], available_kw[gi]
        alarms.append(Alarm(gid, None, float(load), float(room),
                            f"group {gid}: {load:.2f} kW above the {room:.2f} kW available"))
    return alarms


def check_plan(topology: Topology, snapshot: Snapshot,
               previous: Mapping[tuple[str, int], float], plan: TransitionPlan,
               target: Mapping[tuple[str, int], float]) -> list[Alarm]:
    """A plan is safe when its first step only lowers, its second only raises, and it ends
    at a safe target: then every moment of step two is at or below the target."""
    alarms = check(topology, snapshot, target)
    reached = dict(previous)
    for cmd in plan.decreases:
        if not cmd.current < cmd.previous:
            alarms.append(Alarm("", None, cmd.current, cmd.previous,
                                f"{cmd.key}: step 1 raises {cmd.previous} -> {cmd.current} A"))
        reached[cmd.key] = cmd.current
    for cmd in plan.increases:
        if not cmd.current > cmd.previous:
            alarms.append(Alarm("", None, cmd.current, cmd.previous,
                                f"{cmd.key}: step 2 lowers {cmd.previous} -> {cmd.current} A"))
        reached[cmd.key] = cmd.current
    for key, amps in target.items():
        if abs(reached.get(key, 0.0) - amps) > EPS:
            alarms.append(Alarm("", None, reached.get(key, 0.0), amps,
                                f"{key}: plan ends at {reached.get(key, 0.0)} A, not {amps} A"))
    return alarms


def failsafe_setpoints(topology: Topology, snapshot: Snapshot) -> dict[tuple[str, int], float]:
    """Every connector at its failsafe current if that holds every limit, else paused."""
    failsafe = {c.key: topology.chargers[c.charger_id].failsafe_current
                for c in topology.connectors()}
    if not check(topology, snapshot, failsafe):
        return failsafe
    return dict.fromkeys(failsafe, 0.0)


def enforce(topology: Topology, snapshot: Snapshot, allocation: Allocation) -> Allocation:
    """Pass a safe allocation through unchanged; replace an unsafe one by failsafes."""
    alarms = check(topology, snapshot, allocation.setpoints)
    if not alarms:
        return allocation
    fallback = failsafe_setpoints(topology, snapshot)
    return Allocation(
        setpoints=drawn_current(topology, snapshot, fallback),
        offline=allocation.offline,
        groups=allocation.groups,
        rotation=RotationState(),
        alarms=allocation.alarms + tuple(alarms),
        guarded=True,
    )
