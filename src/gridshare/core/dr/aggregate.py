"""Live load per station and per zone over tumbling windows, pure (no clock, no I/O).

A connector's power is a step function of its meter values: each sample's kW holds from
its timestamp until the connector's next sample (or, with ``hold``, at most that long:
a charger that stopped reporting is not assumed to draw forever). Before a connector's
first sample its draw is unknown and counts as 0. A window ``[start, start + length)``
is aligned on the epoch, so with a length that divides an hour it starts on the minute;
a sample belongs to the window of its own timestamp (the charger's clock), not of its
arrival.

Only the *open* window takes samples, in any order; a sample older than the open window
is *late*: counted and dropped, because the window it belongs to is closed and already
reported. A sample in a later window closes the open one (and the empty windows in
between, at the value carried over). The caller also closes windows as its clock moves
(:meth:`StationWindows.close_until`), usually a little behind real time so that samples
in flight are not late.

A window's average is its energy over its whole length (``kW·s / s``); the per-window
figures are exact sums of the samples' contributions: sample *i* contributes
``kW_i x |[t_i, min(t_next, t_i + hold)) ∩ window|``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gridshare.core.dr.signals import iso

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_WINDOW_S = 60
DEFAULT_KEEP = 60
"""Closed windows kept per station (an hour of one-minute windows)."""
MAX_SAMPLES_PER_WINDOW = 20_000
"""Per station and window; beyond it samples are dropped (counted): a flood of meter
values must not grow memory without bound."""


def window_length(seconds: float) -> timedelta:
    """The window length as a timedelta; ValueError unless it is a whole number of seconds
    that divides an hour (so that every window starts on the minute or within it evenly)."""
    if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)):
        raise ValueError(f"window: {seconds!r} is not a number of seconds")
    if seconds <= 0 or seconds != int(seconds) or 3600 % int(seconds) != 0:
        raise ValueError(f"window: {seconds!r} s must be a whole number of seconds that "
                         "divides an hour (e.g. 10, 15, 30, 60, 300, 900, 3600)")
    return timedelta(seconds=int(seconds))


def window_start(at: datetime, length: timedelta) -> datetime:
    """Start of the window holding ``at`` (aligned on the epoch, UTC)."""
    if at.tzinfo is None:
        raise ValueError(f"time {at.isoformat()} has no UTC offset")
    return (EPOCH + ((at - EPOCH) // length) * length).astimezone(UTC)


def utilisation_pct(kw: float, capacity_kw: float | None) -> float | None:
    """``kw`` as a percentage of ``capacity_kw`` (None: no capacity declared, or 0)."""
    if capacity_kw is None or capacity_kw <= 0:
        return None
    return 100.0 * kw / capacity_kw


@dataclass(frozen=True, slots=True)
class ConnectorWindow:
    """One connector's figures in a window."""

    connector: int
    avg_kw: float
    max_kw: float
    last_kw: float
    energy_kwh: float

    def to_json(self) -> dict[str, Any]:
        return {"connector": self.connector, "avg_kw": _r(self.avg_kw),
                "max_kw": _r(self.max_kw), "last_kw": _r(self.last_kw),
                "energy_kwh": _r(self.energy_kwh, 4)}


@dataclass(frozen=True, slots=True)
class StationWindow:
    """A station's load in one window; ``closed`` False: the open window so far."""

    station: str
    start: datetime
    end: datetime
    until: datetime
    """What the figures cover: ``end`` for a closed window, the time asked for the open one."""
    closed: bool
    avg_kw: float
    """Time-weighted average over the window (the open one: over its elapsed part)."""
    last_kw: float
    """The station's draw at the window's end (the open one: now)."""
    max_kw: float
    """The highest total draw of the station at any moment of the window."""
    energy_kwh: float
    active_sessions: int
    """Transactions in progress at some moment of the window."""
    active_connectors: int
    """Connectors that drew power (> 0 kW) at some moment of the window."""
    samples: int
    connectors: tuple[ConnectorWindow, ...]

    @property
    def avg_connector_kw(self) -> float:
        """Average draw per active connector (0 when none was active)."""
        return self.avg_kw / self.active_connectors if self.active_connectors else 0.0

    @property
    def max_connector_kw(self) -> float:
        return max((c.max_kw for c in self.connectors), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"start": iso(self.start), "end": iso(self.end), "until": iso(self.until),
                "closed": self.closed, "avg_kw": _r(self.avg_kw), "last_kw": _r(self.last_kw),
                "max_kw": _r(self.max_kw), "energy_kwh": _r(self.energy_kwh, 4),
                "active_sessions": self.active_sessions,
                "active_connectors": self.active_connectors,
                "avg_connector_kw": _r(self.avg_connector_kw),
                "max_connector_kw": _r(self.max_connector_kw), "samples": self.samples,
                "connectors": [c.to_json() for c in self.connectors]}


@dataclass(frozen=True, slots=True)
class StationNow:
    """A station's draw at one moment (the last meter values still in force)."""

    station: str
    at: datetime
    kw: float
    connectors_kw: tuple[tuple[int, float], ...]
    active_connectors: int
    """Connectors drawing power now."""
    active_sessions: int
    """Transactions in progress now."""

    @property
    def active(self) -> bool:
        """Drawing power or holding a session."""
        return self.active_connectors > 0 or self.active_sessions > 0


@dataclass(frozen=True, slots=True)
class ZoneWindow:
    """A zone's load in one window: its stations' windows of the same start, summed."""

    zone: str
    start: datetime
    end: datetime
    closed: bool
    avg_kw: float
    last_kw: float
    energy_kwh: float
    capacity_kw: float | None
    active_stations: int
    """Stations that drew power or held a session in the window."""
    stations: int
    """Stations with figures for this window."""

    @property
    def utilisation_pct(self) -> float | None:
        return utilisation_pct(self.avg_kw, self.capacity_kw)

    def to_json(self) -> dict[str, Any]:
        pct = self.utilisation_pct
        return {"start": iso(self.start), "end": iso(self.end), "closed": self.closed,
                "avg_kw": _r(self.avg_kw), "last_kw": _r(self.last_kw),
                "energy_kwh": _r(self.energy_kwh, 4), "capacity_kw": self.capacity_kw,
                "utilisation_pct": None if pct is None else _r(pct, 2),
                "active_stations": self.active_stations, "stations": self.stations}


def zone_window(zone: str, capacity_kw: float | None,
                windows: Sequence[StationWindow]) -> ZoneWindow:
    """The zone's window from its stations' windows, which must share one start."""
    if not windows:
        raise ValueError(f"zone {zone}: no station window to sum")
    start, end = windows[0].start, windows[0].end
    if any(w.start != start for w in windows):
        raise ValueError(f"zone {zone}: station windows of different starts")
    return ZoneWindow(
        zone, start, end, all(w.closed for w in windows), sum(w.avg_kw for w in windows),
        sum(w.last_kw for w in windows), sum(w.energy_kwh for w in windows), capacity_kw,
        sum(1 for w in windows if w.active_connectors or w.active_sessions), len(windows))


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits) + 0.0  # no -0.0 in JSON


_Sample = tuple[datetime, float]
_Session = tuple[datetime, str | None]


class StationWindows:
    """One station's tumbling windows: the open one's samples and the closed history.

    ``add_power`` / ``add_session`` take samples stamped with their own time; nothing
    reads a clock. A connector not declared for the station, a negative or non-finite
    kW, or a naive time is a ValueError (the caller filters bad input first)."""

    def __init__(self, station: str, connectors: Iterable[int], *,
                 window_s: float = DEFAULT_WINDOW_S, keep: int = DEFAULT_KEEP,
                 hold_s: float | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep: {keep} must be at least 1")
        if hold_s is not None and not (math.isfinite(hold_s) and hold_s > 0):
            raise ValueError(f"hold: {hold_s!r} s must be above 0")
        self.station = station
        self.connectors = tuple(sorted(set(connectors)))
        self.length = window_length(window_s)
        self.hold = None if hold_s is None else timedelta(seconds=hold_s)
        self.open_start: datetime | None = None
        self._samples: dict[int, list[_Sample]] = {n: [] for n in self.connectors}
        self._carry: dict[int, _Sample | None] = dict.fromkeys(self.connectors)
        """Each connector's last sample before the open window (its value carries in)."""
        self._sessions: dict[int, list[_Session]] = {n: [] for n in self.connectors}
        self._session_carry: dict[int, str | None] = dict.fromkeys(self.connectors)
        self._count = 0
        self.closed: deque[StationWindow] = deque(maxlen=keep)
        self.late = 0
        """Samples dropped because their window was already closed."""
        self.dropped = 0
        """Samples dropped because the open window was full."""

    # --- input ----------------------------------------------------------------------------

    def add_power(self, connector: int, at: datetime, kw: float) -> bool:
        """A meter value: ``kw`` drawn by ``connector`` from ``at`` on. False when it was
        dropped (late: its window is closed; or the window is full)."""
        self._check_connector(connector)
        kw = float(kw)
        if not math.isfinite(kw) or kw < 0:
            raise ValueError(f"station {self.station} connector {connector}: power "
                             f"{kw!r} kW must be a finite number >= 0")
        if not self._admit(at):
            return False
        samples = self._samples[connector]
        i = bisect.bisect_left(samples, (at,), key=lambda s: (s[0],))
        if i < len(samples) and samples[i][0] == at:
            samples[i] = (at, kw)  # the same instant again: the latest word wins
        else:
            samples.insert(i, (at, kw))
            self._count += 1
        return True

    def add_session(self, connector: int, at: datetime, transaction_id: str | None) -> bool:
        """A session started (``transaction_id``) or stopped (None) at ``at``; a meter value
        carrying a transaction id may be passed too (the session is in progress then).
        False when late."""
        self._check_connector(connector)
        if not self._admit(at):
            return False
        events = self._sessions[connector]
        bisect.insort(events, (at, transaction_id), key=lambda e: (e[0], e[1] is not None))
        self._count += 1
        return True

    def close_until(self, t: datetime) -> list[StationWindow]:
        """Close every window that ends at or before ``t`` (the caller's clock, usually a
        little behind now). Returns the windows closed; starts the station's windows when
        nothing came yet."""
        start = window_start(t, self.length)
        if self.open_start is None:
            self.open_start = start
            return []
        return self._roll(start)

    # --- output ---------------------------------------------------------------------------

    def current(self, now: datetime) -> StationWindow | None:
        """The open window as of ``now`` (None before the first sample or close)."""
        if self.open_start is None:
            return None
        end = self.open_start + self.length
        until = min(max(now, self.open_start), end)
        return self._view(self.open_start, until, closed=False)

    def history(self, n: int | None = None) -> list[StationWindow]:
        """The last ``n`` closed windows (all kept when None), oldest first."""
        items = list(self.closed)
        return items if n is None else items[len(items) - n:] if n > 0 else []

    def now(self, at: datetime) -> StationNow:
        """The station's draw at ``at``: each connector's last value still in force (a
        time in the open window or after it; an older one sees the open window's start)."""
        per = tuple((n, self._value_at(n, at)) for n in self.connectors)
        sessions = sum(1 for n in self.connectors if self._session_at(n, at) is not None)
        return StationNow(self.station, at, sum(kw for _, kw in per), per,
                          sum(1 for _, kw in per if kw > 0), sessions)

    # --- internals ------------------------------------------------------------------------

    def _check_connector(self, connector: int) -> None:
        if connector not in self._samples:
            raise ValueError(f"station {self.station}: connector {connector} is not one of "
                             f"its connectors {list(self.connectors)}")

    def _admit(self, at: datetime) -> bool:
        start = window_start(at, self.length)
        if self.open_start is None:
            self.open_start = start
        elif start < self.open_start:
            self.late += 1
            return False
        elif start > self.open_start:
            self._roll(start)
        if self._count >= MAX_SAMPLES_PER_WINDOW:
            self.dropped += 1
            return False
        return True

    def _roll(self, start: datetime) -> list[StationWindow]:
        """Close the open window and every one before ``start``; open ``start``'s."""
        assert self.open_start is not None
        out: list[StationWindow] = []
        keep = self.closed.maxlen or 1
        while self.open_start < start:
            window = self._view(self.open_start, self.open_start + self.length, closed=True)
            self.closed.append(window)
            out.append(window)
            self._carry_over()
            self.open_start += self.length
            if start - self.open_start > keep * self.length:
                # A silence longer than the history: only its last windows are kept, the
                # ones before would be pushed out at once (the carried value still holds).
                self.open_start = start - keep * self.length
        return out

    def _carry_over(self) -> None:
        for n in self.connectors:
            if self._samples[n]:
                self._carry[n] = self._samples[n][-1]
                self._samples[n] = []
            if self._sessions[n]:
                self._session_carry[n] = self._sessions[n][-1][1]
                self._sessions[n] = []
        self._count = 0

    def _points(self, n: int) -> list[_Sample]:
        carry = self._carry[n]
        return ([carry] if carry is not None else []) + self._samples[n]

    def _segments(self, n: int, start: datetime, end: datetime
                  ) -> list[tuple[datetime, datetime, float]]:
        """[a, b) stretches within [start, end) and the kW that holds over each."""
        points = self._points(n)
        out = []
        for i, (at, kw) in enumerate(points):
            stop = points[i + 1][0] if i + 1 < len(points) else end
            if self.hold is not None:
                stop = min(stop, at + self.hold)
            a, b = max(at, start), min(stop, end)
            if b > a:
                out.append((a, b, kw))
        return out

    def _value_at(self, n: int, t: datetime) -> float:
        points = self._points(n)
        i = bisect.bisect_right(points, (t,), key=lambda s: (s[0],)) - 1
        if i < 0:
            return 0.0
        at, kw = points[i]
        if self.hold is not None and t >= at + self.hold:
            return 0.0
        return kw

    def session_at(self, connector: int, t: datetime) -> str | None:
        """The transaction in progress on ``connector`` at ``t`` (a time in the open
        window or after it), None when none is."""
        self._check_connector(connector)
        return self._session_at(connector, t)

    def _session_at(self, n: int, t: datetime) -> str | None:
        current = self._session_carry[n]
        for at, tx in self._sessions[n]:
            if at > t:
                break
            current = tx
        return current

    def _view(self, start: datetime, until: datetime, *, closed: bool) -> StationWindow:
        """The window [start, start + length) with what is known up to ``until``."""
        end = start + self.length
        span = (until - start).total_seconds()
        per: list[ConnectorWindow] = []
        total_kw_s = 0.0
        drawing = 0
        steps: list[tuple[datetime, int, float]] = []
        """(time, 0 ends / 1 begins, kW): every connector's stretches, for the peak."""
        for n in self.connectors:
            kw_s = 0.0
            last = self._value_at(n, until - timedelta(microseconds=1) if closed else until)
            peak = last  # a value that arrived at ``until`` itself holds no time yet
            for a, b, kw in self._segments(n, start, until):
                kw_s += kw * (b - a).total_seconds()
                peak = max(peak, kw)
                steps += ((a, 1, kw), (b, 0, kw))
            total_kw_s += kw_s
            drawing += peak > 0
            per.append(ConnectorWindow(n, kw_s / span if span > 0 else last, peak, last,
                                       kw_s / 3600.0))
        last_kw = sum(c.last_kw for c in per)
        running = station_peak = 0.0
        for _, begins, kw in sorted(steps, key=lambda s: (s[0], s[1])):  # ends first
            running += kw if begins else -kw
            station_peak = max(station_peak, running)
        station_peak = max(station_peak, last_kw)
        txs = {(n, tx) for n in self.connectors
               for tx in [self._session_at(n, start)] + [tx for at, tx in self._sessions[n]
                                                         if start < at <= until]
               if tx is not None}
        samples = sum(1 for n in self.connectors for at, _ in self._samples[n] if at <= until)
        return StationWindow(
            self.station, start, end, until, closed,
            total_kw_s / span if span > 0 else last_kw, last_kw, station_peak,
            total_kw_s / 3600.0, len(txs), drawing, samples, tuple(per))
