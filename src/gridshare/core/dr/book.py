"""The event book: every signal received, what is in force in each zone at a given time.

Pure: ``now`` is passed in. Submitting is idempotent (a redelivery changes nothing) and
all-or-nothing (a conflicting signal leaves the book as it was). An event is in force on
the half-open interval ``[start_ts, ends_at())``: at its end it is over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from gridshare.core.dr.signals import (
    DrSignal,
    SignalInvalid,
    SignalType,
    iso,
    parse_time,
    signal_from_json,
)


class EventState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(slots=True)
class DrEvent:
    """A stored signal and, when a RESTORE ended it early, when."""

    signal: DrSignal
    ended_at: datetime | None = None

    def ends_at(self) -> datetime:
        """When it stops being in force: its end_ts, or earlier if a RESTORE ended it."""
        end = self.signal.end_ts
        return end if self.ended_at is None or self.ended_at > end else self.ended_at

    def state(self, now: datetime) -> EventState:
        if now < self.signal.start_ts:
            return EventState.SCHEDULED
        if now >= self.ends_at():
            return EventState.ENDED
        return EventState.ACTIVE

    @property
    def reduces(self) -> bool:
        """A CURTAIL or SHED: asks for a reduction (a RESTORE does not)."""
        return self.signal.signal_type is not SignalType.RESTORE


class Submitted(StrEnum):
    CREATED = "created"
    REDELIVERED = "redelivered"


class SignalConflict(ValueError):
    """A signal reuses a stored signal_id with different content."""

    def __init__(self, stored: DrSignal, offered: DrSignal) -> None:
        self.stored = stored
        self.offered = offered
        differ = [f for f in ("zone_id", "signal_type", "target_reduction_kw", "start_ts",
                              "end_ts", "priority")
                  if getattr(stored, f) != getattr(offered, f)]
        super().__init__(f"signal_id {stored.signal_id!r} already holds a different signal "
                         f"(differs in {', '.join(differ)})")


@dataclass(frozen=True)
class ZoneDemand:
    """What a zone must shed now: the largest reduction among its in-force CURTAIL/SHED
    events; ``governing`` is the most urgent of them (ties: the larger target) and decides
    the mode (``shed``: pause whole stations)."""

    zone: str
    target_kw: float
    shed: bool
    governing: DrEvent
    events: tuple[DrEvent, ...]


class EventBook:
    """Every DR event received, keyed by signal_id (submission order kept)."""

    def __init__(self, events: Iterable[DrEvent] = ()) -> None:
        self._events: dict[str, DrEvent] = {}
        for event in events:
            self._events[event.signal.signal_id] = event

    def __len__(self) -> int:
        return len(self._events)

    def submit(self, signal: DrSignal, now: datetime) -> tuple[Submitted, DrEvent]:
        """Store a signal. The same content again is a redelivery (the stored event is
        returned, nothing changes); a different one under a known id raises
        :class:`SignalConflict` and changes nothing. A RESTORE is stored too, and ends the
        zone's stored CURTAIL/SHED events of equal or lower urgency that are in force at its
        start_ts (an event that starts later is a new one and stays). ``now`` is when it
        arrived; the book keeps no clock."""
        stored = self._events.get(signal.signal_id)
        if stored is not None:
            if stored.signal.same_content(signal):
                return Submitted.REDELIVERED, stored
            raise SignalConflict(stored.signal, signal)
        event = DrEvent(signal)
        if signal.signal_type is SignalType.RESTORE:
            at = signal.start_ts
            for other in self._events.values():
                s = other.signal
                if (other.reduces and s.zone_id == signal.zone_id
                        and s.priority >= signal.priority
                        and s.start_ts <= at < other.ends_at()):
                    other.ended_at = at
        self._events[signal.signal_id] = event
        return Submitted.CREATED, event

    def events(self, zone: str | None = None) -> list[DrEvent]:
        """Stored events (RESTOREs included), by start_ts then signal_id."""
        found = [e for e in self._events.values() if zone is None or e.signal.zone_id == zone]
        return sorted(found, key=lambda e: (e.signal.start_ts, e.signal.signal_id))

    def get(self, signal_id: str) -> DrEvent | None:
        return self._events.get(signal_id)

    def in_force(self, zone: str, now: datetime) -> list[DrEvent]:
        """The zone's CURTAIL/SHED events active at ``now``, by start_ts."""
        return [e for e in self.events(zone)
                if e.reduces and e.state(now) is EventState.ACTIVE]

    def zone_demand(self, zone: str, now: datetime) -> ZoneDemand | None:
        """The zone's reduction at ``now``; None when no event is in force there."""
        active = self.in_force(zone, now)
        if not active:
            return None
        governing = min(active, key=lambda e: (e.signal.priority,
                                               -e.signal.target_reduction_kw,
                                               e.signal.start_ts, e.signal.signal_id))
        target = max(e.signal.target_reduction_kw for e in active)
        return ZoneDemand(zone, target, governing.signal.signal_type is SignalType.SHED,
                          governing, tuple(active))

    def zones_in_force(self, now: datetime) -> list[str]:
        """Zones with an event in force at ``now``, sorted."""
        return sorted({e.signal.zone_id for e in self._events.values()
                       if e.reduces and e.state(now) is EventState.ACTIVE})

    def next_change(self, now: datetime) -> datetime | None:
        """The next time after ``now`` when some CURTAIL/SHED event starts or ends (when
        the zones' demand may change), or None."""
        best: datetime | None = None
        for e in self._events.values():
            if not e.reduces:
                continue
            for at in (e.signal.start_ts, e.ends_at()):
                if at > now and (best is None or at < best):
                    best = at
        return best

    def to_json(self) -> list[dict[str, Any]]:
        """Rows to persist (submission order): the wire shape plus source and ended_at."""
        return [{**e.signal.to_json(), "source": e.signal.source,
                 "ended_at": None if e.ended_at is None else iso(e.ended_at)}
                for e in self._events.values()]

    @classmethod
    def from_json(cls, rows: Iterable[Mapping[str, Any]]) -> EventBook:
        """The book :meth:`to_json` wrote; ValueError naming the row and field when a row is
        not one (a damaged store is refused, not half-loaded)."""
        events: list[DrEvent] = []
        seen: set[str] = set()
        for i, row in enumerate(rows):
            try:
                if not isinstance(row, Mapping):
                    raise SignalInvalid(None, "expected an object")
                data = {k: v for k, v in row.items() if k not in ("source", "ended_at")}
                if "received_ts" not in data:
                    raise SignalInvalid("received_ts", "missing")
                source = row.get("source", "rest")
                if not isinstance(source, str):
                    raise SignalInvalid("source", "expected a string")
                zone = data.get("zone_id")
                zones = {zone} if isinstance(zone, str) else set()
                received = parse_time(data["received_ts"], "received_ts")
                signal = signal_from_json(data, zones=zones, now=received, source=source)
                ended = row.get("ended_at")
                ended_at = None if ended is None else parse_time(ended, "ended_at")
            except SignalInvalid as exc:
                raise ValueError(f"DR event row {i}: {exc}") from exc
            if signal.signal_id in seen:
                raise ValueError(f"DR event row {i}: signal_id {signal.signal_id!r} repeated")
            seen.add(signal.signal_id)
            events.append(DrEvent(signal, ended_at))
        return cls(events)
