"""The demand file of ``gridshare allocate``: JSON in, a core Snapshot out, validated.

A good file is read in one call of pydantic's JSON parser. A bad one is read again entry
by entry, so that every problem is found in one pass, each worded for the person who
wrote the file (``connectors[3].max_current: must be a number >= 0 (got 'x')``, never a
pydantic type name) and given its line by a small JSON scanner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gridshare.config import (
    DEFAULT_MAX_SIZE,
    ConfigError,
    ConfigIssue,
    Loc,
    ProblemList,
    WantedPaths,
    read_text,
    shown,
    value_problem,
)
from gridshare.core.snapshot import (
    ConnectorDemand,
    GroupConditions,
    GroupLimit,
    LimitSource,
    Snapshot,
)
from gridshare.core.topology import Topology

Amps = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PhaseAmps = Annotated[list[Amps], Field(min_length=3, max_length=3)]


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
    # fail_fast: a bad document is read again entry by entry for its problems; validated
    # whole, it stops at the first bad connector instead of building every error
    connectors: Annotated[list[ConnectorIn], Field(fail_fast=True)] = []
    uncontrolled: dict[str, Amps | PhaseAmps] = {}
    """A per phase: one number for all three phases, or [L1, L2, L3]."""
    limits: dict[str, list[LimitIn]] = {}
    stale_meters: list[str] = []
    """Ids of meters (declared under the site file's ``meters:``) with no recent reading:
    every group that follows one has no headroom (fails closed)."""


_DATE = "a date-time with a time zone, like 2026-11-22T08:00:00Z"
_WORDS = {
    "charger": "a charger id (text)",
    "connector": "a connector number >= 1",
    "active": "true or false",
    "online": "true or false",
    "max_current": "a number >= 0",
    "max_power": "a number >= 0",
    "energy_needed": "a number >= 0 (kWh)",
    "priority": "a whole number",
    "arrival": _DATE,
    "departure": _DATE,
    "now": _DATE,
    "source": "one of " + ", ".join(s.value for s in LimitSource),
    "reason": "text",
    "connectors": "a list of connectors",
    "uncontrolled": "an object of group id: A per phase",
    "limits": "an object of group id: list of limits",
    "stale_meters": "a list of meter ids",
}
"""What each field must be, in the words of the README."""

_NOW = TypeAdapter(AwareDatetime | None)
_ONE_AMPS = TypeAdapter(Amps)
_PHASE_AMPS = TypeAdapter(PhaseAmps)
_IDS = TypeAdapter(list[str])


def load_demand(path: Path, topology: Topology, now: datetime | None = None, *,
                meters: Collection[str] = (), max_size: int = DEFAULT_MAX_SIZE) -> Snapshot:
    """Read and validate a demand file against the topology; raise ConfigError.

    ``meters`` are the meter ids the site file declares (besides those its groups follow).
    """
    text = read_text(path, max_size)
    try:
        spec: DemandIn | None = DemandIn.model_validate_json(text)
    except ValidationError:
        spec = None
    return parse_demand(text, str(path), topology, now, meters=meters, spec=spec)


def parse_demand(text: str, source: str, topology: Topology, now: datetime | None = None, *,
                 meters: Collection[str] = (), spec: DemandIn | None = None) -> Snapshot:
    """A demand document's snapshot (``spec``: the document already validated whole)."""
    problems = ProblemList(source)
    bare = False
    if spec is None:
        try:
            raw: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError([ConfigIssue(source, exc.lineno, "",
                                           f"not valid JSON: {exc.msg}")]) from exc
        except ValueError as exc:  # an integer of more than 4,300 digits
            raise ConfigError([ConfigIssue(source, None, "",
                                           f"not valid JSON: {value_problem(exc)}")]) from exc
        if isinstance(raw, list):  # a bare list of connectors
            raw, bare = {"connectors": raw}, True
        refs = _Refs()
        spec = _checked(raw, problems, refs)
    else:
        refs = _Refs(
            [(("connectors", i), c.charger, c.connector) for i, c in enumerate(spec.connectors)],
            [((key, gid), gid) for key in ("uncontrolled", "limits") for gid in getattr(spec, key)],
            [(("stale_meters", i), mid) for i, mid in enumerate(spec.stale_meters)])
    stale_groups = _check_refs(refs, topology, meters, problems)
    snapshot = None if spec is None or problems.count else _snapshot(spec, stale_groups, now)
    if problems.count:
        lines = json_lines(text, problems.wanted(), root=("connectors",) if bare else ())
        raise problems.error(lines)
    assert snapshot is not None
    return snapshot


# --- every problem at once, in the writer's words ------------------------------------------


def _say(exc: ValidationError, base: Loc, problems: ProblemList) -> None:
    """pydantic's errors of one entry as sentences about the file, one per path."""
    if problems.full:
        problems.skip(exc.error_count())
        return
    said: set[Loc] = set()
    for err in exc.errors(include_url=False):
        loc = (*base, *(p for p in err["loc"] if isinstance(p, int | str)))
        if loc in said:
            continue
        said.add(loc)
        kind = err["type"]
        if kind == "missing":
            problems.add(loc, "required")
            continue
        if kind == "extra_forbidden":
            problems.add(loc, "unknown field")
            continue
        field = next((p for p in reversed(loc) if isinstance(p, str)), "")
        if isinstance(loc[-1], int) and field == "stale_meters":
            words = "a meter id (text)"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            words = "an object"
        else:
            words = _WORDS.get(field, "valid")
        problems.add(loc, f"must be {words} (got {shown(err.get('input'))})")


@dataclass
class _Refs:
    """What a demand names in the site, with where it does so, from every entry whose
    names are readable (valid or not)."""

    chargers: list[tuple[Loc, str, int | None]] = field(default_factory=list)
    groups: list[tuple[Loc, str]] = field(default_factory=list)
    meters: list[tuple[Loc, str]] = field(default_factory=list)


def _checked(raw: Any, problems: ProblemList, refs: _Refs) -> DemandIn | None:
    """Each entry of the document validated on its own; the document when all are good.
    ``refs`` gets what every entry names, for the checks against the site."""
    if not isinstance(raw, dict):
        problems.add((), f"must be an object with connectors (got {shown(raw)})")
        return None
    for key in raw:
        if key not in DemandIn.model_fields:
            problems.add((key,), "unknown field (expected now, connectors, uncontrolled, "
                                 "limits, stale_meters)")
    fields: dict[str, Any] = {}
    try:
        fields["now"] = _NOW.validate_python(raw.get("now"))
    except ValidationError as exc:
        _say(exc, ("now",), problems)
    connectors = []
    for i, item in enumerate(_listed(raw, "connectors", problems)):
        loc: Loc = ("connectors", i)
        try:
            conn = ConnectorIn.model_validate(item)
        except ValidationError as exc:
            _say(exc, loc, problems)
            if isinstance(item, dict) and isinstance(item.get("charger"), str):
                number = item.get("connector", 1)
                refs.chargers.append((loc, item["charger"],
                                      number if type(number) is int else None))
            continue
        connectors.append(conn)
        refs.chargers.append((loc, conn.charger, conn.connector))
    fields["connectors"] = connectors
    uncontrolled = {}
    for gid, value in _mapped(raw, "uncontrolled", problems).items():
        refs.groups.append((("uncontrolled", gid), gid))
        try:
            uncontrolled[gid] = (_PHASE_AMPS.validate_python(value) if isinstance(value, list)
                                 else _ONE_AMPS.validate_python(value))
        except ValidationError:
            problems.add(("uncontrolled", gid), "must be a number >= 0 or a list of 3 numbers "
                         f">= 0 [L1, L2, L3] (got {shown(value)})")
    fields["uncontrolled"] = uncontrolled
    limits: dict[str, list[LimitIn]] = {}
    for gid, value in _mapped(raw, "limits", problems).items():
        refs.groups.append((("limits", gid), gid))
        if not isinstance(value, list):
            problems.add(("limits", gid), f"must be a list of limits (got {shown(value)})")
            continue
        limits[gid] = []
        for j, item in enumerate(value):
            try:
                limits[gid].append(LimitIn.model_validate(item))
            except ValidationError as exc:
                _say(exc, ("limits", gid, j), problems)
    fields["limits"] = limits
    stale = raw.get("stale_meters") or []
    try:
        fields["stale_meters"] = _IDS.validate_python(stale)
    except ValidationError as exc:
        _say(exc, ("stale_meters",), problems)
    if isinstance(stale, list):
        refs.meters.extend((("stale_meters", i), mid) for i, mid in enumerate(stale)
                           if isinstance(mid, str))
    if problems.count:
        return None
    return DemandIn.model_construct(**fields)


def _listed(raw: dict[str, Any], key: str, problems: ProblemList) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add((key,), f"must be {_WORDS[key]} (got {shown(value)})")
        return []
    return value


def _mapped(raw: dict[str, Any], key: str, problems: ProblemList) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add((key,), f"must be {_WORDS[key]} (got {shown(value)})")
        return {}
    return value


def _check_refs(refs: _Refs, topology: Topology, meters: Collection[str],
                problems: ProblemList) -> set[str]:
    """Every charger, connector, group and meter the demand names, against the site; the
    groups that follow the stale meters."""
    seen: set[tuple[str, int]] = set()
    for loc, charger, number in refs.chargers:
        if charger not in topology.chargers:
            problems.add((*loc, "charger"), f"unknown charger {shown(charger)}")
            continue
        count = len(topology.chargers[charger].connectors)
        if number is not None and number > count:
            problems.add((*loc, "connector"), f"charger {charger!r} has no connector {number} "
                         f"(it has {count})")
            continue
        if number is not None and (charger, number) in seen:
            problems.add(loc, f"{charger}/{number} listed twice")
        seen.add((charger, number or 1))
    for loc, gid in refs.groups:
        if gid not in topology.groups:
            problems.add(loc, f"unknown group {shown(gid)}")
    return _stale_groups(refs.meters, topology, meters, problems)


def _snapshot(spec: DemandIn, stale_groups: set[str], now: datetime | None) -> Snapshot:
    connectors = {
        (c.charger, c.connector): ConnectorDemand(
            charger=c.charger, connector=c.connector, active=c.active,
            max_current=c.max_current, priority=c.priority, arrival=c.arrival,
            online=c.online, energy_needed_kwh=c.energy_needed, departure=c.departure)
        for c in spec.connectors}
    groups: dict[str, GroupConditions] = {}
    for gid in {*spec.uncontrolled, *spec.limits, *stale_groups}:
        unc = spec.uncontrolled.get(gid, 0.0)
        per_phase = (unc, unc, unc) if isinstance(unc, float | int) else tuple(unc)
        groups[gid] = GroupConditions(
            uncontrolled=(float(per_phase[0]), float(per_phase[1]), float(per_phase[2])),
            limits=tuple(GroupLimit(lim.source, lim.max_current, lim.max_power, lim.reason)
                         for lim in spec.limits.get(gid, [])),
            meter_stale=gid in stale_groups)
    when = spec.now or now or datetime.now(UTC)
    return Snapshot(now=when, connectors=connectors, groups=groups)


def _stale_groups(stale: list[tuple[Loc, str]], topology: Topology, meters: Collection[str],
                  problems: ProblemList) -> set[str]:
    """The groups that follow the stale meters; a group id given instead of a meter id is
    an error that names the meter that group follows."""
    following: dict[str, list[str]] = {}
    for gid, group in topology.groups.items():
        if group.meter is not None:
            following.setdefault(group.meter, []).append(gid)
    known = set(meters) | set(following)
    out: set[str] = set()
    for loc, mid in stale:
        if mid in known:
            out.update(following.get(mid, ()))
        elif mid in topology.groups:
            meter = topology.groups[mid].meter
            problems.add(loc, f"{mid!r} is a group, not a meter: " + (
                f"group {mid!r} follows meter {meter!r}" if meter is not None
                else f"no meter follows group {mid!r}"))
        else:
            names = sorted(known)
            listed = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
            problems.add(loc, f"unknown meter {shown(mid)} " + (
                f"(the site's meters: {listed})" if names else "(the site declares no meters)"))
    return out


# --- lines: a JSON scanner ---------------------------------------------------------------

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')


def json_lines(text: str, wanted: set[Loc], root: Loc = ()) -> dict[Loc, int]:
    """The line of each path in ``wanted`` (an object member at its key's line), from one
    pass over the tokens of a JSON text that parsed; it stops once every wanted path is
    behind it. ``root`` is the path of the document itself."""
    lines: dict[Loc, int] = {}
    pending = WantedPaths(wanted)
    finish, unfinished = pending.finish, pending.unfinished
    open_wanted = 0

    # An open container: [path (None: nothing wanted below), is an object, next key or
    # index, expecting a key]
    stack: list[list[Any]] = []
    line, pos = 1, 0
    for match in _TOKEN.finditer(text):
        start = match.start()
        line += text.count("\n", pos, start)
        pos = start
        token = match.group()
        first = token[0]
        if first == ":":
            continue
        if first == ",":
            if stack:
                top = stack[-1]
                if top[1]:
                    top[3] = True
                else:
                    top[2] += 1
            continue
        if first in "}]":
            done = stack.pop()
            if done[0] is not None:
                open_wanted -= 1
                finish(done[0])
                if len(unfinished) <= open_wanted:
                    break
            continue
        loc: Loc | None = root
        if stack:
            top = stack[-1]
            base = top[0]
            if top[1] and top[3]:  # a key
                key = json.loads(token) if first == '"' else token
                top[2], top[3] = key, False
                if base is not None and (*base, key) in wanted:
                    lines.setdefault((*base, key), line)
                continue
            loc = None if base is None else (*base, top[2])
        is_wanted = loc is not None and loc in wanted
        if loc is not None and is_wanted:
            lines.setdefault(loc, line)
        if first in "{[":
            stack.append([loc if is_wanted else None, first == "{", 0, first == "{"])
            open_wanted += is_wanted
        elif loc is not None and is_wanted:
            finish(loc)
            if len(unfinished) <= open_wanted:
                break
    return lines
