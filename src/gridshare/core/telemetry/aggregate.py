"""Demand per feeder, substation and region over tumbling event-time windows (pure).

Definitions (docs/telemetry.md says the same):

- Windows are ``[k·W, (k+1)·W)`` in epoch seconds (UTC), ``W`` = ``window_s``; a reading
  belongs to the window its ``ts`` (event time) falls in, whenever it arrives.
- A meter's demand in a window is the mean of the ``power_w`` of its readings in it (each
  reading is a sample of the meter's power; at a steady reporting interval that is its
  time-weighted average). A level's demand (feeder F1, substation S1, region north) is the
  sum over its meters that reported in the window; ``meters_reporting`` says how many did,
  ``meters_expected`` how many the site file places there, so a reader can tell a quiet
  feeder from a feeder whose meters went silent.
- A placed meter missing from a closed window (its reading fell just past the window's
  edge, a lost message) is *carried*: ``carried_kw`` sums such meters' demand in the
  newest earlier closed window they reported in, ``meters_carried`` counts them. Not
  stored, and not part of ``demand_kw``: a reader estimating a whole area (regulation)
  uses it rather than assuming a missing meter draws the mean of the others — wrong
  for a battery's meter near 0 kW among 10 kW loads.
- The watermark is the latest event time seen (or the clock, whichever is later, when the
  service ticks). A window closes once the watermark passes its end plus ``lateness_s``;
  a reading for a window already closed is *late*: counted and left out. Within the
  lateness bound, order does not matter.
- A second reading of the same meter with the same ``ts`` is a duplicate: counted, left
  out (also when its values differ: the first one wins, as in the database).

Readings are added one at a time into per-window lists indexed by meter (cheap in
Python); closing a window is vectorised with numpy (one ``bincount`` per level).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

LEVELS: Final = ("feeder", "substation", "region")

ADDED: Final = 0
DUPLICATE: Final = 1
LATE: Final = 2
UNKNOWN: Final = 3


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one meter is: any of the three may be missing."""

    meter_id: str
    feeder: str | None = None
    substation: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class DemandWindow:
    """One closed window of one level key: a row of ``demand_windows``."""

    level: str
    key: str
    window_start: float
    window_end: float
    demand_kw: float
    max_meter_kw: float
    """The highest one meter's demand in the window (kW)."""
    meters_reporting: int
    meters_expected: int
    readings: int
    carried_kw: float = 0.0
    """The missing meters' demand in the newest earlier closed window they reported in."""
    meters_carried: int = 0

    def as_row(self) -> dict[str, object]:
        return {"level": self.level, "key": self.key, "window_start": self.window_start,
                "window_end": self.window_end, "demand_kw": self.demand_kw,
                "max_meter_kw": self.max_meter_kw, "meters_reporting": self.meters_reporting,
                "meters_expected": self.meters_expected, "readings": self.readings}


class _Level:
    """One level's keys and each meter's key index (-1: not placed at this level)."""

    def __init__(self, name: str, keys_of_meters: Sequence[str | None]) -> None:
        self.name = name
        self.keys: list[str] = []
        index: dict[str, int] = {}
        of_meter = np.full(len(keys_of_meters), -1, dtype=np.int64)
        for i, key in enumerate(keys_of_meters):
            if key is None:
                continue
            k = index.get(key)
            if k is None:
                k = index[key] = len(self.keys)
                self.keys.append(key)
            of_meter[i] = k
        self.index = index
        self.of_meter = of_meter
        self.placed = of_meter >= 0
        self.expected = np.bincount(of_meter[self.placed], minlength=len(self.keys))


@dataclass(slots=True)
class _Open:
    """The readings of one open window so far, per meter index."""

    start: float
    sums: list[float]
    counts: list[int]
    maxes: list[float]
    seen: set[int] = field(default_factory=set)
    """meter index << 40 | milliseconds since the window start: duplicates."""
    readings: int = 0


class Aggregator:
    """Tumbling-window demand per level; feed it with :meth:`add`, close with
    :meth:`advance` (or through :meth:`add`, as event time moves on)."""

    def __init__(self, placements: Iterable[Placement], *, window_s: float = 60.0,
                 lateness_s: float = 30.0) -> None:
        if not window_s > 0 or not lateness_s >= 0:
            raise ValueError("window_s must be > 0 and lateness_s >= 0")
        placed = list(placements)
        self.window_s = float(window_s)
        self.lateness_s = float(lateness_s)
        self.meter_index = {p.meter_id: i for i, p in enumerate(placed)}
        self.levels = (
            _Level("feeder", [p.feeder for p in placed]),
            _Level("substation", [p.substation for p in placed]),
            _Level("region", [p.region for p in placed]),
        )
        self._n = len(placed)
        self._last_kw = np.full(self._n, np.nan)
        """Each meter's demand in the newest closed window it reported in (NaN: none)."""
        self._open: dict[float, _Open] = {}
        self.closed_until = -math.inf
        """Every window ending at or before this has closed (its readings are late)."""
        self.watermark = -math.inf
        self.added = 0
        self.duplicates = 0
        self.late = 0
        self.unknown = 0

    @property
    def meters(self) -> int:
        return self._n

    def level(self, name: str) -> _Level:
        for level in self.levels:
            if level.name == name:
                return level
        raise KeyError(name)

    def window_of(self, ts: float) -> float:
        return math.floor(ts / self.window_s) * self.window_s

    def add(self, meter_id: str, ts: float, power_w: float) -> int:
        """Count one reading into its window: ADDED, DUPLICATE, LATE or UNKNOWN (a meter
        the site does not place). Does not close windows (see :meth:`advance`)."""
        i = self.meter_index.get(meter_id)
        if i is None:
            self.unknown += 1
            return UNKNOWN
        start = math.floor(ts / self.window_s) * self.window_s
        if start + self.window_s <= self.closed_until:
            self.late += 1
            return LATE
        acc = self._open.get(start)
        if acc is None:
            n = self._n
            acc = self._open[start] = _Open(start, [0.0] * n, [0] * n, [-math.inf] * n)
        key = (i << 40) | round((ts - start) * 1000.0)
        seen = acc.seen
        if key in seen:
            self.duplicates += 1
            return DUPLICATE
        seen.add(key)
        acc.sums[i] += power_w
        acc.counts[i] += 1
        acc.maxes[i] = max(acc.maxes[i], power_w)
        acc.readings += 1
        self.added += 1
        self.watermark = max(self.watermark, ts)
        return ADDED

    def advance(self, now: float | None = None) -> list[DemandWindow]:
        """Close every window whose end plus the lateness is at or before the watermark
        (moved on to ``now`` when given: the clock, for a quiet ingest); oldest first."""
        if now is not None and now > self.watermark:
            self.watermark = now
        horizon = self.watermark - self.lateness_s
        out: list[DemandWindow] = []
        for start in sorted(s for s in self._open if s + self.window_s <= horizon):
            out.extend(self._close(self._open.pop(start)))
        if horizon > self.closed_until:
            # Windows that saw no reading close too: their readings would be late.
            self.closed_until = math.floor(horizon / self.window_s) * self.window_s
        return out

    def running(self) -> list[DemandWindow]:
        """The open windows so far (not closed: they may still change), oldest first."""
        out: list[DemandWindow] = []
        for start in sorted(self._open):
            out.extend(self._summarise(self._open[start]))
        return out

    def open_windows(self) -> int:
        return len(self._open)

    def _close(self, acc: _Open) -> list[DemandWindow]:
        return self._summarise(acc, closing=True)

    def _summarise(self, acc: _Open, *, closing: bool = False) -> list[DemandWindow]:
        """The window's rows; ``closing``: its meters' demand is then their latest (what
        later windows carry for a meter missing from them)."""
        counts = np.asarray(acc.counts, dtype=np.int64)
        reporting = counts > 0
        sums = np.asarray(acc.sums, dtype=np.float64)
        kw = np.zeros(self._n, dtype=np.float64)
        np.divide(sums, counts, out=kw, where=reporting)
        kw /= 1000.0
        carried = ~reporting & ~np.isnan(self._last_kw)
        max_kw = np.where(reporting, kw, -np.inf)
        end = acc.start + self.window_s
        out: list[DemandWindow] = []
        for level in self.levels:
            mask = reporting & level.placed
            if not mask.any():
                continue
            keys = level.of_meter[mask]
            size = len(level.keys)
            demand = np.bincount(keys, weights=kw[mask], minlength=size)
            meters = np.bincount(keys, minlength=size)
            readings = np.bincount(keys, weights=counts[mask], minlength=size)
            top = np.full(size, -np.inf)
            np.maximum.at(top, keys, max_kw[mask])
            carry = carried & level.placed
            carried_keys = level.of_meter[carry]
            carried_kw = np.bincount(carried_keys, weights=self._last_kw[carry],
                                     minlength=size)
            carried_n = np.bincount(carried_keys, minlength=size)
            for k in np.flatnonzero(meters):
                out.append(DemandWindow(
                    level.name, level.keys[k], acc.start, end, float(demand[k]),
                    float(top[k]), int(meters[k]), int(level.expected[k]),
                    int(readings[k]), float(carried_kw[k]), int(carried_n[k])))
        if closing:
            self._last_kw[reporting] = kw[reporting]
        return out
