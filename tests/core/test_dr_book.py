"""The DR event book: idempotent submission, states over time, RESTORE, zone demand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core.dr.book import (
    DrEvent,
    EventBook,
    EventState,
    SignalConflict,
    Submitted,
)
from gridshare.core.dr.signals import DrPriority, DrSignal, SignalType

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def sig(signal_id: str = "s1", *, zone: str = "Z1", kind: SignalType = SignalType.CURTAIL,
        kw: float = 90.0, start: float = 0, end: float = 60, priority: int = 2,
        source: str = "rest", received: float = -1) -> DrSignal:
    return DrSignal(signal_id, zone, kind, kw, minutes(start), minutes(end),
                    DrPriority(priority), minutes(received), source)


def test_submit_creates_then_redelivery_changes_nothing() -> None:
    book = EventBook()
    first = sig()
    outcome, event = book.submit(first, minutes(-1))
    assert outcome is Submitted.CREATED and event.signal == first
    again = sig(source="mqtt", received=5)  # same content, another channel and time
    outcome2, event2 = book.submit(again, minutes(5))
    assert outcome2 is Submitted.REDELIVERED and event2 is event
    assert event2.signal.source == "rest"  # the stored one, not the redelivery
    assert len(book) == 1


@pytest.mark.parametrize("change", [
    {"kw": 91.0}, {"zone": "Z2"}, {"kind": SignalType.SHED}, {"start": 1}, {"end": 61},
    {"priority": 1},
])
def test_a_conflict_raises_and_leaves_the_book_unchanged(change: dict[str, object]) -> None:
    book = EventBook()
    book.submit(sig(), minutes(-1))
    book.submit(sig("s2", zone="Z2", kw=10), minutes(-1))
    before = json.dumps(book.to_json())
    with pytest.raises(SignalConflict, match="'s1' already holds a different signal"):
        book.submit(sig(**change), minutes(2))  # type: ignore[arg-type]
    assert json.dumps(book.to_json()) == before


def test_a_conflicting_restore_ends_nothing() -> None:
    book = EventBook()
    book.submit(sig(), minutes(-1))
    book.submit(sig("r1", kind=SignalType.RESTORE, kw=0, start=50, end=51), minutes(-1))
    before = book.to_json()
    with pytest.raises(SignalConflict):
        book.submit(sig("r1", kind=SignalType.RESTORE, kw=0, start=10, end=11), minutes(2))
    assert book.to_json() == before
    assert book.get("s1") is not None and book.get("s1").ends_at() == minutes(50)  # type: ignore[union-attr]


def test_states_over_time_half_open() -> None:
    event = DrEvent(sig(start=10, end=20))
    assert event.state(minutes(9.99)) is EventState.SCHEDULED
    assert event.state(minutes(10)) is EventState.ACTIVE
    assert event.state(minutes(19.99)) is EventState.ACTIVE
    assert event.state(minutes(20)) is EventState.ENDED
    event.ended_at = minutes(15)
    assert event.ends_at() == minutes(15)
    assert event.state(minutes(15)) is EventState.ENDED
    event.ended_at = minutes(30)  # a RESTORE after the end does not prolong it
    assert event.ends_at() == minutes(20)


def test_restore_ends_equal_or_lower_urgency_only() -> None:
    book = EventBook()
    book.submit(sig("emergency", priority=1, kw=200), T0)
    book.submit(sig("economic", priority=2, kw=90), T0)
    book.submit(sig("optional", priority=3, kw=50), T0)
    book.submit(sig("other-zone", zone="Z2", priority=3), T0)
    book.submit(sig("later", start=40, end=70, priority=3), T0)
    book.submit(sig("r", kind=SignalType.RESTORE, kw=0, start=30, end=31, priority=2), T0)
    ended = {e.signal.signal_id: e.ended_at for e in book.events()}
    assert ended == {"emergency": None, "economic": minutes(30), "optional": minutes(30),
                     "other-zone": None, "later": None, "r": None}
    demand = book.zone_demand("Z1", minutes(35))
    assert demand is not None and demand.governing.signal.signal_id == "emergency"
    assert demand.target_kw == 200
    # an emergency RESTORE ends the emergency too, from its own start
    book.submit(sig("r2", kind=SignalType.RESTORE, kw=0, start=45, end=46, priority=1), T0)
    assert book.get("emergency").ends_at() == minutes(45)  # type: ignore[union-attr]
    assert book.get("later").ends_at() == minutes(45)  # type: ignore[union-attr]
    assert book.zone_demand("Z1", minutes(45)) is None
    # a RESTORE is stored but is never a demand
    assert [e.signal.signal_id for e in book.in_force("Z1", minutes(30.5))] == ["emergency"]


def test_restore_redelivered_is_idempotent() -> None:
    book = EventBook()
    book.submit(sig(), T0)
    restore = sig("r", kind=SignalType.RESTORE, kw=0, start=10, end=11)
    book.submit(restore, T0)
    rows = book.to_json()
    assert book.submit(restore, minutes(12))[0] is Submitted.REDELIVERED
    assert book.to_json() == rows


def test_zone_demand_rules() -> None:
    book = EventBook()
    assert book.zone_demand("Z1", T0) is None
    book.submit(sig("econ-big", priority=2, kw=300, start=0, end=60), T0)
    book.submit(sig("emerg-shed", priority=1, kind=SignalType.SHED, kw=100, start=10, end=30),
                T0)
    book.submit(sig("emerg-curtail", priority=1, kw=150, start=20, end=25), T0)
    book.submit(sig("z2", zone="Z2", kw=5, start=100, end=110), T0)
    d = book.zone_demand("Z1", minutes(5))
    assert d is not None and (d.target_kw, d.shed, d.governing.signal.signal_id) == (
        300, False, "econ-big")
    # the most urgent governs the mode; the target is the largest in force
    d = book.zone_demand("Z1", minutes(15))
    assert d is not None and (d.target_kw, d.shed, d.governing.signal.signal_id) == (
        300, True, "emerg-shed")
    assert [e.signal.signal_id for e in d.events] == ["econ-big", "emerg-shed"]
    # two emergencies: the larger target governs
    d = book.zone_demand("Z1", minutes(22))
    assert d is not None and (d.target_kw, d.shed, d.governing.signal.signal_id) == (
        300, False, "emerg-curtail")
    assert book.zones_in_force(minutes(22)) == ["Z1"]
    assert book.zones_in_force(minutes(105)) == ["Z2"]
    assert book.zones_in_force(minutes(60)) == []
    assert book.next_change(minutes(-5)) == minutes(0)
    assert book.next_change(minutes(0)) == minutes(10)
    assert book.next_change(minutes(22)) == minutes(25)
    assert book.next_change(minutes(60)) == minutes(100)
    assert book.next_change(minutes(110)) is None
    assert [e.signal.signal_id for e in book.events("Z1")] == [
        "econ-big", "emerg-shed", "emerg-curtail"]
    assert book.get("nope") is None


def test_next_change_follows_a_restore() -> None:
    book = EventBook()
    book.submit(sig(start=0, end=60), T0)
    book.submit(sig("r", kind=SignalType.RESTORE, kw=0, start=20, end=21), T0)
    assert book.next_change(minutes(1)) == minutes(20)


def test_persistence_round_trip() -> None:
    book = EventBook()
    book.submit(sig(source="openadr"), T0)
    book.submit(sig("r", kind=SignalType.RESTORE, kw=0, start=20, end=21, source="cli"), T0)
    book.submit(sig("z2", zone="Z2", kind=SignalType.SHED, kw=12.5, priority=1), T0)
    rows = json.loads(json.dumps(book.to_json()))
    again = EventBook.from_json(rows)
    assert again.to_json() == rows
    assert [(e.signal, e.ended_at) for e in again.events()] == [
        (e.signal, e.ended_at) for e in book.events()]
    assert again.get("s1").ended_at == minutes(20)  # type: ignore[union-attr]
    assert again.get("s1").signal.source == "openadr"  # type: ignore[union-attr]


@pytest.mark.parametrize(("rows", "match"), [
    ([{"signal_id": "x", "received_ts": "2026-11-30T12:00:00Z"}], "row 0: zone_id: missing"),
    ([5], "row 0: expected an object"),
    ([{**sig().to_json(), "ended_at": "soon"}], "row 0: ended_at: not an ISO-8601"),
    ([sig().to_json(), sig().to_json()], "row 1: signal_id 's1' repeated"),
    ([{k: v for k, v in sig().to_json().items() if k != "received_ts"}],
     "row 0: received_ts: missing"),
])
def test_a_damaged_store_is_refused(rows: list[object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EventBook.from_json(rows)  # type: ignore[arg-type]


_signals = st.builds(
    lambda i, zone, kind, kw, start, length, priority: sig(
        f"s{i}", zone=zone, kind=kind, kw=0.0 if kind is SignalType.RESTORE else kw,
        start=start, end=start + length, priority=priority),
    st.integers(0, 6), st.sampled_from(["Z1", "Z2"]), st.sampled_from(list(SignalType)),
    st.floats(0.5, 500), st.integers(0, 100), st.integers(1, 60), st.integers(1, 3))


@given(st.lists(_signals, max_size=12), st.integers(-5, 170))
def test_book_properties(signals: list[DrSignal], at: int) -> None:
    """Whatever arrives: each id stored once (first wins, conflicts change nothing), the
    zone demand is the largest in-force reduction, the book survives a round trip."""
    book = EventBook()
    first: dict[str, DrSignal] = {}
    for s in signals:
        before = book.to_json()
        try:
            outcome, _ = book.submit(s, T0)
        except SignalConflict:
            assert not first[s.signal_id].same_content(s)
            assert book.to_json() == before
            continue
        if s.signal_id in first:
            assert outcome is Submitted.REDELIVERED and book.to_json() == before
        else:
            first[s.signal_id] = s
    assert {e.signal.signal_id for e in book.events()} == set(first)
    now = minutes(at)
    for zone in ("Z1", "Z2"):
        demand = book.zone_demand(zone, now)
        active = [e for e in book.events(zone)
                  if e.reduces and e.state(now) is EventState.ACTIVE]
        assert (demand is None) == (not active)
        if demand is not None:
            assert demand.target_kw == max(e.signal.target_reduction_kw for e in active)
            assert demand.governing.signal.priority == min(e.signal.priority for e in active)
            assert demand.shed == (demand.governing.signal.signal_type is SignalType.SHED)
            assert zone in book.zones_in_force(now)
    change = book.next_change(now)
    assert change is None or change > now
    assert EventBook.from_json(book.to_json()).to_json() == book.to_json()
