"""``gridshare dr-plan``: which loads to lower, and by how much, for a demand-response event.

Reads a RESOURCES.yaml (docs/dr-plan.md), checks every entry with the site file's helpers
(each problem with its file, line and path), and prints the plan of
:func:`gridshare.core.dr.plan.plan`. PyYAML and highspy are imported when the command
runs: ``gridshare --help`` pays for neither.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridshare.cli.core_cmds import (
    DEFAULT_MAX_SIZE,
    JsonOpt,
    refuse_large,
    report_problems,
    solver_banner_hidden,
    usage_error,
)

if TYPE_CHECKING:
    from gridshare.config import Loc, ProblemList
    from gridshare.core.dr.plan import Plan, Resource

PLAN_EPILOG = """\b
Exit codes:
  0  the plan meets the reduction
  1  the reduction cannot be met: the plan is the most that can be had
     ("shortfall" says by how much it falls short)
  2  bad input: usage, or a resources file that cannot be read or is invalid"""

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_POWER = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(w|kw|mw)?", re.IGNORECASE)
_SCALE = {"w": 1.0, "kw": 1e3, "mw": 1e6}


def parse_duration(text: str) -> float:
    """``1h``, ``30m``, ``90s``, ``2h30m`` as hours; ValueError on anything else."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or m is None or not any(m.groups()):
        raise ValueError(f"expected a duration like 1h, 30m, 90s or 2h30m (got {text!r})")
    h, mins, s = (float(g) if g else 0.0 for g in m.groups())
    hours = h + mins / 60 + s / 3600
    if not hours > 0 or math.isinf(hours):
        raise ValueError(f"must be longer than 0 (got {text!r})")
    return hours


def parse_power(text: str) -> float:
    """``5235``, ``5235W``, ``5.2kW`` as W; ValueError on anything else."""
    m = _POWER.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected a power in W like 5235 or 5.2kW (got {text!r})")
    watts = float(m.group(1)) * _SCALE[(m.group(2) or "w").lower()]
    if math.isinf(watts):
        raise ValueError(f"too large (got {text!r})")
    return watts


# --- the resources file ------------------------------------------------------------------

_COMMON = {"id", "name", "type", "power"}
_FIELDS: dict[str, set[str]] = {
    "on_off": _COMMON | {"priority"},
    "variable": _COMMON | {"priority", "min_power"},
    "fixed": _COMMON | {"priority"},
    "v2g": _COMMON | {"energy", "capacity", "max_charge", "max_discharge", "min_energy",
                      "charge_priority", "discharge_priority", "present_from",
                      "present_until"},
}
_FIELDS["storage"] = _FIELDS["v2g"]
_REQUIRED: dict[str, tuple[str, ...]] = {
    "on_off": ("priority",),
    "variable": ("priority",),
    "fixed": (),
    "v2g": ("energy", "capacity", "max_charge", "max_discharge", "charge_priority",
            "discharge_priority"),
}
_REQUIRED["storage"] = _REQUIRED["v2g"]
_NONNEGATIVE = ("min_power", "energy", "capacity", "max_charge", "max_discharge", "min_energy")
_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def parse_start(text: str | None) -> datetime:
    """``--start``: ``now`` (None), a time of day today (``18:00``) or an ISO datetime; a
    time without a UTC offset is local time. ValueError on anything else."""
    if text is None or text.strip().lower() == "now":
        return datetime.now().astimezone()
    m = _CLOCK.fullmatch(text.strip())
    if m:
        today = datetime.now().astimezone()
        return today.replace(hour=int(m.group(1)), minute=int(m.group(2)),
                             second=int(m.group(3) or 0), microsecond=0)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected now, a time of day like 18:00 or an ISO datetime like "
                         f"2026-11-30T18:00+01:00 (got {text!r})") from None
    return at if at.tzinfo is not None else at.astimezone()


def _moment(value: Any) -> time | datetime | None:
    """A presence bound: a time of day (``"18:00"``; an unquoted 18:00 reaches us as 1080,
    YAML's base 60) or a datetime (ISO text, or a YAML timestamp); None if neither."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return time(value // 60, value % 60) if 0 <= value < 24 * 60 else None
    if isinstance(value, date) or not isinstance(value, str):
        return None
    m = _CLOCK.fullmatch(value.strip())
    if m:
        return time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        return None


def present_hours(start: datetime, duration_h: float, since: time | datetime | None,
                  until: time | datetime | None) -> float:
    """Hours of the event window ``[start, start + duration_h]`` a resource is present.

    Datetimes are instants (without an offset: the start's zone). Times of day are in the
    start's zone: with both bounds, a daily stay (``until`` not after ``since``: overnight,
    e.g. 18:00-08:00); ``since`` alone is that time on the start's day, ``until`` alone its
    first occurrence at or after the start.
    """
    tz = start.tzinfo
    end = start + timedelta(hours=duration_h)

    def instant(day: date, t: time) -> datetime:
        return datetime.combine(day, t, tzinfo=tz)

    def overlap(a: datetime, b: datetime) -> float:
        return max((min(b, end) - max(a, start)).total_seconds(), 0.0) / 3600

    if isinstance(since, time) and isinstance(until, time):
        total = 0.0
        days = math.ceil(duration_h / 24) + 1
        for k in range(-1, days + 1):
            day = start.date() + timedelta(days=k)
            a = instant(day, since)
            b = instant(day, until)
            if b <= a:
                b += timedelta(days=1)
            total += overlap(a, b)
        return min(total, duration_h)
    lo = start - timedelta(days=1) if since is None else (
        instant(start.date(), since) if isinstance(since, time)
        else since if since.tzinfo else since.replace(tzinfo=tz))
    if until is None:
        hi = end + timedelta(days=1)
    elif isinstance(until, time):
        hi = instant(start.date(), until)
        if hi < start:
            hi += timedelta(days=1)
    else:
        hi = until if until.tzinfo else until.replace(tzinfo=tz)
    return overlap(lo, hi)


def parse_resources(text: str, source: str, *, start: datetime | None = None,
                    duration_h: float = 1.0) -> list[Resource]:
    """The resources of a RESOURCES.yaml; ConfigError naming every problem found. A
    storage resource's ``present_from``/``present_until`` become its hours present in the
    event from ``start`` (default now) for ``duration_h``."""
    from gridshare.config import ProblemList, read_mapping

    data, needs_lines = read_mapping(text, source, "resources")
    problems = ProblemList(source)
    out: list[Resource] = []
    raw = data.get("resources")
    for key in data:
        if key != "resources":
            problems.add((str(key),), "unknown key (expected resources)")
    if not isinstance(raw, list) or not raw:
        problems.add(("resources",), "expected a non-empty list of resources"
                     + ("" if raw is None else f" (got {_shown(raw)})"))
        raw = []
    seen: dict[str, int] = {}
    at = start if start is not None else datetime.now().astimezone()
    for i, item in enumerate(raw):
        r = _resource(item, ("resources", i), problems)
        if r is None:
            continue
        r = _presence(r, item, ("resources", i), problems, at, duration_h)
        if r is None:
            continue
        if r.id in seen:
            problems.add(("resources", i, "id"),
                         f"duplicate id {r.id!r} (first at resources[{seen[r.id]}])")
        else:
            seen[r.id] = i
        out.append(r)
    problems.raise_if_any(text, duplicates=needs_lines)
    return out


def _shown(value: Any) -> str:
    from gridshare.config import shown

    return shown(value)


def _resource(item: Any, loc: Loc, problems: ProblemList) -> Resource | None:
    """One entry, or None with its problems recorded."""
    from gridshare.core.dr.plan import Kind, Resource

    if not isinstance(item, dict):
        problems.add(loc, f"expected a mapping with id, type and power (got {_shown(item)})")
        return None
    before = problems.count
    kind = item.get("type")
    if kind not in _FIELDS:
        problems.add((*loc, "type"), f"expected one of {', '.join(_FIELDS)}"
                     + (" (missing)" if kind is None else f" (got {_shown(kind)})"))
        fields = set().union(*_FIELDS.values())
        required: tuple[str, ...] = ()
    else:
        fields, required = _FIELDS[kind], _REQUIRED[kind]
    for key in item:
        if key not in fields:
            problems.add((*loc, str(key)), "unknown field" + (
                f" for type {kind}" if kind in _FIELDS else ""))
    rid = item.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        problems.add((*loc, "id"), "expected an id of letters, digits and _.:- (1-64)"
                     + (" (missing)" if rid is None else f" (got {_shown(rid)})"))
    name = item.get("name", "")
    if not isinstance(name, str):
        problems.add((*loc, "name"), f"expected text (got {_shown(name)})")
    for key in ("power", *required):
        if key not in item:
            problems.add((*loc, key), "missing")
    nums: dict[str, float] = {}
    for key in ("power", *_NONNEGATIVE):
        if key in item and key in fields:
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                problems.add((*loc, key), f"expected a number of W{'h' * _is_wh(key)} "
                             f"(got {_shown(value)})")
            elif key in _NONNEGATIVE and value < 0:
                problems.add((*loc, key), f"must be >= 0 (got {_shown(value)})")
            elif key == "power" and value < 0 and kind not in ("v2g", "storage"):
                problems.add((*loc, key), f"must be >= 0 for type {kind}: only storage "
                             f"feeds power back (got {_shown(value)})")
            else:
                nums[key] = float(value)
    prios: dict[str, int] = {}
    for key in ("priority", "charge_priority", "discharge_priority"):
        if key in item and key in fields:
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, int):
                problems.add((*loc, key), f"expected a whole number (larger = less "
                             f"important) (got {_shown(value)})")
            else:
                prios[key] = value
    if problems.count > before or kind not in _FIELDS:
        return None
    power = nums["power"]
    if kind == "variable" and nums.get("min_power", 0.0) > power:
        problems.add((*loc, "min_power"), f"min_power {nums['min_power']:g} W is above "
                     f"power {power:g} W")
    if kind in ("v2g", "storage"):
        low, cap, energy = nums.get("min_energy", 0.0), nums["capacity"], nums["energy"]
        if low > cap:
            problems.add((*loc, "min_energy"), f"min_energy {low:g} Wh is above capacity "
                         f"{cap:g} Wh")
        elif not low <= energy <= cap:
            problems.add((*loc, "energy"), f"energy {energy:g} Wh is outside [min_energy, "
                         f"capacity] = [{low:g}, {cap:g}] Wh")
        if not -nums["max_discharge"] <= power <= nums["max_charge"]:
            problems.add((*loc, "power"), f"power {power:g} W is outside [-max_discharge, "
                         f"max_charge] = [{-nums['max_discharge']:g}, "
                         f"{nums['max_charge']:g}] W")
    if problems.count > before:
        return None
    assert isinstance(rid, str)
    return Resource(
        id=rid, kind=Kind(kind), power=power, priority=prios.get("priority"),
        min_power=nums.get("min_power", 0.0), energy=nums.get("energy", 0.0),
        capacity=nums.get("capacity", 0.0), min_energy=nums.get("min_energy", 0.0),
        max_charge=nums.get("max_charge", 0.0), max_discharge=nums.get("max_discharge", 0.0),
        charge_priority=prios.get("charge_priority"),
        discharge_priority=prios.get("discharge_priority"), name=name)


def _presence(r: Resource, item: dict[str, Any], loc: Loc, problems: ProblemList,
              start: datetime, duration_h: float) -> Resource | None:
    """The resource with its hours present (only storage may give presence bounds)."""
    from dataclasses import replace

    if "present_from" not in item and "present_until" not in item:
        return r
    bounds: dict[str, time | datetime | None] = {}
    for key in ("present_from", "present_until"):
        if key in item:
            value = _moment(item[key])
            if value is None:
                problems.add((*loc, key), f"expected a time of day like \"18:00\" or an ISO "
                             f"datetime like 2026-11-30T18:00:00+01:00 (got "
                             f"{_shown(item[key])})")
                return None
            bounds[key] = value
    since, until = bounds.get("present_from"), bounds.get("present_until")
    if isinstance(since, time) != isinstance(until, time) and since is not None \
            and until is not None:
        problems.add((*loc, "present_until"), "give present_from and present_until both "
                     "as times of day or both as datetimes")
        return None
    if isinstance(since, datetime) and isinstance(until, datetime):
        tz = start.tzinfo
        a = since if since.tzinfo else since.replace(tzinfo=tz)
        b = until if until.tzinfo else until.replace(tzinfo=tz)
        if b <= a:
            problems.add((*loc, "present_until"), "must come after present_from")
            return None
    if isinstance(since, time) and isinstance(until, time) and since == until:
        problems.add((*loc, "present_until"), "equals present_from (leave both out for a "
                     "resource there all day)")
        return None
    return replace(r, present_h=present_hours(start, duration_h, since, until))


def _is_wh(key: str) -> bool:
    return key in ("energy", "capacity", "min_energy")


def load_resources(path: Path, max_size: int = DEFAULT_MAX_SIZE, *,
                   start: datetime | None = None, duration_h: float = 1.0) -> list[Resource]:
    from gridshare.config import read_text

    return parse_resources(read_text(path, max_size), str(path), start=start,
                           duration_h=duration_h)


# --- the command -------------------------------------------------------------------------


def plan_json(result: Plan) -> dict[str, Any]:
    """The public JSON shape (issue 10): requested, achieved, resources[{id, before, after,
    energy_after (storage only)}]; and shortfall, W short of the request (0 when met)."""
    from gridshare.core.dr.plan import exact_w

    rows: list[dict[str, Any]] = []
    for s in result.setpoints:
        row: dict[str, Any] = {"id": s.id, "before": exact_w(s.before),
                               "after": exact_w(s.after)}
        if s.energy_after is not None:
            row["energy_after"] = exact_w(s.energy_after)
        rows.append(row)
    return {"requested": exact_w(result.requested), "achieved": exact_w(result.achieved),
            "shortfall": exact_w(result.shortfall), "resources": rows}


def _quiet_solver() -> None:
    """HiGHS prints its banner once per process, from C++: made here with it hidden, so
    ``--json`` stays one JSON document."""
    import highspy

    with solver_banner_hidden():
        make: Any = highspy.Highs  # untyped
        make()


def dr_plan_cmd(
    resources: Annotated[Path, typer.Argument(
        help="Resources YAML file (docs/dr-plan.md).", show_default=False,
        metavar="RESOURCES")],
    reduce: Annotated[str, typer.Option(
        "--reduce", metavar="W", help="How much less to draw: W (5235) or with a unit "
        "(5.2kW).", show_default=False)],
    duration: Annotated[str, typer.Option(
        "--duration", metavar="DURATION", help="How long the event lasts: 1h, 30m, 90s, "
        "2h30m (storage energy is bookkept over it).", show_default=False)],
    as_json: JsonOpt = False,
    max_size: Annotated[int, typer.Option(
        "--max-size", min=1, metavar="BYTES",
        help="Refuse a resources file larger than this, before reading it.")
    ] = DEFAULT_MAX_SIZE,
    start: Annotated[str | None, typer.Option(
        "--start", metavar="TIME", help="When the event begins: now (default), a time of "
        "day today (18:00) or an ISO datetime; storage present_from/present_until are "
        "counted within [start, start + duration].", show_default=False)] = None,
) -> None:
    """Plan a demand-response reduction: the setpoints that lower the draw by --reduce for
    --duration, curtailing the least important resources first (larger priority number =
    less important), e.g. gridshare dr-plan RESOURCES.yaml --reduce 5235 --duration 1h"""
    try:
        watts = parse_power(reduce)
    except ValueError as exc:
        usage_error("dr-plan", "--reduce", str(exc), as_json)
    try:
        hours = parse_duration(duration)
    except ValueError as exc:
        usage_error("dr-plan", "--duration", str(exc), as_json)
    try:
        begins = parse_start(start)
    except ValueError as exc:
        usage_error("dr-plan", "--start", str(exc), as_json)
    refuse_large(resources, max_size, as_json=as_json, error="invalid resources file")
    from gridshare.config import ConfigError
    from gridshare.core.dr.plan import plan

    try:
        items = load_resources(resources, max_size, start=begins, duration_h=hours)
    except ConfigError as exc:
        report_problems(resources, exc, as_json=as_json, error="invalid resources file")
    _quiet_solver()
    result = plan(items, watts, hours)
    data = plan_json(result)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        names = {r.id: r.name for r in items}
        width = max(len(r.id) for r in items)
        lines = [f"{'id':<{width}}  {'before W':>10}  {'after W':>10}  {'energy after Wh':>15}"]
        for row in data["resources"]:
            energy = f"{row['energy_after']:>15g}" if "energy_after" in row else " " * 15
            name = f"  {names[row['id']]}" if names[row["id"]] else ""
            lines.append(f"{row['id']:<{width}}  {row['before']:>10g}  {row['after']:>10g}  "
                         f"{energy}{name}")
        lines.append(f"requested {data['requested']:g} W, achieved {data['achieved']:g} W"
                     + (f", short by {data['shortfall']:g} W" if data["shortfall"] else ""))
        sys.stdout.write("\n".join(lines) + "\n")
    if data["shortfall"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("dr-plan", epilog=PLAN_EPILOG)(dr_plan_cmd)
