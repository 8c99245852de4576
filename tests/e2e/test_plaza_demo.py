"""``gridshare demo --site plaza`` end to end, as a user runs it: the command starts the
app with its API and dashboard and twenty simulated DC stations, a CURTAIL signal arrives,
the dashboard's API shows the event with its compliance record while it runs, the meters
confirm it, the event ends with a verdict and charging is restored."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
DURATION_S = 40
"""Short run: the event starts 5 s in and lasts 25 s; 10 s are left for the restore."""


async def _line(stream: asyncio.StreamReader, deadline: float) -> str:
    raw = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
    if not raw:
        raise EOFError("the demo closed its output")
    return raw.decode().rstrip("\n")


async def test_plaza_demo_runs_a_dr_event_from_signal_to_verdict_and_restore() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "demo", "--site", "plaza", "--duration",
        str(DURATION_S), "--plain", "--api-port", "0", "--seed", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + DURATION_S + 40
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            base = ""
            while True:
                try:
                    line = await _line(proc.stdout, deadline)
                except EOFError:
                    break
                lines.append(line)
                if match := re.match(r"dashboard: (http://127\.0\.0\.1:\d+/)", line):
                    base = match.group(1)
                    page = await http.get(base)
                    assert page.status_code == 200 and "<html" in page.text.lower()
                if "DR signal plaza-demo-1" in line and base:
                    # The dashboard's source of truth has the event at once, active, with
                    # its compliance record started.
                    answer = await http.get(f"{base}api/v1/dr/events", params={"zone": "Z1"})
                    assert answer.status_code == 200, answer.text
                    seen["during"] = answer.json()
        code = await asyncio.wait_for(proc.wait(), max(1.0, deadline - time.monotonic()))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await proc.stderr.read()).decode()
    text = "\n".join(lines)
    assert code == 0, text + err
    # the event as the API listed it while it ran
    body = seen["during"]
    events = body["events"] if isinstance(body, dict) else body
    [event] = [e for e in events if e["signal_id"] == "plaza-demo-1"]
    assert event["signal_type"] == "CURTAIL" and event["zone_id"] == "Z1"
    assert event["state"] == "active" and event["source"] == "demo"
    assert event["compliance"] is not None
    # the story the terminal told, in order
    def at(marker: str) -> int:
        return next(i for i, line in enumerate(lines) if marker in line)

    story = [at(marker) for marker in (
        "cars charging at 20 DC stations", "DR signal plaza-demo-1: CURTAIL 900 kW",
        "compliance met:", "DR event plaza-demo-1 ended")]
    assert story == sorted(story), text
    assert at("compliance verdict: met") > story[-1] and at("charging restored") > story[-1]
    met = re.search(r"compliance met: .* ([\d.]+) s after the signal", text)
    assert met is not None and float(met.group(1)) <= 15.0, text
    assert re.search(r"verdict: met; charging restored", lines[-1]), text


def test_an_unknown_demo_site_is_refused_as_bad_input() -> None:
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "gridshare", "demo", "--site", "mall"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2, done
    assert "--site must be one of carport, plaza, got 'mall'" in done.stderr
