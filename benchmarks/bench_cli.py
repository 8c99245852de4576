"""Time the ``gridshare`` command as operators run it: whole processes, start to exit.

    python benchmarks/bench_cli.py [--chargers 10000] [--runs 10] [--seed 1] [--src DIR] [--json]

Writes a site file and a demand file in a temporary directory — the four-level site of
``bench_allocation.py`` (root → 10 feeders → 10 panels → 10 circuits → chargers), as
nested YAML the way an installer would write it, and one of its demand snapshots as JSON —
then runs, each ``--runs`` times as a fresh subprocess:

- ``gridshare allocate SITE --demand DEMAND --json`` (goal: ≤ 1.5 s at 10,000 chargers),
- ``gridshare --help`` (goal: ≤ 0.3 s),
- ``python -c pass`` (the interpreter's own start-up, the floor under both),

and reports p50, p99 and max wall time (nearest rank; with 10 runs p99 is the maximum)
and the median CPU time (user + system; steadier than wall time on a shared machine),
plus the import time of ``gridshare.cli`` from ``python -X importtime`` and its five
heaviest imports. The whole command is timed, not a function inside it, because the
interpreter start, the imports and the YAML parse are what the operator waits for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_allocation import build_site, draw_snapshot

from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Topology

GOAL_ALLOCATE_S = 1.5
GOAL_HELP_S = 0.3


# -- the files -------------------------------------------------------------------------------


def site_with_chargers(chargers: int, seed: int) -> Topology:
    """bench_allocation's site, grown until it holds exactly ``chargers`` chargers.

    Its builder counts connectors; about one charger in seven has two, so ask for more
    connectors until the charger count is reached (each step adds at most what is missing,
    so it never overshoots)."""
    connectors = chargers
    while True:
        topology = build_site(connectors, random.Random(seed))
        missing = chargers - len(topology.chargers)
        if missing <= 0:
            return topology
        connectors += missing


def site_yaml(topology: Topology) -> str:
    """The topology as a nested site file, in the block style the README documents."""
    lines = [f"site: {topology.site}", f"voltage: {topology.voltage:g}",
             f"policy: {topology.policy.value}",
             f"rotation_interval: {topology.rotation_interval_s:g}",
             f"resolution: {topology.resolution_a:g}", "groups:"]

    def group(gid: str, indent: str) -> None:
        g = topology.groups[gid]
        lines.append(f"{indent}- id: {gid}")
        inner = indent + "  "
        if g.max_current is not None:
            lines.append(f"{inner}max_current: {g.max_current:g}")
        if g.max_power_kw is not None:
            lines.append(f"{inner}max_power: {g.max_power_kw:g}")
        if g.phases != 3:
            lines.append(f"{inner}phases: {g.phases}")
        if g.groups:
            lines.append(f"{inner}groups:")
            for sub in g.groups:
                group(sub, inner + "  ")
        if g.chargers:
            lines.append(f"{inner}chargers: [{', '.join(g.chargers)}]")

    for root in topology.roots:
        group(root, "  ")
    lines.append("chargers:")
    for c in topology.chargers.values():
        lines += [f"  - id: {c.id}", f"    max_current: {c.max_current:g}",
                  f"    min_current: {c.min_current:g}", f"    phases: {c.phases}"]
        if c.phase is not None:
            lines.append(f"    phase: {c.phase.name}")
        lines += [f"    failsafe_current: {c.failsafe_current:g}",
                  f"    priority: {c.priority}", f"    connectors: {len(c.connectors)}"]
    return "\n".join(lines) + "\n"


def demand_json(snapshot: Snapshot) -> str:
    """The snapshot in the demand-file format of ``gridshare allocate --demand``."""
    connectors = []
    for d in snapshot.connectors.values():
        row: dict[str, object] = {"charger": d.charger, "connector": d.connector,
                                  "active": d.active, "online": d.online}
        for name, value in (("max_current", d.max_current), ("priority", d.priority),
                            ("energy_needed", d.energy_needed_kwh)):
            if value is not None:
                row[name] = value
        for name, when in (("arrival", d.arrival), ("departure", d.departure)):
            if when is not None:
                row[name] = when.isoformat()
        connectors.append(row)
    uncontrolled = {gid: list(c.uncontrolled) for gid, c in snapshot.groups.items()
                    if any(c.uncontrolled)}
    limits = {gid: [{"source": lim.source.value, "max_current": lim.max_current,
                     "max_power": lim.max_power_kw, "reason": lim.reason} for lim in c.limits]
              for gid, c in snapshot.groups.items() if c.limits}
    return json.dumps({"now": snapshot.now.isoformat(), "connectors": connectors,
                       "uncontrolled": uncontrolled, "limits": limits})


# -- measuring -------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest sample with at least q % of samples at or below."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@dataclass
class Timings:
    seconds: list[float]
    """Wall time of each process."""
    cpu_seconds: list[float]
    """User + system CPU time of each process: what the command costs when it has a core
    to itself, so less disturbed than wall time when other work shares the machine."""

    def summary(self) -> dict[str, float | int]:
        return {"runs": len(self.seconds), "p50_s": round(percentile(self.seconds, 50), 3),
                "p99_s": round(percentile(self.seconds, 99), 3),
                "max_s": round(max(self.seconds), 3),
                "cpu_p50_s": round(percentile(self.cpu_seconds, 50), 3)}


def gridshare_command(src: Path | None) -> list[str]:
    """The installed ``gridshare`` script next to this interpreter, as operators run it;
    ``python -m gridshare`` when another checkout's sources are timed."""
    script = Path(sys.executable).with_name("gridshare")
    if src is None and script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gridshare"]


def time_command(argv: Sequence[str], runs: int,
                 env: dict[str, str] | None = None) -> tuple[Timings, str]:
    """Wall time of ``runs`` fresh processes; every one must succeed. Returns the last
    stdout so the caller can check the command did its job, not just exit."""
    seconds = []
    cpu_seconds = []
    stdout = ""
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
        stdout = done.stdout
    return Timings(seconds, cpu_seconds), stdout


IMPORTTIME = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| *(\S+)")


def import_profile(module: str, runs: int, env: dict[str, str] | None) -> dict[str, object]:
    """Median cumulative import time of ``module`` (``python -X importtime``) and, from
    the median run, the five third-party or standard-library packages that cost most."""
    own_root = module.split(".", maxsplit=1)[0]
    samples: list[tuple[int, dict[str, int]]] = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                              capture_output=True, text=True, check=True, env=env)
        total = 0
        packages: dict[str, int] = {}
        for line in done.stderr.splitlines():
            if (m := IMPORTTIME.match(line)) is None:
                continue
            cumulative, name = int(m.group(1)), m.group(2)
            if name == module:
                total = cumulative
            elif "." not in name and name != own_root:
                packages[name] = max(packages.get(name, 0), cumulative)
        samples.append((total, packages))
    samples.sort(key=lambda s: s[0])
    total, packages = samples[len(samples) // 2]
    heaviest = sorted(packages.items(), key=lambda kv: kv[1], reverse=True)[:5]
    return {"module": module, "runs": runs, "median_ms": round(total / 1000, 1),
            "heaviest_ms": {name: round(us / 1000, 1) for name, us in heaviest}}


def run(chargers: int, runs: int, seed: int, keep: Path | None,
        src: Path | None = None) -> dict[str, object]:
    topology = site_with_chargers(chargers, seed)
    snapshot = draw_snapshot(topology, random.Random(seed * 1_000_003), 0)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        where = keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        site = where / "site.yaml"
        demand = where / "demand.json"
        site.write_text(site_yaml(topology), encoding="utf-8")
        demand.write_text(demand_json(snapshot), encoding="utf-8")
        gridshare = gridshare_command(src)
        env = None if src is None else {**os.environ, "PYTHONPATH": str(src.resolve())}
        allocate, out = time_command(
            [*gridshare, "allocate", str(site), "--demand", str(demand), "--json"], runs, env)
        setpoints = len(json.loads(out)["setpoints"])
        if setpoints < len(snapshot.connectors):
            raise SystemExit(f"allocate returned {setpoints} setpoints for "
                             f"{len(snapshot.connectors)} connectors in the demand")
        help_, out = time_command([*gridshare, "--help"], runs, env)
        if "allocate" not in out:
            raise SystemExit("gridshare --help does not list allocate")
        bare, _ = time_command([sys.executable, "-c", "pass"], runs)
        site_bytes = site.stat().st_size
    return {
        "chargers": len(topology.chargers),
        "connectors": sum(len(c.connectors) for c in topology.chargers.values()),
        "groups": len(topology.groups),
        "site_file_mib": round(site_bytes / 2**20, 2),
        "demand_connectors": len(snapshot.connectors),
        "seed": seed,
        "command": gridshare,
        "src": None if src is None else str(src),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "allocate": {**allocate.summary(), "goal_s": GOAL_ALLOCATE_S},
        "help": {**help_.summary(), "goal_s": GOAL_HELP_S},
        "python_startup": bare.summary(),
        "import": import_profile("gridshare.cli", runs, env),
    }


def render(result: dict[str, object]) -> str:
    out = [f"gridshare command, {result['chargers']:,} chargers / {result['connectors']:,} "
           f"connectors / {result['groups']:,} groups ({result['site_file_mib']} MiB of "
           f"YAML), seed {result['seed']}, python {result['python']} on {result['machine']}"
           + (f", gridshare from {result['src']}" if result["src"] else ""),
           f"{'case':<34}{'runs':>5}{'p50 s':>9}{'p99 s':>9}{'max s':>9}{'cpu p50 s':>11}"
           f"{'goal s':>9}"]
    for key, label in (("allocate", "gridshare allocate ... --json"),
                       ("help", "gridshare --help"), ("python_startup", "python -c pass")):
        s = result[key]
        assert isinstance(s, dict)
        goal = f"{s['goal_s']:>9}" if "goal_s" in s else ""
        out.append(f"{label:<34}{s['runs']:>5}{s['p50_s']:>9.3f}{s['p99_s']:>9.3f}"
                   f"{s['max_s']:>9.3f}{s['cpu_p50_s']:>11.3f}{goal}")
    imp = result["import"]
    assert isinstance(imp, dict)
    heaviest = ", ".join(f"{name} {ms} ms" for name, ms in imp["heaviest_ms"].items())
    out.append(f"import gridshare.cli (python -X importtime, median of {imp['runs']}): "
               f"{imp['median_ms']} ms; heaviest: {heaviest}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time `gridshare allocate --json` on a large site and `gridshare --help`, "
                    "as whole processes.")
    parser.add_argument("--chargers", type=int, default=10_000,
                        help="chargers in the four-level site (default 10000)")
    parser.add_argument("--runs", type=int, default=10, help="processes per case (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="site and demand seed (default 1)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the site and demand files here and keep them")
    parser.add_argument("--src", type=Path, default=None,
                        help="time the gridshare in this source folder (e.g. an older "
                             "checkout's src, via PYTHONPATH) instead of the installed one")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    args = parser.parse_args(argv)
    if args.chargers < 1 or args.runs < 1:
        parser.error("--chargers and --runs must be at least 1")
    result = run(args.chargers, args.runs, args.seed, args.keep, args.src)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
