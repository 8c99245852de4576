"""Live charge planning over REST: ``GET /api/v1/plan`` (the plan in force, unmet needs)
and ``PUT /api/v1/chargers/{id}/connectors/{n}/need`` (a driver's need, for 1.6 chargers
and cars that do not send ISO 15118 charging needs). See docs/planning.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi import Path as PathParam
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gridshare.api.problems import Problem, problem_responses
from gridshare.api.views import dumps
from gridshare.core.topology import Topology

if TYPE_CHECKING:
    from gridshare.controller.planning import PlanService


class NeedIn(BaseModel):
    """What a car needs from now on and when it leaves."""

    model_config = ConfigDict(extra="forbid")

    energy_kwh: float = Field(ge=0, le=1000, allow_inf_nan=False,
                              description="kWh still wanted from now on.", examples=[30])
    departure: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a UTC offset (default: the block's "
        "default_stay after arrival).", examples=["2026-12-01T07:30:00Z"])


class NeedOut(BaseModel):
    charger: str
    connector: int
    energy_kwh: float
    departure: str | None


class PlanOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    enabled: bool
    status: str = Field(description="none (no plan yet), ok, failed (caps lifted, alarm), "
                        "off (no charge_planning block).")
    cars: list[dict[str, Any]] = Field(description="Each planned car: need_kwh, "
                                       "planned_kwh, shortfall_kwh, met, departure, cap_a, "
                                       "current (A per period).")


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


def create_router(service: Callable[[], PlanService | None], topology: Topology,
                  write: Any, read: Any) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["charge planning"])

    @router.get("/plan", dependencies=[Depends(read)], response_model=PlanOut,
                responses=problem_responses(401),
                summary="The charge plan in force: each car's need, plan and shortfall")
    async def get_plan() -> Response:
        planning = service()
        if planning is None:
            return _json({"enabled": False, "status": "off", "cars": []})
        return _json(planning.to_json())

    @router.put("/chargers/{charger_id}/connectors/{connector}/need",
                dependencies=[Depends(write)], response_model=NeedOut,
                responses=problem_responses(401, 403, 404, 409, 422),
                summary="Set a car's energy need and departure (re-plans)")
    async def put_need(charger_id: Annotated[str, PathParam(max_length=256)],
                       connector: Annotated[int, PathParam(ge=0, le=1000)],
                       body: NeedIn) -> Response:
        charger = topology.chargers.get(charger_id)
        if charger is None:
            raise Problem(404, f"unknown charger {charger_id!r}", kind="unknown-charger")
        if all(c.number != connector for c in charger.connectors):
            raise Problem(404, f"charger {charger_id!r} has no connector {connector}",
                          kind="unknown-connector")
        planning = service()
        if planning is None:
            raise Problem(409, "charge planning is off: the site file has no enabled "
                          "charge_planning: block", kind="planning-off")
        planning.set_need((charger_id, connector), body.energy_kwh, body.departure)
        return _json({"charger": charger_id, "connector": connector,
                      "energy_kwh": body.energy_kwh,
                      "departure": None if body.departure is None
                      else body.departure.isoformat()})

    return router
