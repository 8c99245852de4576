"""Frequency response over REST: ``GET /api/v1/frequency`` (issue 10).

The live state of the app's :class:`~gridshare.controller.frequency.FrequencyService`:
the last sample acted on, the mode (central or local), the state (idle, responding, safe),
the alarm in force, refused samples by reason, and each unit's setpoint, measured power,
SoC and cycles. Reads follow the API's rule (open unless ``api: {read_token: true}``); a
site without ``frequency_response:`` answers 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Depends, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field

from gridshare.api.problems import Problem, problem_responses
from gridshare.api.schemas import EvOfferOut
from gridshare.api.views import alarm_dict, dumps
from gridshare.controller.audit import AlarmRecord

REJECT_REASONS = ("payload", "future", "late", "time", "nan", "range")
"""Exported at 0 before the first refusal of each reason."""


class FrequencyView(Protocol):
    def status(self) -> dict[str, Any]: ...

    def alarms(self) -> list[AlarmRecord]: ...


class SampleOut(BaseModel):
    at: str = Field(description="When it was acted on (ISO 8601 UTC).")
    hz: float
    ts: str | None = Field(description="The sender's time stamp, when it gave one.")
    age_s: float


class UnitOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    kind: Literal["charger", "battery"]
    present: bool = Field(description="A car plugged in and online / the battery's link up.")
    v2x: bool | None = Field(description="Charger speaks V2X (else only curtailed); null "
                             "for a battery.")
    v2x_detail: str | None = Field(default=None, description="Why a charger declared V2X "
                                   "takes part as a plain one now (its car offers no "
                                   "bidirectional mode).")
    ev_offer: EvOfferOut | None = Field(default=None, description="The car's V2X offer "
                                        "(OCPP 2.1 charging needs); null: none.")
    max_discharge_kw: float | None = Field(default=None, description="The unit's "
                                           "max_discharge_kw clipped to the car's "
                                           "maxDischargePower.")
    base_kw: float = Field(description="The allocation's value (+ = charging).")
    setpoint_kw: float | None = Field(description="Base + the droop's delta, after the "
                                      "guards.")
    delta_kw: float
    sent_kw: float | None = Field(description="The setpoint last handed to the unit.")
    measured_kw: float | None
    soc: float | None = Field(description="%")
    cycles: float = Field(description="Equivalent full cycles in the rolling day.")
    held: str | None = Field(description="Why the unit takes no or a smaller part.")


class FrequencyOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    mode: Literal["central", "local"]
    state: Literal["idle", "responding", "safe"]
    nominal_hz: float
    last_sample: SampleOut | None
    fraction: float | None = Field(description="The droop's share of full power, signed.")
    request_kw: float | None
    dispatched_kw: float | None
    alarm: str | None = Field(description="Why the units are in their safe state.")
    rejected: dict[str, int] = Field(description="Refused samples by reason (payload, "
                                     "future, late, time, nan, range).")
    units: list[UnitOut]
    recent_alarms: list[dict[str, Any]]


def create_router(service: Callable[[], FrequencyView | None], read: Any) -> APIRouter:
    """``service`` returns the app's FrequencyService (None: no ``frequency_response:``)."""
    router = APIRouter(prefix="/api/v1/frequency", tags=["frequency response"])

    @router.get("", dependencies=[Depends(read)], response_model=FrequencyOut,
                responses=problem_responses(401, 404),
                summary="Frequency response: last sample, state, per-unit setpoints")
    async def get_frequency() -> Response:
        freq = service()
        if freq is None:
            raise Problem(404, "the site file has no frequency_response: block")
        body = freq.status()
        body["recent_alarms"] = [alarm_dict(r) for r in freq.alarms()]
        return Response(dumps(body), media_type="application/json")

    return router


def metrics(service: FrequencyView) -> Iterator[Metric]:
    """Prometheus families of the frequency service (scraped with ``/metrics``)."""
    status = service.status()
    sample = status.get("last_sample")
    hz = GaugeMetricFamily("gridshare_frequency_hz",
                           "The last grid-frequency sample acted on (absent before one).")
    if sample is not None:
        hz.add_metric([], float(sample["hz"]))
    yield hz
    state = GaugeMetricFamily("gridshare_frequency_state",
                              "1 for the frequency service's state now (idle, responding, "
                              "safe), 0 for the others.", labels=["state"])
    for name in ("idle", "responding", "safe"):
        state.add_metric([name], 1.0 if status["state"] == name else 0.0)
    yield state
    yield CounterMetricFamily("gridshare_frequency_samples", "Samples acted on.",
                              value=status["samples"])
    rejected = CounterMetricFamily("gridshare_frequency_rejected_samples",
                                   "Samples refused, by reason.", labels=["reason"])
    counts = status["rejected"]
    for reason in sorted(set(REJECT_REASONS) | set(counts)):
        rejected.add_metric([reason], counts.get(reason, 0))
    yield rejected
    soc_rejected = CounterMetricFamily("gridshare_frequency_rejected_soc",
                                       "Battery SoC messages refused, by battery.",
                                       labels=["unit"])
    for unit_id, count in sorted(status["soc_rejected"].items()):
        soc_rejected.add_metric([unit_id], count)
    yield soc_rejected
    setpoint = GaugeMetricFamily("gridshare_frequency_unit_setpoint_kw",
                                 "Each present unit's setpoint (kW, + = charging).",
                                 labels=["unit"])
    soc = GaugeMetricFamily("gridshare_frequency_unit_soc_percent",
                            "Each unit's state of charge, when known.", labels=["unit"])
    for unit in status["units"]:
        if unit["present"] and unit["setpoint_kw"] is not None:
            setpoint.add_metric([unit["id"]], float(unit["setpoint_kw"]))
        if unit["soc"] is not None:
            soc.add_metric([unit["id"]], float(unit["soc"]))
    yield setpoint
    yield soc
    compute = GaugeMetricFamily("gridshare_frequency_sample_ms",
                                "Time to handle one sample (core and handing out every "
                                "setpoint), over the recent samples.", labels=["quantile"])
    for name, value in (("0.5", status["compute_ms"]["p50"]),
                        ("0.99", status["compute_ms"]["p99"])):
        if value is not None:
            compute.add_metric([name], float(value))
    yield compute
