"""``gridshare check`` and ``gridshare allocate``: the core, from the command line.

Operators script these commands, so their start-up is part of their cost: this module
imports only what their signatures need. YAML and pydantic (the site file), numpy (the
allocator) and rich (tables for people) are imported inside the commands that use them,
so ``gridshare --help`` and ``allocate --json`` pay for none they do not use.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from gridshare.core.topology import Policy

if TYPE_CHECKING:
    from gridshare.config import ConfigError, SiteConfig
    from gridshare.core.decision import Allocation
    from gridshare.core.snapshot import Snapshot
    from gridshare.core.topology import Topology

SiteArg = Annotated[Path, typer.Argument(
    help="Site topology YAML file.", show_default=False, metavar="SITE")]
JsonOpt = Annotated[bool, typer.Option(
    "--json/--no-json", help="Machine-readable JSON on stdout (also on failure: "
    '{"error", "problems", "exit_code"}).')]
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
"""As gridshare.config's (not imported here: it loads pydantic and PyYAML)."""
MaxSizeOpt = Annotated[int, typer.Option(
    "--max-size", min=1, metavar="BYTES",
    help="Refuse site and demand files larger than this, before reading them.")]
SHOWN_PROBLEMS = 50
"""Problems printed of a bad file; the others are counted."""

CHECK_EPILOG = """\b
Exit codes:
  0  the site file is valid (warnings, if any, on stderr)
  2  bad input: usage, or a site file that cannot be read or is invalid"""
ALLOCATE_EPILOG = """\b
Exit codes:
  0  the setpoints are the policy's allocation
  1  the safety guard replaced the allocation or an alarm was raised (the
     answer is still printed)
  2  bad input: usage, or a site or demand file that cannot be read or is invalid"""
HASH_EPILOG = """\b
Exit codes:
  0  the hash is printed
  2  bad input: usage, or a password of the wrong length"""


def report_problems(path: Path, exc: ConfigError, *, as_json: bool = False,
                    error: str = "invalid site file") -> NoReturn:
    """Every problem of a bad file on stderr, one line each (the first 50, then how many
    more), and with ``as_json`` a JSON error object on stdout; then exit 2.

    Written as plain lines, never wrapped: a pipe or a log file gets one line per problem,
    and a file refused whole (too large, not text) gets one line in all.
    """
    write_problems(path, [str(i) for i in exc.issues[:SHOWN_PROBLEMS]],
                   [i.as_json() for i in exc.issues[:SHOWN_PROBLEMS]], exc.count,
                   as_json=as_json, error=error)
    raise typer.Exit(2) from exc


def write_problems(path: Path, lines: list[str], problems: list[dict[str, Any]], count: int, *,
                   as_json: bool, error: str) -> None:
    """``count`` problems of ``path`` (``lines`` of them shown) on stderr, and with
    ``as_json`` the JSON error object on stdout; the caller exits."""
    hidden = count - len(lines)
    if count == 1:
        text = lines
    else:
        text = [f"{count} problems in {path}:", *(f"  {line}" for line in lines)]
        if hidden:
            text.append(f"  … and {hidden} more")
    sys.stderr.write("\n".join(text) + "\n")
    if as_json:
        sys.stdout.write(json.dumps({"error": error, "problems": problems, "more": hidden,
                                     "exit_code": 2}, indent=2) + "\n")


def usage_error(command: str, option: str, message: str, as_json: bool) -> NoReturn:
    """Exit 2 for an option whose value cannot be used: one line naming it on stderr, and
    with ``as_json`` the JSON error object (the shape of a file's problems)."""
    write_problems(Path(option), [f"gridshare {command}: {option}: {message}"],
                   [{"file": None, "line": None, "path": option, "message": message}], 1,
                   as_json=as_json, error="usage")
    raise typer.Exit(2)


@contextlib.contextmanager
def solver_banner_hidden() -> Iterator[None]:
    """HiGHS writes a banner to the process's stdout (file descriptor 1, below Python)
    the first time a solver is made; it would corrupt ``--json``. fd 1 points at
    /dev/null meanwhile; the plan itself is written after."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all: nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def refuse_large(path: Path, max_size: int, *, as_json: bool = False,
                 error: str = "invalid site file") -> None:
    """Exit 2 in one line if the file is larger than ``max_size`` bytes: known from its
    size, before reading it or loading the YAML and pydantic modules that would."""
    try:
        size = path.stat().st_size
    except OSError:
        return  # reading it says why, in the same words as any other unreadable file
    if size > max_size:
        message = f"{size} bytes, above the limit of {max_size} (--max-size)"
        write_problems(path, [f"{path}: {message}"],
                       [{"file": str(path), "line": None, "path": "", "message": message}], 1,
                       as_json=as_json, error=error)
        raise typer.Exit(2)


def load_site_or_exit(site: Path, max_size: int, as_json: bool) -> SiteConfig:
    refuse_large(site, max_size, as_json=as_json)
    from gridshare.config import ConfigError, load_site_config

    try:
        return load_site_config(site, max_size)
    except ConfigError as exc:
        report_problems(site, exc, as_json=as_json)


def _limit(amps: float | None, kw: float | None) -> str:
    parts = []
    if amps is not None:
        parts.append(f"{amps:g} A")
    if kw is not None:
        parts.append(f"{kw:g} kW")
    return " / ".join(parts)


def _num(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 3)


def check(site: SiteArg, as_json: JsonOpt = False,
          max_size: MaxSizeOpt = DEFAULT_MAX_SIZE) -> None:
    """Validate a site file and print its tree of groups, chargers and limits."""
    config = load_site_or_exit(site, max_size, as_json)
    topo = config.topology
    from gridshare.config import site_warnings

    warnings = site_warnings(config)
    if as_json:
        sys.stdout.write(json.dumps({
            "site": topo.site, "voltage": topo.voltage, "policy": topo.policy.value,
            "groups": [{"id": g.id, "parent": g.parent, "max_current": g.max_current,
                        "max_power": g.max_power_kw, "policy": g.policy.value,
                        "chargers": list(g.chargers), "groups": list(g.groups)}
                       for g in topo.groups.values()],
            "chargers": [{"id": c.id, "group": c.group, "phases": c.phases,
                          "phase": c.phase.name if c.phase is not None else None,
                          "max_current": _num(c.max_current), "min_current": c.min_current,
                          "failsafe_current": c.failsafe_current, "priority": c.priority,
                          "connectors": len(c.connectors)} for c in topo.chargers.values()],
            "warnings": warnings,
        }, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.tree import Tree

    out, err = Console(), Console(stderr=True)
    tree = Tree(f"[bold]{topo.site}[/] {topo.voltage:g} V, policy {topo.policy.value}")

    def add(node: Tree, gid: str) -> None:
        g = topo.groups[gid]
        branch = node.add(f"[cyan]{gid}[/] ≤ {_limit(g.max_current, g.max_power_kw)}"
                          f" ({g.phases}-phase, {g.policy.value})"
                          + (f" meter {g.meter}" if g.meter else ""))
        for sub in g.groups:
            add(branch, sub)
        for cid in g.chargers:
            c = topo.chargers[cid]
            line = c.phase.name if c.phase is not None else ""
            wiring = "3-phase" if c.phases == 3 else f"1-phase {line}"
            branch.add(f"{cid}: {c.min_current:g}–{c.max_current:.4g} A {wiring}, failsafe "
                       f"{c.failsafe_current:g} A, priority {c.priority}, "
                       f"{len(c.connectors)} connector(s)")

    for root in topo.roots:
        add(tree, root)
    out.print(tree)
    for w in warnings:
        err.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    out.print(f"[green]ok[/]: {len(topo.groups)} groups, {len(topo.chargers)} chargers, "
              f"{sum(len(c.connectors) for c in topo.chargers.values())} connectors")



def allocation_json(topo: Topology, result: Allocation, *,
                    with_setpoints: bool = True) -> dict[str, Any]:
    """The public JSON shape of an allocation (scripts rely on these keys);
    ``with_setpoints=False`` leaves out the setpoint list (see allocation_json_text)."""
    setpoints: dict[str, Any] = {}
    if with_setpoints:
        kw_per_amp = {cid: topo.power_kw_per_amp(ch) for cid, ch in topo.chargers.items()}
        offline = result.offline
        setpoints["setpoints"] = [
            {"charger": key[0], "connector": key[1], "current": round(amps, 3),
             "power": round(amps * kw_per_amp[key[0]], 3), "online": key not in offline}
            for key, amps in result.setpoints.items()]
    return {
        **setpoints,
        "groups": [
            {"id": g.id, "current": [round(a, 3) for a in g.current], "limit": _num(g.limit),
             "available": [round(a, 3) for a in g.available], "power": round(g.power_kw, 3),
             "limit_power": _num(g.limit_power_kw)}
            for g in result.groups.values()],
        "alarms": [{"group": a.group, "phase": a.phase.name if a.phase is not None else None,
                    "message": a.message} for a in result.alarms],
        "guarded": result.guarded,
    }


_SETPOINTS_HEAD = '{\n  "setpoints": []'
"""How ``json.dumps(..., indent=2)`` opens an answer whose setpoint list is empty."""


def _json_scalar(value: object) -> str:
    """A number, string or bool as ``json.dumps`` writes it (floats by ``float.__repr__``,
    as its encoder does; anything unusual by json.dumps itself)."""
    if value.__class__ is float and math.isfinite(value):
        return float.__repr__(value)
    if value.__class__ is int:
        return int.__repr__(value)
    return json.dumps(value)


def allocation_json_text(topo: Topology, result: Allocation) -> str:
    """``json.dumps(allocation_json(topo, result), indent=2)``, the same text, written
    about three times faster.

    With ``indent`` set, the standard library's encoder runs in Python (its C encoder
    does compact output only): ≈70 ms for the 11,500 setpoints of a 10,000-charger site,
    5 % of the whole ``allocate`` command. The setpoints are flat rows of five scalars, so
    each is written by one format string; everything else goes through json.dumps. The
    text is the same byte for byte (tests/test_cli.py compares them).
    """
    data = allocation_json(topo, result, with_setpoints=False)
    text = json.dumps({"setpoints": [], **data}, indent=2)
    if not result.setpoints:
        return text
    assert text.startswith(_SETPOINTS_HEAD)
    encode = json.encoder.encode_basestring_ascii
    offline = result.offline
    kw_per_amp = {cid: topo.power_kw_per_amp(ch) for cid, ch in topo.chargers.items()}
    scalar = _json_scalar
    rows = [
        f'    {{\n      "charger": {encode(key[0])},\n      "connector": {scalar(key[1])},'
        f'\n      "current": {scalar(round(amps, 3))},'
        f'\n      "power": {scalar(round(amps * kw_per_amp[key[0]], 3))},'
        f'\n      "online": {"false" if key in offline else "true"}\n    }}'
        for key, amps in result.setpoints.items()]
    return ('{\n  "setpoints": [\n' + ",\n".join(rows) + "\n  ]"
            + text[len(_SETPOINTS_HEAD):])


def allocate_cmd(
    site: SiteArg,
    demand: Annotated[Path, typer.Option(
        "--demand", metavar="FILE", help="Demand snapshot JSON file.")],
    policy: Annotated[Policy | None, typer.Option(
        "--policy", metavar="equal|priority|proportional|deadline",
        help="Override every group's sharing policy.")] = None,
    as_json: JsonOpt = False,
    max_size: MaxSizeOpt = DEFAULT_MAX_SIZE,
) -> None:
    """Compute a setpoint for every connector from a demand snapshot."""
    # The site, the demand and the answer are hundreds of thousands of objects that live
    # until the command ends and form no garbage cycles: pausing the cyclic collector
    # meanwhile saves it rescanning them again and again (about 0.15 s of the 1.2 s CPU
    # of a 10,000-charger site, on top of what the site file reader saves the same way).
    collecting = gc.isenabled()
    gc.disable()
    try:
        changed = _allocate(site, demand, policy, as_json=as_json, max_size=max_size)
    finally:
        if collecting:
            gc.enable()
    if changed:
        raise typer.Exit(1)


def _allocate(site: Path, demand: Path, policy: Policy | None, *, as_json: bool,
              max_size: int) -> bool:
    """Print the allocation; whether the guard replaced it or an alarm was raised."""
    refuse_large(site, max_size, as_json=as_json)
    refuse_large(demand, max_size, as_json=as_json, error="invalid demand file")
    from gridshare.cli.demand import load_demand
    from gridshare.config import ConfigError
    from gridshare.core.allocation import allocate
    from gridshare.core.guard import enforce

    config = load_site_or_exit(site, max_size, as_json)
    topo = config.topology
    try:
        snapshot = load_demand(demand, topo, meters=[m.id for m in config.meters],
                               max_size=max_size)
    except ConfigError as exc:
        report_problems(demand, exc, as_json=as_json, error="invalid demand file")
    # allocate() returns the policy's answer unguarded; the safety guard runs once here,
    # as in the controller's cycle, and replaces an unsafe answer by failsafes.
    result = enforce(topo, snapshot, allocate(topo, snapshot, policy=policy))
    result = _with_stale_meter_alarms(topo, snapshot, result)
    if as_json:
        # One write of the whole text: json.dump would write each of its ~300,000 pieces.
        sys.stdout.write(allocation_json_text(topo, result) + "\n")
        return result.guarded or bool(result.alarms)
    from rich.console import Console
    from rich.table import Table

    out, err = Console(), Console(stderr=True)
    table = Table(title=f"{topo.site}: setpoints ({(policy or topo.policy).value})")
    for col in ("charger", "conn", "A/phase", "kW", "state"):
        table.add_column(col, justify="right" if col in ("A/phase", "kW") else "left")
    for key, amps in result.setpoints.items():
        d = snapshot.demand(key)
        state = ("offline (failsafe)" if key in result.offline else
                 "charging" if amps > 0 else "paused" if d.active else "idle")
        table.add_row(key[0], str(key[1]), f"{amps:.1f}",
                      f"{amps * topo.power_kw_per_amp(topo.chargers[key[0]]):.2f}", state)
    out.print(table)
    groups = Table(title="groups (A per phase)")
    for col in ("group", "L1", "L2", "L3", "limit", "available", "kW"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for g in result.groups.values():
        groups.add_row(g.id, *(f"{a:.1f}" for a in g.current),
                       "—" if math.isinf(g.limit) else f"{g.limit:g}",
                       "/".join(f"{a:.1f}" for a in g.available), f"{g.power_kw:.1f}")
    out.print(groups)
    for alarm in result.alarms:
        err.print(f"[bold red]alarm:[/] {alarm.message}", soft_wrap=True)
    if result.guarded:
        err.print("[bold red]guarded:[/] the safety guard replaced the allocation",
                  soft_wrap=True)
    return result.guarded or bool(result.alarms)


def _with_stale_meter_alarms(topo: Topology, snapshot: Snapshot, result: Allocation
                              ) -> Allocation:
    """A group whose meter the demand file marks stale fails closed; say so, as the live
    controller does (and so exit 1: the answer is not what the limits alone allow)."""
    from dataclasses import replace

    from gridshare.core.decision import Alarm

    extra = tuple(
        Alarm(gid, None, 0.0, 0.0, f"meter {topo.groups[gid].meter}: stale (stale_meters) — "
              f"group {gid} at 0 A headroom")
        for gid, cond in snapshot.groups.items() if cond.meter_stale)
    return replace(result, alarms=result.alarms + extra) if extra else result


def hash_password_cmd(
    password: Annotated[str, typer.Option(
        "--password", metavar="PASSWORD", prompt=True, hide_input=True, confirmation_prompt=True,
        help="The charger's basic-auth password (OCPP 2.0.1: 16-40 characters).")],
) -> None:
    """Print a salted hash of a charger password for the site file's password_hash."""
    from gridshare.adapters.ocpp.auth import hash_password

    if not 8 <= len(password) <= 40:
        from rich.console import Console

        Console(stderr=True).print("[red]a charger password should be 8-40 characters "
                                   "(16-40 for OCPP 2.0.1)[/]", soft_wrap=True)
        raise typer.Exit(2)
    sys.stdout.write(hash_password(password) + "\n")


def register(app: typer.Typer) -> None:
    app.command("check", epilog=CHECK_EPILOG)(check)
    app.command("allocate", epilog=ALLOCATE_EPILOG)(allocate_cmd)
    app.command("hash-password", epilog=HASH_EPILOG)(hash_password_cmd)
