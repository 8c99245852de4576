"""The control loop of one site: state ← events, decide (pure core), act, verify.

The loop only schedules and does I/O; every decision is made in the pure core on the
injected clock. One worker runs cycles one at a time. A cycle:

1. refreshes the state for the passing of time and builds a snapshot (what the command
   ledger says connectors may obey beyond the allocation's reach is reserved in it);
2. allocates (``core.allocation.allocate``) and passes the safety guard once
   (``core.guard.enforce``);
3. asks ``core.decide.decide`` what to send now: decreases (anything that raises no
   connector's worst case: lower targets, renewals, idle holds, retries) and the increases
   that fit even with every connector at its worst case (old values while decreases are in
   flight or settling, unknown outcomes until their validTo); the others are held;
4. checks each step with ``core.guard.check_plan`` against every connector's worst case
   and submits it as one batch (``driver.submit_setpoints``): decreases, then increases. A
   refused step is never sent (alarm).

Nothing waits inside a cycle: every command is in the ledger from the moment it is
submitted, and the outcomes, as they arrive, update the ledger and trigger a new cycle —
an accepted decrease lets a held increase go, an unknown outcome makes the others give way.
The outcomes that arrive in one pass of the event loop are folded in together, at one
time, with one trigger; when nothing waits for headroom (no increase held, no step
refused), an accept or a lowered count that the allocation does not reserve wakes no cycle
(see :meth:`SiteState.record_outcome`). Until its outcome is folded in, a command counts
as in flight (the larger of old and new): a later fold is never less safe.
Time alone (a lease to renew, a settle window over, an unknown outcome expired, a backoff
over) wakes the loop at the time the decision named.

Events arrive on the bus (or through :meth:`Controller.handle`); bursts are batched by a
short debounce, while anything that lowers headroom triggers a cycle at once. A tick
handles what time alone changes (stale meters, expired limits, violators, rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gridshare.bus import Bus, Subscription
from gridshare.clock import Clock, SystemClock
from gridshare.controller.audit import AlarmRecord, AuditSink, CommandRecord
from gridshare.controller.state import Impact, SiteState, StateSettings
from gridshare.controller.views import ControllerStatus, build_status
from gridshare.core import guard
from gridshare.core.allocation import allocate
from gridshare.core.decide import (
    DecideSettings,
    Decision,
    RetryPolicy,
    RetryState,
    Send,
    decide,
    next_retry,
)
from gridshare.core.decision import Alarm, Allocation, RotationState
from gridshare.core.ledger import Effect
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ConnectorKey, Policy, Topology
from gridshare.drivers import ChargerDriver, CommandOutcome, CommandResult, SetpointRequest
from gridshare.events import ChargerBooted, ChargerOnline, Event
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.controller")

_RESULT_COUNTERS = {result: f"setpoint_{result.value}" for result in CommandResult}


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    lease_s: float = 180.0
    """Validity of every live setpoint; the charger falls back to failsafe after it."""
    renew_fraction: float = 0.5
    """Re-send a live setpoint once this fraction of its lease has passed."""
    debounce_s: float = 0.075
    """Bursts of events within this window become one allocation."""
    tick_s: float | None = 1.0
    """Period of the housekeeping tick; None disables the task and the wake-up timers
    (tests call ``tick`` and ``run_cycle`` on a fake clock)."""
    recompute_s: float = 5.0
    """Re-allocate at least this often (rotation of pauses, deadlines)."""
    settle_s: float = 5.0
    """Cars follow a lowered setpoint only after a few seconds (5–10 s to settle): for this
    long after a decrease is accepted the connector is counted at its old value, and an
    increase that only fits once it has settled waits (others go at once)."""
    retry_backoff_s: float = 1.0
    """After a refused or unanswered command, wait this long before sending to that
    connector (or charger, for its failsafe) again; doubled after each further failure up
    to ``retry_backoff_max_s``. The one retry policy: the driver does not retry."""
    retry_backoff_max_s: float = 30.0
    policy: Policy | None = None
    """Override every group's configured policy."""
    state: StateSettings = field(default_factory=StateSettings)
    max_alarms: int = 200

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(base_s=self.retry_backoff_s, max_s=self.retry_backoff_max_s)

    @property
    def decide(self) -> DecideSettings:
        return DecideSettings(lease_s=self.lease_s, renew_fraction=self.renew_fraction)


@dataclass(frozen=True, slots=True)
class CycleReport:
    at: datetime
    allocation: Allocation
    decision: Decision
    sent: tuple[Send, ...]
    """What was submitted (both steps, unless a step was refused)."""
    refused: tuple[Alarm, ...]
    """Why check_plan refused a step (nothing of that step was sent)."""
    compute_s: float

    @property
    def increases_held(self) -> int:
        """Increases waiting for answers, settle windows or unknown outcomes to expire."""
        return len(self.decision.held)


@dataclass(frozen=True, slots=True)
class _Pending:
    send: Send
    command_id: int
    started: float


class Controller:
    """The live loop of one site. Start it, feed it events, stop it."""

    def __init__(self, topology: Topology, driver: ChargerDriver, clock: Clock | None = None,
                 *, settings: ControllerSettings | None = None, bus: Bus | None = None,
                 audit: AuditSink | None = None) -> None:
        self.topology = topology
        self.driver = driver
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or ControllerSettings()
        self.state = SiteState(topology, self.settings.state, settle_s=self.settings.settle_s)
        self.audit = audit
        self._bus = bus
        self._subscription: Subscription | None = None
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._busy = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._outcome_tasks: set[asyncio.Future[CommandOutcome]] = set()
        """Tasks wrapping a driver's plain coroutines (a driver's futures need none)."""
        self._stopped = False
        self._in_flight = 0
        self._arrived: list[tuple[_Pending, CommandOutcome]] = []
        """Outcomes resolved since the last fold (see :meth:`_fold_arrived`)."""
        self._fold_handle: asyncio.Handle | None = None
        self._step_refused = False
        """The last cycle's check_plan refused a step: its increases wait for headroom."""
        self._failsafe_tasks: dict[str, asyncio.Task[None]] = {}
        self._failsafe_ok: set[str] = set()
        self._failsafe_retry: dict[str, RetryState] = {}
        self._retries: dict[ConnectorKey, RetryState] = {}
        self._wake_at: datetime | None = None
        self._wake_timer: asyncio.TimerHandle | None = None
        self._rotation: RotationState | None = None
        self._allocation: Allocation | None = None
        self._snapshot: Snapshot | None = None
        self._decision: Decision | None = None
        self._last_cycle_at: datetime | None = None
        self._alarms: deque[AlarmRecord] = deque(maxlen=self.settings.max_alarms)
        self._active_alarms: dict[tuple[str, str, str | None, str], AlarmRecord] = {}
        self._flagged: set[ConnectorKey] = set()
        self._meter_alarms: dict[str, AlarmRecord] = {}
        self.counters: Counter[str] = Counter()
        self.last_report: CycleReport | None = None
        self._cycle_listeners: list[Callable[[CycleReport], None]] = []
        self._command_listeners: list[Callable[[CommandRecord], None]] = []
        self._event_listeners: list[Callable[[Event], None]] = []
        self._change_listeners: list[Callable[[str, str | None], None]] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the bus (before adapters start publishing) and start the tasks."""
        if self._tasks:
            return
        self._stopped = False
        if self._bus is not None:
            self._subscription = self._bus.subscribe("controller")
            self._supervise("events", self._consume)
        self._supervise("worker", self._work)
        if self.settings.tick_s is not None:
            self._supervise("tick", self._tick_loop)
        self._trigger(Impact.CHANGED)

    async def stop(self) -> None:
        """Stop deciding. Outcomes still awaited are dropped; leases let chargers fall
        back to their failsafe."""
        if self._subscription is not None:
            self._subscription.close()
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        if self._fold_handle is not None:
            self._fold_handle.cancel()
            self._fold_handle = None
        self._arrived.clear()
        self._stopped = True
        tasks: list[asyncio.Future[Any]] = [*self._tasks.values(), *self._outcome_tasks,
                                            *self._failsafe_tasks.values()]
        await cancel_and_wait(tasks, swallow_errors=True)
        self._tasks.clear()

    def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory`` as a named task; log and restart it if it crashes."""

        async def runner() -> None:
            backoff_s = 0.2
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.counters["task_crashes"] += 1
                    log.exception("controller task %r crashed; restarting", name)
                    self._alarm("internal", f"controller task {name} crashed: {exc!r}")
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 10.0)

        self._tasks[name] = asyncio.create_task(runner(), name=f"gridshare-{name}")

    def on_cycle(self, listener: Callable[[CycleReport], None]) -> None:
        """Call ``listener`` after every allocation cycle (benchmarks, dashboards)."""
        self._cycle_listeners.append(listener)

    def on_command(self, listener: Callable[[CommandRecord], None]) -> None:
        """Call ``listener`` with each command's record once its outcome is known (what
        the audit log gets): metrics. It must be quick."""
        self._command_listeners.append(listener)

    def on_event(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event folded in (ingest metrics). It must be quick."""
        self._event_listeners.append(listener)

    def _record_command(self, record: CommandRecord) -> None:
        if self.audit is not None:
            self.audit.record_command(record)
        for listener in self._command_listeners:
            try:
                listener(record)
            except Exception:
                log.exception("command listener %r failed", listener)

    def on_change(self, listener: Callable[[str, str | None], None]) -> Callable[[], None]:
        """Call ``listener(what, charger)`` each time something changes — "event" (one
        folded in; the charger it is about, if any), "cycle" (an allocation), "alarm"
        (raised or cleared), "command" (an outcome came back, for that charger) — for live
        views (the API's cache and stream). It must be quick and must not raise. Returns
        its remover."""
        self._change_listeners.append(listener)

        def remove() -> None:
            if listener in self._change_listeners:
                self._change_listeners.remove(listener)

        return remove

    def _changed(self, what: str, charger: str | None = None) -> None:
        for listener in tuple(self._change_listeners):
            try:
                listener(what, charger)
            except Exception:
                log.exception("change listener %r failed", listener)

    def add_chargers(self, topology: Topology) -> tuple[str, ...]:
        """Run ``topology`` from now on: the running one with chargers added (an operator
        adopted them; anything else raises :class:`~gridshare.core.additions.NotAnAddition`
        and changes nothing). Everything known of the existing chargers stays; each new one
        counts at its failsafe until it is online and controlled, so the next cycle (at
        once) makes room for that first, decreases before increases, through the guard.
        Returns the ids added."""
        added = self.state.add_chargers(topology)
        self.topology = topology
        log.warning("topology: %d charger(s) added live: %s", len(added), ", ".join(added))
        for cid in added:  # live views build the new chargers' parts
            self._changed("topology", cid)
        self._trigger(Impact.URGENT)
        return added

    # --- input ----------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Fold one event into the state and schedule what it calls for."""
        self.counters["events"] += 1
        impact = self.state.apply(event)
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed", listener)
        self._changed("event", getattr(event, "charger", None))
        # A booted charger may have lost its profiles; one we have not served since we
        # started may never have had them.
        if isinstance(event, ChargerBooted) or (isinstance(event, ChargerOnline)
                                                and event.charger not in self._failsafe_ok):
            self._send_failsafe(event.charger)
        self._trigger(impact)

    def handle_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.handle(event)

    def _trigger(self, impact: Impact) -> None:
        if impact is Impact.URGENT:
            self._urgent.set()
            self._wake.set()
        elif impact is Impact.CHANGED:
            self._wake.set()

    def request_cycle(self, *, urgent: bool = False) -> None:
        self._trigger(Impact.URGENT if urgent else Impact.CHANGED)

    async def _consume(self) -> None:
        assert self._subscription is not None
        async for event in self._subscription:
            try:
                self.handle(event)
            except Exception:
                # One bad event must not stop every later one (a limit cut among them).
                self.counters["event_errors"] += 1
                log.exception("controller: event %r could not be handled", event)

    # --- the worker -----------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            if not self._urgent.is_set() and self.settings.debounce_s > 0:
                # Not wait_for: on 3.11 it can swallow a cancellation racing the event.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.debounce_s):
                        await self._urgent.wait()
            self._wake.clear()
            self._urgent.clear()
            self._busy = True
            try:
                await self.run_cycle()
            finally:
                self._busy = False

    async def run_cycle(self) -> CycleReport:
        """One allocation cycle (see the module docstring). Never waits for an answer."""
        started = time.perf_counter()
        now = self.clock.now()
        self.state.refresh(now)
        self._report_violators(now)
        self._report_meters(now)
        # The plan is checked against every connector's worst case from the ledger, so
        # its snapshot must not also reserve them.
        snapshot, plan_snapshot = self.state.snapshots(now)
        allocation = guard.enforce(self.topology, snapshot, allocate(
            self.topology, snapshot, policy=self.settings.policy, rotation=self._rotation))
        self._rotation = allocation.rotation
        self._allocation = allocation
        self._snapshot = snapshot
        self._last_cycle_at = now
        self.counters["cycles"] += 1
        self._allocation_alarms(allocation, now)

        decision = decide(self.topology, plan_snapshot, allocation, self.state.ledger,
                          self._retries, self.settings.decide, now)
        self._decision = decision
        self._step_refused = False
        steps: list[tuple[Send, ...]] = []
        refused: list[Alarm] = []
        for step in (decision.decreases, decision.increases):
            if not step:
                continue
            alarms = guard.check_plan(self.topology, plan_snapshot, decision.counted,
                                      {s.key: s.current_a for s in step})
            if alarms:
                refused.extend(alarms)
                self.counters["steps_refused"] += 1
                for alarm in alarms:
                    self._alarm("plan", f"step not sent: {alarm.message}", group=alarm.group,
                                phase=alarm.phase.name if alarm.phase is not None else None,
                                load=alarm.load, limit=alarm.limit)
                self._step_refused = True
                break  # a refused step stops the cycle: the increases wait
            steps.append(step)
        compute_s = time.perf_counter() - started
        for step in steps:
            self._submit(step, now)
        sent = tuple(s for step in steps for s in step)
        if decision.held:
            self.counters["increases_held"] += 1
        self._schedule_wake(decision.wake_at, now)
        report = CycleReport(now, allocation, decision, sent, tuple(refused), compute_s)
        self.last_report = report
        for listener in self._cycle_listeners:
            listener(report)
        self._changed("cycle")
        if sent or decision.held:
            log.debug("cycle: %d sent, %d increases held, %.1f ms", len(sent),
                      len(decision.held), compute_s * 1000)
        return report

    def _schedule_wake(self, wake_at: datetime | None, now: datetime) -> None:
        """Remember when time alone changes the decision; with a running tick, also set a
        timer so a settle window or a backoff ends on time rather than at the next tick."""
        self._wake_at = wake_at
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        if wake_at is None or self.settings.tick_s is None:
            return
        delay_s = max(0.0, (wake_at - now).total_seconds()) + 0.01
        self._wake_timer = asyncio.get_running_loop().call_later(
            delay_s, self._trigger, Impact.CHANGED)

    # --- acting ---------------------------------------------------------------------------

    def _submit(self, step: Sequence[Send], now: datetime) -> None:
        """Record every command of the step in the ledger, hand them to the driver as one
        batch, and fold the outcomes in as they come (a callback on the driver's future; a
        task only for a driver that returns plain coroutines), those of one event-loop
        pass together."""
        lease_s = self.settings.lease_s
        started = time.perf_counter()
        pending = [_Pending(s, self.state.record_sent(s.key, s.current_a, now, lease_s),
                            started) for s in step]
        requests = [SetpointRequest(s.key[0], s.key[1], s.current_a, lease_s) for s in step]
        self._in_flight += len(pending)
        try:
            awaitables = self.driver.submit_setpoints(requests)
        except Exception as exc:
            log.exception("driver failed to take %d setpoints", len(requests))
            if isinstance(exc, ValueError):
                # Refused before anything was queued: certainly not applied.
                outcome = CommandOutcome(CommandResult.REJECTED, sent=False,
                                         detail=f"driver refused the batch: {exc}")
            else:
                outcome = CommandOutcome(CommandResult.TIMEOUT,
                                         detail=f"driver error {exc!r}")
            for item in pending:
                self._driver_error(item, exc)
            self._outcomes([(item, outcome) for item in pending])
            return
        for item, awaitable in zip(pending, awaitables, strict=True):
            if asyncio.isfuture(awaitable):
                future: asyncio.Future[CommandOutcome] = awaitable
            else:
                future = asyncio.ensure_future(awaitable)
                self._outcome_tasks.add(future)
                future.add_done_callback(self._outcome_tasks.discard)
            future.add_done_callback(functools.partial(self._resolved, item))

    def _resolved(self, item: _Pending, future: asyncio.Future[CommandOutcome]) -> None:
        if self._stopped:
            return
        if future.cancelled():
            outcome = CommandOutcome(CommandResult.TIMEOUT, detail="cancelled")
        elif (exc := future.exception()) is not None:
            # We cannot tell whether the frame left: the outcome is unknown.
            log.error("setpoint %s/%s: driver error %r", *item.send.key, exc)
            self._driver_error(item, exc if isinstance(exc, Exception) else Exception(exc))
            outcome = CommandOutcome(CommandResult.TIMEOUT, detail=f"driver error {exc!r}")
        else:
            outcome = future.result()
        self._arrived.append((item, outcome))
        if self._fold_handle is None:
            self._fold_handle = asyncio.get_running_loop().call_soon(self._fold_arrived)

    def _fold_arrived(self) -> None:
        """Fold in every outcome resolved since the last fold: the futures a burst of
        answers resolved in one pass of the event loop run their callbacks in the next,
        and this runs after them."""
        self._fold_handle = None
        batch, self._arrived = self._arrived, []
        if batch and not self._stopped:
            self._outcomes(batch)

    def _driver_error(self, item: _Pending, exc: Exception) -> None:
        charger, connector = item.send.key
        self._alarm("command", f"{charger}/{connector}: driver error {exc!r}",
                    group=self.topology.chargers[charger].group, load=item.send.current_a)

    def _waiting(self) -> bool:
        """Whether an increase waits for headroom (held by the decision, or its step
        refused by check_plan): then an accepted or lowered count may let it go."""
        return self._decision is None or bool(self._decision.held) or self._step_refused

    def _outcomes(self, batch: Sequence[tuple[_Pending, CommandOutcome]]) -> None:
        """Fold a batch of answers (or their absence) in, in order, at one time: ledger,
        backoff, alarms, audit, then one trigger for the next cycle (the most urgent any
        of them calls for)."""
        self._in_flight -= len(batch)
        at = self.clock.now()
        effects, impact = self.state.record_outcomes(
            [(item.send.key, item.command_id, outcome) for item, outcome in batch], at,
            self.settings.settle_s, wake_on_apply=self._waiting())
        policy = self.settings.retry
        finished = time.perf_counter()
        counters = self.counters
        chargers: dict[str, None] = {}
        for (item, outcome), effect in zip(batch, effects, strict=True):
            send = item.send
            key = send.key
            counters[_RESULT_COUNTERS[outcome.result]] += 1
            retry = next_retry(self._retries.get(key), outcome, at, policy)
            if retry is None:
                self._retries.pop(key, None)
            else:
                self._retries[key] = retry
                impact = max(impact, Impact.CHANGED)
            charger, connector = key
            if effect is Effect.REJECTED:
                in_force = self.state.ledger[key].effective_a(
                    self.state.ledger.failsafe_a(key), at)
                self._alarm("rejected", f"{charger}/{connector} refused {send.current_a:g} A "
                            f"({outcome.detail or 'Rejected'}); the profile in force stays "
                            f"and counts ({in_force:g} A)",
                            group=self.topology.chargers[charger].group, load=send.current_a)
            elif effect is Effect.UNKNOWN:
                log.warning("setpoint %.1f A to %s/%s: %s, outcome unknown; counted until %s",
                            send.current_a, charger, connector, outcome.result.value,
                            outcome.valid_to or "its lease ends")
            elif effect is Effect.VOID:
                counters["setpoint_void"] += 1
            self._record_command(CommandRecord(
                at, charger, connector, send.kind, send.current_a, send.counted_a,
                outcome.result, finished - item.started))
            chargers[charger] = None
        for charger in chargers:
            self._changed("command", charger)
        self._trigger(impact)

    # --- failsafe -------------------------------------------------------------------------

    def _send_failsafe(self, charger_id: str) -> None:
        if charger_id not in self.topology.chargers:
            return
        running = self._failsafe_tasks.get(charger_id)
        if running is not None and not running.done():
            running.cancel()
        task = asyncio.create_task(self._failsafe(charger_id), name=f"failsafe {charger_id}")
        self._failsafe_tasks[charger_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._failsafe_tasks.get(charger_id) is t:
                del self._failsafe_tasks[charger_id]

        task.add_done_callback(done)

    async def _failsafe(self, charger_id: str) -> None:
        """Install the default profile; on failure retry with the one backoff policy (sent
        again at the next connection when the charger is offline)."""
        amps = self.topology.chargers[charger_id].failsafe_current
        started = time.perf_counter()
        try:
            outcome = await self.driver.apply_failsafe(charger_id, amps)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("failsafe %s: driver error", charger_id)
            outcome = CommandOutcome(CommandResult.TIMEOUT, detail=f"driver error {exc!r}")
        at = self.clock.now()
        result = outcome.result
        self.counters[f"failsafe_{result.value}"] += 1
        retry = next_retry(self._failsafe_retry.get(charger_id), outcome, at,
                           self.settings.retry)
        if result is CommandResult.ACCEPTED:
            self._failsafe_ok.add(charger_id)
            self._failsafe_retry.pop(charger_id, None)
        elif result in (CommandResult.OFFLINE, CommandResult.SUPERSEDED):
            self._failsafe_retry.pop(charger_id, None)
        elif retry is not None:
            self._failsafe_retry[charger_id] = retry
            delay_s = self.settings.retry.delay_s(retry.failures)
            self._alarm("command", f"{charger_id}: failsafe {amps:g} A not installed "
                        f"({result.value}); again in {delay_s:g} s",
                        group=self.topology.chargers[charger_id].group, load=amps)
        self._record_command(CommandRecord(at, charger_id, 0, "failsafe", amps, None, result,
                                           time.perf_counter() - started))

    # --- time -----------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        assert self.settings.tick_s is not None
        while True:
            await asyncio.sleep(self.settings.tick_s)
            await self.tick()

    async def tick(self) -> None:
        """Housekeeping for the passing of time; schedules a cycle when one is needed."""
        now = self.clock.now()
        impact = self.state.refresh(now)
        self._report_violators(now)
        self._report_meters(now)
        if impact is Impact.NONE:
            overdue = self._last_cycle_at is None or \
                (now - self._last_cycle_at).total_seconds() >= self.settings.recompute_s
            if overdue or (self._wake_at is not None and now >= self._wake_at):
                impact = Impact.CHANGED
        for charger_id, retry in list(self._failsafe_retry.items()):
            if retry.not_before <= now and self.state.online(charger_id) and \
                    charger_id not in self._failsafe_tasks:
                self._send_failsafe(charger_id)
        self._trigger(impact)

    def _report_violators(self, now: datetime) -> None:
        """Alarm on violators as they appear; log when they comply again."""
        current = {v.key: v for v in self.state.violators(now)}
        for key, v in current.items():
            if key not in self._flagged:
                charger = self.topology.chargers[key[0]]
                self._alarm("violation", f"{key[0]}/{key[1]} draws {v.measured_a:.1f} A, "
                            f"above its {v.allowed_a:.1f} A setpoint; counted at what it "
                            f"draws and paused", group=charger.group, load=v.measured_a,
                            limit=v.allowed_a)
        for key in self._flagged - set(current):
            log.info("%s/%s is back within its setpoint", key[0], key[1])
        self._flagged = set(current)

    def _report_meters(self, now: datetime) -> None:
        """Alarm when a meter goes quiet (its groups are at 0 A headroom), clear when it
        reports again."""
        current = self.state.meter_alarms(now)
        for meter_id, message in current.items():
            if self._meter_alarms.get(meter_id) is None or \
                    self._meter_alarms[meter_id].message != message:
                groups = self.state.meter_groups(meter_id)
                self._meter_alarms[meter_id] = self._alarm(
                    "meter", message, group=groups[0] if groups else "")
        for meter_id in list(self._meter_alarms):
            if meter_id not in current:
                self._clear_alarm(self._meter_alarms.pop(meter_id), now)

    # --- alarms ---------------------------------------------------------------------------

    def _alarm(self, kind: str, message: str, *, group: str = "", phase: str | None = None,
               load: float = 0.0, limit: float = 0.0) -> AlarmRecord:
        record = AlarmRecord(self.clock.now(), kind, group, phase, load, limit, message)
        self._alarms.append(record)
        self.counters[f"alarms_{kind}"] += 1
        log.warning("ALARM %s: %s", kind, message)
        if self.audit is not None:
            self.audit.record_alarm(record)
        self._changed("alarm")
        return record

    def _allocation_alarms(self, allocation: Allocation, now: datetime) -> None:
        """Log allocation alarms when they appear and when they clear, not every cycle."""
        seen: dict[tuple[str, str, str | None, str], Alarm] = {}
        kind = "guard" if allocation.guarded else "limit"
        snapshot = self._snapshot
        for alarm in allocation.alarms:
            if kind == "limit" and snapshot is not None and \
                    snapshot.conditions(alarm.group).meter_stale:
                continue  # its meter is quiet: the meter alarm says why, not 'offline ...'
            phase = alarm.phase.name if alarm.phase is not None else None
            seen[(kind, alarm.group, phase, alarm.message.split(":")[0])] = alarm
        for key, alarm in seen.items():
            if key not in self._active_alarms:
                self._active_alarms[key] = self._alarm(
                    key[0], alarm.message, group=alarm.group, phase=key[2], load=alarm.load,
                    limit=alarm.limit)
        for key in list(self._active_alarms):
            if key[0] in ("limit", "guard") and key not in seen:
                self._clear_alarm(self._active_alarms.pop(key), now)

    def _clear_alarm(self, old: AlarmRecord, now: datetime) -> None:
        """An alarm's condition has ended: say so once, in the list and the audit log."""
        cleared = AlarmRecord(now, old.kind, old.group, old.phase, old.load, old.limit,
                              f"cleared: {old.message}", cleared=True)
        self._alarms.append(cleared)
        log.info("alarm cleared: %s", old.message)
        if self.audit is not None:
            self.audit.record_alarm(cleared)
        self._changed("alarm")

    # --- views ----------------------------------------------------------------------------

    @property
    def allocation(self) -> Allocation | None:
        return self._allocation

    @property
    def last_snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def recent_alarms(self) -> tuple[AlarmRecord, ...]:
        return tuple(self._alarms)

    def in_force(self) -> dict[ConnectorKey, float]:
        """Accepted setpoints still inside their lease."""
        now = self.clock.now()
        out = {}
        for conn in self.topology.connectors():
            amps = self.state.in_force_a(conn.key, now)
            if amps is not None:
                out[conn.key] = amps
        return out

    def counted(self) -> dict[ConnectorKey, float]:
        """Every connector's worst case now (what every limit counts it at)."""
        now = self.clock.now()
        return {conn.key: self.state.believed_a(conn.key, now)
                for conn in self.topology.connectors()}

    @property
    def last_decision(self) -> Decision | None:
        return self._decision

    def retry_state(self, key: ConnectorKey) -> RetryState | None:
        return self._retries.get(key)

    @property
    def commands_in_flight(self) -> int:
        """Commands submitted whose outcome has not come back yet."""
        return self._in_flight

    @property
    def idle(self) -> bool:
        return not (self._wake.is_set() or self._busy or self._in_flight
                    or self._failsafe_tasks)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Wait until no cycle is due or running and no command is in flight (tests)."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0.005 if self.idle else 0.01)
            quiet = quiet + 1 if self.idle else 0
            if time.monotonic() > deadline:
                raise TimeoutError("controller did not settle")

    def status(self) -> ControllerStatus:
        """Groups (load against limit per phase), connectors, recent alarms, counters."""
        return build_status(self)
