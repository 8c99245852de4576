"""One simulated charge point speaking OCPP 1.6J or 2.0.1 to a CSMS.

The charger connects to ``<url>/<id>`` with the ``ocpp`` package's client classes, boots,
sends heartbeats and status notifications, runs transactions when an :class:`EV` is
plugged, samples meter values, and obeys smart-charging profiles the way real chargers do
(see :mod:`gridshare.sim.profiles`). It keeps charging when the CSMS goes away: installed
profiles keep applying (a TxProfile while its schedule lasts, then the TxDefault failsafe)
and :attr:`SimCharger.failsafe_current_a` is used only if no profile was ever received.

Two tasks per charger while connected: the session (sends everything, in order) and the
``ocpp`` receive loop. Physics runs in :meth:`SimCharger.step`, driven by a
:class:`~gridshare.sim.site.SimSite` tick loop, or by one extra task when a charger runs on
its own (``start(physics=True)``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import ssl as ssl_mod
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from websockets.asyncio.client import connect as ws_connect

from gridshare.sim.clock import Clock, ScaledClock
from gridshare.sim.ev import EV
from gridshare.sim.profiles import (
    ChargingProfile,
    ConnectorLimits,
    Period,
    ProfileStore,
    Purpose,
    to_amps,
)

if TYPE_CHECKING:
    from gridshare.sim._point import SimPoint

log = logging.getLogger(__name__)

Protocol = Literal["ocpp1.6", "ocpp2.0.1"]
PROTOCOLS: tuple[str, ...] = ("ocpp1.6", "ocpp2.0.1")
PHASE_NAMES = ("L1", "L2", "L3")
SetpointCallback = Callable[[int, float], None]
"""Called as ``callback(connector, offered_a)`` when the offered current changes."""
EventListener = Callable[["SimCharger", datetime, str], None]

MAX_STACK_LEVEL = 10
MAX_PERIODS = 24
MAX_PROFILES = 20
_INF = math.inf


class Status(StrEnum):
    """Connector status in OCPP 1.6 terms (2.0.1 maps them to connector status and
    transaction chargingState)."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"


@dataclass(slots=True, eq=False)
class Transaction:
    """A charging session on one connector, from plug-in to stop."""

    connector: int
    id_tag: str
    plugged_at: datetime
    local_id: str
    """Station-generated id (the transactionId in OCPP 2.0.1)."""
    id: str | None = None
    """Transaction id the CSMS knows: 1.6 from StartTransaction.conf, 2.0.1 ``local_id``."""
    started_at: datetime | None = None
    """When energy transfer was allowed (authorized); None while waiting for it."""
    meter_start_wh: float = 0.0
    seq_no: int = 0
    active: bool = False
    ended: bool = False
    offline_start: bool = False
    stop_reason: str | None = None
    wire_state: str | None = None
    """Last charging state reported on the wire (OCPP 2.0.1)."""
    started_event: asyncio.Event | None = None
    stopped_event: asyncio.Event | None = None


@dataclass(frozen=True, slots=True)
class MeterSample:
    timestamp: datetime
    energy_wh: float
    power_w: float
    current_a: tuple[float, ...]
    """Per reported phase, in the order of ``phases``."""
    phases: tuple[str, ...]
    voltage_v: float
    offered_a: float
    soc_pct: float | None
    context: str = "Sample.Periodic"


@dataclass(slots=True)
class Outgoing:
    """A message waiting in the charger's outbox (sent in order when connected)."""

    kind: str
    """status | plugged | authorize | started | needs | meter | stopped | heartbeat"""
    connector: int
    at: datetime
    tx: Transaction | None = None
    status: Status | None = None
    sample: MeterSample | None = None
    offline: bool = False


@dataclass(slots=True)
class _Conn:
    id: int
    status: Status = Status.AVAILABLE
    ev: EV | None = None
    tx: Transaction | None = None
    offered_a: float = 0.0
    ev_limit_a: float = 0.0
    """What the car currently follows (offered current, delayed by its lag)."""
    pending: deque[tuple[float, float]] = field(default_factory=deque)
    drawn_a: float = 0.0
    phases_avail: int = 3
    phases_used: int = 3
    energy_wh: float = 0.0


def _unit_hash(*parts: object) -> float:
    """Deterministic pseudo-random number in [0, 1) (no per-charger RNG object needed)."""
    return (zlib.crc32(repr(parts).encode()) & 0xFFFFFFFF) / 2**32


def _quantize(a: float, min_a: float) -> float:
    """Pilot resolution 0.1 A (rounded down); below the 6 A minimum the pilot pauses."""
    if a == _INF:
        return a
    q = math.floor(max(0.0, a) * 10 + 1e-6) / 10
    return q if q >= min_a - 1e-9 else 0.0


def _waterfill(total: float, caps: list[float]) -> list[float]:
    """Share ``total`` max-min fairly among consumers capped at ``caps``."""
    if sum(caps) <= total:
        return list(caps)
    out = [0.0] * len(caps)
    order = sorted(range(len(caps)), key=lambda i: caps[i])
    left, n = total, len(caps)
    for k, i in enumerate(order):
        share = left / (n - k)
        out[i] = min(caps[i], share)
        left -= out[i]
    return out


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
        voltage_v: float = 230.0,
        meter_interval_s: float = 10.0,
        failsafe_current_a: float | None = None,
        password: str | None = None,
        ssl: ssl_mod.SSLContext | None = None,
        auto_reconnect: bool = True,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        clock: Clock | None = None,
        seed: int = 0,
        events_maxlen: int = 64,
        max_queued: int = 500,
        response_timeout_s: float = 30.0,
        open_timeout_s: float = 10.0,
        default_heartbeat_s: float = 300.0,
        id_tag: str = "SIMTAG",
        charging_needs: bool = False,
        vendor: str = "gridshare",
        model: str = "SimCharger",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}")
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if phase not in PHASE_NAMES:
            raise ValueError("phase must be L1, L2 or L3")
        if connectors < 1:
            raise ValueError("at least one connector")
        self.id = id
        self.url = url
        self.protocol: str = protocol
        self.phases = phases
        self.phase = phase
        self.max_current_a = float(max_current_a)
        self.min_current_a = float(min_current_a)
        self.voltage_v = float(voltage_v)
        self.meter_interval_s = float(meter_interval_s)
        self.failsafe_current_a = failsafe_current_a
        self.password = password
        self.ssl = ssl
        self.auto_reconnect = auto_reconnect
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.clock: Clock = clock or ScaledClock()
        self.seed = seed
        self.response_timeout_s = response_timeout_s
        self.open_timeout_s = open_timeout_s
        self.heartbeat_interval_s = default_heartbeat_s
        self.id_tag = id_tag
        self.charging_needs = charging_needs
        """OCPP 2.0.1: send NotifyEVChargingNeeds (departure time, energy) once authorized,
        as an ISO 15118 car would."""
        self.vendor = vendor
        self.model = model
        self.events: deque[tuple[datetime, str]] = deque(maxlen=events_maxlen)
        self.max_queued = max_queued
        """Messages kept while offline; beyond this the oldest meter sample is lost."""
        self.dropped = 0
        self._conns = [_Conn(i + 1) for i in range(connectors)]
        self._store = ProfileStore()
        self._ever_profile = False
        self._connected = False
        self._dirty = True
        self._valid_until = -_INF
        self._outbox: deque[Outgoing] = deque()
        self._wake = asyncio.Event()
        self._resume = asyncio.Event()
        self._hold_offline = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._physics_task: asyncio.Task[None] | None = None
        self._ws: Any = None
        self._callbacks: list[SetpointCallback] = []
        self.listener: EventListener | None = None
        self.connect_gate: asyncio.Semaphore | None = None
        """Shared by a SimSite to limit simultaneous websocket handshakes."""
        self.boot_count = 0
        self._connected_event = asyncio.Event()

    # ------------------------------------------------------------------ observability

    @property
    def connected(self) -> bool:
        """Websocket open and BootNotification accepted."""
        return self._connected

    @property
    def ocpp_version(self) -> str:
        return "1.6" if self.protocol == "ocpp1.6" else "2.0.1"

    @property
    def connectors(self) -> int:
        return len(self._conns)

    @property
    def profiles(self) -> tuple[ChargingProfile, ...]:
        """Profiles installed now (expired ones stay installed until cleared, like real
        chargers; they just stop applying)."""
        return self._store.all

    def offered_a(self, connector: int) -> float:
        """A per phase the charger offers the car (pilot), 0 when paused or idle."""
        self._refresh(self.clock.time())
        return self._conn(connector).offered_a

    def drawn_a(self, connector: int) -> tuple[float, float, float]:
        """A drawn on (L1, L2, L3) by the car on ``connector`` in the last step."""
        return self._phase_vector(self._conn(connector))

    def meter_a(self) -> tuple[float, float, float]:
        """A drawn on (L1, L2, L3) by the whole charger."""
        l1 = l2 = l3 = 0.0
        for c in self._conns:
            if c.drawn_a:
                a, b, d = self._phase_vector(c)
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

    def _event(self, what: str) -> None:
        now = self.clock.now()
        self.events.append((now, what))
        if self.listener is not None:
            self.listener(self, now, what)

    # ------------------------------------------------------------------ EV handling

    def plug_nowait(self, connector: int, ev: EV, *, id_tag: str | None = None) -> Transaction:
        """Plug ``ev`` in and begin a transaction; messages go out in the background."""
        conn = self._conn(connector)
        if conn.ev is not None:
            raise RuntimeError(f"{self.id} connector {connector} is occupied")
        now = self.clock.now()
        conn.ev = ev
        conn.ev_limit_a = 0.0
        conn.pending.clear()
        tx = Transaction(connector, id_tag or self.id_tag, now, uuid.uuid4().hex)
        if self.protocol == "ocpp2.0.1":
            tx.id = tx.local_id
        conn.tx = tx
        self._event(f"plug c{connector} soc={ev.soc:.2f} need={ev.energy_needed_kwh:.1f}kWh")
        self._set_status(conn, Status.PREPARING)
        self._enqueue(Outgoing("plugged", connector, now, tx=tx, offline=not self._connected))
        if self._connected:
            self._enqueue(Outgoing("authorize", connector, now, tx=tx))
        else:
            self._activate(tx, offline=True)
        return tx

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
        conn = self._conn(connector)
        ev = conn.ev
        if ev is None:
            return None
        tx = conn.tx
        if tx is not None and not tx.ended:
            self._end_tx(conn, "EVDisconnected")
        conn.ev = None
        conn.tx = None
        conn.pending.clear()
        conn.ev_limit_a = conn.drawn_a = 0.0
        self._event(f"unplug c{connector} soc={ev.soc:.2f}")
        if conn.status is not Status.FINISHING:
            self._set_status(conn, Status.FINISHING)
        self._set_status(conn, Status.AVAILABLE)
        self._dirty = True
        self._refresh(self.clock.time())
        return ev

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
        self._end_tx(conn, reason)
        return True

    def _activate(self, tx: Transaction, *, offline: bool = False) -> None:
        conn = self._conn(tx.connector)
        if conn.tx is not tx or tx.ended:
            return
        now = self.clock.now()
        tx.active = True
        tx.offline_start = offline
        tx.started_at = now
        tx.meter_start_wh = conn.energy_wh
        self._event(f"tx_start c{tx.connector}" + (" (offline)" if offline else ""))
        self._enqueue(Outgoing("started", tx.connector, now, tx=tx, offline=offline))
        if self.charging_needs and self.protocol == "ocpp2.0.1":
            self._enqueue(Outgoing("needs", tx.connector, now, tx=tx))
        self._dirty = True
        self._refresh(self.clock.time())

    def _authorized(self, tx: Transaction, accepted: bool) -> None:
        """Result of Authorize (or of the id tag check in StartTransaction.conf)."""
        if accepted:
            if not tx.active:
                self._activate(tx)
            return
        self._event(f"authorization rejected c{tx.connector}")
        conn = self._conn(tx.connector)
        if conn.tx is tx and not tx.ended:
            self._end_tx(conn, "DeAuthorized")

    def _end_tx(self, conn: _Conn, reason: str) -> None:
        tx = conn.tx
        assert tx is not None
        tx.ended = True
        tx.stop_reason = reason
        sent_start = tx.active or self.protocol == "ocpp2.0.1"
        tx.active = False
        if sent_start:
            sample = self._sample(conn, context="Transaction.End")
            self._enqueue(Outgoing("stopped", conn.id, sample.timestamp, tx=tx, sample=sample))
        elif tx.stopped_event is not None:
            tx.stopped_event.set()
        self._store.drop_tx_profiles(conn.id)
        self._event(f"tx_stop c{conn.id} reason={reason} energy={self._tx_energy(conn):.0f}Wh")
        self._set_status(conn, Status.FINISHING)
        self._dirty = True
        self._refresh(self.clock.time())

    def _tx_energy(self, conn: _Conn) -> float:
        tx = conn.tx
        return conn.energy_wh - tx.meter_start_wh if tx is not None else 0.0

    # ------------------------------------------------------------------ physics

    def step(self, dt_s: float, now_ts: float | None = None) -> None:
        """Advance every connector by ``dt_s`` simulated seconds (``now_ts``: the clock's
        time, when the caller already has it)."""
        now = self.clock.time() if now_ts is None else now_ts
        self._refresh(now)
        v = self.voltage_v
        for conn in self._conns:
            ev = conn.ev
            if ev is None:
                continue
            pending = conn.pending
            while pending and pending[0][0] <= now:
                conn.ev_limit_a = pending.popleft()[1]
            drawn = ev.step(dt_s, conn.ev_limit_a, v, conn.phases_avail)
            conn.drawn_a = drawn
            conn.phases_used = ev.phases_used(conn.phases_avail)
            conn.energy_wh += drawn * v * conn.phases_used * dt_s / 3600.0
            tx = conn.tx
            if tx is None or not tx.active:
                continue
            if conn.offered_a <= 0:
                new = Status.SUSPENDED_EVSE
            elif drawn > 0:
                new = Status.CHARGING
            elif ev.full or conn.ev_limit_a > 0:
                new = Status.SUSPENDED_EV
            else:
                new = conn.status
            if new is not conn.status:
                self._set_status(conn, new)

    def _phase_vector(self, conn: _Conn) -> tuple[float, float, float]:
        a = conn.drawn_a
        if not a:
            return (0.0, 0.0, 0.0)
        if conn.phases_used == 3:
            return (a, a, a)
        idx = PHASE_NAMES.index(self.phase) if self.phases == 1 else 0
        vec = [0.0, 0.0, 0.0]
        vec[idx] = a
        return (vec[0], vec[1], vec[2])

    def _phases_avail(self, conn: _Conn | None, number_phases: int | None) -> int:
        n = self.phases
        if number_phases is not None and number_phases < n:
            n = 1
        if conn is not None and conn.ev is not None and conn.ev.phases < n:
            n = 1
        return n

    def _connector_caps(
        self, conn: _Conn | None, connector: int, t: datetime, ref: datetime | None = None
    ) -> tuple[float, float, int, datetime | None]:
        """(tx cap A, charger-wide cap A, phases available, next change) at ``t``."""
        tx = conn.tx if conn is not None else None
        active = tx is not None and tx.active
        lims: ConnectorLimits = self._store.limits(
            connector,
            t,
            tx_id=tx.id if active and tx is not None else None,
            tx_start=tx.started_at if active and tx is not None else None,
            ref=ref,
        )
        nphases = lims.tx.number_phases if lims.tx is not None else None
        phases = self._phases_avail(conn, nphases)
        cap = self.max_current_a
        if lims.tx is not None:
            cap = min(cap, to_amps(lims.tx, self.voltage_v, phases))
        total = self.max_current_a
        if lims.max is not None:
            total = min(total, to_amps(lims.max, self.voltage_v, self.phases))
        if not self._connected and not self._ever_profile and self.failsafe_current_a is not None:
            cap = min(cap, self.failsafe_current_a)
        return cap, total, phases, lims.next_change

    def _refresh(self, now_ts: float) -> None:
        """Recompute offered currents if something changed or a schedule boundary passed."""
        if not self._dirty and now_ts < self._valid_until:
            return
        self._dirty = False
        t = self.clock.now()
        caps: list[float] = []
        active: list[_Conn] = []
        total = _INF
        next_change: datetime | None = None
        for conn in self._conns:
            cap, tot, phases, nxt = self._connector_caps(conn, conn.id, t)
            conn.phases_avail = phases
            if nxt is not None and (next_change is None or nxt < next_change):
                next_change = nxt
            if conn.tx is not None and conn.tx.active and conn.ev is not None:
                active.append(conn)
                caps.append(cap)
                total = min(total, tot)
        # connectors whose own limit is below the pilot minimum are paused and take no
        # share of the charger-wide limit
        sharing = [
            (c, cap)
            for c, cap in zip(active, caps, strict=True)
            if _quantize(cap, self.min_current_a) > 0
        ]
        alloc = _waterfill(total, [cap for _, cap in sharing]) if sharing else []
        new_values = {
            c.id: _quantize(a, self.min_current_a) for (c, _), a in zip(sharing, alloc, strict=True)
        }
        self._valid_until = next_change.timestamp() if next_change is not None else _INF
        for conn in self._conns:
            value = new_values.get(conn.id, 0.0)
            if value != conn.offered_a:
                self._set_offered(conn, value, now_ts)

    def _set_offered(self, conn: _Conn, value: float, now_ts: float) -> None:
        conn.offered_a = value
        if conn.ev is not None:
            conn.pending.append((now_ts + conn.ev.setpoint_lag_s, value))
        self._event(f"setpoint c{conn.id} {value:.1f}A")
        for cb in self._callbacks:
            try:
                cb(conn.id, value)
            except Exception:
                log.exception("%s: setpoint callback failed", self.id)

    def _sample(self, conn: _Conn, context: str = "Sample.Periodic") -> MeterSample:
        vec = self._phase_vector(conn)
        if self.phases == 1:
            idx = PHASE_NAMES.index(self.phase)
            currents: tuple[float, ...] = (vec[idx],)
            phases: tuple[str, ...] = (self.phase,)
        else:
            currents, phases = vec, PHASE_NAMES
        ev = conn.ev
        return MeterSample(
            timestamp=self.clock.now(),
            energy_wh=conn.energy_wh,
            power_w=sum(currents) * self.voltage_v,
            current_a=currents,
            phases=phases,
            voltage_v=self.voltage_v,
            offered_a=conn.offered_a,
            soc_pct=round(ev.soc * 100, 1) if ev is not None else None,
            context=context,
        )

    # ------------------------------------------------------------------ smart charging

    def install_profile(self, profile: ChargingProfile) -> tuple[bool, str]:
        """Apply the OCPP acceptance rules, install, and return (accepted, reason)."""
        c = profile.connector
        if c < 0 or c > len(self._conns):
            return False, "unknown connector"
        if profile.purpose is Purpose.EXTERNAL:
            return False, "ChargingStationExternalConstraints cannot be set by the CSMS"
        if profile.purpose is Purpose.MAX and c != 0:
            return False, "Max profile only on connector 0"
        if profile.stack_level < 0 or profile.stack_level > MAX_STACK_LEVEL:
            return False, "stack level out of range"
        if not profile.periods or len(profile.periods) > MAX_PERIODS:
            return False, "number of periods out of range"
        if profile.periods[0].start_s != 0:
            return False, "first period must start at 0"
        if profile.unit not in ("A", "W"):
            return False, "unit"
        if profile.purpose is Purpose.TX:
            if c == 0:
                return False, "TxProfile needs a connector"
            tx = self._conns[c - 1].tx
            if tx is None or not tx.active or tx.id is None:
                return False, "no transaction"
            if profile.transaction_id is None:
                if self.protocol == "ocpp2.0.1":
                    return False, "TxProfile without transactionId"
            elif profile.transaction_id != tx.id:
                return False, "transaction id mismatch"
        replaced = any(
            p.id == profile.id
            or (
                p.purpose is profile.purpose
                and p.stack_level == profile.stack_level
                and p.connector == c
            )
            for p in self._store.all
        )
        if not replaced and len(self._store) >= MAX_PROFILES:
            return False, "too many profiles"
        self._store.install(profile)
        self._ever_profile = True
        lim = ", ".join(f"{p.start_s}s:{p.limit:g}{profile.unit}" for p in profile.periods[:3])
        self._event(
            f"profile {profile.purpose.value} id={profile.id} c{c} lvl={profile.stack_level} "
            f"[{lim}] dur={profile.duration_s}"
        )
        self._dirty = True
        self._refresh(self.clock.time())
        return True, ""

    def clear_profiles(
        self,
        *,
        profile_id: int | None = None,
        connector: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> int:
        n = self._store.clear(
            profile_id=profile_id, connector=connector, purpose=purpose, stack_level=stack_level
        )
        self._event(f"cleared {n} profile(s)")
        self._dirty = True
        self._refresh(self.clock.time())
        return n

    def composite_schedule(
        self, connector: int, duration_s: int, unit: str | None = None
    ) -> tuple[datetime, str, list[Period]]:
        """What this charger will offer on ``connector`` (0: the whole charger) for the
        next ``duration_s`` seconds if nothing changes: (start, unit, periods)."""
        unit = unit or "A"
        t0 = self.clock.now()
        end = t0 + timedelta(seconds=duration_s)
        conn = self._conns[connector - 1] if connector > 0 else None
        periods: list[Period] = []
        t = t0
        while t < end:
            cap, total, phases, nxt = self._connector_caps(conn, connector, t, ref=t0)
            amps = total if connector == 0 else min(cap, total)
            amps = _quantize(amps, 0.0 if connector == 0 else self.min_current_a)
            value = amps if unit == "A" else amps * self.voltage_v * phases
            value = math.floor(value * 10 + 1e-6) / 10
            nph = phases if phases != 3 else None
            start_s = round((t - t0).total_seconds())
            if not periods or periods[-1].limit != value or periods[-1].number_phases != nph:
                periods.append(Period(start_s, value, nph))
            if nxt is None or nxt >= end:
                break
            t = nxt if nxt > t else t + timedelta(seconds=1)
        return t0, unit, periods

    # ------------------------------------------------------------------ configuration

    def config_items(self) -> dict[str, tuple[str, bool]]:
        """OCPP 1.6 style configuration: key → (value, read-only)."""
        return {
            "HeartbeatInterval": (str(round(self.heartbeat_interval_s)), False),
            "MeterValueSampleInterval": (str(round(self.meter_interval_s)), False),
            "NumberOfConnectors": (str(len(self._conns)), True),
            "ChargeProfileMaxStackLevel": (str(MAX_STACK_LEVEL), True),
            "ChargingScheduleAllowedChargingRateUnit": ("Current,Power", True),
            "ChargingScheduleMaxPeriods": (str(MAX_PERIODS), True),
            "MaxChargingProfilesInstalled": (str(MAX_PROFILES), True),
            "MeterValuesSampledData": (
                "Energy.Active.Import.Register,Power.Active.Import,Current.Import,"
                "Current.Offered,Voltage,SoC",
                True,
            ),
        }

    def set_config(self, key: str, value: str) -> str:
        """Returns "Accepted", "Rejected" or "NotSupported"."""
        items = self.config_items()
        if key not in items:
            return "NotSupported"
        if items[key][1]:
            return "Rejected"
        try:
            number = float(value)
        except ValueError:
            return "Rejected"
        if number < 0:
            return "Rejected"
        if key == "HeartbeatInterval":
            self.heartbeat_interval_s = number or self.heartbeat_interval_s
        else:
            self.meter_interval_s = number
        self._event(f"config {key}={value}")
        self._wake.set()
        return "Accepted"

    def remote_stop(self, transaction_id: str) -> bool:
        for conn in self._conns:
            if conn.tx is not None and conn.tx.id == transaction_id and not conn.tx.ended:
                self._end_tx(conn, "Remote")
                return True
        return False

    def trigger(self, what: str, connector: int | None) -> bool:
        """TriggerMessage for Heartbeat, StatusNotification and MeterValues."""
        now = self.clock.now()
        targets = [self._conn(connector)] if connector else self._conns
        if what == "Heartbeat":
            self._enqueue(Outgoing("heartbeat", 0, now))
        elif what == "StatusNotification":
            for c in targets:
                self._enqueue(Outgoing("status", c.id, now, tx=c.tx, status=c.status))
        elif what in ("MeterValues", "TransactionEvent"):
            for c in targets:
                if c.tx is not None and c.tx.active:
                    self._enqueue(
                        Outgoing("meter", c.id, now, tx=c.tx, sample=self._sample(c, "Trigger"))
                    )
        else:
            return False
        return True

    # ------------------------------------------------------------------ connection

    def _conn(self, connector: int) -> _Conn:
        if not 1 <= connector <= len(self._conns):
            raise ValueError(f"{self.id} has no connector {connector}")
        return self._conns[connector - 1]

    def _set_status(self, conn: _Conn, status: Status) -> None:
        if conn.status is status:
            return
        conn.status = status
        self._event(f"status c{conn.id} {status.value}")
        self._enqueue(Outgoing("status", conn.id, self.clock.now(), tx=conn.tx, status=status))

    def _enqueue(self, item: Outgoing) -> None:
        if item.kind == "status" and not self._connected:
            return  # statuses are re-sent after the next boot
        box = self._outbox
        if len(box) >= self.max_queued:
            # bounded offline queue, like real chargers: lose a meter sample first
            victim = next((i for i in box if i.kind == "meter"), box[0])
            box.remove(victim)
            self.dropped += 1
        box.append(item)
        self._wake.set()

    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/{quote(self.id, safe='')}"

    async def start(self, *, physics: bool = True, tick_s: float = 1.0) -> None:
        """Begin connecting (in the background); with ``physics`` also run own step loop
        (leave it off when a :class:`SimSite` drives the physics)."""
        if self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"sim-{self.id}")
        if physics:
            self._physics_task = asyncio.create_task(self._physics(tick_s))

    async def stop(self) -> None:
        """Close the connection and end all tasks."""
        self._stopping = True
        self._resume.set()
        self._wake.set()
        pending = {t for t in (self._task, self._physics_task) if t is not None}
        self._task = self._physics_task = None
        # cancel until done: on Python 3.11 asyncio.wait_for (used inside the ocpp
        # package) can swallow a cancellation that races with a reply
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._set_connected(False)

    async def disconnect(self, *, offline_for_s: float | None = None) -> None:
        """Drop the connection as if the network failed and stay offline until
        :meth:`connect` (or for ``offline_for_s`` real seconds, then reconnect)."""
        self._hold_offline = True
        self._resume.clear()
        ws = self._ws
        if ws is not None:
            await ws.close()
        self._set_connected(False)
        if offline_for_s is not None:
            asyncio.get_running_loop().call_later(offline_for_s, self._release)

    def _release(self) -> None:
        self._hold_offline = False
        self._resume.set()

    async def connect(self) -> None:
        """Come back online after :meth:`disconnect`."""
        self._release()
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

    def _set_connected(self, value: bool) -> None:
        if value == self._connected:
            return
        self._connected = value
        if value:
            self._connected_event.set()
        else:
            self._connected_event.clear()
            # pending authorizations cannot be answered now: start offline (what
            # chargers with AllowOfflineTxForUnknownId do)
            waiting = [i for i in self._outbox if i.kind == "authorize"]
            for item in waiting:
                self._outbox.remove(item)
                if item.tx is not None:
                    self._activate(item.tx, offline=True)
        self._event("connected" if value else "disconnected")
        self._dirty = True
        self._refresh(self.clock.time())

    async def _run(self) -> None:
        backoff = self.reconnect_min_s
        attempt = 0
        while not self._stopping:
            if self._hold_offline:
                await self._resume.wait()
                continue
            booted = False
            try:
                booted = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._event(f"connection error: {type(e).__name__}: {e}")
            finally:
                self._ws = None
                self._set_connected(False)
            if self._stopping or not self.auto_reconnect:
                break
            if booted:
                backoff = self.reconnect_min_s
            if self._hold_offline:
                continue
            attempt += 1
            delay = backoff * (0.5 + 0.5 * _unit_hash(self.id, self.seed, attempt))
            backoff = min(self.reconnect_max_s, backoff * 2)
            self._resume.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resume.wait(), delay)

    def _headers(self) -> dict[str, str]:
        if self.password is None:
            return {}
        token = base64.b64encode(f"{self.id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _connect_once(self) -> bool:
        """One connection: returns True if the CSMS accepted our boot."""
        from gridshare.sim._point import make_point

        kwargs: dict[str, Any] = {}
        if self.endpoint.startswith("wss://"):
            kwargs["ssl"] = self.ssl or ssl_mod.create_default_context()
        opening = ws_connect(
            self.endpoint,
            subprotocols=[self.protocol],  # type: ignore[list-item]
            additional_headers=self._headers(),
            compression=None,
            proxy=None,
            open_timeout=self.open_timeout_s,
            ping_interval=None,
            close_timeout=2,
            max_queue=4,
            **kwargs,
        )
        if self.connect_gate is not None:
            async with self.connect_gate:
                ws = await opening
        else:
            ws = await opening
        try:
            if ws.subprotocol != self.protocol:
                self._event(f"CSMS did not accept subprotocol {self.protocol}")
                return False
            if self._hold_offline:
                return False
            self._ws = ws
            point = make_point(self, ws)
            recv = asyncio.create_task(point.start())
            recv.add_done_callback(self._recv_done)
            try:
                return await self._session(point, recv)
            finally:
                recv.cancel()
                with contextlib.suppress(BaseException):
                    await recv
        finally:
            await ws.close()

    def _recv_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: a closed connection is expected here
        self._wake.set()

    async def _wait(self, recv: asyncio.Task[Any], sim_s: float) -> None:
        """Sleep ``sim_s`` or until woken (outbox, config change, connection loss)."""
        if recv.done():
            return
        self._wake.clear()
        if self._outbox and self._connected:
            return
        handle = asyncio.get_running_loop().call_later(
            self.clock.to_real(max(0.0, sim_s)), self._wake.set
        )
        try:
            await self._wake.wait()
        finally:
            handle.cancel()

    async def _session(self, point: SimPoint, recv: asyncio.Task[Any]) -> bool:
        # Boot until accepted (Pending/Rejected: retry after the interval given)
        while True:
            status, interval = await point.boot()
            self.boot_count += 1
            self._event(f"boot {status} interval={interval}")
            if status == "Accepted":
                if interval > 0:
                    self.heartbeat_interval_s = float(interval)
                break
            retry_at = self.clock.time() + float(interval or 10)
            while not recv.done() and not self._stopping and self.clock.time() < retry_at:
                await self._wait(recv, retry_at - self.clock.time())
            if recv.done() or self._stopping:
                return False
        # after (re)boot, statuses of all connectors go first
        self._outbox = deque(i for i in self._outbox if i.kind != "status")
        now = self.clock.now()
        statuses = [Outgoing("status", c.id, now, tx=c.tx, status=c.status) for c in self._conns]
        if self.protocol == "ocpp1.6":
            statuses.insert(0, Outgoing("status", 0, now, status=Status.AVAILABLE))
        self._outbox.extendleft(reversed(statuses))
        self._set_connected(True)
        t = self.clock.time()
        next_hb = t + self.heartbeat_interval_s
        next_meter = t + self.meter_interval_s * (0.5 + 0.5 * _unit_hash(self.id, "meter"))
        while not recv.done() and not self._hold_offline and not self._stopping:
            while self._outbox and not recv.done() and not self._stopping:
                item = self._outbox[0]
                await self._deliver(point, item)
                if self._outbox and self._outbox[0] is item:
                    self._outbox.popleft()
            t = self.clock.time()
            if self.meter_interval_s > 0 and t >= next_meter:
                for c in self._conns:
                    if c.tx is not None and c.tx.active:
                        self._outbox.append(
                            Outgoing(
                                "meter", c.id, self.clock.now(), tx=c.tx, sample=self._sample(c)
                            )
                        )
                next_meter = max(next_meter + self.meter_interval_s, t)
                continue
            if t >= next_hb:
                self._outbox.append(Outgoing("heartbeat", 0, self.clock.now()))
                next_hb = t + self.heartbeat_interval_s
                continue
            due = next_hb if self.meter_interval_s <= 0 else min(next_hb, next_meter)
            await self._wait(recv, due - t)
        return True

    async def _deliver(self, point: SimPoint, item: Outgoing) -> None:
        from ocpp.exceptions import OCPPError

        try:
            await point.deliver(item)
        except OCPPError as e:
            self._event(f"CSMS error on {item.kind} c{item.connector}: {e.code}")
        except TimeoutError:
            self._event(f"no answer to {item.kind} c{item.connector}: dropping connection")
            if self._ws is not None:
                await self._ws.close()
            raise
        tx = item.tx
        if tx is not None:
            if item.kind == "started" and tx.started_event is not None:
                tx.started_event.set()
            elif item.kind == "stopped" and tx.stopped_event is not None:
                tx.stopped_event.set()
