"""OpenEVSE boxes as chargers: a claim out over their HTTP API, their MQTT status in.

A setpoint is a claim (``POST /claims/<client>``) in whole amps rounded *down*; below the
6 A pilot minimum the claim says ``state: disabled`` (pause). The firmware answers 200
``{"msg":"done"}`` once the claim is stored, but a claim of higher priority (a manual
override on the box, its shaper) may win, so the outcome is read back from
``GET /claims/target``: Accepted only when the box's target is at or below the claim.

**Lease.** A claim has no end on the box. Two things bound what a box draws:

- while gridshare runs, this driver holds each claim for the setpoint's ``lease_s`` and,
  if the controller has not renewed it by then, claims the box's safe current (the
  failsafe the controller sent, else ``safe_current_a``; below 6 A: paused);
- when gridshare dies or loses the box, its *current shaper* is the dead-man switch:
  every ``heartbeat_s`` the driver posts ``{"shaper_live_pwr": 0}`` to ``/status``; a box
  that hears nothing for ``current_shaper_data_maxinterval`` seconds (firmware default 120)
  pauses its charge on its own (a shaper claim of higher priority). ``apply_failsafe``
  checks on the box (``GET /config``) that the shaper is on and its interval is within the
  lease, so the guard's assumption (the setpoint until the lease ends, then at most the
  failsafe) holds: the box holds the claim at most that interval, then draws 0 A.

Status comes in over the site's broker through :class:`MqttLink` (the meters' MQTT path);
see :mod:`gridshare.adapters.openevse.status` for what each topic becomes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from gridshare.adapters.meters.mqtt import MqttLink, SetupError, read_password
from gridshare.adapters.meters.parse import Rejected
from gridshare.adapters.openevse.status import TOPICS, BoxStatus
from gridshare.clock import Clock, SystemClock
from gridshare.config import MqttSpec, OpenEvseSpec
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest
from gridshare.events import ChargerBooted, Event
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.openevse")

MIN_A = 6
"""The pilot's minimum: a claim below it pauses the box (``state: disabled``)."""
TARGET_READS = 3
"""Reads of ``/claims/target`` after a claim (the box evaluates claims in its own task)."""
TARGET_WAIT_S = 0.1
WATCH_S = 1.0
"""How often silence (offline) and unrenewed claims are checked."""


def whole_amps(current_a: float) -> int:
    """Amps as the box takes them: whole, rounded down (never above what was allowed)."""
    if not math.isfinite(current_a) or current_a <= 0:
        return 0
    return math.floor(current_a + 1e-9)


def claim_body(current_a: float) -> dict[str, Any]:
    """The claim for a setpoint: active at whole amps, or paused below 6 A. Never
    ``auto_release``: a claim released at the end of a session would leave the next car
    at the box's full current until we claim again."""
    amps = whole_amps(current_a)
    if amps < MIN_A:
        return {"state": "disabled", "charge_current": MIN_A, "max_current": MIN_A,
                "auto_release": False}
    return {"state": "active", "charge_current": amps, "max_current": amps,
            "auto_release": False}


def target_obeys(target: object, body: Mapping[str, Any]) -> str | None:
    """None when the box's target (``GET /claims/target``) draws at most what ``body``
    claims; else why not."""
    if not isinstance(target, dict) or not isinstance(target.get("properties"), dict):
        return f"unreadable target {str(target)[:80]!r}"
    props = target["properties"]
    state = props.get("state")
    if state == "disabled":
        return None  # paused: never more than any claim
    if body["state"] == "disabled":
        return f"box stays {state!r} (a claim of higher priority: {target.get('claims')})"
    limits = [v for k in ("charge_current", "max_current")
              if isinstance(v := props.get(k), int | float) and not isinstance(v, bool)]
    if not limits or min(limits) > body["charge_current"]:
        return (f"box target {min(limits) if limits else 'unlimited'} A is above the "
                f"claim of {body['charge_current']} A (claims: {target.get('claims')})")
    return None


@dataclass(slots=True)
class _Box:
    charger: str
    spec: OpenEvseSpec
    status: BoxStatus
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seq: int = 0
    amps: float | None = None
    """The setpoint last claimed (A), before the cap."""
    lease_until: datetime | None = None
    cap: float | None = None
    failsafe: float | None = None
    heartbeats: int = 0
    heartbeat_errors: int = 0
    heartbeat_down: bool = False
    rejected: int = 0
    last_error: str | None = None


class OpenEvseDriver:
    """The :class:`gridshare.drivers.ChargerDriver` of every ``driver: openevse`` box."""

    def __init__(self, boxes: Mapping[str, OpenEvseSpec], mqtt: MqttSpec,
                 publish: Callable[[Event], None], *, clock: Clock | None = None,
                 lease_s: float = 180.0) -> None:
        self._boxes = {cid: _Box(cid, spec, BoxStatus(cid)) for cid, spec in boxes.items()}
        self._by_base = {spec.mqtt_base.rstrip("/"): cid for cid, spec in boxes.items()}
        self._mqtt = mqtt.model_copy(update={
            "client_id": None if mqtt.client_id is None else f"{mqtt.client_id}-openevse"})
        self._publish = publish
        self._clock = clock or SystemClock()
        self.lease_s = lease_s
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.link: MqttLink | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def chargers(self) -> frozenset[str]:
        return frozenset(self._boxes)

    async def start(self) -> None:
        """Read the status topics, start the heartbeats; never raises for a box or broker
        that is down."""
        if self._tasks:
            return
        self._http = httpx.AsyncClient(follow_redirects=False)
        topics = [f"{base}/{sub}" for base in self._by_base for sub in TOPICS]
        self.link = MqttLink(self._mqtt, topics, self._on_message, self._on_outage)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.link.run(), name="openevse-mqtt"))
        for box in self._boxes.values():
            self._tasks.append(loop.create_task(self._heartbeat(box),
                                                name=f"openevse-heartbeat-{box.charger}"))
        self._tasks.append(loop.create_task(self._watch(), name="openevse-watch"))

    async def stop(self) -> None:
        """Stop feeding the boxes: each pauses within its shaper interval."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks, swallow_errors=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def status(self) -> dict[str, dict[str, Any]]:
        """Per box: online, heartbeats sent and failed, bad messages, the last error."""
        return {cid: {"online": b.status.online, "heartbeats": b.heartbeats,
                      "heartbeat_errors": b.heartbeat_errors, "rejected": b.rejected,
                      "last_error": b.last_error, "claim_a": b.amps}
                for cid, b in self._boxes.items()}

    # --- ChargerDriver -------------------------------------------------------------------

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        out: list[Awaitable[CommandOutcome]] = []
        for req in requests:
            box = self._boxes.get(req.charger)
            if box is None:
                out.append(_done(CommandOutcome(CommandResult.REJECTED, sent=False,
                                                detail="not an OpenEVSE charger")))
                continue
            box.seq += 1
            out.append(asyncio.ensure_future(
                self._setpoint(box, box.seq, req.current_a, req.lease_s)))
        return out

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        return await self.submit_setpoints(
            [SetpointRequest(charger, connector, current_a, lease_s)])[0]

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        """Remember the current an unrenewed claim falls to, and check that the box falls
        back by itself when gridshare is silent (its shaper on, its interval within the
        lease)."""
        box = self._boxes.get(charger)
        if box is None:
            return CommandOutcome(CommandResult.REJECTED, sent=False,
                                  detail="not an OpenEVSE charger")
        box.failsafe = current_a
        got = await self._request(box, "GET", "/config")
        if isinstance(got, CommandOutcome):
            return got
        config = got.json() if got.is_success else None
        if not isinstance(config, dict):
            return CommandOutcome(CommandResult.REJECTED,
                                  detail=f"GET /config answered {got.status_code}")
        if not config.get("current_shaper_enabled"):
            return CommandOutcome(CommandResult.REJECTED, detail=(
                "the box's current shaper is off: it would keep its claim if gridshare "
                "stopped (turn it on, docs/openevse.md)"))
        interval = config.get("current_shaper_data_maxinterval")
        if not isinstance(interval, int | float) or interval > self.lease_s \
                or interval <= box.spec.heartbeat_s:
            return CommandOutcome(CommandResult.REJECTED, detail=(
                f"current_shaper_data_maxinterval {interval!r} s must be above heartbeat_s "
                f"{box.spec.heartbeat_s:g} s and at most the lease {self.lease_s:g} s"))
        if box.amps is None:
            # Like an OCPP default profile: in force from now until a setpoint replaces it
            # (a box that never heard of us charges at its own maximum).
            box.seq += 1
            async with box.lock:
                outcome = await self._claim(box, current_a if box.cap is None
                                            else min(current_a, box.cap), self.lease_s)
            if outcome.result is not CommandResult.ACCEPTED:
                return outcome
            box.amps = current_a
        return CommandOutcome(CommandResult.ACCEPTED, detail=(
            f"falls to {current_a:g} A when a claim is not renewed, pauses after "
            f"{interval:g} s without gridshare"))

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        """A cap on the whole box: every claim is at most it (one connector)."""
        box = self._boxes.get(charger)
        if box is None:
            return CommandOutcome(CommandResult.REJECTED, sent=False,
                                  detail="not an OpenEVSE charger")
        box.cap = current_a
        if box.amps is None:
            return CommandOutcome(CommandResult.ACCEPTED, sent=False,
                                  detail="no claim yet: the next one is capped")
        box.seq += 1
        lease = ((box.lease_until - self._clock.now()).total_seconds()
                 if box.lease_until is not None else self.lease_s)
        return await self._setpoint(box, box.seq, box.amps, max(lease, 1.0))

    # --- claims --------------------------------------------------------------------------

    async def _setpoint(self, box: _Box, seq: int, current_a: float,
                        lease_s: float) -> CommandOutcome:
        async with box.lock:
            if seq != box.seq:
                return CommandOutcome(CommandResult.SUPERSEDED, sent=False)
            amps = current_a if box.cap is None else min(current_a, box.cap)
            outcome = await self._claim(box, amps, lease_s)
            if outcome.result is CommandResult.ACCEPTED or outcome.unknown:
                box.amps = current_a
                box.lease_until = self._clock.now() + timedelta(seconds=lease_s)
            return outcome

    async def _claim(self, box: _Box, amps: float, lease_s: float) -> CommandOutcome:
        body = claim_body(amps)
        valid_to = self._clock.now() + timedelta(seconds=lease_s)
        got = await self._request(box, "POST", f"/claims/{box.spec.claim_client}", body)
        if isinstance(got, CommandOutcome):
            return CommandOutcome(got.result, got.sent, valid_to if got.sent else None,
                                  detail=got.detail)
        if not got.is_success:
            return CommandOutcome(CommandResult.REJECTED, valid_to=valid_to,
                                  detail=f"claim answered {got.status_code}: {got.text[:80]}")
        why: str | None = "target not read"
        for attempt in range(TARGET_READS):
            if attempt:
                await asyncio.sleep(TARGET_WAIT_S)
            target = await self._request(box, "GET", "/claims/target")
            if isinstance(target, CommandOutcome) or not target.is_success:
                continue
            try:
                why = target_obeys(target.json(), body)
            except ValueError:
                why = "target is not JSON"
            if why is None:
                return CommandOutcome(CommandResult.ACCEPTED, valid_to=valid_to,
                                      detail=f"claim {body['state']} {body['charge_current']} A")
        if why == "target not read":  # the claim was stored; only the read-back failed
            return CommandOutcome(CommandResult.ACCEPTED, valid_to=valid_to,
                                  detail="claim stored, target not read back")
        return CommandOutcome(CommandResult.REJECTED, valid_to=valid_to, detail=why or "")

    async def _request(self, box: _Box, method: str, path: str,
                       body: object = None) -> httpx.Response | CommandOutcome:
        """One HTTP request to the box; a failure as the outcome it means: nothing left
        (offline) or no answer (unknown)."""
        if self._http is None:
            return CommandOutcome(CommandResult.OFFLINE, sent=False, detail="not started")
        auth = None
        if box.spec.username is not None:
            try:
                password = (read_password(box.spec.password_file)
                            if box.spec.password_file is not None else "")
            except SetupError as exc:
                return CommandOutcome(CommandResult.OFFLINE, sent=False, detail=str(exc))
            auth = httpx.BasicAuth(box.spec.username, password)
        url = box.spec.url.rstrip("/") + path
        try:
            return await self._http.request(method, url, json=body, auth=auth,
                                            timeout=box.spec.timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return CommandOutcome(CommandResult.OFFLINE, sent=False,
                                  detail=f"{method} {path}: {type(exc).__name__}")
        except httpx.TimeoutException as exc:
            return CommandOutcome(CommandResult.TIMEOUT,
                                  detail=f"{method} {path}: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return CommandOutcome(CommandResult.LOST,
                                  detail=f"{method} {path}: {type(exc).__name__}: {exc}")

    # --- heartbeat and lease -------------------------------------------------------------

    async def _heartbeat(self, box: _Box) -> None:
        """Feed the box's shaper every ``heartbeat_s``: its proof that gridshare lives.
        Before each feed, check that our claim is still there: a box that restarted has
        lost it (claims live in its RAM) and its shaper is unfed, so it stays paused until
        the safe current is claimed again, and only then is it fed."""
        while True:
            if box.amps is not None and not box.lock.locked():
                held = await self._request(box, "GET", f"/claims/{box.spec.claim_client}")
                if isinstance(held, httpx.Response) and held.status_code == 404:
                    await self._rebooted(box)
            got = await self._request(box, "POST", "/status", {"shaper_live_pwr": 0})
            if isinstance(got, httpx.Response) and got.is_success:
                box.heartbeats += 1
                if box.heartbeat_down:
                    box.heartbeat_down = False
                    log.info("openevse %s: heartbeat answered again", box.charger)
            else:
                box.heartbeat_errors += 1
                why = (got.detail if isinstance(got, CommandOutcome)
                       else f"POST /status answered {got.status_code}")
                box.last_error = f"heartbeat: {why}"
                if not box.heartbeat_down:
                    box.heartbeat_down = True
                    log.warning("openevse %s: heartbeat failed (%s); the box pauses if "
                                "it hears nothing for its shaper interval", box.charger, why)
            await asyncio.sleep(box.spec.heartbeat_s)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            now = self._clock.now()
            for box in self._boxes.values():
                seen = box.status.last_seen
                if seen is not None and box.status.online and \
                        (now - seen).total_seconds() > box.spec.offline_after_s:
                    self._emit(box.status.silent(
                        now, f"no status message for {box.spec.offline_after_s:g} s"))
                if box.lease_until is not None and now >= box.lease_until \
                        and not box.lock.locked():
                    await self._expire(box)

    async def _rebooted(self, box: _Box) -> None:
        """The box lost our claim: claim the safe current again, and tell the controller
        it booted (what it had accepted is gone; it sends the failsafe and setpoints)."""
        safe = box.failsafe if box.failsafe is not None else box.spec.safe_current_a
        box.seq += 1
        box.lease_until = None
        async with box.lock:
            outcome = await self._claim(box, safe if box.cap is None else min(safe, box.cap),
                                        self.lease_s)
        box.amps = safe if outcome.result is CommandResult.ACCEPTED else None
        log.warning("openevse %s: our claim is gone (the box restarted); claimed the safe "
                    "current %g A: %s", box.charger, safe, outcome.result.value)
        self._emit([ChargerBooted(box.charger, self._clock.now(), "openevse",
                                  vendor="OpenEVSE")])

    async def _expire(self, box: _Box) -> None:
        """A claim not renewed within its lease falls to the safe current."""
        safe = box.failsafe if box.failsafe is not None else box.spec.safe_current_a
        box.seq += 1
        box.lease_until = None
        async with box.lock:
            outcome = await self._claim(box, safe if box.cap is None else min(safe, box.cap),
                                        self.lease_s)
        log.info("openevse %s: lease ended unrenewed, claimed the safe current %g A: %s",
                 box.charger, safe, outcome.result.value)
        if outcome.result is CommandResult.ACCEPTED:
            box.amps = safe
        else:  # try again on the next pass
            box.lease_until = self._clock.now()

    # --- status in -----------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        base, _, sub = topic.rpartition("/")
        cid = self._by_base.get(base)
        if cid is None or sub not in TOPICS:
            return
        box = self._boxes[cid]
        result = box.status.message(sub, payload, self._clock.now())
        if isinstance(result, Rejected):
            box.rejected += 1
            box.last_error = f"mqtt {topic}: {result.reason}"
            if box.rejected == 1 or box.rejected % 100 == 0:
                log.warning("openevse %s: %s [%d rejected]", cid, box.last_error, box.rejected)
            return
        self._emit(result)

    def _on_outage(self, reason: str) -> None:
        now = self._clock.now()
        for box in self._boxes.values():
            self._emit(box.status.silent(now, f"mqtt: {reason}"))

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            try:
                self._publish(event)
            except Exception:
                log.exception("openevse: publishing %r failed", event)


def _done(outcome: CommandOutcome) -> asyncio.Future[CommandOutcome]:
    future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
    future.set_result(outcome)
    return future


__all__ = ["OpenEvseDriver", "claim_body", "target_obeys", "whole_amps"]
