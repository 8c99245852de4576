"""What to send this cycle: a pure function of the site, the ledger and an explicit ``now``.

The controller allocates, passes the guard, and asks :func:`decide` which commands to
send; it then only executes them. Every rule here is about time or about the worst case
of what may be in force, so it lives where a test can drive it with a plain ``now``:

- **Worst case first.** A connector is *counted* at the most it may draw
  (:mod:`gridshare.core.ledger`): in force, in flight, unknown outcomes, settling. Sending
  a value at or below that raises nothing, so it goes at once (decreases, renewals, idle
  holds, retries). A value above it is an *increase*: it goes only if every group above the
  connector (per phase and in kW) and its charger still have room with every other
  connector at its own worst case; the others wait for answers, for settle windows to
  pass or for unknown outcomes to expire, and the decision says when to look again.
- **Leases.** Live setpoints are renewed once ``renew_fraction`` of their lease has
  passed, unless their lapse would change nothing (the failsafe equals the target).
- **Idle connectors** (online, no car) are held at a leased 0 A whenever what they would
  otherwise obey is above 0, so a new car starts at 0 A, not at the last car's share or
  the failsafe.
- **One backoff policy** after a refused or unanswered command: exponential, capped
  (:class:`RetryPolicy`); nothing else retries setpoints, so delays never stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from gridshare.core.decision import Allocation
from gridshare.core.ledger import ConnectorLedger, Ledger
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ConnectorKey, Topology
from gridshare.drivers import CommandOutcome, CommandResult

EPS = 1e-6

SendKind = Literal["decrease", "increase", "renew", "retry", "release"]
"""decrease/increase: towards the allocation; renew: the same value before its lease
ends; retry: again after a failure or an unknown outcome; release: an idle connector held
at 0 A."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The one backoff after a refused or unanswered command: ``base_s`` after the first
    failure, times ``factor`` after each further one, never more than ``max_s``."""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0

    def delay_s(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.base_s * self.factor ** (failures - 1), self.max_s)


@dataclass(frozen=True, slots=True)
class RetryState:
    failures: int
    not_before: datetime


def next_retry(state: RetryState | None, outcome: CommandOutcome, now: datetime,
               policy: RetryPolicy) -> RetryState | None:
    """The backoff of a connector after ``outcome``: cleared by an accept, lengthened by a
    refusal or an unknown outcome, unchanged when nothing was sent."""
    if outcome.result is CommandResult.ACCEPTED:
        return None
    if outcome.result is CommandResult.REJECTED or outcome.unknown:
        failures = (state.failures if state is not None else 0) + 1
        return RetryState(failures, now + timedelta(seconds=policy.delay_s(failures)))
    return state


@dataclass(frozen=True, slots=True)
class DecideSettings:
    lease_s: float = 180.0
    renew_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class Send:
    key: ConnectorKey
    current_a: float
    counted_a: float
    """The connector's worst case before this command."""
    kind: SendKind


@dataclass(frozen=True, slots=True)
class Decision:
    decreases: tuple[Send, ...]
    """Raise nothing: send now (towards lower targets, renewals, idle holds, retries)."""
    increases: tuple[Send, ...]
    """Fit with every connector at its worst case: send now, after the decreases."""
    held: tuple[Send, ...]
    """Increases that do not fit yet."""
    counted: Mapping[ConnectorKey, float]
    """Every connector's worst case now (before any of these commands)."""
    wake_at: datetime | None
    """When time alone may change this decision (renewal due, settle over, unknown
    outcome expired, backoff over, lease lapsed); None: only events will."""
    waiting: Mapping[ConnectorKey, datetime] = field(default_factory=dict)
    """Connectors that need a command but are in backoff, until when."""


def decide(topology: Topology, snapshot: Snapshot, allocation: Allocation, ledger: Ledger,
           retries: Mapping[ConnectorKey, RetryState], settings: DecideSettings,
           now: datetime) -> Decision:
    """Which commands to send now (see the module docstring). ``snapshot`` must count
    nothing from the ledger (no reservations for unknown outcomes): the worst case of every
    connector is taken from ``ledger`` here."""
    counted: dict[ConnectorKey, float] = {}
    decreases: list[Send] = []
    candidates: list[Send] = []
    waiting: dict[ConnectorKey, datetime] = {}
    wake: list[datetime] = []
    demands = snapshot.connectors
    margin_s = ledger.lapse_margin_s
    for key, entry in ledger.items():
        demand = demands.get(key)  # absent: online and idle
        online = demand is None or demand.online
        failsafe = ledger.failsafe_a(key)
        worst, change = entry.worst_and_next_change(failsafe, now, offline=not online,
                                                    lapse_margin_s=margin_s,
                                                    tail_s=ledger.tail_s)
        counted[key] = worst
        if change is not None:
            wake.append(change)
        if not online:
            continue
        active = demand is not None and demand.active
        # Float noise (10.600000000000001) off: it would make equal values look different.
        want = round(allocation.setpoints.get(key, 0.0), 6) if active else 0.0
        reason, renew_at = _needed(entry, want, failsafe, settings, now)
        if renew_at is not None:
            wake.append(renew_at)
        if reason is None:
            continue
        retry = retries.get(key)
        if retry is not None and retry.not_before > now:
            waiting[key] = retry.not_before
            wake.append(retry.not_before)
            continue
        kind: SendKind
        if not active:
            kind = "release"
        elif want > worst + EPS:
            kind = "increase"
        elif reason == "change":
            kind = "retry" if retry is not None else "decrease"
        else:
            kind = reason
        send = Send(key, want, worst, kind)
        if want > worst + EPS:
            candidates.append(send)
        else:
            decreases.append(send)
    ready, held = _fitting(topology, snapshot, counted, candidates)
    for send in held:
        # Held where it is: keep what is in force from lapsing to a higher failsafe.
        renewal = _held_renewal(ledger[send.key], ledger.failsafe_a(send.key), settings, now)
        if isinstance(renewal, datetime):
            wake.append(renewal)
        elif renewal is not None:
            decreases.append(Send(send.key, renewal, send.counted_a, "renew"))
    future = [w for w in wake if w > now]
    return Decision(tuple(decreases), tuple(ready), tuple(held), counted,
                    min(future) if future else None, waiting)


def _needed(entry: ConnectorLedger, want: float, failsafe: float, settings: DecideSettings,
            now: datetime) -> tuple[Literal["change", "retry", "renew"] | None, datetime | None]:
    """Why this connector needs a command now, if it does; and when its lease is due for
    renewal if not yet."""
    newest = entry.newest_in_flight()
    if newest is not None:
        return (None if abs(newest.value_a - want) <= EPS else "change"), None
    if abs(entry.effective_a(failsafe, now) - want) > EPS:
        return "change", None
    if entry.live_unknowns(now):
        # At the target, but an unanswered command may have moved it: say it again, so an
        # accept replaces every possibility.
        return "retry", None
    in_force = entry.in_force
    if in_force is None or in_force.valid_to is None or abs(want - failsafe) <= EPS:
        return None, None  # nothing leased, or its lapse changes nothing
    lease_s = (in_force.valid_to - in_force.sent_at).total_seconds()
    renew_at = in_force.sent_at + timedelta(seconds=lease_s * settings.renew_fraction)
    if now >= renew_at:
        return "renew", None
    return None, renew_at


def _held_renewal(entry: ConnectorLedger, failsafe: float, settings: DecideSettings,
                  now: datetime) -> float | datetime | None:
    """For a connector whose increase is held: the value in force to renew now (its lapse
    would raise it to the failsafe), when to renew it if not yet, or None."""
    in_force = entry.in_force
    if in_force is None or in_force.valid_to is None or not in_force.valid(now) or \
            entry.in_flight or failsafe <= in_force.value_a + EPS:
        return None
    lease_s = (in_force.valid_to - in_force.sent_at).total_seconds()
    renew_at = in_force.sent_at + timedelta(seconds=lease_s * settings.renew_fraction)
    return in_force.value_a if now >= renew_at else renew_at


def _fitting(topology: Topology, snapshot: Snapshot, counted: Mapping[ConnectorKey, float],
             candidates: list[Send]) -> tuple[list[Send], list[Send]]:
    """Split increases into those that fit now, with every connector at its worst case,
    and those that must wait. Greedy in the given order; each one that goes takes its
    room before the next is tried."""
    if not candidates:
        return [], []
    amps = {gid: [0.0, 0.0, 0.0] for gid in topology.groups}
    kw = dict.fromkeys(topology.groups, 0.0)
    per_charger = dict.fromkeys(topology.chargers, 0.0)
    for key, value in counted.items():
        if value == 0.0:
            continue
        charger = topology.chargers[key[0]]
        per_charger[charger.id] += value
        vec = charger.phase_vector
        power = value * topology.power_kw_per_amp(charger)
        for gid in topology.charger_groups(charger.id):
            acc = amps[gid]
            for p in range(3):
                acc[p] += vec[p] * value
            kw[gid] += power
    rooms: dict[str, tuple[tuple[float, float, float], float]] = {}
    ready: list[Send] = []
    held: list[Send] = []
    for send in candidates:
        charger = topology.chargers[send.key[0]]
        delta = send.current_a - counted[send.key]
        vec = charger.phase_vector
        power = delta * topology.power_kw_per_amp(charger)
        chain = topology.charger_groups(charger.id)
        fits = per_charger[charger.id] + delta <= charger.max_current + EPS
        for gid in chain:
            if not fits:
                break
            room = rooms.get(gid)
            if room is None:
                lim = effective_limit(topology.groups[gid], snapshot.conditions(gid),
                                      topology.voltage)
                room = rooms[gid] = (lim.available, lim.available_power_kw)
            fits = kw[gid] + power <= room[1] + EPS and all(
                amps[gid][p] + vec[p] * delta <= room[0][p] + EPS for p in range(3))
        if not fits:
            held.append(send)
            continue
        ready.append(send)
        per_charger[charger.id] += delta
        for gid in chain:
            for p in range(3):
                amps[gid][p] += vec[p] * delta
            kw[gid] += power
    return ready, held
