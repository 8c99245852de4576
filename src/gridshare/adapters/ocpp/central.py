"""The OCPP central system (CSMS): one WebSocket port for OCPP 1.6J and 2.0.1 chargers.

It authenticates chargers at the HTTP handshake (security profiles 0-3), runs one
:class:`~.connection.Connection` per charger, publishes typed events from gridshare.events
through a plain callback, and implements the ChargerDriver protocol with charging profiles.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http
import itertools
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gridshare.drivers import CommandResult
from gridshare.events import ChargerOffline, ChargerOnline, Event, EventCounters, ProfileRejected

from . import profiles
from .auth import (
    charger_id_from_path,
    common_name,
    hash_password,
    server_ssl_context,
    verify_password,
)
from .config import ChargerCredentials, CsmsConfig
from .connection import ChargerState, Command, Connection, Outcome

LOG = logging.getLogger("gridshare.ocpp")

_REALM = "gridshare OCPP"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class CsmsStats:
    """Counts for the dashboard and the benchmark report (latency of answered calls)."""

    calls_sent: int = 0
    calls_failed: int = 0
    coalesced: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def record_latency(self, seconds: float) -> None:
        self.latencies_s.append(seconds)

    def summary(self, connections: int) -> dict[str, float | int]:
        samples = sorted(self.latencies_s)
        mean_ms = 1000 * sum(samples) / len(samples) if samples else 0.0
        p99_ms = 1000 * samples[min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1)] \
            if samples else 0.0
        return {"connections": connections, "calls_sent": self.calls_sent,
                "calls_failed": self.calls_failed, "coalesced": self.coalesced,
                "latency_mean_ms": mean_ms, "latency_p99_ms": p99_ms}


class CentralSystem:
    """OCPP CSMS and ChargerDriver. See the package docstring for the whole picture."""

    def __init__(self, config: CsmsConfig, publish: Callable[[Event], None],
                 clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self._publish = publish
        self._clock = clock or _utcnow
        self.counters = EventCounters()
        self.metrics = CsmsStats()
        self._credentials: dict[str, ChargerCredentials] = dict(config.chargers)
        self._connections: dict[str, Connection] = {}
        self._states: dict[str, ChargerState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        # Transaction ids survive a restart unambiguously enough: seeded from the clock.
        self._tx_ids = itertools.count(int(self._clock().timestamp()) % 1_000_000_000 + 1)
        self._auth_key = secrets.token_bytes(32)
        self._auth_cache: dict[str, bytes] = {}
        self._registering: dict[str, asyncio.Lock] = {}

    # --- plumbing used by connections ---------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    def emit(self, event: Event) -> None:
        try:
            self._publish(event)
        except Exception:  # a subscriber's bug must not break the charger's connection
            LOG.exception("publish failed for %r", event)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Every background task is kept and its failure logged: nothing fire-and-forget."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOG.error("task %s failed", task.get_name(), exc_info=task.exception())

    def charger_state(self, charger: str) -> ChargerState:
        state = self._states.get(charger)
        if state is None:
            state = self._states[charger] = ChargerState()
        return state

    def next_transaction_id(self) -> int:
        return next(self._tx_ids)

    def command_done(self, connection: Connection, command: Command, outcome: Outcome) -> None:
        state = connection.state
        if outcome.result is CommandResult.ACCEPTED:
            state.rejected.pop(command.key, None)
        elif outcome.result is CommandResult.REJECTED:
            state.rejected[command.key] = outcome.detail
            LOG.warning("%s: %s rejected: %s", connection.charger, command.action,
                        outcome.detail)
            if command.profile:
                self.emit(ProfileRejected(connection.charger, command.connector, self.now(),
                                          outcome.detail))

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 9000) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, see :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("already started")
        cfg = self.config
        ssl_context = None
        if cfg.security_profile >= 2 and cfg.tls is not None:
            ssl_context = server_ssl_context(cfg.tls,
                                             require_client_cert=cfg.security_profile == 3)
        # Above our own limit, so an oversized frame reaches us and can be answered; frames
        # beyond this are a flood and websockets closes the connection (1009).
        max_size = max(4 * cfg.max_message_bytes, cfg.max_message_bytes + 65536)
        self._server = await serve(
            self._handle, host, port,
            subprotocols=[Subprotocol(p) for p in cfg.subprotocols],
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            ssl=ssl_context, max_size=max_size,
            server_header="gridshare",
        )
        self.spawn(self._watchdog(), "ocpp-watchdog")
        LOG.info("OCPP CSMS listening on %s:%s (security profile %s)", host, self.port,
                 cfg.security_profile)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Close every connection cleanly (1001 going away), then cancel all our tasks."""
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=True)
            await server.wait_closed()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- handshake ------------------------------------------------------------------------

    def _select_subprotocol(self, connection: ServerConnection,
                            offered: Sequence[Subprotocol]) -> Subprotocol | None:
        # OCPP-J: with no common subprotocol, complete the handshake without the header and
        # close right after (see _handle) instead of answering HTTP 400.
        for protocol in self.config.subprotocols:
            if protocol in offered:
                return Subprotocol(protocol)
        return None

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, reason: str,
                text: str, *, challenge: bool = False) -> Response:
        self.counters.reject(reason)
        LOG.warning("refused connection from %s: %s", connection.remote_address, reason)
        response = connection.respond(status, text + "\n")
        if challenge:
            response.headers["WWW-Authenticate"] = build_www_authenticate_basic(_REALM)
        return response

    async def _process_request(self, connection: ServerConnection,
                               request: Request) -> Response | None:
        cfg = self.config
        charger = charger_id_from_path(request.path)
        if charger is None:
            return self._refuse(connection, http.HTTPStatus.NOT_FOUND, "auth_bad_charger_id",
                                "No valid charger id in the path")
        known = charger in self._credentials
        if cfg.security_profile in (1, 2):
            return await self._check_basic_auth(connection, request.headers, charger, known)
        if cfg.security_profile == 3:
            cn = common_name(connection.transport.get_extra_info("peercert"))
            if cn != charger:
                return self._refuse(connection, http.HTTPStatus.FORBIDDEN, "auth_cn_mismatch",
                                    "Client certificate does not name this charger")
        if not known:
            if not cfg.allow_auto_register:
                return self._refuse(connection, http.HTTPStatus.NOT_FOUND,
                                    "auth_unknown_charger", "Unknown charger")
            self._credentials[charger] = ChargerCredentials()
            LOG.info("auto-registered charger %s", charger)
        return None

    async def _check_basic_auth(self, connection: ServerConnection, headers: Headers,
                                charger: str, known: bool) -> Response | None:
        unauthorized = http.HTTPStatus.UNAUTHORIZED
        try:
            username, password = parse_authorization_basic(headers["Authorization"])
        except KeyError:
            return self._refuse(connection, unauthorized, "auth_missing", "Missing credentials",
                                challenge=True)
        except InvalidHeader:
            return self._refuse(connection, unauthorized, "auth_malformed",
                                "Unsupported credentials", challenge=True)
        if username != charger:
            return self._refuse(connection, unauthorized, "auth_username_mismatch",
                                "Invalid credentials", challenge=True)
        if not known:
            if not self.config.allow_auto_register:
                return self._refuse(connection, unauthorized, "auth_unknown_charger",
                                    "Invalid credentials", challenge=True)
            # Trust on first use: pin the first password this id presents.
            lock = self._registering.setdefault(charger, asyncio.Lock())
            async with lock:
                if charger not in self._credentials:
                    hashed = await asyncio.to_thread(hash_password, password)
                    self._credentials[charger] = ChargerCredentials(hashed)
                    self._remember_password(charger, password)
                    LOG.info("auto-registered charger %s (password pinned)", charger)
                    return None
        if not await self._password_ok(charger, password):
            return self._refuse(connection, unauthorized, "auth_bad_password",
                                "Invalid credentials", challenge=True)
        return None

    def _password_digest(self, password: str) -> bytes:
        return hmac.new(self._auth_key, password.encode(errors="surrogateescape"),
                        hashlib.sha256).digest()

    def _remember_password(self, charger: str, password: str) -> None:
        self._auth_cache[charger] = self._password_digest(password)

    async def _password_ok(self, charger: str, password: str) -> bool:
        """scrypt in a worker thread (it would stall every charger for ~50 ms); the last good
        password is remembered as a keyed HMAC so a reconnect storm costs no scrypt."""
        cached = self._auth_cache.get(charger)
        if cached is not None and hmac.compare_digest(cached, self._password_digest(password)):
            return True
        hashed = self._credentials[charger].password_hash
        if hashed is None:
            LOG.error("charger %s has no password hash but security profile %s needs one",
                      charger, self.config.security_profile)
            return False
        if await asyncio.to_thread(verify_password, password, hashed):
            self._remember_password(charger, password)
            return True
        return False

    # --- connections ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        charger = charger_id_from_path(ws.request.path if ws.request else "")
        protocol = ws.subprotocol
        if charger is None or protocol is None:
            self.counters.reject("no_subprotocol")
            LOG.warning("closing connection without a supported OCPP subprotocol from %s",
                        ws.remote_address)
            await ws.close(1002, "no supported OCPP subprotocol")
            return
        connection = Connection(self, ws, charger, protocol)
        previous = self._connections.get(charger)
        if previous is not None:
            previous.replaced = True
            self.spawn(previous.close("replaced by a new connection"), f"ocpp-close-{charger}")
        self._connections[charger] = connection
        self.emit(ChargerOnline(charger, self.now()))
        try:
            await connection.run()
        finally:
            if self._connections.get(charger) is connection:
                del self._connections[charger]
            if not connection.replaced:
                code = ws.close_code
                self._offline(connection, f"connection closed ({code})")

    def _offline(self, connection: Connection, reason: str) -> None:
        if connection.offline_published:
            return
        connection.offline_published = True
        self.emit(ChargerOffline(connection.charger, self.now(), reason))

    async def _watchdog(self) -> None:
        """Declare chargers silent for longer than the heartbeat allowance offline."""
        allowance = self.config.offline_after
        interval = min(max(allowance / 5, 0.02), 5.0)
        while True:
            await asyncio.sleep(interval)
            now = self.now()
            for connection in list(self._connections.values()):
                if connection.closing or connection.offline_published:
                    continue
                if (now - connection.last_seen).total_seconds() > allowance:
                    LOG.warning("%s: silent for more than %.1f s, closing", connection.charger,
                                allowance)
                    self._offline(connection, "silent past heartbeat allowance")
                    connection.closing = True
                    self.spawn(connection.close("heartbeat timeout"),
                               f"ocpp-close-{connection.charger}")

    # --- queries --------------------------------------------------------------------------

    def connected(self) -> frozenset[str]:
        return frozenset(self._connections)

    def protocol_of(self, charger: str) -> str | None:
        connection = self._connections.get(charger)
        return connection.protocol if connection else None

    def transaction_of(self, charger: str, connector: int) -> str | None:
        """The running transaction on a connector as we know it (None: none)."""
        state = self._states.get(charger)
        return state.tx_by_connector.get(connector) if state else None

    def rejected_profiles(self) -> dict[str, str]:
        """Charger → detail of its latest command rejection still unresolved."""
        return {charger: next(reversed(state.rejected.values()))
                for charger, state in self._states.items() if state.rejected}

    def stats(self) -> dict[str, float | int]:
        """connections, calls_sent, calls_failed, coalesced, latency_mean_ms, latency_p99_ms."""
        return self.metrics.summary(len(self._connections))

    # --- ChargerDriver ----------------------------------------------------------------------

    async def _run(self, charger: str, make: Callable[[Connection], Command]) -> Outcome:
        connection = self._connections.get(charger)
        if connection is None or connection.closing:
            return Outcome(CommandResult.OFFLINE, detail="not connected")
        return await connection.submit(make(connection))

    @staticmethod
    def _check_current(current_a: float) -> None:
        if not (isinstance(current_a, int | float) and math.isfinite(current_a)
                and current_a >= 0):
            raise ValueError(f"current must be a finite, non-negative number, got {current_a}")

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float | None = None) -> CommandResult:
        """Live setpoint (A per phase) for ``connector``, valid for ``lease_s`` seconds
        (default ``config.lease_s``): a TxProfile for the running transaction, else a
        TxDefaultProfile on that connector. A newer setpoint replaces a queued one."""
        self._check_current(current_a)
        if connector < 1:
            raise ValueError("a setpoint needs a connector >= 1")
        lease = self.config.lease_s if lease_s is None else lease_s
        outcome = await self._run(charger, lambda c: c.setpoint_command(connector, current_a,
                                                                        lease))
        return outcome.result

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandResult:
        """TxDefaultProfile on connector 0. Remembered and re-sent after every (re)connect,
        so OFFLINE here still means it will be installed when the charger comes back."""
        self._check_current(current_a)
        self.charger_state(charger).failsafe_a = current_a
        return (await self._run(charger, lambda c: c.failsafe_command(current_a))).result

    async def apply_charger_cap(self, charger: str, current_a: float | None) -> CommandResult:
        """ChargePointMaxProfile on connector 0; None lifts it (ClearChargingProfile by id).
        Remembered and re-sent on reconnect like the failsafe."""
        if current_a is not None:
            self._check_current(current_a)
        self.charger_state(charger).cap_a = current_a
        return (await self._run(charger, lambda c: c.cap_command(current_a))).result

    async def clear_profile(self, charger: str, connector: int, purpose: str) -> CommandResult:
        """ClearChargingProfile for every profile of ``purpose`` (either version's name, or
        "max"/"tx_default"/"tx") on ``connector``."""
        neutral = profiles.purpose_of(purpose)
        return (await self._run(charger, lambda c: c.clear_command(connector, neutral))).result

    async def get_composite_schedule(self, charger: str, connector: int,
                                     duration_s: int) -> list[tuple[float, float]] | None:
        """What the charger will actually apply: [(start_offset_s, limit_a_per_phase)], or
        None when it is offline, does not answer or refuses."""
        outcome = await self._run(charger, lambda c: c.composite_command(connector,
                                                                         int(duration_s)))
        if outcome.result is not CommandResult.ACCEPTED or outcome.payload is None:
            return None
        protocol = self.protocol_of(charger) or profiles.V16
        return profiles.parse_composite_schedule(protocol, outcome.payload,
                                                 voltage_v=self.config.voltage_v,
                                                 phases=self.config.phases_of(charger))


__all__ = ["CentralSystem", "CsmsStats"]
