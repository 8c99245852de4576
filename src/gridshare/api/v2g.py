"""The V2G discharge test over REST: ``POST /api/v1/v2g/test`` (what ``gridshare v2g test``
calls).

It asks one bidirectional charger for a CentralSetpoint discharge of ``power_w`` for
``duration_s`` seconds (OCPP 2.1, :meth:`CentralSystem.send_v2x_setpoint`), after the guard
passed it (:func:`gridshare.core.guard.check_v2x`), watches the charger's meter values on
the bus, then restores the normal profile (the V2X profile is cleared by id, so the
controller's own setpoint below it applies again) and answers with requested against
measured power over time and the time to reach 90 % of the request.

The request is held open for the whole test (``duration_s`` plus a few seconds): a test
is a rare, deliberate operator action, and one answer with the whole report is what a
script wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from gridshare.adapters.ocpp.v2x import V2xRefused
from gridshare.api.problems import Problem, problem_responses
from gridshare.core.snapshot import Snapshot
from gridshare.core.v2x_offer import discharge_cap_w
from gridshare.drivers import CommandOutcome, CommandResult
from gridshare.events import MeterReading
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.app import GridshareApp

MAX_DURATION_S = 3600.0
REACHED_SHARE = 0.9
"""The test reports when the measured discharge first reaches this share of the request."""
HOLD_CHECK_S = 0.1
"""During a test, how often the grid's frequency state is looked at."""
RESTORE_MARGIN_S = 30.0
"""The V2X profile is valid this much past the test's end: if the restore is lost, the
charger still stops discharging on its own then."""


class V2gTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    charger: str = Field(max_length=256, description="A charger declared `v2x: true`.")
    connector: int | None = Field(default=None, ge=1, le=16, description="EVSE id (default: "
                                  "the first with a running transaction).")
    power_w: float = Field(gt=0, le=1_000_000, allow_inf_nan=False,
                           description="Discharge power asked, W (a magnitude).",
                           examples=[5000])
    duration_s: float = Field(ge=1, le=MAX_DURATION_S, allow_inf_nan=False,
                              description="How long to discharge, seconds.", examples=[60])


class V2gSample(BaseModel):
    t_s: float = Field(description="Seconds since the setpoint was sent.")
    requested_w: float = Field(description="Signed, negative = discharge.")
    measured_w: float = Field(description="Signed: import − export, from MeterValues.")
    soc_percent: float | None = None


class V2gTestOut(BaseModel):
    charger: str
    connector: int
    requested_w: float = Field(description="Signed: negative = discharge. What was sent: "
                               "`asked_w` clipped to the car's maxDischargePower.")
    asked_w: float | None = Field(default=None, description="Signed: the discharge the "
                                  "operator asked for.")
    ev_max_discharge_w: float | None = Field(default=None, description="The car's "
                                             "maxDischargePower (OCPP 2.1 charging needs); "
                                             "null when it sent none.")
    duration_s: float
    accepted: bool = Field(description="The charger accepted the CentralSetpoint profile.")
    answer_s: float = Field(description="Seconds from sending to the charger's answer.")
    samples: list[V2gSample]
    time_to_90_s: float | None = Field(description="Seconds from sending until the measured "
                                       "discharge first reached 90 % of the request; null "
                                       "when it never did.")
    reached_90: bool
    peak_w: float | None = Field(description="The largest discharge measured (signed).")
    restored: bool = Field(description="The V2X profile was cleared: the normal profile "
                           "applies again.")
    restore_detail: str = ""
    stopped_early: str | None = Field(default=None, description="Why the test ended before "
                                      "its duration (the grid's frequency left the safety "
                                      "window: no discharge then); null when it ran its "
                                      "course.")


def _connector(app: GridshareApp, charger: str, asked: int | None) -> int:
    chargers = app.topology.chargers
    keys = [c.number for c in chargers[charger].connectors] if charger in chargers else []
    candidates = [asked] if asked is not None else keys
    for number in candidates:
        if app.csms.transaction_of(charger, number) is not None:
            return number
    where = f"connector {asked}" if asked is not None else "any connector"
    raise Problem(409, f"{charger}: no running transaction on {where} (a car must be "
                  "plugged in to discharge)", kind="v2g-no-session")


def create_router(app: Callable[[], GridshareApp], write: Any) -> APIRouter:
    router = APIRouter(prefix="/api/v1/v2g", tags=["v2g"])
    running: set[tuple[str, int]] = set()
    """The connectors a test is running on: one test at a time on a connector."""

    @router.post("/test", dependencies=[Depends(write)], response_model=V2gTestOut,
                 responses=problem_responses(401, 403, 404, 409, 422, 502),
                 summary="Discharge test: a CentralSetpoint for a while, measured, restored")
    async def v2g_test(body: V2gTestIn) -> V2gTestOut:
        return await run_test(app(), body, running)

    return router


async def run_test(app: GridshareApp, body: V2gTestIn,
                   running: set[tuple[str, int]] | None = None) -> V2gTestOut:
    """The test itself (see the module docstring); Problems: 404 unknown charger, 409 not
    V2X / offline / no session / the car offers no BPT mode / refused by the guard, 502
    the charger refused it."""
    csms, charger = app.csms, body.charger
    if charger not in app.topology.chargers:
        raise Problem(404, f"unknown charger {charger!r}", kind="unknown-charger")
    if not csms.v2x_capable(charger):
        why = csms.v2x_refusal(charger) or "not V2X capable"
        raise Problem(409, f"{why}: it cannot be asked to discharge", kind="v2g-not-capable")
    connector = _connector(app, charger, body.connector)
    refused = csms.v2x_refusal(charger, connector)  # the car there: does it offer BPT?
    if refused is not None:
        raise Problem(409, f"{refused}: it cannot be asked to discharge",
                      kind="v2g-not-capable")
    unsafe = app.frequency.grid_unsafe() if app.frequency is not None else None
    if unsafe is not None:
        raise Problem(409, f"the grid is outside the frequency safety window, no discharge "
                      f"now: {unsafe}", kind="v2g-grid-unsafe")
    running = set() if running is None else running
    if (charger, connector) in running:
        raise Problem(409, f"{charger}/{connector}: a V2G test is already running there",
                      kind="v2g-busy")
    running.add((charger, connector))
    # A frequency-response unit: the service stands aside while the test owns the
    # connector's V2X profile (else it overrides the test at its next renewal, or its
    # local curve is gone after the test's clear), and sends again once it is restored.
    try:
        if app.frequency is None:
            return await _run(app, body, connector)
        async with app.frequency.stand_aside((charger, connector)):
            return await _run(app, body, connector)
    finally:
        running.discard((charger, connector))


async def _run(app: GridshareApp, body: V2gTestIn, connector: int) -> V2gTestOut:
    csms, charger = app.csms, body.charger
    asked = -abs(body.power_w)
    offer = csms.v2x_offer(charger, connector)
    # what the car offers clips the test (the one rule, as for the frequency service)
    requested = -discharge_cap_w(abs(body.power_w), offer)
    snapshot = Snapshot(now=app.clock.now(), connectors={}, groups={})
    book = app.v2x_book
    # the guard sees the request as asked (one the circuits cannot carry is refused
    # whatever the car offers) and what is sent
    alarms = book.check(app.topology, snapshot, {}, {(charger, connector): asked})
    if not alarms and requested != asked:
        alarms = book.check(app.topology, snapshot, {}, {(charger, connector): requested})
    if requested > -1.0:
        raise Problem(409, f"{charger} connector {connector}: the car offers no discharge "
                      f"(maxDischargePower {0.0 if offer is None else offer.max_discharge_w}"
                      " W): it cannot be asked to discharge", kind="v2g-not-capable")
    if alarms:
        raise Problem(409, "refused by the guard: " + "; ".join(a.message for a in alarms),
                      kind="v2g-guard")
    samples: list[V2gSample] = []
    subscription = app.bus.subscribe("v2g-test")
    started = time.monotonic()

    async def watch() -> None:
        async for event in subscription:
            if (isinstance(event, MeterReading) and event.charger == charger
                    and event.connector == connector and event.power_w is not None
                    and math.isfinite(event.power_w)):
                samples.append(V2gSample(t_s=round(time.monotonic() - started, 3),
                                         requested_w=requested, measured_w=event.power_w,
                                         soc_percent=event.soc_percent))

    watcher = asyncio.create_task(watch(), name=f"v2g-test-{charger}")
    restored, restore_detail, stopped = False, "", None
    try:
        valid_s = body.duration_s + RESTORE_MARGIN_S
        command = book.sent((charger, connector), requested, app.clock.now(), valid_s)
        try:
            outcome = await csms.send_v2x_setpoint(charger, connector, requested,
                                                   valid_s=valid_s)
        except V2xRefused as exc:
            book.outcome((charger, connector), command,
                         CommandOutcome(CommandResult.OFFLINE, sent=False))
            raise Problem(409, str(exc), kind="v2g-not-capable") from None
        book.outcome((charger, connector), command, outcome)
        answer_s = round(time.monotonic() - started, 3)
        accepted = outcome.result is CommandResult.ACCEPTED
        if not accepted and not outcome.unknown:
            raise Problem(502, f"{charger} did not take the discharge setpoint: "
                          f"{outcome.result.value} {outcome.detail}".rstrip(),
                          kind="v2g-refused")
        stopped = await _hold(app, started + body.duration_s)
    finally:
        with contextlib.suppress(V2xRefused):
            clear = book.sent((charger, connector), 0.0, app.clock.now(), RESTORE_MARGIN_S)
            cleared = await csms.clear_v2x(charger, connector)
            book.outcome((charger, connector), clear, cleared)
            restored = cleared.result is CommandResult.ACCEPTED
            restore_detail = f"{cleared.result.value} {cleared.detail}".strip()
        if not restored and not restore_detail:
            restore_detail = "not connected: the V2X profile ends at its validTo"
        subscription.close()
        await cancel_and_wait([watcher])
    target = REACHED_SHARE * requested
    reached = next((s.t_s for s in samples if s.measured_w <= target), None)
    peak = min((s.measured_w for s in samples), default=None)
    return V2gTestOut(charger=charger, connector=connector, requested_w=requested,
                      asked_w=asked,
                      ev_max_discharge_w=None if offer is None else offer.max_discharge_w,
                      duration_s=body.duration_s, accepted=accepted, answer_s=answer_s,
                      samples=samples, time_to_90_s=reached, reached_90=reached is not None,
                      peak_w=peak, restored=restored, restore_detail=restore_detail,
                      stopped_early=stopped)


async def _hold(app: GridshareApp, until: float) -> str | None:
    """Wait until ``until`` (monotonic), ending early when the grid's frequency leaves the
    safety window (every unit to its safe state: no discharge); why it ended early."""
    frequency = app.frequency
    while (left := until - time.monotonic()) > 0:
        if frequency is not None and (why := frequency.grid_unsafe()) is not None:
            return f"the grid's frequency left the safety window: {why}"
        await asyncio.sleep(min(HOLD_CHECK_S, left))
    return None
