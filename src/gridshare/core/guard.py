"""The safety guard: the last check before any setpoint leaves the core.

Deliberately naive: it re-adds every connector's current into every group above it, phase
by phase, and compares with the limit in force. It shares no code with the policies
beyond the definition of a limit, so a bug in a clever policy cannot hide here.
"""

from __future__ import annotations

from collections.abc import Mapping

from gridshare.core.decision import Alarm, Allocation, RotationState, TransitionPlan
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ALL_PHASES, ConnectorKey, Topology

EPS = 1e-6


def drawn_current(topology: Topology, snapshot: Snapshot,
                  setpoints: Mapping[ConnectorKey, float]) -> dict[ConnectorKey, float]:
    """What each connector may draw: its setpoint, or its failsafe current if offline."""
    out: dict[ConnectorKey, float] = {}
    for charger in topology.chargers.values():
        for conn in charger.connectors:
            if snapshot.demand(conn.key).online:
                out[conn.key] = setpoints.get(conn.key, 0.0)
            else:
                out[conn.key] = charger.failsafe_current
    return out


def check(topology: Topology, snapshot: Snapshot,
          setpoints: Mapping[ConnectorKey, float]) -> list[Alarm]:
    """Every limit the setpoints break: connector bounds, charger and group, per phase."""
    alarms: list[Alarm] = []
    drawn = drawn_current(topology, snapshot, setpoints)
    group_amps = {gid: [0.0, 0.0, 0.0] for gid in topology.groups}
    group_kw = dict.fromkeys(topology.groups, 0.0)
    for charger in topology.chargers.values():
        charger_amps = 0.0
        for conn in charger.connectors:
            amps = drawn[conn.key]
            demand = snapshot.demand(conn.key)
            if demand.online and amps != 0.0:
                top = min(conn.max_current, charger.max_current)
                if demand.max_current is not None:
                    top = min(top, demand.max_current)
                if not (conn.min_current - EPS <= amps <= top + EPS):
                    alarms.append(Alarm(charger.group, None, amps, top,
                                        f"{conn.key[0]}/{conn.key[1]}: setpoint {amps:.2f} A "
                                        f"outside 0 or [{conn.min_current}, {top}] A"))
            charger_amps += amps
            for gid in topology.charger_groups(charger.id):
                for phase in ALL_PHASES:
                    if charger.loads(phase):
                        group_amps[gid][phase] += amps
                group_kw[gid] += amps * topology.power_kw_per_amp(charger)
        if charger_amps > charger.max_current + EPS:
            alarms.append(Alarm(charger.group, None, charger_amps, charger.max_current,
                                f"charger {charger.id}: {charger_amps:.2f} A above its "
                                f"{charger.max_current} A"))
    for gid, group in topology.groups.items():
        lim = effective_limit(group, snapshot.conditions(gid), topology.voltage)
        for phase in ALL_PHASES:
            load = group_amps[gid][phase]
            if load > lim.available[phase] + EPS:
                alarms.append(Alarm(gid, phase, load, lim.available[phase],
                                    f"group {gid} {phase.name}: {load:.2f} A above the "
                                    f"{lim.available[phase]:.2f} A available"))
        if group_kw[gid] > lim.available_power_kw + EPS:
            alarms.append(Alarm(gid, None, group_kw[gid], lim.available_power_kw,
                                f"group {gid}: {group_kw[gid]:.2f} kW above the "
                                f"{lim.available_power_kw:.2f} kW available"))
    return alarms


def check_plan(topology: Topology, snapshot: Snapshot, previous: Mapping[ConnectorKey, float],
               plan: TransitionPlan, target: Mapping[ConnectorKey, float]) -> list[Alarm]:
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


def failsafe_setpoints(topology: Topology, snapshot: Snapshot) -> dict[ConnectorKey, float]:
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
