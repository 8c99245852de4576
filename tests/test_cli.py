"""The gridshare command line: exit codes, JSON shapes and readable errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gridshare.cli import app
from gridshare.core.decision import Allocation

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "gridshare" / "examples"
SITE = EXAMPLES / "carport.yaml"
DEMAND = EXAMPLES / "carport-demand.json"
runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("check", "allocate"):
        assert command in result.output


def test_check_prints_the_tree() -> None:
    result = runner.invoke(app, ["check", str(SITE)])
    assert result.exit_code == 0, result.output
    assert "service ≤ 100 A" in result.output and "circuit-3 ≤ 40 A" in result.output
    assert "20 chargers" in result.output


def test_check_json_for_scripts() -> None:
    result = runner.invoke(app, ["check", str(SITE), "--json"])
    data = json.loads(result.stdout)
    assert data["site"] == "carport"
    assert {g["id"] for g in data["groups"]} == {"service", "circuit-1", "circuit-2",
                                                 "circuit-3", "circuit-4"}
    assert data["warnings"] == []  # the shipped example is consistent


def test_check_warns_when_failsafe_currents_exceed_a_limit(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.read_text().replace("failsafe_current: 0", "failsafe_current: 6"))
    data = json.loads(runner.invoke(app, ["check", str(site), "--json"]).stdout)
    assert any("failsafe currents add up to 120 A" in w for w in data["warnings"])


def test_check_reports_bad_file_with_line_and_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SITE.read_text().replace("max_current: 100", "max_current: -100"))
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 2
    expected = f"{bad}:8: groups[0].max_current: Input should be greater than or equal to 0"
    assert expected in result.output


def test_allocate_json_shape_and_limits() -> None:
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(DEMAND), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    setpoints = {(s["charger"], s["connector"]): s for s in data["setpoints"]}
    assert set(setpoints[("cp-1", 1)]) >= {"charger", "connector", "current", "power"}
    # 100 A service - 20 A uncontrolled = 80 A: 6 A for the offline cp-16, 74 A shared.
    groups = {g["id"]: g for g in data["groups"]}
    assert set(groups["service"]) >= {"id", "current", "limit"}
    assert groups["service"]["limit"] == 100
    assert max(groups["service"]["current"]) == pytest.approx(80.0)
    assert groups["service"]["available"] == [80.0, 80.0, 80.0]
    assert setpoints[("cp-16", 1)]["current"] == 6.0 and not setpoints[("cp-16", 1)]["online"]
    assert setpoints[("cp-2", 1)]["current"] <= 16.0
    assert setpoints[("cp-1", 1)]["power"] == pytest.approx(
        setpoints[("cp-1", 1)]["current"] * 3 * 230 / 1000, abs=1e-3)


def test_allocate_json_text_is_json_dumps_indent_2() -> None:
    """The answer is the text of json.dumps(indent=2), one write."""
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(DEMAND), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == json.dumps(json.loads(result.stdout), indent=2) + "\n"


@settings(max_examples=60, deadline=None)
@given(amps=st.lists(st.one_of(
    st.floats(min_value=0, max_value=1e18, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10**20), st.just(float("inf"))), min_size=1),
    offline=st.sets(st.integers(min_value=0, max_value=30)))
def test_allocation_json_text_is_json_dumps_of_allocation_json(
        amps: list[float], offline: set[int]) -> None:
    """The fast writer gives json.dumps(indent=2)'s text byte for byte, for any value
    (ints, huge and tiny floats, infinity) and any mix of online and offline."""
    from gridshare.cli.core_cmds import allocation_json, allocation_json_text
    from gridshare.config import load_site
    from gridshare.core.decision import RotationState

    topo = load_site(SITE)
    keys = [conn.key for ch in topo.chargers.values() for conn in ch.connectors]
    setpoints = {keys[i % len(keys)]: a for i, a in enumerate(amps)}
    result = Allocation(setpoints=setpoints, offline=frozenset(
        keys[i % len(keys)] for i in offline), groups={}, rotation=RotationState())
    assert allocation_json_text(topo, result) == json.dumps(allocation_json(topo, result),
                                                            indent=2)
    empty = Allocation(setpoints={}, offline=frozenset(), groups={},
                       rotation=RotationState())
    assert allocation_json_text(topo, empty) == json.dumps(allocation_json(topo, empty),
                                                           indent=2)


def test_allocate_policy_override_changes_the_split() -> None:
    def amps(policy: str) -> dict[str, float]:
        result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(DEMAND), "--json",
                                     "--policy", policy])
        return {s["charger"]: s["current"] for s in json.loads(result.stdout)["setpoints"]}

    equal, priority = amps("equal"), amps("priority")
    assert equal["cp-11"] == equal["cp-12"]
    assert priority["cp-11"] > priority["cp-12"]  # cp-11 asks with priority 5


def test_allocate_rejects_unknown_charger(tmp_path: Path) -> None:
    demand = tmp_path / "d.json"
    demand.write_text(json.dumps({"connectors": [{"charger": "nope", "active": True}]}))
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(demand)])
    assert result.exit_code == 2
    assert "unknown charger 'nope'" in result.output


def test_allocate_rejects_nan_and_missing_fields(tmp_path: Path) -> None:
    demand = tmp_path / "d.json"
    demand.write_text('{"connectors": [{"charger": "cp-1", "active": true, '
                      '"max_current": NaN}, {"charger": "cp-2"}]}')
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(demand)])
    assert result.exit_code == 2
    assert f"{demand}:1: connectors[0].max_current: must be a number >= 0 (got nan)" \
        in result.output
    assert f"{demand}:1: connectors[1].active: required" in result.output


def test_installed_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "gridshare", "check", str(SITE), "--json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["site"] == "carport"


def test_check_json_names_l1_chargers(tmp_path: Path) -> None:
    """Phase.L1 is index 0: it must not read as 'no phase'."""
    site = tmp_path / "s.yaml"
    site.write_text("site: s\ngroups:\n  - {id: g, max_current: 16, chargers: [a]}\n"
                    "chargers:\n  - {id: a, max_current: 16, phases: 1, phase: L1}\n")
    data = json.loads(runner.invoke(app, ["check", str(site), "--json"]).stdout)
    assert data["chargers"][0]["phase"] == "L1"
    assert "1-phase L1" in runner.invoke(app, ["check", str(site)]).output


# --- start-up: each command imports only what it uses -------------------------------------

LIVE_SYSTEM = ("gridshare.adapters", "gridshare.app", "gridshare.controller", "gridshare.store",
               "gridshare.sim", "ocpp", "websockets", "sqlalchemy", "jsonschema")


def modules_loaded_by(args: list[str]) -> tuple[int, set[str]]:
    """Run the command line in a fresh interpreter; which of the heavy modules did it load?"""
    heavy = (*LIVE_SYSTEM, "numpy", "pydantic", "yaml", "rich", "gridshare.config")
    code = (
        "import sys\n"
        "from gridshare.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "sys.stderr.write('\\nLOADED=' + ','.join(loaded) + f'\\nCODE={code}\\n')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    tail = done.stderr.rsplit("LOADED=", 1)[1].splitlines()
    loaded = {m for m in tail[0].split(",") if m}
    return int(tail[1].removeprefix("CODE=")), loaded


def test_help_loads_none_of_the_heavy_modules() -> None:
    code, loaded = modules_loaded_by(["--help"])
    assert code == 0
    assert loaded == set()


def test_allocate_json_loads_nothing_of_the_live_system() -> None:
    code, loaded = modules_loaded_by(["allocate", str(SITE), "--demand", str(DEMAND), "--json"])
    assert code == 0
    assert not loaded & set(LIVE_SYSTEM)
    assert "rich" not in loaded  # tables are for people; --json does not need them
    assert {"numpy", "pydantic", "yaml"} <= loaded


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("check", "allocate", "hash-password", "serve", "demo"):
        assert command in result.output


def test_allocate_runs_the_safety_guard_once_on_the_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """allocate() answers unguarded; the command must run the guard and report it."""
    from gridshare.core import allocation, guard

    real_allocate, real_enforce = allocation.allocate, guard.enforce
    calls: list[str] = []

    def over_allocating(*args: Any, **kwargs: Any) -> Allocation:
        answer = real_allocate(*args, **kwargs)
        calls.append("allocate")
        return replace(answer, setpoints={**answer.setpoints, ("cp-1", 1): 500.0})

    def counted_enforce(*args: Any) -> Allocation:
        calls.append("enforce")
        return real_enforce(*args)

    monkeypatch.setattr(allocation, "allocate", over_allocating)
    monkeypatch.setattr(guard, "enforce", counted_enforce)
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(DEMAND), "--json"])
    assert result.exit_code == 1, result.output  # the guard replaced the answer
    assert calls == ["allocate", "enforce"]
    data = json.loads(result.stdout)
    assert data["guarded"] is True and data["alarms"]
    assert max(s["current"] for s in data["setpoints"]) < 500


def test_allocate_reports_unguarded_when_the_answer_is_safe() -> None:
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(DEMAND), "--json"])
    assert json.loads(result.stdout)["guarded"] is False


def test_allocate_table_for_people() -> None:
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(DEMAND)])
    assert result.exit_code == 0, result.output
    assert "setpoints (equal)" in result.output and "groups (A per phase)" in result.output
    assert "offline (failsafe)" in result.output


def test_serve_reports_a_bad_site_file_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SITE.read_text().replace("max_current: 100", "max_current: -100"))
    result = runner.invoke(app, ["serve", str(bad), "--db", "none"])
    assert result.exit_code == 2
    assert f"{bad}:8: groups[0].max_current:" in result.output


def test_bad_demand_file_names_the_file(tmp_path: Path) -> None:
    demand = tmp_path / "d.json"
    demand.write_text("{not json")
    result = runner.invoke(app, ["allocate", str(SITE), "--demand", str(demand)])
    assert result.exit_code == 2
    assert result.output.startswith(f"{demand}:1: not valid JSON: ")
    assert len(result.output.splitlines()) == 1  # one problem: one line, no header


def test_the_program_skips_the_shutdown_collections_tests_do_not() -> None:
    """Run as a program, the command line freezes what survives it so that Python's
    collections at shutdown do not scan it; commands invoked by a test runner do not."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: sys.stderr.write(f'FROZEN={gc.get_freeze_count()}\\n'))\n"
        "from gridshare.cli import app\n"
        "from typer.testing import CliRunner\n"
        "CliRunner().invoke(app, ['--help'])\n"
        "sys.stderr.write(f'AFTER_RUNNER={gc.get_freeze_count()}\\n')\n"
        "app(['check', sys.argv[1], '--json'])\n")
    done = subprocess.run([sys.executable, "-c", code, str(SITE)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["site"] == "carport"
    assert "AFTER_RUNNER=0" in done.stderr
    frozen = int(done.stderr.rsplit("FROZEN=", 1)[1].split()[0])
    assert frozen > 1000


def test_demand_read_by_pydantic_json_is_the_demand_read_as_before(tmp_path: Path) -> None:
    """The fast reading (pydantic's JSON parser) builds the snapshot the entry-by-entry
    reading does; a bare list of connectors, which it does not take, is still read."""
    from gridshare.cli.demand import load_demand, parse_demand
    from gridshare.config import load_site

    topo = load_site(SITE)
    text = DEMAND.read_text(encoding="utf-8")
    assert load_demand(DEMAND, topo) == parse_demand(text, str(DEMAND), topo)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(json.loads(text)["connectors"]), encoding="utf-8")
    assert load_demand(bare, topo).connectors == load_demand(DEMAND, topo).connectors


def test_allocate_with_a_stale_meter_raises_its_alarm_and_exits_1(tmp_path: Path) -> None:
    site = tmp_path / "house.yaml"
    site.write_text("site: house\nmeters:\n  - {id: hm, source: ocpp, charger: house-meter}\n"
                    "groups:\n  - {id: house, max_current: 32, meter: hm, chargers: [a, b]}\n"
                    "chargers:\n  - {id: a, max_current: 16}\n  - {id: b, max_current: 16}\n")
    demand = tmp_path / "demand.json"
    body = {"connectors": [{"charger": "a", "active": True}, {"charger": "b", "active": True}]}
    demand.write_text(json.dumps(body))
    fresh = runner.invoke(app, ["allocate", str(site), "--demand", str(demand), "--json"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["alarms"] == []
    demand.write_text(json.dumps({**body, "stale_meters": ["hm"]}))
    stale = runner.invoke(app, ["allocate", str(site), "--demand", str(demand), "--json"])
    assert stale.exit_code == 1
    out = json.loads(stale.stdout)
    assert [s["current"] for s in out["setpoints"]] == [0.0, 0.0]
    assert out["alarms"] == [{"group": "house", "phase": None, "message":
                              "meter hm: stale (stale_meters) — group house at 0 A headroom"}]


def test_json_usage_errors_are_json_too() -> None:
    """A script that asked for --json gets a JSON error object even when the command line
    itself is wrong (caught before any command runs), with exit code 2."""
    for argv, path, message in (
            (["check", "--json"], "site", "Missing argument 'SITE'."),
            (["check", str(SITE), "--json", "--bogus"], "", "No such option: --bogus"),
            (["allocate", str(SITE), "--json"], "demand", "Missing option '--demand'.")):
        done = subprocess.run([sys.executable, "-m", "gridshare", *argv], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        assert json.loads(done.stdout) == {
            "error": "usage", "problems": [{"file": None, "line": None, "path": path,
                                            "message": message}],
            "more": 0, "exit_code": 2}
        assert f"Error: {message}" in done.stderr
