"""``gridshare simulate``: run a scenario faster than real time and write a report.

The simulation (websockets, the controller, matplotlib) is imported inside the command:
``gridshare --help`` pays for none of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gridshare.cli.core_cmds import DEFAULT_MAX_SIZE, refuse_large, report_problems

MaxSizeOpt = Annotated[int, typer.Option(
    "--max-size", min=1, metavar="BYTES",
    help="Refuse scenario and site files larger than this, before reading them.")]
POLICIES = ("site", "equal", "priority", "proportional", "deadline")

SIMULATE_EPILOG = """\b
Exit codes:
  0  every run finished and no group's load exceeded its limit
  1  a run-time failure (a simulated charger could not connect), or a
     group's measured load exceeded its limit (the report is still written)
  2  bad input: usage, or a scenario or site file that cannot be read or is
     invalid"""


def simulate_cmd(
    scenario: Annotated[Path, typer.Argument(
        help="Scenario YAML file (a site and the load put on it).", show_default=False,
        metavar="SCENARIO")],
    hours: Annotated[float | None, typer.Option(
        "--hours", min=0.01, max=24 * 31, metavar="H",
        help="Simulated hours (default: the scenario's hours).")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", metavar="DIR", help="Write plots, summary.json, summary.csv and "
        "index.html into this folder.")] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", metavar="P[,P...]", help="Policies to compare on the same load, "
        "comma-separated: site|equal|priority|proportional|deadline (default: site, the "
        "site file's own).")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", metavar="N", help="Seed of the cars (default: the scenario's seed).")
    ] = None,
    as_json: Annotated[bool, typer.Option(
        "--json/--no-json", help="Print the summary as JSON on stdout (also on failure: "
        '{"error", "problems", "exit_code"}).')] = False,
    max_size: MaxSizeOpt = DEFAULT_MAX_SIZE,
) -> None:
    """Run a site faster than real time (the real central system and controller, simulated
    chargers and cars over OCPP, on a virtual clock) and report load against limits,
    energy per car and limit violations for each policy."""
    policies = _policies(policy, as_json)
    refuse_large(scenario, max_size, as_json=as_json, error="invalid scenario file")
    from gridshare.config import ConfigError
    from gridshare.simulate.scenario import load_scenario

    try:
        loaded = load_scenario(scenario, max_size)
    except ConfigError as exc:
        report_problems(scenario, exc, as_json=as_json, error="invalid scenario file")
    import logging

    # The controller's alarms go into the report (summary.json "alarm_messages"), not onto
    # the terminal, where they would scroll the progress bar away.
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    from gridshare.simulate.cli_run import simulate

    code = simulate(loaded, policies, hours=hours, seed=seed, report=report,
                    as_json=as_json)
    raise typer.Exit(code)


def _policies(text: str | None, as_json: bool) -> list[str]:
    if text is None:
        return ["site"]
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names or len(set(names)) != len(names):
        message = (f"unknown policy {bad[0]!r}" if bad else "a policy is named twice"
                   if names else "no policy given") + f"; choose from {'|'.join(POLICIES)}"
        sys.stderr.write(f"Error: --policy: {message}\n")
        if as_json:
            sys.stdout.write(json.dumps({"error": "usage", "problems": [{
                "file": None, "line": None, "path": "policy", "message": message}],
                "more": 0, "exit_code": 2}, indent=2) + "\n")
        raise typer.Exit(2)
    return names


def register(app: typer.Typer) -> None:
    app.command("simulate", epilog=SIMULATE_EPILOG)(simulate_cmd)
