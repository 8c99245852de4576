"""Live load over REST: ``GET /api/v1/zones``, ``GET /api/v1/zones/{id}`` and
``GET /api/v1/stations/{id}/load`` (issue 9, live aggregation).

The figures are the app's :class:`~gridshare.controller.aggregate.LoadService`: each
station's meter values in tumbling windows (one minute by default) and each zone's sum.
Reads follow the API's rule (open unless ``api: {read_token: true}``); an unknown id is a
404 problem. The models below describe the answers for the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from gridshare.api.problems import Problem, problem_responses
from gridshare.api.views import dumps
from gridshare.controller.aggregate import UnknownId


class Loads(Protocol):
    """What the routes read of the load service."""

    def zones_json(self) -> list[dict[str, Any]]: ...

    def zone_json(self, zone: str) -> dict[str, Any]: ...

    def station_json(self, station: str, windows: int | None = None) -> dict[str, Any]: ...


class ConnectorWindowOut(BaseModel):
    connector: int
    avg_kw: float = Field(description="Time-weighted average over the window.")
    max_kw: float
    last_kw: float = Field(description="Its draw at the window's end (open window: now).")
    energy_kwh: float


class StationWindowOut(BaseModel):
    """A station's load in one window (``closed`` false: the open window so far)."""

    start: str = Field(description="ISO 8601 UTC; windows start on the minute.",
                       examples=["2026-11-30T17:05:00Z"])
    end: str
    until: str = Field(description="What the figures cover: `end`, or now for the open "
                       "window.")
    closed: bool
    avg_kw: float = Field(description="Time-weighted average of the meter values (a value "
                          "holds until the next one).")
    last_kw: float
    max_kw: float = Field(description="The highest total draw at one moment.")
    energy_kwh: float
    active_sessions: int = Field(description="Transactions in progress in the window.")
    active_connectors: int = Field(description="Connectors that drew power in the window.")
    avg_connector_kw: float = Field(description="avg_kw per active connector.")
    max_connector_kw: float
    samples: int
    connectors: list[ConnectorWindowOut]


class ConnectorNowOut(BaseModel):
    connector: int
    kw: float


class StationNowOut(BaseModel):
    """The last meter values still in force."""

    at: str
    kw: float
    active_connectors: int
    active_sessions: int
    connectors: list[ConnectorNowOut]


class StationLoadOut(BaseModel):
    station: str
    zone: str | None
    window_s: int = Field(description="Window length in seconds.", examples=[60])
    now: StationNowOut
    windows: list[StationWindowOut] = Field(description="Closed windows, oldest first.")
    current: StationWindowOut | None = Field(description="The open window so far.")
    late: int = Field(description="Meter values dropped: their window was already closed.")


class ZoneLiveOut(BaseModel):
    at: str
    total_kw: float
    utilisation_pct: float | None = Field(description="total_kw / capacity_kw x 100; null "
                                          "when the zone declares no capacity.")
    active_stations: int = Field(description="Stations drawing power or holding a session.")
    active_connectors: int
    active_sessions: int


class ZoneWindowOut(BaseModel):
    start: str
    end: str
    closed: bool
    avg_kw: float
    last_kw: float
    energy_kwh: float
    capacity_kw: float | None
    utilisation_pct: float | None
    active_stations: int
    stations: int


class ZoneOut(BaseModel):
    id: str
    capacity_kw: float | None
    stations: list[str] = Field(description="The zone's stations (chargers), file order.")
    live: ZoneLiveOut
    last_window: ZoneWindowOut | None = Field(description="The last closed window.")


class ZonesOut(BaseModel):
    zones: list[ZoneOut] = Field(description="Every declared zone (none: the site file "
                                 "declares no zones).")


class StationInZoneOut(BaseModel):
    id: str
    now: StationNowOut
    current: StationWindowOut | None
    last_window: StationWindowOut | None


class ZoneDetailOut(ZoneOut):
    station_loads: list[StationInZoneOut]


def _json(body: Any) -> Response:
    return Response(dumps(body), media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _not_found(exc: UnknownId) -> Problem:
    return Problem(404, str(exc), kind=f"unknown-{exc.kind}")


def create_router(loads: Callable[[], Loads], read: Any) -> APIRouter:
    """The live-load routes; ``loads`` returns the app's load service, ``read`` is the
    API's read dependency."""
    router = APIRouter(prefix="/api/v1", tags=["load"])

    @router.get("/zones", dependencies=[Depends(read)], response_model=ZonesOut,
                responses=problem_responses(401),
                summary="Every zone: live totals and its last closed window")
    async def zones() -> Response:
        return _json({"zones": loads().zones_json()})

    @router.get("/zones/{zone_id}", dependencies=[Depends(read)],
                response_model=ZoneDetailOut, responses=problem_responses(401, 404),
                summary="One zone with its stations' load")
    async def zone(zone_id: Annotated[str, PathParam(max_length=256)]) -> Response:
        try:
            return _json(loads().zone_json(zone_id))
        except UnknownId as exc:
            raise _not_found(exc) from None

    @router.get("/stations/{station_id}/load", dependencies=[Depends(read)],
                response_model=StationLoadOut, responses=problem_responses(401, 404, 422),
                summary="A station's load: closed windows and the open one")
    async def station_load(
        station_id: Annotated[str, PathParam(max_length=256)],
        windows: Annotated[int | None, Query(
            ge=0, le=10_000, description="How many closed windows (the latest; default: "
            "every one kept, an hour of one-minute windows).")] = None,
    ) -> Response:
        try:
            return _json(loads().station_json(station_id, windows))
        except UnknownId as exc:
            raise _not_found(exc) from None

    return router
