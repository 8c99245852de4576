"""The README works as written: every command block runs (or is listed below with why not),
every site and demand example loads, and the Command line block says what ``--help`` says.

A new user copies from the README first; when it drifts from the code, these fail.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from gridshare.config import load_site_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

NOT_RUN = {
    "scripts/demo": "sets up .venv and runs the demo for 60 s; the README's `gridshare demo` "
                    "line runs below",
    "scripts/test": "runs the whole suite, this test included",
}
"""README commands no test runs, and why. Benchmark lines are not run at full size either
(minutes each, see docs/benchmarks.md): their options are checked against ``--help``."""


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    section: str


def readme_blocks() -> list[Block]:
    """Every fenced block of the README, with its language and the heading above it."""
    out: list[Block] = []
    lang: str | None = None
    body: list[str] = []
    start = 0
    section = ""
    for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if lang is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.startswith("```"):
                lang, body, start = line[3:].strip(), [], n + 1
        elif line.startswith("```"):
            out.append(Block(lang, "\n".join(body) + "\n", start, section))
            lang = None
        else:
            body.append(line)
    assert lang is None, "unclosed fence in README.md"
    return out


def blocks_of(lang: str) -> list[Block]:
    return [b for b in readme_blocks() if b.lang == lang]


def block_in(section: str, lang: str) -> Block:
    found = [b for b in blocks_of(lang) if b.section == section]
    assert len(found) == 1, f"one ```{lang} block under '{section}' expected, found {found}"
    return found[0]


def command_lines(block: Block) -> list[list[str]]:
    """The block's commands as words (backslash continuations joined, comments dropped)."""
    joined = block.text.replace("\\\n", " ")
    return [w for line in joined.splitlines() if (w := shlex.split(line, comments=True))]


def all_commands() -> list[list[str]]:
    return [words for b in blocks_of("bash") for words in command_lines(b)]


def kind(words: list[str]) -> str:
    prog, rest = words[0], words[1:]
    if prog.startswith("scripts/"):
        return "script"
    if prog == ".venv/bin/gridshare":
        return f"run {rest[0]}"
    if prog == ".venv/bin/python" and rest[:2] == ["-m", "gridshare.sim"]:
        return "run sim"
    if prog == ".venv/bin/python" and rest and rest[0].startswith("benchmarks/"):
        return "benchmark"
    if prog == "gridshare" or words[:3] == ["python", "-m", "gridshare.sim"]:
        return "synopsis"
    if prog == "kill" and rest == ["%1"]:
        return "job control"
    return "unknown"


def program(words: list[str]) -> list[str]:
    """``.venv/bin/X`` of the README as the X of the environment running the tests."""
    name = words[0].removeprefix(".venv/bin/")
    exe = ROOT / ".venv" / "bin" / name
    return [str(exe if exe.exists() else BIN / name), *words[1:]]


def run(words: list[str], cwd: Path = ROOT,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(program(words), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=plain_env())


def plain_env() -> dict[str, str]:
    """Help and logs as a pipe sees them, wide enough that nothing wraps."""
    return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def replace_option(words: list[str], option: str, value: str) -> list[str]:
    i = words.index(option)
    return [*words[: i + 1], value, *words[i + 2:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- every command is accounted for -------------------------------------------------------


def test_every_readme_command_is_run_or_listed() -> None:
    kinds = [(kind(w), w) for w in all_commands()]
    unknown = [" ".join(w) for k, w in kinds if k == "unknown"]
    assert not unknown, f"README commands no test runs (run them here, or list why not): {unknown}"
    scripts = {w[0] for k, w in kinds if k == "script"}
    assert scripts == set(NOT_RUN), "NOT_RUN must name exactly the README's scripts"
    runs = {k for k, _ in kinds if k.startswith("run ")}
    assert runs == {"run check", "run allocate", "run serve", "run demo", "run sim"}, (
        f"a README command kind without a test below: {runs}")


# --- the commands, as written --------------------------------------------------------------


@pytest.mark.parametrize("words", [w for w in all_commands() if kind(w) == "run check"],
                         ids=" ".join)
def test_check_lines_run_as_written(words: list[str]) -> None:
    done = run(words)
    assert done.returncode == 0, done
    assert re.search(r"^ok: \d+ groups, \d+ chargers", done.stdout, re.M), done.stdout
    assert "warning" not in (done.stdout + done.stderr).lower(), done


def json_shape() -> dict[str, set[str]]:
    """The keys the README says ``allocate --json`` prints, read from its own sentence."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"`--json` prints `(\{.*?\})`", text, re.S)
    assert found, "the README no longer describes allocate --json"
    shape = " ".join(found.group(1).split())
    inner = {}
    for name in ("setpoints", "groups"):
        keys = re.search(rf'"{name}": \[\{{(.*?)\}}\]', shape)
        assert keys, f"no {name} keys in the README's --json sentence"
        inner[name] = set(re.findall(r'"(\w+)"', keys.group(1)))
    top = shape
    while (flat := re.sub(r"\[[^\[\]]*\]", "", top)) != top:
        top = flat
    return {"top": set(re.findall(r'"(\w+)":', top)), **inner}


def assert_json_shape(answer: dict[str, Any]) -> None:
    shape = json_shape()
    assert set(answer) == shape["top"]
    assert answer["setpoints"] and all(set(s) == shape["setpoints"] for s in answer["setpoints"])
    assert answer["groups"] and all(set(g) == shape["groups"] for g in answer["groups"])


@pytest.mark.parametrize("words", [w for w in all_commands() if kind(w) == "run allocate"],
                         ids=" ".join)
def test_allocate_lines_run_as_written(words: list[str]) -> None:
    done = run(words)
    assert done.returncode == 0, done  # 0: no alarm, the guard changed nothing
    assert "warning" not in done.stderr.lower(), done
    if "--json" in words:
        answer = json.loads(done.stdout)
        assert_json_shape(answer)
        assert answer["alarms"] == [] and answer["guarded"] is False


@pytest.mark.parametrize("words", [w for w in all_commands() if kind(w) == "run demo"],
                         ids=" ".join)
def test_demo_line_runs(words: list[str]) -> None:
    """As written but 5 s long (the README's 30 s shows more of the same)."""
    done = run(replace_option(words, "--duration", "5"), timeout=180)
    assert done.returncode == 0, done
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/  \(token for changes: \S+\)$",
                     done.stdout, re.M), done.stdout
    assert re.search(r"^\d+ cars arrived, \d+ left\.$", done.stdout, re.M), done.stdout
    assert re.search(r"^  service: peak \d+ % of its limit$", done.stdout, re.M), done.stdout
    assert "Traceback" not in done.stderr, done.stderr


class Lines:
    """Lines of a process's pipe, read with a deadline (no thread needed)."""

    def __init__(self, pipe: IO[str]) -> None:
        self.pipe = pipe
        self.seen: list[str] = []

    def until(self, pattern: str, within_s: float) -> re.Match[str]:
        deadline = time.monotonic() + within_s
        while True:
            for line in self.seen:
                if found := re.search(pattern, line):
                    self.seen.remove(line)
                    return found
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.pipe], [], [], max(left, 0))
            line = self.pipe.readline() if ready else ""
            if not line:
                raise AssertionError(f"no line matching {pattern!r} in time; saw {self.seen}")
            self.seen.append(line.rstrip("\n"))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def charging_status(url: str, within_s: float) -> dict[str, Any]:
    """``GET /status`` once a car charges (the cars need a few seconds to start)."""
    deadline = time.monotonic() + within_s
    while True:
        with urllib.request.urlopen(url, timeout=10) as answer:
            status: dict[str, Any] = json.load(answer)
        if any(c["status"] == "Charging" for c in status["connectors"]):
            return status
        assert time.monotonic() < deadline, f"no car charging: {status['connectors']}"
        time.sleep(0.5)


def test_serve_and_simulator_pairing_connects_every_charger(
        tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    """The README's serve + ``python -m gridshare.sim --ids-from`` pair, on free ports and
    15 simulated seconds: every charger of the shipped site connects, charges, and the
    central system has nothing to warn about."""
    serve_words, sim_words, kill_words = command_lines(
        next(b for b in blocks_of("bash") if any(kind(w) == "run sim" for w in command_lines(b))))
    assert kind(serve_words) == "run serve" and serve_words[-1] == "&", serve_words
    assert kind(sim_words) == "run sim" and kind(kill_words) == "job control"
    ocpp, api = free_port(), free_port()
    serve_log = tmp_path / "serve.log"
    with serve_log.open("w") as log:
        serve = subprocess.Popen(
            program([*serve_words[:-1], "--ocpp-port", str(ocpp), "--api-port", str(api)]),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=plain_env())
    processes.append(serve)
    assert serve.stdout is not None
    Lines(serve.stdout).until(r"^gridshare ready: site carport", 60)

    site_file = ROOT / sim_words[sim_words.index("--ids-from") + 1]
    expected = len(load_site_config(site_file).topology.chargers)
    url = sim_words[sim_words.index("--url") + 1]
    assert url == "ws://127.0.0.1:9000", "the README's pairing uses serve's default port"
    sim_words = replace_option(sim_words, "--url", f"ws://127.0.0.1:{ocpp}")
    sim = subprocess.Popen(program(replace_option(sim_words, "--duration", "15")), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=plain_env())
    processes.append(sim)
    assert sim.stdout is not None
    out = Lines(sim.stdout)
    out.until(rf"^connected {expected}/{expected} in ", 60)
    status = charging_status(f"http://127.0.0.1:{api}/status", within_s=12)
    assert status["chargers_online"] == expected
    assert [a["message"] for a in status["alarms"]] == []  # none since start-up either
    assert serve_log.read_text() == "", "serve logged warnings while the chargers ran"
    out.until(r"^done: cars=\d+", 60)
    _, err = sim.communicate(timeout=30)
    assert sim.returncode == 0 and err == "", err

    serve.send_signal(signal.SIGTERM)  # kill %1
    assert serve.wait(30) == 0
    assert "Traceback" not in serve_log.read_text()


def test_benchmark_lines_use_options_their_scripts_have() -> None:
    for words in (w for w in all_commands() if kind(w) == "benchmark"):
        script = ROOT / words[1]
        assert script.is_file(), words
        used = {w for w in words[2:] if w.startswith("--")}
        done = run([words[0], words[1], "--help"])
        assert done.returncode == 0, done
        assert used <= set(help_options(done.stdout)), (words, done.stdout)


# --- the examples ---------------------------------------------------------------------------


def site_blocks() -> list[Block]:
    return [b for b in blocks_of("yaml") if re.search(r"^site:", b.text, re.M)]


def test_there_are_site_examples() -> None:
    assert {b.section for b in site_blocks()} >= {"Site file", "Meters"}


@pytest.mark.parametrize("block", site_blocks(), ids=lambda b: f"{b.section}:{b.line}")
def test_site_examples_load_as_written(block: Block, tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(block.text, encoding="utf-8")
    done = run(["gridshare", "check", "site.yaml"], cwd=tmp_path)
    assert done.returncode == 0, f"README.md:{block.line}: {done.stderr}"
    assert "warning" not in (done.stdout + done.stderr).lower(), done


def test_the_shown_error_is_what_check_prints(tmp_path: Path) -> None:
    """The README's bad-file output is the Site file example with circuit-1 at -5 A and an
    undeclared cp-3, line for line."""
    shown = [b for b in blocks_of("") if re.search(r"^  site\.yaml:\d+: ", b.text, re.M)]
    assert len(shown) == 1, shown
    site = block_in("Site file", "yaml").text
    bad = {"        max_current: 40\n": "        max_current: -5\n",
           "chargers: [cp-1, cp-2]\n": "chargers: [cp-1, cp-2, cp-3]\n"}
    for good, wrong in bad.items():
        assert site.count(good) == 1, good
        site = site.replace(good, wrong)
    (tmp_path / "site.yaml").write_text(site)
    done = run(["gridshare", "check", "site.yaml"], cwd=tmp_path)
    assert done.returncode == 2, done
    assert done.stderr == shown[0].text


def test_demand_example_allocates_on_the_site_example(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(block_in("Site file", "yaml").text)
    (tmp_path / "demand.json").write_text(
        block_in("Demand file (`gridshare allocate --demand`)", "json").text)
    done = run(["gridshare", "allocate", "site.yaml", "--demand", "demand.json", "--json"],
               cwd=tmp_path)
    assert done.returncode == 0, done
    answer = json.loads(done.stdout)
    assert_json_shape(answer)
    groups = {g["id"]: g for g in answer["groups"]}
    assert groups["service"]["limit"] == 60  # the demand-response limit of the example
    cp1 = next(s for s in answer["setpoints"] if s["charger"] == "cp-1")
    assert 6 <= cp1["current"] <= 16  # its car asks for at most 16 A


EXAMPLES = ROOT / "src" / "gridshare" / "examples"


@pytest.mark.parametrize("site", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_site_example_checks_without_a_warning(site: Path) -> None:
    done = run(["gridshare", "check", str(site)])
    assert done.returncode == 0, done
    assert "warning" not in (done.stdout + done.stderr).lower(), done


@pytest.mark.parametrize("demand", sorted(EXAMPLES.glob("*-demand.json")), ids=lambda p: p.name)
def test_every_shipped_demand_example_allocates_without_an_alarm(demand: Path) -> None:
    """``<site>-demand.json`` goes with ``<site>.yaml``."""
    site = demand.with_name(demand.name.removesuffix("-demand.json") + ".yaml")
    done = run(["gridshare", "allocate", str(site), "--demand", str(demand), "--json"])
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["alarms"] == []


def test_relative_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    assert links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing, missing


# --- the Command line block says what --help says -----------------------------------------

_BOX = "│┃|"


def help_options(text: str) -> dict[str, set[str] | None]:
    """Long options of a ``--help`` text (typer or argparse), each with its choices when
    the help lists them (``a|b``, ``<a|b>``, ``{a,b}``); ``--help`` itself left out."""
    out: dict[str, set[str] | None] = {}
    for raw in text.splitlines():
        line = raw.strip(_BOX + " ").rstrip()
        indent = len(raw) - len(raw.lstrip(_BOX + " "))
        if not line.startswith("-") or indent > 6:
            continue
        names: list[str] = []
        metavar: set[str] | None = None
        for token in line.split():
            if token == "/":
                continue
            if token.startswith("-"):  # -h, --help | --plain/--no-plain | --plain / --no-plain
                names += [n for n in token.rstrip(",").split("/") if n.startswith("--")]
                continue
            choices = re.fullmatch(r"<?([\w.:-]+(?:\|[\w.:-]+)+)>?|\{([^{}]+,[^{}]+)\}", token)
            if choices:
                metavar = set(re.split(r"[|,]", choices.group(1) or choices.group(2)))
            break
        for name in names:
            out[name] = metavar
    out.pop("--help", None)
    return out


def help_commands(text: str) -> set[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line)
    out: set[str] = set()
    for raw in lines[start + 1:]:
        line = raw.strip(_BOX + " ╰─")
        if not line:
            if out:
                break
            continue
        out.add(line.split()[0])
    return out


def synopsis() -> dict[str, list[list[str]]]:
    """The Command line block's lines by command: "" for ``gridshare`` itself, "sim"."""
    blocks = [b for b in blocks_of("bash") if b.section == "Command line"
              and any(kind(w) == "synopsis" for w in command_lines(b))]
    assert len(blocks) == 1, "one block of synopsis lines under 'Command line' expected"
    out: dict[str, list[list[str]]] = {}
    for words in command_lines(blocks[0]):
        assert kind(words) == "synopsis", words
        if words[0] == "python":
            name, rest = "sim", words[3:]
        elif words[1].startswith("-"):
            name, rest = "", words[1:]
        else:
            name, rest = words[1], words[2:]
        out.setdefault(name, []).append(rest)
    return out


def readme_options(lines: list[list[str]]) -> dict[str, set[str] | None]:
    """``[--policy a|b]`` -> {"--policy": {"a", "b"}}; ``--json/--no-json`` gives both."""
    out: dict[str, set[str] | None] = {}
    for line in lines:
        words = [w.strip("[]") for w in line]
        for i, word in enumerate(words):
            names = [n for n in word.split("/") if n.startswith("--")]
            if not names:
                continue
            value = words[i + 1] if i + 1 < len(words) else ""
            choices = set(value.split("|")) if "|" in value and not value.startswith("-") else None
            for name in names:
                out[name] = choices
    return out


def command_help(name: str) -> str:
    if name == "sim":
        words = [".venv/bin/python", "-m", "gridshare.sim", "--help"]
    else:
        words = [".venv/bin/gridshare", *([name] if name else []), "--help"]
    done = run(words)
    assert done.returncode == 0, done
    return done.stdout


def test_the_command_line_block_lists_every_command() -> None:
    commands = set(synopsis()) - {"", "sim"}
    assert commands == help_commands(command_help(""))


@pytest.mark.parametrize("name", ["", "check", "allocate", "serve", "demo", "hash-password",
                                  "simulate", "sim"])
def test_the_command_line_block_lists_every_option_as_help_does(name: str) -> None:
    lines = synopsis()
    assert name in lines, f"no README line for {name or 'gridshare'}"
    readme = readme_options(lines[name])
    helped = help_options(command_help(name))
    label = f"gridshare {name}".strip() if name != "sim" else "python -m gridshare.sim"
    assert set(readme) - set(helped) == set(), f"{label}: in the README, not in --help"
    assert set(helped) - set(readme) == set(), f"{label}: in --help, not in the README"
    for option, choices in helped.items():
        if choices is not None:
            assert readme[option] == choices, f"{label} {option}: README {readme[option]}"
