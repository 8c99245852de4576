"""Telemetry over REST: ``GET /api/v1/demand`` (closed demand windows per feeder,
substation or region) and ``GET /api/v1/ingest`` (what each telemetry source delivered,
rejected by reason, duplicates, late readings and lag). docs/telemetry.md.

Reads follow the API's rule (open unless ``api: {read_token: true}``). Without
telemetry (no ``mqtt:``, no ``telemetry:`` and no AMI meters in the site file)
``/demand`` is a 404 problem and ``/ingest`` says ``enabled: false``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AwareDatetime, BaseModel, Field

from gridshare.api.problems import Problem, problem_responses
from gridshare.api.views import dumps

if TYPE_CHECKING:
    from gridshare.controller.telemetry import TelemetryService


class DemandWindowOut(BaseModel):
    level: str
    key: str
    start: str = Field(description="ISO 8601 UTC; windows are [start, end), event time.")
    end: str
    demand_kw: float = Field(description="Sum over the meters that reported of each "
                             "meter's mean power in the window.")
    max_meter_kw: float = Field(description="The highest one meter's mean power.")
    meters_reporting: int
    meters_expected: int = Field(description="Meters the site file places here.")
    readings: int


class DemandOut(BaseModel):
    level: str
    key: str | None
    window_s: float
    lateness_s: float
    windows: list[DemandWindowOut] = Field(description="Closed windows, oldest first.")
    running: list[DemandWindowOut] = Field(description="Open windows so far (they may "
                                           "still change).")


class SourceOut(BaseModel):
    accepted: int = Field(description="Valid readings (late ones included).")
    duplicates: int = Field(description="Same meter and ts as one already counted.")
    late: int = Field(description="Stored, but their window had closed: not in demand.")
    rejected: dict[str, int] = Field(description="Malformed messages by reason.")
    rejected_total: int
    last_error: str | None
    last_ts: str | None
    lag_s: float | None = Field(description="Receive time minus event time of the last "
                                "batch's newest reading.")
    max_lag_s: float


class IngestOut(BaseModel):
    enabled: bool
    sources: dict[str, SourceOut] = Field(default_factory=dict)


def _json(body: Any) -> Response:
    return Response(dumps(body), media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def create_router(telemetry: Callable[[], TelemetryService | None], read: Any) -> APIRouter:
    """The telemetry routes; ``telemetry`` returns the app's service (None: off)."""
    router = APIRouter(prefix="/api/v1", tags=["telemetry"])

    @router.get("/demand", dependencies=[Depends(read)], response_model=DemandOut,
                responses=problem_responses(401, 404, 422),
                summary="Demand per feeder, substation or region in closed windows")
    async def demand(
        level: Annotated[Literal["feeder", "substation", "region"], Query(
            description="Which level to read.")],
        key: Annotated[str | None, Query(max_length=64, description="One feeder (...) id; "
                                         "absent: every key of the level.")] = None,
        since: Annotated[AwareDatetime | None, Query(
            alias="from", description="Windows starting at or after (ISO 8601 with "
            "offset).")] = None,
        until: Annotated[AwareDatetime | None, Query(
            alias="to", description="Windows starting before.")] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> Response:
        service = telemetry()
        if service is None:
            raise Problem(404, "telemetry is not configured (site file: mqtt: and "
                          "telemetry: or AMI meters)", kind="telemetry-off")
        try:
            return _json(await service.demand_json(level, key, since, until, limit))
        except KeyError:
            raise Problem(404, f"no {level} {key!r} in the site file (known: "
                          f"{', '.join(service.keys(level)[:20])})",
                          kind=f"unknown-{level}") from None

    @router.get("/ingest", dependencies=[Depends(read)], response_model=IngestOut,
                responses=problem_responses(401),
                summary="Telemetry counts per source: accepted, duplicates, rejected, lag")
    async def ingest() -> Response:
        service = telemetry()
        if service is None:
            return _json({"enabled": False, "sources": {}})
        return _json({"enabled": True, **service.ingest_json()})

    return router
