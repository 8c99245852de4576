"""``gridshare charge-plan``: the least-cost charge plan for a site and its cars.

Reads the site file, a cars file (who is plugged where, from when to when, needing what)
and optionally a time-of-use tariff, and prints per car the energy planned, whether its
need is met and by how much not, and the current each car should draw now. Only typer is
imported here: the site reader, numpy and the solver load when the command runs.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridshare.cli.core_cmds import (
    DEFAULT_MAX_SIZE,
    JsonOpt,
    SiteArg,
    load_site_or_exit,
    refuse_large,
    report_problems,
    solver_banner_hidden,
    usage_error,
    write_problems,
)

if TYPE_CHECKING:
    from gridshare.config import Loc, ProblemList
    from gridshare.core.planning import CarNeed, ChargePlan
    from gridshare.core.topology import Topology

MaxSizeOpt = Annotated[int, typer.Option(
    "--max-size", min=1, metavar="BYTES",
    help="Refuse site, cars and tariff files larger than this, before reading them.")]
MAX_PERIODS = 10_000
"""A horizon of more periods is refused (a week of 1-minute periods, and then some)."""

EPILOG = """\b
Exit codes:
  0  the plan is printed (cars whose need cannot be met are listed in it)
  2  bad input: usage (--horizon, --period), or a site, cars or tariff file
     that cannot be read or is invalid"""

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?")
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def parse_duration_h(text: str | float | int) -> float | None:
    """``"7h30m"``, ``"90m"``, ``"24h"`` or a number of hours -> hours; None if not one."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return float(text) if math.isfinite(text) and text >= 0 else None
    found = _DURATION.fullmatch(text.strip())
    if not found or not any(found.groups()):
        return None
    hours, minutes = (float(g) if g else 0.0 for g in found.groups())
    return hours + minutes / 60


def parse_clock_h(text: object) -> float | None:
    """``"18:00"`` -> 18.0 (hours after midnight); None if not a time of day.

    An unquoted ``18:00`` reaches us as 1080: YAML 1.1 reads it as a base-60 number, which
    is minutes after midnight, so whole minutes 0-1439 are taken as such."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text / 60 if 0 <= text < 24 * 60 else None
    if not isinstance(text, str):
        return None
    found = _CLOCK.fullmatch(text.strip())
    return None if not found else int(found.group(1)) + int(found.group(2)) / 60


@dataclass(frozen=True, slots=True)
class CarsFile:
    """A cars file, checked against the site: what the planner needs."""

    start_h: float
    """Time of day of the first period, in hours after midnight (for the tariff)."""
    cars: list[CarNeed]
    uncontrolled: dict[str, list[list[float]]]


def charge_plan_cmd(
    site: SiteArg,
    cars: Annotated[Path, typer.Option(
        "--cars", metavar="CARS.yaml", help="Cars to plan for: connector, arrival, "
        "departure, energy need (see docs/planning.md).", show_default=False)],
    tariff: Annotated[Path | None, typer.Option(
        "--tariff", metavar="TARIFF.yaml", help="Time-of-use prices per kWh by time of "
        "day (default: a flat price; the plan then charges as early as it can).",
        show_default=False)] = None,
    horizon: Annotated[str, typer.Option(
        "--horizon", metavar="DURATION", help="How far ahead to plan, e.g. 24h, 36h, "
        "12h30m.")] = "24h",
    period: Annotated[str, typer.Option(
        "--period", metavar="DURATION", help="Length of one period, e.g. 15m, 1h; the "
        "horizon must be a whole number of them.")] = "15m",
    as_json: JsonOpt = False,
    max_size: MaxSizeOpt = DEFAULT_MAX_SIZE,
) -> None:
    """Plan each car's charging over the horizon at the least cost under the tariff
    within every group limit; report needs that cannot be met, e.g.
    gridshare charge-plan site.yaml --cars cars.yaml --tariff tariff.yaml"""
    period_h = parse_duration_h(period)
    if period_h is None or period_h <= 0:
        usage_error("charge-plan", "--period", f"not a duration like 15m or 1h: {period!r}",
                    as_json)
    horizon_h = parse_duration_h(horizon)
    if horizon_h is None or horizon_h <= 0:
        usage_error("charge-plan", "--horizon",
                    f"not a duration like 24h or 12h30m: {horizon!r}", as_json)
    periods = round(horizon_h / period_h)
    if periods < 1 or abs(periods * period_h - horizon_h) > 1e-9 * horizon_h:
        usage_error("charge-plan", "--horizon",
                    f"{horizon} is not a whole number of periods of {period}", as_json)
    if periods > MAX_PERIODS:
        usage_error("charge-plan", "--horizon",
                    f"{periods} periods of {period}: more than {MAX_PERIODS}", as_json)
    refuse_large(cars, max_size, as_json=as_json, error="invalid cars file")
    if tariff is not None:
        refuse_large(tariff, max_size, as_json=as_json, error="invalid tariff file")
    from gridshare.config import ConfigError

    topo = load_site_or_exit(site, max_size, as_json).topology
    try:
        spec = load_cars(cars, topo, periods=periods, period_h=period_h, max_size=max_size)
    except ConfigError as exc:
        report_problems(cars, exc, as_json=as_json, error="invalid cars file")
    prices = None
    if tariff is not None:
        try:
            prices = load_tariff(tariff, start_h=spec.start_h, periods=periods,
                                 period_h=period_h, max_size=max_size)
        except ConfigError as exc:
            report_problems(tariff, exc, as_json=as_json, error="invalid tariff file")
    from gridshare.core.planning import PlanError, plan_charging

    try:
        with solver_banner_hidden():
            plan = plan_charging(topo, spec.cars, periods=periods, period_h=period_h,
                                 prices=prices, uncontrolled_a=spec.uncontrolled)
    except PlanError as exc:  # load_cars checks all of it first; kept as a backstop
        path, _, message = str(exc).partition(": ")
        write_problems(cars, [f"{cars}: {exc}"],
                       [{"file": str(cars), "line": None, "path": path, "message": message}],
                       1, as_json=as_json, error="invalid cars file")
        raise typer.Exit(2) from exc
    result = plan_json(topo, plan, spec, priced=prices is not None)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(plan_text(result, site=topo.site))


# --- the cars and tariff files -------------------------------------------------------------


def load_cars(path: Path, topology: Topology, *, periods: int, period_h: float,
              max_size: int = DEFAULT_MAX_SIZE) -> CarsFile:
    """Read and check a cars file against the site; raise ConfigError naming every problem
    (file, line, path)."""
    from gridshare.config import read_text

    return parse_cars(read_text(path, max_size), str(path), topology, periods=periods,
                      period_h=period_h)


_CAR_KEYS = {"connector", "arrival", "departure", "energy_kwh", "max_current", "max_power_kw",
             "phases"}


def parse_cars(text: str, source: str, topology: Topology, *, periods: int,
               period_h: float) -> CarsFile:
    """A cars document as the planner's input. Arrival is rounded up and departure down to
    period boundaries: a car is planned only in periods it is there for whole."""
    from gridshare.config import ProblemList, read_mapping

    data, _ = read_mapping(text, source, "cars (and start, uncontrolled)")
    problems = ProblemList(source)
    for key in data:
        if key not in ("start", "cars", "uncontrolled"):
            problems.add((str(key),), "unknown field (start, cars, uncontrolled)")
    start_h = 0.0
    if "start" in data:
        clock = parse_clock_h(data["start"])
        if clock is None:
            problems.add(("start",), f"must be a time of day like \"18:00\" (got "
                         f"{data['start']!r})")
        else:
            start_h = clock
    raw_cars = data.get("cars")
    out: list[CarNeed] = []
    if not isinstance(raw_cars, list):
        problems.add(("cars",), "required: a list of cars" if raw_cars is None
                     else "must be a list of cars")
        raw_cars = []
    seen: dict[tuple[str, int], int] = {}
    for i, raw in enumerate(raw_cars):
        car = _car(raw, ("cars", i), topology, periods, period_h, problems)
        if car is None:
            continue
        if car.key in seen:
            problems.add(("cars", i, "connector"),
                         f"{car.key[0]}/{car.key[1]} already holds cars[{seen[car.key]}]")
            continue
        seen[car.key] = i
        out.append(car)
    uncontrolled = _uncontrolled(data.get("uncontrolled", {}), topology, problems)
    problems.raise_if_any(text)
    return CarsFile(start_h, out, uncontrolled)


def _car(raw: Any, loc: Loc, topology: Topology, periods: int, period_h: float,
         problems: ProblemList) -> CarNeed | None:
    from gridshare.core.planning import CarNeed

    if not isinstance(raw, dict):
        problems.add(loc, "must be a mapping with connector, arrival, departure, energy_kwh")
        return None
    before = problems.count
    for key in raw:
        if key not in _CAR_KEYS:
            problems.add((*loc, str(key)), f"unknown field ({', '.join(sorted(_CAR_KEYS))})")
    for key in ("connector", "departure", "energy_kwh"):
        if key not in raw:
            problems.add((*loc, key), "required")
    key = _connector(raw.get("connector"), (*loc, "connector"), topology, problems)
    arrival = _hours(raw.get("arrival", 0), (*loc, "arrival"), problems)
    departure = _hours(raw.get("departure", 0), (*loc, "departure"), problems)
    if arrival is not None and departure is not None and "departure" in raw \
            and departure <= arrival:
        problems.add((*loc, "departure"), "must come after arrival")
    energy = _number(raw.get("energy_kwh", 0), (*loc, "energy_kwh"), problems, "kWh")
    max_a = _number(raw.get("max_current"), (*loc, "max_current"), problems, "A")
    max_kw = _number(raw.get("max_power_kw"), (*loc, "max_power_kw"), problems, "kW")
    phases = raw.get("phases")
    if phases is not None and (isinstance(phases, bool) or phases not in (1, 3)):
        problems.add((*loc, "phases"), f"must be 1 or 3 (got {phases!r})")
    if problems.count > before or key is None or arrival is None or departure is None \
            or energy is None:
        return None
    eps = 1e-9
    first = math.ceil(arrival / period_h - eps)
    stop = math.floor(departure / period_h + eps)
    if stop <= first or first >= periods:
        # there for no whole period of the horizon: nothing can be planned, all of its
        # need is short (placed just past the horizon, where the planner plans nothing)
        first, stop = periods, periods + 1
    return CarNeed(key, first, stop, energy, max_current_a=max_a, max_power_kw=max_kw,
                   phases=phases)


def _connector(raw: Any, loc: Loc, topology: Topology,
               problems: ProblemList) -> tuple[str, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        problems.add(loc, f"must be a charger id, or CHARGER/N for its connector N (got "
                     f"{raw!r})")
        return None
    charger, _, number = raw.rpartition("/") if "/" in raw else (raw, "", "1")
    if charger not in topology.chargers:
        problems.add(loc, f"no charger {charger!r} in the site file")
        return None
    if not number.isdigit() or all(c.number != int(number)
                                   for c in topology.chargers[charger].connectors):
        problems.add(loc, f"charger {charger!r} has no connector {number!r}")
        return None
    return charger, int(number)


def _hours(raw: Any, loc: Loc, problems: ProblemList) -> float | None:
    hours = parse_duration_h(raw) if isinstance(raw, str | int | float) else None
    if hours is None:
        problems.add(loc, f"must be a time after the start like 0h, 7h30m, 90m or a number "
                     f"of hours (got {raw!r})")
    return hours


def _number(raw: Any, loc: Loc, problems: ProblemList, unit: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) \
            or raw < 0:
        problems.add(loc, f"must be a number of {unit} >= 0 (got {raw!r})")
        return None
    return float(raw)


def _uncontrolled(raw: Any, topology: Topology,
                  problems: ProblemList) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    if not isinstance(raw, dict):
        problems.add(("uncontrolled",), "must map group ids to [L1, L2, L3] amps")
        return out
    for gid, amps in raw.items():
        loc: Loc = ("uncontrolled", str(gid))
        if gid not in topology.groups:
            problems.add(loc, f"no group {gid!r} in the site file")
        elif not (isinstance(amps, list) and len(amps) == 3 and all(
                isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a)
                and a >= 0 for a in amps)):
            problems.add(loc, f"must be [L1, L2, L3], amps >= 0 (got {amps!r})")
        else:
            out[str(gid)] = [[float(a) for a in amps]]
    return out


def load_tariff(path: Path, *, start_h: float, periods: int, period_h: float,
                max_size: int = DEFAULT_MAX_SIZE) -> list[float]:
    """Price per kWh of every period (by the time of day its start falls on)."""
    from gridshare.config import read_text

    return parse_tariff(read_text(path, max_size), str(path), start_h=start_h,
                        periods=periods, period_h=period_h)


def parse_tariff(text: str, source: str, *, start_h: float, periods: int,
                 period_h: float) -> list[float]:
    from gridshare.config import ProblemList, read_mapping

    data, _ = read_mapping(text, source, "tariff")
    problems = ProblemList(source)
    for key in data:
        if key != "tariff":
            problems.add((str(key),), "unknown field (tariff)")
    steps: list[tuple[float, float]] = []
    raw = data.get("tariff")
    if not isinstance(raw, list) or not raw:
        problems.add(("tariff",), "required: a list of {from: \"HH:MM\", price: P}")
        raw = []
    for i, step in enumerate(raw):
        loc: Loc = ("tariff", i)
        if not isinstance(step, dict) or set(step) != {"from", "price"}:
            problems.add(loc, "must be {from: \"HH:MM\", price: P}")
            continue
        clock = parse_clock_h(step["from"])
        price = step["price"]
        if clock is None:
            problems.add((*loc, "from"), f"must be a time of day like \"07:00\" (got "
                         f"{step['from']!r})")
        if isinstance(price, bool) or not isinstance(price, int | float) \
                or not math.isfinite(price):
            problems.add((*loc, "price"), f"must be a number (got {price!r})")
        if clock is not None and problems.count == 0:
            if steps and clock <= steps[-1][0]:
                problems.add((*loc, "from"), "must come after the step before it")
            steps.append((clock, float(price)))
    problems.raise_if_any(text)
    out = []
    for t in range(periods):
        hour = (start_h + t * period_h) % 24
        # before the first step of the day: the last step's price (from the day before)
        price = steps[-1][1]
        for at, value in steps:
            if at <= hour + 1e-9:
                price = value
        out.append(price)
    return out


# --- output -------------------------------------------------------------------------------


def plan_json(topology: Topology, plan: ChargePlan, spec: CarsFile, *,
              priced: bool) -> dict[str, Any]:
    """The public JSON shape of a plan (docs/planning.md)."""
    now = plan.setpoints
    return {
        "site": topology.site,
        "start": f"{int(spec.start_h):02d}:{round(spec.start_h % 1 * 60):02d}",
        "periods": plan.periods,
        "period_minutes": round(plan.period_h * 60, 6),
        "cost": round(plan.cost, 6) if priced else None,
        "shortfall_kwh": round(plan.shortfall_kwh, 6),
        "cars_short": sum(not c.met for c in plan.cars),
        "cars": [
            {"charger": c.key[0], "connector": c.key[1], "arrival_period": need.arrival,
             "departure_period": need.departure, "need_kwh": round(c.need_kwh, 6),
             "planned_kwh": round(c.planned_kwh, 6), "shortfall_kwh": round(c.shortfall_kwh, 6),
             "met": c.met, "current": [round(a, 3) for a in c.current_a]}
            for c, need in zip(plan.cars, spec.cars, strict=True)],
        "setpoints": [{"charger": key[0], "connector": key[1], "current": round(amps, 3)}
                      for key, amps in now.items()],
    }


def plan_text(result: dict[str, Any], *, site: str) -> str:
    cars = result["cars"]
    hours = result["periods"] * result["period_minutes"] / 60
    lines = [f"charge plan for site {site}: {len(cars)} cars, {result['periods']} periods of "
             f"{result['period_minutes']:g} min from {result['start']} ({hours:g} h)"]
    now = {(s["charger"], s["connector"]): s["current"] for s in result["setpoints"]}
    head = f"  {'car':<16} {'need kWh':>9} {'planned':>9} {'short':>8}  {'now A':>6}"
    lines.append(head)
    for c in cars:
        name = f"{c['charger']}/{c['connector']}"
        amps = now.get((c["charger"], c["connector"]))
        lines.append(f"  {name:<16} {c['need_kwh']:>9.2f} {c['planned_kwh']:>9.2f} "
                     f"{c['shortfall_kwh']:>8.2f}  {'-' if amps is None else f'{amps:.1f}':>6}"
                     f"{'' if c['met'] else '  NOT MET'}")
    summary = (f"cost {result['cost']:.2f}" if result["cost"] is not None
               else "no tariff: charging as early as the limits allow")
    short = result["cars_short"]
    lines.append(f"{summary}; " + ("every need met" if not short else
                 f"{short} car{'s' if short != 1 else ''} short by "
                 f"{result['shortfall_kwh']:.2f} kWh in all"))
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    app.command("charge-plan", epilog=EPILOG)(charge_plan_cmd)


__all__ = ["charge_plan_cmd", "load_cars", "load_tariff", "parse_cars", "parse_tariff",
           "register"]
