"""``gridshare charge-plan``: the docs' example as written, its JSON, bad files and options."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridshare.cli import app
from gridshare.cli.plan_charge_cmds import parse_clock_h, parse_duration_h, parse_tariff

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "planning.md"
SITE = ROOT / "src" / "gridshare" / "examples" / "carport.yaml"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
runner = CliRunner()


def doc_block(lang: str, starts: str) -> str:
    found = [m.group(2) for m in _FENCE.finditer(DOC.read_text(encoding="utf-8"))
             if m.group(1) == lang and m.group(2).startswith(starts)]
    assert len(found) == 1, (lang, starts, found)
    return found[0]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The docs' cars and tariff files, as written, in a fresh directory."""
    (tmp_path / "cars.yaml").write_text(doc_block("yaml", "start:"), encoding="utf-8")
    (tmp_path / "tariff.yaml").write_text(doc_block("yaml", "tariff:"), encoding="utf-8")
    return tmp_path


def plan(files: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["charge-plan", str(SITE), "--cars", str(files / "cars.yaml"),
                                 *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_docs_example_prints_what_the_docs_show(files: Path) -> None:
    line = doc_block("bash", "gridshare charge-plan").split()
    assert line[1:] == ["charge-plan", "src/gridshare/examples/carport.yaml", "--cars",
                        "cars.yaml", "--tariff", "tariff.yaml"]
    code, out, err = plan(files, "--tariff", str(files / "tariff.yaml"))
    assert code == 0, err
    assert out == doc_block("", "charge plan for site")


def test_json_is_clean_on_a_real_stdout_and_has_the_documented_keys(files: Path) -> None:
    """In a real process: the solver's banner (written below Python) stays out of it."""
    done = subprocess.run(
        [sys.executable, "-m", "gridshare", "charge-plan", str(SITE), "--cars",
         str(files / "cars.yaml"), "--tariff", str(files / "tariff.yaml"), "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    answer = json.loads(done.stdout)
    shown = json.loads(doc_block("json", "{"))
    assert set(answer) == set(shown)
    assert all(set(c) == set(shown["cars"][0]) for c in answer["cars"])
    assert all(set(s) == set(shown["setpoints"][0]) for s in answer["setpoints"])
    assert answer["cost"] == pytest.approx(24.2496)
    assert answer["cars_short"] == 1 and answer["shortfall_kwh"] == pytest.approx(25.28)
    cars = {c["charger"]: c for c in answer["cars"]}
    assert cars["cp-2"]["arrival_period"] == 2 and cars["cp-2"]["departure_period"] == 28
    assert all(len(c["current"]) == 96 for c in answer["cars"])
    assert {s["charger"] for s in answer["setpoints"]} == {"cp-1", "cp-6"}  # plugged in now
    # the night is cheap: what cp-1 needs is planned after 23:00 (period 20)
    assert sum(cars["cp-1"]["current"][:20]) == 0.0


def test_without_a_tariff_cars_charge_as_early_as_they_can(files: Path) -> None:
    code, out, err = plan(files, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["cost"] is None
    now = {s["charger"]: s["current"] for s in answer["setpoints"]}
    assert now == {"cp-1": 32.0, "cp-6": 32.0}


def test_arrival_rounds_up_and_departure_down_to_whole_periods(tmp_path: Path) -> None:
    (tmp_path / "cars.yaml").write_text(
        "cars:\n  - {connector: cp-1, arrival: 10m, departure: 1h40m, energy_kwh: 100}\n"
        "  - {connector: cp-2/1, arrival: 5m, departure: 14m, energy_kwh: 5}\n")
    code, out, err = plan(tmp_path, "--horizon", "2h", "--json")
    assert code == 0, err
    first, second = json.loads(out)["cars"]
    assert (first["arrival_period"], first["departure_period"]) == (1, 6)
    assert first["current"] == [0.0, 32.0, 32.0, 32.0, 32.0, 32.0, 0.0, 0.0]
    assert first["planned_kwh"] == pytest.approx(5 * 0.25 * 32 * 0.69)
    assert second["planned_kwh"] == 0.0 and second["shortfall_kwh"] == 5.0  # no whole period


def test_a_bad_cars_file_names_every_problem_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "cars.yaml").write_text(
        "start: 25:00\n"
        "cars:\n"
        "  - {connector: cp-99, departure: 2h, energy_kwh: 10}\n"
        "  - {connector: cp-1/2, departure: 2h, energy_kwh: 10}\n"
        "  - {connector: cp-1, arrival: 3h, departure: 2h, energy_kwh: -1, colour: red}\n"
        "  - {connector: cp-4, energy_kwh: 10, phases: 2}\n"
        "uncontrolled: {nowhere: [1, 2, 3], service: [1, 2]}\n")
    code, out, err = plan(tmp_path)
    assert code == 2
    assert out == ""
    cars = tmp_path / "cars.yaml"
    assert err.splitlines() == [
        f"10 problems in {cars}:",
        f"  {cars}:1: start: must be a time of day like \"18:00\" (got 1500)",
        f"  {cars}:3: cars[0].connector: no charger 'cp-99' in the site file",
        f"  {cars}:4: cars[1].connector: charger 'cp-1' has no connector '2'",
        f"  {cars}:5: cars[2].colour: unknown field (arrival, connector, departure, "
        "energy_kwh, max_current, max_power_kw, phases)",
        f"  {cars}:5: cars[2].departure: must come after arrival",
        f"  {cars}:5: cars[2].energy_kwh: must be a number of kWh >= 0 (got -1)",
        f"  {cars}:6: cars[3].departure: required",
        f"  {cars}:6: cars[3].phases: must be 1 or 3 (got 2)",
        f"  {cars}:7: uncontrolled.nowhere: no group 'nowhere' in the site file",
        f"  {cars}:7: uncontrolled.service: must be [L1, L2, L3], amps >= 0 (got [1, 2])",
    ]


def test_a_connector_taken_twice_is_refused_and_json_says_so(tmp_path: Path) -> None:
    (tmp_path / "cars.yaml").write_text(
        "cars:\n  - {connector: cp-1, departure: 2h, energy_kwh: 10}\n"
        "  - {connector: cp-1/1, departure: 2h, energy_kwh: 10}\n")
    code, out, _ = plan(tmp_path, "--json")
    assert code == 2
    answer = json.loads(out)
    assert answer["error"] == "invalid cars file" and answer["exit_code"] == 2
    assert answer["problems"] == [{"file": str(tmp_path / "cars.yaml"), "line": 3,
                                   "path": "cars[1].connector",
                                   "message": "cp-1/1 already holds cars[0]"}]


def test_a_bad_tariff_is_refused(files: Path) -> None:
    (files / "tariff.yaml").write_text(
        "tariff:\n  - {from: \"07:00\", price: 0.3}\n  - {from: \"06:00\", price: cheap}\n")
    code, out, _ = plan(files, "--tariff", str(files / "tariff.yaml"), "--json")
    assert code == 2
    answer = json.loads(out)
    assert answer["error"] == "invalid tariff file"
    assert [p["path"] for p in answer["problems"]] == ["tariff[1].price"]


@pytest.mark.parametrize(("args", "message"), [
    (["--period", "soon"], "--period: not a duration like 15m or 1h: 'soon'"),
    (["--horizon", "0h"], "--horizon: not a duration like 24h or 12h30m: '0h'"),
    (["--horizon", "1h10m"], "--horizon: 1h10m is not a whole number of periods of 15m"),
    (["--horizon", "2000h", "--period", "1m"], "--horizon: 120000 periods of 1m: more than"),
])
def test_bad_horizon_or_period_is_a_usage_error(files: Path, args: list[str],
                                                message: str) -> None:
    code, out, err = plan(files, *args, "--json")
    assert code == 2
    assert message in err
    assert json.loads(out)["error"] == "usage"


def test_a_missing_cars_file_is_bad_input(tmp_path: Path) -> None:
    code, _, err = plan(tmp_path)
    assert code == 2
    assert "cars.yaml" in err


@pytest.mark.parametrize(("text", "hours"), [
    ("24h", 24.0), ("15m", 0.25), ("7h30m", 7.5), ("90m", 1.5), ("1.5h", 1.5), (2, 2.0),
    ("", None), ("h", None), ("-1h", None), ("3 days", None), (-1, None), (True, None),
])
def test_durations(text: str | float, hours: float | None) -> None:
    assert parse_duration_h(text) == hours


@pytest.mark.parametrize(("text", "hours"), [
    ("00:00", 0.0), ("18:30", 18.5), ("7:05", 7 + 5 / 60), ("24:00", None), ("18", None),
    (1440, None), (1110, 18.5), (-1, None), (False, None), (18.5, None),
])
def test_times_of_day(text: object, hours: float | None) -> None:
    assert parse_clock_h(text) == hours


def test_unquoted_times_of_day_mean_what_they_say() -> None:
    """YAML 1.1 reads an unquoted 07:00 as 420 (base 60): still seven o'clock."""
    text = "tariff:\n  - {from: 07:00, price: 0.3}\n  - {from: 23:00, price: 0.1}\n"
    prices = parse_tariff(text, "t.yaml", start_h=6.0, periods=2, period_h=1.0)
    assert prices == [0.1, 0.3]


def test_tariff_periods_take_the_step_in_force_at_their_start_across_midnight() -> None:
    text = "tariff:\n  - {from: \"07:00\", price: 0.3}\n  - {from: \"23:00\", price: 0.1}\n"
    prices = parse_tariff(text, "t.yaml", start_h=22.0, periods=10, period_h=1.0)
    # 22:00 0.3, 23:00-06:00 0.1 (the last step holds before the day's first), 07:00 0.3
    assert prices == [0.3] + [0.1] * 8 + [0.3]


def test_the_readme_command_line_lists_every_option_as_help_does() -> None:
    """tests/test_readme.py's check, for this command (its list of commands predates it)."""
    from test_readme import command_help, help_options, readme_options, synopsis

    lines = synopsis()
    assert "charge-plan" in lines
    readme = readme_options(lines["charge-plan"])
    helped = help_options(command_help("charge-plan"))
    assert set(readme) == set(helped)


def test_the_cli_docs_line_runs(files: Path) -> None:
    """docs/cli.md's example, on the shipped site and the planning docs' files."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    (line,) = [m.group(2) for m in _FENCE.finditer(text)
               if m.group(1) == "bash" and m.group(2).startswith("gridshare charge-plan")]
    words = line.split()
    assert words[2:5] == ["site.yaml", "--cars", "cars.yaml"]
    args = [str(files / w) if w.endswith(".yaml") else w for w in words[5:]]
    code, out, err = plan(files, *args, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["periods"] == 72 and answer["period_minutes"] == 30
