"""The bodies an operator may send, validated once, here, for every way in (the REST API,
the Home Assistant command topic): unknown fields, negative or infinite values and naive
times are refused before anything changes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]

PRIORITY_RANGE = (-1_000_000, 1_000_000)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitOverride(_Body):
    """``PUT /api/v1/groups/{id}/limit``: an operator limit on a group, one more limit
    source (the tightest in force wins). ``null`` (or absent) everywhere removes it."""

    max_current: NonNegative | None = Field(
        default=None, description="A per phase; null: this override does not limit current.",
        examples=[16])
    max_power: NonNegative | None = Field(
        default=None, description="kW; null: this override does not limit power.")
    until: AwareDatetime | None = Field(
        default=None, description="ISO 8601 time with a UTC offset when the override ends "
        "by itself; null: until removed.", examples=["2026-11-30T18:00:00Z"])

    @model_validator(mode="after")
    def _until_needs_limit(self) -> LimitOverride:
        if self.removes and self.until is not None:
            raise ValueError("until given without max_current or max_power: send null "
                             "everywhere to remove the override")
        return self

    @property
    def removes(self) -> bool:
        return self.max_current is None and self.max_power is None

    def problem_at(self, now: datetime) -> str | None:
        """What is wrong with it at ``now`` (an ``until`` already past), else None."""
        if self.until is not None and self.until <= now:
            return f"until {self.until.isoformat()} is not in the future"
        return None


class PriorityOverride(_Body):
    """``PUT /api/v1/chargers/{id}/priority``: a run-time priority for a charger (larger is
    served first under the priority policy); ``null`` restores the site file's."""

    priority: Annotated[int, Field(ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1],
                                   strict=True)] | None = Field(
        description="Larger is served first; null restores the configured priority.",
        examples=[10])
