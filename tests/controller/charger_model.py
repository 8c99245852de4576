"""A model of chargers on unreliable links, and a driver on top of it, for the controller.

Each modeled charger applies the commands that reach it, in order, one call at a time, as
profiles with a validTo (the send time plus the lease, written in the frame); it falls back
to its failsafe when the profile lapses or it reboots, and its car draws whatever it obeys
(following a decrease only after ``lag_s``, as a real car does). What happens to each
command and each answer is chosen by the test: applied and answered, refused, applied with
the answer lost, lost before reaching the charger, answered late (after a boot, say).

The driver implements :meth:`gridshare.drivers.ChargerDriver.submit_setpoints` on top of
the model, with the real adapter's contract: one call in flight per charger, a queued
command replaced by a newer one for the same connector is SUPERSEDED, an offline charger
gets OFFLINE, answers carry increasing frame numbers that a boot also advances.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gridshare.clock import FakeClock
from gridshare.controller.loop import Controller, ControllerSettings
from gridshare.core.topology import Topology
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest
from gridshare.events import ChargerBooted, ConnectorStatus, StatusChanged


@dataclass
class Frame:
    """A command queued for (or written to) a charger, and the future of its outcome."""

    connector: int
    current_a: float
    valid_to: datetime
    outcome: asyncio.Future[CommandOutcome]
    queued_at: datetime


@dataclass
class ModelCharger:
    id: str
    failsafe_a: float
    lag_s: float
    profile: dict[int, tuple[float, datetime]] = field(default_factory=dict)
    """connector → (limit, validTo) in force in the charger."""
    lagging: dict[int, list[tuple[datetime, float]]] = field(default_factory=dict)
    """connector → (when the limit fell, the value before): the car follows later."""
    car: set[int] = field(default_factory=set)
    link: str = "up"
    """up | down (both sides know) | half (we think it is up; nothing gets through)."""
    frames: list[Frame] = field(default_factory=list)
    """The head is on the wire; the rest are queued behind it."""
    late: list[tuple[asyncio.Future[CommandOutcome], CommandOutcome]] = field(
        default_factory=list)
    """Answers that arrived but that we have not processed yet."""
    seq: int = 0
    """Frame number of the last frame from this charger (never goes back)."""
    restarting_until: datetime | None = None
    """A charger that reboots opens its contactor; the car draws again only once the
    charger is back and has told us (BootNotification), well after the settle time."""

    def obeys(self, connector: int, now: datetime) -> float:
        found = self.profile.get(connector)
        if found is not None and now < found[1]:
            return found[0]
        return self.failsafe_a

    def draws(self, connector: int, now: datetime) -> float:
        if connector not in self.car:
            return 0.0
        if self.restarting_until is not None and now < self.restarting_until:
            return 0.0
        value = self.obeys(connector, now)
        found = self.profile.get(connector)
        if found is not None and found[1] <= now < found[1] + timedelta(seconds=self.lag_s):
            value = max(value, found[0])  # lapsed: the car follows the failsafe as slowly
        for when, before in self.lagging.get(connector, ()):
            if now < when + timedelta(seconds=self.lag_s):
                value = max(value, before)
        return value

    def apply(self, frame: Frame, now: datetime) -> None:
        before = self.obeys(frame.connector, now)
        if frame.current_a < before:
            self.lagging.setdefault(frame.connector, []).append((now, before))
        self.profile[frame.connector] = (frame.current_a, frame.valid_to)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class ModelDriver:
    """A ChargerDriver whose chargers are :class:`ModelCharger` s."""

    def __init__(self, topology: Topology, clock: FakeClock, lag_s: float = 5.0) -> None:
        self.clock = clock
        self.chargers = {cid: ModelCharger(cid, ch.failsafe_current, lag_s)
                         for cid, ch in topology.chargers.items()}
        self.submitted: list[SetpointRequest] = []

    # --- the driver contract --------------------------------------------------------------

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        loop = asyncio.get_running_loop()
        out: list[Awaitable[CommandOutcome]] = []
        for request in requests:
            self.submitted.append(request)
            future: asyncio.Future[CommandOutcome] = loop.create_future()
            out.append(future)
            charger = self.chargers[request.charger]
            if charger.link == "down":
                future.set_result(CommandOutcome(CommandResult.OFFLINE, sent=False))
                continue
            for queued in charger.frames[1:]:
                if queued.connector == request.connector and not queued.outcome.done():
                    queued.outcome.set_result(CommandOutcome(CommandResult.SUPERSEDED,
                                                             sent=False))
            charger.frames = [f for f in charger.frames if not f.outcome.done()]
            valid_to = self.clock.now() + timedelta(seconds=request.lease_s)
            charger.frames.append(Frame(request.connector, request.current_a, valid_to,
                                        future, self.clock.now()))
        return out

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        (outcome,) = self.submit_setpoints([SetpointRequest(charger, connector, current_a,
                                                            lease_s)])
        return await outcome

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        """The default profile is the modeled failsafe: installed whenever connected."""
        if self.chargers[charger].link == "down":
            return CommandOutcome(CommandResult.OFFLINE, sent=False)
        return CommandOutcome(CommandResult.ACCEPTED)

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        return CommandOutcome(CommandResult.REJECTED, detail="not modeled")

    # --- what happens to the command on the wire -------------------------------------------

    def head(self, charger_id: str) -> Frame | None:
        frames = self.chargers[charger_id].frames
        return frames[0] if frames else None

    def _pop(self, charger_id: str) -> Frame:
        return self.chargers[charger_id].frames.pop(0)

    def answer(self, charger_id: str, *, accept: bool = True, late: bool = False) -> Frame:
        """The head command reaches the charger, which applies (or refuses) it and answers;
        ``late``: we process that answer only when :meth:`deliver_late` says."""
        charger = self.chargers[charger_id]
        assert charger.link == "up"
        frame = self._pop(charger_id)
        now = self.clock.now()
        if accept:
            charger.apply(frame, now)
        outcome = CommandOutcome(CommandResult.ACCEPTED if accept else CommandResult.REJECTED,
                                 valid_to=frame.valid_to if accept else None,
                                 answer_seq=charger.next_seq(),
                                 detail="" if accept else "Rejected")
        if late:
            charger.late.append((frame.outcome, outcome))
        else:
            frame.outcome.set_result(outcome)
        return frame

    def lose(self, charger_id: str, *, applied: bool, result: CommandResult) -> Frame:
        """The head command's answer never comes (TIMEOUT or LOST); the charger may or may
        not have applied it."""
        frame = self._pop(charger_id)
        if applied:
            self.chargers[charger_id].apply(frame, self.clock.now())
        frame.outcome.set_result(CommandOutcome(result, valid_to=frame.valid_to))
        return frame

    def time_out(self, timeout_s: float) -> None:
        """What a real link does within the adapter's command timeout: on a good link a
        command reaches the charger and is applied (its answer may be lost); on a half-open
        one it vanishes. Either way, after ``timeout_s`` without an answer: TIMEOUT."""
        now = self.clock.now()
        for cid, charger in self.chargers.items():
            while charger.frames and charger.link != "down" and \
                    now - charger.frames[0].queued_at >= timedelta(seconds=timeout_s):
                self.lose(cid, applied=charger.link == "up", result=CommandResult.TIMEOUT)

    def deliver_late(self, charger_id: str) -> int:
        charger = self.chargers[charger_id]
        for future, outcome in charger.late:
            if not future.done():
                future.set_result(outcome)
        delivered = len(charger.late)
        charger.late.clear()
        return delivered

    def drop_link(self, charger_id: str, *, head_applied: bool) -> None:
        """The connection closes: the command on the wire is lost (maybe applied), the
        queued ones never leave."""
        charger = self.chargers[charger_id]
        if charger.frames:
            self.lose(charger_id, applied=head_applied and charger.link == "up",
                      result=CommandResult.LOST)
        for frame in charger.frames:
            frame.outcome.set_result(CommandOutcome(CommandResult.OFFLINE, sent=False))
        charger.frames.clear()
        charger.link = "down"

    def reboot(self, charger_id: str) -> int:
        """The charger restarts: its profiles are gone, its link drops and comes back.
        Returns the frame number of its BootNotification."""
        charger = self.chargers[charger_id]
        self.drop_link(charger_id, head_applied=False)
        charger.profile.clear()
        charger.lagging.clear()
        charger.restarting_until = self.clock.now() + timedelta(seconds=30)
        charger.link = "up"
        return charger.next_seq()

    # --- what the chargers really draw ------------------------------------------------------

    def group_draw(self, topology: Topology, group_id: str) -> list[float]:
        """A per phase the modeled cars draw under ``group_id``, now."""
        now = self.clock.now()
        amps = [0.0, 0.0, 0.0]
        for cid in topology.subtree_chargers(group_id):
            vec = topology.chargers[cid].phase_vector
            for conn in topology.chargers[cid].connectors:
                value = self.chargers[cid].draws(conn.number, now)
                for p in range(3):
                    amps[p] += vec[p] * value
        return amps


class Rig:
    """The real Controller (no worker task: the test runs its cycles) on a FakeClock, over
    a :class:`ModelDriver`."""

    def __init__(self, topology: Topology, settings: ControllerSettings,
                 clock: FakeClock) -> None:
        self.topology = topology
        self.clock = clock
        self.driver = ModelDriver(topology, clock, lag_s=settings.settle_s)
        self.controller = Controller(topology, self.driver, clock, settings=settings)
        self.limits = {gid: g.max_current for gid, g in topology.groups.items()}

    async def spin(self) -> None:
        """Let outcomes that are resolved reach the controller."""
        for _ in range(6):
            await asyncio.sleep(0)

    async def cycle(self) -> None:
        """Cycles until one sends nothing (each outcome can unlock a held increase)."""
        await self.controller.tick()
        for _ in range(8):
            report = await self.controller.run_cycle()
            await self.spin()
            if not report.sent:
                return

    async def answer_all(self, *, except_: Sequence[str] = ()) -> None:
        """Every charger with a good link applies and answers what is on its wire."""
        for _ in range(4):
            for cid, charger in self.driver.chargers.items():
                if cid in except_:
                    continue
                while charger.link == "up" and charger.frames:
                    self.driver.answer(cid)
            await self.spin()
            await self.cycle()

    def boot(self, charger_id: str) -> None:
        seq = self.driver.reboot(charger_id)
        self.controller.handle(ChargerBooted(charger_id, self.clock.now(), "ocpp1.6",
                                             frame_seq=seq))

    def plug(self, charger_id: str) -> None:
        charger = self.driver.chargers[charger_id]
        charger.car.add(1)
        charger.lagging.pop(1, None)  # a new car starts at what the charger offers
        self.controller.handle(StatusChanged(charger_id, 1, ConnectorStatus.CHARGING,
                                             self.clock.now()))

    def unplug(self, charger_id: str) -> None:
        charger = self.driver.chargers[charger_id]
        charger.car.discard(1)
        charger.lagging.pop(1, None)
        self.controller.handle(StatusChanged(charger_id, 1, ConnectorStatus.AVAILABLE,
                                             self.clock.now()))

    def overloads(self, limits: dict[str, float | None] | None = None) -> list[str]:
        """Every (group, phase) where what the modeled cars draw exceeds the limit."""
        out = []
        for gid, limit in (limits or self.limits).items():
            if limit is None:
                continue
            for phase, amps in enumerate(self.driver.group_draw(self.topology, gid)):
                if amps > limit + 1e-6:
                    out.append(f"{gid} L{phase + 1}: {amps:.1f} A > {limit:.1f} A "
                               f"at {self.clock.now():%H:%M:%S}")
        return out

    def sent_to(self, charger_id: str) -> list[float]:
        return [r.current_a for r in self.driver.submitted if r.charger == charger_id]
