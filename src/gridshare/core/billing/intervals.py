"""Interval energy from cumulative energy registers, conserved exactly.

Energy is counted in integer milliwatt-hours (mWh): a register reading is quantised to
1 mWh once, on the way in (far below any meter's resolution), and from then on every
step is integer arithmetic. The register value at each interval boundary is interpolated
linearly between the readings around it (rounded half up to 1 mWh) and an interval's
energy is the difference of its two boundary values, so the intervals of any range sum
*exactly* to the boundary difference over the range: a telescoping sum of integers, no
float drift, whatever the number of intervals.

Register resets (a reading lower than the one before it) are folded into an *adjusted
register* that never drops: after a reset the energy is counted from the new zero (the
meter was replaced, or rolled over at ``modulus_mwh`` when that is known). Energy the old
register counted after its last reading is lost, and said so by the ``register_reset``
flag. A meter without a register falls back to integrating its power (trapezoids).

Times are integer microseconds since the epoch (UTC); the adapters convert.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

US_PER_S = 1_000_000
MWH_PER_KWH = 1_000_000


class Flag(StrEnum):
    """Why an interval's energy is not a plain register difference (docs/billing.md)."""

    REGISTER_RESET = "register_reset"
    """The register dropped within or next to the interval (meter replaced, rolled over):
    energy after the drop is counted from the new zero."""
    GAP = "gap"
    """The readings around (part of) the interval are further apart than the gap limit."""
    ESTIMATED = "estimated"
    """The energy is spread over the gap by linear interpolation, not measured per interval."""
    FROM_POWER = "from_power"
    """The meter has no energy register: the energy is its power integrated (trapezoids)."""
    PARTIAL = "partial"
    """Part of the interval lies before the first or after the last reading: only the
    part covered by readings is counted."""
    NO_DATA = "no_data"
    """No reading covers any of the interval: its energy is 0."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a meter: ``energy_mwh`` is its cumulative (import) register, and
    ``export_mwh`` its export register (energy fed back); None: none sent."""

    ts_us: int
    energy_mwh: int | None
    power_w: float | None = None
    export_mwh: int | None = None


def export_readings(readings: Iterable[Reading]) -> list[Reading]:
    """The export register as readings of a register of its own (no power: exported
    energy is never estimated from power), so it goes through the same interval code."""
    return [Reading(r.ts_us, r.export_mwh) for r in readings if r.export_mwh is not None]


@dataclass(frozen=True, slots=True)
class Interval:
    start_us: int
    end_us: int
    energy_mwh: int
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True, slots=True)
class IntervalSettings:
    interval_s: int = 900
    """Length of an interval; intervals are aligned to multiples of it since the epoch."""
    gap_intervals: float = 2.0
    """Readings further apart than this many intervals are a gap."""
    modulus_mwh: int | None = None
    """The register's rollover point, when known: a drop is then a rollover (no energy
    lost), else a meter replacement counted from the new zero."""

    @property
    def interval_us(self) -> int:
        return self.interval_s * US_PER_S


def wh_to_mwh(energy_wh: float) -> int:
    """A register in Wh as integer mWh, rounded once, on the way in."""
    return round(energy_wh * 1000)


@dataclass(frozen=True, slots=True)
class Track:
    """A meter's adjusted register: times, values (never reset) and the flags of each
    stretch between two consecutive points."""

    ts_us: tuple[int, ...]
    value_mwh: tuple[int, ...]
    stretch_flags: tuple[frozenset[Flag], ...]
    """``stretch_flags[i]`` belongs to the stretch from point i to point i + 1."""
    lost_mwh: int = 0
    """What the resets lost: the register's value before each drop, summed (0 when the
    drops are rollovers at a known modulus)."""


def build_track(readings: Iterable[Reading], settings: IntervalSettings) -> Track:
    """The adjusted register from a meter's readings (any order; a second reading at the
    same instant is a duplicate and ignored). Readings with a register are used when there
    is one; only a meter with none at all is integrated from its power."""
    by_ts: dict[int, Reading] = {}
    for r in readings:
        by_ts.setdefault(r.ts_us, r)
    ordered = [by_ts[t] for t in sorted(by_ts)]
    registers = [r for r in ordered if r.energy_mwh is not None]
    gap_us = settings.gap_intervals * settings.interval_us
    times: list[int] = []
    values: list[int] = []
    flags: list[frozenset[Flag]] = []
    lost = 0
    if registers:
        offset = 0
        prev: Reading | None = None
        for r in registers:
            raw = r.energy_mwh
            assert raw is not None
            stretch: set[Flag] = set()
            if prev is not None:
                before = prev.energy_mwh
                assert before is not None
                if raw < before:
                    stretch.add(Flag.REGISTER_RESET)
                    if settings.modulus_mwh is not None:
                        offset += settings.modulus_mwh
                    else:
                        offset += before
                        lost += before
                if r.ts_us - prev.ts_us > gap_us:
                    stretch.update((Flag.GAP, Flag.ESTIMATED))
                flags.append(frozenset(stretch))
            times.append(r.ts_us)
            values.append(raw + offset)
            prev = r
        return Track(tuple(times), tuple(values), tuple(flags), lost)
    powered = [r for r in ordered if r.power_w is not None]
    total_mwh = 0.0  # W·µs summed as a float, rounded per point: monotone when power >= 0
    for i, r in enumerate(powered):
        stretch = {Flag.FROM_POWER}
        if i:
            p0, p1 = powered[i - 1], r
            assert p0.power_w is not None and r.power_w is not None
            dt = p1.ts_us - p0.ts_us
            total_mwh += (p0.power_w + r.power_w) / 2 * dt / 3600.0 / 1000.0
            if dt > gap_us:
                stretch.update((Flag.GAP, Flag.ESTIMATED))
            flags.append(frozenset(stretch))
        times.append(r.ts_us)
        values.append(round(total_mwh))
    return Track(tuple(times), tuple(values), tuple(flags), 0)


def value_at(track: Track, t_us: int) -> int:
    """The adjusted register at ``t_us``: interpolated between the readings around it,
    held at the first (last) reading before (after) them."""
    ts = track.ts_us
    if not ts:
        return 0
    if t_us <= ts[0]:
        return track.value_mwh[0]
    if t_us >= ts[-1]:
        return track.value_mwh[-1]
    i = bisect_right(ts, t_us) - 1
    t0, v0 = ts[i], track.value_mwh[i]
    if t0 == t_us:
        return v0
    t1, v1 = ts[i + 1], track.value_mwh[i + 1]
    num, den = (v1 - v0) * (t_us - t0), t1 - t0
    return v0 + (2 * num + den) // (2 * den)  # rounded half up, exact integers


def boundaries(start_us: int, end_us: int, settings: IntervalSettings) -> range:
    """Interval starts from ``start_us`` to ``end_us`` (both on boundaries)."""
    step = settings.interval_us
    if start_us % step or end_us % step:
        raise ValueError(f"the range must start and end on {settings.interval_s} s "
                         "interval boundaries")
    if end_us < start_us:
        raise ValueError("the range ends before it starts")
    return range(start_us, end_us, step)


def intervals(track: Track, start_us: int, end_us: int,
              settings: IntervalSettings) -> list[Interval]:
    """The intervals of ``[start_us, end_us)``: each boundary's value depends only on the
    readings, never on the range, so splitting a range in two gives the same intervals."""
    step = settings.interval_us
    starts = boundaries(start_us, end_us, settings)
    ts = track.ts_us
    if not ts:
        return [Interval(s, s + step, 0, (Flag.NO_DATA,)) for s in starts]
    first, last = ts[0], ts[-1]
    out: list[Interval] = []
    left = value_at(track, start_us)
    # the first stretch that may overlap the current interval (moves forward only)
    k = max(0, bisect_right(ts, start_us) - 1)
    sflags = track.stretch_flags
    nstretch = len(sflags)
    for s in starts:
        e = s + step
        right = value_at(track, e)
        flags: set[Flag] = set()
        if e <= first or s >= last:
            flags.add(Flag.NO_DATA)
        else:
            if s < first or e > last:
                flags.add(Flag.PARTIAL)
            while k < nstretch and ts[k + 1] <= s:
                k += 1
            j = k
            while j < nstretch and ts[j] < e:
                flags |= sflags[j]
                j += 1
        out.append(Interval(s, e, right - left, tuple(sorted(flags)) if flags else ()))
        left = right
    return out


def sum_mwh(items: Sequence[Interval]) -> int:
    return sum(i.energy_mwh for i in items)


def merge(parts: Sequence[Sequence[Interval]]) -> list[Interval]:
    """Interval-wise sum of several meters over the same range (a charger's connectors):
    energies add, flags are the union."""
    if not parts:
        return []
    out = []
    for column in zip(*parts, strict=True):
        flags: set[Flag] = set()
        for i in column:
            flags.update(i.flags)
        if any(Flag.NO_DATA not in i.flags for i in column):
            flags.discard(Flag.NO_DATA)  # one connector without data: the others count
        out.append(Interval(column[0].start_us, column[0].end_us,
                            sum(i.energy_mwh for i in column), tuple(sorted(flags))))
    return out
