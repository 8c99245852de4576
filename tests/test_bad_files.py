"""Bad files fail cleanly, in one pass and in bounded time, through the real ``gridshare``
program: exit codes, stdout (``--json``) and stderr, as an operator or a script sees them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.config import (
    DEFAULT_MAX_SIZE,
    KEPT_ISSUES,
    ConfigError,
    parse_site,
    read_text,
    shown,
)

GRIDSHARE = str(Path(sys.executable).with_name("gridshare"))
EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "gridshare" / "examples"
CARPORT = EXAMPLES / "carport.yaml"

HOME = textwrap.dedent("""\
    site: home
    groups:
      - {id: house, max_current: 10, meter: house-meter, chargers: [a, b]}
    meters:
      - {id: house-meter, source: ocpp, charger: a}
    chargers:
      - {id: a, max_current: 16, failsafe_current: 16}
      - {id: b, max_current: 16}
    """)


def run(*args: str | Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRIDSHARE, *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=300, env=env)


def clean(done: subprocess.CompletedProcess[str]) -> None:
    """No traceback, and nothing but the answer on stdout."""
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout


# --- site files: every problem, one pass ---------------------------------------------------

EVERY_KIND = textwrap.dedent("""\
    site: s
    voltage: 230
    voltage: 230
    groups:
      - id: main
        max_current: -5
        chargers: [a, b, ghost, bad-one]
        meter: nowhere
        groups:
          - id: house
            max_current: 32
            phases: 1
            chargers: [c, d, e]
      - {id: main, max_current: 10}
      - {id: loop1, max_current: 10, parent: loop2}
      - {id: loop2, max_current: 10, parent: loop1}
    chargers:
      - {id: a, max_current: 16, failsafe_current: 20}
      - {id: b, max_current: 16, phases: 1, phase: L9}
      - {id: a, max_current: 16}
      - {id: c, max_current: 16, phases: 1, phase: L1}
      - {id: d, max_current: 16, phases: 1, phase: L2}
      - {id: e, max_current: 16}
      - {id: orphan, max_current: 16}
      - {id: dc, max_power: 11, failsafe_current: 32}
      - {id: bad-one, max_current: 16, min_current: 20}
    """)

EXPECTED = [
    "s.yaml:3: voltage: duplicate key",
    "s.yaml:6: groups[0].max_current: Input should be greater than or equal to 0 (got -5)",
    "s.yaml:7: groups[0].chargers[2]: unknown charger 'ghost'",
    "s.yaml:8: groups[0].meter: unknown meter 'nowhere' (declare it under meters:)",
    "s.yaml:13: groups[0].groups[0].chargers[2]: 3-phase charger 'e' in 1-phase group 'house'",
    "s.yaml:14: groups[1].id: duplicate group id 'main' (first at groups[0])",
    "s.yaml:15: groups[2].parent: cycle in group parents: loop1 -> loop2 -> loop1",
    "s.yaml:18: chargers[0].failsafe_current: failsafe_current 20 A is above the charger's "
    "maximum of 16 A (max_current)",
    "s.yaml:19: chargers[1].phase: Input should be 'L1', 'L2' or 'L3' (got 'L9')",
    "s.yaml:20: chargers[2].id: duplicate charger id 'a' (first at chargers[0])",
    "s.yaml:22: chargers[4].phase: 1-phase charger 'd' on L2 under 1-phase group 'house', "
    "whose charger 'c' is on L1: a 1-phase group is one line",
    "s.yaml:24: chargers[6].id: charger 'orphan' is in no group: nothing would limit it",
    "s.yaml:25: chargers[7].id: charger 'dc' is in no group",
    "s.yaml:25: chargers[7].failsafe_current: failsafe_current 32 A is above the charger's "
    "maximum of 15.94 A (max_power 11 kW at 230 V)",
    "s.yaml:26: chargers[8]: min_current 20.0 A is above max_current 16.0 A",
]


def test_one_problem_of_each_kind_all_in_one_run(tmp_path: Path) -> None:
    site = tmp_path / "s.yaml"
    site.write_text(EVERY_KIND)
    done = run("check", site)
    clean(done)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == f"{len(EXPECTED)} problems in {site}:"
    problems = [line.strip() for line in lines[1:]]
    assert len(problems) == len(EXPECTED), done.stderr
    for got, expected in zip(problems, EXPECTED, strict=True):
        assert got.startswith(f"{tmp_path}/{expected}"), (got, expected)
    # the charger that failed validation still counts: no "unknown charger 'bad-one'"
    assert "'bad-one'" not in done.stderr


def test_a_bad_entry_hides_no_other_problem() -> None:
    """Before: cross-checks ran only once every entry validated, so problems came in stages."""
    text = textwrap.dedent("""\
        site: s
        groups:
          - {id: g, max_current: 16, chargers: [a, nope]}
        chargers:
          - {id: a, max_current: -1}
        """)
    with pytest.raises(ConfigError) as info:
        parse_site(text, "s.yaml")
    assert [str(i) for i in info.value.issues] == [
        "s.yaml:3: groups[0].chargers[1]: unknown charger 'nope'",
        "s.yaml:5: chargers[0].max_current: Input should be greater than 0 (got -1)"]


@pytest.mark.parametrize(("chargers", "error"), [
    pytest.param("[{id: a, max_current: 16, phases: 1, phase: L2}, "
                 "{id: b, max_current: 16, phases: 1, phase: L2}]", None, id="same-line-ok"),
    pytest.param("[{id: a, max_current: 16, phases: 1, phase: L1}, "
                 "{id: b, max_current: 16, phases: 1, phase: L3}]",
                 "1-phase charger 'b' on L3 under 1-phase group 'top'", id="two-lines"),
    pytest.param("[{id: a, max_current: 16, phases: 1, phase: L1}, {id: b, max_current: 16}]",
                 "3-phase charger 'b' in 1-phase group 'top'", id="three-phase-below"),
])
def test_a_one_phase_group_is_one_line_at_any_depth(chargers: str, error: str | None) -> None:
    text = ("site: s\ngroups:\n  - {id: top, max_current: 32, phases: 1, chargers: [a]}\n"
            "  - {id: sub, max_current: 16, phases: 1, parent: top, chargers: [b]}\n"
            f"chargers: {chargers}\n")
    if error is None:
        assert parse_site(text).groups["sub"].parent == "top"
        return
    with pytest.raises(ConfigError) as info:
        parse_site(text, "s.yaml")
    [issue] = info.value.issues
    assert error in issue.message


def test_failsafe_at_the_maximum_is_fine() -> None:
    topo = parse_site("site: s\ngroups:\n  - {id: g, max_current: 32, chargers: [a]}\n"
                      "chargers:\n  - {id: a, max_current: 16, failsafe_current: 16}\n")
    assert topo.chargers["a"].failsafe_current == 16


# --- bounded: size, encoding, echoed values, problem counts --------------------------------


def child_peak_rss_kb(args: list[str]) -> tuple[int, float, subprocess.CompletedProcess[str]]:
    """Run ``gridshare args`` from a fresh interpreter: its peak RSS (KB) and wall time."""
    code = ("import json, resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "wall = time.perf_counter() - t\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(json.dumps([peak, wall, done.returncode, done.stdout, done.stderr]))\n")
    out = subprocess.run([sys.executable, "-c", code, GRIDSHARE, *args], capture_output=True,
                         text=True, check=True, timeout=300)
    peak, wall, code_, stdout, stderr = json.loads(out.stdout)
    return peak, wall, subprocess.CompletedProcess(args, code_, stdout, stderr)


def test_a_50_mb_file_is_refused_by_its_size_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "site.yaml"
    with big.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: its size is what counts
        f.seek(0)
        f.write(b"site: x\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="above the limit of 16777216"):
        read_text(big)
    assert time.perf_counter() - started < 0.05
    peak_kb, _, done = child_peak_rss_kb(["check", str(big)])
    clean(done)
    assert done.returncode == 2
    assert done.stderr == (f"{big}: {50 * 1024 * 1024} bytes, above the limit of 16777216 "
                           f"(--max-size)\n")
    assert peak_kb < 120_000  # the interpreter and typer; never the file
    # the cap is a flag: a larger one lets the file through to the next check
    done = run("check", big, "--max-size", str(60 * 1024 * 1024))
    assert done.returncode == 2 and "not a UTF-8 text file (NUL byte at offset 8" in done.stderr


def test_the_demand_file_has_the_same_cap(tmp_path: Path) -> None:
    site, demand = tmp_path / "home.yaml", tmp_path / "d.json"
    site.write_text(HOME)
    demand.write_text('{"connectors": []}' + " " * 2000)
    done = run("allocate", site, "--demand", demand, "--max-size", "100", "--json")
    clean(done)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"] == "invalid site file"
    done = run("allocate", site, "--demand", demand, "--max-size", "1000", "--json")
    assert done.returncode == 2
    answer = json.loads(done.stdout)
    assert answer["error"] == "invalid demand file"
    assert "above the limit of 1000" in answer["problems"][0]["message"]


@pytest.mark.parametrize(("content", "message"), [
    pytest.param(b"site: x\ngroups: \xff\xfe\n", "not a UTF-8 text file (byte 0xff at offset 16)",
                 id="latin-1"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00\x00\x00", "not a UTF-8 text file (NUL byte at "
                 "offset 7: a binary file?)", id="binary"),
])
@pytest.mark.parametrize("which", ["site", "demand"])
def test_non_utf8_and_binary_files_are_refused_in_one_line(
        tmp_path: Path, content: bytes, message: str, which: str) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    args: list[str | Path] = (["check", bad] if which == "site"
                              else ["allocate", CARPORT, "--demand", bad])
    done = run(*args)
    clean(done)
    assert done.returncode == 2
    assert done.stderr == f"{bad}: {message}\n"


def test_values_python_cannot_make_are_problems_not_tracebacks(tmp_path: Path) -> None:
    site, demand = tmp_path / "s.yaml", tmp_path / "d.json"
    site.write_text("site: s\nvoltage: 2026-13-45\ngroups: []\n")
    done = run("check", site)
    clean(done)
    assert done.returncode == 2
    assert done.stderr == f"{site}: not valid YAML: month must be in 1..12\n"
    site.write_text("site: s\nvoltage: " + "9" * 5000 + "\ngroups: []\n")
    done = run("check", site)
    assert done.stderr == f"{site}: not valid YAML: a number of more than 4300 digits\n"
    demand.write_text('{"connectors": [{"charger": "cp-1", "active": true, "max_current": '
                      + "9" * 5000 + "}]}")
    done = run("allocate", CARPORT, "--demand", demand)
    clean(done)
    assert done.stderr == f"{demand}: not valid JSON: a number of more than 4300 digits\n"


def test_values_echoed_are_cut_to_80_characters(tmp_path: Path) -> None:
    site = tmp_path / "s.yaml"
    site.write_text("site: s\ngroups:\n  - {id: g, max_current: 16, chargers: [a]}\n"
                    "chargers:\n  - {id: a, max_current: 16, phase: '" + "x" * 5_000_000
                    + "'}\n")
    done = run("check", site)
    clean(done)
    assert done.returncode == 2
    assert len(done.stderr) < 1000
    assert "(got 'xxxxxxxxxx" in done.stderr and "…' (5000000 characters))" in done.stderr
    assert shown("y" * 100) == "'" + "y" * 77 + "…' (100 characters)"
    assert len(shown("y" * 100).split(" (")[0]) == 80
    assert shown(10 ** 5000).startswith("a number of 500")  # past Python's str() limit
    assert shown([1] * 100).endswith("… (300 characters)")


def test_at_most_50_problems_printed_then_a_count(tmp_path: Path) -> None:
    entries = "".join(f"  - {{id: c{i}, max_current: -1}}\n" for i in range(3000))
    site = tmp_path / "s.yaml"
    site.write_text("site: s\ngroups:\n  - {id: g, max_current: 16}\nchargers:\n" + entries)
    done = run("check", site, "--json")
    clean(done)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == f"6000 problems in {site}:"  # each: max_current, and in no group
    assert len(lines) == 52 and lines[-1] == "  … and 5950 more"
    answer = json.loads(done.stdout)
    assert len(answer["problems"]) == 50 and answer["more"] == 5950
    with pytest.raises(ConfigError) as info:
        parse_site(site.read_text(), "s.yaml")
    assert len(info.value.issues) == KEPT_ISSUES and info.value.count == 6000


def test_a_file_full_of_errors_finishes_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """A 1.7 MB file of 30,000 bad chargers (the 15 MB measurement is in the report): time
    and memory grow with the file, not with a line map of every node or every message."""
    entries = "".join(f"  - {{id: c{i}, max_current: -1, phase: L9, colour: red}}\n"
                      for i in range(30_000))
    site = tmp_path / "s.yaml"
    site.write_text("site: s\ngroups:\n  - {id: g, max_current: 16}\nchargers:\n" + entries)
    assert site.stat().st_size > 1_700_000
    peak_kb, wall_s, done = child_peak_rss_kb(["check", str(site)])
    clean(done)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "  … and 119950 more"
    assert peak_kb < 400_000
    assert wall_s < 60


# --- demand files ----------------------------------------------------------------------------

BAD_DEMAND = textwrap.dedent("""\
    {
      "now": "yesterday",
      "connectors": [
        {"charger": "a", "active": true},
        {"charger": "nope", "active": true},
        {"charger": "b", "active": "maybe", "colour": 1},
        {"charger": "b", "active": true, "max_current": "x"},
        {"charger": "a", "connector": 3, "active": true},
        {"charger": "a", "active": false}
      ],
      "uncontrolled": {"house": [1, 2], "attic": 3},
      "limits": {"house": [{"source": "god", "max_current": -1}]},
      "stale_meters": ["house", "nometer"]
    }
    """)


def test_demand_file_every_problem_with_lines_in_user_words(tmp_path: Path) -> None:
    site, demand = tmp_path / "home.yaml", tmp_path / "demand.json"
    site.write_text(HOME)
    demand.write_text(BAD_DEMAND)
    done = run("allocate", site, "--demand", demand, "--json")
    clean(done)
    assert done.returncode == 2
    got = [(p["line"], p["path"], p["message"]) for p in json.loads(done.stdout)["problems"]]
    assert got == [
        (2, "now", "must be a date-time with a time zone, like 2026-11-22T08:00:00Z "
                   "(got 'yesterday')"),
        (5, "connectors[1].charger", "unknown charger 'nope'"),
        (6, "connectors[2].active", "must be true or false (got 'maybe')"),
        (6, "connectors[2].colour", "unknown field"),
        (7, "connectors[3].max_current", "must be a number >= 0 (got 'x')"),
        (7, "connectors[3]", "b/1 listed twice"),  # a bad entry's charger counts too
        (8, "connectors[4].connector", "charger 'a' has no connector 3 (it has 1)"),
        (9, "connectors[5]", "a/1 listed twice"),
        (11, "uncontrolled.house", "must be a number >= 0 or a list of 3 numbers >= 0 "
                                   "[L1, L2, L3] (got [1, 2])"),
        (11, "uncontrolled.attic", "unknown group 'attic'"),
        (12, "limits.house[0].source", "must be one of static, meter, demand_response, "
                                       "operator (got 'god')"),
        (12, "limits.house[0].max_current", "must be a number >= 0 (got -1)"),
        (13, "stale_meters[0]", "'house' is a group, not a meter: group 'house' follows "
                                "meter 'house-meter'"),
        (13, "stale_meters[1]", "unknown meter 'nometer' (the site's meters: house-meter)"),
    ]
    for word in ("constrained", "instance of", "DemandIn", "Input should", "float"):
        assert word not in done.stderr
    assert f"{demand}:7: connectors[3].max_current: must be a number >= 0 (got 'x')" \
        in done.stderr


def test_a_bare_list_of_connectors_has_lines_too(tmp_path: Path) -> None:
    demand = tmp_path / "d.json"
    demand.write_text('[\n  {"charger": "cp-1", "active": true},\n  {"charger": "cp-2"}\n]\n')
    done = run("allocate", CARPORT, "--demand", demand)
    assert done.returncode == 2
    assert done.stderr == f"{demand}:3: connectors[1].active: required\n"


def test_stale_meters_takes_meter_ids(tmp_path: Path) -> None:
    site, demand = tmp_path / "home.yaml", tmp_path / "d.json"
    site.write_text(HOME)
    demand.write_text(json.dumps({"connectors": [{"charger": "b", "active": True}],
                                  "stale_meters": ["house-meter"]}))
    done = run("allocate", site, "--demand", demand, "--json")
    assert done.returncode == 1, done.stderr  # the stale meter's alarm
    [house] = json.loads(done.stdout)["groups"]
    assert house["available"] == [0.0, 0.0, 0.0]  # fails closed
    demand.write_text(json.dumps({"stale_meters": ["house"]}))
    done = run("allocate", CARPORT, "--demand", demand)
    assert done.returncode == 2
    assert "'house' is a group, not a meter" not in done.stderr  # carport has no 'house'
    done = run("allocate", site, "--demand", demand)
    assert "'house' is a group, not a meter: group 'house' follows meter 'house-meter'" \
        in done.stderr


# --- exit codes, --json, --version, help, logs -----------------------------------------------


def test_allocate_exit_codes(tmp_path: Path) -> None:
    site, demand = tmp_path / "home.yaml", tmp_path / "d.json"
    site.write_text(HOME)
    demand.write_text(json.dumps({"connectors": [{"charger": "b", "active": True}]}))
    done = run("allocate", site, "--demand", demand, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["alarms"] == []
    # an offline charger's failsafe alone is above the limit: an alarm, the answer printed
    demand.write_text(json.dumps({"connectors": [
        {"charger": "a", "active": True, "online": False}, {"charger": "b", "active": True}]}))
    done = run("allocate", site, "--demand", demand, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["alarms"]
    done = run("allocate", site, "--demand", demand)
    assert done.returncode == 1 and "alarm:" in done.stderr and "setpoints" in done.stdout
    assert run("allocate", site).returncode == 2  # usage: no --demand
    assert run("allocate", site, "--demand", tmp_path / "missing.json").returncode == 2


def test_json_error_object_on_failure(tmp_path: Path) -> None:
    site = tmp_path / "s.yaml"
    site.write_text(EVERY_KIND)
    done = run("check", site, "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 2 and answer["exit_code"] == 2
    assert answer["error"] == "invalid site file" and answer["more"] == 0
    assert answer["problems"][1] == {
        "file": str(site), "line": 6, "path": "groups[0].max_current",
        "message": "Input should be greater than or equal to 0 (got -5)"}
    assert len(done.stderr.splitlines()) == len(EXPECTED) + 1  # the stderr lines stay
    done = run("check", tmp_path / "missing.yaml", "--json")
    assert json.loads(done.stdout)["problems"][0]["message"].startswith("cannot read: ")
    assert run("check", site, "--no-json").stdout == ""


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout == f"gridshare {version('gridshare')}\n" == "gridshare 0.1.0\n"


@pytest.mark.parametrize("command", ["check", "allocate", "serve", "demo", "hash-password"])
def test_help_lists_exit_codes_and_shows_no_bool_placeholders(command: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0
    assert "Exit codes:" in done.stdout and "  2  bad input" in done.stdout
    assert "<bool>" not in done.stdout and "BOOLEAN" not in done.stdout
    if command == "demo":
        assert "--plain / --no-plain" in done.stdout
    if command in ("check", "allocate"):
        assert "--json / --no-json" in done.stdout and "--max-size BYTES" in done.stdout


def test_log_lines_are_one_line_per_event_whatever_the_width() -> None:
    code = textwrap.dedent("""\
        import logging, sys
        from gridshare.cli.logs import setup_logging
        setup_logging("info", sys.argv[1])
        log = logging.getLogger("gridshare.test")
        log.warning("alarm: " + "x" * 300, extra={"charger": "cp-1"})
        log.info("two\\nlines")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        """)
    env = {**os.environ, "COLUMNS": "40"}
    text = subprocess.run([sys.executable, "-c", code, "text"], capture_output=True,
                          text=True, check=True, env=env).stderr.splitlines()
    assert len(text) == 3
    assert text[0].endswith("WARNING gridshare.test: alarm: " + "x" * 300 + " charger=cp-1")
    assert text[1].endswith("two\\nlines") and "Traceback" in text[2]
    lines = subprocess.run([sys.executable, "-c", code, "json"], capture_output=True,
                           text=True, check=True, env=env).stderr.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 3
    assert {"ts", "level", "logger", "message"} <= set(events[0])
    assert events[0]["level"] == "warning" and events[0]["charger"] == "cp-1"
    assert events[1]["message"] == "two\nlines"
    assert "ValueError: boom" in events[2]["exc_info"]


def test_serve_logs_json_and_refuses_unknown_formats(tmp_path: Path) -> None:
    site = tmp_path / "home.yaml"
    site.write_text(HOME)
    done = run("serve", site, "--log-format", "xml")
    assert done.returncode == 2 and "--log-format must be one of text, json" in done.stderr
    proc = subprocess.Popen(
        [GRIDSHARE, "serve", str(site), "--ocpp-port", "0", "--api-port", "-1", "--db", "none",
         "--log-level", "info", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("gridshare ready")
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    events = [json.loads(line) for line in err.splitlines()]
    assert events and all({"ts", "level", "logger", "message"} <= set(e) for e in events)


def test_the_cap_defaults_agree() -> None:
    from gridshare.cli import core_cmds

    assert core_cmds.DEFAULT_MAX_SIZE == DEFAULT_MAX_SIZE == 16 * 1024 * 1024


printable = (st.characters(min_codepoint=32, max_codepoint=126)
             | st.characters(min_codepoint=0xA0, max_codepoint=0x2FF))  # YAML's printable
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(alphabet=printable, max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(alphabet=printable, max_size=6),
        inner, max_size=4),
    max_leaves=20)


def every_path(value: object, loc: tuple[str | int, ...] = ()) -> set[tuple[str | int, ...]]:
    out = {loc}
    if isinstance(value, dict):
        for key, item in value.items():
            out |= every_path(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out |= every_path(item, (*loc, i))
    return out


@given(json_values, st.sampled_from([None, 1, 2]))
def test_the_json_line_scanner_agrees_with_libyaml(value: object, indent: int | None) -> None:
    """JSON is YAML: the demand file's line scanner and the site file's event scanner
    give every path the same line (a member at its key's line)."""
    from gridshare.cli.demand import json_lines
    from gridshare.config import scan_lines

    text = json.dumps(value, indent=indent, ensure_ascii=False)
    wanted = every_path(value)
    yaml_lines, _ = scan_lines(text, wanted, repeated=False)
    assert json_lines(text, wanted) == yaml_lines
