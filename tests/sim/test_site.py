"""SimSite: scenario, physics loop, meter, snapshot, and the command line."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from sim_csms import TestCSMS, eventually

from gridshare.sim import EV, ManualClock, ScaledClock
from gridshare.sim.__main__ import _parser, run
from gridshare.sim.site import ConstantLoad, Scenario, SimSite, SwitchingLoad

T0 = datetime(2025, 6, 1, 7, tzinfo=UTC)
BUSY = Scenario(
    seed=5, arrivals_per_hour=6, dwell_mean_h=0.5, min_dwell_s=300, initial_occupancy=0.5
)


def offline_site(seed: int = 5, count: int = 12) -> SimSite:
    """Chargers that never connect (unreachable URL): physics and scenario only."""
    return SimSite.build(
        "ws://127.0.0.1:9",
        count,
        protocol="mixed",
        seed=seed,
        clock=ManualClock(T0),
        scenario=dataclasses.replace(BUSY, seed=seed),
    )


def test_scenario_is_deterministic_and_cars_come_and_go() -> None:
    a, b = offline_site(), offline_site()
    a.advance(3 * 3600)
    b.advance(3 * 3600)
    snap_a, snap_b = a.snapshot(), b.snapshot()
    snap_a.pop("time")
    snap_b.pop("time")
    assert snap_a == snap_b
    assert a.ev_count > 12  # arrivals beyond the initial occupancy
    kinds = a.event_counts
    assert kinds["plug"] == a.ev_count and kinds["unplug"] > 0
    c = offline_site(seed=6)
    c.advance(3 * 3600)
    assert c.snapshot()["chargers"] != snap_a["chargers"]


def test_meter_sums_named_chargers_and_uncontrolled_loads() -> None:
    site = SimSite.build(
        "ws://127.0.0.1:9", 3, seed=1, clock=ManualClock(T0), three_phase_share=0.0
    )  # 1-phase chargers on L1, L2, L3
    ids = list(site.chargers)
    assert [site.chargers[i].phase for i in ids] == ["L1", "L2", "L3"]
    for i in ids[:2]:
        site.chargers[i].plug_nowait(
            1, EV(capacity_kwh=50, soc=0.2, max_current_a=16, setpoint_lag_s=0)
        )
    site.add_load("aircon", SwitchingLoad((4.0, 4.0, 4.0), on_s=600, off_s=600))
    site.add_load("base", ConstantLoad((1.0, 0.0, 0.0)))
    site.advance(2)
    assert site.meter_a(ids, loads=()) == (16.0, 16.0, 0.0)
    assert site.meter_a(ids[1:], loads=["base"]) == (1.0, 16.0, 0.0)
    assert site.meter_a(ids) == (21.0, 20.0, 4.0)
    site.advance(600)  # the air conditioner switches off
    assert site.meter_a([], loads=["aircon"]) == (0.0, 0.0, 0.0)
    snap = site.snapshot()
    assert snap["chargers"][ids[0]]["connectors"][0]["drawn_a"] == [16.0, 0.0, 0.0]
    assert snap["chargers_total_a"] == [16.0, 16.0, 0.0]


async def test_site_against_csms_runs_faster_than_real_time(csms: TestCSMS) -> None:
    clock = ScaledClock(speed=60)
    site = SimSite.build(
        csms.url,
        10,
        protocol="mixed",
        seed=3,
        clock=clock,
        tick_s=1.0,
        meter_interval_s=30,
        scenario=BUSY,
    )
    changes: list[tuple[str, float]] = []
    try:
        connected = await site.start(wait_connected_s=10)
        assert connected == 10
        for ch in site.chargers.values():
            ch.on_setpoint(lambda c, a, cid=ch.id: changes.append((cid, a)))
        t0 = clock.time()
        await site.run_for(240)  # four simulated minutes in four real seconds
        assert clock.time() - t0 >= 240
        assert site.ticks >= 200
        await eventually(
            lambda: bool(csms.of("StartTransaction")) and bool(csms.of("TransactionEvent")), 5
        )
        snap = site.snapshot()
        assert snap["connected"] == 10
        drawn = [sum(c["drawn_a"]) for ch in snap["chargers"].values() for c in ch["connectors"]]
        assert sum(drawn) > 0
        total = site.meter_a(site.chargers, loads=())
        assert list(total) == pytest.approx(snap["chargers_total_a"], abs=0.05)
        assert {m.charger_id for m in csms.of("BootNotification")} == set(site.chargers)
    finally:
        await site.stop()
    assert site.connected_count == 0


async def test_cli_json_and_text_output(csms: TestCSMS, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(
        [
            "--url",
            csms.url,
            "--chargers",
            "4",
            "--protocol",
            "mixed",
            "--seed",
            "1",
            "--duration",
            "20",
            "--speed",
            "20",
            "--report-every",
            "10",
            "--json",
            "--aircon-a",
            "3",
        ]
    )
    assert await run(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["started"] and lines[0]["connected"] == 4
    reports = [line for line in lines if "t_s" in line]
    assert len(reports) == 2
    assert reports[-1]["connected"] == 4 and len(reports[-1]["meter_a"]) == 3
    assert lines[-1]["final"] and lines[-1]["events_total"]["boot"] == 4
    args = _parser().parse_args(
        [
            "--url",
            csms.url,
            "--chargers",
            "2",
            "--duration",
            "5",
            "--speed",
            "20",
            "--prefix",
            "TXT",
            "--report-every",
            "5",
        ]
    )
    assert await run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("connected 2/2")
    assert out[1].startswith("t=+") and "connected=2/2" in out[1]
    assert out[-1].startswith("done:")
