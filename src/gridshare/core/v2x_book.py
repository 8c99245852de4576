"""What a connector's V2X setpoint may be right now: the ledger's rule for W setpoints.

A V2X command whose answer has not come (in flight, timed out, link lost) may or may not
have been applied, and an applied profile stays in force until its validTo, online or not.
So, as for current setpoints (:mod:`gridshare.core.ledger`), every value that may be in
force is kept until it certainly is not: the accepted one until its validTo or until a
newer one is accepted (which also settles every older unknown: the charger handles our
calls in order and each replaces the same profile), each unanswered or unknown one until
its own validTo. A rejected
command, or one that never left, leaves the previous value in force.

:meth:`V2xBook.bounds` gives, per connector, the most it may charge and the most it may
discharge now; :meth:`V2xBook.check` passes a new set of setpoints through
:func:`gridshare.core.guard.check_v2x` counting those bounds. Pure: times are passed in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gridshare.core import guard
from gridshare.core.decision import Alarm
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ConnectorKey, Topology
from gridshare.drivers import CommandOutcome, CommandResult


@dataclass(frozen=True, slots=True)
class _Value:
    command_id: int
    watts: float
    valid_to: datetime


@dataclass(slots=True)
class _Connector:
    accepted: _Value | None = None
    open: dict[int, _Value] = field(default_factory=dict)
    """Sent and unanswered, or answered with an unknown outcome (TIMEOUT/LOST): each may
    be in force until its validTo."""


class V2xBook:
    """Per connector, every V2X value that may be in force (see the module docstring)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._by_key: dict[ConnectorKey, _Connector] = {}

    def sent(self, key: ConnectorKey, watts: float, now: datetime, valid_s: float) -> int:
        """A command of ``watts`` (0 for a clear) left for ``key``, valid ``valid_s`` s."""
        command_id = next(self._ids)
        entry = self._by_key.setdefault(key, _Connector())
        entry.open[command_id] = _Value(command_id, watts,
                                        now + timedelta(seconds=valid_s))
        return command_id

    def outcome(self, key: ConnectorKey, command_id: int, outcome: CommandOutcome) -> None:
        """Its outcome: accepted → in force (it replaces the previous one); rejected or
        never sent → gone; unknown → kept until its validTo (``outcome.valid_to`` when the
        adapter reports one)."""
        entry = self._by_key.get(key)
        if entry is None or command_id not in entry.open:
            return
        value = entry.open[command_id]
        if outcome.valid_to is not None:
            value = _Value(command_id, value.watts, outcome.valid_to)
        if outcome.result is CommandResult.ACCEPTED:
            del entry.open[command_id]
            if entry.accepted is None or entry.accepted.command_id < command_id:
                entry.accepted = value
                # every older command was handled before it (one call in flight, in
                # order, one profile id): if applied at all, this one replaced it
                for older in [c for c in entry.open if c < command_id]:
                    del entry.open[older]
        elif outcome.unknown:
            entry.open[command_id] = value
        else:
            del entry.open[command_id]

    def bounds(self, now: datetime) -> dict[ConnectorKey, tuple[float, float]]:
        """Per connector with any value that may be in force: (lowest W, highest W), the
        range its power may be set anywhere in (0 counts when nothing may be in force but
        commands are open: the charger may still be at its plain setpoint)."""
        out: dict[ConnectorKey, tuple[float, float]] = {}
        for key, entry in list(self._by_key.items()):
            self._prune(entry, now)
            accepted = entry.accepted
            if not entry.open:  # the usual case, one accepted value: no list to build
                if accepted is not None:
                    out[key] = (accepted.watts, accepted.watts)
                else:
                    del self._by_key[key]
                continue
            values = [v.watts for v in entry.open.values()]
            # the plain setpoint below may be what applies when nothing was accepted
            values.append(accepted.watts if accepted is not None else 0.0)
            out[key] = (min(values), max(values))
        return out

    @staticmethod
    def _prune(entry: _Connector, now: datetime) -> None:
        if entry.accepted is not None and now >= entry.accepted.valid_to:
            entry.accepted = None
        if entry.open:
            for command_id in [c for c, v in entry.open.items() if now >= v.valid_to]:
                del entry.open[command_id]

    def check(self, topology: Topology, snapshot: Snapshot,
              counted: Mapping[ConnectorKey, float],
              new_w: Mapping[ConnectorKey, float]) -> list[Alarm]:
        """:func:`guard.check_v2x` of ``new_w`` with what may still be in force counted at
        its worst in each direction (both ends of :meth:`bounds`)."""
        return self._check(topology, snapshot, counted, new_w, self.bounds(snapshot.now))

    @staticmethod
    def _check(topology: Topology, snapshot: Snapshot, counted: Mapping[ConnectorKey, float],
               new_w: Mapping[ConnectorKey, float],
               ranges: Mapping[ConnectorKey, tuple[float, float]]) -> list[Alarm]:
        low = {key: lo for key, (lo, _) in ranges.items()}
        high = {key: hi for key, (_, hi) in ranges.items()}
        found = guard.check_v2x(topology, snapshot, counted, new_w, in_force_w=low)
        seen = {a.message for a in found}
        found.extend(a for a in guard.check_v2x(topology, snapshot, counted, new_w,
                                                in_force_w=high) if a.message not in seen)
        return found

    def passes(self, topology: Topology, snapshot: Snapshot,
               counted: Callable[[], Mapping[ConnectorKey, float]],
               new_w: Mapping[ConnectorKey, float]) -> bool:
        """``not self.check(topology, snapshot, counted(), new_w)``, in one pass of
        :func:`guard.check_v2x` instead of four when every value, new and in force, is a
        finite discharge or 0 (what the frequency service checks; otherwise the full check
        decides). ``counted`` is called only then: a discharge is never checked forward.

        Why one pass is enough then: :meth:`check` runs ``check_v2x`` on four sets of values
        (new against the low and the high end in force, each on its charge and its
        discharge side), and with no value above 0 nothing is checked forward, so each
        pass can only find discharges (to a connector the site does not have, to a charger
        not declared v2x, or whose reverse sums exceed a limit). Per connector, the
        discharge side against the low end, ``min(low, new)``, discharges the most of the
        four; the reverse sums only add |W| (float rounding is monotone), so whatever
        another pass finds, that one finds too. ``tests/core/test_v2x_book.py`` checks the
        equivalence against :meth:`check` with hypothesis."""
        ranges = self.bounds(snapshot.now)
        isfinite = math.isfinite
        for watts in new_w.values():
            if not (isfinite(watts) and watts <= 0.0):
                return not self._check(topology, snapshot, counted(), new_w, ranges)
        worst = dict(new_w)
        for key, (lo, hi) in ranges.items():
            if not (isfinite(lo) and isfinite(hi) and hi <= 0.0):
                return not self._check(topology, snapshot, counted(), new_w, ranges)
            new = worst.get(key)
            worst[key] = lo if new is None else min(lo, new)
        return not guard.check_v2x(topology, snapshot, {}, worst)  # nothing forward
