"""The V2X book: every value that may be in force is counted until it certainly is not,
as the ledger does for current setpoints; the guard then counts both ends."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Charger, Connector, ConnectorKey, Group, Policy, Topology
from gridshare.core.v2x_book import V2xBook
from gridshare.drivers import CommandOutcome, CommandResult

from .strategies import examples, snapshots, topologies

T0 = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
KEY = ("a", 1)
ACCEPTED = CommandOutcome(CommandResult.ACCEPTED)
REJECTED = CommandOutcome(CommandResult.REJECTED)
TIMEOUT = CommandOutcome(CommandResult.TIMEOUT)
OFFLINE = CommandOutcome(CommandResult.OFFLINE, sent=False)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_accepted_counts_until_its_valid_to() -> None:
    book = V2xBook()
    cid = book.sent(KEY, -5000, T0, 60)
    assert book.bounds(at(1)) == {KEY: (-5000, 0.0)}  # in flight: it or the plain one
    book.outcome(KEY, cid, ACCEPTED)
    assert book.bounds(at(1)) == {KEY: (-5000, -5000)}
    assert book.bounds(at(60)) == {}


def test_rejected_or_never_sent_leaves_the_old_value() -> None:
    book = V2xBook()
    book.outcome(KEY, book.sent(KEY, -3000, T0, 60), ACCEPTED)
    book.outcome(KEY, book.sent(KEY, -9000, at(1), 60), REJECTED)
    book.outcome(KEY, book.sent(KEY, 7000, at(2), 60), OFFLINE)
    assert book.bounds(at(3)) == {KEY: (-3000, -3000)}


def test_unknown_counts_at_the_worst_of_old_and_new_until_its_valid_to() -> None:
    book = V2xBook()
    book.outcome(KEY, book.sent(KEY, -3000, T0, 100), ACCEPTED)
    book.outcome(KEY, book.sent(KEY, 4000, at(10), 30), TIMEOUT)
    assert book.bounds(at(20)) == {KEY: (-3000, 4000)}
    assert book.bounds(at(40)) == {KEY: (-3000, -3000)}  # the unknown one lapsed


def test_a_newer_accepted_command_settles_older_unknowns() -> None:
    book = V2xBook()
    book.outcome(KEY, book.sent(KEY, -11_000, T0, 100), TIMEOUT)
    book.outcome(KEY, book.sent(KEY, -2000, at(1), 100), ACCEPTED)
    assert book.bounds(at(2)) == {KEY: (-2000, -2000)}


def _site() -> Topology:
    chargers = {cid: Charger(id=cid, phases=3, phase=None, max_current=16, min_current=6,
                             failsafe_current=0, priority=0,
                             connectors=(Connector(cid, 1, 16, 6),), group="main", v2x=True)
                for cid in ("a", "b")}
    groups = {"main": Group("main", 25.0, None, 3, Policy.EQUAL, None,
                            chargers=tuple(chargers))}
    return Topology(site="s", voltage=230.0, policy=Policy.EQUAL, groups=groups,
                    chargers=chargers, roots=("main",))


def test_check_counts_an_unknown_discharge_against_a_new_one() -> None:
    book = V2xBook()
    snapshot = Snapshot(now=at(5), connectors={}, groups={})
    assert book.check(_site(), snapshot, {}, {("b", 1): -11_000}) == []
    book.outcome(KEY, book.sent(KEY, -11_000, T0, 60), TIMEOUT)
    assert book.check(_site(), snapshot, {}, {("b", 1): -11_000})  # 2 × 15.9 A > 25 A
    later = Snapshot(now=at(61), connectors={}, groups={})
    assert book.check(_site(), later, {}, {("b", 1): -11_000}) == []


_OUTCOMES = st.sampled_from([ACCEPTED, REJECTED, TIMEOUT, OFFLINE, None])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(-11_000, 11_000), st.integers(1, 60), _OUTCOMES),
                max_size=8), st.integers(0, 200))
def test_bounds_hold_every_value_that_may_be_in_force(
        commands: list[tuple[float, int, CommandOutcome | None]], probe: int) -> None:
    """Reference: a value may be in force at t if it was sent, its validTo is after t, it
    was not rejected or unsent, and no newer command was accepted before t."""
    book = V2xBook()
    sent: list[tuple[int, float, datetime, CommandOutcome | None]] = []
    for i, (watts, valid_s, outcome) in enumerate(commands):
        cid = book.sent(KEY, watts, at(i), valid_s)
        if outcome is not None:
            book.outcome(KEY, cid, outcome)
        sent.append((i, watts, at(i) + timedelta(seconds=valid_s), outcome))
    now = at(probe / 2)
    newest_accepted = max((i for i, _, _, o in sent if o is ACCEPTED), default=-1)
    possible = [w for i, w, valid_to, o in sent
                if valid_to > now and i >= newest_accepted
                and o not in (REJECTED, OFFLINE)]
    bounds = book.bounds(now).get(KEY)
    for watts in possible:
        assert bounds is not None and bounds[0] <= watts <= bounds[1]


_DISCHARGE = st.one_of(st.floats(-2_000, 0), st.floats(-2_000, 0), st.floats(-30_000, 0),
                       st.just(0.0))
_ANY_W = st.one_of(_DISCHARGE, st.floats(0, 30_000),
                   st.sampled_from([math.nan, -math.inf, math.inf]))
"""Discharges only (the frequency service's case: the shortcut), or with charges and
non-finite values too (the full check then decides)."""
_MOSTLY_V2X = st.sampled_from([True, True, True, False])


@st.composite
def _books(draw: st.DrawFn) -> tuple[Topology, Snapshot, V2xBook, dict[ConnectorKey, float]]:
    """A random site (some chargers not v2x), a book of commands with random outcomes on
    its connectors (and one it does not have), and new setpoints."""
    topology = draw(topologies(max_chargers=12))
    chargers = {cid: dataclasses.replace(c, v2x=draw(_MOSTLY_V2X))
                for cid, c in topology.chargers.items()}
    topology = dataclasses.replace(topology, chargers=chargers, _ancestors={}, _cache={})
    keys = [c.key for c in topology.connectors()]
    if draw(st.integers(0, 3)) == 0:
        keys.append(("nowhere", 1))  # a connector the site does not have
    watts = _DISCHARGE if draw(st.booleans()) else _ANY_W
    book = V2xBook()
    for i in range(draw(st.integers(0, 10))):
        key = draw(st.sampled_from(keys))
        cid = book.sent(key, draw(watts), at(i), draw(st.integers(1, 30)))
        outcome = draw(_OUTCOMES)
        if outcome is not None:
            book.outcome(key, cid, outcome)
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    new_w = {key: draw(watts) for key in chosen}
    snapshot = draw(snapshots(topology))
    return topology, dataclasses.replace(snapshot, now=at(draw(st.integers(0, 40)))), \
        book, new_w


@settings(max_examples=examples(300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_books(), st.floats(0.0, 1.0))
def test_passes_is_exactly_not_check(
        case: tuple[Topology, Snapshot, V2xBook, dict[ConnectorKey, float]],
        share: float) -> None:
    """The one-pass shortcut the frequency service bisects with agrees with the full
    four-pass check, on the setpoints and on every share of their discharges (as the
    service scales them)."""
    topology, snapshot, book, new_w = case
    counted = {c.key: 8.0 for c in topology.connectors()}
    for values in (new_w, {k: w * share if w < 0 else w for k, w in new_w.items()}):
        full = book.check(topology, snapshot, counted, values)
        assert book.passes(topology, snapshot, lambda: counted, values) is (not full)


def test_passes_agrees_on_a_refused_unknown_discharge() -> None:
    book = V2xBook()
    snapshot = Snapshot(now=at(5), connectors={}, groups={})
    assert book.passes(_site(), snapshot, dict, {("b", 1): -11_000})
    book.outcome(KEY, book.sent(KEY, -11_000, T0, 60), TIMEOUT)
    assert not book.passes(_site(), snapshot, dict, {("b", 1): -11_000})
    assert book.passes(_site(), snapshot, dict, {("b", 1): -3_000})  # 15.9 + 4.3 A <= 25 A
