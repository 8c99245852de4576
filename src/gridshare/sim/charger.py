"""One simulated charge point: the public face the demo, tests and benchmarks drive, and
the place where its parts meet.

The charger speaks real OCPP 1.6J or 2.0.1 to a CSMS and behaves as the specs say, not as
any CSMS expects. Its parts, one job each:

* :mod:`~gridshare.sim.transactions` — cars plugging in and out, transactions, statuses;
* :mod:`~gridshare.sim.smart_charging` — which profiles are accepted, and what current each
  connector offers because of them (online or not, until each profile's end);
* :mod:`~gridshare.sim.connector` and :mod:`~gridshare.sim.meter` — the physics and what
  the meter reads;
* :mod:`~gridshare.sim.link` — connect, boot, heartbeat, send the
  :mod:`~gridshare.sim.outbox` in order, reconnect with backoff; the test knobs that fail
  the link before an answer, reboot after one, or hold it offline;
* :mod:`~gridshare.sim.ocpp16` / :mod:`~gridshare.sim.ocpp201` over
  :mod:`~gridshare.sim.rpc` — the wire.

Physics runs in :meth:`SimCharger.step`, driven by a :class:`~gridshare.sim.site.SimSite`
tick loop, or by one extra task when a charger runs on its own (``start(physics=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import ssl as ssl_mod
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from urllib.parse import quote

from gridshare.ocpp_version import OcppVersion
from gridshare.sim.clock import ScaledClock, SimClock
from gridshare.sim.configuration import Configuration
from gridshare.sim.connector import PHASE_NAMES, Connector, PhaseCurrents, Status, Transaction
from gridshare.sim.ev import EV
from gridshare.sim.link import Link
from gridshare.sim.meter import MeterSample, read_meter
from gridshare.sim.outbox import Outbox, Outgoing
from gridshare.sim.profiles import ChargingProfile, Period, Purpose
from gridshare.sim.rpc import AnswerFate
from gridshare.sim.smart_charging import Rating, SmartCharging
from gridshare.sim.transactions import Transactions
from gridshare.sim.v2g import V2gStage
from gridshare.tasks import cancel_and_wait

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("ocpp1.6", "ocpp2.0.1", "ocpp2.1")
"""The first two alternate in a ``mixed`` site; ``ocpp2.1`` is what a V2G charger speaks."""
SetpointCallback = Callable[[int, float], None]
"""Called as ``callback(connector, offered_a)`` when the offered current changes."""
RoundTripCallback = Callable[[str, float], None]
"""Called as ``callback(action, seconds)`` when a request of the charger was answered."""
EventListener = Callable[["SimCharger", datetime, str], None]


def _unit_hash(*parts: object) -> float:
    """Deterministic pseudo-random number in [0, 1) (no per-charger RNG object needed)."""
    return (zlib.crc32(repr(parts).encode()) & 0xFFFFFFFF) / 2**32


class SimCharger:
    """A simulated OCPP charge point. See the module docstring for behaviour."""

    def __init__(
        self,
        id: str,
        url: str,
        *,
        protocol: str = "ocpp1.6",
        phases: int = 3,
        phase: str = "L1",
        max_current_a: float = 32.0,
        min_current_a: float = 6.0,
        connectors: int = 1,
        connector_max_a: tuple[float, ...] = (),
        voltage_v: float = 230.0,
        meter_interval_s: float = 10.0,
        failsafe_current_a: float | None = None,
        password: str | None = None,
        ssl: ssl_mod.SSLContext | None = None,
        auto_reconnect: bool = True,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        clock: SimClock | None = None,
        seed: int = 0,
        events_maxlen: int = 64,
        max_queued: int = 500,
        response_timeout_s: float = 30.0,
        open_timeout_s: float = 10.0,
        default_heartbeat_s: float = 300.0,
        id_tag: str = "SIMTAG",
        charging_needs: bool = False,
        offer_subprotocol: bool = True,
        vendor: str = "gridshare",
        model: str = "SimCharger",
        v2x: bool = False,
        grid_hz: Callable[[], float] | None = None,
        v2x_ramp_s: float = 1.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}")
        if v2x and protocol != "ocpp2.1":
            raise ValueError("a V2G (v2x) charger speaks ocpp2.1")
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if phase not in PHASE_NAMES:
            raise ValueError("phase must be L1, L2 or L3")
        if connectors < 1:
            raise ValueError("at least one connector")
        if connector_max_a and len(connector_max_a) != connectors:
            raise ValueError("connector_max_a needs one value per connector")
        self.id = id
        self.url = url
        self.protocol: str = protocol
        self.phases = phases
        self.phase = phase
        self.max_current_a = float(max_current_a)
        self.min_current_a = float(min_current_a)
        self.voltage_v = float(voltage_v)
        self.failsafe_current_a = failsafe_current_a
        """Offered while offline by a charger that never received a profile (None: its
        full rating)."""
        self.password = password
        self.ssl = ssl
        self.clock: SimClock = clock or ScaledClock()
        self.seed = seed
        self.response_timeout_s = response_timeout_s
        """Real seconds to wait for the CSMS's answer before dropping the connection."""
        self.open_timeout_s = open_timeout_s
        self.id_tag = id_tag
        self.charging_needs = charging_needs or v2x
        """OCPP 2.0.1/2.1: send NotifyEVChargingNeeds (departure time, energy) once
        authorized, as an ISO 15118 car would. A V2G (``v2x``) charger always sends it,
        with the car's V2X offer (:func:`gridshare.sim.v2g.v2x_needs`; ``EV.bpt`` False
        for a car without bidirectional transfer)."""
        self.offer_subprotocol = offer_subprotocol
        """False: offer no WebSocket subprotocol, as many real (1.6) chargers do, and speak
        ``protocol`` on a link that negotiated none."""
        self.vendor = vendor
        self.model = model
        self.events: deque[tuple[datetime, str]] = deque(maxlen=events_maxlen)
        self.listener: EventListener | None = None
        self.connect_gate: asyncio.Semaphore | None = None
        """Shared by a SimSite to limit simultaneous websocket handshakes."""
        self.boot_count = 0
        self.boot_requested = False
        """A TriggerMessage(BootNotification) came while the CSMS held us Pending: boot
        again now rather than after the retry interval."""
        self.config = Configuration(default_heartbeat_s, float(meter_interval_s), connectors)
        self.outbox = Outbox(max_queued)
        self.smart = SmartCharging(
            Rating(self.max_current_a, self.min_current_a, phases, self.voltage_v,
                   tuple(float(a) for a in connector_max_a)),
            OcppVersion(protocol),
        )
        self.link = Link(
            self,
            auto_reconnect=auto_reconnect,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            seed=seed,
        )
        self._conns = [Connector(i + 1) for i in range(connectors)]
        self.transactions = Transactions(self, self._conns)
        self._connected = False
        self._connected_event = asyncio.Event()
        self._dirty = True
        self._ignore_profiles = False
        self._valid_until_ts = math.inf
        """Simulated UNIX time until which the offered currents stand (unless dirty)."""
        self._callbacks: list[SetpointCallback] = []
        self._round_trip_callbacks: list[RoundTripCallback] = []
        self._reset_when_idle: str | None = None
        """Stop reason of a Reset scheduled for when no transaction is ongoing."""
        self._task: asyncio.Task[None] | None = None
        self._physics_task: asyncio.Task[None] | None = None
        self.v2g: V2gStage | None = (
            V2gStage(voltage_v=self.voltage_v, phases=phases, max_current_a=self.max_current_a,
                     grid_hz=grid_hz, ramp_s=v2x_ramp_s)
            if v2x
            else None
        )
        """Bidirectional power stage (OCPP 2.1 V2X modes); None: charging only."""

    # ------------------------------------------------------------------ observability

    @property
    def connected(self) -> bool:
        """Websocket open and BootNotification accepted."""
        return self._connected

    @property
    def ocpp_version(self) -> str:
        return self.protocol.removeprefix("ocpp")

    @property
    def connectors(self) -> int:
        return len(self._conns)

    @property
    def heartbeat_interval_s(self) -> float:
        return self.config.heartbeat_interval_s

    @property
    def meter_interval_s(self) -> float:
        return self.config.meter_interval_s

    @property
    def max_queued(self) -> int:
        """Messages kept while offline; beyond this the oldest meter sample is lost."""
        return self.outbox.max_queued

    @property
    def dropped(self) -> int:
        """Messages lost because the offline queue was full."""
        return self.outbox.dropped

    @property
    def auto_reconnect(self) -> bool:
        return self.link.auto_reconnect

    @property
    def profiles(self) -> tuple[ChargingProfile, ...]:
        """Profiles installed now (expired ones stay installed until cleared, like real
        chargers; they just stop applying)."""
        return self.smart.store.all

    @property
    def meter_phase(self) -> float:
        """Where in the sampling interval this charger's first sample falls, in [0.5, 1):
        spreads a site's meter values over the interval."""
        return 0.5 + 0.5 * _unit_hash(self.id, "meter")

    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/{quote(self.id, safe='')}"

    def offered_a(self, connector: int) -> float:
        """A per phase the charger offers the car (pilot), 0 when paused or idle."""
        self._refresh()
        return self._conn(connector).offered_a

    def drawn_a(self, connector: int) -> PhaseCurrents:
        """A drawn on (L1, L2, L3) by the car on ``connector`` in the last step."""
        return self._conn(connector).phase_vector(self.phases, self.phase)

    def meter_a(self) -> PhaseCurrents:
        """A drawn on (L1, L2, L3) by the whole charger."""
        l1 = l2 = l3 = 0.0
        for c in self._conns:
            if c.drawn_a:
                a, b, d = c.phase_vector(self.phases, self.phase)
                l1 += a
                l2 += b
                l3 += d
        return (l1, l2, l3)

    def status(self, connector: int) -> Status:
        return self._conn(connector).status

    def ev(self, connector: int) -> EV | None:
        return self._conn(connector).ev

    def transaction(self, connector: int) -> Transaction | None:
        return self._conn(connector).tx

    def energy_wh(self, connector: int) -> float:
        """Energy register of the connector's meter (Wh since the simulator started)."""
        return self._conn(connector).energy_wh

    def on_setpoint(self, callback: SetpointCallback) -> None:
        """Register ``callback(connector, offered_a)``, called on every change."""
        self._callbacks.append(callback)

    def on_round_trip(self, callback: RoundTripCallback) -> None:
        """Register ``callback(action, seconds)``, called whenever the CSMS answered a
        request of this charger (``seconds``: from building the CALL to its result; what a
        benchmark of the CSMS's latency under load wants)."""
        self._round_trip_callbacks.append(callback)

    def round_trip_done(self, action: str, seconds: float) -> None:
        for cb in self._round_trip_callbacks:
            cb(action, seconds)

    def log_event(self, what: str) -> None:
        """Record ``what`` in :attr:`events` and tell the listener (a SimSite)."""
        now = self.clock.now()
        self.events.append((now, what))
        if self.listener is not None:
            self.listener(self, now, what)

    # ------------------------------------------------------------------ cars and transactions

    def plug_nowait(self, connector: int, ev: EV, *, id_tag: str | None = None) -> Transaction:
        """Plug ``ev`` in and begin a transaction; messages go out in the background."""
        conn = self._conn(connector)
        if conn.ev is not None:
            raise RuntimeError(f"{self.id} connector {connector} is occupied")
        return self.transactions.plug(conn, ev, id_tag or self.id_tag)

    async def plug(
        self, connector: int, ev: EV, *, id_tag: str | None = None, wait_s: float = 10.0
    ) -> Transaction:
        """Plug ``ev`` in. When connected, wait (up to ``wait_s`` real seconds) until the
        CSMS has acknowledged the transaction start (1.6: the transaction id is known)."""
        tx = self.plug_nowait(connector, ev, id_tag=id_tag)
        if self._connected and wait_s > 0:
            tx.started_event = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tx.started_event.wait(), wait_s)
        return tx

    def unplug_nowait(self, connector: int) -> EV | None:
        """Take the car away: stop the transaction and free the connector."""
        return self.transactions.unplug(self._conn(connector))

    async def unplug(self, connector: int, *, wait_s: float = 10.0) -> EV | None:
        """Unplug; when connected wait until the stop was delivered to the CSMS."""
        tx = self._conn(connector).tx
        if tx is not None and self._connected and wait_s > 0 and not tx.ended:
            tx.stopped_event = asyncio.Event()
        ev = self.unplug_nowait(connector)
        if tx is not None and tx.stopped_event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tx.stopped_event.wait(), wait_s)
        return ev

    def stop_transaction(self, connector: int, reason: str = "Local") -> bool:
        """End the running transaction but leave the car plugged (status Finishing)."""
        conn = self._conn(connector)
        if conn.tx is None or conn.tx.ended:
            return False
        self.transactions.end(conn, reason)
        return True

    def transaction_authorized(self, tx: Transaction, accepted: bool) -> None:
        """The CSMS's verdict on the id tag (Authorize, or 1.6 StartTransaction.conf)."""
        self.transactions.authorized(tx, accepted)

    def remote_stop(self, transaction_id: str) -> bool:
        return self.transactions.remote_stop(transaction_id)

    def transaction_ended(self, connector: int) -> None:
        """A TxProfile lives as long as its transaction; a scheduled reset may now run."""
        self.smart.store.drop_tx_profiles(connector)
        self.offer_changed()
        stop_reason = self._reset_when_idle
        if stop_reason is not None and not self.transactions.ongoing():
            self._reset_when_idle = None
            self.link.start_reboot("RemoteReset", stop_reason)

    # ------------------------------------------------------------------ physics

    def step(self, dt_s: float, now_ts: float | None = None) -> None:
        """Advance every connector by ``dt_s`` simulated seconds (``now_ts``: the clock's
        time, when the caller already has it)."""
        now = self.clock.time() if now_ts is None else now_ts
        self._refresh(now)
        v2g = self.v2g
        at = self.clock.now() if v2g is not None else None
        for conn in self._conns:
            if v2g is not None and at is not None and v2g.step(self.smart, conn, at, dt_s):
                if conn.tx is not None and conn.tx.active and conn.status is not (
                        status := Status.CHARGING if v2g.power_w(conn.id) else
                        Status.SUSPENDED_EVSE):
                    self.transactions.set_status(conn, status)
                continue
            new_status = conn.advance(dt_s, now, self.voltage_v)
            if new_status is not None:
                self.transactions.set_status(conn, new_status)

    @property
    def ignore_profiles(self) -> bool:
        """A misbehaving station: it accepts every profile but offers its full rating to
        a car that may charge (demand-response tests: the meters must catch it)."""
        return self._ignore_profiles

    @ignore_profiles.setter
    def ignore_profiles(self, value: bool) -> None:
        self._ignore_profiles = value
        self.offer_changed()

    def offer_changed(self) -> None:
        """Something that decides the offered current changed: recompute now."""
        self._dirty = True
        self._refresh()

    def _refresh(self, now_ts: float | None = None) -> None:
        """Recompute offered currents if something changed or a schedule boundary passed
        (``now_ts``: the clock's UNIX time, when the caller already has it)."""
        if now_ts is None:
            now_ts = self.clock.time()
        if not self._dirty and now_ts < self._valid_until_ts:
            return
        self._dirty = False
        now = self.clock.now()
        offer = self.smart.offer(self._conns, now, failsafe_a=self._failsafe_a())
        until = offer.valid_until
        self._valid_until_ts = until.timestamp() if until is not None else math.inf
        for conn in self._conns:
            conn.phases_avail = offer.phases[conn.id]
            value = offer.offered_a[conn.id]
            if self._ignore_profiles and conn.charging_allowed:
                value = self.max_current_a
            if value != conn.offered_a:
                conn.offer(value, now_ts)
                self.log_event(f"setpoint c{conn.id} {value:.1f}A")
                for cb in self._callbacks:
                    try:
                        cb(conn.id, value)
                    except Exception:
                        log.exception("%s: setpoint callback failed", self.id)

    def _failsafe_a(self) -> float | None:
        return None if self._connected else self.failsafe_current_a

    def sample(self, conn: Connector, context: str = "Sample.Periodic") -> MeterSample:
        """What the meter of ``conn`` reads now (signed power on a V2G charger)."""
        sample = read_meter(
            conn,
            self.clock.now(),
            charger_phases=self.phases,
            wired_phase=self.phase,
            voltage_v=self.voltage_v,
            context=context,
        )
        if self.v2g is None:
            return sample
        power = self.v2g.power_w(conn.id)
        return dataclasses.replace(
            sample,
            power_w=max(power, 0.0),
            power_export_w=max(-power, 0.0),
            energy_export_wh=self.v2g.export_wh(conn.id),
        )

    def sample_transactions(self, context: str = "Sample.Periodic") -> None:
        """Queue a meter sample of every connector whose transaction is running."""
        for conn in self._conns:
            if conn.tx is not None and conn.tx.active:
                self.enqueue(
                    Outgoing(
                        "meter",
                        conn.id,
                        self.clock.now(),
                        tx=conn.tx,
                        sample=self.sample(conn, context),
                    )
                )

    # ------------------------------------------------------------------ smart charging

    def install_profile(self, profile: ChargingProfile) -> tuple[bool, str]:
        """Apply the OCPP acceptance rules, install, and return (accepted, reason)."""
        reason = self.smart.install(profile, self._conns)
        if reason:
            self.log_event(f"profile rejected: {reason}")
            return False, reason
        lim = ", ".join(f"{p.start_s}s:{p.limit:g}{profile.unit}" for p in profile.periods[:3])
        self.log_event(
            f"profile {profile.purpose.value} id={profile.id} c{profile.connector} "
            f"lvl={profile.stack_level} [{lim}] dur={profile.duration_s}"
        )
        self.offer_changed()
        return True, ""

    def clear_profiles(
        self,
        *,
        profile_id: int | None = None,
        connector: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> int:
        n = self.smart.store.clear(
            profile_id=profile_id, connector=connector, purpose=purpose, stack_level=stack_level
        )
        self.log_event(f"cleared {n} profile(s)")
        self.offer_changed()
        return n

    def composite_schedule(
        self, connector: int, duration_s: int, unit: str | None = None
    ) -> tuple[datetime, str, list[Period]]:
        """What this charger will offer on ``connector`` (0: the whole charger) for the
        next ``duration_s`` seconds if nothing changes: (start, unit, periods)."""
        unit = unit or "A"
        t0 = self.clock.now()
        periods = self.smart.composite_schedule(
            self._conns, connector, duration_s, unit, t0, failsafe_a=self._failsafe_a()
        )
        return t0, unit, periods

    # ------------------------------------------------------------------ configuration

    def config_items(self) -> dict[str, tuple[str, bool]]:
        """OCPP 1.6 style configuration: key → (value, read-only)."""
        return self.config.items()

    def set_config(self, key: str, value: str) -> str:
        """Returns "Accepted", "Rejected" or "NotSupported"."""
        status = self.config.change(key, value)
        if status == "Accepted":
            self.log_event(f"config {key}={value}")
            self.outbox.wake.set()  # the link's timers change
        return status

    def trigger(self, what: str, connector: int | None) -> bool:
        """TriggerMessage for Heartbeat, StatusNotification and MeterValues, and for
        BootNotification while the boot is not accepted yet (Pending)."""
        now = self.clock.now()
        targets = [self._conn(connector)] if connector else self._conns
        if what == "BootNotification":
            if self._connected:
                return False
            self.boot_requested = True
            self.outbox.wake.set()
        elif what == "Heartbeat":
            self.enqueue(Outgoing("heartbeat", 0, now))
        elif what == "StatusNotification":
            for c in targets:
                self.enqueue(Outgoing("status", c.id, now, tx=c.tx, status=c.status))
        elif what in ("MeterValues", "TransactionEvent"):
            for c in targets:
                if c.tx is not None and c.tx.active:
                    self.enqueue(
                        Outgoing("meter", c.id, now, tx=c.tx, sample=self.sample(c, "Trigger"))
                    )
        else:
            return False
        return True

    # ------------------------------------------------------------------ connection

    def _conn(self, connector: int) -> Connector:
        if not 1 <= connector <= len(self._conns):
            raise ValueError(f"{self.id} has no connector {connector}")
        return self._conns[connector - 1]

    def enqueue(self, item: Outgoing) -> None:
        """Queue ``item`` for the CSMS (statuses only while connected)."""
        self.outbox.put(item, online=self._connected)

    def statuses_after_boot(self) -> list[Outgoing]:
        """Every connector's status, sent first after each boot (1.6: connector 0 too)."""
        now = self.clock.now()
        items = [Outgoing("status", c.id, now, tx=c.tx, status=c.status) for c in self._conns]
        if self.protocol == "ocpp1.6":
            items.insert(0, Outgoing("status", 0, now, status=Status.AVAILABLE))
        return items

    def set_connected(self, value: bool) -> None:
        """The link's verdict: connected means the websocket is open and boot accepted."""
        if value == self._connected:
            return
        self._connected = value
        if value:
            self._connected_event.set()
        else:
            self._connected_event.clear()
            # pending authorizations cannot be answered now: start offline (what
            # chargers with AllowOfflineTxForUnknownId do)
            self.transactions.start_waiting_offline(self.outbox.take("authorize"))
        self.log_event("connected" if value else "disconnected")
        self.offer_changed()

    async def start(self, *, physics: bool = True, tick_s: float = 1.0) -> None:
        """Begin connecting (in the background); with ``physics`` also run own step loop
        (leave it off when a :class:`SimSite` drives the physics)."""
        if self._task is not None:
            return
        self.link.stopping = False
        self._task = asyncio.create_task(self.link.run(), name=f"sim-{self.id}")
        self._task.add_done_callback(self.task_ended)
        if physics:
            self._physics_task = asyncio.create_task(self._physics(tick_s))
            self._physics_task.add_done_callback(self.task_ended)

    def task_ended(self, task: asyncio.Task[None]) -> None:
        """Supervision: a task that dies of an error says so instead of vanishing."""
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s: %s failed", self.id, task.get_name(), exc_info=error)
            self.log_event(f"{task.get_name()} failed: {type(error).__name__}: {error}")

    async def stop(self) -> None:
        """Close the connection and end all tasks."""
        self.link.stop()
        tasks = (self._task, self._physics_task, self.link.reboot_task)
        pending = {t for t in tasks if t is not None and not t.done()}
        self._task = self._physics_task = self.link.reboot_task = None
        await cancel_and_wait(pending, swallow_errors=True)
        self.set_connected(False)

    async def disconnect(self, *, offline_for_s: float | None = None) -> None:
        """Drop the connection as if the network failed and stay offline until
        :meth:`connect` (or for ``offline_for_s`` real seconds, then reconnect)."""
        await self.link.drop(hold=True)
        self.set_connected(False)
        if offline_for_s is not None:
            asyncio.get_running_loop().call_later(offline_for_s, self.link.release)

    async def connect(self) -> None:
        """Come back online after :meth:`disconnect`."""
        self.link.release()
        if self._task is None:
            await self.start(physics=False)

    async def wait_connected(self, timeout_s: float = 10.0) -> bool:
        if not self._connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected_event.wait(), timeout_s)
        return self._connected

    async def _physics(self, tick_s: float) -> None:
        last = self.clock.time()
        while True:
            await self.clock.sleep(tick_s)
            now = self.clock.time()
            self.step(now - last)
            last = now

    # ------------------------------------------------------------------ faults (test knobs)

    def drop_link_before_answer(
        self,
        answers: int = 1,
        *,
        actions: Iterable[str] = ("SetChargingProfile",),
        half_open: bool = False,
    ) -> None:
        """The next ``answers`` requests to ``actions`` (empty: any action) are applied,
        and then the link fails before their CALLRESULT is sent, so the CSMS cannot know
        the outcome: the link closes (default), or with ``half_open`` it stays open but
        the answer and everything after it is lost in both directions until a timeout
        ends the connection (the CSMS's, or ours on the charger's next request; pings are
        still answered by the websocket library). The charger reconnects as usual."""
        fate = AnswerFate.LOSE if half_open else AnswerFate.CLOSE_LINK
        self.link.fail_before_answers(answers, tuple(actions), fate)

    def reboot_after_answer(
        self,
        answers: int = 1,
        *,
        actions: Iterable[str] = ("SetChargingProfile",),
        reason: str = "PowerUp",
    ) -> None:
        """The next ``answers`` requests to ``actions`` (empty: any action) are applied and
        answered, and right after each CALLRESULT the charger reboots (:meth:`reboot`): the
        CSMS sees the answer, the link close, and a BootNotification on a new one."""
        self.link.reboot_after_answers(answers, tuple(actions), reason)

    async def reboot(self, *, reason: str = "PowerUp", stop_reason: str = "Reboot") -> None:
        """Power-cycle: the link drops, running transactions end (with ``stop_reason``)
        and new ones begin for the cars still plugged in (offline, so they start at once),
        TxProfiles go with their transactions while Max and TxDefault profiles persist,
        and the charger sends BootNotification (2.0.1 with ``reason``) when it is back."""
        self.log_event(f"reboot ({reason})")
        self.link.boot_reason = reason
        await self.link.drop(hold=False)
        self.set_connected(False)
        self.transactions.restart_after_reboot(stop_reason)

    # ------------------------------------------------------------------ Reset from the CSMS

    def reset(self, *, when_idle: bool, stop_reason: str) -> str:
        """A Reset request: reboot right after answering it ("Accepted"), or with
        ``when_idle`` once no transaction is ongoing ("Scheduled" while one is)."""
        if when_idle and self.transactions.ongoing():
            self._reset_when_idle = stop_reason
            self.log_event("reset scheduled for when idle")
            return "Scheduled"
        self.link.reboot_after_this_answer("RemoteReset", stop_reason)
        return "Accepted"
