"""The V2X book: every value that may be in force is counted until it certainly is not,
as the ledger does for current setpoints; the guard then counts both ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Charger, Connector, Group, Policy, Topology
from gridshare.core.v2x_book import V2xBook
from gridshare.drivers import CommandOutcome, CommandResult

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
