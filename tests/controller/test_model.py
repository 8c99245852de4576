"""Model-based test: the real Controller against modeled chargers on unreliable links.

Hypothesis drives a sequence of what can happen — answers accepted, refused, lost with or
without the command applied, answered late, links dropped or half-open, chargers rebooted,
cars arriving and leaving, a group limit changing, time passing — and after every step
checks the one invariant that matters: for every group and phase, what the modeled chargers
really obey (their profile in force, or failsafe, with the car drawing up to it and
following a decrease only after a few seconds) is within the limit.

What the model assumes, because no controller can do better (each is physics or the
adapter's contract, not a gap left for the controller):

- A limit that is cut cannot bind the chargers at once: a profile granted before the cut
  may be in force (its answer lost) until its validTo. So each group is held to the
  highest limit it had during the last lease (plus the settle time); a rise binds at once.
- On a good link a command reaches the charger within the adapter's command timeout (its
  answer may still be lost, late or a refusal); on a half-open link it vanishes. Without
  that, two chargers that both ignore us could not be kept within any limit.
- A rebooting charger opens its contactor; the car draws again only after the charger
  is back and has announced itself (BootNotification), well after the settle time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.controller.loop import ControllerSettings
from gridshare.drivers import CommandResult
from gridshare.events import ChargerOffline, ChargerOnline, LimitChanged

from .charger_model import Rig
from .conftest import T0

SITE = """
site: model
voltage: 230
groups:
  - id: main
    max_current: 40
    groups:
      - {id: c1, max_current: 32, chargers: [a1, a2, a3]}
      - {id: c2, max_current: 20, chargers: [b1, b2]}
chargers:
  - {id: a1, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: a2, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: a3, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: b1, max_current: 16, phases: 1, phase: L1, failsafe_current: 6}
  - {id: b2, max_current: 32, phases: 3, failsafe_current: 0}
"""
TOPOLOGY = parse_site(SITE, "model.yaml")
CHARGERS = sorted(TOPOLOGY.chargers)
LEASE_S = 60.0
SETTINGS = ControllerSettings(lease_s=LEASE_S, renew_fraction=0.5, settle_s=5.0, tick_s=None,
                              debounce_s=0.0, retry_backoff_s=1.0, retry_backoff_max_s=16.0)
C1_LIMITS = [14.0, 20.0, 26.0, 32.0]
"""Never below the failsafe currents under c1 (12 A): offline chargers draw those."""

COMMAND_TIMEOUT_S = 10.0
"""The adapter gives up on an answer after this (the controller's lapse margin and settle
time leave room for it)."""

chargers = st.sampled_from(CHARGERS)


class LostAnswers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.rig = Rig(TOPOLOGY, SETTINGS, FakeClock(T0))
        self.c1_history: list[tuple[datetime, float]] = [(T0, 32.0)]

        def boot_all() -> None:
            for cid in CHARGERS:
                self.rig.boot(cid)

        def plug_all() -> None:
            for cid in CHARGERS:
                self.rig.plug(cid)

        # Every charger booted and charging, every answer in: the shares are tight from
        # the first step, so what goes wrong next matters.
        self.step(boot_all)
        self.loop.run_until_complete(self.rig.answer_all())
        self.rig.clock.advance(31)  # the chargers are back from their boot
        self.step(plug_all)
        self.loop.run_until_complete(self.rig.answer_all())

    def step(self, action: Callable[[], object]) -> None:
        """Do ``action`` inside the event loop (the controller's tasks need one), then let
        the controller react: cycles, and the outcomes already resolved, until quiet."""

        async def body() -> None:
            action()
            await self.rig.spin()
            await self.rig.cycle()

        self.loop.run_until_complete(body())

    def teardown(self) -> None:
        self.loop.run_until_complete(self.rig.controller.stop())
        self.loop.close()

    def up_with_head(self, charger: str) -> bool:
        return self.rig.driver.chargers[charger].link == "up" and \
            self.rig.driver.head(charger) is not None

    # --- the chargers and their links -------------------------------------------------------

    @rule(charger=chargers, late=st.booleans())
    def answer(self, charger: str, late: bool) -> None:
        if self.up_with_head(charger):
            self.step(lambda: self.rig.driver.answer(charger, late=late))

    @rule(charger=chargers)
    def refuse(self, charger: str) -> None:
        if self.up_with_head(charger):
            self.step(lambda: self.rig.driver.answer(charger, accept=False))

    @rule(charger=chargers,
          result=st.sampled_from([CommandResult.TIMEOUT, CommandResult.LOST]))
    def answer_lost(self, charger: str, result: CommandResult) -> None:
        """The answer never comes: on a good link the charger applied the command, on a
        half-open one the command vanished."""
        if self.rig.driver.head(charger) is not None:
            applied = self.rig.driver.chargers[charger].link == "up"
            self.step(lambda: self.rig.driver.lose(charger, applied=applied, result=result))

    @rule(charger=chargers)
    def late_answers_arrive(self, charger: str) -> None:
        self.step(lambda: self.rig.driver.deliver_late(charger))

    @rule(charger=chargers, head_applied=st.booleans())
    def link_drops(self, charger: str, head_applied: bool) -> None:
        if self.rig.driver.chargers[charger].link == "down":
            return

        def drop() -> None:
            self.rig.driver.drop_link(charger, head_applied=head_applied)
            self.rig.controller.handle(ChargerOffline(charger, self.rig.clock.now()))

        self.step(drop)

    @rule(charger=chargers)
    def link_half_open(self, charger: str) -> None:
        model = self.rig.driver.chargers[charger]
        if model.link == "up":
            model.link = "half"

    @rule(charger=chargers)
    def heartbeat_missed(self, charger: str) -> None:
        if self.rig.driver.chargers[charger].link != "half":
            return

        def silent() -> None:
            self.rig.driver.drop_link(charger, head_applied=False)
            self.rig.controller.handle(ChargerOffline(charger, self.rig.clock.now(), "silent"))

        self.step(silent)

    @rule(charger=chargers)
    def reconnects(self, charger: str) -> None:
        model = self.rig.driver.chargers[charger]
        if model.link != "down":
            return

        def online() -> None:
            model.link = "up"
            self.rig.controller.handle(ChargerOnline(charger, self.rig.clock.now()))

        self.step(online)

    @rule(charger=chargers, late_first=st.booleans())
    def reboots(self, charger: str, late_first: bool) -> None:
        """A boot numbered after every answer that came before it; those answers reach us
        before or after the boot."""
        if late_first:
            self.step(lambda: self.rig.driver.deliver_late(charger))
        self.step(lambda: self.rig.boot(charger))

    # --- cars, limits, time ---------------------------------------------------------------

    @rule(charger=chargers)
    def car_arrives(self, charger: str) -> None:
        if 1 not in self.rig.driver.chargers[charger].car:
            self.step(lambda: self.rig.plug(charger))

    @rule(charger=chargers)
    def car_leaves(self, charger: str) -> None:
        if 1 in self.rig.driver.chargers[charger].car:
            self.step(lambda: self.rig.unplug(charger))

    @rule(limit=st.sampled_from(C1_LIMITS))
    def limit_changes(self, limit: float) -> None:
        now = self.rig.clock.now()
        self.c1_history.append((now, limit))
        self.step(lambda: self.rig.controller.handle(
            LimitChanged("c1", now, "operator", max_current=limit)))

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 15.0, 40.0]))
    def time_passes(self, seconds: float) -> None:
        """Second by second, as the controller's tick runs; a command on the wire for
        longer than the command timeout is resolved as a real link would (see
        :meth:`ModelDriver.time_out`); the limit holds at every second on the way."""
        left = seconds
        while left > 0:
            dt = min(1.0, left)
            left -= dt

            def tick(dt: float = dt) -> None:
                self.rig.clock.advance(dt)
                self.rig.driver.time_out(COMMAND_TIMEOUT_S)

            self.step(tick)
            self.every_group_within_its_limit()

    @precondition(lambda self: any(m.link == "up" and m.frames
                                   for m in self.rig.driver.chargers.values()))
    @rule()
    def everyone_answers(self) -> None:
        self.loop.run_until_complete(self.rig.answer_all())

    # --- the invariant ----------------------------------------------------------------------

    def c1_bound(self) -> float:
        """The highest c1 limit in force at any time in the last lease plus settle time."""
        now = self.rig.clock.now()
        since = now - timedelta(seconds=LEASE_S + SETTINGS.settle_s)
        bound = 0.0
        for i, (_, limit) in enumerate(self.c1_history):
            end = self.c1_history[i + 1][0] if i + 1 < len(self.c1_history) else now
            if end >= since:
                bound = max(bound, limit)
        return bound

    @invariant()
    def every_group_within_its_limit(self) -> None:
        limits: dict[str, float | None] = {"main": 40.0, "c1": self.c1_bound(), "c2": 20.0}
        assert self.rig.overloads(limits) == []


LostAnswers.TestCase.settings = settings(
    max_examples=200 * int(os.environ.get("GRIDSHARE_EXAMPLES_FACTOR", "1")),
    stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_no_sequence_of_lost_late_or_refused_answers_breaks_a_limit = LostAnswers.TestCase
