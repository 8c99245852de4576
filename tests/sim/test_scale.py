"""Hundreds of simulated chargers in one process against a CSMS in another process.

The CSMS runs in a subprocess so the memory measured here is the simulator's alone.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from sim_csms import eventually

from gridshare.sim import EV, ScaledClock, SimCharger
from gridshare.sim.site import SimSite, raise_fd_limit

N = 500


class CSMSProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.url = f"ws://127.0.0.1:{port}"

    async def counts(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"count\n")
        await self.proc.stdin.drain()
        return (await self.proc.stdout.readline()).decode()


@pytest.fixture
async def csms_process() -> AsyncIterator[CSMSProcess]:
    script = Path(__file__).with_name("sim_csms.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert line.startswith("PORT "), line
    try:
        yield CSMSProcess(proc, int(line.split()[1]))
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_500_chargers_in_one_process(csms_process: CSMSProcess) -> None:
    raise_fd_limit(4 * N)
    me = psutil.Process()
    # warm up once (imports, compiled schemas, first connection) so only per-charger
    # costs are counted below
    warm = SimCharger("WARM", csms_process.url, protocol="ocpp2.0.1")
    await warm.start(physics=False)
    assert await warm.wait_connected(10)
    await warm.stop()
    warm16 = SimCharger("WARM16", csms_process.url)
    await warm16.start(physics=False)
    assert await warm16.wait_connected(10)
    await warm16.stop()
    gc.collect()
    rss0 = me.memory_info().rss

    clock = ScaledClock(speed=4)
    site = SimSite.build(
        csms_process.url, N, protocol="mixed", seed=1, clock=clock, meter_interval_s=5, tick_s=1.0
    )
    t0 = time.perf_counter()
    try:
        connected = await site.start(wait_connected_s=60)
        connect_s = time.perf_counter() - t0
        assert connected == N
        gc.collect()
        rss1 = me.memory_info().rss
        per_charger_kb = (rss1 - rss0) / N / 1024
        # long-lived tasks: the link (session, reconnects) plus the RPC receive loop, per
        # charger
        kinds = Counter(t.get_coro().__qualname__ for t in asyncio.all_tasks())
        tasks = kinds["Link.run"] + kinds["RpcConnection.serve"]
        # every charger gets a car: transactions, setpoints and meter values flow
        for i, ch in enumerate(site.chargers.values()):
            ch.plug_nowait(
                1, EV(capacity_kwh=60, soc=0.2 + (i % 5) / 10, max_current_a=16, setpoint_lag_s=1.0)
            )
        t_tx = time.perf_counter()
        await eventually(
            lambda: all(
                ch.transaction(1).id is not None  # type: ignore[union-attr]
                for ch in site.chargers.values()
            ),
            30,
            0.05,
        )
        tx_s = time.perf_counter() - t_tx
        await site.run_for(8)  # two real seconds
        tick_t = time.perf_counter()
        for _ in range(5):
            site.tick(1.0)
        tick_ms = (time.perf_counter() - tick_t) * 1000 / 5
        charging = sum(1 for ch in site.chargers.values() if ch.drawn_a(1) != (0.0, 0.0, 0.0))
        assert charging == N
        counts = await csms_process.counts()
        gc.collect()
        rss2 = me.memory_info().rss
        print(
            f"\n{N} chargers: connected in {connect_s:.2f} s ({N / connect_s:.0f}/s), "
            f"{per_charger_kb:.1f} KiB RSS per connected charger, "
            f"{(rss2 - rss0) / N / 1024:.1f} KiB with a car and transaction, "
            f"{tasks / N:.0f} tasks per charger; all transactions started in {tx_s:.2f} s; "
            f"physics tick {tick_ms:.1f} ms; "
            f"CSMS: {counts.strip()}"
        )
        assert f"POINTS {N}" in counts
        assert per_charger_kb < 150
        assert tasks == 2 * N
    finally:
        t_stop = time.perf_counter()
        await site.stop()
        print(f"stopped {N} chargers in {time.perf_counter() - t_stop:.2f} s")
