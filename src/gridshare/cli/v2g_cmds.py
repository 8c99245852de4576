"""``gridshare v2g test``: a discharge test of one bidirectional charger of a running
gridshare.

A client of ``POST /api/v1/v2g/test`` (:mod:`gridshare.api.v2g`), like ``gridshare dr
send``: the running gridshare sends the OCPP 2.1 CentralSetpoint, watches the meter values,
restores the normal profile and answers with the report this command prints. httpx is
imported when the command runs.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Annotated, Any

import typer

from gridshare.cli.remote import fail, post_json

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "GRIDSHARE_API_TOKEN"
ANSWER_MARGIN_S = 30.0
"""Seconds the command waits for the answer beyond the test's own duration."""

TEST_EPILOG = """\b
Exit codes:
  0  the test ran and the measured discharge reached 90 % of --power
  1  it ran and never reached 90 %, or a run-time failure: gridshare cannot
     be reached, the charger refused or did not answer (HTTP 502), a wrong
     token (401/403)
  2  bad input: --power or --duration unreadable, an unknown charger (404),
     or a charger that cannot discharge now: not declared v2x, not on
     OCPP 2.1, offline, no car plugged in, or refused by the guard (409)"""

_POWER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(kW|W|MW)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|min|h)\s*$", re.IGNORECASE)
_W_PER = {"w": 1.0, "kw": 1000.0, "mw": 1_000_000.0}
_S_PER = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}

v2g_app = typer.Typer(name="v2g", help="Vehicle-to-grid: test a bidirectional charger.",
                      no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode=None)


def parse_power_w(text: str) -> float:
    """``5kW``, ``5000W``, ``5 kW``, ``7.4kw`` → W (> 0); ValueError otherwise."""
    match = _POWER.match(text)
    if match is None:
        raise ValueError(f"not a power: {text!r} (write 5kW, 5000W or 5 kW)")
    watts = float(match.group(1)) * _W_PER[match.group(2).lower()]
    if not (math.isfinite(watts) and watts > 0):
        raise ValueError(f"must be above 0 W (got {text!r})")
    return watts


def parse_duration_s(text: str) -> float:
    """``60s``, ``2m``, ``1.5 min``, ``1h`` → seconds (> 0); ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (write 60s or 2m)")
    seconds = float(match.group(1)) * _S_PER[match.group(2).lower()]
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"must be above 0 s (got {text!r})")
    return seconds


def test_cmd(
    charger: Annotated[str, typer.Option(
        "--charger", metavar="ID", help="A charger declared v2x: true.",
        show_default=False)],
    power: Annotated[str, typer.Option(
        "--power", metavar="POWER", help="Discharge power: 5kW, 5000W or '5 kW'.",
        show_default=False)],
    duration: Annotated[str, typer.Option(
        "--duration", metavar="TIME", help="How long: 60s or 2m (at most 1h).")] = "60s",
    connector: Annotated[int | None, typer.Option(
        "--connector", metavar="N", min=1, help="EVSE id (default: the first with a car).",
        show_default=False)] = None,
    url: Annotated[str, typer.Option(
        "--url", metavar="URL", help="The running gridshare's API.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", envvar=TOKEN_ENV, show_envvar=True,
        help="An API token (as given to gridshare serve).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json/--no-json", help="Print the report as JSON (also on failure: "
        '{"error", "problems", "exit_code"}).')] = False,
) -> None:
    """Discharge one V2G charger at --power for --duration, then restore its normal
    profile; report requested vs. measured power and the time to reach 90 %, e.g.
    gridshare v2g test --charger v2g-1 --power 5kW --duration 60s"""
    try:
        power_w = parse_power_w(power)
    except ValueError as exc:
        fail("v2g test", 2, "usage", "--power", str(exc), as_json)
    try:
        duration_s = parse_duration_s(duration)
    except ValueError as exc:
        fail("v2g test", 2, "usage", "--duration", str(exc), as_json)
    if duration_s < 1 or duration_s > 3600:
        fail("v2g test", 2, "usage", "--duration", f"must be 1 s to 1 h (got {duration})", as_json)
    body: dict[str, Any] = {"charger": charger, "power_w": power_w, "duration_s": duration_s}
    if connector is not None:
        body["connector"] = connector
    status, answer = post_json("v2g test", url.rstrip("/") + "/api/v1/v2g/test", body, token,
                           duration_s + ANSWER_MARGIN_S, as_json)
    if status == 200 and isinstance(answer, dict):
        _report(answer, as_json)
        raise typer.Exit(0 if answer.get("reached_90") and not answer.get("stopped_early")
                         else 1)
    detail = answer.get("detail") if isinstance(answer, dict) else None
    detail = detail or f"HTTP {status}"
    if status in (404, 409, 422):
        fail("v2g test", 2, "test refused", "--charger", f"{detail} (HTTP {status})", as_json)
    fail("v2g test", 1, "test failed", "", f"{url}: {detail} (HTTP {status})", as_json)


def _kw(watts: float | None) -> str:
    return "-" if watts is None else f"{watts / 1000:.2f}"


def _report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    requested = float(report["requested_w"])
    lines = [f"V2G test {report['charger']}/{report['connector']}: requested "
             f"{_kw(requested)} kW for {report['duration_s']:g} s "
             f"(answer after {report['answer_s']:.2f} s, "
             f"{'accepted' if report['accepted'] else 'outcome unknown'})",
             f"{'t (s)':>8}  {'requested kW':>12}  {'measured kW':>11}  {'SoC %':>6}"]
    asked = report.get("asked_w")
    if asked is not None and float(asked) != requested:
        lines.insert(1, f"asked {_kw(float(asked))} kW: clipped to what the car offers "
                        f"(maxDischargePower {_kw(report.get('ev_max_discharge_w'))} kW)")
    for s in report["samples"]:
        soc = "-" if s.get("soc_percent") is None else f"{s['soc_percent']:.1f}"
        lines.append(f"{s['t_s']:>8.2f}  {_kw(s['requested_w']):>12}  "
                     f"{_kw(s['measured_w']):>11}  {soc:>6}")
    reached = report.get("time_to_90_s")
    lines.append("time to 90 %: " + (f"{reached:.2f} s" if reached is not None else
                                     "not reached") + f"; peak {_kw(report.get('peak_w'))} kW")
    if report.get("stopped_early"):
        lines.append(f"stopped early: {report['stopped_early']}")
    lines.append("normal profile restored" if report.get("restored") else
                 f"normal profile NOT confirmed restored ({report.get('restore_detail')})")
    sys.stdout.write("\n".join(lines) + "\n")


v2g_app.command("test", epilog=TEST_EPILOG)(test_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(v2g_app, name="v2g")


__all__ = ["parse_duration_s", "parse_power_w", "register", "test_cmd"]
