"""``gridshare dr-plan``: the issue's command line and JSON shape, exit codes, bad files.

The in-process runner checks the words; one test runs the installed command as a process,
so that what HiGHS writes from C++ (its banner) is known not to reach stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridshare.cli import app
from gridshare.cli.plan_cmds import parse_duration, parse_power

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "src/gridshare/examples/buildings/resources.yaml"
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_issue_command_prints_the_contract_json_and_the_shortfall() -> None:
    code, out, _ = run("dr-plan", str(EXAMPLE), "--reduce", "5235", "--duration", "1h", "--json")
    data = json.loads(out)
    assert code == 1  # not met: the most that can be had, and by how much it falls short
    assert data == {
        "requested": 5235.0, "achieved": 4050.0, "shortfall": 1185.0,
        "resources": [
            {"id": "F1", "before": 300.0, "after": 0.0},
            {"id": "V2", "before": 1450.0, "after": 0.0},
            {"id": "R1", "before": 300.0, "after": 300.0},
            {"id": "EV1", "before": 0.0, "after": -2300.0, "energy_after": 10700.0},
        ]}


def test_a_reduction_that_can_be_met_exits_0_and_units_are_read() -> None:
    code, out, _ = run("dr-plan", str(EXAMPLE), "--reduce", "2.7kW", "--duration", "2h30m",
                       "--json")
    data = json.loads(out)
    assert code == 0
    assert data["achieved"] == 2700 and data["shortfall"] == 0
    rows = {r["id"]: r for r in data["resources"]}
    assert rows["EV1"]["after"] == -2300 and rows["EV1"]["energy_after"] == 13000 - 2300 * 2.5
    assert rows["F1"]["after"] == 0 and rows["V2"]["after"] == 1350


def test_the_table_for_people() -> None:
    code, out, _ = run("dr-plan", str(EXAMPLE), "--reduce", "2000", "--duration", "30m")
    assert code == 0
    assert "EV1" in out and "Induction motor" in out
    assert "requested 2000 W, achieved 2000 W" in out
    code, out, _ = run("dr-plan", str(EXAMPLE), "--reduce", "9000", "--duration", "30m")
    assert code == 1 and "short by" in out


@pytest.mark.parametrize(("text", "hours"), [
    ("1h", 1.0), ("30m", 0.5), ("90s", 0.025), ("2h30m", 2.5), ("1h0m30s", 1 + 30 / 3600)])
def test_durations(text: str, hours: float) -> None:
    assert parse_duration(text) == pytest.approx(hours)


@pytest.mark.parametrize(("text", "watts"), [
    ("5235", 5235.0), ("5.2kW", 5200.0), ("5235W", 5235.0), ("0.5 MW", 500_000.0)])
def test_powers(text: str, watts: float) -> None:
    assert parse_power(text) == pytest.approx(watts)


@pytest.mark.parametrize(("option", "value"), [
    ("--duration", "1"), ("--duration", "0h"), ("--duration", "soon"),
    ("--reduce", "-5"), ("--reduce", "5 kVA"), ("--reduce", "lots")])
def test_bad_options_are_usage_errors_with_a_json_object(option: str, value: str) -> None:
    args = {"--reduce": "100", "--duration": "1h", option: value}
    code, out, err = run("dr-plan", str(EXAMPLE), *(x for kv in args.items() for x in kv),
                         "--json")
    assert code == 2
    assert option in err
    data = json.loads(out)
    assert data["error"] == "usage" and data["problems"][0]["path"] == option


BAD = """\
resources:
  - {id: F1, type: on_off, priority: 19, power: 300}
  - {id: F1, type: on_off, priority: 3, power: 10}
  - {id: V2, type: variable, priority: 17, power: 100, min_power: 200}
  - {id: X, type: heater, power: 5}
  - {id: EV1, type: v2g, charge_priority: 1, discharge_priority: 2, power: 0,
     energy: 20000, capacity: 16000, max_charge: 2300, max_discharge: 2300}
  - {id: L, type: on_off, power: -3, priority: 1.5, colour: red}
  - {id: B, type: storage, charge_priority: 1, power: 0, energy: 1, capacity: 2,
     max_charge: 1, max_discharge: 1}
"""


def test_a_bad_file_names_every_problem_with_its_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "resources.yaml"
    path.write_text(BAD)
    code, out, err = run("dr-plan", str(path), "--reduce", "100", "--duration", "1h", "--json")
    assert code == 2
    data = json.loads(out)
    assert data["error"] == "invalid resources file"
    got = {(p["line"], p["path"]) for p in data["problems"]}
    assert got == {
        (3, "resources[1].id"),
        (4, "resources[2].min_power"),
        (5, "resources[3].type"),
        (7, "resources[4].energy"),
        (8, "resources[5].power"),
        (8, "resources[5].priority"),
        (8, "resources[5].colour"),
        (9, "resources[6].discharge_priority"),
    }
    messages = {p["path"]: p["message"] for p in data["problems"]}
    assert "duplicate id 'F1' (first at resources[0])" in messages["resources[1].id"]
    assert "min_power 200 W is above power 100 W" in messages["resources[2].min_power"]
    assert "on_off, variable, fixed, v2g, storage" in messages["resources[3].type"]
    assert "outside [min_energy, capacity] = [0, 16000] Wh" in messages["resources[4].energy"]
    assert messages["resources[6].discharge_priority"] == "missing"
    assert f"{path}:3: resources[1].id: duplicate id" in err


@pytest.mark.parametrize(("text", "message"), [
    ("resources: []\n", "expected a non-empty list of resources"),
    ("- 1\n- 2\n", "expected a mapping with resources"),
    ("resources: [\n", "not valid YAML"),
    ("resources:\n  - {id: A, type: fixed, power: 1}\nresources: []\n", "duplicate key"),
    ("resources:\n  - 7\n", "expected a mapping with id, type and power"),
    ("resource: []\n", "unknown key"),
])
def test_files_that_are_not_resources(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    code, _, err = run("dr-plan", str(path), "--reduce", "100", "--duration", "1h")
    assert code == 2
    assert message in err


def test_a_missing_file(tmp_path: Path) -> None:
    code, _, err = run("dr-plan", str(tmp_path / "none.yaml"), "--reduce", "1", "--duration",
                       "1h")
    assert code == 2 and "cannot read" in err


def test_as_a_process_stdout_is_one_json_document() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "gridshare", "dr-plan", str(EXAMPLE), "--reduce", "5235",
         "--duration", "1h", "--json"], capture_output=True, text=True, env=env, timeout=60,
        check=False)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["shortfall"] == 1185.0


# --- presence: storage there for part of the day --------------------------------------------

PRESENCE = """resources:
  - {id: F1, type: on_off, priority: 19, power: 300}
  - {id: EV1, type: v2g, charge_priority: 14, discharge_priority: 20, power: 0,
     energy: 13000, capacity: 16000, max_charge: 2300, max_discharge: 2300,
     present_from: "17:30", present_until: "08:00"}
  - {id: EV2, type: v2g, charge_priority: 14, discharge_priority: 20, power: 0,
     energy: 13000, capacity: 16000, max_charge: 2300, max_discharge: 2300,
     present_from: "2026-11-30T09:00:00+00:00", present_until: "2026-11-30T17:00:00+00:00"}
"""


def test_present_hours_of_daily_and_absolute_stays() -> None:
    from datetime import UTC, datetime, time

    from gridshare.cli.plan_cmds import present_hours

    start = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
    # overnight 17:30-08:00: the first half hour of a 1 h event is without it
    assert present_hours(start, 1.0, time(17, 30), time(8, 0)) == pytest.approx(0.5)
    # the same stay, an event at 02:00 (it came the evening before)
    night = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert present_hours(night, 1.0, time(17, 30), time(8, 0)) == pytest.approx(1.0)
    assert present_hours(start, 1.0, time(9, 0), time(16, 0)) == 0.0
    assert present_hours(start, 2.0, None, time(18, 0)) == pytest.approx(1.0)
    assert present_hours(start, 2.0, time(18, 30), None) == pytest.approx(0.5)
    a = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
    b = datetime(2026, 11, 30, 17, 15, tzinfo=UTC)
    assert present_hours(start, 1.0, a, b) == pytest.approx(0.25)
    # a 30 h event sees a daily stay of 4 h on two days
    assert present_hours(datetime(2026, 11, 30, 0, 0, tzinfo=UTC), 30.0, time(1, 0),
                         time(5, 0)) == pytest.approx(8.0)


def test_dr_plan_start_counts_storage_only_while_present(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(PRESENCE)
    code, out, err = run("dr-plan", str(path), "--reduce", "2000", "--duration", "1h",
                         "--start", "2026-11-30T17:00:00+00:00", "--json")
    data = json.loads(out)
    rows = {r["id"]: r for r in data["resources"]}
    # EV1 is there from 17:30: half the hour, 2300 W at most = 1150 W over the event;
    # EV2 left at 17:00: not counted; the lamp gives its 300 W first (least important)
    assert code == 1, err
    assert data["achieved"] == pytest.approx(300 + 1150, abs=1e-3)
    assert data["shortfall"] == pytest.approx(2000 - 1450, abs=1e-3)
    assert rows["EV1"]["after"] == -2300 and rows["EV1"]["energy_after"] == 13000 - 1150
    assert rows["EV2"] == {"id": "EV2", "before": 0.0, "after": 0.0, "energy_after": 13000.0}
    assert set(data) == {"requested", "achieved", "shortfall", "resources"}
    # at 10:00 EV2 is there the whole hour and EV1 is not
    code, out, _ = run("dr-plan", str(path), "--reduce", "2000", "--duration", "1h",
                       "--start", "2026-11-30T10:00:00+00:00", "--json")
    rows = {r["id"]: r for r in json.loads(out)["resources"]}
    assert code == 0 and rows["EV1"]["after"] == 0.0 and rows["EV2"]["after"] < 0


def test_dr_plan_presence_problems_are_named_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("resources:\n  - {id: B, type: storage, charge_priority: 1, "
                    "discharge_priority: 2, power: 0, energy: 1, capacity: 2, max_charge: 1,"
                    " max_discharge: 1, present_from: \"25:00\"}\n"
                    "  - {id: L, type: on_off, priority: 1, power: 5, present_from: \"10:00\"}\n")
    code, _, err = run("dr-plan", str(path), "--reduce", "1", "--duration", "1h")
    assert code == 2
    assert "r.yaml:2: resources[0].present_from: expected a time of day" in err
    assert "r.yaml:3: resources[1].present_from: unknown field for type on_off" in err
    code, _, err = run("dr-plan", str(path), "--reduce", "1", "--duration", "1h",
                       "--start", "yesterday")
    assert code == 2 and "--start" in err
