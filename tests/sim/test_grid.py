"""The grid model against the analytic first-order response of the swing equation, and
on a real broker: the frequency published at its rate, storage power taken in."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import aiomqtt
import pytest
from brokers import mosquitto
from hypothesis import given, settings
from hypothesis import strategies as st
from waits import eventually

from gridshare.sim.grid import GridModel, GridParams, GridSim

P = GridParams(nominal_hz=50, inertia_s=4.0, base_kw=1000, damping_kw_per_hz=100)


def test_time_constant_and_steady_state_of_a_load_step() -> None:
    m = GridModel(P, scheduled_kw=500)
    m.set_load("feeder", 500)
    m.load_step(1.0, 20.0)  # 20 kW more load at t = 1 s
    m.advance(1.0)
    assert m.delta_hz == 0.0
    tau = P.time_constant_s
    assert tau == pytest.approx(2 * 4 * 1000 / (50 * 100))  # 1.6 s
    steady = -20.0 / 100  # −ΔP/D = −0.2 Hz
    for t in (0.1, 0.5, 1.6, 3.0, 8.0):
        m2 = GridModel(P, scheduled_kw=500, loads={"feeder": 500.0})
        m2.load_step(0.0, 20.0)
        m2.advance(t)
        assert m2.delta_hz == pytest.approx(steady * (1 - math.exp(-t / tau)), abs=1e-9)
    m.advance(20.0)
    assert m.delta_hz == pytest.approx(steady, abs=1e-6)
    # a meter of the load reads it with load damping: 520 − 100·0.2 = 500 (balance)
    assert m.load_kw() == pytest.approx(500.0, abs=1e-4)


def test_a_generation_trip_and_storage_that_covers_it() -> None:
    m = GridModel(P, scheduled_kw=500, loads={"feeder": 500.0})
    m.trip(0.0, 30.0)
    m.advance(10.0)
    assert m.delta_hz == pytest.approx(-0.3, abs=1e-3)
    m.set_storage("bess", 30.0)  # discharging 30 kW: balance restored
    m.advance(15.0)
    assert m.delta_hz == pytest.approx(0.0, abs=1e-4)
    assert m.net_load_kw() == pytest.approx(470.0, abs=0.01)


def test_without_damping_the_frequency_ramps() -> None:
    p = GridParams(nominal_hz=60, inertia_s=5, base_kw=2000, damping_kw_per_hz=0)
    m = GridModel(p, scheduled_kw=100, loads={"x": 110.0})
    m.advance(1.0)
    # df/dt = f0·ΔP/(2H·S) = 60·(−10)/(2·5·2000) = −0.03 Hz/s
    assert m.delta_hz == pytest.approx(-0.03, rel=1e-9)
    assert math.isinf(p.time_constant_s)


def test_noise_is_deterministic_with_a_seed() -> None:
    p = GridParams(noise_kw=5.0)
    runs = []
    for _ in range(2):
        m = GridModel(p, scheduled_kw=0, seed=7)
        m.advance(2.0)
        runs.append(m.delta_hz)
    other = GridModel(p, scheduled_kw=0, seed=8)
    other.advance(2.0)
    assert runs[0] == runs[1] != other.delta_hz


@settings(max_examples=100, deadline=None)
@given(st.floats(0.5, 10), st.floats(100, 10000), st.floats(10, 1000), st.floats(-200, 200),
       st.floats(0.05, 20))
def test_any_parameters_match_the_analytic_response(h: float, base: float, d: float,
                                                    dp: float, t: float) -> None:
    p = GridParams(nominal_hz=50, inertia_s=h, base_kw=base, damping_kw_per_hz=d)
    m = GridModel(p, scheduled_kw=0.0)
    m.load_step(0.0, dp)
    m.advance(t)
    tau = 2 * h * base / (50 * d)
    expect = -dp / d * (1 - math.exp(-round(t / 0.01) * 0.01 / tau))
    assert m.delta_hz == pytest.approx(expect, abs=1e-9 + 1e-9 * abs(dp / d))


def test_chargers_kw_reads_what_simulated_chargers_draw() -> None:
    from types import SimpleNamespace

    from gridshare.sim.grid import chargers_kw

    charger = SimpleNamespace(connectors=2, drawn_a=lambda n: (10.0, 10.0, 10.0) if n == 1
                              else (16.0, 0.0, 0.0))
    site = SimpleNamespace(chargers={"a": charger})
    assert chargers_kw(site)() == pytest.approx((30 + 16) * 230 / 1000)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        GridParams(inertia_s=0)


async def test_frequency_on_the_broker_and_storage_power_taken_in(tmp_path: Path) -> None:
    with mosquitto(tmp_path / "mq") as broker:
        model = GridModel(P, scheduled_kw=500, loads={"feeder": 520.0})
        sim = GridSim(model, broker.host, broker.port, site="s1",
                      storage_topics={"bess": "site/bess/setpoint/power"}, publish_hz=50,
                      load_readers={"chargers": lambda: 0.0})
        got: list[dict[str, float]] = []
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe("gridshare/s1/grid/frequency")
            await sim.start()
            try:
                async def collect() -> None:
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        got.append(json.loads(message.payload))
                        if len(got) >= 50:
                            return

                await asyncio.wait_for(collect(), 10)
                assert set(got[0]) == {"ts", "hz"}
                assert got[-1]["hz"] < 50.0  # short of 20 kW: falling
                assert model.loads["chargers"] == 0.0  # read from the simulated load
                # storage discharges 20 kW (−20 on its topic: + = charging)
                await client.publish("site/bess/setpoint/power", json.dumps({"kw": -20}))
                await eventually(lambda: model.storage.get("bess") == 20.0)
                await eventually(lambda: abs(model.delta_hz) < 0.01, timeout_s=15)
            finally:
                await sim.stop()
        rate = sim.published / max(model.t, 1e-9)
        assert 30 <= rate <= 60  # about the 50 Hz asked
