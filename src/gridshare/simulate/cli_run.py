"""What ``gridshare simulate`` does once its scenario is read: run each policy on a
virtual-time loop with a progress bar, write the report, print the summary."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from gridshare.simulate.report import summary_doc, table_rows, write_report
from gridshare.simulate.runner import RunResult, run_scenario
from gridshare.simulate.scenario import Scenario
from gridshare.simulate.vloop import VirtualTimeLoop


async def run_policies(scenario: Scenario, policies: list[str], *, hours: float,
                       seed: int | None, progress: Any = None) -> list[RunResult]:
    """Each policy in turn on the same seeded load (progress: a rich Progress or None)."""
    runs = []
    for name in policies:
        task = None
        if progress is not None:
            task = progress.add_task(f"{name}", total=hours)

        def step(elapsed_s: float, task: Any = task) -> None:
            if progress is not None:
                progress.update(task, completed=min(hours, elapsed_s / 3600))

        runs.append(await run_scenario(scenario, policy=name, hours=hours, seed=seed,
                                       progress=step))
        if progress is not None:
            progress.update(task, completed=hours)
    return runs


def run_blocking(scenario: Scenario, policies: list[str], *, hours: float,
                 seed: int | None = None, progress: Any = None) -> list[RunResult]:
    """:func:`run_policies` on a fresh :class:`VirtualTimeLoop` (blocks until done)."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(run_policies(scenario, policies, hours=hours, seed=seed,
                                       progress=progress))


def simulate(scenario: Scenario, policies: list[str], *, hours: float | None,
             seed: int | None, report: Path | None, as_json: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    hours = scenario.spec.hours if hours is None else hours
    err = Console(stderr=True, soft_wrap=True)
    wall0 = time.perf_counter()
    try:
        if err.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(),
                       TextColumn("{task.completed:.1f}/{task.total:g} h simulated"),
                       TimeElapsedColumn())
            with Progress(*columns, console=err, transient=False) as progress:
                runs = run_blocking(scenario, policies, hours=hours, seed=seed,
                                    progress=progress)
        else:
            runs = run_blocking(scenario, policies, hours=hours, seed=seed)
    except (RuntimeError, OSError) as exc:
        err.print(f"[red]simulation failed:[/] {exc}")
        if as_json:
            sys.stdout.write(json.dumps({"error": "simulation failed", "problems": [
                {"file": None, "line": None, "path": "", "message": str(exc)}], "more": 0,
                "exit_code": 1}, indent=2) + "\n")
        return 1
    wall_s = time.perf_counter() - wall0
    used_seed = scenario.spec.seed if seed is None else seed
    doc = summary_doc(scenario.spec.name, scenario.source, used_seed, hours, runs, wall_s)
    if report is not None:
        write_report(report, doc, runs)
    violations = sum(r.summary()["violation_seconds_total"] for r in runs)
    if as_json:
        out = dict(doc)
        out.pop("cars")
        out["report"] = str(report) if report is not None else None
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        from rich.table import Table

        table = Table(title=f"{scenario.spec.name}: {hours:g} h simulated in {wall_s:.1f} s",
                      title_justify="left")
        table.add_column("metric")
        for r in runs:
            table.add_column(r.policy, justify="right")
        for label, cells in table_rows(runs):
            table.add_row(label, *cells)
        out_console = Console(soft_wrap=True)
        out_console.print(table)
        if report is not None:
            out_console.print(f"report: {report / 'index.html'}")
    if violations > 0:
        err.print(f"[red]a group's load exceeded its limit for {violations:g} s in all[/] "
                  "(see limit violations)")
        return 1
    return 0
