"""The topology as arrays, one row per connector, computed once per topology.

Allocation and the guard run at 10,000+ connectors; walking Python objects per connector
per group per phase costs hundreds of milliseconds, numpy over these arrays a few.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress

import numpy as np
import numpy.typing as npt

from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import ConnectorDemand, Snapshot
from gridshare.core.topology import ConnectorKey, Topology

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class TopologyArrays:
    keys: tuple[ConnectorKey, ...]
    index: dict[ConnectorKey, int]
    group_ids: tuple[str, ...]
    group_index: dict[str, int]
    charger_ids: tuple[str, ...]
    charger_of: IntArray
    """Per connector: index into charger_ids."""
    phases: npt.NDArray[np.int8]
    """Per connector, shape (n, 3): 1 where its current flows on L1/L2/L3."""
    kw_per_amp: FloatArray
    max_current: FloatArray
    """min(connector max, charger max)."""
    min_current: FloatArray
    failsafe: FloatArray
    priority: IntArray
    chain: IntArray
    """Shape (n, depth): group indices from innermost to root, padded with -1."""
    charger_max: FloatArray
    """Per charger: its own A-per-phase maximum."""
    multi: BoolArray
    """Per charger: more than one connector share its maximum."""
    group_max_current: FloatArray
    """Per group: static A-per-phase limit (inf when none)."""
    group_max_kw: FloatArray
    """Per group: static kW limit (inf when none)."""
    group_chain: IntArray
    """Shape (groups, depth): each group and its ancestors, innermost first, padded with -1."""
    cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)
    """Derived state carried between calls on the same topology (the last demand read)."""


def topology_arrays(topology: Topology) -> TopologyArrays:
    cached = topology._cache.get("arrays")
    if isinstance(cached, TopologyArrays):
        return cached
    arrays = _build(topology)
    topology._cache["arrays"] = arrays
    return arrays


def _build(topology: Topology) -> TopologyArrays:
    group_ids = tuple(topology.groups)
    group_index = {g: i for i, g in enumerate(group_ids)}
    charger_ids = tuple(topology.chargers)
    keys: list[ConnectorKey] = []
    charger_of, phases, kw, top, low, failsafe, prio, chains = [], [], [], [], [], [], [], []
    for ci, charger in enumerate(topology.chargers.values()):
        chain = [group_index[g] for g in topology.charger_groups(charger.id)]
        for conn in charger.connectors:
            keys.append(conn.key)
            charger_of.append(ci)
            phases.append(charger.phase_vector)
            kw.append(topology.power_kw_per_amp(charger))
            top.append(min(conn.max_current, charger.max_current))
            low.append(conn.min_current)
            failsafe.append(charger.failsafe_current)
            prio.append(charger.priority)
            chains.append(chain)
    group_depth = max((len(topology.group_chain(g)) for g in group_ids), default=1)
    group_chain = np.full((len(group_ids), group_depth), -1, dtype=np.int64)
    for gi, gid in enumerate(group_ids):
        ancestors = [group_index[a] for a in topology.group_chain(gid)]
        group_chain[gi, : len(ancestors)] = ancestors
    depth = max((len(c) for c in chains), default=1)
    chain_arr = np.full((len(keys), depth), -1, dtype=np.int64)
    for i, chain in enumerate(chains):
        chain_arr[i, : len(chain)] = chain
    return TopologyArrays(
        keys=tuple(keys),
        index={k: i for i, k in enumerate(keys)},
        group_ids=group_ids,
        group_index=group_index,
        charger_ids=charger_ids,
        charger_of=np.array(charger_of, dtype=np.int64),
        phases=np.array(phases, dtype=np.int8).reshape(len(keys), 3),
        kw_per_amp=np.array(kw, dtype=float),
        max_current=np.array(top, dtype=float),
        min_current=np.array(low, dtype=float),
        failsafe=np.array(failsafe, dtype=float),
        priority=np.array(prio, dtype=np.int64),
        chain=chain_arr,
        group_chain=group_chain,
        charger_max=np.array([c.max_current for c in topology.chargers.values()], dtype=float),
        multi=np.array([len(c.connectors) > 1 for c in topology.chargers.values()], dtype=bool),
        group_max_current=np.array([np.inf if g.max_current is None else g.max_current
                                    for g in topology.groups.values()], dtype=float),
        group_max_kw=np.array([np.inf if g.max_power_kw is None else g.max_power_kw
                               for g in topology.groups.values()], dtype=float),
    )


@dataclass(frozen=True, slots=True)
class AvailableArrays:
    """Per group, what its limits in force leave for controlled load."""

    amps: FloatArray
    """Shape (groups, 3)."""
    kw: FloatArray


def available_arrays(topology: Topology, ta: TopologyArrays,
                     snapshot: Snapshot) -> AvailableArrays:
    """effective_limit for every group; groups without live conditions use the static
    limit directly (same definition, no per-group Python call)."""
    cached = snapshot._cache.get("available")
    if isinstance(cached, AvailableArrays) and len(cached.kw) == len(ta.group_ids):
        return cached
    amps = np.repeat(ta.group_max_current[:, None], 3, axis=1)
    kw = ta.group_max_kw.copy()
    for gid, cond in snapshot.groups.items():
        gi = ta.group_index.get(gid)
        if gi is None:
            continue
        lim = effective_limit(topology.groups[gid], cond, topology.voltage)
        amps[gi] = lim.available
        kw[gi] = lim.available_power_kw
    out = AvailableArrays(amps, kw)
    snapshot._cache["available"] = out
    return out


@dataclass(frozen=True, slots=True)
class DemandArrays:
    """A snapshot's connector demand as arrays aligned with TopologyArrays.keys."""

    active: BoolArray
    online: BoolArray
    ev_max: FloatArray
    """The EV's own maximum (inf when unknown)."""
    priority: IntArray
    arrival_s: FloatArray
    """Epoch seconds; inf when unknown: an unknown arrival counts as the latest and, unlike
    ``now``, does not move between snapshots (which would reorder ties and flap pauses)."""
    energy_kwh: FloatArray
    """NaN when unknown."""
    departure_s: FloatArray
    """Epoch seconds; NaN when unknown."""


def demand_arrays(ta: TopologyArrays, snapshot: Snapshot) -> DemandArrays:
    cached = snapshot._cache.get("demand")
    if isinstance(cached, DemandArrays) and len(cached.active) == len(ta.keys):
        return cached
    arrays = _demand(ta, snapshot)
    snapshot._cache["demand"] = arrays
    return arrays


@dataclass(frozen=True, slots=True)
class _LastDemand:
    """The last snapshot's demand as arrays, to start the next one from."""

    connectors: Mapping[ConnectorKey, ConnectorDemand]
    arrays: DemandArrays


def _demand(ta: TopologyArrays, snapshot: Snapshot) -> DemandArrays:
    """The snapshot's demand as arrays. The controller's next snapshot differs from its
    last in a few connectors: those whose demand is not the very same (immutable) object
    as last time are read again, the rest is copied. The result is the same either way."""
    n = len(ta.keys)
    last = ta.cache.get("demand")
    if isinstance(last, _LastDemand):
        before = last.connectors
        keys = list(snapshot.connectors)
        values = list(snapshot.connectors.values())
        differs = map(operator.is_not, values, map(before.get, keys))
        changed = [(keys[i], values[i]) for i in compress(range(len(keys)), differs)]
        gone = ([] if len(snapshot.connectors) - len(changed) == len(before)
                else [k for k in before if k not in snapshot.connectors])
        if len(changed) + len(gone) <= n // 2:
            a = last.arrays
            arrays = DemandArrays(a.active.copy(), a.online.copy(), a.ev_max.copy(),
                                  a.priority.copy(), a.arrival_s.copy(), a.energy_kwh.copy(),
                                  a.departure_s.copy())
            for key in [*gone, *(k for k, _ in changed)]:
                i = ta.index.get(key)
                if i is not None:
                    _set_idle(ta, arrays, i)
            _read(ta, arrays, changed)
            ta.cache["demand"] = _LastDemand(dict(snapshot.connectors), arrays)
            return arrays
    arrays = DemandArrays(np.zeros(n, dtype=bool), np.ones(n, dtype=bool), np.full(n, np.inf),
                          ta.priority.copy(), np.full(n, np.inf), np.full(n, np.nan),
                          np.full(n, np.nan))
    _read(ta, arrays, snapshot.connectors.items())
    # A copy: a caller may build its next snapshot by changing the same dict.
    ta.cache["demand"] = _LastDemand(dict(snapshot.connectors), arrays)
    return arrays


def _set_idle(ta: TopologyArrays, a: DemandArrays, i: int) -> None:
    """Connector ``i`` as a snapshot that does not mention it: idle, online, unknown."""
    a.active[i] = False
    a.online[i] = True
    a.ev_max[i] = np.inf
    a.priority[i] = ta.priority[i]
    a.arrival_s[i] = np.inf
    a.energy_kwh[i] = np.nan
    a.departure_s[i] = np.nan


def _read(ta: TopologyArrays, a: DemandArrays,
          demands: Iterable[tuple[ConnectorKey, ConnectorDemand]]) -> None:
    """Write ``demands`` over connectors that are at their idle defaults."""
    for key, d in demands:
        i = ta.index.get(key)
        if i is None:
            continue
        a.active[i] = d.active
        a.online[i] = d.online
        if d.max_current is not None:
            a.ev_max[i] = d.max_current
        if d.priority is not None:
            a.priority[i] = d.priority
        if d.arrival is not None:
            a.arrival_s[i] = d.arrival.timestamp()
        if d.energy_needed_kwh is not None:
            a.energy_kwh[i] = d.energy_needed_kwh
        if d.departure is not None:
            a.departure_s[i] = d.departure.timestamp()
