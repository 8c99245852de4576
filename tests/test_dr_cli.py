"""``gridshare dr send``: the issue's command line posts one signal to a running gridshare;
exit codes as docs/cli.md says (0 stored or redelivered, 1 run-time failure, 2 bad input).

The command talks HTTP to the DR routes (the API's own router, error handling and auth)
served by uvicorn on a free port, in front of a DR service on the real core event book;
the last test runs it as a process against the real app (CSMS, controller, DR service).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
import yaml
from api.conftest import ApiRig
from api.test_dr_api import TOKEN, ZONED_SITE, FakeDr, dr_api
from brokers import free_port
from click.testing import Result
from typer.testing import CliRunner

from gridshare.cli import app
from gridshare.clock import SystemClock
from gridshare.config import OpenAdrSpec, parse_site_config
from gridshare.core.dr.signals import DrPriority, SignalType, signal_from_json

runner = CliRunner()


class Served:
    def __init__(self, dr: FakeDr) -> None:
        self.dr = dr
        self.port = free_port()
        config = uvicorn.Config(dr_api(dr, dr.clock), host="127.0.0.1", port=self.port,
                                log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served() -> Iterator[Served]:
    with Served(FakeDr(("Z1", "Z2"), SystemClock())) as s:  # type: ignore[arg-type]
        yield s


def send(served: Served, *args: str, token: str | None = TOKEN) -> Result:
    env = {"GRIDSHARE_API_TOKEN": token} if token is not None else {"GRIDSHARE_API_TOKEN": ""}
    return runner.invoke(app, ["dr", "send", "--url", served.url, *args], env=env)


def test_the_issues_line_stores_a_curtailment(served: Served) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    result = send(served, "--zone", "Z1", "--curtail", "90", "--minutes", "60",
                  "--priority", "1")
    assert result.exit_code == 0, result.output
    (event,) = served.dr.book.events()
    s = event.signal
    assert (s.zone_id, s.signal_type, s.target_reduction_kw, s.priority) == (
        "Z1", SignalType.CURTAIL, 90.0, DrPriority.EMERGENCY)
    assert before <= s.start_ts <= datetime.now(UTC)
    assert s.end_ts - s.start_ts == timedelta(minutes=60)
    assert f"signal {s.signal_id} stored: CURTAIL 90.0 kW in zone Z1" in result.stdout


def test_a_resend_with_the_same_id_is_a_redelivery(served: Served) -> None:
    line = ["--zone", "Z2", "--shed", "40", "--start", "2030-01-01T12:00:00+01:00",
            "--signal-id", "ops-7", "--json"]
    first, again = send(served, *line), send(served, *line)
    assert (first.exit_code, again.exit_code) == (0, 0)
    assert "already stored" not in again.stdout
    body = json.loads(again.stdout)
    assert body["id"] == "ops-7" and body["signal_type"] == "SHED"
    assert body["start_ts"] == "2030-01-01T11:00:00Z" and body["state"] == "scheduled"
    assert len(served.dr.book) == 1
    plain = send(served, *line[:-1])
    assert "already stored (same content)" in plain.stdout


def test_restore_sends_a_zero_target(served: Served) -> None:
    result = send(served, "--zone", "Z1", "--restore", "--priority", "2", "--minutes", "1")
    assert result.exit_code == 0, result.output
    (event,) = served.dr.book.events()
    assert (event.signal.signal_type, event.signal.target_reduction_kw) == (
        SignalType.RESTORE, 0.0)


@pytest.mark.parametrize(("args", "words"), [
    (["--zone", "Z1"], "give exactly one of --curtail KW, --shed KW, --restore"),
    (["--zone", "Z1", "--curtail", "5", "--restore"], "(got --curtail and --restore)"),
    (["--zone", "Z1", "--curtail", "5", "--start", "2030-01-01T12:00:00"], "no UTC offset"),
    (["--zone", "Z1", "--curtail", "5", "--start", "tomorrow"], "not an ISO 8601 time"),
    (["--zone", "Z1", "--curtail", "5", "--minutes", "0"], "--minutes: must be"),
    (["--zone", "Z9", "--curtail", "5"], "zone_id: unknown zone 'Z9'"),
], ids=["no-kind", "two-kinds", "naive-start", "bad-start", "zero-minutes", "unknown-zone"])
def test_bad_input_exits_2_with_the_reason(served: Served, args: list[str],
                                            words: str) -> None:
    result = send(served, *args)
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert len(served.dr.book) == 0


def test_a_taken_id_exits_2_and_json_says_why(served: Served) -> None:
    send(served, "--zone", "Z1", "--curtail", "5", "--signal-id", "dup")
    result = send(served, "--zone", "Z1", "--curtail", "6", "--signal-id", "dup", "--json")
    assert result.exit_code == 2
    body = json.loads(result.stdout)
    assert body["error"] == "signal refused" and body["exit_code"] == 2
    assert "already holds a different signal" in body["problems"][0]["message"]
    assert "(HTTP 409)" in body["problems"][0]["message"]


def test_no_token_is_a_run_time_failure(served: Served) -> None:
    result = send(served, "--zone", "Z1", "--curtail", "5", token=None)
    assert result.exit_code == 1
    assert "HTTP 401" in result.stderr
    with_option = runner.invoke(app, ["dr", "send", "--url", served.url, "--zone", "Z1",
                                      "--curtail", "5", "--token", TOKEN],
                                env={"GRIDSHARE_API_TOKEN": ""})
    assert with_option.exit_code == 0, with_option.output


def test_nobody_listening_is_a_run_time_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["dr", "send", "--url", url, "--zone", "Z1", "--curtail",
                                 "5", "--json"], env={"GRIDSHARE_API_TOKEN": TOKEN})
    assert result.exit_code == 1
    assert "is gridshare serve running there?" in result.stderr
    assert json.loads(result.stdout)["error"] == "request failed"


def test_a_refusal_names_the_field_once(served: Served) -> None:
    result = send(served, "--zone", "Z9", "--curtail", "5")
    assert result.stderr == ("gridshare dr send: zone_id: unknown zone 'Z9' (zones: Z1, Z2) "
                             "(HTTP 422)\n")


# --- docs/dr.md, docs/api.md and docs/cli.md: their examples are real ----------------------

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "dr.md", ROOT / "docs" / "api.md", ROOT / "docs" / "cli.md"]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def doc_blocks(lang: str) -> list[tuple[str, str]]:
    return [(page.name, m.group(2)) for page in DOCS
            for m in _FENCE.finditer(page.read_text(encoding="utf-8")) if m.group(1) == lang]


def shell_lines() -> list[list[str]]:
    """Each command of the bash blocks as words: an indented line continues the one above
    (after a backslash, or inside a quoted JSON body)."""
    out = []
    for _, text in doc_blocks("bash"):
        commands: list[str] = []
        for line in text.replace("\\\n", " ").splitlines():
            if line[:1].isspace() and commands:
                commands[-1] += "\n" + line
            elif line.strip():
                commands.append(line)
        out += [shlex.split(c, comments=True) for c in commands]
    return out


def test_the_site_example_loads_and_the_openadr_settings_validate() -> None:
    sites = [text for name, text in doc_blocks("yaml") if text.startswith("site:")]
    assert sites
    for text in sites:
        config = parse_site_config(text, "docs/dr.md")
        assert config.topology.zones
    (openadr,) = [text for _, text in doc_blocks("yaml") if "openadr:" in text]
    site = yaml.safe_load(sites[0])
    site["demand_response"].update(yaml.safe_load(openadr)["demand_response"])
    spec = parse_site_config(yaml.safe_dump(site), "docs/dr.md").demand_response.openadr
    assert isinstance(spec, OpenAdrSpec)
    assert spec.targets == {"plaza-dc": "Z1"} and spec.opt_out == [3]
    assert spec.levels == {1: 30, 2: 60, 3: 90} and spec.priorities == {1: 1}


def test_every_signal_shown_is_valid() -> None:
    bodies = [json.loads(text) for _, text in doc_blocks("json") if '"signal_id"' in text]
    for words in shell_lines():
        for flag in ("-d", "-m"):
            if flag in words and "signal_id" in words[words.index(flag) + 1]:
                bodies.append(json.loads(words[words.index(flag) + 1]))
    assert len(bodies) >= 4
    for body in bodies:
        signal_from_json(body, zones={"Z1"}, now=datetime.now(UTC))


def test_every_dr_send_line_runs(served: Served) -> None:
    lines = [w for w in shell_lines() if w[:3] == ["gridshare", "dr", "send"]]
    assert len(lines) >= 4
    for words in lines:
        result = send(served, *words[3:])
        assert result.exit_code == 0, (words, result.output)


async def test_the_command_posts_to_a_real_running_gridshare(tmp_path: Path) -> None:
    rig = ApiRig("ocpp1.6", tmp_path / "var", site=ZONED_SITE)
    await rig.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridshare", "dr", "send", "--url",
            f"http://127.0.0.1:{rig.app.api_port}", "--zone", "Z1", "--curtail", "5",
            "--minutes", "30", "--priority", "1", "--json",
            env={**os.environ, "GRIDSHARE_API_TOKEN": TOKEN},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        event = json.loads(out)
        assert event["state"] == "active" and event["priority"] == 1
        assert rig.app.dr is not None
        stored = rig.app.dr.get(event["id"])
        assert stored is not None and stored.signal.target_reduction_kw == 5
    finally:
        await rig.stop()
