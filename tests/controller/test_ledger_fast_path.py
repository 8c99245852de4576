"""The ledger's per-answer fast paths say exactly what its plain rules say.

``ConnectorLedger.counted_a`` and ``record_outcome`` run for every answer (1,000 per limit
change), so they take shortcuts: one branch per case of what is in force, no
``dataclasses.replace``, no scan when one command is in flight. The reference functions
below are the rules written out plainly (as the ledger had them before the shortcuts);
hypothesis checks both agree on any ledger, time and outcome.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.ledger import (
    ConnectorLedger,
    Effect,
    InForce,
    Rejection,
    Sent,
    Settling,
    Unknown,
    record_outcome,
)
from gridshare.drivers import CommandOutcome, CommandResult

from .conftest import t

AMPS = st.sampled_from([0.0, 6.0, 10.0, 16.0, 32.0])
SECONDS = st.integers(0, 120).map(float)


def reference_counted_a(entry: ConnectorLedger, failsafe_a: float, now: datetime, *,
                        offline: bool, lapse_margin_s: float, tail_s: float) -> float:
    """Max of: in force (or the failsafe when none or lapsed), the failsafe when offline
    or lapsing, what was in force for ``tail_s`` after its validTo, every in-flight value,
    every unknown one until its validTo plus ``tail_s``, every settling one."""
    value = entry.effective_a(failsafe_a, now)
    in_force = entry.in_force
    lapsing = False
    if lapse_margin_s > 0 and in_force is not None and in_force.valid_to is not None:
        lease_s = (in_force.valid_to - in_force.sent_at).total_seconds()
        lapsing = now >= in_force.valid_to - timedelta(seconds=min(lapse_margin_s,
                                                                   lease_s / 4))
    if offline or lapsing:
        value = max(value, failsafe_a)
    tail = timedelta(seconds=tail_s)
    if tail_s > 0 and in_force is not None and in_force.valid_to is not None and \
            in_force.valid_to <= now < in_force.valid_to + tail:
        value = max(value, in_force.value_a)
    for sent in entry.in_flight:
        value = max(value, sent.value_a)
    for unknown in entry.unknown:
        if now < unknown.valid_to + tail:
            value = max(value, unknown.value_a)
    for settling in entry.settling:
        if now < settling.until:
            value = max(value, settling.value_a)
    return value


def reference_record_outcome(entry: ConnectorLedger, command_id: int,
                             outcome: CommandOutcome, now: datetime, *, failsafe_a: float,
                             settle_s: float, boot_seq: int | None,
                             ) -> tuple[ConnectorLedger, Effect]:
    sent = next((s for s in entry.in_flight if s.id == command_id), None)
    if sent is None:
        return entry, Effect.VOID
    entry = replace(entry, in_flight=tuple(s for s in entry.in_flight if s.id != command_id))
    if outcome.result is CommandResult.ACCEPTED:
        before_boot = (boot_seq is not None and outcome.answer_seq is not None
                       and outcome.answer_seq < boot_seq)
        older = entry.in_force is not None and entry.in_force.command_id > command_id
        if before_boot or older:
            return entry, Effect.VOID
        old = entry.effective_a(failsafe_a, now)
        tail = timedelta(seconds=settle_s)
        in_force = entry.in_force
        if in_force is not None and in_force.valid_to is not None and \
                now < in_force.valid_to + tail:
            old = max(old, in_force.value_a)
        for s in entry.in_flight:
            if s.id < sent.id:
                old = max(old, s.value_a)
        for u in entry.unknown:
            if u.command_id < sent.id and now < u.valid_to + tail:
                old = max(old, u.value_a)
        settling = tuple(s for s in entry.settling if now < s.until)
        if settle_s > 0 and old > sent.value_a:
            settling = (*settling, Settling(old, now + tail))
        valid_to = outcome.valid_to if outcome.valid_to is not None else sent.valid_to
        return ConnectorLedger(
            InForce(sent.id, sent.value_a, sent.sent_at, valid_to, outcome.answer_seq),
            tuple(s for s in entry.in_flight if s.id > sent.id),
            tuple(u for u in entry.unknown if u.command_id > sent.id), settling, None,
        ), Effect.APPLIED
    if outcome.result is CommandResult.REJECTED:
        return replace(entry, rejected=Rejection(command_id, sent.value_a, now,
                                                 outcome.detail)), Effect.REJECTED
    if outcome.unknown:
        valid_to = outcome.valid_to if outcome.valid_to is not None else sent.valid_to
        return replace(entry, unknown=(*entry.unknown, Unknown(
            command_id, sent.value_a, valid_to, outcome.result))), Effect.UNKNOWN
    return entry, Effect.NOT_APPLIED


@st.composite
def ledgers(draw: st.DrawFn) -> ConnectorLedger:
    """Any connector ledger: ids increase in the order commands were sent."""
    ids = iter(range(1, 100))
    in_force = None
    if draw(st.booleans()):
        sent_at = draw(SECONDS)
        lease = draw(st.one_of(st.none(), st.integers(1, 90).map(float)))
        in_force = InForce(next(ids), draw(AMPS), t(sent_at),
                           None if lease is None else t(sent_at + lease),
                           draw(st.one_of(st.none(), st.integers(0, 20))))
    unknown = tuple(Unknown(next(ids), draw(AMPS), t(draw(SECONDS)), CommandResult.TIMEOUT)
                    for _ in range(draw(st.integers(0, 2))))
    in_flight = tuple(Sent(next(ids), draw(AMPS), t(at := draw(SECONDS)), t(at + 60))
                      for _ in range(draw(st.integers(0, 3))))
    settling = tuple(Settling(draw(AMPS), t(draw(SECONDS)))
                     for _ in range(draw(st.integers(0, 2))))
    return ConnectorLedger(in_force, in_flight, unknown, settling, None)


@settings(max_examples=500, deadline=None)
@given(ledgers(), AMPS, SECONDS, st.booleans(), st.sampled_from([0.0, 20.0]),
       st.sampled_from([0.0, 5.0]))
def test_counted_a_is_the_plain_rule(entry: ConnectorLedger, failsafe_a: float,
                                     now_s: float, offline: bool, margin_s: float,
                                     tail_s: float) -> None:
    now = t(now_s)
    assert entry.counted_a(failsafe_a, now, offline=offline, lapse_margin_s=margin_s,
                           tail_s=tail_s) == \
        reference_counted_a(entry, failsafe_a, now, offline=offline,
                            lapse_margin_s=margin_s, tail_s=tail_s)


@settings(max_examples=500, deadline=None)
@given(ledgers(), st.integers(0, 8), st.sampled_from(list(CommandResult)),
       st.one_of(st.none(), st.integers(0, 20)), st.one_of(st.none(), st.integers(0, 20)),
       SECONDS, st.sampled_from([0.0, 5.0]), st.booleans())
def test_record_outcome_is_the_plain_rule(entry: ConnectorLedger, nth: int,
                                          result: CommandResult, answer_seq: int | None,
                                          boot_seq: int | None, now_s: float,
                                          settle_s: float, with_valid_to: bool) -> None:
    """Any outcome (of a command in flight, or of one that is not: void) folds in alike."""
    command_id = entry.in_flight[nth].id if nth < len(entry.in_flight) else 100 + nth
    outcome = CommandOutcome(result, sent=result not in (CommandResult.OFFLINE,
                                                         CommandResult.SUPERSEDED),
                             valid_to=t(now_s + 30) if with_valid_to else None,
                             answer_seq=answer_seq, detail="x")
    now = t(now_s)
    got = record_outcome(entry, command_id, outcome, now, failsafe_a=6.0, settle_s=settle_s,
                         boot_seq=boot_seq)
    assert got == reference_record_outcome(entry, command_id, outcome, now, failsafe_a=6.0,
                                           settle_s=settle_s, boot_seq=boot_seq)


def test_the_usual_answer_takes_the_one_command_in_flight() -> None:
    """One command in flight, accepted: in force, nothing left in flight; a lower one
    settles from the old value."""
    entry = ConnectorLedger(InForce(1, 16.0, t(0), t(60), 3), (Sent(2, 10.0, t(5), t(65)),))
    got, effect = record_outcome(entry, 2, CommandOutcome(CommandResult.ACCEPTED,
                                                          valid_to=t(65), answer_seq=4),
                                 t(6), failsafe_a=6.0, settle_s=5.0, boot_seq=None)
    assert effect is Effect.APPLIED
    assert got == ConnectorLedger(InForce(2, 10.0, t(5), t(65), 4), (), (),
                                  (Settling(16.0, t(11)),), None)
    assert got.counted_a(6.0, t(10)) == 16.0
    assert got.counted_a(6.0, t(11)) == 10.0
    # an answer to a command that is not the one in flight changes nothing
    assert record_outcome(entry, 7, CommandOutcome(CommandResult.ACCEPTED), t(6),
                          failsafe_a=6.0, settle_s=5.0, boot_seq=None) == (entry, Effect.VOID)
