"""The simulated AMI fleet: readings in the ingest's shape, the load spread and damped, a
battery meter read live, staggered publication on a real Mosquitto that the ingest's
parser accepts; the demo command's bad-input paths."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import aiomqtt
import pytest
from brokers import mosquitto
from hypothesis import given
from hypothesis import strategies as st
from waits import eventually

from gridshare.adapters.telemetry.parse import AmiReading, parse_ami
from gridshare.sim.ami import AmiFleet, damped, main
from gridshare.sim.grid import GridModel, GridParams


def fleet(**kw: object) -> AmiFleet:
    loads = {"a": 1.0, "b": 3.0}
    return AmiFleet("127.0.0.1", 1, site="s1", loads=loads, **kw)  # type: ignore[arg-type]


def test_reading_shape_is_what_the_ingest_accepts() -> None:
    f = fleet(readers={"bess": lambda: -12.5})
    body = f.payload("b", 1796040000.25)
    got = parse_ami("b", body, now=1796040001.0, skew=30.0, known={"a", "b", "bess"})
    assert isinstance(got, AmiReading)
    assert got.power_w == 3000.0 and got.ts == 1796040000.25
    bess = parse_ami("bess", f.payload("bess", 1796040000.5), now=1796040001.0, skew=30.0,
                     known=None)
    assert isinstance(bess, AmiReading) and bess.power_w == -12500.0


@given(total=st.floats(0.0, 10_000.0))
def test_property_set_total_keeps_the_shares(total: float) -> None:
    f = fleet()
    f.set_total_kw(total)
    assert f.load_kw() == pytest.approx(total, abs=1e-6)
    assert f.base["b"] == pytest.approx(3 * f.base["a"], abs=1e-6)


def test_all_zero_loads_are_spread_evenly_and_damping_scales_the_readings() -> None:
    f = fleet()
    f.set_total_kw(0.0)
    f.set_total_kw(10.0)
    assert f.base == {"a": 5.0, "b": 5.0}
    model = GridModel(GridParams(damping_kw_per_hz=100), scheduled_kw=10.0)
    model.set_load("ami", 10.0)
    model.delta_hz = -0.01  # the load falls by D·Δf = 1 kW
    f.load_factor = damped(model)
    assert f.reading_kw("a") + f.reading_kw("b") == pytest.approx(model.load_kw())


async def test_staggered_meters_on_a_broker_and_pause(tmp_path: Path) -> None:
    with mosquitto(tmp_path / "mq") as broker:
        f = AmiFleet(broker.host, broker.port, site="s1",
                     loads={f"m{i}": 1.0 for i in range(10)}, period_s=0.5)
        got: list[tuple[str, float]] = []
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe("gridshare/s1/ami/+")

            async def collect() -> None:
                async for m in client.messages:
                    assert isinstance(m.payload, bytes)
                    got.append((m.topic.value, json.loads(m.payload)["ts"]))

            reader = asyncio.create_task(collect())
            await f.start()
            try:
                await eventually(lambda: len(got) >= 20, timeout_s=10)
                first = got[:10]
                assert {t for t, _ in first} == {f"gridshare/s1/ami/m{i}" for i in range(10)}
                gaps = [b - a for (_, a), (_, b) in itertools.pairwise(first)]
                assert all(0.02 <= g <= 0.12 for g in gaps), gaps  # 0.5 s / 10 meters
                f.paused = True
                await asyncio.sleep(0.3)
                n = len(got)
                await asyncio.sleep(0.7)
                assert len(got) == n  # the stream stopped
            finally:
                await f.stop()
                reader.cancel()


def test_demo_refuses_a_site_without_an_ami_regulation_area(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "s.yaml"
    site.write_text("site: s\ngroups: [{id: g, max_current: 16, chargers: [c]}]\n"
                    "chargers: [{id: c, max_current: 16}]\n")
    assert main([str(site)]) == 2
    assert "needs mqtt:, frequency_response: (its batteries) and regulation:" in \
        capsys.readouterr().out
    assert main([str(tmp_path / "missing.yaml")]) == 2
