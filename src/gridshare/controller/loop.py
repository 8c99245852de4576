"""The control loop of one site: state ← events, decide (pure core), act, verify.

One worker runs allocation cycles one at a time, so a cycle's "decreases first, then
increases" ordering is never interleaved with another cycle's increases. A cycle:

1. refreshes the state for the passing of time and builds a snapshot;
2. allocates (``core.allocation.allocate``) and passes the result through the safety guard;
3. plans the transition from what each charger may be drawing now to the target;
4. sends every decrease (and due lease renewals and idle-connector holds) concurrently and
   waits until each is accepted, refused or timed out — an urgent change (limit cut,
   charger offline, stale meter) interrupts the wait and starts a fresh cycle at once;
5. only if every decrease was accepted and nothing urgent happened, sends the increases —
   those that fit even while recent decreases settle (cars take seconds to follow a
   lower setpoint) go at once, the others when the decreases have settled.

What each connector may be drawing is tracked conservatively in
:class:`~gridshare.controller.state.SiteState`: a command in flight, a failed command, a
lease, a setpoint left from the previous car all count until proven otherwise.

Events arrive on the bus (or through :meth:`Controller.handle`); bursts are batched by a
short debounce, while anything that lowers headroom triggers a cycle at once. A 1 s tick
handles what time alone changes: stale meters, expired limits and leases, violators,
rotation of paused cars, retries and failsafe re-sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gridshare.bus import Bus, Subscription
from gridshare.controller.audit import AlarmRecord, AuditSink, CommandKind, CommandRecord
from gridshare.controller.clock import Clock, SystemClock
from gridshare.controller.state import Impact, SiteState, StateSettings
from gridshare.controller.views import ControllerStatus, build_status
from gridshare.core import guard
from gridshare.core.allocation import allocate, plan_transition
from gridshare.core.decision import Alarm, Allocation, Command, RotationState
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ConnectorKey, Policy, Topology
from gridshare.drivers import ChargerDriver, CommandResult
from gridshare.events import ChargerBooted, ChargerOnline, Event

log = logging.getLogger("gridshare.controller")

_EPS = 1e-6

@dataclass(frozen=True, slots=True)
class ControllerSettings:
    lease_s: float = 180.0
    """Validity of every live setpoint; the charger falls back to failsafe after it."""
    renew_fraction: float = 0.5
    """Re-send a live setpoint once this fraction of its lease has passed."""
    debounce_s: float = 0.075
    """Bursts of events within this window become one allocation."""
    tick_s: float | None = 1.0
    """Period of the housekeeping tick; None disables the task (tests call ``tick``)."""
    recompute_s: float = 5.0
    """Re-allocate at least this often (rotation of pauses, deadlines)."""
    settle_s: float = 5.0
    """Cars follow a lowered setpoint only after a few seconds (5–10 s to settle): for this
    long after a decrease is accepted the connector is counted at its old value, and an
    increase that only fits once it has settled waits (others go at once)."""
    retry_backoff_s: float = 1.0
    """After a refused or timed-out command, wait this long before re-sending to that
    connector; doubled after each further failure up to ``retry_backoff_max_s``."""
    retry_backoff_max_s: float = 30.0
    failsafe_retry_s: float = 10.0
    policy: Policy | None = None
    """Override every group's configured policy."""
    state: StateSettings = field(default_factory=StateSettings)
    max_alarms: int = 200


@dataclass(frozen=True, slots=True)
class CycleReport:
    at: datetime
    allocation: Allocation
    decreases: tuple[Command, ...]
    increases: tuple[Command, ...]
    renewals: tuple[Command, ...]
    increases_sent: bool
    """False when a decrease failed or an urgent change interrupted the cycle."""
    increases_held: int
    """Increases waiting for recent decreases to settle (sent by a later cycle)."""
    compute_s: float


class Controller:
    """The live loop of one site. Start it, feed it events, stop it."""

    def __init__(self, topology: Topology, driver: ChargerDriver, clock: Clock | None = None,
                 *, settings: ControllerSettings | None = None, bus: Bus | None = None,
                 audit: AuditSink | None = None) -> None:
        self.topology = topology
        self.driver = driver
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or ControllerSettings()
        self.state = SiteState(topology, self.settings.state)
        self.audit = audit
        self._bus = bus
        self._subscription: Subscription | None = None
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._urgent_gen = 0
        self._busy = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._commands: set[asyncio.Task[CommandResult]] = set()
        self._decreases: set[asyncio.Task[CommandResult]] = set()
        self._failsafe_tasks: dict[str, asyncio.Task[None]] = {}
        self._failsafe_ok: set[str] = set()
        self._failsafe_due: dict[str, datetime] = {}
        self._retry_after: dict[ConnectorKey, datetime] = {}
        self._failures: dict[ConnectorKey, int] = {}
        self._latest: dict[ConnectorKey, int] = {}
        self._settling: dict[ConnectorKey, tuple[float, float]] = {}
        """Connector → (current it may still draw, loop time its decrease has settled)."""
        self._settle_timer: asyncio.TimerHandle | None = None
        self._command_seq = 0
        self._rotation: RotationState | None = None
        self._allocation: Allocation | None = None
        self._snapshot: Snapshot | None = None
        self._last_cycle_at: datetime | None = None
        self._alarms: deque[AlarmRecord] = deque(maxlen=self.settings.max_alarms)
        self._active_alarms: dict[tuple[str, str, str | None, str], AlarmRecord] = {}
        self._flagged: set[ConnectorKey] = set()
        self.counters: Counter[str] = Counter()
        self.last_report: CycleReport | None = None
        self._cycle_listeners: list[Callable[[CycleReport], None]] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the bus (before adapters start publishing) and start the tasks."""
        if self._tasks:
            return
        if self._bus is not None:
            self._subscription = self._bus.subscribe("controller")
            self._supervise("events", self._consume)
        self._supervise("worker", self._work)
        if self.settings.tick_s is not None:
            self._supervise("tick", self._tick_loop)
        self._trigger(Impact.CHANGED)

    async def stop(self) -> None:
        """Stop deciding. Commands in flight are cancelled; leases let chargers fall back."""
        if self._subscription is not None:
            self._subscription.close()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
        tasks: list[asyncio.Task[Any]] = [*self._tasks.values(), *self._commands,
                                          *self._failsafe_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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

    # --- input ----------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Fold one event into the state and schedule what it calls for."""
        self.counters["events"] += 1
        impact = self.state.apply(event)
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
            self._urgent_gen += 1
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
        """One allocation cycle (see the module docstring)."""
        started = time.perf_counter()
        now = self.clock.now()
        self.state.refresh(now)
        self._report_violators(now)
        gen = self._urgent_gen
        snapshot = self.state.to_snapshot(now)
        allocation = allocate(self.topology, snapshot, policy=self.settings.policy,
                              rotation=self._rotation)
        # The guard again, here, independent of how the allocation was made. Limits that
        # offline chargers alone break are explained (everything below them is paused).
        explained = {a.group for a in allocation.alarms}
        if any(a.group not in explained
               for a in guard.check(self.topology, snapshot, allocation.setpoints)):
            allocation = guard.enforce(self.topology, snapshot, allocation)
        self._rotation = allocation.rotation
        self._allocation = allocation
        self._snapshot = snapshot
        self._last_cycle_at = now
        self.counters["cycles"] += 1
        self._allocation_alarms(allocation, now)

        keys = self.state.command_keys()
        # Float noise (10.600000000000001) off: it would make equal values look different.
        target = {k: round(allocation.setpoints[k], 6) for k in keys}
        previous = {k: self.state.believed_a(k) for k in keys}
        plan = plan_transition(previous, target)
        decreases = tuple(c for c in plan.decreases if self._may_send(c, now))
        increases = tuple(c for c in plan.increases if self._may_send(c, now))
        planned = {c.key for c in plan.decreases} | {c.key for c in plan.increases}
        renewals = self._renewals(target, planned, now)
        renewals += [(Command(k, 0.0, self.state.believed_a(k)), "release")
                     for k in self.state.releases_due(now, self.settings.renew_fraction)
                     if self._retry_ok(k, now)]
        compute_s = time.perf_counter() - started

        dec_tasks = [self._send(c, "decrease") for c in decreases]
        for c, kind in renewals:
            self._send(c, kind)
        waiting = set(dec_tasks) | self._decreases
        all_done = await self._wait(waiting, gen)
        increases_sent = False
        held: list[Command] = []
        if all_done and gen == self._urgent_gen and \
                all(t.result() is CommandResult.ACCEPTED for t in dec_tasks):
            ready, held = self._fitting_increases(snapshot, allocation, target, increases)
            for c in ready:
                self._send(c, "increase")
            increases_sent = not held
            if held:
                self.counters["increases_settling"] += 1
                self._wake_when_settled()
        elif increases:
            self.counters["increases_deferred"] += 1
            self._trigger(Impact.CHANGED)
        report = CycleReport(now, allocation, decreases, increases,
                             tuple(c for c, _ in renewals), increases_sent, len(held),
                             compute_s)
        self.last_report = report
        for listener in self._cycle_listeners:
            listener(report)
        if decreases or increases:
            log.debug("cycle: %d decreases, %d increases (%s), %d renewals, %.1f ms",
                      len(decreases), len(increases), "sent" if increases_sent else "held",
                      len(renewals), compute_s * 1000)
        return report

    def _fitting_increases(self, snapshot: Snapshot, allocation: Allocation,
                           target: Mapping[ConnectorKey, float],
                           increases: Iterable[Command]) -> tuple[list[Command], list[Command]]:
        """Split increases into those safe now and those that must wait for recent
        decreases to settle. Worst case now: every connector at the most it may draw (its
        old value while its decrease settles); an increase goes if every group above it
        (per phase and in kW) and its charger still have room for it."""
        increases = list(increases)
        loop_now = asyncio.get_running_loop().time()
        settling = {k: amps for k, (amps, until) in self._settling.items() if until > loop_now}
        if not increases or not settling:
            return increases, []
        topo = self.topology
        worst: dict[ConnectorKey, float] = {}
        for conn in topo.connectors():
            key = conn.key
            if key in target:
                worst[key] = max(self.state.believed_a(key), settling.get(key, 0.0))
            else:
                worst[key] = allocation.setpoints.get(key, 0.0)
        amps = {gid: [0.0, 0.0, 0.0] for gid in topo.groups}
        kw = dict.fromkeys(topo.groups, 0.0)
        per_charger: dict[str, float] = {}
        for key, value in worst.items():
            charger = topo.chargers[key[0]]
            per_charger[key[0]] = per_charger.get(key[0], 0.0) + value
            vec = charger.phase_vector
            for gid in topo.charger_groups(key[0]):
                for p in range(3):
                    amps[gid][p] += vec[p] * value
                kw[gid] += value * topo.power_kw_per_amp(charger)
        room = {gid: effective_limit(group, snapshot.conditions(gid), topo.voltage)
                for gid, group in topo.groups.items()}
        ready: list[Command] = []
        held: list[Command] = []
        for cmd in increases:
            charger = topo.chargers[cmd.key[0]]
            delta = cmd.current - worst[cmd.key]
            vec = charger.phase_vector
            chain = topo.charger_groups(charger.id)
            fits = delta <= 0 or (
                per_charger[charger.id] + delta <= charger.max_current + _EPS
                and all(amps[g][p] + vec[p] * delta <= room[g].available[p] + _EPS
                        for g in chain for p in range(3))
                and all(kw[g] + delta * topo.power_kw_per_amp(charger)
                        <= room[g].available_power_kw + _EPS for g in chain))
            if not fits:
                held.append(cmd)
                continue
            ready.append(cmd)
            if delta > 0:
                worst[cmd.key] = cmd.current
                per_charger[charger.id] += delta
                for g in chain:
                    for p in range(3):
                        amps[g][p] += vec[p] * delta
                    kw[g] += delta * topo.power_kw_per_amp(charger)
        return ready, held

    def _wake_when_settled(self) -> None:
        """Run a cycle again when the next recent decrease has settled."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = [until for _, until in self._settling.values() if until > now]
        if not pending:
            self._trigger(Impact.CHANGED)
            return
        if self._settle_timer is not None:
            self._settle_timer.cancel()
        self._settle_timer = loop.call_later(min(pending) - now + 0.01, self._trigger,
                                             Impact.CHANGED)

    def _may_send(self, cmd: Command, now: datetime) -> bool:
        if self.state.pending_a(cmd.key) == cmd.current:
            return False  # the same value is already on its way
        return self._retry_ok(cmd.key, now)

    def _retry_ok(self, key: ConnectorKey, now: datetime) -> bool:
        retry = self._retry_after.get(key)
        return retry is None or retry <= now

    def _renewals(self, target: Mapping[ConnectorKey, float], planned: set[ConnectorKey],
                  now: datetime) -> list[tuple[Command, CommandKind]]:
        out: list[tuple[Command, CommandKind]] = []
        due = set(self.state.renewals_due(now, self.settings.renew_fraction))
        for key, amps in target.items():
            if key in planned or self.state.pending_a(key) is not None:
                continue
            retry = self._retry_after.get(key)
            if retry is not None and retry > now:
                continue
            if key in due:
                out.append((Command(key, amps, amps), "renew"))
            elif self.state.uncertain_a(key) is not None:
                out.append((Command(key, amps, amps), "retry"))
        return out

    async def _wait(self, tasks: set[asyncio.Task[CommandResult]], gen: int) -> bool:
        """Wait for ``tasks``; False as soon as an urgent change arrives instead."""
        if not tasks:
            return gen == self._urgent_gen
        if gen != self._urgent_gen:
            return False
        urgent: asyncio.Task[Any] = asyncio.create_task(self._urgent.wait())
        try:
            pending: set[asyncio.Task[Any]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending | {urgent},
                                                   return_when=asyncio.FIRST_COMPLETED)
                if urgent in done:
                    return False
                pending.discard(urgent)
            return True
        finally:
            urgent.cancel()

    def _send(self, cmd: Command, kind: CommandKind) -> asyncio.Task[CommandResult]:
        self.state.mark_pending(cmd.key, cmd.current)
        self._command_seq += 1
        self._latest[cmd.key] = self._command_seq
        task = asyncio.create_task(self._command(cmd, kind, self._command_seq),
                                   name=f"setpoint {cmd.key[0]}/{cmd.key[1]}")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        if kind == "decrease":
            self._decreases.add(task)
            task.add_done_callback(self._decreases.discard)
        return task

    async def _command(self, cmd: Command, kind: CommandKind, seq: int) -> CommandResult:
        started = time.perf_counter()
        charger, connector = cmd.key
        try:
            result = await self.driver.apply_setpoint(charger, connector, cmd.current,
                                                      self.settings.lease_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("setpoint %s/%s: driver error", charger, connector)
            self._alarm("command", f"{charger}/{connector}: driver error {exc!r}",
                        group=self.topology.chargers[charger].group, load=cmd.current)
            result = CommandResult.TIMEOUT
        at = self.clock.now()
        self.counters[f"setpoint_{result.value}"] += 1
        if self._latest.get(cmd.key) != seq:
            # A newer command to this connector was sent since (a driver may merge a queued
            # one into it): only the newest outcome says what the charger is at.
            self.counters["setpoint_superseded"] += 1
            return result
        impact = self.state.record_result(cmd.key, cmd.current, result, at,
                                          self.settings.lease_s)
        if result is CommandResult.ACCEPTED:
            self._retry_after.pop(cmd.key, None)
            self._failures.pop(cmd.key, None)
            if cmd.current < cmd.previous and self.settings.settle_s > 0:
                loop_now = asyncio.get_running_loop().time()
                amps, until = self._settling.get(cmd.key, (0.0, 0.0))
                amps = max(amps, cmd.previous) if until > loop_now else cmd.previous
                self._settling[cmd.key] = (amps, loop_now + self.settings.settle_s)
        else:
            failures = self._failures[cmd.key] = self._failures.get(cmd.key, 0) + 1
            backoff_s = min(self.settings.retry_backoff_s * 2 ** (failures - 1),
                            self.settings.retry_backoff_max_s)
            self._retry_after[cmd.key] = at + timedelta(seconds=backoff_s)
            log.warning("setpoint %.1f A to %s/%s: %s", cmd.current, charger, connector,
                        result.value)
        if self.audit is not None:
            self.audit.record_command(CommandRecord(
                at, charger, connector, kind, cmd.current, cmd.previous, result,
                time.perf_counter() - started))
        self._trigger(impact)
        return result

    # --- failsafe -------------------------------------------------------------------------

    def _send_failsafe(self, charger_id: str) -> None:
        if charger_id not in self.topology.chargers:
            return
        self._failsafe_due.pop(charger_id, None)
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
        amps = self.topology.chargers[charger_id].failsafe_current
        started = time.perf_counter()
        try:
            result = await self.driver.apply_failsafe(charger_id, amps)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("failsafe %s: driver error", charger_id)
            result = CommandResult.TIMEOUT
        at = self.clock.now()
        self.counters[f"failsafe_{result.value}"] += 1
        if result is CommandResult.ACCEPTED:
            self._failsafe_ok.add(charger_id)
        elif result is not CommandResult.OFFLINE:
            # Sent again at the next connection if offline; retried here otherwise.
            self._failsafe_due[charger_id] = at + timedelta(
                seconds=self.settings.failsafe_retry_s)
            self._alarm("command", f"{charger_id}: failsafe {amps} A not installed "
                        f"({result.value})", group=self.topology.chargers[charger_id].group,
                        load=amps)
        if self.audit is not None:
            self.audit.record_command(CommandRecord(at, charger_id, 0, "failsafe", amps, None,
                                                    result, time.perf_counter() - started))

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
        if impact is Impact.NONE:
            overdue = self._last_cycle_at is None or \
                (now - self._last_cycle_at).total_seconds() >= self.settings.recompute_s
            fraction = self.settings.renew_fraction
            if overdue or self.state.renewals_due(now, fraction) or \
                    self.state.releases_due(now, fraction):
                impact = Impact.CHANGED
        for key, when in list(self._retry_after.items()):
            if when <= now:
                del self._retry_after[key]
                impact = max(impact, Impact.CHANGED)
        loop_now = asyncio.get_running_loop().time()
        for key in [k for k, (_, until) in self._settling.items() if until <= loop_now]:
            del self._settling[key]
        for charger_id, when in list(self._failsafe_due.items()):
            if when <= now and self.state.online(charger_id):
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

    # --- alarms ---------------------------------------------------------------------------

    def _alarm(self, kind: str, message: str, *, group: str = "", phase: str | None = None,
               load: float = 0.0, limit: float = 0.0) -> AlarmRecord:
        record = AlarmRecord(self.clock.now(), kind, group, phase, load, limit, message)
        self._alarms.append(record)
        self.counters[f"alarms_{kind}"] += 1
        log.warning("ALARM %s: %s", kind, message)
        if self.audit is not None:
            self.audit.record_alarm(record)
        return record

    def _allocation_alarms(self, allocation: Allocation, now: datetime) -> None:
        """Log allocation alarms when they appear and when they clear, not every cycle."""
        seen: dict[tuple[str, str, str | None, str], Alarm] = {}
        kind = "guard" if allocation.guarded else "limit"
        for alarm in allocation.alarms:
            phase = alarm.phase.name if alarm.phase is not None else None
            seen[(kind, alarm.group, phase, alarm.message.split(":")[0])] = alarm
        for key, alarm in seen.items():
            if key not in self._active_alarms:
                self._active_alarms[key] = self._alarm(
                    key[0], alarm.message, group=alarm.group, phase=key[2], load=alarm.load,
                    limit=alarm.limit)
        for key in list(self._active_alarms):
            if key[0] in ("limit", "guard") and key not in seen:
                old = self._active_alarms.pop(key)
                cleared = AlarmRecord(now, old.kind, old.group, old.phase, old.load, old.limit,
                                      f"cleared: {old.message}", cleared=True)
                self._alarms.append(cleared)
                log.info("alarm cleared: %s", old.message)
                if self.audit is not None:
                    self.audit.record_alarm(cleared)

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

    @property
    def commands_in_flight(self) -> int:
        return len(self._commands)

    @property
    def idle(self) -> bool:
        return not (self._wake.is_set() or self._busy or self._commands
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
