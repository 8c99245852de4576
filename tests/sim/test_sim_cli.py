"""``python -m gridshare.sim``: chargers named and rated after a site file (``--ids-from``),
and a run that connects nothing says why and exits 1 instead of reporting connected=0/20."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import pytest
from raw_csms import RawCSMS

from gridshare.adapters.ocpp import CentralSystem, CsmsConfig
from gridshare.adapters.ocpp.config import ChargerCredentials
from gridshare.config import load_site_config
from gridshare.events import ChargerBooted, Event
from gridshare.sim import EV, SimCharger
from gridshare.sim.__main__ import _build_site, _parse_args, main, run

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "gridshare" / "examples"
CARPORT = EXAMPLES / "carport.yaml"
MIXED_SITE = """\
site: mixed
groups:
  - {id: main, max_current: 63, chargers: [ac-3, ac-1, dc-1]}
chargers:
  - {id: ac-3, max_current: 16, min_current: 8, failsafe_current: 6, connectors: 2}
  - {id: ac-1, max_current: 32, phases: 1, phase: L2, failsafe_current: 10}
  - {id: dc-1, max_power: 22, failsafe_current: 0}
"""
Known = Callable[[Iterable[str]], Awaitable[tuple[CentralSystem, list[Event]]]]


@pytest.fixture
async def known() -> AsyncIterator[Known]:
    """Start a real CentralSystem on a free port that knows only the given charger ids
    (and the list its events are published to)."""
    started: list[CentralSystem] = []

    async def start(ids: Iterable[str]) -> tuple[CentralSystem, list[Event]]:
        config = CsmsConfig(chargers={i: ChargerCredentials() for i in ids})
        events: list[Event] = []
        csms = CentralSystem(config, events.append)
        await csms.start(port=0)
        started.append(csms)
        return csms, events

    yield start
    for csms in started:
        await csms.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def args_for(url: str, *extra: str) -> list[str]:
    return ["--url", url, "--duration", "1", "--report-every", "1", "--json", *extra]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_ids_from_takes_ids_phases_currents_connectors_and_failsafe(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(MIXED_SITE)
    args = _parse_args(["--url", "ws://127.0.0.1:9/", "--ids-from", str(site_file),
                        "--protocol", "mixed"])
    topology = load_site_config(site_file).topology
    sim = _build_site(args, topology)
    got = {cid: (ch.phases, ch.phase, ch.max_current_a, ch.min_current_a, ch.connectors,
                 ch.failsafe_current_a, ch.protocol) for cid, ch in sim.chargers.items()}
    dc_amps = 22_000 / (3 * 230)
    assert got == {
        "ac-3": (3, "L1", 16.0, 8.0, 2, 6.0, "ocpp1.6"),
        "ac-1": (1, "L2", 32.0, 6.0, 1, 10.0, "ocpp2.0.1"),
        "dc-1": (3, "L1", pytest.approx(dc_amps, abs=0.1), 6.0, 1, 0.0, "ocpp1.6"),
    }
    assert list(sim.chargers) == ["ac-3", "ac-1", "dc-1"]  # the file's order


def test_chargers_n_takes_the_first_n_of_the_file() -> None:
    args = _parse_args(["--url", "ws://h:9/", "--ids-from", str(CARPORT), "--chargers", "3"])
    sim = _build_site(args, load_site_config(CARPORT).topology)
    assert list(sim.chargers) == ["cp-1", "cp-2", "cp-3"]


def test_without_ids_from_chargers_are_prefix_numbered() -> None:
    args = _parse_args(["--url", "ws://h:9/", "--chargers", "2", "--prefix", "X"])
    assert list(_build_site(args, None).chargers) == ["X0001", "X0002"]
    assert len(_build_site(_parse_args(["--url", "ws://h:9/"]), None).chargers) == 20


@pytest.mark.parametrize("flag", [["--max-current", "16"], ["--connectors", "2"],
                                  ["--three-phase-share", "1"], ["--failsafe-current", "0"],
                                  ["--prefix", "X"]])
def test_ratings_of_the_site_file_cannot_be_overridden(
        flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse_args(["--url", "ws://h:9/", "--ids-from", str(CARPORT), *flag])
    assert exit_.value.code == 2
    assert f"{flag[0]} cannot be used with --ids-from" in capsys.readouterr().err


def test_a_bad_site_file_exits_2_with_its_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MIXED_SITE.replace("max_current: 63", "max_current: -1"))
    assert main(["--url", "ws://127.0.0.1:9/", "--ids-from", str(bad)]) == 2
    assert f"{bad}:3: groups[0].max_current" in capsys.readouterr().err


async def test_ids_from_the_shipped_carport_connects_every_charger(
        known: Known, capsys: pytest.CaptureFixture[str]) -> None:
    topology = load_site_config(CARPORT).topology
    csms, events = await known(topology.chargers)
    args = _parse_args(args_for(f"ws://127.0.0.1:{csms.port}", "--ids-from", str(CARPORT),
                                "--protocol", "mixed", "--connect-timeout", "20"))
    assert await run(args, topology) == 0
    out = capsys.readouterr()
    hello = json_lines(out.out)[0]
    assert hello["connected"] == hello["chargers"] == 20 and hello["not_connected"] == {}
    assert out.err == ""
    assert {e.charger for e in events if isinstance(e, ChargerBooted)} == set(topology.chargers)


async def test_unknown_ids_exit_1_naming_the_refusal_on_both_sides(
        known: Known, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    csms, _ = await known(["cp-1"])
    args = _parse_args(args_for(f"ws://127.0.0.1:{csms.port}", "--chargers", "3",
                                "--connect-timeout", "2", "--duration", "600"))
    with caplog.at_level(logging.WARNING, logger="gridshare.ocpp"):
        assert await run(args, None) == 1  # at once: the 600 s duration is not run
    out = capsys.readouterr()
    hello = json_lines(out.out)[0]
    assert hello["connected"] == 0
    assert hello["not_connected"] == {"HTTP 404": ["SIM0001", "SIM0002", "SIM0003"]}
    assert "error: no charger connected within 2 s (--connect-timeout)" in out.err
    assert "3 refused with HTTP 404: SIM0001, SIM0002, SIM0003" in out.err
    assert "--ids-from" in out.err  # the hint that fixes it
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert any(m.startswith("refused charger 'SIM0001' from 127.0.0.1:")
               and m.endswith(": unknown charger id (404)") for m in refusals), refusals


async def test_some_refused_is_a_warning_and_the_run_goes_on(
        known: Known, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(MIXED_SITE)
    topology = load_site_config(site_file).topology
    csms, _ = await known(["ac-3", "ac-1"])
    args = _parse_args(args_for(f"ws://127.0.0.1:{csms.port}", "--ids-from", str(site_file),
                                "--connect-timeout", "2"))
    assert await run(args, topology) == 0
    out = capsys.readouterr()
    lines = json_lines(out.out)
    assert lines[0]["connected"] == 2 and lines[0]["not_connected"] == {"HTTP 404": ["dc-1"]}
    assert lines[-1].get("final") is True
    assert "warning: 1 of 3 chargers not connected within 2 s" in out.err
    assert "1 refused with HTTP 404: dc-1" in out.err


def test_nothing_listening_exits_1_as_a_program() -> None:
    """The real entry point, as the issue saw it: exit code 1, not 0 with connected=0/20."""
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "gridshare.sim", "--url", f"ws://127.0.0.1:{port}",
         "--chargers", "2", "--connect-timeout", "1", "--duration", "600"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    assert done.stdout.startswith("connected 0/2")
    assert "error: no charger connected within 1 s" in done.stderr
    assert "2 not connected (" in done.stderr and "SIM0001, SIM0002" in done.stderr


async def test_a_profile_right_behind_the_start_answer_finds_the_transaction(
        raw: RawCSMS, make_charger: Callable[..., SimCharger]) -> None:
    """Frames are handled in the order they arrive: a TxProfile the CSMS sends right after
    answering StartTransaction names a transaction the charger already knows (the README's
    serve + sim pairing saw 'no transaction' rejections when the answer's continuation ran
    after the next frame)."""
    raw.hold.add("StartTransaction")
    ch = make_charger("CP-O", url=raw.url, protocol="ocpp1.6")
    await ch.start(tick_s=0.2)
    conn = await raw.connected()
    ch.plug_nowait(1, EV(capacity_kwh=60, soc=0.3))
    start = (await raw.wait(lambda: conn.calls("StartTransaction")))[0]
    profile = {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 7, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative", "transactionId": 41,
        "chargingSchedule": {"chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}}}
    # back to back: both frames are usually in the charger's buffer at once
    await conn.ws.send(json.dumps([3, start[1], {"transactionId": 41,
                                                 "idTagInfo": {"status": "Accepted"}}]))
    await conn.ws.send(json.dumps([2, "csms-1", "SetChargingProfile", profile]))
    answer = await raw.answer(conn, "csms-1")
    assert answer[2] == {"status": "Accepted"}, answer
