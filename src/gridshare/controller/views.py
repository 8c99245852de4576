"""Read-only views of a running controller, for the status endpoint, the API and the
dashboard: groups with load against limit per phase, connectors, alarms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, is_dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gridshare.controller.audit import AlarmRecord

if TYPE_CHECKING:
    from gridshare.controller.loop import Controller


@dataclass(frozen=True, slots=True)
class GroupView:
    id: str
    limit_a: float | None
    """Tightest A-per-phase limit in force (None: kW only)."""
    available_a: tuple[float, float, float]
    """Left for our chargers after uncontrolled load (0 when the meter is stale)."""
    allocated_a: tuple[float, float, float]
    counted_a: tuple[float, float, float]
    """The worst case now: every connector below at what it may obey (in force or
    failsafe, in flight, unknown outcomes, settling), idle ones included."""
    """What our chargers are counted at (setpoints, offline ones at failsafe)."""
    uncontrolled_a: tuple[float, float, float]
    measured_a: tuple[float, float, float]
    """Sum of our chargers' own meter readings below the group."""
    meter_a: tuple[float, float, float] | None
    meter_stale: bool
    power_kw: float
    limit_power_kw: float | None


@dataclass(frozen=True, slots=True)
class MeterView:
    """A meter declared in the site file: its last value and how old it is."""

    id: str
    source: str
    where: str
    current: tuple[float, float, float] | None
    """A per phase of its last reading (None: none since start-up)."""
    age_s: float | None
    stale: bool
    """No reading since start-up or within its max age: its groups are at 0 A headroom."""
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandView:
    """A command the charger may or may not be obeying."""

    current_a: float
    valid_to: datetime | None
    result: str
    """in_flight | timeout | lost"""


@dataclass(frozen=True, slots=True)
class RejectionView:
    current_a: float
    at: datetime
    detail: str


@dataclass(frozen=True, slots=True)
class ConnectorView:
    charger: str
    connector: int
    online: bool
    active: bool
    status: str | None
    setpoint_a: float | None
    """Accepted setpoint inside its lease (None: the charger's default/failsafe)."""
    target_a: float | None
    """What the last allocation wants."""
    drawn_a: float | None
    """Highest per-phase current of its last meter reading."""
    violator: bool
    uncertain: bool
    """A command with an unknown outcome may be in force."""
    counted_a: float
    """What every limit counts it at now: the worst case of what it may obey (in force or
    failsafe, in flight, unknown outcomes, settling)."""
    commands: tuple[CommandView, ...]
    """Commands in flight and those with an unknown outcome, until their validTo."""
    rejected: RejectionView | None
    """The last refused command, until a later one is accepted."""
    settling_until: datetime | None
    held: bool
    """An increase for it waits for others' decreases, settling or unknown outcomes."""
    retry_at: datetime | None
    """In backoff after a failure until then."""


@dataclass(frozen=True, slots=True)
class ControllerStatus:
    site: str
    at: datetime
    chargers_configured: int
    chargers_online: int
    groups: tuple[GroupView, ...]
    connectors: tuple[ConnectorView, ...]
    alarms: tuple[AlarmRecord, ...]
    counters: Mapping[str, int]
    meters: tuple[MeterView, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite limits become null)."""
        return {
            "site": self.site,
            "at": self.at.isoformat(),
            "chargers_configured": self.chargers_configured,
            "chargers_online": self.chargers_online,
            "groups": [_jsonable(_fields(g)) for g in self.groups],
            "connectors": [_jsonable(_fields(c)) for c in self.connectors],
            "alarms": [_jsonable(_fields(a)) for a in self.alarms],
            "counters": dict(self.counters),
            "meters": [_jsonable(_fields(m)) for m in self.meters],
        }


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(_fields(value))
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 3)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def meter_views(controller: Controller, now: datetime) -> tuple[MeterView, ...]:
    """Every meter the site declares (or a group names), as of ``now``."""
    state = controller.state
    stale_groups = set(state.stale_groups(now))
    out = []
    for meter_id in state.meter_ids():
        info = state.meter_info(meter_id)
        groups = state.meter_groups(meter_id)
        sample = state.meter_sample(meter_id)
        age = None if sample is None else max(0.0, (now - sample[1]).total_seconds())
        max_age = state.max_age_s(meter_id)
        stale = any(g in stale_groups for g in groups) if groups else \
            age is None or age > max_age
        out.append(MeterView(
            id=meter_id, source=info.source if info is not None else "",
            where=info.where if info is not None else "",
            current=sample[0] if sample is not None else None, age_s=age, stale=stale,
            groups=groups))
    return tuple(out)


def build_status(controller: Controller) -> ControllerStatus:
    """The view of ``controller`` now."""
    now = controller.clock.now()
    alloc = controller.allocation
    snapshot = controller.last_snapshot or controller.state.to_snapshot(now)
    violators = {v.key for v in controller.state.violators(now)}
    groups = []
    counted = controller.counted()
    for gid, group in controller.topology.groups.items():
        measured = [0.0, 0.0, 0.0]
        worst = [0.0, 0.0, 0.0]
        for cid in controller.topology.subtree_chargers(gid):
            vec = controller.topology.chargers[cid].phase_vector
            for conn in controller.topology.chargers[cid].connectors:
                m = controller.state.measured_a(conn.key, now)
                if m is not None:
                    for p in range(3):
                        measured[p] += m[p]
                for p in range(3):
                    worst[p] += vec[p] * counted[conn.key]
        meter = controller.state.group_meter(gid)
        cond = snapshot.conditions(gid)
        load = alloc.groups.get(gid) if alloc is not None else None
        groups.append(GroupView(
            id=gid,
            limit_a=load.limit if load is not None and math.isfinite(load.limit)
            else group.max_current,
            available_a=load.available if load is not None else (0.0, 0.0, 0.0),
            allocated_a=load.current if load is not None else (0.0, 0.0, 0.0),
            counted_a=(worst[0], worst[1], worst[2]),
            uncontrolled_a=cond.uncontrolled,
            measured_a=(measured[0], measured[1], measured[2]),
            meter_a=meter[0] if meter is not None else None,
            meter_stale=cond.meter_stale,
            power_kw=load.power_kw if load is not None else 0.0,
            limit_power_kw=load.limit_power_kw if load is not None
            and math.isfinite(load.limit_power_kw) else None,
        ))
    connectors = []
    decision = controller.last_decision
    held = {s.key for s in decision.held} if decision is not None else set()
    for conn in controller.topology.connectors():
        key = conn.key
        ledger = controller.state.commands_of(key)
        commands = [CommandView(s.value_a, s.valid_to, "in_flight") for s in ledger.in_flight]
        commands += [CommandView(u.value_a, u.valid_to, u.result.value)
                     for u in ledger.live_unknowns(now)]
        settling = [x.until for x in ledger.settling if x.until > now]
        rejection = ledger.rejected
        retry = controller.retry_state(key)
        m = controller.state.measured_a(key, now)
        status = controller.state.status_of(key)
        connectors.append(ConnectorView(
            charger=key[0], connector=key[1], online=controller.state.online(key[0]),
            active=controller.state.active(key),
            status=status.value if status is not None else None,
            setpoint_a=controller.state.in_force_a(key, now),
            target_a=alloc.setpoints.get(key) if alloc is not None else None,
            drawn_a=max(m) if m is not None else None,
            violator=key in violators,
            uncertain=controller.state.uncertain_a(key, now) is not None,
            counted_a=controller.state.believed_a(key, now),
            commands=tuple(commands),
            rejected=RejectionView(rejection.value_a, rejection.at, rejection.detail)
            if rejection is not None else None,
            settling_until=max(settling) if settling else None,
            held=key in held,
            retry_at=retry.not_before if retry is not None and retry.not_before > now
            else None,
        ))
    return ControllerStatus(
        meters=meter_views(controller, now),
        site=controller.topology.site, at=now,
        chargers_configured=len(controller.topology.chargers),
        chargers_online=controller.state.online_count(), groups=tuple(groups),
        connectors=tuple(connectors), alarms=tuple(controller.recent_alarms),
        counters=dict(controller.counters))
