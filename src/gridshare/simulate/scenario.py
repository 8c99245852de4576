"""Scenario files for ``gridshare simulate``: a site and the load put on it.

A scenario names a site (a site file by path, relative to the scenario, or the site
inline under ``site:``) and what happens to it: cars arriving (rates per hour by time of
day, or a list), their energy needs, departure times, maximum currents and phases;
uncontrolled loads (a base profile by time of day, a cycling heat pump); and scheduled
changes of a group's limit. It is read like a site file: every problem at once, each with
file, line and path (:class:`gridshare.config.ConfigError`); the site's own problems keep
the site file's lines (an inline site's, the scenario's).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gridshare.config import (
    DEFAULT_MAX_SIZE,
    ConfigError,
    ConfigIssue,
    Loc,
    ProblemList,
    SiteConfig,
    _schema_problems,
    load_site_config,
    parse_site_config,
    read_mapping,
    read_text,
    scan_lines,
)

_CLOCK = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")
Num = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
When = str | NonNeg
"""A time: ``"HH:MM"``, the first such time of day at or after the start, or hours since
the start (a number)."""


def clock_hours(value: str) -> float:
    """``"HH:MM"`` as hours after midnight."""
    m = _CLOCK.match(value.strip())
    assert m is not None  # validated
    return int(m.group(1)) + int(m.group(2)) / 60


def when_hours(value: str | float, start_h: float = 0.0, after_h: float = 0.0) -> float:
    """Hours since the start (``start_h``: the start's time of day in hours) of ``value``;
    a time of day is the first one at or after ``after_h`` hours since the start."""
    if not isinstance(value, str):
        return float(value)
    h = clock_hours(value) - start_h
    while h < after_h:
        h += 24
    return h


def _check_when(value: str | float, what: str) -> None:
    if isinstance(value, str) and not _CLOCK.match(value.strip()):
        raise ValueError(f"{what}: expected a time of day HH:MM or hours since the start "
                         f"(a number), got {value!r}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered(lo_hi: tuple[float, float]) -> tuple[float, float]:
    if lo_hi[0] > lo_hi[1]:
        raise ValueError(f"a range [low, high]: {lo_hi[0]:g} is above {lo_hi[1]:g}")
    return lo_hi


Range = Annotated[tuple[Positive, Positive], AfterValidator(_ordered)]
"""``[low, high]``, both > 0: a value is drawn uniformly in between."""
FractionRange = Annotated[tuple[Fraction, Fraction], AfterValidator(_ordered)]
NonNegRange = Annotated[tuple[NonNeg, NonNeg], AfterValidator(_ordered)]


class ArrivalRate(_Strict):
    """Cars arriving at random (Poisson) at ``per_hour`` between ``from`` and ``to``, every
    simulated day (``to`` before ``from``: the window runs past midnight)."""

    from_: str = Field(alias="from")
    to: str
    per_hour: NonNeg

    @model_validator(mode="after")
    def _times(self) -> ArrivalRate:
        _check_when(self.from_, "from")
        _check_when(self.to, "to")
        return self


class CarSpec(_Strict):
    """One car of the list: when it comes, what it needs, when it leaves."""

    at: When
    energy_kwh: Positive
    departure: When | None = None
    """Time of day (the next such time after ``at``) or hours since the start."""
    dwell_hours: Positive | None = None
    max_current: Positive | None = None
    """A per phase the car's charger takes (default: drawn from the cars' choices)."""
    phases: Literal[1, 3] | None = None
    charger: str | None = None
    """Plug into this charger (default: a free connector, drawn at random)."""
    capacity_kwh: Positive | None = None
    id: str | None = None

    @model_validator(mode="after")
    def _one_end(self) -> CarSpec:
        _check_when(self.at, "at")
        if self.departure is not None:
            _check_when(self.departure, "departure")
        if self.departure is not None and self.dwell_hours is not None:
            raise ValueError("give departure or dwell_hours, not both")
        return self


class CarsSpec(_Strict):
    arrivals: list[ArrivalRate] = []
    list_: list[CarSpec] = Field(default=[], alias="list")
    energy_kwh: Range = (5.0, 40.0)
    """Energy a car needs (kWh), uniform in this range."""
    dwell_hours: Range = (2.0, 9.0)
    """How long a car stays, uniform in this range."""
    max_current: list[Positive] = Field(default=[16.0, 32.0], min_length=1)
    """A per phase of the cars' on-board chargers (DC: of the grid side), one drawn per car."""
    three_phase_share: Fraction = 0.8
    capacity_kwh: list[Positive] = Field(default=[40.0, 58.0, 77.0, 100.0], min_length=1)
    initial_soc: FractionRange = (0.1, 0.5)
    setpoint_lag_s: NonNegRange = (1.0, 2.0)
    """Seconds a car takes to follow a new offered current, uniform in this range."""


class CycleSpec(_Strict):
    on_minutes: Positive
    off_minutes: NonNeg
    offset_minutes: NonNeg = 0.0


class LoadSpec(_Strict):
    """An uncontrolled load under ``group``: constant, cycling, or a profile by time of day."""

    id: str = Field(min_length=1, max_length=64)
    group: str
    current: NonNeg | None = None
    """A per phase while on (cycling or constant)."""
    phases: Literal[1, 3] = 3
    phase: Literal["L1", "L2", "L3"] = "L1"
    """The line of a 1-phase load."""
    cycle: CycleSpec | None = None
    ramp_s: NonNeg = 0.0
    """Seconds a cycling load takes to reach ``current`` after switching on (an inverter
    compressor's soft start); 0: at once."""
    profile: list[tuple[str, NonNeg]] | None = None
    """``[["HH:MM", A], ...]``: A per phase at each time of day, linear in between (every
    day)."""

    @model_validator(mode="after")
    def _kind(self) -> LoadSpec:
        if (self.current is None) == (self.profile is None):
            raise ValueError("give current (constant or with cycle) or profile, not both")
        if self.cycle is not None and self.current is None:
            raise ValueError("a cycle needs current")
        for when, _ in self.profile or ():
            _check_when(when, "profile")
        return self


class LimitChangeSpec(_Strict):
    """A scheduled change of a group's limit (an operator's planned cut, a tariff window, a
    demand-response event notified ahead): sent to the controller ``notice_s`` before
    ``at`` as one more limit source, in force until ``until``."""

    group: str
    at: When
    until: When | None = None
    max_current: NonNeg | None = None
    max_power: NonNeg | None = None
    """kW."""
    notice_s: NonNeg = 60.0
    reason: str = "scheduled limit"

    @model_validator(mode="after")
    def _something(self) -> LimitChangeSpec:
        _check_when(self.at, "at")
        if self.until is not None:
            _check_when(self.until, "until")
        if self.max_current is None and self.max_power is None:
            raise ValueError("give max_current (A per phase) and/or max_power (kW)")
        return self


class ControllerSpec(_Strict):
    tick: Positive = 5.0
    """s between the controller's housekeeping ticks (gridshare serve: 1)."""
    recompute: Positive = 30.0
    """s between allocations when nothing changes (gridshare serve: 5)."""


class ScenarioSpec(_Strict):
    name: str = Field(default="scenario", min_length=1, max_length=64)
    description: str = ""
    site: str | dict[str, Any]
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    """When the run starts (UTC; times of day in the scenario are UTC too)."""
    hours: Positive = 24.0
    seed: int = 1
    protocol: Literal["ocpp1.6", "ocpp2.0.1", "mixed"] = "ocpp2.0.1"
    charging_needs: bool = True
    """OCPP 2.0.1 chargers report each car's departure and energy (ISO 15118), which the
    deadline policy uses."""
    physics_tick: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 2.0
    """s per step of the simulated cars and chargers."""
    meter_interval: Positive = 60.0
    """s between the chargers' MeterValues."""
    meter_feed_interval: Positive = 5.0
    """s between readings of a simulated dedicated (ocpp) group meter."""
    sample: Positive = 60.0
    """s between points of the plotted time series (violations are checked every tick)."""
    controller: ControllerSpec = ControllerSpec()
    cars: CarsSpec = CarsSpec()
    loads: list[LoadSpec] = []
    limits: list[LimitChangeSpec] = []


@dataclass(frozen=True, slots=True)
class Scenario:
    spec: ScenarioSpec
    site: SiteConfig
    source: str

    @property
    def start(self) -> datetime:
        s = self.spec.start
        return s if s.tzinfo is not None else s.replace(tzinfo=UTC)

    @property
    def start_h(self) -> float:
        """The start's time of day, in hours after midnight."""
        s = self.start.astimezone(UTC)
        return s.hour + s.minute / 60 + s.second / 3600


def load_scenario(path: str | Path, max_size: int = DEFAULT_MAX_SIZE) -> Scenario:
    p = Path(path)
    return parse_scenario(read_text(p, max_size), str(p), base=p.parent, max_size=max_size)


def parse_scenario(text: str, source: str = "<string>", *, base: Path | None = None,
                   max_size: int = DEFAULT_MAX_SIZE) -> Scenario:
    """Validate a scenario and its site; raise ConfigError with every problem found."""
    data, _ = read_mapping(text, source, "site, cars, loads, limits")
    problems = ProblemList(source)
    spec: ScenarioSpec | None = None
    try:
        spec = ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        _schema_problems(exc, (), problems)
    site: SiteConfig | None = None
    site_issues: list[ConfigIssue] = []
    more = 0
    if spec is not None:
        try:
            site = _site(spec, text, source, base, max_size)
        except ConfigError as exc:
            site_issues, more = list(exc.issues), exc.more
        if site is not None:
            _cross_check(spec, site, problems)
    if problems.count or site_issues:
        issues: list[ConfigIssue] = []
        if problems.count:
            lines, _ = scan_lines(text, problems.wanted(), repeated=False)
            err = problems.error(lines)
            issues, more = err.issues, more + err.more
        raise ConfigError(sorted(issues + site_issues,
                                 key=lambda i: (i.source != source, i.line or 0)), more)
    assert spec is not None and site is not None
    return Scenario(spec, site, source)


def _site(spec: ScenarioSpec, text: str, source: str, base: Path | None,
          max_size: int) -> SiteConfig:
    if isinstance(spec.site, str):
        path = Path(spec.site)
        if not path.is_absolute() and base is not None:
            path = base / path
        return load_site_config(path, max_size)
    # An inline site is read as a site file of its own, from the scenario's own text, so
    # that its problems name the scenario's lines.
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(node, yaml.MappingNode)
    value = next(v for k, v in node.value if k.value == "site")
    start, end = value.start_mark, value.end_mark
    chunk = " " * start.column + text[start.index:end.index]
    try:
        return parse_site_config(textwrap.dedent(chunk), source)
    except ConfigError as exc:
        moved = [ConfigIssue(i.source, None if i.line is None else i.line + start.line,
                             f"site.{i.path}" if i.path else "site", i.message)
                 for i in exc.issues]
        raise ConfigError(moved, exc.more) from None


def _cross_check(spec: ScenarioSpec, site: SiteConfig, problems: ProblemList) -> None:
    topology = site.topology
    meters = {m.id: m for m in site.meters}
    for i, car in enumerate(spec.cars.list_):
        if car.charger is not None and car.charger not in topology.chargers:
            problems.add(("cars", "list", i, "charger"), f"unknown charger {car.charger!r}")
    ids: set[str] = set()
    for i, load in enumerate(spec.loads):
        loc: Loc = ("loads", i)
        if load.id in ids:
            problems.add((*loc, "id"), f"duplicate load id {load.id!r}")
        ids.add(load.id)
        group = topology.groups.get(load.group)
        if group is None:
            problems.add((*loc, "group"), f"unknown group {load.group!r}")
            continue
        followed = [g for g in _ancestors(topology, load.group) if g.meter is not None]
        if not followed:
            problems.add((*loc, "group"), f"group {load.group!r} and the groups above it "
                         "follow no meter: gridshare could not see this load")
    for i, change in enumerate(spec.limits):
        if change.group not in topology.groups:
            problems.add(("limits", i, "group"), f"unknown group {change.group!r}")
        elif (change.until is not None and not isinstance(change.until, str)
              and not isinstance(change.at, str) and change.until <= change.at):
            problems.add(("limits", i, "until"), "until must be after at")
    for meter in meters.values():
        if meter.source != "ocpp" or meter.charger in topology.chargers:
            problems.add(("site",), f"meter {meter.id!r}: simulate feeds dedicated ocpp "
                         "meters only (source: ocpp with a charger id of its own)")


def _ancestors(topology: Any, gid: str) -> list[Any]:
    out = []
    cur: str | None = gid
    while cur is not None:
        group = topology.groups[cur]
        out.append(group)
        cur = group.parent
    return out
