"""The command ledger's rules, one row each: what a connector is counted at after a
sequence of commands, answers and boots (times in seconds from T0; failsafe 6 A; lease
60 s; settle 5 s)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.config import parse_site
from gridshare.core.ledger import ConnectorLedger, Effect, Ledger
from gridshare.drivers import CommandOutcome, CommandResult

from .conftest import t

SITE = """
site: one
voltage: 230
groups:
  - {id: g, max_current: 32, chargers: [a]}
chargers:
  - {id: a, max_current: 32, phases: 3, failsafe_current: 6}
"""
KEY = ("a", 1)
LEASE_S = 60.0
SETTLE_S = 5.0

ACCEPT = CommandResult.ACCEPTED
REJECT = CommandResult.REJECTED
TIMEOUT = CommandResult.TIMEOUT
LOST = CommandResult.LOST
OFFLINE = CommandResult.OFFLINE
SUPERSEDED = CommandResult.SUPERSEDED


@dataclass(frozen=True)
class Send:
    amps: float
    at: float = 0.0


@dataclass(frozen=True)
class Answer:
    nth: int
    """Which command (0 = the first sent)."""
    result: CommandResult
    at: float = 0.0
    seq: int | None = None
    valid_to: float | None = None
    effect: Effect | None = None
    """The effect this answer must have, when the row says."""


@dataclass(frozen=True)
class Boot:
    seq: int | None


Step = Send | Answer | Boot


def run(steps: list[Step], tail_s: float = 0.0) -> Ledger:
    ledger = Ledger(parse_site(SITE, "one.yaml"), tail_s=tail_s)
    ids: list[int] = []
    for step in steps:
        if isinstance(step, Send):
            ids.append(ledger.sent(KEY, step.amps, t(step.at), LEASE_S))
        elif isinstance(step, Answer):
            sent = step.result not in (OFFLINE, SUPERSEDED)
            outcome = CommandOutcome(step.result, sent=sent, answer_seq=step.seq,
                                     valid_to=None if step.valid_to is None
                                     else t(step.valid_to))
            effect = ledger.outcome(KEY, ids[step.nth], outcome, t(step.at), SETTLE_S)
            if step.effect is not None:
                assert effect is step.effect, step
        else:
            ledger.boot("a", step.seq)
    return ledger


CASES: list[tuple[str, list[Step], list[tuple[float, float]]]] = [
    ("nothing sent: the failsafe", [], [(0, 6.0)]),
    ("in flight counts at its value", [Send(32)], [(0, 32.0), (1000, 32.0)]),
    ("in flight below the failsafe: the failsafe", [Send(0)], [(0, 6.0)]),
    ("accepted: in force", [Send(16), Answer(0, ACCEPT, effect=Effect.APPLIED)],
     [(0, 16.0)]),
    ("accepted: in force until its lease ends, then the failsafe",
     [Send(0), Answer(0, ACCEPT)], [(59.9, 0.0), (60, 6.0)]),
    ("accepted: until the validTo the charger reported",
     [Send(0), Answer(0, ACCEPT, valid_to=30)], [(29.9, 0.0), (30, 6.0)]),
    ("accepted decrease: the old value settles for settle_s",
     [Send(32), Answer(0, ACCEPT), Send(16, 10), Answer(1, ACCEPT, 10)],
     [(14.9, 32.0), (15, 16.0)]),
    ("rejected raise: the profile in force stays",
     [Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, REJECT, 1, effect=Effect.REJECTED)],
     [(1, 16.0)]),
    ("rejected decrease: the old value stays in force",
     [Send(32), Answer(0, ACCEPT), Send(16, 1), Answer(1, REJECT, 1)], [(1, 32.0), (59, 32.0),
                                                                       (60, 6.0)]),
    ("timeout: counted until its own validTo",
     [Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, TIMEOUT, 11, valid_to=40,
                                                       effect=Effect.UNKNOWN)],
     [(39.9, 32.0), (40, 16.0)]),
    ("link lost, no validTo known: counted until send time + lease",
     [Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, LOST, 2)],
     [(60.9, 32.0), (61, 6.0)]),
    ("offline: never sent, dropped", [Send(16), Answer(0, ACCEPT), Send(32, 1),
                                      Answer(1, OFFLINE, 1, effect=Effect.NOT_APPLIED)],
     [(1, 16.0)]),
    ("superseded before sending: dropped", [Send(16), Answer(0, ACCEPT), Send(32, 1),
                                            Answer(1, SUPERSEDED, 1)], [(1, 16.0)]),
    ("a newer send never forgets an unanswered raise",
     [Send(16), Answer(0, ACCEPT), Send(32, 1), Send(16, 2)], [(2, 32.0)]),
    ("a newer send never forgets a raise with unknown outcome",
     [Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, TIMEOUT, 11), Send(16, 12),
      Answer(2, TIMEOUT, 22)], [(22, 32.0), (60.9, 32.0), (61, 16.0)]),
    ("a newer accept voids an older unknown outcome (which settles)",
     [Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, TIMEOUT, 11), Send(16, 12),
      Answer(2, ACCEPT, 12)], [(16.9, 32.0), (17, 16.0)]),
    ("a newer accept voids an older command still in flight",
     [Send(32), Send(16, 1), Answer(1, ACCEPT, 2), Answer(0, ACCEPT, 3, effect=Effect.VOID)],
     [(6.9, 32.0), (7, 16.0)]),
    ("an older accept arriving after a newer one changes nothing",
     [Send(32), Send(16, 1), Answer(1, ACCEPT, 2, seq=2), Answer(0, TIMEOUT, 3)],
     [(7, 16.0)]),
    ("boot voids an accept answered before it",
     [Send(32), Answer(0, ACCEPT, seq=5), Boot(7)], [(0, 6.0)]),
    ("boot processed after a later answer keeps that answer",
     [Send(32), Answer(0, ACCEPT, seq=9), Boot(7)], [(0, 32.0)]),
    ("an answer from before a boot processed after it is void",
     [Send(32), Boot(7), Answer(0, ACCEPT, seq=5, effect=Effect.VOID)], [(0, 6.0)]),
    ("an answer from after a boot processed after it applies",
     [Send(0), Boot(7), Answer(0, ACCEPT, seq=8, effect=Effect.APPLIED)],
     [(4.9, 6.0), (5, 0.0)]),  # down from its failsafe: settles first
    ("boot without frame numbers voids what is in force",
     [Send(0), Answer(0, ACCEPT, seq=None), Boot(None)], [(0, 6.0)]),
    ("boot keeps commands in flight and unknown outcomes",
     [Send(0), Answer(0, ACCEPT, seq=1), Send(20, 1), Answer(1, LOST, 2), Send(24, 3),
      Boot(4)], [(3, 24.0)]),
]


@pytest.mark.parametrize(("steps", "expected"), [(s, e) for _, s, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_counted_value(steps: list[Step], expected: list[tuple[float, float]]) -> None:
    ledger = run(steps)
    for at, amps in expected:
        assert ledger.counted_a(KEY, t(at)) == amps, f"at {at} s"


def test_a_lapse_is_a_decrease_the_car_follows_within_tail_s() -> None:
    """At its validTo the charger falls back to its failsafe, but the car takes as long to
    follow as after any decrease: what lapsed still counts for ``tail_s``."""
    ledger = run([Send(32), Answer(0, ACCEPT)], tail_s=SETTLE_S)
    assert [ledger.counted_a(KEY, t(s)) for s in (59.9, 60, 64.9, 65)] == [32, 32, 32, 6]
    entry = ledger[KEY]
    assert entry.next_change(t(60), tail_s=SETTLE_S) == t(65)
    assert entry.worst_and_next_change(6.0, t(62), tail_s=SETTLE_S) == (32.0, t(65))
    ledger.prune(t(64))
    assert ledger[KEY].in_force is not None  # still counted: kept
    ledger.prune(t(65))
    assert ledger[KEY].in_force is None
    # An unknown outcome too, and a later accept settles from it.
    ledger = run([Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, TIMEOUT, 2, valid_to=30),
                  Send(10, 32), Answer(2, ACCEPT, 32)], tail_s=SETTLE_S)
    assert [ledger.counted_a(KEY, t(s)) for s in (32, 36.9, 37)] == [32, 32, 10]


def test_an_offline_charger_counts_at_least_its_failsafe() -> None:
    ledger = run([Send(0), Answer(0, ACCEPT)])
    assert ledger.counted_a(KEY, t(5)) == 0.0
    assert ledger.counted_a(KEY, t(5), offline=True) == 6.0
    ledger = run([Send(20), Answer(0, ACCEPT)])
    assert ledger.counted_a(KEY, t(1), offline=True) == 20.0


def test_rejection_is_kept_until_a_later_accept() -> None:
    ledger = run([Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, REJECT, 1)])
    rejection = ledger[KEY].rejected
    assert rejection is not None and (rejection.value_a, rejection.at) == (32.0, t(1))
    ledger = run([Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, REJECT, 1),
                  Send(20, 2), Answer(2, ACCEPT, 2)])
    assert ledger[KEY].rejected is None


def test_prune_forgets_only_what_time_has_ended() -> None:
    ledger = run([Send(16), Answer(0, ACCEPT), Send(32, 1), Answer(1, TIMEOUT, 2,
                                                                    valid_to=30)])
    ledger.prune(t(29))
    assert len(ledger[KEY].unknown) == 1
    ledger.prune(t(30))
    assert ledger[KEY].unknown == ()
    assert ledger[KEY].in_force is not None
    ledger.prune(t(60))
    assert ledger[KEY] == ConnectorLedger()


def test_next_change_names_the_earliest_time_the_count_may_fall() -> None:
    ledger = run([Send(32), Answer(0, ACCEPT), Send(16, 1), Answer(1, ACCEPT, 1),
                  Send(24, 2), Answer(2, TIMEOUT, 3, valid_to=20)])
    entry = ledger[KEY]
    assert entry.next_change(t(3)) == t(6)  # the settle window of 32 A
    assert entry.next_change(t(6)) == t(20)  # the unknown 24 A
    assert entry.next_change(t(20)) == t(61)  # the lease of the 16 A in force


# --- property: the counted value covers everything the charger may really obey ------------

@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, float, int]]:
    ops = st.tuples(st.sampled_from(["send", "answer", "boot", "wait"]),
                    st.sampled_from([0.0, 6.0, 10.0, 16.0, 32.0]), st.integers(0, 5))
    return draw(st.lists(ops, max_size=25))


@settings(max_examples=300, deadline=None)
@given(histories(), st.lists(st.sampled_from(list(CommandResult)), min_size=25,
                             max_size=25))
def test_counted_covers_every_value_the_charger_may_obey(
        history: list[tuple[str, float, int]], results: list[CommandResult]) -> None:
    """A charger that applies commands in order (one call at a time), loses them at boot
    and whose answers may be lost: whatever it is obeying, the ledger counts at least it."""
    ledger = Ledger(parse_site(SITE, "one.yaml"))
    now = 0.0
    frame = 0
    queue: list[tuple[int, float, float]] = []  # id, A, sent at: not answered yet, in order
    obeyed: tuple[float, float] | None = None  # value, valid until (s)
    for (op, amps, n), result in zip(history, results, strict=False):
        if op == "send":
            queue.append((ledger.sent(KEY, amps, t(now), LEASE_S), amps, now))
        elif op == "answer" and queue:
            command_id, value, sent_at = queue.pop(0)
            frame += 1
            # Accepted: applied. Unanswered: applied or not (n decides). Else not applied.
            if result is ACCEPT or (result in (TIMEOUT, LOST) and n % 2 == 0):
                obeyed = (value, sent_at + LEASE_S)  # the validTo is in the frame
            outcome = CommandOutcome(result, sent=result not in (OFFLINE, SUPERSEDED),
                                     answer_seq=frame)
            ledger.outcome(KEY, command_id, outcome, t(now), SETTLE_S)
        elif op == "boot":
            frame += 1
            obeyed = None
            ledger.boot("a", frame)
        else:
            now += n * 7.0
        truth = obeyed[0] if obeyed is not None and now < obeyed[1] else 6.0
        assert ledger.counted_a(KEY, t(now)) >= truth
        entry = ledger[KEY]
        for offline in (False, True):
            for margin_s, tail_s in ((0.0, 0.0), (20.0, 0.0), (0.0, 5.0), (20.0, 5.0)):
                # The decision's one-call shortcut says exactly what the two calls say.
                assert entry.worst_and_next_change(6.0, t(now), offline=offline,
                                                   lapse_margin_s=margin_s, tail_s=tail_s) == \
                    (entry.counted_a(6.0, t(now), offline=offline, lapse_margin_s=margin_s,
                                     tail_s=tail_s),
                     entry.next_change(t(now), margin_s, tail_s))
        assert ledger.counted_a(KEY, t(now) + timedelta(seconds=1)) >= \
            (obeyed[0] if obeyed is not None and now + 1 < obeyed[1] else 6.0)
