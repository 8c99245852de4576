"""Curtailment: a zone's reduction split across its stations, then across connectors.

Pure arithmetic in kW on the loads the caller measured. A connector is either paused
(0) or allowed at least its minimum (a car cannot charge below it); a reduction a
station can only make by pausing a connector sheds more than asked, and that surplus is
counted, so the stations after it shed less. Whenever the zone draws at least the target,
the reductions add up to at least the target; when it draws less, everything goes to 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gridshare.core.topology import ConnectorKey

EPS = 1e-9
"""kW: differences below this are rounding, not a reduction."""


class CurtailPolicy(StrEnum):
    """How a zone's reduction is shared among its stations."""

    PROPORTIONAL = "proportional"
    """Each station sheds its share of the zone's load: station_kw / zone_kw x target."""
    PRIORITY = "priority"
    """Lowest priority stations first (ties: the larger load first)."""


@dataclass(frozen=True)
class ConnectorLoad:
    key: ConnectorKey
    load_kw: float
    """What it draws now."""
    min_kw: float
    """The least it can draw without pausing."""
    max_kw: float
    """Its maximum, including its connector type's kW limit (CCS, CHAdeMO)."""


@dataclass(frozen=True)
class StationLoad:
    station: str
    load_kw: float
    priority: int
    """Higher is more important (the site file's meaning): the lowest sheds first."""
    connectors: tuple[ConnectorLoad, ...]
    max_station_kw: float | None = None


def _check(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def connector_caps(station: StationLoad, allowed_kw: float) -> dict[ConnectorKey, float]:
    """kW cap per connector of ``station``, together at most ``allowed_kw`` (and its
    ``max_station_kw``). Every connector that draws gets its minimum first, then the rest
    in proportion to what it draws above its minimum, each up to its own maximum. When the
    minimums do not fit, the connectors drawing most keep charging as far as their
    minimums fit; the others pause (0) and their share goes to those kept. A connector
    that draws nothing gets 0, unless no connector draws: then they all share (the
    station's load is known, its connectors' is not)."""
    _check("allowed_kw", allowed_kw)
    allowed = allowed_kw
    if station.max_station_kw is not None:
        allowed = min(allowed, station.max_station_kw)
    caps = {c.key: 0.0 for c in station.connectors}
    usable = [c for c in station.connectors if c.max_kw > EPS and c.min_kw <= c.max_kw]
    drawing = [c for c in usable if c.load_kw > EPS]
    candidates = drawing if drawing else usable
    if allowed <= EPS or not candidates:
        return caps
    # Who keeps charging: the largest loads first, each if its minimum still fits.
    kept: list[ConnectorLoad] = []
    room = allowed
    for c in sorted(candidates, key=lambda c: (-c.load_kw, c.min_kw, c.key)):
        if c.min_kw <= room + EPS:
            kept.append(c)
            room -= c.min_kw
    if kept:
        caps.update(_fill(kept, allowed, even=not drawing))
    return caps


def _fill(kept: list[ConnectorLoad], allowed: float, *, even: bool) -> dict[ConnectorKey, float]:
    """Minimums first, then the rest by each one's load above its minimum (evenly when
    ``even`` or when none draws above it), each up to its maximum; water-filling, so what
    one cannot take goes to the others."""
    out = {c.key: c.min_kw for c in kept}
    rest = allowed - sum(out.values())
    open_ = [c for c in kept if c.max_kw - c.min_kw > EPS]
    while rest > EPS and open_:
        weights = {c.key: 1.0 if even else max(c.load_kw - c.min_kw, 0.0) for c in open_}
        total = sum(weights.values())
        if total <= EPS:
            weights = {c.key: 1.0 for c in open_}
            total = float(len(open_))
        full = [c for c in open_ if out[c.key] + rest * weights[c.key] / total
                >= c.max_kw - EPS]
        if not full:
            for c in open_:
                out[c.key] += rest * weights[c.key] / total
            break
        for c in full:
            rest -= c.max_kw - out[c.key]
            out[c.key] = c.max_kw
            open_.remove(c)
    return {k: max(0.0, v) for k, v in out.items()}


def _realized(station: StationLoad, allowed_kw: float) -> float:
    """What the station may draw once ``allowed_kw`` is turned into connector caps (less
    when a connector had to pause, or its maximum left part unusable)."""
    allowed = max(0.0, allowed_kw)
    if not station.connectors:
        limit = station.max_station_kw
        return allowed if limit is None else min(allowed, limit)
    return min(allowed, sum(connector_caps(station, allowed).values()))


def _validate(stations: Sequence[StationLoad], target_kw: float) -> None:
    _check("target_kw", target_kw)
    seen: set[str] = set()
    for s in stations:
        if s.station in seen:
            raise ValueError(f"station {s.station!r} given twice")
        seen.add(s.station)
        _check(f"{s.station}: load_kw", s.load_kw)
        for c in s.connectors:
            for name in ("load_kw", "min_kw", "max_kw"):
                _check(f"{c.key[0]}/{c.key[1]}: {name}", getattr(c, name))


def split_reduction(stations: Sequence[StationLoad], target_kw: float, policy: CurtailPolicy,
                    *, shed: bool = False) -> dict[str, float]:
    """Station id -> the kW it is allowed, so that the zone sheds ``target_kw``.

    ``proportional``: each sheds station_kw / zone_kw x target; ``priority``: the lowest
    priority stations first (ties: the larger load first), each down as far as needed.
    ``shed``: whole stations to 0 in policy order (``proportional``: the largest load
    first) until the target is met. No station is allowed above its load (a DR event
    freezes growth too; an untouched station is held at its load, and a caller may leave
    such a station uncapped), and a station whose connectors would drop below their
    minimum pauses them; what that sheds beyond its share lowers what the others shed.
    A target above the zone's load sends every station to 0.
    """
    _validate(stations, target_kw)
    if not stations:
        return {}
    load = {s.station: s.load_kw for s in stations}
    if target_kw >= sum(load.values()) - EPS and target_kw > EPS:
        return {s.station: 0.0 for s in stations}
    if shed:
        return _shed(stations, target_kw, policy)
    if policy is CurtailPolicy.PRIORITY:
        return _priority(stations, target_kw)
    return _proportional(stations, target_kw)


def _order(stations: Sequence[StationLoad], policy: CurtailPolicy) -> list[StationLoad]:
    if policy is CurtailPolicy.PRIORITY:
        return sorted(stations, key=lambda s: (s.priority, -s.load_kw, s.station))
    return sorted(stations, key=lambda s: (-s.load_kw, s.station))


def _shed(stations: Sequence[StationLoad], target_kw: float,
          policy: CurtailPolicy) -> dict[str, float]:
    out: dict[str, float] = {}
    rest = target_kw
    for s in _order(stations, policy):
        if rest > EPS and s.load_kw > EPS:
            out[s.station] = 0.0
            rest -= s.load_kw
        else:
            out[s.station] = s.load_kw  # untouched: held at its load
    return out


def _priority(stations: Sequence[StationLoad], target_kw: float) -> dict[str, float]:
    out: dict[str, float] = {}
    rest = target_kw
    for s in _order(stations, CurtailPolicy.PRIORITY):
        if rest <= EPS:
            out[s.station] = s.load_kw  # untouched: held at its load
            continue
        got = _realized(s, max(0.0, s.load_kw - rest))
        out[s.station] = got
        rest -= s.load_kw - got
    return out


def _proportional(stations: Sequence[StationLoad], target_kw: float) -> dict[str, float]:
    """Shares of the remaining target among the stations not yet settled; a station that
    shed more than its share (a connector paused) is settled at what it really sheds and
    the others' shares are worked out again without it."""
    fixed: dict[str, float] = {}
    while True:
        flex = [s for s in stations if s.station not in fixed]
        rest = target_kw - sum(s.load_kw - fixed[s.station] for s in stations
                               if s.station in fixed)
        total = sum(s.load_kw for s in flex)
        tentative: dict[str, float] = {}
        overshot: dict[str, float] = {}
        for s in flex:
            cut = rest * s.load_kw / total if rest > EPS and total > EPS else 0.0
            want = max(0.0, s.load_kw - cut)
            got = _realized(s, want)
            tentative[s.station] = got
            if got < want - 1e-6:
                overshot[s.station] = got
        if not overshot:
            return {s.station: fixed.get(s.station, tentative.get(s.station, 0.0))
                    for s in stations}
        fixed.update(overshot)
