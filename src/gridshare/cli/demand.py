"""The demand file of ``gridshare allocate``: JSON in, a core Snapshot out, validated."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from gridshare.config import ConfigError, ConfigIssue
from gridshare.core.snapshot import (
    ConnectorDemand,
    GroupConditions,
    GroupLimit,
    LimitSource,
    Snapshot,
)
from gridshare.core.topology import Topology

Amps = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConnectorIn(_Strict):
    charger: str
    connector: Annotated[int, Field(ge=1)] = 1
    active: bool
    max_current: Amps | None = None
    priority: int | None = None
    arrival: AwareDatetime | None = None
    online: bool = True
    energy_needed: Amps | None = None
    """kWh."""
    departure: AwareDatetime | None = None


class LimitIn(_Strict):
    source: LimitSource = LimitSource.OPERATOR
    max_current: Amps | None = None
    max_power: Amps | None = None
    reason: str = ""


class DemandIn(_Strict):
    now: AwareDatetime | None = None
    connectors: list[ConnectorIn] = []
    uncontrolled: dict[str, Amps | Annotated[list[Amps], Field(min_length=3, max_length=3)]] = {}
    """A per phase: one number for all three phases, or [L1, L2, L3]."""
    limits: dict[str, list[LimitIn]] = {}
    stale_meters: list[str] = []


def load_demand(path: Path, topology: Topology, now: datetime | None = None) -> Snapshot:
    """Read and validate a demand file against the topology; raise ConfigError."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"cannot read: {exc.strerror}")]) from exc
    try:
        # pydantic's own JSON parser, straight into the models: a third faster than
        # json.loads and validating the dicts. Anything it does not take (a bare list of
        # connectors, broken JSON, a bad value) is read again as before, which words
        # the problems as it always has.
        spec = DemandIn.model_validate_json(text)
    except ValidationError:
        spec = _validated(source, text)
    return _snapshot(source, spec, topology, now)


def _validated(source: str, text: str) -> DemandIn:
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([ConfigIssue(source, exc.lineno, "", f"not valid JSON: {exc.msg}")]) \
            from exc
    if isinstance(raw, list):
        raw = {"connectors": raw}
    try:
        spec = DemandIn.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([
            ConfigIssue(source, None, ".".join(str(p) for p in e["loc"]),
                        e["msg"].removeprefix("Value error, "))
            for e in exc.errors()]) from exc
    return spec


def _snapshot(source: str, spec: DemandIn, topology: Topology, now: datetime | None
              ) -> Snapshot:
    issues: list[ConfigIssue] = []
    connectors: dict[tuple[str, int], ConnectorDemand] = {}
    for i, c in enumerate(spec.connectors):
        where = f"connectors.{i}"
        if c.charger not in topology.chargers:
            issues.append(ConfigIssue(source, None, where, f"unknown charger {c.charger!r}"))
            continue
        if c.connector > len(topology.chargers[c.charger].connectors):
            issues.append(ConfigIssue(source, None, where,
                                      f"charger {c.charger!r} has no connector {c.connector}"))
            continue
        if (c.charger, c.connector) in connectors:
            issues.append(ConfigIssue(source, None, where,
                                      f"{c.charger}/{c.connector} listed twice"))
            continue
        connectors[(c.charger, c.connector)] = ConnectorDemand(
            charger=c.charger, connector=c.connector, active=c.active,
            max_current=c.max_current, priority=c.priority, arrival=c.arrival,
            online=c.online, energy_needed_kwh=c.energy_needed, departure=c.departure)
    groups: dict[str, GroupConditions] = {}
    for gid in {*spec.uncontrolled, *spec.limits, *spec.stale_meters}:
        if gid not in topology.groups:
            issues.append(ConfigIssue(source, None, gid, f"unknown group {gid!r}"))
            continue
        unc = spec.uncontrolled.get(gid, 0.0)
        per_phase = (unc, unc, unc) if isinstance(unc, float | int) else tuple(unc)
        groups[gid] = GroupConditions(
            uncontrolled=(float(per_phase[0]), float(per_phase[1]), float(per_phase[2])),
            limits=tuple(GroupLimit(lim.source, lim.max_current, lim.max_power, lim.reason)
                         for lim in spec.limits.get(gid, [])),
            meter_stale=gid in spec.stale_meters)
    if issues:
        raise ConfigError(issues)
    when = spec.now or now or datetime.now(UTC)
    return Snapshot(now=when, connectors=connectors, groups=groups)
