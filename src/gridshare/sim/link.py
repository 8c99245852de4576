"""A simulated charger's link to the CSMS: connect, boot, keep talking, reconnect.

One task per charger runs :meth:`Link.run`. A *session* is one websocket: open it (TLS and
basic auth as configured, the charger's OCPP subprotocol unless it offers none), send
BootNotification until it is Accepted, queue every connector's status first, then send
the outbox in order, a heartbeat every HeartbeatInterval and a meter sample of every
running transaction every MeterValueSampleInterval. While a session runs, a second task
reads the socket (:meth:`RpcConnection.serve`).

When a session ends or cannot start, the charger reconnects with exponential backoff and
jitter (tenacity), starting over from the minimum after every accepted boot. The test knobs
that make the link fail at chosen moments (lose or withhold an answer, reboot after one,
hold the charger offline) live here too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import ssl as ssl_mod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential
from tenacity.wait import wait_base
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from gridshare.ocpp_version import OcppVersion
from gridshare.sim.ocpp16 import Ocpp16Wire
from gridshare.sim.ocpp201 import Ocpp201Wire
from gridshare.sim.outbox import Outgoing
from gridshare.sim.rpc import AnswerFate, CallError, Handler, LinkClosed, RpcConnection
from gridshare.sim.schema import SchemaViolation
from gridshare.tasks import cancel_and_wait

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gridshare.sim.charger import SimCharger


class Wire(Protocol):
    """One OCPP version's translation (:mod:`gridshare.sim.ocpp16` / ``ocpp201``)."""

    version: OcppVersion
    known_actions: frozenset[str]

    def handlers(self) -> dict[str, Handler]: ...

    async def boot(self, rpc: RpcConnection, reason: str) -> tuple[str, float]: ...

    async def deliver(self, rpc: RpcConnection, item: Outgoing) -> None: ...


class LinkDown(Exception):
    """A session ended, or could not be opened or booted: time to reconnect."""


@dataclass(slots=True)
class Countdown:
    """Test knob: picks the next ``remaining`` requests to ``actions`` (empty: any)."""

    remaining: int = 0
    actions: frozenset[str] = field(default_factory=frozenset)

    def take(self, action: str) -> bool:
        if self.remaining > 0 and (not self.actions or action in self.actions):
            self.remaining -= 1
            return True
        return False


class SeededJitter(wait_base):
    """Up to ``max_s`` extra seconds of wait, from a seeded generator: a site's chargers do
    not reconnect in lockstep, and a seeded run stays reproducible."""

    def __init__(self, max_s: float, seed: str) -> None:
        self.max_s = max_s
        self.rng = random.Random(seed)

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.rng.uniform(0.0, self.max_s)


class Link:
    """The connection side of one :class:`~gridshare.sim.charger.SimCharger`."""

    def __init__(
        self,
        charger: SimCharger,
        *,
        auto_reconnect: bool,
        reconnect_min_s: float,
        reconnect_max_s: float,
        seed: int,
    ) -> None:
        self.charger = charger
        self.auto_reconnect = auto_reconnect
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.lost_answers = Countdown()
        self.lost_answer_fate = AnswerFate.SEND
        self.reboots_after_answer = Countdown()
        self.reboot_after_answer_reason = "PowerUp"
        self.reboot_task: asyncio.Task[None] | None = None
        self.reboot_pending: tuple[str, str] | None = None
        """(boot reason, stop reason) of a reboot due once the current answer is out."""
        self.boot_reason = "PowerUp"
        """Reason of the next BootNotification (OCPP 2.0.1)."""
        self.ws: ClientConnection | None = None
        self.hold_offline = False
        self.stopping = False
        self._resume = asyncio.Event()
        self._jitter = SeededJitter(reconnect_min_s, f"{charger.id}/{seed}")

    # ------------------------------------------------------------------ control

    def release(self) -> None:
        """End a hold (:meth:`drop`) and cut a backoff wait short."""
        self.hold_offline = False
        self._resume.set()

    async def drop(self, *, hold: bool) -> None:
        """Close the websocket as a network failure would; with ``hold`` stay offline
        until :meth:`release`."""
        if hold:
            self.hold_offline = True
            self._resume.clear()
        ws = self.ws
        if ws is not None:
            await ws.close()

    def stop(self) -> None:
        self.stopping = True
        self._resume.set()
        self.charger.outbox.wake.set()

    def fail_before_answers(self, answers: int, actions: Collection[str], fate: AnswerFate) -> None:
        self.lost_answers = Countdown(answers, frozenset(actions))
        self.lost_answer_fate = fate

    def reboot_after_answers(self, answers: int, actions: Collection[str], reason: str) -> None:
        self.reboots_after_answer = Countdown(answers, frozenset(actions))
        self.reboot_after_answer_reason = reason

    def answer_fate(self, action: str) -> AnswerFate:
        """What happens to the answer of the ``action`` request just applied."""
        return self.lost_answer_fate if self.lost_answers.take(action) else AnswerFate.SEND

    def reboot_after_this_answer(self, boot_reason: str, stop_reason: str) -> None:
        """Called by a handler (Reset): reboot as soon as its answer is out."""
        self.reboot_pending = (boot_reason, stop_reason)

    def answered(self, action: str) -> None:
        """An ``action`` request was applied and answered (or its answer lost): reboot now
        if a Reset or the reboot knob asks for it."""
        if self.reboot_pending is not None:
            boot_reason, stop_reason = self.reboot_pending
            self.reboot_pending = None
            self.start_reboot(boot_reason, stop_reason)
        elif self.reboots_after_answer.take(action):
            self.start_reboot(self.reboot_after_answer_reason, "Reboot")

    def start_reboot(self, boot_reason: str, stop_reason: str) -> None:
        charger = self.charger
        self.reboot_task = asyncio.create_task(
            charger.reboot(reason=boot_reason, stop_reason=stop_reason),
            name=f"sim-reboot-{charger.id}",
        )
        self.reboot_task.add_done_callback(charger.task_ended)

    # ------------------------------------------------------------------ reconnecting

    def backoff(self) -> AsyncRetrying:
        """Exponential backoff from ``reconnect_min_s`` to ``reconnect_max_s`` plus up to
        ``reconnect_min_s`` of seeded jitter; waits are real seconds, and :meth:`release`
        cuts them short."""
        return AsyncRetrying(
            retry=retry_if_exception_type(LinkDown),
            wait=wait_exponential(
                multiplier=self.reconnect_min_s,
                min=self.reconnect_min_s,
                max=self.reconnect_max_s,
            )
            + self._jitter,
            stop=self._give_up,
            sleep=self._sleep_unless_released,
            reraise=True,
        )

    def _give_up(self, retry_state: RetryCallState) -> bool:
        return self.stopping or not self.auto_reconnect

    async def _sleep_unless_released(self, seconds: float) -> None:
        self._resume.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._resume.wait()

    async def run(self) -> None:
        """Keep a session with the CSMS until stopped.

        Each outage is one tenacity retry cycle whose *first attempt is the session that
        just ended*: so the first reconnect waits the minimum backoff, later ones longer,
        and a fresh cycle (backoff from the minimum) starts after every accepted boot."""
        session: Session | None = None
        try:
            while not self.stopping:
                async for attempt in self.backoff():
                    with attempt:
                        if session is not None:
                            running, session = session, None
                            await running.serve()
                        await self._until_released()
                        session = await self._open()
        except LinkDown:
            return  # told to stop, or no auto-reconnect
        finally:
            if session is not None:
                await session.close()

    async def _until_released(self) -> None:
        while self.hold_offline and not self.stopping:
            await self._resume.wait()
        if self.stopping:
            raise LinkDown("stopping")

    async def _open(self) -> Session:
        """Open a websocket and boot; a :class:`Session` ready to serve, or LinkDown."""
        charger = self.charger
        try:
            ws = await self._connect()
        except Exception as e:  # every way a handshake can fail is an outage here
            charger.log_event(f"connection error: {type(e).__name__}: {e}")
            raise LinkDown(str(e)) from e
        session = Session(self, ws)
        try:
            if ws.subprotocol != (charger.protocol if charger.offer_subprotocol else None):
                charger.log_event(f"CSMS did not accept subprotocol {charger.protocol}")
                raise LinkDown("subprotocol")
            if self.hold_offline:
                raise LinkDown("held offline")
            await session.boot()
        except BaseException as e:
            await session.close()
            if isinstance(e, (CallError, LinkClosed, TimeoutError)):
                charger.log_event(f"connection error: {type(e).__name__}: {e}")
                raise LinkDown(str(e)) from e
            raise
        return session

    async def _connect(self) -> ClientConnection:
        charger = self.charger
        kwargs: dict[str, Any] = {}
        if charger.endpoint.startswith("wss://"):
            kwargs["ssl"] = charger.ssl or ssl_mod.create_default_context()
        headers: dict[str, str] = {}
        if charger.password is not None:
            token = base64.b64encode(f"{charger.id}:{charger.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        opening = ws_connect(
            charger.endpoint,
            subprotocols=[charger.protocol] if charger.offer_subprotocol else None,  # type: ignore[list-item]
            additional_headers=headers,
            compression=None,
            proxy=None,
            open_timeout=charger.open_timeout_s,
            ping_interval=None,
            close_timeout=2,
            max_queue=4,
            **kwargs,
        )
        if charger.connect_gate is None:
            return await opening
        async with charger.connect_gate:
            return await opening


class Session:
    """One websocket to the CSMS, from BootNotification until it closes."""

    def __init__(self, link: Link, ws: ClientConnection) -> None:
        self.link = link
        self.charger = link.charger
        self.ws = ws
        self.wire: Wire = (
            Ocpp16Wire(self.charger)
            if self.charger.protocol == "ocpp1.6"
            else Ocpp201Wire(self.charger)
        )
        self.rpc = RpcConnection(
            ws,
            self.wire.version,
            self.wire.handlers(),
            known_actions=self.wire.known_actions,
            response_timeout_s=self.charger.response_timeout_s,
            answer_fate=link.answer_fate,
            answered=link.answered,
            round_trip=self.charger.round_trip_done,
            name=self.charger.id,
        )
        link.ws = ws
        self.reader = asyncio.create_task(self.rpc.serve(), name=f"sim-rpc-{self.charger.id}")
        self.reader.add_done_callback(self._reader_done)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.charger.log_event(f"receive loop failed: {task.exception()!r}")
        self.charger.outbox.wake.set()

    @property
    def alive(self) -> bool:
        link = self.link
        return not (self.reader.done() or link.stopping or link.hold_offline)

    async def close(self) -> None:
        if self.link.ws is self.ws:
            self.link.ws = None
        self.charger.set_connected(False)
        await self.ws.close()
        # A receive loop that failed was logged by _reader_done: not raised again here.
        await cancel_and_wait([self.reader], swallow_errors=True)

    async def _wait(self, sim_s: float) -> None:
        """Sleep ``sim_s`` simulated seconds, or until woken (outbox, config change, link
        lost)."""
        outbox = self.charger.outbox
        if not self.alive:
            return
        outbox.wake.clear()
        if len(outbox) and self.charger.connected:
            return
        clock = self.charger.clock
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(clock.to_real(max(0.0, sim_s))):
                await outbox.wake.wait()

    async def boot(self) -> None:
        """BootNotification until Accepted (Pending / Rejected: again after the interval
        the CSMS gave, or at once when it asks with TriggerMessage)."""
        charger, link = self.charger, self.link
        while True:
            charger.boot_requested = False
            status, interval = await self.wire.boot(self.rpc, link.boot_reason)
            charger.boot_count += 1
            charger.log_event(f"boot {status} interval={interval:g}")
            if status == "Accepted":
                if interval > 0:
                    charger.config.heartbeat_interval_s = interval
                link.boot_reason = "PowerUp"
                return
            clock = charger.clock
            retry_at = clock.time() + (interval or 10.0)
            while self.alive and clock.time() < retry_at and not charger.boot_requested:
                await self._wait(retry_at - clock.time())
            if not self.alive:
                raise LinkDown("closed while waiting to boot again")

    async def serve(self) -> None:
        """Talk until the link goes: statuses first, then the outbox in order, heartbeats
        and periodic meter samples. Always ends with :class:`LinkDown`."""
        charger = self.charger
        clock = charger.clock
        try:
            charger.outbox.take("status")
            charger.outbox.put_first(charger.statuses_after_boot())
            charger.set_connected(True)
            config = charger.config
            t = clock.time()
            next_heartbeat = t + config.heartbeat_interval_s
            next_meter = t + config.meter_interval_s * charger.meter_phase
            while self.alive:
                while self.alive and (item := charger.outbox.head()) is not None:
                    await self._deliver(item)
                    charger.outbox.pop_if_head(item)
                t = clock.time()
                if config.meter_interval_s > 0 and t >= next_meter:
                    charger.sample_transactions()
                    next_meter = max(next_meter + config.meter_interval_s, t)
                    continue
                if t >= next_heartbeat:
                    charger.enqueue(Outgoing("heartbeat", 0, clock.now()))
                    next_heartbeat = t + config.heartbeat_interval_s
                    continue
                due = next_heartbeat
                if config.meter_interval_s > 0:
                    due = min(due, next_meter)
                await self._wait(due - t)
        finally:
            await self.close()
        raise LinkDown("session ended")

    async def _deliver(self, item: Outgoing) -> None:
        charger = self.charger
        try:
            await self.wire.deliver(self.rpc, item)
        except CallError as e:
            charger.log_event(f"CSMS error on {item.kind} c{item.connector}: {e.code}")
        except TimeoutError as e:
            charger.log_event(f"no answer to {item.kind} c{item.connector}: dropping connection")
            raise LinkDown("no answer") from e
        except LinkClosed as e:
            raise LinkDown("link closed") from e
        except SchemaViolation as e:
            # a simulator bug, not the CSMS's: say so loudly, skip the item, keep going
            log.error("%s: not sending invalid %s: %s", charger.id, item.kind, e)
            charger.log_event(f"invalid {item.kind} c{item.connector} not sent: {e}")
        tx = item.tx
        if tx is not None:
            if item.kind == "started" and tx.started_event is not None:
                tx.started_event.set()
            elif item.kind == "stopped" and tx.stopped_event is not None:
                tx.stopped_event.set()
