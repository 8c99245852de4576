"""``gridshare simulate``: the virtual-time loop, scenario files, and short runs of the real
control path (CSMS + controller from build_app, simulated chargers over OCPP websockets)
that write a report whose numbers match what the simulated chargers' meters delivered."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridshare.cli import app
from gridshare.config import ConfigError
from gridshare.simulate.cli_run import run_blocking
from gridshare.simulate.scenario import load_scenario, parse_scenario
from gridshare.simulate.vloop import VirtualClock, VirtualTimeLoop

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "src" / "gridshare" / "examples" / "scenarios"
CARPORT = ROOT / "src" / "gridshare" / "examples" / "carport.yaml"
PNG = b"\x89PNG\r\n\x1a\n"

# The car park in its morning rush: the shipped scenario's site and cars, from 06:30.
CARPARK_MORNING = f"""\
name: carpark-morning
site: {CARPORT}
start: 2026-01-05T06:30:00Z
hours: 2
seed: 1
cars:
  arrivals:
    - {{from: "06:30", to: "09:30", per_hour: 5}}
  energy_kwh: [8, 45]
  dwell_hours: [2, 10]
  max_current: [16, 32]
  three_phase_share: 0.7
"""


def _runner() -> CliRunner:
    return CliRunner()


# --- the virtual-time loop -----------------------------------------------------------------


def test_the_virtual_loop_jumps_over_idle_time_while_sockets_stay_real() -> None:
    async def main() -> tuple[float, list[bytes], float]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.readline():
                await asyncio.sleep(30)  # the peer takes its (virtual) time to answer
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = []
        for n in range(5):
            writer.write(f"ping {n}\n".encode())
            await writer.drain()
            async with asyncio.timeout(31):  # a timeout on the same virtual clock
                got.append(await reader.readline())
            await asyncio.sleep(3600)
        writer.close()
        server.close()
        await server.wait_closed()
        return loop.time() - t0, got, await asyncio.to_thread(lambda: 42.0)

    wall = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        elapsed, got, from_thread = runner.run(main())
    assert got == [f"ping {n}\n".encode() for n in range(5)]
    assert elapsed == pytest.approx(5 * 3630, abs=1e-6)  # virtual seconds, exactly
    assert time.perf_counter() - wall < 5  # five hours in a moment
    assert from_thread == 42.0


def test_the_virtual_clock_reads_the_loop() -> None:
    from datetime import UTC, datetime

    async def main() -> tuple[datetime, datetime, float]:
        clock = VirtualClock(datetime(2026, 1, 5, 6, 30, tzinfo=UTC))
        before = clock.now()
        await clock.sleep(90)
        return before, clock.now(), clock.elapsed()

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        before, after, elapsed = runner.run(main())
    assert before == datetime(2026, 1, 5, 6, 30, tzinfo=UTC)
    assert (after - before).total_seconds() == pytest.approx(90)
    assert elapsed == pytest.approx(90)


# --- scenario files ------------------------------------------------------------------------


def test_every_shipped_scenario_loads() -> None:
    names = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    assert names == ["carpark.yaml", "dc-plaza.yaml", "home.yaml"]
    for path in SCENARIOS.glob("*.yaml"):
        scenario = load_scenario(path)
        assert scenario.site.topology.chargers
    carpark = load_scenario(SCENARIOS / "carpark.yaml")
    assert len(carpark.site.topology.chargers) == 20
    assert carpark.site.topology.groups["service"].max_current == 100
    plaza = load_scenario(SCENARIOS / "dc-plaza.yaml")
    assert plaza.spec.limits and plaza.spec.limits[0].max_current == 200


BAD = """\
name: bad
site: {site}
hours: 2
cars:
  arrivals:
    - {{from: "25:00", to: "09:00", per_hour: 3}}
  energy_kwh: [40, 5]
  list:
    - {{at: "08:00", energy_kwh: 10, charger: cp-99}}
loads:
  - {{id: fridge, group: nowhere, current: 1}}
limits:
  - {{group: service, at: 3}}
bogus: 1
"""


def test_a_bad_scenario_names_every_problem_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.format(site=CARPORT), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    found = {(i.line, i.path) for i in err.value.issues}
    assert (6, "cars.arrivals[0]") in found  # "25:00"
    assert (7, "cars.energy_kwh") in found
    assert (13, "limits[0]") in found  # neither max_current nor max_power
    assert (14, "bogus") in found
    assert all(i.source == str(path) for i in err.value.issues)


def test_cross_checks_against_the_site_name_their_lines(tmp_path: Path) -> None:
    text = BAD.format(site=CARPORT)
    text = text.replace('"25:00"', '"06:00"').replace("[40, 5]", "[5, 40]")
    text = text.replace("at: 3}", "at: 3, max_current: 50}").replace("bogus: 1\n", "")
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    messages = {(i.line, i.path): i.message for i in err.value.issues}
    assert "unknown charger 'cp-99'" in messages[(9, "cars.list[0].charger")]
    assert "unknown group 'nowhere'" in messages[(11, "loads[0].group")]


def test_an_inline_site_reports_its_problems_at_the_scenario_s_lines() -> None:
    text = """\
name: inline
site:
  site: home
  groups:
    - {id: house, max_current: -5, chargers: [wb-1, wb-2]}
  chargers:
    - {id: wb-1, max_current: 16}
"""
    with pytest.raises(ConfigError) as err:
        parse_scenario(text, "s.yaml")
    lines = {(i.line, i.path) for i in err.value.issues}
    assert (5, "site.groups[0].max_current") in lines
    assert (5, "site.groups[0].chargers[1]") in lines


def test_simulate_refuses_a_bad_scenario_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.format(site=CARPORT), encoding="utf-8")
    done = _runner().invoke(app, ["simulate", str(path), "--json"])
    assert done.exit_code == 2
    doc = json.loads(done.stdout)
    assert doc["error"] == "invalid scenario file"
    assert {p["line"] for p in doc["problems"]} >= {6, 7, 13, 14}
    assert re.search(rf"{re.escape(str(path))}:6: cars\.arrivals\[0\]", done.stderr)
    done = _runner().invoke(app, ["simulate", str(path), "--policy", "fastest"])
    assert done.exit_code == 2
    assert "unknown policy 'fastest'" in done.stderr


# --- short runs of the real control path ---------------------------------------------------


@pytest.fixture(scope="module")
def two_policy_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("sim")
    scenario = folder / "carpark-morning.yaml"
    scenario.write_text(CARPARK_MORNING, encoding="utf-8")
    out = folder / "report"
    done = _runner().invoke(app, ["simulate", str(scenario), "--hours", "2", "--report",
                                  str(out), "--policy", "equal,deadline", "--json"])
    return out, done


def test_the_report_folder_has_its_plots_table_and_page(two_policy_report: tuple) -> None:
    out, done = two_policy_report
    assert done.exit_code == 0, (done.stdout, done.stderr)
    for name in ("load.png", "cars.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG)
        assert len(data) > 10_000
    page = (out / "index.html").read_text(encoding="utf-8")
    assert 'src="load.png"' in page and 'src="cars.png"' in page
    assert "<th>equal</th><th>deadline</th>" in page
    assert "summary.json" in page
    rows = list(csv.reader((out / "summary.csv").open(encoding="utf-8")))
    assert rows[0] == ["metric", "equal", "deadline"]
    assert all(len(r) == 3 for r in rows)


def test_the_summary_matches_the_chargers_meters_and_shows_no_violation(
        two_policy_report: tuple) -> None:
    out, done = two_policy_report
    doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    printed = json.loads(done.stdout)
    assert printed["runs"] == doc["runs"]
    assert doc["policies"] == ["equal", "deadline"]
    for policy in ("equal", "deadline"):
        run = doc["runs"][policy]
        cars = doc["cars"][policy]
        assert run["cars"] == len(cars) > 5
        # the chargers' energy registers and the cars' batteries, counted apart, agree
        delivered = sum(c["delivered_kwh"] for c in cars)
        assert run["energy_delivered_kwh"] == pytest.approx(delivered, abs=0.001 * len(cars))
        assert run["energy_delivered_kwh"] > 20
        assert run["violation_seconds_total"] == 0
        assert all(v["seconds"] == 0 and v["max_a"] == 0
                   for v in run["limit_violations"].values())
        assert run["peak_a"]["service"] <= 100
        # setpoints came from the controller over OCPP, and every one was answered: no
        # command timed out while the virtual clock jumped ahead
        assert run["controller"]["setpoint_accepted"] > 0
        assert run["ocpp"]["profile"] > 0
        assert {k for k in run["controller"] if k.startswith(("setpoint_", "failsafe_"))} == {
            "setpoint_accepted", "failsafe_accepted"}
    # the same cars under both policies
    assert [c["id"] for c in doc["cars"]["equal"]] == [c["id"] for c in doc["cars"]["deadline"]]
    assert [c["needed_kwh"] for c in doc["cars"]["equal"]] == [
        c["needed_kwh"] for c in doc["cars"]["deadline"]]


def test_a_scheduled_limit_cut_is_followed_and_plotted(tmp_path: Path) -> None:
    text = CARPARK_MORNING + """\
limits:
  - {group: service, at: "07:30", until: "08:00", max_current: 50, notice_s: 60,
     reason: test cut}
"""
    scenario = parse_scenario(text, "cut.yaml")
    (run,) = run_blocking(scenario, ["equal"], hours=1.75)
    trace = run.groups["service"]
    during = [load for t, load in zip(trace.t_h, trace.load_a, strict=True) if 1.02 <= t < 1.5]
    assert during and max(during) <= 50 + 1e-6
    assert max(trace.load_a) > 50  # it did bind
    assert run.summary()["violation_seconds_total"] == 0
    from gridshare.simulate.report import summary_doc, write_report

    written = write_report(tmp_path, summary_doc("cut", "cut.yaml", 1, 1.75, [run], 1.0), [run])
    assert (tmp_path / "events.png").read_bytes().startswith(PNG)
    assert tmp_path / "events.png" in written
    assert 'src="events.png"' in (tmp_path / "index.html").read_text(encoding="utf-8")


STEP_LOAD = """\
name: step
start: 2026-01-05T18:00:00Z
hours: 0.5
meter_feed_interval: 2
meter_interval: 10
site:
  site: house
  groups:
    - {id: house, max_current: 25, phases: 3, meter: house-meter, chargers: [wb-1]}
  chargers:
    - {id: wb-1, max_current: 16, phases: 3, failsafe_current: 0}
  meters:
    - {id: house-meter, source: ocpp, charger: house-meter, max_age: 30}
cars:
  list:
    - {at: "18:00", energy_kwh: 30, departure: "23:00", max_current: 16, phases: 3}
loads:
  # an oven switching on at once at 18:10 for 10 minutes: nobody can see it coming
  - {id: oven, group: house, current: 14, phases: 3,
     cycle: {on_minutes: 10, off_minutes: 1430, offset_minutes: 1090}}
"""


def test_a_sudden_uncontrolled_load_is_counted_as_a_violation_and_exits_1(
        tmp_path: Path) -> None:
    """Violations are measured, not assumed: a 14 A step the meter reports only after it
    happened puts the house above its limit until the car has followed the cut."""
    path = tmp_path / "step.yaml"
    path.write_text(STEP_LOAD, encoding="utf-8")
    done = _runner().invoke(app, ["simulate", str(path), "--json"])
    assert done.exit_code == 1, (done.stdout, done.stderr)
    run = json.loads(done.stdout)["runs"]["site"]
    house = run["limit_violations"]["house"]
    assert 0 < house["seconds"] <= 30  # the meter's 2 s, an allocation, the car's lag
    assert 4 < house["max_a"] <= 5.01  # 16 + 14 + base 0 against 25 A
    assert 1 / 6 - 0.01 <= house["max_at_h"] <= 1 / 6 + 0.01  # at 18:10
    assert "exceeded its limit" in done.stderr
