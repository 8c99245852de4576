"""What the API shows of a running site: the group tree with load against limit, the
chargers with their connectors, as JSON-ready dicts built from the controller's state.

One pass over the connectors per view (a 1,000-charger site is a few milliseconds), and
the serialised bytes are cached by :class:`LiveViews` until the controller changes (or
``max_age_s`` passes, for what time alone changes: leases, meter ages): a hundred clients
polling cost one build, not a hundred.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gridshare.core.snapshot import PhaseCurrents
from gridshare.events import ConnectorStatus

if TYPE_CHECKING:
    from gridshare.app import GridshareApp
    from gridshare.controller.audit import AlarmRecord
    from gridshare.controller.loop import Controller

_STATUS_RANK = {s: i for i, s in enumerate((
    ConnectorStatus.CHARGING, ConnectorStatus.SUSPENDED_EV, ConnectorStatus.SUSPENDED_EVSE,
    ConnectorStatus.PREPARING, ConnectorStatus.FINISHING, ConnectorStatus.OCCUPIED,
    ConnectorStatus.FAULTED, ConnectorStatus.UNAVAILABLE, ConnectorStatus.RESERVED,
    ConnectorStatus.AVAILABLE))}
"""A charger's status is that of its busiest connector, in this order."""


def _num(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 3)


def _phases(values: PhaseCurrents | list[float] | None) -> list[float | None] | None:
    if values is None:
        return None
    return [_num(v) for v in values]


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def alarm_dict(record: AlarmRecord) -> dict[str, Any]:
    return {"at": _time(record.at), "kind": record.kind, "group": record.group or None,
            "phase": record.phase, "load": _num(record.load), "limit": _num(record.limit),
            "message": record.message, "cleared": record.cleared}


def site_view(controller: Controller) -> dict[str, Any]:
    """``GET /api/v1/site``: the group tree, each group with its load against its limits."""
    topo = controller.topology
    state = controller.state
    now = controller.clock.now()
    alloc = controller.allocation
    snapshot = controller.last_snapshot
    stale = set(state.stale_groups(now))
    # Summed per group of its own chargers first, then up the tree: one pass.
    counted: dict[str, list[float]] = {gid: [0.0, 0.0, 0.0] for gid in topo.groups}
    measured: dict[str, list[float]] = {gid: [0.0, 0.0, 0.0] for gid in topo.groups}
    for charger in topo.chargers.values():
        vec = charger.phase_vector
        worst = 0.0
        got = measured[charger.group]
        for conn in charger.connectors:
            worst += state.believed_a(conn.key, now)
            reading = state.measured_a(conn.key, now)
            if reading is not None:
                got[0] += reading[0]
                got[1] += reading[1]
                got[2] += reading[2]
        acc = counted[charger.group]
        acc[0] += vec[0] * worst
        acc[1] += vec[1] * worst
        acc[2] += vec[2] * worst

    def add_up(gid: str) -> None:
        for child in topo.groups[gid].groups:
            add_up(child)
            for sums in (counted, measured):
                mine, theirs = sums[gid], sums[child]
                for p in range(3):
                    mine[p] += theirs[p]

    for root in topo.roots:
        add_up(root)

    def group(gid: str) -> dict[str, Any]:
        spec = topo.groups[gid]
        extra = state.limits_of(gid, now)
        amps = [x.max_current for x, _ in extra.values() if x.max_current is not None]
        kws = [x.max_power_kw for x, _ in extra.values() if x.max_power_kw is not None]
        if spec.max_current is not None:
            amps.append(spec.max_current)
        if spec.max_power_kw is not None:
            kws.append(spec.max_power_kw)
        cond = snapshot.conditions(gid) if snapshot is not None else None
        uncontrolled = cond.uncontrolled if cond is not None else (0.0, 0.0, 0.0)
        meter = state.group_meter(gid)
        current: PhaseCurrents | list[float] = measured[gid]
        if meter is not None and gid not in stale:
            current = meter[0]
        load = alloc.groups.get(gid) if alloc is not None else None
        operator = extra.get("operator")
        limits = [{"source": "static", "max_current": _num(spec.max_current),
                   "max_power": _num(spec.max_power_kw), "until": None}]
        limits += [{"source": src, "max_current": _num(x.max_current),
                    "max_power": _num(x.max_power_kw), "until": _time(until)}
                   for src, (x, until) in sorted(extra.items())]
        return {
            "id": gid,
            "limit": _num(min(amps)) if amps else None,
            "limit_power": _num(min(kws)) if kws else None,
            "current": _phases(current),
            "power": _num(sum(current) * topo.voltage / 1000.0),
            "available": _phases(load.available) if load is not None else None,
            "allocated": _phases(load.current) if load is not None else None,
            "counted": _phases([c + u for c, u in zip(counted[gid], uncontrolled,
                                                      strict=True)]),
            "uncontrolled": _phases(uncontrolled),
            "phases": spec.phases,
            "policy": (spec.policy if controller.settings.policy is None
                       else controller.settings.policy).value,
            "meter": spec.meter,
            "meter_stale": gid in stale,
            "override": None if operator is None else {
                "max_current": _num(operator[0].max_current),
                "max_power": _num(operator[0].max_power_kw), "until": _time(operator[1])},
            "limits": limits,
            "children": [group(child) for child in spec.groups],
            "chargers": list(spec.chargers),
        }

    return {"site": topo.site, "at": _time(now), "voltage": topo.voltage,
            "policy": (controller.settings.policy or topo.policy).value,
            "chargers_configured": len(topo.chargers),
            "chargers_online": state.online_count(),
            "groups": [group(root) for root in topo.roots]}


@dataclass(frozen=True, slots=True)
class _CycleFacts:
    """What every charger's view reads from the last cycle, gathered once."""

    now: datetime
    targets: dict[tuple[str, int], float]
    held: set[tuple[str, int]]
    violators: set[tuple[str, int]]
    counted: dict[tuple[str, int], tuple[float, float | None]]
    """Per connector: what every limit counts it at, and its setpoint in force (both move
    with time alone: settle windows, unknown outcomes and leases end)."""


def _facts(controller: Controller) -> _CycleFacts:
    now = controller.clock.now()
    state = controller.state
    alloc = controller.allocation
    decision = controller.last_decision
    return _CycleFacts(
        now, dict(alloc.setpoints) if alloc is not None else {},
        {s.key for s in decision.held} if decision is not None else set(),
        {v.key for v in controller.state.violators(now)},
        {c.key: (state.believed_a(c.key, now), state.in_force_a(c.key, now))
         for c in controller.topology.connectors()})


def charger_view(controller: Controller, charger_id: str,
                 facts: _CycleFacts | None = None) -> dict[str, Any]:
    """``GET /api/v1/chargers/{id}``: status, connection, protocol, and each connector with
    its setpoint in force, lease end, measured current and session."""
    facts = facts or _facts(controller)
    now = facts.now
    state = controller.state
    charger = controller.topology.chargers[charger_id]
    info = state.charger_info(charger_id)
    connectors = []
    statuses = []
    for conn in charger.connectors:
        key = conn.key
        ledger = state.commands_of(key)
        counted, setpoint = facts.counted.get(key) or (state.believed_a(key, now),
                                                       state.in_force_a(key, now))
        in_force = ledger.in_force
        status = state.status_of(key)
        if status is not None:
            statuses.append(status)
        reading = state.measured_a(key, now)
        session = state.session_info(key)
        rejected = ledger.rejected
        connectors.append({
            "connector": key[1],
            "status": status.value if status is not None else None,
            "active": state.active(key),
            "setpoint": _num(setpoint),
            "lease_end": _time(in_force.valid_to) if setpoint is not None
            and in_force is not None else None,
            "target": _num(facts.targets.get(key)),
            "counted": _num(counted),
            "measured": _phases(reading),
            "measured_max": _num(max(reading)) if reading is not None else None,
            "in_flight": [_num(s.value_a) for s in ledger.in_flight],
            "uncertain": state.uncertain_a(key, now) is not None,
            "held": key in facts.held,
            "violator": key in facts.violators,
            "rejected": None if rejected is None else {
                "current": _num(rejected.value_a), "at": _time(rejected.at),
                "detail": rejected.detail},
            "max_current": _num(conn.max_current),
            "ev_offer": None if session.v2x_offer is None else session.v2x_offer.json(),
            "session": None if session.transaction_id is None and not state.active(key) else {
                "transaction_id": session.transaction_id, "started": _time(session.started),
                "arrival": _time(session.arrival), "energy_wh": _num(session.energy_wh),
                "power_w": _num(session.power_w), "soc_percent": _num(session.soc_percent),
                "energy_needed_kwh": _num(session.energy_needed_kwh),
                "departure": _time(session.departure)},
        })
    if not info.online:
        summary = "offline"
    elif statuses:
        summary = min(statuses, key=lambda s: _STATUS_RANK.get(s, 99)).value
    else:
        summary = "online"
    override = state.priority_override(charger_id)
    return {
        "id": charger_id,
        "group": charger.group,
        "status": summary,
        "connection": {"online": info.online, "since": _time(info.since),
                       "last_seen": _time(info.last_seen), "boots": info.boots},
        "protocol": info.protocol or None,
        "vendor": info.vendor or None,
        "model": info.model or None,
        "phases": charger.phases,
        "phase": charger.phase.name if charger.phase is not None else None,
        "max_current": _num(charger.max_current),
        "max_power": _num(charger.max_power_kw),
        "min_current": _num(charger.min_current),
        "failsafe_current": _num(charger.failsafe_current),
        "priority": state.priority_of(charger_id),
        "priority_override": override,
        "connectors": connectors,
    }


def chargers_view(controller: Controller) -> dict[str, Any]:
    """``GET /api/v1/chargers``: every charger of the site."""
    facts = _facts(controller)
    return {"site": controller.topology.site, "at": _time(facts.now),
            "chargers": [charger_view(controller, cid, facts)
                         for cid in controller.topology.chargers]}


class LiveViews:
    """The site and charger views as JSON bytes, rebuilt only when the controller changed
    (and at least every ``max_age_s``), and at most every ``min_age_s`` under a stream of
    changes. :meth:`invalidate` forces the next read to rebuild (after an operator's
    change, so its answer and the reads after it show it).

    The chargers view is kept per charger: a rebuild re-serialises only the chargers an
    event or a command answer named, or whose target, hold, violation, counted value or
    setpoint in force changed since the last build; and, as a safety net for anything else
    time alone changes (a reading growing too old), a rolling share of the others, so that
    each is rebuilt at least every ``full_every_s`` without one long stall."""

    def __init__(self, app: GridshareApp, *, max_age_s: float = 1.0,
                 min_age_s: float = 0.1, full_every_s: float = 2.0) -> None:
        self.app = app
        self.controller = app.controller
        self.max_age_s = max_age_s
        self.min_age_s = min_age_s
        self.full_every_s = full_every_s
        self.version = 0
        self._cache: dict[str, tuple[int, float, bytes]] = {}
        self._gzipped: dict[str, tuple[bytes, bytes]] = {}
        """Per view: (the JSON, its gzip), made once per build that a client asks for."""
        self._listeners: list[Callable[[str], None]] = []
        self._parts: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._rolled_at = time.monotonic()
        self._cursor = 0
        self._last: _CycleFacts | None = None
        self._remove = self.controller.on_change(self._changed)

    def close(self) -> None:
        self._remove()

    def _changed(self, what: str, charger: str | None = None) -> None:
        self.version += 1
        if charger is not None:
            self._dirty.add(charger)
        for listener in tuple(self._listeners):
            listener(what)

    def listen(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Also call ``listener`` on each change of the controller; returns its remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def invalidate(self, charger: str | None = None) -> None:
        self._cache.clear()
        if charger is not None:
            self._dirty.add(charger)

    def _cached(self, name: str, build: Callable[[], Any]) -> bytes:
        """``build()``'s JSON (bytes it returns as :class:`_Raw` are taken as they are)."""
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None:
            version, built, data = hit
            age = now - built
            if age < self.min_age_s or (version == self.version and age < self.max_age_s):
                return data
        version = self.version
        built = build()
        data = built.data if isinstance(built, _Raw) else dumps(built)
        self._cache[name] = (version, time.monotonic(), data)
        return data

    def site(self) -> bytes:
        return self._cached("site", lambda: site_view(self.controller))

    def chargers(self) -> bytes:
        return self._cached("chargers", self._chargers)

    def gzipped(self, name: str) -> bytes:
        """The view ``name`` (site, chargers) gzipped: compressed once per build, however
        many clients read it (a 1,000-charger view is ~0.9 MB of JSON, ~10 % of that)."""
        data = self.site() if name == "site" else self.chargers()
        hit = self._gzipped.get(name)
        if hit is not None and hit[0] is data:
            return hit[1]
        packed = gzip.compress(data, compresslevel=1, mtime=0)
        self._gzipped[name] = (data, packed)
        return packed

    def _chargers(self) -> Any:
        controller = self.controller
        facts = _facts(controller)
        chargers = controller.topology.chargers
        now = time.monotonic()
        if self._last is None:
            dirty: set[str] = set(chargers)
        else:
            dirty = self._dirty
            last = self._last
            ids = list(chargers)
            share = min(len(ids), math.ceil(
                len(ids) * (now - self._rolled_at) / self.full_every_s))
            dirty.update(ids[(self._cursor + i) % len(ids)] for i in range(share))
            self._cursor = (self._cursor + share) % max(1, len(ids))
            for key, target in facts.targets.items():
                if last.targets.get(key) != target:
                    dirty.add(key[0])
            for key in (facts.held ^ last.held) | (facts.violators ^ last.violators):
                dirty.add(key[0])
            for key, value in facts.counted.items():
                if last.counted.get(key) != value:
                    dirty.add(key[0])
        self._dirty = set()
        self._last = facts
        self._rolled_at = now
        for cid in dirty:
            if cid in chargers:
                self._parts[cid] = dumps(charger_view(controller, cid, facts))
        head = dumps({"site": controller.topology.site, "at": _time(facts.now)})
        return _Raw(head[:-1] + b',"chargers":[' + b",".join(self._parts[cid]
                                                              for cid in chargers) + b"]}")

    def status(self) -> bytes:
        """``GET /status``: exactly what the status server served (never cached)."""
        return dumps_status(self.app.status())


@dataclass(frozen=True, slots=True)
class _Raw:
    """JSON already serialised."""

    data: bytes


def dumps_status(status: dict[str, Any]) -> bytes:
    """The status JSON as the old status server wrote it (compact separators)."""
    return json.dumps(status, separators=(",", ":")).encode()
