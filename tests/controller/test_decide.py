"""decide(): what to send now, as a pure function of an explicit ``now`` (a FakeClock moves
it; nothing sleeps)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

import pytest

from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.core.decide import (
    DecideSettings,
    Decision,
    RetryPolicy,
    RetryState,
    decide,
    next_retry,
)
from gridshare.core.decision import Allocation, RotationState
from gridshare.core.ledger import Ledger
from gridshare.core.snapshot import ConnectorDemand, Snapshot
from gridshare.core.topology import ConnectorKey, Topology
from gridshare.drivers import CommandOutcome, CommandResult

from .conftest import T0

SITE = """
site: pair
voltage: 230
groups:
  - {id: g, max_current: 32, chargers: [a, b, c, z]}
chargers:
  - {id: a, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: b, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: c, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: z, max_current: 32, phases: 3, failsafe_current: 0}
"""
A, B, C, Z = ("a", 1), ("b", 1), ("c", 1), ("z", 1)
LEASE_S = 60.0
SETTINGS = DecideSettings(lease_s=LEASE_S, renew_fraction=0.5)
ACCEPTED = CommandOutcome(CommandResult.ACCEPTED)


@pytest.fixture
def site() -> Topology:
    return parse_site(SITE, "pair.yaml")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def snapshot(now: datetime, active: set[ConnectorKey],
             offline: Collection[str] = ()) -> Snapshot:
    connectors = {k: ConnectorDemand(k[0], k[1], active=True) for k in active}
    for cid in offline:
        connectors[(cid, 1)] = ConnectorDemand(cid, 1, active=(cid, 1) in active,
                                               online=False)
    return Snapshot(now=now, connectors=connectors)


def allocation(setpoints: Mapping[ConnectorKey, float]) -> Allocation:
    return Allocation(setpoints=dict(setpoints), offline=frozenset(), groups={},
                      rotation=RotationState())


def held_at(ledger: Ledger, key: ConnectorKey, amps: float, at: datetime,
            settle_s: float = 0.0) -> None:
    """``key`` accepted ``amps`` at ``at``."""
    command_id = ledger.sent(key, amps, at, LEASE_S)
    ledger.outcome(key, command_id, ACCEPTED, at, settle_s)


def idle_held(ledger: Ledger, at: datetime) -> None:
    for key in (A, B, C, Z):
        held_at(ledger, key, 0.0, at)


def run(site: Topology, ledger: Ledger, now: datetime, targets: Mapping[ConnectorKey, float],
        retries: Mapping[ConnectorKey, RetryState] | None = None,
        offline: Collection[str] = ()) -> Decision:
    return decide(site, snapshot(now, set(targets), offline), allocation(targets), ledger,
                  retries or {}, SETTINGS, now)


def sends(decision: Decision) -> dict[str, list[tuple[ConnectorKey, float, str]]]:
    return {step: [(s.key, s.current_a, s.kind) for s in getattr(decision, step)]
            for step in ("decreases", "increases", "held")}


def test_lease_renewed_at_half_life(site: Topology, clock: FakeClock) -> None:
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, A, 16.0, clock.now())
    clock.advance(29.9)
    decision = run(site, ledger, clock.now(), {A: 16.0})
    assert sends(decision) == {"decreases": [], "increases": [], "held": []}
    assert decision.wake_at == T0 + timedelta(seconds=30)
    clock.advance(0.1)
    decision = run(site, ledger, clock.now(), {A: 16.0})
    # Idle b and c (failsafe 6 A) are held at 0 A on the same lease; z (failsafe 0) is not.
    assert sends(decision)["decreases"] == [(A, 16.0, "renew"), (B, 0.0, "release"),
                                           (C, 0.0, "release")]


def test_a_target_equal_to_the_failsafe_needs_no_lease(site: Topology,
                                                      clock: FakeClock) -> None:
    ledger = Ledger(site)
    decision = run(site, ledger, clock.now(), {A: 6.0, Z: 0.0})
    assert sends(decision)["decreases"] == [(B, 0.0, "release"), (C, 0.0, "release")]
    assert decision.wake_at is None


def test_settle_window_holds_an_increase_then_releases_it_at_exactly_settle_s(
        site: Topology, clock: FakeClock) -> None:
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, A, 32.0, clock.now())
    clock.advance(10)
    held_at(ledger, A, 16.0, clock.now(), settle_s=5.0)  # the car follows within 5 s
    clock.advance(4.9)
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert sends(decision)["held"] == [(B, 16.0, "increase")]
    assert decision.counted[A] == 32.0
    assert decision.wake_at == T0 + timedelta(seconds=15)
    clock.advance(0.1)
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert sends(decision)["increases"] == [(B, 16.0, "increase")]


def test_an_increase_that_fits_goes_while_a_decrease_is_in_flight(
        site: Topology, clock: FakeClock) -> None:
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, A, 24.0, clock.now())
    ledger.sent(A, 10.0, clock.now(), LEASE_S)  # unanswered: a may still be at 24 A
    decision = run(site, ledger, clock.now(), {A: 10.0, B: 8.0, C: 14.0})
    assert sends(decision) == {"decreases": [], "increases": [(B, 8.0, "increase")],
                               "held": [(C, 14.0, "increase")]}


def test_decreases_go_at_once_and_the_freed_room_is_used_only_after_the_answer(
        site: Topology, clock: FakeClock) -> None:
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, A, 32.0, clock.now())
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert sends(decision) == {"decreases": [(A, 16.0, "decrease")], "increases": [],
                               "held": [(B, 16.0, "increase")]}
    command_id = ledger.sent(A, 16.0, clock.now(), LEASE_S)
    assert sends(run(site, ledger, clock.now(), {A: 16.0, B: 16.0}))["held"] == \
        [(B, 16.0, "increase")]  # the same value is not sent twice while on its way
    ledger.outcome(A, command_id, ACCEPTED, clock.now(), 0.0)
    assert sends(run(site, ledger, clock.now(), {A: 16.0, B: 16.0}))["increases"] == \
        [(B, 16.0, "increase")]


@pytest.mark.parametrize(("failures", "delay_s"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0),
                                                   (5, 16.0), (6, 30.0), (40, 30.0)])
def test_one_backoff_policy_exponential_and_capped(failures: int, delay_s: float) -> None:
    assert RetryPolicy(base_s=1.0, factor=2.0, max_s=30.0).delay_s(failures) == delay_s


def test_retries_back_off_and_an_accept_clears_them(site: Topology, clock: FakeClock) -> None:
    policy = RetryPolicy(base_s=1.0, max_s=30.0)
    timeout = CommandOutcome(CommandResult.TIMEOUT)
    state = None
    waits = []
    for _ in range(7):
        state = next_retry(state, timeout, clock.now(), policy)
        assert state is not None
        waits.append((state.not_before - clock.now()).total_seconds())
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert next_retry(state, CommandOutcome(CommandResult.OFFLINE, sent=False), clock.now(),
                      policy) is state
    assert next_retry(state, ACCEPTED, clock.now(), policy) is None
    # decide() waits for the back-off, says until when, then retries.
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, A, 32.0, clock.now())
    command_id = ledger.sent(A, 16.0, clock.now(), LEASE_S)
    ledger.outcome(A, command_id, CommandOutcome(CommandResult.REJECTED), clock.now(), 0.0)
    retry = {A: RetryState(1, clock.now() + timedelta(seconds=1))}
    decision = run(site, ledger, clock.now(), {A: 16.0}, retry)
    assert decision.decreases == ()
    assert decision.waiting == {A: T0 + timedelta(seconds=1)}
    assert decision.wake_at == T0 + timedelta(seconds=1)
    clock.advance(1)
    assert sends(run(site, ledger, clock.now(), {A: 16.0}, retry))["decreases"] == \
        [(A, 16.0, "retry")]


def test_a_rejected_profile_keeps_the_old_value_counted(site: Topology,
                                                        clock: FakeClock) -> None:
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, A, 32.0, clock.now())
    command_id = ledger.sent(A, 16.0, clock.now(), LEASE_S)
    ledger.outcome(A, command_id, CommandOutcome(CommandResult.REJECTED, detail="nope"),
                   clock.now(), 0.0)
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert decision.counted[A] == 32.0
    assert sends(decision)["held"] == [(B, 16.0, "increase")]
    rejection = ledger[A].rejected
    assert rejection is not None and rejection.detail == "nope"


def test_boot_after_a_later_answer_keeps_that_answer(site: Topology,
                                                     clock: FakeClock) -> None:
    """The charger rebooted (frame 7), then accepted 32 A (frame 9); we process the answer
    first and the boot second: the 32 A is live, b must not be raised."""
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    command_id = ledger.sent(A, 32.0, clock.now(), LEASE_S)
    ledger.outcome(A, command_id, CommandOutcome(CommandResult.ACCEPTED, answer_seq=9),
                   clock.now(), 0.0)
    ledger.boot("a", 7)
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert decision.counted[A] == 32.0
    assert sends(decision) == {"decreases": [(A, 16.0, "decrease")], "increases": [],
                               "held": [(B, 16.0, "increase")]}


def test_an_answer_from_before_a_boot_processed_after_it_is_void(
        site: Topology, clock: FakeClock) -> None:
    """The charger accepted 0 A (frame 5) and rebooted (frame 7); we process the boot
    first: the 0 A is gone, the charger is at its 6 A failsafe, and 0 A is sent again."""
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    command_id = ledger.sent(A, 0.0, clock.now(), LEASE_S)
    ledger.boot("a", 7)
    ledger.outcome(A, command_id, CommandOutcome(CommandResult.ACCEPTED, answer_seq=5),
                   clock.now(), 0.0)
    decision = run(site, ledger, clock.now(), {A: 0.0, B: 26.0})
    assert decision.counted[A] == 6.0
    assert sends(decision) == {"decreases": [(A, 0.0, "decrease")],
                               "increases": [(B, 26.0, "increase")], "held": []}


def test_an_unknown_outcome_at_the_target_is_said_again(site: Topology,
                                                        clock: FakeClock) -> None:
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, A, 16.0, clock.now())
    command_id = ledger.sent(A, 32.0, clock.now(), LEASE_S)
    ledger.outcome(A, command_id, CommandOutcome(CommandResult.LOST), clock.now(), 0.0)
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert decision.counted[A] == 32.0
    assert sends(decision) == {"decreases": [(A, 16.0, "retry")], "increases": [],
                               "held": [(B, 16.0, "increase")]}
    assert decision.wake_at == T0 + timedelta(seconds=30)  # a's renewal comes first
    assert ledger[A].next_change(clock.now()) == T0 + timedelta(seconds=60)


def test_offline_chargers_get_nothing_and_count_at_least_their_failsafe(
        site: Topology, clock: FakeClock) -> None:
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    decision = run(site, ledger, clock.now(), {B: 32.0}, offline={"a"})
    assert decision.counted[A] == 6.0
    assert sends(decision)["held"] == [(B, 32.0, "increase")]
    assert sends(run(site, ledger, clock.now(), {B: 26.0}, offline={"a"}))["increases"] == \
        [(B, 26.0, "increase")]


def test_idle_connectors_are_held_at_zero_when_they_would_obey_more(
        site: Topology, clock: FakeClock) -> None:
    ledger = Ledger(site)
    held_at(ledger, Z, 20.0, clock.now())  # the last car's share, still in force
    decision = run(site, ledger, clock.now(), {})
    assert sends(decision)["decreases"] == [(A, 0.0, "release"), (B, 0.0, "release"),
                                           (C, 0.0, "release"), (Z, 0.0, "release")]


def test_a_held_increase_keeps_its_current_lease_renewed(site: Topology,
                                                         clock: FakeClock) -> None:
    """a has a car but must wait at 0 A (b holds the whole group): its 0 A is renewed at
    half-life, or it would lapse to its 6 A failsafe on top of b's 32 A."""
    ledger = Ledger(site)
    idle_held(ledger, clock.now())
    held_at(ledger, B, 32.0, clock.now())
    clock.advance(29)
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert ("a", 1) not in [s.key for s in decision.decreases]
    assert decision.wake_at == T0 + timedelta(seconds=30)
    clock.advance(1)
    decision = run(site, ledger, clock.now(), {A: 16.0, B: 16.0})
    assert (A, 0.0, "renew") in sends(decision)["decreases"]
    assert sends(decision)["held"] == [(A, 16.0, "increase")]


def test_an_unrenewed_lease_counts_at_the_failsafe_before_it_lapses(
        site: Topology, clock: FakeClock) -> None:
    """Lapsing raises a (0 A in force, 6 A failsafe): from ``lapse_margin_s`` before its
    validTo, at most the last quarter of its 60 s lease, it counts at 6 A, so the others
    make room while there is time."""
    ledger = Ledger(site, lapse_margin_s=20.0)
    idle_held(ledger, clock.now())
    assert ledger.counted_a(A, T0 + timedelta(seconds=44.9)) == 0.0
    assert ledger.counted_a(A, T0 + timedelta(seconds=45)) == 6.0
    assert ledger[A].next_change(T0 + timedelta(seconds=31), 20.0) == T0 + timedelta(seconds=45)
    clock.advance(45)
    decision = run(site, ledger, clock.now(), {B: 32.0})
    assert decision.counted[A] == 6.0
    assert sends(decision)["held"] == [(B, 32.0, "increase")]
