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
                      "charge_priority", "discharge_priority"},
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


def parse_resources(text: str, source: str) -> list[Resource]:
    """The resources of a RESOURCES.yaml; ConfigError naming every problem found."""
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
    for i, item in enumerate(raw):
        r = _resource(item, ("resources", i), problems)
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


def _is_wh(key: str) -> bool:
    return key in ("energy", "capacity", "min_energy")


def load_resources(path: Path, max_size: int = DEFAULT_MAX_SIZE) -> list[Resource]:
    from gridshare.config import read_text

    return parse_resources(read_text(path, max_size), str(path))


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
    refuse_large(resources, max_size, as_json=as_json, error="invalid resources file")
    from gridshare.config import ConfigError
    from gridshare.core.dr.plan import plan

    try:
        items = load_resources(resources, max_size)
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
