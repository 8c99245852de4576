"""The report folder of ``gridshare simulate``: plots, summary.json, summary.csv, index.html.

One column per policy run on the same seeded load:

- ``load.png``: each group's load (its highest phase) against its limit in force over time,
  scheduled limit changes shaded;
- ``cars.png``: energy delivered to each car against what it needed;
- ``events.png`` (when the scenario changes a limit): each change, an hour either side, and
  how the group's load followed it;
- ``summary.json`` / ``summary.csv``: energy delivered, unmet demand, peaks, limit
  violations (time and amount above any group's limit), cars left unsatisfied;
- ``index.html``: the table and the plots.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

from gridshare.simulate.runner import RunResult

PLOTS = ("load.png", "cars.png", "events.png")


def summary_doc(name: str, source: str, seed: int, hours: float,
                runs: list[RunResult], wall_s: float) -> dict[str, Any]:
    return {"scenario": name, "file": source, "seed": seed, "hours": hours,
            "policies": [r.policy for r in runs],
            "runs": {r.policy: r.summary() for r in runs},
            "cars": {r.policy: [{"id": c.id, "charger": c.charger, "connector": c.connector,
                                 "arrival": c.arrival, "departure": c.departure,
                                 "needed_kwh": round(c.needed_kwh, 3),
                                 "delivered_kwh": round(c.delivered_kwh, 3),
                                 "left": c.left, "satisfied": c.satisfied}
                                for c in r.cars] for r in runs},
            "wall_s": round(wall_s, 3)}


ROWS: tuple[tuple[str, str], ...] = (
    ("energy_delivered_kwh", "energy delivered (kWh)"),
    ("energy_needed_kwh", "energy needed by the cars that came (kWh)"),
    ("unmet_demand_kwh", "unmet demand of cars that left (kWh)"),
    ("unmet_at_end_kwh", "still needed by cars plugged in at the end (kWh)"),
    ("cars", "cars plugged in"),
    ("cars_left_unsatisfied", "cars that left unsatisfied"),
    ("cars_turned_away", "cars turned away (no free connector)"),
    ("violation_seconds_total", "limit violations, all groups (s)"),
)


def table_rows(runs: list[RunResult]) -> list[tuple[str, list[str]]]:
    """(label, one cell per policy) for the summary table, CSV and HTML alike."""
    sums = [r.summary() for r in runs]
    rows = [(label, [f"{s[key]:g}" if isinstance(s[key], float) else str(s[key])
                     for s in sums]) for key, label in ROWS]
    for gid in runs[0].groups:
        rows.append((f"peak {gid} (A, highest phase)", [f"{s['peak_a'][gid]:g}" for s in sums]))
    for gid in runs[0].groups:
        rows.append((f"violation {gid} (s / max A / A·s)",
                     ["{seconds:g} / {max_a:g} / {ampere_seconds:g}".format(
                         **s["limit_violations"][gid]) for s in sums]))
    return rows


def write_report(folder: Path, doc: dict[str, Any], runs: list[RunResult]) -> list[Path]:
    """Write every file of the report into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    path = folder / "summary.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    written.append(path)
    rows = table_rows(runs)
    path = folder / "summary.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["metric", *[r.policy for r in runs]])
        for label, cells in rows:
            out.writerow([label, *cells])
    written.append(path)
    plots = _plots(folder, runs)
    written.extend(plots)
    path = folder / "index.html"
    path.write_text(_html(doc, runs, rows, [p.name for p in plots]), encoding="utf-8")
    written.append(path)
    return written


def _plots(folder: Path, runs: list[RunResult]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    groups = list(runs[0].groups)
    cols = len(runs)
    fig, axes = plt.subplots(len(groups), cols, figsize=(6 * cols, 2.4 * len(groups) + 0.6),
                             squeeze=False, sharex=True)
    for j, run in enumerate(runs):
        for i, gid in enumerate(groups):
            ax = axes[i][j]
            trace = run.groups[gid]
            ax.plot(trace.t_h, trace.load_a, lw=1, color="tab:blue", label="load")
            limits = [v if v is not None else float("nan") for v in trace.limit_a]
            ax.step(trace.t_h, limits, where="post", lw=1.2, color="tab:red", label="limit")
            for event in run.limit_events:
                if event["group"] == gid:
                    end = event["until_h"] if event["until_h"] is not None else run.hours
                    ax.axvspan(event["at_h"], end, color="tab:orange", alpha=0.15)
            ax.set_ylabel(f"{gid} (A)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"policy: {run.policy}")
                ax.legend(loc="upper right", fontsize=7)
        axes[-1][j].set_xlabel("hours")
    out.append(_save(fig, folder / "load.png",
                     "load (highest phase) against the limit in force, per group"))

    fig, axes = plt.subplots(1, cols, figsize=(6 * cols, 4), squeeze=False, sharey=True)
    for j, run in enumerate(runs):
        ax = axes[0][j]
        x = range(len(run.cars))
        ax.bar(x, [c.needed_kwh for c in run.cars], color="lightgray", label="needed")
        ax.bar(x, [c.delivered_kwh for c in run.cars], width=0.5,
               color=["tab:green" if c.satisfied else "tab:red" for c in run.cars],
               label="delivered")
        ax.set_title(f"policy: {run.policy}")
        ax.set_xlabel("car (in order of arrival)")
        ax.grid(alpha=0.3, axis="y")
        if j == 0:
            ax.set_ylabel("kWh")
            ax.legend(fontsize=7)
    out.append(_save(fig, folder / "cars.png",
                     "energy delivered per car against its need (red: short of it)"))

    events = runs[0].limit_events
    if events:
        fig, axes = plt.subplots(len(events), cols, figsize=(6 * cols, 2.8 * len(events) + 0.6),
                                 squeeze=False)
        for j, run in enumerate(runs):
            for i, event in enumerate(run.limit_events):
                ax = axes[i][j]
                trace = run.groups[event["group"]]
                end = event["until_h"] if event["until_h"] is not None else run.hours
                lo, hi = event["at_h"] - 1, end + 1
                keep = [k for k, t in enumerate(trace.t_h) if lo <= t <= hi]
                ax.plot([trace.t_h[k] for k in keep], [trace.load_a[k] for k in keep],
                        lw=1, color="tab:blue", label="load")
                ax.step([trace.t_h[k] for k in keep],
                        [trace.limit_a[k] if trace.limit_a[k] is not None else float("nan")
                         for k in keep], where="post", color="tab:red", lw=1.2, label="limit")
                ax.axvspan(event["at_h"], end, color="tab:orange", alpha=0.15,
                           label="scheduled change")
                ax.axvline(event["at_h"] - event["notice_s"] / 3600, color="tab:gray",
                           ls=":", lw=1, label="notice")
                ax.set_title(f"{run.policy}: {event['group']} — {event['reason']}", fontsize=9)
                ax.set_ylabel("A")
                ax.set_ylim(bottom=0)
                ax.grid(alpha=0.3)
                if i == 0 and j == 0:
                    ax.legend(fontsize=7)
            axes[-1][j].set_xlabel("hours")
        out.append(_save(fig, folder / "events.png",
                         "scheduled limit changes and the load's response"))
    return out


def _save(fig: Any, path: Path, title: str) -> Path:
    """Title, lay out, write and release one figure."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _html(doc: dict[str, Any], runs: list[RunResult], rows: list[tuple[str, list[str]]],
          plots: list[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(r.policy)}</th>" for r in runs)
    body = "\n".join(
        f"<tr><td>{esc(label)}</td>" + "".join(
            f'<td class="{_cls(label, c)}">{esc(c)}</td>' for c in cells) + "</tr>"
        for label, cells in rows)
    images = "\n".join(f'<figure><img src="{esc(p)}" alt="{esc(p)}"></figure>' for p in plots)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gridshare simulate: {esc(doc['scenario'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
td.bad {{ background: #fdd; }} td.ok {{ background: #dfd; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{esc(doc['scenario'])}</h1>
<p>Scenario file <code>{esc(str(doc['file']))}</code>, {doc['hours']:g} simulated hours,
seed {doc['seed']}; the same cars and loads under each policy. Computed in
{doc['wall_s']:g} s of wall time.</p>
<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>
{body}
</tbody></table>
{images}
<p>Files: <a href="summary.json">summary.json</a>, <a href="summary.csv">summary.csv</a>.</p>
</body></html>
"""


def _cls(label: str, cell: str) -> str:
    if label.startswith("limit violations"):
        return "ok" if cell == "0" else "bad"
    return ""
