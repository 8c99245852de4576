"""The command ledger: what each connector may be obeying, given every command we sent.

Pure: no I/O and no clock; every rule that depends on time takes ``now``. The controller
records each command when it is sent and each outcome when it arrives; the ledger answers
one question for every limit: the most this connector may draw right now (its *counted*
value).

Why a ledger and not "the last confirmed setpoint": a CALL whose answer never came may have
been applied (the link dropped after the charger took it), and an applied profile stays in
force until its own validTo whether the charger can hear us or not. So for each connector
the ledger keeps

- what is **in force**: the newest accepted command (value, validTo, the answer's frame
  number), or nothing, in which case the charger is at its failsafe (default) profile;
- what is **in flight**: every command sent and not answered yet, each with its own id;
- what has an **unknown outcome** (timed out, link lost mid-call): its value until its
  validTo (or, when the driver did not say, the send time plus the lease: an upper bound);
- what is **settling**: after an accepted decrease the car takes 5–10 s to follow, so the
  old value counts until ``now + settle_s``. A lapse is a decrease too: what was in force
  and every unknown outcome still count for ``tail_s`` after their validTo.

Counted value = max(in force, or failsafe when none or lapsed; every in-flight value; every
unknown value before its validTo; every settling value). An offline charger is also
counted at least at its failsafe (it may have rebooted unseen).

Only proof removes a possibility: a later *accepted* command voids every older one of the
connector (same purpose and stack level replaces; one call in flight per charger keeps
their order); a boot numbered N voids every accepted command whose answer came before
frame N (the charger lost it), while answers numbered above N stay even if we process them
before the boot. A rejected command is dropped and the profile in force stays, counted. A
command the driver says never left (offline, superseded before sending) is dropped. No
command is forgotten because a newer one was sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from gridshare.core.topology import ConnectorKey, Topology
from gridshare.drivers import CommandOutcome, CommandResult


@dataclass(frozen=True, slots=True)
class Sent:
    """A command that left (or is queued to leave) and has no answer yet."""

    id: int
    value_a: float
    sent_at: datetime
    valid_to: datetime
    """Upper bound of its validTo: the send time plus the lease."""


@dataclass(frozen=True, slots=True)
class InForce:
    """The newest command the charger accepted."""

    command_id: int
    value_a: float
    sent_at: datetime
    valid_to: datetime | None
    """None: the profile has no end."""
    answer_seq: int | None
    """Frame number of the accept (orders it against a boot)."""

    def valid(self, now: datetime) -> bool:
        return self.valid_to is None or now < self.valid_to


@dataclass(frozen=True, slots=True)
class Unknown:
    """A command that may or may not have been applied."""

    command_id: int
    value_a: float
    valid_to: datetime
    result: CommandResult


@dataclass(frozen=True, slots=True)
class Settling:
    """The car may still draw ``value_a`` after a decrease, until ``until``."""

    value_a: float
    until: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """The charger refused this command: the profile in force before it still applies."""

    command_id: int
    value_a: float
    at: datetime
    detail: str


@dataclass(frozen=True, slots=True)
class ConnectorLedger:
    in_force: InForce | None = None
    in_flight: tuple[Sent, ...] = ()
    unknown: tuple[Unknown, ...] = ()
    settling: tuple[Settling, ...] = ()
    rejected: Rejection | None = None
    """The last refusal, until a later command is accepted."""

    def effective_a(self, failsafe_a: float, now: datetime) -> float:
        """The profile the charger obeys if every unanswered command failed."""
        if self.in_force is not None and self.in_force.valid(now):
            return self.in_force.value_a
        return failsafe_a

    def counted_a(self, failsafe_a: float, now: datetime, *, offline: bool = False,
                  lapse_margin_s: float = 0.0, tail_s: float = 0.0) -> float:
        """The most this connector may draw now (see the module docstring). Within
        ``lapse_margin_s`` of its validTo, what is in force counts at the failsafe too: if
        it is not renewed in time the charger falls back to it, and the others must have
        made room by then. For ``tail_s`` after its validTo it still counts (the car
        follows the lapse no faster than a decrease).

        Asked twice for every answer (before and after it is folded in), so it takes one
        branch per case of what is in force instead of re-deriving each rule."""
        in_force = self.in_force
        if in_force is None:
            value = failsafe_a
        elif in_force.valid_to is None:
            value = in_force.value_a
            if offline and failsafe_a > value:
                value = failsafe_a
        elif now < in_force.valid_to:
            value = in_force.value_a
            if failsafe_a > value and (offline or (lapse_margin_s > 0
                                                   and self._lapsing(now, lapse_margin_s))):
                value = failsafe_a
        else:  # lapsed: the failsafe, and for tail_s what was in force too
            value = failsafe_a
            if tail_s > 0 and in_force.value_a > value and \
                    now < in_force.valid_to + timedelta(seconds=tail_s):
                value = in_force.value_a
        if not (self.in_flight or self.unknown or self.settling):
            return value
        for sent in self.in_flight:
            value = max(value, sent.value_a)
        if self.unknown:
            tail = timedelta(seconds=tail_s)
            for unknown in self.unknown:
                if unknown.value_a > value and now < unknown.valid_to + tail:
                    value = unknown.value_a
        for settling in self.settling:
            if settling.value_a > value and now < settling.until:
                value = settling.value_a
        return value

    def _lapsing(self, now: datetime, margin_s: float) -> bool:
        at = self._lapsing_from(margin_s)
        return at is not None and now >= at

    def _lapsing_from(self, margin_s: float) -> datetime | None:
        """From when what is in force also counts at the failsafe: ``margin_s`` before its
        validTo, but never more than the last quarter of its lease (a renewal at
        half-life always has a quarter of the lease to be confirmed)."""
        in_force = self.in_force
        if in_force is None or in_force.valid_to is None:
            return None
        lease_s = (in_force.valid_to - in_force.sent_at).total_seconds()
        return in_force.valid_to - timedelta(seconds=min(margin_s, lease_s / 4))

    def worst_and_next_change(self, failsafe_a: float, now: datetime, *,
                              offline: bool = False, lapse_margin_s: float = 0.0,
                              tail_s: float = 0.0) -> tuple[float, datetime | None]:
        """:meth:`counted_a` and :meth:`next_change` at once (the decision asks both for
        every connector every cycle)."""
        if self.in_flight or self.unknown or self.settling:
            return (self.counted_a(failsafe_a, now, offline=offline,
                                   lapse_margin_s=lapse_margin_s, tail_s=tail_s),
                    self.next_change(now, lapse_margin_s, tail_s))
        in_force = self.in_force
        if in_force is None:
            return failsafe_a, None
        valid_to = in_force.valid_to
        if valid_to is None:
            return (max(in_force.value_a, failsafe_a) if offline else in_force.value_a), None
        if now >= valid_to:
            tail_end = valid_to + timedelta(seconds=tail_s)
            if now < tail_end:
                return max(in_force.value_a, failsafe_a), tail_end
            return failsafe_a, None
        lapsing = self._lapsing_from(lapse_margin_s) if lapse_margin_s > 0 else valid_to
        assert lapsing is not None
        value = in_force.value_a
        if offline or now >= lapsing:
            value = max(value, failsafe_a)
        return value, (lapsing if lapsing > now else valid_to)

    def newest_in_flight(self) -> Sent | None:
        return self.in_flight[-1] if self.in_flight else None

    def live_unknowns(self, now: datetime) -> tuple[Unknown, ...]:
        return tuple(u for u in self.unknown if now < u.valid_to)

    def next_change(self, now: datetime, lapse_margin_s: float = 0.0,
                    tail_s: float = 0.0) -> datetime | None:
        """When the counted value may next change by the passing of time alone."""
        tail = timedelta(seconds=tail_s)
        times = [u.valid_to + tail for u in self.unknown if u.valid_to + tail > now]
        times += [s.until for s in self.settling if s.until > now]
        in_force = self.in_force
        if in_force is not None and in_force.valid_to is not None:
            lapsing = self._lapsing_from(lapse_margin_s)
            times += [t for t in (lapsing, in_force.valid_to, in_force.valid_to + tail)
                      if t is not None and t > now]
        return min(times) if times else None

    def pruned(self, now: datetime, tail_s: float = 0.0) -> ConnectorLedger:
        """The same ledger without what time has made irrelevant (a lapsed command is
        kept for ``tail_s``: it still counts)."""
        tail = timedelta(seconds=tail_s)
        in_force = self.in_force
        if in_force is not None and in_force.valid_to is not None and \
                now >= in_force.valid_to + tail:
            in_force = None
        unknown = tuple(u for u in self.unknown if now < u.valid_to + tail)
        settling = tuple(s for s in self.settling if now < s.until)
        if in_force is self.in_force and len(unknown) == len(self.unknown) and \
                len(settling) == len(self.settling):
            return self
        return replace(self, in_force=in_force, unknown=unknown, settling=settling)


class Effect(StrEnum):
    """What an outcome did to the ledger."""

    APPLIED = "applied"
    """Accepted: now in force; older commands void."""
    REJECTED = "rejected"
    """Refused: dropped, the profile in force stays (raise an alarm)."""
    UNKNOWN = "unknown"
    """May have been applied: counted until its validTo."""
    NOT_APPLIED = "not_applied"
    """Certainly not applied (never sent, superseded before sending): dropped."""
    VOID = "void"
    """Accepted before a later boot (the charger lost it), or older than the command in
    force, or already voided by a newer accept: nothing changes."""


def record_sent(entry: ConnectorLedger, command_id: int, value_a: float, now: datetime,
                lease_s: float) -> ConnectorLedger:
    sent = Sent(command_id, value_a, now, now + timedelta(seconds=lease_s))
    return ConnectorLedger(entry.in_force, (*entry.in_flight, sent), entry.unknown,
                           entry.settling, entry.rejected)


def record_outcome(entry: ConnectorLedger, command_id: int, outcome: CommandOutcome,
                   now: datetime, *, failsafe_a: float, settle_s: float,
                   boot_seq: int | None) -> tuple[ConnectorLedger, Effect]:
    """Fold one command's outcome in. ``boot_seq``: frame number of the charger's latest
    boot, to void an accept that arrived before it."""
    in_flight = entry.in_flight
    if len(in_flight) == 1:  # the usual case: the one command of the connector in flight
        sent: Sent | None = in_flight[0]
        rest: tuple[Sent, ...] = ()
    else:
        sent = next((s for s in in_flight if s.id == command_id), None)
        rest = tuple(s for s in in_flight if s.id != command_id)
    if sent is None or sent.id != command_id:
        return entry, Effect.VOID  # voided by a newer accept, or by a boot's bookkeeping
    if outcome.result is CommandResult.ACCEPTED:
        before_boot = (boot_seq is not None and outcome.answer_seq is not None
                       and outcome.answer_seq < boot_seq)
        older = entry.in_force is not None and entry.in_force.command_id > command_id
        if before_boot or older:
            return ConnectorLedger(entry.in_force, rest, entry.unknown, entry.settling,
                                   entry.rejected), Effect.VOID
        # _accept keeps only the commands sent after this one: ``sent`` is not among them
        return _accept(entry, sent, outcome, now, failsafe_a, settle_s), Effect.APPLIED
    if outcome.result is CommandResult.REJECTED:
        return ConnectorLedger(entry.in_force, rest, entry.unknown, entry.settling,
                               Rejection(command_id, sent.value_a, now, outcome.detail),
                               ), Effect.REJECTED
    if outcome.unknown:
        valid_to = outcome.valid_to if outcome.valid_to is not None else sent.valid_to
        unknown = Unknown(command_id, sent.value_a, valid_to, outcome.result)
        return ConnectorLedger(entry.in_force, rest, (*entry.unknown, unknown), entry.settling,
                               entry.rejected), Effect.UNKNOWN
    return ConnectorLedger(entry.in_force, rest, entry.unknown, entry.settling,
                           entry.rejected), Effect.NOT_APPLIED


def _accept(entry: ConnectorLedger, sent: Sent, outcome: CommandOutcome, now: datetime,
            failsafe_a: float, settle_s: float) -> ConnectorLedger:
    """In force now; every older command of the connector is replaced by it. What the car
    may still draw from the replaced ones (lapsed less than ``settle_s`` ago included)
    settles for ``settle_s``. ``entry`` as it was, ``sent`` still in flight in it."""
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
    settling = tuple(s for s in entry.settling if now < s.until) if entry.settling else ()
    if settle_s > 0 and old > sent.value_a:
        settling = (*settling, Settling(old, now + tail))
    valid_to = outcome.valid_to if outcome.valid_to is not None else sent.valid_to
    return ConnectorLedger(
        in_force=InForce(sent.id, sent.value_a, sent.sent_at, valid_to, outcome.answer_seq),
        in_flight=tuple(s for s in entry.in_flight if s.id > sent.id) if entry.in_flight
        else (),
        unknown=tuple(u for u in entry.unknown if u.command_id > sent.id) if entry.unknown
        else (),
        settling=settling,
        rejected=None,
    )


def record_boot(entry: ConnectorLedger, frame_seq: int | None) -> ConnectorLedger:
    """The charger restarted at frame ``frame_seq``: an accept answered before it is gone
    (the charger is at its failsafe profile again). Without frame numbers every accept
    processed so far is taken as older. In-flight and unknown commands stay: they may
    still be applied (or may have been, after the boot)."""
    in_force = entry.in_force
    if in_force is None:
        return entry
    if frame_seq is None or in_force.answer_seq is None or in_force.answer_seq < frame_seq:
        return replace(entry, in_force=None)
    return entry


class Ledger:
    """Every connector's :class:`ConnectorLedger`, command ids and the latest boot of each
    charger. Holds state between calls, but reads no clock and does no I/O."""

    def __init__(self, topology: Topology, lapse_margin_s: float = 0.0,
                 tail_s: float = 0.0) -> None:
        self.lapse_margin_s = lapse_margin_s
        """How long before its validTo an unrenewed profile also counts at the failsafe."""
        self.tail_s = tail_s
        """How long after its validTo a lapsed command still counts (the car's lag)."""
        self._failsafe = {c.key: topology.chargers[c.charger_id].failsafe_current
                          for c in topology.connectors()}
        self._keys_of: dict[str, tuple[ConnectorKey, ...]] = {
            cid: tuple(c.key for c in ch.connectors) for cid, ch in topology.chargers.items()}
        self._entries: dict[ConnectorKey, ConnectorLedger] = dict.fromkeys(
            self._failsafe, ConnectorLedger())
        self._boot_seq: dict[str, int] = {}
        self._next_id = 0

    def __getitem__(self, key: ConnectorKey) -> ConnectorLedger:
        return self._entries[key]

    def add_chargers(self, topology: Topology, chargers: Iterable[str]) -> None:
        """Keep ``chargers`` of ``topology`` too (just adopted): an empty entry per
        connector, so each counts at its failsafe; every existing entry is kept as it is."""
        for cid in chargers:
            charger = topology.chargers[cid]
            if cid in self._keys_of:
                raise ValueError(f"charger {cid} is already in the ledger")
            self._keys_of[cid] = tuple(c.key for c in charger.connectors)
            for conn in charger.connectors:
                self._failsafe[conn.key] = charger.failsafe_current
                self._entries[conn.key] = ConnectorLedger()

    def items(self) -> Iterator[tuple[ConnectorKey, ConnectorLedger]]:
        return iter(self._entries.items())

    def failsafe_a(self, key: ConnectorKey) -> float:
        return self._failsafe[key]

    def counted_a(self, key: ConnectorKey, now: datetime, *, offline: bool = False) -> float:
        return self._entries[key].counted_a(self._failsafe[key], now, offline=offline,
                                            lapse_margin_s=self.lapse_margin_s,
                                            tail_s=self.tail_s)

    def sent(self, key: ConnectorKey, value_a: float, now: datetime, lease_s: float) -> int:
        """Record a command about to be submitted; returns its id (increasing)."""
        self._next_id += 1
        self._entries[key] = record_sent(self._entries[key], self._next_id, value_a, now,
                                         lease_s)
        return self._next_id

    def outcome(self, key: ConnectorKey, command_id: int, outcome: CommandOutcome,
                now: datetime, settle_s: float) -> Effect:
        entry, effect = record_outcome(self._entries[key], command_id, outcome, now,
                                       failsafe_a=self._failsafe[key], settle_s=settle_s,
                                       boot_seq=self._boot_seq.get(key[0]))
        self._entries[key] = entry
        return effect

    def boot(self, charger_id: str, frame_seq: int | None) -> None:
        if frame_seq is not None:
            self._boot_seq[charger_id] = max(frame_seq, self._boot_seq.get(charger_id, -1))
        for key in self._keys_of.get(charger_id, ()):
            self._entries[key] = record_boot(self._entries[key], frame_seq)

    def prune(self, now: datetime, keys: Iterable[ConnectorKey] | None = None) -> None:
        for key in self._entries if keys is None else keys:
            entry = self._entries[key]
            pruned = entry.pruned(now, self.tail_s)
            if pruned is not entry:
                self._entries[key] = pruned

    def snapshot(self) -> Mapping[ConnectorKey, ConnectorLedger]:
        """A read-only copy (entries are immutable)."""
        return dict(self._entries)
