"""Demand response over REST: ``POST /api/v1/dr/signals``, ``GET /api/v1/dr/events``,
``GET /api/v1/dr/alerts`` (issue 9).

A signal is validated by the pure core, the same way as one from MQTT or OpenADR
(:func:`gridshare.adapters.dr.submit_json`), and stored whole or not at all: ``201`` with
the stored event, ``200`` with the same event for an identical redelivery, ``409`` for a
known ``signal_id`` with other content, ``422`` naming the field for an invalid one. The
body is read as raw JSON rather than through a pydantic body model, so that its reasons are
the core's (the ones the MQTT topic answers with); :class:`DrSignalIn` describes it for the
OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gridshare.adapters.dr import DrInput, submit_json
from gridshare.api.problems import Problem, problem_responses
from gridshare.api.views import dumps
from gridshare.clock import Clock
from gridshare.core.dr.book import DrEvent, SignalConflict, Submitted
from gridshare.core.dr.signals import SignalInvalid

MAX_BODY_BYTES = 64 * 1024
STORE_TIMEOUT_S = 10.0
"""How long a signal's answer waits for the database to commit it (then 503)."""
"""A signal is a few hundred bytes; anything much larger is refused before parsing."""


class DrSignalIn(BaseModel):
    """A demand-response signal: the same JSON over REST and MQTT."""

    model_config = ConfigDict(extra="forbid")

    signal_id: str = Field(description="The sender's id; a redelivery repeats it.",
                           examples=["grid-2026-11-30-017"])
    zone_id: str = Field(description="A zone of the site file's `zones:`.", examples=["Z1"])
    signal_type: Literal["CURTAIL", "SHED", "RESTORE"] = Field(
        description="CURTAIL dims stations, SHED pauses whole stations, RESTORE ends the "
        "zone's events of equal or lower urgency.")
    target_reduction_kw: float = Field(ge=0, allow_inf_nan=False,
                                       description="kW the zone must draw less (0 for "
                                       "RESTORE).", examples=[90])
    start_ts: AwareDatetime = Field(description="ISO 8601 with a UTC offset.",
                                    examples=["2026-11-30T17:00:00Z"])
    end_ts: AwareDatetime = Field(description="After start_ts.",
                                  examples=["2026-11-30T18:00:00Z"])
    priority: Literal[1, 2, 3] = Field(description="1 emergency, 2 economic, 3 optional.",
                                       examples=[2])
    received_ts: AwareDatetime | None = Field(
        default=None, description="When the sender received it (default: now).")


class ComplianceOut(BaseModel):
    """The event's compliance record (target, what the meters showed, verdict)."""

    model_config = ConfigDict(extra="allow")

    verdict: str = Field(description="pending, met or not met")


class DrEventOut(BaseModel):
    """A stored event: its signal, its state now, its target and compliance record."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The signal_id.")
    signal_id: str
    zone_id: str
    signal_type: str
    target_reduction_kw: float
    start_ts: str
    end_ts: str
    priority: int
    received_ts: str | None = None
    source: str | None = Field(default=None, description="rest, mqtt, openadr")
    state: Literal["scheduled", "active", "ended"] = Field(
        description="scheduled before start_ts, active until it ends, ended after end_ts "
        "or a RESTORE")
    target_kw: float | None = Field(default=None, description="The reduction asked, kW.")
    target: float | None = Field(default=None, description="The same as target_kw (the "
                                 "issue's name for it).")
    ended_at: str | None = Field(default=None, description="When a RESTORE ended it.")
    compliance: ComplianceOut | None = Field(
        default=None, description="Its compliance record once it started (target_kw, "
        "baseline_kw, achieved_kw, samples, met_at, escalations, extra_kw, verdict).")


class DrEventsOut(BaseModel):
    events: list[DrEventOut]


class DrAlertsOut(BaseModel):
    alerts: list[dict[str, Any]] = Field(description="Recent DR alerts, oldest first: a "
                                         "station above its contract_max_kw, an event not "
                                         "met.")


_BODY_SCHEMA = DrSignalIn.model_json_schema()


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


def event_out(dr: DrInput, event: DrEvent) -> dict[str, Any]:
    """The API's representation of a stored event (the service's, with ``id``)."""
    out = dict(dr.event_json(event))
    out.setdefault("id", event.signal.signal_id)
    return out


def create_router(service: Callable[[], DrInput | None], clock: Clock,
                  write: Any, read: Any, *, store: Callable[[], Any] | None = None) -> APIRouter:
    """The DR routes; ``service`` returns the app's DrService (None: the site has no zones),
    ``write``/``read`` are the API's auth dependencies, ``store`` the audit store (None
    or returning None: no database), which a 201 waits for: "stored" means committed."""
    router = APIRouter(prefix="/api/v1/dr", tags=["demand response"])

    @router.post(
        "/signals", dependencies=[Depends(write)], status_code=201,
        response_model=DrEventOut, summary="Submit a demand-response signal",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": _BODY_SCHEMA}}}},
        responses={200: {"model": DrEventOut, "description": "An identical redelivery: "
                         "the stored event, nothing changed."},
                   201: {"description": "Stored: the new event."},
                   **problem_responses(401, 403, 409, 413, 422, 503)})
    async def post_signal(request: Request) -> Response:
        raw = await _read_body(request)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _invalid(None, f"not valid JSON: {exc}") from None
        except RecursionError:
            raise _invalid(None, "not valid JSON: nested too deeply") from None
        dr = service()
        if dr is None:
            zone = data.get("zone_id") if isinstance(data, dict) else None
            shown = zone[:40] + "…" if isinstance(zone, str) and len(zone) > 40 else zone
            raise _invalid("zone_id", f"unknown zone {shown!r}: the site file declares no "
                           "zones (zones: [{id: Z1}]), so it takes no DR signal")
        try:
            outcome, event = submit_json(dr, data, now=clock.now(), source="rest")
        except SignalInvalid as exc:
            raise _invalid(exc.field, exc.reason) from None
        except SignalConflict as exc:
            raise Problem(409, str(exc), kind="signal-conflict") from None
        audit = store() if store is not None else None
        if audit is not None:
            # Answer only once the event is committed: a kill -9 after a 201 loses nothing
            # (a redelivery waits too: its first answer may have been this 503).
            try:
                async with asyncio.timeout(STORE_TIMEOUT_S):
                    await audit.flush(strict=True)
            except Exception as exc:
                raise Problem(503, f"the signal is in force but could not be stored ({exc!r}): "
                              "send it again", kind="not-stored") from None
        return _json(event_out(dr, event), 201 if outcome is Submitted.CREATED else 200)

    @router.get("/events", dependencies=[Depends(read)], response_model=DrEventsOut,
                responses=problem_responses(401, 404, 422),
                summary="DR events (each with its compliance record), by start time")
    async def get_events(zone: Annotated[str | None, Query(
            max_length=256, description="Only this zone's events.")] = None) -> Response:
        dr = service()
        if dr is None:
            if zone is not None:
                raise Problem(404, f"unknown zone {zone!r}: the site file declares no zones",
                              kind="unknown-zone")
            return _json({"events": []})
        if zone is not None and zone not in dr.zones:
            raise Problem(404, f"unknown zone {zone!r} (zones: {', '.join(dr.zones)})",
                          kind="unknown-zone")
        return _json({"events": [event_out(dr, e) for e in dr.events(zone)]})

    @router.get("/alerts", dependencies=[Depends(read)], response_model=DrAlertsOut,
                responses=problem_responses(401),
                summary="Recent DR alerts (contract breaches, events not met)")
    async def get_alerts() -> Response:
        dr = service()
        return _json({"alerts": [] if dr is None else list(dr.alerts())})

    return router


async def _read_body(request: Request) -> bytes:
    """The body, refused (413) as soon as it passes MAX_BODY_BYTES: never held whole."""
    too_large = Problem(413, f"body: above the limit of {MAX_BODY_BYTES} bytes",
                        kind="too-large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid(field: str | None, reason: str) -> Problem:
    """A 422 in the API's shape (``detail`` and one ``errors`` entry naming the field)."""
    loc: list[str | int] = ["body"] if field is None else ["body", field]
    where = ".".join(str(p) for p in loc)
    return Problem(422, f"{where}: {reason}", kind="validation-error",
                   errors=[{"loc": loc, "msg": reason, "type": "value_error"}])
